//! `ObserveLayer`: every request gets an id, one access-log line and its metrics.
//!
//! Guarantees:
//! - `X-Request-Id` from the caller is kept when sane (visible ASCII, at most 128 characters),
//!   otherwise one is generated; it is on every response, on the access line and on the
//!   `request failed` line of a failed request;
//! - exactly one access line per request (when the access log is on: `[log] access`), with
//!   `request_id`, `caller`, `method`, `route`, `status`, `cache`, `duration_ms`,
//!   `upstream_ms` — never a key, token or query string;
//! - the same facts feed the metrics, so logs and metrics always agree.
//!
//! Written here rather than with tower-http's `TraceLayer` and request-id layers: the line and
//! the metrics need facts that inner layers learn (caller, route, cache outcome, upstream
//! time), which those layers cannot hand back; [`RequestFacts`] in the request extensions can.
//! No tracing span per request: it cost more than the rest of a cache hit's logging, and the
//! few events inside a request name its id themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use tower::{Layer, Service};

use crate::access_log::{AccessLine, AccessLog};
use crate::error::{ErrorCode, FailureDetail, ResponseBody};
use crate::facts::RequestFacts;
use crate::metrics::{CallerId, Finished, Metrics};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-sent request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id of a request the observe layer has seen (it sets the header), for the log
/// events written while the request is served.
pub fn request_id(headers: &http::HeaderMap) -> &str {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default()
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
    // One reference count per request, not one per part.
    shared: Arc<Observer>,
}

#[derive(Debug)]
struct Observer {
    metrics: Arc<Metrics>,
    ids: IdSource,
    access_log: Option<AccessLog>,
}

impl ObserveLayer {
    /// Observes into `metrics`, and into the access log installed for the process
    /// ([`crate::access_log::installed`]) if there is one.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_access_log(metrics, crate::access_log::installed().cloned())
    }

    pub fn with_access_log(metrics: Arc<Metrics>, access_log: Option<AccessLog>) -> Self {
        Self {
            shared: Arc::new(Observer {
                metrics,
                ids: IdSource::new(),
                access_log,
            }),
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
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let id = match request.headers().get(&X_REQUEST_ID) {
            Some(value) if sane_request_id(value) => value.clone(),
            _ => self.layer.shared.ids.make(),
        };
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), id.clone());
        let facts = RequestFacts::attach(request.extensions_mut());
        let method = request.method().clone();
        Observed {
            inner: self.inner.call(request),
            seen: Some(Seen {
                started,
                id,
                method,
                facts,
                observer: self.layer.shared.clone(),
            }),
        }
    }
}

/// What the observe layer keeps of a request while it is served.
#[derive(Debug)]
struct Seen {
    started: Instant,
    id: HeaderValue,
    method: Method,
    facts: Arc<RequestFacts>,
    observer: Arc<Observer>,
}

pin_project_lite::pin_project! {
    /// The inner answer, logged and counted as it leaves (a named future: no allocation).
    #[derive(Debug)]
    pub struct Observed<F> {
        #[pin]
        inner: F,
        seen: Option<Seen>,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(seen) = this.seen.take() {
            seen.finish(&mut response);
        }
        Poll::Ready(Ok(response))
    }
}

impl Seen {
    fn finish(self, response: &mut Response<ResponseBody>) {
        let duration = self.started.elapsed();
        let facts = &self.facts;
        let status = response.status().as_u16();
        let caller = facts.caller();
        let error = response.extensions().get::<ErrorCode>().copied();
        self.observer.metrics.record_request(Finished {
            route: facts.route(),
            status,
            cache: facts.cache(),
            caller: caller.map(|caller| CallerId {
                name: &caller.name,
                index: caller.index,
            }),
            error,
            duration,
        });
        if let Some(FailureDetail(detail)) = response.extensions_mut().remove::<FailureDetail>() {
            tracing::warn!(
                request_id = self.id.to_str().unwrap_or_default(),
                error = %detail,
                code = error.map(ErrorCode::as_str),
                "request failed"
            );
        }
        if let Some(access_log) = &self.observer.access_log {
            access_log.write(&AccessLine {
                request_id: self.id.as_bytes(),
                caller: caller.map(|caller| &*caller.name),
                method: self.method.as_str(),
                route: facts.route(),
                status,
                cache: facts.cache(),
                duration,
                upstream: facts.upstream(),
            });
        }
        response.headers_mut().insert(X_REQUEST_ID.clone(), self.id);
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
