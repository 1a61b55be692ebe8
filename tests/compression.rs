//! Compressed answers, stored once: each caller gets the form its `Accept-Encoding` prefers
//! (gzip or the body itself), with `Vary`, `Content-Encoding` and a `Content-Length` that fit;
//! an upstream gzip answer is kept as it was sent, after its decoded body is validated; and
//! `cache.max_bytes` counts the bytes held, so compressed entries fit more of them.
//!
//! Answers are read off the wire with `httparse` ([`RawClient`]): its body is exactly
//! `Content-Length` bytes, so a wrong length shows up as a wrong body or a broken next answer.

mod support;

use std::io::{Read, Write};

use serde_json::json;
use support::raw::{RawAnswer, RawClient};
use support::sim::{set_faults, sim_json, small, start_sim, Sim};
use support::{admin, FakeUpstream, Gateway, Reply, BILLING_KEY, ORG_TOKEN};

const TARGET: &str = "/usage?limit=50";

/// `GET target` as the billing caller, with `Accept-Encoding: accept` when given.
async fn fetch(gateway: &Gateway, target: &str, accept: Option<&str>) -> RawAnswer {
    let auth = format!("Bearer {BILLING_KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(accept) = accept {
        headers.push(("accept-encoding", accept));
    }
    RawClient::connect(gateway.addr)
        .await
        .get(target, &headers)
        .await
}

/// `GET target` on the simulator itself, as the gateway asks it (`Accept-Encoding: gzip`).
async fn upstream_bytes(sim: &Sim, target: &str) -> RawAnswer {
    RawClient::connect(sim.addr)
        .await
        .get(
            target,
            &[("authorization", ORG_TOKEN), ("accept-encoding", "gzip")],
        )
        .await
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut plain)
        .expect("a valid gzip body");
    plain
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body).expect("in memory");
    encoder.finish().expect("in memory")
}

async fn gateway_for(base_url: &str) -> Gateway {
    let mut config = support::config(base_url);
    config.upstream.retries = 0;
    Gateway::start(config).await
}

/// The simulator's own plain answer to `target`.
async fn plain_from(sim: &Sim, target: &str) -> Vec<u8> {
    let answer = RawClient::connect(sim.addr)
        .await
        .get(target, &[("authorization", ORG_TOKEN)])
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-encoding"), None);
    answer.body
}

#[tokio::test]
async fn a_gzip_caller_gets_gzip_bytes_that_decode_to_exactly_the_identity_body() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim.base_url()).await;
    let plain = plain_from(&sim, TARGET).await;
    // Filled by a gzip caller, then hit by one.
    for expected in ["fwd=miss; stored", "hit"] {
        let answer = fetch(&gateway, TARGET, Some("gzip")).await;
        assert_eq!(answer.status, 200);
        assert!(answer
            .header("cache-status")
            .unwrap_or("")
            .contains(expected));
        assert_eq!(answer.header("content-encoding"), Some("gzip"));
        assert_eq!(answer.header("vary"), Some("accept-encoding"));
        assert_eq!(
            answer.header("content-length"),
            Some(answer.body.len().to_string().as_str())
        );
        assert!(answer.body.len() * 2 < plain.len(), "usage JSON shrinks");
        assert_eq!(gunzip(&answer.body), plain);
    }
    gateway.stop().await;
}

