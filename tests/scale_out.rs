//! Several gateways (replicas, in-process on loopback) sharing one `redis-server`, in front of
//! one upstream: the budget and callers' quotas hold across them, an upstream 429 seen by one
//! stops all, and without Redis no upstream call goes out while memory goes on answering.

mod support;

use std::time::{Duration, Instant};

use support::redis_server::RedisServer;
use support::sim::{sim_json, small, start_sim};
use support::{
    admin, counted, epoch_secs, eventually, get, get_as, metric, FakeUpstream, Gateway, Reply,
    BILLING_KEY, METERED_KEY, ORG_TOKEN,
};
use usage_gateway::config::{hash_key, Config};

const ADMIN_TOKEN: &str = "admin-token-5e1d";
const COMMAND_TIMEOUT_MS: u64 = 200;
const QUEUE_TIMEOUT_MS: u64 = 300;

/// A replica's configuration: `billing` and `metered` (2 upstream calls a minute), the admin
/// token, short Redis and queue timeouts, and the shared Redis.
fn replica(base_url: &str, redis: &RedisServer) -> Config {
    Config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [admin]
        token_sha256 = "{admin}"
        [upstream]
        base_url = "{base_url}"
        token = "{ORG_TOKEN}"
        timeout_ms = 2000
        queue_timeout_ms = {QUEUE_TIMEOUT_MS}
        retries = 0
        [[callers]]
        name = "billing"
        key = "{BILLING_KEY}"
        [[callers]]
        name = "metered"
        key = "{METERED_KEY}"
        upstream_per_minute = 2
        [shared]
        redis_url = "{url}"
        command_timeout_ms = {COMMAND_TIMEOUT_MS}
        breaker_failures = 2
        breaker_cooldown_ms = 300
        "#,
        admin = hash_key(ADMIN_TOKEN),
        url = redis.url(),
    ))
    .expect("valid replica config")
}

/// Whether the gateway's Redis connection failed at least once and answers again since.
async fn reconnected(gateway: &Gateway) -> bool {
    metric(gateway, "usage_gateway_redis_failures_total").await > 0.0
        && metric(gateway, "usage_gateway_redis_up").await == 1.0
}

