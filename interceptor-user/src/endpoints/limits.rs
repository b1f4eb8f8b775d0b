//! Connection-pool limits of a cluster (Istio `connectionPool`): requests beyond them are
//! answered 503 with Envoy's `UO` flag instead of queueing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

/// Resolved limits; `None` means unlimited (Istio sets Envoy's to the maximum when unset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LimitSettings {
    /// Requests in flight at once (HTTP/1.1: one per upstream connection, so `maxConnections`;
    /// `http2MaxRequests` caps it too).
    pub max_active: Option<usize>,
    /// Requests that may wait for a free slot (`http1MaxPendingRequests`).
    pub max_pending: Option<usize>,
}

/// A cluster's limits: its settings (config) and, when limited, the limiter it shares with every
/// table that serves the cluster (runtime state, kept by [`ClusterState`](super::ClusterState)).
#[derive(Debug, Clone)]
pub struct Limits {
    settings: LimitSettings,
    limiter: Option<Arc<Limiter>>,
}

/// The live counters behind a limited cluster. Thresholds change in place (Envoy keeps one
/// circuit breaker per cluster and updates its thresholds), so requests admitted under the old
/// thresholds count against the new ones.
#[derive(Debug)]
pub(super) struct Limiter {
    /// One permit per request that may be active now.
    active: Semaphore,
    max_active: AtomicUsize,
    /// Permits to drop as they come back: the threshold went below what was held.
    debt: AtomicUsize,
    max_pending: AtomicUsize,
    pending: AtomicUsize,
}

/// A slot in the cluster; the request counts against the limit until dropped.
#[derive(Debug)]
pub struct Slot(Option<Arc<Limiter>>);

/// The cluster is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream overflow: connection pool limits reached")]
pub struct Overflow;

impl Limiter {
    /// A limiter for `settings`; `None` when they limit nothing.
    pub(super) fn new(settings: LimitSettings) -> Option<Self> {
        let max_active = settings.max_active?;
        Some(Self {
            active: Semaphore::new(max_active.min(Semaphore::MAX_PERMITS)),
            max_active: AtomicUsize::new(max_active.min(Semaphore::MAX_PERMITS)),
            debt: AtomicUsize::new(0),
            max_pending: AtomicUsize::new(settings.max_pending.unwrap_or(usize::MAX)),
            pending: AtomicUsize::new(0),
        })
    }

    /// Moves the thresholds to `settings` (limited ones); slots held stay held. Only the agent's
    /// one reload path calls this, so two calls never race.
    fn set(&self, settings: LimitSettings) {
        let Some(max_active) = settings.max_active.map(|n| n.min(Semaphore::MAX_PERMITS)) else { return };
        self.max_pending.store(settings.max_pending.unwrap_or(usize::MAX), Ordering::Relaxed);
        let before = self.max_active.swap(max_active, Ordering::AcqRel);
        if max_active > before {
            // Raised: pay off debt first, then hand out the rest.
            let mut raise = max_active - before;
            let paid = self.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| Some(d - d.min(raise)));
            raise -= paid.map_or(0, |d| d.min(raise));
            self.active.add_permits(raise);
        } else if max_active < before {
            // Lowered: take free permits now, and the rest as held slots end.
            let lower = before - max_active;
            let taken = self.active.forget_permits(lower);
            self.debt.fetch_add(lower - taken, Ordering::AcqRel);
        }
    }
}

/// A place in the pending queue, left when dropped: also when the waiting request is cancelled
/// (the client went away), so the queue never fills with requests that left.
struct Queued<'a> {
    pending: &'a AtomicUsize,
    ahead: usize,
}

impl<'a> Queued<'a> {
    fn join(pending: &'a AtomicUsize) -> Self {
        Self { pending, ahead: pending.fetch_add(1, Ordering::AcqRel) }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(limiter) = &self.0 else { return };
        let owed = limiter.debt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        if owed.is_err() {
            limiter.active.add_permits(1);
        }
    }
}

impl Limits {
    /// Limits for `settings` with a limiter of their own (a table nothing else serves: tests,
    /// `validate`).
    pub fn new(settings: LimitSettings) -> Self {
        Self { settings, limiter: Limiter::new(settings).map(Arc::new) }
    }

