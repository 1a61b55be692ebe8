//! `Upstream`: the leaf service that asks the real API with the organization token, and the
//! shield that keeps those calls inside the organization's budget.
//!
//! Guarantees:
//! - the upstream request is built from the canonical [`UsageQuery`] alone: no header, cookie
//!   or credential of the caller is ever forwarded, because none is copied; the organization
//!   token is set here and nowhere else, marked sensitive;
//! - no call leaves without budget ([`budget`]): never more than
//!   `upstream.rate_limit_per_minute` calls in any 60 seconds, none while the upstream's own
//!   window is spent; a call waits for budget up to `upstream.queue_timeout_ms`, and is refused
//!   at once when budget cannot return in time; with `[shared]` the budget (and the caller's
//!   quota) is the one all replicas share, and no call leaves while Redis does not answer;
//! - at most `upstream.max_concurrency` calls are in flight;
//! - while the circuit breaker ([`breaker`]) is open, calls fail fast without spending budget;
//! - a connection error or a 502/503/504 is retried `upstream.retries` times after a short
//!   jittered pause, only if budget is free at that moment; timeouts, 4xx and 429 never are;
//! - `upstream.timeout_ms` bounds each attempt, body included.

/// The breaker lives below (the shared tier has one too); its old path stays.
pub use crate::breaker;
pub mod budget;
pub mod client;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, USER_AGENT};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use tokio::sync::Semaphore;
use tower::Service;

use self::breaker::{Breaker, Outcome};
use self::budget::{Budget, Taken};
use crate::caller::{Admitted, Caller};
use crate::config::{AuthScheme, ProfileConfig, UpstreamConfig};
use crate::error::{GatewayError, ResponseBody};
use crate::facts::RequestFacts;
use crate::metrics::{CallerId, Metrics};
use crate::query::UsageQuery;
use crate::shared::budget::{Limits, Quota};
use crate::shared::Shared;

pub use self::client::{classify, https_client, kept_headers, retry_after, HttpsClient, Verdict};

const USER_AGENT_VALUE: &str = concat!("usage-gateway/", env!("CARGO_PKG_VERSION"));

/// Base pause before a retry; each retry doubles it, plus up to as much again of jitter.
const RETRY_BASE: Duration = Duration::from_millis(100);

/// What protects the upstream: shared by every clone of the service.
#[derive(Debug)]
pub struct Shield {
    pub budget: Budget,
    pub breaker: Breaker,
    concurrency: Semaphore,
    queue_timeout: Duration,
    retries: u32,
}

impl Shield {
    /// The shield of one credential profile; its budget is `shared`'s when there is one.
    pub fn new(config: &UpstreamConfig, profile: &ProfileConfig, shared: Option<&Shared>) -> Self {
        let budget = match shared {
            None => Budget::new(profile.rate_limit_per_minute as usize),
            Some(shared) => {
                let limits = Limits {
                    per_window: profile.rate_limit_per_minute,
                    window: Duration::from_secs(60),
                    hop_margin: shared.hop_margin(),
                    // A probe that never reports (its request cancelled mid-way) frees the
                    // way for the next once an attempt could no longer be running.
                    probe_lease: config.timeout + Duration::from_secs(1),
                };
                Budget::shared(
                    shared.budget(&profile.name, limits),
                    profile.rate_limit_per_minute,
                )
            }
        };
        Self {
            budget,
            breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
            concurrency: Semaphore::new(config.max_concurrency as usize),
            queue_timeout: config.queue_timeout,
            retries: config.retries,
        }
    }
}

