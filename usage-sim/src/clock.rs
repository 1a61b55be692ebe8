//! The simulator's clock, which drives only rate limiting (never the data).
//!
//! `now = base + offset`, where `base` is 0 for the simulated clock and the wall clock with
//! `--live-clock`. `/__sim/clock` moves the offset, so tests step time without waiting and a
//! live clock can still be shifted.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub(crate) struct Clock {
    live: bool,
    offset_ms: AtomicI64,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Clock {
    /// A clock reading `start_ms` now; it stands still unless `live`.
    pub fn new(live: bool, start_ms: Option<i64>) -> Clock {
        let base = if live { wall_ms() } else { 0 };
        let offset = start_ms.map_or(0, |s| s - base);
        Clock {
            live,
            offset_ms: AtomicI64::new(offset),
        }
    }

    fn base(&self) -> i64 {
        if self.live {
            wall_ms()
        } else {
            0
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.base() + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.offset_ms
            .store(now_ms - self.base(), Ordering::Relaxed);
    }

    pub fn advance_ms(&self, delta_ms: i64) {
        self.offset_ms.fetch_add(delta_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_clock_moves_only_when_told() {
        let c = Clock::new(false, Some(1_000));
        assert_eq!(c.now_ms(), 1_000);
        c.advance_ms(60_000);
        assert_eq!(c.now_ms(), 61_000);
        c.set_ms(5);
        assert_eq!(c.now_ms(), 5);
    }

    #[test]
    fn a_live_clock_starts_at_the_requested_time() {
        let c = Clock::new(true, Some(1_000_000));
        let now = c.now_ms();
        // Bounded by however long this test takes, certainly under an hour.
        assert!((1_000_000..1_000_000 + 3_600_000).contains(&now));
    }
}
