//! HTTP at a gateway listener. Requests the relay can take (bodiless HTTP/1.1 on a route that only
//! forwards, as for captured traffic) are relayed on the client's stream, plain or TLS; the first
//! one it cannot take hands the connection to hyper for good (HTTP/1.1, or HTTP/2 by preface),
//! with the bytes read so far replayed. A client that chose h2 by ALPN goes to hyper at once.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::debug;

use super::GatewayConnection;
use crate::proxy::client_hello::Prefixed;
use crate::proxy::downstream::{answer_and_close, Downstream};
use crate::proxy::drain::Watch;
use crate::proxy::limits::{self, Limits};
use crate::proxy::outbound::Relayed;
use crate::proxy::{metrics, Outbound, ProxyInputs};

/// Header lines parsed to tell a complete request head from a partial one. A head with more is
/// taken as complete: the relay declines it, and hyper reads the rest.
const HEAD_SLOTS: usize = 64;
/// Room made for each read of a request head.
const READ_SIZE: usize = 4096;

/// What waiting for the next request gave.
enum Waited {
    /// A complete head (or bytes that are no HTTP/1 head the relay could take) is read.
    Head,
    /// The client left, or idled past the header read timeout, or the drain began meanwhile.
    Gone,
    /// Part of a head came, not all of it within the header read timeout.
    Slow,
}

/// Serves HTTP on `io` until the client leaves or the drain ends it.
pub(super) async fn serve<I>(
    inputs: ProxyInputs,
    entered: GatewayConnection,
    client: SocketAddr,
    mut io: I,
    http2: bool,
    mut watch: Watch,
) where
    I: AsyncRead + AsyncWrite + Downstream + Unpin + Send + 'static,
{
    let limits = inputs.limits;
    let metrics = inputs.metrics.clone();
    let outbound = Arc::new(Outbound::at_gateway(inputs, client, entered));
    let mut unrelayed = Bytes::new();
    if !http2 {
        let mut read = BytesMut::new();
        loop {
            match next_head(&mut io, &mut read, &limits, &mut watch).await {
                Waited::Head => {}
                Waited::Gone => return answer_and_close(io, b"").await,
                Waited::Slow => {
                    debug!("request head not received in time; answering 408");
                    metrics.rejected(metrics::REJECT_HEADER_TIMEOUT);
                    return limits::request_timeout(io).await;
                }
            }
            let request = read.split().freeze();
            // Boxed, so that an idle connection's task does not keep room for it.
            match Box::pin(outbound.relay(&request, &mut io, &watch)).await {
                Relayed::KeepAlive => {}
                Relayed::Close => return answer_and_close(io, b"").await,
                Relayed::Declined => {
                    unrelayed = request;
                    break;
                }
            }
        }
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let service = hyper::service::service_fn(move |req| outbound.clone().handle(req));
    let io = TokioIo::new(Prefixed::new(unrelayed.to_vec(), io));
    let conn = std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
    if let Err(err) = watch.run(conn, |conn| conn.graceful_shutdown()).await {
        debug!(%err, "gateway connection ended with an error");
    }
}

/// Reads until `read` holds a complete request head, or as much of one as the limits allow.
/// Waiting for its first byte ends when the drain begins; the whole wait ends at the header read
/// timeout.
async fn next_head<I: AsyncRead + Unpin>(
    io: &mut I,
    read: &mut BytesMut,
    limits: &Limits,
    watch: &mut Watch,
) -> Waited {
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    loop {
        if read.capacity() - read.len() < READ_SIZE / 4 {
            read.reserve(READ_SIZE);
        }
        let got = tokio::select! {
            got = io.read_buf(read) => got,
            () = watch.draining(), if read.is_empty() => return Waited::Gone,
            () = tokio::time::sleep_until(deadline) => {
                // Closed without a word when idle, as Envoy's idle timeout does: a 408 could cross
                // the client's next request on the wire.
                return if read.is_empty() { Waited::Gone } else { Waited::Slow };
            }
        };
        match got {
            Ok(0) | Err(_) => return Waited::Gone,
            Ok(_) if read.len() >= limits.max_header_bytes || !partial(read) => return Waited::Head,
            Ok(_) => {}
        }
    }
}

/// Whether `bytes` are the start of a request head that has not ended yet.
fn partial(bytes: &[u8]) -> bool {
    let mut slots = [httparse::EMPTY_HEADER; HEAD_SLOTS];
    matches!(httparse::Request::new(&mut slots).parse(bytes), Ok(httparse::Status::Partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_partial_until_its_empty_line() {
        assert!(partial(b""));
        assert!(partial(b"GET / HT"));
        assert!(partial(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!partial(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        // Bare line feeds end it too, as hyper reads them.
        assert!(!partial(b"GET / HTTP/1.1\nHost: a\n\n"));
        // Not HTTP/1 at all: hyper's to judge.
        assert!(!partial(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!partial(b"\x16\x03\x01"));
        let many = format!("GET / HTTP/1.1\r\n{}", "x: 1\r\n".repeat(HEAD_SLOTS + 1));
        assert!(!partial(many.as_bytes()));
    }
}
