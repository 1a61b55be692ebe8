//! What the cache holds: [`CacheKey`] and [`CachedResponse`], and how much each weighs.
//!
//! A key is the canonical query plus the identity of the upstream credential that fetched the
//! answer, and nothing else: no caller name, no caller header, no raw query text, so no caller
//! can plant an entry that another question would read (cache poisoning), and two upstream
//! tokens never share an entry. Bodies are `Bytes`: serving a hit copies no body bytes.
//!
//! An answer is held in the forms its callers read: gzip (the upstream's bytes as sent, or
//! compressed here once) and the body itself (as fetched, or decoded once). A form is made at
//! most once per entry, by the first caller that needs it, never per hit; the weigher counts
//! every form held, and an entry that gains one is weighed again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, AGE, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use http::{Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::negotiate::Coding;
use super::status::{CacheStatus, CACHE_STATUS};
use crate::config::Secret;
use crate::error::{GatewayError, ResponseBody};
use crate::gzip;
use crate::shared::cache::SharedEntry;

/// Fixed bookkeeping per entry, counted so that many tiny entries cannot exceed
/// `cache.max_bytes` by their overhead alone: the entry itself (its status, headers, instants
/// and the once-cells of its two forms), the key, their `Arc`s, and moka's node. It was 256
/// with the single-body entry; the two forms' once-cells add 128 bytes to the entry.
pub(super) const ENTRY_OVERHEAD: usize = 384;

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
    pub stored_at: Instant,
    /// How long it is fresh after `stored_at` (chosen by `policy::ttl_for`).
    pub fresh_for: Duration,
    forms: Forms,
}

/// The forms of one body. Each is made at most once per entry, when a caller first needs it
/// (or at fill time, when the caller that started the fill needs it), and kept; at least one
/// is always held.
#[derive(Debug, Clone)]
struct Forms {
    /// The body gzip-encoded: unset until made (from `identity`), `None` when it may not be
    /// made (not smaller than the body, or an answer that is not stored and came uncompressed).
    gzip: OnceCell<Option<Bytes>>,
    /// The body itself: unset until decoded from `gzip`.
    identity: OnceCell<Bytes>,
}

/// Bodies larger than this are compressed or decoded on the blocking pool: a large answer's
/// gzip at the store level takes milliseconds, which must not hold up the hits sharing its
/// worker thread.
const INLINE_CODING_BYTES: usize = 32 * 1024;

/// Headers an answer from storage ends up with: its own five (content type, `Vary`,
/// `Content-Encoding`, `Age`, `Cache-Status`), three `x-ratelimit-*`, `X-Request-Id`, and up to
/// three of CORS.
const ANSWER_HEADERS: usize = 12;

impl CachedResponse {
    /// An answer held as its body (`plain`); its gzip form is made when first wanted.
    pub fn plain(
        status: StatusCode,
        content_type: Option<HeaderValue>,
        plain: Bytes,
        stored_at: Instant,
        fresh_for: Duration,
    ) -> Self {
        // Only 200s are compressed: errors stay plain JSON.
        let gzip = if status == StatusCode::OK {
            OnceCell::new()
        } else {
            OnceCell::new_with(Some(None))
        };
        Self {
            status,
            content_type,
            stored_at,
            fresh_for,
            forms: Forms {
                gzip,
                identity: OnceCell::new_with(Some(plain)),
            },
        }
    }

    /// Holds `gzip` (the upstream's bytes as sent) as the gzip form, and the body itself only
    /// if `keep_plain`. A gzip form that is not smaller than the body is not worth a header and
    /// a decode: then only the body is held.
    pub fn with_gzip(mut self, gzip: Bytes, keep_plain: bool) -> Self {
        let plain_len = self.forms.identity.get().map_or(usize::MAX, Bytes::len);
        if gzip.len() >= plain_len {
            self.forms.gzip = OnceCell::new_with(Some(None));
            return self;
        }
        if !keep_plain {
            self.forms.identity = OnceCell::new();
        }
        self.forms.gzip = OnceCell::new_with(Some(Some(gzip)));
        self
    }

