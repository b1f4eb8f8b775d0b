//! Original destinations of redirected connections, handed from the connect hook to the proxy.
//!
//! `connect4`/`connect6` know the original destination but not yet the client port, so they store it by socket
//! cookie; `sockops` re-keys it by the client's address once the connection is established, which
//! is the peer address the proxy sees on accept.

/// Map name: socket cookie (`u64`) → original destination ([`crate::SockAddr`]).
pub const ORIG_DST_BY_COOKIE_MAP: &str = "ORIG_DST_COOKIE";
/// Map name: client address ([`crate::SockAddr`]) → original destination ([`crate::SockAddr`]).
pub const ORIG_DST_MAP: &str = "ORIG_DST";
/// Capacity of both LRU maps: the number of connections in flight between hook and accept.
pub const ORIG_DST_MAX_ENTRIES: u32 = 65536;
