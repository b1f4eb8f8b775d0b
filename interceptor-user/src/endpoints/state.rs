//! Runtime state of clusters and endpoints, kept apart from the compiled config so that it
//! survives reloads: in-flight counts, round-robin cursors, outlier ejections, pool limiters and
//! mirror slots, by cluster name and endpoint address.
//!
//! The agent owns one [`ClusterStates`] and hands it to every compile. A compiled cluster holds
//! its state strongly and the registry only weakly, so the state lives exactly as long as some
//! table (or a request still running on an old one) uses it; dead entries are pruned after
//! each compile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Semaphore;

use super::limits::{Limiter, Limits};
use super::outlier::OutlierState;
use super::LimitSettings;

/// Mirror copies one cluster may have in flight: a mirror that stops answering costs a bounded
/// number of tasks and connections, never the mirrored traffic.
pub const MIRRORS_IN_FLIGHT: usize = 64;

/// The state of every cluster some table still uses, by cluster name
/// (`outbound|80|v1|my-app.default.svc.cluster.local`).
#[derive(Debug, Default)]
pub struct ClusterStates {
    clusters: Mutex<HashMap<Arc<str>, Weak<ClusterState>>>,
}

/// One cluster's runtime state.
#[derive(Debug)]
pub struct ClusterState {
    /// Round-robin position.
    pub(super) cursor: AtomicUsize,
    endpoints: Mutex<HashMap<SocketAddr, Weak<EndpointState>>>,
    /// The pool limiter while the cluster is limited.
    limiter: Mutex<Weak<Limiter>>,
    mirror_slots: Arc<Semaphore>,
}

/// One endpoint's runtime state inside one cluster.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests in flight (least request compares these).
    pub(super) in_flight: AtomicUsize,
    /// Failure streaks and ejection.
    pub(super) outlier: OutlierState,
}

/// Locks a map that only compiles touch; a compile that panicked left it whole (each change is
/// one insert), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClusterStates {
    /// The state of cluster `name`: the one a serving table uses, else a new one.
    pub fn cluster(&self, name: &Arc<str>) -> Arc<ClusterState> {
        let mut clusters = lock(&self.clusters);
        if let Some(state) = clusters.get(name).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(ClusterState::default());
        clusters.insert(name.clone(), Arc::downgrade(&state));
        state
    }

    /// Forgets clusters and endpoints no table and no request uses any more.
    pub fn prune(&self) {
        lock(&self.clusters).retain(|_, cluster| match cluster.upgrade() {
            Some(cluster) => {
                lock(&cluster.endpoints).retain(|_, endpoint| endpoint.strong_count() > 0);
                true
            }
            None => false,
        });
    }

    /// Clusters with state.
    pub fn len(&self) -> usize {
        lock(&self.clusters).len()
    }

    /// Whether no cluster has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ClusterState {
    fn default() -> Self {
        Self {
            cursor: AtomicUsize::new(0),
            endpoints: Mutex::default(),
            limiter: Mutex::default(),
            mirror_slots: Arc::new(Semaphore::new(MIRRORS_IN_FLIGHT)),
        }
    }
}

impl ClusterState {
    /// The state of the endpoint at `addr`: the one a serving table uses, else a new one.
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut endpoints = lock(&self.endpoints);
        if let Some(state) = endpoints.get(&addr).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(EndpointState::default());
        endpoints.insert(addr, Arc::downgrade(&state));
        state
    }

    /// Endpoints with state.
    pub fn endpoint_count(&self) -> usize {
        lock(&self.endpoints).len()
    }

    /// Limits for `settings` on the cluster's one limiter, so old and new tables admit requests
    /// against the same counts. The limiter keeps its thresholds until [`Limits::apply`] (once
    /// the new table serves). An unlimited cluster has no limiter: a cluster that becomes limited
    /// starts one, not counting requests admitted while it was unlimited.
    pub fn limits(&self, settings: LimitSettings) -> Limits {
        if settings.max_active.is_none() {
            return Limits::shared(settings, None);
        }
        let mut slot = lock(&self.limiter);
        let limiter = slot.upgrade().or_else(|| {
            let limiter = Arc::new(Limiter::new(settings)?);
            *slot = Arc::downgrade(&limiter);
            Some(limiter)
        });
        Limits::shared(settings, limiter)
    }

    /// The cluster's mirror slots ([`MIRRORS_IN_FLIGHT`]).
    pub fn mirror_slots(&self) -> &Arc<Semaphore> {
        &self.mirror_slots
    }
}

impl EndpointState {
    /// Requests in flight on the endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn a_cluster_in_use_keeps_its_state_and_an_unused_one_is_pruned() {
        let states = ClusterStates::default();
        let kept = states.cluster(&name("outbound|80||a"));
        let endpoint = kept.endpoint("10.0.0.1:80".parse().unwrap());
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        drop(states.cluster(&name("outbound|80||gone")));
        assert!(Arc::ptr_eq(&states.cluster(&name("outbound|80||a")), &kept));
        assert!(Arc::ptr_eq(&kept.endpoint("10.0.0.1:80".parse().unwrap()), &endpoint));
        assert_eq!(kept.endpoint("10.0.0.1:80".parse().unwrap()).in_flight(), 1);
        states.prune();
        assert_eq!(states.len(), 1, "only the cluster something holds stays");
        drop(endpoint);
        states.prune();
        assert_eq!(kept.endpoint_count(), 0);
        drop(kept);
        states.prune();
        assert!(states.is_empty());
    }

    #[test]
    fn limited_clusters_share_one_limiter_and_unlimited_ones_have_none() {
        let state = ClusterState::default();
        let limited = LimitSettings { max_active: Some(1), max_pending: Some(0) };
        let (old, new) = (state.limits(limited), state.limits(LimitSettings { max_active: Some(5), ..limited }));
        let _held = futures::FutureExt::now_or_never(old.acquire()).unwrap().unwrap();
        assert!(futures::FutureExt::now_or_never(new.acquire()).unwrap().is_err(), "one count for both");
        let unlimited = state.limits(LimitSettings::default());
        assert!(futures::FutureExt::now_or_never(unlimited.acquire()).unwrap().is_ok());
    }
}
