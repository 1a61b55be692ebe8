//! Validation, one section of the file per module: every problem is reported at once, each
//! with its key path, and none shows a secret.

mod admin;
mod cache;
mod callers;
mod log;
mod server;
mod shared;
mod upstream;

use super::raw::Raw;
use super::{Config, ConfigError};

/// The typed configuration, or every problem `raw` has.
pub(super) fn validate(raw: Raw) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let server = server::validate(&raw.server, &mut problems);
    let admin = admin::validate(raw.admin, server.listen, &mut problems);
    let log = log::validate(raw.log, &mut problems);
    let upstream = upstream::validate(raw.upstream, &mut problems);
    // Every profile name written, valid or not: a caller naming one that failed is not a
    // second problem (the profile's own is already reported).
    let declared: Vec<String> = raw
        .upstreams
        .iter()
        .filter_map(|p| p.name.clone())
        .collect();
    let profiles = upstream::profiles(raw.upstreams, upstream.as_ref(), &mut problems);
    let cache = cache::validate(raw.cache, &mut problems);
    let callers = callers::validate(raw.callers, &profiles, &declared, &mut problems);
    let shared = raw
        .shared
        .and_then(|raw| shared::validate(raw, &mut problems));

    match upstream {
        Some(upstream) if problems.is_empty() => Ok(Config {
            server,
            admin,
            log,
            upstream,
            profiles,
            cache,
            callers,
            shared,
        }),
        _ => Err(ConfigError { problems }),
    }
}

/// `value` if it lies in `min..=max`; otherwise a problem naming `key`, and `min`.
pub(super) fn bounded(
    value: u64,
    key: &str,
    min: u64,
    max: u64,
    problems: &mut Vec<String>,
) -> u64 {
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
pub(super) fn narrow(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// A profile's or caller's name, or a problem at `at`: names appear in logs and metrics, so
/// they are short and plain.
pub(super) fn valid_name(
    at: &str,
    name: Option<String>,
    problems: &mut Vec<String>,
) -> Option<String> {
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

fn is_caller_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn decode_sha256(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}
