//! What the gateway counts: Prometheus metrics for `/metrics`, and the running totals and
//! 15-minute history the status page draws.
//!
//! Label values are bounded: routes, cache outcomes, statuses, error codes, profile and caller
//! names all come from closed sets or the configuration, never from a request's path or key.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::ErrorCode;
use crate::outcome::{CacheOutcome, Saving, OUTCOME_SLOTS};
use crate::query::RouteName;
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

/// A caller's place in the metrics' caller table, given once per caller name when the
/// configuration is loaded ([`Metrics::caller_index`]), so that counting a request takes an
/// array index rather than a lookup by name. Only the [`Metrics`] that gave it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallerIndex(u32);

impl CallerIndex {
    /// A caller made outside a configuration load (tests of single layers): counted by name.
    pub const UNREGISTERED: CallerIndex = CallerIndex(u32::MAX);
}

/// Who a counted request or upstream call was for.
#[derive(Debug, Clone, Copy)]
pub struct CallerId<'a> {
    pub name: &'a Arc<str>,
    pub index: CallerIndex,
}

/// One finished request, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// `None` for requests refused before their route was known.
    pub route: Option<RouteName>,
    pub status: u16,
    /// `None` for requests that never reached the cache.
    pub cache: Option<CacheOutcome>,
    pub caller: Option<CallerId<'a>>,
    pub error: Option<ErrorCode>,
    pub duration: Duration,
}

fn route_label(route: Option<RouteName>) -> &'static str {
    route.map_or("none", RouteName::as_str)
}

/// Dense index of a route, 0 for "none".
fn route_slot(route: Option<RouteName>) -> usize {
    route.map_or(0, |route| route as usize + 1)
}

const ROUTE_SLOTS: usize = RouteName::ALL.len() + 1;

/// A caller's totals, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerTotals {
    pub requests: u64,
    pub from_cache: u64,
    pub upstream_calls: u64,
}

/// A caller's running counts and metric handles, shared by every kind of answer it gets.
#[derive(Debug)]
struct CallerHandles {
    name: Arc<str>,
    requests: AtomicU64,
    from_cache: AtomicU64,
    upstream_calls: AtomicU64,
    /// `usage_gateway_caller_requests{caller, cache}`, by [`CacheOutcome::index`]; each made
    /// when first used, so /metrics lists only what happened.
    by_cache: [OnceLock<Counter>; OUTCOME_SLOTS],
    upstream: OnceLock<Counter>,
}

impl CallerHandles {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            requests: AtomicU64::new(0),
            from_cache: AtomicU64::new(0),
            upstream_calls: AtomicU64::new(0),
            by_cache: Default::default(),
            upstream: OnceLock::new(),
        }
    }

    fn totals(&self) -> CallerTotals {
        CallerTotals {
            requests: self.requests.load(Ordering::Relaxed),
            from_cache: self.from_cache.load(Ordering::Relaxed),
            upstream_calls: self.upstream_calls.load(Ordering::Relaxed),
        }
    }
}

/// The handles of one (route, cache outcome): Prometheus families are maps keyed by label
/// strings, hashed with SipHash on every lookup (four lookups per request were ~6% of a cache
/// hit's instructions, callgrind); these are found by array index instead.
#[derive(Debug)]
struct RouteCacheHandles {
    duration: Histogram,
    saved: Option<(Counter, Saving)>,
    /// `usage_gateway_requests{route, status, cache}`: the few statuses seen, scanned.
    by_status: RwLock<Vec<(u16, Counter)>>,
}

