//! Packet mode: the conntrack entries XDP writes for flows it sends to the proxy, and the packet
//! counters per interface and per service.

use crate::SockAddr4;

/// Map name: LRU hash, client address ([`SockAddr4`]) → [`Conntrack`].
pub const CONNTRACK_MAP: &str = "CONNTRACK";
/// Map name: per-CPU hash, interface index (`u32`) → [`PacketStats`].
pub const IFACE_STATS_MAP: &str = "IFACE_STATS";
/// Map name: per-CPU hash, service VIP:port ([`SockAddr4`]) → [`PacketStats`].
pub const PACKET_STATS_MAP: &str = "PACKET_STATS";
/// Capacity of [`CONNTRACK_MAP`]: flows in flight between pods and the proxy.
pub const CONNTRACK_MAX_ENTRIES: u32 = 65536;
/// Capacity of [`IFACE_STATS_MAP`].
pub const IFACE_STATS_MAX_ENTRIES: u32 = 4096;

/// One flow from a pod to a captured VIP:port that XDP rewrote to the proxy.
///
/// Keyed by the client's address alone: after DNAT the proxy sees exactly that as its peer, so
/// the key is also what the proxy looks up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conntrack {
    /// The VIP:port the client sent to; restored as the source of replies.
    pub orig: SockAddr4,
    /// The proxy address the flow was rewritten to.
    pub proxy: SockAddr4,
}

const _: () = assert!(core::mem::size_of::<Conntrack>() == 16);

/// Packet counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketStats {
    /// Packets rewritten (to the proxy by XDP, back to the VIP by TC).
    pub packets: u64,
    /// Bytes of those packets (IP header and payload).
    pub bytes: u64,
    /// Flows sent to the proxy (SYNs that created a conntrack entry).
    pub new_flows: u64,
    /// Packets to a captured VIP:port that belonged to no known flow and were left alone.
    pub nat_misses: u64,
}

const _: () = assert!(core::mem::size_of::<PacketStats>() == 32);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding, every bit pattern valid.
unsafe impl aya::Pod for Conntrack {}
#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding, every bit pattern valid.
unsafe impl aya::Pod for PacketStats {}
