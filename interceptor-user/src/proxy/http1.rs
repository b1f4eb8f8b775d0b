//! HTTP/1 on one downstream connection, one short-lived hyper connection per request. Between
//! requests only the socket is kept ("parked"): an idle keep-alive connection then costs a few
//! kilobytes instead of the 16 KiB of read and write buffers a hyper connection holds while idle.
//!
//! hyper gets the bytes of one request only, and is told to stop once its response head is out
//! (told earlier, it would add `Connection: close`). The framing watcher then says whether hyper
//! stopped exactly at the end of a request whose client keeps the connection. Anything else — an
//! unread request body, `Connection: close`, HTTP/1.0, a 101, a watcher that gave up — closes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::drain::Watch;
use super::framing::{RequestFraming, Verdicts, Watched};
use super::limits::{self, Refusal};
use super::outbound::{ProxyBody, Relayed};
use super::shared_io::SharedStream;
use super::{h2c, metrics, Outbound, ProxyInputs, Slot};

/// Serves HTTP/1 on `stream` until the client leaves, asks to close, idles past the header read
/// timeout (408), or the drain ends it.
pub async fn serve(
    inputs: ProxyInputs,
    http1: &hyper::server::conn::http1::Builder,
    mut watch: Watch,
    stream: TcpStream,
    slot: Slot,
    client: SocketAddr,
    original: Option<SocketAddr>,
) {
    // hyper would close the socket when it gives up on a slow request head; sharing it lets us
    // still answer 408, and wait for the next request while no hyper connection exists.
    let (stream, spare) = SharedStream::new(stream);
    let framing = RequestFraming::new(inputs.limits.max_header_bytes);
    let verdicts = framing.verdicts();
    let metrics = inputs.metrics.clone();
    let idle_timeout = inputs.limits.header_read_timeout;
    let h2c = Arc::new(h2c::Switch::new(inputs.limits, watch.clone()));
    let outbound = Arc::new(Outbound::new(inputs, client, original));
    let mut service = service(outbound.clone(), h2c, verdicts.clone());
    let mut io = RequestIo {
        inner: Watched::new(stream, framing),
        request: 1,
        delivered: 0,
        pipelined: Bytes::new(),
        verdicts: verdicts.clone(),
        _slot: slot,
    };
    // The sniff saw the first request's bytes arrive: read them here, so the fast path can take
    // the first request too.
    match io.read_next(&spare) {
        Ok(0) => return,
        Err(err) if err.kind() != io::ErrorKind::WouldBlock => return,
        _ => {}
    }
    loop {
        let served_before = verdicts.served();
        io.request = served_before + 1;
        if let Some(request) = io.lone_request() {
            // Boxed, so that a parked connection's task does not keep room for it.
            match Box::pin(outbound.relay(&request, &mut &*spare, &watch)).await {
                Relayed::Declined => {}
                Relayed::Close | Relayed::Abort => return,
                Relayed::KeepAlive => {
                    io.relayed();
                    if watch.is_draining() || !park(&mut io, &spare, &mut watch, idle_timeout).await {
                        return;
                    }
                    continue;
                }
            }
        }
        // Boxed, so that a parked connection's task does not keep room for it.
        let mut conn = Box::new(http1.serve_connection(TokioIo::new(io), service).with_upgrades());
        let outcome = {
            let mut one = OneRequest {
                conn: &mut *conn,
                stop: |conn| conn.graceful_shutdown(),
                verdicts: &verdicts,
                served_before,
                stopping: false,
            };
            watch.run(Pin::new(&mut one), OneRequest::stop).await
        };
        match outcome {
            Ok(()) => {}
            Err(err) if err.is_timeout() => {
                debug!("request head not received in time; answering 408");
                metrics.rejected(metrics::REJECT_HEADER_TIMEOUT);
                return limits::request_timeout(&*spare).await;
            }
            Err(err) => {
                debug!(%err, "downstream connection ended with an error");
                return;
            }
        }
        // None: upgraded; the tunnel owns the socket now. (In a block, so that the box is freed
        // here and not after parking: moving out of it leaves its allocation to its scope.)
        let Some(parts) = ({ conn }).into_parts() else { return };
        // Anything hyper read and did not use means it stopped inside the request.
        let stopped_inside = !parts.read_buf.is_empty();
        // Now, not at the end of the loop: even empty, it holds hyper's whole read buffer.
        drop(parts.read_buf);
        (io, service) = (parts.io.into_inner(), parts.service);
        let ends = watch.is_draining() || verdicts.switched() || verdicts.closing() || stopped_inside;
        if ends || !io.request_done(verdicts.served()) {
            return;
        }
        if !io.pipelined.is_empty() {
            continue;
        }
        if !park(&mut io, &spare, &mut watch, idle_timeout).await {
            return;
        }
    }
}

