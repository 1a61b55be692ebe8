//! The command line: check, hash-key, and a bad configuration refused at start.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_usage-gateway");

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
    let output = gateway()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
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
    let output = gateway()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
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
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.example.toml");
    let output = gateway()
        .args(["check", "--config", example])
        .env("PARTNER_ONOMONDO_TOKEN", "partner-token-from-env")
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
