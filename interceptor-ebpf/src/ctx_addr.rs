//! Addresses in context structs. IPv6 ones (`bpf_sock_addr.user_ip6`, `bpf_sock_ops.local_ip6`,
//! `sk_msg_md.remote_ip6`) are four network-order `u32` words, each read and written on its own —
//! the verifier refuses context accesses wider than the field's declared 4 bytes, and volatile
//! keeps LLVM from merging them.

use aya_ebpf::programs::{SkMsgContext, SockOpsContext};
use interceptor_common::{fastpath::SockPair, SockAddr};

/// `AF_INET` from `<linux/socket.h>`.
pub const AF_INET: u32 = 2;
/// `AF_INET6` from `<linux/socket.h>`.
pub const AF_INET6: u32 = 10;

/// One end of a connected socket as `bpf_sock_ops` and `sk_msg_md` give it: `ip4` (network
/// order) for `AF_INET`, else the words at `ip6` — IPv4-mapped for a dual-stack socket connected
/// to an IPv4 address, which is the same key as the IPv4 peer the proxy accepts.
///
/// # Safety
///
/// `ip6` points at a readable 4-word context field.
#[inline(always)]
unsafe fn end(family: u32, ip4: u32, ip6: *const [u32; 4], port: u16) -> SockAddr {
    if family == AF_INET {
        SockAddr::v4(ip4.to_ne_bytes(), port)
    } else {
        // SAFETY: per the caller.
        SockAddr::v6(unsafe { read_ip6(ip6) }, port)
    }
}

/// An established socket's own view of its connection, in `sockops`. Both contexts give
/// `local_port` in host order and `remote_port` in network order in the upper half (the kernel
/// shifts it there).
#[inline(always)]
pub fn sock_ops_pair(ctx: &SockOpsContext) -> SockPair {
    let (family, ops) = (ctx.family(), ctx.ops);
    // SAFETY: readable 4-word context fields of the program's own context.
    unsafe {
        SockPair {
            local: end(family, ctx.local_ip4(), &raw const (*ops).local_ip6, ctx.local_port() as u16),
            remote: end(family, ctx.remote_ip4(), &raw const (*ops).remote_ip6, u32::from_be(ctx.remote_port()) as u16),
        }
    }
}

/// The sending socket's own view of its connection, in `sk_msg` (ports as in [`sock_ops_pair`]).
#[inline(always)]
pub fn sk_msg_pair(ctx: &SkMsgContext) -> SockPair {
    let md = ctx.msg;
    // SAFETY: readable fields of the program's own context.
    unsafe {
        let family = (*md).family;
        SockPair {
            local: end(family, (*md).local_ip4, &raw const (*md).local_ip6, (*md).local_port as u16),
            remote: end(family, (*md).remote_ip4, &raw const (*md).remote_ip6, u32::from_be((*md).remote_port) as u16),
        }
    }
}

/// The 16 address bytes of the words at `words`.
///
/// # Safety
///
/// `words` points at a readable 4-word context field.
#[inline(always)]
pub unsafe fn read_ip6(words: *const [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: in bounds of the field, per the caller.
        let word = unsafe { core::ptr::read_volatile(words.cast::<u32>().add(i)) }.to_ne_bytes();
        addr[i * 4] = word[0];
        addr[i * 4 + 1] = word[1];
        addr[i * 4 + 2] = word[2];
        addr[i * 4 + 3] = word[3];
        i += 1;
    }
    addr
}

/// Writes `addr` into the words at `words`.
///
/// # Safety
///
/// `words` points at a writable 4-word context field.
#[inline(always)]
pub unsafe fn write_ip6(words: *mut [u32; 4], addr: &[u8; 16]) {
    let mut i = 0;
    while i < 4 {
        let word = u32::from_ne_bytes([addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]]);
        // SAFETY: in bounds of the field, per the caller.
        unsafe { core::ptr::write_volatile(words.cast::<u32>().add(i), word) };
        i += 1;
    }
}
