//! The shielding report: a realistic mixed workload through the gateway against `usage-sim`
//! enforcing the real 600-calls-per-minute limit, healthy, then down, then recovered.
//!
//! Run with `bench/shield.sh` (or `cargo run --release --example shield`). Everything listens
//! on 127.0.0.1; every phase is bounded in time. Phase lengths come from the environment:
//! `SHIELD_HEALTHY_SECS` (default 90), `SHIELD_DOWN_SECS` (100: longer than the 60 s TTL plus
//! the 30 s stale-while-revalidate window, so stale-if-error is exercised),
//! `SHIELD_RECOVER_SECS` (30).
#![allow(clippy::print_stdout)] // a report printed to stdout is this program's purpose

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use usage_gateway::Config;
use usage_sim::{SimOptions, Simulator};

const ORG_TOKEN: &str = "shield-org-token";
mod workload;

use workload::{
    question_space, respell, Rng, Zipf, BURST_EVERY, BURST_SIZE, CALLERS, THINK_TIME,
    WORKERS_PER_CALLER, ZIPF_S,
};

fn secs_from_env(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs.clamp(1, 3600))
}

/// What callers saw in one phase.
#[derive(Default)]
struct Tally {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_cache: BTreeMap<String, u64>,
    /// Errors for questions that had been answered before (a stale copy could exist).
    errors_with_history: u64,
    /// Errors for questions never answered before.
    errors_never_cached: u64,
}

struct Shared {
    tally: Mutex<Tally>,
    answered: Mutex<HashSet<usize>>,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn ask(
    client: &HttpClient,
    gateway: SocketAddr,
    caller: &str,
    target: &str,
) -> (u16, String) {
    let request = http::Request::get(format!("http://{gateway}{target}"))
        .header("authorization", format!("Bearer {caller}-key"))
        .body(Empty::new())
        .expect("valid request");
    match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let cache = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .map(cache_label)
                .unwrap_or("error")
                .to_owned();
            let _ = response.into_body().collect().await;
            (status, cache)
        }
        Err(_) => (0, "transport-error".to_owned()),
    }
}

fn cache_label(status: &str) -> &'static str {
    if status.ends_with("stale-while-revalidate") {
        "stale-while-revalidate"
    } else if status.ends_with("stale-if-error") {
        "stale-if-error"
    } else if status.contains("; hit") {
        "hit"
    } else if status.contains("collapsed") {
        "collapsed"
    } else if status.ends_with("stored") {
        "miss"
    } else {
        "bypass"
    }
}

fn record(shared: &Shared, question: usize, status: u16, cache: String) {
    let mut tally = shared.tally.lock().expect("tally");
    tally.requests += 1;
    *tally.by_status.entry(status).or_default() += 1;
    *tally.by_cache.entry(cache).or_default() += 1;
    let mut answered = shared.answered.lock().expect("answered");
    if status == 200 {
        answered.insert(question);
    } else if answered.contains(&question) {
        tally.errors_with_history += 1;
    } else {
        tally.errors_never_cached += 1;
    }
}

async fn sim_stats(client: &HttpClient, sim: SocketAddr) -> serde_json::Value {
    let response = client
        .get(format!("http://{sim}/__sim/stats").parse().expect("uri"))
        .await
        .expect("the simulator answers");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&body).expect("stats are JSON")
}

