//! What the gateway counts: Prometheus metrics for `/metrics`, and the running totals and
//! 15-minute history the status page draws.
//!
//! Label values are bounded: routes, cache outcomes, statuses, error codes, profile and caller
//! names all come from closed sets or the configuration, never from a request's path or key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::sync::{lock, read, write};

/// How often the status page's history takes a sample, and how many it keeps (15 minutes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
pub const SAMPLES_KEPT: usize = 90;

/// A label value that is a shared name (caller, profile) without copying it per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    cache: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteCacheLabels {
    route: &'static str,
    cache: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    profile: Name,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProfileLabels {
    profile: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallerCacheLabels {
    caller: Name,
    cache: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallerLabels {
    caller: Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// One finished request, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub route: &'static str,
    pub status: u16,
    pub cache: &'static str,
    pub caller: Option<&'a Arc<str>>,
    pub error: Option<&'static str>,
    pub duration: Duration,
}

/// A caller's totals, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerTotals {
    pub requests: u64,
    pub from_cache: u64,
    pub upstream_calls: u64,
}

/// A caller's running counts, shared by every kind of answer it gets.
#[derive(Debug, Default)]
struct CallerCounts {
    requests: AtomicU64,
    from_cache: AtomicU64,
    upstream_calls: AtomicU64,
}

impl CallerCounts {
    fn totals(&self) -> CallerTotals {
        CallerTotals {
            requests: self.requests.load(Ordering::Relaxed),
            from_cache: self.from_cache.load(Ordering::Relaxed),
            upstream_calls: self.upstream_calls.load(Ordering::Relaxed),
        }
    }
}

/// One kind of answer, as the metrics label it, by the addresses of its names: the route and
/// cache names are `&'static str`s, and the caller's `Arc<str>` is pinned by the handles found
/// for it (so its address names no one else while the entry lives). Equal names at different
/// addresses are two keys with the same handles: only a second entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AnswerKind {
    route: usize,
    status: u16,
    cache: usize,
    caller: usize,
}

impl AnswerKind {
    fn of(done: &Finished<'_>) -> Self {
        Self {
            route: done.route.as_ptr() as usize,
            status: done.status,
            cache: done.cache.as_ptr() as usize,
            caller: done
                .caller
                .map_or(0, |caller| Arc::as_ptr(caller).cast::<u8>() as usize),
        }
    }
}

/// The metric handles one kind of answer updates. Prometheus families are maps keyed by label
/// strings, hashed with SipHash on every lookup: four lookups per request were ~6% of a cache
/// hit's instructions (callgrind). One lookup of an [`AnswerKind`] finds them all.
#[derive(Debug, Clone)]
struct AnswerHandles {
    requests: Counter,
    duration: Histogram,
    saved: Option<(Counter, &'static str)>,
    caller: Option<(Counter, Arc<CallerCounts>)>,
    /// Keeps the caller's name, and so the address in its [`AnswerKind`], alive.
    _caller_name: Option<Arc<str>>,
}

/// Kinds of answers seen; cleared when it grows past this (callers renamed by many reloads).
const ANSWER_KINDS_KEPT: usize = 4096;

/// The accept loop's counts: shared handles, so the loop holds them without the registry.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
}

/// Cumulative counts at one instant; the history keeps one every [`SAMPLE_EVERY`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub requests: u64,
    pub from_cache: u64,
    pub upstream_calls: u64,
    pub errors: u64,
    pub budget_remaining: u64,
}

