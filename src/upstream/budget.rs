//! The upstream budget: how many calls may go out, and when.
//!
//! Guarantees:
//! - [`BudgetState`] counts calls in a [`SlidingWindow`] (never more than the limit in any 60
//!   seconds) and adds what the upstream says about itself: a 429 or
//!   `x-ratelimit-remaining: 0` closes the gate until the reset, and a positive `remaining`
//!   caps the calls until that reset (counting the calls still in flight);
//! - [`Budget`] is the async face every upstream call goes through: a miss waits for budget up
//!   to its deadline, and is told at once when budget cannot come back before it. It is the
//!   in-memory state above (one process), or the shared budget in Redis (`[shared]`: several
//!   replicas, one log, the caller's quota taken in the same script; see `crate::shared`),
//!   which fails closed: no answer from Redis, no call;
//! - each can say what is left as an [`Allowance`] (limit, remaining, reset), which callers
//!   see as `x-ratelimit-*` headers.
//!
//! The state takes `now` as an argument, so its rules are tested without a clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::shared::budget::{Correction, Denied, Grant, Quota, SharedBudget};
pub use crate::window::{Allowance, SlidingWindow};

/// What one upstream response says about the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitReport {
    /// `x-ratelimit-remaining` after this call.
    pub remaining: Option<u64>,
    /// Time until `x-ratelimit-reset`.
    pub reset_in: Option<Duration>,
    /// The call was refused with 429; the gate stays closed this long.
    pub throttled_for: Option<Duration>,
}

/// A take's ticket: its sequence number, to know which later calls its report cannot count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Debug)]
pub struct BudgetState {
    window: SlidingWindow,
    /// No call goes out before this (a 429 or a spent upstream window).
    closed_until: Option<Instant>,
    /// Calls the upstream still allows before `reset`, as it last told us.
    allowance: Option<(u64, Instant)>,
    /// Takes so far; the next ticket's number.
    issued: u64,
}

impl BudgetState {
    pub fn new(per_minute: usize) -> Self {
        Self {
            window: SlidingWindow::new(per_minute, Duration::from_secs(60)),
            closed_until: None,
            allowance: None,
            issued: 0,
        }
    }

    /// When a call may go out: `now`, or the earliest instant budget returns.
    pub fn available_at(&mut self, now: Instant) -> Instant {
        if let Some(until) = self.closed_until {
            if until > now {
                return until;
            }
            self.closed_until = None;
        }
        if let Some((remaining, reset)) = self.allowance {
            if reset <= now {
                self.allowance = None;
            } else if remaining == 0 {
                return reset;
            }
        }
        self.window.free_at(now)
    }

    /// Spends one call at `now`, or says when budget returns.
    pub fn try_take(&mut self, now: Instant) -> Result<Ticket, Instant> {
        let at = self.available_at(now);
        if at > now {
            return Err(at);
        }
        self.window
            .try_take(now)
            .expect("available_at said a slot is free");
        if let Some((remaining, _)) = &mut self.allowance {
            *remaining = remaining.saturating_sub(1);
        }
        let ticket = Ticket(self.issued);
        self.issued += 1;
        Ok(ticket)
    }

    /// Corrects the local view with what the upstream said in answer to `ticket`'s call.
    pub fn observe(&mut self, ticket: Ticket, report: RateLimitReport, now: Instant) {
        if let Some(wait) = report.throttled_for {
            self.close_until(now + wait);
        }
        let (Some(remaining), Some(reset_in)) = (report.remaining, report.reset_in) else {
            return;
        };
        let reset = now + reset_in;
        if remaining == 0 {
            self.close_until(reset);
            return;
        }
        // Calls taken after this one were not counted in its `remaining` yet.
        let later = self.issued.saturating_sub(ticket.0 + 1);
        let allowed = remaining.saturating_sub(later);
        self.allowance = match self.allowance {
            // The same upstream window (resets agree to the second): trust the lower count.
            Some((current, known)) if abs_diff(known, reset) < Duration::from_secs(1) => {
                Some((current.min(allowed), known))
            }
            _ => Some((allowed, reset)),
        };
    }

    fn close_until(&mut self, until: Instant) {
        self.closed_until = Some(
            self.closed_until
                .map_or(until, |current| current.max(until)),
        );
    }