/// Keeps only the socket until the next request's first bytes arrive and are read; false when
/// the connection ends instead (the client left, the drain began, or it idled past `idle_timeout`).
async fn park(io: &mut RequestIo, spare: &TcpStream, watch: &mut Watch, idle_timeout: std::time::Duration) -> bool {
    // Drained, but it may still hold the allocation of the last round's read.
    io.pipelined = Bytes::new();
    let deadline = tokio::time::Instant::now() + idle_timeout;
    loop {
        tokio::select! {
            ready = spare.readable() => if ready.is_err() { return false },
            () = watch.draining() => return false,
            // Closed without a word, as Envoy's idle timeout does: a 408 here could cross the
            // client's next request on the wire.
            () = tokio::time::sleep_until(deadline) => {
                debug!("idle keep-alive connection timed out");
                return false;
            }
        }
        match io.read_next(spare) {
            // The client left.
            Ok(0) => return false,
            Ok(_) => return true,
            // Readiness left over from the last request's bytes.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
    }
}

/// What the per-request service's future is: boxed, since hyper keeps room for it (and a `Send`
/// bound the compiler cannot prove through hyper's service for an unboxed one).
pub(super) type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// The per-request service: refuses what the framing watcher judged unframeable and requests
/// without exactly one `Host` where one is required, routes the rest.
fn service(
    outbound: Arc<Outbound>,
    h2c: Arc<h2c::Switch>,
    verdicts: Arc<Verdicts>,
) -> impl Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible, Future = ServiceFuture> + Send
{
    hyper::service::service_fn(move |req| {
        let refusal = verdicts.next_refusal().or_else(|| Refusal::of_host(&req));
        let (outbound, h2c, verdicts) = (outbound.clone(), h2c.clone(), verdicts.clone());
        Box::pin(async move {
            if let Some(refusal) = refusal {
                verdicts.close_after();
                verdicts.responded();
                return Ok(outbound.refuse(&req, refusal));
            }
            let response = h2c.serve(req, outbound).await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                verdicts.switch_protocols();
            }
            // A rule's response headers may say so; hyper then closes after the answer.
            if super::header_tokens(response.headers(), &http::header::CONNECTION)
                .any(|t| t.eq_ignore_ascii_case("close"))
            {
                verdicts.close_after();
            }
            verdicts.responded();
            Ok(response)
        }) as ServiceFuture
    })
}

/// One hyper connection until it has answered one request: once the response head is out, hyper
/// is told to stop after the response (were it told before, it would add `Connection: close`).
struct OneRequest<'a, C> {
    conn: &'a mut C,
    stop: fn(Pin<&mut C>),
    verdicts: &'a Verdicts,
    /// Requests answered before this connection started.
    served_before: u64,
    stopping: bool,
}

impl<C: Unpin> OneRequest<'_, C> {
    /// Lets the request in flight finish, then ends the connection (also what the drain does).
    fn stop(mut self: Pin<&mut Self>) {
        if !self.stopping {
            self.stopping = true;
            (self.stop)(Pin::new(&mut *self.conn));
        }
    }
}

impl<C: Future + Unpin> Future for OneRequest<'_, C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let polled = Pin::new(&mut *self.conn).poll(cx);
        // hyper writes the head in the same poll in which the service answers; from here on,
        // stopping it no longer changes the head.
        // Not after a 101: hyper ends that connection by itself, and stopping it early could
        // drop the 101 before it is flushed.
        let answered = self.verdicts.answered() > self.served_before && !self.verdicts.switched();
        if polled.is_pending() && !self.stopping && answered {
            self.as_mut().stop();
            // hyper may be idle already, waiting to read the next request: poll it once more.
            cx.waker().wake_by_ref();
        }
        polled
    }
}

