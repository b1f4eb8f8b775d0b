//! The fast path between local sockets: `sockops` pairs a pod's socket with the proxy's end of the
//! same connection in `SOCK_PAIRS`, and `sk_msg` moves what one of them sends straight into the
//! other's receive queue, skipping TCP/IP and the veth on both ends.
//!
//! A connection the proxy relays as a byte stream between two paired pods (a TCP route) is
//! spliced: once the proxy has forwarded all a pod moved into it, that pod's sends go straight to
//! the pod at the far end (see `interceptor_common::fastpath::Splice`).
//!
//! Order is kept per direction: a socket decides at its first send whether its peer is there, and
//! a socket that once sent through TCP never switches to the fast path (its bytes in flight would
//! be overtaken). The other way is safe — what it sends through TCP joins its peer's queue behind
//! the moved bytes (`sk_skb`) — so a socket falls back to TCP when its peer is gone or holds
//! [`FAST_PATH_BUDGET`] bytes moved and unread.

use core::ptr;

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_ANY, BPF_F_INGRESS, BPF_NOEXIST},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_map_delete_elem, bpf_probe_read_kernel},
    macros::{sk_msg, stream_verdict},
    programs::{SkBuffContext, SkMsgContext, SockOpsContext},
    EbpfContext as _,
};
use interceptor_common::{
    capture::PROXY_SOCKET_MARK,
    fastpath::{FastPath, SockPair, Splice, FAST_PATH_BUDGET, FAST_PATH_EXPECTED, FAST_PATH_OFF, FAST_PATH_ON},
    stats::Program,
};

use crate::{
    ctx_addr::{sk_msg_pair, sock_ops_pair},
    maps::{FAST_PATH, PROXY_TARGET, SOCK_PAIRS, SPLICE},
    stats::{count, Outcome},
};

/// The proxy's network namespace cookie, when the agent turned the fast path on.
#[inline(always)]
pub fn proxy_netns() -> Option<u64> {
    PROXY_TARGET.get(0).map(|target| target.proxy_netns).filter(|&netns| netns != 0)
}

