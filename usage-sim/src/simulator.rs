//! `Simulator`: the options checked and the whole data set built once, shared behind an `Arc`
//! by every request (`Inner` is what a handler reads).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::auth::{parse_key_spec, ApiKey, Scope};
use crate::calendar::MS_PER_HOUR;
use crate::clock::Clock;
use crate::cursor::Cursors;
use crate::data::{Data, GenParams};
use crate::faults::{FaultState, Faults, MAX_OVERSIZED_BYTES};
use crate::options::{RateScope, SimOptions};
use crate::ratelimit::{Limiter, RateConfig};
use crate::stats::Stats;

/// Why a `SimOptions` cannot become a `Simulator`.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("bad key spec: {0} (expected KEY or KEY=tag_uuid,tag_uuid...)")]
    KeySpec(String),
    #[error("key {key:?} names tag {tag}, which is not one of the {count} generated tags (see the simulator's tag ids)")]
    UnknownTag {
        key: String,
        tag: String,
        count: usize,
    },
    #[error("key {0:?} is configured twice")]
    DuplicateKey(String),
    #[error("at least one API key is required (--keys)")]
    NoKeys,
    #[error("--activity must lie in 0..=1, got {0}")]
    Activity(f64),
    #[error("--fail-rate must lie in 0..=1, got {0}")]
    FailRate(f64),
    #[error("--misbehavior-rate must lie in 0..=1, got {0}")]
    MisbehaviorRate(f64),
    #[error("--oversized-bytes must lie in 1..=1073741824, got {0}")]
    OversizedBytes(u64),
    #[error("--sims must be at most 999999999 (sim ids have 9 digits), got {0}")]
    TooManySims(u32),
    #[error("--tags must be at most 65535, got {0}")]
    TooManyTags(u32),
    #[error("--start must be a whole UTC hour (like 2024-01-01T00:00:00Z), got {0}")]
    StartNotOnHour(String),
    #[error("--rate-window must be at least 1 second")]
    RateWindow,
    #[error("--sims x --hours is too large: the data set could exceed 2^32 records")]
    TooLarge,
    #[error("--admin-token must not be empty")]
    EmptyAdminToken,
}

/// Everything a request handler reads; built once, shared behind an `Arc`.
pub(crate) struct Inner {
    pub(crate) options: SimOptions,
    pub(crate) data: Data,
    pub(crate) keys: Vec<ApiKey>,
    /// `None` with `--rate-scope off`.
    pub(crate) limiter: Option<Limiter>,
    pub(crate) stats: Stats,
    pub(crate) clock: Clock,
    pub(crate) faults: Faults,
    pub(crate) cursors: Cursors,
    /// API requests seen since start or reset; numbers jitter and fault draws.
    pub(crate) counter: AtomicU64,
}

/// A ready-to-serve simulator. Cheap to clone: the data set is shared.
#[derive(Clone)]
pub struct Simulator {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.inner.data;
        f.debug_struct("Simulator")
            .field("seed", &self.inner.options.seed)
            .field("sims", &d.sims.len())
            .field("tags", &d.tags.len())
            .field("raw_records", &d.raw.recs.len())
            .field("hourly_records", &d.hourly.recs.len())
            .finish()
    }
}

fn validate(o: &SimOptions) -> Result<(), SimError> {
    if !(0.0..=1.0).contains(&o.activity) {
        return Err(SimError::Activity(o.activity));
    }
    if !(0.0..=1.0).contains(&o.fail_rate) {
        return Err(SimError::FailRate(o.fail_rate));
    }
    if !(0.0..=1.0).contains(&o.misbehavior_rate) {
        return Err(SimError::MisbehaviorRate(o.misbehavior_rate));
    }
    if !(1..=MAX_OVERSIZED_BYTES).contains(&o.oversized_bytes) {
        return Err(SimError::OversizedBytes(o.oversized_bytes));
    }
    if o.sims > 999_999_999 {
        return Err(SimError::TooManySims(o.sims));
    }
    if o.tags > u32::from(u16::MAX) {
        return Err(SimError::TooManyTags(o.tags));
    }
    if o.start.unix_timestamp() % 3600 != 0 || o.start.nanosecond() != 0 {
        return Err(SimError::StartNotOnHour(o.start.to_string()));
    }
    if o.rate_window == 0 {
        return Err(SimError::RateWindow);
    }
    // At most 4 sessions per active SIM-hour; view positions are u32.
    if o.activity > 0.0 && u64::from(o.sims) * u64::from(o.hours) * 4 > u64::from(u32::MAX) {
        return Err(SimError::TooLarge);
    }
    if o.keys.is_empty() {
        return Err(SimError::NoKeys);
    }
    if o.admin_token.as_deref() == Some("") {
        return Err(SimError::EmptyAdminToken);
    }
    Ok(())
}

fn build_keys(specs: &[String], data: &Data) -> Result<Vec<ApiKey>, SimError> {
    let sim_tags: Vec<Vec<u16>> = data.sims.iter().map(|s| s.tags.clone()).collect();
    let mut keys: Vec<ApiKey> = Vec::with_capacity(specs.len());
    for spec in specs {
        let (key, tag_ids) = parse_key_spec(spec).map_err(SimError::KeySpec)?;
        if keys.iter().any(|k| k.key == key) {
            return Err(SimError::DuplicateKey(key));
        }
        let scope = if tag_ids.is_empty() {
            Scope::organization()
        } else {
            let tags = tag_ids
                .iter()
                .map(|t| {
                    data.find_tag(t).ok_or_else(|| SimError::UnknownTag {
                        key: key.clone(),
                        tag: t.clone(),
                        count: data.tags.len(),
                    })
                })
                .collect::<Result<Vec<u16>, SimError>>()?;
            Scope::of_tags(tags, &sim_tags)
        };
        keys.push(ApiKey { key, scope });
    }
    Ok(keys)
}

