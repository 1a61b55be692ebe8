//! Misbehaving answers (`--misbehavior`, `POST /__sim/faults`): what an upstream that is
//! broken in transport or content sends instead of a normal 200.
//!
//! `answer` takes the normal answer's bytes (which it would otherwise send whole) and gives:
//! - `reset_mid_body`: 200 announcing the full `Content-Length`, the first half of the bytes
//!   (rounded down), then, once hyper has flushed them to the socket, the connection aborted:
//!   over HTTP/1.1 a TCP RST (`SO_LINGER` 0), so the client reads the half and then gets
//!   `ECONNRESET`; over HTTP/2 an `RST_STREAM` (`INTERNAL_ERROR`) and the connection stays.
//!   A reset discards what the kernel has not sent yet, so a client that is slow to read a
//!   large answer may get less than half.
//! - `short_body`: the same half, then a normal close: over HTTP/1.1 a FIN, so the client reads
//!   exactly the half and then end-of-file; over HTTP/2 the stream ends early (`END_STREAM`),
//!   which the client's HTTP/2 stack reports as a content-length violation.
//! - `not_json`: 200, `application/json`, an HTML maintenance page.
//! - `oversized`: 200, the normal object with a `"padding"` string making it at least
//!   `oversized_bytes` long (exactly that long when the answer is shorter).
//! - `trickle`: 200, the normal bytes in 10 chunks with `trickle_ms` before each after the first.
//! - `redirect`: 302 to `/usage?redirected=1` with `{"error":"moved"}`.
//! - `gzip`: 200, the normal bytes gzip-compressed, `Content-Encoding: gzip`, whatever the
//!   request's `Accept-Encoding`.
//!
//! Every misbehaving answer keeps the sim's JSON `Content-Type`; the caller adds the
//! rate-limit headers as on any answer.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::{HeaderValue, CONTENT_ENCODING, LOCATION, VARY};
use http::{Response, StatusCode, Version};

use crate::body::{Body, Ending};
use crate::conn::Conn;
use crate::faults::Misbehave;
use crate::options::Misbehavior;
use crate::response::{json_head, json_response};

/// The body of a `not_json` answer.
pub(crate) const NOT_JSON: &[u8] = b"<html><body>upstream maintenance</body></html>";
/// Where a `redirect` answer points.
pub(crate) const REDIRECT_TO: &str = "/usage?redirected=1";
const REDIRECT_BODY: &[u8] = br#"{"error":"moved"}"#;
/// How many pieces a `trickle` answer comes in.
pub(crate) const TRICKLE_CHUNKS: usize = 10;

/// What the simulator sends instead of the 200 answer `normal`, on a connection speaking
/// `version`.
pub(crate) fn answer(
    m: &Misbehave,
    normal: Bytes,
    conn: &Arc<Conn>,
    version: Version,
) -> Response<Body> {
    let len = normal.len();
    match m.mode {
        Misbehavior::None => json_response(StatusCode::OK, normal),
        Misbehavior::ResetMidBody => {
            // Over HTTP/2 a failed body resets only its stream; the connection stays up.
            let reset_tcp = version < Version::HTTP_2;
            let body = Body::cut(normal, Ending::Abort { reset_tcp }, Arc::clone(conn));
            json_head(StatusCode::OK, body, len)
        }
        Misbehavior::ShortBody => {
            let body = Body::cut(normal, Ending::Close, Arc::clone(conn));
            json_head(StatusCode::OK, body, len)
        }
        Misbehavior::NotJson => json_response(StatusCode::OK, Bytes::from_static(NOT_JSON)),
        Misbehavior::Oversized => json_response(StatusCode::OK, pad(&normal, m.oversized_bytes)),
        Misbehavior::Trickle => {
            let body = Body::trickle(normal, TRICKLE_CHUNKS, m.trickle);
            json_head(StatusCode::OK, body, len)
        }
        Misbehavior::Redirect => {
            let mut res = json_response(StatusCode::FOUND, Bytes::from_static(REDIRECT_BODY));
            res.headers_mut()
                .insert(LOCATION, HeaderValue::from_static(REDIRECT_TO));
            res
        }
        Misbehavior::Gzip => match gzip(&normal) {
            Ok(compressed) => {
                let mut res = json_response(StatusCode::OK, compressed);
                let h = res.headers_mut();
                h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
                res
            }
            Err(error) => {
                // Compressing into memory does not fail; should it, answer normally.
                tracing::warn!(%error, "gzip failed; sending the answer uncompressed");
                json_response(StatusCode::OK, normal)
            }
        },
    }
}

/// The JSON object `normal` with a `"padding"` string appended, at least `size` bytes long
/// (exactly `size` if `normal` leaves room for the field). Anything but an object is returned
/// unchanged; the simulator's answers are always objects.
pub(crate) fn pad(normal: &[u8], size: u64) -> Bytes {
    const FIELD: &[u8] = br#""padding":""#;
    let Some(open) = normal.strip_suffix(b"}") else {
        return Bytes::copy_from_slice(normal);
    };
    let comma = open.iter().rposition(|b| !b.is_ascii_whitespace()) != Some(0);
    // `open`, the comma, the field, the padding, the closing quote and brace.
    let fixed = open.len() + usize::from(comma) + FIELD.len() + 2;
    let padding = usize::try_from(size)
        .unwrap_or(usize::MAX)
        .saturating_sub(fixed);
    let mut out = Vec::with_capacity(fixed + padding);
    out.extend_from_slice(open);
    if comma {
        out.push(b',');
    }
    out.extend_from_slice(FIELD);
    out.resize(out.len() + padding, b'x');
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

/// `bytes` gzip-compressed (deterministic: no file name, modification time 0).
pub(crate) fn gzip(bytes: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        Compression::default(),
    );
    encoder.write_all(bytes)?;
    encoder.finish().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::io::Read;

    #[test]
    fn padding_makes_an_object_exactly_the_requested_size() {
        let normal = br#"{"usage":[1,2],"pagination":{"has_more":false}}"#;
        for size in [200, 1000, 9 * 1024 * 1024] {
            let padded = pad(normal, size);
            assert_eq!(padded.len() as u64, size);
            let mut v: Value = serde_json::from_slice(&padded).expect("valid JSON");
            let padding = v["padding"].as_str().expect("padding string").len();
            assert!(padding > 0);
            v.as_object_mut().expect("object").remove("padding");
            assert_eq!(v, serde_json::from_slice::<Value>(normal).expect("json"));
        }
    }

    #[test]
    fn padding_below_the_answer_size_still_adds_the_field() {
        let padded = pad(br#"{"a":1}"#, 1);
        assert_eq!(&padded[..], br#"{"a":1,"padding":""}"#);
        assert_eq!(&pad(b"{}", 1)[..], br#"{"padding":""}"#);
        assert_eq!(pad(b"{}", 40).len(), 40);
    }

    #[test]
    fn gzip_round_trips() {
        let normal = json!({"usage": vec![json!({"bytes": 1}); 50]}).to_string();
        let compressed = gzip(normal.as_bytes()).expect("gzip");
        assert!(compressed.len() < normal.len());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_string(&mut out)
            .expect("gunzip");
        assert_eq!(out, normal);
        assert_eq!(compressed, gzip(normal.as_bytes()).expect("gzip"));
    }
}
