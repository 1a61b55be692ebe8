//! The Redis URL's password, like the token, appears in no log line, answer, status page,
//! metric or `check` output, whether Redis answers, refuses the password or is gone.

mod support;

use std::process::Command;

use support::logs::captured;
use support::process::BIN;
use support::redis_server::RedisServer;
use support::{admin, config_with, get, FakeUpstream, Gateway, BILLING_KEY};

const REDIS_PASSWORD: &str = "redis-pw-9c2e71";

fn assert_no_password(text: &str, place: &str) {
    assert!(
        !text.contains(REDIS_PASSWORD),
        "{place} shows the Redis password: {text}"
    );
}

#[tokio::test]
async fn the_redis_password_is_never_shown_or_logged() {
    let logs = captured();
    let Some(mut redis) = RedisServer::start_tcp_with_password(REDIS_PASSWORD) else {
        return;
    };
    let upstream = FakeUpstream::start().await;
    let shared = |url: &str| {
        format!(
            r#"
            [[callers]]
            name = "billing"
            key = "{BILLING_KEY}"
            [shared]
            redis_url = "{url}"
            command_timeout_ms = 200
            breaker_cooldown_ms = 200
            "#
        )
    };
    let good = Gateway::start(config_with(&upstream.base_url(), &shared(&redis.url()))).await;
    // One with a wrong password: Redis refuses it, and says so.
    let wrong_url = redis
        .url()
        .replace(REDIS_PASSWORD, &format!("{REDIS_PASSWORD}-wrong"));
    let wrong = Gateway::start(config_with(&upstream.base_url(), &shared(&wrong_url))).await;

    let mut shown = Vec::new();
    for gateway in [&good, &wrong] {
        shown.push(get(gateway, "/usage").await.body);
        shown.push(get(gateway, "/usage").await.body);
    }
    redis.kill();
    for gateway in [&good, &wrong] {
        let refused = get(gateway, "/usage?filter=time:2024").await;
        assert_eq!(refused.status, 429);
        for (name, value) in &refused.headers {
            assert_no_password(value.to_str().unwrap_or_default(), name.as_str());
        }
        shown.push(refused.body);
        shown.push(admin(gateway, "GET", "/", &[]).await.body);
        shown.push(admin(gateway, "GET", "/metrics", &[]).await.body);
        shown.push(format!("{:?}", gateway.addr));
    }
    assert!(
        shown[5].contains("redis://127.0.0.1:"),
        "the status page says where Redis is: {}",
        shown[5]
    );
    good.stop().await;
    wrong.stop().await;
    for text in &shown {
        assert_no_password(text, "an answer or admin page");
    }
    let logs = logs.text();
    assert!(logs.contains("Redis does not answer"), "{logs}");
    assert_no_password(&logs, "the log");
}

#[test]
fn check_shows_where_redis_is_and_never_its_password() {
    let dir =
        std::env::temp_dir().join(format!("usage-gateway-shared-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |shared: &str| {
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[upstream]\ntoken = \"t0k3n\"\n[[callers]]\nname = \"a\"\nkey = \"k\"\n[shared]\n{shared}\n"
            ),
        )
        .expect("write config");
        let output = Command::new(BIN)
            .env_remove("USAGE_GATEWAY__SHARED__REDIS_URL")
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_no_password(&text, "check");
        (output.status.success(), text)
    };
    let (ok, text) = run(&format!(
        "redis_url = \"rediss://user:{REDIS_PASSWORD}@cache.internal:6380/2\""
    ));
    assert!(ok, "{text}");
    assert!(text.contains("rediss://cache.internal:6380/2"), "{text}");
    for bad in [
        format!("redis_url = \"http://:{REDIS_PASSWORD}@cache.internal\""),
        format!("redis_url = \"redis://:{REDIS_PASSWORD}@cache.internal/x\""),
        format!("redis_url = [\"{REDIS_PASSWORD}\"]"),
        format!("redis_url = \"redis://:{REDIS_PASSWORD}@h\"\nredis_url_env = \"X\""),
    ] {
        let (ok, text) = run(&bad);
        assert!(!ok, "{bad} was accepted: {text}");
        assert!(text.contains("shared"), "the problem names its key: {text}");
    }
    let (ok, text) = run("command_timeout_ms = 0\nredis_url = \"unix:///run/redis.sock\"");
    assert!(!ok && text.contains("shared.command_timeout_ms"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
