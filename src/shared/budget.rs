//! The shared upstream budget: an exact sliding log per credential profile, kept in Redis and
//! taken atomically by one Lua script (`take.lua`) on Redis's clock, so every replica counts
//! the same calls against the same limit and never more than the limit leave in any window.
//!
//! Guarantees:
//! - a take is one `EVALSHA` (redis-rs loads the script when Redis does not know it): trim the
//!   log to the window plus the hop margin, check the upstream's own word (a 429, a spent
//!   upstream window, a cap from `x-ratelimit-remaining`), the log, and the caller's
//!   `upstream_per_minute` quota, then log the call in both, or deny writing nothing;
//! - Redis `TIME` is the one clock: replicas' clocks may disagree, Redis's does not with itself;
//! - the upstream's answers correct the one stored state (`correct.lua`), so a 429 seen by one
//!   replica closes the gate for all;
//! - when the state is unknown (first start, or Redis came back empty) one probe call at a time
//!   goes out until the upstream's headers say where the budget stands (or a whole window has
//!   passed, when the log has seen every call);
//! - Redis losing the log does not lose the calls: each replica remembers its own calls of the
//!   last window and writes them back (`reseed.lua`) as soon as it sees a new gate epoch, on its
//!   next take or within a heartbeat (a watcher asks for the epoch every [`HEARTBEAT`]), since
//!   the upstream's `x-ratelimit-remaining` speaks only of its current fixed window. Calls taken
//!   by another replica before then (at most one heartbeat after the loss, most of it in probe
//!   mode) may still miss them;
//! - Redis unreachable, slow or its breaker open: the take fails, and no call goes out.
//!
//! What a take returned is kept, so the rate-limit headers and the status page report the
//! shared budget without a Redis round trip (hits never touch Redis).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use super::connection::{Redis, Unavailable, HEARTBEAT};
use crate::window::Allowance;

/// How long idle state (the gate) is kept: a day without calls forgets what the upstream said.
const STATE_TTL_MS: u64 = 24 * 3600 * 1000;

/// The quota window of `upstream_per_minute`.
const QUOTA_WINDOW: Duration = Duration::from_secs(60);

fn take_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("take.lua")))
}

fn reseed_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("reseed.lua")))
}

fn correct_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("correct.lua")))
}

/// The budget's numbers: a limit per window, and how long a call stays counted past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_window: u32,
    pub window: Duration,
    pub hop_margin: Duration,
    /// How long a probe may stay out before another may go (an upstream call's bound).
    pub probe_lease: Duration,
}

/// A caller's quota, checked in the same take.
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    pub caller: &'a str,
    pub per_minute: u32,
}

/// A granted take: which call it was (for the correction that follows its answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    epoch: Arc<str>,
    seq: u64,
    /// The one call allowed while the budget's state is unknown.
    pub probe: bool,
    /// When it was taken, in Redis's clock (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Why no call may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The budget (the log, or the upstream's word, or a probe in flight): for this long.
    Budget { retry_after: Duration },
    /// The caller's quota, for this long.
    Quota { retry_after: Duration },
    /// Redis did not answer: fail closed.
    Unavailable { retry_after: Duration },
}

/// What the upstream said about the budget after one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Correction {
    pub remaining: Option<u64>,
    pub reset_in: Option<Duration>,
    pub throttled_for: Option<Duration>,
}

/// One credential profile's shared budget.
pub struct SharedBudget {
    redis: Arc<Redis>,
    log_key: String,
    gate_key: String,
    quota_prefix: String,
    limits: Limits,
    instance: Arc<str>,
    calls: AtomicU64,
    /// What the last take (or correction) said of the budget, to report without asking.
    last: Mutex<Option<Allowance>>,
    /// Callers' quotas as last reported, by name.
    quotas: Mutex<std::collections::HashMap<Arc<str>, Allowance>>,
    /// This replica's own calls of the last window, to write back after Redis lost the log.
    own: Arc<OwnCalls>,
    /// The watcher of the gate's epoch: it ends with the budget.
    _watching: Watching,
}

/// A replica's own recent calls and the gate epoch they were last written under.
#[derive(Debug, Default)]
struct OwnCalls {
    /// (Redis's clock at the take, ms; the call's member), oldest first.
    calls: Mutex<std::collections::VecDeque<(u64, String)>>,
    /// The gate's epoch as last seen (`None`: not yet).
    epoch: Mutex<Option<String>>,
}

/// Ends the epoch watcher when the budget goes.
#[derive(Debug)]
struct Watching(Option<tokio::task::JoinHandle<()>>);

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for SharedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudget")
            .field("gate", &self.gate_key)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Redis's answer to a take, as the script returns it.
