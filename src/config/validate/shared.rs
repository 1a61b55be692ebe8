//! `[shared]`: the Redis URL (from exactly one source, checked by redis-rs's own parser and
//! never repeated in a problem: it may hold a password), the key prefix, the instance id, and
//! the timeouts and breaker of the shared tier.

use std::path::PathBuf;
use std::time::Duration;

use redis::IntoConnectionInfo as _;

use super::bounded;
use super::narrow;
use super::upstream::read_token_file;
use crate::config::raw::RawShared;
use crate::config::secret::{RedisUrl, Secret};
use crate::config::{
    SharedConfig, DEFAULT_FILL_LEASE_MS, DEFAULT_FILL_WAIT_MS, DEFAULT_HOP_MARGIN_MS,
    DEFAULT_KEY_PREFIX, DEFAULT_PURGE_STREAM_LENGTH, DEFAULT_REDIS_BREAKER_COOLDOWN_MS,
    DEFAULT_REDIS_BREAKER_FAILURES, DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
    DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
};

pub(super) fn validate(raw: RawShared, problems: &mut Vec<String>) -> Option<SharedConfig> {
    let redis_url = read_url(
        raw.redis_url,
        raw.redis_url_file,
        raw.redis_url_env,
        problems,
    );
    let key_prefix = raw
        .key_prefix
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
    if !is_key_prefix(&key_prefix) {
        problems.push(
            "shared.key_prefix: use 1 to 64 letters, digits, `-`, `_`, `.` or `:` (braces would change which keys Redis Cluster keeps together)"
                .to_owned(),
        );
    }
    if let Some(id) = &raw.instance_id {
        if !(1..=128).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push(
                "shared.instance_id: use 1 to 128 visible ASCII characters, no spaces".to_owned(),
            );
        }
    }
    let mut setting = |value: Option<u64>, default: u64, key: &str, min: u64, max: u64| {
        bounded(
            value.unwrap_or(default),
            &format!("shared.{key}"),
            min,
            max,
            problems,
        )
    };
    let connect_timeout_ms = setting(
        raw.connect_timeout_ms,
        DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
        "connect_timeout_ms",
        1,
        60_000,
    );
    let command_timeout_ms = setting(
        raw.command_timeout_ms,
        DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
        "command_timeout_ms",
        1,
        60_000,
    );
    let hop_margin_ms = setting(
        raw.hop_margin_ms,
        DEFAULT_HOP_MARGIN_MS,
        "hop_margin_ms",
        0,
        30_000,
    );
    let breaker_failures = setting(
        raw.breaker_failures,
        DEFAULT_REDIS_BREAKER_FAILURES,
        "breaker_failures",
        1,
        1_000,
    );
    let breaker_cooldown_ms = setting(
        raw.breaker_cooldown_ms,
        DEFAULT_REDIS_BREAKER_COOLDOWN_MS,
        "breaker_cooldown_ms",
        10,
        600_000,
    );
    let fill_lease_ms = setting(
        raw.fill_lease_ms,
        DEFAULT_FILL_LEASE_MS,
        "fill_lease_ms",
        100,
        600_000,
    );
    let fill_wait_ms = setting(
        raw.fill_wait_ms,
        DEFAULT_FILL_WAIT_MS,
        "fill_wait_ms",
        0,
        600_000,
    );
    let purge_stream_length = setting(
        raw.purge_stream_length,
        DEFAULT_PURGE_STREAM_LENGTH,
        "purge_stream_length",
        10,
        1_000_000,
    );
    Some(SharedConfig {
        redis_url: redis_url?,
        key_prefix,
        instance_id: raw.instance_id,
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        command_timeout: Duration::from_millis(command_timeout_ms),
        hop_margin: Duration::from_millis(hop_margin_ms),
        breaker_failures: narrow(breaker_failures),
        breaker_cooldown: Duration::from_millis(breaker_cooldown_ms),
        fill_lease: Duration::from_millis(fill_lease_ms),
        fill_wait: Duration::from_millis(fill_wait_ms),
        purge_stream_length,
    })
}

