//! `RequestLimitsLayer`, a [`Gate`]: a request's size is checked before any other layer looks at it.
//!
//! - a request target longer than `server.max_uri_bytes` is 414 `uri_too_long`;
//! - header names and values over `server.max_header_bytes` in all are 431 `headers_too_large`;
//! - a GET whose `Content-Length` is above `server.max_body_bytes` is 413 `body_too_large`
//!   before a byte of its body is read, and its connection is closed (a smaller body is read
//!   and dropped by `discard.rs`: Onomondo's older examples send a JSON body on GET, and the
//!   upstream ignores it);
//! - a GET with any `Transfer-Encoding` is 400 `body_not_allowed`, its body unread. Clients
//!   that send a body on GET send a `Content-Length`; a chunked GET is how a request framed two
//!   ways (hyper drops `Content-Length` when `Transfer-Encoding` is present, RFC 9112 §6.3)
//!   would reach us, leaving room for a proxy in front to disagree with us about where the next
//!   request starts (request smuggling), so it is refused outright, as it always was.
//!
//! These are the gateway's own, JSON-answered limits. The connection-level backstops (hyper's
//! bound on the whole request head, the header read timeout, the connection cap) live in
//! `server.rs`; docs/SECURITY.md lists them all.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request};

use crate::config::RequestLimits;
use crate::error::{GatewayError, InvalidRequest};
use crate::gate::{Gate, GateLayer};

/// The request limits as a layer: `GateLayer::new(limits)`.
pub type RequestLimitsLayer = GateLayer<RequestLimits>;

impl<B> Gate<Request<B>> for RequestLimits {
    type Admitted = Request<B>;

    fn admit(&self, request: Request<B>) -> Result<Request<B>, GatewayError> {
        check(&request, self)?;
        Ok(request)
    }
}

/// Why a request is refused before it is looked at, if it is. Pure, so it is tested alone.
pub fn check<B>(request: &Request<B>, limits: &RequestLimits) -> Result<(), GatewayError> {
    let uri = request.uri();
    // Absolute-form targets (`GET http://host/usage`) count their authority too.
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            limit: limits.max_uri_bytes,
        });
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    if request.method() != Method::GET {
        return Ok(());
    }
    let headers = request.headers();
    if headers.contains_key(TRANSFER_ENCODING) {
        return Err(GatewayError::InvalidRequest(InvalidRequest::new(
            "body_not_allowed",
            "a GET to the gateway may carry a small body with Content-Length, never a Transfer-Encoding (and a usage question needs no body: it is all in the URL)",
        )));
    }
    // hyper has already refused a malformed or ambiguous Content-Length; any left over that
    // does not parse is too large for us all the same.
    let too_long = headers.get_all(CONTENT_LENGTH).iter().any(|length| {
        std::str::from_utf8(length.as_bytes())
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .is_none_or(|length| length > limits.max_body_bytes as u64)
    });
    if too_long {
        return Err(GatewayError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_uri_bytes: 64,
            max_header_bytes: 100,
            max_body_bytes: 16,
            ..RequestLimits::default()
        }
    }

    fn refusal(request: Request<()>) -> Option<&'static str> {
        check(&request, &limits()).err().map(|error| error.code())
    }

    fn get(target: &str) -> http::request::Builder {
        Request::builder().method(Method::GET).uri(target)
    }

    #[test]
    fn a_target_at_the_limit_passes_and_one_byte_more_is_too_long() {
        let at_limit = format!("/usage?limit=1&x={}", "a".repeat(64 - 17));
        assert_eq!(at_limit.len(), 64);
        assert_eq!(refusal(get(&at_limit).body(()).expect("request")), None);
        let over = format!("{at_limit}b");
        assert_eq!(
            refusal(get(&over).body(()).expect("request")),
            Some("uri_too_long")
        );
    }

    #[test]
    fn an_absolute_form_target_counts_its_authority() {
        let path = format!("/usage?x={}", "a".repeat(40));
        assert_eq!(refusal(get(&path).body(()).expect("request")), None);
        let absolute = format!("http://a-rather-long-host.example{path}");
        assert_eq!(
            refusal(get(&absolute).body(()).expect("request")),
            Some("uri_too_long")
        );
    }

    #[test]
    fn header_names_and_values_count_towards_the_header_limit() {
        let fits = get("/usage").header("x-a", "v".repeat(97)).body(());
        assert_eq!(refusal(fits.expect("request")), None);
        let over = get("/usage")
            .header("x-a", "v".repeat(90))
            .header("x-b", "v".repeat(10))
            .body(());
        assert_eq!(refusal(over.expect("request")), Some("headers_too_large"));
    }

    #[test]
    fn a_get_body_within_the_bound_passes_a_longer_or_chunked_one_is_refused() {
        // (headers, refusal) — limits() allows bodies of up to 16 bytes.
        type Row<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let rows: [Row; 8] = [
            (&[], None),
            (&[("content-length", "0")], None),
            (&[("content-length", "16")], None),
            (
                &[("transfer-encoding", "chunked")],
                Some("body_not_allowed"),
            ),
            (&[("content-length", "17")], Some("body_too_large")),
            (
                &[("content-length", "99999999999999999999999")],
                Some("body_too_large"),
            ),
            (
                &[("content-length", "5"), ("transfer-encoding", "chunked")],
                Some("body_not_allowed"),
            ),
            (
                &[("content-length", "0"), ("transfer-encoding", "chunked")],
                Some("body_not_allowed"),
            ),
        ];
        for (headers, expected) in rows {
            let mut request = get("/usage");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            assert_eq!(
                refusal(request.body(()).expect("request")),
                expected,
                "{headers:?}"
            );
        }
    }
}
