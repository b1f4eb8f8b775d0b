//! Map keys, values and names shared by the kernel programs and the agent: one `#[repr(C)]`
//! definition each, no logic.
//!
//! Byte order: addresses are `[u8; 16]` in network order, IPv4 as IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`, so `bpftool` prints `[0,…,0,255,255,10,96,0,10]`); ports are `u16` in host
//! order (so `bpftool` prints `80`). Every struct is padded by hand and its size pinned by a const
//! assert, so a layout change fails the build, not the map load.
#![no_std]
#![deny(missing_docs)]

pub mod capture;
pub mod fastpath;
pub mod origdst;
pub mod packet;
pub mod stats;

/// A socket address of either family as the maps store it: one key layout for IPv4 and IPv6.
///
/// Why one 16-byte form and not a v4 map beside a v6 map: every map (CAPTURE, ORIG_DST, CONNTRACK,
/// the counters) and every user-space path then exists once, and the form is the one the kernel
/// itself hands `cgroup/connect6` for an IPv4 destination on a dual-stack socket
/// (`connect(AF_INET6, ::ffff:10.96.0.10)` runs connect6 only, never connect4: `tcp_v6_connect`
/// calls `tcp_v4_connect` directly), so such a connect finds the IPv4 VIP with no extra case. The
/// cost is hashing 20 bytes instead of 8 per lookup and 12 more bytes per entry, which neither
/// the verifier (no loops: fixed-size copies) nor the data path notices.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr {
    /// IPv6 address, or IPv4-mapped IPv6 (`::ffff:a.b.c.d`) for IPv4; network byte order.
    pub addr: [u8; 16],
    /// Port, host byte order.
    pub port: u16,
    /// Explicit padding: keeps the hash key free of uninitialised bytes.
    pub _pad: u16,
}

/// The first 12 bytes of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl SockAddr {
    /// An IPv6 address (or an IPv4-mapped one, as given).
    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        Self { addr, port, _pad: 0 }
    }

    /// An IPv4 address, stored IPv4-mapped.
    pub const fn v4(ip: [u8; 4], port: u16) -> Self {
        let p = V4_MAPPED_PREFIX;
        Self::v6(
            [p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11], ip[0], ip[1], ip[2], ip[3]],
            port,
        )
    }

    /// Whether this is an IPv4 address (IPv4-mapped).
    #[inline(always)]
    pub fn is_v4(&self) -> bool {
        let a = &self.addr;
        // Spelled out: slice comparison would call `memcmp`, which BPF has not.
        a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0 && a[10] == 0xff && a[11] == 0xff
    }

    /// The IPv4 octets (the last four bytes; meaningful when [`Self::is_v4`]).
    #[inline(always)]
    pub fn v4_octets(&self) -> [u8; 4] {
        [self.addr[12], self.addr[13], self.addr[14], self.addr[15]]
    }

    /// Whether no address is set (all zero, port 0): an absent proxy address.
    #[inline(always)]
    pub fn is_unset(&self) -> bool {
        self.port == 0
    }
}

const _: () = assert!(core::mem::size_of::<SockAddr>() == 20);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
unsafe impl aya::Pod for SockAddr {}
