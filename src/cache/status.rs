//! Cache decisions as named values: how each answer was produced, for the `Cache-Status`
//! header (RFC 9211) and the `cache` field of the request's log line alike.

use http::header::{HeaderName, HeaderValue};

use crate::outcome::CacheOutcome;

/// Name this cache gives itself in `Cache-Status` (RFC 9211 §2).
pub const CACHE_NAME: &str = "usage-gateway";

const HIT_PREFIX: &str = "usage-gateway; hit; ttl=";

/// The `Cache-Status` response header (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why an upstream answer was served but not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// Only 200 answers are stored.
    UpstreamStatus,
    /// The upstream said `Cache-Control: no-store` (RFC 9111 §5.2.2.5).
    NoStore,
    /// Larger than one entry may be.
    TooLarge,
}

impl BypassReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BypassReason::UpstreamStatus => "upstream-status",
            BypassReason::NoStore => "no-store",
            BypassReason::TooLarge => "too-large",
        }
    }
}

/// Why an expired answer was served (RFC 5861).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// Expired moments ago; one refresh runs in the background.
    WhileRevalidate,
    /// The upstream (or the budget protecting it) failed; this beats the error.
    IfError,
}

impl StaleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
        }
    }
}

/// How one answer was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from storage, with this many whole seconds of freshness left.
    Hit { ttl_secs: u64 },
    /// Served from storage after it expired, this many whole seconds ago (rounded up).
    Stale {
        expired_secs: u64,
        reason: StaleReason,
    },
    /// A memory miss answered from the shared cache, with this many whole seconds of
    /// freshness left (`[shared]`).
    SharedHit { ttl_secs: u64 },
    /// This request waited for another replica's fetch of the same question and was answered
    /// from the shared cache when it landed (`[shared]`).
    SharedCollapsed,
    /// This request fetched the answer upstream and stored it.
    Stored,
    /// This request waited for another request's identical fetch and shares its answer.
    Collapsed,
    /// Fetched upstream (by this request, or by the one it waited for) and not stored.
    Bypass {
        reason: BypassReason,
        collapsed: bool,
    },
}

impl CacheStatus {
    /// The `cache` field of the log line and label of the metrics.
    pub fn outcome(self) -> CacheOutcome {
        match self {
            CacheStatus::Hit { .. } => CacheOutcome::Hit,
            CacheStatus::Stale {
                reason: StaleReason::WhileRevalidate,
                ..
            } => CacheOutcome::StaleWhileRevalidate,
            CacheStatus::Stale {
                reason: StaleReason::IfError,
                ..
            } => CacheOutcome::StaleIfError,
            CacheStatus::SharedHit { .. } => CacheOutcome::SharedHit,
            CacheStatus::SharedCollapsed => CacheOutcome::Collapsed,
            CacheStatus::Stored => CacheOutcome::Miss,
            CacheStatus::Collapsed => CacheOutcome::Collapsed,
            CacheStatus::Bypass { .. } => CacheOutcome::Bypass,
        }
    }

    /// The outcome's name (see [`CacheStatus::outcome`]).
    pub fn as_str(self) -> &'static str {
        self.outcome().as_str()
    }

    /// Answered from storage (so it carries `Age`).
    pub fn from_storage(self) -> bool {
        matches!(
            self,
            CacheStatus::Hit { .. } | CacheStatus::Stale { .. } | CacheStatus::SharedHit { .. }
        )
    }

    /// The `Cache-Status` value, as RFC 9211 §2 spells its parameters.
    pub fn header_value(self) -> HeaderValue {
        // Hits are the hot path: build their value without the formatting machinery.
        if let CacheStatus::Hit { ttl_secs } = self {
            let mut digits = itoa::Buffer::new();
            let ttl = digits.format(ttl_secs);
            let mut value = Vec::with_capacity(HIT_PREFIX.len() + ttl.len());
            value.extend_from_slice(HIT_PREFIX.as_bytes());
            value.extend_from_slice(ttl.as_bytes());
            return HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
                .expect("a hit's Cache-Status is ASCII");
        }
        let text = match self {
            CacheStatus::Hit { ttl_secs } => format!("{CACHE_NAME}; hit; ttl={ttl_secs}"),
            CacheStatus::Stale {
                expired_secs,
                reason,
            } => format!(
                "{CACHE_NAME}; hit; ttl=-{expired_secs}; detail={}",
                reason.as_str()
            ),
            CacheStatus::SharedHit { ttl_secs } => {
                format!("{CACHE_NAME}; hit; ttl={ttl_secs}; detail=shared")
            }
            CacheStatus::SharedCollapsed => {
                format!("{CACHE_NAME}; fwd=miss; collapsed; detail=shared")
            }
            CacheStatus::Stored => format!("{CACHE_NAME}; fwd=miss; stored"),
            CacheStatus::Collapsed => format!("{CACHE_NAME}; fwd=miss; collapsed"),
            CacheStatus::Bypass {
                reason,
                collapsed: false,
            } => format!("{CACHE_NAME}; fwd=miss; detail={}", reason.as_str()),
            CacheStatus::Bypass {
                reason,
                collapsed: true,
            } => format!(
                "{CACHE_NAME}; fwd=miss; collapsed; detail={}",
                reason.as_str()
            ),
        };
        HeaderValue::try_from(text).expect("Cache-Status values are built from ASCII tokens")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_follow_rfc_9211() {
        // (status, header value) — one row per outcome.
        let rows = [
            (
                CacheStatus::Hit { ttl_secs: 42 },
                "usage-gateway; hit; ttl=42",
            ),
            (
                CacheStatus::Stale {
                    expired_secs: 3,
                    reason: StaleReason::WhileRevalidate,
                },
                "usage-gateway; hit; ttl=-3; detail=stale-while-revalidate",
            ),
            (
                CacheStatus::Stale {
                    expired_secs: 120,
                    reason: StaleReason::IfError,
                },
                "usage-gateway; hit; ttl=-120; detail=stale-if-error",
            ),
            (
                CacheStatus::SharedHit { ttl_secs: 7 },
                "usage-gateway; hit; ttl=7; detail=shared",
            ),
            (
                CacheStatus::SharedCollapsed,
                "usage-gateway; fwd=miss; collapsed; detail=shared",
            ),
            (CacheStatus::Stored, "usage-gateway; fwd=miss; stored"),
            (CacheStatus::Collapsed, "usage-gateway; fwd=miss; collapsed"),
            (
                CacheStatus::Bypass {
                    reason: BypassReason::UpstreamStatus,
                    collapsed: false,
                },
                "usage-gateway; fwd=miss; detail=upstream-status",
            ),
            (
                CacheStatus::Bypass {
                    reason: BypassReason::NoStore,
                    collapsed: true,
                },
                "usage-gateway; fwd=miss; collapsed; detail=no-store",
            ),
        ];
        for (status, value) in rows {
            assert_eq!(status.header_value(), value);
        }
    }
}
