//! Conversions between std socket addresses and the kernel maps' [`SockAddr`]: IPv4 goes in
//! IPv4-mapped (`::ffff:a.b.c.d`) and comes back out as IPv4, so callers only ever see the family
//! the address has.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use interceptor_common::SockAddr;

/// The map form of `addr`: address bytes in network order, port in host order, zero padding.
/// IPv6 flow info and scope are not part of it (the kernel programs never see them).
pub(crate) fn to_kernel(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::v4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::v6(v6.ip().octets(), v6.port()),
    }
}

/// The std form of a map address; IPv4-mapped addresses come back as IPv4. The padding is ignored.
pub(crate) fn from_kernel(addr: SockAddr) -> SocketAddr {
    let ip = Ipv6Addr::from(addr.addr);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(v4.into(), addr.port),
        None => SocketAddr::V6(SocketAddrV6::new(ip, addr.port, 0, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_goes_in_mapped_with_octets_in_network_order_and_port_in_host_order() {
        let kernel = to_kernel("10.96.0.10:8080".parse().unwrap());
        assert_eq!(kernel.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 10]);
        assert_eq!(kernel.port, 8080);
        assert_eq!(kernel._pad, 0);
        assert!(kernel.is_v4());
        let kernel = to_kernel("[fd00:10:96::a]:80".parse().unwrap());
        assert_eq!(kernel.addr, [0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a]);
        assert!(!kernel.is_v4());
    }

    #[test]
    fn round_trips_in_both_families() {
        for text in [
            "0.0.0.0:0",
            "10.96.0.10:80",
            "255.255.255.255:65535",
            "127.0.0.1:15001",
            "[::]:0",
            "[fd00:10:96::a]:80",
            "[2001:db8::1]:15001",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(from_kernel(to_kernel(addr)), addr, "{text}");
        }
    }

    #[test]
    fn a_mapped_peer_is_its_ipv4_address() {
        let peer: SocketAddr = "[::ffff:10.244.0.10]:40000".parse().unwrap();
        assert_eq!(from_kernel(to_kernel(peer)), "10.244.0.10:40000".parse::<SocketAddr>().unwrap());
        assert_eq!(to_kernel(peer), to_kernel("10.244.0.10:40000".parse().unwrap()));
    }

    #[test]
    fn padding_is_ignored_when_reading() {
        let mut kernel = SockAddr::v4([10, 0, 0, 1], 443);
        kernel._pad = 0xffff;
        assert_eq!(from_kernel(kernel), "10.0.0.1:443".parse().unwrap());
    }

    #[test]
    fn matches_what_the_connect_hooks_build_from_the_socket_address() {
        // connect4 sees `user_ip4` (network order in memory) and `user_port` (network order in the
        // low 16 bits); connect6 sees `user_ip6` as four such words. Both key the maps by the
        // in-memory bytes and `u16::from_be(port as u16)`.
        let v4: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let SocketAddr::V4(a) = v4 else { unreachable!() };
        let user_ip4 = u32::from_ne_bytes(a.ip().octets());
        let user_port = u32::from(a.port().to_be());
        let seen = SockAddr::v4(user_ip4.to_ne_bytes(), u16::from_be(user_port as u16));
        assert_eq!(seen, to_kernel(v4));
        // A dual-stack socket connecting to the IPv4 VIP hands connect6 the mapped address.
        let mapped: SocketAddrV6 = "[::ffff:10.96.0.10]:80".parse().unwrap();
        assert_eq!(SockAddr::v6(mapped.ip().octets(), mapped.port()), to_kernel(v4));
    }
}
