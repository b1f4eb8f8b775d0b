//! Upstream connections: pooled HTTP/1.1 clients whose sockets carry the proxy's mark, so the
//! connect hook never captures the proxy's own traffic; TLS originated for clusters that ask.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::tls::upstream::{handshake_error, UpstreamTls};

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle raw connections kept per endpoint; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// How often idle raw connections are checked for expiry, or for their endpoint having closed.
const REAP_INTERVAL: Duration = Duration::from_secs(10);

/// Body of requests sent upstream: streamed from the client, or replayed from a buffer.
pub type UpstreamBody = BoxBody<Bytes, super::cutoff::BoxError>;

/// A pooled client; clones share the pool.
pub type Client = LegacyClient<MarkedConnector, UpstreamBody>;

/// What a pooled client's connections have in common: connect timeout (a DestinationRule
/// setting), HTTP/2 or not, and the TLS identity ([`UpstreamTls::id`]) or plaintext. A pool
/// never mixes TLS and plaintext, nor two TLS identities, to one endpoint.
type PoolKey = (Duration, bool, Option<u64>);

/// Pooled clients by [`PoolKey`], shared by all config versions so a reload keeps the warm
/// connections.
#[derive(Clone)]
pub struct UpstreamClient {
    mark: Option<u32>,
    clients: Arc<Mutex<HashMap<PoolKey, Client>>>,
    /// Idle HTTP/1.1 connections of the fast path (`outbound::relay`), by endpoint.
    idle: Arc<Mutex<HashMap<SocketAddr, Vec<Idle>>>>,
}

/// A raw upstream connection waiting for its next request.
struct Idle {
    conn: TcpStream,
    since: Instant,
}

