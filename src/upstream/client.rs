//! One upstream exchange and the pure rules around it.
//!
//! Guarantees:
//! - of the upstream's response headers only `Content-Type` and `Cache-Control` are kept
//!   (so `Set-Cookie`, hop-by-hop headers (RFC 9110 §7.6.1) and anything else stay behind);
//! - redirects are never followed, and a body larger than [`MAX_BODY_BYTES`] is refused, as
//!   sent and decoded alike (a gzip bomb is an `upstream_invalid_response`, never a large
//!   allocation);
//! - gzip is asked for; a gzip answer is decoded here once, its decoded body validated, and
//!   its bytes as sent handed on beside it ([`gzip::AsSent`]) for the cache to keep; any other
//!   content coding is refused; a 200 whose (decoded) body is not JSON is refused, never cached;
//! - the upstream status is mapped by [`classify`]: the caller's mistakes pass through, the
//!   gateway's credential problems and the upstream's failures become gateway errors;
//! - every answer's `x-ratelimit-*` headers (and a 429's `Retry-After`) are read into a
//!   [`RateLimitReport`] for the budget, and its health into an [`Outcome`] for the breaker.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

use super::breaker::Outcome;
use super::budget::RateLimitReport;
use crate::error::{GatewayError, ResponseBody, JSON};
use crate::gzip;

/// The largest upstream body read (`config` owns the number: it bounds the largest entry).
pub const MAX_BODY_BYTES: usize = crate::config::MAX_UPSTREAM_BODY_BYTES;

/// When a 429 says nothing about when to come back: the upstream's window is one minute.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Never tell a caller to wait longer than this, whatever the upstream claims.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The pooled HTTP(S) client every upstream call goes through.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Builds the pooled client: rustls with the webpki roots, HTTP/1.1 and HTTP/2 (ALPN);
/// plain `http://` for local test upstreams. Bodies come as sent: [`exchange`] decodes gzip.
pub fn https_client() -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
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

/// The `Content-Type` of an answer validated as JSON: the upstream's own when it names JSON
/// (`application/json`, with its parameters, or a `+json` type), else `application/json`, so
/// a 200 labelled `text/html` (or not labelled) is never served to a browser as a page.
pub fn answer_content_type(upstream: Option<&HeaderValue>) -> HeaderValue {
    let names_json = upstream
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().trim())
        .is_some_and(|media| {
            media.eq_ignore_ascii_case("application/json")
                || media
                    .get(media.len().saturating_sub(5)..)
                    .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json"))
        });
    match upstream {
        Some(value) if names_json => value.clone(),
        _ => JSON,
    }
}

/// Reads what an answer says about the budget: `x-ratelimit-remaining`, the time until
/// `x-ratelimit-reset` (Unix seconds), and for a 429 how long the gate stays closed.
pub fn rate_limit_report(
    status: StatusCode,
    headers: &HeaderMap,
    now_epoch_secs: u64,
) -> RateLimitReport {
    let number =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    RateLimitReport {
        remaining: number("x-ratelimit-remaining"),
        reset_in: number("x-ratelimit-reset").map(|reset| {
            Duration::from_secs(reset.saturating_sub(now_epoch_secs)).min(MAX_RETRY_AFTER)
        }),
        throttled_for: (status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| retry_after(headers, now_epoch_secs)),
    }
}

/// How an answer's body is encoded (`Content-Encoding`, RFC 9110 §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCoding {
    Identity,
    Gzip,
    /// Anything else (another coding, or several): the gateway asked only for gzip.
    Other,
}

/// Reads `Content-Encoding`: absent or `identity` is the body itself; `gzip` (or its alias
/// `x-gzip`, case-insensitive) is one gzip layer.
pub fn body_coding(headers: &HeaderMap) -> BodyCoding {
    let mut values = headers.get_all(CONTENT_ENCODING).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(CONTENT_ENCODING) {
            BodyCoding::Other
        } else {
            BodyCoding::Identity
        };
    };
    let coding = value.as_bytes().trim_ascii();
    if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
        BodyCoding::Gzip
    } else if coding.eq_ignore_ascii_case(b"identity") {
        BodyCoding::Identity
    } else {
        BodyCoding::Other
    }
}

