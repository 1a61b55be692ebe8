//! What is not a usage question is answered by the gateway alone: 404, 405 and 400, as JSON.

mod support;

use support::{get, send, start, BILLING_KEY};

#[tokio::test]
async fn other_methods_are_405_with_allow_get() {
    let (upstream, gateway) = start().await;
    let auth = format!("Bearer {BILLING_KEY}");
    for (method, target) in [
        ("POST", "/usage"),
        ("PUT", "/usage/000000001"),
        (
            "DELETE",
            "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90",
        ),
        ("PATCH", "/usage"),
        ("HEAD", "/usage"),
    ] {
        let answer = send(&gateway, method, target, &[("authorization", &auth)]).await;
        assert_eq!(answer.status, 405, "{method} {target}");
        assert_eq!(answer.header("allow"), Some("GET"));
        if method != "HEAD" {
            assert_eq!(answer.json()["error"], "method_not_allowed");
        }
    }
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn other_paths_are_404() {
    let (upstream, gateway) = start().await;
    for target in [
        "/",
        "/sims",
        "/usage/",
        "/usage/tag-total",
        "/usages",
        "/usage/000000001/x",
    ] {
        let answer = get(&gateway, target).await;
        assert_eq!(answer.status, 404, "{target}");
        assert_eq!(answer.json()["error"], "not_found");
        assert_eq!(answer.header("content-type"), Some("application/json"));
    }
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn bad_input_is_400_naming_the_parameter_and_never_reaches_the_upstream() {
    let (upstream, gateway) = start().await;
    // (request, error code, a word the message must contain)
    let rows = [
        ("/usage?limit=0", "limit_invalid", "limit"),
        ("/usage?offset=x", "offset_invalid", "offset"),
        ("/usage?group=days", "group_invalid", "hours"),
        (
            "/usage?filter=time:2024-02-30",
            "filter_invalid",
            "YYYY-MM-DD",
        ),
        ("/usage?filter=colour:red", "filter_invalid", "country_code"),
        ("/usage?next_page=%25%25", "next_page_invalid", "next_page"),
        ("/usage?api_key=x", "parameter_invalid", "api_key"),
        ("/usage?filter=time:%ff", "parameter_invalid", "UTF-8"),
        ("/usage/123", "sim_id_invalid", "9 digits"),
        ("/usage/123", "sim_id_invalid", "ICCID"),
        ("/usage/tag-total/xyz", "tag_id_invalid", "UUID"),
        (
            "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90?filter=sim_id:000000001",
            "filter_invalid",
            "sim_id",
        ),
    ];
    for (target, code, word) in rows {
        let answer = get(&gateway, target).await;
        assert_eq!(answer.status, 400, "{target}");
        let body = answer.json();
        assert_eq!(body["error"], code, "{target}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains(word), "{target}: {message}");
    }
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn bad_input_leaves_the_cache_untouched() {
    let (upstream, gateway) = start().await;
    assert_eq!(get(&gateway, "/usage?limit=5&limit=6").await.status, 400);
    // The same question asked properly is a miss, then a hit: the refusal stored nothing.
    let first = get(&gateway, "/usage?limit=5").await;
    assert_eq!(first.cache_status(), "usage-gateway; fwd=miss; stored");
    let second = get(&gateway, "/usage?limit=5").await;
    assert!(second.cache_status().contains("hit"));
    assert_eq!(upstream.calls(), 1);
}