    /// The same answer without the body itself, when its gzip form is held (else unchanged).
    pub fn without_identity(mut self) -> Self {
        if self.has_gzip() {
            self.forms.identity = OnceCell::new();
        }
        self
    }

    /// The same answer, never to be compressed here (an answer served once and not stored:
    /// compressing it would cost more than it saves).
    pub fn uncompressed(mut self) -> Self {
        if self.forms.gzip.get().is_none() {
            self.forms.gzip = OnceCell::new_with(Some(None));
        }
        self
    }

    /// Whether a gzip form is held or may be made.
    pub fn offers_gzip(&self) -> bool {
        !matches!(self.forms.gzip.get(), Some(None))
    }

    /// Whether the gzip form is held.
    pub fn has_gzip(&self) -> bool {
        matches!(self.forms.gzip.get(), Some(Some(_)))
    }

    /// Whether the body itself is held (not only its gzip form).
    pub fn has_identity(&self) -> bool {
        self.forms.identity.get().is_some()
    }

    /// Bytes held for the body, in every form held.
    pub fn stored_len(&self) -> usize {
        let gzip = match self.forms.gzip.get() {
            Some(Some(gzip)) => gzip.len(),
            _ => 0,
        };
        gzip + self.forms.identity.get().map_or(0, Bytes::len)
    }

    /// Makes sure the form `wanted` is held if it can be (making it once), and says which form
    /// to serve: gzip falls back to identity when no gzip form may be made. `grew` is true when
    /// this call made a form: the entry holds more, and must be weighed again.
    pub async fn prepare(&self, wanted: Coding) -> Result<Prepared, GatewayError> {
        if wanted == Coding::Gzip {
            let mut made = false;
            let gzip = self
                .forms
                .gzip
                .get_or_init(|| {
                    made = true;
                    let plain = self.forms.identity.get().cloned();
                    async move { compress(plain?).await }
                })
                .await;
            if gzip.is_some() {
                return Ok(Prepared {
                    coding: Coding::Gzip,
                    grew: made,
                });
            }
        }
        let mut made = false;
        self.forms
            .identity
            .get_or_try_init(|| {
                made = true;
                let gzip = match self.forms.gzip.get() {
                    Some(Some(gzip)) => Some(gzip.clone()),
                    _ => None,
                };
                async move {
                    decode(gzip.ok_or(GatewayError::Internal("a cached answer holds no body"))?)
                        .await
                }
            })
            .await?;
        Ok(Prepared {
            coding: Coding::Identity,
            grew: made,
        })
    }

    /// The same answer in buffers of its own. What hyper reads arrives as slices of the
    /// connection's read buffer: a stored slice would keep that whole buffer (up to hundreds
    /// of KiB) alive for the entry's lifetime while the weigher counts only the slice, so
    /// `cache.max_bytes` would not bound memory. Stored entries hold exactly what is weighed.
    pub fn detached(self) -> Self {
        let copy = |bytes: &Bytes| Bytes::copy_from_slice(bytes);
        Self {
            content_type: self.content_type.map(|value| {
                match HeaderValue::from_bytes(value.as_bytes()) {
                    Ok(copy) => copy,
                    // Unreachable (the bytes came from a valid value); keep the original.
                    Err(_) => value,
                }
            }),
            forms: Forms {
                gzip: OnceCell::new_with(self.forms.gzip.get().map(|gzip| gzip.as_ref().map(copy))),
                identity: OnceCell::new_with(self.forms.identity.get().map(copy)),
            },
            ..self
        }
    }

