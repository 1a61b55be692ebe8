//! What may be stored, for how long, and what a stored answer may still be used for: pure
//! functions of the upstream answer, the question, the request and the clock.

use std::time::{Duration, Instant};

use http::header::CACHE_CONTROL;
use http::{HeaderMap, StatusCode};
use time::OffsetDateTime;

use super::status::BypassReason;
use crate::config::CacheConfig;
use crate::query::UsageQuery;

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
    if has_directive(headers, "no-store") {
        return Err(BypassReason::NoStore);
    }
    if body_len > max_entry_bytes {
        return Err(BypassReason::TooLarge);
    }
    Ok(())
}

/// Whether `Cache-Control` holds `directive` (RFC 9111 §5.2: case-insensitive tokens,
/// comma-separated, possibly over several header lines; arguments ignored).
fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let name = item.split('=').next().unwrap_or_default().trim();
            name.eq_ignore_ascii_case(directive)
        })
}

/// The caller's request directives this cache honours (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestDirectives {
    /// `only-if-cached`: answer from storage or 504, never from the upstream.
    pub only_if_cached: bool,
    /// `no-cache`: do not answer from storage without asking the upstream.
    pub no_cache: bool,
}

impl RequestDirectives {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        if !headers.contains_key(CACHE_CONTROL) {
            return Self::default();
        }
        Self {
            only_if_cached: has_directive(headers, "only-if-cached"),
            no_cache: has_directive(headers, "no-cache"),
        }
    }
}

/// How long an answer stays fresh, by what it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    pub ttl: Duration,
    pub closed_period_ttl: Duration,
    pub late_data_grace: Duration,
}

impl From<&CacheConfig> for TtlPolicy {
    fn from(config: &CacheConfig) -> Self {
        Self {
            ttl: config.ttl,
            closed_period_ttl: config.closed_period_ttl,
            late_data_grace: config.late_data_grace,
        }
    }
}

/// Finality-aware freshness: usage for periods that closed long ago (every `time` filter
/// names a UTC day, month or year that ended more than `late_data_grace` before `now`) no
/// longer changes, so it keeps `closed_period_ttl`. Anything else, including a query without
/// a time filter, keeps `ttl`.
pub fn ttl_for(query: &UsageQuery, now: OffsetDateTime, policy: &TtlPolicy) -> Duration {
    let mut periods = query.periods().peekable();
    if periods.peek().is_none() {
        return policy.ttl;
    }
    let closed = periods.all(|period| {
        // A period ending near the calendar's edge (year 9999) plus the grace is past what a
        // date can hold: such a period is never closed, rather than a panic.
        time::Duration::try_from(policy.late_data_grace)
            .ok()
            .and_then(|grace| period.end().checked_add(grace))
            .is_some_and(|settled| settled <= now)
    });
    if closed {
        policy.closed_period_ttl
    } else {
        policy.ttl
    }
}

/// How long past freshness a stored answer may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleWindows {
    pub while_revalidate: Duration,
    pub if_error: Duration,
}

impl StaleWindows {
    /// How long an entry is kept past its freshness.
    pub fn keep(&self) -> Duration {
        self.while_revalidate.max(self.if_error)
    }
}

/// What a stored answer may be used for at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it: this much freshness is left.
    Fresh { left: Duration },
    /// Expired this long ago, within stale-while-revalidate: serve it and refresh.
    Revalidate { expired: Duration },
    /// Expired this long ago, within stale-if-error only: fetch, and serve it if that fails.
    IfError { expired: Duration },
    /// Too old for anything.
    Unusable,
}