#[tokio::test]
async fn an_upstream_429_seen_by_one_replica_stops_the_others() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(|request, n| {
        if request.target.contains("2024-02") {
            Reply::json(429, r#"{"error":"rate_limit_exceeded"}"#).header("retry-after", "30")
        } else {
            counted(request, n)
        }
    });
    let a = Gateway::start(replica(&upstream.base_url(), &redis)).await;
    let b = Gateway::start(replica(&upstream.base_url(), &redis)).await;

    assert_eq!(get(&a, "/usage?filter=time:2024-01").await.status, 200);
    let throttled = get(&a, "/usage?filter=time:2024-02").await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.json()["limit"], "upstream");
    assert_eq!(upstream.calls(), 2);

    // The correction travels on its own task: wait until Redis holds it.
    let mut connection = redis.connection();
    eventually(Duration::from_secs(2), "the 429 is in Redis", || {
        let closed: Option<u64> = redis::cmd("HGET")
            .arg("usage-gateway:budget:{default}:gate")
            .arg("closed_until")
            .query(&mut connection)
            .ok()
            .flatten();
        std::future::ready(closed.is_some_and(|until| until > epoch_secs() * 1000))
    })
    .await;

    let refused = get(&b, "/usage?filter=time:2024-03").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["limit"], "upstream_budget");
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .expect("Retry-After");
    assert!(
        retry_after >= 25,
        "the upstream's 30 s, not a guess: {retry_after}"
    );
    assert_eq!(upstream.calls(), 2, "the other replica made no call");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_callers_quota_holds_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(usage_sim::SimOptions {
        live_clock: true,
        ..small()
    })
    .await;
    let a = Gateway::start(replica(&sim.base_url(), &redis)).await;
    let b = Gateway::start(replica(&sim.base_url(), &redis)).await;

    // Two calls a minute for `metered`, wherever it asks.
    let first = get_as(&a, METERED_KEY, "/usage?filter=time:2024-01-01").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = get_as(&b, METERED_KEY, "/usage?filter=time:2024-01-02").await;
    assert_eq!(second.status, 200, "{}", second.body);
    for (gateway, day) in [(&a, "03"), (&b, "04")] {
        let refused = get_as(
            gateway,
            METERED_KEY,
            &format!("/usage?filter=time:2024-01-{day}"),
        )
        .await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.json()["limit"], "caller_quota");
        assert!(refused.header("retry-after").is_some());
        // Each replica reports the shared quota: nothing left.
        assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    }
    let stats = sim_json(&sim, "/__sim/stats").await;
    assert_eq!(stats["requests_total"], 2, "{stats}");
    assert_eq!(stats["peak_60s"], 2, "{stats}");
    // Another caller is not held by metered's quota.
    assert_eq!(get(&b, "/usage?filter=time:2024-01-05").await.status, 200);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn redis_killed_no_upstream_call_memory_goes_on_and_fills_resume_on_its_return() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let mut config = replica(&upstream.base_url(), &redis);
    // A stale answer then asks for a fill (and is served when the fill is refused).
    config.cache.stale_while_revalidate = Duration::ZERO;
    let gateway = Gateway::start(config).await;
    assert_eq!(get(&gateway, "/usage/000000001").await.status, 200);
    assert_eq!(get(&gateway, "/usage/000000002").await.status, 200);
    assert_eq!(upstream.calls(), 2);

    redis.kill();
    // A fresh answer is a hit, as ever.
    let hit = get(&gateway, "/usage/000000001").await;
    assert_eq!(hit.status, 200);
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    // A stale one is served instead of the refused call (a soft purge makes it stale).
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let purged = admin(
        &gateway,
        "POST",
        "/cache/purge?sim_id=000000002",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.body);
    let stale = get(&gateway, "/usage/000000002").await;
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert!(
        stale.cache_status().contains("stale-if-error"),
        "{}",
        stale.cache_status()
    );
    // A miss makes no call: refused like a spent budget, with Retry-After.
    let refused = get(&gateway, "/usage/000000003").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["limit"], "upstream_budget");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        upstream.calls(),
        2,
        "no upstream call without the shared budget"
    );

    // Readiness stays; the metrics and the status page say Redis is down.
    assert_eq!(admin(&gateway, "GET", "/readyz", &[]).await.status, 200);
    assert_eq!(metric(&gateway, "usage_gateway_redis_up").await, 0.0);
    let page = admin(&gateway, "GET", "/", &[]).await.body;
    assert!(page.contains(r#"<span class="bad">down</span>"#), "{page}");

    redis.restart();
    let back = Instant::now();
    eventually(
        Duration::from_secs(2),
        "a fill within 2 s of Redis's return",
        || {
            let gateway = &gateway;
            async move { get(gateway, "/usage/000000003").await.status == 200 }
        },
    )
    .await;
    assert!(back.elapsed() < Duration::from_secs(2));
    assert_eq!(upstream.calls(), 3);
    assert_eq!(metric(&gateway, "usage_gateway_redis_up").await, 1.0);
    gateway.stop().await;
}

#[tokio::test]
async fn redis_paused_no_request_waits_longer_than_the_command_and_queue_timeouts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateway = Gateway::start(replica(&upstream.base_url(), &redis)).await;
    assert_eq!(get(&gateway, "/usage/000000001").await.status, 200);

    redis.pause();
    let bound = Duration::from_millis(COMMAND_TIMEOUT_MS + QUEUE_TIMEOUT_MS);
    let asks = (2..8).map(|sim| {
        let url = gateway.url(&format!("/usage/{sim:09}"));
        async move {
            let started = Instant::now();
            let auth = format!("Bearer {BILLING_KEY}");
            let answer = support::request("GET", &url, &[("authorization", &auth)]).await;
            (answer.status, started.elapsed())
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    redis.resume();
    for (status, waited) in answers {
        assert_eq!(status, 429);
        // A little slack for the loopback round trip and scheduling on a busy machine.
        assert!(
            waited < bound + Duration::from_millis(250),
            "waited {waited:?}"
        );
    }
    assert_eq!(upstream.calls(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn redis_restarted_empty_lets_one_probe_call_at_a_time_until_the_upstream_says() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let a = Gateway::start(replica(&upstream.base_url(), &redis)).await;
    let b = Gateway::start(replica(&upstream.base_url(), &redis)).await;
    assert_eq!(get(&a, "/usage/000000001").await.status, 200);
    assert_eq!(get(&b, "/usage/000000002").await.status, 200);

    redis.restart();
    for gateway in [&a, &b] {
        eventually(
            Duration::from_secs(5),
            "reconnected to the new Redis",
            || reconnected(gateway),
        )
        .await;
    }
    // The upstream holds its answers: the probe stays out.
    let gate = upstream.hold();
    let first = tokio::spawn({
        let url = a.url("/usage/000000003");
        async move {
            support::request(
                "GET",
                &url,
                &[("authorization", &format!("Bearer {BILLING_KEY}"))],
            )
            .await
        }
    });
    upstream.wait_for_calls(3).await;
    let second = get(&b, "/usage/000000004").await;
    assert_eq!(second.status, 429, "one probe at a time: {}", second.body);
    assert_eq!(second.json()["limit"], "upstream_budget");
    assert_eq!(upstream.calls(), 3);

    // The probe's answer says where the budget stands: calls flow again, several at once.
    gate.add_permits(1);
    assert_eq!(first.await.expect("the probe's request").status, 200);
    gate.add_permits(2);
    let (x, y) = tokio::join!(get(&a, "/usage/000000005"), get(&b, "/usage/000000006"));
    assert_eq!(
        (x.status.as_u16(), y.status.as_u16()),
        (200, 200),
        "{} {}",
        x.body,
        y.body
    );
    assert_eq!(upstream.calls(), 5);
    a.stop().await;
    b.stop().await;
}
