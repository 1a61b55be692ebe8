//! Request counters and the recent-request log behind `/__sim/stats` and `/__sim/requests`.
//!
//! Guarantees: every API request (never a control request) is recorded exactly once, after its
//! status is known; the log keeps the last `LOG_CAPACITY` requests, oldest first, with the
//! request target exactly as received. Recording takes one short mutex and, once the log is
//! full, reuses the evicted entry's buffer instead of allocating.
//!
//! `peak_60s` is the most API requests seen in any sliding 60 seconds of real time (whatever
//! the simulated clock says): what a gateway (or several) sent in its busiest minute, the
//! number a benchmark compares with the 600-a-minute limit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Map, Value};

use crate::options::Misbehavior;

pub(crate) const LOG_CAPACITY: usize = 1000;

/// The window of `peak_60s`.
const PEAK_WINDOW: Duration = Duration::from_secs(60);

/// Which API endpoint a request addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Usage,
    UsageBySim,
    TagTotal,
    Sims,
    Other,
}

impl Endpoint {
    const ALL: [Endpoint; 5] = [
        Endpoint::Usage,
        Endpoint::UsageBySim,
        Endpoint::TagTotal,
        Endpoint::Sims,
        Endpoint::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Usage => "usage",
            Endpoint::UsageBySim => "usage_by_sim",
            Endpoint::TagTotal => "tag_total",
            Endpoint::Sims => "sims",
            Endpoint::Other => "other",
        }
    }
}

/// The `Authorization` form as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoggedAuth {
    Raw,
    Bearer,
    None,
    Invalid,
}

impl LoggedAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            LoggedAuth::Raw => "raw",
            LoggedAuth::Bearer => "bearer",
            LoggedAuth::None => "none",
            LoggedAuth::Invalid => "invalid",
        }
    }
}

/// One finished API request.
#[derive(Debug)]
pub(crate) struct Observation<'a> {
    pub endpoint: Endpoint,
    /// Index of the accepted key, if any.
    pub key: Option<usize>,
    pub auth: LoggedAuth,
    pub status: u16,
    pub method: &'a Method,
    pub target: &'a str,
}

#[derive(Debug)]
struct LogEntry {
    method: Method,
    target: String,
    auth: LoggedAuth,
    status: u16,
}

#[derive(Debug, Default)]
struct Counters {
    total: u64,
    by_endpoint: [u64; 5],
    by_key: Vec<u64>,
    by_status: BTreeMap<u16, u64>,
    raw: u64,
    bearer: u64,
    /// Misbehaving answers by mode, indexed like `Misbehavior::ALL`.
    misbehaviors: [u64; Misbehavior::ALL.len()],
    log: VecDeque<LogEntry>,
    /// Arrival times of the requests of the last 60 seconds, oldest first.
    recent: VecDeque<Instant>,
    /// The most requests any 60 seconds held so far.
    peak_60s: u64,
}

/// Counters plus the request log.
#[derive(Debug)]
pub(crate) struct Stats {
    key_names: Vec<String>,
    inner: Mutex<Counters>,
}

impl Stats {
    pub fn new(key_names: Vec<String>) -> Stats {
        let counters = Counters {
            by_key: vec![0; key_names.len()],
            log: VecDeque::with_capacity(LOG_CAPACITY),
            ..Counters::default()
        };
        Stats {
            key_names,
            inner: Mutex::new(counters),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        // Counters stay meaningful even if a holder panicked mid-update.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, obs: &Observation<'_>) {
        self.record_at(obs, Instant::now());
    }

    /// Records `obs` as arrived at `now` (tests pass their own instants).
    pub(crate) fn record_at(&self, obs: &Observation<'_>, now: Instant) {
        let mut c = self.lock();
        // The window ending now holds every request less than 60 s older than this one; the
        // busiest window always ends with some request, so checking at each is exact.
        while c
            .recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= PEAK_WINDOW)
        {
            c.recent.pop_front();
        }
        c.recent.push_back(now);
        c.peak_60s = c.peak_60s.max(c.recent.len() as u64);
        c.total += 1;
        c.by_endpoint[obs.endpoint as usize] += 1;
        if let Some(k) = obs.key {
            if let Some(n) = c.by_key.get_mut(k) {
                *n += 1;
            }
        }
        *c.by_status.entry(obs.status).or_insert(0) += 1;
        match obs.auth {
            LoggedAuth::Raw => c.raw += 1,
            LoggedAuth::Bearer => c.bearer += 1,
            LoggedAuth::None | LoggedAuth::Invalid => {}
        }
        let entry = if c.log.len() >= LOG_CAPACITY {
            c.log.pop_front().map(|mut e| {
                e.target.clear();
                e.target.push_str(obs.target);
                e.method = obs.method.clone();
                e.auth = obs.auth;
                e.status = obs.status;
                e
            })
        } else {
            None
        };
        let entry = entry.unwrap_or_else(|| LogEntry {
            method: obs.method.clone(),
            target: obs.target.to_owned(),
            auth: obs.auth,
            status: obs.status,
        });
        c.log.push_back(entry);
    }

    /// Counts one misbehaving answer.
    pub fn misbehaved(&self, mode: Misbehavior) {
        let mut c = self.lock();
        if let Some(i) = Misbehavior::ALL.iter().position(|&m| m == mode) {
            c.misbehaviors[i] += 1;
        }
    }

