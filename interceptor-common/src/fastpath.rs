//! The socket fast path: pairs of local sockets (a pod and the proxy) whose sends skip TCP/IP and
//! the veth, moved by `sk_msg` straight into the peer's receive queue.

use crate::SockAddr;

/// Map name: sockhash of the paired sockets, by [`SockPair`] as each socket sees itself.
pub const SOCK_PAIRS_MAP: &str = "SOCK_PAIRS";
/// Map name: LRU hash, [`SockPair`] (as the socket sees itself) → [`FastPath`].
pub const FAST_PATH_MAP: &str = "FAST_PATH";
/// Map name: LRU hash, [`SockPair`] of one of the proxy's two sockets of a spliced connection →
/// [`Splice`]. Written by the proxy only.
pub const SPLICE_MAP: &str = "SPLICE";
/// Global: byte offset of `sk_user_data` in the running kernel's `struct sock` (from its BTF;
/// Rust programs get no CO-RE relocations), where a socket in a sockhash keeps its `sk_psock`.
pub const SOCK_USER_DATA_OFFSET: &str = "SOCK_USER_DATA_OFFSET";
/// Global: byte offset of `msg_tot_len` in the running kernel's `struct sk_psock`: bytes moved
/// into the socket and not read yet.
pub const PSOCK_QUEUED_OFFSET: &str = "PSOCK_QUEUED_OFFSET";
/// Capacity of both maps: sockets of captured connections on one node.
pub const FAST_PATH_MAX_ENTRIES: u32 = 65536;

/// Bytes a socket may hold moved into it and not read yet. The kernel gives that queue no flow
/// control of its own (it is charged to the protocol's memory, not bounded by the receive
/// buffer), so a reader that falls behind could make it grow without bound: a send that would
/// take the queue past this many bytes goes through TCP instead, whose window does bound it, and
/// so does the rest of that socket's connection. What counts is the kernel's own count of the
/// queue (`sk_psock.msg_tot_len`), not a guess from traffic: a connection whose reader keeps up —
/// kept alive, one-way stream or tunnel — stays on the fast path for good, and one whose reader
/// does not (a pod that stops reading, the proxy behind a pipelining client) falls back at the
/// same point whatever else it sends. 4 MiB: what one TCP receive buffer may hold by default
/// (`tcp_rmem`'s maximum is 6 MiB).
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
    /// Bytes it has moved into its peer (0 for a socket whose first send went through TCP).
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
    /// The kernel address of the socket's `struct sock`, once paired: its peer reads the socket's
    /// queue of moved bytes through it (readable by root only, as the map is).
    pub sock: u64,
    /// Bytes it moved past its peer, the proxy, straight into the far end of a spliced connection
    /// (not in [`Self::moved`], which counts what the proxy had to forward).
    pub spliced: u64,
}

/// The socket that will be this key's peer is in the sockhash; this one is not connected yet.
pub const FAST_PATH_EXPECTED: u32 = 1;
/// In the sockhash: its sends go to its peer while the peer is there and reads (its queue under
/// [`FAST_PATH_BUDGET`]).
pub const FAST_PATH_ON: u32 = 2;
/// Sends through TCP for the rest of the connection: its first send found no peer bound to it,
/// the peer was gone, or its queue was full. Never back: data still in flight through TCP would
/// be overtaken. Also written for the peer of an opener that could not pair, so the peer does not
/// join.
pub const FAST_PATH_OFF: u32 = 3;

const _: () = assert!(core::mem::size_of::<FastPath>() == 56);

/// One of the proxy's two sockets of a connection it relays as a byte stream (a TCP route, both
/// ends paired pods): the other one, and what the proxy forwarded from this one to it. While that
/// is everything this socket's peer moved into it — nothing unread, nothing on its way — the
/// peer's sends go straight into the far end's receive queue, behind all the proxy forwarded:
/// the proxy's writes queue their bytes there before they return, and it publishes the count only
/// then, so no byte can overtake another. Anything else (the count behind, a socket off the fast
/// path, the far end's queue full) sends the usual way, through the proxy, which is never out of
/// order either. The proxy publishes the count whenever it has read all a side sent; each entry
/// holds its socket's cookie, and the other socket's entry must name it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Splice {
    /// This socket's cookie: the entry is for it only (its address may be reused).
    pub cookie: u64,
    /// The proxy's other socket of the connection, by its own view.
    pub other: SockPair,
    /// The other socket's cookie.
    pub other_cookie: u64,
    /// Bytes the proxy read from this socket and wrote on the other (all it ever read from it).
    pub forwarded: u64,
}

const _: () = assert!(core::mem::size_of::<Splice>() == 64);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding (SockAddr's is explicit), every bit pattern valid.
unsafe impl aya::Pod for SockPair {}
#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, explicit padding, every bit pattern valid.
unsafe impl aya::Pod for FastPath {}
#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no padding (SockPair's is explicit), every bit pattern valid.
unsafe impl aya::Pod for Splice {}

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
