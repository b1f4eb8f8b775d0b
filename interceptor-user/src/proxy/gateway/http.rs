//! HTTP at a gateway listener. Requests the relay can take (bodiless HTTP/1.1 on a route that only
//! forwards, as for captured traffic) are relayed on the client's stream, plain or TLS; the first
//! one it cannot take hands the connection to hyper for good (HTTP/1.1 only once one was relayed),
//! with the bytes read so far replayed, refusing what the capture listener refuses. A client that
//! chose h2 by ALPN goes to hyper at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::GatewayConnection;
use crate::proxy::client_hello::Prefixed;
use crate::proxy::downstream::{answer_and_close, write_all_vectored, Downstream};
use crate::proxy::drain::Watch;
use crate::proxy::framing::{RequestFraming, Verdicts, Watched};
use crate::proxy::http1::ServiceFuture;
use crate::proxy::limits::{self, Limits, Refusal};
use crate::proxy::outbound::{ProxyBody, Relayed};
use crate::proxy::shared_io::Shared;
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

/// A gateway client's stream, and what was read from it that no request has taken yet.
struct Client<I> {
    io: I,
    read: BytesMut,
    /// Most bytes read ahead while a request is served (the longest head allowed).
    ahead: usize,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> Downstream for Client<I> {
    async fn send(&mut self, first: &[u8], second: &[u8]) -> std::io::Result<()> {
        write_all_vectored(&mut self.io, first, second).await
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }

    /// Reads on, keeping what comes for the next request: the end of the stream (over TLS a
    /// close_notify, which a peek at the socket would take for more bytes) or an error is the
    /// client leaving. Past `ahead` bytes it only waits.
    async fn left(&mut self) {
        while self.read.len() < self.ahead {
            // What the head's read left of the buffer, when it has room: the request still holds
            // the rest of it.
            if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
                self.read.reserve(READ_SIZE);
            }
            if let Ok(0) | Err(_) = self.io.read_buf(&mut self.read).await {
                return;
            }
        }
        std::future::pending().await
    }
}

/// Serves HTTP on `io` until the client leaves or the drain ends it.
pub(super) async fn serve<I>(
    inputs: ProxyInputs,
    entered: GatewayConnection,
    client: SocketAddr,
    io: I,
    http2: bool,
    mut watch: Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = inputs.limits;
    let metrics = inputs.metrics.clone();
    let outbound = Arc::new(Outbound::at_gateway(inputs, client, entered));
    let mut client = Client { io, read: BytesMut::new(), ahead: limits.max_header_bytes };
    let mut relayed = false;
    let mut unrelayed = Vec::new();
    if !http2 {
        loop {
            match next_head(&mut client, &limits, &mut watch).await {
                Waited::Head => {}
                Waited::Gone => return answer_and_close(client, b"").await,
                Waited::Slow => {
                    debug!("request head not received in time; answering 408");
                    metrics.rejected(metrics::REJECT_HEADER_TIMEOUT);
                    return limits::request_timeout(client).await;
                }
            }
            let request = client.read.split().freeze();
            // Boxed, so that an idle connection's task does not keep room for it.
            match Box::pin(outbound.relay(&request, &mut client, &watch)).await {
                Relayed::KeepAlive => relayed = true,
                Relayed::Close => return answer_and_close(client, b"").await,
                Relayed::Abort => return,
                Relayed::Declined => {
                    unrelayed = Vec::from(request);
                    break;
                }
            }
            if client.read.is_empty() {
                // An idle connection keeps no buffer, as a parked captured one.
                client.read = BytesMut::new();
            }
        }
    }
    // hyper reads from where the relay stopped.
    unrelayed.extend_from_slice(&client.read);
    let Client { io, .. } = client;
    // Once HTTP/1.1 was spoken, it stays (a preface now would be a protocol switch no client
    // announced); and a request read while draining is answered, and the connection closed.
    let mut builder = if relayed {
        auto::Builder::new(TokioExecutor::new()).http1_only()
    } else {
        auto::Builder::new(TokioExecutor::new())
    };
    let draining = watch.is_draining() && !unrelayed.is_empty();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(!draining);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    // The framing watcher and the Host check of the capture listener (`http1`) refuse the same
    // requests here; over HTTP/2 the watcher stops at the preface.
    let framing = RequestFraming::new(limits.max_header_bytes);
    let verdicts = framing.verdicts();
    let service = refusing(outbound, verdicts.clone());
    // hyper closes without a word when its header read timeout passes; sharing the stream lets
    // the gateway still answer 408 to a head too slow, as before the hand-off.
    let (io, spare) = Shared::new(Prefixed::new(unrelayed, io));
    let io = TokioIo::new(Watched::new(io, framing));
    let ended = {
        let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
        // Told to stop before it read the request, hyper would drop it unanswered.
        if draining {
            conn.as_mut().await
        } else {
            watch.run(conn, |conn| conn.graceful_shutdown()).await
        }
    };
    match ended {
        Ok(()) => {}
        Err(err) if err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) => {
            let client = Client { io: spare, read: BytesMut::new(), ahead: 0 };
            // hyper's timer runs from the moment it waits for a head, bytes or not: an idle
            // connection is closed as the relay closes it (a 408 could cross the client's next
            // request on the wire).
            if verdicts.inside_head() {
                debug!("request head not received in time; answering 408");
                metrics.rejected(metrics::REJECT_HEADER_TIMEOUT);
                limits::request_timeout(client).await;
            } else {
                answer_and_close(client, b"").await;
            }
        }
        Err(err) => debug!(%err, "gateway connection ended with an error"),
    }
}