    pub fn reset(&self) {
        let mut c = self.lock();
        let keys = c.by_key.len();
        *c = Counters {
            by_key: vec![0; keys],
            log: VecDeque::with_capacity(LOG_CAPACITY),
            ..Counters::default()
        };
    }

    /// The counter part of `/__sim/stats`.
    pub fn counters_json(&self) -> Map<String, Value> {
        let c = self.lock();
        let by_endpoint: Map<String, Value> = Endpoint::ALL
            .iter()
            .map(|e| (e.as_str().to_owned(), json!(c.by_endpoint[*e as usize])))
            .collect();
        let by_key: Map<String, Value> = self
            .key_names
            .iter()
            .zip(&c.by_key)
            .map(|(k, n)| (k.clone(), json!(n)))
            .collect();
        let by_status: Map<String, Value> = c
            .by_status
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        let mut out = Map::new();
        out.insert("requests_total".into(), json!(c.total));
        out.insert("peak_60s".into(), json!(c.peak_60s));
        out.insert("by_endpoint".into(), Value::Object(by_endpoint));
        out.insert("by_key".into(), Value::Object(by_key));
        out.insert("by_status".into(), Value::Object(by_status));
        out.insert(
            "by_auth_form".into(),
            json!({"raw": c.raw, "bearer": c.bearer}),
        );
        let misbehaviors: Map<String, Value> = Misbehavior::ALL
            .iter()
            .zip(&c.misbehaviors)
            .filter(|(m, _)| **m != Misbehavior::None)
            .map(|(m, n)| (m.name().to_owned(), json!(n)))
            .collect();
        out.insert("misbehaviors".into(), Value::Object(misbehaviors));
        out
    }

    /// `/__sim/requests`: the log, oldest first.
    pub fn requests_json(&self) -> Value {
        let c = self.lock();
        Value::Array(
            c.log
                .iter()
                .map(|e| {
                    json!({
                        "method": e.method.as_str(),
                        "target": e.target,
                        "auth_form": e.auth.as_str(),
                        "status": e.status,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(target: &str, status: u16) -> Observation<'_> {
        Observation {
            endpoint: Endpoint::Usage,
            key: Some(0),
            auth: LoggedAuth::Raw,
            status,
            method: &Method::GET,
            target,
        }
    }

    #[test]
    fn counters_group_by_endpoint_key_status_and_form() {
        let s = Stats::new(vec!["k".into()]);
        s.record(&obs("/usage", 200));
        s.record(&obs("/usage?limit=0", 400));
        let j = Value::Object(s.counters_json());
        assert_eq!(j["requests_total"], 2);
        assert_eq!(j["by_endpoint"]["usage"], 2);
        assert_eq!(j["by_key"]["k"], 2);
        assert_eq!(j["by_status"]["400"], 1);
        assert_eq!(j["by_auth_form"]["raw"], 2);
    }

    #[test]
    fn peak_60s_is_the_busiest_sliding_minute() {
        let s = Stats::new(vec![]);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // 3 requests in the first second, 2 at 59.5 s (a sliding minute holds all 5), then
        // 1 at 60.5 s (the first three have left: 3 in that minute).
        for ms in [0, 500, 1_000, 59_500, 59_600, 60_500] {
            s.record_at(&obs("/usage", 200), at(ms));
        }
        assert_eq!(Value::Object(s.counters_json())["peak_60s"], 5);
        // Exactly 60 s later the first request no longer counts (a window is half-open).
        let t = Stats::new(vec![]);
        for ms in [0, 60_000] {
            t.record_at(&obs("/usage", 200), at(ms));
        }
        assert_eq!(Value::Object(t.counters_json())["peak_60s"], 1);
        s.reset();
        assert_eq!(Value::Object(s.counters_json())["peak_60s"], 0);
    }

    #[test]
    fn misbehaviors_are_counted_by_mode_and_cleared_by_reset() {
        let s = Stats::new(vec![]);
        s.misbehaved(Misbehavior::Gzip);
        s.misbehaved(Misbehavior::Gzip);
        s.misbehaved(Misbehavior::Trickle);
        let j = Value::Object(s.counters_json());
        assert_eq!(j["misbehaviors"]["gzip"], 2);
        assert_eq!(j["misbehaviors"]["trickle"], 1);
        assert_eq!(j["misbehaviors"]["reset_mid_body"], 0);
        assert_eq!(j["misbehaviors"].as_object().map(Map::len), Some(7));
        s.reset();
        assert_eq!(Value::Object(s.counters_json())["misbehaviors"]["gzip"], 0);
    }

    #[test]
    fn the_log_keeps_the_last_thousand_oldest_first() {
        let s = Stats::new(vec![]);
        for i in 0..(LOG_CAPACITY + 5) {
            s.record(&obs(&format!("/usage?offset={i}"), 200));
        }
        let log = s.requests_json();
        let log = log.as_array().expect("array");
        assert_eq!(log.len(), LOG_CAPACITY);
        assert_eq!(log[0]["target"], "/usage?offset=5");
        assert_eq!(
            log[LOG_CAPACITY - 1]["target"],
            format!("/usage?offset={}", LOG_CAPACITY + 4)
        );
        s.reset();
        assert_eq!(s.requests_json().as_array().map(Vec::len), Some(0));
    }
}
