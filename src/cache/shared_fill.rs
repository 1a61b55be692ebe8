//! The shared tier's part of a fill (`[shared]`): a memory miss asks the shared cache before
//! the upstream, and identical misses on different replicas make one upstream call.
//!
//! A fill (already one per key in this replica, `flight.rs`) first reads the shared cache and,
//! finding nothing usable, takes the question's fill lock in the same round trip. Holding it,
//! it fetches (renewing the lease meanwhile), stores the answer in both tiers and releases the
//! lock; a fill that stores nothing releases it at once. Finding the lock held, it waits: woken
//! by the holder's notification or by its own polls, it reads again until the answer is there
//! (a hit), the lock is free (the holder failed or died: it takes over), or `shared.fill_wait_ms`
//! has passed (then it fails as a timed-out fetch, and a stale answer or a refusal follows as
//! without `[shared]`). Redis away: the fill fetches without a lock, and the shared budget
//! below refuses the call, so nothing reaches the upstream unaccounted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::entry::{CacheKey, CachedResponse};
use super::policy::{self, Freshness};
use super::{PurgeSelector, Settings, Store};
use crate::shared::cache::{Locking, QuestionKeys, SharedEntry};
use crate::shared::lock::{FillLocks, Lease};
use crate::shared::purge::Verdict;
use crate::shared::Shared;

/// Reads of the shared cache one fill makes at most while the lock changes hands under it (a
/// lock that vanishes between the read and the take); past it, it fetches.
const RACES_AT_MOST: u32 = 8;

/// What the shared tier says before a fill fetches.
#[derive(Debug)]
pub(super) enum Before {
    /// Answered from the shared cache; `waited`: after another replica's fill.
    Answered {
        entry: Arc<CachedResponse>,
        waited: bool,
    },
    /// Fetch upstream, holding `lease` (`None`: Redis did not answer, no lock is held).
    /// `began_ms` is when, on Redis's clock (0: unknown).
    Fetch { lease: Option<Lease>, began_ms: u64 },
    /// Another replica's fill did not land within the wait.
    TimedOut(Duration),
}

/// What a shared entry is worth to this question now.
enum Judged {
    Fresh(Arc<CachedResponse>),
    Stale(Arc<CachedResponse>),
}

/// One fill's view of the shared tier.
pub(super) struct SharedFill<'a> {
    pub shared: &'a Shared,
    pub key: &'a CacheKey,
    pub store: &'a Store,
    pub settings: Settings,
    pub keys: QuestionKeys,
    pub question: String,
}

impl<'a> SharedFill<'a> {
    pub fn new(
        shared: &'a Shared,
        key: &'a CacheKey,
        store: &'a Store,
        settings: Settings,
    ) -> Self {
        let question = key.question();
        Self {
            keys: shared.cache().keys(&question),
            shared,
            key,
            store,
            settings,
            question,
        }
    }

    fn locks(&self) -> &FillLocks {
        self.shared.cache().locks()
    }

    /// Reads the shared cache, takes the lock or waits for its holder, as the module says.
    pub async fn before(&self) -> Before {
        let metrics = self.shared.metrics();
        let locks = self.locks();
        let deadline = Instant::now() + locks.wait();
        // Listening starts before the first read, so a fill landing in between wakes us.
        let mut waiter = locks.waiter(&self.keys);
        let mut locking = Locking::IfAbsent;
        let mut waited = false;
        let mut counted = false;
        let mut races = 0;
        loop {
            let probe = match self.shared.cache().probe(&self.keys, locking).await {
                Ok(probe) => probe,
                Err(_) => {
                    if !counted {
                        metrics.shared_lookup("error");
                    }
                    return Before::Fetch {
                        lease: None,
                        began_ms: 0,
                    };
                }
            };
            // An entry there that does not answer (stale, purged, a collision, expired here)
            // must not keep the lock from being taken: from now on take it whatever is there.
            let found = probe.entry.is_some();
            let judged = probe
                .entry
                .and_then(|entry| self.judge(entry, probe.now_ms));
            match judged {
                Some(Judged::Fresh(entry)) => {
                    if let Some(lease) = &probe.lease {
                        // Taken with `Always` while a fresh answer had just landed.
                        let _ = locks.release(lease).await;
                    }
                    if !counted {
                        metrics.shared_lookup("hit");
                    }
                    self.store.insert(self.key.clone(), entry.clone()).await;
                    return Before::Answered { entry, waited };
                }
                Some(Judged::Stale(entry)) => {
                    if !counted {
                        metrics.shared_lookup("stale");
                        counted = true;
                    }
                    // Kept for the stale rules while the lock decides who fetches.
                    self.keep_stale(entry).await;
                }
                None if !counted => {
                    metrics.shared_lookup("miss");
                    counted = true;
                }
                None => {}
            }
            if found && locking == Locking::IfAbsent {
                locking = Locking::Always;
                if probe.lease.is_none() && probe.held_for.is_none() {
                    // Nobody holds the lock: take it now rather than after a pause.
                    continue;
                }
            }
            if let Some(lease) = probe.lease {
                if waited {
                    metrics.takeover();
                }
                return Before::Fetch {
                    lease: Some(lease),
                    began_ms: probe.now_ms,
                };
            }
            if probe.held_for.is_none() {
                // The lock went between the read and the take: read again at once.
                races += 1;
                if races < RACES_AT_MOST {
                    continue;
                }
                return Before::Fetch {
                    lease: None,
                    began_ms: probe.now_ms,
                };
            }
            if !waited {
                metrics.lock_wait();
                waited = true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Before::TimedOut(locks.wait());
            }
            waiter.next(left).await;
        }
    }

