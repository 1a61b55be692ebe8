//! Failed authentications per client address: counted, logged without flooding, and refused
//! once a source has failed `server.auth_failures_per_minute` times in its current minute.
//!
//! A source that trips the limit gets 429 for the rest of its window without its key being
//! checked, so guessing keys costs the guesser, not the gateway. Memory is bounded: at most
//! [`MAX_SOURCES`] addresses are tracked; past that, expired windows are swept and, if the map is
//! still full, new addresses are not tracked (they are still refused keys as usual).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::window::SlidingWindow;

/// Addresses tracked at most.
pub const MAX_SOURCES: usize = 100_000;

/// Log lines about failed authentications per minute, over all sources.
const LOG_LINES_PER_MINUTE: usize = 60;

/// Request extension: the address of the connection's peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// What recording one failure found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The source's failures in its current window, this one included.
    pub failures: u32,
    /// This failure reached the limit.
    pub tripped: bool,
    /// Worth a log line: the first failure of a window or the one that trips it, while the
    /// global log budget lasts.
    pub log: bool,
}

#[derive(Debug)]
pub struct AuthFailures {
    limit: u32,
    window: Duration,
    sources: Mutex<HashMap<IpAddr, Window>>,
    log_budget: Mutex<SlidingWindow>,
}

impl AuthFailures {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            sources: Mutex::new(HashMap::new()),
            log_budget: Mutex::new(SlidingWindow::new(
                LOG_LINES_PER_MINUTE,
                Duration::from_secs(60),
            )),
        }
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        // Every update is a single insert or field write: a poisoned map is still consistent.
        crate::sync::lock(&self.sources)
    }

    /// `Err(wait)` when `source` has used up its failures for the current window.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.sources().get(&source) {
            Some(window) if window.failures >= self.limit => {
                let ends = window.started + self.window;
                if ends > now {
                    Err(ends - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, source: IpAddr, now: Instant) -> Recorded {
        let failures = {
            let mut sources = self.sources();
            if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
                let window = self.window;
                sources.retain(|_, w| now.saturating_duration_since(w.started) < window);
            }
            if !sources.contains_key(&source) && sources.len() >= MAX_SOURCES {
                return Recorded {
                    failures: 1,
                    tripped: false,
                    log: false,
                };
            }
            let window = sources.entry(source).or_insert(Window {
                started: now,
                failures: 0,
            });
            if now.saturating_duration_since(window.started) >= self.window {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures += 1;
            window.failures
        };
        let tripped = failures == self.limit;
        let notable = failures == 1 || tripped;
        let log = notable && crate::sync::lock(&self.log_budget).try_take(now).is_ok();
        Recorded {
            failures,
            tripped,
            log,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_is_refused_after_its_limit_for_the_rest_of_its_window() {
        let start = Instant::now();
        let failures = AuthFailures::new(3, MINUTE);
        for n in 1..=3 {
            assert_eq!(failures.check(ip(1), start), Ok(()));
            let recorded = failures.record_failure(ip(1), start);
            assert_eq!(recorded.failures, n);
            assert_eq!(recorded.tripped, n == 3);
        }
        let later = start + Duration::from_secs(20);
        assert_eq!(failures.check(ip(1), later), Err(Duration::from_secs(40)));
        // Another source is unaffected.
        assert_eq!(failures.check(ip(2), later), Ok(()));
    }

    #[test]
    fn the_limit_resets_when_the_window_ends() {
        let start = Instant::now();
        let failures = AuthFailures::new(1, MINUTE);
        failures.record_failure(ip(1), start);
        assert!(failures.check(ip(1), start).is_err());
        let next_minute = start + MINUTE;
        assert_eq!(failures.check(ip(1), next_minute), Ok(()));
        let recorded = failures.record_failure(ip(1), next_minute);
        assert_eq!(recorded.failures, 1, "a new window counts from one");
    }

    #[test]
    fn only_the_first_and_the_tripping_failure_are_logged() {
        let now = Instant::now();
        let failures = AuthFailures::new(4, MINUTE);
        let logged: Vec<bool> = (0..6)
            .map(|_| failures.record_failure(ip(1), now).log)
            .collect();
        assert_eq!(logged, [true, false, false, true, false, false]);
    }

    #[test]
    fn log_lines_are_capped_over_all_sources() {
        let now = Instant::now();
        let failures = AuthFailures::new(100, MINUTE);
        let logged = (0..200u8)
            .filter(|n| failures.record_failure(ip(*n), now).log)
            .count();
        assert_eq!(logged, LOG_LINES_PER_MINUTE);
    }
}