pub fn freshness(fresh_until: Instant, now: Instant, windows: &StaleWindows) -> Freshness {
    if now < fresh_until {
        return Freshness::Fresh {
            left: fresh_until - now,
        };
    }
    let expired = now - fresh_until;
    if expired < windows.while_revalidate {
        Freshness::Revalidate { expired }
    } else if expired < windows.if_error {
        Freshness::IfError { expired }
    } else {
        Freshness::Unusable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use time::macros::datetime;

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
    fn request_directives_are_read_from_cache_control() {
        // (cache-control lines, only-if-cached, no-cache)
        let rows = [
            (vec![], false, false),
            (vec!["only-if-cached"], true, false),
            (vec!["No-Cache"], false, true),
            (vec!["max-age=0, no-cache"], false, true),
            (vec!["no-store", "only-if-cached"], true, false),
            (vec!["no-cache-please"], false, false),
        ];
        for (lines, only_if_cached, no_cache) in rows {
            assert_eq!(
                RequestDirectives::from_headers(&headers(&lines)),
                RequestDirectives {
                    only_if_cached,
                    no_cache
                },
                "{lines:?}"
            );
        }
    }

    const POLICY: TtlPolicy = TtlPolicy {
        ttl: Duration::from_secs(60),
        closed_period_ttl: Duration::from_secs(86_400),
        late_data_grace: Duration::from_secs(172_800),
    };

    fn ttl(target: &str, now: OffsetDateTime) -> u64 {
        let query = UsageQuery::from_target(target)
            .expect("valid")
            .expect("route");
        ttl_for(&query, now, &POLICY).as_secs()
    }

    #[test]
    fn closed_periods_keep_the_long_ttl_and_open_ones_the_short() {
        let now = datetime!(2024-03-10 12:00 UTC);
        // (query, ttl in seconds) — one row per rule.
        let rows = [
            // no time filter: volatile
            ("/usage", 60),
            ("/usage?filter=country_code:dk", 60),
            ("/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90", 60),
            // a year, a month, a day long closed
            ("/usage?filter=time:2023", 86_400),
            ("/usage?filter=time:2024-01", 86_400),
            ("/usage?filter=time:2024-03-01", 86_400),
            // ended, but within the late-data grace (ended 2024-03-09 00:00, 36 h ago)
            ("/usage?filter=time:2024-03-08", 60),
            // ended 2024-03-08 00:00, 60 h ago: past the grace, closed
            ("/usage?filter=time:2024-03-07", 86_400),
            // still open: today, this month, this year
            ("/usage?filter=time:2024-03-10", 60),
            ("/usage?filter=time:2024-03", 60),
            ("/usage?filter=time:2024", 60),
            // the future is open
            ("/usage?filter=time:2025", 60),
            // the calendar's last year, month and day: open, not an overflow
            ("/usage?filter=time:9999", 60),
            ("/usage?filter=time:9999-12", 60),
            ("/usage?filter=time:9999-12-31", 60),
            // every period must be closed
            ("/usage?filter[]=time:2023&filter[]=time:2024-03", 60),
            ("/usage?filter[]=time:2023&filter[]=time:2024-01", 86_400),
            // other filters do not change finality
            (
                "/usage/000000001?filter[]=time:2024-02&filter[]=country_code:se",
                86_400,
            ),
        ];
        for (query, expected) in rows {
            assert_eq!(ttl(query, now), expected, "{query}");
        }
    }

    #[test]
    fn a_period_becomes_closed_exactly_at_its_end_plus_the_grace() {
        let end_of_feb = datetime!(2024-03-01 00:00 UTC);
        let grace = time::Duration::seconds(172_800);
        assert_eq!(
            ttl(
                "/usage?filter=time:2024-02",
                end_of_feb + grace - time::Duration::SECOND
            ),
            60
        );
        assert_eq!(
            ttl("/usage?filter=time:2024-02", end_of_feb + grace),
            86_400
        );
    }

    #[test]
    fn freshness_follows_the_stale_windows() {
        let stored = Instant::now();
        let fresh_until = stored + Duration::from_secs(60);
        let windows = StaleWindows {
            while_revalidate: Duration::from_secs(30),
            if_error: Duration::from_secs(3600),
        };
        let at = |secs| freshness(fresh_until, stored + Duration::from_secs(secs), &windows);
        assert_eq!(
            at(0),
            Freshness::Fresh {
                left: Duration::from_secs(60)
            }
        );
        assert_eq!(
            at(60),
            Freshness::Revalidate {
                expired: Duration::ZERO
            }
        );
        assert_eq!(
            at(89),
            Freshness::Revalidate {
                expired: Duration::from_secs(29)
            }
        );
        assert_eq!(
            at(90),
            Freshness::IfError {
                expired: Duration::from_secs(30)
            }
        );
        assert_eq!(
            at(3659),
            Freshness::IfError {
                expired: Duration::from_secs(3599)
            }
        );
        assert_eq!(at(3660), Freshness::Unusable);
        assert_eq!(windows.keep(), Duration::from_secs(3600));
    }
}
