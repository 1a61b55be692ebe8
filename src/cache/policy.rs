//! What may be stored and for how long: pure functions of the upstream answer and the clock.

use std::time::{Duration, Instant};

use http::header::CACHE_CONTROL;
use http::{HeaderMap, StatusCode};

use super::status::BypassReason;

/// Whether an upstream answer may be stored (RFC 9111 §3, narrowed to this API).
///
/// Only 200 answers are stored: 400/404 are the caller's mistakes and are cheap to repeat
/// upstream, and every other status is an error. `Cache-Control: no-store` is honoured.
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    body_len: usize,
    max_entry_bytes: usize,
) -> Result<(), BypassReason> {
    if status != StatusCode::OK {
        return Err(BypassReason::UpstreamStatus);
    }
    if has_no_store(headers) {
        return Err(BypassReason::NoStore);
    }
    if body_len > max_entry_bytes {
        return Err(BypassReason::TooLarge);
    }
    Ok(())
}

/// `no-store` among the `Cache-Control` directives (RFC 9111 §5.2: case-insensitive tokens,
/// comma-separated, possibly over several header lines).
fn has_no_store(headers: &HeaderMap) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|directive| {
            let name = directive.split('=').next().unwrap_or_default().trim();
            name.eq_ignore_ascii_case("no-store")
        })
}

/// Whole seconds of freshness left for an entry stored at `stored_at` with lifetime `ttl`.
pub fn remaining_ttl_secs(stored_at: Instant, ttl: Duration, now: Instant) -> u64 {
    ttl.saturating_sub(now.saturating_duration_since(stored_at))
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(cache_control: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in cache_control {
            map.append(CACHE_CONTROL, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn only_plain_200_answers_are_stored() {
        // (status, cache-control, body length, verdict)
        let rows = [
            (200, vec![], 10, Ok(())),
            (200, vec!["max-age=60"], 10, Ok(())),
            (200, vec!["no-store"], 10, Err(BypassReason::NoStore)),
            (
                200,
                vec!["private, NO-STORE"],
                10,
                Err(BypassReason::NoStore),
            ),
            (
                200,
                vec!["max-age=5", "no-store"],
                10,
                Err(BypassReason::NoStore),
            ),
            (200, vec![], 101, Err(BypassReason::TooLarge)),
            (400, vec![], 10, Err(BypassReason::UpstreamStatus)),
            (404, vec![], 10, Err(BypassReason::UpstreamStatus)),
            (203, vec![], 10, Err(BypassReason::UpstreamStatus)),
        ];
        for (status, cache_control, len, verdict) in rows {
            let status = StatusCode::from_u16(status).expect("status");
            assert_eq!(
                storable(status, &headers(&cache_control), len, 100),
                verdict,
                "{status} {cache_control:?} {len}"
            );
        }
    }

    #[test]
    fn remaining_ttl_counts_down_and_stops_at_zero() {
        let stored = Instant::now();
        let ttl = Duration::from_secs(60);
        assert_eq!(remaining_ttl_secs(stored, ttl, stored), 60);
        assert_eq!(
            remaining_ttl_secs(stored, ttl, stored + Duration::from_millis(1500)),
            58
        );
        assert_eq!(
            remaining_ttl_secs(stored, ttl, stored + Duration::from_secs(90)),
            0
        );
    }
}
