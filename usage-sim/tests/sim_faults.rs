//! End-to-end tests of `usage-sim`'s misbehaving upstream (`--misbehavior`,
//! `POST /__sim/faults`): the real `serve` on 127.0.0.1:0, read off the wire by a raw HTTP/1.1
//! client that reports every byte and how the connection ended.

use std::io::Read;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use usage_sim::{serve, Misbehavior, SimOptions, Simulator};

const KEY: &str = "sim-key-all";
/// A page of about 10 kB.
const PAGE: &str = "/usage?limit=50";
const NOT_JSON: &[u8] = b"<html><body>upstream maintenance</body></html>";

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// How the server ended the exchange.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// An orderly close (FIN).
    Eof,
    /// A TCP reset.
    Reset,
    Other(std::io::ErrorKind),
}

/// One exchange as the client saw it.
#[derive(Debug)]
struct Wire {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    end: End,
    /// Reads that delivered body bytes.
    body_reads: usize,
    /// From connecting to the end of the exchange.
    elapsed: Duration,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("content-length")
            .expect("content-length")
            .parse()
            .expect("integer content-length")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Small data set so debug-build tests start fast.
fn small() -> SimOptions {
    SimOptions {
        sims: 20,
        tags: 2,
        hours: 24 * 5,
        ..SimOptions::default()
    }
}

fn misbehaving(mode: Misbehavior) -> SimOptions {
    SimOptions {
        misbehavior: mode,
        ..small()
    }
}

async fn start(options: SimOptions) -> Server {
    let sim = Simulator::new(options).expect("valid options");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(sim, listener, async move {
        let _ = rx.await;
    }));
    Server {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads until the server ends the
/// connection, so that nothing but the server decides where the bytes stop.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Wire {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut bytes = Vec::new();
    let mut read_ends = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    let end = loop {
        match stream.read(&mut buf).await {
            Ok(0) => break End::Eof,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                read_ends.push(bytes.len());
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
            Err(e) => break End::Other(e.kind()),
        }
    };
    let elapsed = started.elapsed();
    let head_len = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no response head in {:?} ({end:?})",
                String::from_utf8_lossy(&bytes)
            )
        })
        + 4;
    let head = std::str::from_utf8(&bytes[..head_len]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Wire {
        status,
        headers,
        body: bytes[head_len..].to_vec(),
        end,
        body_reads: read_ends.iter().filter(|&&e| e > head_len).count(),
        elapsed,
    }
}

impl Server {
    async fn get(&self, target: &str) -> Wire {
        exchange(self.addr, "GET", target, &[("Authorization", KEY)], "").await
    }

    async fn set_faults(&self, update: Value) -> Wire {
        exchange(self.addr, "POST", "/__sim/faults", &[], &update.to_string()).await
    }

