//! Bodies cut off in time: a response at the route's deadline (Istio's route `timeout` spans the
//! whole response, body included, as Envoy's route timeout does), and a request body that stalls
//! past the stream idle timeout (Envoy's `stream_idle_timeout`).

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error of every body the proxy answers with.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The route's deadline passed before the upstream's body ended.
#[derive(Debug)]
pub struct RouteTimeout;

impl fmt::Display for RouteTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("upstream request timeout")
    }
}

impl Error for RouteTimeout {}

/// The client sent no byte of its request body for the stream idle timeout.
#[derive(Debug)]
pub struct StreamIdle;

impl fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stream timeout")
    }
}

impl Error for StreamIdle {}

/// `inner`, failing once its timer fires: at a fixed deadline ([`RouteTimeout`]), or after an
/// idle time without a frame ([`StreamIdle`]). The server then resets the stream (HTTP/2) or
/// closes the connection (HTTP/1), so the peer never takes a cut body for a whole one.
pub struct Cutoff<B> {
    inner: B,
    /// Set for an idle cutoff: each frame pushes the deadline this far ahead.
    idle: Option<Duration>,
    deadline: Instant,
    /// Made at the first wait only: a body whose frames are all ready (most request bodies)
    /// never allocates or arms a timer. Boxed: `Sleep` is `!Unpin`, hyper's bodies must be `Unpin`.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> Cutoff<B> {
    /// `inner`, cut off at `deadline`.
    pub fn at(inner: B, deadline: Instant) -> Self {
        Self { inner, idle: None, deadline, sleep: None }
    }

    /// `inner`, cut off once a frame takes longer than `idle` to come; the clock starts now.
    pub fn idle(inner: B, idle: Duration) -> Self {
        Self { inner, idle: Some(idle), deadline: Instant::now() + idle, sleep: None }
    }
}

impl<B> Body for Cutoff<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = &mut *self;
        // What the peer already sent goes on even when the timer is due.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(idle) = this.idle {
                this.deadline = Instant::now() + idle;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) if this.idle.is_some() => Poll::Ready(Some(Err(Box::new(StreamIdle)))),
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(RouteTimeout)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use futures::StreamExt;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn a_body_that_ends_in_time_passes_whole() {
        let body = Full::new(Bytes::from_static(b"done")).map_err(|never| -> BoxError { match never {} });
        let mut body = Cutoff::at(body, Instant::now() + Duration::from_secs(1));
        let collected = body.frame().await;
        assert!(matches!(collected, Some(Ok(f)) if f.data_ref().is_some_and(|d| d == "done")));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_is_cut_when_one_frame_takes_longer_than_the_idle_time_not_the_whole() {
        // Three frames 30 ms apart pass a 50 ms idle time (the whole takes 90 ms); then silence.
        let frames = futures::stream::iter(0..3)
            .then(|_| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))
            })
            .chain(futures::stream::pending());
        let mut body = Cutoff::idle(StreamBody::new(Box::pin(frames)), Duration::from_millis(50));
        for _ in 0..3 {
            assert!(matches!(body.frame().await, Some(Ok(_))));
        }
        let err = body.frame().await.and_then(Result::err).expect("silence fails the body");
        assert!(err.is::<StreamIdle>(), "{err}");
    }

    #[tokio::test]
    async fn a_body_still_running_at_the_deadline_fails_with_route_timeout() {
        // One frame now, the next never.
        let frames = futures::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"v")))])
            .chain(futures::stream::pending());
        let mut body = Cutoff::at(StreamBody::new(frames), Instant::now() + Duration::from_millis(50));
        assert!(matches!(body.frame().await, Some(Ok(_))), "what was sent before the deadline goes out");
        let err = body.frame().await.and_then(Result::err).expect("the deadline fails the body");
        assert!(err.is::<RouteTimeout>(), "{err}");
    }
}
