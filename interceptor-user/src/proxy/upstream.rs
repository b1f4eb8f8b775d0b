//! Upstream connections: pooled HTTP/1.1 clients whose sockets carry the proxy's mark, so the
//! connect hook never captures the proxy's own traffic.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// Envoy's default connect timeout, which Istio keeps.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A pooled client; clones share the pool.
pub type UpstreamClient = Client<MarkedConnector, Incoming>;

/// Builds the shared upstream client. `mark` is set on every socket (needs CAP_NET_ADMIN).
pub fn client(mark: Option<u32>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(MarkedConnector { mark })
}

/// Builds the shared HTTP/2 (prior knowledge) upstream client, for gRPC, whose trailers and
/// streams need HTTP/2 end to end.
pub fn client_h2(mark: Option<u32>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .build(MarkedConnector { mark })
}

/// Connects to `http://ip:port` URIs with a marked, no-delay TCP socket.
#[derive(Clone, Copy, Debug)]
pub struct MarkedConnector {
    mark: Option<u32>,
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mark = self.mark;
        Box::pin(async move { Ok(TokioIo::new(connect_marked(endpoint_of(&uri)?, mark).await?)) })
    }
}

/// Connects to `addr` from a socket carrying `mark` (no delay, bounded by [`CONNECT_TIMEOUT`]).
///
/// # Errors
/// Socket setup fails, the connect fails or times out.
pub async fn connect_marked(addr: SocketAddr, mark: Option<u32>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
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

    #[test]
    fn endpoint_uris_carry_ip_and_port() {
        assert_eq!(endpoint_of(&"http://10.0.0.1:8080/x".parse().unwrap()).unwrap(), "10.0.0.1:8080".parse().unwrap());
        assert_eq!(endpoint_of(&"http://[::1]:81/".parse().unwrap()).unwrap(), "[::1]:81".parse().unwrap());
        assert!(endpoint_of(&"http://name:80/".parse().unwrap()).is_err());
    }
}