/// hyper's service: refuses what the watcher judged unframeable and requests without exactly
/// one `Host` where one is required, routes the rest.
fn refusing(
    outbound: Arc<Outbound>,
    verdicts: Arc<Verdicts>,
) -> impl Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible, Future = ServiceFuture> + Send
{
    hyper::service::service_fn(move |req| {
        let refusal = verdicts.next_refusal().or_else(|| Refusal::of_host(&req));
        let (outbound, refused) = (outbound.clone(), refusal.map(|r| outbound.clone().refuse(&req, r)));
        Box::pin(async move {
            match refused {
                Some(response) => Ok(response),
                None => outbound.handle(req).await,
            }
        }) as ServiceFuture
    })
}

/// Reads until the client's bytes hold a complete request head, or as much of one as the limits
/// allow (bytes read ahead during the last request may hold it already). Waiting for its first
/// byte ends when the drain begins; the whole wait ends at the header read timeout.
async fn next_head<I>(client: &mut Client<I>, limits: &Limits, watch: &mut Watch) -> Waited
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
    loop {
        let read = &mut client.read;
        if started(read) && (read.len() >= limits.max_header_bytes || !partial(read)) {
            return Waited::Head;
        }
        if read.capacity() - read.len() < READ_SIZE / 4 {
            read.reserve(READ_SIZE);
        }
        let idle = !started(read);
        let got = tokio::select! {
            got = client.io.read_buf(read) => got,
            () = watch.draining(), if idle => return Waited::Gone,
            () = tokio::time::sleep_until(deadline) => {
                // Closed without a word when idle, as Envoy's idle timeout does: a 408 could cross
                // the client's next request on the wire.
                return if idle { Waited::Gone } else { Waited::Slow };
            }
        };
        if let Ok(0) | Err(_) = got {
            return Waited::Gone;
        }
    }
}

/// Whether `bytes` hold more than the empty lines a client may send between requests (which
/// hyper skips too).
fn started(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| !matches!(b, b'\r' | b'\n'))
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
    fn empty_lines_start_no_request() {
        assert!(!started(b""));
        assert!(!started(b"\r\n\n"));
        assert!(started(b"\r\nG"));
    }

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
