//! The gateway in front of `usage-sim`, the simulator of the real API: the whole path with real
//! data, real cursors and the upstream's own key check and rate limit.

mod support;

use usage_sim::SimOptions;

use support::sim::{sim_json, small, start_sim, Sim};
use support::{get, Gateway};

async fn gateway_for(sim: &Sim) -> Gateway {
    Gateway::start(support::config(&format!("http://{}", sim.addr))).await
}

#[tokio::test]
async fn the_gateway_sends_the_raw_org_token_the_api_documents() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim).await;
    let answer = get(&gateway, "/usage?limit=3").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["usage"].as_array().map(Vec::len), Some(3));
    let stats = sim_json(&sim, "/__sim/stats").await;
    assert_eq!(stats["by_auth_form"]["raw"], 1, "{stats}");
}

#[tokio::test]
async fn walking_pages_through_the_gateway_yields_every_record_once() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim).await;
    let whole = get(&gateway, "/usage?filter=country_code:DK&limit=1000")
        .await
        .json();
    let expected = whole["usage"].as_array().cloned().unwrap_or_default();
    assert!(expected.len() > 40, "enough records to page through");

    let mut walked = Vec::new();
    let mut target = "/usage?filter[]=country_code:dk&limit=17".to_owned();
    for _ in 0..100 {
        let page = get(&gateway, &target).await;
        assert_eq!(page.status, 200, "{target}: {}", page.body);
        let page = page.json();
        walked.extend(page["usage"].as_array().cloned().unwrap_or_default());
        match page["pagination"]["next_page"].as_str() {
            Some(cursor) => {
                let cursor = percent_encoding::utf8_percent_encode(
                    cursor,
                    percent_encoding::NON_ALPHANUMERIC,
                );
                target = format!("/usage?filter=country_code:dk&limit=17&next_page={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(walked, expected);
}

#[tokio::test]
async fn opaque_cursors_with_base64_punctuation_survive_the_gateway() {
    let sim = start_sim(SimOptions {
        cursor_mode: usage_sim::CursorMode::Opaque,
        ..small()
    })
    .await;
    let gateway = gateway_for(&sim).await;
    let first = get(&gateway, "/usage?limit=5").await.json();
    let cursor = first["pagination"]["next_page"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let encoded =
        percent_encoding::utf8_percent_encode(&cursor, percent_encoding::NON_ALPHANUMERIC);
    let second = get(&gateway, &format!("/usage?limit=5&next_page={encoded}")).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let (first, second) = (&first["usage"], &second.json()["usage"]);
    assert_eq!(second.as_array().map(Vec::len), Some(5));
    assert_ne!(first, second, "the cursor moved the page on");
}

#[tokio::test]
async fn the_upstreams_own_refusals_pass_through() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim).await;
    let answer = get(&gateway, "/usage/000000999").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"], "sim_not_found");
    let tag = "00000000-0000-4000-8000-000000000000";
    let answer = get(&gateway, &format!("/usage/tag-total/{tag}")).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"], "tag_not_found");
}

#[tokio::test]
async fn tag_totals_are_served_and_cached() {
    let sim = start_sim(small()).await;
    let gateway = gateway_for(&sim).await;
    let tag = sim.sim.tag_ids().into_iter().next().expect("a tag");
    let first = get(
        &gateway,
        &format!("/usage/tag-total/{}", tag.to_uppercase()),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = get(&gateway, &format!("/usage/tag-total/{tag}")).await;
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(first.body, second.body);
    let stats = sim_json(&sim, "/__sim/stats").await;
    assert_eq!(stats["by_endpoint"]["tag_total"], 1, "{stats}");
}

#[tokio::test]
async fn an_upstream_429_reaches_the_caller_as_a_429_with_retry_after() {
    let sim = start_sim(SimOptions {
        rate_limit: 2,
        ..small()
    })
    .await;
    let gateway = gateway_for(&sim).await;
    assert_eq!(get(&gateway, "/usage?limit=1").await.status, 200);
    assert_eq!(get(&gateway, "/usage?limit=2").await.status, 200);
    let limited = get(&gateway, "/usage?limit=3").await;
    // The simulator's clock stands in 2024, so its x-ratelimit-reset is long past for the
    // gateway, which therefore tries a third call and meets the upstream's own 429.
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"], "rate_limit_exceeded");
    assert_eq!(limited.json()["limit"], "upstream");
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // What was cached before the limit is still served without the upstream.
    assert_eq!(get(&gateway, "/usage?limit=1").await.status, 200);
}
