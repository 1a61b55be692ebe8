//! Simulator control endpoints under `/__sim/` (§8.3; not part of the upstream API).
//!
//! - `GET /__sim/stats`: counters (misbehaving answers by mode included), rate-limit state and
//!   the clock.
//! - `GET /__sim/requests`: the last 1000 API requests, oldest first.
//! - `POST /__sim/reset`: clears counters, the request log, rate-limit windows and the request
//!   counter that numbers fault draws (the clock and fault settings stay).
//! - `GET|POST /__sim/clock`: `{"now": "<rfc3339>"}` or `{"advance_s": N}`; answers `{"now"}`.
//! - `GET|POST /__sim/faults`: any subset of `{fail_rate, status, latency_ms, jitter_ms,
//!   misbehavior, misbehavior_rate, oversized_bytes, trickle_ms}`; answers the new fault state.
//!   An invalid update is a 400 and changes nothing; one out of range names its field.
//!
//! Guarantees: control requests are never counted or logged, never rate limited, and with
//! `--admin-token` require `X-Sim-Admin: <token>` (compared in constant time). Bodies are
//! capped at `MAX_BODY` bytes.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;

use crate::body::Body;
use crate::calendar::iso_ms;
use crate::faults::FaultUpdate;
use crate::options::{parse_time, RateScope};
use crate::response::{error_response, json_response};
use crate::simulator::Inner;

const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockUpdate {
    now: Option<String>,
    advance_s: Option<f64>,
}

fn ok_json(v: &Value) -> Response<Body> {
    json_response(StatusCode::OK, Bytes::from(v.to_string()))
}

fn invalid(message: &str) -> Response<Body> {
    let body = json!({"error": "body_invalid", "message": message});
    json_response(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()))
}

fn authorized(inner: &Inner, req: &Request<Incoming>) -> bool {
    match &inner.options.admin_token {
        None => true,
        Some(token) => req
            .headers()
            .get("x-sim-admin")
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(token.as_bytes()))),
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, String> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("could not read the body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn stats(inner: &Inner) -> Value {
    let now = inner.clock.now_ms();
    let mut out: Map<String, Value> = inner.stats.counters_json();
    let scope = match inner.options.rate_scope {
        RateScope::Key => "key",
        RateScope::Org => "org",
        RateScope::Off => "off",
    };
    let buckets: Map<String, Value> = inner
        .limiter
        .as_ref()
        .map(|l| l.snapshot(now))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, used, reset)| (name, json!({"used": used, "reset": reset})))
        .collect();
    out.insert(
        "rate_limit".into(),
        json!({
            "scope": scope,
            "limit": inner.options.rate_limit,
            "window_s": inner.options.rate_window,
            "buckets": buckets,
        }),
    );
    out.insert("now".into(), json!(iso_ms(now)));
    Value::Object(out)
}

fn clock_json(inner: &Inner) -> Value {
    json!({"now": iso_ms(inner.clock.now_ms())})
}

async fn set_clock(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let update: ClockUpdate = match read_json(req).await {
        Ok(u) => u,
        Err(m) => return invalid(&m),
    };
    match (update.now, update.advance_s) {
        (Some(now), None) => match parse_time(&now) {
            Ok(t) => {
                let ms = i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
                inner.clock.set_ms(ms);
            }
            Err(m) => return invalid(&m),
        },
        (None, Some(s)) if s.is_finite() => inner.clock.advance_ms((s * 1000.0).round() as i64),
        _ => {
            return invalid(
                "expected exactly one of {\"now\": \"<rfc3339>\"} or {\"advance_s\": N}",
            )
        }
    }
    ok_json(&clock_json(inner))
}

async fn set_faults(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let update: FaultUpdate = match read_json(req).await {
        Ok(u) => u,
        Err(m) => return invalid(&m),
    };
    match inner.faults.update(update) {
        Ok(state) => ok_json(&json!(state)),
        Err(m) => invalid(m),
    }
}

fn reset(inner: &Inner) -> Response<Body> {
    inner.stats.reset();
    if let Some(l) = &inner.limiter {
        l.reset();
    }
    inner.counter.store(0, std::sync::atomic::Ordering::Relaxed);
    ok_json(&json!({"reset": true}))
}

pub(crate) async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    if !authorized(inner, &req) {
        return error_response(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/__sim/stats", Method::GET) => ok_json(&stats(inner)),
        ("/__sim/requests", Method::GET) => ok_json(&inner.stats.requests_json()),
        ("/__sim/reset", Method::POST) => reset(inner),
        ("/__sim/clock", Method::GET) => ok_json(&clock_json(inner)),
        ("/__sim/clock", Method::POST) => set_clock(inner, req).await,
        ("/__sim/faults", Method::GET) => ok_json(&json!(inner.faults.get())),
        ("/__sim/faults", Method::POST) => set_faults(inner, req).await,
        (
            "/__sim/stats" | "/__sim/requests" | "/__sim/reset" | "/__sim/clock" | "/__sim/faults",
            _,
        ) => error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        _ => error_response(StatusCode::NOT_FOUND, "not_found"),
    }
}
