//! Configuration: TOML (plus `USAGE_GATEWAY__SECTION__KEY` environment overrides) read once
//! into [`Raw`] by the `config` crate, then validated into the typed [`Config`].
//!
//! Validation reports every problem at once, each with its key path, and never prints a secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use crate::scope::{RouteName, Scope};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: u64 = 10_000;
pub const DEFAULT_HTTP2_MAX_STREAMS: u64 = 128;
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// The name `[[callers]] upstream` uses for the `[upstream]` table's own credential.
pub const DEFAULT_PROFILE: &str = "default";

// === raw, as written ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    upstreams: Vec<RawProfile>,
    #[serde(default)]
    callers: Vec<RawCaller>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<u64>,
    cors: Option<RawCors>,
    auth_failures_per_minute: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    worker_threads: Option<u64>,
    max_uri_bytes: Option<u64>,
    max_header_bytes: Option<u64>,
    max_filters: Option<u64>,
    header_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
    send_timeout_ms: Option<u64>,
    max_requests_per_connection: Option<u64>,
    http2_max_streams: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allow_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: Option<String>,
    allow_plaintext: Option<bool>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    auth_scheme: Option<AuthScheme>,
    timeout_ms: Option<u64>,
    rate_limit_per_minute: Option<u64>,
    queue_timeout_ms: Option<u64>,
    max_concurrency: Option<u64>,
    retries: Option<u64>,
    breaker_failures: Option<u64>,
    breaker_cooldown_secs: Option<u64>,
}

impl fmt::Debug for RawUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawUpstream")
            .field("base_url", &self.base_url.as_deref().map(without_userinfo))
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("token_file", &self.token_file)
            .field("auth_scheme", &self.auth_scheme)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_secs: Option<u64>,
    max_bytes: Option<u64>,
    max_entry_bytes: Option<u64>,
    stale_while_revalidate_secs: Option<u64>,
    stale_if_error_secs: Option<u64>,
    late_data_grace_secs: Option<u64>,
    closed_period_ttl_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    name: Option<String>,
    key_sha256: Option<OneOrMany>,
    key: Option<String>,
    upstream_per_minute: Option<u64>,
    allow_refresh: Option<bool>,
    routes: Option<Vec<String>>,
    sims: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    upstream: Option<String>,
}

/// `key_sha256 = "…"` or `key_sha256 = ["…", "…"]` (several keys at once, for rotation).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    auth_scheme: Option<AuthScheme>,
    rate_limit_per_minute: Option<u64>,
}

impl fmt::Debug for RawProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawProfile")
            .field("name", &self.name)
            .field("token_file", &self.token_file)
            .field("token_env", &self.token_env)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RawCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCaller")
            .field("name", &self.name)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

// === typed, as used ===

/// A secret string: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret itself: call only where it is sent, never where it is shown.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The upstream's base URL. Its `Display` and `Debug` hide any userinfo
/// (`https://user:pass@host` shows as `https://[redacted]@host`), so wherever the URL is
/// shown (`check`, the startup line, a config dump) a credential in it is not.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl(pub Uri);

impl std::ops::Deref for BaseUrl {
    type Target = Uri;

    fn deref(&self) -> &Uri {
        &self.0
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&without_userinfo(&self.0.to_string()))
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BaseUrl({self})")
    }
}

/// `text` with the userinfo of its authority (before an `@`) replaced by `[redacted]`.
pub fn without_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    let after_scheme = text.find("://").map_or(0, |at| at + 3);
    let authority_end = text[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |at| after_scheme + at);
    match text[after_scheme..authority_end].rfind('@') {
        Some(at) => format!(
            "{}[redacted]{}",
            &text[..after_scheme],
            &text[after_scheme + at..]
        )
        .into(),
        None => text.into(),
    }
}

/// How the organization token is written in the upstream `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// `Authorization: <token>`, the API's documented form.
    Raw,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

#[derive(Debug, Clone)]
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
}

#[derive(Debug, Clone)]
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
#[derive(Clone)]
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
}

/// One upstream credential: its token, how it is sent, and its own budget.
#[derive(Debug, Clone)]
pub struct ProfileConfig {
    pub name: Arc<str>,
    pub token: Secret,
    pub auth_scheme: AuthScheme,
    pub rate_limit_per_minute: u32,
}

#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
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

#[derive(Clone)]
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

/// Hex SHA-256 of a caller key, as `key_sha256` wants it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Config {
    /// Reads `path` (if any) and the `USAGE_GATEWAY__*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::one(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        Self::from_builder(builder)
    }

    /// Validates TOML text alone, without the environment (tests, the demo).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        Self::from_builder(builder)
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Config, ConfigError> {
        let raw: Raw = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::one(redact_config_error(&e)))?;
        validate(raw)
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
        format!(
            "listen        {} (admin {}, purge {})\nupstream      {} (auth_scheme {:?}, timeout {:?}, token set)\nbudget        {} calls/min, queue {:?}, concurrency {}, retries {}, breaker {} failures / {:?}\ncache         ttl {:?} (closed periods {:?}), max {} bytes, stale-while-revalidate {:?}, stale-if-error {:?}\nprofiles      {}\ncallers       {} ({})",
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
            callers.join(", ")
        )
    }
}

