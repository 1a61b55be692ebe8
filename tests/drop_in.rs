//! Drop-in for real Onomondo clients: what a client does against the API it can do against
//! the gateway, changing only the base URL and the key, and it gets the same records. Each test
//! asks `usage-sim` (shaped like the real API, upstream-api.md §4.3) both directly and through
//! the gateway on loopback, and compares.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use time::OffsetDateTime;
use usage_sim::{RateAlign, SimOptions};

use support::raw::{url_search_params, RawAnswer, RawClient};
use support::sim::{sim_json, small, start_sim, Sim};
use support::{config_with, epoch_secs, get_as, Gateway, ORG_TOKEN};

const KEY: &str = "dashboard-key-5d1e";
const ONE_SIM_KEY: &str = "one-sim-key-0b7c";
const METERED_KEY: &str = "metered-key-9f02";

/// The gateway in front of `sim`: a plain caller, one scoped to `one_sim` (a SIM id or ICCID),
/// one with a quota of one upstream call a minute; `extra` adds settings.
async fn gateway(sim: &Sim, one_sim: &str, extra: &str) -> Gateway {
    Gateway::start(config_with(
        &sim.base_url(),
        &format!(
            r#"
            {extra}
            [[callers]]
            name = "dashboard"
            key = "{KEY}"
            [[callers]]
            name = "one-sim"
            key = "{ONE_SIM_KEY}"
            sims = ["{one_sim}"]
            [[callers]]
            name = "metered"
            key = "{METERED_KEY}"
            upstream_per_minute = 1
            "#
        ),
    ))
    .await
}

/// API calls the simulator has answered so far.
async fn sim_calls(sim: &Sim) -> u64 {
    let stats = sim_json(sim, "/__sim/stats").await;
    ["usage", "usage_by_sim", "tag_total"]
        .iter()
        .map(|e| stats["by_endpoint"][e].as_u64().unwrap_or(0))
        .sum()
}

/// The same request, directly to the simulator (with the org token) and through the gateway
/// (with `key`): the two bodies.
async fn both(sim: &Sim, gateway: &Gateway, key: &str, target: &str) -> (Vec<u8>, Vec<u8>) {
    let mut direct = RawClient::connect(sim.addr).await;
    let mut through = RawClient::connect(gateway.addr).await;
    let d = direct.get(target, &[("authorization", ORG_TOKEN)]).await;
    let t = through.get(target, &[("authorization", key)]).await;
    assert_eq!(
        d.status,
        200,
        "direct {target}: {}",
        String::from_utf8_lossy(&d.body)
    );
    assert_eq!(
        t.status,
        200,
        "gateway {target}: {}",
        String::from_utf8_lossy(&t.body)
    );
    (d.body, t.body)
}

// === 8. replaying a real client ===

/// A data set around today, so that `filter=time:<today>` (what the integration asks when
/// given no date) finds usage: yesterday and today, spanning several 1000-record pages.
fn around_today() -> (SimOptions, String) {
    let now = OffsetDateTime::now_utc();
    let midnight = now.replace_time(time::Time::MIDNIGHT);
    let start = midnight - time::Duration::days(1);
    let day = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let options = SimOptions {
        start,
        hours: 48,
        sims: 200,
        tags: 4,
        live_clock: true,
        ..SimOptions::default()
    };
    (options, day)
}

/// The headers Node's `fetch` (undici) sends for `fetch(url, {headers: {authorization}})`,
/// in its order; `host` goes first.
fn node_headers(key: &str) -> [(&str, &str); 7] {
    [
        ("connection", "keep-alive"),
        ("authorization", key),
        ("accept", "*/*"),
        ("accept-language", "*"),
        ("sec-fetch-mode", "cors"),
        ("user-agent", "node"),
        ("accept-encoding", "gzip, deflate"),
    ]
}

