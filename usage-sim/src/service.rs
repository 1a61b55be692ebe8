//! The HTTP face of the simulator: the API handler and `serve`.
//!
//! Order of checks for an API request (§8.4, §8.6, §8.7): latency injection; auth (401, not
//! counted by the limiter); rate limit (429); route (404 `not_found`); method (405); injected
//! failure (5xx); query validation (400s); resource lookup (404 `sim_not_found` /
//! `tag_not_found`); the page, or instead a misbehaving answer (`super::misbehave`) if the
//! fault plan draws one for this request number. Every response to an authenticated request
//! carries the three `x-ratelimit-*` headers (unless `--rate-scope off`), and every response is
//! labelled `application/json; charset=utf-8` with an explicit `Content-Length` (only a
//! misbehaving answer breaks either promise).
//!
//! `serve` is a small accept loop of its own: each connection's socket is a `conn::SimIo`, so a
//! misbehaving body can wait for its bytes to be flushed and can make the connection's close a
//! TCP reset. HTTP/1.1 and HTTP/2, `TCP_NODELAY`, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::auth::{authenticate, ApiKey, AuthForm, AuthOutcome};
use crate::body::Body;
use crate::conn::{Conn, SimIo};
use crate::control;
use crate::cursor::{fingerprint, Fingerprint};
use crate::faults::{fault_code, plan, FaultPlan};
use crate::misbehave;
use crate::options::{CursorMode, RateScope};
use crate::page::{render_tag, render_usage, tag_rows, tag_rows_bound, Selection};
use crate::query::{self, FilterKeys, Strictness, UsageQuery};
use crate::ratelimit::Decision;
use crate::response::{error_response, json_response};
use crate::simulator::{Inner, Simulator};
use crate::stats::{Endpoint, LoggedAuth, Observation};

/// A failure with its status and catalogue code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
}

impl ApiError {
    const fn new(status: StatusCode, code: &'static str) -> ApiError {
        ApiError { status, code }
    }
}

const NEXT_PAGE_INVALID: ApiError = ApiError::new(StatusCode::BAD_REQUEST, "next_page_invalid");

impl From<query::QueryError> for ApiError {
    fn from(e: query::QueryError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.code())
    }
}

/// The API routes (§8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Usage,
    UsageBySim(&'a str),
    TagTotal(&'a str),
    NotFound,
}

impl Route<'_> {
    fn endpoint(self) -> Endpoint {
        match self {
            Route::Usage => Endpoint::Usage,
            Route::UsageBySim(_) => Endpoint::UsageBySim,
            Route::TagTotal(_) => Endpoint::TagTotal,
            Route::NotFound => Endpoint::Other,
        }
    }
}

fn single_segment(rest: &str) -> Option<&str> {
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

fn route(path: &str) -> Route<'_> {
    if path == "/usage" {
        return Route::Usage;
    }
    if let Some(rest) = path.strip_prefix("/usage/tag-total/") {
        return single_segment(rest).map_or(Route::NotFound, Route::TagTotal);
    }
    if let Some(rest) = path.strip_prefix("/usage/") {
        return single_segment(rest).map_or(Route::NotFound, Route::UsageBySim);
    }
    Route::NotFound
}

fn strictness(inner: &Inner) -> Strictness {
    Strictness {
        filters: inner.options.strict_filters,
        limit: inner.options.strict_limit,
    }
}

/// The fingerprint binding opaque cursors to this query; digit cursors bind to nothing.
fn query_fingerprint(inner: &Inner, path: &str, q: &UsageQuery<'_>, key: &ApiKey) -> Fingerprint {
    match inner.cursors.mode() {
        CursorMode::Digits => [0; 16],
        CursorMode::Opaque => fingerprint(path, q.hours, &q.filters, &key.scope.tags),
    }
}

/// The start position: a valid cursor (at most `bound`) overrides `offset`.
fn start_position(
    inner: &Inner,
    q: &UsageQuery<'_>,
    fp: &Fingerprint,
    bound: usize,
) -> Result<u64, ApiError> {
    match &q.next_page {
        None => Ok(q.offset),
        Some(c) => inner
            .cursors
            .decode(c, fp)
            .filter(|&p| p <= bound as u64)
            .ok_or(NEXT_PAGE_INVALID),
    }
}

