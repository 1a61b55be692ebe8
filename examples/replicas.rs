//! The scale-out report: the shielding workload (`examples/workload`) spread over three gateway
//! replicas sharing one Redis, against `usage-sim` enforcing 600 calls per wall-clock minute for
//! the organization; compared with one gateway on its own; then the fault runs (Redis killed,
//! Redis paused, a replica killed).
//!
//! Run with `bench/replicas.sh`. Every server listens on 127.0.0.1 only: the simulator in this
//! process, `redis-server` and the gateways (the release binary, `GATEWAY_BIN`) as child
//! processes, killed when this program ends. Every load loop is bounded in time (`DURATION`
//! seconds per main run, `FAULT_SECS` per fault run).
#![allow(clippy::print_stdout)] // a report printed to stdout is this program's purpose

mod workload;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use usage_sim::{SimOptions, Simulator};

use workload::{question_space, respell, Rng, Zipf, BURST_EVERY, BURST_SIZE, CALLERS, THINK_TIME};

const ORG_TOKEN: &str = "replicas-org-token";
/// Two stored answers of one question less than this apart count as a duplicate fetch (every
/// answer stays fresh at least 60 s, so a second fill sooner fetched what was there).
const DUPLICATE_WITHIN: Duration = Duration::from_secs(50);
/// Workers: as `shield` (6 callers x 4), each sending to the replicas in turn.
const WORKERS: usize = 24;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn secs_from_env(name: &str, default: u64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs.clamp(5, 3600))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A child process, killed (SIGKILL) when dropped.
struct Process(Child);

