//! Endpoint selection inside one subset: least request, round robin, random, consistent hash
//! (ring or maglev), skipping endpoints that outlier detection ejected.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;

use super::hash::{MaglevTable, Ring};
use super::outlier::{Outcome, OutlierSettings};
use super::state::{ClusterState, EndpointState};

/// The algorithm a DestinationRule asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Policy {
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Fewer requests in flight wins, between two random picks (Envoy's power of two choices).
    LeastRequest,
    /// No balancing: the connection goes to the address the client asked for.
    Passthrough,
    /// Consistent hash on a ring of at least this many entries.
    RingHash(usize),
    /// Consistent hash with a Maglev table of this (prime) size.
    Maglev(usize),
}

impl Policy {
    /// The policy for `loadBalancer.simple`; LEAST_REQUEST is Istio's default.
    pub fn from_simple(lb: crate::config::SimpleLb) -> Self {
        use crate::config::SimpleLb;
        match lb {
            SimpleLb::RoundRobin => Policy::RoundRobin,
            SimpleLb::Random => Policy::Random,
            SimpleLb::Passthrough => Policy::Passthrough,
            SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified => Policy::LeastRequest,
        }
    }

    /// Envoy's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "ROUND_ROBIN",
            Policy::Random => "RANDOM",
            Policy::LeastRequest => "LEAST_REQUEST",
            Policy::Passthrough => "PASSTHROUGH",
            Policy::RingHash(_) => "RING_HASH",
            Policy::Maglev(_) => "MAGLEV",
        }
    }
}

/// What the request contributes to a pick.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext<'a> {
    /// Hash of the request's key, for consistent-hash policies.
    pub hash: Option<u64>,
    /// Endpoints to avoid (tried already by this request), when others are available.
    pub avoid: &'a [SocketAddr],
}

/// The endpoints of one subset, its policy and hash table (compiled), over the runtime state of
/// the cluster and its endpoints (shared with the tables before and after this one).
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    endpoints: Vec<SocketAddr>,
    /// `states[i]` is the state of `endpoints[i]`.
    states: Vec<Arc<EndpointState>>,
    cluster: Arc<ClusterState>,
    outlier: Option<OutlierSettings>,
    table: HashTable,
}

/// A consistent-hash policy's table, built with the balancer (not on the first request).
#[derive(Debug)]
enum HashTable {
    None,
    Ring(Ring),
    Maglev(MaglevTable),
}