async fn set_faults(sim: SocketAddr, body: &str) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(format!("http://{sim}/__sim/faults"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = client
        .request(request)
        .await
        .expect("the simulator answers");
    assert!(response.status().is_success(), "faults accepted");
}

fn count(stats: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(stats, |value, key| &value[*key])
        .as_u64()
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let phases = [
        ("healthy", secs_from_env("SHIELD_HEALTHY_SECS", 90), false),
        ("down", secs_from_env("SHIELD_DOWN_SECS", 100), true),
        ("recovered", secs_from_env("SHIELD_RECOVER_SECS", 30), false),
    ];

    // The upstream: usage-sim enforcing 600 calls per minute on the wall clock, with latency.
    let simulator = Simulator::new(SimOptions {
        keys: vec![ORG_TOKEN.to_owned()],
        live_clock: true,
        latency_ms: 20,
        jitter_ms: 30,
        ..SimOptions::default()
    })
    .expect("simulator options");
    let questions = question_space(&simulator.sim_ids(), &simulator.tag_ids());
    let sim_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sim_addr = sim_listener.local_addr().expect("addr");
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(usage_sim::serve(
        simulator,
        sim_listener,
        until_stopped(stopped.clone()),
    ));

    // The gateway, with its defaults, in front of it.
    let callers: String = CALLERS
        .iter()
        .map(|name| format!("[[callers]]\nname = \"{name}\"\nkey = \"{name}-key\"\n"))
        .collect();
    let config = Config::from_toml(&format!(
        "[upstream]\nbase_url = \"http://{sim_addr}\"\ntoken = \"{ORG_TOKEN}\"\n{callers}"
    ))
    .expect("gateway config");
    let gateway_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway = gateway_listener.local_addr().expect("addr");
    tokio::spawn(usage_gateway::run(
        config,
        gateway_listener,
        until_stopped(stopped),
    ));

    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let zipf = Arc::new(Zipf::new(questions.len(), ZIPF_S));
    let questions = Arc::new(questions);
    let shared = Arc::new(Shared {
        tally: Mutex::new(Tally::default()),
        answered: Mutex::new(HashSet::new()),
    });

    println!("# usage-gateway shielding report\n");
    println!(
        "workload: {} callers x {} workers (think time {:?}), bursts of {} every {:?}, Zipf s={} over {} distinct questions in 3 spellings",
        CALLERS.len(), WORKERS_PER_CALLER, THINK_TIME, BURST_SIZE, BURST_EVERY, ZIPF_S, questions.len()
    );
    println!("upstream: usage-sim, 600 calls/min per key (wall clock), 20-50 ms latency; gateway defaults\n");
    println!("| phase | seconds | requests | 200 | errors | errors, cached before | errors, never cached | hit | collapsed | stale-while-revalidate | stale-if-error | miss | upstream calls | upstream 429s |");
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );

    let mut totals = (0u64, 0u64, 0u64);
    for (phase, length, down) in phases {
        if down {
            set_faults(sim_addr, r#"{"fail_rate": 1.0, "status": 503}"#).await;
        } else {
            set_faults(sim_addr, r#"{"fail_rate": 0.0}"#).await;
        }
        let before = sim_stats(&client, sim_addr).await;
        *shared.tally.lock().expect("tally") = Tally::default();
        let running = Arc::new(AtomicBool::new(true));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (c, caller) in CALLERS.iter().enumerate() {
            for w in 0..WORKERS_PER_CALLER {
                let (client, zipf, questions, shared, running) = (
                    client.clone(),
                    zipf.clone(),
                    questions.clone(),
                    shared.clone(),
                    running.clone(),
                );
                let mut rng = Rng((c * 100 + w) as u64 + 1);
                tasks.push(tokio::spawn(async move {
                    while running.load(Ordering::Relaxed) {
                        let question = zipf.sample(&mut rng);
                        let target = respell(&questions[question], &mut rng);
                        let (status, cache) = ask(&client, gateway, caller, &target).await;
                        record(&shared, question, status, cache);
                        tokio::time::sleep(THINK_TIME).await;
                    }
                }));
            }
        }
        let mut burst_rng = Rng(99);
        while started.elapsed() < length {
            let left = length.saturating_sub(started.elapsed());
            tokio::time::sleep(BURST_EVERY.min(left)).await;
            if started.elapsed() >= length {
                break;
            }
            let burst: Vec<_> = (0..BURST_SIZE)
                .map(|i| {
                    let question = zipf.sample(&mut burst_rng);
                    let target = questions[question].clone();
                    let (client, shared) = (client.clone(), shared.clone());
                    let caller = CALLERS[i % CALLERS.len()];
                    tokio::spawn(async move {
                        let (status, cache) = ask(&client, gateway, caller, &target).await;
                        record(&shared, question, status, cache);
                    })
                })
                .collect();
            for task in burst {
                let _ = task.await;
            }
        }
        running.store(false, Ordering::Relaxed);
        for task in tasks {
            let _ = task.await;
        }
        let after = sim_stats(&client, sim_addr).await;
        let upstream_calls =
            count(&after, &["requests_total"]) - count(&before, &["requests_total"]);
        let throttled =
            count(&after, &["by_status", "429"]) - count(&before, &["by_status", "429"]);
        let tally = shared.tally.lock().expect("tally");
        let ok = tally.by_status.get(&200).copied().unwrap_or(0);
        let cache = |label: &str| tally.by_cache.get(label).copied().unwrap_or(0);
        println!(
            "| {phase} | {} | {} | {ok} | {} | {} | {} | {} | {} | {} | {} | {} | {upstream_calls} | {throttled} |",
            started.elapsed().as_secs(),
            tally.requests,
            tally.requests - ok,
            tally.errors_with_history,
            tally.errors_never_cached,
            cache("hit"),
            cache("collapsed"),
            cache("stale-while-revalidate"),
            cache("stale-if-error"),
            cache("miss"),
        );
        if tally.requests > ok {
            let errors: Vec<String> = tally
                .by_status
                .iter()
                .filter(|(status, _)| **status != 200)
                .map(|(status, n)| format!("{status}: {n}"))
                .collect();
            println!(
                "|  | errors by status: {} | | | | | | | | | | | | |",
                errors.join(", ")
            );
        }
        totals.0 += tally.requests;
        totals.1 += upstream_calls;
        totals.2 += throttled;
    }
    println!(
        "\ntotal: {} requests served with {} upstream calls ({:.1}% of requests reached the upstream; {} calls saved), {} upstream 429s",
        totals.0,
        totals.1,
        100.0 * totals.1 as f64 / totals.0.max(1) as f64,
        totals.0.saturating_sub(totals.1),
        totals.2
    );
    let _ = stop.send(true);
}
