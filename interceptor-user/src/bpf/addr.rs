//! Conversions between std socket addresses and the kernel maps' [`SockAddr4`].

use std::net::{Ipv4Addr, SocketAddrV4};

use interceptor_common::SockAddr4;

/// The map form of `addr`: octets as they are (network order), port in host order, zero padding.
pub(crate) fn to_kernel(addr: SocketAddrV4) -> SockAddr4 {
    SockAddr4::new(addr.ip().octets(), addr.port())
}

/// The std form of a map address; the padding is ignored.
pub(crate) fn from_kernel(addr: SockAddr4) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr.addr), addr.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octets_stay_in_network_order_and_port_in_host_order() {
        let kernel = to_kernel("10.96.0.10:8080".parse().unwrap());
        assert_eq!(kernel.addr, [10, 96, 0, 10]);
        assert_eq!(kernel.port, 8080);
        assert_eq!(kernel._pad, 0);
    }

    #[test]
    fn round_trips() {
        for text in ["0.0.0.0:0", "10.96.0.10:80", "255.255.255.255:65535", "127.0.0.1:15001"] {
            let addr: SocketAddrV4 = text.parse().unwrap();
            assert_eq!(from_kernel(to_kernel(addr)), addr, "{text}");
        }
    }

    #[test]
    fn padding_is_ignored_when_reading() {
        let mut kernel = SockAddr4::new([10, 0, 0, 1], 443);
        kernel._pad = 0xffff;
        assert_eq!(from_kernel(kernel), "10.0.0.1:443".parse().unwrap());
    }

    #[test]
    fn matches_what_connect4_builds_from_the_socket_address() {
        // connect4 sees `user_ip4` (network order in memory) and `user_port` (network order in the
        // low 16 bits); it keys the maps by `ip.to_ne_bytes()` and `u16::from_be(port as u16)`.
        let addr: SocketAddrV4 = "10.96.0.10:80".parse().unwrap();
        let user_ip4 = u32::from_ne_bytes(addr.ip().octets());
        let user_port = u32::from(addr.port().to_be());
        let seen = SockAddr4::new(user_ip4.to_ne_bytes(), u16::from_be(user_port as u16));
        assert_eq!(seen, to_kernel(addr));
    }
}
