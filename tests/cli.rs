//! The command line: check, hash-key, and a bad configuration refused at start.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::process::{log_lines, wait_for_line, KillOnDrop, BIN};

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("usage-gateway-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

const VALID: &str = r#"
[upstream]
token = "cli-secret-token"
[[callers]]
name = "billing"
key = "cli-caller-key"
"#;

/// The gateway serving `config`, and its log lines.
fn serving(config: &std::path::Path) -> (KillOnDrop, std::sync::mpsc::Receiver<String>) {
    let mut child = KillOnDrop(
        gateway()
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawns"),
    );
    let lines = log_lines(child.0.stdout.take().expect("stdout"));
    (child, lines)
}

/// `usage-gateway check --config <config>`, run to its end.
fn check(config: &std::path::Path) -> std::process::Output {
    gateway()
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("runs")
}

fn gateway() -> Command {
    let mut command = Command::new(BIN);
    // The developer's environment must not change what these tests see.
    for (name, _) in std::env::vars() {
        if name.starts_with("USAGE_GATEWAY") {
            command.env_remove(name);
        }
    }
    command
}

#[test]
fn check_accepts_a_valid_config_and_prints_no_secret() {
    let path = temp_config("valid.toml", VALID);
    let output = check(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("billing"), "{stdout}");
    assert!(!stdout.contains("cli-secret-token") && !stdout.contains("cli-caller-key"));
}

#[test]
fn check_names_every_bad_key_and_exits_1() {
    let path = temp_config(
        "invalid.toml",
        "[upstream]\nauth_scheme = \"basic\"\ntoken = \"cli-secret-token\"\n[[callers]]\nname = \"x\"\nkey = \"k\"\n",
    );
    let output = check(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("auth_scheme"), "{stderr}");
    assert!(!stderr.contains("cli-secret-token"), "{stderr}");
}

#[test]
fn run_with_a_bad_config_exits_64_at_once() {
    let path = temp_config("no-token.toml", "[[callers]]\nname = \"x\"\nkey = \"k\"\n");
    let output = gateway().arg("--config").arg(&path).output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("upstream.token"), "{stderr}");
}

#[test]
fn environment_overrides_the_file() {
    let path = temp_config("env.toml", "[[callers]]\nname = \"x\"\nkey = \"k\"\n");
    let output = gateway()
        .args(["check", "--config"])
        .arg(&path)
        .env("USAGE_GATEWAY__UPSTREAM__TOKEN", "from-env-token")
        .env("USAGE_GATEWAY__CACHE__TTL_SECS", "5")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ttl 5s"), "{stdout}");
    assert!(!stdout.contains("from-env-token"));
}

#[test]
fn hash_key_prints_the_sha256_of_stdin_without_its_newline() {
    let mut child = gateway()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawns");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"abc\n")
        .expect("write key");
    let output = child.wait_with_output().expect("runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn the_example_config_checks_out_with_the_organization_token_alone() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.example.toml");
    // What a newcomer has: the file as it is, and the organization's token in the environment.
    let output = gateway()
        .env_clear()
        .args(["check", "--config", example])
        .env(
            "USAGE_GATEWAY__UPSTREAM__TOKEN",
            "onok_12345678.newcomer-token",
        )
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(!summary.contains("newcomer-token"), "{summary}");
    // Without it, exactly one problem, saying how to give it.
    let output = gateway()
        .env_clear()
        .args(["check", "--config", example])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let problems = String::from_utf8_lossy(&output.stderr);
    let listed: Vec<&str> = problems
        .lines()
        .filter(|line| line.trim_start().starts_with("- "))
        .collect();
    assert_eq!(listed.len(), 1, "{problems}");
    assert!(
        listed[0].contains("upstream.token")
            && listed[0].contains("USAGE_GATEWAY__UPSTREAM__TOKEN"),
        "{problems}"
    );
}