#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    hits: AtomicU64,
    collapsed: AtomicU64,
    stale: AtomicU64,
    upstream_calls: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteCacheLabels, Histogram>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<ProfileLabels, Histogram>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    saved: Family<ReasonLabels, Counter>,
    caller_requests: Family<CallerCacheLabels, Counter>,
    caller_upstream: Family<CallerLabels, Counter>,
    budget_remaining: Family<ProfileLabels, Gauge>,
    breaker_open: Family<ProfileLabels, Gauge>,
    errors: Family<CodeLabels, Counter>,
    /// Client connections, for the accept loop (`server::ConnectionLimits`).
    pub connections: ConnectionMetrics,
    /// Panics the error boundary caught (each answered 500 `internal_error`).
    pub panics: Counter,
    /// The shared tier's Redis: up or down, and what its commands cost.
    pub redis: RedisMetrics,
    totals: Totals,
    callers: Mutex<BTreeMap<Arc<str>, Arc<CallerCounts>>>,
    answer_kinds: RwLock<HashMap<AnswerKind, AnswerHandles, foldhash::fast::RandomState>>,
    history: Mutex<VecDeque<(Instant, Sample)>>,
    pub started: Instant,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s: hits sit at the bottom, upstream calls in the middle.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        let request_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let upstream_requests = Family::default();
        let upstream_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let cache_entries = Gauge::default();
        let cache_bytes = Gauge::default();
        let saved = Family::default();
        let caller_requests = Family::default();
        let caller_upstream = Family::default();
        let budget_remaining = Family::default();
        let breaker_open = Family::default();
        let errors = Family::default();
        let connections = ConnectionMetrics::default();
        let panics = Counter::default();
        registry.register(
            "usage_gateway_panics",
            "Panics caught while answering a request (each answered 500 internal_error)",
            panics.clone(),
        );
        registry.register(
            "usage_gateway_connections_open",
            "Client connections open on the API listener",
            connections.open.clone(),
        );
        registry.register(
            "usage_gateway_connections_refused",
            "Client connections closed at once because server.max_connections were open",
            connections.refused.clone(),
        );
        registry.register(
            "usage_gateway_requests",
            "Requests answered, by route, status and cache outcome",
            requests.clone(),
        );
        registry.register(
            "usage_gateway_request_duration_seconds",
            "Time to answer a request, by route and cache outcome",
            request_duration.clone(),
        );
        registry.register(
            "usage_gateway_upstream_requests",
            "Calls to the upstream API, by credential profile and status (or error, timeout)",
            upstream_requests.clone(),
        );
        registry.register(
            "usage_gateway_upstream_duration_seconds",
            "Duration of upstream calls, by credential profile",
            upstream_duration.clone(),
        );
        registry.register(
            "usage_gateway_cache_entries",
            "Answers held in the cache",
            cache_entries.clone(),
        );
        registry.register(
            "usage_gateway_cache_bytes",
            "Weighted size of the cache (bodies plus per-entry overhead)",
            cache_bytes.clone(),
        );
        registry.register(
            "usage_gateway_upstream_calls_saved",
            "Requests answered without an upstream call of their own, by reason",
            saved.clone(),
        );
        registry.register(
            "usage_gateway_caller_requests",
            "Requests by caller and cache outcome",
            caller_requests.clone(),
        );
        registry.register(
            "usage_gateway_caller_upstream_calls",
            "Upstream calls made for each caller's requests",
            caller_upstream.clone(),
        );
        registry.register(
            "usage_gateway_upstream_budget_remaining",
            "Upstream calls that could go out right now, by credential profile",
            budget_remaining.clone(),
        );
        registry.register(
            "usage_gateway_breaker_open",
            "1 while the circuit breaker of a credential profile is open",
            breaker_open.clone(),
        );
        registry.register(
            "usage_gateway_errors",
            "Error answers, by error code",
            errors.clone(),
        );
        let redis = RedisMetrics::register(&mut registry);
        Self {
            registry,
            redis,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            cache_entries,
            cache_bytes,
            saved,
            caller_requests,
            caller_upstream,
            budget_remaining,
            breaker_open,
            errors,
            connections,
            panics,
            totals: Totals::default(),
            callers: Mutex::new(BTreeMap::new()),
            answer_kinds: RwLock::default(),
            history: Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT + 1)),
            started: Instant::now(),
        }
    }

    /// Counts one answered request.
    pub fn record_request(&self, done: Finished<'_>) {
        let kind = AnswerKind::of(&done);
        // Counted under the read lock: the handles are atomics, and cloning them would cost
        // as many atomic operations again.
        if let Some(handles) = read(&self.answer_kinds).get(&kind) {
            return self.count(handles, &done);
        }
        let handles = self.answer_handles(kind, &done);
        self.count(&handles, &done);
    }

    fn count(&self, handles: &AnswerHandles, done: &Finished<'_>) {
        let Finished {
            error, duration, ..
        } = *done;
        handles.requests.inc();
        handles.duration.observe(duration.as_secs_f64());
        let saved_by = handles.saved.as_ref().map(|(saved, reason)| {
            saved.inc();
            *reason
        });
        if let Some((requests, counts)) = &handles.caller {
            requests.inc();
            counts.requests.fetch_add(1, Ordering::Relaxed);
            counts
                .from_cache
                .fetch_add(u64::from(saved_by.is_some()), Ordering::Relaxed);
        }
        if let Some(code) = error {
            self.errors.get_or_create(&CodeLabels { code }).inc();
            self.totals.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match saved_by {
            Some("hit") => Some(&self.totals.hits),
            Some("collapsed") => Some(&self.totals.collapsed),
            Some("stale") => Some(&self.totals.stale),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Looks up (and remembers) the handles of a kind of answer not seen before.
    fn answer_handles(&self, kind: AnswerKind, done: &Finished<'_>) -> AnswerHandles {
        let Finished {
            route,
            status,
            cache,
            caller,
            ..
        } = *done;
        let handles = AnswerHandles {
            requests: self
                .requests
                .get_or_create(&RequestLabels {
                    route,
                    status,
                    cache,
                })
                .clone(),
            duration: self
                .request_duration
                .get_or_create(&RouteCacheLabels { route, cache })
                .clone(),
            saved: saved_reason(cache).map(|reason| {
                let counter = self.saved.get_or_create(&ReasonLabels { reason }).clone();
                (counter, reason)
            }),
            caller: caller.as_ref().map(|caller| {
                let counter = self
                    .caller_requests
                    .get_or_create(&CallerCacheLabels {
                        caller: Name(Arc::clone(caller)),
                        cache,
                    })
                    .clone();
                (counter, self.caller_counts(caller))
            }),
            _caller_name: caller.cloned(),
        };
        let mut kinds = write(&self.answer_kinds);
        if kinds.len() >= ANSWER_KINDS_KEPT {
            kinds.clear();
        }
        kinds.insert(kind, handles.clone());
        handles
    }

    fn caller_counts(&self, caller: &Arc<str>) -> Arc<CallerCounts> {
        lock(&self.callers)
            .entry(caller.clone())
            .or_default()
            .clone()
    }

    /// Counts one upstream call: `status` is the HTTP status, or `error` / `timeout`.
    pub fn record_upstream(
        &self,
        profile: &Arc<str>,
        status: &'static str,
        caller: Option<&Arc<str>>,
        duration: Duration,
    ) {
        let profile = Name(profile.clone());
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                profile: profile.clone(),
                status,
            })
            .inc();
        self.upstream_duration
            .get_or_create(&ProfileLabels { profile })
            .observe(duration.as_secs_f64());
        self.totals.upstream_calls.fetch_add(1, Ordering::Relaxed);
        if let Some(caller) = caller {
            self.caller_upstream
                .get_or_create(&CallerLabels {
                    caller: Name(caller.clone()),
                })
                .inc();
            self.caller_counts(caller)
                .upstream_calls
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sets the gauges read at scrape time.
    pub fn set_cache(&self, entries: u64, bytes: u64) {
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn set_profile(&self, profile: &Arc<str>, budget_remaining: usize, breaker_open: bool) {
        let labels = ProfileLabels {
            profile: Name(profile.clone()),
        };
        self.budget_remaining
            .get_or_create(&labels)
            .set(i64::try_from(budget_remaining).unwrap_or(i64::MAX));
        self.breaker_open
            .get_or_create(&labels)
            .set(i64::from(breaker_open));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }

    /// The running totals, with `budget_remaining` filled in by the caller.
    pub fn sample(&self, budget_remaining: u64) -> Sample {
        let t = &self.totals;
        Sample {
            requests: t.requests.load(Ordering::Relaxed),
            from_cache: t.hits.load(Ordering::Relaxed)
                + t.collapsed.load(Ordering::Relaxed)
                + t.stale.load(Ordering::Relaxed),
            upstream_calls: t.upstream_calls.load(Ordering::Relaxed),
            errors: t.errors.load(Ordering::Relaxed),
            budget_remaining,
        }
    }

    /// Hits, collapsed and stale answers so far.
    pub fn saved(&self) -> (u64, u64, u64) {
        let t = &self.totals;
        (
            t.hits.load(Ordering::Relaxed),
            t.collapsed.load(Ordering::Relaxed),
            t.stale.load(Ordering::Relaxed),
        )
    }

    pub fn callers(&self) -> BTreeMap<Arc<str>, CallerTotals> {
        lock(&self.callers)
            .iter()
            .map(|(name, counts)| (name.clone(), counts.totals()))
            .collect()
    }

    /// Adds a sample to the history, dropping those older than 15 minutes.
    pub fn remember(&self, at: Instant, sample: Sample) {
        let mut history = lock(&self.history);
        history.push_back((at, sample));
        while history.len() > SAMPLES_KEPT {
            history.pop_front();
        }
    }

    pub fn history(&self) -> Vec<(Instant, Sample)> {
        lock(&self.history).iter().copied().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommandFailureLabels {
    command: &'static str,
    reason: &'static str,
}

/// The shared tier's Redis, as `[shared]` uses it: whether it answers, how long its commands
/// take, and why they fail. Registered (and zero) even without `[shared]`, so dashboards need
/// no special case.
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    up: Gauge,
    durations: Family<CommandLabels, Histogram>,
    failures: Family<CommandFailureLabels, Counter>,
}

impl RedisMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            up: Gauge::default(),
            durations: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            failures: Family::default(),
        };
        registry.register(
            "usage_gateway_redis_up",
            "1 while the shared tier's Redis answers; 0 while it does not (upstream misses are then refused or served stale)",
            metrics.up.clone(),
        );
        registry.register(
            "usage_gateway_redis_command_duration_seconds",
            "Time of Redis commands that completed, by command",
            metrics.durations.clone(),
        );
        registry.register(
            "usage_gateway_redis_failures",
            "Redis commands that failed, by command and reason (timeout, error, breaker_open)",
            metrics.failures.clone(),
        );
        metrics
    }

    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    pub fn is_up(&self) -> bool {
        self.up.get() == 1
    }

    /// One command that completed (whatever Redis answered) in `duration`.
    pub fn record(&self, command: &'static str, duration: Duration) {
        self.durations
            .get_or_create(&CommandLabels { command })
            .observe(duration.as_secs_f64());
    }

    /// One command that did not complete: `reason` is `timeout`, `error` or `breaker_open`.
    pub fn failed(&self, command: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&CommandFailureLabels { command, reason })
            .inc();
    }
}

