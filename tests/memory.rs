//! Memory stays bounded by what the cache weighs: `cache.max_bytes` bounds the process, not
//! only the cache's own count. Measured on the real binary, from `/proc`.

mod support;

use std::process::{Command, Stdio};

use support::process::{log_lines, wait_for_line, KillOnDrop, BIN};
use support::{FakeUpstream, Reply};

const KEY: &str = "memory-test-key";

/// The child's resident set, in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// `name value` from a Prometheus text page.
fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// The address a log line announces (`address=127.0.0.1:port`).
fn address_in(line: &str) -> String {
    line.split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no address in {line}"))
}

#[tokio::test]
async fn small_answers_stored_after_large_ones_cost_what_the_cache_weighs() {
    // Large answers (512 KiB, over max_entry_bytes: served, never stored) grow the upstream
    // connection's read buffer; each small answer read after one is stored.
    let upstream = FakeUpstream::start().await;
    let large = format!(r#"{{"usage":[],"pad":"{}"}}"#, "x".repeat(512 * 1024));
    upstream.script(move |request, n| {
        if request.target.contains("limit=1000") {
            Reply::json(200, large.clone())
        } else {
            Reply::json(200, format!(r#"{{"usage":[],"call":{n}}}"#))
        }
    });
    let dir = std::env::temp_dir().join(format!("usage-gateway-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\nlevel = \"warn,usage_gateway=info\"\n[upstream]\nbase_url = \"{}\"\ntoken = \"memory-test-token\"\nrate_limit_per_minute = 100000\n[cache]\nmax_bytes = 1048576\nmax_entry_bytes = 65536\n[[callers]]\nname = \"billing\"\nkey = \"{KEY}\"\n",
            upstream.base_url()
        ),
    )
    .expect("write config");
    let mut child = KillOnDrop(
        Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawns"),
    );
    let lines = log_lines(child.0.stdout.take().expect("stdout"));
    let admin = address_in(&wait_for_line(&lines, "admin endpoints listening"));
    let api = address_in(&wait_for_line(&lines, "usage-gateway listening"));
    let pid = child.0.id();
    let auth = format!("Bearer {KEY}");
    let pairs = |range: std::ops::Range<usize>| {
        let (api, auth) = (api.clone(), auth.clone());
        async move {
            for n in range {
                for target in [
                    format!("/usage?limit=1000&offset={n}"),
                    format!("/usage?limit=1&offset={n}"),
                ] {
                    let answer = support::request(
                        "GET",
                        &format!("http://{api}{target}"),
                        &[("authorization", &auth)],
                    )
                    .await;
                    assert_eq!(answer.status, 200, "{target}: {}", answer.body);
                }
            }
        }
    };
    // Warm up (allocator arenas, connection pools), then measure the growth of the rest.
    pairs(0..20).await;
    let before = rss_bytes(pid);
    pairs(20..220).await;
    let after = rss_bytes(pid);
    let metrics = support::request("GET", &format!("http://{admin}/metrics"), &[]).await;
    let weighed = metric(&metrics.body, "usage_gateway_cache_bytes");
    let entries = metric(&metrics.body, "usage_gateway_cache_entries");
    assert!(entries >= 200, "the small answers are stored: {entries}");
    let growth = after.saturating_sub(before);
    // A small multiple of what the cache weighs, plus a constant for allocator slack; a read
    // buffer pinned per entry would be hundreds of KiB each (tens of MiB in all).
    let bound = 4 * weighed + 16 * 1024 * 1024;
    assert!(
        growth <= bound,
        "RSS grew {growth} bytes while the cache weighs {weighed} bytes (bound {bound})"
    );
    assert_eq!(upstream.calls(), 440);
}