    async fn control(&self, method: &str, path: &str) -> Value {
        let wire = exchange(self.addr, method, path, &[], "").await;
        assert_eq!(wire.status, 200, "{path}");
        wire.json()
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

/// `PAGE` from a sim started with `options`, then the normal answer it stands for (fetched
/// after switching the misbehavior off).
async fn misbehaving_then_normal(options: SimOptions) -> (Wire, Wire) {
    let s = start(options).await;
    let bad = s.get(PAGE).await;
    assert_eq!(
        s.set_faults(json!({"misbehavior": "none"})).await.status,
        200
    );
    let normal = s.get(PAGE).await;
    s.stop().await;
    assert_eq!(normal.status, 200);
    assert_eq!(normal.end, End::Eof);
    assert_eq!(normal.content_length(), normal.body.len());
    (bad, normal)
}

#[tokio::test]
async fn reset_mid_body_sends_half_the_announced_bytes_then_resets_the_connection() {
    let (bad, normal) = misbehaving_then_normal(misbehaving(Misbehavior::ResetMidBody)).await;
    assert_eq!(bad.status, 200);
    assert_eq!(bad.content_length(), normal.body.len());
    assert_eq!(bad.body, normal.body[..normal.body.len() / 2]);
    assert_eq!(bad.end, End::Reset);
}

#[tokio::test]
async fn short_body_sends_half_the_announced_bytes_then_closes_the_connection() {
    let (bad, normal) = misbehaving_then_normal(misbehaving(Misbehavior::ShortBody)).await;
    assert_eq!(bad.status, 200);
    assert_eq!(bad.content_length(), normal.body.len());
    assert_eq!(bad.body, normal.body[..normal.body.len() / 2]);
    assert_eq!(bad.end, End::Eof);
}

#[tokio::test]
async fn over_http2_reset_mid_body_sends_half_then_resets_the_stream() {
    let s = start(misbehaving(Misbehavior::ResetMidBody)).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::get(format!("http://{}{PAGE}", s.addr))
        .header("authorization", KEY)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = h2.request(req).await.expect("the head arrives");
    assert_eq!(res.status(), 200);
    let announced: usize = res.headers()["content-length"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    let mut body = res.into_body();
    let mut received = 0;
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => received += frame.into_data().map_or(0, |d| d.len()),
            Some(Err(e)) => break e,
            None => panic!("the body ended without an error after {received} bytes"),
        }
    };
    assert_eq!(received, announced / 2);
    assert!(format!("{error:?}").contains("Reset"), "{error:?}");
    s.stop().await;
}

#[tokio::test]
async fn not_json_answers_200_with_an_html_page_labelled_json() {
    let (bad, _) = misbehaving_then_normal(misbehaving(Misbehavior::NotJson)).await;
    assert_eq!(bad.status, 200);
    assert!(bad
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    assert_eq!(bad.body, NOT_JSON);
    assert_eq!(bad.content_length(), NOT_JSON.len());
    assert!(serde_json::from_slice::<Value>(&bad.body).is_err());
}

#[tokio::test]
async fn oversized_pads_the_normal_object_to_at_least_oversized_bytes() {
    // The default size, 9 MiB.
    let (bad, normal) = misbehaving_then_normal(misbehaving(Misbehavior::Oversized)).await;
    assert_eq!(bad.status, 200);
    assert_eq!(bad.end, End::Eof);
    assert!(bad.body.len() >= 9_437_184, "{}", bad.body.len());
    assert_eq!(bad.content_length(), bad.body.len());
    let mut padded = bad.json();
    let padding = padded
        .as_object_mut()
        .and_then(|o| o.remove("padding"))
        .expect("a padding field");
    assert!(padding.is_string());
    assert_eq!(padded, normal.json());
}

#[tokio::test]
async fn oversized_bytes_sets_the_padded_size() {
    let (bad, normal) = misbehaving_then_normal(SimOptions {
        oversized_bytes: 50_000,
        ..misbehaving(Misbehavior::Oversized)
    })
    .await;
    assert!(normal.body.len() < 50_000);
    assert_eq!(bad.body.len(), 50_000);
    assert_eq!(bad.json()["usage"], normal.json()["usage"]);
}

#[tokio::test]
async fn trickle_sends_the_normal_answer_in_chunks_over_nine_pauses() {
    let trickle_ms = 30;
    let (bad, normal) = misbehaving_then_normal(SimOptions {
        trickle_ms,
        ..misbehaving(Misbehavior::Trickle)
    })
    .await;
    assert_eq!(bad.status, 200);
    assert_eq!(bad.end, End::Eof);
    assert_eq!(bad.content_length(), normal.body.len());
    assert_eq!(bad.body, normal.body);
    assert!(
        bad.elapsed >= Duration::from_millis(9 * trickle_ms),
        "{:?}",
        bad.elapsed
    );
    assert!(
        bad.body_reads >= 2,
        "the body came in {} read(s)",
        bad.body_reads
    );
}

#[tokio::test]
async fn redirect_answers_302_to_the_redirected_usage_url() {
    let (bad, _) = misbehaving_then_normal(misbehaving(Misbehavior::Redirect)).await;
    assert_eq!(bad.status, 302);
    assert_eq!(bad.header("location"), Some("/usage?redirected=1"));
    assert_eq!(bad.json(), json!({"error": "moved"}));
}

#[tokio::test]
async fn gzip_sends_the_normal_answer_compressed_whatever_the_request_accepts() {
    let s = start(misbehaving(Misbehavior::Gzip)).await;
    let bad = exchange(
        s.addr,
        "GET",
        PAGE,
        &[("Authorization", KEY), ("Accept-Encoding", "identity")],
        "",
    )
    .await;
    s.set_faults(json!({"misbehavior": "none"})).await;
    let normal = s.get(PAGE).await;
    s.stop().await;
    assert_eq!(bad.status, 200);
    assert_eq!(bad.header("content-encoding"), Some("gzip"));
    assert_eq!(bad.header("vary"), Some("Accept-Encoding"));
    assert_eq!(bad.content_length(), bad.body.len());
    let mut decoded = Vec::new();
    flate2::read::GzDecoder::new(&bad.body[..])
        .read_to_end(&mut decoded)
        .expect("valid gzip");
    assert_eq!(decoded, normal.body);
    assert_eq!(normal.header("content-encoding"), None);
}

#[tokio::test]
async fn misbehaving_answers_carry_rate_limit_headers_and_count_against_the_limit() {
    let s = start(SimOptions {
        rate_limit: 2,
        ..misbehaving(Misbehavior::NotJson)
    })
    .await;
    for remaining in ["1", "0"] {
        let bad = s.get(PAGE).await;
        assert_eq!(bad.body, NOT_JSON);
        assert_eq!(bad.header("x-ratelimit-limit"), Some("2"));
        assert_eq!(bad.header("x-ratelimit-remaining"), Some(remaining));
        assert!(bad.header("x-ratelimit-reset").is_some());
    }
    let throttled = s.get(PAGE).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.json(), json!({"error": "rate_limit_exceeded"}));
    s.stop().await;
}

#[tokio::test]
async fn only_answers_that_would_be_200_misbehave() {
    let s = start(misbehaving(Misbehavior::NotJson)).await;
    let unauthorized = exchange(s.addr, "GET", PAGE, &[], "").await;
    assert_eq!(unauthorized.json(), json!({"error": "unauthorized"}));
    let cases = [
        ("/usage?limit=0", 400, "limit_invalid"),
        ("/usage/999999999", 404, "sim_not_found"),
        ("/nowhere", 404, "not_found"),
    ];
    for (target, status, code) in cases {
        let r = s.get(target).await;
        assert_eq!(
            (r.status, r.json()),
            (status, json!({"error": code})),
            "{target}"
        );
    }
    let post = exchange(s.addr, "POST", PAGE, &[("Authorization", KEY)], "").await;
    assert_eq!(post.json(), json!({"error": "method_not_allowed"}));
    let stats = s.control("GET", "/__sim/stats").await;
    assert_eq!(stats["misbehaviors"]["not_json"], 0);
    s.stop().await;
}

#[tokio::test]
async fn every_usage_route_misbehaves() {
    let s = start(misbehaving(Misbehavior::NotJson)).await;
    let tag = {
        let sim = Simulator::new(small()).expect("valid");
        sim.tag_ids()[0].clone()
    };
    for target in [
        PAGE.to_owned(),
        "/usage/000000001".to_owned(),
        format!("/usage/tag-total/{tag}"),
    ] {
        assert_eq!(s.get(&target).await.body, NOT_JSON, "{target}");
    }
    s.stop().await;
}

#[tokio::test]
async fn an_injected_failure_takes_precedence_over_a_misbehavior() {
    let s = start(SimOptions {
        fail_rate: 1.0,
        ..misbehaving(Misbehavior::Gzip)
    })
    .await;
    let r = s.get(PAGE).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.json(), json!({"error": "service_unavailable"}));
    s.stop().await;
}

