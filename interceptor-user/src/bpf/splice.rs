//! Splicing the byte streams the proxy relays between two pods of this node: the proxy names its
//! two sockets of a connection in `SPLICE` and publishes there how far it has forwarded, and the
//! kernel's `sk_msg` moves a pod's sends past the proxy once it has forwarded everything (see
//! `interceptor_common::fastpath::Splice` for why no byte can overtake another).

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use interceptor_common::fastpath::{FastPath, SockPair, Splice, FAST_PATH_MAP, FAST_PATH_ON, SPLICE_MAP};
use tokio::net::TcpStream;

use super::{addr::to_kernel, cookie, lock, maps::take, BpfError};

/// The proxy's handle on `SPLICE` and `FAST_PATH`. Clones share the maps.
#[derive(Clone)]
pub struct SpliceTable {
    splices: Arc<Mutex<HashMap<MapData, SockPair, Splice>>>,
    fast_path: Arc<HashMap<MapData, SockPair, FastPath>>,
}

impl SpliceTable {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            splices: Arc::new(Mutex::new(take(ebpf, SPLICE_MAP)?)),
            fast_path: Arc::new(take(ebpf, FAST_PATH_MAP)?),
        })
    }

    /// Splices the proxy's two sockets of one relayed byte stream, `client` (accepted from a pod)
    /// and `endpoint` (connected to the endpoint), of which `written` bytes read from the client
    /// were written on the endpoint's socket already. `None` when either socket is not on the
    /// fast path: nothing could go past the proxy.
    ///
    /// # Errors
    /// A socket's addresses or cookie cannot be read, or `SPLICE` cannot be written.
    pub fn splice(&self, client: SpliceEnd, endpoint: &TcpStream, written: u64) -> Result<Option<Spliced>, BpfError> {
        let endpoint = SpliceEnd::of(endpoint)?;
        if !(self.on_fast_path(&client) && self.on_fast_path(&endpoint)) {
            return Ok(None);
        }
        let to_endpoint = Forwarded { written: AtomicU64::new(written), published: AtomicU64::new(written) };
        let spliced = Spliced { table: self.clone(), client, endpoint, to_endpoint, to_client: Forwarded::default() };
        // Both entries or neither: `Spliced` removes them when dropped.
        spliced.publish(&spliced.client, &spliced.endpoint, written)?;
        spliced.publish(&spliced.endpoint, &spliced.client, 0)?;
        Ok(Some(spliced))
    }

    /// The socket's entry says it moves its sends into its peer (the pod).
    fn on_fast_path(&self, end: &SpliceEnd) -> bool {
        self.fast_path.get(&end.key, 0).is_ok_and(|state| state.state == FAST_PATH_ON && state.cookie == end.cookie)
    }
}

impl std::fmt::Debug for SpliceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpliceTable").finish_non_exhaustive()
    }
}

/// One of the proxy's sockets, as the kernel's programs know it.
#[derive(Clone, Copy, Debug)]
pub struct SpliceEnd {
    key: SockPair,
    cookie: u64,
}

impl SpliceEnd {
    /// `socket`'s addresses and cookie.
    ///
    /// # Errors
    /// The kernel does not give them (the socket is no longer connected).
    pub fn of(socket: &TcpStream) -> Result<Self, BpfError> {
        let identity = || -> io::Result<Self> {
            let key = SockPair { local: to_kernel(socket.local_addr()?), remote: to_kernel(socket.peer_addr()?) };
            Ok(Self { key, cookie: cookie(socket, libc::SO_COOKIE)? })
        };
        identity().map_err(|source| BpfError::SocketIdentity { source })
    }
}

/// A spliced connection: its two `SPLICE` entries, removed when this drops.
pub struct Spliced {
    table: SpliceTable,
    client: SpliceEnd,
    endpoint: SpliceEnd,
    /// Bytes read from the client and written on the endpoint's socket, and how many of them the
    /// kernel was told about.
    to_endpoint: Forwarded,
    /// Bytes read from the endpoint and written on the client's socket, the same.
    to_client: Forwarded,
}

/// One direction's count of bytes forwarded by the proxy.
#[derive(Default)]
struct Forwarded {
    written: AtomicU64,
    published: AtomicU64,
}

/// Which of a spliced connection's sockets the proxy wrote on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toward {
    /// The endpoint's: bytes read from the client.
    Endpoint,
    /// The client's: bytes read from the endpoint.
    Client,
}

impl Toward {
    /// The other side.
    pub fn opposite(self) -> Self {
        match self {
            Toward::Endpoint => Toward::Client,
            Toward::Client => Toward::Endpoint,
        }
    }
}

impl Spliced {
    /// `n` more bytes were written toward one side (the write has returned: the kernel moved
    /// them), read from the other.
    pub fn wrote(&self, toward: Toward, n: u64) {
        self.direction(toward).0.written.fetch_add(n, Ordering::Relaxed);
    }

    /// The proxy has read all the other side sent so far toward this one: tells the kernel what
    /// it has written of it, so that the pod's next sends can go past the proxy if that is all.
    /// Only then: before, the count could not equal the pod's anyway, and a bulk transfer would
    /// pay a system call per write.
    pub fn caught_up(&self, toward: Toward) {
        let (forwarded, from, to) = self.direction(toward);
        let written = forwarded.written.load(Ordering::Relaxed);
        if forwarded.published.swap(written, Ordering::Relaxed) == written {
            return;
        }
        if let Err(err) = self.publish(from, to, written) {
            // An entry left behind only keeps that direction going through the proxy: its count
            // stays short of the pod's.
            tracing::debug!(%err, "splice count not published; the connection stays relayed");
        }
    }

    /// Toward `toward`: its count, the proxy's socket it reads from, and the one it writes on.
    fn direction(&self, toward: Toward) -> (&Forwarded, &SpliceEnd, &SpliceEnd) {
        match toward {
            Toward::Endpoint => (&self.to_endpoint, &self.client, &self.endpoint),
            Toward::Client => (&self.to_client, &self.endpoint, &self.client),
        }
    }

    /// Bytes the kernel moved past the proxy so far: from the client to the endpoint, and back.
    pub fn moved_past(&self) -> (u64, u64) {
        (self.moved_past_into(&self.client), self.moved_past_into(&self.endpoint))
    }

    /// What the pod at the other end of `end` sent past it: its own entry's count, while it is
    /// still the socket `end` was paired with.
    fn moved_past_into(&self, end: &SpliceEnd) -> u64 {
        match self.table.fast_path.get(&end.key.peer(), 0) {
            Ok(pod) if pod.peer_cookie == end.cookie => pod.spliced,
            _ => 0,
        }
    }

    fn publish(&self, from: &SpliceEnd, to: &SpliceEnd, forwarded: u64) -> Result<(), BpfError> {
        let entry = Splice { cookie: from.cookie, other: to.key, other_cookie: to.cookie, forwarded };
        lock(&self.table.splices)
            .insert(from.key, entry, 0)
            .map_err(|source| BpfError::Map { name: SPLICE_MAP, source })
    }
}

impl Drop for Spliced {
    fn drop(&mut self) {
        let mut splices = lock(&self.table.splices);
        for end in [&self.client, &self.endpoint] {
            // Not there: the LRU evicted it. Left behind, it is bound to a cookie no socket will
            // have again, and the LRU evicts it in time.
            let _ = splices.remove(&end.key);
        }
    }
}

impl std::fmt::Debug for Spliced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spliced")
            .field("client", &self.client)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}