#[test]
fn a_failing_profile_is_reported_once_and_not_again_for_its_callers() {
    let file = temp_config(
        "partner.toml",
        r#"
        [upstream]
        token = "org-token"
        [[upstreams]]
        name = "partner-org"
        token_env = "PARTNER_ONOMONDO_TOKEN"
        [[callers]]
        name = "partner-dashboard"
        key = "dev-only-partner-key"
        upstream = "partner-org"
        "#,
    );
    let output = gateway()
        .env_clear()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let problems = String::from_utf8_lossy(&output.stderr);
    assert!(problems.contains("PARTNER_ONOMONDO_TOKEN"), "{problems}");
    assert!(!problems.contains("partner-dashboard"), "{problems}");
}

/// Sends one raw HTTP/1.1 GET and returns the status code.
fn status_of(addr: &str, key: &str) -> u16 {
    use std::io::{Read, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line")
}

#[test]
fn sighup_reloads_the_config_file_and_revokes_a_removed_key() {
    // The upstream is unreachable on purpose: an authenticated request is a 502, a refused
    // key a 401, and that difference is all this test needs.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream = closed.local_addr().expect("addr");
    drop(closed);
    let config = |keys: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"text\"\n[upstream]\nbase_url = \"http://{upstream}\"\ntoken = \"t\"\nretries = 0\n[[callers]]\nname = \"billing\"\nkey_sha256 = [{keys}]\n"
        )
    };
    let hash = |key: &str| format!("\"{}\"", usage_gateway::config::hash_key(key));
    let path = temp_config(
        "reload.toml",
        &config(&format!("{}, {}", hash("old-key"), hash("new-key"))),
    );
    let (mut child, lines) = serving(&path);
    let addr = wait_for_line(&lines, "usage-gateway listening")
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .expect("the gateway logs its address");
    assert_eq!(status_of(&addr, "old-key"), 502);

    std::fs::write(&path, config(&hash("new-key"))).expect("rewrite config");
    let pid = child.0.id().to_string();
    hang_up(&pid);
    wait_for_line(&lines, "configuration reloaded");
    assert_eq!(status_of(&addr, "old-key"), 401);
    assert_eq!(status_of(&addr, "new-key"), 502);

    // A broken file is refused and the running configuration stays.
    std::fs::write(&path, "[upstream\nthis is not toml").expect("break config");
    hang_up(&pid);
    wait_for_line(&lines, "reload refused");
    assert_eq!(status_of(&addr, "new-key"), 502);

    // A caller added to the file works after the next reload.
    let added = format!(
        "{}[[callers]]\nname = \"ops\"\nkey = \"ops-key\"\n",
        config(&hash("new-key"))
    );
    std::fs::write(&path, added).expect("rewrite config");
    hang_up(&pid);
    wait_for_line(&lines, "configuration reloaded");
    assert_eq!(status_of(&addr, "ops-key"), 502);

    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = child.0.wait();
}

/// Sends SIGHUP: the gateway reloads its file.
fn hang_up(pid: &str) {
    let sent = Command::new("kill")
        .args(["-HUP", pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

#[test]
fn userinfo_in_the_base_url_is_shown_by_neither_check_nor_the_startup_line() {
    let text = |listen: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n[log]\nformat = \"json\"\n[upstream]\nbase_url = \"http://gw-user:userinfo-secret-55@127.0.0.1:9/api\"\ntoken = \"cli-secret-token\"\n[[callers]]\nname = \"billing\"\nkey = \"cli-caller-key\"\n"
        )
    };
    let path = temp_config("userinfo.toml", &text("127.0.0.1:0"));
    let output = check(&path);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains("http://[redacted]@127.0.0.1:9/api"),
        "{shown}"
    );
    assert!(
        !shown.contains("userinfo-secret-55") && !shown.contains("gw-user"),
        "{shown}"
    );

    let (_child, lines) = serving(&path);
    let started = wait_for_line(&lines, "usage-gateway listening");
    assert!(started.contains("[redacted]@127.0.0.1:9"), "{started}");
    assert!(!started.contains("userinfo-secret-55"), "{started}");
}

