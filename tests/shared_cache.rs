//! Several gateways (replicas, in-process on loopback) sharing one `redis-server`: an answer
//! one replica fetched is a hit on the others, identical misses on different replicas make one
//! upstream call, a dead lock holder is taken over, purges reach every replica, and without
//! Redis nothing reaches the upstream while memory goes on answering.

mod support;

use std::time::{Duration, Instant};

use support::redis_server::RedisServer;
use support::{
    admin, counted, eventually, get, metric, send, FakeUpstream, Gateway, BILLING_KEY, ORG_TOKEN,
};
use usage_gateway::cache::{CacheKey, CredentialId};
use usage_gateway::config::{hash_key, Config, Secret};
use usage_gateway::query::UsageQuery;
use usage_gateway::shared::cache::QuestionKeys;

const ADMIN_TOKEN: &str = "admin-token-5e1d";
const FILL_LEASE_MS: u64 = 1_000;

/// A replica: `billing`, the admin token, short Redis timeouts and a 1 s fill lease.
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
        timeout_ms = 5000
        queue_timeout_ms = 300
        retries = 0
        [[callers]]
        name = "billing"
        key = "{BILLING_KEY}"
        [shared]
        redis_url = "{url}"
        command_timeout_ms = 200
        breaker_failures = 2
        breaker_cooldown_ms = 300
        fill_lease_ms = {FILL_LEASE_MS}
        fill_wait_ms = 8000
        "#,
        admin = hash_key(ADMIN_TOKEN),
        url = redis.url(),
    ))
    .expect("valid replica config")
}

async fn replicas(upstream: &FakeUpstream, redis: &RedisServer, n: usize) -> Vec<Gateway> {
    let mut started = Vec::new();
    for _ in 0..n {
        started.push(Gateway::start(replica(&upstream.base_url(), redis)).await);
    }
    started
}

async fn purge(gateway: &Gateway, query: &str) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let answer = admin(
        gateway,
        "POST",
        &format!("/cache/purge?{query}"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

/// What this replica's memory holds for `target`: only-if-cached never reaches further.
async fn in_memory(gateway: &Gateway, target: &str) -> bool {
    let auth = format!("Bearer {BILLING_KEY}");
    let answer = send(
        gateway,
        "GET",
        target,
        &[
            ("authorization", &auth),
            ("cache-control", "only-if-cached"),
        ],
    )
    .await;
    answer.status == 200
}

/// The Redis keys of the billing caller's question `target`, under the default prefix.
fn keys_of(target: &str) -> QuestionKeys {
    let query = UsageQuery::from_target(target)
        .expect("valid")
        .expect("a route");
    let key = CacheKey::new(
        CredentialId::of(&Secret::new(ORG_TOKEN)),
        query.canonical_shared(),
    );
    QuestionKeys::new("usage-gateway", &key.question())
}

async fn stop_all(gateways: Vec<Gateway>) {
    for gateway in gateways {
        gateway.stop().await;
    }
}

#[tokio::test]
async fn an_answer_one_replica_fetched_is_a_hit_on_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateways = replicas(&upstream, &redis, 2).await;
    let (a, b) = (&gateways[0], &gateways[1]);

    let fetched = get(a, "/usage/000000001").await;
    assert_eq!(fetched.status, 200, "{}", fetched.body);
    assert_eq!(fetched.cache_status(), "usage-gateway; fwd=miss; stored");

    let shared = get(b, "/usage/000000001").await;
    assert_eq!(shared.status, 200);
    assert_eq!(shared.body, fetched.body, "the same answer");
    assert_eq!(
        shared.header("content-type"),
        fetched.header("content-type")
    );
    let status = shared.cache_status();
    assert!(
        status.starts_with("usage-gateway; hit; ttl=") && status.ends_with("; detail=shared"),
        "{status}"
    );
    // The same absolute expiry: B's memory keeps it no longer than A's.
    let ttl = |status: &str| -> u64 {
        status
            .split("ttl=")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .and_then(|ttl| ttl.parse().ok())
            .expect("a ttl")
    };
    assert!(ttl(status) <= 60, "{status}");
    assert!(shared.header("age").is_some());

    // Now B's memory holds it: a plain hit, no Redis.
    let again = get(b, "/usage/000000001").await;
    assert!(
        again.cache_status().starts_with("usage-gateway; hit; ttl=")
            && !again.cache_status().contains("shared"),
        "{}",
        again.cache_status()
    );
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        metric(b, "usage_gateway_shared_cache_lookups_total").await,
        1.0
    );
    let page = admin(b, "GET", "/", &[]).await.body;
    assert!(page.contains("shared-cache hits"), "{page}");
    stop_all(gateways).await;
}

