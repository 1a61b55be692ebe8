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
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Prefix of environment overrides: `USAGE_GATEWAY__UPSTREAM__TOKEN` sets `upstream.token`.
pub const ENV_PREFIX: &str = "USAGE_GATEWAY";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_BASE_URL: &str = "https://api.onomondo.com";
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_TTL_SECS: u64 = 60;
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

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
    callers: Vec<RawCaller>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    auth_scheme: Option<AuthScheme>,
    timeout_ms: Option<u64>,
}

impl fmt::Debug for RawUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawUpstream")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("token_file", &self.token_file)
            .field("auth_scheme", &self.auth_scheme)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    ttl_secs: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaller {
    name: Option<String>,
    key_sha256: Option<String>,
    key: Option<String>,
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
    pub upstream: UpstreamConfig,
    pub cache: CacheConfig,
    pub callers: Vec<CallerConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme and authority, and a path prefix without a trailing slash.
    pub base_url: Uri,
    pub token: Secret,
    pub auth_scheme: AuthScheme,
    /// Bounds the whole exchange: connect, headers and body.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_bytes: u64,
}

#[derive(Clone)]
pub struct CallerConfig {
    pub name: Arc<str>,
    /// SHA-256 of the caller's key; the key itself is never kept.
    pub key_sha256: [u8; 32],
}

impl fmt::Debug for CallerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerConfig")
            .field("name", &self.name)
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

    /// A human summary without secrets, for `usage-gateway check`.
    pub fn summary(&self) -> String {
        let callers: Vec<&str> = self.callers.iter().map(|c| &*c.name).collect();
        format!(
            "listen        {}\nupstream      {} (auth_scheme {:?}, timeout {:?}, token set)\ncache         ttl {:?}, max {} bytes\ncallers       {} ({})",
            self.server.listen,
            self.upstream.base_url,
            self.upstream.auth_scheme,
            self.upstream.timeout,
            self.cache.ttl,
            self.cache.max_bytes,
            self.callers.len(),
            callers.join(", ")
        )
    }
}

/// The `config` crate quotes offending values in its messages; a wrongly typed token must not
/// end up in a terminal or log, so values it quotes are cut out.
fn redact_config_error(error: &config::ConfigError) -> String {
    let text = error.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    // Values appear as `invalid type: string "…"`: drop what is between the quotes.
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        match rest[start + 1..].find('"') {
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

fn validate(raw: Raw) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();

    let listen = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        problems.push(format!(
            "server.listen: `{listen}` is not an address like 127.0.0.1:8080"
        ));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });

    let upstream = validate_upstream(raw.upstream, &mut problems);
    let cache = validate_cache(raw.cache, &mut problems);
    let callers = validate_callers(raw.callers, &mut problems);

    match upstream {
        Some(upstream) if problems.is_empty() => Ok(Config {
            server: ServerConfig { listen },
            upstream,
            cache,
            callers,
        }),
        _ => Err(ConfigError { problems }),
    }
}

