//! `CacheLayer`: repeats are answered from memory, identical concurrent misses make one
//! upstream request, and a stored answer beats an error.
//!
//! Guarantees:
//! - the key is the canonical query and the upstream credential's identity, nothing else
//!   (see `entry.rs`);
//! - one fill per key at a time (`flight.rs`): concurrent misses, refreshes and forced
//!   refreshes share it, and all get its outcome, success or error;
//! - only storable answers are stored (`policy.rs`); a failed fill is never cached and never
//!   replaces a stored answer;
//! - freshness is finality-aware: answers about long-closed periods live
//!   `cache.closed_period_ttl_secs`, the rest `cache.ttl_secs`;
//! - stale answers (RFC 5861): within `stale_while_revalidate_secs` of expiry an answer is
//!   served at once while one background refresh runs (only with budget free now); within
//!   `stale_if_error_secs` it is served when the upstream, its budget or the caller's quota
//!   fails; every stale answer says so in `Cache-Status` and `Age`;
//! - request directives (RFC 9111 §5.2.1): `only-if-cached` never reaches the upstream (a
//!   fresh answer or 504); `no-cache` forces a fetch for callers allowed to refresh;
//! - a caller's upstream quota is charged only when its request starts a fill or a
//!   background refresh; with the quota spent, a stale answer is served without a refresh;
//! - hits never wait and never spend budget; memory is bounded by `cache.max_bytes`;
//! - each caller gets the form its `Accept-Encoding` prefers (`negotiate.rs`); an entry holds
//!   the forms its callers read (gzip as the upstream sent it, or compressed once; the body
//!   itself as fetched, or decoded once), each made at most once, never per hit; the weigher
//!   counts every form held (`entry.rs`).

mod entry;
mod flight;
mod negotiate;
mod policy;
mod shared_fill;
mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::Response;
use http_body_util::BodyExt;
use time::OffsetDateTime;
use tower::{Layer, Service, ServiceExt};

pub use entry::{CacheKey, CachedResponse, CredentialId};
pub use flight::Flights;
pub use negotiate::{Accept, Coding};
pub use policy::{Freshness, RequestDirectives, StaleWindows, TtlPolicy};
pub use status::{BypassReason, CacheStatus, StaleReason, CACHE_NAME, CACHE_STATUS};

use self::entry::EntryExpiry;
use self::flight::{FillResult, Joined};
use crate::caller::Admitted;
use crate::config::CacheConfig;
use crate::error::{GatewayError, ResponseBody};
use crate::facts::RequestFacts;
use crate::gzip;
use crate::observe::X_REQUEST_ID;
use crate::outcome::CacheOutcome;
use crate::query::{FilterKey, Route, UsageQuery};
use crate::shared::purge::{Delivery, PurgeFeed};
use crate::shared::Shared;

use self::shared_fill::{Before, SharedFill};

/// Keys are hashed with foldhash, seeded per process: SipHash, the default, was ~3% of a hit's
/// instructions; keys come only from authenticated callers' canonical queries.
type Store = moka::future::Cache<CacheKey, Arc<CachedResponse>, foldhash::quality::RandomState>;

/// Where a fill's entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillSource {
    /// Fetched upstream by this replica.
    Upstream,
    /// Read from the shared cache (`[shared]`).
    Shared,
    /// Read from the shared cache after waiting for another replica's fetch.
    SharedAfterWait,
}

/// A fill's entry and where it came from; shared by every request that waited for it.
#[derive(Debug, Clone)]
pub struct Filled {
    pub entry: Arc<CachedResponse>,
    pub source: FillSource,
}

/// Why a fill produced no entry; shared by every request that waited for it.
#[derive(Debug)]
pub enum Unfilled {
    /// The upstream answered, but the answer may not be stored. Boxed: an entry's once-made
    /// forms make it several times the size of an error.
    Bypass(Box<CachedResponse>, BypassReason),
    /// The fetch failed.
    Failed(GatewayError),
}

#[derive(Debug, Clone)]
pub struct CacheLayer {
    store: Store,
    flights: Flights,
    /// The identity of each credential profile's token, by profile index.
    credentials: Arc<[CredentialId]>,
    /// Freshness and stale rules: replaced whole by a reload, read once per request.
    settings: Arc<ArcSwap<Settings>>,
    max_entry_bytes: usize,
    /// The shared tier (`[shared]`): the shared cache, fill locks and purge fan-out.
    shared: Option<Shared>,
}

