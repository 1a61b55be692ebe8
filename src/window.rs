//! [`SlidingWindow`]: never more than `limit` takes in any window of `window` length, the one
//! counting rule behind the upstream budget, the callers' quotas and the failed-auth log budget;
//! and [`Allowance`], what such a limit has left, in the upstream's own terms.
//!
//! A sliding log of the last `limit` take times (a burst may spend the whole unspent budget).
//! It takes `now` as an argument, so its rules are tested without a clock.

use std::collections::VecDeque;
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
}