/// Whether `body` is one well-formed JSON value (validated, not built).
pub fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// What one exchange produced, for the caller, the budget and the breaker.
#[derive(Debug)]
pub struct Exchanged {
    pub result: Result<Response<ResponseBody>, GatewayError>,
    /// The upstream's status, when it answered.
    pub status: Option<StatusCode>,
    pub report: RateLimitReport,
    pub health: Outcome,
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// One upstream request and its whole body.
pub async fn exchange(client: &HttpsClient, request: Request<Empty<Bytes>>) -> Exchanged {
    let response = match client.clone().oneshot(request).await {
        Ok(response) => response,
        Err(error) => {
            return Exchanged {
                result: Err(GatewayError::upstream_unavailable(error)),
                status: None,
                report: RateLimitReport::default(),
                health: Outcome::Failed,
            }
        }
    };
    let (parts, body) = response.into_parts();
    let report = rate_limit_report(parts.status, &parts.headers, epoch_secs());
    let verdict = classify(parts.status);
    let health = if verdict == Verdict::Failed {
        Outcome::Failed
    } else {
        Outcome::Healthy
    };
    let refused = match verdict {
        Verdict::CredentialRefused => Some(GatewayError::UpstreamAuthFailed {
            status: parts.status,
        }),
        Verdict::RateLimited => Some(GatewayError::UpstreamRateLimited {
            retry_after: report.throttled_for.unwrap_or(DEFAULT_RETRY_AFTER),
        }),
        Verdict::Failed => Some(GatewayError::UpstreamStatus {
            status: parts.status,
        }),
        Verdict::Unexpected => Some(GatewayError::UpstreamInvalidResponse {
            reason: "unexpected status (redirects are not followed)",
        }),
        Verdict::Answer | Verdict::PassThrough => None,
    };
    if let Some(error) = refused {
        return Exchanged {
            result: Err(error),
            status: Some(parts.status),
            report,
            health,
        };
    }
    let body = Limited::new(body, MAX_BODY_BYTES).collect().await;
    let result = match body {
        Ok(collected) => answer(verdict, parts.status, &parts.headers, collected.to_bytes()),
        Err(error) => Err(match error.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => GatewayError::UpstreamInvalidResponse {
                reason: "body larger than the gateway reads",
            },
            Err(other) => GatewayError::UpstreamUnavailable(Arc::from(other)),
        }),
    };
    let health = if result.is_err() {
        Outcome::Failed
    } else {
        health
    };
    Exchanged {
        result,
        status: Some(parts.status),
        report,
        health,
    }
}

