//! The socket fast path: pairs of local sockets (a pod and the proxy) whose sends skip TCP/IP and
//! the veth, moved by `sk_msg` straight into the peer's receive queue.

use crate::SockAddr;

/// Map name: sockhash of the paired sockets, by [`SockPair`] as each socket sees itself.
pub const SOCK_PAIRS_MAP: &str = "SOCK_PAIRS";
/// Map name: LRU hash, [`SockPair`] (as the socket sees itself) → [`FastPath`].
pub const FAST_PATH_MAP: &str = "FAST_PATH";
/// Capacity of both maps: sockets of captured connections on one node.
pub const FAST_PATH_MAX_ENTRIES: u32 = 65536;

/// Bytes one socket may move into its peer's receive queue while the peer sends nothing back
/// (one turn: each move of the peer starts a new one). The kernel gives that queue no flow
/// control of its own (it is charged to the protocol's memory, not bounded by the receive
/// buffer), so a peer that stops reading could make it grow without bound; past this many bytes
/// in one turn the socket sends through TCP, whose window does bound it. Counted per turn, not
/// per connection, so that a kept-alive connection — request, answer, request … — stays on the
/// fast path for good, and a socket falls back only mid-way through a long one-way stream.
/// The restart takes the peer's sending as the sign that it has read, which is not a proof: where
/// the peer's owner sends without having read all that came — the proxy answering one pipelined
/// request while more wait behind it, or relaying a TCP stream or a tunnel both ways — a socket
/// can queue up to this much per send of its peer, without bound over a connection, charged to
/// the receiver (for the proxy's sockets, the agent's memory). 4 MiB: what one TCP receive buffer
/// may hold by default (`tcp_rmem`'s maximum is 6 MiB).
pub const FAST_PATH_BUDGET: u64 = 4 << 20;

/// A TCP socket by its own view of the connection. Its peer on this node is [`Self::peer`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPair {
    /// The socket's own address.
    pub local: SockAddr,
    /// The address it is connected to.
    pub remote: SockAddr,
}

impl SockPair {
    /// The key of the socket at the other end of the same connection.
    #[inline(always)]
    pub fn peer(&self) -> Self {
        Self { local: self.remote, remote: self.local }
    }
}

const _: () = assert!(core::mem::size_of::<SockPair>() == 40);

/// Where a socket stands on the fast path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPath {
    /// Bytes it has moved into its peer since the peer last moved any (against
    /// [`FAST_PATH_BUDGET`]).
    pub moved: u64,
    /// One of the `FAST_PATH_*` states.
    pub state: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// [`FAST_PATH_EXPECTED`]: the network namespace cookie the socket must be in to join (the
    /// proxy's, for the proxy's end of a pod's connection), or 0 for any.
    pub netns: u64,
    /// The socket's own cookie, once paired.
    pub cookie: u64,
    /// The cookie of the socket it is paired with (for [`FAST_PATH_EXPECTED`]: of the opener
    /// that expects it); 0 until the peer joins. Moves go only to that socket.
    pub peer_cookie: u64,
}

/// The socket that will be this key's peer is in the sockhash; this one is not connected yet.
pub const FAST_PATH_EXPECTED: u32 = 1;
/// In the sockhash: its sends go to its peer while the peer is there and the budget lasts.
pub const FAST_PATH_ON: u32 = 2;
/// Sends through TCP for the rest of the connection: its first send found no peer bound to it,
/// the peer went back to TCP, or the budget ran out. Never back: data still in flight through
/// TCP would be overtaken. Also written for the peer of an opener that could not pair, so the
/// peer does not join.
pub const FAST_PATH_OFF: u32 = 3;

const _: () = assert!(core::mem::size_of::<FastPath>() == 40);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding (SockAddr's is explicit), every bit pattern valid.
unsafe impl aya::Pod for SockPair {}
#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
unsafe impl aya::Pod for FastPath {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_of_the_peer_is_the_socket() {
        let pair =
            SockPair { local: SockAddr::v4([10, 244, 1, 2], 40000), remote: SockAddr::v4([10, 244, 0, 1], 15001) };
        assert_eq!(pair.peer().local, pair.remote);
        assert_eq!(pair.peer().peer(), pair);
    }
}
