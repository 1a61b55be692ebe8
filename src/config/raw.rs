//! The configuration as written: the file's TOML, overlaid by `USAGE_GATEWAY__SECTION__KEY`
//! environment variables (the `config` crate layers them), deserialized into serde structs
//! that mirror the file and default nothing.
//!
//! The file's text is parsed by the `toml` crate first, so a syntax error is reported by the
//! parser's own message and position (never by a quote of the offending line); and every secret
//! field is a [`Secret`], whose deserializer never repeats a value. What the `config` crate
//! reports beyond that is rendered by [`redact`](super::redact) from its structure.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::redact;
use super::secret::{without_userinfo, Secret};
use super::{AuthScheme, ConfigError, LogFormat, ENV_PREFIX};

/// A configuration file's text, and the name its problems are reported under.
#[derive(Debug)]
pub(super) struct File<'a> {
    /// The path as given; `None` for text that came from no file.
    pub(super) name: Option<String>,
    pub(super) text: Cow<'a, str>,
}

impl File<'static> {
    /// Reads `path`, taking invalid UTF-8 as U+FFFD (as the `config` crate always has).
    pub(super) fn read(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::one(format!(
                "config file {} does not exist or is not a file",
                path.display()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigError::one(format!(
                "config file {} cannot be read: {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            name: Some(path.display().to_string()),
            text: Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        })
    }
}

impl<'a> File<'a> {
    /// TOML text that came from no file (tests, the demo).
    pub(super) fn text(text: &'a str) -> Self {
        Self {
            name: None,
            text: Cow::Borrowed(text),
        }
    }
}

/// Whether the `USAGE_GATEWAY__*` environment overrides the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Environment {
    Read,
    Ignore,
}

impl Raw {
    /// The file (if any) overlaid by the environment (if read), as written.
    pub(super) fn read(
        file: Option<&File<'_>>,
        environment: Environment,
    ) -> Result<Raw, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            // The same parser the `config` crate runs on the same text: what passes here
            // passes there, so its error (which quotes the source line) is never reached.
            toml::de::DeTable::parse(&file.text)
                .map_err(|error| ConfigError::one(redact::syntax_error(&file.text, &error)))?;
            builder =
                builder.add_source(config::File::from_str(&file.text, config::FileFormat::Toml));
        }
        if environment == Environment::Read {
            builder = builder.add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        }
        builder
            .build()
            .and_then(|layered| layered.try_deserialize())
            .map_err(|error| ConfigError::one(redact::layering_error(&error, file)))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) upstreams: Vec<RawProfile>,
    #[serde(default)]
    pub(super) callers: Vec<RawCaller>,
    /// `[shared]`: absent means one process on its own, and no connection is attempted.
    pub(super) shared: Option<RawShared>,
}

/// `[shared]`: the Redis tier several replicas share. The URL is a [`Secret`] (it may hold a
/// password), so no serde message can repeat it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    pub(super) redis_url: Option<Secret>,
    pub(super) redis_url_env: Option<String>,
    pub(super) redis_url_file: Option<PathBuf>,
    pub(super) key_prefix: Option<String>,
    pub(super) instance_id: Option<String>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) command_timeout_ms: Option<u64>,
    pub(super) hop_margin_ms: Option<u64>,
    pub(super) breaker_failures: Option<u64>,
    pub(super) breaker_cooldown_ms: Option<u64>,
    pub(super) fill_lease_ms: Option<u64>,
    pub(super) fill_wait_ms: Option<u64>,
    pub(super) purge_stream_length: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) cors: Option<RawCors>,
    pub(super) auth_failures_per_minute: Option<u64>,
    pub(super) shutdown_grace_secs: Option<u64>,
    pub(super) worker_threads: Option<u64>,
    pub(super) max_uri_bytes: Option<u64>,
    pub(super) max_header_bytes: Option<u64>,
    pub(super) max_filters: Option<u64>,
    pub(super) header_timeout_ms: Option<u64>,
    pub(super) max_connections: Option<u64>,
    pub(super) send_timeout_ms: Option<u64>,
    pub(super) max_requests_per_connection: Option<u64>,
    pub(super) http2_max_streams: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCors {
    pub(super) allow_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token_sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<LogFormat>,
    pub(super) level: Option<String>,
    pub(super) access: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) base_url: Option<String>,
    pub(super) allow_plaintext: Option<bool>,
    pub(super) token: Option<Secret>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) token_env: Option<String>,
    pub(super) auth_scheme: Option<AuthScheme>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) rate_limit_per_minute: Option<u64>,
    pub(super) queue_timeout_ms: Option<u64>,
    pub(super) max_concurrency: Option<u64>,
    pub(super) retries: Option<u64>,
    pub(super) breaker_failures: Option<u64>,
    pub(super) breaker_cooldown_secs: Option<u64>,
}

/// By hand for the base URL only: a user name and password in it are not shown.
impl fmt::Debug for RawUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawUpstream")
            .field("base_url", &self.base_url.as_deref().map(without_userinfo))
            .field("token", &self.token)
            .field("token_file", &self.token_file)
            .field("auth_scheme", &self.auth_scheme)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) ttl_secs: Option<u64>,
    pub(super) max_bytes: Option<u64>,
    pub(super) max_entry_bytes: Option<u64>,
    pub(super) stale_while_revalidate_secs: Option<u64>,
    pub(super) stale_if_error_secs: Option<u64>,
    pub(super) late_data_grace_secs: Option<u64>,
    pub(super) closed_period_ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    pub(super) name: Option<String>,
    pub(super) key_sha256: Option<OneOrMany>,
    pub(super) key: Option<Secret>,
    pub(super) upstream_per_minute: Option<u64>,
    pub(super) allow_refresh: Option<bool>,
    pub(super) routes: Option<Vec<String>>,
    pub(super) sims: Option<Vec<String>>,
    pub(super) tags: Option<Vec<String>>,
    pub(super) upstream: Option<String>,
}

/// `key_sha256 = "…"` or `key_sha256 = ["…", "…"]` (several keys at once, for rotation).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    pub(super) name: Option<String>,
    pub(super) token: Option<Secret>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) token_env: Option<String>,
    pub(super) auth_scheme: Option<AuthScheme>,
    pub(super) rate_limit_per_minute: Option<u64>,
}
