//! Test support: a scriptable, counting fake upstream and the real gateway, both on
//! `127.0.0.1:0`, and a small client.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod logs;
pub mod process;
pub mod raw;
pub mod redis_server;
pub mod sim;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use usage_gateway::config::{hash_key, Config};

pub const ORG_TOKEN: &str = "org-secret-token-7c1f";
pub const BILLING_KEY: &str = "billing-key-3b9a";
pub const OPS_KEY: &str = "ops-key-51de";
/// A caller allowed to force refreshes with `Cache-Control: no-cache`.
pub const REFRESHER_KEY: &str = "refresher-key-90ab";
/// A caller with a quota of 2 upstream calls per minute.
pub const METERED_KEY: &str = "metered-key-77c2";

/// What the fake upstream saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: HeaderMap,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("valid status"),
            headers: vec![("content-type", "application/json; charset=utf-8".into())],
            body: Bytes::from(body.into()),
        }
    }

    /// The same reply with `body` as its bytes (which need not be text: a gzip body).
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

type Script = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

struct State {
    calls: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<Arc<Script>>,
    /// While `Some`, every request waits for a permit before answering.
    gate: Mutex<Option<Arc<Semaphore>>>,
    /// Connections are dropped without an answer, as if the upstream were unreachable.
    refusing: std::sync::atomic::AtomicBool,
}

/// The default answer: 200 with a body naming the request target and the call number, so a
/// test can tell which upstream call produced what a caller got.
pub fn echo(request: &Recorded, n: usize) -> Reply {
    Reply::json(
        200,
        serde_json::json!({ "usage": [], "target": request.target, "call": n }).to_string(),
    )
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<bool>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake upstream");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            calls: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(Arc::new(echo)),
            gate: Mutex::new(None),
            refusing: std::sync::atomic::AtomicBool::new(false),
        });
        let (stop, mut stopped) = watch::channel(false);
        let serving = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                if serving.refusing.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            if state.refusing.load(Ordering::SeqCst) {
                                // An error from the service makes hyper drop the connection
                                // without an answer.
                                return Err(std::io::Error::other("refusing"));
                            }
                            Ok::<_, std::io::Error>(answer(&state, request).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeUpstream {
            addr,
            state,
            _stop: stop,
        }
    }

    /// Replaces how requests are answered.
    pub fn script(&self, script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) {
        *self.state.script.lock().expect("lock") = Arc::new(script);
    }

    /// From now on, new connections are dropped and requests on open ones get no answer.
    pub fn refuse_connections(&self) {
        self.state.refusing.store(true, Ordering::SeqCst);
    }

    /// From now on, requests wait until [`FakeUpstream::release`] lets them answer.
    pub fn hold(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.state.gate.lock().expect("lock") = Some(gate.clone());
        gate
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// Waits (bounded) until the upstream has received `n` requests.
    pub async fn wait_for_calls(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.calls() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the upstream call arrived in time");
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let recorded = Recorded {
        method: request.method().clone(),
        target: request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default(),
        headers: request.headers().clone(),
    };
    state.requests.lock().expect("lock").push(recorded.clone());
    let n = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let gate = state.gate.lock().expect("lock").clone();
    if let Some(gate) = gate {
        let permit = gate.acquire().await.expect("gate stays open");
        permit.forget();
    }
    let script = state.script.lock().expect("lock").clone();
    let reply = script(&recorded, n);
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .append(name, value.parse().expect("valid header value"));
    }
    response
}

/// A configuration with only the given `[[callers]]` (and any other tables) in `extra`.
pub fn config_with(base_url: &str, extra: &str) -> Config {
    Config::from_toml(&format!(
        r#"
        [upstream]
        base_url = "{base_url}"
        token = "{ORG_TOKEN}"
        timeout_ms = 2000
        {extra}
        "#
    ))
    .expect("test config is valid")
}

/// A configuration with four callers pointing at `base_url`: billing (by hash), ops (by plain
/// key), refresher (may force refreshes) and metered (2 upstream calls a minute).
pub fn config(base_url: &str) -> Config {
    Config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [upstream]
        base_url = "{base_url}"
        token = "{ORG_TOKEN}"
        timeout_ms = 2000
        [[callers]]
        name = "billing"
        key_sha256 = "{billing}"
        [[callers]]
        name = "ops"
        key = "{OPS_KEY}"
        [[callers]]
        name = "refresher"
        key = "{REFRESHER_KEY}"
        allow_refresh = true
        [[callers]]
        name = "metered"
        key = "{METERED_KEY}"
        upstream_per_minute = 2
        "#,
        billing = hash_key(BILLING_KEY),
    ))
    .expect("test config is valid")
}

