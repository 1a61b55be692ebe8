//! Hostile callers: oversized requests, bodies, slow and idle connections, connection floods,
//! smuggling and header tricks. Each gets a defined answer (docs/SECURITY.md lists them), and
//! none of them reaches the upstream.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway in front of a fake upstream, with `server` settings added to the test callers.
async fn start_with_server(server: &str) -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let config = config_with(
        &upstream.base_url(),
        &format!(
            r#"
            [server]
            {server}
            [[callers]]
            name = "billing"
            key = "{BILLING_KEY}"
            [[callers]]
            name = "ops"
            key = "{OPS_KEY}"
            "#
        ),
    );
    (upstream, Gateway::start(config).await)
}

fn billing() -> String {
    format!("Bearer {BILLING_KEY}")
}

/// A raw HTTP/1.1 GET as the billing caller with extra header lines, closing after the answer.
fn raw_get(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n{extra}Connection: close\r\n\r\n",
        billing()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_request_target_past_max_uri_bytes_is_414_and_never_forwarded() {
    let (upstream, gateway) = start_with_server("max_uri_bytes = 1024").await;
    let padding = "0".repeat(1024);
    let answer = get(&gateway, &format!("/usage?limit=1&offset={padding}")).await;
    assert_eq!(answer.status, 414);
    assert_eq!(answer.json()["error"], "uri_too_long");
    assert!(answer.json()["message"]
        .as_str()
        .unwrap_or("")
        .contains("1024"));
    let fits = get(&gateway, "/usage?limit=1").await;
    assert_eq!(fits.status, 200);
    assert_eq!(upstream.calls(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_request_head_far_past_the_limits_is_cut_off_at_the_socket() {
    let (upstream, gateway) = start_with_server("").await;
    // Beyond max_uri_bytes + max_header_bytes + slack, hyper refuses before buffering more.
    let target = format!("/usage?limit=1&x={}", "a".repeat(200 * 1024));
    let reply = raw_exchange(gateway.addr, &raw_get(&target, "")).await;
    assert!(reply.closed, "the connection is closed");
    assert_eq!(reply.statuses(), vec![431], "{}", reply.text);
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn headers_past_max_header_bytes_are_431_and_never_forwarded() {
    let (upstream, gateway) = start_with_server("max_header_bytes = 2048").await;
    let big = "v".repeat(2048);
    let auth = billing();
    let answer = send(
        &gateway,
        "GET",
        "/usage?limit=1",
        &[("authorization", &auth), ("x-padding", &big)],
    )
    .await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.json()["error"], "headers_too_large");
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn more_filters_than_max_filters_is_400_naming_the_limit() {
    let (upstream, gateway) = start_with_server("max_filters = 4").await;
    let filters = |n: usize| {
        (1..=n)
            .map(|i| format!("filter=sim_id:{i:09}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let refused = get(&gateway, &format!("/usage?{}", filters(5))).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"], "too_many_filters");
    assert!(refused.json()["message"]
        .as_str()
        .unwrap_or("")
        .contains("more than 4"));
    assert_eq!(upstream.calls(), 0);
    assert_eq!(
        get(&gateway, &format!("/usage?{}", filters(4)))
            .await
            .status,
        200
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_get_with_a_small_body_is_answered_as_without_it_and_the_body_never_forwarded() {
    let (upstream, gateway) = start_with_server("").await;
    let body = r#"{"filter":"time:2024-03"}"#;
    // Two requests on one connection: the first one's body is read to its end, so the second
    // is parsed where it really starts.
    let request = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{body}\
         GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n",
        auth = billing(),
        len = body.len(),
    );
    let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.statuses(), vec![200, 200], "{}", reply.text);
    assert!(reply.text.contains("fwd=miss; stored"), "{}", reply.text);
    assert!(
        reply.text.contains("hit; ttl="),
        "the body is no part of the cache key: {}",
        reply.text
    );
    let forwarded = upstream.requests();
    assert_eq!(forwarded.len(), 1);
    assert_eq!(forwarded[0].target, "/usage?limit=1");
    for framing in ["content-length", "transfer-encoding", "content-type"] {
        assert!(
            !forwarded[0].headers.contains_key(framing),
            "{framing} was forwarded"
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_get_body_past_max_body_bytes_is_413_unread_and_never_forwarded() {
    let (upstream, gateway) = start_with_server("max_body_bytes = 64").await;
    let big = "x".repeat(65);
    // Announced too long, sent or not: refused before a byte of it is read.
    for framing in [
        "Content-Length: 100000\r\n\r\n".to_owned(),
        format!("Content-Length: 65\r\n\r\n{big}"),
    ] {
        let request = format!(
            "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n{framing}",
            billing()
        );
        let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
        assert_eq!(reply.statuses(), vec![413], "{framing:?}: {}", reply.text);
        let body: serde_json::Value = serde_json::from_str(&reply.body()).expect("a JSON error");
        assert_eq!(body["error"], "body_too_large");
        assert!(
            body["message"].as_str().unwrap_or("").contains("64 bytes"),
            "{body}"
        );
        assert!(reply.text.contains("connection: close"), "{}", reply.text);
        assert!(
            reply.closed,
            "the rest of the body is never read as a request"
        );
    }
    // Exactly at the bound is fine.
    let at_bound = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\nConnection: close\r\nContent-Length: 64\r\n\r\n{}",
        billing(),
        "x".repeat(64)
    );
    let reply = raw_exchange(gateway.addr, at_bound.as_bytes()).await;
    assert_eq!(reply.statuses(), vec![200], "{}", reply.text);
    assert_eq!(upstream.calls(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_chunked_get_is_400_and_its_body_never_read() {
    let (upstream, gateway) = start_with_server("").await;
    let request = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        billing()
    );
    let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.statuses(), vec![400], "{}", reply.text);
    assert!(reply.body().contains("body_not_allowed"), "{}", reply.text);
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn a_get_with_an_empty_body_is_served() {
    let (_upstream, gateway) = start_with_server("").await;
    let reply = raw_exchange(
        gateway.addr,
        &raw_get("/usage?limit=1", "Content-Length: 0\r\n"),
    )
    .await;
    assert_eq!(reply.statuses(), vec![200], "{}", reply.text);
    gateway.stop().await;
}

/// Reads until the server closes the connection; how long that took, bounded by 5 s.
async fn time_until_closed(stream: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection within 5 s");
    started.elapsed()
}

#[tokio::test]
async fn a_slow_loris_connection_is_closed_after_header_timeout() {
    let (upstream, gateway) = start_with_server("header_timeout_ms = 300").await;
    let mut stream = TcpStream::connect(gateway.addr).await.expect("connect");
    // Headers begun and never finished.
    stream
        .write_all(b"GET /usage HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .expect("write");
    let waited = time_until_closed(&mut stream).await;
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_header_timeout() {
    let (_upstream, gateway) = start_with_server("header_timeout_ms = 300").await;
    let mut stream = TcpStream::connect(gateway.addr).await.expect("connect");
    let request = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n\r\n",
        billing()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // The answer comes first; then the connection sits idle until the timeout closes it.
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.expect("an answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    let waited = time_until_closed(&mut stream).await;
    assert!(
        waited >= Duration::from_millis(200),
        "closed after {waited:?}"
    );
    gateway.stop().await;
}

/// Opens a keep-alive connection and completes one request on it, so it surely holds a slot.
async fn served_connection(gateway: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(gateway.addr).await.expect("connect");
    let request = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n\r\n",
        billing()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.expect("an answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    stream
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once() {
    let (_upstream, gateway) = start_with_server("max_connections = 2").await;
    let first = served_connection(&gateway).await;
    let _second = served_connection(&gateway).await;
    let refused = raw_exchange(gateway.addr, &raw_get("/usage?limit=1", "")).await;
    assert!(refused.closed);
    assert_eq!(refused.text, "", "no answer on a refused connection");
    let metrics = admin(&gateway, "GET", "/metrics", &[]).await.body;
    assert!(
        metrics.contains("usage_gateway_connections_refused_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("usage_gateway_connections_open 2"),
        "{metrics}"
    );

    // A closed connection frees its slot: a new one is served once the server has seen it go.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = raw_exchange(gateway.addr, &raw_get("/usage?limit=1", "")).await;
        if reply.statuses() == vec![200] {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::task::yield_now().await;
    }
    gateway.stop().await;
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_get_one_answer_and_no_smuggled_request() {
    let (upstream, gateway) = start_with_server("").await;
    // A front proxy reading Content-Length would see one request; one reading
    // Transfer-Encoding would see a second, smuggled, one. The gateway answers neither way.
    let smuggled = format!(
        "GET /usage/000000002 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n\r\n",
        billing()
    );
    let request = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        billing(),
        5 + smuggled.len(),
    );
    let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.statuses(), vec![400], "{}", reply.text);
    assert!(reply.body().contains("body_not_allowed"), "{}", reply.text);
    assert!(reply.text.contains("connection: close"), "{}", reply.text);
    assert!(
        reply.closed,
        "the connection does not go on to another request"
    );
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

/// Sends a GET with `extra` header lines that hyper refuses to parse: a bare 400, the
/// connection closed, nothing forwarded.
async fn assert_refused_as_malformed(extra: &str) {
    let (upstream, gateway) = start_with_server("").await;
    let request = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n{extra}\r\n",
        billing()
    );
    let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.statuses(), vec![400], "{}", reply.text);
    assert_eq!(reply.body(), "", "hyper's own bare answer");
    assert!(reply.closed, "the connection is closed");
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn two_different_content_lengths_are_400_and_close_the_connection() {
    assert_refused_as_malformed("Content-Length: 0\r\nContent-Length: 7\r\n").await;
}

#[tokio::test]
async fn an_obs_folded_header_is_400_and_closes_the_connection() {
    assert_refused_as_malformed("X-Folded: a\r\n b\r\n").await;
}

#[tokio::test]
async fn two_authorization_headers_are_401_even_when_one_key_is_good() {
    let (upstream, gateway) = start_with_server("").await;
    for second in [
        billing(),
        format!("Bearer {OPS_KEY}"),
        "Bearer guess".into(),
    ] {
        let extra = format!("Authorization: {second}\r\n");
        let reply = raw_exchange(gateway.addr, &raw_get("/usage?limit=1", &extra)).await;
        assert_eq!(reply.statuses(), vec![401], "{second}: {}", reply.text);
    }
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn x_api_key_and_authorization_with_different_keys_are_401() {
    let (upstream, gateway) = start_with_server("").await;
    let auth = billing();
    let answer = send(
        &gateway,
        "GET",
        "/usage?limit=1",
        &[("authorization", &auth), ("x-api-key", OPS_KEY)],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"], "unauthorized");
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn host_headers_and_absolute_form_targets_never_change_where_a_miss_goes() {
    let (upstream, gateway) = start_with_server("").await;
    let upstream_authority = upstream.base_url().trim_start_matches("http://").to_owned();
    let by_host = String::from_utf8(raw_get("/usage?limit=1", ""))
        .expect("ascii")
        .replace("Host: gateway", "Host: evil.example");
    let absolute = format!(
        "GET http://evil.example/usage?limit=2 HTTP/1.1\r\nHost: evil.example\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        billing()
    );
    for request in [by_host, absolute] {
        let reply = raw_exchange(gateway.addr, request.as_bytes()).await;
        assert_eq!(reply.statuses(), vec![200], "{}", reply.text);
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].target, "/usage?limit=1");
    assert_eq!(seen[1].target, "/usage?limit=2");
    for request in &seen {
        assert_eq!(
            request.headers.get("host").and_then(|h| h.to_str().ok()),
            Some(upstream_authority.as_str())
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn dot_segments_and_encoded_slashes_in_paths_are_refused_not_resolved() {
    let (upstream, gateway) = start_with_server("").await;
    // (target, status): no path is normalized, so none reaches another route or the upstream.
    let rows = [
        ("/usage/../usage", 404),
        ("/usage/%2e%2e/usage", 404),
        ("/usage/%2E%2E", 400),
        ("/usage/000000001/..", 404),
        ("/usage/000000001%2F000000002", 400),
        ("/usage/tag-total/..%2F..%2Fsims", 400),
        ("/usage%2F000000001", 404),
        ("//usage", 404),
    ];
    for (target, status) in rows {
        let answer = get(&gateway, target).await;
        assert_eq!(answer.status, status, "{target}: {}", answer.body);
    }
    assert_eq!(upstream.calls(), 0);
    gateway.stop().await;
}

#[tokio::test]
async fn a_flood_of_unique_queries_stays_within_cache_max_bytes_and_its_callers_quota() {
    let upstream = FakeUpstream::start().await;
    let padding = "x".repeat(2000);
    upstream.script(move |_, _| Reply::json(200, format!(r#"{{"usage":[],"pad":"{padding}"}}"#)));
    let config = config_with(
        &upstream.base_url(),
        &format!(
            r#"
            rate_limit_per_minute = 100
            [cache]
            max_bytes = 65536
            [[callers]]
            name = "billing"
            key = "{BILLING_KEY}"
            [[callers]]
            name = "flooder"
            key = "{OPS_KEY}"
            upstream_per_minute = 40
            "#
        ),
    );
    let gateway = Gateway::start(config).await;
    let mut refused = 0;
    for offset in 0..120 {
        let answer = get_as(
            &gateway,
            OPS_KEY,
            &format!("/usage?limit=5&offset={offset}"),
        )
        .await;
        match answer.status.as_u16() {
            200 => {}
            429 => {
                assert_eq!(answer.json()["error"], "rate_limit_exceeded");
                assert_eq!(answer.json()["limit"], "caller_quota");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(
        refused, 80,
        "the flooder's quota stops it at 40 upstream calls"
    );
    assert_eq!(upstream.calls(), 40);

    // The organization's budget is still there for everyone else.
    for offset in 0..20 {
        let answer = get(&gateway, &format!("/usage?limit=6&offset={offset}")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let metrics = admin(&gateway, "GET", "/metrics", &[]).await.body;
    let cache_bytes: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("usage_gateway_cache_bytes "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the cache_bytes gauge");
    assert!(cache_bytes <= 65536, "cache holds {cache_bytes} bytes");
    assert!(cache_bytes > 32768, "and is in use: {cache_bytes} bytes");
    gateway.stop().await;
}

#[tokio::test]
async fn a_time_filter_in_the_calendar_s_last_year_is_answered_not_a_panic() {
    let (upstream, gateway) = start_with_server("").await;
    for target in [
        "/usage?filter=time:9999",
        "/usage?filter=time:9999-12",
        "/usage/000000001?filter=time:9999-12-31",
    ] {
        let answer = get(&gateway, target).await;
        assert_eq!(answer.status, 200, "{target}: {}", answer.body);
    }
    assert_eq!(upstream.calls(), 3);
    let metrics = admin(&gateway, "GET", "/metrics", &[]).await.body;
    assert!(
        metrics.contains("usage_gateway_panics_total 0"),
        "no panic was caught"
    );
    gateway.stop().await;
}

/// A client that asks for `count` large answers in one pipelined burst and never reads.
async fn stalled_reader(gateway: &Gateway, count: usize) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small receive window: the server's writes stall after a few KiB are unread.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(gateway.addr).await.expect("connect");
    let request = format!(
        "GET /usage?limit=1000 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n\r\n",
        billing()
    );
    stream
        .write_all(request.repeat(count).as_bytes())
        .await
        .expect("write");
    stream
}

/// Until a new client is answered 200 (bounded by `within`); how long that took.
async fn served_within(gateway: &Gateway, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let reply = raw_exchange(gateway.addr, &raw_get("/usage?limit=1", "")).await;
        if reply.statuses() == vec![200] {
            return Some(started.elapsed());
        }
        tokio::task::yield_now().await;
    }
    None
}

#[tokio::test]
async fn peers_that_stop_reading_are_closed_after_send_timeout_and_free_their_slots() {
    let (upstream, gateway) = start_with_server("max_connections = 2\nsend_timeout_ms = 500").await;
    let large = format!(r#"{{"usage":[],"pad":"{}"}}"#, "x".repeat(1024 * 1024));
    upstream.script(move |request, n| {
        if request.target.contains("limit=1000") {
            Reply::json(200, large.clone())
        } else {
            echo(request, n)
        }
    });
    // Two clients take both slots: each pipelines 64 requests for a 1 MiB answer and reads
    // none of them, so the gateway's writes stall on full socket buffers.
    let _first = stalled_reader(&gateway, 64).await;
    let _second = stalled_reader(&gateway, 64).await;
    let served = served_within(&gateway, Duration::from_secs(10)).await;
    assert!(
        served.is_some(),
        "the stalled connections kept both slots for 10 s"
    );
    assert_eq!(upstream.calls(), 2, "one fill for each question");
    gateway.stop().await;
}

#[tokio::test]
async fn a_connection_carries_at_most_max_requests_per_connection() {
    let (upstream, gateway) = start_with_server("max_requests_per_connection = 3").await;
    let one = format!(
        "GET /usage?limit=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n\r\n",
        billing()
    );
    let reply = raw_exchange(gateway.addr, one.repeat(5).as_bytes()).await;
    assert!(reply.closed, "the gateway closed the connection");
    assert_eq!(reply.statuses(), vec![200, 200, 200], "{}", reply.text);
    assert_eq!(upstream.calls(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_goaway_after_header_timeout() {
    let (_upstream, gateway) = start_with_server("header_timeout_ms = 300").await;
    let stream = TcpStream::connect(gateway.addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 with prior knowledge");
    let connection = tokio::spawn(connection);
    let request = http::Request::get(gateway.url("/usage?limit=1"))
        .header("authorization", billing())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let answer = sender.send_request(request).await.expect("an answer");
    assert_eq!(answer.status(), 200);
    drop(answer);
    // Now idle: the gateway ends the connection, and the client's side of it completes.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed after {:?}",
        started.elapsed()
    );
    gateway.stop().await;
}
