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

/// Per-endpoint failure streaks and ejection deadlines.
#[derive(Debug)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    streak_5xx: Vec<AtomicU32>,
    streak_gateway: Vec<AtomicU32>,
    ejections: Vec<AtomicU32>,
    /// Milliseconds since [`epoch`] until which the endpoint is ejected; 0 when it is not.
    ejected_until: Vec<AtomicU64>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl OutlierDetector {
    /// A detector for `n` endpoints.
    pub fn new(settings: OutlierSettings, n: usize) -> Self {
        let zeros32 = || (0..n).map(|_| AtomicU32::new(0)).collect();
        Self {
            settings,
            streak_5xx: zeros32(),
            streak_gateway: zeros32(),
            ejections: zeros32(),
            ejected_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether endpoint `i` is ejected now.
    pub fn is_ejected(&self, i: usize) -> bool {
        let until = self.ejected_until[i].load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Records an outcome for endpoint `i`; true when this ejected it.
    pub fn record(&self, i: usize, outcome: Outcome) -> bool {
        let bump = |streak: &AtomicU32, hit: bool| {
            if hit {
                streak.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                streak.store(0, Ordering::Relaxed);
                0
            }
        };
        let s5 = bump(&self.streak_5xx[i], outcome.is_5xx());
        let sg = bump(&self.streak_gateway[i], outcome.is_gateway_error());
        let tripped = self.settings.consecutive_5xx.is_some_and(|t| t > 0 && s5 >= t)
            || self.settings.consecutive_gateway.is_some_and(|t| t > 0 && sg >= t);
        if !tripped || self.is_ejected(i) || !self.may_eject_one_more() {
            return false;
        }
        self.streak_5xx[i].store(0, Ordering::Relaxed);
        self.streak_gateway[i].store(0, Ordering::Relaxed);
        let times = self.ejections[i].fetch_add(1, Ordering::Relaxed) + 1;
        let duration = self.settings.base_ejection.saturating_mul(times);
        let until = now_ms().saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)).max(1);
        self.ejected_until[i].store(until, Ordering::Relaxed);
        true
    }

    fn may_eject_one_more(&self) -> bool {
        let n = self.ejected_until.len();
        let ejected = (0..n).filter(|&i| self.is_ejected(i)).count();
        let max = (n * self.settings.max_ejection_percent as usize / 100).max(1);
        ejected < max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(n: usize, percent: u32) -> OutlierDetector {
        OutlierDetector::new(
            OutlierSettings {
                consecutive_5xx: Some(3),
                consecutive_gateway: None,
                base_ejection: Duration::from_secs(60),
                max_ejection_percent: percent,
            },
            n,
        )
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