/// The downstream stream as one hyper connection sees it: the bytes of one request and no more
/// (so hyper cannot start the next one, whose response head would say `Connection: close`), and a
/// shutdown that waits for the serve loop's decision.
struct RequestIo {
    inner: Watched<SharedStream>,
    /// 1-based number of the request this hyper connection serves.
    request: u64,
    /// Stream offset of the next byte to hand to hyper.
    delivered: u64,
    /// Bytes read past the end of the request, for the next hyper connection.
    pipelined: Bytes,
    verdicts: Arc<Verdicts>,
    /// Held as long as the socket: after a 101 this io lives on in the tunnel.
    _slot: Slot,
}

impl RequestIo {
    /// Where this connection's request ends, once the watcher knows (never after a 101).
    fn limit(&self) -> Option<u64> {
        if self.verdicts.switched() {
            return None;
        }
        self.inner.framing().request_end(self.request).map(|end| end.offset)
    }

    /// Reads what the socket holds of the next request, for the next hyper connection to start
    /// with. (Reading rather than peeking saves a system call per request.)
    fn read_next(&mut self, stream: &TcpStream) -> io::Result<usize> {
        // On the stack: a parked connection keeps no buffer.
        let mut buf = [0u8; 2048];
        let n = super::shared_io::try_read_draining(stream, &mut buf)?;
        self.inner.framing_mut().feed(&buf[..n]);
        self.pipelined = Bytes::copy_from_slice(&buf[..n]);
        Ok(n)
    }

    /// The bytes read so far when they are exactly this connection's request, complete, from a
    /// client that keeps the connection: what the fast path can take.
    fn lone_request(&self) -> Option<Bytes> {
        if self.pipelined.is_empty() || self.verdicts.switched() {
            return None;
        }
        let end = self.inner.framing().request_end(self.request)?;
        (end.keep_alive && end.offset == self.delivered + self.pipelined.len() as u64).then(|| self.pipelined.clone())
    }

    /// Records that the fast path answered this connection's request.
    fn relayed(&mut self) {
        let refusal = self.verdicts.next_refusal();
        debug_assert!(refusal.is_none(), "the fast path takes no request with a body");
        self.verdicts.responded();
        self.delivered += self.pipelined.len() as u64;
        self.pipelined = Bytes::new();
    }

    /// Whether hyper served exactly this connection's request, read all of it, and the client
    /// keeps the connection.
    fn request_done(&self, served: u64) -> bool {
        served == self.request
            && self
                .inner
                .framing()
                .request_end(served)
                .is_some_and(|end| end.keep_alive && end.offset == self.delivered)
    }
}

impl AsyncRead for RequestIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let left = this.limit().map(|limit| limit.saturating_sub(this.delivered));
        if left == Some(0) && !this.pipelined.is_empty() {
            // Bytes of the next request wait: the client is still there.
            return Poll::Pending;
        }
        if left == Some(0) {
            // The request is all hyper's; once it has answered, the serve loop stops it. Only
            // the end of the stream passes, so hyper still notices a client that left (and drops
            // its request, as Envoy resets the upstream one).
            return match ready!(this.inner.get_ref().poll_at_end(cx)) {
                Ok(true) => Poll::Ready(Ok(())),
                // The next request's bytes: for the next hyper connection.
                Ok(false) => Poll::Pending,
                Err(err) => Poll::Ready(Err(err)),
            };
        }
        if !this.pipelined.is_empty() {
            let mut n = this.pipelined.len().min(buf.remaining());
            if let Some(left) = left {
                n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
            buf.put_slice(&this.pipelined[..n]);
            this.pipelined.advance(n);
            this.delivered += n as u64;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        // The watcher has seen the new bytes: the request's end may be known now, and it lies
        // past `delivered` (had all of the request been delivered, its end was known before).
        if let Some(limit) = this.limit() {
            let allowed = usize::try_from(limit.saturating_sub(this.delivered)).unwrap_or(usize::MAX);
            if buf.filled().len() - before > allowed {
                this.pipelined = Bytes::copy_from_slice(&buf.filled()[before + allowed..]);
                buf.set_filled(before + allowed);
            }
        }
        this.delivered += (buf.filled().len() - before) as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RequestIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.get_ref().is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper shuts the socket down whenever its connection ends, which the serve loop makes
        // happen after every request; the loop decides whether the connection really ends (and
        // dropping the socket closes it then). A tunnel after a 101 does mean it: its half-close
        // must reach the client.
        if self.verdicts.switched() {
            return Pin::new(self.inner.get_mut()).poll_shutdown(cx);
        }
        Poll::Ready(Ok(()))
    }
}
