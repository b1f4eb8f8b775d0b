//! `cgroup/connect4` and `cgroup/connect6`: connects to a captured VIP:port are rewritten to the
//! proxy's address of the same family.

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_ANY},
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext as _,
};
use aya_log_ebpf::{debug, warn};
use interceptor_common::{capture::PROXY_SOCKET_MARK, stats::Program, SockAddr};

use crate::{
    ctx_addr::{read_ip6, write_ip6},
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
    run(&ctx, Family::V4)
}

/// Also sees IPv4 destinations of dual-stack sockets, IPv4-mapped (`::ffff:10.96.0.10`): they
/// find the IPv4 VIP in `CAPTURE` (whose keys are IPv4-mapped) and go to the proxy's IPv4 address,
/// mapped the same way.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    run(&ctx, Family::V6)
}

/// Which hook runs, so which fields of `bpf_sock_addr` hold the destination.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

#[inline(always)]
fn run(ctx: &SockAddrContext, family: Family) -> i32 {
    let outcome = match try_connect(ctx, family) {
        Ok(outcome) => outcome,
        Err(Error::NoProxyTarget) => {
            warn!(ctx, "connect: PROXY_TARGET[0] missing");
            Outcome::Error
        }
        Err(Error::CookieStore(ret)) => {
            warn!(ctx, "connect: ORIG_DST_COOKIE insert failed: {}", ret);
            Outcome::Error
        }
    };
    let program = match family {
        Family::V4 => Program::Connect4,
        Family::V6 => Program::Connect6,
    };
    count(program, outcome);
    ALLOW
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, family: Family) -> Result<Outcome, Error> {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context pointer; each field is read with its declared size,
    // which is what the verifier accepts for `bpf_sock_addr`.
    let sock_type = unsafe { (*sa).type_ };
    if sock_type != SOCK_STREAM {
        return Ok(Outcome::Ignored);
    }
    let dst = destination(sa, family);
    if CAPTURE.get_ptr(&dst).is_none() {
        return Ok(Outcome::Ignored);
    }
    let target = PROXY_TARGET.get(0).ok_or(Error::NoProxyTarget)?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !target.captures(now) || is_proxy_socket(sa) {
        return Ok(Outcome::Bypassed);
    }
    // No proxy listener of this family (an IPv6 VIP, the agent without IPv6): fail open.
    let Some(proxy) = target.proxy_for(&dst) else {
        return Ok(Outcome::Bypassed);
    };

    // SAFETY: helper taking the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_DST_COOKIE.insert(cookie, dst, u64::from(BPF_ANY)).map_err(Error::CookieStore)?;
    set_destination(sa, family, &proxy);

    if let Err(ret) = count_connection(&dst) {
        // The connection is captured all the same; only its service counter is lost.
        warn!(ctx, "connect: SERVICE_STATS insert failed: {}", ret);
    }
    debug!(ctx, "connect: {:i}:{} -> proxy {:i}:{} (cookie {})", dst.addr, dst.port, proxy.addr, proxy.port, cookie);
    Ok(Outcome::Captured)
}

/// The address passed to `connect()`, in the maps' form.
#[inline(always)]
fn destination(sa: *mut bpf_sock_addr, family: Family) -> SockAddr {
    // SAFETY: context fields, 4-byte reads. `user_ip4`/`user_ip6` are network order, so their
    // in-memory bytes are the address bytes; `user_port` holds the network-order port in its low
    // 16 bits.
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    match family {
        Family::V4 => SockAddr::v4(unsafe { (*sa).user_ip4 }.to_ne_bytes(), port),
        // SAFETY: `user_ip6` is a readable 4-word context field.
        Family::V6 => SockAddr::v6(unsafe { read_ip6(&raw const (*sa).user_ip6) }, port),
    }
}

/// Rewrites the address `connect()` will use; `to` is of the hook's family (`proxy_for`).
#[inline(always)]
fn set_destination(sa: *mut bpf_sock_addr, family: Family, to: &SockAddr) {
    // SAFETY: context fields writable in connect4/connect6, written as whole `u32`s (the verifier
    // rejects narrower stores); volatile keeps LLVM from merging or splitting them.
    unsafe {
        match family {
            Family::V4 => core::ptr::write_volatile(&raw mut (*sa).user_ip4, u32::from_ne_bytes(to.v4_octets())),
            Family::V6 => write_ip6(&raw mut (*sa).user_ip6, &to.addr),
        }
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
