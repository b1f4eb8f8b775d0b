//! `xdp` on the host side of pod veths (packet mode): a TCP packet (IPv4 or IPv6) to a captured
//! VIP:port is
//! rewritten to the proxy's address of its family (DNAT, checksums updated incrementally: IPv4's
//! header checksum and TCP's, whose pseudo header holds the addresses; IPv6 has only TCP's) and its
//! flow recorded
//! in `CONNTRACK`, keyed by the client's address — which is what the proxy sees as its peer.
//!
//! A SYN opens a flow only while the proxy captures (ready and heartbeat fresh, or fail-closed);
//! later packets follow the flow they belong to, and the entry goes once the flow is over (a
//! reset, or both FINs acknowledged; TC sees the proxy's half). Everything else passes untouched.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext};
use interceptor_common::{
    packet::{Conntrack, Segment, Side},
    stats::Program,
    SockAddr,
};

use crate::{
    maps::{CAPTURE, CONNTRACK, PROXY_TARGET},
    packet::{
        csum_replace, csum_replace2, is_plain_tcp, is_plain_tcp6, ptr_at, Ipv4Hdr, Ipv6Hdr, TcpHead, ETH_LEN,
        ETH_P_IPV6_RAW, ETH_P_IP_RAW, IP6_LEN, TCP6_OFF, TCP_ACK, TCP_CSUM_IN_HDR, TCP_OFF, TCP_SYN,
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

/// The IP header of a TCP packet, by family, as pointers into the frame.
#[derive(Clone, Copy)]
enum Ip {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
}

/// A TCP packet we may rewrite: where its headers are, and what the flow logic reads of it.
struct Packet {
    ip: Ip,
    tcp: *mut TcpHead,
    tcp_check: *mut u16,
    src: SockAddr,
    dst: SockAddr,
    segment: Segment,
    /// IP header and payload.
    bytes: u64,
}

/// The frame as a [`Packet`], or `None` when it is not plain TCP (another protocol, IPv4 options,
/// IPv6 extension headers: passed through untouched).
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Packet>, ()> {
    let eth_type: *const u16 = ptr_at(ctx, 12)?;
    // SAFETY: bounds checked by `ptr_at`; unaligned-safe since the verifier checks packet access.
    let eth_type = unsafe { *eth_type };
    let (ip, tcp_off, src, dst, l4_len, bytes) = if eth_type == ETH_P_IP_RAW {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: bounds checked by `ptr_at`.
        let hdr = unsafe { *ip };
        if !is_plain_tcp(&hdr) {
            return Ok(None);
        }
        (
            Ip::V4(ip),
            TCP_OFF,
            SockAddr::v4(hdr.saddr, 0),
            SockAddr::v4(hdr.daddr, 0),
            hdr.l4_len(),
            u64::from(u16::from_be(hdr.tot_len)),
        )
    } else if eth_type == ETH_P_IPV6_RAW {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: bounds checked by `ptr_at`.
        let hdr = unsafe { *ip };
        if !is_plain_tcp6(&hdr) {
            return Ok(None);
        }
        let payload = u32::from(u16::from_be(hdr.payload_len));
        (
            Ip::V6(ip),
            TCP6_OFF,
            SockAddr::v6(hdr.saddr, 0),
            SockAddr::v6(hdr.daddr, 0),
            payload,
            u64::from(payload) + IP6_LEN as u64,
        )
    } else {
        return Ok(None);
    };
    let tcp: *mut TcpHead = ptr_at(ctx, tcp_off)?;
    let tcp_check: *mut u16 = ptr_at(ctx, tcp_off + TCP_CSUM_IN_HDR)?;
    // SAFETY: bounds checked by `ptr_at`.
    let head = unsafe { *tcp };
    Ok(Some(Packet {
        ip,
        tcp,
        tcp_check,
        src: SockAddr { port: u16::from_be(head.source), ..src },
        dst: SockAddr { port: u16::from_be(head.dest), ..dst },
        segment: head.segment(l4_len),
        bytes,
    }))
}

fn try_xdp(ctx: &XdpContext) -> Result<Outcome, ()> {
    let Some(pkt) = parse(ctx)? else {
        return Ok(Outcome::Ignored);
    };
    let dst = pkt.dst;
    if CAPTURE.get_ptr(&dst).is_none() {
        return Ok(Outcome::Ignored);
    }
    let client = pkt.src;
    let ifindex = ctx.ingress_ifindex() as u32;

    let (flow, over) = if pkt.segment.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let target = PROXY_TARGET.get(0).ok_or(())?;
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        // Not capturing, or no proxy listener of this family: the flow goes direct.
        let proxy = if target.captures(now) { target.proxy_for(&dst) } else { None };
        let Some(proxy) = proxy else {
            // Forget any earlier flow from this client port, or its later packets would still be
            // rewritten to the (absent) proxy.
            let _ = CONNTRACK.remove(&client);
            return Ok(Outcome::Bypassed);
        };
        let flow = Conntrack { orig: dst, proxy, ..Conntrack::default() };
        if CONNTRACK.insert(&client, &flow, 0).is_err() {
            return Err(());
        }
        count_packet(ifindex, &dst, PacketEvent::NewFlow);
        (flow, false)
    } else {
        match CONNTRACK.get_ptr_mut(&client) {
            // SAFETY: the entry is updated in place (only the client's half-close fields and the
            // proxy's `acked`; TC writes the others) and copied out at once: LRU slots may be
            // recycled later.
            Some(flow) if unsafe { (*flow).orig } == dst => unsafe {
                let over = (*flow).track(Side::Client, pkt.segment);
                (*flow, over)
            },
            _ => {
                // A flow from before capture began, or one the proxy was not ready for.
                count_packet(ifindex, &dst, PacketEvent::Miss);
                return Ok(Outcome::Bypassed);
            }
        }
    };

    rewrite_destination(&pkt, &flow.proxy);
    count_packet(ifindex, &dst, PacketEvent::Rewritten(pkt.bytes));
    if over {
        // Reset, or the client's last ACK of a closed flow: nothing more will follow this way.
        let _ = CONNTRACK.remove(&client);
    }
    Ok(Outcome::Captured)
}

/// DNAT: the packet's destination becomes `proxy` (of the packet's family: `proxy_for`).
#[inline(always)]
fn rewrite_destination(pkt: &Packet, proxy: &SockAddr) {
    let new_port = proxy.port.to_be();
    // SAFETY: every pointer was bounds checked by `ptr_at` in `parse`; plain stores into the frame.
    unsafe {
        // The TCP checksum covers the pseudo header (so the address) and the port.
        let mut check = *pkt.tcp_check;
        match pkt.ip {
            Ip::V4(ip) => {
                let (old, new) = ((*ip).daddr, proxy.v4_octets());
                (*ip).check = csum_replace((*ip).check, &old, &new);
                (*ip).daddr = new;
                check = csum_replace(check, &old, &new);
            }
            Ip::V6(ip) => {
                let old = (*ip).daddr;
                (*ip).daddr = proxy.addr;
                check = csum_replace(check, &old, &proxy.addr);
            }
        }
        *pkt.tcp_check = csum_replace2(check, (*pkt.tcp).dest, new_port);
        (*pkt.tcp).dest = new_port;
    }
}
