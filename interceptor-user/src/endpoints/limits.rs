//! Connection-pool limits of a cluster (Istio `connectionPool`): requests beyond them are
//! answered 503 with Envoy's `UO` flag instead of queueing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Resolved limits; `None` means unlimited (Istio sets Envoy's to the maximum when unset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitSettings {
    /// Requests in flight at once (HTTP/1.1: one per upstream connection, so `maxConnections`;
    /// `http2MaxRequests` caps it too).
    pub max_active: Option<usize>,
    /// Requests that may wait for a free slot (`http1MaxPendingRequests`).
    pub max_pending: Option<usize>,
}

/// The live counters of one cluster.
#[derive(Debug)]
pub struct Limits {
    active: Option<Arc<Semaphore>>,
    max_pending: usize,
    pending: AtomicUsize,
}

/// A slot in the cluster; the request counts against the limit until dropped.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// The cluster is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream overflow: connection pool limits reached")]
pub struct Overflow;

impl Limits {
    /// Counters for `settings`.
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            active: settings.max_active.map(|n| Arc::new(Semaphore::new(n))),
            max_pending: settings.max_pending.unwrap_or(usize::MAX),
            pending: AtomicUsize::new(0),
        }
    }

    /// Takes a slot, waiting in the pending queue if there is room there.
    ///
    /// # Errors
    /// [`Overflow`] when both the active slots and the pending queue are full.
    pub async fn acquire(&self) -> Result<Slot, Overflow> {
        let Some(active) = &self.active else { return Ok(Slot(None)) };
        if let Ok(permit) = active.clone().try_acquire_owned() {
            return Ok(Slot(Some(permit)));
        }
        let queued = self.pending.fetch_add(1, Ordering::AcqRel);
        if queued >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow);
        }
        let permit = active.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        permit.map(|p| Slot(Some(p))).map_err(|_| Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_active_and_pending_is_overflow() {
        let limits = Arc::new(Limits::new(LimitSettings { max_active: Some(1), max_pending: Some(1) }));
        let held = limits.acquire().await.unwrap();
        let waiter = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.acquire().await.map(drop) })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(limits.acquire().await.unwrap_err(), Overflow);
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn unlimited_never_overflows() {
        let limits = Limits::new(LimitSettings::default());
        let slots: Vec<_> = acquire_n(&limits, 100).await;
        assert_eq!(slots.len(), 100);
    }

    async fn acquire_n(limits: &Limits, n: usize) -> Vec<Slot> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(limits.acquire().await.unwrap());
        }
        slots
    }
}
