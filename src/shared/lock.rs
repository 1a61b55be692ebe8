//! Fill locks across replicas: identical misses on different replicas make one upstream call.
//!
//! Guarantees:
//! - a lock is a Redis key with a lease (`SET NX PX`), taken in the same script as the shared
//!   cache read that found nothing (`fill.lua`), holding a token no other fill has;
//! - its holder renews the lease every third of it while it fetches (`renew.lua`, only while
//!   the lock is still its own); a holder that dies (process killed, task aborted) stops
//!   renewing, the lease runs out and a waiter takes the lock over;
//! - a fill ends by storing its answer (`store.lua`) or giving the lock back (`release.lua`),
//!   and both publish the question's tag on one channel; each replica keeps one subscription
//!   and hands messages to its waiters ([`Waiter`]). A message may be lost (pub/sub does not
//!   keep them), so waiters also poll with a backoff: a lost message costs a poll interval;
//! - none of this guards the upstream's limit: a lock lost (Redis gone, a lease run out under a
//!   slow fetch) costs at most a duplicate fetch, which the shared budget still counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Script;
use tokio::sync::broadcast;

use super::cache::{ms, QuestionKeys};
use super::connection::{Redis, Unavailable};

fn renew_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("renew.lua")))
}

fn release_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("release.lua")))
}

/// How many notifications may queue for a slow waiter before it is told it lagged (and polls).
const NOTICES_QUEUED: usize = 1024;

/// The longest pause between two polls of a waiter.
const POLL_AT_MOST: Duration = Duration::from_millis(200);

/// A fill lock this replica holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    keys: QuestionKeys,
    token: String,
}

impl Lease {
    pub(super) fn new(keys: QuestionKeys, token: String) -> Self {
        Self { keys, token }
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}

/// A replica's fill locks: cheap to clone.
#[derive(Debug, Clone)]
pub struct FillLocks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: Arc<Redis>,
    instance: Arc<str>,
    count: AtomicU64,
    lease: Duration,
    wait: Duration,
    channel: String,
    notices: broadcast::Sender<Arc<str>>,
}

impl FillLocks {
    pub(super) fn new(
        redis: Arc<Redis>,
        prefix: &str,
        instance: Arc<str>,
        lease: Duration,
        wait: Duration,
    ) -> Self {
        let (notices, _) = broadcast::channel(NOTICES_QUEUED);
        Self {
            inner: Arc::new(Inner {
                redis,
                instance,
                count: AtomicU64::new(0),
                lease,
                wait,
                channel: format!("{prefix}:cache:filled"),
                notices,
            }),
        }
    }

    /// A token no other fill of any replica has.
    pub(super) fn token(&self) -> String {
        let n = self.inner.count.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.inner.instance)
    }

    /// How long a lease lasts without renewal.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// How often its holder renews a lease.
    pub fn renew_every(&self) -> Duration {
        self.inner.lease / 3
    }

    /// How long a request waits for another replica's fill.
    pub fn wait(&self) -> Duration {
        self.inner.wait
    }

    pub(super) fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Extends `lease`; `Ok(false)` when the lock is no longer this fill's.
    pub async fn renew(&self, lease: &Lease) -> Result<bool, Unavailable> {
        let lease_ms = ms(self.inner.lease);
        let renewed: i64 = self
            .inner
            .redis
            .run("lock_renew", |mut connection| {
                let mut invocation = renew_script().prepare_invoke();
                invocation
                    .key(&lease.keys.lock)
                    .arg(&lease.token)
                    .arg(lease_ms);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Gives `lease` back and wakes the question's waiters (a fill that stored nothing).
    pub async fn release(&self, lease: &Lease) -> Result<(), Unavailable> {
        let _: i64 = self
            .inner
            .redis
            .run("lock_release", |mut connection| {
                let mut invocation = release_script().prepare_invoke();
                invocation
                    .key(&lease.keys.lock)
                    .arg(&lease.token)
                    .arg(&self.inner.channel)
                    .arg(&*lease.keys.tag);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        Ok(())
    }

    /// Starts listening for the end of `keys`'s fill. Made before the read that finds the
    /// lock held, so a fill ending in between is not missed.
    pub fn waiter(&self, keys: &QuestionKeys) -> Waiter {
        Waiter {
            tag: keys.tag.clone(),
            notices: self.inner.notices.subscribe(),
            pause: Duration::from_millis(10),
        }
    }

    /// Keeps this replica's subscription to the fill channel, reconnecting after a failure,
    /// until the locks are dropped.
    pub(super) fn listen(&self, client: redis::Client, connect_timeout: Duration) -> Listening {
        let notices = Arc::downgrade(&self.inner);
        let channel = self.inner.channel.clone();
        Listening(tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                let subscribed = tokio::time::timeout(connect_timeout, async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                })
                .await;
                if let Ok(Ok(pubsub)) = subscribed {
                    pause = Duration::from_millis(50);
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        let Some(inner) = notices.upgrade() else {
                            return;
                        };
                        if let Ok(tag) = message.get_payload::<String>() {
                            // No receiver (nobody waits) is fine.
                            let _ = inner.notices.send(tag.into());
                        }
                    }
                }
                if notices.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }))
    }
}

/// The subscription task; it ends when this is dropped.
#[derive(Debug)]
pub struct Listening(tokio::task::JoinHandle<()>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A request waiting for another replica's fill of one question.
#[derive(Debug)]
pub struct Waiter {
    tag: Arc<str>,
    notices: broadcast::Receiver<Arc<str>>,
    pause: Duration,
}

impl Waiter {
    /// Waits until the fill is announced, the next poll is due (the pause doubles from 10 ms
    /// to 200 ms), or `at_most` has passed, whichever comes first.
    pub async fn next(&mut self, at_most: Duration) {
        let pause = self.pause.min(at_most);
        self.pause = (self.pause * 2).min(POLL_AT_MOST);
        let announced = async {
            loop {
                match self.notices.recv().await {
                    Ok(tag) if tag == self.tag => return,
                    Ok(_) => {}
                    // Lagged: a message may have been ours; closed: nothing more will come.
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(pause, announced).await;
    }
}