/// The `config` crate quotes offending values in its messages; a wrongly typed token must not
/// end up in a terminal or log, so values it quotes are cut out.
fn redact_config_error(error: &config::ConfigError) -> String {
    let text = error.to_string();
    // A TOML syntax error shows its source line (`4 | token = 'onok_…' x`), where a token is in
    // plain sight whatever its quoting: keep the position and the reason, not the source.
    let text = text
        .lines()
        .filter(|line| !is_toml_source_line(line))
        .collect::<Vec<_>>()
        .join(": ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    // Values appear as `invalid type: string "…"`: drop what is between the quotes.
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        match closing_quote(&rest[start + 1..]) {
            Some(len) => {
                out.push_str("\"…\"");
                rest = &rest[start + 1 + len + 1..];
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// `  |`, `4 | token = …` and `  |   ^`: the source excerpt of a TOML syntax error.
fn is_toml_source_line(line: &str) -> bool {
    line.trim_start_matches(|c: char| c == ' ' || c.is_ascii_digit())
        .starts_with('|')
}

/// Where a Debug-quoted value ends: its first `"` that is not escaped as `\"`.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    text.char_indices().find_map(|(i, c)| {
        let end = c == '"' && !escaped;
        escaped = c == '\\' && !escaped;
        end.then_some(i)
    })
}

fn validate(raw: Raw) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();

    let listen = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.push(format!(
            "server.listen: `{listen}` is not an address like 127.0.0.1:8080"
        ));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });

    let admin_listen = raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let admin_listen = admin_listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.push(format!(
            "admin.listen: `{admin_listen}` is not an address like 127.0.0.1:9090"
        ));
        SocketAddr::from(([127, 0, 0, 1], 9090))
    });
    if admin_listen == listen && listen.port() != 0 {
        problems.push(
            "admin.listen: must differ from server.listen: the admin endpoints never share the callers' port"
                .into(),
        );
    }
    let token_sha256 = raw.admin.token_sha256.and_then(|hash| {
        let decoded = decode_sha256(&hash);
        if decoded.is_none() {
            problems.push(
                "admin.token_sha256: must be 64 hex characters (see `usage-gateway gen-key`)"
                    .into(),
            );
        }
        decoded
    });
    let level = raw.log.level.unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        problems.push(format!(
            "log.level: `{level}` is not a level (error, warn, info, debug, trace) or filter directive"
        ));
    }
    let shutdown_grace = Duration::from_secs(bounded(
        raw.server
            .shutdown_grace_secs
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS),
        "server.shutdown_grace_secs",
        0,
        3_600,
        &mut problems,
    ));
    let worker_threads = raw
        .server
        .worker_threads
        .map(|threads| bounded(threads, "server.worker_threads", 1, 1_024, &mut problems) as usize);
    let limits = validate_limits(&raw.server, &mut problems);
    let cors = validate_cors(raw.server.cors.as_ref(), &mut problems);
    let auth_failures_per_minute = narrow(bounded(
        raw.server
            .auth_failures_per_minute
            .unwrap_or(DEFAULT_AUTH_FAILURES_PER_MINUTE),
        "server.auth_failures_per_minute",
        1,
        1_000_000,
        &mut problems,
    ));

    let upstream = validate_upstream(raw.upstream, &mut problems);
    // Every profile name written, valid or not: a caller naming one that failed is not a
    // second problem (the profile's own is already reported).
    let declared: Vec<String> = raw
        .upstreams
        .iter()
        .filter_map(|p| p.name.clone())
        .collect();
    let profiles = validate_profiles(raw.upstreams, upstream.as_ref(), &mut problems);
    let cache = validate_cache(raw.cache, &mut problems);
    let callers = validate_callers(raw.callers, &profiles, &declared, &mut problems);

    match upstream {
        Some(upstream) if problems.is_empty() => Ok(Config {
            server: ServerConfig {
                listen,
                auth_failures_per_minute,
                shutdown_grace,
                worker_threads,
                limits,
                cors,
            },
            admin: AdminConfig {
                listen: admin_listen,
                token_sha256,
            },
            log: LogConfig {
                format: raw.log.format,
                level,
            },
            upstream,
            profiles,
            cache,
            callers,
        }),
        _ => Err(ConfigError { problems }),
    }
}

