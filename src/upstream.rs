//! `Upstream`: the leaf service that asks the real API, with the organization token.
//!
//! Guarantees:
//! - the upstream request is built from the canonical [`UsageQuery`] alone: no header, cookie
//!   or credential of the caller is ever forwarded, because none is copied;
//! - the organization token is set here and nowhere else, marked sensitive;
//! - of the upstream's response headers only `Content-Type` and `Cache-Control` are kept
//!   (so `Set-Cookie`, hop-by-hop headers (RFC 9110 §7.6.1) and anything else stay behind);
//! - `upstream.timeout_ms` bounds the whole exchange, body included; redirects are never followed;
//! - the upstream status is mapped by [`classify`]: the caller's mistakes pass through, the
//!   gateway's credential problems and the upstream's failures become gateway errors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::Service;

use crate::config::{AuthScheme, UpstreamConfig};
use crate::error::{GatewayError, ResponseBody};
use crate::query::UsageQuery;

/// The largest upstream body read; a full 1000-record page is a few hundred KiB.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// When a 429 says nothing about when to come back: the upstream's window is one minute.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Never tell a caller to wait longer than this, whatever the upstream claims.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

const USER_AGENT_VALUE: &str = concat!("usage-gateway/", env!("CARGO_PKG_VERSION"));

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

#[derive(Clone)]
pub struct Upstream {
    client: HttpsClient,
    /// `scheme://authority/prefix`, no trailing slash: the canonical target is appended.
    base: Arc<str>,
    authorization: HeaderValue,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What the upstream's status means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 200: the answer (and the only kind the cache may store).
    Answer,
    /// 400, 404 and other 4xx: the caller's question was wrong; its body passes through.
    PassThrough,
    /// 401/403: the upstream refused the gateway's own token.
    CredentialRefused,
    /// 429: the organization's budget is spent.
    RateLimited,
    /// 5xx: the upstream failed.
    Failed,
    /// Anything else (1xx, other 2xx, 3xx): not an answer this API gives; redirects are not followed.
    Unexpected,
}

/// Maps an upstream status to what the gateway does with it.
pub fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200 => Verdict::Answer,
        401 | 403 => Verdict::CredentialRefused,
        429 => Verdict::RateLimited,
        400..=499 => Verdict::PassThrough,
        500..=599 => Verdict::Failed,
        _ => Verdict::Unexpected,
    }
}

/// How long a 429 asks us to wait: `Retry-After` in seconds (RFC 9110 §10.2.3), else the
/// `x-ratelimit-reset` epoch the upstream documents, else a whole window.
pub fn retry_after(headers: &HeaderMap, now_epoch_secs: u64) -> Duration {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let wait = number(RETRY_AFTER.as_str())
        .map(Duration::from_secs)
        .or_else(|| {
            number("x-ratelimit-reset")
                .map(|reset| Duration::from_secs(reset.saturating_sub(now_epoch_secs)))
        })
        .unwrap_or(DEFAULT_RETRY_AFTER);
    wait.clamp(Duration::from_secs(1), MAX_RETRY_AFTER)
}

/// The upstream response headers a caller may see or the cache may read.
pub fn kept_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::with_capacity(2);
    for name in [CONTENT_TYPE, CACHE_CONTROL] {
        for value in upstream.get_all(&name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, std::io::Error> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);

        let uri = &config.base_url;
        let base = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or_default(),
            uri.path().trim_end_matches('/')
        );
        let token = config.token.expose();
        let value = match config.auth_scheme {
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
            client,
            base: base.into(),
            authorization,
            timeout: config.timeout,
        })
    }

    fn request_for(&self, query: &UsageQuery) -> Result<Request<Empty<Bytes>>, GatewayError> {
        let uri = format!("{}{}", self.base, query.canonical());
        Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE))
            .body(Empty::new())
            .map_err(|_| {
                GatewayError::Internal("a canonical query did not form a valid upstream URI")
            })
    }
}

impl<B> Service<Request<B>> for Upstream {
    type Response = Response<ResponseBody>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let upstream_request = match request.extensions().get::<UsageQuery>() {
            Some(query) => self.request_for(query),
            None => Err(GatewayError::Internal(
                "the normalize layer must run before the upstream",
            )),
        };
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let upstream_request = upstream_request?;
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(timeout, exchange(client, upstream_request))
                .await
                .unwrap_or(Err(GatewayError::UpstreamTimeout(timeout)));
            let elapsed_ms = started.elapsed().as_millis() as u64;
            tracing::Span::current().record("upstream_ms", elapsed_ms);
            result
        })
    }
}

