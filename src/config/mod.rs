//! Configuration: a TOML file (plus `USAGE_GATEWAY__SECTION__KEY` environment overrides) read
//! once into raw serde structs, then validated section by section into the typed [`Config`].
//!
//! - `raw`: the file and the environment as written, layered by the `config` crate;
//! - `secret`: [`Secret`] (tokens, caller keys) and [`BaseUrl`], which never show a credential;
//! - `redact`: config errors rendered from their structure, never quoting a value;
//! - `validate`: one module per section; every problem at once, each with its key path.
//!
//! No error and no `Debug` of this module shows a secret: the fuzzer's `config_load` target and
//! the properties in `tests/properties.rs` hold it to that.

mod raw;
mod redact;
mod secret;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::caller::Scope;
use serde::Deserialize;

use raw::{Environment, File, Raw};
pub use secret::{hash_key, without_userinfo, BaseUrl, RedisUrl, Secret};

/// Prefix of environment overrides: `USAGE_GATEWAY__UPSTREAM__TOKEN` sets `upstream.token`.
pub const ENV_PREFIX: &str = "USAGE_GATEWAY";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_BASE_URL: &str = "https://api.onomondo.com";
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_TTL_SECS: u64 = 60;
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u64 = 600;
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 2_000;
pub const DEFAULT_MAX_CONCURRENCY: u64 = 16;
pub const DEFAULT_RETRIES: u64 = 1;
pub const DEFAULT_BREAKER_FAILURES: u64 = 5;
pub const DEFAULT_BREAKER_COOLDOWN_SECS: u64 = 10;
pub const DEFAULT_STALE_WHILE_REVALIDATE_SECS: u64 = 30;
pub const DEFAULT_STALE_IF_ERROR_SECS: u64 = 3_600;
pub const DEFAULT_LATE_DATA_GRACE_SECS: u64 = 172_800;
pub const DEFAULT_CLOSED_PERIOD_TTL_SECS: u64 = 86_400;
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u64 = 60;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
pub const DEFAULT_MAX_URI_BYTES: u64 = 8 * 1024;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
pub const DEFAULT_MAX_FILTERS: u64 = 32;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024;
/// The largest upstream body the gateway reads (decoded); a full 1000-record page is a few
/// hundred KiB. No stored answer can be larger, which bounds `cache.max_entry_bytes`.
pub const MAX_UPSTREAM_BODY_BYTES: usize = 32 * 1024 * 1024;
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: u64 = 10_000;
pub const DEFAULT_HTTP2_MAX_STREAMS: u64 = 128;
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_KEY_PREFIX: &str = "usage-gateway";
pub const DEFAULT_REDIS_CONNECT_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_REDIS_COMMAND_TIMEOUT_MS: u64 = 250;
pub const DEFAULT_HOP_MARGIN_MS: u64 = 1_000;
pub const DEFAULT_REDIS_BREAKER_FAILURES: u64 = 3;
pub const DEFAULT_REDIS_BREAKER_COOLDOWN_MS: u64 = 1_000;
pub const DEFAULT_FILL_LEASE_MS: u64 = 2_000;
pub const DEFAULT_FILL_WAIT_MS: u64 = 12_000;
pub const DEFAULT_PURGE_STREAM_LENGTH: u64 = 1_000;
/// The name `[[callers]] upstream` uses for the `[upstream]` table's own credential.
pub const DEFAULT_PROFILE: &str = "default";

/// How the organization token is written in the upstream `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// `Authorization: <token>`, the API's documented form.
    Raw,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Shared upstream settings, and the default credential profile.
    pub upstream: UpstreamConfig,
    /// Further named credential profiles (`[[upstreams]]`).
    pub profiles: Vec<ProfileConfig>,
    pub cache: CacheConfig,
    pub callers: Vec<CallerConfig>,
    /// `[shared]`: the Redis tier of several replicas; `None` is one process on its own.
    pub shared: Option<SharedConfig>,
}