fn validate_limits(raw: &RawServer, problems: &mut Vec<String>) -> RequestLimits {
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
fn validate_cors(raw: Option<&RawCors>, problems: &mut Vec<String>) -> CorsConfig {
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

fn validate_upstream(raw: RawUpstream, problems: &mut Vec<String>) -> Option<UpstreamConfig> {
    let text = raw.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
    let base_url = match parse_base_url(text, raw.allow_plaintext.unwrap_or(false)) {
        Ok(uri) => Some(BaseUrl(uri)),
        Err(why) => {
            let shown = without_userinfo(text);
            problems.push(format!("upstream.base_url: `{shown}` {why}"));
            None
        }
    };

    let token = read_token(
        "upstream",
        TokenSources {
            token: raw.token,
            file: raw.token_file,
            env: raw.token_env,
        },
        &format!("{ENV_PREFIX}__UPSTREAM__TOKEN"),
        problems,
    );

    let mut setting = |value: Option<u64>, default: u64, key: &str, min: u64, max: u64| {
        bounded(
            value.unwrap_or(default),
            &format!("upstream.{key}"),
            min,
            max,
            problems,
        )
    };
    let timeout_ms = setting(raw.timeout_ms, DEFAULT_TIMEOUT_MS, "timeout_ms", 1, 600_000);
    let rate_limit_per_minute = setting(
        raw.rate_limit_per_minute,
        DEFAULT_RATE_LIMIT_PER_MINUTE,
        "rate_limit_per_minute",
        1,
        1_000_000,
    );
    let queue_timeout_ms = setting(
        raw.queue_timeout_ms,
        DEFAULT_QUEUE_TIMEOUT_MS,
        "queue_timeout_ms",
        0,
        600_000,
    );
    let max_concurrency = setting(
        raw.max_concurrency,
        DEFAULT_MAX_CONCURRENCY,
        "max_concurrency",
        1,
        10_000,
    );
    let retries = setting(raw.retries, DEFAULT_RETRIES, "retries", 0, 5);
    let breaker_failures = setting(
        raw.breaker_failures,
        DEFAULT_BREAKER_FAILURES,
        "breaker_failures",
        1,
        1_000,
    );
    let breaker_cooldown_secs = setting(
        raw.breaker_cooldown_secs,
        DEFAULT_BREAKER_COOLDOWN_SECS,
        "breaker_cooldown_secs",
        1,
        3_600,
    );

    Some(UpstreamConfig {
        base_url: base_url?,
        token: token?,
        auth_scheme: raw.auth_scheme.unwrap_or(AuthScheme::Raw),
        timeout: Duration::from_millis(timeout_ms),
        rate_limit_per_minute: narrow(rate_limit_per_minute),
        queue_timeout: Duration::from_millis(queue_timeout_ms),
        max_concurrency: narrow(max_concurrency),
        retries: narrow(retries),
        breaker_failures: narrow(breaker_failures),
        breaker_cooldown: Duration::from_secs(breaker_cooldown_secs),
    })
}

/// Where a token may come from; exactly one must be set.
struct TokenSources {
    token: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
}

/// The most a token file may hold: a token is a few dozen bytes, and a path pointing at
/// `/dev/zero` or a huge file must not take the gateway's memory with it.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads a token file, refusing one larger than [`MAX_TOKEN_FILE_BYTES`].
fn read_token_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_TOKEN_FILE_BYTES} bytes: not a token file"),
        ));
    }
    Ok(text)
}