/// The callers seen, by index and by name.
#[derive(Debug, Default)]
struct CallerTable {
    by_index: RwLock<Vec<Arc<CallerHandles>>>,
    by_name: Mutex<BTreeMap<Arc<str>, CallerIndex>>,
}

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
    callers: CallerTable,
    route_cache: [[OnceLock<RouteCacheHandles>; OUTCOME_SLOTS]; ROUTE_SLOTS],
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
            "usage_gateway_access_log_dropped",
            "Access lines dropped because the log output could not keep up",
            crate::access_log::DROPPED.clone(),
        );
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
            callers: CallerTable::default(),
            route_cache: Default::default(),
            history: Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT + 1)),
            started: Instant::now(),
        }
    }

    /// The index of the caller called `name`: the same for the same name across reloads.
    pub fn caller_index(&self, name: &Arc<str>) -> CallerIndex {
        let mut by_name = lock(&self.callers.by_name);
        if let Some(index) = by_name.get(name) {
            return *index;
        }
        let mut by_index = write(&self.callers.by_index);
        // Caller names come from the configuration: far fewer than u32::MAX.
        let index = CallerIndex(u32::try_from(by_index.len()).unwrap_or(u32::MAX - 1));
        by_index.push(Arc::new(CallerHandles::new(name.clone())));
        by_name.insert(name.clone(), index);
        index
    }

    fn caller(&self, caller: CallerId<'_>) -> Arc<CallerHandles> {
        let found = read(&self.callers.by_index)
            .get(caller.index.0 as usize)
            .filter(|handles| handles.name == *caller.name)
            .cloned();
        found.unwrap_or_else(|| {
            let index = self.caller_index(caller.name);
            read(&self.callers.by_index)[index.0 as usize].clone()
        })
    }

    fn route_cache(
        &self,
        route: Option<RouteName>,
        cache: Option<CacheOutcome>,
    ) -> &RouteCacheHandles {
        self.route_cache[route_slot(route)][CacheOutcome::index(cache)].get_or_init(|| {
            let (route, cache_label) = (route_label(route), CacheOutcome::label(cache));
            RouteCacheHandles {
                duration: self
                    .request_duration
                    .get_or_create(&RouteCacheLabels {
                        route,
                        cache: cache_label,
                    })
                    .clone(),
                saved: cache.and_then(CacheOutcome::saving).map(|saving| {
                    let reason = saving.as_str();
                    (
                        self.saved.get_or_create(&ReasonLabels { reason }).clone(),
                        saving,
                    )
                }),
                by_status: RwLock::default(),
            }
        })
    }

    /// Counts one answered request.
    pub fn record_request(&self, done: Finished<'_>) {
        let handles = self.route_cache(done.route, done.cache);
        let counted = read(&handles.by_status)
            .iter()
            .find(|(status, _)| *status == done.status)
            .map(|(_, counter)| counter.inc())
            .is_some();
        if !counted {
            let counter = self
                .requests
                .get_or_create(&RequestLabels {
                    route: route_label(done.route),
                    status: done.status,
                    cache: CacheOutcome::label(done.cache),
                })
                .clone();
            counter.inc();
            let mut by_status = write(&handles.by_status);
            if !by_status.iter().any(|(status, _)| *status == done.status) {
                by_status.push((done.status, counter));
            }
        }
        handles.duration.observe(done.duration.as_secs_f64());
        let saving = handles.saved.as_ref().map(|(counter, saving)| {
            counter.inc();
            *saving
        });
        if let Some(caller) = done.caller {
            let counts = self.caller(caller);
            counts.by_cache[CacheOutcome::index(done.cache)]
                .get_or_init(|| {
                    self.caller_requests
                        .get_or_create(&CallerCacheLabels {
                            caller: Name(counts.name.clone()),
                            cache: CacheOutcome::label(done.cache),
                        })
                        .clone()
                })
                .inc();
            counts.requests.fetch_add(1, Ordering::Relaxed);
            if saving.is_some() {
                counts.from_cache.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(code) = done.error {
            self.errors
                .get_or_create(&CodeLabels {
                    code: code.as_str(),
                })
                .inc();
            self.totals.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match saving {
            Some(Saving::Hit) => Some(&self.totals.hits),
            Some(Saving::Collapsed) => Some(&self.totals.collapsed),
            Some(Saving::Stale) => Some(&self.totals.stale),
            None => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one upstream call: `status` is the HTTP status, or `error` / `timeout`.
    pub fn record_upstream(
        &self,
        profile: &Arc<str>,
        status: &'static str,
        caller: Option<CallerId<'_>>,
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
            let counts = self.caller(caller);
            counts
                .upstream
                .get_or_init(|| {
                    self.caller_upstream
                        .get_or_create(&CallerLabels {
                            caller: Name(counts.name.clone()),
                        })
                        .clone()
                })
                .inc();
            counts.upstream_calls.fetch_add(1, Ordering::Relaxed);
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
        read(&self.callers.by_index)
            .iter()
            .map(|counts| (counts.name.clone(), counts.totals()))
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
struct LookupLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommandFailureLabels {
    command: &'static str,
    reason: &'static str,
}

/// What the shared tier saved and cost, as the status page shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedTotals {
    pub hits: u64,
    /// Lookups of every result: hit, stale, miss, error.
    pub lookups: u64,
    pub lock_waits: u64,
    pub takeovers: u64,
    pub purges_applied: u64,
    pub purge_gaps: u64,
}

/// The shared tier's Redis, as `[shared]` uses it: whether it answers, how long its commands
/// take, and why they fail. Registered (and zero) even without `[shared]`, so dashboards need
/// no special case.
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    up: Gauge,
    durations: Family<CommandLabels, Histogram>,
    failures: Family<CommandFailureLabels, Counter>,
    lookups: Family<LookupLabels, Counter>,
    lock_waits: Counter,
    takeovers: Counter,
    purges_applied: Counter,
    purge_gaps: Counter,
}

impl RedisMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            up: Gauge::default(),
            durations: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            failures: Family::default(),
            lookups: Family::default(),
            lock_waits: Counter::default(),
            takeovers: Counter::default(),
            purges_applied: Counter::default(),
            purge_gaps: Counter::default(),
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
        registry.register(
            "usage_gateway_shared_cache_lookups",
            "Memory misses that asked the shared cache, by result (hit, stale, miss, error)",
            metrics.lookups.clone(),
        );
        registry.register(
            "usage_gateway_shared_lock_waits",
            "Misses that waited for another replica's fill of the same question",
            metrics.lock_waits.clone(),
        );
        registry.register(
            "usage_gateway_shared_lock_takeovers",
            "Fill locks taken after waiting: the holder gave up, failed or died",
            metrics.takeovers.clone(),
        );
        registry.register(
            "usage_gateway_shared_purges_applied",
            "Other replicas' purges applied to this replica's memory",
            metrics.purges_applied.clone(),
        );
        registry.register(
            "usage_gateway_shared_purge_gaps",
            "Times the purge stream could not be followed (trimmed, or Redis restarted) and the memory cache was dropped",
            metrics.purge_gaps.clone(),
        );
        metrics
    }

    /// A memory miss asked the shared cache: `result` is `hit`, `stale`, `miss` or `error`.
    pub fn shared_lookup(&self, result: &'static str) {
        self.lookups.get_or_create(&LookupLabels { result }).inc();
    }

    /// A miss waited for another replica's fill.
    pub fn lock_wait(&self) {
        self.lock_waits.inc();
    }

    /// A fill lock was taken over after waiting.
    pub fn takeover(&self) {
        self.takeovers.inc();
    }

    /// Another replica's purge was applied here.
    pub fn purge_applied(&self) {
        self.purges_applied.inc();
    }

    /// The purge stream had a gap: the memory cache was dropped.
    pub fn purge_gap(&self) {
        self.purge_gaps.inc();
    }

    /// What the shared tier did for this replica, for the status page.
    pub fn shared_totals(&self) -> SharedTotals {
        // One lookup per statement: a family's read guard held across the next
        // `get_or_create` (which may write) would deadlock.
        let count = |result: &'static str| -> u64 {
            let counter = self.lookups.get_or_create(&LookupLabels { result });
            counter.get()
        };
        let hits = count("hit");
        let mut lookups = hits;
        for result in ["stale", "miss", "error"] {
            lookups += count(result);
        }
        SharedTotals {
            hits,
            lookups,
            lock_waits: self.lock_waits.get(),
            takeovers: self.takeovers.get(),
            purges_applied: self.purges_applied.get(),
            purge_gaps: self.purge_gaps.get(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn finished<'a>(cache: &'static str, caller: Option<&'a Arc<str>>) -> Finished<'a> {
        let cache = CacheOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == cache);
        Finished {
            route: Some(RouteName::Usage),
            status: 200,
            cache,
            caller: caller.map(|name| CallerId {
                name,
                index: CallerIndex::UNREGISTERED,
            }),
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
    fn a_callers_index_is_the_same_for_its_name_across_loads_and_counts_it() {
        let metrics = Metrics::new();
        let first: Arc<str> = "billing".into();
        let reloaded: Arc<str> = "billing".into();
        let other: Arc<str> = "ops".into();
        let index = metrics.caller_index(&first);
        assert_eq!(metrics.caller_index(&reloaded), index);
        assert_ne!(metrics.caller_index(&other), index);
        let mut done = finished("hit", None);
        done.caller = Some(CallerId {
            name: &reloaded,
            index,
        });
        metrics.record_request(done);
        assert_eq!(metrics.callers()[&first].requests, 1);
        assert_eq!(metrics.callers()[&other].requests, 0);
    }

    #[test]
    fn upstream_calls_budget_and_breaker_are_exposed_by_profile() {
        let metrics = Metrics::new();
        let profile: Arc<str> = "default".into();
        let caller: Arc<str> = "ops".into();
        metrics.record_upstream(
            &profile,
            "200",
            Some(CallerId {
                name: &caller,
                index: CallerIndex::UNREGISTERED,
            }),
            Duration::from_millis(20),
        );
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