/// A socket's own network namespace.
#[inline(always)]
fn netns(ctx: &SockOpsContext) -> u64 {
    // SAFETY: helper taking the program's own context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// The proxy's own upstream sockets: its mark, in its network namespace (a pod may mark its
/// sockets too, in its own namespace).
#[inline(always)]
pub fn is_proxy_socket(ctx: &SockOpsContext, proxy_netns: u64) -> bool {
    // SAFETY: `sk` is the context's PTR_TO_SOCKET_OR_NULL (a full socket once established);
    // `mark` is a readable `bpf_sock` field.
    let mark = unsafe {
        let sk = (*ctx.ops).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        (*sk).mark
    };
    mark == PROXY_SOCKET_MARK && netns(ctx) == proxy_netns
}

/// Any network namespace, for [`open`]'s `peer_netns`.
pub const ANY_NETNS: u64 = 0;

/// The connecting end of a connection the fast path takes (a captured pod's socket to the proxy,
/// or the proxy's to an endpoint): pairs it and expects its peer, in `peer_netns` (or any), bound
/// to this socket's cookie.
#[inline(always)]
pub fn open(ctx: &SockOpsContext, peer_netns: u64) -> Result<(), i32> {
    let mut own = sock_ops_pair(ctx);
    // SAFETY: a readable field of the program's own context.
    let sent = unsafe { (*ctx.ops).data_segs_out };
    // Bytes already sent through TCP (TCP Fast Open's SYN data) would be overtaken by moved ones.
    let paired = if sent == 0 { pair(ctx, &mut own).map(Some) } else { Ok(None) };
    let Ok(Some(Paired { cookie, sock })) = paired else {
        // Not paired — in particular when another socket (a pod forging this 4-tuple in a
        // namespace of its own) holds the key: the peer must not join, or it would send this
        // connection's bytes to that socket.
        let off = FastPath { state: FAST_PATH_OFF, ..FastPath::default() };
        FAST_PATH.insert(&own.peer(), &off, u64::from(BPF_ANY))?;
        return paired.map(|_| ());
    };
    let expected =
        FastPath { state: FAST_PATH_EXPECTED, netns: peer_netns, peer_cookie: cookie, ..FastPath::default() };
    FAST_PATH.insert(&own.peer(), &expected, u64::from(BPF_ANY))?;
    let on = FastPath { state: FAST_PATH_ON, cookie, sock, ..FastPath::default() };
    FAST_PATH.insert(&own, &on, u64::from(BPF_ANY))
}

/// The accepting end: paired only when its connecting peer expects it, from the namespace it
/// expects (the proxy's accepted socket of a captured pod, or a pod's socket the proxy connected
/// to); the two sockets' cookies bind them to each other. An opener whose first send came first
/// leaves the sockhash instead.
#[inline(always)]
pub fn accept(ctx: &SockOpsContext) -> Result<(), i32> {
    let mut own = sock_ops_pair(ctx);
    let Some(expected) = FAST_PATH.get_ptr(&own) else {
        return Ok(());
    };
    // SAFETY: copied out at once; a stale value only leaves the socket out of the fast path.
    let expected: FastPath = unsafe { *expected };
    if expected.state != FAST_PATH_EXPECTED || (expected.netns != ANY_NETNS && expected.netns != netns(ctx)) {
        return Ok(());
    }
    let mut opener_key = own.peer();
    if went_through_tcp(&opener_key, expected.peer_cookie) {
        // Its first send beat this join: it sends through TCP for good, so this end has nothing
        // to join, and the opener leaves the sockhash (nothing was moved into it: only this
        // socket could have). Its sends then take TCP's own path again, not the sockmap's,
        // which hands each piece of a send to TCP on its own — for Nagle's algorithm to hold up
        // until a delayed ACK.
        unpair(&mut opener_key);
        return Ok(());
    }
    let Paired { cookie, sock } = pair(ctx, &mut own)?;
    let on = FastPath { state: FAST_PATH_ON, cookie, peer_cookie: expected.peer_cookie, sock, ..FastPath::default() };
    FAST_PATH.insert(&own, &on, u64::from(BPF_ANY))?;
    if let Some(opener) = FAST_PATH.get_ptr_mut(&opener_key) {
        // SAFETY: a plain value; the opener reads it only in its own sends, which now wait for it.
        let opener = unsafe { &mut *opener };
        if opener.cookie == expected.peer_cookie && opener.peer_cookie == 0 {
            opener.peer_cookie = cookie;
        }
    }
    // The opener's first send may have run on another CPU between the check above and the
    // binding: then neither socket moved anything, and both leave.
    if went_through_tcp(&opener_key, expected.peer_cookie) {
        unpair(&mut own);
        unpair(&mut opener_key);
    }
    Ok(())
}

/// The opener under `key`, bound by `cookie`, sent through TCP before it moved anything.
#[inline(always)]
fn went_through_tcp(key: &SockPair, cookie: u64) -> bool {
    // SAFETY: copied out at once.
    let opener = FAST_PATH.get_ptr(key).map(|p| unsafe { *p });
    opener.is_some_and(|o| o.state == FAST_PATH_OFF && o.cookie == cookie && o.moved == 0)
}

/// Takes the socket under `key` out of `SOCK_PAIRS`: it sends and receives through TCP only. For
/// a socket nothing was moved into — the kernel drops what is queued to a socket that leaves. A
/// failed delete leaves it paired and switched off.
#[inline(always)]
fn unpair(key: &mut SockPair) {
    // aya-ebpf's sockhash has no delete. `SOCK_PAIRS` is the map's definition itself (a transparent
    // wrapper), so its address is the map pointer the helper wants.
    // SAFETY: the map and a key on this program's stack; sockops may delete from a sockhash.
    let _ = unsafe { bpf_map_delete_elem(ptr::from_ref(&SOCK_PAIRS).cast_mut().cast(), ptr::from_mut(key).cast()) };
}

/// Set by the loader from the running kernel's BTF: see `interceptor_common::fastpath`.
#[unsafe(no_mangle)]
static SOCK_USER_DATA_OFFSET: u32 = 0;
/// Set by the loader from the running kernel's BTF: see `interceptor_common::fastpath`.
#[unsafe(no_mangle)]
static PSOCK_QUEUED_OFFSET: u32 = 0;

/// `sk_user_data` holds an `sk_psock` (`SK_USER_DATA_PSOCK`, `<net/sock.h>`) …
const SK_USER_DATA_PSOCK: u64 = 4;
/// … in the bits above its three flags (`SK_USER_DATA_PTRMASK`).
const SK_USER_DATA_PTRMASK: u64 = !7;

/// Bytes moved into the socket at `sock` (a [`FastPath::sock`]) and not read yet: the kernel's own
/// count in its `sk_psock`. `None` when it has no psock (it left the sockhash) or the read fails.
#[inline(always)]
fn queued(sock: u64) -> Option<u64> {
    // SAFETY: globals of this object, frozen by the loader; volatile so that LLVM does not fold
    // their compile-time zero.
    let (user_data_at, queued_at) =
        unsafe { (ptr::read_volatile(&SOCK_USER_DATA_OFFSET), ptr::read_volatile(&PSOCK_QUEUED_OFFSET)) };
    // SAFETY: reads of kernel memory through the helper, which fails rather than faults. The
    // address is a live socket's whenever the cookies bound it to this one (a paired socket stays
    // until it closes, and the program runs under RCU); an entry that outlived its socket may
    // point at memory reused for anything, and a number read there only decides a fallback — the
    // redirect looks the socket up in the sockhash itself.
    unsafe {
        let user_data: u64 = bpf_probe_read_kernel((sock + u64::from(user_data_at)) as *const u64).ok()?;
        if user_data & SK_USER_DATA_PSOCK == 0 {
            return None;
        }
        let psock = user_data & SK_USER_DATA_PTRMASK;
        let queued: u32 = bpf_probe_read_kernel((psock + u64::from(queued_at)) as *const u32).ok()?;
        Some(u64::from(queued))
    }
}

/// A socket just put in `SOCK_PAIRS`.
struct Paired {
    /// Its cookie.
    cookie: u64,
    /// Its `struct sock`'s address, for [`queued`].
    sock: u64,
}

/// Puts the socket in `SOCK_PAIRS` under its own key — never over another socket's (a closed
/// socket leaves the map by itself).
#[inline(always)]
fn pair(ctx: &SockOpsContext, own: &mut SockPair) -> Result<Paired, i32> {
    // SAFETY: the program's own context, an established full socket.
    SOCK_PAIRS.update(own, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST))?;
    // SAFETY: helper taking the program's own context; `sk` is a readable context field, the
    // kernel's `struct sock` pointer (non-null: the update above took it). Kept as a number, which
    // the verifier allows a privileged loader (the agent is one).
    let (cookie, sk) = unsafe { (bpf_get_socket_cookie(ctx.as_ptr()), (*ctx.ops).__bindgen_anon_2.sk) };
    Ok(Paired { cookie, sock: sk as u64 })
}

