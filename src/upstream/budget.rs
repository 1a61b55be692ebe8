//! The upstream budget: how many calls may go out, and when.
//!
//! Guarantees:
//! - [`SlidingWindow`]: never more than `limit` takes in any window of `window` length (a
//!   sliding log of the last `limit` take times; a burst may spend the whole unspent budget);
//! - [`BudgetState`] adds what the upstream says about itself: a 429 or
//!   `x-ratelimit-remaining: 0` closes the gate until the reset, and a positive `remaining`
//!   caps the calls until that reset (counting the calls still in flight);
//! - [`Budget`] is the shared, async face: a miss waits for budget up to its deadline, and is
//!   told at once when budget cannot come back before it;
//! - each can say what is left as an [`Allowance`] (limit, remaining, reset), which callers
//!   see as `x-ratelimit-*` headers.
//!
//! The state takes `now` as an argument, so its rules are tested without a clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `limit` takes in any `window`.
#[derive(Debug)]
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    /// Times of the takes still inside the window, oldest first; never longer than `limit`.
    taken: VecDeque<Instant>,
}

impl SlidingWindow {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            taken: VecDeque::with_capacity(limit.min(4096)),
        }
    }

    /// Takes one slot at `now`, or says when the next one frees.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Instant> {
        let free_at = self.free_at(now);
        if free_at > now {
            return Err(free_at);
        }
        self.taken.push_back(now);
        Ok(())
    }

    /// When a slot is (or becomes) free.
    pub fn free_at(&mut self, now: Instant) -> Instant {
        while let Some(&oldest) = self.taken.front() {
            if now.saturating_duration_since(oldest) >= self.window {
                self.taken.pop_front();
            } else {
                break;
            }
        }
        if self.taken.len() < self.limit {
            return now;
        }
        match self.taken.front() {
            Some(&oldest) => oldest + self.window,
            // limit == 0: nothing is ever free; a window from now is as good as never.
            None => now + self.window,
        }
    }

    /// Slots free at `now`.
    pub fn remaining(&mut self, now: Instant) -> usize {
        self.free_at(now);
        self.limit - self.taken.len()
    }

    /// What is left at `now`. Spent, it resets when a slot frees; otherwise when every spent
    /// slot is back (the newest take leaves the window).
    pub fn allowance(&mut self, now: Instant) -> Allowance {
        let remaining = self.remaining(now);
        let reset = if remaining == 0 {
            self.free_at(now)
        } else {
            self.taken
                .back()
                .map_or(now, |&newest| newest + self.window)
        };
        Allowance {
            limit: self.limit as u64,
            remaining: remaining as u64,
            reset,
        }
    }
}

/// What can still be spent, in the upstream's own terms (`x-ratelimit-limit`, `-remaining`,
/// `-reset`): `remaining` of `limit` calls now. `reset` is when calls can be made again once
/// none remain (what a client waiting for it needs), and otherwise when all of `limit` is
/// back; for the upstream's fixed windows the two are one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Instant,
}

impl Allowance {
    /// Where two limits both apply: the lower limit, the lower remaining count, and the reset
    /// of the one that leaves less (the later one when they leave the same).
    pub fn tighter(self, other: Allowance) -> Allowance {
        let (binding, reset) = match self.remaining.cmp(&other.remaining) {
            std::cmp::Ordering::Less => (self, self.reset),
            std::cmp::Ordering::Greater => (other, other.reset),
            std::cmp::Ordering::Equal => (self, self.reset.max(other.reset)),
        };
        Allowance {
            limit: self.limit.min(other.limit),
            remaining: binding.remaining,
            reset,
        }
    }
}

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
}

/// The shared upstream budget.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<BudgetState>,
}

