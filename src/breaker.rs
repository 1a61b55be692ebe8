//! The circuit breaker: after `failures` consecutive failures of a dependency, stop asking it
//! for `cooldown`, then let exactly one probe decide whether to start again.
//!
//! Two dependencies have one: the upstream (`upstream`: while open, misses fail fast and are
//! served stale where possible, without spending budget or waiting on a dead upstream) and
//! Redis (`shared`: while open, no request pays a command timeout to learn that Redis is still
//! gone). The state machine is pure: `now` is an argument.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over; one probe may go out.
    HalfOpen {
        probing: bool,
    },
}

/// How a call may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The breaker is closed.
    Normal,
    /// The one call whose outcome decides whether the breaker closes.
    Probe,
}

/// The breaker refuses calls for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub retry_after: Duration,
}

/// What became of an admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (for the upstream: any status that is not its failure, 429 included: that
    /// is the budget's business, not the upstream's health).
    Healthy,
    /// Connection error, timeout or (upstream) 5xx.
    Failed,
    /// The call never completed (cancelled): it says nothing about the dependency.
    Abandoned,
}

#[derive(Debug)]
pub struct BreakerState {
    state: State,
    threshold: u32,
    cooldown: Duration,
}

impl BreakerState {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: State::Closed {
                consecutive_failures: 0,
            },
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Result<Admission, Open> {
        match self.state {
            State::Closed { .. } => Ok(Admission::Normal),
            State::Open { until } if now < until => Err(Open {
                retry_after: until - now,
            }),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Ok(Admission::Probe)
            }
            // Another call is probing: wait for its verdict, about one cooldown at most.
            State::HalfOpen { probing: true } => Err(Open {
                retry_after: Duration::from_secs(1).min(self.cooldown),
            }),
        }
    }

    pub fn record(&mut self, admission: Admission, outcome: Outcome, now: Instant) {
        self.state = match (self.state, admission, outcome) {
            (_, _, Outcome::Healthy) => State::Closed {
                consecutive_failures: 0,
            },
            (_, Admission::Probe, Outcome::Failed) => State::Open {
                until: now + self.cooldown,
            },
            (_, Admission::Probe, Outcome::Abandoned) => State::HalfOpen { probing: false },
            (
                State::Closed {
                    consecutive_failures,
                },
                Admission::Normal,
                Outcome::Failed,
            ) => {
                let failures = consecutive_failures + 1;
                if failures >= self.threshold {
                    State::Open {
                        until: now + self.cooldown,
                    }
                } else {
                    State::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            // A normal call that ends while the breaker is already open or probing changes
            // nothing: the probe decides.
            (state, Admission::Normal, _) => state,
        };
    }

    pub fn is_open(&self, now: Instant) -> bool {
        matches!(self.state, State::Open { until } if now < until)
    }
}

/// The shared breaker.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<BreakerState>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(BreakerState::new(threshold, cooldown)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // Every transition is a single assignment: a poisoned lock still holds a valid state.
        crate::sync::lock(&self.state)
    }

    /// Admits one call; the guard records `Abandoned` unless its outcome is recorded.
    pub fn admit(&self) -> Result<Attempt<'_>, Open> {
        let admission = self.lock().admit(Instant::now())?;
        Ok(Attempt {
            breaker: self,
            admission,
            recorded: false,
        })
    }

    pub fn is_open(&self) -> bool {
        self.lock().is_open(Instant::now())
    }
}

/// One admitted call.
#[derive(Debug)]
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    admission: Admission,
    recorded: bool,
}

impl Attempt<'_> {
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker
            .lock()
            .record(self.admission, outcome, Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker
                .lock()
                .record(self.admission, Outcome::Abandoned, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(10);

    fn fail(state: &mut BreakerState, now: Instant) {
        let admission = state.admit(now).expect("admitted");
        state.record(admission, Outcome::Failed, now);
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let now = Instant::now();
        let mut state = BreakerState::new(3, COOLDOWN);
        fail(&mut state, now);
        fail(&mut state, now);
        assert_eq!(state.admit(now), Ok(Admission::Normal));
        state.record(Admission::Normal, Outcome::Failed, now);
        assert_eq!(
            state.admit(now),
            Err(Open {
                retry_after: COOLDOWN
            })
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let now = Instant::now();
        let mut state = BreakerState::new(2, COOLDOWN);
        fail(&mut state, now);
        let admission = state.admit(now).expect("admitted");
        state.record(admission, Outcome::Healthy, now);
        fail(&mut state, now);
        assert_eq!(state.admit(now), Ok(Admission::Normal));
    }

    #[test]
    fn after_the_cooldown_exactly_one_probe_goes_out() {
        let now = Instant::now();
        let mut state = BreakerState::new(1, COOLDOWN);
        fail(&mut state, now);
        let later = now + COOLDOWN;
        assert_eq!(state.admit(later), Ok(Admission::Probe));
        assert!(
            state.admit(later).is_err(),
            "a second call waits for the probe"
        );
    }

    #[test]
    fn a_healthy_probe_closes_and_a_failed_one_reopens() {
        let now = Instant::now();
        let mut state = BreakerState::new(1, COOLDOWN);
        fail(&mut state, now);
        let later = now + COOLDOWN;
        let probe = state.admit(later).expect("probe");
        state.record(probe, Outcome::Failed, later);
        assert_eq!(
            state.admit(later),
            Err(Open {
                retry_after: COOLDOWN
            })
        );

        let much_later = later + COOLDOWN;
        let probe = state.admit(much_later).expect("probe");
        state.record(probe, Outcome::Healthy, much_later);
        assert_eq!(state.admit(much_later), Ok(Admission::Normal));
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let breaker = Breaker::new(1, Duration::ZERO);
        breaker.admit().expect("admitted").record(Outcome::Failed);
        let probe = breaker.admit().expect("probe");
        drop(probe);
        let next = breaker.admit().expect("the next call probes");
        assert_eq!(next.admission, Admission::Probe);
    }
}
