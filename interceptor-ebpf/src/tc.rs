//! `tc` egress on the host side of pod veths (packet mode): replies the proxy sends on a flow XDP
//! rewrote get the VIP:port back as their source, so the client sees the peer it connected to;
//! the proxy's FIN, ACK and RST go into the flow's close tracking.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use interceptor_common::{packet::Side, stats::Program, SockAddr4};

use crate::{
    maps::CONNTRACK,
    packet::{
        is_plain_tcp, Ipv4Hdr, TcpHead, ETH_LEN, ETH_P_IP_RAW, IP_CSUM_OFF, IP_SRC_OFF, TCP_CSUM_OFF, TCP_OFF,
        TCP_SPORT_OFF,
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

fn try_tc(ctx: &TcContext) -> Result<Outcome, i64> {
    let eth_type: u16 = ctx.load(12)?;
    if eth_type != ETH_P_IP_RAW {
        return Ok(Outcome::Ignored);
    }
    let ip: Ipv4Hdr = ctx.load(ETH_LEN)?;
    if !is_plain_tcp(&ip) {
        return Ok(Outcome::Ignored);
    }
    let tcp: TcpHead = ctx.load(TCP_OFF)?;
    let client = SockAddr4::new(ip.daddr, u16::from_be(tcp.dest));
    let Some(entry) = CONNTRACK.get_ptr_mut(client) else {
        return Ok(Outcome::Ignored);
    };
    // SAFETY: copied out at once; LRU slots may be recycled later.
    let flow = unsafe { *entry };
    if flow.proxy != SockAddr4::new(ip.saddr, u16::from_be(tcp.source)) {
        // The client talks to someone else from the same port: not our flow.
        return Ok(Outcome::Ignored);
    }
    // SAFETY: updated in place, only the proxy's half-close fields and the client's `acked` (XDP
    // writes the others).
    let over = unsafe { (*entry).track(Side::Proxy, tcp.segment(&ip)) };
    let (old_ip, new_ip) = (u32::from_ne_bytes(ip.saddr), u32::from_ne_bytes(flow.orig.addr));
    let (old_port, new_port) = (tcp.source, flow.orig.port.to_be());
    // The helpers know whether the skb carries a partial (offloaded) checksum and update it right.
    ctx.l4_csum_replace(TCP_CSUM_OFF, u64::from(old_ip), u64::from(new_ip), BPF_F_PSEUDO_HDR | 4)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_ip), u64::from(new_ip), 4)?;
    ctx.store(IP_SRC_OFF, &new_ip, 0)?;
    ctx.l4_csum_replace(TCP_CSUM_OFF, u64::from(old_port), u64::from(new_port), 2)?;
    ctx.store(TCP_SPORT_OFF, &new_port, 0)?;
    // SAFETY: the context's skb pointer; `ifindex` is a readable `__sk_buff` field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count_packet(ifindex, &flow.orig, PacketEvent::Rewritten(u64::from(u16::from_be(ip.tot_len))));
    if over {
        // Reset, or the proxy's last ACK of a closed flow.
        let _ = CONNTRACK.remove(client);
    }
    Ok(Outcome::Captured)
}