/// `[shared]`: where the replicas' shared state lives and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// `redis://`, `rediss://` (TLS) or `unix://`; shown only without its credentials.
    pub redis_url: RedisUrl,
    /// Every key this gateway writes starts with it, so several deployments can share a Redis.
    pub key_prefix: String,
    /// This replica's name in Redis and on the status page; `None`: `hostname:pid:random`,
    /// chosen at start (so a reload never sees it change).
    pub instance_id: Option<String>,
    pub connect_timeout: Duration,
    /// Bound on one Redis command; past it the command counts as failed (and the call
    /// waiting on it is refused, never sent unaccounted).
    pub command_timeout: Duration,
    /// How much longer than 60 s a call stays in the shared log: the time between the budget
    /// take (on Redis's clock) and the call's arrival upstream may differ from call to call.
    pub hop_margin: Duration,
    /// Consecutive failed Redis commands that open the Redis breaker.
    pub breaker_failures: u32,
    /// How long the Redis breaker stays open before one command probes.
    pub breaker_cooldown: Duration,
    /// The lease of a cross-replica fill lock: its holder renews it (every third of it) while
    /// it fetches; a holder that dies stops renewing and a waiter takes over once it runs out.
    pub fill_lease: Duration,
    /// How long a request waits for another replica's fill of the same question before it is
    /// answered stale or refused, as a request whose fetch timed out.
    pub fill_wait: Duration,
    /// About how many purge messages the purge stream keeps (`XADD MAXLEN ~`): a replica that
    /// falls further behind (or finds Redis restarted) drops its memory cache instead.
    pub purge_stream_length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Failed authentications one client address may make per minute before it is refused.
    pub auth_failures_per_minute: u32,
    /// How long in-flight requests may run on after shutdown begins.
    pub shutdown_grace: Duration,
    /// Runtime worker threads; `None` is one per core.
    pub worker_threads: Option<usize>,
    /// What one request and one connection may cost (docs/SECURITY.md lists each limit).
    pub limits: RequestLimits,
    /// Which browser origins may call the gateway (`[server.cors]`).
    pub cors: CorsConfig,
}

/// `[server.cors]`: the web origins whose pages may call the gateway from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Serialized origins (`https://dash.example.com`, lower-case, no path); empty means no
    /// CORS headers at all, so browsers keep every other origin out.
    pub allow_origins: Vec<String>,
}

/// The bounds a hostile or broken client meets before any of its requests costs more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest request target (path and query); longer is 414.
    pub max_uri_bytes: usize,
    /// Most bytes of header names and values; more is 431.
    pub max_header_bytes: usize,
    /// Most `filter` parameters in one query; more is 400.
    pub max_filters: usize,
    /// Largest body a request may carry; it is read and dropped, and a larger one is 413.
    pub max_body_bytes: usize,
    /// How long a connection may take to send a request's headers, and may sit idle between
    /// requests, before it is closed.
    pub header_timeout: Duration,
    /// Most client connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest a response write may make no progress (a peer that stops reading) before the
    /// connection is closed; also how long an HTTP/2 keep-alive ping may go unanswered.
    pub send_timeout: Duration,
    /// Requests (pipelined or not) one connection may carry before it is closed.
    pub max_requests_per_connection: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub http2_max_streams: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_uri_bytes: DEFAULT_MAX_URI_BYTES as usize,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES as usize,
            max_filters: DEFAULT_MAX_FILTERS as usize,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES as usize,
            header_timeout: Duration::from_millis(DEFAULT_HEADER_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            send_timeout: Duration::from_millis(DEFAULT_SEND_TIMEOUT_MS),
            max_requests_per_connection: DEFAULT_MAX_REQUESTS_PER_CONNECTION as usize,
            http2_max_streams: DEFAULT_HTTP2_MAX_STREAMS as u32,
        }
    }
}

/// The operators' listener: health, readiness, metrics, status page, purge.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// SHA-256 of the admin token that `POST /cache/purge` requires; `None` disables purge.
    pub token_sha256: Option<[u8; 32]>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("purge_enabled", &self.token_sha256.is_some())
            .finish()
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `None`: text on a terminal, JSON otherwise.
    pub format: Option<LogFormat>,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
    /// One access line per request (when the level lets info lines through).
    pub access: bool,
}

