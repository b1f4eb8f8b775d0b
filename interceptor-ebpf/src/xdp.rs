//! `xdp` on the host side of pod veths (packet mode): a TCP packet to a captured VIP:port is
//! rewritten to the proxy's address (DNAT, checksums updated incrementally) and its flow recorded
//! in `CONNTRACK`, keyed by the client's address — which is what the proxy sees as its peer.
//!
//! A SYN opens a flow only while the proxy captures (ready and heartbeat fresh, or fail-closed);
//! later packets follow the flow they belong to, and the entry goes once the flow is over (a
//! reset, or both FINs acknowledged; TC sees the proxy's half). Everything else passes untouched.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext};
use interceptor_common::{
    packet::{Conntrack, Side},
    stats::Program,
    SockAddr4,
};

use crate::{
    maps::{CAPTURE, CONNTRACK, PROXY_TARGET},
    packet::{
        csum_replace2, csum_replace4, is_plain_tcp, ptr_at, Ipv4Hdr, TcpHead, ETH_LEN, ETH_P_IP_RAW, TCP_ACK,
        TCP_CSUM_OFF, TCP_OFF, TCP_SYN,
    },
    stats::{count, count_packet, Outcome, PacketEvent},
};

#[xdp]
pub fn xdp_capture(ctx: XdpContext) -> u32 {
    // A malformed or short frame is not ours to judge: pass it on (fail open).
    let outcome = try_xdp(&ctx).unwrap_or(Outcome::Error);
    count(Program::Xdp, outcome);
    xdp_action::XDP_PASS
}

fn try_xdp(ctx: &XdpContext) -> Result<Outcome, ()> {
    let eth_type: *const u16 = ptr_at(ctx, 12)?;
    // SAFETY: bounds checked by `ptr_at`; unaligned-safe since the verifier checks packet access.
    if unsafe { *eth_type } != ETH_P_IP_RAW {
        return Ok(Outcome::Ignored);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: bounds checked by `ptr_at`.
    let hdr = unsafe { *ip };
    if !is_plain_tcp(&hdr) {
        return Ok(Outcome::Ignored);
    }
    let tcp: *mut TcpHead = ptr_at(ctx, TCP_OFF)?;
    let tcp_check: *mut u16 = ptr_at(ctx, TCP_CSUM_OFF)?;
    // SAFETY: bounds checked by `ptr_at`.
    let (sport, dport, flags) = unsafe { ((*tcp).source, (*tcp).dest, (*tcp).flags) };
    let dst = SockAddr4::new(hdr.daddr, u16::from_be(dport));
    if CAPTURE.get_ptr(dst).is_none() {
        return Ok(Outcome::Ignored);
    }
    let client = SockAddr4::new(hdr.saddr, u16::from_be(sport));
    let bytes = u64::from(u16::from_be(hdr.tot_len));
    let ifindex = ctx.ingress_ifindex() as u32;

    let (flow, over) = if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let target = PROXY_TARGET.get(0).ok_or(())?;
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if !target.captures(now) {
            // The flow goes direct: forget any earlier flow from this client port, or its later
            // packets would still be rewritten to the (absent) proxy.
            let _ = CONNTRACK.remove(client);
            return Ok(Outcome::Bypassed);
        }
        let flow = Conntrack { orig: dst, proxy: target.addr, ..Conntrack::default() };
        if CONNTRACK.insert(client, flow, 0).is_err() {
            return Err(());
        }
        count_packet(ifindex, &dst, PacketEvent::NewFlow);
        (flow, false)
    } else {
        match CONNTRACK.get_ptr_mut(client) {
            // SAFETY: the entry is updated in place (only the client's half-close fields and the
            // proxy's `acked`; TC writes the others) and copied out at once: LRU slots may be
            // recycled later.
            Some(flow) if unsafe { (*flow).orig } == dst => unsafe {
                let over = (*flow).track(Side::Client, (*tcp).segment(&hdr));
                (*flow, over)
            },
            _ => {
                // A flow from before capture began, or one the proxy was not ready for.
                count_packet(ifindex, &dst, PacketEvent::Miss);
                return Ok(Outcome::Bypassed);
            }
        }
    };

    let proxy = flow.proxy;
    let new_port = proxy.port.to_be();
    // SAFETY: every pointer was bounds checked by `ptr_at` above; plain stores into the frame.
    unsafe {
        (*ip).check = csum_replace4((*ip).check, hdr.daddr, proxy.addr);
        (*ip).daddr = proxy.addr;
        // The TCP checksum covers the pseudo header (so the address) and the port.
        let check = csum_replace4(*tcp_check, hdr.daddr, proxy.addr);
        *tcp_check = csum_replace2(check, dport, new_port);
        (*tcp).dest = new_port;
    }
    count_packet(ifindex, &dst, PacketEvent::Rewritten(bytes));
    if over {
        // Reset, or the client's last ACK of a closed flow: nothing more will follow this way.
        let _ = CONNTRACK.remove(client);
    }
    Ok(Outcome::Captured)
}