    /// What is left at `now`: the local window's view, lowered by what the upstream said
    /// (a closed gate, or its own count until its reset). Spent, it resets when a call may go
    /// out again; otherwise once the window and the upstream's own count are both back.
    pub fn allowance(&mut self, now: Instant) -> Allowance {
        let remaining = self.remaining(now) as u64;
        let window = self.window.allowance(now);
        if remaining == 0 {
            return Allowance {
                limit: window.limit,
                remaining,
                reset: self.available_at(now),
            };
        }
        let upstream_reset = [self.closed_until, self.allowance.map(|(_, reset)| reset)]
            .into_iter()
            .flatten()
            .filter(|&at| at > now)
            .max();
        Allowance {
            limit: window.limit,
            remaining,
            reset: upstream_reset.map_or(window.reset, |at| at.max(window.reset)),
        }
    }

    /// Calls the local window allows now (for reports).
    pub fn remaining(&mut self, now: Instant) -> usize {
        if self.available_at(now) > now {
            return 0;
        }
        let local = self.window.remaining(now);
        match self.allowance {
            Some((allowed, _)) => local.min(usize::try_from(allowed).unwrap_or(usize::MAX)),
            None => local,
        }
    }
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    a.saturating_duration_since(b)
        .max(b.saturating_duration_since(a))
}

/// Why a call could not go out in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoBudget {
    /// How long until budget returns.
    pub retry_after: Duration,
    /// The caller's own quota refused it (checked here only with a shared budget; one process
    /// charges it where the fill starts), not the profile's budget.
    pub caller_quota: bool,
}

impl NoBudget {
    fn budget(retry_after: Duration) -> Self {
        Self {
            retry_after,
            caller_quota: false,
        }
    }
}

/// A spent call, for the correction its answer brings.
#[derive(Debug, Clone)]
pub enum Taken {
    Local(Ticket),
    Shared(Grant),
}

/// A credential profile's upstream budget: in this process's memory, or shared in Redis.
#[derive(Debug)]
pub struct Budget {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Local(Mutex<BudgetState>),
    Shared {
        budget: Arc<SharedBudget>,
        per_minute: u64,
    },
}

impl Budget {
    /// The in-memory budget of one process.
    pub fn new(per_minute: usize) -> Self {
        Self {
            kind: Kind::Local(Mutex::new(BudgetState::new(per_minute))),
        }
    }

    /// The budget shared by every replica, through Redis.
    pub fn shared(budget: SharedBudget, per_minute: u32) -> Self {
        Self {
            kind: Kind::Shared {
                budget: Arc::new(budget),
                per_minute: u64::from(per_minute),
            },
        }
    }

