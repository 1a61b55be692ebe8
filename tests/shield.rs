//! Shielding the upstream budget: one budget that is never overrun, the upstream's own word on
//! its limit, stale answers instead of errors, finality-aware TTLs, per-caller quotas, caller
//! directives, retries and the circuit breaker.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{
    epoch_secs, get, get_as, let_expire, send, short_lived, FakeUpstream, Gateway, Reply,
    BILLING_KEY, METERED_KEY, OPS_KEY, REFRESHER_KEY,
};
use usage_gateway::Config;

async fn start_with(tune: impl FnOnce(&mut Config)) -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let mut config = support::config(&upstream.base_url());
    tune(&mut config);
    let gateway = Gateway::start(config).await;
    (upstream, gateway)
}

fn retry_after_secs(answer: &support::Answer) -> u64 {
    answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds")
}

// === one upstream budget ===

#[tokio::test]
async fn the_budget_is_never_exceeded_by_a_flood_of_distinct_misses() {
    let (upstream, gateway) = start_with(|c| {
        c.upstream.rate_limit_per_minute = 20;
        c.upstream.queue_timeout = Duration::from_millis(200);
    })
    .await;
    let gateway = Arc::new(gateway);
    let keys = [BILLING_KEY, OPS_KEY, REFRESHER_KEY];
    let callers: Vec<_> = (0..90)
        .map(|i| {
            let gateway = gateway.clone();
            let key = keys[i % keys.len()];
            tokio::spawn(
                async move { get_as(&gateway, key, &format!("/usage?limit={}", i + 1)).await },
            )
        })
        .collect();
    let mut served = 0;
    let mut refused = 0;
    for caller in callers {
        let answer = caller.await.expect("task");
        match answer.status.as_u16() {
            200 => served += 1,
            429 => {
                assert_eq!(answer.json()["error"], "rate_limit_exceeded");
                assert_eq!(answer.json()["limit"], "upstream_budget");
                assert_eq!(answer.header("x-ratelimit-remaining"), Some("0"));
                let wait = retry_after_secs(&answer);
                assert!((1..=60).contains(&wait), "Retry-After {wait}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {}", answer.body),
        }
    }
    // The whole minute's budget is spent at once, and not one call more.
    assert_eq!(upstream.calls(), 20);
    assert_eq!((served, refused), (20, 70));
}

#[tokio::test]
async fn hits_never_wait_for_or_spend_budget() {
    let (upstream, gateway) = start_with(|c| {
        c.upstream.rate_limit_per_minute = 1;
        c.upstream.queue_timeout = Duration::from_secs(5);
    })
    .await;
    assert_eq!(get(&gateway, "/usage").await.status, 200);
    for _ in 0..50 {
        assert!(get(&gateway, "/usage").await.cache_status().contains("hit"));
    }
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn remaining_zero_stops_all_forwarding_until_the_reset() {
    let (upstream, gateway) =
        start_with(|c| c.upstream.queue_timeout = Duration::from_millis(100)).await;
    let reset = epoch_secs() + 30;
    upstream.script(move |request, n| {
        support::echo(request, n)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", reset.to_string())
    });
    assert_eq!(get(&gateway, "/usage?limit=1").await.status, 200);
    let refused = get(&gateway, "/usage?limit=2").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate_limit_exceeded");
    assert_eq!(refused.json()["limit"], "upstream_budget");
    assert!((28..=30).contains(&retry_after_secs(&refused)));
    // The upstream's own reset is passed on as the caller's (rounded up to the second after
    // the gateway's sub-second bookkeeping, so perhaps one more: never early).
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    let caller_reset: u64 = refused
        .header("x-ratelimit-reset")
        .and_then(|r| r.parse().ok())
        .expect("x-ratelimit-reset");
    assert!(
        (reset..=reset + 1).contains(&caller_reset),
        "{caller_reset} vs {reset}"
    );
    assert_eq!(
        upstream.calls(),
        1,
        "nothing was forwarded while the window is spent"
    );
}

#[tokio::test]
async fn forwarding_resumes_by_itself_when_the_upstream_window_resets() {
    // The miss queues (up to 5 s) until the upstream's reset, then goes through on its own.
    let (upstream, gateway) =
        start_with(|c| c.upstream.queue_timeout = Duration::from_secs(5)).await;
    // Whole epoch seconds: the reset is 1 to 2 s away.
    let reset = epoch_secs() + 2;
    upstream.script(move |request, n| {
        let reply = support::echo(request, n);
        if n == 1 {
            reply
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", reset.to_string())
        } else {
            reply
        }
    });
    assert_eq!(get(&gateway, "/usage?limit=1").await.status, 200);
    let started = std::time::Instant::now();
    let resumed = get(&gateway, "/usage?limit=2").await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(upstream.calls(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "it waited for the reset"
    );
}

#[tokio::test]
async fn a_429_closes_the_gate_for_every_forward_until_retry_after() {
    let (upstream, gateway) =
        start_with(|c| c.upstream.queue_timeout = Duration::from_millis(100)).await;
    upstream.script(|_, _| {
        Reply::json(429, r#"{"error":"rate_limit_exceeded"}"#).header("retry-after", "30")
    });
    let limited = get(&gateway, "/usage?limit=1").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["limit"], "upstream");
    upstream.script(support::echo);
    for limit in 2..6 {
        let answer = get_as(&gateway, OPS_KEY, &format!("/usage?limit={limit}")).await;
        assert_eq!(answer.status, 429);
        assert_eq!(answer.json()["error"], "rate_limit_exceeded");
        assert_eq!(answer.json()["limit"], "upstream_budget");
    }
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn in_flight_upstream_calls_are_bounded() {
    let (upstream, gateway) = start_with(|c| c.upstream.max_concurrency = 2).await;
    let gate = upstream.hold();
    let gateway = Arc::new(gateway);
    let callers: Vec<_> = (1..=5)
        .map(|i| {
            let gateway = gateway.clone();
            tokio::spawn(async move { get(&gateway, &format!("/usage?limit={i}")).await })
        })
        .collect();
    upstream.wait_for_calls(2).await;
    let third = tokio::time::timeout(Duration::from_millis(200), upstream.wait_for_calls(3)).await;
    assert!(
        third.is_err(),
        "a third call went out while two were in flight"
    );
    gate.add_permits(5);
    for caller in callers {
        assert_eq!(caller.await.expect("task").status, 200);
    }
    assert_eq!(upstream.calls(), 5);
}

// === stale beats errors ===

async fn cached_then_expired(
    tune: impl FnOnce(&mut Config),
) -> (FakeUpstream, Gateway, support::Answer) {
    let (upstream, gateway) = start_with(|c| {
        short_lived(c);
        tune(c);
    })
    .await;
    let original = get(&gateway, "/usage").await;
    assert_eq!(original.status, 200);
    let_expire().await;
    (upstream, gateway, original)
}

fn assert_stale_if_error(answer: &support::Answer, original: &support::Answer) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, original.body);
    let status = answer.cache_status();
    assert!(
        status.starts_with("usage-gateway; hit; ttl=-")
            && status.ends_with("; detail=stale-if-error"),
        "{status}"
    );
    assert!(answer.header("age").is_some());
}

#[tokio::test]
async fn stale_is_served_when_the_upstream_answers_5xx() {
    let (upstream, gateway, original) = cached_then_expired(|_| {}).await;
    upstream.script(|_, _| Reply::json(500, "{}"));
    assert_stale_if_error(&get(&gateway, "/usage").await, &original);
}

#[tokio::test]
async fn stale_is_served_when_the_upstream_times_out() {
    let (upstream, gateway, original) =
        cached_then_expired(|c| c.upstream.timeout = Duration::from_millis(200)).await;
    let _never = upstream.hold();
    assert_stale_if_error(&get(&gateway, "/usage").await, &original);
}

#[tokio::test]
async fn stale_is_served_when_the_upstream_answers_429() {
    let (upstream, gateway, original) = cached_then_expired(|_| {}).await;
    upstream.script(|_, _| Reply::json(429, "{}").header("retry-after", "30"));
    assert_stale_if_error(&get(&gateway, "/usage").await, &original);
}

#[tokio::test]
async fn stale_is_served_when_the_upstream_is_unreachable() {
    let (upstream, gateway, original) = cached_then_expired(|_| {}).await;
    upstream.refuse_connections();
    assert_stale_if_error(&get(&gateway, "/usage").await, &original);
}

#[tokio::test]
async fn stale_is_served_when_the_breaker_is_open_without_touching_the_upstream() {
    let (upstream, gateway, original) = cached_then_expired(|c| {
        c.upstream.breaker_failures = 1;
        c.upstream.retries = 0;
    })
    .await;
    upstream.script(|_, _| Reply::json(500, "{}"));
    // Another question fails and opens the breaker.
    assert_eq!(get(&gateway, "/usage?limit=9").await.status, 502);
    let calls = upstream.calls();
    assert_stale_if_error(&get(&gateway, "/usage").await, &original);
    assert_eq!(
        upstream.calls(),
        calls,
        "the open breaker kept the call home"
    );
}

#[tokio::test]
async fn stale_is_served_when_there_is_no_budget() {
    let (upstream, gateway, original) = cached_then_expired(|c| {
        c.upstream.rate_limit_per_minute = 1;
        c.upstream.queue_timeout = Duration::from_millis(50);
    })
    .await;
    assert_stale_if_error(&get(&gateway, "/usage").await, &original);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_good_stale_entry() {
    let (upstream, gateway, original) = cached_then_expired(|_| {}).await;
    upstream.script(|_, _| Reply::json(500, "{}"));
    assert_stale_if_error(&get(&gateway, "/usage").await, &original);
    upstream.script(support::echo);
    let recovered = get(&gateway, "/usage").await;
    assert_eq!(recovered.cache_status(), "usage-gateway; fwd=miss; stored");
    assert_ne!(
        recovered.body, original.body,
        "a fresh answer replaced the stale one"
    );
}

#[tokio::test]
async fn without_a_stale_copy_the_error_stands() {
    let (upstream, gateway) = start_with(|c| c.upstream.retries = 0).await;
    upstream.script(|_, _| Reply::json(500, "{}"));
    assert_eq!(get(&gateway, "/usage").await.status, 502);
}

#[tokio::test]
async fn errors_older_than_stale_if_error_are_not_covered() {
    let (upstream, gateway) = start_with(|c| {
        short_lived(c);
        c.cache.stale_if_error = Duration::from_millis(20);
        c.upstream.retries = 0;
    })
    .await;
    assert_eq!(get(&gateway, "/usage").await.status, 200);
    let_expire().await;
    upstream.script(|_, _| Reply::json(500, "{}"));
    assert_eq!(get(&gateway, "/usage").await.status, 502);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_with_exactly_one_refresh() {
    let (upstream, gateway) = start_with(|c| {
        c.cache.ttl = Duration::from_millis(100);
        c.cache.stale_while_revalidate = Duration::from_secs(30);
    })
    .await;
    let original = get(&gateway, "/usage").await;
    let_expire().await;
    // The upstream now hangs: stale answers must not wait for it.
    let gate = upstream.hold();
    let gateway = Arc::new(gateway);
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let gateway = gateway.clone();
            tokio::spawn(async move { get(&gateway, "/usage").await })
        })
        .collect();
    for caller in callers {
        let answer = caller.await.expect("task");
        assert_eq!(answer.body, original.body);
        assert!(
            answer
                .cache_status()
                .ends_with("; detail=stale-while-revalidate"),
            "{}",
            answer.cache_status()
        );
    }
    upstream.wait_for_calls(2).await;
    gate.add_permits(10);
    // The one refresh lands; then the fresh answer is a hit.
    let refreshed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let answer = get(&gateway, "/usage").await;
            if answer.json()["call"] == 2 {
                break answer;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the refresh landed");
    assert!(
        refreshed.cache_status().contains("hit"),
        "{}",
        refreshed.cache_status()
    );
    assert_eq!(upstream.calls(), 2, "exactly one background refresh");
}

// === finality-aware TTL ===

#[tokio::test]
async fn closed_periods_keep_their_long_ttl_while_open_ones_expire() {
    let (upstream, gateway) = start_with(|c| {
        short_lived(c);
        c.cache.closed_period_ttl = Duration::from_secs(3600);
    })
    .await;
    let closed = "/usage?filter=time:2023-06";
    let open = "/usage?filter=time:2999";
    get(&gateway, closed).await;
    get(&gateway, open).await;
    let_expire().await;
    let closed_again = get(&gateway, closed).await;
    assert!(
        closed_again
            .cache_status()
            .starts_with("usage-gateway; hit; ttl=3"),
        "{}",
        closed_again.cache_status()
    );
    let open_again = get(&gateway, open).await;
    assert_eq!(open_again.cache_status(), "usage-gateway; fwd=miss; stored");
    assert_eq!(upstream.calls(), 3);
}

// === fair shares ===

#[tokio::test]
async fn a_spent_quota_refuses_only_that_callers_misses() {
    let (upstream, gateway) = start_with(|_| {}).await;
    assert_eq!(
        get_as(&gateway, METERED_KEY, "/usage?limit=1").await.status,
        200
    );
    assert_eq!(
        get_as(&gateway, METERED_KEY, "/usage?limit=2").await.status,
        200
    );
    let refused = get_as(&gateway, METERED_KEY, "/usage?limit=3").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate_limit_exceeded");
    assert_eq!(refused.json()["limit"], "caller_quota");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert!((55..=60).contains(&retry_after_secs(&refused)));
    // Its hits carry on, and so does everyone else.
    assert!(get_as(&gateway, METERED_KEY, "/usage?limit=1")
        .await
        .cache_status()
        .contains("hit"));
    assert_eq!(get(&gateway, "/usage?limit=3").await.status, 200);
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn a_spent_quota_is_answered_stale_where_possible() {
    let (upstream, gateway) = start_with(short_lived).await;
    get_as(&gateway, METERED_KEY, "/usage?limit=1").await;
    get_as(&gateway, METERED_KEY, "/usage?limit=2").await;
    let_expire().await;
    let answer = get_as(&gateway, METERED_KEY, "/usage?limit=1").await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.cache_status().ends_with("detail=stale-if-error"),
        "{}",
        answer.cache_status()
    );
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn background_refreshes_are_charged_to_the_quota_of_the_caller_that_starts_them() {
    let (upstream, gateway) = start_with(|c| {
        c.cache.ttl = Duration::from_millis(100);
        c.cache.stale_while_revalidate = Duration::from_secs(30);
    })
    .await;
    let targets: Vec<String> = (1..=10).map(|n| format!("/usage?limit={n}")).collect();
    for target in &targets {
        assert_eq!(get(&gateway, target).await.status, 200);
    }
    let_expire().await;
    // The metered caller (2 upstream calls a minute) reads ten expired entries: each is served
    // stale at once, its first two start refreshes, and the rest start none.
    for target in &targets {
        let answer = get_as(&gateway, METERED_KEY, target).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer
                .cache_status()
                .ends_with("; detail=stale-while-revalidate"),
            "{target}: {}",
            answer.cache_status()
        );
    }
    let refused = get_as(&gateway, METERED_KEY, "/usage?limit=11").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"], "rate_limit_exceeded");
    assert_eq!(refused.json()["limit"], "caller_quota");
    upstream.wait_for_calls(12).await;
    assert_eq!(
        upstream.calls(),
        12,
        "10 fills and the 2 refreshes the quota paid for"
    );
}

// === caller directives ===

#[tokio::test]
async fn only_if_cached_never_goes_upstream() {
    let (upstream, gateway) = start_with(|_| {}).await;
    let auth = format!("Bearer {BILLING_KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("cache-control", "only-if-cached"),
    ];
    let miss = send(&gateway, "GET", "/usage", &headers).await;
    assert_eq!(miss.status, 504);
    assert_eq!(miss.json()["error"], "not_cached");
    assert_eq!(upstream.calls(), 0);
    get(&gateway, "/usage").await;
    let hit = send(&gateway, "GET", "/usage", &headers).await;
    assert_eq!(hit.status, 200);
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn no_cache_refetches_only_for_callers_allowed_to_refresh() {
    let (upstream, gateway) = start_with(|_| {}).await;
    assert_eq!(get(&gateway, "/usage").await.json()["call"], 1);
    let no_cache = |key: &str| format!("Bearer {key}");
    let ignored = send(
        &gateway,
        "GET",
        "/usage",
        &[
            ("authorization", &no_cache(BILLING_KEY)),
            ("cache-control", "no-cache"),
        ],
    )
    .await;
    assert!(
        ignored.cache_status().contains("hit"),
        "no-cache is ignored for billing"
    );
    let forced = send(
        &gateway,
        "GET",
        "/usage",
        &[
            ("authorization", &no_cache(REFRESHER_KEY)),
            ("cache-control", "no-cache"),
        ],
    )
    .await;
    assert_eq!(forced.json()["call"], 2);
    assert_eq!(forced.cache_status(), "usage-gateway; fwd=miss; stored");
    // The refetched answer replaced the cached one for everybody.
    assert_eq!(get(&gateway, "/usage").await.json()["call"], 2);
    assert_eq!(upstream.calls(), 2);
}

// === failing upstream ===

#[tokio::test]
async fn a_502_503_or_504_is_retried_once() {
    let (upstream, gateway) = start_with(|_| {}).await;
    upstream.script(|request, n| {
        if n == 1 {
            Reply::json(503, "{}")
        } else {
            support::echo(request, n)
        }
    });
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn a_500_a_timeout_a_4xx_and_a_429_are_never_retried() {
    let (upstream, gateway) = start_with(|c| {
        c.upstream.timeout = Duration::from_millis(200);
        c.upstream.breaker_failures = 1000;
    })
    .await;
    for (limit, status) in [(1, 500), (2, 404), (3, 400), (4, 429)] {
        upstream.script(move |_, _| Reply::json(status, "{}").header("retry-after", "1"));
        let before = upstream.calls();
        get(&gateway, &format!("/usage?limit={limit}")).await;
        assert_eq!(
            upstream.calls(),
            before + 1,
            "upstream {status} was retried"
        );
    }
    let (upstream, gateway) = start_with(|c| c.upstream.timeout = Duration::from_millis(200)).await;
    let _never = upstream.hold();
    assert_eq!(get(&gateway, "/usage").await.status, 504);
    assert_eq!(upstream.calls(), 1, "a timeout was retried");
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_a_probe_closes_it() {
    let (upstream, gateway) = start_with(|c| {
        c.upstream.retries = 0;
        c.upstream.breaker_failures = 2;
        c.upstream.breaker_cooldown = Duration::from_secs(1);
    })
    .await;
    upstream.script(|_, _| Reply::json(500, "{}"));
    assert_eq!(get(&gateway, "/usage?limit=1").await.status, 502);
    assert_eq!(get(&gateway, "/usage?limit=2").await.status, 502);
    let open = get(&gateway, "/usage?limit=3").await;
    assert_eq!(open.status, 503);
    assert_eq!(open.json()["error"], "upstream_circuit_open");
    assert_eq!(retry_after_secs(&open), 1);
    assert_eq!(upstream.calls(), 2, "the open breaker kept the call home");
    // After the cooldown (the behaviour under test), one probe goes out and closes it.
    upstream.script(support::echo);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gateway, "/usage?limit=3").await.status, 200);
    assert_eq!(get(&gateway, "/usage?limit=4").await.status, 200);
    assert_eq!(upstream.calls(), 4);
}
