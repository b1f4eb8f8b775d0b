//! Which interfaces packet mode attaches to: the node's interfaces whose names match the settings'
//! patterns, re-read whenever the kernel reports a link change over rtnetlink.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `RTMGRP_LINK`: the rtnetlink multicast group of link (interface) changes.
const RTMGRP_LINK: u32 = 1;

/// Whether interface `name` matches shell-style `pattern` (`*`, `?`, `[…]`); a pattern that is not
/// valid glob syntax only matches its literal text.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).map_or(pattern == name, |p| p.matches(name))
}

/// The interfaces of the current network namespace: name → index.
pub(crate) fn list() -> io::Result<BTreeMap<String, u32>> {
    let interfaces = nix::net::if_::if_nameindex().map_err(io::Error::from)?;
    Ok(interfaces.iter().map(|i| (i.name().to_string_lossy().into_owned(), i.index())).collect())
}

/// A netlink socket subscribed to link changes. Readable whenever an interface appears, goes or
/// changes; the messages themselves are not parsed — the caller re-reads the interface list, which
/// also covers lost messages (ENOBUFS).
pub(crate) struct LinkEvents {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl LinkEvents {
    /// Opens and binds the socket in the current network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; we set family and groups.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = RTMGRP_LINK;
        // SAFETY: `addr` is a properly sized sockaddr_nl.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the `AsyncFd` owns the descriptor for its whole life, so it stays open while
        // registered.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd)? };
        Ok(Self { fd })
    }

    /// Waits for the next batch of link events and drains it.
    pub(crate) async fn changed(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading into a local buffer of the given length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => break,
                    // Overrun: events were lost, which a full re-read covers.
                    _ if err.raw_os_error() == Some(libc::ENOBUFS) => continue,
                    _ => return Err(err),
                }
            }
        }
        guard.clear_ready();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs_match_like_the_shell() {
        assert!(glob_match("veth*", "veth1234"));
        assert!(glob_match("veth*", "veth"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("ic*-ab12", "ic3-ab12"));
        assert!(!glob_match("ic*-ab12", "ic3-ab13"));
        assert!(glob_match("eth?", "eth0"));
        assert!(!glob_match("eth?", "eth10"));
        assert!(glob_match("lo", "lo"));
        assert!(!glob_match("lo", "lo0"));
    }

    #[test]
    fn lists_the_loopback_interface() {
        let all = super::list().unwrap();
        assert_eq!(all.get("lo"), Some(&1), "{all:?}");
    }
}
