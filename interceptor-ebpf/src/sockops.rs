//! `sockops`: once a redirected connection is established, its original destination is re-keyed
//! from the socket cookie to the client address the proxy will see as its peer; with the fast
//! path on, the sockets at both ends of the pod's and the proxy's connections are paired.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB},
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use interceptor_common::{stats::Program, SockAddr};

use crate::{
    ctx_addr::{sock_ops_pair, AF_INET, AF_INET6},
    fastpath,
    maps::{ORIG_DST, ORIG_DST_COOKIE},
    stats::{count, Outcome},
};

/// The program's return value: "handled", per the sockops convention.
const DONE: u32 = 1;

// Not named `sockops`: the symbol would clash with the ELF section of that name.
#[sock_ops]
pub fn sockops_handover(ctx: SockOpsContext) -> u32 {
    let outcome = match try_sockops(&ctx) {
        Ok(outcome) => outcome,
        Err(ret) => {
            warn!(&ctx, "sockops: ORIG_DST insert failed: {}", ret);
            Outcome::Error
        }
    };
    count(Program::SockOps, outcome);
    DONE
}

fn try_sockops(ctx: &SockOpsContext) -> Result<Outcome, i32> {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(Outcome::Ignored);
    }
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let outcome = hand_over(ctx)?;
            if let Some(proxy_netns) = fastpath::proxy_netns() {
                if outcome == Outcome::Captured {
                    // A pod's connection to the proxy: its peer is the proxy's accepted socket.
                    fast_path(fastpath::open(ctx, proxy_netns));
                } else if fastpath::is_proxy_socket(ctx, proxy_netns) {
                    fast_path(fastpath::open(ctx, fastpath::ANY_NETNS));
                }
            }
            Ok(outcome)
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            if fastpath::proxy_netns().is_some() {
                fast_path(fastpath::accept(ctx));
            }
            Ok(Outcome::Ignored)
        }
        _ => Ok(Outcome::Ignored),
    }
}

/// A socket the fast path could not pair keeps to TCP; the failure is an `sk_msg` error.
#[inline(always)]
fn fast_path(result: Result<(), i32>) {
    if result.is_err() {
        count(Program::SkMsg, Outcome::Error);
    }
}

/// The original destination of a redirected connection, re-keyed by client address.
#[inline(always)]
fn hand_over(ctx: &SockOpsContext) -> Result<Outcome, i32> {
    // SAFETY: helper taking the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = ORIG_DST_COOKIE.get_ptr(cookie) else {
        return Ok(Outcome::Ignored);
    };
    // SAFETY: copied out right away, before any update of the map can recycle the slot.
    let orig: SockAddr = unsafe { *orig };
    // The client address the proxy will see as its peer on `accept`.
    let client = sock_ops_pair(ctx).local;
    ORIG_DST.insert(&client, &orig, u64::from(BPF_ANY))?;
    // Already handed over; a failed delete only leaves an entry for the LRU to evict.
    let _ = ORIG_DST_COOKIE.remove(cookie);
    Ok(Outcome::Captured)
}
