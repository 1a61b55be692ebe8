//! Purges that reach every replica.
//!
//! Guarantees:
//! - a purge is recorded in Redis (`purge.lua`: the latest soft and hard purge time per scope,
//!   on Redis's clock) so a shared-cache read can tell an entry whose fill began before a
//!   matching purge: soft makes it stale, hard makes it absent, as purges of memory do;
//! - the same script appends a message to one stream (`XADD MAXLEN ~`); every replica follows
//!   the stream from its last position ([`PurgeFeed`]) and purges its memory as told;
//! - a gap the feed cannot bridge (messages trimmed away unread, which Redis 7's count of
//!   messages ever added tells; or Redis restarted or flushed: the epoch key changed) is reported as [`Delivery::Gap`]: the replica drops its whole
//!   memory cache, since it may have missed any purge;
//! - each replica keeps a copy of the records, replaced on every read of the stream, so the
//!   check on a shared-cache read costs no Redis command.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};

use super::cache::ms;
use super::connection::{Redis, Unavailable};
use crate::metrics::RedisMetrics;

fn purge_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("purge.lua")))
}

fn follow_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("follow.lua")))
}

/// Messages read at most per read of the stream.
const READ_COUNT: usize = 100;

/// How long one blocking wait for a new message lasts (a new message ends it at once).
const BLOCK: Duration = Duration::from_secs(2);

/// What the records say of an entry whose fill began at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No matching purge since.
    Kept,
    /// A soft purge since, at this instant (ms, Redis's clock): the entry is stale from then.
    Stale { purged_at_ms: u64 },
    /// A hard purge since: the entry is gone.
    Gone,
}

/// What the purge stream brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Another replica purged `scope`.
    Purge { scope: String, hard: bool },
    /// Purges may have been missed: drop the whole memory cache.
    Gap,
}

/// The keys of the purge tier, under one hash tag.
#[derive(Debug)]
struct Keys {
    records: String,
    stream: String,
    epoch: String,
}

/// A replica's side of the purge tier: cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedPurges {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: Arc<Redis>,
    keys: Keys,
    instance: Arc<str>,
    stream_length: u64,
    /// `soft:<scope>` / `hard:<scope>` -> when, as Redis last said (and this replica's own
    /// purges since).
    records: RwLock<HashMap<String, u64>>,
    metrics: RedisMetrics,
}

type FollowReply = (
    String,
    i64,
    i64,
    String,
    Vec<(String, Vec<String>)>,
    Vec<String>,
);

impl SharedPurges {
    pub(super) fn new(
        redis: Arc<Redis>,
        prefix: &str,
        instance: Arc<str>,
        stream_length: u64,
        metrics: RedisMetrics,
    ) -> Self {
        let base = format!("{prefix}:purge:{{purge}}");
        Self {
            inner: Arc::new(Inner {
                redis,
                keys: Keys {
                    records: format!("{base}:records"),
                    stream: format!("{base}:stream"),
                    epoch: format!("{base}:epoch"),
                },
                instance,
                stream_length,
                records: RwLock::default(),
                metrics,
            }),
        }
    }