/// The cache rules a reload may change without losing the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub ttl: TtlPolicy,
    pub stale: StaleWindows,
}

impl From<&CacheConfig> for Settings {
    fn from(config: &CacheConfig) -> Self {
        Self {
            ttl: TtlPolicy::from(config),
            stale: StaleWindows {
                while_revalidate: config.stale_while_revalidate,
                if_error: config.stale_if_error,
            },
        }
    }
}

/// Which entries a purge touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeSelector {
    All,
    /// Entries whose question names this SIM (its route, or a `sim_id` filter).
    Sim(String),
    /// Tag totals of this tag.
    Tag(String),
}

impl PurgeSelector {
    /// The selector's name in the shared purge records and messages.
    pub fn scope(&self) -> String {
        match self {
            PurgeSelector::All => "all".to_owned(),
            PurgeSelector::Sim(sim) => format!("sim:{sim}"),
            PurgeSelector::Tag(tag) => format!("tag:{tag}"),
        }
    }

    /// The selector a scope names (`None` for anything [`PurgeSelector::scope`] never writes).
    pub fn from_scope(scope: &str) -> Option<Self> {
        match scope.split_once(':') {
            None if scope == "all" => Some(PurgeSelector::All),
            Some(("sim", sim)) if crate::query::is_sim_ref(sim) => {
                Some(PurgeSelector::Sim(sim.to_owned()))
            }
            Some(("tag", tag)) => crate::query::parse_tag_id(tag).ok().map(PurgeSelector::Tag),
            _ => None,
        }
    }

    /// Every selector that matches `key`: what a purge record must be checked for.
    fn of(key: &CacheKey) -> Vec<PurgeSelector> {
        let mut selectors = vec![PurgeSelector::All];
        let Ok(Some(question)) = UsageQuery::from_target(key.target()) else {
            return selectors;
        };
        match question.route() {
            Route::UsageBySim(sim) => selectors.push(PurgeSelector::Sim(sim.to_string())),
            Route::TagTotal(tag) => selectors.push(PurgeSelector::Tag(tag.to_string())),
            _ => {}
        }
        for filter in question.filters() {
            if filter.key == FilterKey::SimId {
                selectors.push(PurgeSelector::Sim(filter.value.to_string()));
            }
        }
        selectors
    }

    fn matches(&self, key: &CacheKey) -> bool {
        let Ok(Some(question)) = UsageQuery::from_target(key.target()) else {
            // Every key is a canonical query; an unparsable one is purged, never kept.
            return true;
        };
        match self {
            PurgeSelector::All => true,
            PurgeSelector::Sim(sim) => {
                matches!(question.route(), Route::UsageBySim(s) if s == sim)
                    || question
                        .filters()
                        .iter()
                        .any(|f| f.key == FilterKey::SimId && f.value == *sim)
            }
            PurgeSelector::Tag(tag) => matches!(question.route(), Route::TagTotal(t) if t == tag),
        }
    }
}

impl CacheLayer {
    /// `credentials` identify the upstream token of each credential profile (default first):
    /// a caller's misses are fetched, and its answers keyed, with its profile's.
    pub fn new(config: &CacheConfig, credentials: Vec<CredentialId>) -> Self {
        let settings = Arc::new(ArcSwap::from_pointee(Settings::from(config)));
        let store = moka::future::Cache::builder()
            .name("usage-gateway")
            .max_capacity(config.max_bytes)
            .weigher(CachedResponse::weight)
            .expire_after(EntryExpiry {
                settings: settings.clone(),
            })
            .build_with_hasher(foldhash::quality::RandomState::default());
        Self {
            store,
            flights: Flights::default(),
            credentials: credentials.into(),
            settings,
            max_entry_bytes: config.max_entry_bytes,
            shared: None,
        }
    }

    /// Puts the shared tier behind memory: misses ask it before the upstream, fills are
    /// collapsed across replicas, purges reach every replica.
    pub fn with_shared(mut self, shared: Shared) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The longest any entry lives (freshness plus the stale windows): how long a purge
    /// record matters.
    fn longest_life(&self) -> Duration {
        let settings = self.settings.load();
        settings.ttl.ttl.max(settings.ttl.closed_period_ttl) + settings.stale.keep()
    }