#[tokio::test]
async fn twenty_concurrent_identical_misses_over_three_replicas_make_one_upstream_call() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateways = replicas(&upstream, &redis, 3).await;
    // Warm the shared budget out of its probe mode with another question.
    assert_eq!(get(&gateways[0], "/usage/000000009").await.status, 200);
    let gate = upstream.hold();

    let asks: Vec<_> = (0..20)
        .map(|i| {
            let url = gateways[i % 3].url("/usage/000000001");
            tokio::spawn(async move {
                let auth = format!("Bearer {BILLING_KEY}");
                support::request("GET", &url, &[("authorization", &auth)]).await
            })
        })
        .collect();
    upstream.wait_for_calls(2).await;
    // The other two replicas wait on the holder's lock before its answer is let go.
    let gateways_ref = &gateways;
    eventually(
        Duration::from_secs(5),
        "two replicas wait on the lock",
        || async move {
            let mut waits = 0.0;
            for gateway in gateways_ref {
                waits += metric(gateway, "usage_gateway_shared_lock_waits_total").await;
            }
            waits == 2.0
        },
    )
    .await;
    gate.add_permits(1);
    let mut statuses = Vec::new();
    for ask in asks {
        let answer = ask.await.expect("the request task");
        assert_eq!(answer.status, 200, "{}", answer.body);
        statuses.push(answer.cache_status().to_owned());
    }
    assert_eq!(
        upstream.calls(),
        2,
        "one call for the 20 misses: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| s.ends_with("stored")).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|s| s == "usage-gateway; fwd=miss; collapsed; detail=shared"),
        "{statuses:?}"
    );
    stop_all(gateways).await;
}

#[tokio::test]
async fn a_lock_holder_that_died_is_taken_over_within_the_lease_and_a_second() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateways = replicas(&upstream, &redis, 1).await;
    let gateway = &gateways[0];

    // A holder that took the lock and died: it never renews, never stores, never releases.
    let keys = keys_of("/usage/000000001");
    let mut connection = redis.connection();
    let taken: Option<String> = redis::cmd("SET")
        .arg(&keys.lock)
        .arg("a-replica-that-died:0")
        .arg("NX")
        .arg("PX")
        .arg(FILL_LEASE_MS)
        .query(&mut connection)
        .expect("SET");
    assert_eq!(taken.as_deref(), Some("OK"));
    let started = Instant::now();
    let answer = get(gateway, "/usage/000000001").await;
    let waited = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.cache_status(), "usage-gateway; fwd=miss; stored");
    assert!(
        waited < Duration::from_millis(FILL_LEASE_MS + 1_000),
        "taken over after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(FILL_LEASE_MS / 2),
        "it waited for the lease: {waited:?}"
    );
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        metric(gateway, "usage_gateway_shared_lock_takeovers_total").await,
        1.0
    );
    // The taker released its lock when it stored.
    let lock: Option<String> = redis::cmd("GET")
        .arg(&keys.lock)
        .query(&mut connection)
        .expect("GET");
    assert_eq!(lock, None);
    stop_all(gateways).await;
}