/// Reads one token from its one source, checking it can travel in a header.
fn read_token(
    at: &str,
    sources: TokenSources,
    env_hint: &str,
    problems: &mut Vec<String>,
) -> Option<Secret> {
    let token = match (sources.token, sources.file, sources.env) {
        (Some(token), None, None) => Some(token),
        (None, Some(path), None) => match read_token_file(&path) {
            Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => {
                problems.push(format!(
                    "{at}.token_file: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        (None, None, Some(variable)) => match std::env::var(&variable) {
            Ok(token) => Some(token),
            Err(_) => {
                problems.push(format!(
                    "{at}.token_env: the environment variable {variable} is not set"
                ));
                None
            }
        },
        (None, None, None) => {
            problems.push(format!(
                "{at}.token: missing: set {at}.token, {at}.token_file, {at}.token_env or {env_hint}"
            ));
            None
        }
        _ => {
            problems.push(format!(
                "{at}: token, token_file and token_env are alternatives: set exactly one"
            ));
            None
        }
    }?;
    if token.trim().is_empty() {
        problems.push(format!("{at}.token: is empty"));
        None
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        problems.push(format!(
            "{at}.token: holds characters an HTTP header cannot carry (spaces, control characters or non-ASCII)"
        ));
        None
    } else {
        Some(Secret::new(token))
    }
}

fn validate_profiles(
    raw: Vec<RawProfile>,
    upstream: Option<&UpstreamConfig>,
    problems: &mut Vec<String>,
) -> Vec<ProfileConfig> {
    let mut profiles: Vec<ProfileConfig> = Vec::with_capacity(raw.len());
    for (index, profile) in raw.into_iter().enumerate() {
        let at = format!("upstreams[{index}]");
        let name = match profile.name {
            Some(name) if name == DEFAULT_PROFILE => {
                problems.push(format!(
                    "{at}.name: `{DEFAULT_PROFILE}` is the [upstream] table's own profile: choose another name"
                ));
                continue;
            }
            name => match valid_name(&at, name, problems) {
                Some(name) => name,
                None => continue,
            },
        };
        let at = format!("upstreams[{index}] ({name})");
        let env_hint = format!("{at}.token_env");
        let Some(token) = read_token(
            &at,
            TokenSources {
                token: profile.token,
                file: profile.token_file,
                env: profile.token_env,
            },
            &env_hint,
            problems,
        ) else {
            continue;
        };
        let rate_limit_per_minute = narrow(bounded(
            profile
                .rate_limit_per_minute
                .unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE),
            &format!("{at}.rate_limit_per_minute"),
            1,
            1_000_000,
            problems,
        ));
        if profiles.iter().any(|p| *p.name == *name) {
            problems.push(format!("{at}.name: another profile has the same name"));
            continue;
        }
        // One token is one upstream budget: two profiles with it would overrun it together.
        let same_token =
            upstream.is_some_and(|u| u.token == token) || profiles.iter().any(|p| p.token == token);
        if same_token {
            problems.push(format!(
                "{at}.token: another profile (or [upstream]) has the same token; a token's budget can only be managed once"
            ));
            continue;
        }
        profiles.push(ProfileConfig {
            name: name.into(),
            token,
            auth_scheme: profile
                .auth_scheme
                .or(upstream.map(|u| u.auth_scheme))
                .unwrap_or(AuthScheme::Raw),
            rate_limit_per_minute,
        });
    }
    profiles
}

fn parse_base_url(text: &str, allow_plaintext: bool) -> Result<Uri, &'static str> {
    let uri: Uri = text.parse().map_err(|_| "is not a URL")?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err("must start with https:// (or http:// for a local test upstream)"),
    }
    let Some(host) = uri.host() else {
        return Err("has no host");
    };
    if uri.scheme_str() == Some("http") && !is_loopback(host) && !allow_plaintext {
        return Err(
            "would send the organization token in clear to a host that is not this machine: use https://, or set upstream.allow_plaintext = true if the network path is trusted",
        );
    }
    if uri.query().is_some() {
        return Err("must not carry a query string");
    }
    let prefix = uri.path().trim_end_matches('/');
    let normalized = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default(),
        prefix
    );
    normalized.parse().map_err(|_| "is not a URL")
}

/// Whether `host` (as a URI names it) is this machine: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A whole-year bound on every duration setting, so none can overflow an `Instant`.
const MAX_SECS: u64 = 366 * 86_400;

fn validate_cache(raw: RawCache, problems: &mut Vec<String>) -> CacheConfig {
    let mut secs = |value: Option<u64>, default: u64, key: &str, min: u64| {
        Duration::from_secs(bounded(
            value.unwrap_or(default),
            &format!("cache.{key}"),
            min,
            MAX_SECS,
            problems,
        ))
    };
    let ttl = secs(raw.ttl_secs, DEFAULT_TTL_SECS, "ttl_secs", 1);
    let stale_while_revalidate = secs(
        raw.stale_while_revalidate_secs,
        DEFAULT_STALE_WHILE_REVALIDATE_SECS,
        "stale_while_revalidate_secs",
        0,
    );
    let stale_if_error = secs(
        raw.stale_if_error_secs,
        DEFAULT_STALE_IF_ERROR_SECS,
        "stale_if_error_secs",
        0,
    );
    let late_data_grace = secs(
        raw.late_data_grace_secs,
        DEFAULT_LATE_DATA_GRACE_SECS,
        "late_data_grace_secs",
        0,
    );
    let closed_period_ttl = secs(
        raw.closed_period_ttl_secs,
        DEFAULT_CLOSED_PERIOD_TTL_SECS,
        "closed_period_ttl_secs",
        1,
    );
    let max_bytes = bounded(
        raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
        "cache.max_bytes",
        1024,
        u64::MAX,
        problems,
    );
    let max_entry_bytes = bounded(
        raw.max_entry_bytes.unwrap_or(DEFAULT_MAX_ENTRY_BYTES),
        "cache.max_entry_bytes",
        1024,
        crate::upstream::client::MAX_BODY_BYTES as u64,
        problems,
    );
    CacheConfig {
        ttl,
        max_bytes,
        max_entry_bytes: usize::try_from(max_entry_bytes.min(max_bytes)).unwrap_or(usize::MAX),
        stale_while_revalidate,
        stale_if_error,
        late_data_grace,
        closed_period_ttl,
    }
}

/// `value` if it lies in `min..=max`; otherwise a problem naming `key`, and `min`.
fn bounded(value: u64, key: &str, min: u64, max: u64, problems: &mut Vec<String>) -> u64 {
    if (min..=max).contains(&value) {
        value
    } else {
        problems.push(format!(
            "{key}: {value} is out of range: use {min} to {max}"
        ));
        min
    }
}