    /// Purges here, then (with `[shared]`) records the purge for the shared cache and sends
    /// it to every other replica. Returns how many entries were purged here and, with
    /// `[shared]`, whether the purge reached Redis (`false`: it applied here only).
    pub async fn purge_everywhere(
        &self,
        selector: &PurgeSelector,
        hard: bool,
    ) -> (usize, Option<bool>) {
        let purged = self.purge(selector, hard).await;
        let Some(shared) = &self.shared else {
            return (purged, None);
        };
        let published = shared
            .purges()
            .publish(&selector.scope(), hard, self.longest_life())
            .await;
        if let Err(unavailable) = &published {
            tracing::warn!(
                error = %unavailable,
                "a purge applied to this replica only: Redis did not record it"
            );
        }
        (purged, Some(published.is_ok()))
    }

    /// Applies other replicas' purges to this replica's memory as the purge stream brings
    /// them, and drops the whole memory cache after a gap in the stream. Runs until aborted.
    pub async fn follow_purges(self, mut feed: PurgeFeed) {
        loop {
            match feed.next().await {
                Delivery::Purge { scope, hard } => {
                    let Some(selector) = PurgeSelector::from_scope(&scope) else {
                        tracing::debug!("a purge message named no known scope");
                        continue;
                    };
                    let purged = self.purge(&selector, hard).await;
                    if let Some(shared) = &self.shared {
                        shared.metrics().purge_applied();
                    }
                    tracing::info!(?selector, hard, purged, "purged as another replica asked");
                }
                Delivery::Gap => {
                    self.store.invalidate_all();
                    self.store.run_pending_tasks().await;
                    tracing::warn!(
                        "purge messages may have been missed (Redis restarted, or this replica fell too far behind): memory cache dropped"
                    );
                }
            }
        }
    }

    /// Applies new freshness and stale rules to every later request; entries stay.
    pub fn set_settings(&self, config: &CacheConfig) {
        self.settings.store(Arc::new(Settings::from(config)));
    }

    /// Brings the entry count and size up to date (moka applies some bookkeeping lazily).
    pub async fn settle(&self) {
        self.store.run_pending_tasks().await;
    }

    /// Entries stored (approximate until moka's pending tasks run).
    pub fn entry_count(&self) -> u64 {
        self.store.entry_count()
    }

    /// Weighted bytes stored (approximate until moka's pending tasks run).
    pub fn weighted_size(&self) -> u64 {
        self.store.weighted_size()
    }

    /// Purges the selected entries: soft makes them stale at once (stale rules still protect
    /// the upstream), hard removes them. Returns how many were purged.
    pub async fn purge(&self, selector: &PurgeSelector, hard: bool) -> usize {
        let now = Instant::now();
        let chosen: Vec<(Arc<CacheKey>, Arc<CachedResponse>)> = self
            .store
            .iter()
            .filter(|(key, _)| selector.matches(key))
            .collect();
        for (key, entry) in &chosen {
            if hard {
                self.store.invalidate(&**key).await;
            } else if entry.fresh_until() > now {
                let mut expired = (**entry).clone();
                expired.fresh_for = now.saturating_duration_since(entry.stored_at);
                self.store.insert((**key).clone(), Arc::new(expired)).await;
            }
        }
        self.store.run_pending_tasks().await;
        chosen.len()
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
    layer: CacheLayer,
}

type BoxResponse =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, GatewayError>> + Send>>;

/// What the cache needs of the service below it: it answers admitted misses, and it can be
/// sent to a fill task.
pub trait Inner:
    Service<Admitted, Response = Response<ResponseBody>, Error = GatewayError, Future: Send>
    + Send
    + 'static
{
}

impl<S> Inner for S where
    S: Service<Admitted, Response = Response<ResponseBody>, Error = GatewayError, Future: Send>
        + Send
        + 'static
{
}

impl<S> Service<Admitted> for Cache<S>
where
    S: Inner + Clone,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = BoxResponse;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // Hits never touch the inner service; a fill drives it to readiness with `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Admitted) -> Self::Future {
        let Some(&credential) = self.layer.credentials.get(request.caller.policy.profile) else {
            return Box::pin(std::future::ready(Err(GatewayError::Internal(
                "a caller names a credential profile the cache does not know",
            ))));
        };
        let key = CacheKey::new(credential, request.query.canonical_shared());
        let layer = self.layer.clone();
        let inner = self.inner.clone();
        Box::pin(async move { layer.answer(inner, key, request).await })
    }
}

