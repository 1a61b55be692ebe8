//! Caller keys: several at once for rotation, revoked at once by a reload, and a limit on
//! failed authentications per client address.

mod support;

use support::{config_with, get_as, send, FakeUpstream, Gateway};
use usage_gateway::config::hash_key;

fn callers(keys: &[&str], extra: &str) -> String {
    let hashes: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", hash_key(k)))
        .collect();
    format!(
        r#"
        {extra}
        [[callers]]
        name = "billing"
        key_sha256 = [{}]
        "#,
        hashes.join(", ")
    )
}

async fn start(keys: &[&str], extra: &str) -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(config_with(&upstream.base_url(), &callers(keys, extra))).await;
    (upstream, gateway)
}

#[tokio::test]
async fn every_key_of_a_caller_works_during_a_rotation() {
    let (_upstream, gateway) = start(&["old-key", "new-key"], "").await;
    assert_eq!(get_as(&gateway, "old-key", "/usage").await.status, 200);
    assert_eq!(get_as(&gateway, "new-key", "/usage").await.status, 200);
}

#[tokio::test]
async fn a_reload_without_the_old_hash_revokes_it_at_once() {
    let (upstream, gateway) = start(&["old-key", "new-key"], "").await;
    assert_eq!(get_as(&gateway, "old-key", "/usage").await.status, 200);
    let reloaded = gateway
        .reload
        .reload(config_with(
            &upstream.base_url(),
            &callers(&["new-key"], ""),
        ))
        .await
        .expect("reloaded");
    assert!(reloaded.restart_needed.is_empty(), "{reloaded:?}");
    assert_eq!(get_as(&gateway, "old-key", "/usage").await.status, 401);
    let kept = get_as(&gateway, "new-key", "/usage").await;
    assert_eq!(kept.status, 200);
    assert!(
        kept.cache_status().contains("hit"),
        "the cache survived the reload"
    );
}

#[tokio::test]
async fn a_reload_reports_settings_that_need_a_restart() {
    let (upstream, gateway) = start(&["new-key"], "").await;
    let mut next = config_with(&upstream.base_url(), &callers(&["new-key"], ""));
    next.server.listen = "127.0.0.1:1".parse().expect("addr");
    let reloaded = gateway.reload.reload(next).await.expect("reloaded");
    assert_eq!(reloaded.restart_needed, ["server.listen"]);
}

#[tokio::test]
async fn a_reload_naming_an_unknown_profile_is_refused_whole() {
    let (upstream, gateway) = start(&["old-key"], "").await;
    let next = config_with(
        &upstream.base_url(),
        r#"
        [[upstreams]]
        name = "partner"
        token = "partner-token"
        [[callers]]
        name = "billing"
        key = "other-key"
        upstream = "partner"
        "#,
    );
    assert!(gateway.reload.reload(next).await.is_err());
    assert_eq!(get_as(&gateway, "old-key", "/usage").await.status, 200);
    assert_eq!(get_as(&gateway, "other-key", "/usage").await.status, 401);
}

#[tokio::test]
async fn repeated_failed_authentications_trip_a_per_address_limit() {
    let (upstream, gateway) = start(&["good-key"], "[server]\nauth_failures_per_minute = 3").await;
    for _ in 0..3 {
        assert_eq!(get_as(&gateway, "guess", "/usage").await.status, 401);
    }
    let refused = get_as(&gateway, "guess", "/usage").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "too_many_auth_failures");
    let wait: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("secs");
    assert!((55..=60).contains(&wait), "{wait}");
    // The key is not even checked: a good key from the same address waits too.
    assert_eq!(get_as(&gateway, "good-key", "/usage").await.status, 429);
    let unauthenticated = send(&gateway, "GET", "/usage", &[]).await;
    assert_eq!(unauthenticated.status, 429);
    assert_eq!(upstream.calls(), 0);
}
