//! Per-caller scopes: which endpoints, SIMs and tags a caller may ask about. Refusals are 403,
//! cost no upstream call and do not reveal whether a SIM or tag exists.

mod support;

use support::{config_with, get_as, FakeUpstream, Gateway};

const TAG_A: &str = "5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90";
const TAG_B: &str = "00000000-0000-4000-8000-000000000000";

const CALLERS: &str = r#"
[[callers]]
name = "support"
key = "support-key"
routes = ["usage_by_sim"]

[[callers]]
name = "customer-tool"
key = "customer-key"
sims = ["000000001", "000000002"]

[[callers]]
name = "partner"
key = "partner-key"
routes = ["tag_total"]
tags = ["5F0C7A2E-9B1D-4C3E-8A55-0D2F6B7E1C90"]

[[callers]]
name = "tag-reader"
key = "tag-reader-key"
tags = ["5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90"]

[[callers]]
name = "billing"
key = "billing-key"
"#;

async fn start() -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(config_with(&upstream.base_url(), CALLERS)).await;
    (upstream, gateway)
}

async fn assert_forbidden(gateway: &Gateway, key: &str, target: &str, naming: &str) {
    let answer = get_as(gateway, key, target).await;
    assert_eq!(answer.status, 403, "{target}: {}", answer.body);
    assert_eq!(answer.json()["error"], "forbidden");
    let message = answer.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains(naming), "{target}: {message}");
}

#[tokio::test]
async fn a_route_scope_allows_only_its_endpoints() {
    let (upstream, gateway) = start().await;
    assert_eq!(
        get_as(&gateway, "support-key", "/usage/000000042")
            .await
            .status,
        200
    );
    assert_forbidden(&gateway, "support-key", "/usage", "usage endpoint").await;
    assert_forbidden(
        &gateway,
        "support-key",
        &format!("/usage/tag-total/{TAG_A}"),
        "tag_total",
    )
    .await;
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_sim_scope_covers_the_sim_route() {
    let (upstream, gateway) = start().await;
    assert_eq!(
        get_as(&gateway, "customer-key", "/usage/000000002")
            .await
            .status,
        200
    );
    assert_forbidden(&gateway, "customer-key", "/usage/000000003", "000000003").await;
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_sim_scope_covers_usage_filters_and_refuses_unfiltered_usage() {
    let (upstream, gateway) = start().await;
    let allowed = "/usage?filter[]=sim_id:000000001&filter[]=sim_id:000000002&filter[]=time:2024";
    assert_eq!(get_as(&gateway, "customer-key", allowed).await.status, 200);
    assert_forbidden(
        &gateway,
        "customer-key",
        "/usage?filter[]=sim_id:000000001&filter[]=sim_id:000000009",
        "000000009",
    )
    .await;
    assert_forbidden(&gateway, "customer-key", "/usage", "sim_id filters").await;
    assert_forbidden(
        &gateway,
        "customer-key",
        "/usage?filter=country_code:dk",
        "sim_id filters",
    )
    .await;
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_tag_scope_allows_only_its_tags() {
    let (upstream, gateway) = start().await;
    assert_eq!(
        get_as(
            &gateway,
            "partner-key",
            &format!("/usage/tag-total/{TAG_A}")
        )
        .await
        .status,
        200
    );
    assert_forbidden(
        &gateway,
        "partner-key",
        &format!("/usage/tag-total/{TAG_B}"),
        TAG_B,
    )
    .await;
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn refusals_do_not_reveal_whether_a_sim_exists() {
    let (upstream, gateway) = start().await;
    // One SIM the upstream knows, one it does not: the same refusal for both.
    upstream.script(|request, n| {
        if request.target.starts_with("/usage/000000404") {
            support::Reply::json(404, r#"{"error":"sim_not_found"}"#)
        } else {
            support::echo(request, n)
        }
    });
    let known = get_as(&gateway, "customer-key", "/usage/000000007").await;
    let unknown = get_as(&gateway, "customer-key", "/usage/000000404").await;
    assert_eq!(
        (known.status, unknown.status),
        (http::StatusCode::FORBIDDEN, http::StatusCode::FORBIDDEN)
    );
    assert_eq!(
        known.body.replace("000000007", "SIM"),
        unknown.body.replace("000000404", "SIM")
    );
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn allowed_answers_still_come_from_the_shared_cache() {
    let (upstream, gateway) = start().await;
    assert_eq!(
        get_as(&gateway, "billing-key", "/usage/000000001")
            .await
            .status,
        200
    );
    let scoped = get_as(&gateway, "customer-key", "/usage/000000001").await;
    assert!(
        scoped.cache_status().contains("hit"),
        "{}",
        scoped.cache_status()
    );
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_sim_scope_refuses_tag_totals_it_cannot_check() {
    let (upstream, gateway) = start().await;
    assert_forbidden(
        &gateway,
        "customer-key",
        &format!("/usage/tag-total/{TAG_A}"),
        "limited to SIMs",
    )
    .await;
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn a_tag_scope_refuses_per_sim_usage_it_cannot_check() {
    let (upstream, gateway) = start().await;
    for target in [
        "/usage",
        "/usage?filter=sim_id:000000001",
        "/usage/000000001",
    ] {
        assert_forbidden(&gateway, "tag-reader-key", target, "limited to tags").await;
    }
    let allowed = get_as(
        &gateway,
        "tag-reader-key",
        &format!("/usage/tag-total/{TAG_A}"),
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(upstream.calls(), 1);
}
