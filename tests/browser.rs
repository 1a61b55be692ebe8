//! A browser dashboard: a real headless Chromium loads a page from one origin that fetches
//! usage through the gateway, on another origin, with a key. The gateway answers the
//! preflight and exposes its headers to the listed origin; a page from an unlisted origin is
//! kept out by the browser itself.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it). Without it the test is skipped with a
//! note, unless `CI` is set, where a missing browser fails it.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tokio::net::TcpListener;

use support::sim::{small, start_sim};
use support::{config_with, Gateway, BILLING_KEY};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The longest one page load may take, browser start included.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// The browser, or `None` (with a note) where a local run may do without it.
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(CHROMIUM);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{CHROMIUM} is missing: .ci/run installs Debian's chromium package before the tests"
    );
    eprintln!(
        "note: skipping the browser test: {CHROMIUM} is not installed (apt-get install chromium)"
    );
    None
}

/// The dashboard: fetches `/usage?limit=2` from the gateway with the key in `Authorization`,
/// then writes what it could read (status, exposed headers, body) into `#out`,
/// percent-encoded so that no HTML escaping stands between the page and the test.
fn page(gateway: SocketAddr) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>usage dashboard</title></head>
<body><pre id="out">pending</pre>
<script>
const out = document.getElementById("out");
fetch("http://{gateway}/usage?limit=2", {{ headers: {{ "Authorization": "{BILLING_KEY}" }} }})
  .then(async (r) => {{
    const body = await r.json();
    out.textContent = encodeURIComponent(JSON.stringify({{
      status: r.status,
      cacheStatus: r.headers.get("cache-status"),
      requestId: r.headers.get("x-request-id"),
      limit: r.headers.get("x-ratelimit-limit"),
      remaining: r.headers.get("x-ratelimit-remaining"),
      reset: r.headers.get("x-ratelimit-reset"),
      body,
    }}));
  }})
  .catch((e) => {{ out.textContent = encodeURIComponent(JSON.stringify({{ failed: String(e) }})); }});
</script></body></html>"#
    )
}

/// Serves `html` at every path on `listener` (a plain static page server, another origin).
fn serve_page(listener: TcpListener, html: String) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                    let html = html.clone();
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from(html)));
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("text/html; charset=utf-8"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Loads `url` in headless Chromium (its own temporary profile, bounded in time, killed
/// after) and returns what the page wrote into `#out`, decoded.
async fn load_in_chromium(browser: &PathBuf, url: &str) -> serde_json::Value {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let profile = std::env::temp_dir().join(format!(
        "usage-gateway-chromium-{}-{nanos}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).expect("a temporary profile directory");
    let mut child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Virtual time stands still while the fetch is on the network, so the DOM is
            // dumped once the page's script has finished, not after a guessed pause.
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let read_all = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut text = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    };
    let finished = tokio::time::timeout(BROWSER_DEADLINE, async {
        let (dom, log) = tokio::join!(read_all(Box::new(stdout)), read_all(Box::new(stderr)));
        let _ = child.wait().await;
        (dom, log)
    })
    .await;
    // Whatever happened, no browser outlives the test.
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&profile);
    let (dom, log) = finished.expect("chromium finished within the deadline");
    let written = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("no #out in the dumped DOM:\n{dom}\nchromium said:\n{log}"));
    let decoded = percent_decode_str(written).decode_utf8_lossy();
    serde_json::from_str(&decoded).unwrap_or_else(|_| {
        panic!("#out is not what the page writes: {written}\nchromium said:\n{log}")
    })
}

#[tokio::test]
async fn a_page_on_a_listed_origin_reads_usage_through_the_gateway_and_others_are_kept_out() {
    let Some(browser) = chromium() else {
        return;
    };
    let sim = start_sim(small()).await;
    let listed = TcpListener::bind("127.0.0.1:0").await.expect("bind page");
    let unlisted = TcpListener::bind("127.0.0.1:0").await.expect("bind page");
    let listed_origin = format!("http://{}", listed.local_addr().expect("addr"));
    let unlisted_origin = format!("http://{}", unlisted.local_addr().expect("addr"));
    let gateway = Gateway::start(config_with(
        &sim.base_url(),
        &format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [server.cors]
            allow_origins = ["{listed_origin}"]
            [[callers]]
            name = "dashboard"
            key = "{BILLING_KEY}"
            "#
        ),
    ))
    .await;
    serve_page(listed, page(gateway.addr));
    serve_page(unlisted, page(gateway.addr));

    let seen = load_in_chromium(&browser, &format!("{listed_origin}/")).await;
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(
        seen["body"]["usage"].as_array().map(Vec::len),
        Some(2),
        "{seen}"
    );
    assert_eq!(
        seen["cacheStatus"], "usage-gateway; fwd=miss; stored",
        "{seen}"
    );
    assert_eq!(seen["limit"], "600", "{seen}");
    assert_eq!(seen["remaining"], "599", "{seen}");
    assert!(
        seen["requestId"].as_str().is_some_and(|id| !id.is_empty()),
        "{seen}"
    );
    assert!(
        seen["reset"]
            .as_str()
            .is_some_and(|r| r.parse::<u64>().is_ok()),
        "{seen}"
    );

    // The same page from an origin the gateway does not list: the browser refuses to let it
    // read the answer.
    let refused = load_in_chromium(&browser, &format!("{unlisted_origin}/")).await;
    assert!(
        refused["failed"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{refused}"
    );
    gateway.stop().await;
}