impl Process {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn signal(&self, signal: &str) {
        // A process already gone (killed by a fault run) is no error here.
        let _ = Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

fn start_redis(port: u16, dir: &Path) -> Process {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Process(child)
}

struct Replica {
    process: Process,
    api: SocketAddr,
    admin: SocketAddr,
}

fn start_gateway(
    bin: &Path,
    dir: &Path,
    name: &str,
    sim: SocketAddr,
    redis: Option<u16>,
) -> Replica {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let callers: String = CALLERS
        .iter()
        .map(|caller| format!("[[callers]]\nname = \"{caller}\"\nkey = \"{caller}-key\"\n"))
        .collect();
    let shared = redis.map_or_else(String::new, |port| {
        format!("[shared]\nredis_url = \"redis://127.0.0.1:{port}\"\ninstance_id = \"{name}\"\n")
    });
    let config = format!(
        "[server]\nlisten = \"{api}\"\n[admin]\nlisten = \"{admin}\"\n[upstream]\nbase_url = \"http://{sim}\"\ntoken = \"{ORG_TOKEN}\"\n[log]\nlevel = \"warn\"\naccess = false\n{shared}{callers}"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).expect("write config");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("the gateway starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(api).is_err() || std::net::TcpStream::connect(admin).is_err()
    {
        assert!(Instant::now() < deadline, "{name} did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Replica {
        process: Process(child),
        api,
        admin,
    }
}

async fn get_text(client: &HttpClient, url: &str) -> Option<String> {
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

async fn sim_stats(client: &HttpClient, sim: SocketAddr) -> serde_json::Value {
    let text = get_text(client, &format!("http://{sim}/__sim/stats"))
        .await
        .expect("the simulator answers");
    serde_json::from_str(&text).expect("stats are JSON")
}

fn count(stats: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(stats, |value, key| &value[*key])
        .as_u64()
        .unwrap_or(0)
}

/// Redis commands a replica has sent (completed or failed), from its `/metrics`.
async fn redis_commands(client: &HttpClient, replica: &Replica) -> Option<u64> {
    let text = get_text(client, &format!("http://{}/metrics", replica.admin)).await?;
    Some(
        text.lines()
            .filter(|line| {
                line.starts_with("usage_gateway_redis_command_duration_seconds_count")
                    || line.starts_with("usage_gateway_redis_failures_total")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

fn cache_class(status: &str) -> &'static str {
    if status.ends_with("stale-while-revalidate") || status.ends_with("stale-if-error") {
        "stale"
    } else if status.contains("; hit") && status.ends_with("detail=shared") {
        "shared-hit"
    } else if status.contains("; hit") {
        "hit"
    } else if status.contains("collapsed") {
        "collapsed"
    } else if status.ends_with("stored") {
        "miss"
    } else if status.is_empty() {
        "none"
    } else {
        "bypass"
    }
}

/// What the callers saw in one run.
#[derive(Default)]
struct Tally {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_cache: BTreeMap<&'static str, u64>,
    /// Latencies (µs) by cache class.
    latency: HashMap<&'static str, Vec<u32>>,
    /// When each question was last stored (by any replica).
    stored: HashMap<usize, Instant>,
    duplicates: u64,
    /// The slowest answer to a request sent while a fault was on.
    slowest_during_fault: Duration,
    first_fill_after: Option<Instant>,
}

struct Load {
    tally: Mutex<Tally>,
    /// Replicas requests may go to (a killed one is taken out, as a load balancer would).
    alive: Vec<AtomicBool>,
    fault_on: AtomicBool,
    /// Set when Redis returns: the first stored answer after it is timed.
    watch_fill_since: Mutex<Option<Instant>>,
}

impl Load {
    fn record(
        &self,
        question: usize,
        status: u16,
        cache: &'static str,
        took: Duration,
        sent_in_fault: bool,
    ) {
        let mut tally = self.tally.lock().expect("tally");
        tally.requests += 1;
        *tally.by_status.entry(status).or_default() += 1;
        *tally.by_cache.entry(cache).or_default() += 1;
        tally
            .latency
            .entry(cache)
            .or_default()
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        if sent_in_fault {
            tally.slowest_during_fault = tally.slowest_during_fault.max(took);
        }
        if cache == "miss" {
            let now = Instant::now();
            if let Some(previous) = tally.stored.insert(question, now) {
                if now.duration_since(previous) < DUPLICATE_WITHIN {
                    tally.duplicates += 1;
                }
            }
            let since = *self.watch_fill_since.lock().expect("watch");
            if let Some(since) = since {
                if tally.first_fill_after.is_none() && now > since {
                    tally.first_fill_after = Some(now);
                }
            }
        }
    }
}

async fn ask(
    client: &HttpClient,
    load: &Load,
    replicas: &[SocketAddr],
    turn: usize,
    caller: &str,
    question: usize,
    target: &str,
) {
    // The next live replica in turn; a dead one is skipped (and marked on a transport error).
    let n = replicas.len();
    let Some(index) = (0..n)
        .map(|i| (turn + i) % n)
        .find(|&i| load.alive[i].load(Ordering::Relaxed))
    else {
        return;
    };
    let request = http::Request::get(format!("http://{}{target}", replicas[index]))
        .header("authorization", format!("Bearer {caller}-key"))
        .body(Empty::new())
        .expect("valid request");
    let in_fault = load.fault_on.load(Ordering::Relaxed);
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(20), client.request(request)).await;
    match answered {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let cache = cache_class(
                response
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            );
            let _ = response.into_body().collect().await;
            load.record(question, status, cache, started.elapsed(), in_fault);
        }
        _ => load.record(question, 0, "none", started.elapsed(), in_fault),
    }
}

fn percentile(values: &mut [u32], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(f64::from(values[rank - 1]) / 1000.0)
}

/// One bounded run of the workload over `replicas` while `fault` plays out.
async fn run_load(
    client: &HttpClient,
    replicas: &[SocketAddr],
    questions: &Arc<Vec<String>>,
    zipf: &Arc<Zipf>,
    length: Duration,
    fault: impl std::future::Future<Output = ()>,
    load: &Arc<Load>,
) {
    let running = Arc::new(AtomicBool::new(true));
    let replicas: Arc<Vec<SocketAddr>> = Arc::new(replicas.to_vec());
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let caller = CALLERS[w % CALLERS.len()];
        let (client, zipf, questions, load, running, replicas) = (
            client.clone(),
            zipf.clone(),
            questions.clone(),
            load.clone(),
            running.clone(),
            replicas.clone(),
        );
        let mut rng = Rng(w as u64 + 1);
        tasks.push(tokio::spawn(async move {
            let mut turn = w;
            while running.load(Ordering::Relaxed) {
                let question = zipf.sample(&mut rng);
                let target = respell(&questions[question], &mut rng);
                ask(&client, &load, &replicas, turn, caller, question, &target).await;
                turn += 1;
                tokio::time::sleep(THINK_TIME).await;
            }
        }));
    }
    let started = Instant::now();
    let bursts = async {
        let mut rng = Rng(99);
        let mut burst_no = 0usize;
        while started.elapsed() < length {
            let left = length.saturating_sub(started.elapsed());
            tokio::time::sleep(BURST_EVERY.min(left)).await;
            if started.elapsed() >= length {
                break;
            }
            let burst: Vec<_> = (0..BURST_SIZE)
                .map(|i| {
                    let question = zipf.sample(&mut rng);
                    let target = questions[question].clone();
                    let (client, load, replicas) = (client.clone(), load.clone(), replicas.clone());
                    let caller = CALLERS[i % CALLERS.len()];
                    let turn = burst_no * BURST_SIZE + i;
                    tokio::spawn(async move {
                        ask(&client, &load, &replicas, turn, caller, question, &target).await;
                    })
                })
                .collect();
            for task in burst {
                let _ = task.await;
            }
            burst_no += 1;
        }
    };
    tokio::join!(bursts, fault);
    running.store(false, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
}

/// One row of the report.
struct Row {
    run: String,
    seconds: u64,
    requests: u64,
    errors: String,
    classes: BTreeMap<&'static str, u64>,
    upstream_calls: u64,
    upstream_429: u64,
    peak_60s: u64,
    duplicates: u64,
    shared_ratio: Option<f64>,
    hit_p99: Option<f64>,
    shared_hit_p99: Option<f64>,
    redis_per_request: Option<f64>,
    note: String,
}

fn print_row(row: &Row) {
    let class = |name: &str| row.classes.get(name).copied().unwrap_or(0);
    let fmt = |value: Option<f64>, digits: usize| {
        value.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
    };
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        row.run,
        row.seconds,
        row.requests,
        row.errors,
        class("hit"),
        class("shared-hit"),
        class("collapsed"),
        class("stale"),
        class("miss"),
        row.upstream_calls,
        row.upstream_429,
        row.peak_60s,
        row.duplicates,
        fmt(row.shared_ratio, 2),
        fmt(row.hit_p99, 2),
        fmt(row.shared_hit_p99, 2),
        fmt(row.redis_per_request, 3),
    );
    if !row.note.is_empty() {
        println!("|  | {} | | | | | | | | | | | | | | | |", row.note);
    }
}

fn new_load(replicas: usize) -> Arc<Load> {
    Arc::new(Load {
        tally: Mutex::new(Tally::default()),
        alive: (0..replicas).map(|_| AtomicBool::new(true)).collect(),
        fault_on: AtomicBool::new(false),
        watch_fill_since: Mutex::new(None),
    })
}

async fn start_sim() -> (SocketAddr, Simulator, watch::Sender<bool>) {
    // The upstream: 600 calls per minute for the organization (every key), on the wall clock,
    // with latency like the real API's.
    let simulator = Simulator::new(SimOptions {
        keys: vec![ORG_TOKEN.to_owned()],
        live_clock: true,
        rate_scope: usage_sim::RateScope::Org,
        latency_ms: 20,
        jitter_ms: 30,
        ..SimOptions::default()
    })
    .expect("simulator options");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(usage_sim::serve(simulator.clone(), listener, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    (addr, simulator, stop)
}

/// Runs the workload and measures it into a row.
#[allow(clippy::too_many_arguments)]
async fn measured(
    run: &str,
    client: &HttpClient,
    sim: SocketAddr,
    replicas: &[Replica],
    questions: &Arc<Vec<String>>,
    zipf: &Arc<Zipf>,
    length: Duration,
    load: Arc<Load>,
    fault: impl std::future::Future<Output = String>,
) -> Row {
    let before = sim_stats(client, sim).await;
    let mut commands_before = 0;
    for replica in replicas {
        commands_before += redis_commands(client, replica).await.unwrap_or(0);
    }
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.api).collect();
    let started = Instant::now();
    let note = Arc::new(Mutex::new(String::new()));
    let fault = {
        let note = note.clone();
        async move {
            let said = fault.await;
            *note.lock().expect("note") = said;
        }
    };
    run_load(client, &addrs, questions, zipf, length, fault, &load).await;
    let seconds = started.elapsed().as_secs();
    let after = sim_stats(client, sim).await;
    let mut commands_after = 0;
    let mut all_answered = true;
    for (i, replica) in replicas.iter().enumerate() {
        if !load.alive[i].load(Ordering::Relaxed) {
            all_answered = false;
            continue;
        }
        match redis_commands(client, replica).await {
            Some(n) => commands_after += n,
            None => all_answered = false,
        }
    }
    let mut tally = load.tally.lock().expect("tally");
    let errors: Vec<String> = tally
        .by_status
        .iter()
        .filter(|(status, _)| **status != 200)
        .map(|(status, n)| {
            if *status == 0 {
                format!("transport {n}")
            } else {
                format!("{status}: {n}")
            }
        })
        .collect();
    let class = |name: &str| tally.by_cache.get(name).copied().unwrap_or(0) as f64;
    let memory_misses = class("shared-hit") + class("collapsed") + class("miss") + class("bypass");
    let shared_ratio =
        (replicas.len() > 1 && memory_misses > 0.0).then(|| class("shared-hit") / memory_misses);
    let requests = tally.requests;
    let uses_redis = replicas.len() > 1;
    let hit_p99 = tally
        .latency
        .get_mut("hit")
        .and_then(|v| percentile(v, 0.99));
    let shared_hit_p99 = tally
        .latency
        .get_mut("shared-hit")
        .and_then(|v| percentile(v, 0.99));
    let note = note.lock().expect("note").clone();
    Row {
        run: run.to_owned(),
        seconds,
        requests,
        errors: if errors.is_empty() {
            "0".to_owned()
        } else {
            errors.join(", ")
        },
        classes: tally.by_cache.clone(),
        upstream_calls: count(&after, &["requests_total"]) - count(&before, &["requests_total"]),
        upstream_429: count(&after, &["by_status", "429"]) - count(&before, &["by_status", "429"]),
        peak_60s: count(&after, &["peak_60s"]),
        duplicates: tally.duplicates,
        shared_ratio,
        hit_p99,
        shared_hit_p99,
        redis_per_request: (uses_redis && all_answered && requests > 0)
            .then(|| commands_after.saturating_sub(commands_before) as f64 / requests as f64),
        note,
    }
}

#[tokio::main]
async fn main() {
    let duration = secs_from_env("DURATION", 120);
    let fault_secs = secs_from_env("FAULT_SECS", 30);
    let bin = PathBuf::from(
        std::env::var("GATEWAY_BIN").unwrap_or_else(|_| "target/release/usage-gateway".into()),
    );
    let dir = std::env::temp_dir().join(format!("usage-gateway-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work dir");
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(512)
        .build_http();

    println!("# usage-gateway scale-out report\n");
    println!(
        "workload: `shield`'s ({} callers, {WORKERS} workers with {THINK_TIME:?} think time, bursts of {BURST_SIZE} every {BURST_EVERY:?}, Zipf over the same questions in 3 spellings), each request to the next replica in turn",
        CALLERS.len()
    );
    println!("upstream: usage-sim, 600 calls/min for the organization (wall clock), 20-50 ms latency; gateways: release binary, defaults, [shared] on one redis-server (no persistence)");
    println!("main runs {} s each; fault runs {} s each, on the same simulator and Redis as the 3-replica run (peak_60s is the busiest minute since that simulator started)\n", duration.as_secs(), fault_secs.as_secs());
    println!("| run | s | requests | errors | hit | shared-hit | collapsed | stale | miss | upstream calls | upstream 429 | peak_60s | duplicate fills | shared-hit / memory misses | hit p99 ms | shared-hit p99 ms | Redis cmds / request |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");

    // 1. One gateway on its own: the baseline.
    let (sim, simulator, stop_sim) = start_sim().await;
    let questions = Arc::new(question_space(&simulator.sim_ids(), &simulator.tag_ids()));
    let zipf = Arc::new(Zipf::new(questions.len(), workload::ZIPF_S));
    let single = start_gateway(&bin, &dir, "single", sim, None);
    let baseline = measured(
        "1 gateway",
        &client,
        sim,
        std::slice::from_ref(&single),
        &questions,
        &zipf,
        duration,
        new_load(1),
        async { String::new() },
    )
    .await;
    print_row(&baseline);
    drop(single);
    let _ = stop_sim.send(true);

    // 2. Three replicas on one Redis, a fresh simulator.
    let (sim, _simulator, _stop_sim) = start_sim().await;
    let redis_port = free_port();
    let redis = Arc::new(Mutex::new(start_redis(redis_port, &dir)));
    let replicas: Vec<Replica> = (1..=3)
        .map(|n| start_gateway(&bin, &dir, &format!("replica-{n}"), sim, Some(redis_port)))
        .collect();
    let shared = measured(
        "3 replicas",
        &client,
        sim,
        &replicas,
        &questions,
        &zipf,
        duration,
        new_load(3),
        async { String::new() },
    )
    .await;
    print_row(&shared);

    // 3. Redis killed for a third of the run, then back (empty).
    let load = new_load(3);
    let fault = {
        let (load, redis, dir) = (load.clone(), redis.clone(), dir.clone());
        let client = client.clone();
        async move {
            tokio::time::sleep(fault_secs / 4).await;
            load.fault_on.store(true, Ordering::Relaxed);
            redis.lock().expect("redis").kill();
            // Calls already sent when it died may still land: count from a moment later.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at_kill = count(&sim_stats(&client, sim).await, &["requests_total"]);
            tokio::time::sleep(fault_secs / 3).await;
            let at_return = count(&sim_stats(&client, sim).await, &["requests_total"]);
            *redis.lock().expect("redis") = start_redis(redis_port, &dir);
            let back = Instant::now();
            *load.watch_fill_since.lock().expect("watch") = Some(back);
            load.fault_on.store(false, Ordering::Relaxed);
            tokio::time::sleep(fault_secs / 3).await;
            let first_fill = load
                .tally
                .lock()
                .expect("tally")
                .first_fill_after
                .map(|at| at.duration_since(back));
            format!(
                "Redis down {:?}: {} upstream calls while down; first fill {} after its return; slowest answer while down {:?}",
                fault_secs / 3,
                at_return - at_kill,
                first_fill.map_or("none".to_owned(), |d| format!("{} ms", d.as_millis())),
                load.tally.lock().expect("tally").slowest_during_fault,
            )
        }
    };
    let row = measured(
        "Redis killed",
        &client,
        sim,
        &replicas,
        &questions,
        &zipf,
        fault_secs,
        load,
        fault,
    )
    .await;
    print_row(&row);

    // 4. Redis paused (SIGSTOP) for 3 s.
    let load = new_load(3);
    let fault = {
        let (load, redis) = (load.clone(), redis.clone());
        async move {
            tokio::time::sleep(fault_secs / 3).await;
            load.fault_on.store(true, Ordering::Relaxed);
            redis.lock().expect("redis").signal("-STOP");
            tokio::time::sleep(Duration::from_secs(3)).await;
            redis.lock().expect("redis").signal("-CONT");
            load.fault_on.store(false, Ordering::Relaxed);
            format!(
                "Redis paused 3 s: slowest answer to a request sent meanwhile {:?}",
                load.tally.lock().expect("tally").slowest_during_fault
            )
        }
    };
    let row = measured(
        "Redis paused",
        &client,
        sim,
        &replicas,
        &questions,
        &zipf,
        fault_secs,
        load,
        fault,
    )
    .await;
    print_row(&row);

    // 5. A replica killed (SIGKILL) a third of the way in; the load goes to the other two.
    let load = new_load(3);
    let fault = {
        let load = load.clone();
        let doomed = &replicas[2].process;
        async move {
            tokio::time::sleep(fault_secs / 3).await;
            doomed.signal("-KILL");
            load.alive[2].store(false, Ordering::Relaxed);
            "replica-3 killed (SIGKILL) a third of the way in; its callers moved to the other two"
                .to_owned()
        }
    };
    let row = measured(
        "replica killed",
        &client,
        sim,
        &replicas,
        &questions,
        &zipf,
        fault_secs,
        load,
        fault,
    )
    .await;
    print_row(&row);

    // Targets.
    println!();
    let ratio = shared.upstream_calls as f64 / baseline.upstream_calls.max(1) as f64;
    let fills = shared.classes.get("miss").copied().unwrap_or(0);
    println!("- upstream calls, 3 replicas / 1 gateway: {ratio:.3} (target <= 1.05)");
    println!(
        "- duplicate fills: {} of {fills} ({:.2}%; target <= 0.5%)",
        shared.duplicates,
        100.0 * shared.duplicates as f64 / fills.max(1) as f64
    );
    if let (Some(single), Some(replicated)) = (baseline.hit_p99, shared.hit_p99) {
        println!(
            "- memory-hit p99: {replicated:.2} ms vs {single:.2} ms alone ({:+.0}%; target within 10%)",
            100.0 * (replicated / single - 1.0)
        );
    }
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
}
