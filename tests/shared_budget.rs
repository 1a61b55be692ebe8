//! The shared budget's script against a real `redis-server`: several replicas (connections)
//! taking at random moments never get more than the limit in any window, callers' quotas hold
//! across them, the upstream's word reaches them all, state lost means one probe at a time, and
//! a Redis that is gone refuses every call.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use support::redis_server::RedisServer;
use usage_gateway::config::Config;
use usage_gateway::metrics::Metrics;
use usage_gateway::shared::budget::{Correction, Denied, Grant, Limits, Quota, SharedBudget};
use usage_gateway::shared::Shared;

/// One replica's handle on `redis`: its own connection and instance id.
fn replica(redis: &RedisServer, instance: usize) -> Shared {
    let config = Config::from_toml(&format!(
        r#"
        [upstream]
        base_url = "http://127.0.0.1:9"
        token = "t"
        [[callers]]
        name = "c"
        key = "k"
        [shared]
        redis_url = "{}"
        instance_id = "replica-{instance}"
        command_timeout_ms = 300
        breaker_failures = 2
        breaker_cooldown_ms = 200
        "#,
        redis.url()
    ))
    .expect("valid config");
    let shared = config.shared.expect("[shared]");
    Shared::new(&shared, Metrics::new().redis.clone()).expect("a lazy connection")
}

fn limits(per_window: u32, window_ms: u64) -> Limits {
    Limits {
        per_window,
        window: Duration::from_millis(window_ms),
        hop_margin: Duration::ZERO,
        probe_lease: Duration::from_secs(5),
    }
}

/// Ends probe mode the way an upstream answer does: a report that says where the budget
/// stands (here: a 429 whose wait is already over, which sets no cap).
async fn known(budget: &SharedBudget) -> Grant {
    let grant = budget.take(None).await.expect("the first take probes");
    assert!(
        grant.probe,
        "a fresh Redis knows nothing: the first call is a probe"
    );
    budget
        .correct(
            &grant,
            Correction {
                throttled_for: Some(Duration::ZERO),
                ..Correction::default()
            },
        )
        .await;
    grant
}

/// Takes by several replicas, each after its own random gaps, on one runtime.
async fn run_arrivals(
    redis: &RedisServer,
    limit: u32,
    window_ms: u64,
    quota: u32,
    gaps: Vec<Vec<u64>>,
) -> (Vec<u64>, Vec<Vec<u64>>) {
    let budgets: Vec<Arc<SharedBudget>> = (0..gaps.len())
        .map(|i| Arc::new(replica(redis, i).budget("default", limits(limit, window_ms))))
        .collect();
    let first = known(&budgets[0]).await;
    let mut tasks = Vec::new();
    for (i, (budget, gaps)) in budgets.iter().cloned().zip(gaps).enumerate() {
        tasks.push(tokio::spawn(async move {
            // Two callers share the replicas: even replicas ask for caller-0, odd for caller-1.
            let caller = format!("caller-{}", i % 2);
            let mut granted = Vec::new();
            for gap in gaps {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                let quota = Quota {
                    caller: &caller,
                    per_minute: quota,
                };
                match budget.take(Some(quota)).await {
                    Ok(grant) => granted.push(grant.at_ms),
                    Err(Denied::Budget { .. } | Denied::Quota { .. }) => {}
                    Err(Denied::Unavailable { .. }) => panic!("Redis is up"),
                }
            }
            (i % 2, granted)
        }));
    }
    let mut all = vec![first.at_ms];
    let mut by_caller = vec![Vec::new(), Vec::new()];
    for task in tasks {
        let (caller, granted) = task.await.expect("the replica's task");
        all.extend(&granted);
        by_caller[caller].extend(granted);
    }
    all.sort_unstable();
    (all, by_caller)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Whatever the arrivals, the accepted times (Redis's clock) never hold more than the limit
    /// in any window, and no caller gets more than its quota (the quota's window, a minute,
    /// outlasts the test).
    #[test]
    fn no_window_ever_holds_more_than_the_limit_across_replicas(
        limit in 1u32..5,
        quota in 1u32..6,
        gaps in prop::collection::vec(prop::collection::vec(0u64..40, 4..14), 2..5),
    ) {
        let Some(redis) = RedisServer::start() else { return Ok(()) };
        let window_ms = 250;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (accepted, by_caller) =
            runtime.block_on(run_arrivals(&redis, limit, window_ms, quota, gaps));
        for (i, first) in accepted.iter().enumerate() {
            let inside = accepted[i..].iter().take_while(|t| **t - first < window_ms).count();
            prop_assert!(inside as u32 <= limit, "{inside} calls within {window_ms} ms: {accepted:?}");
        }
        for granted in by_caller {
            prop_assert!(granted.len() as u32 <= quota, "{} calls for a quota of {quota}", granted.len());
        }
    }
}

#[tokio::test]
async fn an_upstream_429_seen_by_one_replica_closes_the_gate_for_all() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = replica(&redis, 0).budget("default", limits(100, 60_000));
    let b = replica(&redis, 1).budget("default", limits(100, 60_000));
    known(&a).await;
    let grant = a.take(None).await.expect("budget");
    a.correct(
        &grant,
        Correction {
            throttled_for: Some(Duration::from_secs(30)),
            ..Correction::default()
        },
    )
    .await;
    match b.take(None).await {
        Err(Denied::Budget { retry_after }) => {
            assert!(retry_after > Duration::from_secs(25), "{retry_after:?}")
        }
        other => panic!("the other replica may not call: {other:?}"),
    }
}