/// The response for a whole body `sent`: decoded if gzip, validated as JSON if an answer, with
/// the headers a caller may see. A validated gzip 200 carries its bytes as sent in
/// [`gzip::AsSent`]; the body is always the decoded form (a passed-through error stays plain).
fn answer(
    verdict: Verdict,
    status: StatusCode,
    upstream: &HeaderMap,
    sent: Bytes,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (body, as_sent) = match body_coding(upstream) {
        BodyCoding::Identity => (sent, None),
        BodyCoding::Gzip => {
            let decoded = gzip::decode(&sent, MAX_BODY_BYTES).map_err(|error| {
                GatewayError::UpstreamInvalidResponse {
                    reason: error.reason(),
                }
            })?;
            (decoded, Some(sent))
        }
        BodyCoding::Other => {
            return Err(GatewayError::UpstreamInvalidResponse {
                reason: "a content coding the gateway did not ask for",
            })
        }
    };
    if verdict == Verdict::Answer && !is_json(&body) {
        return Err(GatewayError::UpstreamInvalidResponse {
            reason: "a 200 answer whose body is not JSON",
        });
    }
    let mut headers = kept_headers(upstream);
    if verdict == Verdict::Answer {
        let content_type = answer_content_type(headers.get(CONTENT_TYPE));
        headers.insert(CONTENT_TYPE, content_type);
    }
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if let (Verdict::Answer, Some(as_sent)) = (verdict, as_sent) {
        response.extensions_mut().insert(gzip::AsSent(as_sent));
    }
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
    fn only_one_whole_json_value_is_json() {
        let rows: [(&[u8], bool); 7] = [
            (br#"{"usage":[]}"#, true),
            (b" [1, 2] \n", true),
            (b"<html><body>upstream maintenance</body></html>", false),
            (br#"{"usage":["#, false),
            (br#"{"a":1}{"b":2}"#, false),
            (b"", false),
            (b"\xff\xfe", false),
        ];
        for (body, json) in rows {
            assert_eq!(is_json(body), json, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn content_encoding_names_the_body_coding() {
        // (Content-Encoding lines, coding)
        let rows: &[(&[&'static str], BodyCoding)] = &[
            (&[], BodyCoding::Identity),
            (&["identity"], BodyCoding::Identity),
            (&["gzip"], BodyCoding::Gzip),
            (&[" GZip "], BodyCoding::Gzip),
            (&["x-gzip"], BodyCoding::Gzip),
            (&["br"], BodyCoding::Other),
            (&["deflate"], BodyCoding::Other),
            (&["gzip, gzip"], BodyCoding::Other),
            (&["gzip", "gzip"], BodyCoding::Other),
        ];
        for (lines, coding) in rows {
            let pairs: Vec<_> = lines.iter().map(|v| ("content-encoding", *v)).collect();
            assert_eq!(body_coding(&headers(&pairs)), *coding, "{lines:?}");
        }
    }

    #[test]
    fn a_gzip_answer_is_decoded_and_validated_and_keeps_its_bytes_as_sent() {
        let json = br#"{"usage":[]}"#;
        let sent = gzip::compress(json, 6);
        let gzipped = headers(&[("content-encoding", "gzip")]);
        let response = answer(Verdict::Answer, StatusCode::OK, &gzipped, sent.clone())
            .expect("a valid gzip answer");
        let as_sent = response.extensions().get::<gzip::AsSent>().expect("kept");
        assert_eq!(as_sent.0, sent);
        assert!(!response.headers().contains_key(CONTENT_ENCODING));
        // A passed-through error is decoded and carries no gzip form.
        let refused = answer(
            Verdict::PassThrough,
            StatusCode::NOT_FOUND,
            &gzipped,
            gzip::compress(br#"{"error":"sim_not_found"}"#, 6),
        )
        .expect("passed through");
        assert!(refused.extensions().get::<gzip::AsSent>().is_none());
        // (body as sent, reason refused)
        let rows = [
            (
                gzip::compress(b"<html>maintenance</html>", 6),
                "a 200 answer whose body is not JSON",
            ),
            (Bytes::from_static(json), "a gzip body that does not decode"),
            (
                gzip::compress(&vec![b' '; MAX_BODY_BYTES + 1], 9),
                "a gzip body decoding to more than the gateway reads",
            ),
        ];
        for (sent, reason) in rows {
            match answer(Verdict::Answer, StatusCode::OK, &gzipped, sent) {
                Err(GatewayError::UpstreamInvalidResponse { reason: got }) => {
                    assert_eq!(got, reason)
                }
                other => panic!("{reason}: {other:?}"),
            }
        }
        let brotli = headers(&[("content-encoding", "br")]);
        assert!(matches!(
            answer(
                Verdict::Answer,
                StatusCode::OK,
                &brotli,
                Bytes::from_static(json)
            ),
            Err(GatewayError::UpstreamInvalidResponse { .. })
        ));
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
    fn answers_are_labelled_json_whatever_the_upstream_said() {
        // (upstream Content-Type, served Content-Type)
        let rows = [
            (Some("application/json"), "application/json"),
            (
                Some("application/json; charset=utf-8"),
                "application/json; charset=utf-8",
            ),
            (Some("Application/JSON"), "Application/JSON"),
            (Some("application/problem+json"), "application/problem+json"),
            (Some("text/html"), "application/json"),
            (Some("text/html; a=application/json"), "application/json"),
            (Some("json"), "application/json"),
            (None, "application/json"),
        ];
        for (upstream, served) in rows {
            let upstream = upstream.map(HeaderValue::from_static);
            assert_eq!(
                answer_content_type(upstream.as_ref()),
                served,
                "{upstream:?}"
            );
        }
    }

    #[test]
    fn rate_limit_headers_become_a_report() {
        let now = 1_730_239_150;
        let ok = headers(&[
            ("x-ratelimit-remaining", "520"),
            ("x-ratelimit-reset", "1730239201"),
        ]);
        assert_eq!(
            rate_limit_report(StatusCode::OK, &ok, now),
            RateLimitReport {
                remaining: Some(520),
                reset_in: Some(Duration::from_secs(51)),
                throttled_for: None,
            }
        );
        let throttled = headers(&[("x-ratelimit-remaining", "0"), ("retry-after", "9")]);
        let report = rate_limit_report(StatusCode::TOO_MANY_REQUESTS, &throttled, now);
        assert_eq!(report.throttled_for, Some(Duration::from_secs(9)));
        assert_eq!(report.remaining, Some(0));
        assert_eq!(
            rate_limit_report(StatusCode::OK, &headers(&[]), now),
            RateLimitReport::default()
        );
    }
}