impl CacheLayer {
    /// Answers one request and records how (its `Cache-Status`) in the request's facts.
    async fn answer<S: Inner>(
        &self,
        inner: S,
        key: CacheKey,
        request: Admitted,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let facts = RequestFacts::of(request.request.extensions()).cloned();
        let result = self.decide(inner, key, request, facts.as_deref()).await;
        if let Some(facts) = facts {
            let status = result
                .as_ref()
                .ok()
                .and_then(|response| response.extensions().get::<CacheStatus>());
            if let Some(status) = status {
                facts.set_cache(status.outcome());
            }
        }
        result
    }

    async fn decide<S: Inner>(
        &self,
        inner: S,
        key: CacheKey,
        request: Admitted,
        facts: Option<&RequestFacts>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let directives = RequestDirectives::from_headers(request.request.headers());
        let accept = Accept::from_headers(request.request.headers());
        let caller = request.caller.clone();
        let forced = directives.no_cache && caller.policy.allow_refresh;
        let stored = self.store.get(&key).await;
        let now = Instant::now();
        let freshness = stored.as_ref().map_or(Freshness::Unusable, |entry| {
            policy::freshness(entry.fresh_until(), now, &self.settings.load().stale)
        });

        if directives.only_if_cached {
            return match (&stored, freshness) {
                (Some(entry), Freshness::Fresh { left }) => {
                    self.serve(&key, entry, hit(left), accept, now).await
                }
                _ => Err(GatewayError::NotCached),
            };
        }
        if !forced {
            match (&stored, freshness) {
                (Some(entry), Freshness::Fresh { left }) => {
                    return self.serve(&key, entry, hit(left), accept, now).await
                }
                (Some(entry), Freshness::Revalidate { expired }) => {
                    let status = stale(expired, StaleReason::WhileRevalidate);
                    let response = self.serve(&key, entry, status, accept, now).await;
                    // The refresh makes the forms this entry's readers have needed so far.
                    let forms = Forms {
                        identity: entry.has_identity(),
                        gzip: entry.has_gzip(),
                    };
                    self.refresh_in_background(inner, key, request, forms);
                    return response;
                }
                _ => {}
            }
        }
        // A fill makes the form its own caller reads, and those the entry it replaces held.
        let wanted = accept.choose(true);
        let forms = Forms {
            identity: wanted == Coding::Identity
                || stored.as_ref().is_some_and(|entry| entry.has_identity()),
            gzip: wanted == Coding::Gzip || stored.as_ref().is_some_and(|entry| entry.has_gzip()),
        };

        if let Some(facts) = facts {
            facts.set_cache(CacheOutcome::Miss);
        }
        // For the log line of a stale answer served instead of an error (no span carries it).
        let request_id = request.request.headers().get(&X_REQUEST_ID).cloned();
        let request_id = request_id.as_ref();
        let joined = self.flights.join_or_start(&key, || {
            // Only the request that starts a fill costs its caller an upstream call.
            caller
                .policy
                .charge_upstream_call()
                .map_err(|retry_after| GatewayError::CallerQuotaExceeded { retry_after })?;
            Ok(self.fill(inner, key.clone(), request, forced, forms))
        });
        let (fill, led) = match joined {
            Ok(Joined::Led(fill)) => (fill, true),
            Ok(Joined::Followed(fill)) => (fill, false),
            Err(refused) => {
                return self
                    .stale_or(&key, stored.as_ref(), refused, accept, request_id)
                    .await
            }
        };
        let outcome = fill.await;
        let now = Instant::now();
        match outcome {
            Ok(Filled { entry, source }) => {
                let status = match (source, led) {
                    (FillSource::Upstream, true) => CacheStatus::Stored,
                    (FillSource::Upstream, false) => CacheStatus::Collapsed,
                    (FillSource::Shared, _) => CacheStatus::SharedHit {
                        ttl_secs: entry.fresh_until().saturating_duration_since(now).as_secs(),
                    },
                    (FillSource::SharedAfterWait, _) => CacheStatus::SharedCollapsed,
                };
                self.serve(&key, &entry, status, accept, now).await
            }
            Err(unfilled) => match &*unfilled {
                Unfilled::Bypass(answer, reason) => {
                    let status = CacheStatus::Bypass {
                        reason: *reason,
                        collapsed: !led,
                    };
                    // Never stored, so never weighed: a form made grows nothing counted.
                    let prepared = answer.prepare(accept.choose(answer.offers_gzip())).await?;
                    Ok(answer.to_response(status, now, prepared.coding))
                }
                Unfilled::Failed(error) => {
                    // The fill may have left a stale shared entry in memory to stand in.
                    let stored = match stored {
                        Some(stored) => Some(stored),
                        None if self.shared.is_some() => self.store.get(&key).await,
                        None => None,
                    };
                    self.stale_or(&key, stored.as_ref(), error.clone(), accept, request_id)
                        .await
                }
            },
        }
    }

