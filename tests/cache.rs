//! Repeats come from memory; concurrent identical misses make one upstream call; errors are
//! never cached; entries expire.

mod support;

use std::time::Duration;

use support::{get, start, Reply};

#[tokio::test]
async fn a_repeat_is_a_hit_with_age_and_cache_status() {
    let (upstream, gateway) = start().await;
    let first = get(&gateway, "/usage?limit=5").await;
    assert_eq!(first.cache_status(), "usage-gateway; fwd=miss; stored");
    assert!(first.header("age").is_none());
    let second = get(&gateway, "/usage?limit=5").await;
    assert!(
        second
            .cache_status()
            .starts_with("usage-gateway; hit; ttl="),
        "{}",
        second.cache_status()
    );
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), first.header("content-type"));
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn fifty_concurrent_identical_misses_make_one_upstream_call() {
    let (upstream, gateway) = start().await;
    let gate = upstream.hold();
    let gateway = std::sync::Arc::new(gateway);
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let gateway = gateway.clone();
            tokio::spawn(async move { get(&gateway, "/usage?filter=time:2024").await })
        })
        .collect();
    // The one fill is under way; let it answer.
    upstream.wait_for_calls(1).await;
    gate.add_permits(1);
    let mut stored = 0;
    for caller in callers {
        let answer = caller.await.expect("task");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["call"], 1);
        let status = answer.cache_status();
        assert!(
            status.ends_with("stored") || status.ends_with("collapsed") || status.contains("hit"),
            "{status}"
        );
        stored += usize::from(status.ends_with("stored"));
    }
    assert_eq!(stored, 1);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn waiters_share_a_failed_fetch_and_it_is_not_cached() {
    let (upstream, gateway) = start().await;
    upstream.script(|_, _| Reply::json(503, r#"{"error":"service_unavailable"}"#));
    let gate = upstream.hold();
    let gateway = std::sync::Arc::new(gateway);
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let gateway = gateway.clone();
            tokio::spawn(async move { get(&gateway, "/usage").await })
        })
        .collect();
    upstream.wait_for_calls(1).await;
    gate.add_permits(100);
    for caller in callers {
        let answer = caller.await.expect("task");
        assert_eq!(answer.status, 502);
        assert_eq!(answer.json()["error"], "upstream_error");
    }
    let during_failure = upstream.calls();
    upstream.script(support::echo);
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.status, 200, "the failure was not cached");
    assert_eq!(upstream.calls(), during_failure + 1);
}

#[tokio::test]
async fn an_expired_entry_is_fetched_again() {
    let upstream = support::FakeUpstream::start().await;
    let mut config = support::config(&upstream.base_url());
    config.cache.ttl = Duration::from_millis(150);
    config.cache.stale_while_revalidate = Duration::ZERO;
    let gateway = support::Gateway::start(config).await;
    assert_eq!(get(&gateway, "/usage").await.json()["call"], 1);
    assert_eq!(get(&gateway, "/usage").await.json()["call"], 1);
    // Waiting out the TTL is the behaviour under test, not a race.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.json()["call"], 2);
    assert_eq!(answer.cache_status(), "usage-gateway; fwd=miss; stored");
}

#[tokio::test]
async fn no_store_answers_are_served_but_not_stored() {
    let (upstream, gateway) = start().await;
    upstream.script(|request, n| support::echo(request, n).header("cache-control", "no-store"));
    for expected in [1, 2] {
        let answer = get(&gateway, "/usage").await;
        assert_eq!(answer.json()["call"], expected);
        assert_eq!(
            answer.cache_status(),
            "usage-gateway; fwd=miss; detail=no-store"
        );
    }
}

#[tokio::test]
async fn callers_share_cached_answers() {
    let (upstream, gateway) = start().await;
    get(&gateway, "/usage?limit=7").await;
    let ops = support::send(
        &gateway,
        "GET",
        "/usage?limit=7",
        &[("x-api-key", support::OPS_KEY)],
    )
    .await;
    assert!(ops.cache_status().contains("hit"));
    assert_eq!(upstream.calls(), 1);
}
