//! `CacheLayer`: repeats are answered from memory, and identical concurrent misses make one
//! upstream request.
//!
//! Guarantees:
//! - the key is the canonical query and the upstream credential's identity, nothing else
//!   (see `entry.rs`);
//! - one fill per key: concurrent misses wait for the first one's fetch (moka's
//!   `try_get_with`) and all get its outcome, success or error;
//! - only storable answers are stored (`policy.rs`); a failed fetch is never cached, and an
//!   answer that may not be stored is still shared with the requests that waited for it;
//! - memory is bounded by `cache.max_bytes` through a weigher on body size.

mod entry;
mod policy;
mod status;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

pub use entry::{CacheKey, CachedResponse, CredentialId};
pub use status::{BypassReason, CacheStatus, CACHE_NAME, CACHE_STATUS};

use crate::config::CacheConfig;
use crate::error::{GatewayError, ResponseBody};
use crate::query::UsageQuery;

/// The largest answer stored as one entry; larger ones are served but not stored.
pub const MAX_ENTRY_BYTES: usize = 8 * 1024 * 1024;

type Store = moka::future::Cache<CacheKey, Arc<CachedResponse>>;

/// Why a fill produced no entry; shared by every request that waited for it.
#[derive(Debug)]
enum Unfilled {
    /// The upstream answered, but the answer may not be stored.
    Bypass(CachedResponse, BypassReason),
    /// The fetch failed.
    Failed(GatewayError),
}

#[derive(Debug, Clone)]
pub struct CacheLayer {
    store: Store,
    credential: CredentialId,
    ttl: Duration,
    max_entry_bytes: usize,
}

impl CacheLayer {
    /// `credential` identifies the upstream token every miss of this stack is fetched with.
    pub fn new(config: &CacheConfig, credential: CredentialId) -> Self {
        let store = moka::future::Cache::builder()
            .name("usage-gateway")
            .max_capacity(config.max_bytes)
            .weigher(CachedResponse::weight)
            .time_to_live(config.ttl)
            .build();
        let max_entry_bytes = usize::try_from(config.max_bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_ENTRY_BYTES);
        Self {
            store,
            credential,
            ttl: config.ttl,
            max_entry_bytes,
        }
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

impl<S, B> Service<Request<B>> for Cache<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = GatewayError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // Hits never touch the inner service; a miss drives it to readiness with `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(query) = request.extensions().get::<UsageQuery>() else {
            return Box::pin(std::future::ready(Err(GatewayError::Internal(
                "the normalize layer must run before the cache layer",
            ))));
        };
        let key = CacheKey::new(self.layer.credential, query.canonical_shared());
        let layer = self.layer.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let started = Instant::now();
            if let Some(entry) = layer.store.get(&key).await {
                return Ok(layer.hit(&entry, started));
            }
            tracing::Span::current().record("cache", "miss");
            let fetched = AtomicBool::new(false);
            let fill = async {
                fetched.store(true, Ordering::Relaxed);
                fill(inner, request, layer.max_entry_bytes).await
            };
            let result = layer.store.try_get_with(key, fill).await;
            let led = fetched.load(Ordering::Relaxed);
            let now = Instant::now();
            let status = match &result {
                // Stored by a fill that finished between our lookup and our wait: a hit.
                Ok(entry) if !led && entry.stored_at < started => return Ok(layer.hit(entry, now)),
                Ok(_) if led => CacheStatus::Stored,
                Ok(_) => CacheStatus::Collapsed,
                Err(unfilled) => match &**unfilled {
                    Unfilled::Bypass(_, reason) => CacheStatus::Bypass {
                        reason: *reason,
                        collapsed: !led,
                    },
                    Unfilled::Failed(error) => return Err(error.clone()),
                },
            };
            tracing::Span::current().record("cache", status.as_str());
            let response = match &result {
                Ok(entry) => entry.to_response(status, now),
                Err(unfilled) => match &**unfilled {
                    Unfilled::Bypass(answer, _) => answer.to_response(status, now),
                    Unfilled::Failed(error) => return Err(error.clone()),
                },
            };
            Ok(response)
        })
    }
}

impl CacheLayer {
    fn hit(&self, entry: &CachedResponse, now: Instant) -> Response<ResponseBody> {
        let ttl_secs = policy::remaining_ttl_secs(entry.stored_at, self.ttl, now);
        let status = CacheStatus::Hit { ttl_secs };
        tracing::Span::current().record("cache", status.as_str());
        entry.to_response(status, now)
    }
}