#[test]
fn check_refuses_a_plaintext_upstream_off_this_machine_unless_allowed() {
    let config = |base_url: &str, extra: &str| {
        format!(
            "[upstream]\nbase_url = \"{base_url}\"\ntoken = \"cli-secret-token\"\n{extra}\n[[callers]]\nname = \"billing\"\nkey = \"cli-caller-key\"\n"
        )
    };
    // (base_url, extra upstream keys, accepted)
    let rows = [
        ("http://onomondo-proxy.internal", "", false),
        ("http://10.0.0.7:8080", "", false),
        (
            "http://onomondo-proxy.internal",
            "allow_plaintext = true",
            true,
        ),
        ("http://127.0.0.1:8087", "", true),
        ("http://localhost:8087", "", true),
        ("http://[::1]:8087", "", true),
        ("https://api.onomondo.com", "", true),
    ];
    for (index, (base_url, extra, accepted)) in rows.into_iter().enumerate() {
        let path = temp_config(&format!("plaintext-{index}.toml"), &config(base_url, extra));
        let output = check(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.success(), accepted, "{base_url}: {stderr}");
        if !accepted {
            assert!(stderr.contains("upstream.allow_plaintext"), "{stderr}");
        }
    }
}

#[test]
fn check_refuses_a_token_that_is_not_visible_ascii_and_says_so() {
    for (index, token) in ["tøken-with-non-ascii", "token with space", "tab\ttoken"]
        .into_iter()
        .enumerate()
    {
        let path = temp_config(
            &format!("token-{index}.toml"),
            &format!(
                "[upstream]\ntoken = \"{}\"\n[[callers]]\nname = \"billing\"\nkey = \"cli-caller-key\"\n",
                token.replace('\t', "\\t")
            ),
        );
        let output = check(&path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{token:?}: {stderr}");
        assert!(
            stderr.contains("upstream.token: holds characters"),
            "{stderr}"
        );
        assert!(!stderr.contains(token), "{stderr}");
    }
}

/// The gateway's JSON log lines from start to exit, after one refused request.
fn lines_of_one_request(name: &str, log_table: &str) -> Vec<serde_json::Value> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{log_table}\n[upstream]\nbase_url = \"http://127.0.0.1:9\"\ntoken = \"cli-secret-token\"\n[[callers]]\nname = \"billing\"\nkey = \"cli-caller-key\"\n"
    );
    let path = temp_config(name, &text);
    let (mut child, lines) = serving(&path);
    let started = wait_for_line(&lines, "usage-gateway listening");
    let addr = started
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .or_else(|| {
            let line: serde_json::Value = serde_json::from_str(&started).ok()?;
            line["address"].as_str().map(str::to_owned)
        })
        .expect("the gateway logs its address");
    assert_eq!(status_of(&addr, "not-a-key"), 401);
    // A graceful stop writes every access line still waiting; the pipe then closes.
    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    let mut seen = vec![serde_json::from_str(&started).expect("JSON line")];
    seen.extend(
        lines
            .iter()
            .map(|line| serde_json::from_str(&line).expect("every line is JSON")),
    );
    seen
}

fn access_lines(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|line| line["message"] == "request")
        .collect()
}

#[test]
fn a_request_gets_one_access_line_by_default_and_none_with_access_off() {
    let on = lines_of_one_request("access-on.toml", "[log]\nformat = \"json\"");
    let access = access_lines(&on);
    assert_eq!(access.len(), 1, "{on:?}");
    assert_eq!(access[0]["status"], 401);
    assert_eq!(access[0]["route"], "none");
    assert!(access[0]["request_id"].is_string());

    let off = lines_of_one_request(
        "access-off.toml",
        "[log]\nformat = \"json\"\naccess = false",
    );
    assert!(access_lines(&off).is_empty(), "{off:?}");
    // The other lines are still written.
    assert!(off
        .iter()
        .any(|line| line["message"] == "shutting down: readiness is now 503"));
}
