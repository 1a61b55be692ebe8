//! Fault injection (§8.1 `--latency-ms`, `--jitter-ms`, `--fail-rate`, plus the misbehaving
//! upstream of `--misbehavior`; `POST /__sim/faults`).
//!
//! `plan` is pure: the delay, the injected failure and the misbehavior for request number `n`
//! follow from (seed, n, fault state) alone, so a run with the same options and request order
//! injects the same faults. Failures and misbehaviors draw from separate streams.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::options::Misbehavior;
use crate::random::{rnd, unit};

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

/// Largest accepted `oversized_bytes` (1 GiB): the padded answer is built in memory.
pub(crate) const MAX_OVERSIZED_BYTES: u64 = 1 << 30;

/// Current fault settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct FaultState {
    pub fail_rate: f64,
    pub status: u16,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub misbehavior: Misbehavior,
    pub misbehavior_rate: f64,
    pub oversized_bytes: u64,
    pub trickle_ms: u64,
}

/// A partial update, as accepted by `POST /__sim/faults`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultUpdate {
    pub fail_rate: Option<f64>,
    pub status: Option<u16>,
    pub latency_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    /// A mode name; checked in `apply` so that the error names the field.
    pub misbehavior: Option<String>,
    pub misbehavior_rate: Option<f64>,
    pub oversized_bytes: Option<u64>,
    pub trickle_ms: Option<u64>,
}

impl FaultState {
    /// Applies an update, or says which field is out of range (and changes nothing).
    pub fn apply(self, u: FaultUpdate) -> Result<FaultState, &'static str> {
        let misbehavior = match u.misbehavior.as_deref() {
            None => self.misbehavior,
            Some(name) => Misbehavior::from_name(name).ok_or(
                "misbehavior must be one of none, reset_mid_body, short_body, not_json, \
                 oversized, trickle, redirect or gzip",
            )?,
        };
        let next = FaultState {
            fail_rate: u.fail_rate.unwrap_or(self.fail_rate),
            status: u.status.unwrap_or(self.status),
            latency_ms: u.latency_ms.unwrap_or(self.latency_ms),
            jitter_ms: u.jitter_ms.unwrap_or(self.jitter_ms),
            misbehavior,
            misbehavior_rate: u.misbehavior_rate.unwrap_or(self.misbehavior_rate),
            oversized_bytes: u.oversized_bytes.unwrap_or(self.oversized_bytes),
            trickle_ms: u.trickle_ms.unwrap_or(self.trickle_ms),
        };
        if !(0.0..=1.0).contains(&next.fail_rate) {
            return Err("fail_rate must lie in 0..=1");
        }
        if fault_code(next.status).is_none() {
            return Err("status must be 500, 502, 503 or 504");
        }
        if !(0.0..=1.0).contains(&next.misbehavior_rate) {
            return Err("misbehavior_rate must lie in 0..=1");
        }
        if !(1..=MAX_OVERSIZED_BYTES).contains(&next.oversized_bytes) {
            return Err("oversized_bytes must lie in 1..=1073741824");
        }
        Ok(next)
    }
}

/// A misbehavior chosen for one request, with the settings it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Misbehave {
    pub mode: Misbehavior,
    pub oversized_bytes: u64,
    pub trickle: Duration,
}

/// What happens to request number `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FaultPlan {
    pub delay: Duration,
    pub fail_status: Option<u16>,
    /// Applies only if the answer would otherwise be a 200 (and `fail_status` is `None`).
    pub misbehave: Option<Misbehave>,
}

/// Whether the draw for `label` and request `n` falls under `rate` (never for 0, always for 1).
fn drawn(seed: u64, label: &str, n: u64, rate: f64) -> bool {
    rate > 0.0 && unit(rnd(seed, label, &[n])) < rate
}