/// Narrows a value already bounded well below `u32::MAX`.
fn narrow(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// A profile's or caller's name, or a problem at `at`: names appear in logs and metrics, so
/// they are short and plain.
fn valid_name(at: &str, name: Option<String>, problems: &mut Vec<String>) -> Option<String> {
    match name {
        Some(name) if is_caller_name(&name) => Some(name),
        Some(name) => {
            problems.push(format!(
                "{at}.name: `{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
            ));
            None
        }
        None => {
            problems.push(format!("{at}.name: missing"));
            None
        }
    }
}

fn validate_callers(
    raw: Vec<RawCaller>,
    profiles: &[ProfileConfig],
    declared_profiles: &[String],
    problems: &mut Vec<String>,
) -> Vec<CallerConfig> {
    if raw.is_empty() {
        problems.push(
            "callers: none configured: add a [[callers]] table with a name and key_sha256".into(),
        );
    }
    let mut callers: Vec<CallerConfig> = Vec::with_capacity(raw.len());
    for (index, caller) in raw.into_iter().enumerate() {
        let at = format!("callers[{index}]");
        let Some(name) = valid_name(&at, caller.name, problems) else {
            continue;
        };
        let at = format!("callers[{index}] ({name})");
        let Some(hashes) = caller_keys(&at, caller.key_sha256, caller.key, problems) else {
            continue;
        };
        if callers.iter().any(|c| *c.name == *name) {
            problems.push(format!("{at}.name: another caller has the same name"));
            continue;
        }
        let shared = callers
            .iter()
            .find(|c| c.key_sha256.iter().any(|hash| hashes.contains(hash)));
        if let Some(other) = shared {
            problems.push(format!(
                "{at}: has the same key as caller {}; every caller needs its own key",
                other.name
            ));
            continue;
        }
        let upstream_per_minute = match caller.upstream_per_minute {
            None => None,
            Some(n) if (1..=1_000_000).contains(&n) => Some(narrow(n)),
            Some(n) => {
                problems.push(format!(
                    "{at}.upstream_per_minute: {n} is out of range: use 1 to 1000000, or leave it out for no quota"
                ));
                continue;
            }
        };
        let Some(scope) = caller_scope(&at, caller.routes, caller.sims, caller.tags, problems)
        else {
            continue;
        };
        let upstream = match caller.upstream {
            None => None,
            Some(profile) if profile == DEFAULT_PROFILE => None,
            Some(profile) => match profiles.iter().find(|p| *p.name == *profile) {
                Some(found) => Some(found.name.clone()),
                None if declared_profiles.contains(&profile) => continue,
                None => {
                    problems.push(format!(
                        "{at}.upstream: no [[upstreams]] profile is named `{profile}`"
                    ));
                    continue;
                }
            },
        };
        callers.push(CallerConfig {
            name: name.into(),
            key_sha256: hashes,
            scope,
            upstream,
            upstream_per_minute,
            allow_refresh: caller.allow_refresh.unwrap_or(false),
        });
    }
    callers
}

/// The hashes of a caller's keys: one plain `key`, or one or more `key_sha256`.
fn caller_keys(
    at: &str,
    hashes: Option<OneOrMany>,
    key: Option<String>,
    problems: &mut Vec<String>,
) -> Option<Vec<[u8; 32]>> {
    let hashes = match (hashes, key) {
        (Some(_), Some(_)) => {
            problems.push(format!("{at}: key_sha256 and key are both set: choose one"));
            return None;
        }
        (None, None) => {
            problems.push(format!(
                "{at}.key_sha256: missing (or set key for local development)"
            ));
            return None;
        }
        (None, Some(key)) if key.is_empty() => {
            problems.push(format!("{at}.key: is empty"));
            return None;
        }
        (None, Some(key)) => vec![Sha256::digest(key.as_bytes()).into()],
        (Some(hashes), None) => {
            let texts = hashes.into_vec();
            let decoded: Option<Vec<[u8; 32]>> = texts.iter().map(|t| decode_sha256(t)).collect();
            match decoded {
                Some(decoded) if !decoded.is_empty() => decoded,
                _ => {
                    problems.push(format!(
                        "{at}.key_sha256: each must be 64 hex characters (the SHA-256 of a key; see `usage-gateway hash-key`)"
                    ));
                    return None;
                }
            }
        }
    };
    let mut unique = hashes.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != hashes.len() {
        problems.push(format!("{at}.key_sha256: lists the same hash twice"));
        return None;
    }
    Some(hashes)
}

/// `routes`, `sims` and `tags`, each checked; an empty list would lock the caller out.
fn caller_scope(
    at: &str,
    routes: Option<Vec<String>>,
    sims: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    problems: &mut Vec<String>,
) -> Option<Scope> {
    let before = problems.len();
    let mut check_list = |key: &str, list: &Option<Vec<String>>| {
        if list.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "{at}.{key}: is empty, which would allow nothing: leave it out to allow all"
            ));
        }
    };
    check_list("routes", &routes);
    check_list("sims", &sims);
    check_list("tags", &tags);
    let routes = routes.map(|routes| {
        routes
            .iter()
            .filter_map(|route| {
                RouteName::parse(route).or_else(|| {
                    problems.push(format!(
                        "{at}.routes: `{route}` is not one of usage, usage_by_sim, tag_total"
                    ));
                    None
                })
            })
            .collect()
    });
    let sims = sims.map(|sims| {
        sims.into_iter()
            .filter(|sim| {
                let valid = crate::query::is_sim_ref(sim);
                if !valid {
                    problems.push(format!(
                        "{at}.sims: `{sim}` is neither a 9-digit SIM id nor a 19-20 digit ICCID"
                    ));
                }
                valid
            })
            .collect()
    });
    let tags = tags.map(|tags| {
        tags.iter()
            .filter_map(|tag| match crate::query::parse_tag_id(tag) {
                Ok(tag) => Some(tag),
                Err(_) => {
                    problems.push(format!("{at}.tags: `{tag}` is not a tag UUID"));
                    None
                }
            })
            .collect()
    });
    let scope = Scope { routes, sims, tags };
    // A route the caller is given but its restrictions refuse whole is a contradiction.
    for route in scope.routes.iter().flatten() {
        if let Some(why) = scope.refuses_route(*route) {
            problems.push(format!("{at}.routes: lists {}, but {why}", route.as_str()));
        }
    }
    (problems.len() == before).then_some(scope)
}

