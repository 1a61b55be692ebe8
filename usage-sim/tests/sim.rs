//! End-to-end tests of `usage-sim`: the real `serve` on 127.0.0.1:0, driven over HTTP.
//!
//! Time-dependent rate-limit behaviour is driven through `/__sim/clock`, never by waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use usage_sim::{
    serve, AuthMode, CursorMode, RateAlign, RateScope, RecordShape, SimOptions, Simulator,
};

const KEY: &str = "sim-key-all";

/// A running simulator plus a client for it.
struct Server {
    addr: SocketAddr,
    sim: Simulator,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    fn header_i64(&self, name: &str) -> i64 {
        self.header(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .parse()
            .expect("integer header")
    }
}

/// Small data set so debug-build tests start fast.
fn small() -> SimOptions {
    SimOptions {
        sims: 40,
        tags: 4,
        hours: 24 * 20,
        // Walks take hundreds of requests; the rate-limit tests set their own budget.
        rate_limit: 100_000,
        ..SimOptions::default()
    }
}

async fn start(options: SimOptions) -> Server {
    let sim = Simulator::new(options).expect("valid options");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(sim.clone(), listener, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        sim,
        client: Client::builder(TokioExecutor::new()).build_http(),
        stop: Some(tx),
        task,
    }
}

impl Server {
    async fn send(
        &self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let is_head = method == Method::HEAD;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, target));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("valid request");
        let res = self.client.request(req).await.expect("request succeeds");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let reply = Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        };
        // Every response, errors included, is JSON with a correct length.
        assert_eq!(
            reply.header("content-type"),
            Some("application/json; charset=utf-8"),
            "{target}"
        );
        if !is_head {
            assert_eq!(
                reply
                    .header("content-length")
                    .map(|v| v.parse::<usize>().expect("length")),
                Some(reply.body.len()),
                "{target}"
            );
        }
        reply
    }

    async fn get_as(&self, target: &str, auth: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        self.send(Method::GET, target, &headers, Bytes::new()).await
    }

    async fn get(&self, target: &str) -> Reply {
        self.get_as(target, Some(KEY)).await
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Reply {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        self.send(method, path, &[], body).await
    }

    async fn stats(&self) -> Value {
        self.admin(Method::GET, "/__sim/stats", Value::Null)
            .await
            .json()
    }

    /// All records of a walk that follows `next_page` from `first`.
    async fn walk_cursor(&self, first: &str, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut target = first.to_owned();
        for _ in 0..10_000 {
            let r = self.get_as(&target, Some(key)).await;
            assert_eq!(r.status, StatusCode::OK, "{target}: {:?}", r.body);
            let v = r.json();
            out.extend(v["usage"].as_array().expect("usage array").iter().cloned());
            match v["pagination"]["next_page"].as_str() {
                None => {
                    assert_eq!(v["pagination"]["has_more"], false);
                    return out;
                }
                Some(c) => {
                    assert_eq!(v["pagination"]["has_more"], true);
                    let sep = if first.contains('?') { '&' } else { '?' };
                    target = format!(
                        "{first}{sep}next_page={}",
                        utf8_percent_encode(c, NON_ALPHANUMERIC)
                    );
                }
            }
        }
        panic!("walk did not end");
    }

    /// All records of a walk by `offset` with `limit`.
    async fn walk_offset(&self, first: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let sep = if first.contains('?') { '&' } else { '?' };
        for page in 0..10_000 {
            let target = format!("{first}{sep}limit={limit}&offset={}", page * limit);
            let v = self.get(&target).await.json();
            let records = v["usage"].as_array().expect("usage array");
            out.extend(records.iter().cloned());
            if v["pagination"]["has_more"] == false {
                return out;
            }
            assert_eq!(records.len(), limit);
        }
        panic!("walk did not end");
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .expect("server task joins")
            .expect("server ends cleanly");
    }
}

fn sum_bytes(records: &[Value]) -> u64 {
    records
        .iter()
        .map(|r| r["bytes"].as_u64().expect("bytes"))
        .sum()
}

fn sim_ids_of(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["sim_id"].as_str().expect("sim_id").to_owned())
        .collect()
}

