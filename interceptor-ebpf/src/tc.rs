//! `tc` egress on the host side of pod veths (packet mode): replies (IPv4 or IPv6) the proxy sends
//! on a flow XDP
//! rewrote get the VIP:port back as their source, so the client sees the peer it connected to;
//! the proxy's FIN, ACK and RST go into the flow's close tracking.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use interceptor_common::{
    packet::{Segment, Side},
    stats::Program,
    SockAddr,
};

use crate::{
    maps::CONNTRACK,
    packet::{
        is_plain_tcp, is_plain_tcp6, Ipv4Hdr, Ipv6Hdr, TcpHead, ETH_LEN, ETH_P_IPV6_RAW, ETH_P_IP_RAW, IP6_LEN,
        IP6_SRC_OFF, IP_CSUM_OFF, IP_SRC_OFF, TCP6_OFF, TCP_CSUM_IN_HDR, TCP_OFF,
    },
    stats::{count, count_packet, Outcome, PacketEvent},
};

/// `BPF_F_PSEUDO_HDR`: the changed field is part of the pseudo header (the address).
const BPF_F_PSEUDO_HDR: u64 = 0x10;

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    let outcome = try_tc(&ctx).unwrap_or(Outcome::Error);
    count(Program::TcEgress, outcome);
    TC_ACT_OK
}

/// A reply's family: where its TCP header is, and whether an IP header checksum exists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// What the flow logic reads of a reply, with its family.
struct Reply {
    family: Family,
    /// The proxy side (source).
    from: SockAddr,
    /// The client (destination): the conntrack key.
    to: SockAddr,
    segment: Segment,
    /// IP header and payload.
    bytes: u64,
}

/// The packet as a [`Reply`], or `None` when it is not plain TCP (passed through untouched).
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Reply>, i64> {
    let eth_type: u16 = ctx.load(12)?;
    let (family, from, to, l4_len, bytes, tcp_off) = if eth_type == ETH_P_IP_RAW {
        let ip: Ipv4Hdr = ctx.load(ETH_LEN)?;
        if !is_plain_tcp(&ip) {
            return Ok(None);
        }
        (
            Family::V4,
            SockAddr::v4(ip.saddr, 0),
            SockAddr::v4(ip.daddr, 0),
            ip.l4_len(),
            u64::from(u16::from_be(ip.tot_len)),
            TCP_OFF,
        )
    } else if eth_type == ETH_P_IPV6_RAW {
        let ip: Ipv6Hdr = ctx.load(ETH_LEN)?;
        if !is_plain_tcp6(&ip) {
            return Ok(None);
        }
        let payload = u32::from(u16::from_be(ip.payload_len));
        (
            Family::V6,
            SockAddr::v6(ip.saddr, 0),
            SockAddr::v6(ip.daddr, 0),
            payload,
            u64::from(payload) + IP6_LEN as u64,
            TCP6_OFF,
        )
    } else {
        return Ok(None);
    };
    let tcp: TcpHead = ctx.load(tcp_off)?;
    Ok(Some(Reply {
        family,
        from: SockAddr { port: u16::from_be(tcp.source), ..from },
        to: SockAddr { port: u16::from_be(tcp.dest), ..to },
        segment: tcp.segment(l4_len),
        bytes,
    }))
}

fn try_tc(ctx: &TcContext) -> Result<Outcome, i64> {
    let Some(reply) = parse(ctx)? else {
        return Ok(Outcome::Ignored);
    };
    let client = reply.to;
    let Some(entry) = CONNTRACK.get_ptr_mut(&client) else {
        return Ok(Outcome::Ignored);
    };
    // SAFETY: copied out at once; LRU slots may be recycled later.
    let flow = unsafe { *entry };
    if flow.proxy != reply.from {
        // The client talks to someone else from the same port: not our flow.
        return Ok(Outcome::Ignored);
    }
    // SAFETY: updated in place, only the proxy's half-close fields and the client's `acked` (XDP
    // writes the others).
    let over = unsafe { (*entry).track(Side::Proxy, reply.segment) };
    rewrite_source(ctx, &reply, &flow.orig)?;
    // SAFETY: the context's skb pointer; `ifindex` is a readable `__sk_buff` field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count_packet(ifindex, &flow.orig, PacketEvent::Rewritten(reply.bytes));
    if over {
        // Reset, or the proxy's last ACK of a closed flow.
        let _ = CONNTRACK.remove(&client);
    }
    Ok(Outcome::Captured)
}

/// Reverse NAT: the reply's source becomes `orig` (the VIP:port, of the reply's family). The
/// helpers know whether the skb carries a partial (offloaded) checksum and update it right; the
/// address goes in 4-byte words, each a pseudo-header change of the TCP checksum.
#[inline(always)]
fn rewrite_source(ctx: &TcContext, reply: &Reply, orig: &SockAddr) -> Result<(), i64> {
    let (old, new) = (words(&reply.from.addr), words(&orig.addr));
    let tcp_off = match reply.family {
        Family::V4 => {
            // IPv4-mapped: the address is the last word, also in the IP header checksum.
            replace_address_word(ctx, TCP_OFF, old[3], new[3])?;
            ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old[3]), u64::from(new[3]), 4)?;
            ctx.store(IP_SRC_OFF, &new[3], 0)?;
            TCP_OFF
        }
        Family::V6 => {
            replace_address_word(ctx, TCP6_OFF, old[0], new[0])?;
            replace_address_word(ctx, TCP6_OFF, old[1], new[1])?;
            replace_address_word(ctx, TCP6_OFF, old[2], new[2])?;
            replace_address_word(ctx, TCP6_OFF, old[3], new[3])?;
            ctx.store(IP6_SRC_OFF, &orig.addr, 0)?;
            TCP6_OFF
        }
    };
    let (old_port, new_port) = (reply.from.port.to_be(), orig.port.to_be());
    ctx.l4_csum_replace(tcp_off + TCP_CSUM_IN_HDR, u64::from(old_port), u64::from(new_port), 2)?;
    ctx.store(tcp_off, &new_port, 0)?;
    Ok(())
}

/// Updates the TCP checksum (at `tcp_off` + 16) for one changed 4-byte word of the pseudo header.
#[inline(always)]
fn replace_address_word(ctx: &TcContext, tcp_off: usize, old: u32, new: u32) -> Result<(), i64> {
    ctx.l4_csum_replace(tcp_off + TCP_CSUM_IN_HDR, u64::from(old), u64::from(new), BPF_F_PSEUDO_HDR | 4)
}

/// An address as four words, as they sit in the packet.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
