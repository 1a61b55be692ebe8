//! A misbehaving upstream: `usage-sim`'s fault modes, each with its defined answer. A caller
//! gets the stale copy where one exists, else a 502/504 naming the problem, and no fault ever
//! leaves an entry in the cache.

mod support;

use std::time::Duration;

use serde_json::json;
use support::sim::{set_faults, sim_get, sim_json, small, start_sim, Sim};
use support::{get, let_expire, send, short_lived, Gateway, BILLING_KEY};
use usage_gateway::Config;

const TARGET: &str = "/usage?limit=5";

async fn gateway_for(sim: &Sim, tune: impl FnOnce(&mut Config)) -> Gateway {
    let mut config = support::config(&sim.base_url());
    config.upstream.retries = 0;
    tune(&mut config);
    Gateway::start(config).await
}

fn misbehave(mode: &str) -> serde_json::Value {
    json!({ "misbehavior": mode, "misbehavior_rate": 1.0 })
}

fn calm() -> serde_json::Value {
    json!({ "misbehavior": "none" })
}

/// API requests the simulator has answered.
async fn sim_requests(sim: &Sim) -> usize {
    sim_json(sim, "/__sim/requests")
        .await
        .as_array()
        .map_or(0, Vec::len)
}

/// With no copy cached: the fault's error, and afterwards (faults off) a plain miss, so the
/// fault stored nothing.
async fn without_a_copy(mode: &str, tune: impl FnOnce(&mut Config)) -> (u16, String) {
    let sim = start_sim(small()).await;
    without_a_copy_on(&sim, mode, tune).await
}

/// [`without_a_copy`] against an already configured simulator.
async fn without_a_copy_on(sim: &Sim, mode: &str, tune: impl FnOnce(&mut Config)) -> (u16, String) {
    let gateway = gateway_for(sim, tune).await;
    set_faults(sim, misbehave(mode)).await;
    let answer = get(&gateway, TARGET).await;
    let code = answer.json()["error"].as_str().unwrap_or("").to_owned();
    set_faults(sim, calm()).await;
    let after = get(&gateway, TARGET).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(
        after.cache_status().contains("fwd=miss"),
        "{mode} left an entry behind: {}",
        after.cache_status()
    );
    gateway.stop().await;
    (answer.status.as_u16(), code)
}