#[tokio::test]
async fn same_options_give_identical_bytes_and_another_seed_does_not() {
    let a = start(small()).await;
    let b = start(small()).await;
    let c = start(SimOptions { seed: 2, ..small() }).await;
    let targets = [
        "/usage?limit=50",
        "/usage?group=hours&limit=20&offset=7",
        "/usage/000000003?filter[]=time:2024-01",
        "/usage?filter=country_code:dk&limit=5",
    ];
    for t in targets {
        let (ra, rb, rc) = (a.get(t).await, b.get(t).await, c.get(t).await);
        assert_eq!(ra.status, StatusCode::OK);
        assert_eq!(ra.body, rb.body, "{t}");
        assert_ne!(ra.body, rc.body, "{t}");
    }
    assert_eq!(a.sim.tag_ids(), b.sim.tag_ids());
    assert_ne!(a.sim.tag_ids(), c.sim.tag_ids());
    let tag = &a.sim.tag_ids()[0];
    let t = format!("/usage/tag-total/{tag}");
    assert_eq!(a.get(&t).await.body, b.get(&t).await.body);
    for s in [a, b, c] {
        s.stop().await;
    }
}

#[tokio::test]
async fn the_default_data_set_has_the_documented_size_and_shape() {
    let s = start(SimOptions::default()).await;
    assert_eq!(s.sim.sim_ids().len(), 200);
    assert_eq!(s.sim.tag_ids().len(), 8);
    let v = s
        .get("/usage?limit=2&filter[]=country_code:dk&filter[]=time:2024-03")
        .await
        .json();
    let r = &v["usage"][0];
    // 2160 hours from 2024-01-01 end with the hour 2024-03-30 23, written as the real API
    // writes times (upstream-api.md §4.3): UTC, no zone, whole seconds.
    assert!(
        r["time"]
            .as_str()
            .expect("time")
            .starts_with("2024-03-30 23:"),
        "{r}"
    );
    assert_eq!(r["time"].as_str().map(str::len), Some(19), "{r}");
    assert_eq!(r["sim_id"].as_str().map(str::len), Some(9));
    assert_eq!(r["iccid"].as_str().map(str::len), Some(20));
    assert_eq!(r["bill_id"].as_str().map(str::len), Some(36));
    assert_eq!(r["session_id"].as_str().map(str::len), Some(36));
    assert!(r["network_type"].is_string(), "{r}");
    assert_eq!(r["country_code"], "dk");
    assert_eq!(r["network"]["mcc"], "238");
    assert_eq!(
        r["network"].as_object().map(|n| n.len()),
        Some(2),
        "mcc and mnc only"
    );
    assert_eq!(v["pagination"]["has_more"], true);
    // Cursors are general base64, like the real ones: they need percent-encoding.
    let cursor = v["pagination"]["next_page"].as_str().expect("a cursor");
    assert!(
        cursor.contains('+') && cursor.contains('/') && cursor.ends_with("=="),
        "{cursor}"
    );
    // ~200 x 2160 x 0.25 x 2.5 records; walk the counts by offset cheaply via the last page.
    let last = s.get("/usage?limit=1&offset=250000").await.json();
    assert_eq!(last["pagination"]["has_more"], true);
    let beyond = s.get("/usage?limit=1&offset=300000").await.json();
    assert_eq!(beyond["usage"].as_array().map(Vec::len), Some(0));
    assert_eq!(beyond["pagination"]["has_more"], false);
    s.stop().await;
}