pub(crate) fn plan(seed: u64, n: u64, s: &FaultState) -> FaultPlan {
    let jitter = if s.jitter_ms == 0 {
        0
    } else {
        rnd(seed, "jitter", &[n]) % (s.jitter_ms + 1)
    };
    let misbehaves =
        s.misbehavior != Misbehavior::None && drawn(seed, "misbehave", n, s.misbehavior_rate);
    FaultPlan {
        delay: Duration::from_millis(s.latency_ms.saturating_add(jitter)),
        fail_status: drawn(seed, "fail", n, s.fail_rate).then_some(s.status),
        misbehave: misbehaves.then_some(Misbehave {
            mode: s.misbehavior,
            oversized_bytes: s.oversized_bytes,
            trickle: Duration::from_millis(s.trickle_ms),
        }),
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
        misbehavior: Misbehavior::None,
        misbehavior_rate: 1.0,
        oversized_bytes: 9 * 1024 * 1024,
        trickle_ms: 200,
    };

    #[test]
    fn no_faults_means_no_delay_and_no_failure() {
        for n in 0..100 {
            assert_eq!(
                plan(1, n, &CALM),
                FaultPlan {
                    delay: Duration::ZERO,
                    fail_status: None,
                    misbehave: None,
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

    fn update(json: &str) -> FaultUpdate {
        serde_json::from_str(json).expect("well-formed update")
    }

    #[test]
    fn a_misbehavior_update_sets_the_mode_and_its_settings() {
        let s = CALM
            .apply(update(
                r#"{"misbehavior": "trickle", "misbehavior_rate": 0.5, "trickle_ms": 30, "oversized_bytes": 1}"#,
            ))
            .expect("valid");
        assert_eq!(s.misbehavior, Misbehavior::Trickle);
        assert_eq!(
            (s.misbehavior_rate, s.trickle_ms, s.oversized_bytes),
            (0.5, 30, 1)
        );
        assert_eq!((s.fail_rate, s.status), (CALM.fail_rate, CALM.status));
    }

    #[test]
    fn every_mode_name_is_accepted_and_serialized_as_given() {
        for mode in Misbehavior::ALL {
            let json = format!(r#"{{"misbehavior": "{}"}}"#, mode.name());
            let s = CALM.apply(update(&json)).expect("known mode");
            assert_eq!(s.misbehavior, mode);
            assert_eq!(serde_json::json!(mode), serde_json::json!(mode.name()));
            let flag = clap::ValueEnum::to_possible_value(&mode).expect("flag value");
            assert_eq!(flag.get_name(), mode.name());
        }
    }

    #[test]
    fn invalid_misbehavior_settings_are_rejected_naming_the_field_and_change_nothing() {
        let cases = [
            (r#"{"misbehavior": "teapot"}"#, "misbehavior must be one of"),
            (r#"{"misbehavior": "Gzip"}"#, "misbehavior must be one of"),
            (r#"{"misbehavior_rate": 1.01}"#, "misbehavior_rate"),
            (r#"{"misbehavior_rate": -0.1}"#, "misbehavior_rate"),
            (r#"{"oversized_bytes": 0}"#, "oversized_bytes"),
            (r#"{"oversized_bytes": 1073741825}"#, "oversized_bytes"),
            // A valid field beside an invalid one is not applied either.
            (
                r#"{"misbehavior": "gzip", "oversized_bytes": 0}"#,
                "oversized_bytes",
            ),
        ];
        let faults = Faults::new(CALM);
        for (json, needle) in cases {
            let err = faults.update(update(json)).expect_err(json);
            assert!(
                err.contains(needle),
                "{json}: {err:?} should name {needle:?}"
            );
            assert_eq!(faults.get(), CALM, "{json} changed the state");
        }
    }

    #[test]
    fn unknown_fields_are_not_an_update() {
        assert!(serde_json::from_str::<FaultUpdate>(r#"{"misbehaviour": "gzip"}"#).is_err());
    }

    #[test]
    fn no_misbehavior_is_planned_with_mode_none_or_rate_zero() {
        let none = FaultState {
            misbehavior_rate: 1.0,
            ..CALM
        };
        let zero = FaultState {
            misbehavior: Misbehavior::Gzip,
            misbehavior_rate: 0.0,
            ..CALM
        };
        for n in 0..1000 {
            assert_eq!(plan(1, n, &none).misbehave, None);
            assert_eq!(plan(1, n, &zero).misbehave, None);
        }
    }

    #[test]
    fn rate_one_misbehaves_on_every_request_with_the_current_settings() {
        let s = FaultState {
            misbehavior: Misbehavior::Oversized,
            oversized_bytes: 4096,
            trickle_ms: 7,
            ..CALM
        };
        for n in 0..1000 {
            assert_eq!(
                plan(5, n, &s).misbehave,
                Some(Misbehave {
                    mode: Misbehavior::Oversized,
                    oversized_bytes: 4096,
                    trickle: Duration::from_millis(7),
                })
            );
        }
    }

    #[test]
    fn the_misbehavior_rate_is_honoured_deterministically_on_its_own_draw_stream() {
        let s = FaultState {
            misbehavior: Misbehavior::NotJson,
            misbehavior_rate: 0.25,
            fail_rate: 0.25,
            ..CALM
        };
        let misbehaving: Vec<u64> = (0..10_000)
            .filter(|&n| plan(9, n, &s).misbehave.is_some())
            .collect();
        assert!(
            (2_200..2_800).contains(&misbehaving.len()),
            "{}",
            misbehaving.len()
        );
        assert_eq!(plan(9, 17, &s), plan(9, 17, &s));
        let failing: Vec<u64> = (0..10_000)
            .filter(|&n| plan(9, n, &s).fail_status.is_some())
            .collect();
        assert_ne!(misbehaving, failing, "the two draws are independent");
        let other_seed = (0..10_000)
            .filter(|&n| plan(10, n, &s).misbehave.is_some())
            .collect::<Vec<u64>>();
        assert_ne!(misbehaving, other_seed);
    }
}