#[tokio::test]
async fn control_endpoints_never_misbehave() {
    let s = start(misbehaving(Misbehavior::Gzip)).await;
    let stats = exchange(s.addr, "GET", "/__sim/stats", &[], "").await;
    assert_eq!(stats.header("content-encoding"), None);
    assert!(stats.json().is_object());
    s.stop().await;
}

#[tokio::test]
async fn a_misbehavior_rate_of_one_half_misbehaves_on_the_same_requests_every_run() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let s = start(SimOptions {
            misbehavior_rate: 0.5,
            ..misbehaving(Misbehavior::NotJson)
        })
        .await;
        let mut run = Vec::new();
        for _ in 0..40 {
            run.push(s.get("/usage?limit=1").await.body == NOT_JSON);
        }
        s.stop().await;
        runs.push(run);
    }
    assert_eq!(runs[0], runs[1]);
    let misbehaved = runs[0].iter().filter(|&&b| b).count();
    assert!((5..=35).contains(&misbehaved), "{misbehaved} of 40");
}

#[tokio::test]
async fn misbehavior_switches_on_and_off_at_runtime() {
    let s = start(small()).await;
    let normal = s.get(PAGE).await;
    assert_eq!(normal.status, 200);
    let on = s.set_faults(json!({"misbehavior": "redirect"})).await;
    assert_eq!(on.json()["misbehavior"], "redirect");
    assert_eq!(s.get(PAGE).await.status, 302);
    let off = s.set_faults(json!({"misbehavior": "none"})).await;
    assert_eq!(off.json()["misbehavior"], "none");
    let again = s.get(PAGE).await;
    assert_eq!((again.status, again.body), (200, normal.body));
    s.stop().await;
}