#[tokio::test]
async fn remaining_from_the_upstream_caps_every_replica_counting_calls_in_flight() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = replica(&redis, 0).budget("default", limits(100, 60_000));
    let b = replica(&redis, 1).budget("default", limits(100, 60_000));
    known(&a).await;
    let first = a.take(None).await.expect("budget");
    // Two calls leave (from the other replica) before the first one's answer arrives.
    b.take(None).await.expect("budget");
    b.take(None).await.expect("budget");
    a.correct(
        &first,
        Correction {
            remaining: Some(5),
            reset_in: Some(Duration::from_secs(30)),
            throttled_for: None,
        },
    )
    .await;
    // 5 left after the first call, 2 of them spent already: 3 more, from anyone.
    for budget in [&a, &b, &a] {
        budget
            .take(None)
            .await
            .expect("within the upstream's count");
    }
    assert!(matches!(b.take(None).await, Err(Denied::Budget { .. })));
}

#[tokio::test]
async fn a_denial_is_not_logged() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let budget = replica(&redis, 0).budget("default", limits(2, 60_000));
    known(&budget).await;
    budget.take(None).await.expect("the second of two");
    for _ in 0..5 {
        assert!(matches!(
            budget.take(None).await,
            Err(Denied::Budget { .. })
        ));
    }
    let mut connection = redis.connection();
    let logged: u64 = redis::cmd("ZCARD")
        .arg("usage-gateway:budget:{default}:log")
        .query(&mut connection)
        .expect("ZCARD");
    assert_eq!(logged, 2, "only granted calls are in the log");
}

#[tokio::test]
async fn state_lost_means_one_probe_at_a_time_until_the_upstream_says() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = replica(&redis, 0).budget("default", limits(100, 60_000));
    let b = replica(&redis, 1).budget("default", limits(100, 60_000));
    known(&a).await;
    a.take(None).await.expect("known state: no probing");
    b.take(None).await.expect("known state: no probing");

    redis.restart(); // empty: the last window's calls are unknown
    let probe = poll_grant(&a).await;
    assert!(probe.probe, "the first call after the loss is a probe");
    let second = answered(&b).await;
    assert!(
        matches!(second, Err(Denied::Budget { retry_after }) if retry_after <= Duration::from_millis(100)),
        "a second call waits for the probe's answer: {second:?}"
    );
    a.correct(
        &probe,
        Correction {
            remaining: Some(50),
            reset_in: Some(Duration::from_secs(20)),
            throttled_for: None,
        },
    )
    .await;
    let after = b.take(None).await.expect("the upstream said: calls may go");
    assert!(!after.probe);
    a.take(None).await.expect("and more than one at a time");
}

#[tokio::test]
async fn calls_made_before_redis_lost_its_log_still_count_after_it() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = replica(&redis, 0).budget("default", limits(5, 60_000));
    let b = replica(&redis, 1).budget("default", limits(5, 60_000));
    known(&a).await;
    a.take(None).await.expect("budget");
    a.take(None).await.expect("budget");

    redis.restart(); // empty: the log of a's 3 calls is gone
    let probe = poll_grant(&b).await;
    assert!(probe.probe);
    b.correct(
        &probe,
        Correction {
            throttled_for: Some(Duration::ZERO),
            ..Correction::default()
        },
    )
    .await;
    // a takes nothing, yet puts its calls back within a heartbeat or so.
    let mut connection = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logged: u64 = redis::cmd("ZCARD")
            .arg("usage-gateway:budget:{default}:log")
            .query(&mut connection)
            .expect("ZCARD");
        if logged == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "a's calls are back: {logged}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 5 a minute: a's 3 before the loss, b's probe, and one more.
    b.take(None).await.expect("the fifth call");
    assert!(
        matches!(b.take(None).await, Err(Denied::Budget { .. })),
        "a sixth call in the same minute"
    );
}

#[tokio::test]
async fn a_probe_that_says_nothing_lets_the_next_probe_go() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = replica(&redis, 0).budget("default", limits(100, 60_000));
    let probe = a.take(None).await.expect("probe");
    assert!(probe.probe);
    assert!(a.take(None).await.is_err(), "one probe at a time");
    // An answer without rate-limit headers (a 5xx, a dropped connection) ends the lease.
    a.correct(&probe, Correction::default()).await;
    assert!(a.take(None).await.expect("the next probe").probe);
}

/// The first take that Redis answers after a restart (each replica's connection has to come
/// back first, and its breaker to close).
async fn answered(budget: &SharedBudget) -> Result<Grant, Denied> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match budget.take(None).await {
            Err(Denied::Unavailable { .. }) => assert!(
                Instant::now() < deadline,
                "Redis did not answer within 5 s of its return"
            ),
            answer => return answer,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn poll_grant(budget: &SharedBudget) -> Grant {
    answered(budget).await.expect("a grant once Redis answers")
}

#[tokio::test]
async fn without_redis_no_call_goes_out_and_the_breaker_answers_at_once() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let budget = replica(&redis, 0).budget("default", limits(100, 60_000));
    known(&budget).await;
    redis.kill();
    for _ in 0..2 {
        assert!(matches!(
            budget.take(None).await,
            Err(Denied::Unavailable { .. })
        ));
    }
    // The breaker is open now: refused without waiting for Redis.
    let started = Instant::now();
    assert!(matches!(
        budget.take(None).await,
        Err(Denied::Unavailable { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_paused_redis_costs_a_take_no_more_than_the_command_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let budget = replica(&redis, 0).budget("default", limits(100, 60_000));
    known(&budget).await;
    redis.pause();
    let started = Instant::now();
    let denied = budget.take(None).await;
    let waited = started.elapsed();
    redis.resume();
    assert!(
        matches!(denied, Err(Denied::Unavailable { .. })),
        "{denied:?}"
    );
    assert!(
        waited < Duration::from_millis(300 + 150),
        "waited {waited:?} for a 300 ms command timeout"
    );
}
