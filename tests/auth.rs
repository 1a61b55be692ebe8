//! Who may call: each credential form, each rejection, and the caller's key never upstream.

mod support;

use support::{send, start, BILLING_KEY, OPS_KEY, ORG_TOKEN};

#[tokio::test]
async fn bearer_key_is_accepted() {
    let (upstream, gateway) = start().await;
    let auth = format!("Bearer {BILLING_KEY}");
    let answer = send(&gateway, "GET", "/usage", &[("authorization", &auth)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn raw_authorization_key_is_accepted() {
    let (_upstream, gateway) = start().await;
    let answer = send(&gateway, "GET", "/usage", &[("authorization", OPS_KEY)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn x_api_key_is_accepted() {
    let (_upstream, gateway) = start().await;
    let answer = send(&gateway, "GET", "/usage", &[("x-api-key", BILLING_KEY)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn missing_key_is_401_with_a_challenge() {
    let (upstream, gateway) = start().await;
    let answer = send(&gateway, "GET", "/usage", &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.json()["error"], "unauthorized");
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn unknown_key_is_401_and_never_reaches_the_upstream() {
    let (upstream, gateway) = start().await;
    for headers in [
        [("authorization", "Bearer not-a-key")],
        [("authorization", ORG_TOKEN)],
        [("x-api-key", "billing-key")],
    ] {
        let answer = send(&gateway, "GET", "/usage", &headers).await;
        assert_eq!(answer.status, 401, "{headers:?}");
        assert_eq!(answer.json()["error"], "unauthorized");
    }
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn conflicting_keys_in_two_headers_are_refused() {
    let (upstream, gateway) = start().await;
    let answer = send(
        &gateway,
        "GET",
        "/usage",
        &[("x-api-key", BILLING_KEY), ("authorization", OPS_KEY)],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn upstream_gets_the_org_token_and_never_the_callers_credentials() {
    let (upstream, gateway) = start().await;
    let auth = format!("Bearer {BILLING_KEY}");
    let answer = send(
        &gateway,
        "GET",
        "/usage",
        &[
            ("authorization", &auth),
            ("x-api-key", BILLING_KEY),
            ("cookie", "session=caller-cookie"),
            ("proxy-authorization", "Basic abc"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "hop"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let headers = &requests[0].headers;
    assert_eq!(headers["authorization"], ORG_TOKEN);
    for name in [
        "x-api-key",
        "cookie",
        "proxy-authorization",
        "x-forwarded-for",
        "x-custom",
    ] {
        assert!(headers.get(name).is_none(), "{name} was forwarded");
    }
    for value in headers.values() {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains(BILLING_KEY),
            "caller key forwarded: {value}"
        );
    }
}

#[tokio::test]
async fn bearer_scheme_sends_the_token_as_bearer() {
    let upstream = support::FakeUpstream::start().await;
    let mut config = support::config(&upstream.base_url());
    config.upstream.auth_scheme = usage_gateway::config::AuthScheme::Bearer;
    let gateway = support::Gateway::start(config).await;
    let answer = support::get(&gateway, "/usage").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        upstream.requests()[0].headers["authorization"],
        format!("Bearer {ORG_TOKEN}")
    );
}
