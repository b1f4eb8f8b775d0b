//! A response body cut off at the route's deadline: Istio's route `timeout` spans the whole
//! response, body included, as Envoy's route timeout does.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

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

/// `inner` until `deadline`, then an error: the server resets the stream (HTTP/2) or closes the
/// connection (HTTP/1), so the client never takes a cut body for a whole one.
pub struct Deadline<B> {
    inner: B,
    // Boxed: `Sleep` is `!Unpin`, and hyper's boxed bodies must be `Unpin`.
    sleep: Pin<Box<Sleep>>,
}

impl<B> Deadline<B> {
    /// Wraps `inner`, cut off at `deadline`.
    pub fn new(inner: B, deadline: Instant) -> Self {
        Self { inner, sleep: Box::pin(tokio::time::sleep_until(deadline)) }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = &mut *self;
        // What the upstream already sent goes out even at the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.sleep.as_mut().poll(cx) {
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
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn a_body_that_ends_in_time_passes_whole() {
        let body = Full::new(Bytes::from_static(b"done")).map_err(|never| -> BoxError { match never {} });
        let mut body = Deadline::new(body, Instant::now() + Duration::from_secs(1));
        let collected = body.frame().await;
        assert!(matches!(collected, Some(Ok(f)) if f.data_ref().is_some_and(|d| d == "done")));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_still_running_at_the_deadline_fails_with_route_timeout() {
        // One frame now, the next never.
        let frames = futures::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"v")))])
            .chain(futures::stream::pending());
        let mut body = Deadline::new(StreamBody::new(frames), Instant::now() + Duration::from_millis(50));
        assert!(matches!(body.frame().await, Some(Ok(_))), "what was sent before the deadline goes out");
        let err = body.frame().await.and_then(Result::err).expect("the deadline fails the body");
        assert!(err.is::<RouteTimeout>(), "{err}");
    }
}