    fn lock(state: &Mutex<BudgetState>) -> std::sync::MutexGuard<'_, BudgetState> {
        // The state stays consistent between statements, so a panic elsewhere cannot have
        // left it half-updated: recover it rather than fail every later request.
        crate::sync::lock(state)
    }

    /// Spends one call (and, with a shared budget, one of `quota`), waiting until `deadline`
    /// at most. Fails at once when budget cannot return before the deadline, when the
    /// caller's quota is spent, or when the shared budget cannot be reached.
    pub async fn acquire(
        &self,
        deadline: Instant,
        quota: Option<Quota<'_>>,
    ) -> Result<Taken, NoBudget> {
        match &self.kind {
            Kind::Local(state) => loop {
                let now = Instant::now();
                let at = match Self::lock(state).try_take(now) {
                    Ok(ticket) => return Ok(Taken::Local(ticket)),
                    Err(at) => at,
                };
                if at > deadline {
                    return Err(NoBudget::budget(at.saturating_duration_since(now)));
                }
                tokio::time::sleep_until(at.into()).await;
            },
            Kind::Shared { budget, .. } => loop {
                let retry_after = match budget.take(quota).await {
                    Ok(grant) => return Ok(Taken::Shared(grant)),
                    Err(Denied::Budget { retry_after }) => retry_after,
                    Err(Denied::Quota { retry_after }) => {
                        return Err(NoBudget {
                            retry_after,
                            caller_quota: true,
                        })
                    }
                    // Fail closed: without the shared count no call may go out.
                    Err(Denied::Unavailable { retry_after }) => {
                        return Err(NoBudget::budget(retry_after))
                    }
                };
                let at = Instant::now() + retry_after;
                if at > deadline {
                    return Err(NoBudget::budget(retry_after));
                }
                tokio::time::sleep_until(at.into()).await;
            },
        }
    }

    /// Corrects the budget with what the upstream said in answer to `taken`'s call. A shared
    /// correction is sent on its own task: it reaches every replica even if the request that
    /// made the call is gone.
    pub fn observe(&self, taken: Taken, report: RateLimitReport) {
        match (&self.kind, taken) {
            (Kind::Local(state), Taken::Local(ticket)) => {
                Self::lock(state).observe(ticket, report, Instant::now());
            }
            (Kind::Shared { budget, .. }, Taken::Shared(grant)) => {
                let says_something = report != RateLimitReport::default();
                if says_something || grant.probe {
                    let budget = budget.clone();
                    let correction = Correction {
                        remaining: report.remaining,
                        reset_in: report.reset_in,
                        throttled_for: report.throttled_for,
                    };
                    tokio::spawn(async move { budget.correct(&grant, correction).await });
                }
            }
            // A ticket from another kind of budget cannot happen: each upstream has one.
            _ => {}
        }
    }

    /// Calls that could go out right now (with a shared budget: as the last take said, and
    /// none while Redis does not answer).
    pub fn remaining(&self) -> usize {
        let remaining = self.allowance(Instant::now()).remaining;
        usize::try_from(remaining).unwrap_or(usize::MAX)
    }

    /// What is left at `now`, and when all of it is back. A shared budget reports what its
    /// last take said, never asking Redis again (hits never touch Redis).
    pub fn allowance(&self, now: Instant) -> Allowance {
        match &self.kind {
            Kind::Local(state) => Self::lock(state).allowance(now),
            Kind::Shared { budget, per_minute } => {
                let full = Allowance {
                    limit: *per_minute,
                    remaining: *per_minute,
                    reset: now,
                };
                if !budget.reachable() {
                    return Allowance {
                        remaining: 0,
                        reset: now + Duration::from_secs(1),
                        ..full
                    };
                }
                budget.allowance(now).unwrap_or(full)
            }
        }
    }

    /// What is left of `caller`'s quota, as the shared budget last saw it (`None` for a local
    /// budget: the caller's own window says it).
    pub fn quota_allowance(&self, caller: &str, now: Instant) -> Option<Allowance> {
        match &self.kind {
            Kind::Local(_) => None,
            Kind::Shared { budget, .. } => budget.quota_allowance(caller, now),
        }
    }

    /// Whether this budget lives in Redis.
    pub fn is_shared(&self) -> bool {
        matches!(self.kind, Kind::Shared { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_closes_the_gate_until_its_retry_after() {
        let now = Instant::now();
        let mut state = BudgetState::new(600);
        let ticket = state.try_take(now).expect("budget");
        let report = RateLimitReport {
            throttled_for: Some(Duration::from_secs(20)),
            ..RateLimitReport::default()
        };
        state.observe(ticket, report, now);
        assert_eq!(
            state.try_take(now + Duration::from_secs(19)),
            Err(now + Duration::from_secs(20))
        );
        assert!(state.try_take(now + Duration::from_secs(20)).is_ok());
    }

    #[test]
    fn remaining_zero_closes_the_gate_until_the_reset() {
        let now = Instant::now();
        let mut state = BudgetState::new(600);
        let ticket = state.try_take(now).expect("budget");
        let report = RateLimitReport {
            remaining: Some(0),
            reset_in: Some(Duration::from_secs(42)),
            throttled_for: None,
        };
        state.observe(ticket, report, now);
        assert_eq!(state.try_take(now), Err(now + Duration::from_secs(42)));
        assert_eq!(state.remaining(now), 0);
        assert!(state.try_take(now + Duration::from_secs(42)).is_ok());
    }

    #[test]
    fn a_positive_remaining_caps_calls_until_the_reset_counting_those_in_flight() {
        let now = Instant::now();
        let mut state = BudgetState::new(600);
        let first = state.try_take(now).expect("budget");
        // Two more calls leave before the first one's answer arrives.
        state.try_take(now).expect("budget");
        state.try_take(now).expect("budget");
        let report = RateLimitReport {
            remaining: Some(5),
            reset_in: Some(Duration::from_secs(30)),
            throttled_for: None,
        };
        state.observe(first, report, now);
        // 5 left after the first call, 2 of them already spent: 3 more.
        for _ in 0..3 {
            assert!(state.try_take(now).is_ok());
        }
        assert_eq!(state.try_take(now), Err(now + Duration::from_secs(30)));
        assert!(state.try_take(now + Duration::from_secs(30)).is_ok());
    }

    #[test]
    fn a_later_report_of_the_same_window_cannot_raise_the_cap() {
        let now = Instant::now();
        let mut state = BudgetState::new(600);
        let a = state.try_take(now).expect("budget");
        let b = state.try_take(now).expect("budget");
        let report = |remaining| RateLimitReport {
            remaining: Some(remaining),
            reset_in: Some(Duration::from_secs(30)),
            throttled_for: None,
        };
        state.observe(b, report(3), now);
        state.observe(a, report(4), now); // arrives late and claims more: ignored
        for _ in 0..3 {
            assert!(state.try_take(now).is_ok());
        }
        assert!(state.try_take(now).is_err());
    }

    #[test]
    fn the_budgets_allowance_follows_what_the_upstream_said() {
        let now = Instant::now();
        let mut state = BudgetState::new(600);
        let ticket = state.try_take(now).expect("budget");
        state.observe(
            ticket,
            RateLimitReport {
                remaining: Some(5),
                reset_in: Some(Duration::from_secs(90)),
                throttled_for: None,
            },
            now,
        );
        let capped = state.allowance(now);
        assert_eq!((capped.limit, capped.remaining), (600, 5));
        assert_eq!(capped.reset, now + Duration::from_secs(90));
        let ticket = state.try_take(now).expect("budget");
        state.observe(
            ticket,
            RateLimitReport {
                throttled_for: Some(Duration::from_secs(20)),
                ..RateLimitReport::default()
            },
            now,
        );
        let closed = state.allowance(now);
        assert_eq!(closed.remaining, 0);
        assert_eq!(
            closed.reset,
            now + Duration::from_secs(20),
            "calls resume when the 429's wait is over"
        );
    }

    #[test]
    fn the_tighter_of_two_allowances_is_the_one_that_leaves_less() {
        let now = Instant::now();
        let at = |secs| now + Duration::from_secs(secs);
        let quota = Allowance {
            limit: 120,
            remaining: 3,
            reset: at(50),
        };
        let budget = Allowance {
            limit: 600,
            remaining: 400,
            reset: at(59),
        };
        let both = Allowance {
            limit: 120,
            remaining: 3,
            reset: at(50),
        };
        assert_eq!(quota.tighter(budget), both);
        assert_eq!(budget.tighter(quota), both);
        let spent_budget = Allowance {
            remaining: 0,
            ..budget
        };
        assert_eq!(
            quota.tighter(spent_budget),
            Allowance {
                limit: 120,
                remaining: 0,
                reset: at(59)
            }
        );
        let even = Allowance {
            remaining: 3,
            ..budget
        };
        assert_eq!(quota.tighter(even).reset, at(59), "a tie waits for both");
    }

    #[tokio::test]
    async fn acquire_fails_at_once_when_budget_returns_after_the_deadline() {
        let budget = Budget::new(1);
        budget
            .acquire(Instant::now(), None)
            .await
            .expect("the one call");
        let started = Instant::now();
        let denied = budget
            .acquire(started + Duration::from_millis(50), None)
            .await
            .expect_err("no budget within the deadline");
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "it did not wait in vain"
        );
        assert!(denied.retry_after > Duration::from_secs(59));
    }

    #[tokio::test]
    async fn acquire_waits_for_budget_that_returns_before_the_deadline() {
        let budget = Budget::new(5);
        let ticket = budget.acquire(Instant::now(), None).await.expect("budget");
        // A 429 closes the gate for 30 ms; the window itself still has budget.
        let report = RateLimitReport {
            throttled_for: Some(Duration::from_millis(30)),
            ..RateLimitReport::default()
        };
        budget.observe(ticket, report);
        let started = Instant::now();
        budget
            .acquire(started + Duration::from_secs(2), None)
            .await
            .expect("budget once the gate opens");
        assert!(started.elapsed() >= Duration::from_millis(25));
    }
}