impl Budget {
    pub fn new(per_minute: usize) -> Self {
        Self {
            state: Mutex::new(BudgetState::new(per_minute)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        // The state stays consistent between statements, so a panic elsewhere cannot have
        // left it half-updated: recover it rather than fail every later request.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Spends one call, waiting until `deadline` at most. Fails at once when budget cannot
    /// return before the deadline.
    pub async fn acquire(&self, deadline: Instant) -> Result<Ticket, NoBudget> {
        loop {
            let now = Instant::now();
            let at = match self.lock().try_take(now) {
                Ok(ticket) => return Ok(ticket),
                Err(at) => at,
            };
            if at > deadline {
                return Err(NoBudget {
                    retry_after: at.saturating_duration_since(now),
                });
            }
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// Spends one call only if one is free right now.
    pub fn try_acquire(&self) -> Result<Ticket, NoBudget> {
        let now = Instant::now();
        self.lock().try_take(now).map_err(|at| NoBudget {
            retry_after: at.saturating_duration_since(now),
        })
    }

    pub fn observe(&self, ticket: Ticket, report: RateLimitReport) {
        self.lock().observe(ticket, report, Instant::now());
    }

    /// Calls that could go out right now.
    pub fn remaining(&self) -> usize {
        self.lock().remaining(Instant::now())
    }

    /// What is left at `now`, and when all of it is back.
    pub fn allowance(&self, now: Instant) -> Allowance {
        self.lock().allowance(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_burst_may_spend_the_whole_window_at_once() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(600, MINUTE);
        for _ in 0..600 {
            assert_eq!(window.try_take(start), Ok(()));
        }
        assert_eq!(window.try_take(start), Err(start + MINUTE));
        assert_eq!(window.try_take(start + MINUTE), Ok(()));
    }

    #[test]
    fn slots_free_one_by_one_as_their_takes_leave_the_window() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(2, MINUTE);
        window.try_take(start).expect("first");
        window
            .try_take(start + Duration::from_secs(10))
            .expect("second");
        let third = start + Duration::from_secs(30);
        assert_eq!(window.try_take(third), Err(start + MINUTE));
        assert_eq!(window.try_take(start + MINUTE), Ok(()));
        assert_eq!(
            window.try_take(start + MINUTE),
            Err(start + Duration::from_secs(70))
        );
    }

    proptest! {
        /// Whatever the arrival pattern, no 60-second window ever holds more than the limit.
        #[test]
        fn no_window_ever_holds_more_than_the_limit(
            limit in 1usize..20,
            gaps_ms in prop::collection::vec(0u64..20_000, 1..400),
        ) {
            let start = Instant::now();
            let mut window = SlidingWindow::new(limit, MINUTE);
            let mut now = start;
            let mut taken = Vec::new();
            for gap in gaps_ms {
                now += Duration::from_millis(gap);
                if window.try_take(now).is_ok() {
                    taken.push(now);
                }
            }
            for (i, first) in taken.iter().enumerate() {
                let inside = taken[i..].iter().take_while(|t| t.duration_since(*first) < MINUTE).count();
                prop_assert!(inside <= limit, "{inside} takes within a minute of one another");
            }
        }
    }

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
    fn an_allowance_counts_what_is_left_and_says_when_it_comes_back() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(3, MINUTE);
        let untouched = window.allowance(start);
        assert_eq!((untouched.limit, untouched.remaining), (3, 3));
        assert_eq!(untouched.reset, start, "nothing spent: nothing to wait for");
        window.try_take(start).expect("first");
        window
            .try_take(start + Duration::from_secs(10))
            .expect("second");
        let now = start + Duration::from_secs(20);
        let spent = window.allowance(now);
        assert_eq!((spent.limit, spent.remaining), (3, 1));
        assert_eq!(spent.reset, start + Duration::from_secs(70));
        // With none left, the reset is when the oldest take frees a slot: a client waiting
        // until then can call again.
        window.try_take(now).expect("third");
        let none = window.allowance(now);
        assert_eq!(none.remaining, 0);
        assert_eq!(none.reset, start + MINUTE);
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
        budget.try_acquire().expect("the one call");
        let started = Instant::now();
        let denied = budget
            .acquire(started + Duration::from_millis(50))
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
        let ticket = budget.try_acquire().expect("budget");
        // A 429 closes the gate for 30 ms; the window itself still has budget.
        let report = RateLimitReport {
            throttled_for: Some(Duration::from_millis(30)),
            ..RateLimitReport::default()
        };
        budget.observe(ticket, report);
        let started = Instant::now();
        budget
            .acquire(started + Duration::from_secs(2))
            .await
            .expect("budget once the gate opens");
        assert!(started.elapsed() >= Duration::from_millis(25));
    }
}
