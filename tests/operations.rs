//! Operating the gateway: health and readiness, metrics that move, the status page, purge,
//! request ids, and a graceful shutdown that lets in-flight requests finish.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{admin, config_with, get, get_as, send, FakeUpstream, Gateway};
use usage_gateway::config::hash_key;

const ADMIN_TOKEN: &str = "admin-token-6d1e";

async fn start() -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let mut config = support::config(&upstream.base_url());
    let with_admin = config_with(
        &upstream.base_url(),
        &format!(
            "[admin]\ntoken_sha256 = \"{}\"\n[[callers]]\nname = \"x\"\nkey = \"x-key\"\n",
            hash_key(ADMIN_TOKEN)
        ),
    );
    config.admin.token_sha256 = with_admin.admin.token_sha256;
    let gateway = Gateway::start(config).await;
    (upstream, gateway)
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn health_and_readiness_answer_while_serving() {
    let (_upstream, gateway) = start().await;
    let health = admin(&gateway, "GET", "/healthz", &[]).await;
    assert_eq!(health.status, 200);
    let ready = admin(&gateway, "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
}

#[tokio::test]
async fn metrics_move_as_requests_are_served() {
    let (upstream, gateway) = start().await;
    let gate = upstream.hold();
    let gateway = Arc::new(gateway);
    let first = {
        let gateway = gateway.clone();
        tokio::spawn(async move { get(&gateway, "/usage").await })
    };
    upstream.wait_for_calls(1).await;
    // A second caller joins the fill in flight (or, if it comes late, hits the stored answer).
    let second = {
        let gateway = gateway.clone();
        tokio::spawn(async move { get(&gateway, "/usage").await })
    };
    gate.add_permits(1);
    first.await.expect("task");
    let joined = second.await.expect("task");
    get(&gateway, "/usage").await;
    assert_eq!(get(&gateway, "/nowhere").await.status, 404);

    let text = admin(&gateway, "GET", "/metrics", &[]).await.body;
    let requests = |cache: &str| {
        metric(
            &text,
            &format!(
                r#"usage_gateway_requests_total{{route="usage",status="200",cache="{cache}"}}"#
            ),
        )
    };
    assert_eq!(requests("miss"), 1, "{text}");
    let second_outcome = if joined.cache_status().contains("collapsed") {
        "collapsed"
    } else {
        "hit"
    };
    assert_eq!(requests("hit") + requests("collapsed"), 2, "{text}");
    assert!(requests(second_outcome) >= 1);
    assert_eq!(
        metric(
            &text,
            r#"usage_gateway_upstream_requests_total{profile="default",status="200"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            r#"usage_gateway_caller_upstream_calls_total{caller="billing"}"#
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"usage_gateway_errors_total{code="not_found"}"#),
        1
    );
    assert_eq!(metric(&text, "usage_gateway_cache_entries"), 1);
    assert!(
        metric(
            &text,
            r#"usage_gateway_upstream_budget_remaining{profile="default"}"#
        ) >= 598
    );
    assert!(text.contains("usage_gateway_request_duration_seconds_bucket"));
    assert!(!text.contains(support::BILLING_KEY) && !text.contains(support::ORG_TOKEN));
}

#[tokio::test]
async fn the_status_page_shows_the_live_numbers() {
    let (_upstream, gateway) = start().await;
    for _ in 0..3 {
        get(&gateway, "/usage").await;
    }
    get_as(&gateway, support::OPS_KEY, "/usage").await;
    let page = admin(&gateway, "GET", "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    for expected in [
        "requests<b>4</b>",
        "hit ratio<b>75.0%</b>",
        "upstream calls made<b>1</b>",
        "<td>billing</td><td>3</td><td>2</td>",
        "<td>ops</td><td>1</td><td>1</td>",
        "<td>default</td><td>599</td><td>closed</td>",
        "<svg",
    ] {
        assert!(page.body.contains(expected), "missing {expected}");
    }
}

#[tokio::test]
async fn purge_needs_the_admin_token() {
    let (_upstream, gateway) = start().await;
    assert_eq!(
        admin(&gateway, "POST", "/cache/purge", &[]).await.status,
        401
    );
    let wrong = admin(
        &gateway,
        "POST",
        "/cache/purge",
        &[("authorization", "Bearer guess")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let caller_key = format!("Bearer {}", support::BILLING_KEY);
    let caller = admin(
        &gateway,
        "POST",
        "/cache/purge",
        &[("authorization", &caller_key)],
    )
    .await;
    assert_eq!(caller.status, 401, "a caller key is not the admin token");
}

#[tokio::test]
async fn wrong_admin_tokens_trip_the_same_per_address_limit_as_caller_keys() {
    let upstream = FakeUpstream::start().await;
    let config = config_with(
        &upstream.base_url(),
        &format!(
            "[server]\nauth_failures_per_minute = 3\n[admin]\ntoken_sha256 = \"{}\"\n[[callers]]\nname = \"x\"\nkey = \"x-key\"\n",
            hash_key(ADMIN_TOKEN)
        ),
    );
    let gateway = Gateway::start(config).await;
    let purge = |token: &'static str| {
        let gateway = &gateway;
        async move {
            let auth = format!("Bearer {token}");
            admin(gateway, "POST", "/cache/purge", &[("authorization", &auth)]).await
        }
    };
    // A request without a token is no guess and does not count.
    for _ in 0..5 {
        assert_eq!(
            admin(&gateway, "POST", "/cache/purge", &[]).await.status,
            401
        );
    }
    for _ in 0..3 {
        assert_eq!(purge("guess").await.status, 401);
    }
    // Tripped: even the right token is refused for the rest of the minute, without a check.
    let refused = purge(ADMIN_TOKEN).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"], "too_many_auth_failures");
    assert!(refused.header("retry-after").is_some());
    gateway.stop().await;
}

#[tokio::test]
async fn purge_does_not_exist_without_an_admin_token() {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(support::config(&upstream.base_url())).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let answer = admin(
        &gateway,
        "POST",
        "/cache/purge",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(answer.status, 404);
}

#[tokio::test]
async fn a_soft_purge_serves_stale_while_one_refresh_runs() {
    let (upstream, gateway) = start().await;
    assert_eq!(get(&gateway, "/usage/000000001").await.json()["call"], 1);
    assert_eq!(get(&gateway, "/usage/000000002").await.json()["call"], 2);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let purged = admin(
        &gateway,
        "POST",
        "/cache/purge?sim_id=000000001",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.body);
    assert_eq!(purged.json()["purged"], 1);
    let stale = get(&gateway, "/usage/000000001").await;
    assert_eq!(
        stale.json()["call"],
        1,
        "the purged answer still protects the upstream"
    );
    assert!(
        stale
            .cache_status()
            .ends_with("detail=stale-while-revalidate"),
        "{}",
        stale.cache_status()
    );
    // The other SIM's entry was not touched.
    assert!(get(&gateway, "/usage/000000002")
        .await
        .cache_status()
        .contains("; hit; ttl=5"));
    upstream.wait_for_calls(3).await;
}

#[tokio::test]
async fn a_hard_purge_refetches() {
    let (upstream, gateway) = start().await;
    get(&gateway, "/usage").await;
    get(&gateway, "/usage?limit=5").await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let purged = admin(
        &gateway,
        "POST",
        "/cache/purge?hard=true",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(purged.json()["purged"], 2);
    let again = get(&gateway, "/usage").await;
    assert_eq!(again.cache_status(), "usage-gateway; fwd=miss; stored");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test]
async fn request_ids_round_trip_and_insane_ones_are_replaced() {
    let (_upstream, gateway) = start().await;
    let auth = format!("Bearer {}", support::BILLING_KEY);
    let kept = send(
        &gateway,
        "GET",
        "/usage",
        &[("authorization", &auth), ("x-request-id", "trace-42")],
    )
    .await;
    assert_eq!(kept.header("x-request-id"), Some("trace-42"));
    let long = "x".repeat(200);
    let replaced = send(
        &gateway,
        "GET",
        "/usage",
        &[("authorization", &auth), ("x-request-id", &long)],
    )
    .await;
    let generated = replaced.header("x-request-id").expect("an id");
    assert_eq!(generated.len(), 32);
    assert_ne!(generated, long);
    // Errors carry one too, and every request gets its own.
    let a = send(&gateway, "GET", "/usage", &[]).await;
    let b = send(&gateway, "GET", "/usage", &[]).await;
    assert_eq!(a.status, 401);
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[tokio::test]
async fn shutdown_turns_readiness_off_and_lets_in_flight_requests_finish() {
    let (upstream, gateway) = start().await;
    let gate = upstream.hold();
    let gateway = Arc::new(gateway);
    let in_flight = {
        let gateway = gateway.clone();
        tokio::spawn(async move { get(&gateway, "/usage").await })
    };
    upstream.wait_for_calls(1).await;
    gateway.begin_shutdown();
    let draining = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ready = admin(&gateway, "GET", "/readyz", &[]).await;
            if ready.status == 503 {
                break ready;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("readiness turned 503");
    assert_eq!(draining.json()["status"], "draining");
    gate.add_permits(1);
    let finished = in_flight.await.expect("task");
    assert_eq!(finished.status, 200);
    Arc::try_unwrap(gateway)
        .ok()
        .expect("the only handle")
        .stopped()
        .await;
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let upstream = FakeUpstream::start().await;
    let gate = upstream.hold();
    let dir = std::env::temp_dir().join(format!("usage-gateway-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_secs = 10\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\n[upstream]\nbase_url = \"{}\"\ntoken = \"t\"\n[[callers]]\nname = \"billing\"\nkey = \"billing-key\"\n",
            upstream.base_url()
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_usage-gateway"))
        .arg("--config")
        .arg(&path)
        .env_remove("USAGE_GATEWAY_CONFIG")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .kill_on_drop_guard();
    let (send_line, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if send_line.send(line).is_err() {
                break;
            }
        }
    });
    let address_in = |needle: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("the gateway logs its addresses");
            if line.contains(needle) {
                if let Some(address) = line.split("address=").nth(1) {
                    return address
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                }
            }
        }
    };
    let admin_addr = address_in("admin endpoints listening");
    let api_addr = address_in("usage-gateway listening");

    let client = support::client();
    let request = |target: String| {
        http::Request::get(target)
            .header("authorization", "Bearer billing-key")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request")
    };
    let in_flight = tokio::spawn(client.request(request(format!("http://{api_addr}/usage"))));
    upstream.wait_for_calls(1).await;

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ready = support::client()
                .get(format!("http://{admin_addr}/readyz").parse().expect("uri"))
                .await;
            if matches!(ready, Ok(ref r) if r.status() == 503) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("readiness turned 503 while draining");

    gate.add_permits(1);
    let finished = in_flight
        .await
        .expect("task")
        .expect("the in-flight request completed");
    assert_eq!(finished.status(), 200);
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .expect("join")
        .expect("exit status");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ends the child process if the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

trait SpawnGuarded {
    fn kill_on_drop_guard(&mut self) -> KillOnDrop;
}

impl SpawnGuarded for std::process::Command {
    fn kill_on_drop_guard(&mut self) -> KillOnDrop {
        KillOnDrop(self.spawn().expect("spawns"))
    }
}

#[tokio::test]
async fn a_purge_by_tag_touches_only_that_tags_totals() {
    let (upstream, gateway) = start().await;
    let tag = "5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90";
    get(&gateway, &format!("/usage/tag-total/{tag}")).await;
    get(&gateway, "/usage/000000001").await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let purged = admin(
        &gateway,
        "POST",
        &format!("/cache/purge?tag_id={tag}&hard=true"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(purged.json()["purged"], 1, "{}", purged.body);
    let refetched = get(&gateway, &format!("/usage/tag-total/{tag}")).await;
    assert_eq!(refetched.cache_status(), "usage-gateway; fwd=miss; stored");
    assert!(get(&gateway, "/usage/000000001")
        .await
        .cache_status()
        .contains("; hit;"));
    assert_eq!(upstream.calls(), 3);
}
