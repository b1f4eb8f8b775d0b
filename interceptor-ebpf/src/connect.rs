//! `cgroup/connect4`: connects to a captured VIP:port are rewritten to the proxy's address.

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_ANY},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use aya_log_ebpf::{debug, warn};
use interceptor_common::{capture::PROXY_SOCKET_MARK, stats::Program, SockAddr4};

use crate::{
    maps::{CAPTURE, ORIG_DST_COOKIE, PROXY_TARGET},
    stats::{count, count_connection, Outcome},
};

/// `SOCK_STREAM` from `<linux/net.h>`.
const SOCK_STREAM: u32 = 1;
/// `connect()` goes ahead (possibly to a rewritten address). The only value we ever return.
const ALLOW: i32 = 1;

/// Why a captured connect was left alone with an error.
enum Error {
    /// `PROXY_TARGET[0]` is missing (cannot happen for an array, but the verifier wants the check).
    NoProxyTarget,
    /// The original destination could not be stored; redirecting would lose it.
    CookieStore(i32),
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let outcome = match try_connect4(&ctx) {
        Ok(outcome) => outcome,
        Err(Error::NoProxyTarget) => {
            warn!(&ctx, "connect4: PROXY_TARGET[0] missing");
            Outcome::Error
        }
        Err(Error::CookieStore(ret)) => {
            warn!(&ctx, "connect4: ORIG_DST_COOKIE insert failed: {}", ret);
            Outcome::Error
        }
    };
    count(Program::Connect4, outcome);
    ALLOW
}

fn try_connect4(ctx: &SockAddrContext) -> Result<Outcome, Error> {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context pointer; each field is read with its declared size,
    // which is what the verifier accepts for `bpf_sock_addr`.
    let sock_type = unsafe { (*sa).type_ };
    if sock_type != SOCK_STREAM {
        return Ok(Outcome::Ignored);
    }
    let dst = destination(sa);
    if CAPTURE.get_ptr(dst).is_none() {
        return Ok(Outcome::Ignored);
    }
    let target = PROXY_TARGET.get(0).ok_or(Error::NoProxyTarget)?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !target.captures(now) || is_proxy_socket(sa) {
        return Ok(Outcome::Bypassed);
    }
    let proxy = target.addr;

    // SAFETY: helper taking the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_DST_COOKIE.insert(cookie, dst, u64::from(BPF_ANY)).map_err(Error::CookieStore)?;
    set_destination(sa, &proxy);

    if let Err(ret) = count_connection(&dst) {
        // The connection is captured all the same; only its service counter is lost.
        warn!(ctx, "connect4: SERVICE_STATS insert failed: {}", ret);
    }
    debug!(ctx, "connect4: {:i}:{} -> proxy {:i}:{} (cookie {})", dst.addr, dst.port, proxy.addr, proxy.port, cookie);
    Ok(Outcome::Captured)
}

/// The address passed to `connect()`.
#[inline(always)]
fn destination(sa: *mut bpf_sock_addr) -> SockAddr4 {
    // SAFETY: context fields, 4-byte reads. `user_ip4` is network order, so its in-memory bytes are
    // the address octets; `user_port` holds the network-order port in its low 16 bits.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    SockAddr4::new(ip.to_ne_bytes(), u16::from_be(port as u16))
}

/// Rewrites the address `connect()` will use.
#[inline(always)]
fn set_destination(sa: *mut bpf_sock_addr, to: &SockAddr4) {
    // SAFETY: context fields writable in connect4, written as whole `u32`s (the verifier rejects
    // narrower stores); volatile keeps LLVM from merging or splitting them.
    unsafe {
        core::ptr::write_volatile(&raw mut (*sa).user_ip4, u32::from_ne_bytes(to.addr));
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(to.port.to_be()));
    }
}

/// The proxy marks its own upstream sockets; those must reach their real destination.
#[inline(always)]
fn is_proxy_socket(sa: *mut bpf_sock_addr) -> bool {
    // SAFETY: `sk` is a PTR_TO_SOCKET the kernel guarantees for sock_addr programs; `mark` is a
    // readable `bpf_sock` field.
    let mark = unsafe {
        let sk = (*sa).__bindgen_anon_1.sk;
        if sk.is_null() {
            return false;
        }
        (*sk).mark
    };
    mark == PROXY_SOCKET_MARK
}
