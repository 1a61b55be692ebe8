//! What the cache holds: [`CacheKey`] and [`CachedResponse`], and how much each weighs.
//!
//! A key is the canonical query plus the identity of the upstream credential that fetched the
//! answer, and nothing else: no caller name, no caller header, no raw query text, so no caller
//! can plant an entry that another question would read (cache poisoning), and two upstream
//! tokens never share an entry. Bodies are `Bytes`: serving a hit copies no body bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, AGE, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use super::status::{CacheStatus, CACHE_STATUS};
use crate::config::Secret;
use crate::error::ResponseBody;
use crate::shared::cache::SharedEntry;

/// Fixed bookkeeping per entry (key, Arc, moka's node), counted so that many tiny entries
/// cannot exceed `cache.max_bytes` by their overhead alone.
const ENTRY_OVERHEAD: usize = 256;

/// Identifies an upstream credential without holding it: the first 8 bytes of its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialId(u64);

impl CredentialId {
    pub fn of(token: &Secret) -> Self {
        let digest = Sha256::digest(token.expose().as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    credential: CredentialId,
    target: Arc<str>,
}

impl CacheKey {
    pub fn new(credential: CredentialId, canonical_target: Arc<str>) -> Self {
        Self {
            credential,
            target: canonical_target,
        }
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// The whole question, as the shared cache names and checks it: the credential's identity
    /// and the canonical target.
    pub fn question(&self) -> String {
        format!("{:016x} {}", self.credential.0, self.target)
    }
}

/// A buffered upstream answer: what the cache stores, and what coalesced waiters share.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    pub stored_at: Instant,
    /// How long it is fresh after `stored_at` (chosen by `policy::ttl_for`).
    pub fresh_for: Duration,
}

impl CachedResponse {
    /// The same answer in buffers of its own. What hyper reads arrives as slices of the
    /// connection's read buffer: a stored slice would keep that whole buffer (up to hundreds
    /// of KiB) alive for the entry's lifetime while the weigher counts only the slice, so
    /// `cache.max_bytes` would not bound memory. Stored entries hold exactly what is weighed.
    pub fn detached(self) -> Self {
        Self {
            content_type: self.content_type.map(|value| {
                match HeaderValue::from_bytes(value.as_bytes()) {
                    Ok(copy) => copy,
                    // Unreachable (the bytes came from a valid value); keep the original.
                    Err(_) => value,
                }
            }),
            body: Bytes::copy_from_slice(&self.body),
            ..self
        }
    }

    /// This answer as the shared cache stores it (`stored_at_ms` is set by Redis). The one
    /// place that reads a stored answer's parts for the shared tier: a change of how answers
    /// are held here changes this pair, not the shared tier.
    pub fn to_shared(&self, question: String) -> SharedEntry {
        SharedEntry {
            stored_at_ms: 0,
            fresh_for: self.fresh_for,
            status: self.status.as_u16(),
            content_type: self
                .content_type
                .as_ref()
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            question,
            body: self.body.clone(),
        }
    }

    /// The answer `entry` holds, `age` old now: it expires here when it expires in Redis.
    /// `None` for a status or content type that is not valid.
    pub fn from_shared(entry: SharedEntry, age: Duration) -> Option<Self> {
        let now = Instant::now();
        // Shortly after boot the monotonic clock cannot go back `age`: keep the absolute
        // expiry by shortening the freshness instead.
        let (stored_at, fresh_for) = match now.checked_sub(age) {
            Some(at) => (at, entry.fresh_for),
            None => (now, entry.fresh_for.saturating_sub(age)),
        };
        Some(Self {
            status: StatusCode::from_u16(entry.status).ok()?,
            content_type: match entry.content_type {
                Some(value) => Some(HeaderValue::from_str(&value).ok()?),
                None => None,
            },
            body: entry.body,
            stored_at,
            fresh_for,
        })
    }

    /// moka's weigher: body and key bytes plus a fixed overhead, saturating at `u32::MAX`.
    pub fn weight(key: &CacheKey, value: &Arc<CachedResponse>) -> u32 {
        let bytes = value.body.len() + key.target.len() + ENTRY_OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    pub fn fresh_until(&self) -> Instant {
        self.stored_at + self.fresh_for
    }

    /// The response for one caller; `Age` (RFC 9111 §5.1) accompanies answers served from storage.
    pub fn to_response(&self, status: CacheStatus, now: Instant) -> Response<ResponseBody> {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(content_type) = &self.content_type {
            headers.insert(CONTENT_TYPE, content_type.clone());
        }
        if status.from_storage() {
            let age = now.saturating_duration_since(self.stored_at).as_secs();
            headers.insert(AGE, HeaderValue::from(age));
        }
        headers.insert(CACHE_STATUS.clone(), status.header_value());
        response.extensions_mut().insert(status);
        response
    }
}

/// moka's per-entry lifetime: each entry lives its own freshness plus the stale windows (as
/// configured when it is stored), so stale answers are still there to serve; freshness itself
/// is checked on every read.
#[derive(Debug, Clone)]
pub struct EntryExpiry {
    pub settings: Arc<arc_swap::ArcSwap<super::Settings>>,
}

impl EntryExpiry {
    fn lifetime(&self, value: &CachedResponse) -> Duration {
        value.fresh_for + self.settings.load().stale.keep()
    }
}

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_credentials_never_share_a_key() {
        let target: Arc<str> = "/usage?limit=1000".into();
        let a = CacheKey::new(CredentialId::of(&Secret::new("token-a")), target.clone());
        let b = CacheKey::new(CredentialId::of(&Secret::new("token-b")), target.clone());
        let a_again = CacheKey::new(CredentialId::of(&Secret::new("token-a")), target);
        assert_ne!(a, b);
        assert_eq!(a, a_again);
    }

    #[test]
    fn a_detached_answer_shares_no_buffer_with_what_it_was_read_from() {
        let read_buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let answer = CachedResponse {
            status: StatusCode::OK,
            content_type: Some(
                HeaderValue::from_maybe_shared(read_buffer.slice(0..16)).expect("valid"),
            ),
            body: read_buffer.slice(100..110),
            stored_at: Instant::now(),
            fresh_for: Duration::from_secs(60),
        };
        let detached = answer.clone().detached();
        assert_eq!(detached.body, answer.body);
        assert_eq!(detached.content_type, answer.content_type);
        let buffer = read_buffer.as_ptr_range();
        assert!(!buffer.contains(&detached.body.as_ptr()));
        let content_type = detached.content_type.as_ref().expect("kept");
        assert!(!buffer.contains(&content_type.as_bytes().as_ptr()));
    }

    #[test]
    fn an_answer_through_the_shared_cache_keeps_its_parts_and_its_expiry() {
        let answer = CachedResponse {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/json; charset=utf-8")),
            body: Bytes::from_static(b"{\"usage\":[]}"),
            stored_at: Instant::now(),
            fresh_for: Duration::from_secs(60),
        };
        let shared = answer.to_shared("q".into());
        assert_eq!(shared.question, "q");
        let back = CachedResponse::from_shared(shared, Duration::from_secs(20)).expect("valid");
        assert_eq!(
            (&back.status, &back.content_type, &back.body, back.fresh_for),
            (
                &answer.status,
                &answer.content_type,
                &answer.body,
                answer.fresh_for
            )
        );
        let left = back.fresh_until().saturating_duration_since(Instant::now());
        assert!(
            left <= Duration::from_secs(40) && left > Duration::from_secs(39),
            "{left:?}"
        );
    }

    #[test]
    fn weight_counts_body_key_and_overhead() {
        let key = CacheKey::new(CredentialId::of(&Secret::new("t")), "/usage".into());
        let value = Arc::new(CachedResponse {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from(vec![0u8; 1000]),
            stored_at: Instant::now(),
            fresh_for: Duration::from_secs(60),
        });
        assert_eq!(
            CachedResponse::weight(&key, &value) as usize,
            1000 + "/usage".len() + ENTRY_OVERHEAD
        );
    }
}
