//! Fault injection (§8.1 `--latency-ms`, `--jitter-ms`, `--fail-rate`; `POST /__sim/faults`).
//!
//! `plan` is pure: the delay and the injected failure for request number `n` follow from
//! (seed, n, fault state) alone, so a run with the same options and request order injects the
//! same faults.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::data::{rnd, unit};

/// Statuses an injected failure may use, with their catalogue codes (§8.8).
pub(crate) fn fault_code(status: u16) -> Option<&'static str> {
    match status {
        500 => Some("internal_error"),
        502 => Some("bad_gateway"),
        503 => Some("service_unavailable"),
        504 => Some("gateway_timeout"),
        _ => None,
    }
}

/// Current fault settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct FaultState {
    pub fail_rate: f64,
    pub status: u16,
    pub latency_ms: u64,
    pub jitter_ms: u64,
}

/// A partial update, as accepted by `POST /__sim/faults`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultUpdate {
    pub fail_rate: Option<f64>,
    pub status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
}

impl FaultState {
    /// Applies an update, or says which field is out of range (and changes nothing).
    pub fn apply(self, u: FaultUpdate) -> Result<FaultState, &'static str> {
        let next = FaultState {
            fail_rate: u.fail_rate.unwrap_or(self.fail_rate),
            status: u.status.unwrap_or(self.status),
            latency_ms: u.latency_ms.unwrap_or(self.latency_ms),
            jitter_ms: u.jitter_ms.unwrap_or(self.jitter_ms),
        };
        if !(0.0..=1.0).contains(&next.fail_rate) {
            return Err("fail_rate must lie in 0..=1");
        }
        if fault_code(next.status).is_none() {
            return Err("status must be 500, 502, 503 or 504");
        }
        Ok(next)
    }
}

/// What happens to request number `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FaultPlan {
    pub delay: Duration,
    pub fail_status: Option<u16>,
}

pub(crate) fn plan(seed: u64, n: u64, s: &FaultState) -> FaultPlan {
    let jitter = if s.jitter_ms == 0 {
        0
    } else {
        rnd(seed, "jitter", &[n]) % (s.jitter_ms + 1)
    };
    let fail = s.fail_rate > 0.0 && unit(rnd(seed, "fail", &[n])) < s.fail_rate;
    FaultPlan {
        delay: Duration::from_millis(s.latency_ms.saturating_add(jitter)),
        fail_status: fail.then_some(s.status),
    }
}

/// The live fault settings.
#[derive(Debug)]
pub(crate) struct Faults {
    state: Mutex<FaultState>,
}

impl Faults {
    pub fn new(state: FaultState) -> Faults {
        Faults {
            state: Mutex::new(state),
        }
    }

    pub fn get(&self) -> FaultState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update(&self, u: FaultUpdate) -> Result<FaultState, &'static str> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = s.apply(u)?;
        Ok(*s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALM: FaultState = FaultState {
        fail_rate: 0.0,
        status: 503,
        latency_ms: 0,
        jitter_ms: 0,
    };

    #[test]
    fn no_faults_means_no_delay_and_no_failure() {
        for n in 0..100 {
            assert_eq!(
                plan(1, n, &CALM),
                FaultPlan {
                    delay: Duration::ZERO,
                    fail_status: None
                }
            );
        }
    }

    #[test]
    fn the_fail_rate_is_honoured_deterministically() {
        let s = FaultState {
            fail_rate: 0.25,
            ..CALM
        };
        let fails = (0..10_000)
            .filter(|&n| plan(9, n, &s).fail_status.is_some())
            .count();
        assert!((2_200..2_800).contains(&fails), "{fails}");
        assert_eq!(plan(9, 17, &s), plan(9, 17, &s));
        let all = FaultState {
            fail_rate: 1.0,
            ..CALM
        };
        assert_eq!(plan(1, 0, &all).fail_status, Some(503));
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let s = FaultState {
            latency_ms: 10,
            jitter_ms: 5,
            ..CALM
        };
        for n in 0..1000 {
            let d = plan(3, n, &s).delay;
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(15));
        }
    }

    #[test]
    fn updates_are_partial_and_validated() {
        let s = CALM
            .apply(FaultUpdate {
                status: Some(502),
                ..FaultUpdate::default()
            })
            .expect("valid");
        assert_eq!((s.status, s.fail_rate), (502, 0.0));
        assert!(CALM
            .apply(FaultUpdate {
                status: Some(404),
                ..FaultUpdate::default()
            })
            .is_err());
        assert!(CALM
            .apply(FaultUpdate {
                fail_rate: Some(1.5),
                ..FaultUpdate::default()
            })
            .is_err());
    }
}