#[derive(Clone)]
pub struct Upstream {
    /// The credential profile's name, for metrics.
    profile: Arc<str>,
    metrics: Arc<Metrics>,
    client: HttpsClient,
    /// `scheme://authority/prefix`, no trailing slash: the canonical target is appended.
    base: Arc<str>,
    authorization: HeaderValue,
    timeout: Duration,
    shield: Arc<Shield>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Whether a failed attempt may be tried again: only failures that say nothing about the
/// question and cost the upstream little. A timeout may still be running upstream, 4xx would
/// fail again, and a 429 is the budget's business.
pub fn retryable(error: &GatewayError) -> bool {
    match error {
        GatewayError::UpstreamUnavailable(_) => true,
        GatewayError::UpstreamStatus { status } => matches!(
            *status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
        _ => false,
    }
}

/// A bounded label for an upstream status: the statuses this API answers, or `other`.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// The pause before retry number `retry` (1-based): exponential, with full jitter on top.
pub fn backoff(retry: u32, jitter: u32) -> Duration {
    let base = RETRY_BASE * 2u32.saturating_pow(retry.saturating_sub(1).min(8));
    let jitter_ms = u64::from(jitter) % (base.as_millis() as u64 + 1);
    base + Duration::from_millis(jitter_ms)
}

impl Upstream {
    /// The upstream as one credential profile sees it, sharing `client`'s connection pool.
    pub fn new(
        config: &UpstreamConfig,
        profile: &ProfileConfig,
        client: HttpsClient,
        metrics: Arc<Metrics>,
        shared: Option<&Shared>,
    ) -> Result<Upstream, std::io::Error> {
        let uri = &config.base_url;
        let base = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or_default(),
            uri.path().trim_end_matches('/')
        );
        let token = profile.token.expose();
        let value = match profile.auth_scheme {
            AuthScheme::Raw => token.to_owned(),
            AuthScheme::Bearer => format!("Bearer {token}"),
        };
        let mut authorization = HeaderValue::from_str(&value).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "upstream.token cannot be sent in an HTTP header",
            )
        })?;
        authorization.set_sensitive(true);
        Ok(Upstream {
            profile: profile.name.clone(),
            metrics,
            client,
            base: base.into(),
            authorization,
            timeout: config.timeout,
            shield: Arc::new(Shield::new(config, profile, shared)),
        })
    }

    fn request_for(&self, query: &UsageQuery) -> Result<Request<Empty<Bytes>>, GatewayError> {
        let uri = format!("{}{}", self.base, query.canonical());
        Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            // A page of usage JSON is about 11x smaller gzipped; the answer is kept as sent.
            .header(ACCEPT_ENCODING, HeaderValue::from_static("gzip"))
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .body(Empty::new())
            .map_err(|_| {
                GatewayError::Internal("a canonical query did not form a valid upstream URI")
            })
    }

    /// Every attempt for one question, retries included.
    async fn fetch(
        self,
        query: UsageQuery,
        wait: bool,
        facts: Option<Arc<RequestFacts>>,
        caller: Option<Caller>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let started = Instant::now();
        let mut deadline = if wait {
            started + self.shield.queue_timeout
        } else {
            started
        };
        let mut retry = 0;
        // A shared budget charges the caller's quota in the budget's own take, once per
        // question: on the first attempt, not on its retries.
        let quota = caller.as_ref().and_then(|caller| {
            Some(Quota {
                caller: &caller.name,
                per_minute: caller.policy.quota_per_minute()?,
            })
        });
        let result = loop {
            let charge = if retry == 0 { quota } else { None };
            let result = self
                .attempt(&query, deadline, caller.as_ref(), charge)
                .await;
            match result {
                Err(error) if retry < self.shield.retries && retryable(&error) => {
                    retry += 1;
                    let jitter = getrandom::u32().unwrap_or_default();
                    tokio::time::sleep(backoff(retry, jitter)).await;
                    // A retry never queues: it goes only if budget is free now.
                    deadline = Instant::now();
                    tracing::debug!(retry, error = %error, "retrying the upstream call");
                }
                result => break result,
            }
        };
        if let Some(facts) = facts {
            facts.add_upstream(started.elapsed());
        }
        result
    }

    /// One attempt: breaker, concurrency slot, budget, then the exchange.
    async fn attempt(
        &self,
        query: &UsageQuery,
        deadline: Instant,
        caller: Option<&Caller>,
        quota: Option<Quota<'_>>,
    ) -> Result<Response<ResponseBody>, GatewayError> {
        let shield = &self.shield;
        let admitted =
            shield
                .breaker
                .admit()
                .map_err(|open| GatewayError::UpstreamCircuitOpen {
                    retry_after: open.retry_after,
                })?;
        let _slot = tokio::time::timeout_at(deadline.into(), shield.concurrency.acquire())
            .await
            .map_err(|_| GatewayError::UpstreamBudgetExhausted {
                retry_after: Duration::from_secs(1),
            })?
            .map_err(|_| GatewayError::Internal("the upstream concurrency semaphore closed"))?;
        // Budget is taken last, right before sending, so the window records send times.
        let ticket: Taken = shield.budget.acquire(deadline, quota).await.map_err(|no| {
            if no.caller_quota {
                GatewayError::CallerQuotaExceeded {
                    retry_after: no.retry_after,
                }
            } else {
                GatewayError::UpstreamBudgetExhausted {
                    retry_after: no.retry_after,
                }
            }
        })?;
        let request = self.request_for(query)?;
        let sent = Instant::now();
        let exchanged =
            tokio::time::timeout(self.timeout, client::exchange(&self.client, request)).await;
        let (result, status) = match exchanged {
            Ok(exchanged) => {
                shield.budget.observe(ticket, exchanged.report);
                admitted.record(exchanged.health);
                (
                    exchanged.result,
                    exchanged.status.map_or("error", status_label),
                )
            }
            Err(_) => {
                admitted.record(Outcome::Failed);
                (Err(GatewayError::UpstreamTimeout(self.timeout)), "timeout")
            }
        };
        let caller = caller.map(|caller| CallerId {
            name: &caller.name,
            index: caller.index,
        });
        self.metrics
            .record_upstream(&self.profile, status, caller, sent.elapsed());
        result
    }
}

/// The leaf of the stack: one [`Upstream`] per credential profile, chosen by the caller's
/// profile, each with its own budget, breaker and concurrency bound.
#[derive(Debug, Clone)]
pub struct Upstreams {
    profiles: Arc<[Upstream]>,
}

