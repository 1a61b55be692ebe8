//! Fixed-window rate limiting (§8.7).
//!
//! `decide` is the whole policy as a pure function of (previous window, now, config); the
//! `Limiter` only keeps one window per bucket behind a mutex held for a map lookup. A request
//! over budget is not counted, so `remaining` stays 0 until the window resets. Times are epoch
//! milliseconds; headers are whole seconds, rounded up so a client that waits until
//! `x-ratelimit-reset` is never early.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::options::RateAlign;

/// One bucket's current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub opened_ms: i64,
    pub reset_ms: i64,
    pub used: u32,
}

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// `x-ratelimit-reset`: epoch seconds.
    pub reset_s: i64,
    /// `ceil(reset - now)` in seconds, for `Retry-After` on a 429.
    pub retry_after_s: i64,
}

/// Limiter configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateConfig {
    pub limit: u32,
    pub window_s: u64,
    pub align: RateAlign,
}

fn ceil_div(a: i64, b: i64) -> i64 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 {
        q
    } else {
        q + 1
    }
}

fn window_ms(cfg: &RateConfig) -> i64 {
    i64::try_from(cfg.window_s.saturating_mul(1000)).unwrap_or(i64::MAX / 2)
}

/// The window a request at `now_ms` falls into, given the bucket's previous window.
pub(crate) fn current_window(prev: Option<Window>, now_ms: i64, cfg: &RateConfig) -> Window {
    match prev {
        // A clock moved backwards past the window start also opens a fresh window.
        Some(w) if now_ms >= w.opened_ms && now_ms < w.reset_ms => w,
        _ => {
            let len = window_ms(cfg);
            let opened_ms = match cfg.align {
                RateAlign::Clock => now_ms.div_euclid(len) * len,
                RateAlign::First => now_ms,
            };
            Window {
                opened_ms,
                reset_ms: opened_ms + len,
                used: 0,
            }
        }
    }
}

/// Admits or rejects one request; returns the bucket's new window and the decision.
pub(crate) fn decide(prev: Option<Window>, now_ms: i64, cfg: &RateConfig) -> (Window, Decision) {
    let mut w = current_window(prev, now_ms, cfg);
    let allowed = w.used < cfg.limit;
    if allowed {
        w.used += 1;
    }
    let decision = Decision {
        allowed,
        limit: cfg.limit,
        remaining: cfg.limit.saturating_sub(w.used),
        reset_s: ceil_div(w.reset_ms, 1000),
        retry_after_s: ceil_div(w.reset_ms - now_ms, 1000),
    };
    (w, decision)
}

/// Buckets by name (`org`, or the key itself).
#[derive(Debug)]
pub(crate) struct Limiter {
    cfg: RateConfig,
    buckets: Mutex<HashMap<String, Window>>,
}

impl Limiter {
    pub fn new(cfg: RateConfig) -> Limiter {
        Limiter {
            cfg,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, bucket: &str, now_ms: i64) -> Decision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let prev = buckets.get(bucket).copied();
        let (w, d) = decide(prev, now_ms, &self.cfg);
        match buckets.get_mut(bucket) {
            Some(slot) => *slot = w,
            None => {
                buckets.insert(bucket.to_owned(), w);
            }
        }
        d
    }

    /// Each bucket's `(name, used, reset_s)` as seen at `now_ms` (an expired window shows 0 used).
    pub fn snapshot(&self, now_ms: i64) -> Vec<(String, u32, i64)> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = buckets
            .iter()
            .map(|(name, w)| {
                let live = now_ms >= w.opened_ms && now_ms < w.reset_ms;
                (
                    name.clone(),
                    if live { w.used } else { 0 },
                    ceil_div(w.reset_ms, 1000),
                )
            })
            .collect();
        out.sort();
        out
    }

    pub fn reset(&self) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK: RateConfig = RateConfig {
        limit: 3,
        window_s: 60,
        align: RateAlign::Clock,
    };
    const FIRST: RateConfig = RateConfig {
        align: RateAlign::First,
        ..CLOCK
    };

    fn run(cfg: &RateConfig, times: &[i64]) -> Vec<Decision> {
        let mut w = None;
        times
            .iter()
            .map(|&t| {
                let (nw, d) = decide(w, t, cfg);
                w = Some(nw);
                d
            })
            .collect()
    }

    #[test]
    fn clock_windows_reset_at_multiples_of_the_window() {
        let d = run(&CLOCK, &[61_000, 62_000, 63_000, 64_500, 119_999, 120_000]);
        let allowed: Vec<bool> = d.iter().map(|d| d.allowed).collect();
        assert_eq!(allowed, [true, true, true, false, false, true]);
        assert_eq!(d[0].reset_s, 120);
        assert_eq!(d[0].remaining, 2);
        assert_eq!(d[3].remaining, 0);
        // ceil(120 - 64.5) = 56
        assert_eq!(d[3].retry_after_s, 56);
        assert_eq!(d[5].remaining, 2);
        assert_eq!(d[5].reset_s, 180);
    }

    #[test]
    fn first_windows_open_at_the_first_request() {
        let d = run(&FIRST, &[61_500, 62_000, 63_000, 64_000, 121_499, 121_500]);
        assert_eq!(d[0].reset_s, 122); // 121.5 rounded up
        assert!(!d[3].allowed);
        assert!(!d[4].allowed);
        assert!(d[5].allowed);
        assert_eq!(d[5].reset_s, 182);
    }

    #[test]
    fn rejected_requests_are_not_counted() {
        let (w, _) = decide(None, 0, &CLOCK);
        let (w, _) = decide(Some(w), 1, &CLOCK);
        let (w, _) = decide(Some(w), 2, &CLOCK);
        let (w2, d) = decide(Some(w), 3, &CLOCK);
        assert!(!d.allowed);
        assert_eq!(w2.used, 3);
    }

    #[test]
    fn a_clock_moved_backwards_opens_a_new_window() {
        let (w, _) = decide(None, 120_000, &CLOCK);
        let (w2, d) = decide(Some(w), 30_000, &CLOCK);
        assert_eq!(w2.opened_ms, 0);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn the_limiter_keeps_buckets_apart() {
        let l = Limiter::new(CLOCK);
        for _ in 0..3 {
            assert!(l.check("a", 0).allowed);
        }
        assert!(!l.check("a", 0).allowed);
        assert!(l.check("b", 0).allowed);
        assert_eq!(
            l.snapshot(0),
            vec![("a".to_owned(), 3, 60), ("b".to_owned(), 1, 60)]
        );
        l.reset();
        assert!(l.snapshot(0).is_empty());
    }
}