    /// Limits for `settings` over a shared limiter (`None` when the settings limit nothing).
    pub(super) fn shared(settings: LimitSettings, limiter: Option<Arc<Limiter>>) -> Self {
        Self { settings, limiter }
    }

    /// Moves the shared limiter to this table's thresholds: called once the table serves, so a
    /// config that is refused never changes the live thresholds.
    pub fn apply(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.set(self.settings);
        }
    }

    /// Takes a slot, waiting in the pending queue if there is room there.
    ///
    /// # Errors
    /// [`Overflow`] when both the active slots and the pending queue are full.
    pub async fn acquire(&self) -> Result<Slot, Overflow> {
        let Some(limiter) = &self.limiter else { return Ok(Slot(None)) };
        // Permits are forgotten on acquire and added back when the slot drops, so a lowered
        // threshold can keep some (`debt`).
        if let Ok(permit) = limiter.active.try_acquire() {
            permit.forget();
            return Ok(Slot(Some(limiter.clone())));
        }
        let queued = Queued::join(&limiter.pending);
        if queued.ahead >= limiter.max_pending.load(Ordering::Relaxed) {
            return Err(Overflow);
        }
        let permit = limiter.active.acquire().await.map_err(|_| Overflow)?;
        drop(queued);
        permit.forget();
        Ok(Slot(Some(limiter.clone())))
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

    /// Whether a slot is free right now (no pending queue in these tests).
    fn admits(limits: &Limits) -> Option<Slot> {
        futures::FutureExt::now_or_never(limits.acquire()).and_then(Result::ok)
    }

    fn settings(max_active: usize) -> LimitSettings {
        LimitSettings { max_active: Some(max_active), max_pending: Some(0) }
    }

    #[test]
    fn a_raised_threshold_counts_the_slots_held_under_the_old_one() {
        let old = Limits::new(settings(1));
        let _held = admits(&old).unwrap();
        let new = Limits::shared(settings(3), old.limiter.clone());
        assert!(admits(&new).is_none(), "thresholds move only when the new table serves");
        new.apply();
        let (_a, _b) = (admits(&new).unwrap(), admits(&new).unwrap());
        assert!(admits(&new).is_none() && admits(&old).is_none(), "one limiter for both tables");
    }

    #[test]
    fn a_lowered_threshold_waits_for_held_slots_to_end() {
        let old = Limits::new(settings(2));
        let (first, second) = (admits(&old).unwrap(), admits(&old).unwrap());
        let new = Limits::shared(settings(1), old.limiter.clone());
        new.apply();
        drop(first);
        assert!(admits(&new).is_none(), "one slot is still held, and the limit is one");
        drop(second);
        let only = admits(&new).unwrap();
        assert!(admits(&new).is_none());
        // Raised again while the debt is paid: exactly two.
        drop(only);
        Limits::shared(settings(2), old.limiter.clone()).apply();
        let _both = (admits(&new).unwrap(), admits(&new).unwrap());
        assert!(admits(&new).is_none());
    }

    #[test]
    fn lowering_then_raising_before_slots_end_forgives_the_debt() {
        let old = Limits::new(settings(2));
        let held = (admits(&old).unwrap(), admits(&old).unwrap());
        Limits::shared(settings(1), old.limiter.clone()).apply();
        old.apply();
        assert!(admits(&old).is_none(), "two held, limit two");
        drop(held.0);
        let _again = admits(&old).unwrap();
        assert!(admits(&old).is_none());
    }

    #[tokio::test]
    async fn a_request_that_leaves_the_queue_frees_its_place() {
        let limits = Limits::new(LimitSettings { max_active: Some(1), max_pending: Some(1) });
        let _held = limits.acquire().await.unwrap();
        // The client goes away while queued: its place comes back.
        for _ in 0..3 {
            let waited = tokio::time::timeout(std::time::Duration::from_millis(5), limits.acquire()).await;
            assert!(waited.is_err(), "queued, not refused: {waited:?}");
        }
    }

    async fn acquire_n(limits: &Limits, n: usize) -> Vec<Slot> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(limits.acquire().await.unwrap());
        }
        slots
    }
}
