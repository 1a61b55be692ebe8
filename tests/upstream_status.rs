//! How each upstream outcome reaches the caller, and that none of the failures is cached.

mod support;

use std::time::Duration;

use support::{get, start, Reply};

#[tokio::test]
async fn ok_is_served_and_cached() {
    let (upstream, gateway) = start().await;
    assert_eq!(get(&gateway, "/usage").await.status, 200);
    assert_eq!(get(&gateway, "/usage").await.status, 200);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn bad_request_passes_through_with_the_upstream_body_and_is_not_cached() {
    let (upstream, gateway) = start().await;
    upstream.script(|_, _| Reply::json(400, r#"{"error":"next_page_invalid"}"#));
    for _ in 0..2 {
        let answer = get(&gateway, "/usage?next_page=AAAA").await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.body, r#"{"error":"next_page_invalid"}"#);
        assert_eq!(
            answer.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn not_found_passes_through_and_is_not_cached() {
    let (upstream, gateway) = start().await;
    upstream.script(|_, _| Reply::json(404, r#"{"error":"sim_not_found"}"#));
    for _ in 0..2 {
        let answer = get(&gateway, "/usage/000000999").await;
        assert_eq!(answer.status, 404);
        assert_eq!(answer.json()["error"], "sim_not_found");
    }
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn refused_org_token_is_502_upstream_auth_failed() {
    let (upstream, gateway) = start().await;
    for status in [401, 403] {
        upstream.script(move |_, _| Reply::json(status, r#"{"error":"unauthorized"}"#));
        let answer = get(&gateway, &format!("/usage?limit={status}")).await;
        assert_eq!(answer.status, 502, "upstream {status}");
        assert_eq!(answer.json()["error"], "upstream_auth_failed");
    }
}

#[tokio::test]
async fn upstream_429_is_429_with_retry_after() {
    let (upstream, gateway) = start().await;
    upstream.script(|_, _| {
        Reply::json(429, r#"{"error":"rate_limit_exceeded"}"#).header("retry-after", "17")
    });
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("17"));
    assert_eq!(answer.json()["error"], "rate_limit_exceeded");
    assert_eq!(answer.json()["limit"], "upstream");
    assert_eq!(upstream.calls(), 1, "a 429 is never retried");
}

/// A gateway whose every upstream failure reaches the caller as it is: no retries, no breaker.
async fn start_plain() -> (support::FakeUpstream, support::Gateway) {
    let upstream = support::FakeUpstream::start().await;
    let mut config = support::config(&upstream.base_url());
    config.upstream.retries = 0;
    config.upstream.breaker_failures = 1000;
    let gateway = support::Gateway::start(config).await;
    (upstream, gateway)
}

#[tokio::test]
async fn upstream_5xx_is_502_and_not_cached() {
    let (upstream, gateway) = start_plain().await;
    for status in [500, 502, 503, 504] {
        upstream.script(move |_, _| Reply::json(status, r#"{"error":"internal_error"}"#));
        let answer = get(&gateway, "/usage").await;
        assert_eq!(answer.status, 502, "upstream {status}");
        assert_eq!(answer.json()["error"], "upstream_error");
    }
    assert_eq!(upstream.calls(), 4);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let upstream = support::FakeUpstream::start().await;
    let mut config = support::config(&upstream.base_url());
    config.upstream.timeout = Duration::from_millis(200);
    let gateway = support::Gateway::start(config).await;
    let _gate = upstream.hold(); // never released: the upstream never answers
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.status, 504);
    assert_eq!(answer.json()["error"], "upstream_timeout");
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let gateway = support::Gateway::start(support::config(&format!("http://{addr}"))).await;
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"], "upstream_unavailable");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (upstream, gateway) = start().await;
    upstream.script(|_, _| Reply::json(302, "").header("location", "http://127.0.0.1:1/elsewhere"));
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.json()["error"], "upstream_invalid_response");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn upstream_cookies_and_hop_headers_never_reach_the_caller() {
    let (upstream, gateway) = start().await;
    upstream.script(|request, n| {
        support::echo(request, n)
            .header("set-cookie", "upstream-session=1")
            .header("x-ratelimit-limit", "99999")
            .header("x-ratelimit-remaining", "12345")
            .header("server", "upstream")
    });
    let answer = get(&gateway, "/usage").await;
    assert_eq!(answer.status, 200);
    for name in ["set-cookie", "server"] {
        assert!(answer.header(name).is_none(), "{name} reached the caller");
    }
    // The rate-limit headers a caller sees are the gateway's own account, not the upstream's.
    assert_eq!(answer.header("x-ratelimit-limit"), Some("600"));
    assert_eq!(answer.header("x-ratelimit-remaining"), Some("599"));
}

#[tokio::test]
async fn a_json_answer_is_served_as_json_whatever_the_upstream_labelled_it() {
    let (upstream, gateway) = start().await;
    upstream.script(|request, _| {
        let mut reply = Reply::json(200, r#"{"usage":[]}"#);
        reply.headers = match request.target.as_str() {
            "/usage?limit=1" => vec![("content-type", "text/html".into())],
            "/usage?limit=2" => vec![],
            _ => vec![("content-type", "application/json; charset=utf-8".into())],
        };
        reply
    });
    // (target, Content-Type served on the miss and on the hit)
    let rows = [
        ("/usage?limit=1", "application/json"),
        ("/usage?limit=2", "application/json"),
        ("/usage?limit=3", "application/json; charset=utf-8"),
    ];
    for (target, content_type) in rows {
        for _miss_then_hit in 0..2 {
            let answer = get(&gateway, target).await;
            assert_eq!(answer.status, 200);
            assert_eq!(
                answer.header("content-type"),
                Some(content_type),
                "{target}"
            );
        }
    }
    assert_eq!(upstream.calls(), 3);
}
