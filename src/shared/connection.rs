//! The one connection to Redis that a replica keeps: redis-rs's `ConnectionManager`
//! (multiplexed, reconnecting), every command bounded by `shared.command_timeout_ms` and
//! guarded by a breaker, with the up/down state metrics and the status page read.
//!
//! Guarantees:
//! - no command waits longer than the command timeout, whether Redis is slow, paused or
//!   reconnecting; while the breaker is open a command fails at once, so a dead Redis does not
//!   cost every request its timeout;
//! - a heartbeat (`PING`, every [`HEARTBEAT`]) keeps the state current and lets the breaker
//!   probe while no request needs Redis, so calls resume soon after Redis returns;
//! - the URL (and its password) is never logged or shown: only where it leads.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::breaker::{Breaker, Outcome};
use crate::config::SharedConfig;
use crate::metrics::RedisMetrics;

/// How often the heartbeat pings Redis.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// Why a command did not complete. It never carries Redis's own error text (which could name
/// the server), only the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("Redis did not answer within the command timeout")]
    Timeout,
    #[error("Redis answered with an error or the connection failed")]
    Failed,
    #[error("the Redis breaker is open")]
    BreakerOpen { retry_after: Duration },
}

impl Unavailable {
    /// How long a caller refused for this should wait: until the breaker may probe, or a
    /// breaker's cooldown when the command itself failed.
    pub fn retry_after(self, cooldown: Duration) -> Duration {
        match self {
            Unavailable::BreakerOpen { retry_after } => retry_after,
            Unavailable::Timeout | Unavailable::Failed => cooldown,
        }
    }
}

/// A replica's Redis: the connection, its bounds, its breaker and its state.
pub struct Redis {
    manager: ConnectionManager,
    /// For the connections that cannot share the manager's: a subscription, a blocking read.
    client: redis::Client,
    connect_timeout: Duration,
    command_timeout: Duration,
    cooldown: Duration,
    breaker: Breaker,
    metrics: RedisMetrics,
    /// Whether the last command completed (what the metric and the status page say).
    up: AtomicBool,
    /// Where the URL leads, without credentials.
    shown: String,
}

impl std::fmt::Debug for Redis {
    // By hand: the manager's own Debug shows its connection info.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("at", &self.shown)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// The connection, made lazily: the gateway starts (and fails closed) while Redis is
    /// still down. Must run inside the tokio runtime.
    pub fn new(config: &SharedConfig, metrics: RedisMetrics) -> Result<Arc<Self>, std::io::Error> {
        let invalid = |_| {
            // redis-rs's error could quote the URL: say only which setting is wrong.
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "shared.redis_url cannot be used",
            )
        };
        let client = redis::Client::open(config.redis_url.expose()).map_err(invalid)?;
        // Reconnect quickly and give up quickly: every command is bounded by our own timeout
        // anyway, and a failed reconnection is retried by the next command (the heartbeat's).
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.command_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(250));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(invalid)?;
        metrics.set_up(false);
        let redis = Arc::new(Redis {
            manager,
            client,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            cooldown: config.breaker_cooldown,
            breaker: Breaker::new(config.breaker_failures, config.breaker_cooldown),
            metrics,
            up: AtomicBool::new(false),
            shown: config.redis_url.to_string(),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&redis)));
        Ok(redis)
    }

    /// Whether Redis answered the last command.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Where the URL leads (scheme, host and port or socket), never its credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A client for a connection of its own (a subscription, a blocking read), and how long
    /// connecting may take.
    pub(super) fn client(&self) -> (redis::Client, Duration) {
        (self.client.clone(), self.connect_timeout)
    }

    /// The bound on one command.
    pub(super) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The breaker's cooldown: how long to tell a refused caller to wait.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Runs one command (`name` labels its metrics) within the command timeout, through the
    /// breaker.
    pub async fn run<T, F, Fut>(&self, name: &'static str, command: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = match self.breaker.admit() {
            Ok(attempt) => attempt,
            Err(open) => {
                self.metrics.failed(name, "breaker_open");
                return Err(Unavailable::BreakerOpen {
                    retry_after: open.retry_after,
                });
            }
        };
        let started = Instant::now();
        let result =
            tokio::time::timeout(self.command_timeout, command(self.manager.clone())).await;
        let (outcome, result) = match result {
            Ok(Ok(value)) => (Outcome::Healthy, Ok(value)),
            Ok(Err(error)) => {
                // The kind only: the message may name the server.
                tracing::debug!(command = name, kind = ?error.kind(), "a Redis command failed");
                (Outcome::Failed, Err(Unavailable::Failed))
            }
            Err(_) => (Outcome::Failed, Err(Unavailable::Timeout)),
        };
        attempt.record(outcome);
        match &result {
            Ok(_) => self.metrics.record(name, started.elapsed()),
            Err(Unavailable::Timeout) => self.metrics.failed(name, "timeout"),
            Err(_) => self.metrics.failed(name, "error"),
        }
        self.set_up(result.is_ok());
        result
    }

    /// Records whether Redis answered; a change is logged once.
    fn set_up(&self, up: bool) {
        self.metrics.set_up(up);
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(redis = %self.shown, "Redis answers: shared budget in use");
            } else {
                tracing::warn!(
                    redis = %self.shown,
                    "Redis does not answer: misses are refused or served stale (no upstream call without the shared budget)"
                );
            }
        }
    }
}

/// Pings Redis every [`HEARTBEAT`] while the gateway holds it.
async fn heartbeat(redis: Weak<Redis>) {
    let mut every = tokio::time::interval(HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(redis) = redis.upgrade() else {
            return;
        };
        let _ = redis
            .run("ping", |mut connection| async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
            })
            .await;
    }
}