/// Which saving a cache outcome counts as.
fn saved_reason(cache: &str) -> Option<&'static str> {
    match cache {
        "hit" => Some("hit"),
        "collapsed" => Some("collapsed"),
        "stale-while-revalidate" | "stale-if-error" => Some("stale"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished<'a>(cache: &'static str, caller: Option<&'a Arc<str>>) -> Finished<'a> {
        Finished {
            route: "usage",
            status: 200,
            cache,
            caller,
            error: None,
            duration: Duration::from_micros(80),
        }
    }

    #[test]
    fn requests_are_counted_by_route_status_and_cache() {
        let metrics = Metrics::new();
        let billing: Arc<str> = "billing".into();
        metrics.record_request(finished("hit", Some(&billing)));
        metrics.record_request(finished("hit", Some(&billing)));
        metrics.record_request(finished("miss", None));
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"usage_gateway_requests_total{route="usage",status="200",cache="hit"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"usage_gateway_upstream_calls_saved_total{reason="hit"} 2"#));
        assert!(
            text.contains(r#"usage_gateway_caller_requests_total{caller="billing",cache="hit"} 2"#)
        );
        assert!(text.contains("usage_gateway_request_duration_seconds_bucket"));
        assert_eq!(metrics.sample(0).requests, 3);
        assert_eq!(metrics.sample(0).from_cache, 2);
        assert_eq!(
            metrics.callers()[&billing],
            CallerTotals {
                requests: 2,
                from_cache: 2,
                upstream_calls: 0
            }
        );
    }

    #[test]
    fn callers_are_counted_by_name_whichever_copy_of_the_name_reports() {
        let metrics = Metrics::new();
        // A reload builds new `Arc<str>` names: same name, new address.
        let before: Arc<str> = "billing".into();
        let after: Arc<str> = "billing".into();
        let other: Arc<str> = "ops".into();
        metrics.record_request(finished("hit", Some(&before)));
        metrics.record_request(finished("miss", Some(&after)));
        metrics.record_request(finished("hit", Some(&other)));
        assert_eq!(
            metrics.callers()[&before],
            CallerTotals {
                requests: 2,
                from_cache: 1,
                upstream_calls: 0
            }
        );
        assert_eq!(metrics.callers()[&other].requests, 1);
        let text = metrics.encode();
        assert!(
            text.contains(r#"usage_gateway_caller_requests_total{caller="billing",cache="hit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"usage_gateway_requests_total{route="usage",status="200",cache="hit"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn upstream_calls_budget_and_breaker_are_exposed_by_profile() {
        let metrics = Metrics::new();
        let profile: Arc<str> = "default".into();
        let caller: Arc<str> = "ops".into();
        metrics.record_upstream(&profile, "200", Some(&caller), Duration::from_millis(20));
        metrics.set_profile(&profile, 599, false);
        metrics.set_cache(3, 4096);
        let text = metrics.encode();
        for line in [
            r#"usage_gateway_upstream_requests_total{profile="default",status="200"} 1"#,
            r#"usage_gateway_caller_upstream_calls_total{caller="ops"} 1"#,
            r#"usage_gateway_upstream_budget_remaining{profile="default"} 599"#,
            r#"usage_gateway_breaker_open{profile="default"} 0"#,
            "usage_gateway_cache_entries 3",
            "usage_gateway_cache_bytes 4096",
        ] {
            assert!(text.contains(line), "missing {line} in {text}");
        }
    }

    #[test]
    fn the_history_keeps_fifteen_minutes() {
        let metrics = Metrics::new();
        let start = Instant::now();
        for i in 0..(SAMPLES_KEPT as u64 + 10) {
            metrics.remember(
                start + SAMPLE_EVERY * i as u32,
                Sample {
                    requests: i,
                    ..Sample::default()
                },
            );
        }
        let history = metrics.history();
        assert_eq!(history.len(), SAMPLES_KEPT);
        assert_eq!(history[0].1.requests, 10);
    }
}
