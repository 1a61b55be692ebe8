//! How a request's answer was produced, as the access log and the metrics name it: the
//! closed set of cache outcomes. The cache's own [`CacheStatus`](crate::cache::CacheStatus)
//! carries more (a hit's TTL, a bypass's reason) for the `Cache-Status` header; this is the
//! label those details fold into. It lives below the cache so that the request's facts, the
//! log line and the metrics can carry it without depending on the cache.

/// The `cache` field of the access line and label of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CacheOutcome {
    Hit = 1,
    Miss,
    Collapsed,
    StaleWhileRevalidate,
    StaleIfError,
    Bypass,
    /// A memory miss answered from the shared cache (another replica's fill).
    SharedHit,
}

/// Which upstream call a cache outcome saved, for `usage_gateway_upstream_calls_saved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saving {
    Hit,
    Collapsed,
    Stale,
}

impl Saving {
    pub fn as_str(self) -> &'static str {
        match self {
            Saving::Hit => "hit",
            Saving::Collapsed => "collapsed",
            Saving::Stale => "stale",
        }
    }
}

impl CacheOutcome {
    pub const ALL: [CacheOutcome; 7] = [
        CacheOutcome::Hit,
        CacheOutcome::Miss,
        CacheOutcome::Collapsed,
        CacheOutcome::StaleWhileRevalidate,
        CacheOutcome::StaleIfError,
        CacheOutcome::Bypass,
        CacheOutcome::SharedHit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Collapsed => "collapsed",
            CacheOutcome::StaleWhileRevalidate => "stale-while-revalidate",
            CacheOutcome::StaleIfError => "stale-if-error",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::SharedHit => "shared-hit",
        }
    }

    /// The label of a request that never reached the cache (refused before it, or failed).
    pub fn label(outcome: Option<CacheOutcome>) -> &'static str {
        outcome.map_or("none", CacheOutcome::as_str)
    }

    /// The upstream call this outcome saved, if it saved one.
    pub fn saving(self) -> Option<Saving> {
        match self {
            CacheOutcome::Hit | CacheOutcome::SharedHit => Some(Saving::Hit),
            CacheOutcome::Collapsed => Some(Saving::Collapsed),
            CacheOutcome::StaleWhileRevalidate | CacheOutcome::StaleIfError => Some(Saving::Stale),
            CacheOutcome::Miss | CacheOutcome::Bypass => None,
        }
    }

    /// Dense index, 0 for "none": the metrics keep their handles in arrays by it.
    pub fn index(outcome: Option<CacheOutcome>) -> usize {
        outcome.map_or(0, |o| o as usize)
    }

    /// The inverse of `o as u8` (0 and unknown values are `None`), for facts kept in atomics.
    pub fn from_u8(value: u8) -> Option<CacheOutcome> {
        CacheOutcome::ALL.into_iter().find(|o| *o as u8 == value)
    }
}

/// Number of distinct [`CacheOutcome::index`] values.
pub const OUTCOME_SLOTS: usize = CacheOutcome::ALL.len() + 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_byte() {
        for outcome in CacheOutcome::ALL {
            assert_eq!(CacheOutcome::from_u8(outcome as u8), Some(outcome));
            assert!(CacheOutcome::index(Some(outcome)) < OUTCOME_SLOTS);
        }
        assert_eq!(CacheOutcome::from_u8(0), None);
        assert_eq!(CacheOutcome::index(None), 0);
    }
}
