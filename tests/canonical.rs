//! Every spelling of one question is one upstream request; different questions are not.

mod support;

use support::{get, start};

#[tokio::test]
async fn equivalent_spellings_make_one_upstream_call() {
    let (upstream, gateway) = start().await;
    let spellings = [
        "/usage?filter[]=time:2024-03&filter[]=country_code:dk&limit=10",
        "/usage?filter=country_code:DK&filter=time:2024-03&limit=10",
        "/usage?limit=010&filter%5B%5D=TIME%3A2024-03&filter%5B%5D=country_code%3Adk",
        "/usage?filter[0]=+time+:+2024-03+&filter[1]=Country_Code:dk&filter[2]=country_code:dk&limit=10",
    ];
    let mut bodies = Vec::new();
    for spelling in spellings {
        let answer = get(&gateway, spelling).await;
        assert_eq!(answer.status, 200, "{spelling}: {}", answer.body);
        bodies.push(answer.body);
    }
    assert_eq!(upstream.calls(), 1);
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(
        upstream.requests()[0].target,
        "/usage?filter[]=country_code:dk&filter[]=time:2024-03&limit=10"
    );
}

#[tokio::test]
async fn upstream_requests_are_byte_identical_for_equivalent_queries() {
    // Two gateways (so two caches) asked the same question in different spellings.
    let (upstream_a, gateway_a) = start().await;
    let (upstream_b, gateway_b) = start().await;
    get(&gateway_a, "/usage/000000007?group=hours&filter=time:2024").await;
    get(
        &gateway_b,
        "/usage/000000007?filter[]=TIME:2024&group=hours&limit=1000",
    )
    .await;
    assert_eq!(
        upstream_a.requests()[0].target,
        upstream_b.requests()[0].target
    );
    assert_eq!(
        upstream_a.requests()[0].target,
        "/usage/000000007?filter=time:2024&group=hours&limit=1000"
    );
}

#[tokio::test]
async fn different_questions_make_separate_calls_with_their_own_answers() {
    let (upstream, gateway) = start().await;
    let questions = [
        "/usage?filter=country_code:dk",
        "/usage?filter=country_code:de",
        "/usage?filter=country_code:dk&limit=5",
        "/usage/000000001",
        "/usage/000000002",
        "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90",
    ];
    for question in questions {
        let answer = get(&gateway, question).await;
        assert_eq!(answer.status, 200);
        let expected_target = usage_gateway::query::UsageQuery::parse(
            question.split('?').next().unwrap_or(question),
            question.split_once('?').map(|(_, q)| q),
        )
        .expect("valid")
        .expect("route")
        .canonical()
        .to_owned();
        assert_eq!(answer.json()["target"], expected_target, "{question}");
    }
    assert_eq!(upstream.calls(), questions.len());
}

#[tokio::test]
async fn cursors_are_forwarded_exactly_and_percent_encoded() {
    let (upstream, gateway) = start().await;
    let answer = get(&gateway, "/usage?next_page=YWJj%2BZC8%3D&limit=50").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        upstream.requests()[0].target,
        "/usage?limit=50&next_page=YWJj%2BZC8%3D"
    );
}

#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    let upstream = support::FakeUpstream::start().await;
    let gateway =
        support::Gateway::start(support::config(&format!("{}/api/v2/", upstream.base_url()))).await;
    assert_eq!(get(&gateway, "/usage?limit=3").await.status, 200);
    assert_eq!(upstream.requests()[0].target, "/api/v2/usage?limit=3");
}
