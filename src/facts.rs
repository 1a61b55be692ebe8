//! [`RequestFacts`]: what inner layers learn about a request (who asked, which route, how the
//! cache answered, time spent upstream) and the outer layers need when the answer leaves: the
//! access line, the metrics and the rate-limit headers.
//!
//! Request extensions only travel inwards, so the outermost layer that needs the facts
//! attaches one shared record and inner layers fill it in. It is lock-free and typed: each
//! fact is written by one layer, once (the upstream time adds up over retries).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::caller::Caller;
use crate::outcome::CacheOutcome;
use crate::query::RouteName;

/// Upstream time not yet recorded (no upstream call).
const NO_UPSTREAM: u64 = u64::MAX;

#[derive(Debug)]
pub struct RequestFacts {
    caller: OnceLock<Caller>,
    /// `RouteName as u8 + 1`, 0 before normalize named it.
    route: AtomicU8,
    /// `CacheOutcome as u8`, 0 before the cache decided.
    cache: AtomicU8,
    /// Microseconds spent upstream, summed over retries; [`NO_UPSTREAM`] if none.
    upstream_us: AtomicU64,
}

impl Default for RequestFacts {
    fn default() -> Self {
        Self {
            caller: OnceLock::new(),
            route: AtomicU8::new(0),
            cache: AtomicU8::new(0),
            upstream_us: AtomicU64::new(NO_UPSTREAM),
        }
    }
}

impl RequestFacts {
    /// The facts of the request these extensions belong to, if a layer outside attached them.
    pub fn of(extensions: &http::Extensions) -> Option<&Arc<RequestFacts>> {
        extensions.get::<Arc<RequestFacts>>()
    }

    /// The request's facts, attached now if no layer outside did.
    pub fn attach(extensions: &mut http::Extensions) -> Arc<RequestFacts> {
        if let Some(facts) = extensions.get::<Arc<RequestFacts>>() {
            return facts.clone();
        }
        let facts = Arc::new(RequestFacts::default());
        extensions.insert(facts.clone());
        facts
    }

    /// Published by auth; a request passes auth once, so a second call changes nothing.
    pub fn set_caller(&self, caller: &Caller) {
        let _ = self.caller.set(caller.clone());
    }

    pub fn caller(&self) -> Option<&Caller> {
        self.caller.get()
    }

    pub fn set_route(&self, route: RouteName) {
        self.route.store(route as u8 + 1, Ordering::Relaxed);
    }

    pub fn route(&self) -> Option<RouteName> {
        match self.route.load(Ordering::Relaxed) {
            0 => None,
            n => RouteName::ALL.get(usize::from(n - 1)).copied(),
        }
    }

    pub fn set_cache(&self, outcome: CacheOutcome) {
        self.cache.store(outcome as u8, Ordering::Relaxed);
    }

    pub fn cache(&self) -> Option<CacheOutcome> {
        CacheOutcome::from_u8(self.cache.load(Ordering::Relaxed))
    }

    /// Adds time spent upstream (retries add up).
    pub fn add_upstream(&self, spent: Duration) {
        let us = u64::try_from(spent.as_micros()).unwrap_or(NO_UPSTREAM - 1);
        let _ = self
            .upstream_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |before| {
                Some(match before {
                    NO_UPSTREAM => us,
                    before => before.saturating_add(us).min(NO_UPSTREAM - 1),
                })
            });
    }

    /// Time spent upstream, if the request went there.
    pub fn upstream(&self) -> Option<Duration> {
        match self.upstream_us.load(Ordering::Relaxed) {
            NO_UPSTREAM => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_start_unknown_and_keep_what_layers_publish() {
        let facts = RequestFacts::default();
        assert!(facts.caller().is_none());
        assert_eq!(facts.route(), None);
        assert_eq!(facts.cache(), None);
        assert_eq!(facts.upstream(), None);
        for route in RouteName::ALL {
            facts.set_route(route);
            assert_eq!(facts.route(), Some(route));
        }
        facts.set_cache(CacheOutcome::StaleIfError);
        assert_eq!(facts.cache(), Some(CacheOutcome::StaleIfError));
    }

    #[test]
    fn upstream_time_adds_up_over_retries() {
        let facts = RequestFacts::default();
        facts.add_upstream(Duration::from_millis(3));
        facts.add_upstream(Duration::from_millis(4));
        assert_eq!(facts.upstream(), Some(Duration::from_millis(7)));
    }

    #[test]
    fn the_first_caller_published_stays() {
        let facts = RequestFacts::default();
        facts.set_caller(&Caller::unrestricted("billing"));
        facts.set_caller(&Caller::unrestricted("ops"));
        assert_eq!(facts.caller().map(|c| &*c.name), Some("billing"));
    }

    #[test]
    fn attach_reuses_the_facts_already_attached() {
        let mut extensions = http::Extensions::new();
        let outer = RequestFacts::attach(&mut extensions);
        let inner = RequestFacts::attach(&mut extensions);
        assert!(Arc::ptr_eq(&outer, &inner));
    }
}
