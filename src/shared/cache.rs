//! The shared cache (L2): answers one replica fetched, kept in Redis for every other replica's
//! memory misses.
//!
//! Guarantees:
//! - one entry per question, named by a digest of the whole question (credential identity and
//!   canonical target); the question itself is stored in the entry and compared on read, so a
//!   digest collision reads as a miss, never as another question's answer;
//! - an entry carries when its fill began (Redis's clock, so purge records on the same clock
//!   can be compared with it), its freshness, status, content type and body; Redis forgets it
//!   after its freshness plus the stale windows;
//! - a read and the fill lock that follows a miss are one script (`fill.lua`); a store, the
//!   lock's release and the waiters' notification are another (`store.lua`): one round trip
//!   each;
//! - the encoding is this file's [`encode`] / [`decode`] pair and nothing else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::connection::{Redis, Unavailable};
use super::lock::Lease;

fn fill_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("fill.lua")))
}

fn store_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("store.lua")))
}

/// One stored answer as the shared cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    /// When its fill began, in ms since the Unix epoch on Redis's clock.
    pub stored_at_ms: u64,
    pub fresh_for: Duration,
    pub status: u16,
    pub content_type: Option<String>,
    /// The whole question (credential identity and canonical target), compared on read.
    pub question: String,
    pub body: Bytes,
    /// `body` is the answer gzip-encoded (the form most callers take, and the smaller).
    pub gzip: bool,
}

/// Encoding version: an entry of another version reads as a miss (a rolling upgrade costs a
/// fetch, never a misread). 2: the body may be gzip (`gz`).
const VERSION: u8 = 2;

#[derive(Serialize, Deserialize)]
struct Meta<'a> {
    v: u8,
    fresh_ms: u64,
    status: u16,
    #[serde(borrow)]
    content_type: Option<&'a str>,
    #[serde(borrow)]
    question: &'a str,
    gz: bool,
}

/// The entry as Redis stores it, less the `<stored_at_ms>:` prefix the store script adds:
/// a 4-byte big-endian length, that many bytes of JSON metadata, then the body as it is.
pub fn encode(entry: &SharedEntry) -> Vec<u8> {
    let meta = Meta {
        v: VERSION,
        fresh_ms: u64::try_from(entry.fresh_for.as_millis()).unwrap_or(u64::MAX),
        status: entry.status,
        content_type: entry.content_type.as_deref(),
        question: &entry.question,
        gz: entry.gzip,
    };
    let meta = serde_json::to_vec(&meta).expect("the metadata serializes (strings and numbers)");
    let mut out = Vec::with_capacity(4 + meta.len() + entry.body.len());
    out.extend_from_slice(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&entry.body);
    out
}

/// The entry Redis returned (with its `<stored_at_ms>:` prefix); `None` for anything else.
pub fn decode(value: &[u8]) -> Option<SharedEntry> {
    let colon = value.iter().position(|&b| b == b':')?;
    let stored_at_ms = std::str::from_utf8(&value[..colon]).ok()?.parse().ok()?;
    let rest = &value[colon + 1..];
    let length = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    let meta_bytes = rest.get(4..4 + length)?;
    let meta: Meta<'_> = serde_json::from_slice(meta_bytes).ok()?;
    if meta.v != VERSION {
        return None;
    }
    Some(SharedEntry {
        stored_at_ms,
        fresh_for: Duration::from_millis(meta.fresh_ms),
        status: meta.status,
        content_type: meta.content_type.map(str::to_owned),
        question: meta.question.to_owned(),
        body: Bytes::copy_from_slice(&rest[4 + length..]),
        gzip: meta.gz,
    })
}

/// A question's keys in Redis, under one hash tag (its digest) so that a script's keys live
/// together even on a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuestionKeys {
    /// The digest: the hash tag, and the notification message of a fill.
    pub tag: Arc<str>,
    pub entry: String,
    pub lock: String,
}

impl QuestionKeys {
    pub fn new(prefix: &str, question: &str) -> Self {
        let digest = Sha256::digest(question.as_bytes());
        let tag = hex::encode(&digest[..16]);
        let base = format!("{prefix}:cache:{{{tag}}}");
        Self {
            entry: format!("{base}:entry"),
            lock: format!("{base}:lock"),
            tag: tag.into(),
        }
    }
}

/// What a read of the shared cache found.
#[derive(Debug)]
pub struct Probe {
    /// The entry there, if any (decoded; one that does not decode is `None`).
    pub entry: Option<SharedEntry>,
    /// The fill lock, if this read took it.
    pub lease: Option<Lease>,
    /// When no lock was taken: how long the lock someone else holds has left (`None`: nobody
    /// holds it).
    pub held_for: Option<Duration>,
    /// Redis's clock at the read, ms since the Unix epoch.
    pub now_ms: u64,
}

/// How a read treats the fill lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// Only read.
    No,
    /// Take the lock if there is no entry.
    IfAbsent,
    /// Take the lock whatever is there (the entry seen before was stale or purged).
    Always,
}

/// The shared cache of a replica: cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedCache {
    redis: Arc<Redis>,
    prefix: Arc<str>,
    locks: super::lock::FillLocks,
}