#[tokio::test]
async fn an_identity_caller_gets_the_plain_body_of_an_entry_a_gzip_caller_filled() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim.base_url()).await;
    let plain = plain_from(&sim, TARGET).await;
    let filled = fetch(&gateway, TARGET, Some("gzip, deflate")).await;
    assert_eq!(filled.header("content-encoding"), Some("gzip"));
    for accept in [None, Some("identity"), Some("br"), Some("")] {
        let answer = fetch(&gateway, TARGET, accept).await;
        assert_eq!(answer.status, 200, "{accept:?}");
        assert!(answer.header("cache-status").unwrap_or("").contains("hit"));
        assert_eq!(answer.header("content-encoding"), None, "{accept:?}");
        assert_eq!(answer.header("vary"), Some("accept-encoding"), "{accept:?}");
        assert_eq!(
            answer.header("content-length"),
            Some(plain.len().to_string().as_str())
        );
        assert_eq!(answer.body, plain, "{accept:?}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn q_values_choose_the_form_and_identity_refused_still_gets_an_answer() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim.base_url()).await;
    let plain = plain_from(&sim, TARGET).await;
    // (Accept-Encoding, served gzip)
    let rows = [
        ("gzip;q=0.5, identity", false),
        ("gzip;q=0.5, identity;q=0.4", true),
        ("br;q=1, gzip;q=0.5", true),
        ("gzip;q=0", false),
        ("*", true),
        ("*, gzip;q=0", false),
        ("GZIP;Q=0.8", true),
        // identity refused: gzip when acceptable at all, else the plain body (never a 406)
        ("identity;q=0, gzip;q=0.1", true),
        ("identity;q=0", false),
        ("*;q=0", false),
    ];
    for (accept, gzipped) in rows {
        let answer = fetch(&gateway, TARGET, Some(accept)).await;
        assert_eq!(answer.status, 200, "{accept}");
        assert_eq!(answer.header("vary"), Some("accept-encoding"), "{accept}");
        if gzipped {
            assert_eq!(answer.header("content-encoding"), Some("gzip"), "{accept}");
            assert_eq!(gunzip(&answer.body), plain, "{accept}");
        } else {
            assert_eq!(answer.header("content-encoding"), None, "{accept}");
            assert_eq!(answer.body, plain, "{accept}");
        }
    }
    gateway.stop().await;
}

#[tokio::test]
async fn callers_of_one_fill_each_get_their_own_form() {
    let upstream = FakeUpstream::start().await;
    upstream.script(|_, n| page(n));
    let gateway = gateway_for(&upstream.base_url()).await;
    let release = upstream.hold();
    let gzip_caller = tokio::spawn({
        let gateway_addr = gateway.addr;
        async move {
            let auth = format!("Bearer {BILLING_KEY}");
            RawClient::connect(gateway_addr)
                .await
                .get(
                    TARGET,
                    &[("authorization", &auth), ("accept-encoding", "gzip")],
                )
                .await
        }
    });
    upstream.wait_for_calls(1).await;
    // It joins the fill in flight, or if it comes late hits what the fill stored (the cache's
    // own tests pin the collapsed case).
    let identity_caller = tokio::spawn({
        let gateway_addr = gateway.addr;
        async move {
            let auth = format!("Bearer {BILLING_KEY}");
            RawClient::connect(gateway_addr)
                .await
                .get(TARGET, &[("authorization", &auth)])
                .await
        }
    });
    release.add_permits(1);
    let zipped = gzip_caller.await.expect("task");
    let plain = identity_caller.await.expect("task");
    assert_eq!(upstream.calls(), 1, "one fill");
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(gunzip(&zipped.body), plain.body);
    assert_eq!(plain.json()["call"], 1);
    gateway.stop().await;
}

#[tokio::test]
async fn an_upstream_gzip_answer_is_kept_byte_for_byte_as_sent() {
    let sim = start_sim(small()).await;
    let plain = plain_from(&sim, TARGET).await;
    set_faults(
        &sim,
        json!({ "misbehavior": "gzip", "misbehavior_rate": 1.0 }),
    )
    .await;
    let sent = upstream_bytes(&sim, TARGET).await;
    assert_eq!(sent.header("content-encoding"), Some("gzip"));
    let gateway = gateway_for(&sim.base_url()).await;
    for _ in 0..2 {
        let answer = fetch(&gateway, TARGET, Some("gzip")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-encoding"), Some("gzip"));
        assert_eq!(answer.body, sent.body, "the upstream's bytes, not ours");
    }
    let identity = fetch(&gateway, TARGET, None).await;
    assert_eq!(identity.header("content-encoding"), None);
    assert_eq!(identity.body, plain, "decoded once for identity callers");
    let stats = sim_json(&sim, "/__sim/stats").await;
    assert_eq!(
        stats["misbehaviors"]["gzip"], 2,
        "ours and one fill: {stats}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn the_gateway_asks_the_upstream_for_gzip() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_for(&upstream.base_url()).await;
    fetch(&gateway, TARGET, None).await;
    let requests = upstream.requests();
    assert_eq!(requests[0].headers["accept-encoding"], "gzip");
    gateway.stop().await;
}

#[tokio::test]
async fn a_gzip_body_that_is_not_json_is_an_error_and_never_stored() {
    let upstream = FakeUpstream::start().await;
    upstream.script(|_, _| {
        Reply::json(200, "")
            .header("content-encoding", "gzip")
            .body(gzip(b"<html><body>upstream maintenance</body></html>"))
    });
    let gateway = gateway_for(&upstream.base_url()).await;
    for _ in 0..2 {
        let answer = fetch(&gateway, TARGET, Some("gzip")).await;
        assert_eq!(answer.status, 502);
        assert_eq!(answer.header("content-encoding"), None, "errors stay plain");
        assert_eq!(answer.json()["error"], "upstream_invalid_response");
    }
    assert_eq!(upstream.calls(), 2, "nothing was stored");
    gateway.stop().await;
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_and_leaves_nothing_stored() {
    let upstream = FakeUpstream::start().await;
    // 48 MiB of JSON whitespace (over the 32 MiB the gateway reads) in well under 1 MiB of gzip;
    // the decoder stops at the bound (the tests of `gzip::decode`).
    let mut huge = vec![b' '; 48 * 1024 * 1024];
    huge[0] = b'{';
    let last = huge.len() - 1;
    huge[last] = b'}';
    let bomb = bytes::Bytes::from(gzip(&huge));
    drop(huge);
    assert!(bomb.len() < 1024 * 1024);
    upstream.script(move |_, _| {
        Reply::json(200, "")
            .header("content-encoding", "gzip")
            .body(bomb.clone())
    });
    let gateway = gateway_for(&upstream.base_url()).await;
    let answer = fetch(&gateway, TARGET, Some("gzip")).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"], "upstream_invalid_response");
    upstream.script(support::echo);
    let after = fetch(&gateway, TARGET, Some("gzip")).await;
    assert_eq!(after.status, 200);
    assert!(
        after
            .header("cache-status")
            .unwrap_or("")
            .contains("fwd=miss"),
        "the bomb left nothing stored"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn error_answers_stay_plain_json_for_gzip_callers() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim.base_url()).await;
    let answer = fetch(&gateway, "/usage/000000999", Some("gzip")).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.header("content-encoding"), None);
    assert_eq!(answer.json()["error"], "sim_not_found");
    let refused = fetch(&gateway, "/usage?limit=0", Some("gzip")).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("content-encoding"), None);
    gateway.stop().await;
}

/// `usage_gateway_cache_bytes` from the admin listener (settled first).
async fn cache_bytes(gateway: &Gateway) -> u64 {
    let metrics = admin(gateway, "GET", "/metrics", &[]).await;
    metrics
        .body
        .lines()
        .find_map(|line| line.strip_prefix("usage_gateway_cache_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .expect("a usage_gateway_cache_bytes line")
}

#[tokio::test]
async fn max_bytes_counts_the_compressed_bytes_held_so_more_answers_fit() {
    let sim = start_sim(small()).await;
    const PAGES: usize = 12;
    let targets: Vec<String> = (0..PAGES)
        .map(|page| format!("/usage?limit=100&offset={}", page * 100))
        .collect();
    let plain_len = plain_from(&sim, &targets[0]).await.len();
    // Room for half the pages as plain bodies, and all of them gzipped (with room to spare
    // for one decoded body).
    let max_bytes = plain_len * PAGES / 2;
    let mut config = support::config(&sim.base_url());
    config.cache.max_bytes = max_bytes as u64;
    config.cache.max_entry_bytes = max_bytes;
    let gateway = Gateway::start(config).await;
    for target in &targets {
        let answer = fetch(&gateway, target, Some("gzip")).await;
        assert!(answer
            .header("cache-status")
            .unwrap_or("")
            .contains("stored"));
    }
    let held = cache_bytes(&gateway).await;
    assert!(
        held * 3 < (plain_len * PAGES) as u64,
        "{held} bytes weighed for {PAGES} pages of {plain_len}"
    );
    for target in &targets {
        let answer = fetch(&gateway, target, Some("gzip")).await;
        assert!(
            answer.header("cache-status").unwrap_or("").contains("hit"),
            "{target} was evicted"
        );
    }
    // An identity read keeps the decoded body too, and the entry is weighed again.
    let identity = fetch(&gateway, &targets[0], None).await;
    assert_eq!(identity.body.len(), plain_len);
    let grown = cache_bytes(&gateway).await;
    assert_eq!(
        grown,
        held + plain_len as u64,
        "the decoded body is counted"
    );
    gateway.stop().await;
}

/// A page-like answer, large enough for gzip to pay, naming the upstream call that made it.
fn page(n: usize) -> Reply {
    let records: Vec<_> = (0..40)
        .map(|i| json!({"sim_id": format!("{:09}", i), "bytes": 1000 + i, "call": n}))
        .collect();
    Reply::json(200, json!({ "usage": records, "call": n }).to_string())
}

#[tokio::test]
async fn a_stale_answer_comes_in_each_callers_form() {
    let upstream = FakeUpstream::start().await;
    upstream.script(|_, n| page(n));
    let mut config = support::config(&upstream.base_url());
    config.upstream.retries = 0;
    support::short_lived(&mut config);
    let gateway = Gateway::start(config).await;
    let plain = fetch(&gateway, TARGET, None).await.body;
    support::let_expire().await;
    upstream.script(|_, _| Reply::json(503, r#"{"error":"service_unavailable"}"#));
    let zipped = fetch(&gateway, TARGET, Some("gzip")).await;
    assert!(zipped
        .header("cache-status")
        .unwrap_or("")
        .ends_with("detail=stale-if-error"));
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&zipped.body), plain);
    let identity = fetch(&gateway, TARGET, None).await;
    assert!(identity
        .header("cache-status")
        .unwrap_or("")
        .ends_with("detail=stale-if-error"));
    assert_eq!(identity.header("content-encoding"), None);
    assert_eq!(identity.body, plain);
    gateway.stop().await;
}

#[tokio::test]
async fn an_answer_filled_plain_gains_its_gzip_form_once_on_its_first_gzip_read() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim.base_url()).await;
    let plain = fetch(&gateway, TARGET, None).await;
    assert!(plain
        .header("cache-status")
        .unwrap_or("")
        .contains("stored"));
    let plain_only = cache_bytes(&gateway).await;
    let first = fetch(&gateway, TARGET, Some("gzip")).await;
    assert!(first.header("cache-status").unwrap_or("").contains("hit"));
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&first.body), plain.body);
    let both = cache_bytes(&gateway).await;
    assert_eq!(
        both,
        plain_only + first.body.len() as u64,
        "the gzip form is counted"
    );
    let again = fetch(&gateway, TARGET, Some("gzip")).await;
    assert_eq!(again.body, first.body, "made once, then served as held");
    assert_eq!(cache_bytes(&gateway).await, both);
    gateway.stop().await;
}

