//! The shared tier (`[shared]`): what several replicas keep in one Redis so that together they
//! behave as one gateway. Without a `[shared]` table none of it exists and no connection is
//! attempted: one process keeps everything in memory.
//!
//! The rule that makes it safe: only the shared budget ([`budget`]) guarantees "never more
//! than the limit in any 60 seconds", and it fails closed: without Redis no upstream call goes
//! out (hits and stale answers from memory go on). What later parts add (a shared cache, fill
//! locks, purge messages) only saves work; losing them may cost a duplicate fetch, never an
//! overrun.
//!
//! - `connection`: the one Redis connection, its timeouts, breaker and heartbeat;
//! - `budget`: the shared sliding log per credential profile, and callers' quotas with it;
//! - `cache`: the shared cache (L2) behind every replica's memory, and its entry encoding;
//! - `lock`: fill locks with a renewed lease, and the notification of their waiters;
//! - `purge`: purge records and the purge stream every replica follows.

pub mod budget;
pub mod cache;
pub mod connection;
pub mod lock;
pub mod purge;

use std::sync::Arc;

use crate::config::SharedConfig;
use crate::metrics::RedisMetrics;

use self::budget::{Limits, SharedBudget};
use self::cache::SharedCache;
use self::connection::Redis;
use self::lock::{FillLocks, Listening};
use self::purge::SharedPurges;

/// A replica's handle on the shared tier: cheap to clone.
#[derive(Debug, Clone)]
pub struct Shared {
    redis: Arc<Redis>,
    key_prefix: Arc<str>,
    instance_id: Arc<str>,
    hop_margin: std::time::Duration,
    cache: SharedCache,
    purges: SharedPurges,
    metrics: RedisMetrics,
    /// The fill channel's subscription: it ends with the last handle.
    _listening: Arc<Listening>,
}

/// What the status page shows of the shared tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedView {
    /// Where Redis is (never its credentials).
    pub redis: String,
    pub up: bool,
    pub key_prefix: String,
    pub instance_id: String,
    /// What the shared cache, fill locks and purge stream did for this replica.
    pub totals: crate::metrics::SharedTotals,
}

impl Shared {
    /// Connects (lazily) to the configured Redis. Must run inside the tokio runtime.
    pub fn new(config: &SharedConfig, metrics: RedisMetrics) -> Result<Shared, std::io::Error> {
        let redis = Redis::new(config, metrics.clone())?;
        let key_prefix: Arc<str> = config.key_prefix.as_str().into();
        let instance_id: Arc<str> = config
            .instance_id
            .clone()
            .unwrap_or_else(default_instance_id)
            .into();
        let locks = FillLocks::new(
            redis.clone(),
            &key_prefix,
            instance_id.clone(),
            config.fill_lease,
            config.fill_wait,
        );
        let (client, connect_timeout) = redis.client();
        let listening = locks.listen(client, connect_timeout);
        Ok(Shared {
            cache: SharedCache::new(redis.clone(), key_prefix.clone(), locks),
            purges: SharedPurges::new(
                redis.clone(),
                &key_prefix,
                instance_id.clone(),
                config.purge_stream_length,
                metrics.clone(),
            ),
            redis,
            key_prefix,
            instance_id,
            hop_margin: config.hop_margin,
            metrics,
            _listening: Arc::new(listening),
        })
    }

    /// The shared cache (L2) and its fill locks.
    pub fn cache(&self) -> &SharedCache {
        &self.cache
    }

    /// Purge records and the purge stream.
    pub fn purges(&self) -> &SharedPurges {
        &self.purges
    }

    /// The shared tier's metrics (the cache layer counts its lookups, waits and takeovers).
    pub fn metrics(&self) -> &RedisMetrics {
        &self.metrics
    }

    /// The shared budget of credential profile `profile`.
    pub fn budget(&self, profile: &str, limits: Limits) -> SharedBudget {
        SharedBudget::new(
            self.redis.clone(),
            &self.key_prefix,
            profile,
            self.instance_id.clone(),
            limits,
        )
    }

    /// How much longer than its window a call stays in the shared log.
    pub fn hop_margin(&self) -> std::time::Duration {
        self.hop_margin
    }

    pub fn view(&self) -> SharedView {
        SharedView {
            redis: self.redis.shown().to_owned(),
            up: self.redis.is_up(),
            key_prefix: self.key_prefix.to_string(),
            instance_id: self.instance_id.to_string(),
            totals: self.metrics.shared_totals(),
        }
    }
}

/// `hostname:pid:random`: unique per process even when two share a host and a pid namespace
/// (containers), and readable in Redis and on the status page.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "unknown".to_owned());
    let random = getrandom::u32().unwrap_or_default();
    format!("{host}:{}:{random:08x}", std::process::id())
}
