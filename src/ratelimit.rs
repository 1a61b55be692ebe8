//! `RateLimitLayer`: every answer to a known caller says what that caller can still spend
//! upstream, in the upstream's own headers (`x-ratelimit-limit`, `x-ratelimit-remaining`,
//! `x-ratelimit-reset`, upstream-api.md §2), so a client written for Onomondo paces itself
//! through the gateway as it would against the API.
//!
//! Guarantees:
//! - the numbers are the tighter of the caller's own `upstream_per_minute` quota and its
//!   credential profile's budget, read when the answer leaves (after a miss has spent its
//!   call), so hits, which spend nothing, report honest numbers;
//! - `x-ratelimit-reset` is the Unix second, rounded up, by which all of `limit` is back;
//! - every answer to a caller whose key was accepted carries them, errors (429s included)
//!   as well as answers; a request refused before its key was accepted carries none.
//!
//! It sits outside the error boundary so that error answers are covered too; auth tells it
//! who asked through the request's [`RequestFacts`].

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::caller::Caller;
use crate::facts::RequestFacts;
use crate::upstream::Upstreams;
use crate::window::Allowance;

pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// What `caller` can still spend upstream at `now`: its quota (if it has one) and its
/// profile's budget, whichever leaves less.
pub fn allowance(caller: &Caller, upstreams: &Upstreams, now: Instant) -> Option<Allowance> {
    let profile = upstreams.budget(caller.policy.profile);
    let budget = profile.map(|budget| budget.allowance(now));
    // A shared budget's last take also said what is left of the caller's quota everywhere.
    let quota = caller.policy.quota_allowance(now).map(|local| {
        profile
            .and_then(|budget| budget.quota_allowance(&caller.name, now))
            .unwrap_or(local)
    });
    match (quota, budget) {
        (Some(quota), Some(budget)) => Some(quota.tighter(budget)),
        (quota, budget) => quota.or(budget),
    }
}

/// Writes `allowance` as the three headers; `reset` as Unix seconds (rounded up, so a caller
/// waiting until then is never early), measured from `now` and `wall_now`.
pub fn write_headers(
    headers: &mut HeaderMap,
    allowance: &Allowance,
    now: Instant,
    wall_now: SystemTime,
) {
    let wait = allowance.reset.saturating_duration_since(now);
    let since_epoch = (wall_now + wait)
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let reset = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
    headers.insert(
        X_RATELIMIT_LIMIT.clone(),
        number(Slot::Limit, allowance.limit),
    );
    headers.insert(
        X_RATELIMIT_REMAINING.clone(),
        number(Slot::Remaining, allowance.remaining),
    );
    headers.insert(X_RATELIMIT_RESET.clone(), number(Slot::Reset, reset));
}

#[derive(Clone, Copy)]
enum Slot {
    Limit,
    Remaining,
    Reset,
}

thread_local! {
    /// The last value of each header made on this thread. Between misses every answer repeats
    /// them (the reset moves once a second), and cloning one (a reference count) costs far
    /// less than formatting and allocating it anew: three fresh values were ~3% of a cache
    /// hit's instructions (callgrind).
    static LAST: RefCell<[Option<(u64, HeaderValue)>; 3]> = const { RefCell::new([None, None, None]) };
}

/// `n` as a header value, reusing the last one made for `slot` when it is the same number.
fn number(slot: Slot, n: u64) -> HeaderValue {
    LAST.with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return HeaderValue::from(n);
        };
        let kept = &mut last[slot as usize];
        match kept {
            Some((value, header)) if *value == n => header.clone(),
            _ => {
                let header = HeaderValue::from(n);
                *kept = Some((n, header.clone()));
                header
            }
        }
    })
}

/// Adds the rate-limit headers to every answer to a known caller.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    upstreams: Upstreams,
}

impl RateLimitLayer {
    pub fn new(upstreams: Upstreams) -> Self {
        Self { upstreams }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            upstreams: self.upstreams.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    upstreams: Upstreams,
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = WithAllowance<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let facts = RequestFacts::attach(request.extensions_mut());
        WithAllowance {
            inner: self.inner.call(request),
            facts,
            upstreams: self.upstreams.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner answer, with the caller's allowance written on it as it leaves (a named
    /// future: no allocation per request).
    #[derive(Debug)]
    pub struct WithAllowance<F> {
        #[pin]
        inner: F,
        facts: Arc<RequestFacts>,
        upstreams: Upstreams,
    }
}

impl<F, ResBody, E> Future for WithAllowance<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(caller) = this.facts.caller() {
            let now = Instant::now();
            if let Some(allowance) = allowance(caller, this.upstreams, now) {
                write_headers(response.headers_mut(), &allowance, now, SystemTime::now());
            }
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_is_written_as_unix_seconds_rounded_up() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_730_239_150);
        let mut headers = HeaderMap::new();
        let allowance = Allowance {
            limit: 600,
            remaining: 520,
            reset: now + Duration::from_millis(50_500),
        };
        write_headers(&mut headers, &allowance, now, wall);
        assert_eq!(headers[&X_RATELIMIT_LIMIT], "600");
        assert_eq!(headers[&X_RATELIMIT_REMAINING], "520");
        assert_eq!(headers[&X_RATELIMIT_RESET], "1730239201");
        // A reset already past is "now".
        let past = Allowance {
            reset: now,
            ..allowance
        };
        write_headers(&mut headers, &past, now + Duration::from_secs(1), wall);
        assert_eq!(headers[&X_RATELIMIT_RESET], "1730239150");
    }

    #[test]
    fn a_changed_number_is_written_anew_not_the_last_one_kept() {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        for remaining in [5, 5, 4, 5, 0] {
            let allowance = Allowance {
                limit: 5,
                remaining,
                reset: now,
            };
            write_headers(&mut headers, &allowance, now, UNIX_EPOCH);
            assert_eq!(
                headers[&X_RATELIMIT_REMAINING],
                remaining.to_string().as_str()
            );
            assert_eq!(headers[&X_RATELIMIT_LIMIT], "5");
        }
    }
}