impl Upstreams {
    /// One upstream per profile of `config`, the default first, sharing one connection pool.
    pub fn new(
        config: &crate::config::Config,
        metrics: Arc<Metrics>,
        shared: Option<&Shared>,
    ) -> Result<Upstreams, std::io::Error> {
        let client = https_client();
        let profiles = config
            .all_profiles()
            .iter()
            .map(|profile| {
                Upstream::new(
                    &config.upstream,
                    profile,
                    client.clone(),
                    metrics.clone(),
                    shared,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams {
            profiles: profiles.into(),
        })
    }

    /// The budget of credential profile `index` (0 is `[upstream]`), as callers' misses use it.
    pub fn budget(&self, index: usize) -> Option<&Budget> {
        self.profiles
            .get(index)
            .map(|upstream| &upstream.shield.budget)
    }

    /// Each profile's name and shield: for reports.
    pub fn shields(&self) -> impl Iterator<Item = (&Arc<str>, &Shield)> {
        self.profiles
            .iter()
            .map(|upstream| (&upstream.profile, &*upstream.shield))
    }
}

impl Service<Admitted> for Upstreams {
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, admitted: Admitted) -> Self::Future {
        let Admitted {
            caller,
            query,
            request,
            background,
        } = admitted;
        let Some(upstream) = self.profiles.get(caller.policy.profile) else {
            return Box::pin(std::future::ready(Err(GatewayError::Internal(
                "a caller names a credential profile that does not exist",
            ))));
        };
        let facts = RequestFacts::of(request.extensions()).cloned();
        Box::pin(
            upstream
                .clone()
                .fetch(query, !background, facts, Some(caller)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(scheme: AuthScheme, base: &str) -> (UpstreamConfig, ProfileConfig) {
        let upstream = UpstreamConfig {
            base_url: crate::config::BaseUrl(base.parse().expect("uri")),
            token: Secret::new("org-token"),
            auth_scheme: scheme,
            timeout: Duration::from_secs(1),
            rate_limit_per_minute: 600,
            queue_timeout: Duration::from_secs(2),
            max_concurrency: 16,
            retries: 1,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
        };
        let profile = ProfileConfig {
            name: "default".into(),
            token: upstream.token.clone(),
            auth_scheme: scheme,
            rate_limit_per_minute: 600,
        };
        (upstream, profile)
    }

    fn upstream((config, profile): &(UpstreamConfig, ProfileConfig)) -> Upstream {
        Upstream::new(
            config,
            profile,
            https_client(),
            Arc::new(Metrics::new()),
            None,
        )
        .expect("client")
    }

    #[test]
    fn requests_carry_the_token_in_the_configured_scheme() {
        let query = UsageQuery::parse("/usage", Some("filter=time:2024"))
            .expect("valid")
            .expect("route");
        let raw = upstream(&config(AuthScheme::Raw, "https://api.example.com"));
        let request = raw.request_for(&query).expect("request");
        assert_eq!(request.headers()[AUTHORIZATION], "org-token");
        assert_eq!(request.headers()[ACCEPT_ENCODING], "gzip");
        assert!(request.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(
            request.uri().to_string(),
            "https://api.example.com/usage?filter=time:2024&limit=1000"
        );
        let bearer = upstream(&config(AuthScheme::Bearer, "http://127.0.0.1:9/prefix"));
        let request = bearer.request_for(&query).expect("request");
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer org-token");
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:9/prefix/usage?filter=time:2024&limit=1000"
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let upstream = upstream(&config(AuthScheme::Raw, "https://api.example.com"));
        assert!(!format!("{upstream:?}").contains("org-token"));
    }

    #[test]
    fn only_connection_errors_and_502_503_504_are_retried() {
        // (error, retried)
        let rows = [
            (
                GatewayError::upstream_unavailable(std::io::Error::other("reset")),
                true,
            ),
            (
                GatewayError::UpstreamStatus {
                    status: StatusCode::BAD_GATEWAY,
                },
                true,
            ),
            (
                GatewayError::UpstreamStatus {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                },
                true,
            ),
            (
                GatewayError::UpstreamStatus {
                    status: StatusCode::GATEWAY_TIMEOUT,
                },
                true,
            ),
            (
                GatewayError::UpstreamStatus {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                },
                false,
            ),
            (GatewayError::UpstreamTimeout(Duration::from_secs(1)), false),
            (
                GatewayError::UpstreamRateLimited {
                    retry_after: Duration::from_secs(1),
                },
                false,
            ),
            (
                GatewayError::UpstreamAuthFailed {
                    status: StatusCode::UNAUTHORIZED,
                },
                false,
            ),
            (
                GatewayError::UpstreamBudgetExhausted {
                    retry_after: Duration::from_secs(1),
                },
                false,
            ),
        ];
        for (error, retried) in rows {
            assert_eq!(retryable(&error), retried, "{error}");
        }
    }

    #[test]
    fn backoff_doubles_and_jitters_within_its_step() {
        assert_eq!(backoff(1, 0), Duration::from_millis(100));
        assert_eq!(backoff(1, 100), Duration::from_millis(200));
        assert_eq!(backoff(1, 101), Duration::from_millis(100));
        assert_eq!(backoff(2, 0), Duration::from_millis(200));
        assert!(backoff(30, u32::MAX) <= Duration::from_millis(2 * 25_600));
    }
}