impl Idle {
    /// Not expired, and not closed by the endpoint: readable while idle means closed (or stray
    /// bytes), useless either way.
    fn usable(&self) -> bool {
        self.since.elapsed() < POOL_IDLE_TIMEOUT
            && matches!(self.conn.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl UpstreamClient {
    /// Clients whose sockets carry `mark` (needs CAP_NET_ADMIN).
    pub fn new(mark: Option<u32>) -> Self {
        Self { mark, clients: Arc::default(), idle: Arc::default() }
    }

    /// The most recently used idle connection to `endpoint` that is still open, if any.
    pub fn checkout(&self, endpoint: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = idle.get_mut(&endpoint)?;
        while let Some(idle) = conns.pop() {
            if idle.usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Closes the idle raw connections that expired or that their endpoint closed, every few
    /// seconds until dropped, so that endpoints which get no more requests keep none.
    pub async fn reap_idle(self) {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        loop {
            tick.tick().await;
            self.prune_idle();
        }
    }

    fn prune_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|_, conns| {
            conns.retain(Idle::usable);
            !conns.is_empty()
        });
    }

    /// Keeps `conn` to `endpoint` for a later request (expired ones are left to `reap_idle`).
    pub fn checkin(&self, endpoint: SocketAddr, conn: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = idle.entry(endpoint).or_default();
        if conns.len() < MAX_IDLE_PER_ENDPOINT {
            conns.push(Idle { conn, since: Instant::now() });
        }
    }

    /// The mark upstream sockets carry.
    pub fn mark(&self) -> Option<u32> {
        self.mark
    }

    /// The pooled client for clusters with this connect timeout; HTTP/2 with prior knowledge
    /// when `http2` (gRPC, whose trailers and streams need HTTP/2 end to end), else HTTP/1.1;
    /// over TLS when `tls` (ALPN `h2` or `http/1.1` to match).
    pub fn get(&self, connect_timeout: Duration, http2: bool, tls: Option<&UpstreamTls>) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry((connect_timeout, http2, tls.map(|t| t.id)))
            .or_insert_with(|| {
                let mut builder = LegacyClient::builder(TokioExecutor::new());
                builder.pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_timer(hyper_util::rt::TokioTimer::new());
                if http2 {
                    builder.http2_only(true).timer(hyper_util::rt::TokioTimer::new());
                }
                let tls = tls.map(|t| {
                    let (config, name) = t.http(http2);
                    TlsTarget { config, name }
                });
                builder.build(MarkedConnector { mark: self.mark, connect_timeout, tls })
            })
            .clone()
    }

    /// Drops the pooled clients of TLS identities `live` no longer names (after a reload took
    /// them away). Requests in flight keep theirs until they end.
    pub fn retain_tls(&self, live: impl Fn(u64) -> bool) {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.retain(|(_, _, tls), _| tls.is_none_or(&live));
    }
}

/// Builds the shared upstream clients. `mark` is set on every socket (needs CAP_NET_ADMIN).
pub fn client(mark: Option<u32>) -> UpstreamClient {
    UpstreamClient::new(mark)
}

/// The TLS a connector originates: config (ALPN, verification, client certificate) and name.
#[derive(Clone, Debug)]
struct TlsTarget {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// Connects to `http://ip:port` URIs with a marked, no-delay TCP socket, then TLS when the
/// cluster originates it; the handshake counts as part of connecting (Envoy's connect timeout
/// covers it, and its failure is a connect failure: UF).
#[derive(Clone, Debug)]
pub struct MarkedConnector {
    mark: Option<u32>,
    connect_timeout: Duration,
    tls: Option<TlsTarget>,
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mark = self.mark;
        let connect_timeout = self.connect_timeout;
        let tls = self.tls.clone();
        Box::pin(async move {
            let started = Instant::now();
            let tcp = connect(endpoint_of(&uri)?, mark, connect_timeout).await?;
            let stream = match tls {
                None => UpstreamStream::Plain(tcp),
                Some(TlsTarget { config, name }) => {
                    let left = connect_timeout.saturating_sub(started.elapsed());
                    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
                    let tls = tokio::time::timeout(left, handshake)
                        .await
                        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
                        .map_err(handshake_error)?;
                    UpstreamStream::Tls(Box::new(tls))
                }
            };
            Ok(UpstreamIo(TokioIo::new(stream)))
        })
    }
}

/// An upstream connection: plain TCP, or TLS over it.
pub enum UpstreamStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS originated by the proxy.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream connection as hyper's pooled client holds it.
pub struct UpstreamIo(TokioIo<UpstreamStream>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        hyper::rt::Read::poll_read(Pin::new(&mut self.get_mut().0), cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write(Pin::new(&mut self.get_mut().0), cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write_vectored(Pin::new(&mut self.get_mut().0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.0)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_shutdown(Pin::new(&mut self.get_mut().0), cx)
    }
}

/// Opens a no-delay TCP connection to `addr` whose socket carries `mark`.
///
/// # Errors
/// Socket setup, connect failure, or `timeout`.
pub async fn connect(addr: SocketAddr, mark: Option<u32>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr} timed out")))?
}

/// The socket address of an `http://ip:port/…` URI (endpoints are always IP addresses).
fn endpoint_of(uri: &Uri) -> io::Result<SocketAddr> {
    let authority =
        uri.authority().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI has no authority"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let ip = host
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{host} is not an endpoint IP")))?;
    Ok(SocketAddr::new(ip, authority.port_u16().unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_are_reused_until_their_endpoint_closes_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap();
        let pool = UpstreamClient::new(None);
        assert!(pool.checkout(endpoint).is_none());
        let conn = connect(endpoint, None, Duration::from_secs(1)).await.unwrap();
        let (server_end, _) = listener.accept().await.unwrap();
        pool.checkin(endpoint, conn);
        let conn = pool.checkout(endpoint).expect("an open idle connection is handed out");
        pool.checkin(endpoint, conn);
        // The endpoint closes it while idle: it is pruned, not handed out.
        drop(server_end);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.prune_idle();
        assert!(pool.idle.lock().unwrap().is_empty());
        assert!(pool.checkout(endpoint).is_none());
    }

    #[test]
    fn endpoint_uris_carry_ip_and_port() {
        assert_eq!(endpoint_of(&"http://10.0.0.1:8080/x".parse().unwrap()).unwrap(), "10.0.0.1:8080".parse().unwrap());
        assert_eq!(endpoint_of(&"http://[::1]:81/".parse().unwrap()).unwrap(), "[::1]:81".parse().unwrap());
        assert!(endpoint_of(&"http://name:80/".parse().unwrap()).is_err());
    }
}