    /// The stored answer if it may stand in for `error`, else the error.
    async fn stale_or(
        &self,
        key: &CacheKey,
        stored: Option<&Arc<CachedResponse>>,
        error: GatewayError,
        accept: Accept,
        request_id: Option<&HeaderValue>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let Some(entry) = stored.filter(|_| error.stale_may_answer()) else {
            return Err(error);
        };
        let now = Instant::now();
        let stale_windows = self.settings.load().stale;
        let status = match policy::freshness(entry.fresh_until(), now, &stale_windows) {
            // A forced refresh failed while the stored answer is still fresh.
            Freshness::Fresh { left } => hit(left),
            Freshness::Revalidate { expired } | Freshness::IfError { expired }
                if expired < stale_windows.if_error =>
            {
                tracing::info!(
                    request_id = request_id.and_then(|id| id.to_str().ok()),
                    error = %error,
                    "serving a stale answer instead of an upstream failure"
                );
                stale(expired, StaleReason::IfError)
            }
            _ => return Err(error),
        };
        self.serve(key, entry, status, accept, now).await
    }

    /// A stored (or just filled) entry in the form `accept` prefers. The first reader of a
    /// form the entry does not hold yet makes it (decodes or compresses it, once); the entry,
    /// grown, is weighed again.
    async fn serve(
        &self,
        key: &CacheKey,
        entry: &Arc<CachedResponse>,
        status: CacheStatus,
        accept: Accept,
        now: Instant,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let prepared = entry.prepare(accept.choose(entry.offers_gzip())).await?;
        if prepared.grew {
            self.reweigh(key, entry).await;
        }
        Ok(entry.to_response(status, now, prepared.coding))
    }