/// Marks a request in flight on an endpoint until dropped.
#[must_use = "the request counts as in flight until this is dropped"]
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over `endpoints`, keeping its counts, cursor and ejections in `cluster`.
    pub fn new(
        policy: Policy,
        endpoints: Vec<SocketAddr>,
        outlier: Option<OutlierSettings>,
        cluster: Arc<ClusterState>,
    ) -> Self {
        let states = endpoints.iter().map(|e| cluster.endpoint(*e)).collect();
        let table = match policy {
            Policy::RingHash(size) => HashTable::Ring(Ring::new(&endpoints, size)),
            Policy::Maglev(size) => HashTable::Maglev(MaglevTable::new(&endpoints, size)),
            _ => HashTable::None,
        };
        Self { policy, endpoints, states, cluster, outlier, table }
    }

    /// The policy in use.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// All endpoints, ejected or not.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Whether the endpoint at `index` is ejected now.
    pub fn is_ejected(&self, index: usize) -> bool {
        self.outlier.is_some() && self.states.get(index).is_some_and(|s| s.outlier.is_ejected())
    }

    /// Picks an endpoint; `None` when the subset has no usable endpoint (or the policy is
    /// PASSTHROUGH, which the caller handles).
    pub fn pick(&self, ctx: PickContext<'_>) -> Option<(SocketAddr, InFlight)> {
        let n = self.endpoints.len();
        if n == 0 || self.policy == Policy::Passthrough {
            return None;
        }
        let usable = |i: usize| !self.is_ejected(i) && !ctx.avoid.contains(&self.endpoints[i]);
        // Avoiding tried endpoints is a preference; ejection is not (no panic mode: Istio's
        // minHealthPercent defaults to 0).
        let healthy = |i: usize| !self.is_ejected(i);
        let i = self.choose(ctx.hash, &usable).or_else(|| self.choose(ctx.hash, &healthy))?;
        let state = &self.states[i];
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((self.endpoints[i], InFlight(state.clone())))
    }

    fn choose(&self, hash: Option<u64>, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        // Walk from a policy-chosen start to the next acceptable endpoint.
        let walk = |start: usize| (0..n).map(|k| (start + k) % n).find(|&i| ok(i));
        match (self.policy, &self.table) {
            (Policy::RoundRobin, _) => walk(self.cluster.cursor.fetch_add(1, Ordering::Relaxed) % n),
            (Policy::Random, _) => walk(rand::thread_rng().gen_range(0..n)),
            (Policy::LeastRequest, _) => {
                let mut rng = rand::thread_rng();
                let a = walk(rng.gen_range(0..n))?;
                // The second choice starts elsewhere, so two endpoints are compared when there are two.
                let b = if n > 1 { walk((a + rng.gen_range(1..n)) % n)? } else { a };
                let load = |i: usize| self.states[i].in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
            (Policy::RingHash(_), HashTable::Ring(ring)) => {
                ring.lookup(hash.unwrap_or_else(|| rand::thread_rng().gen()), ok)
            }
            (Policy::Maglev(_), HashTable::Maglev(table)) => {
                walk(table.lookup(hash.unwrap_or_else(|| rand::thread_rng().gen())))
            }
            // `new` builds the table the policy needs.
            (Policy::RingHash(_) | Policy::Maglev(_) | Policy::Passthrough, _) => None,
        }
    }

    /// Records how a request to `endpoint` ended, for outlier detection.
    pub fn record(&self, endpoint: SocketAddr, outcome: Outcome) {
        let Some(outlier) = &self.outlier else { return };
        if let Some(index) = self.endpoints.iter().position(|e| *e == endpoint) {
            if outlier.record(&self.states[index].outlier, self.states.iter().map(|s| &s.outlier), outcome) {
                tracing::info!(%endpoint, "outlier detection ejected endpoint");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i))).collect()
    }

    /// A balancer with state of its own.
    fn balancer(policy: Policy, endpoints: Vec<SocketAddr>, outlier: Option<OutlierSettings>) -> Balancer {
        Balancer::new(policy, endpoints, outlier, Arc::default())
    }

    fn pick(b: &Balancer) -> u16 {
        b.pick(PickContext::default()).unwrap().0.port()
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let b = balancer(Policy::RoundRobin, addrs(3), None);
        let picks: Vec<u16> = (0..6).map(|_| pick(&b)).collect();
        assert_eq!(picks, vec![8000, 8001, 8002, 8000, 8001, 8002]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = balancer(Policy::LeastRequest, addrs(2), None);
        let (busy, _held) = b.pick(PickContext::default()).unwrap();
        for _ in 0..50 {
            let (other, _) = b.pick(PickContext::default()).unwrap();
            assert_ne!(other, busy);
        }
    }

    #[test]
    fn an_empty_subset_has_no_pick() {
        for policy in
            [Policy::RoundRobin, Policy::Random, Policy::LeastRequest, Policy::RingHash(16), Policy::Maglev(7)]
        {
            assert!(balancer(policy, vec![], None).pick(PickContext::default()).is_none());
        }
    }

    #[test]
    fn tried_endpoints_are_avoided_while_others_remain() {
        let b = balancer(Policy::RoundRobin, addrs(2), None);
        let first = addrs(2)[0];
        for _ in 0..10 {
            let (e, _) = b.pick(PickContext { hash: None, avoid: &[first] }).unwrap();
            assert_ne!(e, first);
        }
        let all = addrs(2);
        assert!(b.pick(PickContext { hash: None, avoid: &all }).is_some(), "avoiding is only a preference");
    }

    #[test]
    fn consistent_hashes_stick_to_one_endpoint() {
        for policy in [Policy::RingHash(1024), Policy::Maglev(65537)] {
            let b = balancer(policy, addrs(5), None);
            for key in 0..50u64 {
                let hash = xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes());
                let first = b.pick(PickContext { hash: Some(hash), avoid: &[] }).unwrap().0;
                for _ in 0..5 {
                    assert_eq!(b.pick(PickContext { hash: Some(hash), avoid: &[] }).unwrap().0, first, "{policy:?}");
                }
            }
        }
    }

    #[test]
    fn consistent_hash_tables_are_built_with_the_balancer() {
        assert!(matches!(balancer(Policy::RingHash(64), addrs(3), None).table, HashTable::Ring(_)));
        assert!(matches!(balancer(Policy::Maglev(251), addrs(3), None).table, HashTable::Maglev(_)));
        assert!(matches!(balancer(Policy::RoundRobin, addrs(3), None).table, HashTable::None));
    }

    #[test]
    fn ejected_endpoints_get_no_traffic() {
        let settings = OutlierSettings {
            consecutive_5xx: Some(2),
            consecutive_gateway: None,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
        };
        let b = balancer(Policy::RoundRobin, addrs(3), Some(settings));
        let bad = addrs(3)[1];
        b.record(bad, Outcome::Status(500));
        b.record(bad, Outcome::Status(503));
        for _ in 0..30 {
            assert_ne!(b.pick(PickContext::default()).unwrap().0, bad);
        }
    }
}
