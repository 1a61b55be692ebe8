//! The admin listener, for operators and their tools, never on the callers' port:
//! `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /` (the status page) and
//! `POST /cache/purge`.
//!
//! Readiness is only "not draining": it is never tied to upstream health (or, with `[shared]`,
//! to Redis's), so a slow upstream or a Redis outage does not pull every replica out of its
//! load balancer; the metrics and the status page say what is down. Purge needs the admin token
//! (`[admin] token_sha256`, compared in constant time); with none configured it does not exist.
//! Wrong tokens count per address like wrong keys on the callers' port: past
//! `server.auth_failures_per_minute` an address gets 429 for the rest of its minute.

pub mod page;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache::PurgeSelector;
use crate::error::{GatewayError, InvalidRequest, ResponseBody};
use crate::lockout::{AuthFailures, ClientAddr};
use crate::metrics::SAMPLE_EVERY;
use crate::stack::Handles;

#[derive(Debug)]
pub struct Admin {
    handles: Handles,
    draining: Arc<AtomicBool>,
    token_sha256: Option<[u8; 32]>,
    /// Wrong admin tokens per client address, under the callers' port's limit
    /// (`server.auth_failures_per_minute`), so the purge token cannot be guessed at speed.
    failures: AuthFailures,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, crate::error::JSON);
    response
}

fn text(content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

impl Admin {
    pub fn new(
        handles: Handles,
        draining: Arc<AtomicBool>,
        token_sha256: Option<[u8; 32]>,
        auth_failures_per_minute: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            handles,
            draining,
            token_sha256,
            failures: AuthFailures::new(auth_failures_per_minute, Duration::from_secs(60)),
        })
    }

    /// The admin endpoints as a tower service.
    pub fn service(
        self: &Arc<Self>,
    ) -> impl tower::Service<
        Request<hyper::body::Incoming>,
        Response = Response<ResponseBody>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        let admin = self.clone();
        tower::service_fn(move |request: Request<hyper::body::Incoming>| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(request).await) }
        })
    }

    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody> {
        let method = request.method();
        match (request.uri().path(), method) {
            ("/healthz", &Method::GET) => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            ("/readyz", &Method::GET) => {
                if self.draining.load(Ordering::Relaxed) {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "draining"}),
                    )
                } else {
                    json(StatusCode::OK, serde_json::json!({"status": "ready"}))
                }
            }
            ("/metrics", &Method::GET) => {
                self.handles.cache.settle().await;
                self.refresh_gauges();
                text(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.handles.metrics.encode(),
                )
            }
            ("/", &Method::GET) => {
                self.handles.cache.settle().await;
                text("text/html; charset=utf-8", page::render(&self.view()))
            }
            ("/cache/purge", &Method::POST) => self.purge(&request).await,
            ("/healthz" | "/readyz" | "/metrics" | "/" | "/cache/purge", _) => {
                GatewayError::MethodNotAllowed.to_response()
            }
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({
                    "error": "not_found",
                    "message": "the admin listener serves GET /healthz, /readyz, /metrics, / and POST /cache/purge"
                }),
            ),
        }
    }

    fn refresh_gauges(&self) {
        let metrics = &self.handles.metrics;
        metrics.set_cache(
            self.handles.cache.entry_count(),
            self.handles.cache.weighted_size(),
        );
        for (profile, shield) in self.handles.upstreams.shields() {
            metrics.set_profile(profile, shield.budget.remaining(), shield.breaker.is_open());
        }
    }

    fn budget_remaining(&self) -> u64 {
        self.handles
            .upstreams
            .shields()
            .map(|(_, shield)| shield.budget.remaining() as u64)
            .sum()
    }

    fn view(&self) -> page::StatusView {
        let metrics = &self.handles.metrics;
        let now = metrics.sample(self.budget_remaining());
        let (hits, collapsed, stale) = metrics.saved();
        let mut history: Vec<_> = metrics.history().into_iter().map(|(_, s)| s).collect();
        history.push(now);
        page::StatusView {
            version: env!("CARGO_PKG_VERSION"),
            uptime: metrics.started.elapsed(),
            requests: now.requests,
            from_cache: now.from_cache,
            hits,
            collapsed,
            stale,
            upstream_calls: now.upstream_calls,
            errors: now.errors,
            cache_entries: self.handles.cache.entry_count(),
            cache_bytes: self.handles.cache.weighted_size(),
            profiles: self
                .handles
                .upstreams
                .shields()
                .map(|(name, shield)| {
                    (
                        name.to_string(),
                        shield.budget.remaining(),
                        shield.breaker.is_open(),
                    )
                })
                .collect(),
            callers: metrics
                .callers()
                .into_iter()
                .map(|(name, totals)| (name.to_string(), totals))
                .collect(),
            history,
            draining: self.draining.load(Ordering::Relaxed),
            shared: self.handles.shared.as_ref().map(|shared| shared.view()),
        }
    }

    fn authorized<B>(&self, request: &Request<B>, expected: &[u8; 32]) -> bool {
        let Some(presented) = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| crate::auth::bearer_token(value.as_bytes()))
        else {
            return false;
        };
        let hash: [u8; 32] = Sha256::digest(presented).into();
        bool::from(hash.ct_eq(expected))
    }

    async fn purge<B>(&self, request: &Request<B>) -> Response<ResponseBody> {
        let Some(expected) = &self.token_sha256 else {
            // No admin token configured: purge does not exist.
            return GatewayError::NotFound.to_response();
        };
        let source = request
            .extensions()
            .get::<ClientAddr>()
            .map(|addr| addr.0.ip());
        let now = Instant::now();
        if let Some(Err(retry_after)) = source.map(|source| self.failures.check(source, now)) {
            return GatewayError::TooManyAuthFailures { retry_after }.to_response();
        }
        if !self.authorized(request, expected) {
            let presented = request.headers().contains_key(http::header::AUTHORIZATION);
            if let Some(source) = source.filter(|_| presented) {
                self.failures.fail(source, now, "wrong admin token");
            }
            let mut response = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({
                    "error": "unauthorized",
                    "message": "purge needs `Authorization: Bearer <admin token>`"
                }),
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let (selector, hard) = match purge_request(request.uri().query().unwrap_or("")) {
            Ok(parsed) => parsed,
            Err(invalid) => return GatewayError::InvalidRequest(invalid).to_response(),
        };
        let (purged, propagated) = self.handles.cache.purge_everywhere(&selector, hard).await;
        tracing::info!(?selector, hard, purged, ?propagated, "cache purged");
        // `propagated` only with `[shared]`: whether the other replicas (and the shared cache)
        // were told; `false` means this replica alone was purged.
        let body = match propagated {
            None => serde_json::json!({ "purged": purged, "hard": hard }),
            Some(propagated) => {
                serde_json::json!({ "purged": purged, "hard": hard, "propagated": propagated })
            }
        };
        json(StatusCode::OK, body)
    }
}