    /// Inserts `grown` again so moka weighs what it holds now, unless a fill or a purge has
    /// replaced or removed it meanwhile (then there is nothing of it to count).
    async fn reweigh(&self, key: &CacheKey, grown: &Arc<CachedResponse>) {
        use moka::ops::compute::Op;
        self.store
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let op = match current {
                    Some(current) if Arc::ptr_eq(current.value(), grown) => Op::Put(grown.clone()),
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Starts one refresh unless one is in flight; it goes only if budget is free now, and
    /// on failure the stale entry simply stays. Like a miss, the refresh is charged to the
    /// quota of the caller whose request starts it: with that quota spent, no refresh starts
    /// and the stale answer is all the caller gets.
    fn refresh_in_background<S: Inner>(
        &self,
        inner: S,
        key: CacheKey,
        mut request: Admitted,
        forms: Forms,
    ) {
        request.background = true;
        let started = self.flights.join_or_start::<Duration>(&key, || {
            request.caller.policy.charge_upstream_call()?;
            Ok(self.fill(inner, key.clone(), request, false, forms))
        });
        match started {
            Ok(Joined::Led(_)) => tracing::debug!(
                key = key.target(),
                "refreshing a stale entry in the background"
            ),
            Ok(Joined::Followed(_)) => {}
            Err(_quota_spent) => tracing::debug!(
                key = key.target(),
                "not refreshing a stale entry: the caller's upstream quota is spent"
            ),
        }
    }

    /// One upstream fetch for `key`, stored if storable. Runs as its own task. With
    /// `[shared]` the shared cache is asked first and the fetch holds the question's fill lock
    /// (`shared_fill.rs`); a `forced` refresh skips the asking, since its caller wants the
    /// upstream's answer, and stores what it fetched in both tiers.
    fn fill<S: Inner>(
        &self,
        inner: S,
        key: CacheKey,
        request: Admitted,
        forced: bool,
        forms: Forms,
    ) -> futures_util::future::BoxFuture<'static, FillResult> {
        let store = self.store.clone();
        let settings = **self.settings.load();
        let max_entry_bytes = self.max_entry_bytes;
        let fresh_for = policy::ttl_for(&request.query, OffsetDateTime::now_utc(), &settings.ttl);
        let shared = self.shared.clone();
        async move {
            let Some(shared) = shared else {
                let result = fetch(inner, request, max_entry_bytes, fresh_for, forms).await;
                if let Ok(entry) = &result {
                    store.insert(key, entry.clone()).await;
                }
                return upstream_filled(result);
            };
            let tier = SharedFill::new(&shared, &key, &store, settings);
            let (lease, began_ms) = if forced {
                (None, 0)
            } else {
                match tier.before().await {
                    Before::Answered { entry, waited } => {
                        let source = if waited {
                            FillSource::SharedAfterWait
                        } else {
                            FillSource::Shared
                        };
                        return Ok(Filled { entry, source });
                    }
                    Before::TimedOut(waited) => {
                        return Err(Arc::new(Unfilled::Failed(GatewayError::UpstreamTimeout(
                            waited,
                        ))))
                    }
                    Before::Fetch { lease, began_ms } => (lease, began_ms),
                }
            };
            let result = tier
                .renewing(
                    lease.as_ref(),
                    fetch(inner, request, max_entry_bytes, fresh_for, forms),
                )
                .await;
            if let Ok(entry) = &result {
                store.insert(key.clone(), entry.clone()).await;
            }
            tier.after(
                result.as_ref().ok().map(|entry| &**entry),
                lease.as_ref(),
                began_ms,
            )
            .await;
            upstream_filled(result)
        }
        .boxed()
    }
}

/// A fetch's outcome as the fill's.
fn upstream_filled(result: Result<Arc<CachedResponse>, Unfilled>) -> FillResult {
    result
        .map(|entry| Filled {
            entry,
            source: FillSource::Upstream,
        })
        .map_err(Arc::new)
}

fn hit(left: Duration) -> CacheStatus {
    CacheStatus::Hit {
        ttl_secs: left.as_secs(),
    }
}

fn stale(expired: Duration, reason: StaleReason) -> CacheStatus {
    // Whole seconds, rounded up: a stale answer never reports ttl=-0.
    let expired_secs = expired.as_secs() + u64::from(expired.subsec_nanos() > 0);
    CacheStatus::Stale {
        expired_secs: expired_secs.max(1),
        reason,
    }
}

/// Which forms a fill makes for its entry.
#[derive(Debug, Clone, Copy)]
struct Forms {
    /// Keep the body itself.
    identity: bool,
    /// Make the gzip form now (the upstream's, as sent, is kept whatever this says).
    gzip: bool,
}

/// Fetches once upstream and decides whether the answer becomes an entry.
///
/// A stored answer holds the upstream's gzip bytes as sent, when it sent gzip, and the forms
/// `forms` asks for (made now, so its caller and waiters never wait for them). An answer that
/// is not stored is compressed only if the upstream compressed it: it is served once (to its
/// fill's waiters), so compressing it would cost more than it saves.
async fn fetch<S>(
    inner: S,
    request: Admitted,
    max_entry_bytes: usize,
    fresh_for: Duration,
    forms: Forms,
) -> Result<Arc<CachedResponse>, Unfilled>
where
    S: Service<Admitted, Response = Response<ResponseBody>, Error = GatewayError>,
{
    let response = inner.oneshot(request).await.map_err(Unfilled::Failed)?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|never| match never {})?
        .to_bytes();
    // The upstream's gzip bytes, as sent, when it sent gzip (only on a validated 200).
    let as_sent = parts
        .extensions
        .get::<gzip::AsSent>()
        .map(|as_sent| as_sent.0.clone());
    let verdict = policy::storable(parts.status, &parts.headers, body.len(), max_entry_bytes);
    let answer = CachedResponse::plain(
        parts.status,
        parts.headers.get(CONTENT_TYPE).cloned(),
        body.clone(),
        Instant::now(),
        fresh_for,
    );
    match verdict {
        Ok(()) => {
            let answer = match as_sent {
                Some(as_sent) => answer.with_gzip(as_sent, forms.identity),
                None => {
                    if forms.gzip {
                        // Made now; with the body itself kept only if asked for.
                        answer
                            .prepare(Coding::Gzip)
                            .await
                            .map_err(Unfilled::Failed)?;
                    }
                    if forms.identity || !answer.has_gzip() {
                        answer
                    } else {
                        answer.without_identity()
                    }
                }
            };
            Ok(Arc::new(answer.detached()))
        }
        Err(reason) => {
            let answer = match as_sent {
                Some(as_sent) => answer.with_gzip(as_sent, true),
                None => answer.uncompressed(),
            };
            Err(Unfilled::Bypass(Box::new(answer), reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Callers;
    use crate::caller::Caller;
    use crate::config::{CallerConfig, Secret};
    use bytes::Bytes;
    use http::Request;
    use sha2::Digest as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;
    use tower::{service_fn, ServiceBuilder};

    fn config() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            max_bytes: 1024 * 1024,
            max_entry_bytes: 64 * 1024,
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(3600),
            late_data_grace: Duration::from_secs(172_800),
            closed_period_ttl: Duration::from_secs(86_400),
        }
    }

    fn caller(name: &str, upstream_per_minute: Option<u32>) -> Caller {
        let key = format!("{name}-key");
        let config = CallerConfig {
            name: name.into(),
            key_sha256: vec![sha2::Sha256::digest(key.as_bytes()).into()],
            scope: crate::caller::Scope::default(),
            upstream: None,
            upstream_per_minute,
            allow_refresh: false,
        };
        Callers::new(
            &[config],
            vec!["default".into()],
            Arc::new(crate::metrics::Metrics::new()),
        )
        .expect("valid")
        .identify(key.as_bytes())
        .expect("the caller's own key")
    }

    fn request(target: &str, caller: &Caller) -> Admitted {
        Admitted {
            caller: caller.clone(),
            query: UsageQuery::from_target(target)
                .expect("valid")
                .expect("route"),
            request: Request::new(()),
            background: false,
        }
    }

    /// What the test upstream answers: long and repetitive enough for gzip to pay.
    const ANSWER: &str = concat!(
        r#"{"usage":["#,
        r#"{"sim_id":"000000001","bytes":1234},{"sim_id":"000000002","bytes":1234},"#,
        r#"{"sim_id":"000000003","bytes":1234},{"sim_id":"000000004","bytes":1234},"#,
        r#"{"sim_id":"000000005","bytes":1234},{"sim_id":"000000006","bytes":1234}]}"#
    );

    /// An upstream that counts calls and answers only when the test releases it.
    fn held_upstream(
        calls: Arc<AtomicUsize>,
        release: Arc<Semaphore>,
    ) -> impl Service<
        Admitted,
        Response = Response<ResponseBody>,
        Error = GatewayError,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        service_fn(move |_: Admitted| {
            let calls = calls.clone();
            let release = release.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let permit = release.acquire().await.expect("the semaphore stays open");
                permit.forget();
                Ok::<_, GatewayError>(Response::new(ResponseBody::from(ANSWER)))
            }
        })
    }

    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !condition() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[test]
    fn a_questions_purge_scopes_are_exactly_the_selectors_that_match_it() {
        let tag = "5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90";
        // (question, the scopes a purge record is checked for) — a row per route and filter.
        let rows: [(&str, &[&str]); 5] = [
            ("/usage", &["all"]),
            ("/usage/000000001", &["all", "sim:000000001"]),
            (
                "/usage?filter[]=sim_id:000000002&filter[]=sim_id:000000003",
                &["all", "sim:000000002", "sim:000000003"],
            ),
            (
                &format!("/usage/tag-total/{tag}"),
                &["all", &format!("tag:{tag}")],
            ),
            ("/usage?filter=country_code:dk", &["all"]),
        ];
        let credential = CredentialId::of(&Secret::new("t"));
        for (target, expected) in rows {
            let query = UsageQuery::from_target(target)
                .expect("valid")
                .expect("route");
            let key = CacheKey::new(credential, query.canonical_shared());
            let selectors = PurgeSelector::of(&key);
            let scopes: Vec<String> = selectors.iter().map(PurgeSelector::scope).collect();
            assert_eq!(scopes, expected, "{target}");
            for selector in &selectors {
                // Every scope checked is one a purge of it would match, and names itself.
                assert!(selector.matches(&key), "{target}: {selector:?}");
                assert_eq!(
                    PurgeSelector::from_scope(&selector.scope()).as_ref(),
                    Some(selector)
                );
            }
        }
        for bad in ["", "sim:", "sim:1", "tag:x", "everything", "all:"] {
            assert_eq!(PurgeSelector::from_scope(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fill_and_only_its_starter_is_charged() {
        let layer = CacheLayer::new(&config(), vec![CredentialId::of(&Secret::new("t"))]);
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let service = ServiceBuilder::new()
            .layer(layer.clone())
            .service(held_upstream(calls.clone(), release.clone()));
        let billing = caller("billing", None);
        let metered = caller("metered", Some(1));

        let leader = tokio::spawn(service.clone().oneshot(request("/usage", &billing)));
        until("the fill to start", || calls.load(Ordering::SeqCst) == 1).await;
        let followers: Vec<_> = (0..3)
            .map(|_| tokio::spawn(service.clone().oneshot(request("/usage", &metered))))
            .collect();
        let key = CacheKey::new(
            CredentialId::of(&Secret::new("t")),
            "/usage?limit=1000".into(),
        );
        until("the followers to join", || layer.flights.waiting(&key) == 4).await;
        release.add_permits(1);

        let leader = leader.await.expect("task").expect("answer");
        assert_eq!(
            leader.headers()[&CACHE_STATUS],
            "usage-gateway; fwd=miss; stored"
        );
        for follower in followers {
            let follower = follower.await.expect("task").expect("answer");
            assert_eq!(
                follower.headers()[&CACHE_STATUS],
                "usage-gateway; fwd=miss; collapsed"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            metered.policy.charge_upstream_call(),
            Ok(()),
            "followers were not charged"
        );
        assert!(
            layer.flights.is_empty(),
            "the fill left the map when it landed"
        );
    }

    #[tokio::test]
    async fn a_fill_outlives_the_request_that_started_it() {
        let layer = CacheLayer::new(&config(), vec![CredentialId::of(&Secret::new("t"))]);
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let service = ServiceBuilder::new()
            .layer(layer.clone())
            .service(held_upstream(calls.clone(), release.clone()));
        let billing = caller("billing", None);
        let abandoned = tokio::spawn(service.clone().oneshot(request("/usage", &billing)));
        until("the fill to start", || calls.load(Ordering::SeqCst) == 1).await;
        abandoned.abort();
        release.add_permits(1);
        until("the fill to land", || layer.flights.is_empty()).await;
        let hit = service
            .oneshot(request("/usage", &billing))
            .await
            .expect("answer");
        assert!(hit.headers()[&CACHE_STATUS]
            .to_str()
            .is_ok_and(|s| s.contains("hit")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    fn accepting(mut admitted: Admitted, accept: Option<&'static str>) -> Admitted {
        if let Some(accept) = accept {
            admitted.request.headers_mut().insert(
                http::header::ACCEPT_ENCODING,
                http::HeaderValue::from_static(accept),
            );
        }
        admitted
    }

    async fn body_of(response: Response<ResponseBody>) -> Bytes {
        let collected = response.into_body().collect().await;
        collected.unwrap_or_else(|never| match never {}).to_bytes()
    }

    #[tokio::test]
    async fn waiters_of_one_fill_each_get_their_form_and_the_grown_entry_is_weighed_again() {
        let layer = CacheLayer::new(&config(), vec![CredentialId::of(&Secret::new("t"))]);
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let service = ServiceBuilder::new()
            .layer(layer.clone())
            .service(held_upstream(calls.clone(), release.clone()));
        let billing = caller("billing", None);
        let gzip_caller = request("/usage", &billing);
        let leader = tokio::spawn(
            service
                .clone()
                .oneshot(accepting(gzip_caller, Some("gzip, deflate"))),
        );
        until("the fill to start", || calls.load(Ordering::SeqCst) == 1).await;
        let identity_caller = accepting(request("/usage", &billing), None);
        let follower = tokio::spawn(service.clone().oneshot(identity_caller));
        let key = CacheKey::new(
            CredentialId::of(&Secret::new("t")),
            "/usage?limit=1000".into(),
        );
        until("the follower to join", || layer.flights.waiting(&key) == 2).await;
        release.add_permits(1);

        let zipped = leader.await.expect("task").expect("answer");
        assert_eq!(
            zipped.headers()[&CACHE_STATUS],
            "usage-gateway; fwd=miss; stored"
        );
        assert_eq!(zipped.headers()[http::header::CONTENT_ENCODING], "gzip");
        let gzip_form = body_of(zipped).await;
        assert_eq!(
            gzip::decode(&gzip_form, 1 << 20).expect("gzip"),
            ANSWER.as_bytes()
        );
        let plain = follower.await.expect("task").expect("answer");
        assert_eq!(
            plain.headers()[&CACHE_STATUS],
            "usage-gateway; fwd=miss; collapsed"
        );
        assert!(!plain.headers().contains_key(http::header::CONTENT_ENCODING));
        assert_eq!(plain.headers()[http::header::VARY], "accept-encoding");
        assert_eq!(body_of(plain).await, ANSWER.as_bytes());
        layer.settle().await;
        assert_eq!(
            layer.weighted_size() as usize,
            gzip_form.len() + ANSWER.len() + key.target().len() + entry::ENTRY_OVERHEAD,
            "both forms are held and counted"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
