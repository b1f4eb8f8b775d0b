//! Packet mode: the conntrack entries XDP writes for flows it sends to the proxy, and the packet
//! counters per interface and per service.

use crate::SockAddr;

/// Map name: LRU hash, client address ([`SockAddr`]) → [`Conntrack`].
pub const CONNTRACK_MAP: &str = "CONNTRACK";
/// Map name: per-CPU hash, interface index (`u32`) → [`PacketStats`].
pub const IFACE_STATS_MAP: &str = "IFACE_STATS";
/// Map name: per-CPU hash, service VIP:port ([`SockAddr`]) → [`PacketStats`].
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
    pub orig: SockAddr,
    /// The proxy address the flow was rewritten to.
    pub proxy: SockAddr,
    /// How far the flow has closed, each side's part written only by the program that sees that
    /// side's packets (XDP the client's, TC the proxy's).
    pub close: [HalfClose; 2],
}

const _: () = assert!(core::mem::size_of::<Conntrack>() == 56);

/// The sender of a packet of a flow: index into [`Conntrack::close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The pod that connected (packets XDP sees).
    Client = 0,
    /// The proxy answering for the VIP (packets TC sees).
    Proxy = 1,
}

impl Side {
    #[inline(always)]
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Proxy,
            Side::Proxy => Side::Client,
        }
    }
}

/// One direction's close: whether its sender sent FIN, and whether the other side acknowledged it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HalfClose {
    /// The acknowledgement number that covers this side's FIN (its sequence number + 1); valid
    /// once `fin` is set.
    pub fin_ack: u32,
    /// 1 once this side sent FIN.
    pub fin: u8,
    /// 1 once the other side acknowledged that FIN.
    pub acked: u8,
    /// Explicit padding.
    pub _pad: u16,
}

/// The TCP header fields close tracking reads, host order.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Flag byte (byte 13 of the header).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Payload bytes.
    pub len: u32,
}

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

impl Conntrack {
    /// Records one segment `side` sent; true when the flow is over — reset, or both FINs
    /// acknowledged — so its entry can go now instead of waiting for LRU eviction.
    ///
    /// Only `side`'s FIN and the other side's `acked` change, so the two programs never write the
    /// same field.
    #[inline(always)]
    pub fn track(&mut self, side: Side, segment: Segment) -> bool {
        if segment.flags & TCP_RST != 0 {
            return true;
        }
        if segment.flags & TCP_FIN != 0 {
            let own = &mut self.close[side as usize];
            // FIN takes one sequence number after the segment's payload.
            own.fin_ack = segment.seq.wrapping_add(segment.len).wrapping_add(1);
            own.fin = 1;
        }
        let other = &mut self.close[side.other() as usize];
        // Sequence numbers wrap: "at or past" is a non-negative signed distance.
        if segment.flags & TCP_ACK != 0 && other.fin == 1 && segment.ack.wrapping_sub(other.fin_ack) as i32 >= 0 {
            other.acked = 1;
        }
        self.close.iter().all(|half| half.acked == 1)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const SYN_ACK_DONE: Segment = Segment { flags: TCP_ACK, seq: 1, ack: 1, len: 0 };

    fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> Segment {
        Segment { flags, seq, ack, len }
    }

    #[test]
    fn a_flow_is_over_once_both_fins_are_acknowledged_whoever_closes_first() {
        // Client closes first: FIN, the proxy acks it with its own FIN, the client acks that.
        let mut flow = Conntrack::default();
        assert!(!flow.track(Side::Client, SYN_ACK_DONE));
        assert!(!flow.track(Side::Client, seg(TCP_FIN | TCP_ACK, 100, 500, 0)));
        assert!(!flow.track(Side::Proxy, seg(TCP_FIN | TCP_ACK, 500, 101, 0)));
        assert!(flow.track(Side::Client, seg(TCP_ACK, 101, 501, 0)));

        // Proxy closes first with its last data on the FIN; the client's ack of earlier data
        // does not count, only the one past the FIN.
        let mut flow = Conntrack::default();
        assert!(!flow.track(Side::Proxy, seg(TCP_FIN | TCP_ACK, 1000, 50, 200)));
        assert!(!flow.track(Side::Client, seg(TCP_ACK, 50, 1100, 0)));
        assert!(!flow.track(Side::Client, seg(TCP_ACK, 50, 1201, 0)));
        assert!(!flow.track(Side::Client, seg(TCP_FIN | TCP_ACK, 50, 1201, 0)));
        assert!(flow.track(Side::Proxy, seg(TCP_ACK, 1201, 51, 0)));
    }

    #[test]
    fn a_half_closed_flow_stays_and_a_reset_ends_any_flow() {
        let mut flow = Conntrack::default();
        assert!(!flow.track(Side::Client, seg(TCP_FIN | TCP_ACK, 7, 9, 0)));
        assert!(!flow.track(Side::Proxy, seg(TCP_ACK, 9, 8, 1000)), "the proxy still sends after the client's FIN");
        assert!(flow.track(Side::Proxy, seg(TCP_RST, 1009, 0, 0)));
        assert!(Conntrack::default().track(Side::Client, seg(TCP_RST | TCP_ACK, 1, 1, 0)));
    }

    #[test]
    fn acknowledgements_compare_across_the_sequence_wrap() {
        let mut flow = Conntrack::default();
        assert!(!flow.track(Side::Client, seg(TCP_FIN | TCP_ACK, u32::MAX, 0, 0)));
        assert_eq!(flow.close[0].fin_ack, 0);
        assert!(!flow.track(Side::Proxy, seg(TCP_FIN | TCP_ACK, 10, u32::MAX, 0)), "one short of the FIN");
        assert!(!flow.track(Side::Proxy, seg(TCP_ACK, 11, 0, 0)));
        assert!(flow.track(Side::Client, seg(TCP_ACK, 0, 11, 0)));
    }
}