#[tokio::test]
async fn get_faults_shows_the_misbehavior_settings_given_at_startup() {
    let s = start(SimOptions {
        misbehavior: Misbehavior::Trickle,
        misbehavior_rate: 0.25,
        oversized_bytes: 1024,
        trickle_ms: 5,
        ..small()
    })
    .await;
    let faults = s.control("GET", "/__sim/faults").await;
    assert_eq!(
        faults,
        json!({
            "fail_rate": 0.0,
            "status": 503,
            "latency_ms": 0,
            "jitter_ms": 0,
            "misbehavior": "trickle",
            "misbehavior_rate": 0.25,
            "oversized_bytes": 1024,
            "trickle_ms": 5
        })
    );
    s.stop().await;
}

#[tokio::test]
async fn a_bad_misbehavior_update_is_rejected_naming_the_field_and_changes_nothing() {
    let s = start(small()).await;
    let before = s.control("GET", "/__sim/faults").await;
    let cases = [
        (json!({"misbehavior": "teapot"}), "misbehavior"),
        (
            json!({"misbehavior": "gzip", "misbehavior_rate": 1.5}),
            "misbehavior_rate",
        ),
        (
            json!({"misbehavior": "gzip", "oversized_bytes": 0}),
            "oversized_bytes",
        ),
        (json!({"misbehaviour": "gzip"}), "misbehaviour"),
    ];
    for (update, field) in cases {
        let r = s.set_faults(update.clone()).await;
        assert_eq!(r.status, 400, "{update}");
        assert_eq!(r.json()["error"], "body_invalid");
        let message = r.json()["message"].as_str().expect("message").to_owned();
        assert!(message.contains(field), "{update}: {message}");
        assert_eq!(s.control("GET", "/__sim/faults").await, before, "{update}");
    }
    s.stop().await;
}

#[tokio::test]
async fn stats_count_misbehaviors_by_mode_until_reset() {
    let s = start(misbehaving(Misbehavior::ShortBody)).await;
    s.get(PAGE).await;
    s.set_faults(json!({"misbehavior": "not_json"})).await;
    s.get(PAGE).await;
    s.get(PAGE).await;
    let stats = s.control("GET", "/__sim/stats").await;
    assert_eq!(
        stats["misbehaviors"],
        json!({
            "reset_mid_body": 0,
            "short_body": 1,
            "not_json": 2,
            "oversized": 0,
            "trickle": 0,
            "redirect": 0,
            "gzip": 0
        })
    );
    assert_eq!(stats["by_status"]["200"], 3);
    s.control("POST", "/__sim/reset").await;
    let stats = s.control("GET", "/__sim/stats").await;
    assert_eq!(stats["misbehaviors"]["not_json"], 0);
    assert_eq!(stats["misbehaviors"]["short_body"], 0);
    s.stop().await;
}

#[test]
fn usage_sim_reads_the_misbehavior_settings_from_the_environment() {
    let run = |var: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_usage-sim"))
            .args(["--listen", "127.0.0.1:0"])
            .env(var, value)
            .output()
            .expect("usage-sim runs")
    };
    let cases = [
        ("USAGE_SIM_MISBEHAVIOR", "teapot", 2, "--misbehavior"),
        (
            "USAGE_SIM_MISBEHAVIOR_RATE",
            "1.5",
            64,
            "--misbehavior-rate",
        ),
        ("USAGE_SIM_OVERSIZED_BYTES", "0", 64, "--oversized-bytes"),
        ("USAGE_SIM_TRICKLE_MS", "soon", 2, "--trickle-ms"),
    ];
    for (var, value, code, needle) in cases {
        let out = run(var, value);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{var}={value}: {stderr}");
        assert!(stderr.contains(needle), "{var}={value}: {stderr}");
    }
}
