//! Packet parsing and checksum arithmetic shared by the XDP and TC programs: one bounds-checked
//! accessor and the header layouts (IPv4 without options, IPv6 without extension headers, TCP).

use aya_ebpf::programs::XdpContext;
use interceptor_common::packet::Segment;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// `ETH_P_IP`, as it sits in the frame (network order) read as a native `u16`.
pub const ETH_P_IP_RAW: u16 = 0x0800u16.to_be();
/// `ETH_P_IPV6`, as it sits in the frame, read as a native `u16`.
pub const ETH_P_IPV6_RAW: u16 = 0x86ddu16.to_be();
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// IPv4 header length without options; packets with options are left alone.
pub const IP_LEN: usize = 20;
/// Offset of the IPv4 header checksum.
pub const IP_CSUM_OFF: usize = ETH_LEN + 10;
/// Offset of the IPv4 source address.
pub const IP_SRC_OFF: usize = ETH_LEN + 12;
/// Offset of the TCP header.
pub const TCP_OFF: usize = ETH_LEN + IP_LEN;
/// IPv6 header length; packets with extension headers are left alone, as IPv4 ones with options.
pub const IP6_LEN: usize = 40;
/// Offset of the IPv6 source address.
pub const IP6_SRC_OFF: usize = ETH_LEN + 8;
/// Offset of the TCP header after an IPv6 header.
pub const TCP6_OFF: usize = ETH_LEN + IP6_LEN;
/// Offset of the TCP checksum within the TCP header.
pub const TCP_CSUM_IN_HDR: usize = 16;
pub use interceptor_common::packet::{TCP_ACK, TCP_SYN};

/// The IPv4 header fields we read. `repr(C)` in wire layout; multi-byte fields in network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in words (low nibble).
    pub version_ihl: u8,
    /// DSCP/ECN.
    pub tos: u8,
    /// Total length, network order.
    pub tot_len: u16,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset, network order.
    pub frag_off: u16,
    /// TTL.
    pub ttl: u8,
    /// Protocol.
    pub protocol: u8,
    /// Header checksum.
    pub check: u16,
    /// Source address, network order.
    pub saddr: [u8; 4],
    /// Destination address, network order.
    pub daddr: [u8; 4],
}

/// The IPv6 header. `repr(C)` in wire layout; multi-byte fields in network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label.
    pub ver_tc_flow: [u8; 4],
    /// Payload length (everything after this header), network order.
    pub payload_len: u16,
    /// Next header: TCP directly, or an extension header.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
}

/// The first 14 bytes of a TCP header (ports, sequence numbers, offset and flags).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHead {
    /// Source port, network order.
    pub source: u16,
    /// Destination port, network order.
    pub dest: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack_seq: u32,
    /// Data offset.
    pub doff: u8,
    /// Flags.
    pub flags: u8,
}

impl TcpHead {
    /// What close tracking needs of this segment, `l4_len` being the bytes after the IP header
    /// (TCP header and payload).
    #[inline(always)]
    pub fn segment(&self, l4_len: u32) -> Segment {
        let header = u32::from(self.doff >> 4) * 4;
        let len = l4_len.saturating_sub(header);
        Segment { flags: self.flags, seq: u32::from_be(self.seq), ack: u32::from_be(self.ack_seq), len }
    }
}

impl Ipv4Hdr {
    /// Bytes after the header (TCP header and payload); the header has no options.
    #[inline(always)]
    pub fn l4_len(&self) -> u32 {
        u32::from(u16::from_be(self.tot_len)).saturating_sub(IP_LEN as u32)
    }
}

/// Whether an IPv6 header is one we rewrite: TCP right after it (no extension headers, so no
/// fragment header either).
#[inline(always)]
pub fn is_plain_tcp6(ip: &Ipv6Hdr) -> bool {
    ip.ver_tc_flow[0] >> 4 == 6 && ip.next_header == IPPROTO_TCP
}

/// Whether an IPv4 header is one we rewrite: no options, TCP, not a later fragment.
#[inline(always)]
pub fn is_plain_tcp(ip: &Ipv4Hdr) -> bool {
    // Fragment offset is the low 13 bits; later fragments carry no TCP header.
    ip.version_ihl == 0x45 && ip.protocol == IPPROTO_TCP && (u16::from_be(ip.frag_off) & 0x1fff) == 0
}

/// A pointer to a `T` at `offset` in the XDP frame, or `Err` when the frame is shorter.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 (eqn. 3) incremental update of an Internet checksum when one 16-bit word changes from
/// `old` to `new`: `HC' = ~(~HC + ~m + m')`. All three are raw words as they sit in the packet
/// (read as native `u16`s); one's-complement sums do not depend on byte order.
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// [`csum_replace2`] for a field of `N` bytes (`N` even: an IPv4 or IPv6 address), word by word.
#[inline(always)]
pub fn csum_replace<const N: usize>(mut check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut i = 0;
    while i + 1 < N {
        check =
            csum_replace2(check, u16::from_ne_bytes([old[i], old[i + 1]]), u16::from_ne_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    check
}