/// One upstream credential: its token, how it is sent, and its own budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileConfig {
    pub name: Arc<str>,
    pub token: Secret,
    pub auth_scheme: AuthScheme,
    pub rate_limit_per_minute: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Scheme and authority, and a path prefix without a trailing slash.
    pub base_url: BaseUrl,
    pub token: Secret,
    pub auth_scheme: AuthScheme,
    /// Bounds the whole exchange: connect, headers and body.
    pub timeout: Duration,
    /// Never more upstream calls than this in any 60-second window.
    pub rate_limit_per_minute: u32,
    /// How long a miss may wait for budget (and a concurrency slot).
    pub queue_timeout: Duration,
    pub max_concurrency: u32,
    /// Extra attempts after a connection error or a 502/503/504.
    pub retries: u32,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_bytes: u64,
    /// The largest answer stored; larger answers are served but not stored.
    pub max_entry_bytes: usize,
    /// An entry expired less than this long ago is served while one refresh runs.
    pub stale_while_revalidate: Duration,
    /// An entry expired less than this long ago is served when the upstream fails.
    pub stale_if_error: Duration,
    /// A period counts as closed only this long after it ended (late usage records).
    pub late_data_grace: Duration,
    /// Lifetime of answers about closed periods only.
    pub closed_period_ttl: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub struct CallerConfig {
    pub name: Arc<str>,
    /// SHA-256 of each of the caller's keys (several during a rotation); keys are never kept.
    pub key_sha256: Vec<[u8; 32]>,
    /// What the caller may ask.
    pub scope: Scope,
    /// The credential profile its misses use; `None` is the default (`[upstream]`).
    pub upstream: Option<Arc<str>>,
    /// The caller's own quota of upstream calls per minute (hits are free).
    pub upstream_per_minute: Option<u32>,
    /// Whether `Cache-Control: no-cache` from this caller forces an upstream fetch.
    pub allow_refresh: bool,
}

impl fmt::Debug for CallerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerConfig")
            .field("name", &self.name)
            .field("upstream_per_minute", &self.upstream_per_minute)
            .field("allow_refresh", &self.allow_refresh)
            .field("scope", &self.scope)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Every problem found in a configuration, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

impl Config {
    /// Reads `path` (if any) and the `USAGE_GATEWAY__*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let file = path.map(File::read).transpose()?;
        validate::validate(Raw::read(file.as_ref(), Environment::Read)?)
    }

    /// Validates TOML text alone, without the environment (tests, the demo).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        validate::validate(Raw::read(Some(&File::text(text)), Environment::Ignore)?)
    }

    /// Every credential profile, the default (`[upstream]`) first.
    pub fn all_profiles(&self) -> Vec<ProfileConfig> {
        let default = ProfileConfig {
            name: DEFAULT_PROFILE.into(),
            token: self.upstream.token.clone(),
            auth_scheme: self.upstream.auth_scheme,
            rate_limit_per_minute: self.upstream.rate_limit_per_minute,
        };
        std::iter::once(default)
            .chain(self.profiles.iter().cloned())
            .collect()
    }

    /// A human summary without secrets, for `usage-gateway check`.
    pub fn summary(&self) -> String {
        let callers: Vec<&str> = self.callers.iter().map(|c| &*c.name).collect();
        let profiles: Vec<String> = self
            .all_profiles()
            .iter()
            .map(|p| format!("{} ({} calls/min)", p.name, p.rate_limit_per_minute))
            .collect();
        let shared = match &self.shared {
            None => "off (one process: budget, quotas and cache in memory)".to_owned(),
            Some(shared) => format!(
                "redis {} (prefix {}, command timeout {:?}, hop margin {:?}, breaker {} failures / {:?})",
                shared.redis_url,
                shared.key_prefix,
                shared.command_timeout,
                shared.hop_margin,
                shared.breaker_failures,
                shared.breaker_cooldown
            ),
        };
        format!(
            "listen        {} (admin {}, purge {})\nupstream      {} (auth_scheme {:?}, timeout {:?}, token set)\nbudget        {} calls/min, queue {:?}, concurrency {}, retries {}, breaker {} failures / {:?}\ncache         ttl {:?} (closed periods {:?}), max {} bytes, stale-while-revalidate {:?}, stale-if-error {:?}\nprofiles      {}\ncallers       {} ({})\nshared        {}",
            self.server.listen,
            self.admin.listen,
            if self.admin.token_sha256.is_some() { "enabled" } else { "disabled" },
            self.upstream.base_url,
            self.upstream.auth_scheme,
            self.upstream.timeout,
            self.upstream.rate_limit_per_minute,
            self.upstream.queue_timeout,
            self.upstream.max_concurrency,
            self.upstream.retries,
            self.upstream.breaker_failures,
            self.upstream.breaker_cooldown,
            self.cache.ttl,
            self.cache.closed_period_ttl,
            self.cache.max_bytes,
            self.cache.stale_while_revalidate,
            self.cache.stale_if_error,
            profiles.join(", "),
            self.callers.len(),
            callers.join(", "),
            shared
        )
    }
}

#[cfg(test)]
mod tests;