/// Fetches once upstream and decides whether the answer becomes an entry.
async fn fill<S, B>(
    inner: S,
    request: Request<B>,
    max_entry_bytes: usize,
) -> Result<Arc<CachedResponse>, Unfilled>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = GatewayError>,
{
    let response = inner.oneshot(request).await.map_err(Unfilled::Failed)?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|never| match never {})?
        .to_bytes();
    let answer = CachedResponse {
        status: parts.status,
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        body,
        stored_at: Instant::now(),
    };
    match policy::storable(
        parts.status,
        &parts.headers,
        answer.body.len(),
        max_entry_bytes,
    ) {
        Ok(()) => Ok(Arc::new(answer)),
        Err(reason) => Err(Unfilled::Bypass(answer, reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::error::InvalidRequest;
    use http::StatusCode;
    use std::sync::atomic::AtomicUsize;
    use tower::{service_fn, ServiceBuilder};

    fn config(ttl: Duration) -> CacheConfig {
        CacheConfig {
            ttl,
            max_bytes: 1024 * 1024,
        }
    }

    fn request(target: &str) -> Request<()> {
        let uri: http::Uri = target.parse().expect("uri");
        let query = UsageQuery::parse(uri.path(), uri.query())
            .expect("valid")
            .expect("route");
        let mut request = Request::new(());
        request.extensions_mut().insert(query);
        request
    }

    fn counting_upstream(
        calls: Arc<AtomicUsize>,
        status: StatusCode,
    ) -> impl Service<
        Request<()>,
        Response = Response<ResponseBody>,
        Error = GatewayError,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        service_fn(move |request: Request<()>| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let target = request
                    .extensions()
                    .get::<UsageQuery>()
                    .map(|q| q.canonical().to_owned())
                    .unwrap_or_default();
                let mut response = Response::new(ResponseBody::from(format!("{target} #{n}")));
                *response.status_mut() = status;
                Ok::<_, GatewayError>(response)
            }
        })
    }

    fn cache_status(response: &Response<ResponseBody>) -> String {
        response.headers()[&CACHE_STATUS]
            .to_str()
            .expect("ascii")
            .to_owned()
    }

    async fn body(response: Response<ResponseBody>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("infallible")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    fn layer() -> CacheLayer {
        CacheLayer::new(
            &config(Duration::from_secs(60)),
            CredentialId::of(&Secret::new("t")),
        )
    }

    #[tokio::test]
    async fn a_repeat_is_served_from_memory() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = ServiceBuilder::new()
            .layer(layer())
            .service(counting_upstream(calls.clone(), StatusCode::OK));
        let first = service
            .clone()
            .oneshot(request("/usage?limit=5"))
            .await
            .expect("ok");
        assert_eq!(cache_status(&first), "usage-gateway; fwd=miss; stored");
        let second = service
            .oneshot(request("/usage?limit=5"))
            .await
            .expect("ok");
        assert!(cache_status(&second).starts_with("usage-gateway; hit; ttl="));
        assert_eq!(second.headers()["age"], "0");
        assert_eq!(body(second).await, "/usage?limit=5 #1");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn different_questions_are_fetched_separately() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = ServiceBuilder::new()
            .layer(layer())
            .service(counting_upstream(calls.clone(), StatusCode::OK));
        let a = service
            .clone()
            .oneshot(request("/usage?limit=5"))
            .await
            .expect("ok");
        let b = service
            .oneshot(request("/usage?limit=6"))
            .await
            .expect("ok");
        assert_eq!(body(a).await, "/usage?limit=5 #1");
        assert_eq!(body(b).await, "/usage?limit=6 #2");
    }

    #[tokio::test]
    async fn non_200_answers_are_served_but_not_stored() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = ServiceBuilder::new()
            .layer(layer())
            .service(counting_upstream(calls.clone(), StatusCode::NOT_FOUND));
        for _ in 0..2 {
            let response = service
                .clone()
                .oneshot(request("/usage/000000009"))
                .await
                .expect("ok");
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            assert_eq!(
                cache_status(&response),
                "usage-gateway; fwd=miss; detail=upstream-status"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failed_fetches_are_not_cached() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service =
            ServiceBuilder::new()
                .layer(layer())
                .service(service_fn(move |_: Request<()>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        Err::<Response<ResponseBody>, _>(GatewayError::InvalidRequest(
                            InvalidRequest::new("x_invalid", "x"),
                        ))
                    }
                }));
        for _ in 0..2 {
            let error = service
                .clone()
                .oneshot(request("/usage"))
                .await
                .expect_err("fails");
            assert_eq!(error.code(), "x_invalid");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let counter = calls.clone();
        let gate = release.clone();
        let service =
            ServiceBuilder::new()
                .layer(layer())
                .service(service_fn(move |_: Request<()>| {
                    let counter = counter.clone();
                    let gate = gate.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _permit = gate.acquire().await.expect("semaphore stays open");
                        Ok::<_, GatewayError>(Response::new(ResponseBody::from("answer")))
                    }
                }));
        let waiters: Vec<_> = (0..20)
            .map(|_| tokio::spawn(service.clone().oneshot(request("/usage"))))
            .collect();
        // The fill is under way once the upstream counted a call; then let it answer.
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        release.add_permits(1);
        let mut statuses = Vec::new();
        for waiter in waiters {
            let response = waiter.await.expect("task").expect("ok");
            statuses.push(cache_status(&response));
            assert_eq!(body(response).await, "answer");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            statuses.iter().filter(|s| s.ends_with("stored")).count(),
            1,
            "{statuses:?}"
        );
    }

    #[tokio::test]
    async fn no_store_answers_are_not_stored() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service =
            ServiceBuilder::new()
                .layer(layer())
                .service(service_fn(move |_: Request<()>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        let mut response = Response::new(ResponseBody::from("fresh"));
                        response
                            .headers_mut()
                            .insert("cache-control", http::HeaderValue::from_static("no-store"));
                        Ok::<_, GatewayError>(response)
                    }
                }));
        for _ in 0..2 {
            let response = service
                .clone()
                .oneshot(request("/usage"))
                .await
                .expect("ok");
            assert_eq!(
                cache_status(&response),
                "usage-gateway; fwd=miss; detail=no-store"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_without_a_query_is_an_internal_error() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = ServiceBuilder::new()
            .layer(layer())
            .service(counting_upstream(calls.clone(), StatusCode::OK));
        let error = service
            .oneshot(Request::new(()))
            .await
            .expect_err("no query");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
