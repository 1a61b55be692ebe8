//! Upstream credential profiles: each caller's misses go upstream with its profile's token,
//! answers fetched with one token are never served to callers of another, and each profile
//! has its own budget.

mod support;

use support::{config_with, get_as, FakeUpstream, Gateway, Reply, ORG_TOKEN};

const PARTNER_TOKEN: &str = "partner-org-token-4e1d";

fn callers(partner_budget: u32) -> String {
    format!(
        r#"
        [[upstreams]]
        name = "partner"
        token = "{PARTNER_TOKEN}"
        auth_scheme = "bearer"
        rate_limit_per_minute = {partner_budget}

        [[callers]]
        name = "billing"
        key = "billing-key"

        [[callers]]
        name = "partner-dashboard"
        key = "partner-key"
        upstream = "partner"
        "#
    )
}

/// An upstream whose answer says which organization's token asked.
async fn start(partner_budget: u32) -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    upstream.script(|request, n| {
        let token = request.headers["authorization"]
            .to_str()
            .unwrap_or_default();
        let organization = if token == ORG_TOKEN {
            "own"
        } else if token == format!("Bearer {PARTNER_TOKEN}") {
            "partner"
        } else {
            "unknown"
        };
        Reply::json(
            200,
            format!(r#"{{"usage":[],"organization":"{organization}","call":{n}}}"#),
        )
    });
    let gateway = Gateway::start(config_with(&upstream.base_url(), &callers(partner_budget))).await;
    (upstream, gateway)
}

#[tokio::test]
async fn each_profile_sends_its_own_token_in_its_own_scheme() {
    let (upstream, gateway) = start(600).await;
    assert_eq!(
        get_as(&gateway, "billing-key", "/usage").await.json()["organization"],
        "own"
    );
    assert_eq!(
        get_as(&gateway, "partner-key", "/usage").await.json()["organization"],
        "partner"
    );
    let tokens: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| {
            r.headers["authorization"]
                .to_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        tokens,
        [ORG_TOKEN.to_owned(), format!("Bearer {PARTNER_TOKEN}")]
    );
}

#[tokio::test]
async fn profiles_never_share_cache_entries() {
    let (upstream, gateway) = start(600).await;
    for _ in 0..3 {
        let own = get_as(&gateway, "billing-key", "/usage?limit=5").await;
        let partner = get_as(&gateway, "partner-key", "/usage?limit=5").await;
        assert_eq!(own.json()["organization"], "own");
        assert_eq!(partner.json()["organization"], "partner");
    }
    // One fetch per profile; every repeat was a hit on that profile's own entry.
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn each_profile_has_its_own_budget() {
    let (upstream, gateway) = start(1).await;
    assert_eq!(
        get_as(&gateway, "partner-key", "/usage?limit=1")
            .await
            .status,
        200
    );
    let spent = get_as(&gateway, "partner-key", "/usage?limit=2").await;
    assert_eq!(spent.status, 429);
    assert_eq!(spent.json()["error"], "rate_limit_exceeded");
    assert_eq!(spent.json()["limit"], "upstream_budget");
    // The default profile's budget is untouched.
    assert_eq!(
        get_as(&gateway, "billing-key", "/usage?limit=2")
            .await
            .status,
        200
    );
    assert_eq!(upstream.calls(), 2);
}
