//! Endpoint selection inside one subset: round robin, random, least request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use crate::config::SimpleLb;

/// The algorithm a DestinationRule asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Policy {
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Fewer requests in flight wins, between two random picks (Envoy's power of two choices).
    LeastRequest,
}

impl From<SimpleLb> for Policy {
    fn from(lb: SimpleLb) -> Self {
        match lb {
            SimpleLb::RoundRobin => Policy::RoundRobin,
            SimpleLb::Random => Policy::Random,
            // PASSTHROUGH would bypass load balancing, which a VIP destination cannot: treated as default.
            SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified | SimpleLb::Passthrough => {
                Policy::LeastRequest
            }
        }
    }
}

/// The endpoints of one subset and the state of its policy.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
    in_flight: Vec<Arc<AtomicUsize>>,
}

/// Marks a request in flight on an endpoint until dropped.
#[must_use = "the request counts as in flight until this is dropped"]
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over `endpoints`.
    pub fn new(policy: Policy, endpoints: Vec<SocketAddr>) -> Self {
        let in_flight = endpoints.iter().map(|_| Arc::new(AtomicUsize::new(0))).collect();
        Self { policy, endpoints, next: AtomicUsize::new(0), in_flight }
    }

    /// The policy in use.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// All endpoints.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Picks an endpoint; `None` when the subset has none.
    pub fn pick(&self) -> Option<(SocketAddr, InFlight)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = match self.policy {
            Policy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Policy::Random => rand::thread_rng().gen_range(0..n),
            Policy::LeastRequest if n == 1 => 0,
            Policy::LeastRequest => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                let load = |i: usize| self.in_flight[i].load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        self.in_flight[i].fetch_add(1, Ordering::Relaxed);
        Some((self.endpoints[i], InFlight(self.in_flight[i].clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i))).collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let b = Balancer::new(Policy::RoundRobin, addrs(3));
        let picks: Vec<u16> = (0..6).map(|_| b.pick().unwrap().0.port()).collect();
        assert_eq!(picks, vec![8000, 8001, 8002, 8000, 8001, 8002]);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let b = Balancer::new(Policy::LeastRequest, addrs(2));
        let (busy, _held) = b.pick().unwrap();
        for _ in 0..50 {
            let (other, _) = b.pick().unwrap();
            assert_ne!(other, busy);
        }
    }

    #[test]
    fn an_empty_subset_has_no_pick() {
        for policy in [Policy::RoundRobin, Policy::Random, Policy::LeastRequest] {
            assert!(Balancer::new(policy, vec![]).pick().is_none());
        }
    }
}