#[tokio::test]
async fn cursor_and_offset_walks_yield_exactly_the_full_walk() {
    for mode in [CursorMode::Digits, CursorMode::Opaque] {
        let s = start(SimOptions {
            cursor_mode: mode,
            ..small()
        })
        .await;
        for base in [
            "/usage",
            "/usage?filter[]=country_code:dk&filter[]=country_code:se",
            "/usage?group=hours",
        ] {
            let full = s
                .walk_cursor(
                    &format!(
                        "{base}{}limit=1000",
                        if base.contains('?') { '&' } else { '?' }
                    ),
                    KEY,
                )
                .await;
            assert!(full.len() > 1000, "{base}: the walk should span pages");
            let small_pages = s
                .walk_cursor(
                    &format!(
                        "{base}{}limit=37",
                        if base.contains('?') { '&' } else { '?' }
                    ),
                    KEY,
                )
                .await;
            assert_eq!(small_pages, full, "{mode:?} {base}");
            let by_offset = s.walk_offset(base, 53).await;
            assert_eq!(by_offset, full, "{mode:?} {base}");
            // The order is total: time desc, then sim_id asc.
            for w in full.windows(2) {
                let key = |r: &Value| {
                    (
                        r["time"].as_str().map(str::to_owned),
                        r["sim_id"].as_str().map(str::to_owned),
                    )
                };
                let (a, b) = (key(&w[0]), key(&w[1]));
                assert!(a.0 > b.0 || (a.0 == b.0 && a.1 <= b.1));
            }
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn opaque_cursors_need_url_encoding_and_reject_tampering_and_reuse() {
    let s = start(SimOptions {
        cursor_mode: CursorMode::Opaque,
        ..small()
    })
    .await;
    let v = s.get("/usage?limit=10").await.json();
    let cursor = v["pagination"]["next_page"]
        .as_str()
        .expect("cursor")
        .to_owned();
    assert!(cursor.contains('+') && cursor.contains('/') && cursor.ends_with('='));
    let encoded = utf8_percent_encode(&cursor, NON_ALPHANUMERIC).to_string();
    let good = s.get(&format!("/usage?limit=10&next_page={encoded}")).await;
    assert_eq!(good.status, StatusCode::OK);
    // A literal '+' in next_page stays '+', so even an unencoded cursor works.
    let literal = s.get(&format!("/usage?limit=10&next_page={cursor}")).await;
    assert_eq!(literal.body, good.body);
    // The cursor belongs to the unfiltered query.
    let other = s
        .get(&format!(
            "/usage?limit=10&filter=country_code:dk&next_page={encoded}"
        ))
        .await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
    assert_eq!(other.json(), json!({"error": "next_page_invalid"}));
    let mut tampered = cursor.into_bytes();
    tampered[8] = if tampered[8] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let enc = utf8_percent_encode(&tampered, NON_ALPHANUMERIC).to_string();
    let bad = s.get(&format!("/usage?limit=10&next_page={enc}")).await;
    assert_eq!(bad.json(), json!({"error": "next_page_invalid"}));
    s.stop().await;
}

#[tokio::test]
async fn hourly_sums_equal_raw_sums_for_the_same_filters() {
    let s = start(small()).await;
    for filters in [
        "",
        "&filter[]=country_code:dk",
        "&filter[]=time:2024-01-05",
        "&filter[]=time:2024-01&filter[]=country_code:de&filter[]=country_code:gb",
        "&filter[]=sim_id:000000004&filter[]=sim_id:000000009",
    ] {
        let raw = s
            .walk_cursor(&format!("/usage?limit=1000{filters}"), KEY)
            .await;
        let hourly = s
            .walk_cursor(&format!("/usage?group=hours&limit=1000{filters}"), KEY)
            .await;
        assert!(!raw.is_empty(), "{filters}");
        assert_eq!(sum_bytes(&raw), sum_bytes(&hourly), "{filters}");
        assert!(hourly.len() <= raw.len());
        for r in &hourly {
            assert!(r["time"].as_str().expect("time").ends_with(":00:00"));
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn tag_totals_equal_the_usage_of_the_tags_sims() {
    let probe = Simulator::new(small()).expect("valid");
    let tags = probe.tag_ids();
    let keys: Vec<String> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| format!("tag{i}={t}"))
        .collect();
    let s = start(SimOptions {
        keys: [vec![KEY.to_owned()], keys].concat(),
        ..small()
    })
    .await;
    for (i, tag) in tags.iter().enumerate() {
        let key = format!("tag{i}");
        for filters in ["", "filter[]=time:2024-01-10", "filter[]=country_code:dk"] {
            // A key scoped to one tag sees exactly that tag's SIMs.
            let usage = s
                .walk_cursor(&format!("/usage?limit=1000&{filters}"), &key)
                .await;
            let by_country = s
                .get(&format!("/usage/tag-total/{tag}?{filters}"))
                .await
                .json();
            let rows = by_country["usage"].as_array().expect("rows");
            assert_eq!(sum_bytes(rows), sum_bytes(&usage), "tag {i} {filters}");
            for w in rows.windows(2) {
                assert!(w[0]["bytes"].as_u64() >= w[1]["bytes"].as_u64());
            }
            for r in rows {
                assert_eq!(r["tag_id"], tag.as_str());
            }
            let by_hour = s
                .walk_cursor(
                    &format!("/usage/tag-total/{tag}?group=hours&limit=100&{filters}"),
                    KEY,
                )
                .await;
            assert_eq!(
                sum_bytes(&by_hour),
                sum_bytes(&usage),
                "tag {i} {filters} hours"
            );
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_tag_scoped_key_never_sees_a_sim_outside_its_tags() {
    let probe = Simulator::new(small()).expect("valid");
    let tags = probe.tag_ids();
    let s = start(SimOptions {
        keys: vec![KEY.to_owned(), format!("scoped={}", tags[1])],
        ..small()
    })
    .await;
    let all = sim_ids_of(&s.walk_cursor("/usage?limit=1000", KEY).await);
    let seen = sim_ids_of(&s.walk_cursor("/usage?limit=1000", "scoped").await);
    assert!(!seen.is_empty() && seen.len() < all.len());
    for id in s.sim.sim_ids() {
        let r = s
            .get_as(&format!("/usage/{id}?limit=1"), Some("scoped"))
            .await;
        if seen.contains(&id) {
            assert_eq!(r.status, StatusCode::OK, "{id}");
        } else {
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}");
            assert_eq!(r.json(), json!({"error": "sim_not_found"}));
            // Not even through a sim_id filter.
            let f = s
                .get_as(&format!("/usage?filter=sim_id:{id}"), Some("scoped"))
                .await
                .json();
            assert_eq!(f["usage"].as_array().map(Vec::len), Some(0));
        }
    }
    let hourly = sim_ids_of(
        &s.walk_cursor("/usage?group=hours&limit=1000", "scoped")
            .await,
    );
    assert_eq!(hourly, seen);
    let outside = s
        .get_as(&format!("/usage/tag-total/{}", tags[0]), Some("scoped"))
        .await;
    assert_eq!(outside.status, StatusCode::NOT_FOUND);
    assert_eq!(outside.json(), json!({"error": "tag_not_found"}));
    let inside = s
        .get_as(&format!("/usage/tag-total/{}", tags[1]), Some("scoped"))
        .await;
    assert_eq!(inside.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn the_601st_request_is_throttled_until_the_window_resets() {
    let s = start(SimOptions {
        rate_limit: 600,
        ..small()
    })
    .await;
    // Default clock: start + 2160 h... here start + 480 h, a whole minute.
    let mut reset = 0;
    for i in 1..=600 {
        let r = s.get("/usage?limit=1").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert_eq!(r.header_i64("x-ratelimit-limit"), 600);
        assert_eq!(r.header_i64("x-ratelimit-remaining"), 600 - i);
        reset = r.header_i64("x-ratelimit-reset");
    }
    assert_eq!(reset % 60, 0, "clock-aligned windows reset on the minute");
    let r = s.get("/usage?limit=1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json(), json!({"error": "rate_limit_exceeded"}));
    assert_eq!(r.header_i64("x-ratelimit-limit"), 600);
    assert_eq!(r.header_i64("x-ratelimit-remaining"), 0);
    assert_eq!(r.header_i64("x-ratelimit-reset"), reset);
    let now = s
        .admin(Method::GET, "/__sim/clock", Value::Null)
        .await
        .json();
    assert!(r.header_i64("retry-after") >= 1);
    assert!(now["now"].is_string());
    // Still throttled one second before the reset, and not counted.
    s.admin(Method::POST, "/__sim/clock", json!({"now": iso(reset - 1)}))
        .await;
    let r = s.get("/usage?limit=1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header_i64("retry-after"), 1);
    let stats = s.stats().await;
    assert_eq!(stats["rate_limit"]["buckets"][KEY]["used"], 600);
    s.admin(Method::POST, "/__sim/clock", json!({"now": iso(reset)}))
        .await;
    let r = s.get("/usage?limit=1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header_i64("x-ratelimit-remaining"), 599);
    assert_eq!(r.header_i64("x-ratelimit-reset"), reset + 60);
    s.stop().await;
}

fn iso(epoch_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(epoch_s)
        .expect("valid epoch")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats")
}

#[tokio::test]
async fn first_aligned_org_windows_open_at_the_first_request() {
    let s = start(SimOptions {
        keys: vec!["a".into(), "b".into()],
        rate_limit: 2,
        rate_window: 10,
        rate_scope: RateScope::Org,
        rate_align: RateAlign::First,
        retry_after: false,
        ..small()
    })
    .await;
    s.admin(
        Method::POST,
        "/__sim/clock",
        json!({"now": "2024-06-01T00:00:03.500Z"}),
    )
    .await;
    let r1 = s.get_as("/usage?limit=1", Some("a")).await;
    assert_eq!(r1.header_i64("x-ratelimit-reset"), 1_717_200_014); // 03.5 s + 10 s, rounded up
    let r2 = s.get_as("/usage?limit=1", Some("b")).await;
    assert_eq!(r2.header_i64("x-ratelimit-remaining"), 0);
    let r3 = s.get_as("/usage?limit=1", Some("a")).await;
    assert_eq!(r3.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r3.header("retry-after"), None, "--retry-after off");
    s.admin(Method::POST, "/__sim/clock", json!({"advance_s": 10}))
        .await;
    let r4 = s.get_as("/usage?limit=1", Some("b")).await;
    assert_eq!(r4.status, StatusCode::OK);
    assert_eq!(r4.header_i64("x-ratelimit-reset"), 1_717_200_024);
    let stats = s.stats().await;
    assert_eq!(stats["rate_limit"]["scope"], "org");
    assert_eq!(stats["rate_limit"]["buckets"]["org"]["used"], 1);
    s.stop().await;
}

#[tokio::test]
async fn rate_limit_headers_ride_on_errors_but_not_on_401_or_with_scope_off() {
    let s = start(small()).await;
    for (target, status) in [
        ("/usage?limit=0", StatusCode::BAD_REQUEST),
        ("/nope", StatusCode::NOT_FOUND),
        ("/usage/999999999", StatusCode::NOT_FOUND),
    ] {
        let r = s.get(target).await;
        assert_eq!(r.status, status, "{target}");
        assert!(r.header("x-ratelimit-remaining").is_some(), "{target}");
    }
    let r = s.get_as("/usage", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("x-ratelimit-limit"), None);
    let stats = s.stats().await;
    assert_eq!(
        stats["rate_limit"]["buckets"][KEY]["used"], 3,
        "401s are not counted"
    );
    s.stop().await;

    let off = start(SimOptions {
        rate_scope: RateScope::Off,
        rate_limit: 1,
        ..small()
    })
    .await;
    for _ in 0..3 {
        let r = off.get("/usage?limit=1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-ratelimit-limit"), None);
    }
    off.stop().await;
}

#[tokio::test]
async fn auth_accepts_the_forms_its_mode_allows() {
    let rows: [(AuthMode, &str, StatusCode); 8] = [
        (AuthMode::Both, "sim-key-all", StatusCode::OK),
        (AuthMode::Both, "Bearer sim-key-all", StatusCode::OK),
        (AuthMode::Both, "bearer sim-key-all", StatusCode::OK),
        (AuthMode::Both, "sim-key-other", StatusCode::UNAUTHORIZED),
        (AuthMode::Raw, "sim-key-all", StatusCode::OK),
        (
            AuthMode::Raw,
            "Bearer sim-key-all",
            StatusCode::UNAUTHORIZED,
        ),
        (AuthMode::Bearer, "Bearer sim-key-all", StatusCode::OK),
        (AuthMode::Bearer, "sim-key-all", StatusCode::UNAUTHORIZED),
    ];
    for (mode, header, want) in rows {
        let s = start(SimOptions {
            auth_mode: mode,
            sims: 3,
            hours: 5,
            ..SimOptions::default()
        })
        .await;
        let r = s.get_as("/usage", Some(header)).await;
        assert_eq!(r.status, want, "{mode:?} {header:?}");
        if want == StatusCode::UNAUTHORIZED {
            assert_eq!(r.json(), json!({"error": "unauthorized"}));
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn stats_and_the_request_log_record_exact_targets_and_auth_forms() {
    let s = start(small()).await;
    let tag = s.sim.tag_ids()[0].clone();
    let targets = [
        ("/usage?filter[]=time:2024-01&limit=5", Some(KEY)),
        (
            "/usage/000000002?filter%5B%5D=country_code%3Adk",
            Some("Bearer sim-key-all"),
        ),
        ("/usage", None),
        ("/usage", Some("wrong")),
    ];
    for (t, auth) in targets {
        s.get_as(t, auth).await;
    }
    s.get(&format!("/usage/tag-total/{tag}")).await;
    s.send(
        Method::POST,
        "/usage",
        &[("authorization", KEY)],
        Bytes::new(),
    )
    .await;
    let log = s
        .admin(Method::GET, "/__sim/requests", Value::Null)
        .await
        .json();
    let log = log.as_array().expect("array");
    assert_eq!(log.len(), 6);
    assert_eq!(
        log[0],
        json!({"method": "GET", "target": "/usage?filter[]=time:2024-01&limit=5", "auth_form": "raw", "status": 200})
    );
    assert_eq!(
        log[1]["target"],
        "/usage/000000002?filter%5B%5D=country_code%3Adk"
    );
    assert_eq!(log[1]["auth_form"], "bearer");
    assert_eq!(log[2]["auth_form"], "none");
    assert_eq!(log[3]["auth_form"], "invalid");
    assert_eq!(log[3]["status"], 401);
    assert_eq!(
        log[5],
        json!({"method": "POST", "target": "/usage", "auth_form": "raw", "status": 405})
    );

    let stats = s.stats().await;
    assert_eq!(stats["requests_total"], 6);
    assert_eq!(
        stats["by_endpoint"],
        json!({"usage": 4, "usage_by_sim": 1, "tag_total": 1, "sims": 0, "other": 0})
    );
    assert_eq!(stats["by_key"], json!({KEY: 4}));
    assert_eq!(stats["by_status"], json!({"200": 3, "401": 2, "405": 1}));
    assert_eq!(stats["by_auth_form"], json!({"raw": 3, "bearer": 1}));
    assert_eq!(stats["rate_limit"]["limit"], 100_000);
    assert_eq!(stats["rate_limit"]["window_s"], 60);
    assert!(stats["rate_limit"]["buckets"][KEY]["reset"].is_i64());
    assert_eq!(stats["now"], "2024-01-21T00:00:00.000Z");

    // Control requests are not counted; reset clears counters and the log.
    s.admin(Method::POST, "/__sim/reset", Value::Null).await;
    let stats = s.stats().await;
    assert_eq!(stats["requests_total"], 0);
    assert_eq!(stats["rate_limit"]["buckets"], json!({}));
    let log = s
        .admin(Method::GET, "/__sim/requests", Value::Null)
        .await
        .json();
    assert_eq!(log, json!([]));
    s.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let s = start(small()).await;
    let r = s.get("/sims/x/y").await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );
    for m in [Method::POST, Method::PUT, Method::DELETE, Method::HEAD] {
        let r = s
            .send(m.clone(), "/usage", &[("authorization", KEY)], Bytes::new())
            .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        if m != Method::HEAD {
            assert_eq!(r.json(), json!({"error": "method_not_allowed"}));
        }
    }
    let r = s.admin(Method::GET, "/__sim/nope", Value::Null).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s.admin(Method::GET, "/__sim/reset", Value::Null).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    s.stop().await;
}

#[tokio::test]
async fn filters_select_what_they_name() {
    let s = start(small()).await;
    let dk = s.walk_cursor("/usage?filter=country_code:DK", KEY).await;
    assert!(!dk.is_empty());
    assert!(dk.iter().all(|r| r["country_code"] == "dk"));
    let day = s.walk_cursor("/usage?filter[0]=time:2024-01-07", KEY).await;
    assert!(!day.is_empty());
    assert!(day.iter().all(|r| r["time"]
        .as_str()
        .is_some_and(|t| t.starts_with("2024-01-07 "))));
    let two = s
        .walk_cursor(
            "/usage?filter[]=sim_id:000000005&filter[]=sim_id:000000011",
            KEY,
        )
        .await;
    assert_eq!(
        sim_ids_of(&two),
        BTreeSet::from(["000000005".to_owned(), "000000011".to_owned()])
    );
    let by_path = s.walk_cursor("/usage/000000005", KEY).await;
    let iccid = by_path[0]["iccid"].as_str().expect("iccid").to_owned();
    assert!(iccid.starts_with("8945738730000000005"));
    let by_iccid = s.walk_cursor(&format!("/usage/{iccid}"), KEY).await;
    assert_eq!(
        sim_ids_of(&by_path),
        BTreeSet::from(["000000005".to_owned()])
    );
    assert_eq!(by_path, by_iccid);
    // Percent-encoded spellings meet.
    let a = s.get("/usage?filter[]=country_code:se&limit=9").await.body;
    let b = s
        .get("/usage?filter%5B%5D=country_code%3Ase&limit=9")
        .await
        .body;
    let c = s
        .get("/usage?filter%5B2%5D=country_code:se&limit=%39")
        .await
        .body;
    assert_eq!(a, b);
    assert_eq!(a, c);
    for (target, code) in [
        ("/usage?filter=colour:red", "filter_invalid"),
        ("/usage?filter=time:2024-02-30", "filter_invalid"),
        ("/usage?foo=1", "parameter_invalid"),
        ("/usage?limit=1001", "limit_invalid"),
        ("/usage?offset=-3", "offset_invalid"),
        ("/usage?group=days", "group_invalid"),
        ("/usage?next_page=%%%", "next_page_invalid"),
        ("/usage?next_page=OTk5OTk5OTk5", "next_page_invalid"),
    ] {
        let r = s.get(target).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(r.json(), json!({"error": code}), "{target}");
    }
    let tag = s.sim.tag_ids()[0].clone();
    let r = s
        .get(&format!("/usage/tag-total/{tag}?filter=sim_id:000000001"))
        .await;
    assert_eq!(r.json(), json!({"error": "filter_invalid"}));
    s.stop().await;
}

#[tokio::test]
async fn lenient_switches_ignore_bad_filters_and_clamp_limit() {
    let s = start(SimOptions {
        strict_filters: false,
        strict_limit: false,
        ..small()
    })
    .await;
    let lenient = s.get("/usage?limit=5000&foo=1&filter=colour:red").await;
    assert_eq!(lenient.status, StatusCode::OK);
    assert_eq!(lenient.json()["usage"].as_array().map(Vec::len), Some(1000));
    let zero = s.get("/usage?limit=0").await.json();
    assert_eq!(zero["usage"].as_array().map(Vec::len), Some(1));
    s.stop().await;
}

#[tokio::test]
async fn tag_totals_have_the_documented_shapes() {
    let s = start(small()).await;
    let tag = s.sim.tag_ids()[2].clone();
    let v = s.get(&format!("/usage/tag-total/{tag}")).await.json();
    let first = &v["usage"][0];
    assert_eq!(first["tag_id"], tag.as_str());
    assert!(
        first["network"]["country"].is_string() && first["network"]["country_code"].is_string()
    );
    // A last page says so and has no next_page at all, as the real API.
    assert_eq!(v["pagination"], json!({"has_more": false}));
    let paged = s
        .get(&format!("/usage/tag-total/{tag}?limit=1"))
        .await
        .json();
    assert_eq!(paged["usage"][0], *first);
    let h = s
        .get(&format!("/usage/tag-total/{tag}?group=hours&limit=3"))
        .await
        .json();
    let rows = h["usage"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert!(rows[0]["time"]
        .as_str()
        .is_some_and(|t| t.len() == 19 && t.ends_with(":00:00")));
    assert_eq!(h["pagination"]["has_more"], true);
    let upper = s
        .get(&format!("/usage/tag-total/{}", tag.to_uppercase()))
        .await;
    assert_eq!(upper.status, StatusCode::OK);
    let missing = s
        .get("/usage/tag-total/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(missing.json(), json!({"error": "tag_not_found"}));
    s.stop().await;

    let derived = start(SimOptions {
        record_shape: RecordShape::Derived,
        ..small()
    })
    .await;
    let v = derived.get(&format!("/usage/tag-total/{tag}")).await.json();
    let rows = v["usage"].as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["sim_id"], Value::Null);
    assert!(rows[0]["timestamp"].is_string());
    let u = derived.get("/usage?limit=1").await.json();
    let keys: BTreeSet<&str> = u["usage"][0]
        .as_object()
        .expect("record")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["sim_id", "bytes", "timestamp"]));
    derived.stop().await;
}

#[tokio::test]
async fn injected_faults_follow_the_runtime_settings() {
    let s = start(small()).await;
    let r = s
        .admin(Method::POST, "/__sim/faults", json!({"fail_rate": 1.0}))
        .await
        .json();
    assert_eq!(
        r,
        json!({
            "fail_rate": 1.0,
            "status": 503,
            "latency_ms": 0,
            "jitter_ms": 0,
            "misbehavior": "none",
            "misbehavior_rate": 1.0,
            "oversized_bytes": 9_437_184,
            "trickle_ms": 200
        })
    );
    let f = s.get("/usage").await;
    assert_eq!(f.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(f.json(), json!({"error": "service_unavailable"}));
    assert!(f.header("x-ratelimit-remaining").is_some());
    s.admin(Method::POST, "/__sim/faults", json!({"status": 502}))
        .await;
    assert_eq!(
        s.get("/usage").await.json(),
        json!({"error": "bad_gateway"})
    );
    let bad = s
        .admin(Method::POST, "/__sim/faults", json!({"status": 418}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = s
        .admin(Method::POST, "/__sim/faults", json!({"nope": 1}))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    s.admin(Method::POST, "/__sim/faults", json!({"fail_rate": 0.0}))
        .await;
    assert_eq!(s.get("/usage?limit=1").await.status, StatusCode::OK);
    s.stop().await;

    // The same fail rate fails the same request numbers on every run.
    let mut runs = Vec::new();
    for _ in 0..2 {
        let s = start(SimOptions {
            fail_rate: 0.3,
            ..small()
        })
        .await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(s.get("/usage?limit=1").await.status.as_u16());
        }
        runs.push(statuses);
        s.stop().await;
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].contains(&503) && runs[0].contains(&200));
}

#[tokio::test]
async fn the_admin_token_guards_control_endpoints() {
    let s = start(SimOptions {
        admin_token: Some("s3cret".into()),
        ..small()
    })
    .await;
    let r = s.admin(Method::GET, "/__sim/stats", Value::Null).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .send(
            Method::GET,
            "/__sim/stats",
            &[("x-sim-admin", "wrong")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .send(
            Method::GET,
            "/__sim/stats",
            &[("x-sim-admin", "s3cret")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let s = start(small()).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(format!("http://{}/usage?limit=3", s.addr))
        .header("authorization", KEY)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = h2.request(req).await.expect("h2 request");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, s.get("/usage?limit=3").await.body);
    s.stop().await;
}

#[tokio::test]
async fn by_key_counts_each_configured_key() {
    let s = start(SimOptions {
        keys: vec!["a".into(), "b".into()],
        ..small()
    })
    .await;
    for k in ["a", "b", "b"] {
        s.get_as("/usage?limit=1", Some(k)).await;
    }
    let stats = s.stats().await;
    let by_key: BTreeMap<String, u64> =
        serde_json::from_value(stats["by_key"].clone()).expect("map");
    assert_eq!(by_key, BTreeMap::from([("a".into(), 1), ("b".into(), 2)]));
    s.stop().await;
}
