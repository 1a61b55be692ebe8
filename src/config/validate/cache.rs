//! `[cache]`: how long answers stay fresh, how long they may serve stale, and how much is kept.

use std::time::Duration;

use super::bounded;
use crate::config::raw::RawCache;
use crate::config::{
    CacheConfig, DEFAULT_CLOSED_PERIOD_TTL_SECS, DEFAULT_LATE_DATA_GRACE_SECS, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRY_BYTES, DEFAULT_STALE_IF_ERROR_SECS, DEFAULT_STALE_WHILE_REVALIDATE_SECS,
    DEFAULT_TTL_SECS, MAX_UPSTREAM_BODY_BYTES,
};

/// A whole-year bound on every duration setting, so none can overflow an `Instant`.
const MAX_SECS: u64 = 366 * 86_400;

pub(super) fn validate(raw: RawCache, problems: &mut Vec<String>) -> CacheConfig {
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
        MAX_UPSTREAM_BODY_BYTES as u64,
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