type TakeReply = (i64, String, i64, i64, i64, i64, String, i64, i64, i64, i64);

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl SharedBudget {
    /// The budget of `profile` under `prefix`. Its keys share one hash tag (`{profile}`), so
    /// a take's keys live together even on a Redis Cluster.
    pub fn new(
        redis: Arc<Redis>,
        prefix: &str,
        profile: &str,
        instance: Arc<str>,
        limits: Limits,
    ) -> Self {
        let base = format!("{prefix}:budget:{{{profile}}}");
        let log_key = format!("{base}:log");
        let gate_key = format!("{base}:gate");
        let own = Arc::new(OwnCalls::default());
        // Outside a runtime (never in the gateway) there is no watcher, only takes reseed.
        let watching = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            runtime.spawn(watch_epoch(
                Arc::downgrade(&own),
                redis.clone(),
                log_key.clone(),
                gate_key.clone(),
                limits,
            ))
        });
        Self {
            redis,
            log_key,
            gate_key,
            quota_prefix: format!("{base}:quota:"),
            limits,
            instance,
            calls: AtomicU64::new(0),
            last: Mutex::new(None),
            quotas: Mutex::default(),
            own,
            _watching: Watching(watching),
        }
    }

    /// A member no other call of any replica has: this instance and its own count.
    fn member(&self) -> String {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        format!("{}:{n}", self.instance)
    }

    /// Takes one call (and one of `quota`), or says why not and for how long.
    pub async fn take(&self, quota: Option<Quota<'_>>) -> Result<Grant, Denied> {
        let member = self.member();
        let quota_key = quota.map_or_else(
            || format!("{}-", self.quota_prefix),
            |q| format!("{}{}", self.quota_prefix, q.caller),
        );
        let limits = self.limits;
        let reply: Result<TakeReply, Unavailable> = self
            .redis
            .run("budget_take", |mut connection| {
                let mut invocation = take_script().prepare_invoke();
                invocation
                    .key(&self.log_key)
                    .key(&self.gate_key)
                    .key(&quota_key)
                    .arg(limits.per_window)
                    .arg(ms(limits.window))
                    .arg(ms(limits.hop_margin))
                    .arg(&member)
                    .arg(quota.map_or(0, |q| q.per_minute))
                    .arg(ms(QUOTA_WINDOW))
                    .arg(ms(limits.probe_lease).max(1))
                    .arg(&member)
                    .arg(STATE_TTL_MS);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await;
        let reply = reply.map_err(|unavailable| Denied::Unavailable {
            retry_after: unavailable.retry_after(self.redis.cooldown()),
        })?;
        let (granted, reason, wait, remaining, reset_in, seq, epoch, probe, q_left, q_reset, at) =
            reply;
        let now = Instant::now();
        let budget = Allowance {
            limit: u64::from(limits.per_window),
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: now + millis(reset_in),
        };
        let quota_allowance = quota.map(|q| Allowance {
            limit: u64::from(q.per_minute),
            remaining: u64::try_from(q_left).unwrap_or(0),
            reset: now
                + if granted == 1 {
                    millis(q_reset)
                } else {
                    millis(wait)
                },
        });
        self.remember(budget, quota.zip(quota_allowance), &reason);
        if self.own.epoch_changed(&epoch) {
            // Redis lost the log since this replica last looked: put its calls back.
            reseed(
                &self.redis,
                &self.own,
                &self.log_key,
                &self.gate_key,
                limits,
            )
            .await;
        }
        if granted == 1 {
            self.own
                .record(u64::try_from(at).unwrap_or(0), member, limits);
        }
        if granted != 1 {
            let retry_after = millis(wait).max(Duration::from_millis(1));
            return Err(match reason.as_str() {
                "quota" => Denied::Quota { retry_after },
                _ => Denied::Budget { retry_after },
            });
        }
        Ok(Grant {
            epoch: epoch.into(),
            seq: u64::try_from(seq).unwrap_or(0),
            probe: probe == 1,
            at_ms: u64::try_from(at).unwrap_or(0),
        })
    }

    fn remember(&self, budget: Allowance, quota: Option<(Quota<'_>, Allowance)>, reason: &str) {
        // A quota denial says nothing about the budget's count: keep what is known of it.
        if reason != "quota" {
            *crate::sync::lock(&self.last) = Some(budget);
        }
        if let Some((quota, allowance)) = quota {
            let mut quotas = crate::sync::lock(&self.quotas);
            match quotas.get_mut(quota.caller) {
                Some(kept) => *kept = allowance,
                None => {
                    quotas.insert(quota.caller.into(), allowance);
                }
            }
        }
    }

    /// Tells every replica what the upstream said in answer to `grant`'s call. Failing to
    /// (Redis gone) loses a correction, never a count: the call is in the log already.
    pub async fn correct(&self, grant: &Grant, correction: Correction) {
        let signed =
            |value: Option<u64>| value.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let reply: Result<i64, Unavailable> = self
            .redis
            .run("budget_correct", |mut connection| {
                let mut invocation = correct_script().prepare_invoke();
                invocation
                    .key(&self.gate_key)
                    .arg(&*grant.epoch)
                    .arg(grant.seq)
                    .arg(signed(correction.remaining))
                    .arg(signed(correction.reset_in.map(ms)))
                    .arg(signed(correction.throttled_for.map(ms)))
                    .arg(i64::from(grant.probe))
                    .arg(self.member())
                    .arg(STATE_TTL_MS);
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await;
        if reply.is_ok() {
            let closes = correction.throttled_for.is_some() || correction.remaining == Some(0);
            if closes {
                let reset = correction
                    .throttled_for
                    .or(correction.reset_in)
                    .unwrap_or_default();
                *crate::sync::lock(&self.last) = Some(Allowance {
                    limit: u64::from(self.limits.per_window),
                    remaining: 0,
                    reset: Instant::now() + reset,
                });
            }
        }
    }

    /// What the last take (or correction) said of the budget, as of `now`: `None` before any.
    pub fn allowance(&self, now: Instant) -> Option<Allowance> {
        let last = (*crate::sync::lock(&self.last))?;
        Some(restored(last, now))
    }

    /// What the last take said of `caller`'s quota, as of `now`.
    pub fn quota_allowance(&self, caller: &str, now: Instant) -> Option<Allowance> {
        let allowance = *crate::sync::lock(&self.quotas).get(caller)?;
        Some(restored(allowance, now))
    }

    /// Whether the shared budget can be reached now (for the status page).
    pub fn reachable(&self) -> bool {
        self.redis.is_up()
    }
}

impl OwnCalls {
    /// Remembers a granted call, and forgets those older than the log keeps.
    fn record(&self, at_ms: u64, member: String, limits: Limits) {
        let span = ms(limits.window + limits.hop_margin);
        let mut calls = crate::sync::lock(&self.calls);
        while calls
            .front()
            .is_some_and(|(at, _)| at.saturating_add(span) <= at_ms)
        {
            calls.pop_front();
        }
        calls.push_back((at_ms, member));
    }

    /// Whether `epoch` differs from the one last seen (and remembers it). With none seen yet
    /// (the first take, or the last reseed found no gate), a change only if this replica has
    /// calls to put back.
    fn epoch_changed(&self, epoch: &str) -> bool {
        let mut known = crate::sync::lock(&self.epoch);
        let changed = match known.as_deref() {
            Some(seen) => seen != epoch,
            None => !crate::sync::lock(&self.calls).is_empty(),
        };
        if changed || known.is_none() {
            *known = Some(epoch.to_owned()).filter(|epoch| !epoch.is_empty());
        }
        changed
    }
}

/// Writes this replica's recent calls back into the log; a failure (Redis gone again) is
/// retried at the next change the watcher or a take sees.
async fn reseed(redis: &Redis, own: &OwnCalls, log_key: &str, gate_key: &str, limits: Limits) {
    let calls: Vec<(u64, String)> = crate::sync::lock(&own.calls).iter().cloned().collect();
    if calls.is_empty() {
        return;
    }
    let span = ms(limits.window + limits.hop_margin);
    let written: Result<(String, u64), Unavailable> = redis
        .run("budget_reseed", |mut connection| {
            let mut invocation = reseed_script().prepare_invoke();
            invocation.key(log_key).key(gate_key).arg(span);
            for (at, member) in &calls {
                invocation.arg(*at).arg(member);
            }
            async move { invocation.invoke_async(&mut connection).await }
        })
        .await;
    match written {
        Ok((epoch, written)) => {
            if written > 0 {
                tracing::info!(
                    calls = written,
                    "Redis had lost the shared budget's log: this replica's calls of the last window are back in it"
                );
            }
            *crate::sync::lock(&own.epoch) = Some(epoch).filter(|epoch| !epoch.is_empty());
        }
        Err(_) => {
            // Look again next time.
            *crate::sync::lock(&own.epoch) = Some(String::new());
        }
    }
}

/// Every [`HEARTBEAT`], asks for the gate's epoch: a replica that takes nothing still puts its
/// calls back soon after Redis lost them.
async fn watch_epoch(
    own: std::sync::Weak<OwnCalls>,
    redis: Arc<Redis>,
    log_key: String,
    gate_key: String,
    limits: Limits,
) {
    let mut every = tokio::time::interval(HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(own) = own.upgrade() else {
            return;
        };
        if crate::sync::lock(&own.calls).is_empty() {
            continue;
        }
        let epoch: Result<Option<String>, Unavailable> = redis
            .run("budget_epoch", |mut connection| {
                let gate = gate_key.clone();
                async move {
                    redis::cmd("HGET")
                        .arg(gate)
                        .arg("epoch")
                        .query_async(&mut connection)
                        .await
                }
            })
            .await;
        if let Ok(epoch) = epoch {
            if own.epoch_changed(epoch.as_deref().unwrap_or("")) {
                reseed(&redis, &own, &log_key, &gate_key, limits).await;
            }
        }
    }
}

/// An allowance reported at some past instant, as of `now`: once its reset has passed, all of
/// it is back (the best a replica can say without asking).
fn restored(allowance: Allowance, now: Instant) -> Allowance {
    if allowance.reset <= now {
        Allowance {
            remaining: allowance.limit,
            reset: now,
            ..allowance
        }
    } else {
        allowance
    }
}