fn is_caller_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn decode_sha256(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [upstream]
        token = "org-token-123"
        [[callers]]
        name = "billing"
        key = "billing-key"
    "#;

    /// Every key has a problem reported against it.
    fn assert_problems(found: &[String], keys: &[&str]) {
        for key in keys {
            assert!(
                found.iter().any(|p| p.starts_with(key)),
                "no problem for {key} in {found:#?}"
            );
        }
    }

    fn problems(text: &str) -> Vec<String> {
        Config::from_toml(text).expect_err("invalid").problems
    }

    #[test]
    fn defaults_fill_every_unset_key() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            config.upstream.base_url.to_string(),
            "https://api.onomondo.com/"
        );
        assert_eq!(config.upstream.auth_scheme, AuthScheme::Raw);
        assert_eq!(config.upstream.timeout, Duration::from_secs(10));
        assert_eq!(config.cache.ttl, Duration::from_secs(60));
        assert_eq!(config.cache.max_bytes, 256 * 1024 * 1024);
        assert_eq!(
            config.callers[0].key_sha256.concat(),
            hex::decode(hash_key("billing-key")).expect("hex")
        );
        assert_eq!(config.server.auth_failures_per_minute, 60);
        assert_eq!(config.server.limits, RequestLimits::default());
        assert_eq!(config.server.limits.max_uri_bytes, 8 * 1024);
        assert_eq!(config.server.limits.header_timeout, Duration::from_secs(10));
        assert_eq!(config.cache.max_entry_bytes, 8 * 1024 * 1024);
        assert!(config.profiles.is_empty());
        assert_eq!(config.callers[0].scope, Scope::default());
    }

    #[test]
    fn base_url_keeps_its_path_prefix_without_trailing_slash() {
        let config = Config::from_toml(&format!("{MINIMAL}\n[upstream]\n"));
        assert!(config.is_err(), "a table cannot be given twice");
        let text = MINIMAL.replace(
            "[upstream]",
            "[upstream]\nbase_url = \"http://127.0.0.1:9000/api/v1/\"",
        );
        let config = Config::from_toml(&text).expect("valid");
        assert_eq!(config.upstream.base_url.path(), "/api/v1");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let found = problems(
            r#"
            [server]
            listen = "nowhere"
            [upstream]
            base_url = "ftp://example.com"
            timeout_ms = 0
            [cache]
            ttl_secs = 0
            [[callers]]
            name = "bad name!"
            key = "k"
            [[callers]]
            name = "ops"
            key_sha256 = "abc"
            "#,
        );
        assert_problems(
            &found,
            &[
                "server.listen",
                "upstream.base_url",
                "upstream.token",
                "upstream.timeout_ms",
                "cache.ttl_secs",
                "callers[0].name",
                "callers[1] (ops).key_sha256",
            ],
        );
    }

    #[test]
    fn request_limits_out_of_range_are_each_named() {
        let found = problems(&format!(
            "[server]\nmax_uri_bytes = 10\nmax_header_bytes = 0\nmax_filters = 0\nmax_body_bytes = 99999999\nheader_timeout_ms = 5\nmax_connections = 0\n[cache]\nmax_entry_bytes = 99999999999\n{MINIMAL}"
        ));
        assert_problems(
            &found,
            &[
                "server.max_uri_bytes",
                "server.max_header_bytes",
                "server.max_filters",
                "server.max_body_bytes",
                "server.header_timeout_ms",
                "server.max_connections",
                "cache.max_entry_bytes",
            ],
        );
    }

    #[test]
    fn cors_origins_are_named_origins_lower_cased_and_none_by_default() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert!(config.server.cors.allow_origins.is_empty());
        assert_eq!(config.server.limits.max_body_bytes, 16 * 1024);
        let config = Config::from_toml(&format!(
            "[server.cors]\nallow_origins = [\"https://Dash.Example.com\", \"http://127.0.0.1:8000\"]\n{MINIMAL}"
        ))
        .expect("valid");
        assert_eq!(
            config.server.cors.allow_origins,
            ["https://dash.example.com", "http://127.0.0.1:8000"]
        );
        for bad in [
            "*",
            "null",
            "dash.example.com",
            "https://dash.example.com/",
            "https://dash.example.com/app",
            "ftp://dash.example.com",
            "https://user:secret@dash.example.com",
        ] {
            let found = problems(&format!(
                "[server.cors]\nallow_origins = [\"{bad}\"]\n{MINIMAL}"
            ));
            assert_problems(&found, &["server.cors.allow_origins"]);
            assert!(!found.iter().any(|p| p.contains("secret")), "{found:?}");
        }
    }

    #[test]
    fn a_profile_that_fails_is_one_problem_not_one_more_per_caller_using_it() {
        let found = problems(&format!(
            "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken_env = \"USAGE_GATEWAY_TEST_SURELY_UNSET_7f3a\"\n[[callers]]\nname = \"partner-dashboard\"\nkey = \"k2\"\nupstream = \"partner\"\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("token_env"), "{found:?}");
        // A profile that was never declared is still the caller's problem.
        let found = problems(&format!(
            "{MINIMAL}\n[[callers]]\nname = \"lost\"\nkey = \"k3\"\nupstream = \"nowhere\"\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("no [[upstreams]] profile is named"),
            "{found:?}"
        );
    }

    #[test]
    fn an_entry_bound_above_the_cache_bound_is_the_cache_bound() {
        let config = Config::from_toml(&format!(
            "[cache]\nmax_bytes = 4096\nmax_entry_bytes = 8192\n{MINIMAL}"
        ))
        .expect("valid");
        assert_eq!(config.cache.max_entry_bytes, 4096);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let found = problems(&MINIMAL.replace("[upstream]", "[upstream]\ntoken_typo = 1"));
        assert!(found.iter().any(|p| p.contains("token_typo")), "{found:?}");
    }

    #[test]
    fn unknown_enum_values_are_refused_by_name() {
        let found = problems(&MINIMAL.replace("[upstream]", "[upstream]\nauth_scheme = \"basic\""));
        assert!(
            found
                .iter()
                .any(|p| p.contains("basic") || p.contains("auth_scheme")),
            "{found:?}"
        );
    }

    #[test]
    fn wrong_types_are_refused_without_echoing_the_value() {
        let found =
            problems(&MINIMAL.replace("[upstream]", "[upstream]\ntimeout_ms = \"soon-secret\""));
        let text = found.join("\n");
        assert!(text.contains("timeout_ms"), "{text}");
        assert!(!text.contains("soon-secret"), "{text}");
    }

    #[test]
    fn callers_need_distinct_names_and_keys() {
        let found = problems(
            r#"
            [upstream]
            token = "t"
            [[callers]]
            name = "a"
            key = "same"
            [[callers]]
            name = "b"
            key = "same"
            [[callers]]
            name = "a"
            key = "other"
            "#,
        );
        assert_eq!(found.len(), 2, "{found:#?}");
    }

    #[test]
    fn no_callers_is_a_problem() {
        let found = problems("[upstream]\ntoken = \"t\"\n");
        assert!(found.iter().any(|p| p.starts_with("callers")), "{found:?}");
    }

    #[test]
    fn token_file_is_read_without_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("usage-gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("token");
        std::fs::write(&path, "file-token\n").expect("write token");
        let text = MINIMAL.replace(
            "token = \"org-token-123\"",
            &format!("token_file = {:?}", path.display().to_string()),
        );
        let config = Config::from_toml(&text).expect("valid");
        assert_eq!(config.upstream.token.expose(), "file-token");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_token_file_that_never_ends_is_refused_not_read_whole() {
        let text = MINIMAL.replace("token = \"org-token-123\"", "token_file = \"/dev/zero\"");
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("upstream.token_file") && p.contains("not a token file")),
            "{found:?}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_or_summary() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        let shown = format!("{config:?}\n{}", config.summary());
        assert!(!shown.contains("org-token-123"), "{shown}");
        assert!(!shown.contains("billing-key"), "{shown}");
        assert!(!shown.contains(&hash_key("billing-key")), "{shown}");
    }

    #[test]
    fn hash_key_is_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn profiles_inherit_the_scheme_and_keep_their_own_budget() {
        let config = Config::from_toml(&format!(
            "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken = \"partner-token\"\nrate_limit_per_minute = 100\n"
        ))
        .expect("valid");
        let profiles = config.all_profiles();
        assert_eq!(profiles.len(), 2);
        assert_eq!(&*profiles[0].name, DEFAULT_PROFILE);
        assert_eq!(profiles[0].rate_limit_per_minute, 600);
        assert_eq!(&*profiles[1].name, "partner");
        assert_eq!(profiles[1].token.expose(), "partner-token");
        assert_eq!(profiles[1].auth_scheme, AuthScheme::Raw);
        assert_eq!(profiles[1].rate_limit_per_minute, 100);
    }

    #[test]
    fn a_profile_token_may_come_from_the_environment() {
        let variable = format!("USAGE_GATEWAY_TEST_TOKEN_{}", std::process::id());
        std::env::set_var(&variable, "env-token");
        let config = Config::from_toml(&format!(
            "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken_env = \"{variable}\"\n"
        ))
        .expect("valid");
        assert_eq!(config.profiles[0].token.expose(), "env-token");
        let found = problems(&format!(
            "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken_env = \"{variable}_UNSET\"\n"
        ));
        assert!(found.iter().any(|p| p.contains("token_env")), "{found:?}");
    }

    #[test]
    fn profile_problems_are_reported_by_key() {
        let found = problems(&format!(
            r#"{MINIMAL}
            [[upstreams]]
            name = "default"
            token = "a"
            [[upstreams]]
            name = "same-token"
            token = "org-token-123"
            [[upstreams]]
            name = "both"
            token = "b"
            token_file = "/nonexistent"
            [[callers]]
            name = "lost"
            key = "lost-key"
            upstream = "nowhere"
            "#
        ));
        assert_problems(
            &found,
            &[
                "upstreams[0].name",
                "upstreams[1] (same-token).token",
                "upstreams[2] (both)",
                "callers[1] (lost).upstream",
            ],
        );
    }

    #[test]
    fn scopes_are_parsed_and_checked() {
        let config = Config::from_toml(&format!(
            r#"{MINIMAL}
            [[callers]]
            name = "support"
            key = "support-key"
            routes = ["usage_by_sim", "usage"]
            sims = ["000000001"]
            tags = ["5F0C7A2E-9B1D-4C3E-8A55-0D2F6B7E1C90"]
            "#
        ))
        .expect("valid");
        let scope = &config.callers[1].scope;
        assert_eq!(scope.routes.as_ref().map(|r| r.len()), Some(2));
        assert!(scope.sims.as_ref().is_some_and(|s| s.contains("000000001")));
        assert!(scope
            .tags
            .as_ref()
            .is_some_and(|t| t.contains("5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90")));

        let found = problems(&format!(
            r#"{MINIMAL}
            [[callers]]
            name = "bad"
            key = "bad-key"
            routes = ["sims"]
            sims = ["1"]
            tags = ["nope"]
            [[callers]]
            name = "empty"
            key = "empty-key"
            sims = []
            "#
        ));
        assert_problems(
            &found,
            &[
                "callers[1] (bad).routes",
                "callers[1] (bad).sims",
                "callers[1] (bad).tags",
                "callers[2] (empty).sims",
            ],
        );
    }

    #[test]
    fn routes_a_caller_s_restrictions_refuse_whole_are_a_contradiction() {
        let found = problems(&format!(
            r#"{MINIMAL}
            [[callers]]
            name = "sims-only"
            key = "sims-only-key"
            routes = ["usage_by_sim", "tag_total"]
            sims = ["000000001"]
            [[callers]]
            name = "tags-only"
            key = "tags-only-key"
            routes = ["usage", "tag_total"]
            tags = ["5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90"]
            "#
        ));
        assert_problems(
            &found,
            &[
                "callers[1] (sims-only).routes",
                "callers[2] (tags-only).routes",
            ],
        );
        assert!(found[0].contains("tag_total"), "{found:?}");
        assert!(found[1].contains("lists usage,"), "{found:?}");
        // Restrictions alone (no routes listed) are not a contradiction: they just narrow.
        Config::from_toml(&format!(
            r#"{MINIMAL}
            [[callers]]
            name = "sims-only"
            key = "sims-only-key"
            sims = ["000000001"]
            "#
        ))
        .expect("valid");
    }

    #[test]
    fn key_sha256_takes_one_hash_or_a_list() {
        let one = hash_key("a");
        let two = hash_key("b");
        let config = Config::from_toml(&format!(
            "[upstream]\ntoken = \"t\"\n[[callers]]\nname = \"x\"\nkey_sha256 = [\"{one}\", \"{two}\"]\n[[callers]]\nname = \"y\"\nkey_sha256 = \"{}\"\n",
            hash_key("c")
        ))
        .expect("valid");
        assert_eq!(config.callers[0].key_sha256.len(), 2);
        assert_eq!(config.callers[1].key_sha256.len(), 1);
        let found = problems(&format!(
            "[upstream]\ntoken = \"t\"\n[[callers]]\nname = \"x\"\nkey_sha256 = [\"{one}\", \"{one}\"]\n[[callers]]\nname = \"y\"\nkey_sha256 = [\"{one}abc\"]\n[[callers]]\nname = \"z\"\nkey_sha256 = [\"{two}\", \"zz\"]\n"
        ));
        assert_eq!(found.len(), 3, "{found:#?}");
    }
}
