//! `[upstream]` and `[[upstreams]]`: the API's address, the default credential and further
//! named ones (each token from exactly one source), and the budget and resilience settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;

use super::{bounded, narrow, valid_name};
use crate::config::raw::{RawProfile, RawUpstream};
use crate::config::secret::{without_userinfo, BaseUrl, Secret};
use crate::config::{
    AuthScheme, ProfileConfig, UpstreamConfig, DEFAULT_BASE_URL, DEFAULT_BREAKER_COOLDOWN_SECS,
    DEFAULT_BREAKER_FAILURES, DEFAULT_MAX_CONCURRENCY, DEFAULT_PROFILE, DEFAULT_QUEUE_TIMEOUT_MS,
    DEFAULT_RATE_LIMIT_PER_MINUTE, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS, ENV_PREFIX,
};

pub(super) fn validate(raw: RawUpstream, problems: &mut Vec<String>) -> Option<UpstreamConfig> {
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
    token: Option<Secret>,
    file: Option<PathBuf>,
    env: Option<String>,
}

/// The most a token file may hold: a token is a few dozen bytes, and a path pointing at
/// `/dev/zero` or a huge file must not take the gateway's memory with it.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Reads a token file, refusing one larger than [`MAX_TOKEN_FILE_BYTES`].
pub(super) fn read_token_file(path: &Path) -> std::io::Result<String> {
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
            Ok(text) => Some(Secret::new(text.trim_end_matches(['\r', '\n']))),
            Err(e) => {
                problems.push(format!(
                    "{at}.token_file: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        (None, None, Some(variable)) => match std::env::var(&variable) {
            Ok(token) => Some(Secret::new(token)),
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
    if token.expose().trim().is_empty() {
        problems.push(format!("{at}.token: is empty"));
        None
    } else if !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
        problems.push(format!(
            "{at}.token: holds characters an HTTP header cannot carry (spaces, control characters or non-ASCII)"
        ));
        None
    } else {
        Some(token)
    }
}

pub(super) fn profiles(
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