fn is_key_prefix(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The URL from its one source, parsed as redis-rs parses it.
fn read_url(
    url: Option<Secret>,
    file: Option<PathBuf>,
    env: Option<String>,
    problems: &mut Vec<String>,
) -> Option<RedisUrl> {
    let url = match (url, file, env) {
        (Some(url), None, None) => url,
        (None, Some(path), None) => match read_token_file(&path) {
            Ok(text) => Secret::new(text.trim_end_matches(['\r', '\n'])),
            Err(e) => {
                problems.push(format!(
                    "shared.redis_url_file: cannot read {}: {e}",
                    path.display()
                ));
                return None;
            }
        },
        (None, None, Some(variable)) => match std::env::var(&variable) {
            Ok(url) => Secret::new(url),
            Err(_) => {
                problems.push(format!(
                    "shared.redis_url_env: the environment variable {variable} is not set"
                ));
                return None;
            }
        },
        (None, None, None) => {
            problems.push(
                "shared.redis_url: missing: set shared.redis_url, shared.redis_url_file or shared.redis_url_env (or leave out [shared] to run one process on its own)"
                    .to_owned(),
            );
            return None;
        }
        _ => {
            problems.push(
                "shared: redis_url, redis_url_file and redis_url_env are alternatives: set exactly one"
                    .to_owned(),
            );
            return None;
        }
    };
    match shown(url.expose()) {
        Ok(shown) => Some(RedisUrl::new(url, shown)),
        Err(why) => {
            // Never the URL itself: it may carry a password.
            problems.push(format!("shared.redis_url: {why}"));
            None
        }
    }
}

/// Where `url` leads, for display: scheme, host and port (or socket path) and database; or
/// why it is no Redis URL, in words that never quote it.
fn shown(url: &str) -> Result<String, &'static str> {
    const NOT_REDIS: &str =
        "is not a Redis URL: use redis://host:port, rediss://host:port (TLS) or unix:///path/to/socket";
    let parsed = redis::parse_redis_url(url).ok_or(NOT_REDIS)?;
    let scheme = match parsed.scheme() {
        "redis" | "valkey" => "redis",
        "rediss" | "valkeys" => "rediss",
        "unix" | "redis+unix" | "valkey+unix" => "unix",
        _ => return Err(NOT_REDIS),
    };
    let shown = if scheme == "unix" {
        format!("unix://{}", parsed.path())
    } else {
        let Some(host) = parsed.host_str().filter(|host| !host.is_empty()) else {
            return Err("has no host");
        };
        let database = parsed.path().trim_matches('/');
        let database = if database.is_empty() {
            String::new()
        } else {
            format!("/{database}")
        };
        format!(
            "{scheme}://{host}:{}{database}",
            parsed.port().unwrap_or(6379)
        )
    };
    // The parser the connection will use: what passes here connects the same way.
    parsed.into_connection_info().map_err(|_| {
        "cannot be used: check the database number and the protocol (the URL is not shown: it may hold a password)"
    })?;
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        // (url, shown)
        let rows = [
            ("redis://127.0.0.1:6390", "redis://127.0.0.1:6390"),
            (
                "redis://:hunter2@cache.internal/2",
                "redis://cache.internal:6379/2",
            ),
            (
                "redis://user:hunter2@cache.internal:7000",
                "redis://cache.internal:7000",
            ),
            (
                "rediss://user:hunter2@cache.internal",
                "rediss://cache.internal:6379",
            ),
            (
                "unix:///run/redis.sock?pass=hunter2",
                "unix:///run/redis.sock",
            ),
            (
                "redis+unix:///run/redis.sock?db=3",
                "unix:///run/redis.sock",
            ),
        ];
        for (url, expected) in rows {
            assert_eq!(shown(url).as_deref(), Ok(expected), "{url}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        for url in [
            "http://:hunter2@cache.internal",
            "hunter2",
            "redis://:hunter2@cache.internal/notanumber",
            "redis://cache.internal/?protocol=hunter2",
        ] {
            let why = shown(url).expect_err("refused");
            assert!(!why.contains("hunter2"), "{url}: {why}");
        }
    }
}