    /// The latest purges of any of `scopes` against an entry whose fill began at
    /// `stored_at_ms`: a purge in the same millisecond counts (it may have come after).
    pub fn verdict<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a str>,
        stored_at_ms: u64,
    ) -> Verdict {
        judge(
            &crate::sync::read(&self.inner.records),
            scopes,
            stored_at_ms,
        )
    }

    /// Records and announces a purge of `scope`; `keep` is the longest any entry lives (how
    /// long the record matters).
    pub async fn publish(
        &self,
        scope: &str,
        hard: bool,
        keep: Duration,
    ) -> Result<(), Unavailable> {
        let inner = &self.inner;
        let (at, _id): (u64, String) = inner
            .redis
            .run("purge_publish", |mut connection| {
                let mut invocation = purge_script().prepare_invoke();
                invocation
                    .key(&inner.keys.records)
                    .key(&inner.keys.stream)
                    .arg(scope)
                    .arg(if hard { "1" } else { "0" })
                    .arg(&*inner.instance)
                    .arg(inner.stream_length)
                    .arg(ms(keep).max(1));
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        let kind = if hard { "hard" } else { "soft" };
        crate::sync::write(&inner.records).insert(format!("{kind}:{scope}"), at);
        Ok(())
    }

    /// Follows the purge stream from its end; see [`PurgeFeed::next`].
    pub fn feed(&self) -> PurgeFeed {
        PurgeFeed {
            purges: self.clone(),
            epoch: None,
            last: None,
            seen: 0,
            pending: VecDeque::new(),
            wake: None,
            pause: Duration::from_millis(50),
            read_now: true,
        }
    }
}

/// The verdict of `records` on an entry of `scopes` whose fill began at `stored_at_ms`: a hard
/// purge since wins, else the earliest soft one since.
fn judge<'a>(
    records: &HashMap<String, u64>,
    scopes: impl IntoIterator<Item = &'a str>,
    stored_at_ms: u64,
) -> Verdict {
    if records.is_empty() {
        return Verdict::Kept;
    }
    let mut verdict = Verdict::Kept;
    for scope in scopes {
        let since = |kind: &str| {
            records
                .get(&format!("{kind}:{scope}"))
                .copied()
                .filter(|&at| at >= stored_at_ms)
        };
        if since("hard").is_some() {
            return Verdict::Gone;
        }
        if let Some(at) = since("soft") {
            verdict = match verdict {
                Verdict::Stale { purged_at_ms } if purged_at_ms <= at => verdict,
                _ => Verdict::Stale { purged_at_ms: at },
            };
        }
    }
    verdict
}

/// One replica's reading of the purge stream.
#[derive(Debug)]
pub struct PurgeFeed {
    purges: SharedPurges,
    /// Redis's epoch when last read (`None`: never read).
    epoch: Option<String>,
    /// The last message read.
    last: Option<String>,
    /// How many messages the stream had had up to `last`.
    seen: u64,
    pending: VecDeque<Delivery>,
    /// The connection of the blocking wait (a blocking command would hold up every command
    /// behind it on the shared connection).
    wake: Option<MultiplexedConnection>,
    pause: Duration,
    read_now: bool,
}

impl PurgeFeed {
    /// The next purge of another replica, or a gap. Never fails: while Redis is away it
    /// retries, with a pause growing to 1 s.
    pub async fn next(&mut self) -> Delivery {
        loop {
            if let Some(delivery) = self.pending.pop_front() {
                return delivery;
            }
            if self.read_now {
                if self.read().await.is_err() {
                    self.rest().await;
                    continue;
                }
                if !self.pending.is_empty() {
                    continue;
                }
            }
            // Every wake-up reads, message or not: a flushed Redis (epoch gone) is noticed
            // within one block even with no purge.
            self.read_now = true;
            if self.wait_for_message().await.is_err() {
                self.wake = None;
                self.rest().await;
            }
        }
    }

