//! `ObserveLayer`: every request gets an id, a span, one access-log line and its metrics.
//!
//! Guarantees:
//! - `X-Request-Id` from the caller is kept when sane (visible ASCII, at most 128 characters),
//!   otherwise one is generated; it is on every response and every log line of the request;
//! - exactly one `request` line per request, at info level, with `request_id`, `caller`,
//!   `method`, `route`, `status`, `cache`, `duration_ms`, `upstream_ms` — never a key, token or
//!   query string;
//! - the same facts feed the metrics, so logs and metrics always agree.
//!
//! Written here rather than with tower-http's `TraceLayer` and request-id layers: the line and
//! the metrics need facts that inner layers learn (caller, route, cache outcome, upstream
//! time), which those layers cannot hand back; [`RequestFacts`] in the request extensions can.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::{ErrorCode, ResponseBody};
use crate::metrics::{Finished, Metrics};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-sent request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What inner layers learn about a request, for its log line and metrics.
#[derive(Debug, Default)]
pub struct RequestFacts(Mutex<Facts>);

#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub caller: Option<Arc<str>>,
    pub route: Option<&'static str>,
    pub cache: Option<&'static str>,
    pub upstream_ms: Option<u64>,
}

impl RequestFacts {
    fn update(&self, change: impl FnOnce(&mut Facts)) {
        change(&mut crate::sync::lock(&self.0));
    }

    fn snapshot(&self) -> Facts {
        crate::sync::lock(&self.0).clone()
    }
}

impl RequestFacts {
    /// The facts of the request these extensions belong to, if it is observed.
    pub fn of(extensions: &http::Extensions) -> Option<Arc<RequestFacts>> {
        extensions.get::<Arc<RequestFacts>>().cloned()
    }

    pub fn set_caller(&self, caller: &Arc<str>) {
        self.update(|f| f.caller = Some(caller.clone()));
    }

    pub fn set_route(&self, route: &'static str) {
        self.update(|f| f.route = Some(route));
    }

    pub fn set_cache(&self, outcome: &'static str) {
        self.update(|f| f.cache = Some(outcome));
    }

    /// Adds time spent upstream (retries add up).
    pub fn add_upstream_ms(&self, ms: u64) {
        self.update(|f| f.upstream_ms = Some(f.upstream_ms.unwrap_or(0) + ms));
    }
}

/// A caller's request id is kept only if it is short, visible ASCII (RFC 9110 `token`-ish):
/// anything else could forge log lines or carry a secret into them.
pub fn sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// Request ids unique to this process: a random prefix and a counter, cheap to make.
#[derive(Debug)]
struct IdSource {
    prefix: u64,
    next: AtomicU64,
}

impl IdSource {
    fn new() -> Self {
        Self {
            prefix: getrandom::u64().unwrap_or_else(|_| {
                // No randomness: the start time still separates restarts.
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
            next: AtomicU64::new(0),
        }
    }

    /// 32 hex digits: the prefix, then the counter. Written by hand because it runs on every
    /// request that brings no id, and the formatting machinery costs more than the request's
    /// cache lookup.
    fn make(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.prefix.to_be_bytes());
        raw[8..].copy_from_slice(&n.to_be_bytes());
        hex::encode_to_slice(raw, &mut id).expect("16 bytes fill 32 hex digits");
        HeaderValue::from_bytes(&id).expect("hex digits make a valid header value")
    }
}

#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    ids: Arc<IdSource>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ids: Arc::new(IdSource::new()),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let id = match request.headers().get(&X_REQUEST_ID) {
            Some(value) if sane_request_id(value) => value.clone(),
            _ => self.layer.ids.make(),
        };
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), id.clone());
        let facts = Arc::new(RequestFacts::default());
        request.extensions_mut().insert(facts.clone());
        let method = request.method().clone();
        let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
        let future = span.in_scope(|| self.inner.call(request));
        let metrics = self.layer.metrics.clone();
        Box::pin(
            async move {
                let mut response = future.await?;
                response
                    .headers_mut()
                    .insert(X_REQUEST_ID.clone(), id.clone());
                let duration = started.elapsed();
                let facts = facts.snapshot();
                let status = response.status().as_u16();
                let route = facts.route.unwrap_or("none");
                let cache = facts.cache.unwrap_or("none");
                metrics.record_request(Finished {
                    route,
                    status,
                    cache,
                    caller: facts.caller.as_ref(),
                    error: response.extensions().get::<ErrorCode>().map(|code| code.0),
                    duration,
                });
                tracing::info!(
                    request_id = id.to_str().unwrap_or_default(),
                    caller = facts.caller.as_deref(),
                    method = %method,
                    route,
                    status,
                    cache,
                    duration_ms = duration.as_secs_f64() * 1000.0,
                    upstream_ms = facts.upstream_ms,
                    "request"
                );
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_request_ids_are_kept() {
        // (value, kept)
        let rows: [(&[u8], bool); 6] = [
            (b"abc-123", true),
            (b"0123456789abcdef0123456789abcdef", true),
            (&[b'a'; 128], true),
            (&[b'a'; 129], false),
            (b"has space", false),
            (b"tab\there", false),
        ];
        for (bytes, kept) in rows {
            let value = HeaderValue::from_bytes(bytes).expect("header value");
            assert_eq!(sane_request_id(&value), kept, "{value:?}");
        }
    }

    #[test]
    fn generated_ids_are_unique_and_sane() {
        let ids = IdSource::new();
        let a = ids.make();
        let b = ids.make();
        assert_ne!(a, b);
        assert!(sane_request_id(&a));
        assert_eq!(a.len(), 32);
    }
}