/// One upstream request and its whole body.
async fn exchange(
    client: HttpsClient,
    request: Request<Empty<Bytes>>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let response = client
        .request(request)
        .await
        .map_err(GatewayError::upstream_unavailable)?;
    let (parts, body) = response.into_parts();
    let verdict = classify(parts.status);
    match verdict {
        Verdict::CredentialRefused => {
            return Err(GatewayError::UpstreamAuthFailed {
                status: parts.status,
            })
        }
        Verdict::RateLimited => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            return Err(GatewayError::UpstreamRateLimited {
                retry_after: retry_after(&parts.headers, now),
            });
        }
        Verdict::Failed => {
            return Err(GatewayError::UpstreamStatus {
                status: parts.status,
            })
        }
        Verdict::Unexpected => {
            return Err(GatewayError::UpstreamInvalidResponse {
                reason: "unexpected status (redirects are not followed)",
            })
        }
        Verdict::Answer | Verdict::PassThrough => {}
    }
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(
            |error| match error.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => GatewayError::UpstreamInvalidResponse {
                    reason: "body larger than the gateway reads",
                },
                Err(other) => GatewayError::UpstreamUnavailable(Arc::from(other)),
            },
        )?
        .to_bytes();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = parts.status;
    *response.headers_mut() = kept_headers(&parts.headers);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_map_to_verdicts() {
        // (upstream status, verdict) — one row per rule of the mapping.
        let rows = [
            (200, Verdict::Answer),
            (400, Verdict::PassThrough),
            (404, Verdict::PassThrough),
            (405, Verdict::PassThrough),
            (401, Verdict::CredentialRefused),
            (403, Verdict::CredentialRefused),
            (429, Verdict::RateLimited),
            (500, Verdict::Failed),
            (502, Verdict::Failed),
            (503, Verdict::Failed),
            (204, Verdict::Unexpected),
            (301, Verdict::Unexpected),
            (302, Verdict::Unexpected),
        ];
        for (status, verdict) in rows {
            let status = StatusCode::from_u16(status).expect("status");
            assert_eq!(classify(status), verdict, "{status}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn retry_after_prefers_the_header_then_the_reset_then_a_window() {
        let now = 1_730_239_150;
        let rows = [
            (headers(&[("retry-after", "7")]), 7),
            (
                headers(&[("retry-after", "7"), ("x-ratelimit-reset", "1730239201")]),
                7,
            ),
            (headers(&[("x-ratelimit-reset", "1730239201")]), 51),
            (headers(&[("x-ratelimit-reset", "1730239000")]), 1),
            (
                headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
                60,
            ),
            (headers(&[]), 60),
            (headers(&[("retry-after", "999999")]), 3600),
        ];
        for (map, secs) in rows {
            assert_eq!(retry_after(&map, now), Duration::from_secs(secs), "{map:?}");
        }
    }

    #[test]
    fn only_content_type_and_cache_control_are_kept() {
        let upstream = headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("cache-control", "no-store"),
            ("set-cookie", "session=abc"),
            ("connection", "keep-alive"),
            ("x-ratelimit-remaining", "5"),
            ("server", "upstream/1.0"),
        ]);
        let kept = kept_headers(&upstream);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[CONTENT_TYPE], "application/json; charset=utf-8");
        assert_eq!(kept[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn requests_carry_the_token_in_the_configured_scheme() {
        let config = |scheme, base: &str| UpstreamConfig {
            base_url: base.parse().expect("uri"),
            token: crate::config::Secret::new("org-token"),
            auth_scheme: scheme,
            timeout: Duration::from_secs(1),
        };
        let query = UsageQuery::parse("/usage", Some("filter=time:2024"))
            .expect("valid")
            .expect("route");
        let raw =
            Upstream::new(&config(AuthScheme::Raw, "https://api.example.com")).expect("client");
        let request = raw.request_for(&query).expect("request");
        assert_eq!(request.headers()[AUTHORIZATION], "org-token");
        assert!(request.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(
            request.uri().to_string(),
            "https://api.example.com/usage?filter=time:2024&limit=1000"
        );
        let bearer = Upstream::new(&config(AuthScheme::Bearer, "http://127.0.0.1:9/prefix"))
            .expect("client");
        let request = bearer.request_for(&query).expect("request");
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer org-token");
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:9/prefix/usage?filter=time:2024&limit=1000"
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let upstream = Upstream::new(&UpstreamConfig {
            base_url: "https://api.example.com".parse().expect("uri"),
            token: crate::config::Secret::new("org-token-xyz"),
            auth_scheme: AuthScheme::Raw,
            timeout: Duration::from_secs(1),
        })
        .expect("client");
        assert!(!format!("{upstream:?}").contains("org-token-xyz"));
    }
}
