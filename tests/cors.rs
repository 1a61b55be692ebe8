//! Browser callers: CORS preflights are answered for listed origins and never count as failed
//! authentications, answers expose the gateway's headers to those origins, and nothing
//! changes for anyone when no origin is listed. Against `usage-sim`; `tests/browser.rs` drives
//! a real browser through the same path.

mod support;

use support::sim::{small, start_sim, Sim};
use support::{config_with, send, Gateway, BILLING_KEY};

const ORIGIN: &str = "https://dash.example.com";

async fn gateway(sim: &Sim, server: &str) -> Gateway {
    Gateway::start(config_with(
        &sim.base_url(),
        &format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            auth_failures_per_minute = 3
            {server}
            [[callers]]
            name = "dashboard"
            key = "{BILLING_KEY}"
            "#
        ),
    ))
    .await
}

fn preflight(origin: &str) -> [(&str, &str); 3] {
    [
        ("origin", origin),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "authorization"),
    ]
}

#[tokio::test]
async fn requests_without_a_key_never_lock_an_address_out_but_wrong_keys_still_do() {
    let sim = start_sim(small()).await;
    // No CORS configured: a dashboard's preflights reach auth, and are refused without a key.
    let gateway = gateway(&sim, "").await;
    for _ in 0..20 {
        let refused = send(&gateway, "OPTIONS", "/usage?limit=1", &preflight(ORIGIN)).await;
        assert_eq!(refused.status, 401);
        assert!(refused.header("access-control-allow-origin").is_none());
        // A health probe without a key.
        assert_eq!(send(&gateway, "GET", "/usage", &[]).await.status, 401);
    }
    let auth = format!("Bearer {BILLING_KEY}");
    let served = send(
        &gateway,
        "GET",
        "/usage?limit=1",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(served.status, 200, "{}", served.body);

    for guess in ["guess-1", "guess-2", "guess-3"] {
        let refused = send(&gateway, "GET", "/usage", &[("authorization", guess)]).await;
        assert_eq!(refused.status, 401);
    }
    let locked = send(
        &gateway,
        "GET",
        "/usage?limit=1",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(locked.status, 429);
    assert_eq!(locked.json()["error"], "too_many_auth_failures");
    gateway.stop().await;
}

#[tokio::test]
async fn a_listed_origin_gets_204_preflights_and_answers_that_expose_the_gateways_headers() {
    let sim = start_sim(small()).await;
    let gateway = gateway(
        &sim,
        &format!("[server.cors]\nallow_origins = [\"{ORIGIN}\"]"),
    )
    .await;
    // More preflights than the failed-auth limit: answered before auth, so none counts.
    for _ in 0..10 {
        let answer = send(&gateway, "OPTIONS", "/usage?limit=1", &preflight(ORIGIN)).await;
        assert_eq!(answer.status, 204);
        assert_eq!(answer.header("access-control-allow-origin"), Some(ORIGIN));
        assert_eq!(answer.header("access-control-allow-methods"), Some("GET"));
        let headers = answer.header("access-control-allow-headers").unwrap_or("");
        assert!(
            headers.contains("authorization") && headers.contains("x-api-key"),
            "{headers}"
        );
        assert!(answer.body.is_empty());
    }
    let auth = format!("Bearer {BILLING_KEY}");
    let answer = send(
        &gateway,
        "GET",
        "/usage?limit=1",
        &[("origin", ORIGIN), ("authorization", &auth)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.header("access-control-allow-origin"), Some(ORIGIN));
    let exposed = answer
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_owned();
    for name in [
        "cache-status",
        "age",
        "x-request-id",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
        if name != "age" {
            assert!(answer.header(name).is_some(), "{name} missing");
        }
    }
    // An origin that is not listed gets the same answer with no CORS permission in it.
    let other = send(
        &gateway,
        "GET",
        "/usage?limit=1",
        &[("origin", "https://evil.example"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(other.status, 200);
    assert!(other.header("access-control-allow-origin").is_none());
    let preflight = send(
        &gateway,
        "OPTIONS",
        "/usage",
        &preflight("https://evil.example"),
    )
    .await;
    assert!(preflight.header("access-control-allow-origin").is_none());
    gateway.stop().await;
}

#[tokio::test]
async fn without_listed_origins_answers_carry_no_cors_headers() {
    let sim = start_sim(small()).await;
    let gateway = gateway(&sim, "").await;
    let auth = format!("Bearer {BILLING_KEY}");
    let answer = send(
        &gateway,
        "GET",
        "/usage?limit=1",
        &[("origin", ORIGIN), ("authorization", &auth)],
    )
    .await;
    assert_eq!(answer.status, 200);
    for (name, _) in answer.headers.iter() {
        assert!(
            !name.as_str().starts_with("access-control-"),
            "{name} without [server.cors]"
        );
    }
    gateway.stop().await;
}