    async fn rest(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(1));
    }

    /// Reads the stream after the last position, the epoch and the records, in one script.
    async fn read(&mut self) -> Result<(), Unavailable> {
        let inner = &self.purges.inner;
        let fresh_epoch = format!("{:016x}", random_u64());
        let last = self.last.clone().unwrap_or_default();
        let (epoch, added, trimmed, newest, messages, records): FollowReply = inner
            .redis
            .run("purge_read", |mut connection| {
                let mut invocation = follow_script().prepare_invoke();
                invocation
                    .key(&inner.keys.records)
                    .key(&inner.keys.stream)
                    .key(&inner.keys.epoch)
                    .arg(&fresh_epoch)
                    .arg(&last)
                    .arg(READ_COUNT);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        self.pause = Duration::from_millis(50);
        let records: HashMap<String, u64> = records
            .chunks_exact(2)
            .filter_map(|pair| Some((pair[0].clone(), pair[1].parse().ok()?)))
            .collect();
        // Messages are numbered in the order they were added: more trimmed away than this
        // replica has seen means some went unread.
        let lost = u64::try_from(trimmed).is_ok_and(|trimmed| trimmed > self.seen);
        let restarted = self.epoch.as_ref().is_some_and(|known| *known != epoch);
        let first = self.epoch.is_none();
        *crate::sync::write(&inner.records) = records;
        self.epoch = Some(epoch);
        if first || restarted || lost {
            self.last = Some(newest);
            self.seen = u64::try_from(added).unwrap_or(0);
            self.read_now = false;
            if !first {
                inner.metrics.purge_gap();
                self.pending.push_back(Delivery::Gap);
            }
            return Ok(());
        }
        self.read_now = messages.len() >= READ_COUNT;
        for (id, fields) in messages {
            self.last = Some(id);
            self.seen += 1;
            let field = |name: &str| {
                fields
                    .chunks_exact(2)
                    .find(|pair| pair[0] == name)
                    .map(|pair| pair[1].as_str())
            };
            if field("origin") == Some(&*inner.instance) {
                // This replica applied its own purge when it made it.
                continue;
            }
            if let Some(scope) = field("scope") {
                self.pending.push_back(Delivery::Purge {
                    scope: scope.to_owned(),
                    hard: field("hard") == Some("1"),
                });
            }
        }
        Ok(())
    }

    /// Blocks (on a connection of its own) until a message after the last position arrives or
    /// [`BLOCK`] passes.
    async fn wait_for_message(&mut self) -> Result<(), redis::RedisError> {
        let inner = &self.purges.inner;
        let (client, connect_timeout) = inner.redis.client();
        let bound = BLOCK + inner.redis.command_timeout() + connect_timeout;
        let last = self.last.clone().unwrap_or_else(|| "$".to_owned());
        let wake = &mut self.wake;
        let waited = tokio::time::timeout(bound, async move {
            if wake.is_none() {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(None);
                *wake = Some(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                );
            }
            let connection = wake.as_mut().expect("connected just above");
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(ms(BLOCK))
                .arg("STREAMS")
                .arg(&inner.keys.stream)
                .arg(&last)
                .query_async::<redis::Value>(connection)
                .await
                .map(|_| ())
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))
        })
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the epoch is still unique enough in time.
    if getrandom::fill(&mut bytes).is_err() {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_since_the_fill_began_make_entries_stale_or_gone() {
        let records: HashMap<String, u64> = [
            ("soft:all", 100),
            ("soft:sim:000000001", 200),
            ("hard:tag:t1", 300),
            ("soft:sim:000000002", 50),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // (scopes of the entry, its fill began at, verdict) — one row per rule.
        let rows: [(&[&str], u64, Verdict); 8] = [
            // nothing recorded for it
            (&["sim:000000009"], 10, Verdict::Kept),
            // a soft purge of everything after it began
            (&["all"], 99, Verdict::Stale { purged_at_ms: 100 }),
            // a purge in the same millisecond counts
            (&["all"], 100, Verdict::Stale { purged_at_ms: 100 }),
            // stored after every purge
            (&["all", "sim:000000001"], 201, Verdict::Kept),
            // the earliest soft purge since it began says when it went stale
            (
                &["all", "sim:000000001"],
                90,
                Verdict::Stale { purged_at_ms: 100 },
            ),
            (
                &["all", "sim:000000001"],
                150,
                Verdict::Stale { purged_at_ms: 200 },
            ),
            // a hard purge since wins over soft ones
            (&["all", "tag:t1"], 90, Verdict::Gone),
            // an old purge of its SIM does not touch a newer entry
            (&["sim:000000002"], 60, Verdict::Kept),
        ];
        for (scopes, stored_at, verdict) in rows {
            assert_eq!(
                judge(&records, scopes.iter().copied(), stored_at),
                verdict,
                "{scopes:?} {stored_at}"
            );
        }
        assert_eq!(judge(&HashMap::new(), ["all"], 0), Verdict::Kept);
    }
}
