//! The one error type of the request path and the one place it becomes a response.
//!
//! Every layer returns `Err(GatewayError)`; [`respond`] (installed once, in `stack.rs`) turns it
//! into `{"error": "<snake_case_code>", "message": "..."}`. Where an error came from decides its
//! status: the caller's fault is 4xx, the upstream's 502/503/504, ours 500. Messages of 5xx
//! answers are generic; the detail, with its source chain, is logged here and only here.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{ready, CatchUnwind, Either, Ready};
use futures_util::FutureExt;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;
use tower::{Layer, Service};

/// The body type of every response the gateway writes.
pub type ResponseBody = Full<Bytes>;

/// A cheaply clonable error source: coalesced waiters share one failed fetch.
pub type SharedSource = Arc<dyn StdError + Send + Sync + 'static>;

/// The JSON content type of every body the gateway writes itself.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A caller's request the gateway refuses to forward: which parameter, and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    /// Snake-case code in the upstream's `<field>_invalid` convention.
    pub code: &'static str,
    /// What was wrong and what is accepted instead.
    pub message: String,
}

impl InvalidRequest {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Response extension: the `error` code of an answer the gateway made itself, for the log
/// line and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthorized,
    NotFound,
    Forbidden,
    TooManyAuthFailures,
    MethodNotAllowed,
    UriTooLong,
    HeadersTooLarge,
    BodyTooLarge,
    BodyTimeout,
    /// A request parameter the gateway refuses, named by its `<field>_invalid` code.
    Invalid(&'static str),
    UpstreamAuthFailed,
    RateLimitExceeded,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamInvalidResponse,
    UpstreamCircuitOpen,
    NotCached,
    InternalError,
}

impl ErrorCode {
    /// The `error` field: snake_case, in the upstream's own convention.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::Forbidden => "forbidden",
            Self::TooManyAuthFailures => "too_many_auth_failures",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::Invalid(code) => code,
            Self::UpstreamAuthFailed => "upstream_auth_failed",
            Self::RateLimitExceeded => "rate_limit_exceeded",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamInvalidResponse => "upstream_invalid_response",
            Self::UpstreamCircuitOpen => "upstream_circuit_open",
            Self::NotCached => "not_cached",
            Self::InternalError => "internal_error",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("no such route")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("too many failed authentications from this client")]
    TooManyAuthFailures { retry_after: Duration },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request target longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request headers larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("invalid request: {0}")]
    InvalidRequest(InvalidRequest),
    #[error("the upstream refused the gateway's credential (HTTP {status})")]
    UpstreamAuthFailed { status: StatusCode },
    #[error("the upstream rate limit is exhausted")]
    UpstreamRateLimited { retry_after: Duration },
    #[error("the upstream answered HTTP {status}")]
    UpstreamStatus { status: StatusCode },
    #[error("the upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the upstream request failed")]
    UpstreamUnavailable(#[source] SharedSource),
    #[error("the upstream response was unusable: {reason}")]
    UpstreamInvalidResponse { reason: &'static str },
    #[error("no upstream budget within the queue timeout")]
    UpstreamBudgetExhausted { retry_after: Duration },
    #[error("the upstream circuit breaker is open")]
    UpstreamCircuitOpen { retry_after: Duration },
    #[error("the caller's upstream quota is spent")]
    CallerQuotaExceeded { retry_after: Duration },
    #[error("only-if-cached and nothing fresh is cached")]
    NotCached,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl GatewayError {
    pub fn upstream_unavailable(source: impl StdError + Send + Sync + 'static) -> Self {
        Self::UpstreamUnavailable(Arc::new(source))
    }

    /// The HTTP status: an exhaustive match, so a new variant must choose one.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooManyAuthFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::UpstreamAuthFailed { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamUnavailable(_)
            | Self::UpstreamInvalidResponse { .. } => StatusCode::BAD_GATEWAY,
            // Running out of calls is a 429 in the upstream's own convention, whichever limit
            // ran out: clients back off on a 429, and retry a 503 at once as a server fault.
            Self::UpstreamRateLimited { .. }
            | Self::UpstreamBudgetExhausted { .. }
            | Self::CallerQuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamCircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            // RFC 9111 §5.2.1.7: only-if-cached with nothing stored is a 504.
            Self::UpstreamTimeout(_) | Self::NotCached => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` field: snake_case, in the upstream's own convention.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The `error` code as a value, for the log line and the metrics.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::NotFound => ErrorCode::NotFound,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::TooManyAuthFailures { .. } => ErrorCode::TooManyAuthFailures,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::UriTooLong { .. } => ErrorCode::UriTooLong,
            Self::HeadersTooLarge { .. } => ErrorCode::HeadersTooLarge,
            Self::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            Self::BodyTimeout(_) => ErrorCode::BodyTimeout,
            Self::InvalidRequest(invalid) => ErrorCode::Invalid(invalid.code),
            Self::UpstreamAuthFailed { .. } => ErrorCode::UpstreamAuthFailed,
            Self::UpstreamRateLimited { .. }
            | Self::UpstreamBudgetExhausted { .. }
            | Self::CallerQuotaExceeded { .. } => ErrorCode::RateLimitExceeded,
            Self::UpstreamStatus { .. } => ErrorCode::UpstreamError,
            Self::UpstreamTimeout(_) => ErrorCode::UpstreamTimeout,
            Self::UpstreamUnavailable(_) => ErrorCode::UpstreamUnavailable,
            Self::UpstreamInvalidResponse { .. } => ErrorCode::UpstreamInvalidResponse,
            Self::UpstreamCircuitOpen { .. } => ErrorCode::UpstreamCircuitOpen,
            Self::NotCached => ErrorCode::NotCached,
            Self::Internal(_) => ErrorCode::InternalError,
        }
    }

    /// The `limit` field of a `rate_limit_exceeded` answer: which limit ran out.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            // This caller's own `upstream_per_minute`.
            Self::CallerQuotaExceeded { .. } => Some("caller_quota"),
            // The gateway's account of the organization's budget (its profile's).
            Self::UpstreamBudgetExhausted { .. } => Some("upstream_budget"),
            // The upstream itself answered 429.
            Self::UpstreamRateLimited { .. } => Some("upstream"),
            _ => None,
        }
    }

    /// The `message` field. Server-side failures say what the caller can do, never the detail.
    pub fn message(&self) -> String {
        match self {
            Self::Unauthorized => "a valid API key is required: send `Authorization: Bearer <key>`, `Authorization: <key>` or `X-API-Key: <key>`".into(),
            Self::NotFound => "no such endpoint: the gateway serves GET /usage, GET /usage/{sim_id} and GET /usage/tag-total/{tag_id}".into(),
            Self::MethodNotAllowed => "only GET is allowed on this endpoint".into(),
            Self::UriTooLong { limit } => format!(
                "the request target is longer than the gateway accepts ({limit} bytes): ask with fewer or shorter filters"
            ),
            Self::HeadersTooLarge { limit } => format!(
                "the request headers are larger than the gateway accepts ({limit} bytes of names and values)"
            ),
            Self::BodyTooLarge { limit } => format!(
                "the request body is larger than the gateway reads ({limit} bytes); a usage question needs no body: it is all in the URL"
            ),
            Self::BodyTimeout(timeout) => format!(
                "the request body did not arrive within {} seconds",
                whole_secs(*timeout)
            ),
            Self::Forbidden(why) => why.clone(),
            Self::TooManyAuthFailures { retry_after } => format!(
                "too many failed authentications from this address; retry after {} seconds",
                whole_secs(*retry_after)
            ),
            Self::InvalidRequest(invalid) => invalid.message.clone(),
            Self::UpstreamAuthFailed { .. } => "the upstream API refused the gateway's own credential; this is a gateway configuration problem, not the caller's".into(),
            Self::UpstreamRateLimited { retry_after } => format!(
                "the upstream API's rate limit is exhausted; retry after {} seconds",
                whole_secs(*retry_after)
            ),
            Self::UpstreamStatus { .. } => "the upstream API failed to answer; try again later".into(),
            Self::UpstreamTimeout(_) => "the upstream API did not answer in time; try again later".into(),
            Self::UpstreamUnavailable(_) => "the upstream API could not be reached; try again later".into(),
            Self::UpstreamInvalidResponse { .. } => "the upstream API sent a response the gateway could not use; try again later".into(),
            Self::UpstreamBudgetExhausted { retry_after } => format!(
                "the organization's upstream call budget is spent and this answer is not cached; retry after {} seconds",
                whole_secs(*retry_after)
            ),
            Self::UpstreamCircuitOpen { retry_after } => format!(
                "the upstream API is failing and the gateway is giving it a rest; retry after {} seconds",
                whole_secs(*retry_after)
            ),
            Self::CallerQuotaExceeded { retry_after } => format!(
                "this caller's quota of upstream calls is spent (cached answers are still served); retry after {} seconds",
                whole_secs(*retry_after)
            ),
            Self::NotCached => "Cache-Control: only-if-cached was requested and no fresh answer is cached".into(),
            Self::Internal(_) => "the gateway failed to handle the request".into(),
        }
    }

    /// The JSON response for this error, with the headers its status calls for.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let status = self.status();
        let mut body = serde_json::json!({ "error": self.code(), "message": self.message() });
        if let Some(limit) = self.limit() {
            body["limit"] = limit.into();
        }
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.extensions_mut().insert(self.error_code());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, JSON);
        match self {
            // RFC 9110 §11.6.1: a 401 carries a challenge.
            Self::Unauthorized => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // RFC 9110 §15.5.6: a 405 lists the allowed methods.
            Self::MethodNotAllowed => {
                headers.insert(ALLOW, HeaderValue::from_static("GET"));
            }
            // RFC 9110 §15.5.14: the unread body would follow; closing is the only way past it.
            Self::BodyTooLarge { .. } => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if let Some(retry_after) = self.retry_after() {
            // RFC 9110 §10.2.3: whole seconds, rounded up so a caller is never early.
            headers.insert(RETRY_AFTER, HeaderValue::from(whole_secs(retry_after)));
        }
        response
    }

    /// When asking again can succeed, for the errors that know.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::UpstreamRateLimited { retry_after }
            | Self::UpstreamBudgetExhausted { retry_after }
            | Self::UpstreamCircuitOpen { retry_after }
            | Self::CallerQuotaExceeded { retry_after }
            | Self::TooManyAuthFailures { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// Whether a stale answer beats this error (RFC 5861 stale-if-error): every failure of
    /// the upstream or of the budget protecting it, never the caller's own mistake.
    pub fn stale_may_answer(&self) -> bool {
        match self {
            Self::UpstreamAuthFailed { .. }
            | Self::UpstreamRateLimited { .. }
            | Self::UpstreamStatus { .. }
            | Self::UpstreamTimeout(_)
            | Self::UpstreamUnavailable(_)
            | Self::UpstreamInvalidResponse { .. }
            | Self::UpstreamBudgetExhausted { .. }
            | Self::UpstreamCircuitOpen { .. }
            | Self::CallerQuotaExceeded { .. } => true,
            Self::Unauthorized
            | Self::NotFound
            | Self::Forbidden(_)
            | Self::TooManyAuthFailures { .. }
            | Self::MethodNotAllowed
            | Self::UriTooLong { .. }
            | Self::HeadersTooLarge { .. }
            | Self::BodyTooLarge { .. }
            | Self::BodyTimeout(_)
            | Self::InvalidRequest(_)
            | Self::NotCached
            | Self::Internal(_) => false,
        }
    }
}

/// Seconds, rounded up, at least 1.
fn whole_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    secs.max(1)
}

/// Response extension on a 5xx the gateway made itself: what went wrong, with its whole
/// source chain, for the one `request failed` log line the observe layer writes with the
/// request's id. Never sent to the caller.
#[derive(Debug, Clone)]
pub struct FailureDetail(pub String);

/// The error boundary: the only place an error becomes a response (a 5xx keeps its detail
/// for the log as a [`FailureDetail`]).
pub fn respond(result: Result<Response<ResponseBody>, GatewayError>) -> Response<ResponseBody> {
    result.unwrap_or_else(|error| {
        let mut response = error.to_response();
        if error.status().is_server_error() {
            response
                .extensions_mut()
                .insert(FailureDetail(ErrorChain(&error).to_string()));
        }
        response
    })
}

/// Installs [`respond`] around a stack whose layers fail with `GatewayError`, and is the
/// stack's panic boundary: a panic in any inner layer, while it is called or while its future
/// runs, becomes a 500 `internal_error`, is counted, and is logged without the request (whose
/// headers may hold a key) or the panic's payload (which may quote one).
///
/// Written here rather than with tower-http's `CatchPanicLayer`: that layer boxes every
/// response body, an allocation per hit, and answers outside this one error boundary.
#[derive(Debug, Clone, Default)]
pub struct ErrorBoundaryLayer {
    panics: Counter,
}

impl ErrorBoundaryLayer {
    /// `panics` counts the panics caught (`usage_gateway_panics_total`).
    pub fn new(panics: Counter) -> Self {
        Self { panics }
    }
}

impl<S> Layer<S> for ErrorBoundaryLayer {
    type Service = ErrorBoundary<S>;

    fn layer(&self, inner: S) -> ErrorBoundary<S> {
        ErrorBoundary {
            inner,
            not_ready: None,
            panics: self.panics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ErrorBoundary<S> {
    inner: S,
    /// An error from the inner `poll_ready`, answered to the next call.
    not_ready: Option<GatewayError>,
    panics: Counter,
}

pin_project_lite::pin_project! {
    /// The inner future, with its panics caught and its result turned into a response.
    #[derive(Debug)]
    pub struct Guarded<F> {
        #[pin]
        inner: CatchUnwind<AssertUnwindSafe<F>>,
        panics: Counter,
    }
}

impl<F> Future for Guarded<F>
where
    F: Future<Output = Result<Response<ResponseBody>, GatewayError>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(respond(
            outcome.unwrap_or_else(|_| panicked(this.panics)),
        )))
    }
}

impl<S, R> Service<R> for ErrorBoundary<S>
where
    S: Service<R, Response = Response<ResponseBody>, Error = GatewayError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<ResponseBody>, Infallible>>, Guarded<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(error)) => {
                self.not_ready = Some(error);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: R) -> Self::Future {
        if let Some(error) = self.not_ready.take() {
            return Either::Left(ready(Ok(respond(Err(error)))));
        }
        // A layer's state stays consistent across a panic: each keeps its shared state behind
        // locks that recover from poisoning, so the next request is served as usual.
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(request))) {
            Ok(future) => Either::Right(Guarded {
                inner: AssertUnwindSafe(future).catch_unwind(),
                panics: self.panics.clone(),
            }),
            Err(_) => Either::Left(ready(Ok(respond(panicked(&self.panics))))),
        }
    }
}

/// What a caught panic becomes: counted here, logged by [`respond`] as a 500.
fn panicked(panics: &Counter) -> Result<Response<ResponseBody>, GatewayError> {
    panics.inc();
    Err(GatewayError::Internal("a request handler panicked"))
}

/// Displays an error with its whole `source()` chain, for the one log line.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response<ResponseBody>) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("infallible body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("error bodies are JSON")
    }

    async fn through_the_boundary(
        inner: impl Service<
            &'static str,
            Response = Response<ResponseBody>,
            Error = GatewayError,
            Future: Send,
        >,
        panics: &Counter,
    ) -> Response<ResponseBody> {
        use tower::ServiceExt;
        ErrorBoundaryLayer::new(panics.clone())
            .layer(inner)
            .oneshot("Bearer caller-key-in-the-request")
            .await
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test]
    async fn a_panic_while_called_or_while_answering_is_a_counted_500() {
        let panics = Counter::default();
        let in_call = tower::service_fn(|_: &'static str| -> std::future::Ready<_> {
            panic!("a bug in call")
        });
        let in_future = tower::service_fn(|_: &'static str| async {
            if panics_now() {
                panic!("a bug while answering");
            }
            Ok(Response::new(ResponseBody::from("unreachable")))
        });
        for response in [
            through_the_boundary(in_call, &panics).await,
            through_the_boundary(in_future, &panics).await,
        ] {
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body = body_json(response).await;
            assert_eq!(body["error"], "internal_error");
            assert!(!body.to_string().contains("caller-key"), "{body}");
        }
        assert_eq!(panics.get(), 2);
    }

    /// Hides the `panic!` from the compiler's unreachable-code analysis.
    fn panics_now() -> bool {
        std::hint::black_box(true)
    }

    #[tokio::test]
    async fn every_error_is_one_json_shape() {
        let errors = [
            GatewayError::Unauthorized,
            GatewayError::NotFound,
            GatewayError::Forbidden("this caller may not ask about SIM 000000001".into()),
            GatewayError::TooManyAuthFailures {
                retry_after: Duration::from_secs(30),
            },
            GatewayError::MethodNotAllowed,
            GatewayError::BodyTooLarge { limit: 16384 },
            GatewayError::BodyTimeout(Duration::from_secs(10)),
            GatewayError::InvalidRequest(InvalidRequest::new("limit_invalid", "bad limit")),
            GatewayError::UpstreamAuthFailed {
                status: StatusCode::FORBIDDEN,
            },
            GatewayError::UpstreamRateLimited {
                retry_after: Duration::from_secs(7),
            },
            GatewayError::UpstreamStatus {
                status: StatusCode::SERVICE_UNAVAILABLE,
            },
            GatewayError::UpstreamTimeout(Duration::from_secs(1)),
            GatewayError::upstream_unavailable(std::io::Error::other("refused")),
            GatewayError::UpstreamInvalidResponse { reason: "too big" },
            GatewayError::UpstreamBudgetExhausted {
                retry_after: Duration::from_millis(1500),
            },
            GatewayError::UpstreamCircuitOpen {
                retry_after: Duration::from_secs(3),
            },
            GatewayError::CallerQuotaExceeded {
                retry_after: Duration::from_secs(4),
            },
            GatewayError::NotCached,
            GatewayError::Internal("bug"),
        ];
        for error in errors {
            let response = error.to_response();
            assert_eq!(response.status(), error.status());
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body = body_json(response).await;
            assert_eq!(body["error"], error.code());
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn status_follows_who_is_at_fault() {
        // (error, status) — the caller's fault is 4xx, the upstream's 5xx.
        let table = [
            (GatewayError::Unauthorized, 401),
            (GatewayError::NotFound, 404),
            (GatewayError::Forbidden("x".into()), 403),
            (
                GatewayError::TooManyAuthFailures {
                    retry_after: Duration::ZERO,
                },
                429,
            ),
            (GatewayError::MethodNotAllowed, 405),
            (GatewayError::UriTooLong { limit: 1 }, 414),
            (GatewayError::HeadersTooLarge { limit: 1 }, 431),
            (GatewayError::BodyTooLarge { limit: 1 }, 413),
            (GatewayError::BodyTimeout(Duration::ZERO), 408),
            (
                GatewayError::InvalidRequest(InvalidRequest::new("x_invalid", "x")),
                400,
            ),
            (
                GatewayError::UpstreamAuthFailed {
                    status: StatusCode::UNAUTHORIZED,
                },
                502,
            ),
            (
                GatewayError::UpstreamRateLimited {
                    retry_after: Duration::ZERO,
                },
                429,
            ),
            (GatewayError::UpstreamTimeout(Duration::ZERO), 504),
            (
                GatewayError::UpstreamBudgetExhausted {
                    retry_after: Duration::ZERO,
                },
                429,
            ),
            (
                GatewayError::UpstreamCircuitOpen {
                    retry_after: Duration::ZERO,
                },
                503,
            ),
            (
                GatewayError::CallerQuotaExceeded {
                    retry_after: Duration::ZERO,
                },
                429,
            ),
            (GatewayError::NotCached, 504),
            (GatewayError::Internal("x"), 500),
        ];
        for (error, status) in table {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn protocol_headers_accompany_their_statuses() {
        let unauthorized = GatewayError::Unauthorized.to_response();
        assert_eq!(unauthorized.headers()[WWW_AUTHENTICATE], "Bearer");
        let not_allowed = GatewayError::MethodNotAllowed.to_response();
        assert_eq!(not_allowed.headers()[ALLOW], "GET");
        let limited = GatewayError::UpstreamRateLimited {
            retry_after: Duration::from_secs(12),
        }
        .to_response();
        assert_eq!(limited.headers()[RETRY_AFTER], "12");
        let budget = GatewayError::UpstreamBudgetExhausted {
            retry_after: Duration::from_millis(1200),
        }
        .to_response();
        assert_eq!(budget.headers()[RETRY_AFTER], "2", "rounded up");
        let quota = GatewayError::CallerQuotaExceeded {
            retry_after: Duration::ZERO,
        }
        .to_response();
        assert_eq!(quota.headers()[RETRY_AFTER], "1", "never 0");
    }

    #[tokio::test]
    async fn every_spent_limit_is_a_429_rate_limit_exceeded_naming_the_limit() {
        let wait = Duration::from_secs(5);
        let rows = [
            (
                GatewayError::CallerQuotaExceeded { retry_after: wait },
                "caller_quota",
            ),
            (
                GatewayError::UpstreamBudgetExhausted { retry_after: wait },
                "upstream_budget",
            ),
            (
                GatewayError::UpstreamRateLimited { retry_after: wait },
                "upstream",
            ),
        ];
        for (error, limit) in rows {
            let response = error.to_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[RETRY_AFTER], "5");
            let body = body_json(response).await;
            assert_eq!(body["error"], "rate_limit_exceeded");
            assert_eq!(body["limit"], limit);
        }
        let other = body_json(GatewayError::NotCached.to_response()).await;
        assert!(other.get("limit").is_none(), "{other}");
    }

    #[test]
    fn server_errors_hide_their_detail() {
        let error = GatewayError::upstream_unavailable(std::io::Error::other("10.1.2.3 refused"));
        assert!(!error.message().contains("10.1.2.3"));
        assert!(ErrorChain(&error).to_string().contains("10.1.2.3 refused"));
    }
}