pub struct Gateway {
    pub addr: SocketAddr,
    /// The admin listener (health, metrics, status page, purge).
    pub admin: SocketAddr,
    pub reload: usage_gateway::reload::ReloadHandle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    pub async fn start(config: Config) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr = listener.local_addr().expect("local addr");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("local addr");
        let (stop, mut stopped) = watch::channel(false);
        let (reload, reloads) = usage_gateway::reload::channel();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let listeners = usage_gateway::Listeners {
                api: listener,
                admin: Some(admin_listener),
            };
            usage_gateway::serve(config, listeners, shutdown, reloads)
                .await
                .expect("the gateway runs");
        });
        Gateway {
            addr,
            admin,
            reload,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Starts the graceful shutdown without waiting for it to finish.
    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits (bounded) until the gateway has finished shutting down.
    pub async fn stopped(self) {
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the gateway stopped in time")
            .expect("the gateway task ended cleanly");
    }

    pub fn url(&self, target: &str) -> String {
        format!("http://{}{}", self.addr, target)
    }
}

/// A fake upstream and a gateway in front of it.
pub async fn start() -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start().await;
    let gateway = Gateway::start(config(&upstream.base_url())).await;
    (upstream, gateway)
}

/// What a caller got.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// Reads a whole response.
    async fn read(response: Response<Incoming>) -> Answer {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("whole body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
}

pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `method target` with `headers` to the gateway.
pub async fn send(
    gateway: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    request(method, &gateway.url(target), headers).await
}

/// Sends `method url` with `headers` and reads the whole answer.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Empty::<Bytes>::new()).expect("valid request");
    let response = client()
        .request(request)
        .await
        .unwrap_or_else(|error| panic!("{url} answers: {error}"));
    Answer::read(response).await
}

/// `POST url` with a JSON body.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Answer {
    let request = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    let response = Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>()
        .request(request)
        .await
        .unwrap_or_else(|error| panic!("{url} answers: {error}"));
    Answer::read(response).await
}

/// `method path` on the admin listener.
pub async fn admin(
    gateway: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    request(
        method,
        &format!("http://{}{}", gateway.admin, path),
        headers,
    )
    .await
}

/// `GET target` as the billing caller.
pub async fn get(gateway: &Gateway, target: &str) -> Answer {
    get_as(gateway, BILLING_KEY, target).await
}

/// `GET target` with `key`.
pub async fn get_as(gateway: &Gateway, key: &str, target: &str) -> Answer {
    let auth = format!("Bearer {key}");
    send(gateway, "GET", target, &[("authorization", &auth)]).await
}

/// Polls `check` every 20 ms until it holds, for at most `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of the samples of a metric in the gateway's `/metrics`.
pub async fn metric(gateway: &Gateway, name: &str) -> f64 {
    let text = admin(gateway, "GET", "/metrics", &[]).await.body;
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Seconds since the Unix epoch, for scripting `x-ratelimit-reset`.
pub fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Entries that go stale quickly: fresh for 100 ms, then only good for stale-if-error.
pub fn short_lived(config: &mut Config) {
    config.cache.ttl = Duration::from_millis(100);
    config.cache.stale_while_revalidate = Duration::ZERO;
    config.cache.stale_if_error = Duration::from_secs(3600);
}

/// Waits out [`short_lived`]'s TTL: the passing of time is the behaviour under test.
pub async fn let_expire() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// What came back on a raw connection, read until the server closed it (or 5 s passed).
#[derive(Debug, Clone)]
pub struct RawReply {
    /// Everything received, as text (lossy).
    pub text: String,
    /// Everything received.
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection within the bound.
    pub closed: bool,
}

impl RawReply {
    /// Each response received, in order, as (status, body): parsed with `httparse` and framed
    /// by `Content-Length`, so a body that contains "HTTP/1.1 200" cannot pass for an answer.
    pub fn responses(&self) -> Vec<(u16, Vec<u8>)> {
        let mut found = Vec::new();
        let mut rest = &self.bytes[..];
        while !rest.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(head)) = response.parse(rest) else {
                break;
            };
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(rest.len() - head);
            let end = (head + length).min(rest.len());
            found.push((response.code.unwrap_or_default(), rest[head..end].to_vec()));
            rest = &rest[end..];
        }
        found
    }

    /// The status codes of every response, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses()
            .into_iter()
            .map(|(status, _)| status)
            .collect()
    }

    /// The body of the last response.
    pub fn body(&self) -> String {
        self.responses()
            .pop()
            .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
            .unwrap_or_default()
    }
}

/// Writes `bytes` as they are to `addr` and reads until the server closes the connection.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    RawReply {
        text: String::from_utf8_lossy(&received).into_owned(),
        bytes: received,
        closed: read.is_ok(),
    }
}

/// The fake upstream's echo with the rate-limit headers the real API sends, so that the
/// shared budget's probe mode ends with the first answer.
pub fn counted(request: &Recorded, n: usize) -> Reply {
    echo(request, n)
        .header("x-ratelimit-limit", "600")
        .header("x-ratelimit-remaining", "500")
        .header("x-ratelimit-reset", (epoch_secs() + 30).to_string())
}