#[tokio::test]
async fn an_answer_not_stored_is_served_gzip_only_if_the_upstream_sent_gzip() {
    let upstream = FakeUpstream::start().await;
    let gateway = gateway_for(&upstream.base_url()).await;
    let plain = page(1).body;
    let sent = bytes::Bytes::from(gzip(&plain));
    let as_sent = sent.clone();
    upstream.script(move |_, _| {
        page(1)
            .header("cache-control", "no-store")
            .header("content-encoding", "gzip")
            .body(as_sent.clone())
    });
    let zipped = fetch(&gateway, TARGET, Some("gzip")).await;
    assert_eq!(
        zipped.header("cache-status"),
        Some("usage-gateway; fwd=miss; detail=no-store")
    );
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert_eq!(zipped.body, sent, "the upstream's bytes as sent");
    let identity = fetch(&gateway, TARGET, None).await;
    assert_eq!(identity.header("content-encoding"), None);
    assert_eq!(identity.body, plain);
    // Sent plain and not stored: not compressed here (it is served once).
    upstream.script(|_, _| page(1).header("cache-control", "no-store"));
    let uncompressed = fetch(&gateway, TARGET, Some("gzip")).await;
    assert_eq!(uncompressed.header("content-encoding"), None);
    assert_eq!(uncompressed.header("vary"), Some("accept-encoding"));
    assert_eq!(uncompressed.body, plain);
    assert_eq!(upstream.calls(), 3, "nothing was stored");
    gateway.stop().await;
}

#[tokio::test]
async fn vary_names_accept_encoding_beside_the_cors_layers_own() {
    const ORIGIN: &str = "https://dashboard.example.com";
    let sim = start_sim(small()).await;
    let mut config = support::config_with(
        &sim.base_url(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.cors]\nallow_origins = [\"{ORIGIN}\"]\n[[callers]]\nname = \"billing\"\nkey = \"{BILLING_KEY}\""
        ),
    );
    config.upstream.retries = 0;
    let gateway = Gateway::start(config).await;
    let auth = format!("Bearer {BILLING_KEY}");
    let answer = RawClient::connect(gateway.addr)
        .await
        .get(
            TARGET,
            &[
                ("authorization", &auth),
                ("origin", ORIGIN),
                ("accept-encoding", "gzip"),
            ],
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-encoding"), Some("gzip"));
    let vary: Vec<&str> = answer
        .headers
        .iter()
        .filter(|(name, _)| name == "vary")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .collect();
    assert!(vary.contains(&"accept-encoding"), "{vary:?}");
    assert!(
        vary.iter().any(|v| v.eq_ignore_ascii_case("origin")),
        "{vary:?}"
    );
    gateway.stop().await;
}