#[sk_msg]
pub fn sk_msg_fast_path(ctx: SkMsgContext) -> u32 {
    let outcome = send(&ctx);
    count(Program::SkMsg, outcome);
    // Always: a failed redirect leaves the message on the socket's own TCP path.
    SK_PASS
}

#[inline(always)]
fn send(ctx: &SkMsgContext) -> Outcome {
    let own = sk_msg_pair(ctx);
    let Some(state) = FAST_PATH.get_ptr_mut(&own) else {
        return Outcome::Bypassed;
    };
    // SAFETY: this socket's own entry; its sends run one at a time under the socket lock.
    let state = unsafe { &mut *state };
    if state.state != FAST_PATH_ON {
        return Outcome::Bypassed;
    }
    let mut peer = own.peer();
    let Some(partner) = FAST_PATH.get_ptr(&peer) else {
        state.state = FAST_PATH_OFF;
        return Outcome::Bypassed;
    };
    // SAFETY: copied out at once; the entry is the peer's own (or, recycled, another socket's).
    let bound = unsafe { *partner };
    // Only into the very socket this one was paired with — not a peer that has not joined yet
    // (this is the first send: the binding is the join's), nor another socket under the key — and
    // only while it reads. A peer that sends through TCP itself still takes moves: its
    // fallback is about the order of its own sends.
    let size = u64::from(ctx.size());
    if state.peer_cookie == 0 || bound.cookie != state.peer_cookie || bound.peer_cookie != state.cookie {
        state.state = FAST_PATH_OFF;
        return Outcome::Bypassed;
    }
    if past_the_proxy(ctx, state, &peer, size) {
        state.spliced += size;
        count(Program::Splice, Outcome::Captured);
        return Outcome::Captured;
    }
    if !queued(bound.sock).is_some_and(|queued| queued + size <= FAST_PATH_BUDGET)
        || SOCK_PAIRS.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) != i64::from(SK_PASS)
    {
        state.state = FAST_PATH_OFF;
        return Outcome::Bypassed;
    }
    state.moved += size;
    Outcome::Captured
}