/// Reads `sim_id=`, `tag_id=` and `hard=` from a purge's query string.
pub fn purge_request(query: &str) -> Result<(PurgeSelector, bool), InvalidRequest> {
    let mut selector = PurgeSelector::All;
    let mut hard = false;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let choose = |current: &PurgeSelector, next: PurgeSelector| match current {
            PurgeSelector::All => Ok(next),
            _ => Err(InvalidRequest::new(
                "parameter_invalid",
                "give at most one of sim_id and tag_id",
            )),
        };
        match name {
            "sim_id" if crate::query::is_sim_ref(value) => {
                selector = choose(&selector, PurgeSelector::Sim(value.to_owned()))?;
            }
            "sim_id" => {
                return Err(InvalidRequest::new(
                    "sim_id_invalid",
                    "sim_id must be a 9-digit SIM id or a 19-20 digit ICCID",
                ))
            }
            "tag_id" => {
                let tag = crate::query::parse_tag_id(value)?;
                selector = choose(&selector, PurgeSelector::Tag(tag))?;
            }
            "hard" => {
                hard = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(InvalidRequest::new(
                            "parameter_invalid",
                            "hard must be true or false",
                        ))
                    }
                }
            }
            _ => {
                return Err(InvalidRequest::new(
                    "parameter_invalid",
                    "purge takes sim_id, tag_id and hard",
                ))
            }
        }
    }
    Ok((selector, hard))
}

/// Keeps the status page's 15-minute history, one sample every [`SAMPLE_EVERY`].
pub async fn keep_history(admin: Arc<Admin>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    loop {
        ticks.tick().await;
        let sample = admin.handles.metrics.sample(admin.budget_remaining());
        admin.handles.metrics.remember(Instant::now(), sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_requests_choose_what_and_how() {
        // (query, selector, hard)
        let rows = [
            ("", PurgeSelector::All, false),
            ("hard=true", PurgeSelector::All, true),
            (
                "sim_id=000000001",
                PurgeSelector::Sim("000000001".into()),
                false,
            ),
            (
                "tag_id=5F0C7A2E-9B1D-4C3E-8A55-0D2F6B7E1C90&hard=1",
                PurgeSelector::Tag("5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90".into()),
                true,
            ),
        ];
        for (query, selector, hard) in rows {
            assert_eq!(purge_request(query), Ok((selector, hard)), "{query}");
        }
        for bad in [
            "sim_id=1",
            "tag_id=x",
            "hard=maybe",
            "colour=red",
            "sim_id=000000001&tag_id=5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90",
        ] {
            assert!(purge_request(bad).is_err(), "{bad}");
        }
    }
}
