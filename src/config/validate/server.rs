//! `[server]`: where the gateway listens, how it shuts down, and what one request and one
//! connection may cost (`[server.cors]` too).

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

use super::{bounded, narrow};
use crate::config::raw::{RawCors, RawServer};
use crate::config::{
    CorsConfig, RequestLimits, ServerConfig, DEFAULT_AUTH_FAILURES_PER_MINUTE,
    DEFAULT_HEADER_TIMEOUT_MS, DEFAULT_HTTP2_MAX_STREAMS, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_FILTERS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_REQUESTS_PER_CONNECTION, DEFAULT_MAX_URI_BYTES, DEFAULT_SEND_TIMEOUT_MS,
    DEFAULT_SHUTDOWN_GRACE_SECS,
};

pub(super) fn validate(raw: &RawServer, problems: &mut Vec<String>) -> ServerConfig {
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.push(format!(
            "server.listen: `{listen}` is not an address like 127.0.0.1:8080"
        ));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let shutdown_grace = Duration::from_secs(bounded(
        raw.shutdown_grace_secs
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS),
        "server.shutdown_grace_secs",
        0,
        3_600,
        problems,
    ));
    let worker_threads = raw
        .worker_threads
        .map(|threads| bounded(threads, "server.worker_threads", 1, 1_024, problems) as usize);
    let limits = limits(raw, problems);
    let cors = cors(raw.cors.as_ref(), problems);
    let auth_failures_per_minute = narrow(bounded(
        raw.auth_failures_per_minute
            .unwrap_or(DEFAULT_AUTH_FAILURES_PER_MINUTE),
        "server.auth_failures_per_minute",
        1,
        1_000_000,
        problems,
    ));
    ServerConfig {
        listen,
        auth_failures_per_minute,
        shutdown_grace,
        worker_threads,
        limits,
        cors,
    }
}

fn limits(raw: &RawServer, problems: &mut Vec<String>) -> RequestLimits {
    let mut setting = |value: Option<u64>, default: u64, key: &str, min: u64, max: u64| {
        // Every bound below is far under usize::MAX on any platform the gateway builds for.
        bounded(value.unwrap_or(default), key, min, max, problems) as usize
    };
    RequestLimits {
        // hyper itself answers 414 past 64 KiB, whatever is configured here.
        max_uri_bytes: setting(
            raw.max_uri_bytes,
            DEFAULT_MAX_URI_BYTES,
            "server.max_uri_bytes",
            256,
            65_000,
        ),
        max_header_bytes: setting(
            raw.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            "server.max_header_bytes",
            1024,
            1024 * 1024,
        ),
        max_filters: setting(
            raw.max_filters,
            DEFAULT_MAX_FILTERS,
            "server.max_filters",
            1,
            1_000,
        ),
        // Old API examples send a small JSON body on GET; it is read and dropped, never kept.
        max_body_bytes: setting(
            raw.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            "server.max_body_bytes",
            0,
            1024 * 1024,
        ),
        header_timeout: Duration::from_millis(setting(
            raw.header_timeout_ms,
            DEFAULT_HEADER_TIMEOUT_MS,
            "server.header_timeout_ms",
            100,
            600_000,
        ) as u64),
        max_connections: setting(
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            "server.max_connections",
            1,
            1_000_000,
        ),
        send_timeout: Duration::from_millis(setting(
            raw.send_timeout_ms,
            DEFAULT_SEND_TIMEOUT_MS,
            "server.send_timeout_ms",
            100,
            600_000,
        ) as u64),
        max_requests_per_connection: setting(
            raw.max_requests_per_connection,
            DEFAULT_MAX_REQUESTS_PER_CONNECTION,
            "server.max_requests_per_connection",
            1,
            10_000_000,
        ),
        http2_max_streams: setting(
            raw.http2_max_streams,
            DEFAULT_HTTP2_MAX_STREAMS,
            "server.http2_max_streams",
            1,
            10_000,
        ) as u32,
    }
}

/// `[server.cors] allow_origins`: each a serialized origin, `scheme://host[:port]`, as a
/// browser sends it in `Origin`. `*` and `null` are refused: a key in a page is only as safe
/// as the pages that may use it, so each origin is named.
fn cors(raw: Option<&RawCors>, problems: &mut Vec<String>) -> CorsConfig {
    let origins = raw
        .and_then(|cors| cors.allow_origins.as_deref())
        .unwrap_or_default();
    let allow_origins = origins
        .iter()
        .filter_map(|origin| match parse_origin(origin) {
            Ok(origin) => Some(origin),
            Err(why) => {
                // Never echo what might be a user name and password.
                let shown = if origin.contains('@') {
                    "[redacted]"
                } else {
                    origin
                };
                problems.push(format!("server.cors.allow_origins: `{shown}` {why}"));
                None
            }
        })
        .collect();
    CorsConfig { allow_origins }
}

/// A serialized origin (RFC 6454 §6.2), lower-cased as browsers send it.
fn parse_origin(text: &str) -> Result<String, &'static str> {
    if text == "*" || text.eq_ignore_ascii_case("null") {
        return Err("is not allowed: name each origin, like https://dashboard.example.com");
    }
    let uri: Uri = text
        .parse()
        .map_err(|_| "is not an origin like https://dashboard.example.com")?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err("must start with https:// (or http://)"),
    }
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry a user name or password");
    }
    if text.ends_with('/') || uri.path() != "/" || uri.query().is_some() {
        return Err("must be scheme://host[:port] alone, without a path or a trailing slash");
    }
    Ok(text.to_ascii_lowercase())
}