fn next_cursor(
    inner: &Inner,
    has_more: bool,
    pos: u64,
    limit: u32,
    fp: &Fingerprint,
) -> Option<String> {
    has_more.then(|| inner.cursors.encode(pos + u64::from(limit), fp))
}

fn usage(
    inner: &Inner,
    key: &ApiKey,
    path: &str,
    sim_segment: Option<&str>,
    raw_query: &str,
) -> Result<Bytes, ApiError> {
    let q = query::parse(raw_query, FilterKeys::Usage, strictness(inner))?;
    let data = &inner.data;
    let view = if q.hours { &data.hourly } else { &data.raw };
    let fp = query_fingerprint(inner, path, &q, key);
    let pos = start_position(inner, &q, &fp, view.recs.len())?;
    let path_sim = match sim_segment {
        None => None,
        Some(id) => Some(
            data.find_sim(id)
                .filter(|&s| key.scope.sees_sim(s))
                .ok_or(ApiError::new(StatusCode::NOT_FOUND, "sim_not_found"))?,
        ),
    };
    let selection = Selection {
        view,
        filters: &q.filters,
        path_sim,
        scope: &key.scope,
        sim_count: data.sims.len(),
    };
    let page = selection.page(pos, q.limit);
    let next = next_cursor(inner, page.has_more, pos, q.limit, &fp);
    Ok(render_usage(view, &page, next.as_deref()))
}

fn tag_total(
    inner: &Inner,
    key: &ApiKey,
    path: &str,
    tag_segment: &str,
    raw_query: &str,
) -> Result<Bytes, ApiError> {
    let q = query::parse(raw_query, FilterKeys::TagTotal, strictness(inner))?;
    let data = &inner.data;
    let fp = query_fingerprint(inner, path, &q, key);
    let pos = start_position(inner, &q, &fp, tag_rows_bound(data, q.hours))?;
    let tag = data
        .find_tag(tag_segment)
        .filter(|&t| key.scope.sees_tag(t))
        .ok_or(ApiError::new(StatusCode::NOT_FOUND, "tag_not_found"))?;
    let shape = inner.options.record_shape;
    let rows = tag_rows(data, tag, &q.filters, q.hours, shape);
    let has_more = pos.saturating_add(u64::from(q.limit)) < rows.len() as u64;
    let next = next_cursor(inner, has_more, pos, q.limit, &fp);
    let tag_id = &data.tags[tag as usize].id;
    let start = usize::try_from(pos).unwrap_or(usize::MAX);
    Ok(render_tag(
        &rows,
        tag_id,
        shape,
        start,
        q.limit as usize,
        next.as_deref(),
    ))
}

/// Everything after auth and the rate limit.
fn respond(
    inner: &Inner,
    req: &Request<Incoming>,
    route: Route<'_>,
    key: &ApiKey,
    fault: &FaultPlan,
    conn: &Arc<Conn>,
) -> Response<Body> {
    if route == Route::NotFound {
        return error_response(StatusCode::NOT_FOUND, "not_found");
    }
    if req.method() != Method::GET {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    if let Some(status) = fault.fail_status {
        let code = fault_code(status).unwrap_or("service_unavailable");
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return error_response(status, code);
    }
    let path = req.uri().path();
    let raw_query = req.uri().query().unwrap_or("");
    let result = match route {
        Route::Usage => usage(inner, key, path, None, raw_query),
        Route::UsageBySim(id) => usage(inner, key, path, Some(id), raw_query),
        Route::TagTotal(id) => tag_total(inner, key, path, id, raw_query),
        Route::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found")),
    };
    match (result, &fault.misbehave) {
        (Ok(body), None) => json_response(StatusCode::OK, body),
        (Ok(body), Some(m)) => {
            inner.stats.misbehaved(m.mode);
            misbehave::answer(m, body, conn, req.version())
        }
        (Err(e), _) => error_response(e.status, e.code),
    }
}

fn add_rate_headers(res: &mut Response<Body>, d: &Decision, retry_after: bool) {
    let h = res.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_s));
    if !d.allowed && retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(d.retry_after_s.max(0)));
    }
}