    /// This answer as the shared cache stores it (`stored_at_ms` is set by Redis): its gzip
    /// form when it holds one (the smaller, and what most callers take), else its body. The one
    /// place that reads a stored answer's parts for the shared tier: a change of how answers
    /// are held here changes this pair, not the shared tier.
    pub fn to_shared(&self, question: String) -> SharedEntry {
        let (body, gzip) = match (self.forms.gzip.get(), self.forms.identity.get()) {
            (Some(Some(gzip)), _) => (gzip.clone(), true),
            (_, Some(identity)) => (identity.clone(), false),
            // Unreachable: an entry always holds one form.
            (_, None) => (Bytes::new(), false),
        };
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
            body,
            gzip,
        }
    }

    /// The answer `entry` holds, `age` old now: it expires here when it expires in Redis.
    /// `None` for a status or content type that is not valid. A gzip body becomes the gzip
    /// form; the plain one is made once, by the first reader that wants it, as for any entry.
    pub fn from_shared(entry: SharedEntry, age: Duration) -> Option<Self> {
        let now = Instant::now();
        // Shortly after boot the monotonic clock cannot go back `age`: keep the absolute
        // expiry by shortening the freshness instead.
        let (stored_at, fresh_for) = match now.checked_sub(age) {
            Some(at) => (at, entry.fresh_for),
            None => (now, entry.fresh_for.saturating_sub(age)),
        };
        let status = StatusCode::from_u16(entry.status).ok()?;
        let content_type = match entry.content_type {
            Some(value) => Some(HeaderValue::from_str(&value).ok()?),
            None => None,
        };
        if entry.gzip {
            return Some(Self {
                status,
                content_type,
                stored_at,
                fresh_for,
                forms: Forms {
                    gzip: OnceCell::new_with(Some(Some(entry.body))),
                    identity: OnceCell::new(),
                },
            });
        }
        Some(Self::plain(
            status,
            content_type,
            entry.body,
            stored_at,
            fresh_for,
        ))
    }

    /// moka's weigher: every stored form of the body, the key and a fixed overhead,
    /// saturating at `u32::MAX`. moka weighs at insert: an entry that grows (its body decoded
    /// for a plain reader, or compressed for a gzip one) is inserted again to be weighed again.
    pub fn weight(key: &CacheKey, value: &Arc<CachedResponse>) -> u32 {
        let bytes = value.stored_len() + key.target.len() + ENTRY_OVERHEAD;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    pub fn fresh_until(&self) -> Instant {
        self.stored_at + self.fresh_for
    }

    /// The response for one caller, in `coding` if that form is held (call [`Self::prepare`]
    /// first, and pass the coding it chose). `Age` (RFC 9111 §5.1) accompanies answers served
    /// from storage. A 200's form depends on the caller's `Accept-Encoding`, so every 200 says
    /// `Vary: Accept-Encoding` (RFC 9110 §12.5.5), the plain one too, so no cache downstream
    /// hands one caller's form to another.
    pub fn to_response(
        &self,
        status: CacheStatus,
        now: Instant,
        coding: Coding,
    ) -> Response<ResponseBody> {
        let gzip = match (coding, self.forms.gzip.get()) {
            (Coding::Gzip, Some(Some(gzip))) => Some(gzip),
            _ => None,
        };
        let body = match (gzip, self.forms.identity.get()) {
            (Some(gzip), _) => gzip.clone(),
            (None, Some(identity)) => identity.clone(),
            // Only when `prepare` was skipped; never a wrong body.
            (None, None) => Bytes::new(),
        };
        // hyper writes `Content-Length` from the body's exact size.
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        // Room for every header the outer layers add too (rate limits, request id, CORS):
        // made once at this size, the map never grows (and rehashes) on the way out, which
        // was ~4% of a hit's instructions (callgrind).
        headers.reserve(ANSWER_HEADERS);
        if let Some(content_type) = &self.content_type {
            headers.insert(CONTENT_TYPE, content_type.clone());
        }
        if self.status == StatusCode::OK {
            headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        }
        if gzip.is_some() {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
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

/// What [`CachedResponse::prepare`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The form to serve.
    pub coding: Coding,
    /// A form was made: the entry holds more than when it was weighed.
    pub grew: bool,
}

/// `plain` compressed at the store level, or `None` if the compressing thread failed (the
/// answer is then held uncompressed). `None` too when it is not smaller: see `with_gzip`.
async fn compress(plain: Bytes) -> Option<Bytes> {
    let gzip = if plain.len() <= INLINE_CODING_BYTES {
        gzip::compress(&plain, gzip::STORE_LEVEL)
    } else {
        let body = plain.clone();
        tokio::task::spawn_blocking(move || gzip::compress(&body, gzip::STORE_LEVEL))
            .await
            .ok()?
    };
    (gzip.len() < plain.len()).then_some(gzip)
}

/// The body of a stored gzip form: it was validated (or made) at fill time, within the
/// upstream body bound, so this fails only on a broken invariant.
async fn decode(gzip: Bytes) -> Result<Bytes, GatewayError> {
    const BROKEN: GatewayError = GatewayError::Internal("a stored gzip body did not decode");
    let limit = crate::config::MAX_UPSTREAM_BODY_BYTES;
    // gzip shrinks usage JSON about tenfold: judge the decoded size by the encoded one.
    if gzip.len() <= INLINE_CODING_BYTES / 8 {
        return gzip::decode(&gzip, limit).map_err(|_| BROKEN);
    }
    tokio::task::spawn_blocking(move || gzip::decode(&gzip, limit))
        .await
        .map_err(|_| BROKEN)?
        .map_err(|_| BROKEN)
}

/// moka's per-entry lifetime: each entry lives its own freshness plus the stale windows (as
/// configured when it is stored), so stale answers are still there to serve; freshness itself
/// is checked on every read.
#[derive(Debug, Clone)]
pub struct EntryExpiry {
    pub settings: Arc<arc_swap::ArcSwap<super::Settings>>,
}

impl EntryExpiry {
    /// From `now` until `stored_at + fresh_for + keep`: measured from when the answer was
    /// fetched, so inserting an entry again (weighed again after it grew, or purged soft)
    /// never extends its life.
    fn lifetime(&self, value: &CachedResponse, now: Instant) -> Duration {
        (value.fresh_until() + self.settings.load().stale.keep()).saturating_duration_since(now)
    }
}

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(value, created_at))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value, updated_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_overhead_grows_with_the_entry() {
        let entry = std::mem::size_of::<CachedResponse>();
        let key = std::mem::size_of::<CacheKey>();
        // Two Arc headers (strong and weak counts) and the key's Arc<str> header.
        let arcs = 3 * 2 * std::mem::size_of::<usize>();
        // A tripwire: what is left for moka's node stays what it was with the single-body
        // entry (256 - 112 - 24 - 48 = 72 B); an entry that grows must raise the overhead.
        assert!(
            entry + key + arcs + 64 <= ENTRY_OVERHEAD,
            "entry {entry} B + key {key} B + arcs {arcs} B leave too little of {ENTRY_OVERHEAD} B"
        );
    }

    #[test]
    fn different_credentials_never_share_a_key() {
        let target: Arc<str> = "/usage?limit=1000".into();
        let a = CacheKey::new(CredentialId::of(&Secret::new("token-a")), target.clone());
        let b = CacheKey::new(CredentialId::of(&Secret::new("token-b")), target.clone());
        let a_again = CacheKey::new(CredentialId::of(&Secret::new("token-a")), target);
        assert_ne!(a, b);
        assert_eq!(a, a_again);
    }

    fn answer(body: Bytes) -> CachedResponse {
        CachedResponse::plain(
            StatusCode::OK,
            None,
            body,
            Instant::now(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn a_detached_answer_shares_no_buffer_with_what_it_was_read_from() {
        let read_buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut answer =
            answer(read_buffer.slice(100..110)).with_gzip(read_buffer.slice(200..205), true);
        answer.content_type =
            Some(HeaderValue::from_maybe_shared(read_buffer.slice(0..16)).expect("valid"));
        let detached = answer.clone().detached();
        assert_eq!(detached.forms.identity.get(), answer.forms.identity.get());
        assert_eq!(detached.forms.gzip.get(), answer.forms.gzip.get());
        assert_eq!(detached.content_type, answer.content_type);
        let buffer = read_buffer.as_ptr_range();
        let identity = detached.forms.identity.get().expect("kept");
        assert!(!buffer.contains(&identity.as_ptr()));
        let Some(Some(gzip)) = detached.forms.gzip.get() else {
            panic!("the gzip form was kept");
        };
        assert!(!buffer.contains(&gzip.as_ptr()));
        let content_type = detached.content_type.as_ref().expect("kept");
        assert!(!buffer.contains(&content_type.as_bytes().as_ptr()));
    }

    #[tokio::test]
    async fn an_answer_through_the_shared_cache_keeps_its_parts_and_its_expiry() {
        let plain = Bytes::from_static(b"{\"usage\":[]}");
        let answer = CachedResponse::plain(
            StatusCode::OK,
            Some(HeaderValue::from_static("application/json; charset=utf-8")),
            plain.clone(),
            Instant::now(),
            Duration::from_secs(60),
        );
        let shared = answer.to_shared("q".into());
        assert_eq!(shared.question, "q");
        assert!(!shared.gzip);
        let back = CachedResponse::from_shared(shared, Duration::from_secs(20)).expect("valid");
        assert_eq!(
            (&back.status, &back.content_type, back.fresh_for),
            (&answer.status, &answer.content_type, answer.fresh_for)
        );
        assert_eq!(back.forms.identity.get(), Some(&plain));
        let left = back.fresh_until().saturating_duration_since(Instant::now());
        assert!(
            left <= Duration::from_secs(40) && left > Duration::from_secs(39),
            "{left:?}"
        );
    }

    #[tokio::test]
    async fn a_gzip_answer_goes_through_the_shared_cache_as_gzip_and_reads_plain_once() {
        let plain = Bytes::from(vec![b' '; 4000]);
        let gzip = gzip::compress(&plain, gzip::STORE_LEVEL);
        let answer = CachedResponse::plain(
            StatusCode::OK,
            None,
            plain.clone(),
            Instant::now(),
            Duration::from_secs(60),
        )
        .with_gzip(gzip.clone(), false);
        let shared = answer.to_shared("q".into());
        assert!(shared.gzip);
        assert_eq!(shared.body, gzip);
        let back = CachedResponse::from_shared(shared, Duration::ZERO).expect("valid");
        assert!(back.has_gzip() && !back.has_identity());
        back.prepare(Coding::Identity).await.expect("decodes");
        assert_eq!(back.forms.identity.get(), Some(&plain));
    }

    #[tokio::test]
    async fn weight_counts_every_form_held_key_and_overhead() {
        let key = CacheKey::new(CredentialId::of(&Secret::new("t")), "/usage".into());
        let overhead = "/usage".len() + ENTRY_OVERHEAD;
        let plain = Bytes::from(vec![b' '; 1000]);
        let gzip = gzip::compress(&plain, gzip::STORE_LEVEL);
        let weight = |entry: &CachedResponse| {
            CachedResponse::weight(&key, &Arc::new(entry.clone())) as usize
        };
        let only_plain = answer(plain.clone());
        assert_eq!(weight(&only_plain), 1000 + overhead);
        let both = answer(plain.clone()).with_gzip(gzip.clone(), true);
        assert_eq!(weight(&both), 1000 + gzip.len() + overhead);
        let only_gzip = answer(plain.clone()).with_gzip(gzip.clone(), false);
        assert_eq!(weight(&only_gzip), gzip.len() + overhead);
        // Each missing form is made once, by its first reader, and then counted.
        let identity = Prepared {
            coding: Coding::Identity,
            grew: true,
        };
        assert_eq!(
            only_gzip.prepare(Coding::Identity).await.expect("prepares"),
            identity
        );
        let held = Prepared {
            grew: false,
            ..identity
        };
        assert_eq!(
            only_gzip.prepare(Coding::Identity).await.expect("prepares"),
            held
        );
        assert_eq!(weight(&only_gzip), 1000 + gzip.len() + overhead);
        let made = Prepared {
            coding: Coding::Gzip,
            grew: true,
        };
        assert_eq!(
            only_plain.prepare(Coding::Gzip).await.expect("prepares"),
            made
        );
        assert_eq!(weight(&only_plain), 1000 + gzip.len() + overhead);
    }

    #[tokio::test]
    async fn a_gzip_form_no_smaller_than_the_body_is_not_kept() {
        let plain = Bytes::from_static(b"{}");
        let gzip = gzip::compress(&plain, gzip::STORE_LEVEL);
        let entry = answer(plain.clone()).with_gzip(gzip, false);
        assert!(!entry.offers_gzip());
        assert_eq!(
            entry.forms.identity.get(),
            Some(&plain),
            "kept whatever was asked"
        );
        let made_here = answer(plain.clone());
        assert!(made_here.offers_gzip(), "until it is tried");
        let identity = Prepared {
            coding: Coding::Identity,
            grew: false,
        };
        assert_eq!(
            made_here.prepare(Coding::Gzip).await.expect("prepares"),
            identity
        );
        assert!(!made_here.offers_gzip());
    }

    #[test]
    fn only_200s_and_stored_answers_are_compressed_here() {
        let refused = CachedResponse::plain(
            StatusCode::NOT_FOUND,
            None,
            Bytes::from(vec![b' '; 1000]),
            Instant::now(),
            Duration::from_secs(60),
        );
        assert!(!refused.offers_gzip());
        assert!(answer(Bytes::from(vec![b' '; 1000])).offers_gzip());
        assert!(!answer(Bytes::from(vec![b' '; 1000]))
            .uncompressed()
            .offers_gzip());
    }

    fn body_of(response: Response<ResponseBody>) -> Bytes {
        use http_body_util::BodyExt;
        futures_util::FutureExt::now_or_never(response.into_body().collect())
            .expect("a full body is ready")
            .map(|collected| collected.to_bytes())
            .unwrap_or_else(|never| match never {})
    }

    #[tokio::test]
    async fn each_form_is_served_with_its_headers() {
        let plain = Bytes::from(vec![b'a'; 500]);
        let gzip = gzip::compress(&plain, gzip::STORE_LEVEL);
        let entry = answer(plain.clone()).with_gzip(gzip.clone(), false);
        let status = CacheStatus::Hit { ttl_secs: 1 };
        let zipped = entry.to_response(status, Instant::now(), Coding::Gzip);
        assert_eq!(zipped.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(zipped.headers()[VARY], "accept-encoding");
        assert_eq!(body_of(zipped), gzip);
        entry.prepare(Coding::Identity).await.expect("decodes");
        let identity = entry.to_response(status, Instant::now(), Coding::Identity);
        assert!(!identity.headers().contains_key(CONTENT_ENCODING));
        assert_eq!(identity.headers()[VARY], "accept-encoding");
        assert_eq!(body_of(identity), plain);
        let mut refused = answer(Bytes::from_static(b"{\"error\":\"sim_not_found\"}"));
        refused.status = StatusCode::NOT_FOUND;
        let refused = refused.to_response(status, Instant::now(), Coding::Gzip);
        assert!(!refused.headers().contains_key(VARY), "not a stored kind");
        assert!(!refused.headers().contains_key(CONTENT_ENCODING));
    }
}