type FillReply = (Vec<u8>, i64, i64, i64);

impl SharedCache {
    pub(super) fn new(redis: Arc<Redis>, prefix: Arc<str>, locks: super::lock::FillLocks) -> Self {
        Self {
            redis,
            prefix,
            locks,
        }
    }

    /// The keys of `question`.
    pub fn keys(&self, question: &str) -> QuestionKeys {
        QuestionKeys::new(&self.prefix, question)
    }

    /// The fill locks: leases, their renewal and release, and waiting for another's fill.
    pub fn locks(&self) -> &super::lock::FillLocks {
        &self.locks
    }

    /// Reads the entry of `keys`, and takes its fill lock as `locking` says.
    pub async fn probe(&self, keys: &QuestionKeys, locking: Locking) -> Result<Probe, Unavailable> {
        let token = match locking {
            Locking::No => None,
            Locking::IfAbsent | Locking::Always => Some(self.locks.token()),
        };
        let lease_ms = ms(self.locks.lease());
        let reply: FillReply = self
            .redis
            .run("cache_probe", |mut connection| {
                let mut invocation = fill_script().prepare_invoke();
                invocation
                    .key(&keys.entry)
                    .key(&keys.lock)
                    .arg(token.as_deref().unwrap_or(""))
                    .arg(lease_ms)
                    .arg(if locking == Locking::Always { "1" } else { "0" });
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        let (value, took, ttl, now_ms) = reply;
        let entry = if value.is_empty() {
            None
        } else {
            decode(&value)
        };
        let lease = match (took, token) {
            (1, Some(token)) => Some(Lease::new(keys.clone(), token)),
            _ => None,
        };
        let held_for = (lease.is_none() && ttl > 0).then(|| millis(ttl));
        Ok(Probe {
            entry,
            lease,
            held_for,
            now_ms: u64::try_from(now_ms).unwrap_or(0),
        })
    }

    /// Stores `entry` for `keep` (its freshness plus the stale windows), releases `lease` if
    /// held and wakes the question's waiters. `began_ms` is when the fill began on Redis's
    /// clock (0: now).
    pub async fn store(
        &self,
        keys: &QuestionKeys,
        entry: &SharedEntry,
        keep: Duration,
        lease: Option<&Lease>,
        began_ms: u64,
    ) -> Result<(), Unavailable> {
        let blob = encode(entry);
        let channel = self.locks.channel();
        let _stored: i64 = self
            .redis
            .run("cache_store", |mut connection| {
                let mut invocation = store_script().prepare_invoke();
                invocation
                    .key(&keys.entry)
                    .key(&keys.lock)
                    .arg(blob.as_slice())
                    .arg(ms(keep).max(1))
                    .arg(lease.map_or("", Lease::token))
                    .arg(began_ms)
                    .arg(channel)
                    .arg(&*keys.tag);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        Ok(())
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(super) fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8]) -> SharedEntry {
        SharedEntry {
            stored_at_ms: 0,
            fresh_for: Duration::from_millis(60_500),
            status: 200,
            content_type: Some("application/json; charset=utf-8".into()),
            question: "00000000000000ab /usage?limit=1000".into(),
            body: Bytes::from_static(body),
            gzip: body.starts_with(b"\x1f\x8b"),
        }
    }

    fn stored(entry: &SharedEntry, at: u64) -> Vec<u8> {
        let mut value = format!("{at}:").into_bytes();
        value.extend(encode(entry));
        value
    }

    #[test]
    fn an_entry_survives_its_round_trip() {
        // Bodies with the separator, binary bytes and nothing at all.
        for body in [&b"{\"usage\":[]}"[..], b"a:b:c", b"\x00\xff\x1f\x8b", b""] {
            let original = entry(body);
            let decoded = decode(&stored(&original, 1_700_000_000_123)).expect("decodes");
            assert_eq!(
                decoded,
                SharedEntry {
                    stored_at_ms: 1_700_000_000_123,
                    ..original
                }
            );
        }
    }

    #[test]
    fn anything_else_reads_as_a_miss() {
        let good = stored(&entry(b"{}"), 5);
        let mut other_version = good.clone();
        let at = other_version
            .windows(4)
            .position(|w| w == b"\"v\":")
            .expect("a version field");
        other_version[at + 4] = b'9';
        for bad in [
            &b""[..],
            b"no colon",
            b"12:",
            b"x:\x00\x00\x00\x05{}",
            b"12:\x00\x00\x10\x00{}",
            &good[..good.len() / 2],
            &other_version,
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_share_the_questions_hash_tag_and_differ_between_questions() {
        let a = QuestionKeys::new("gw", "00000000000000ab /usage?limit=1000");
        let b = QuestionKeys::new("gw", "00000000000000ac /usage?limit=1000");
        assert_ne!(a.tag, b.tag);
        let tag = format!("{{{}}}", a.tag);
        assert!(a.entry.starts_with("gw:cache:") && a.entry.contains(&tag));
        assert!(a.lock.contains(&tag));
        assert_ne!(a.entry, a.lock);
    }
}