/// `fetchAllPaginatedData` of bifravst/sim-details (`lambda/onomondo/getAllUsedSimsOnomondo.ts`):
/// `usage[/iccid]?filter=time:<day>`, then `usage[/iccid]?next_page=<cursor>&filter=...` while
/// `pagination.has_more` (its later pages use today's date; so does this replay).
async fn fetch_all_paginated(
    client: &mut RawClient,
    key: &str,
    iccid: Option<&str>,
    day: &str,
) -> Vec<RawAnswer> {
    let path = match iccid {
        Some(iccid) => format!("/usage/{iccid}"),
        None => "/usage".to_owned(),
    };
    let filter = format!("time:{day}");
    let mut query = url_search_params(&[("filter", &filter)]);
    let mut answers = Vec::new();
    for _ in 0..100 {
        let answer = client
            .get(&format!("{path}?{query}"), &node_headers(key))
            .await;
        assert_eq!(
            answer.status,
            200,
            "{path}?{query}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let page = answer.json();
        answers.push(answer);
        if page["pagination"]["has_more"] != true {
            return answers;
        }
        let cursor = page["pagination"]["next_page"]
            .as_str()
            .expect("a page with more has a next_page")
            .to_owned();
        query = url_search_params(&[("next_page", &cursor), ("filter", &filter)]);
    }
    panic!("{path}: the walk did not end");
}

/// The integration's whole run: every SIM used today, then each SIM's usage by ICCID.
async fn replay_sim_details(addr: std::net::SocketAddr, key: &str, day: &str) -> Vec<RawAnswer> {
    let mut client = RawClient::connect(addr).await;
    let mut answers = fetch_all_paginated(&mut client, key, None, day).await;
    let mut iccids: Vec<String> = Vec::new();
    for answer in &answers {
        for record in answer.json()["usage"].as_array().expect("usage") {
            let iccid = record["iccid"].as_str().expect("iccid").to_owned();
            if !iccids.contains(&iccid) {
                iccids.push(iccid);
            }
        }
    }
    for iccid in &iccids {
        answers.extend(fetch_all_paginated(&mut client, key, Some(iccid), day).await);
    }
    answers
}

#[tokio::test]
async fn the_node_integration_reads_the_same_records_through_the_gateway_as_directly() {
    let (options, day) = around_today();
    let sim = start_sim(options).await;
    let gateway = gateway(&sim, "000000001", "").await;

    let direct = replay_sim_details(sim.addr, ORG_TOKEN, &day).await;
    let through = replay_sim_details(gateway.addr, KEY, &day).await;
    let first_walk = direct
        .iter()
        .take_while(|a| a.json()["pagination"]["has_more"] == true)
        .count()
        + 1;
    assert!(first_walk >= 3, "the day spans {first_walk} pages");
    assert!(direct.len() > 100, "{} answers", direct.len());
    assert_eq!(through.len(), direct.len());
    for (d, t) in direct.iter().zip(&through) {
        assert_eq!(
            t.content(),
            d.content(),
            "the gateway's answer is the upstream's, byte for byte"
        );
        // Node's fetch asks for gzip (and decodes it for its caller).
        assert_eq!(t.header("content-encoding"), Some("gzip"));
        assert!(t.header("cache-status").is_some());
        assert!(t.header("x-ratelimit-remaining").is_some());
    }
    // Every record has the fields the integration validates, and the last page of each walk
    // has no next_page at all.
    let last = direct.last().expect("answers").json();
    assert_eq!(last["pagination"], json!({"has_more": false}));
    let record = &direct[0].json()["usage"][0];
    for field in ["iccid", "time", "bytes", "bill_id"] {
        assert!(!record[field].is_null(), "{field} in {record}");
    }

    // Run again through the gateway: every answer from memory, not one more upstream call.
    let calls = sim_calls(&sim).await;
    let again = replay_sim_details(gateway.addr, KEY, &day).await;
    assert_eq!(again.len(), through.len());
    assert!(again
        .iter()
        .all(|a| a.header("cache-status").is_some_and(|s| s.contains("hit"))));
    assert_eq!(sim_calls(&sim).await, calls);
    gateway.stop().await;
}

/// The headers Postman sends for a request of the published collection (`Authorization` from
/// its apikey auth, `Accept` from the request, the rest Postman's own).
fn postman_headers(key: &str) -> [(&str, &str); 7] {
    [
        ("Authorization", key),
        ("Accept", "application/json"),
        ("User-Agent", "PostmanRuntime/7.39.0"),
        ("Cache-Control", "no-cache"),
        ("Postman-Token", "9a1f3c2e-4b7d-4e0a-8c55-1d2f6b7e1c90"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Connection", "keep-alive"),
    ]
}

/// A walk as a client built from the Postman collection does it: `limit=1000&offset=0` with
/// the filter and group on every page, the cursor pasted as it came (unencoded) for later ones.
async fn postman_walk(addr: std::net::SocketAddr, key: &str, first: &str) -> Vec<Vec<u8>> {
    let mut client = RawClient::connect(addr).await;
    let mut target = first.to_owned();
    let mut pages = Vec::new();
    for _ in 0..100 {
        let answer = client.get(&target, &postman_headers(key)).await;
        assert_eq!(
            answer.status,
            200,
            "{target}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let page = answer.json();
        pages.push(answer.content());
        match page["pagination"]["next_page"].as_str() {
            Some(cursor) => target = format!("{first}&next_page={cursor}"),
            None => return pages,
        }
    }
    panic!("the walk did not end");
}

#[tokio::test]
async fn a_postman_collection_client_walks_the_same_pages_through_the_gateway() {
    let (options, day) = around_today();
    let sim = start_sim(options).await;
    let gateway = gateway(&sim, "000000001", "").await;
    for first in [
        format!("/usage?limit=1000&offset=0&filter=time:{day}&group=hours"),
        format!("/usage?limit=1000&offset=0&filter=time:{day}"),
    ] {
        let direct = postman_walk(sim.addr, ORG_TOKEN, &first).await;
        let through = postman_walk(gateway.addr, KEY, &first).await;
        assert!(direct.len() >= 2, "{first} spans {} pages", direct.len());
        assert_eq!(through, direct, "{first}");
    }
    // The collection's other two requests, without a query.
    let tag = sim.sim.tag_ids()[0].clone();
    for target in [
        "/usage/000000007".to_owned(),
        format!("/usage/tag-total/{tag}"),
    ] {
        let mut direct = RawClient::connect(sim.addr).await;
        let mut through = RawClient::connect(gateway.addr).await;
        let d = direct.get(&target, &postman_headers(ORG_TOKEN)).await;
        let t = through.get(&target, &postman_headers(KEY)).await;
        assert_eq!((t.status, t.content()), (d.status, d.content()), "{target}");
    }
    gateway.stop().await;
}

// === 1. ICCIDs in the path ===

#[tokio::test]
async fn an_iccid_in_the_path_is_answered_like_its_sim_id_and_scoped_as_itself() {
    let sim = start_sim(small()).await;
    let iccids = sim.sim.iccids();
    let (iccid, other) = (iccids[2].clone(), iccids[4].clone());
    let gateway = gateway(&sim, &iccid, "").await;

    let by_iccid = format!("/usage/{iccid}?filter=time:2024-01-05");
    let (direct, through) = both(&sim, &gateway, KEY, &by_iccid).await;
    assert_eq!(through, direct);
    let (_, by_sim_id) = both(
        &sim,
        &gateway,
        KEY,
        "/usage/000000003?filter=time:2024-01-05",
    )
    .await;
    let records =
        |body: &[u8]| serde_json::from_slice::<Value>(body).expect("JSON")["usage"].clone();
    assert!(records(&through).as_array().is_some_and(|r| !r.is_empty()));
    assert_eq!(
        records(&through),
        records(&by_sim_id),
        "the same SIM's records"
    );

    // Two questions to the gateway (it does not know which ICCID is which SIM id): two calls.
    let log = sim_json(&sim, "/__sim/requests").await;
    let upstream_targets: Vec<String> = log
        .as_array()
        .expect("a log")
        .iter()
        .filter_map(|r| r["target"].as_str().map(str::to_owned))
        .collect();
    assert!(upstream_targets.contains(&format!("/usage/{iccid}?filter=time:2024-01-05&limit=1000")));
    assert!(
        upstream_targets.contains(&"/usage/000000003?filter=time:2024-01-05&limit=1000".to_owned())
    );

    // A caller scoped to that ICCID may ask it, and nothing else: not another ICCID, and not
    // the SIM id either.
    assert_eq!(get_as(&gateway, ONE_SIM_KEY, &by_iccid).await.status, 200);
    let calls = sim_calls(&sim).await;
    for refused in [
        format!("/usage/{other}"),
        "/usage/000000003?filter=time:2024-01-05".to_owned(),
    ] {
        let answer = get_as(&gateway, ONE_SIM_KEY, &refused).await;
        assert_eq!(answer.status, 403, "{refused}");
        assert_eq!(answer.json()["error"], "forbidden");
    }
    // Neither a SIM id nor an ICCID: 400, never forwarded.
    let bad = get_as(&gateway, KEY, "/usage/894573873000000000").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "sim_id_invalid");
    assert_eq!(sim_calls(&sim).await, calls);
    gateway.stop().await;
}

// === 2. tag-total takes /usage's parameters ===

#[tokio::test]
async fn tag_totals_take_filters_grouping_and_pages_like_usage() {
    let sim = start_sim(small()).await;
    let gateway = gateway(&sim, "000000001", "").await;
    let tag = sim.sim.tag_ids()[1].clone();
    for query in [
        "filter=time%3A2024-01-05",
        "filter[]=country_code:DK&filter[]=time:2024-01",
        "group=hours&limit=5&offset=0",
        "group=hours&filter=time:2024-01-03&limit=1000",
    ] {
        let target = format!("/usage/tag-total/{tag}?{query}");
        let (direct, through) = both(&sim, &gateway, KEY, &target).await;
        assert_eq!(through, direct, "{target}");
    }
    // A walk of hourly totals by cursor, through the gateway, is the one-page answer.
    let whole = get_as(
        &gateway,
        KEY,
        &format!("/usage/tag-total/{tag}?group=hours&limit=1000"),
    )
    .await
    .json();
    let mut walked = Vec::new();
    let first = format!("/usage/tag-total/{tag}?group=hours&limit=40&offset=0");
    let mut target = first.clone();
    for _ in 0..100 {
        let page = get_as(&gateway, KEY, &target).await;
        assert_eq!(page.status, 200, "{target}: {}", page.body);
        let page = page.json();
        walked.extend(page["usage"].as_array().cloned().unwrap_or_default());
        match page["pagination"]["next_page"].as_str() {
            Some(cursor) => {
                target = format!("{first}&{}", url_search_params(&[("next_page", cursor)]))
            }
            None => break,
        }
    }
    assert!(walked.len() > 40, "{} hours", walked.len());
    assert_eq!(Some(&walked), whole["usage"].as_array());
    // sim_id has no meaning on a tag total: 400, never forwarded.
    let calls = sim_calls(&sim).await;
    let refused = get_as(
        &gateway,
        KEY,
        &format!("/usage/tag-total/{tag}?filter=sim_id:000000001"),
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"], "filter_invalid");
    assert_eq!(sim_calls(&sim).await, calls);
    gateway.stop().await;
}

// === 3. a body on GET ===

async fn get_with_body(url: &str, key: &str, body: &str) -> (u16, String) {
    let request = http::Request::get(url)
        .header("authorization", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>()
        .request(request)
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_get_with_a_json_body_is_answered_as_the_upstream_answers_it() {
    let sim = start_sim(small()).await;
    let gateway = gateway(&sim, "000000001", "").await;
    // Onomondo's older examples put the question in a JSON body; the API answers the URL.
    let legacy = r#"{"sim_id":"000000002","time_begin":"2024-01-01"}"#;
    let direct = get_with_body(
        &format!("{}/usage?limit=3", sim.base_url()),
        ORG_TOKEN,
        legacy,
    )
    .await;
    let through = get_with_body(&gateway.url("/usage?limit=3"), KEY, legacy).await;
    assert_eq!(direct.0, 200);
    assert_eq!(through, direct);
    // The body was no part of the question: the same URL without one is a hit.
    let again = get_as(&gateway, KEY, "/usage?limit=3").await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    // Past server.max_body_bytes (16 KiB): 413 in JSON, never forwarded.
    let calls = sim_calls(&sim).await;
    let huge = "x".repeat(17 * 1024);
    let (status, body) = get_with_body(&gateway.url("/usage?limit=4"), KEY, &huge).await;
    assert_eq!(status, 413);
    let body: Value = serde_json::from_str(&body).expect("a JSON error");
    assert_eq!(body["error"], "body_too_large");
    assert_eq!(sim_calls(&sim).await, calls);
    gateway.stop().await;
}

// === 4. offset beside next_page ===

#[tokio::test]
async fn offset_beside_next_page_is_accepted_and_the_upstream_sees_the_same_question() {
    let sim = start_sim(small()).await;
    let gateway = gateway(&sim, "000000001", "").await;
    let first = get_as(&gateway, KEY, "/usage?limit=7&offset=0")
        .await
        .json();
    let cursor = first["pagination"]["next_page"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    let encoded = url_search_params(&[("next_page", &cursor)]);
    for query in [
        format!("limit=7&offset=0&{encoded}"),
        format!("limit=7&offset=3&{encoded}"),
    ] {
        let target = format!("/usage?{query}");
        let (direct, through) = both(&sim, &gateway, KEY, &target).await;
        assert_eq!(through, direct, "{target}");
    }
    let log = sim_json(&sim, "/__sim/requests").await;
    let forwarded: Vec<&str> = log
        .as_array()
        .expect("a log")
        .iter()
        .filter_map(|r| r["target"].as_str())
        .filter(|t| t.contains("next_page") && t.contains("limit=7&next_page"))
        .collect();
    // offset=0 is the default and dropped; another offset is forwarded as asked.
    assert!(
        forwarded.iter().any(|t| !t.contains("offset")),
        "{forwarded:?}"
    );
    assert!(
        forwarded.iter().any(|t| t.ends_with("&offset=3")),
        "{forwarded:?}"
    );
    gateway.stop().await;
}

// === 5. rate-limit signals, against an upstream on the real clock ===

fn reset_of(answer: &support::Answer) -> u64 {
    answer
        .header("x-ratelimit-reset")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no x-ratelimit-reset: {:?}", answer.headers))
}

#[tokio::test]
async fn callers_see_what_they_may_spend_and_a_spent_budget_is_a_429_not_an_upstream_429() {
    // The upstream allows 3 calls per minute, on the wall clock, and says so in its headers.
    // Its window opens at the first call, so no window boundary falls inside the test.
    let sim = start_sim(SimOptions {
        live_clock: true,
        rate_limit: 3,
        rate_align: RateAlign::First,
        ..small()
    })
    .await;
    let gateway = gateway(&sim, "000000001", "").await;

    let first = get_as(&gateway, KEY, "/usage?limit=1").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit"), Some("600"));
    // The upstream said 2 of its 3 are left: the gateway's account follows it.
    assert_eq!(first.header("x-ratelimit-remaining"), Some("2"));
    let now = epoch_secs();
    // A real instant about a minute away (the upstream's window, rounded up to whole seconds
    // by the upstream and again by the gateway), not one long past.
    let reset = reset_of(&first);
    assert!((now..=now + 62).contains(&reset), "{reset} vs now {now}");
    // A hit spends nothing.
    let hit = get_as(&gateway, KEY, "/usage?limit=1").await;
    assert!(hit.cache_status().contains("hit"));
    assert_eq!(hit.header("x-ratelimit-remaining"), Some("2"));

    // A caller with a quota of one call a minute: its own quota is the tighter limit.
    let metered = get_as(&gateway, METERED_KEY, "/usage?limit=2").await;
    assert_eq!(metered.status, 200);
    assert_eq!(metered.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(metered.header("x-ratelimit-remaining"), Some("0"));
    let spent = get_as(&gateway, METERED_KEY, "/usage?limit=3").await;
    assert_eq!(spent.status, 429);
    assert_eq!(spent.json()["error"], "rate_limit_exceeded");
    assert_eq!(spent.json()["limit"], "caller_quota");
    assert!(spent.header("retry-after").is_some());
    assert_eq!(spent.header("x-ratelimit-remaining"), Some("0"));

    // The upstream's last call: it says 0 are left until its reset.
    let last = get_as(&gateway, KEY, "/usage?limit=4").await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("x-ratelimit-remaining"), Some("0"));
    // The next miss is refused by the gateway itself, in the upstream's convention, and never
    // costs an upstream 429.
    let refused = get_as(&gateway, KEY, "/usage?limit=5").await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"], "rate_limit_exceeded");
    assert_eq!(refused.json()["limit"], "upstream_budget");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|r| r.parse().ok())
        .expect("Retry-After");
    assert!((1..=61).contains(&retry), "{retry}");
    // The same instant (to the second: each answer converts it to wall time anew).
    assert!(reset_of(&refused).abs_diff(reset_of(&last)) <= 1);
    let stats = sim_json(&sim, "/__sim/stats").await;
    assert_eq!(stats["by_status"]["200"], 3, "{stats}");
    assert!(stats["by_status"].get("429").is_none(), "{stats}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_stale_copy_still_beats_a_spent_budget() {
    let sim = start_sim(SimOptions {
        live_clock: true,
        rate_limit: 1,
        rate_align: RateAlign::First,
        ..small()
    })
    .await;
    let upstream = sim.base_url();
    let mut config = config_with(
        &upstream,
        &format!("[[callers]]\nname = \"dashboard\"\nkey = \"{KEY}\"\n"),
    );
    support::short_lived(&mut config);
    let gateway = Gateway::start(config).await;
    assert_eq!(get_as(&gateway, KEY, "/usage?limit=1").await.status, 200);
    support::let_expire().await;
    let stale = get_as(&gateway, KEY, "/usage?limit=1").await;
    assert_eq!(stale.status, 200, "{}", stale.body);
    assert!(
        stale.cache_status().contains("stale-if-error"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(stale.header("x-ratelimit-remaining"), Some("0"));
    let fresh_question = get_as(&gateway, KEY, "/usage?limit=2").await;
    assert_eq!(fresh_question.status, 429);
    gateway.stop().await;
}

// === 7. the simulator's shape reaches clients unchanged ===

#[tokio::test]
async fn cursors_with_base64_punctuation_walk_to_a_last_page_without_next_page() {
    let sim = start_sim(small()).await;
    let gateway = gateway(&sim, "000000001", "").await;
    let mut target = "/usage?filter=time:2024-01-04&limit=100".to_owned();
    let mut pages = 0;
    loop {
        let page = get_as(&gateway, KEY, &target).await;
        assert_eq!(page.status, 200, "{target}: {}", page.body);
        let page = page.json();
        pages += 1;
        assert!(pages < 100, "the walk ends");
        match page["pagination"]["next_page"].as_str() {
            Some(cursor) => {
                assert!(cursor.contains('+') && cursor.contains('/') && cursor.ends_with("=="));
                assert_eq!(page["pagination"]["has_more"], true);
                target = format!(
                    "/usage?filter=time:2024-01-04&limit=100&{}",
                    url_search_params(&[("next_page", cursor)])
                );
            }
            None => {
                assert_eq!(page["pagination"], json!({"has_more": false}));
                let time = page["usage"][0]["time"].as_str().unwrap_or("");
                assert!(
                    time.starts_with("2024-01-04 ") && time.len() == 19,
                    "{time}"
                );
                break;
            }
        }
    }
    assert!(pages >= 2, "{pages} pages");
    gateway.stop().await;
}
