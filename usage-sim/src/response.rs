//! The head every simulator answer carries (`application/json; charset=utf-8` and an explicit
//! `Content-Length`), and the bodies of the error catalogue (§8.8): `{"error":"<code>"}`.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::Body;

const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");

/// A JSON response with the headers every simulator response carries.
pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let len = body.len();
    json_head(status, Body::whole(body), len)
}

/// `json_response` for a body that is not sent whole; `len` is the announced length.
pub(crate) fn json_head(status: StatusCode, body: Body, len: usize) -> Response<Body> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, JSON);
    res.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    res
}

/// `{"error":"<code>"}`; the catalogue's codes come from static storage.
pub(crate) fn error_body(code: &'static str) -> Bytes {
    macro_rules! known {
        ($($c:literal),*) => {
            match code {
                $($c => Bytes::from_static(concat!("{\"error\":\"", $c, "\"}").as_bytes()),)*
                other => Bytes::from(format!("{{\"error\":\"{other}\"}}")),
            }
        };
    }
    known!(
        "limit_invalid",
        "offset_invalid",
        "group_invalid",
        "filter_invalid",
        "parameter_invalid",
        "next_page_invalid",
        "unauthorized",
        "sim_not_found",
        "tag_not_found",
        "not_found",
        "method_not_allowed",
        "rate_limit_exceeded",
        "internal_error",
        "bad_gateway",
        "service_unavailable",
        "gateway_timeout"
    )
}

pub(crate) fn error_response(status: StatusCode, code: &'static str) -> Response<Body> {
    json_response(status, error_body(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_bodies_are_static_and_well_formed() {
        let body = error_body("rate_limit_exceeded");
        assert_eq!(&body[..], br#"{"error":"rate_limit_exceeded"}"#);
        let v: serde_json::Value = serde_json::from_slice(&error_body("x_y")).expect("json");
        assert_eq!(v["error"], "x_y");
    }
}