#[tokio::test]
async fn a_holder_renews_its_lease_while_a_slow_fetch_runs_so_no_one_takes_over() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateways = replicas(&upstream, &redis, 2).await;
    assert_eq!(get(&gateways[0], "/usage/000000009").await.status, 200);
    let gate = upstream.hold();
    let slow = tokio::spawn({
        let url = gateways[0].url("/usage/000000001");
        async move {
            let auth = format!("Bearer {BILLING_KEY}");
            support::request("GET", &url, &[("authorization", &auth)]).await
        }
    });
    upstream.wait_for_calls(2).await;
    let waiting = tokio::spawn({
        let url = gateways[1].url("/usage/000000001");
        async move {
            let auth = format!("Bearer {BILLING_KEY}");
            support::request("GET", &url, &[("authorization", &auth)]).await
        }
    });
    // Three leases pass: without renewal the waiter would have taken over twice by now.
    let keys = keys_of("/usage/000000001");
    let mut connection = redis.connection();
    let until = Instant::now() + Duration::from_millis(3 * FILL_LEASE_MS);
    while Instant::now() < until {
        let holder: Option<String> = redis::cmd("GET")
            .arg(&keys.lock)
            .query(&mut connection)
            .expect("GET");
        assert!(holder.is_some(), "the lease lapsed under a live holder");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.calls(), 2, "nobody took over");
    gate.add_permits(1);
    assert_eq!(slow.await.expect("task").status, 200);
    let waited = waiting.await.expect("task");
    assert_eq!(waited.status, 200);
    assert_eq!(
        waited.cache_status(),
        "usage-gateway; fwd=miss; collapsed; detail=shared"
    );
    assert_eq!(upstream.calls(), 2);
    stop_all(gateways).await;
}

#[tokio::test]
async fn a_purge_on_one_replica_reaches_the_others_within_100_ms() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateways = replicas(&upstream, &redis, 3).await;
    for gateway in &gateways {
        assert_eq!(get(gateway, "/usage/000000001").await.status, 200);
        assert_eq!(get(gateway, "/usage/000000002").await.status, 200);
    }
    assert_eq!(upstream.calls(), 2, "one fetch each, the rest shared");
    for gateway in &gateways {
        assert!(in_memory(gateway, "/usage/000000001").await);
    }
    // Followers are at the stream's end before the purge (they start there).
    for gateway in &gateways[1..] {
        eventually(
            Duration::from_secs(5),
            "the purge feed is read",
            || async move {
                metric(
                    gateway,
                    "usage_gateway_redis_command_duration_seconds_count{command=\"purge_read\"}",
                )
                .await
                    >= 1.0
            },
        )
        .await;
    }

    let answer = purge(&gateways[0], "sim_id=000000001&hard=true").await;
    let purged_at = Instant::now();
    assert_eq!(answer["propagated"], true, "{answer}");
    assert_eq!(answer["purged"], 1, "{answer}");
    let deadline = purged_at + Duration::from_millis(100);
    loop {
        let mut held = 0;
        for gateway in &gateways[1..] {
            held += usize::from(in_memory(gateway, "/usage/000000001").await);
        }
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} replica(s) still hold the purged answer after 100 ms"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Only what was purged: the other SIM stays everywhere.
    for gateway in &gateways {
        assert!(in_memory(gateway, "/usage/000000002").await);
        assert_eq!(
            metric(gateway, "usage_gateway_shared_purge_gaps_total").await,
            0.0
        );
    }
    // The shared copy is purged too: the next ask fetches (once for all replicas).
    let refetched = get(&gateways[1], "/usage/000000001").await;
    assert_eq!(refetched.cache_status(), "usage-gateway; fwd=miss; stored");
    let shared = get(&gateways[2], "/usage/000000001").await;
    assert!(
        shared.cache_status().ends_with("detail=shared"),
        "{}",
        shared.cache_status()
    );
    assert_eq!(upstream.calls(), 3);
    assert_eq!(
        metric(&gateways[1], "usage_gateway_shared_purges_applied_total").await,
        1.0
    );
    stop_all(gateways).await;
}

#[tokio::test]
async fn a_soft_purge_makes_the_shared_copy_stale_for_every_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateways = replicas(&upstream, &redis, 2).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    assert_eq!(get(a, "/usage/000000001").await.status, 200);
    let answer = purge(a, "").await;
    assert_eq!(answer["propagated"], true, "{answer}");
    // B never held it: its read of the shared copy finds it purged (stale), and fetches.
    let fetched = get(b, "/usage/000000001").await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.cache_status(), "usage-gateway; fwd=miss; stored");
    assert_eq!(upstream.calls(), 2);
    stop_all(gateways).await;
}

