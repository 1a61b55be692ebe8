//! The organization token and caller keys appear in no response and no log line, at any level.

mod support;

use support::logs::captured;
use support::{get, get_as, send, Reply, BILLING_KEY, OPS_KEY, ORG_TOKEN};

const PARTNER_TOKEN: &str = "partner-secret-token-2f8a";
const PARTNER_KEY: &str = "partner-caller-key-93b0";

fn assert_no_secret(text: &str, place: &str) {
    for secret in [ORG_TOKEN, BILLING_KEY, OPS_KEY, PARTNER_TOKEN, PARTNER_KEY] {
        assert!(!text.contains(secret), "{place} contains a secret: {text}");
    }
}

#[tokio::test]
async fn no_secret_in_any_response_or_log_line() {
    let logs = captured();
    let upstream = support::FakeUpstream::start().await;
    let mut config = support::config(&upstream.base_url());
    let partner = support::config_with(
        &upstream.base_url(),
        &format!(
            r#"
            [[upstreams]]
            name = "partner"
            token = "{PARTNER_TOKEN}"
            [[callers]]
            name = "partner-dashboard"
            key = "{PARTNER_KEY}"
            upstream = "partner"
            "#
        ),
    );
    config.profiles = partner.profiles;
    config.callers.extend(partner.callers);
    let gateway = support::Gateway::start(config).await;
    let auth = format!("Bearer {BILLING_KEY}");
    let mut answers = Vec::new();

    // Success, miss then hit, with each profile.
    answers.push(get(&gateway, "/usage").await);
    answers.push(get(&gateway, "/usage").await);
    answers.push(get_as(&gateway, PARTNER_KEY, "/usage").await);
    answers.push(get_as(&gateway, PARTNER_KEY, "/usage").await);
    // Every kind of refusal and failure.
    answers.push(
        send(
            &gateway,
            "GET",
            "/usage",
            &[("authorization", "Bearer wrong")],
        )
        .await,
    );
    answers.push(
        send(
            &gateway,
            "GET",
            "/usage",
            &[("x-api-key", OPS_KEY), ("authorization", &auth)],
        )
        .await,
    );
    answers.push(send(&gateway, "POST", "/usage", &[("authorization", &auth)]).await);
    answers.push(get(&gateway, "/usage?filter=time:nope").await);
    for status in [401, 429, 500] {
        upstream.script(move |_, _| Reply::json(status, "{}"));
        answers.push(get(&gateway, &format!("/usage?limit={status}")).await);
        answers.push(get_as(&gateway, PARTNER_KEY, &format!("/usage?limit={status}")).await);
    }
    // The upstream echoing the credentials it received back in its body and headers must
    // not matter either: 4xx bodies pass through, so the gateway must never have sent them.
    upstream.script(|request, _| {
        let received = request.headers["authorization"]
            .to_str()
            .unwrap_or_default();
        Reply::json(
            404,
            format!(r#"{{"error":"sim_not_found","len":{}}}"#, received.len()),
        )
    });
    answers.push(get(&gateway, "/usage/000000001").await);
    gateway.stop().await;

    for answer in &answers {
        assert_no_secret(&answer.body, "a response body");
        for (name, value) in &answer.headers {
            assert_no_secret(value.to_str().unwrap_or_default(), name.as_str());
        }
    }
    let logs = logs.text();
    assert_no_secret(&logs, "the log");
    // Every line is JSON, and the access lines carry their fields.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).expect("every log line is JSON"))
        .collect();
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["message"] == "request")
        .collect();
    assert_eq!(access.len(), answers.len(), "one access line per request");
    let hit = access
        .iter()
        .find(|line| line["caller"] == "billing" && line["cache"] == "hit")
        .expect("the billing hit was logged");
    for field in [
        "request_id",
        "method",
        "route",
        "status",
        "cache",
        "duration_ms",
    ] {
        assert!(!hit[field].is_null(), "{field} missing in {hit}");
    }
    assert!(hit["span"]["request_id"].is_string(), "{hit}");
    let miss = access
        .iter()
        .find(|line| line["caller"] == "billing" && line["cache"] == "miss")
        .expect("the billing miss was logged");
    assert!(miss["upstream_ms"].is_u64(), "{miss}");
}