/// With a stale copy: the copy, untouched by the fault.
async fn with_a_stale_copy(mode: &str, tune: impl FnOnce(&mut Config)) {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim, |c| {
        short_lived(c);
        tune(c);
    })
    .await;
    let original = get(&gateway, TARGET).await;
    assert_eq!(original.status, 200);
    let_expire().await;
    set_faults(&sim, misbehave(mode)).await;
    let answer = get(&gateway, TARGET).await;
    assert_eq!(answer.status, 200, "{mode}: {}", answer.body);
    assert_eq!(answer.body, original.body, "{mode}");
    assert!(
        answer.cache_status().ends_with("detail=stale-if-error"),
        "{mode}: {}",
        answer.cache_status()
    );
    // And the copy is still the one served next time.
    let again = get(&gateway, TARGET).await;
    assert_eq!(again.body, original.body, "{mode}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_502_and_stores_nothing() {
    let got = without_a_copy("reset_mid_body", |_| {}).await;
    assert_eq!(got, (502, "upstream_unavailable".into()));
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_answered_stale_where_a_copy_exists() {
    with_a_stale_copy("reset_mid_body", |_| {}).await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_502_and_stores_nothing() {
    let got = without_a_copy("short_body", |_| {}).await;
    assert_eq!(got, (502, "upstream_unavailable".into()));
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_answered_stale_where_a_copy_exists() {
    with_a_stale_copy("short_body", |_| {}).await;
}

#[tokio::test]
async fn a_200_that_is_not_json_is_502_invalid_response_and_stores_nothing() {
    let got = without_a_copy("not_json", |_| {}).await;
    assert_eq!(got, (502, "upstream_invalid_response".into()));
}

#[tokio::test]
async fn a_200_that_is_not_json_is_answered_stale_where_a_copy_exists() {
    with_a_stale_copy("not_json", |_| {}).await;
}

#[tokio::test]
async fn a_body_that_trickles_past_the_timeout_is_504_and_stores_nothing() {
    let sim = start_sim(small()).await;
    // Ten chunks 100 ms apart: the headers come at once, the whole body takes ~900 ms.
    set_faults(&sim, json!({ "trickle_ms": 100 })).await;
    let got = without_a_copy_on(&sim, "trickle", |c| {
        c.upstream.timeout = Duration::from_millis(300);
    })
    .await;
    assert_eq!(got, (504, "upstream_timeout".into()));
}

#[tokio::test]
async fn a_body_that_trickles_past_the_timeout_is_answered_stale_where_a_copy_exists() {
    let sim = start_sim(small()).await;
    set_faults(&sim, json!({ "trickle_ms": 100 })).await;
    let gateway = gateway_for(&sim, |c| {
        short_lived(c);
        c.upstream.timeout = Duration::from_millis(300);
    })
    .await;
    let original = get(&gateway, TARGET).await;
    let_expire().await;
    set_faults(&sim, misbehave("trickle")).await;
    let answer = get(&gateway, TARGET).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, original.body);
    assert!(answer.cache_status().ends_with("detail=stale-if-error"));
    gateway.stop().await;
}

#[tokio::test]
async fn a_redirect_is_never_followed_and_is_502() {
    let sim = start_sim(small()).await;
    let got = without_a_copy_on(&sim, "redirect", |_| {}).await;
    assert_eq!(got, (502, "upstream_invalid_response".into()));
    let targets: Vec<String> = sim_json(&sim, "/__sim/requests")
        .await
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["target"].as_str().map(str::to_owned))
        .collect();
    assert!(
        targets.iter().all(|t| !t.contains("redirected")),
        "the Location was followed: {targets:?}"
    );
}

#[tokio::test]
async fn an_answer_larger_than_max_entry_bytes_is_served_but_not_stored() {
    let sim = start_sim(small()).await;
    set_faults(&sim, json!({ "oversized_bytes": 2 * 1024 * 1024 })).await;
    let gateway = gateway_for(&sim, |c| c.cache.max_entry_bytes = 1024 * 1024).await;
    set_faults(&sim, misbehave("oversized")).await;
    for _ in 0..2 {
        let answer = get(&gateway, TARGET).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            &answer.body[..200.min(answer.body.len())]
        );
        assert!(answer.body.len() >= 2 * 1024 * 1024);
        assert!(answer.json()["usage"].is_array());
        assert_eq!(
            answer.cache_status(),
            "usage-gateway; fwd=miss; detail=too-large"
        );
    }
    assert_eq!(sim_requests(&sim).await, 2, "each request went upstream");
    gateway.stop().await;
}

#[tokio::test]
async fn a_gzip_answer_is_served_as_plain_json_to_callers_that_do_not_accept_gzip() {
    // Callers that accept gzip get the upstream's bytes as sent: tests/compression.rs.
    let sim = start_sim(small()).await;
    let plain = sim_get(&sim, TARGET).await;
    assert_eq!(plain.status, 200);
    set_faults(&sim, misbehave("gzip")).await;
    let gateway = gateway_for(&sim, |_| {}).await;
    let auth = format!("Bearer {BILLING_KEY}");
    for accept in [
        None,
        Some("identity"),
        Some("br"),
        Some("gzip;q=0.5, identity"),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(accept) = accept {
            headers.push(("accept-encoding", accept));
        }
        let answer = send(&gateway, "GET", TARGET, &headers).await;
        assert_eq!(answer.status, 200, "{accept:?}: {}", answer.body);
        assert_eq!(answer.header("content-encoding"), None, "{accept:?}");
        assert_eq!(answer.body, plain.body, "{accept:?}");
    }
    let stats = sim_json(&sim, "/__sim/stats").await;
    assert_eq!(
        stats["misbehaviors"]["gzip"], 1,
        "one fill, then hits: {stats}"
    );
    gateway.stop().await;
}
