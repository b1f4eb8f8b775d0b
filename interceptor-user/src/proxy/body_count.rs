//! A body wrapper that counts the data bytes it actually carries and says, exactly once, how the
//! body ended.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};

/// How a counted body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every frame was read.
    Complete,
    /// The reader dropped the body before its end (for a response: the client went away).
    Dropped,
    /// The wrapped body failed (for a response: the upstream broke off mid-body).
    Failed,
}

/// What a [`Counted`] body reports to.
pub trait Tally: Send + Sync + 'static {
    /// `n` more data bytes went through.
    fn add(&mut self, n: u64);
    /// The body ended, after every `add`; called once.
    fn end(&mut self, ended: Ended);
}

/// A shared running count, for a body that moves to another task (a request body handed to the
/// upstream client) while the count is read elsewhere.
impl Tally for Arc<AtomicU64> {
    fn add(&mut self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }

    fn end(&mut self, _: Ended) {}
}

/// `inner`, passed through frame by frame (trailers too), counting data bytes into the tally.
pub struct Counted<B: Body, T: Tally> {
    inner: B,
    tally: T,
    ended: bool,
}

impl<B: Body, T: Tally> Counted<B, T> {
    /// Wraps `inner`.
    pub fn new(inner: B, tally: T) -> Self {
        Self { inner, tally, ended: false }
    }

    fn end(&mut self, ended: Ended) {
        if !self.ended {
            self.ended = true;
            self.tally.end(ended);
        }
    }
}

impl<B, T> Body for Counted<B, T>
where
    B: Body + Unpin,
    B::Data: Buf,
    T: Tally + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.tally.add(data.remaining() as u64);
                }
                // Servers stop polling once the body says it is at its end; this frame may be the
                // last one they ask for.
                if this.inner.is_end_stream() {
                    this.end(Ended::Complete);
                }
            }
            Poll::Ready(None) => this.end(Ended::Complete),
            Poll::Ready(Some(Err(_))) => this.end(Ended::Failed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, T: Tally> Drop for Counted<B, T> {
    fn drop(&mut self) {
        // A body that was at its end when dropped was never polled past it (an empty body, or one
        // whose reader trusted `is_end_stream`): that is complete, not cut short.
        let ended = if self.inner.is_end_stream() { Ended::Complete } else { Ended::Dropped };
        self.end(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http::HeaderMap;
    use http_body_util::{BodyExt, Full};

    /// Records every call, shared with the test.
    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<(u64, Vec<Ended>)>>);

    impl Record {
        fn get(&self) -> (u64, Vec<Ended>) {
            self.0.lock().unwrap().clone()
        }
    }

    impl Tally for Record {
        fn add(&mut self, n: u64) {
            self.0.lock().unwrap().0 += n;
        }
        fn end(&mut self, ended: Ended) {
            self.0.lock().unwrap().1.push(ended);
        }
    }

    /// A body without a length that yields `frames`, then ends (`open` false) or stays pending,
    /// like a chunked answer still streaming.
    struct Script {
        frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
        open: bool,
    }

    impl Script {
        fn chunks(pieces: &[&'static str], open: bool) -> Self {
            Self { frames: pieces.iter().map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes())))).collect(), open }
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.frames.pop_front() {
                Some(frame) => Poll::Ready(Some(frame)),
                None if self.open => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    #[tokio::test]
    async fn a_streamed_body_without_length_is_counted_and_ends_once() {
        let record = Record::default();
        let body = Counted::new(Script::chunks(&["hello ", "chunked ", "world"], false), record.clone());
        assert_eq!(body.size_hint().exact(), None);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 19);
        assert_eq!(record.get(), (19, vec![Ended::Complete]));
    }

    #[tokio::test]
    async fn a_body_dropped_early_reports_what_went_through_once() {
        let record = Record::default();
        let mut body = Counted::new(Script::chunks(&["first", "second"], true), record.clone());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        assert_eq!(record.get(), (5, vec![]));
        drop(body);
        assert_eq!(record.get(), (5, vec![Ended::Dropped]));
    }

    #[tokio::test]
    async fn a_body_its_reader_stops_at_by_is_end_stream_is_complete() {
        // Like hyper with a sized body: one poll, then is_end_stream, then drop.
        let record = Record::default();
        let mut body = Counted::new(Full::new(Bytes::from_static(b"v1")), record.clone());
        let _ = body.frame().await;
        assert!(body.is_end_stream());
        assert_eq!(record.get(), (2, vec![Ended::Complete]));
        drop(body);
        assert_eq!(record.get(), (2, vec![Ended::Complete]));

        // Never polled at all: an empty body.
        let record = Record::default();
        drop(Counted::new(Full::new(Bytes::new()), record.clone()));
        assert_eq!(record.get(), (0, vec![Ended::Complete]));
    }

    #[tokio::test]
    async fn trailers_pass_through_and_are_not_counted() {
        let record = Record::default();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let mut script = Script::chunks(&["abc"], false);
        script.frames.push_back(Ok(Frame::trailers(trailers.clone())));
        let collected = Counted::new(script, record.clone()).collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "abc");
        assert_eq!(record.get(), (3, vec![Ended::Complete]));
    }

    #[tokio::test]
    async fn a_failing_body_ends_failed_once() {
        let record = Record::default();
        let mut script = Script::chunks(&["part"], true);
        script.frames.push_back(Err("upstream reset"));
        let mut body = Counted::new(script, record.clone());
        let _ = body.frame().await;
        assert!(matches!(body.frame().await, Some(Err("upstream reset"))));
        drop(body);
        assert_eq!(record.get(), (4, vec![Ended::Failed]));
    }

    #[test]
    fn a_shared_count_adds_across_bodies() {
        let count = Arc::new(AtomicU64::new(0));
        let mut tally = count.clone();
        tally.add(3);
        tally.add(4);
        tally.end(Ended::Complete);
        assert_eq!(count.load(Ordering::Relaxed), 7);
    }
}
