//! Outlier detection: endpoints that fail several times in a row are ejected for a while, as
//! Envoy does for Istio's `outlierDetection` (consecutive 5xx and gateway errors).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How a request to an endpoint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// Connecting failed, or the connection broke before an answer.
    ConnectFailure,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::ConnectFailure => true,
        }
    }

    fn is_gateway_error(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            Outcome::ConnectFailure => true,
        }
    }
}

/// Resolved `outlierDetection`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OutlierSettings {
    /// 5xx in a row that eject.
    pub consecutive_5xx: Option<u32>,
    /// Gateway errors in a row that eject.
    pub consecutive_gateway: Option<u32>,
    /// Ejection time, multiplied by the number of times the endpoint was ejected.
    pub base_ejection: Duration,
    /// Most endpoints ejected at once, in percent (at least one is always allowed).
    pub max_ejection_percent: u32,
}

/// One endpoint's failure streaks and ejection deadline: runtime state, kept across reloads in
/// the endpoint's [`EndpointState`](crate::endpoints::EndpointState).
#[derive(Debug, Default)]
pub struct OutlierState {
    streak_5xx: AtomicU32,
    streak_gateway: AtomicU32,
    /// Times ejected so far: each ejection lasts that many base ejection times.
    ejections: AtomicU32,
    /// Milliseconds since [`epoch`] until which the endpoint is ejected; 0 when it is not.
    ejected_until: AtomicU64,
}

impl OutlierState {
    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl OutlierSettings {
    /// Records an outcome for `endpoint`, one of the cluster's `endpoints` (for the share
    /// already ejected); true when this ejected it.
    pub fn record<'e>(
        &self,
        endpoint: &OutlierState,
        endpoints: impl ExactSizeIterator<Item = &'e OutlierState>,
        outcome: Outcome,
    ) -> bool {
        let bump = |streak: &AtomicU32, hit: bool| {
            if hit {
                streak.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                streak.store(0, Ordering::Relaxed);
                0
            }
        };
        let s5 = bump(&endpoint.streak_5xx, outcome.is_5xx());
        let sg = bump(&endpoint.streak_gateway, outcome.is_gateway_error());
        let tripped = self.consecutive_5xx.is_some_and(|t| t > 0 && s5 >= t)
            || self.consecutive_gateway.is_some_and(|t| t > 0 && sg >= t);
        if !tripped || endpoint.is_ejected() || !self.may_eject_one_more(endpoints) {
            return false;
        }
        endpoint.streak_5xx.store(0, Ordering::Relaxed);
        endpoint.streak_gateway.store(0, Ordering::Relaxed);
        let times = endpoint.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = self.base_ejection.saturating_mul(times);
        let until = now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)).max(1);
        endpoint.ejected_until.store(until, Ordering::Relaxed);
        true
    }

    fn may_eject_one_more<'e>(&self, endpoints: impl ExactSizeIterator<Item = &'e OutlierState>) -> bool {
        let n = endpoints.len();
        let ejected = endpoints.filter(|e| e.is_ejected()).count();
        let max = (n * self.max_ejection_percent as usize / 100).max(1);
        ejected < max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster of `n` endpoints under outlier detection.
    struct Detector {
        settings: OutlierSettings,
        endpoints: Vec<OutlierState>,
    }

    impl Detector {
        fn record(&self, i: usize, outcome: Outcome) -> bool {
            self.settings.record(&self.endpoints[i], self.endpoints.iter(), outcome)
        }

        fn is_ejected(&self, i: usize) -> bool {
            self.endpoints[i].is_ejected()
        }
    }

    fn detector(n: usize, percent: u32) -> Detector {
        Detector {
            settings: OutlierSettings {
                consecutive_5xx: Some(3),
                consecutive_gateway: None,
                base_ejection: Duration::from_secs(60),
                max_ejection_percent: percent,
            },
            endpoints: (0..n).map(|_| OutlierState::default()).collect(),
        }
    }

    #[test]
    fn a_streak_ejects_and_a_success_resets_it() {
        let d = detector(2, 100);
        assert!(!d.record(0, Outcome::Status(500)));
        assert!(!d.record(0, Outcome::Status(500)));
        assert!(!d.record(0, Outcome::Status(200)));
        assert!(!d.record(0, Outcome::Status(500)));
        assert!(!d.record(0, Outcome::ConnectFailure));
        assert!(d.record(0, Outcome::Status(503)));
        assert!(d.is_ejected(0) && !d.is_ejected(1));
    }

    #[test]
    fn at_least_one_but_no_more_than_the_percentage_is_ejected() {
        let d = detector(4, 10);
        for i in 0..4 {
            for _ in 0..3 {
                d.record(i, Outcome::Status(500));
            }
        }
        assert_eq!((0..4).filter(|&i| d.is_ejected(i)).count(), 1);
    }
}