impl Simulator {
    /// Validates the options and precomputes the whole data set.
    pub fn new(options: SimOptions) -> Result<Simulator, SimError> {
        validate(&options)?;
        let start_ms = options.start.unix_timestamp() * 1000;
        let data = Data::generate(&GenParams {
            seed: options.seed,
            sims: options.sims,
            tags: options.tags,
            start_ms,
            hours: options.hours,
            activity: options.activity,
            shape: options.record_shape,
        });
        let keys = build_keys(&options.keys, &data)?;
        // A live clock without --now runs from the real time: its x-ratelimit-reset must be a
        // real instant, or a client pacing itself by it (the gateway) is misled.
        let now_ms = match (options.now, options.live_clock) {
            (Some(now), _) => {
                Some(i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
            }
            (None, true) => None,
            (None, false) => Some(start_ms + i64::from(options.hours) * MS_PER_HOUR),
        };
        let limiter = (options.rate_scope != RateScope::Off).then(|| {
            Limiter::new(RateConfig {
                limit: options.rate_limit,
                window_s: options.rate_window,
                align: options.rate_align,
            })
        });
        let inner = Inner {
            stats: Stats::new(keys.iter().map(|k| k.key.clone()).collect()),
            clock: Clock::new(options.live_clock, now_ms),
            faults: Faults::new(FaultState {
                fail_rate: options.fail_rate,
                status: 503,
                latency_ms: options.latency_ms,
                jitter_ms: options.jitter_ms,
                misbehavior: options.misbehavior,
                misbehavior_rate: options.misbehavior_rate,
                oversized_bytes: options.oversized_bytes,
                trickle_ms: options.trickle_ms,
            }),
            cursors: Cursors::new(options.cursor_mode, options.seed),
            counter: AtomicU64::new(0),
            limiter,
            keys,
            data,
            options,
        };
        Ok(Simulator {
            inner: Arc::new(inner),
        })
    }

    /// Tag ids (lower-case UUIDs) in tag order.
    pub fn tag_ids(&self) -> Vec<String> {
        self.inner.data.tags.iter().map(|t| t.id.clone()).collect()
    }

    /// ICCIDs (20 digits, Luhn-checked) in SIM order.
    pub fn iccids(&self) -> Vec<String> {
        self.inner
            .data
            .sims
            .iter()
            .map(|s| s.iccid.clone())
            .collect()
    }

    /// SIM ids (`000000001`, ...) in order.
    pub fn sim_ids(&self) -> Vec<String> {
        self.inner
            .data
            .sims
            .iter()
            .map(|s| s.sim_id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options;

    fn small() -> SimOptions {
        SimOptions {
            sims: 10,
            hours: 24,
            ..SimOptions::default()
        }
    }

    #[test]
    fn invalid_options_are_reported_clearly() {
        let cases: Vec<(SimOptions, &str)> = vec![
            (
                SimOptions {
                    activity: 1.5,
                    ..small()
                },
                "--activity",
            ),
            (
                SimOptions {
                    misbehavior_rate: 2.0,
                    ..small()
                },
                "--misbehavior-rate",
            ),
            (
                SimOptions {
                    oversized_bytes: 0,
                    ..small()
                },
                "--oversized-bytes",
            ),
            (
                SimOptions {
                    keys: vec!["k=nope".into()],
                    ..small()
                },
                "bad key spec",
            ),
            (
                SimOptions {
                    keys: vec!["k=00000000-0000-4000-8000-000000000000".into()],
                    ..small()
                },
                "not one of the 8 generated tags",
            ),
            (
                SimOptions {
                    keys: vec!["k".into(), "k".into()],
                    ..small()
                },
                "twice",
            ),
            (
                SimOptions {
                    start: options::parse_time("2024-01-01T00:30:00Z").expect("valid time"),
                    ..small()
                },
                "whole UTC hour",
            ),
        ];
        for (opts, needle) in cases {
            let err = Simulator::new(opts)
                .expect_err("invalid options")
                .to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn a_live_clock_without_now_runs_from_the_real_time() {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let live = Simulator::new(SimOptions {
            live_clock: true,
            ..small()
        })
        .expect("valid");
        let now = live.inner.clock.now_ms();
        assert!((wall..wall + 60_000).contains(&now), "{now} vs {wall}");
        let fixed = Simulator::new(small()).expect("valid");
        assert_eq!(
            fixed.inner.clock.now_ms(),
            options::DEFAULT_START.unix_timestamp() * 1000 + 24 * MS_PER_HOUR
        );
    }

    #[test]
    fn keys_may_be_scoped_to_generated_tags() {
        let sim = Simulator::new(small()).expect("valid");
        let tag = sim.tag_ids()[2].to_uppercase();
        let scoped = SimOptions {
            keys: vec!["all".into(), format!("some={tag}")],
            ..small()
        };
        let sim = Simulator::new(scoped).expect("valid scoped key");
        assert_eq!(sim.sim_ids().len(), 10);
        assert_eq!(sim.sim_ids()[9], "000000010");
    }
}
