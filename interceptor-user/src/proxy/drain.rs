//! Graceful drain of downstream connections: every connection holds a [`Watch`]; shutdown tells
//! them all to finish their current request and waits until the last one has gone.
//!
//! hyper-util's `GracefulShutdown` does the same but only for connection types it knows, and
//! hyper's HTTP/1 connection with upgrades is not one of them (its auto builder is, at the price of
//! a 16 KiB read buffer per connection: it reads the protocol preface we have already sniffed).

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;

/// The proxy's end: starts the drain and waits for it.
pub struct Drain(watch::Sender<bool>);

/// A connection's end: says when to stop taking new requests.
#[derive(Clone)]
pub struct Watch(watch::Receiver<bool>);

impl Drain {
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    /// A watch for one more connection.
    pub fn watch(&self) -> Watch {
        Watch(self.0.subscribe())
    }

    /// Tells every connection to drain, then waits until all of them have ended.
    pub async fn drain(self) {
        // No receiver left means nothing to drain; the send error says just that.
        let _ = self.0.send(true);
        self.0.closed().await;
    }
}

impl Watch {
    /// Runs `conn` to its end; when the drain starts, calls `graceful` on it once (hyper then
    /// finishes the request in flight and closes) and keeps running it.
    pub async fn run<C, F>(&mut self, mut conn: Pin<&mut C>, graceful: F) -> C::Output
    where
        C: Future + ?Sized,
        F: FnOnce(Pin<&mut C>),
    {
        if !self.is_draining() {
            tokio::select! {
                out = conn.as_mut() => return out,
                () = self.draining() => {}
            }
        }
        graceful(conn.as_mut());
        conn.await
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        // A dropped sender means the proxy is gone: drain too.
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// Resolves once the drain starts.
    pub async fn draining(&mut self) {
        // An error means the proxy is gone: drain too.
        let _ = self.0.wait_for(|draining| *draining).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn drain_waits_for_connections_and_tells_them_once() {
        let drain = Drain::new();
        let told = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut watch = drain.watch();
        let seen = told.clone();
        let conn = tokio::spawn(async move {
            // A connection that ends 50 ms after being told to drain.
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let mut stop_tx = Some(stop_tx);
            let conn = async move {
                let _ = stop_rx.await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                "done"
            };
            watch
                .run(std::pin::pin!(conn), |_| {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if let Some(tx) = stop_tx.take() {
                        let _ = tx.send(());
                    }
                })
                .await
        });
        let started = std::time::Instant::now();
        drain.drain().await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(conn.await.unwrap(), "done");
        assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn drain_without_connections_returns_at_once() {
        tokio::time::timeout(Duration::from_secs(1), Drain::new().drain()).await.unwrap();
    }
}