/// Redirects the message past `proxy` (this socket's peer, one of the proxy's two sockets of a
/// spliced connection) into the far end of the connection, when the proxy has forwarded all this
/// socket moved into `proxy` and every byte the proxy wrote on its other socket was moved into the
/// far end too: then all that came before is already in that queue. Otherwise the message takes
/// the usual way, through the proxy.
#[inline(always)]
fn past_the_proxy(ctx: &SkMsgContext, state: &FastPath, proxy: &SockPair, size: u64) -> bool {
    let Some(splice) = SPLICE.get_ptr(proxy) else {
        return false;
    };
    // SAFETY: copied out at once (the proxy replaces the entry as it forwards).
    let splice: Splice = unsafe { *splice };
    if splice.cookie != state.peer_cookie || splice.forwarded != state.moved {
        return false;
    }
    // The other socket's entry must name this one back, by cookie: a value is copied out of a slot
    // the LRU may hand to another key mid-copy, so one entry alone could point at another
    // connection's socket; two entries, each bound by its own socket's cookie, cannot.
    // SAFETY: copied out at once.
    let Some(back) = SPLICE.get_ptr(&splice.other).map(|p| unsafe { *p }) else {
        return false;
    };
    if back.cookie != splice.other_cookie || back.other_cookie != splice.cookie {
        return false;
    }
    // SAFETY: copied out at once.
    let Some(other) = FAST_PATH.get_ptr(&splice.other).map(|p| unsafe { *p }) else {
        return false;
    };
    // On, so it never sent through TCP: what the proxy wrote on it is in the far end's queue.
    if other.state != FAST_PATH_ON || other.cookie != splice.other_cookie || other.peer_cookie == 0 {
        return false;
    }
    let mut far = splice.other.peer();
    // SAFETY: copied out at once.
    let Some(end) = FAST_PATH.get_ptr(&far).map(|p| unsafe { *p }) else {
        return false;
    };
    end.cookie == other.peer_cookie
        && end.peer_cookie == other.cookie
        && queued(end.sock).is_some_and(|queued| queued + size <= FAST_PATH_BUDGET)
        && SOCK_PAIRS.redirect_msg(ctx, &mut far, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS)
}

/// What reaches a paired socket through TCP — its peer fell back — joins the queue of what was
/// moved into it, behind those bytes. Left in TCP's own queue, it would come out only in a read
/// after the one that empties the moved queue, and that read comes back short: a reader taking a
/// short read for an empty socket (tokio, nginx) would then wait for a wake-up that may never
/// come. Still bounded by TCP's window: the bytes stay charged to the receive buffer until read.
#[stream_verdict]
pub fn sk_skb_fast_path(_ctx: SkBuffContext) -> u32 {
    SK_PASS
}