fn validate_upstream(raw: RawUpstream, problems: &mut Vec<String>) -> Option<UpstreamConfig> {
    let text = raw.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
    let base_url = match parse_base_url(text) {
        Ok(uri) => Some(uri),
        Err(why) => {
            problems.push(format!("upstream.base_url: `{text}` {why}"));
            None
        }
    };

    let token = match (raw.token, raw.token_file) {
        (Some(_), Some(_)) => {
            problems.push("upstream.token and upstream.token_file are both set: choose one".into());
            None
        }
        (Some(token), None) => Some(token),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => {
                problems.push(format!(
                    "upstream.token_file: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        (None, None) => {
            problems.push(format!(
                "upstream.token: missing: set upstream.token, upstream.token_file or {ENV_PREFIX}__UPSTREAM__TOKEN"
            ));
            None
        }
    };
    let token = token.and_then(|token| {
        if token.trim().is_empty() {
            problems.push("upstream.token: is empty".into());
            None
        } else if http::HeaderValue::from_str(&token).is_err() || token.contains(' ') {
            problems.push(
                "upstream.token: holds characters an HTTP header cannot carry (spaces, control characters or non-ASCII)"
                    .into(),
            );
            None
        } else {
            Some(Secret::new(token))
        }
    });

    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 {
        problems.push("upstream.timeout_ms: must be at least 1".into());
    }

    Some(UpstreamConfig {
        base_url: base_url?,
        token: token?,
        auth_scheme: raw.auth_scheme.unwrap_or(AuthScheme::Raw),
        timeout: Duration::from_millis(timeout_ms),
    })
}

fn parse_base_url(text: &str) -> Result<Uri, &'static str> {
    let uri: Uri = text.parse().map_err(|_| "is not a URL")?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err("must start with https:// (or http:// for a local test upstream)"),
    }
    if uri.authority().is_none() {
        return Err("has no host");
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

fn validate_cache(raw: RawCache, problems: &mut Vec<String>) -> CacheConfig {
    let ttl_secs = raw.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl_secs == 0 {
        problems.push("cache.ttl_secs: must be at least 1".into());
    }
    let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if max_bytes < 1024 {
        problems.push("cache.max_bytes: must be at least 1024".into());
    }
    CacheConfig {
        ttl: Duration::from_secs(ttl_secs),
        max_bytes,
    }
}

fn validate_callers(raw: Vec<RawCaller>, problems: &mut Vec<String>) -> Vec<CallerConfig> {
    if raw.is_empty() {
        problems.push(
            "callers: none configured: add a [[callers]] table with a name and key_sha256".into(),
        );
    }
    let mut callers: Vec<CallerConfig> = Vec::with_capacity(raw.len());
    for (index, caller) in raw.into_iter().enumerate() {
        let at = format!("callers[{index}]");
        let name = match caller.name {
            Some(name) if is_caller_name(&name) => name,
            Some(name) => {
                problems.push(format!(
                    "{at}.name: `{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
                ));
                continue;
            }
            None => {
                problems.push(format!("{at}.name: missing"));
                continue;
            }
        };
        let at = format!("callers[{index}] ({name})");
        let hash = match (caller.key_sha256, caller.key) {
            (Some(_), Some(_)) => {
                problems.push(format!("{at}: key_sha256 and key are both set: choose one"));
                continue;
            }
            (None, None) => {
                problems.push(format!(
                    "{at}.key_sha256: missing (or set key for local development)"
                ));
                continue;
            }
            (Some(hex_hash), None) => match decode_sha256(&hex_hash) {
                Some(hash) => hash,
                None => {
                    problems.push(format!(
                        "{at}.key_sha256: must be 64 hex characters (the SHA-256 of the key; see `usage-gateway hash-key`)"
                    ));
                    continue;
                }
            },
            (None, Some(key)) => {
                if key.is_empty() {
                    problems.push(format!("{at}.key: is empty"));
                    continue;
                }
                Sha256::digest(key.as_bytes()).into()
            }
        };
        if callers.iter().any(|c| *c.name == *name) {
            problems.push(format!("{at}.name: another caller has the same name"));
            continue;
        }
        if let Some(other) = callers.iter().find(|c| c.key_sha256 == hash) {
            problems.push(format!(
                "{at}: has the same key as caller {}; every caller needs its own key",
                other.name
            ));
            continue;
        }
        callers.push(CallerConfig {
            name: name.into(),
            key_sha256: hash,
        });
    }
    callers
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
            config.callers[0].key_sha256.to_vec(),
            hex::decode(hash_key("billing-key")).expect("hex")
        );
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
        let expected = [
            "server.listen",
            "upstream.base_url",
            "upstream.token",
            "upstream.timeout_ms",
            "cache.ttl_secs",
            "callers[0].name",
            "callers[1] (ops).key_sha256",
        ];
        for key in expected {
            assert!(
                found.iter().any(|p| p.starts_with(key)),
                "no problem for {key} in {found:#?}"
            );
        }
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
}
