//! The capture set: which service addresses are redirected to the proxy, and where the proxy is.

use crate::SockAddr;

/// Map name: service VIP:port ([`SockAddr`], either family) → [`CapturedService`].
pub const CAPTURE_MAP: &str = "CAPTURE";
/// Map name: a one-slot array holding the [`ProxyTarget`].
pub const PROXY_TARGET_MAP: &str = "PROXY_TARGET";
/// Capacity of [`CAPTURE_MAP`].
pub const CAPTURE_MAX_ENTRIES: u32 = 16384;

/// Socket mark the proxy puts on its own upstream sockets; the connect hook never redirects them,
/// so the proxy can live inside a captured cgroup without looping back to itself.
pub const PROXY_SOCKET_MARK: u32 = 0x1e7_0001;

/// What the loader knows about a captured VIP:port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapturedService {
    /// Index of the service in the agent's route table at the time of the last sync.
    pub service_id: u32,
}

const _: () = assert!(core::mem::size_of::<CapturedService>() == 4);

/// Where captured connections are sent, and whether capture is on at all.
///
/// Capture applies while `ready != 0` and the agent's heartbeat is younger than
/// [`HEARTBEAT_STALE_NS`] — so a proxy killed with SIGKILL stops being "ready" on its own, without a
/// supervisor — or always, with `fail_closed != 0` (connections then fail while the proxy is down).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyTarget {
    /// Proxy address as pods reach it over IPv4 (stored IPv4-mapped); IPv4 destinations go here.
    pub addr4: SockAddr,
    /// Proxy address as pods reach it over IPv6; IPv6 destinations go here. Unset (port 0): the
    /// proxy has no IPv6 listener, and IPv6 destinations are left alone (fail open).
    pub addr6: SockAddr,
    /// Non-zero while the proxy accepts connections. A `u32`, not `bool`: no padding, no invalid
    /// bit patterns. While zero, captured connects go to their original destination (fail open).
    pub ready: u32,
    /// Non-zero for `failurePolicy: closed`: capture regardless of readiness.
    pub fail_closed: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` reads) of the agent's last heartbeat.
    pub heartbeat_ns: u64,
    /// With the `sk_msg` fast path on (see `crate::fastpath`), the proxy's network namespace
    /// cookie (`SO_NETNS_COOKIE`; cookies start at 1): only sockets there are the proxy's,
    /// whatever mark a pod puts on its own. 0: the fast path is off.
    pub proxy_netns: u64,
}

/// A heartbeat older than this (ns) means the proxy is gone: 700 ms, so with the agent beating every
/// 200 ms new connections fail open well within a second of the proxy's death.
pub const HEARTBEAT_STALE_NS: u64 = 700_000_000;

impl ProxyTarget {
    /// Whether connections to captured destinations go to the proxy at time `now_ns`.
    #[inline(always)]
    pub fn captures(&self, now_ns: u64) -> bool {
        self.fail_closed != 0 || (self.ready != 0 && now_ns.wrapping_sub(self.heartbeat_ns) < HEARTBEAT_STALE_NS)
    }

    /// The proxy address of `dst`'s family (a connection cannot change family on the way), or
    /// `None` when the proxy does not listen in that family.
    #[inline(always)]
    pub fn proxy_for(&self, dst: &SockAddr) -> Option<SockAddr> {
        let proxy = if dst.is_v4() { self.addr4 } else { self.addr6 };
        (!proxy.is_unset()).then_some(proxy)
    }
}

const _: () = assert!(core::mem::size_of::<ProxyTarget>() == 64);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
unsafe impl aya::Pod for CapturedService {}
#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
unsafe impl aya::Pod for ProxyTarget {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_needs_a_fresh_heartbeat_unless_fail_closed() {
        let t = ProxyTarget { ready: 1, heartbeat_ns: 1_000_000_000, ..ProxyTarget::default() };
        assert!(t.captures(1_000_000_000 + HEARTBEAT_STALE_NS - 1));
        assert!(!t.captures(1_000_000_000 + HEARTBEAT_STALE_NS));
        assert!(!ProxyTarget { ready: 0, ..t }.captures(1_000_000_000));
        assert!(ProxyTarget { ready: 0, fail_closed: 1, ..t }.captures(u64::MAX));
    }

    #[test]
    fn each_family_goes_to_the_proxy_address_of_its_family() {
        let addr4 = SockAddr::v4([10, 244, 0, 1], 15001);
        let addr6 = SockAddr::v6([0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 15001);
        let vip4 = SockAddr::v4([10, 96, 0, 10], 80);
        let vip6 = SockAddr::v6([0xfd, 0, 0, 0x10, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a], 80);
        let both = ProxyTarget { addr4, addr6, ..ProxyTarget::default() };
        assert_eq!(both.proxy_for(&vip4), Some(addr4));
        assert_eq!(both.proxy_for(&vip6), Some(addr6));
        let v4_only = ProxyTarget { addr4, ..ProxyTarget::default() };
        assert_eq!(v4_only.proxy_for(&vip6), None, "no IPv6 listener: IPv6 is left alone");
        assert!(vip4.is_v4() && !vip6.is_v4());
        assert_eq!(vip4.v4_octets(), [10, 96, 0, 10]);
    }
}