/// One API request, start to finish, including its stats entry.
async fn api(inner: &Inner, conn: &Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let n = inner.counter.fetch_add(1, Ordering::Relaxed);
    let fault = plan(inner.options.seed, n, &inner.faults.get());
    if !fault.delay.is_zero() {
        tokio::time::sleep(fault.delay).await;
    }
    let route = route(req.uri().path());
    let outcome = authenticate(
        req.headers().get(AUTHORIZATION),
        inner.options.auth_mode,
        &inner.keys,
    );
    let (res, key, logged) = match outcome {
        AuthOutcome::Missing => (
            error_response(StatusCode::UNAUTHORIZED, "unauthorized"),
            None,
            LoggedAuth::None,
        ),
        AuthOutcome::Rejected => (
            error_response(StatusCode::UNAUTHORIZED, "unauthorized"),
            None,
            LoggedAuth::Invalid,
        ),
        AuthOutcome::Accepted(i, form) => {
            let key = &inner.keys[i];
            let decision = inner.limiter.as_ref().map(|l| {
                let bucket = match inner.options.rate_scope {
                    RateScope::Org => "org",
                    RateScope::Key | RateScope::Off => key.key.as_str(),
                };
                l.check(bucket, inner.clock.now_ms())
            });
            let mut res = match decision {
                Some(d) if !d.allowed => {
                    error_response(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded")
                }
                _ => respond(inner, &req, route, key, &fault, conn),
            };
            if let Some(d) = decision {
                add_rate_headers(&mut res, &d, inner.options.retry_after);
            }
            let logged = match form {
                AuthForm::Raw => LoggedAuth::Raw,
                AuthForm::Bearer => LoggedAuth::Bearer,
            };
            (res, Some(i), logged)
        }
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    inner.stats.record(&Observation {
        endpoint: route.endpoint(),
        key,
        auth: logged,
        status: res.status().as_u16(),
        method: req.method(),
        target,
    });
    res
}

async fn handle(
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let res = if path == "/__sim" || path.starts_with("/__sim/") {
        control::handle(&inner, req).await
    } else {
        api(&inner, &conn, req).await
    };
    Ok(res)
}

/// How long open connections may finish once the simulator stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves the simulator on `listener` until `shutdown` completes, then drains open connections
/// for up to `DRAIN_TIMEOUT`. Each socket is wrapped in a `SimIo` whose `Conn` the connection's
/// requests share (to cut a body short or reset).
///
/// Not the gateway's accept loop (`usage_gateway::server`): the simulator is its own crate and
/// must not depend on the gateway it tests. So this one is minimal: no connection limits or
/// per-connection timeouts beyond hyper's default HTTP/1.1 header-read timeout.
pub async fn serve(
    sim: Simulator,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let inner = sim.inner;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                // Small JSON answers: send them at once rather than wait for Nagle.
                let _ = stream.set_nodelay(true);
                let conn = Arc::new(Conn::default());
                let io = TokioIo::new(SimIo::new(stream, Arc::clone(&conn)));
                let inner = Arc::clone(&inner);
                let service = hyper::service::service_fn(move |req| {
                    handle(Arc::clone(&inner), Arc::clone(&conn), req)
                });
                let connection = graceful.watch(builder.serve_connection(io, service).into_owned());
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Asks every connection to finish (HTTP/1.1: no more keep-alive; HTTP/2: GOAWAY).
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(?DRAIN_TIMEOUT, "connections still open after the drain timeout");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_the_three_usage_endpoints() {
        let rows = [
            ("/usage", Route::Usage),
            ("/usage/000000001", Route::UsageBySim("000000001")),
            ("/usage/tag-total/abc", Route::TagTotal("abc")),
            ("/usage/", Route::NotFound),
            ("/usage/tag-total/", Route::NotFound),
            ("/usage/1/2", Route::NotFound),
            ("/usagex", Route::NotFound),
            ("/", Route::NotFound),
        ];
        for (path, want) in rows {
            assert_eq!(route(path), want, "path {path}");
        }
    }
}