#[tokio::test]
async fn redis_down_purges_apply_here_and_say_so_and_misses_make_no_call() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let gateways = replicas(&upstream, &redis, 2).await;
    let (a, b) = (&gateways[0], &gateways[1]);
    assert_eq!(get(a, "/usage/000000001").await.status, 200);
    assert_eq!(get(a, "/usage/000000002").await.status, 200);
    assert_eq!(upstream.calls(), 2);

    redis.kill();
    // A's memory answers; B's misses go nowhere (no shared cache, no budget, no call).
    assert!(get(a, "/usage/000000001")
        .await
        .cache_status()
        .contains("hit"));
    let refused = get(b, "/usage/000000001").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(upstream.calls(), 2);
    let answer = purge(a, "sim_id=000000002").await;
    assert_eq!(answer["propagated"], false, "{answer}");
    assert_eq!(answer["purged"], 1, "applied here all the same");

    redis.restart();
    let back = Instant::now();
    eventually(
        Duration::from_secs(2),
        "a fill within 2 s of Redis's return",
        || async move { get(b, "/usage/000000003").await.status == 200 },
    )
    .await;
    assert!(back.elapsed() < Duration::from_secs(2));
    // Redis came back empty: each replica may have missed purges, and drops its memory.
    eventually(
        Duration::from_secs(5),
        "the gap is noticed",
        || async move { metric(a, "usage_gateway_shared_purge_gaps_total").await >= 1.0 },
    )
    .await;
    eventually(Duration::from_secs(2), "memory dropped", || async move {
        !in_memory(a, "/usage/000000001").await
    })
    .await;
    stop_all(gateways).await;
}

#[tokio::test]
async fn a_purge_stream_trimmed_past_a_replicas_position_drops_its_memory() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    upstream.script(counted);
    let mut config = replica(&upstream.base_url(), &redis);
    config
        .shared
        .as_mut()
        .expect("[shared]")
        .purge_stream_length = 10;
    let a = Gateway::start(config.clone()).await;
    let b = Gateway::start(config).await;
    assert_eq!(get(&b, "/usage/000000001").await.status, 200);
    eventually(Duration::from_secs(5), "B follows the stream", || async {
        metric(
            &b,
            "usage_gateway_redis_command_duration_seconds_count{command=\"purge_read\"}",
        )
        .await
            >= 1.0
    })
    .await;
    // Trim B's position away behind its back, as a long disconnection would.
    // (atomically, so B cannot read the messages before they are trimmed).
    let mut connection = redis.connection();
    let stream = "usage-gateway:purge:{purge}:stream";
    let mut trim = redis::pipe();
    trim.atomic();
    for _ in 0..3 {
        trim.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("scope")
            .arg("sim:000000042")
            .arg("hard")
            .arg("0")
            .arg("origin")
            .arg("someone")
            .ignore();
    }
    trim.cmd("XTRIM").arg(stream).arg("MAXLEN").arg(1).ignore();
    let () = trim.query(&mut connection).expect("XADD and XTRIM");
    eventually(Duration::from_secs(5), "B notices the gap", || async {
        metric(&b, "usage_gateway_shared_purge_gaps_total").await >= 1.0
    })
    .await;
    eventually(Duration::from_secs(2), "memory dropped", || async {
        !in_memory(&b, "/usage/000000001").await
    })
    .await;
    // A purge after the gap is followed as ever.
    assert_eq!(get(&b, "/usage/000000002").await.status, 200);
    let _ = purge(&a, "sim_id=000000002").await;
    eventually(Duration::from_secs(2), "the next purge arrives", || async {
        !in_memory(&b, "/usage/000000002").await
    })
    .await;
    assert_eq!(
        metric(&b, "usage_gateway_shared_purge_gaps_total").await,
        1.0
    );
    a.stop().await;
    b.stop().await;
}