    /// Keeps a stale shared entry in memory (unless memory holds a newer one), so the stale
    /// rules can serve it while the fill runs, or instead of its failure.
    async fn keep_stale(&self, entry: Arc<CachedResponse>) {
        let newer_here = self
            .store
            .get(self.key)
            .await
            .is_some_and(|kept| kept.fresh_until() >= entry.fresh_until());
        if !newer_here {
            self.store.insert(self.key.clone(), entry).await;
        }
    }

    /// Whether `entry` answers this question, and how fresh it is after the purges since.
    fn judge(&self, mut entry: SharedEntry, now_ms: u64) -> Option<Judged> {
        if entry.question != self.question {
            // A digest collision (or a foreign writer): never another question's answer.
            return None;
        }
        let scopes: Vec<String> = PurgeSelector::of(self.key)
            .iter()
            .map(PurgeSelector::scope)
            .collect();
        match self
            .shared
            .purges()
            .verdict(scopes.iter().map(String::as_str), entry.stored_at_ms)
        {
            Verdict::Gone => return None,
            Verdict::Stale { purged_at_ms } => {
                let until_purge =
                    Duration::from_millis(purged_at_ms.saturating_sub(entry.stored_at_ms));
                entry.fresh_for = entry.fresh_for.min(until_purge);
            }
            Verdict::Kept => {}
        }
        let age = Duration::from_millis(now_ms.saturating_sub(entry.stored_at_ms));
        let entry = Arc::new(CachedResponse::from_shared(entry, age)?);
        match policy::freshness(entry.fresh_until(), Instant::now(), &self.settings.stale) {
            Freshness::Fresh { .. } => Some(Judged::Fresh(entry)),
            Freshness::Revalidate { .. } | Freshness::IfError { .. } => Some(Judged::Stale(entry)),
            Freshness::Unusable => None,
        }
    }

    /// Runs `fetch`, renewing `lease` every third of it until `fetch` ends.
    pub async fn renewing<F: Future>(&self, lease: Option<&Lease>, fetch: F) -> F::Output {
        let Some(lease) = lease else {
            return fetch.await;
        };
        let locks = self.locks();
        let every = locks.renew_every();
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut held = true;
        let fetch = std::pin::pin!(fetch);
        let mut fetch = fetch;
        loop {
            tokio::select! {
                output = &mut fetch => return output,
                _ = ticks.tick(), if held => {
                    if let Ok(false) = locks.renew(lease).await {
                        // Another replica holds it now: at worst a duplicate fetch, which the
                        // shared budget counts like any other.
                        tracing::debug!("a fill lock ran out under its fetch");
                        held = false;
                    }
                }
            }
        }
    }

    /// After the fetch: the answer into the shared cache (releasing the lock and waking the
    /// waiters in the same round trip), or the lock given back.
    pub async fn after(
        &self,
        stored: Option<&CachedResponse>,
        lease: Option<&Lease>,
        began_ms: u64,
    ) {
        let done = match stored {
            Some(entry) => {
                let keep = entry.fresh_for + self.settings.stale.keep();
                self.shared
                    .cache()
                    .store(
                        &self.keys,
                        &entry.to_shared(self.question.clone()),
                        keep,
                        lease,
                        began_ms,
                    )
                    .await
            }
            None => match lease {
                Some(lease) => self.locks().release(lease).await,
                None => Ok(()),
            },
        };
        if let Err(unavailable) = done {
            // The lease runs out by itself; other replicas fetch their own answer.
            tracing::debug!(error = %unavailable, "the shared cache did not take a fill's outcome");
        }
    }
}
