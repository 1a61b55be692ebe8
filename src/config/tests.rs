//! The loader end to end: TOML text in, a typed `Config` or every problem out.

use super::*;

const MINIMAL: &str = r#"
        [upstream]
        token = "org-token-123"
        [[callers]]
        name = "billing"
        key = "billing-key"
    "#;

/// Every key has a problem reported against it.
fn assert_problems(found: &[String], keys: &[&str]) {
    for key in keys {
        assert!(
            found.iter().any(|p| p.starts_with(key)),
            "no problem for {key} in {found:#?}"
        );
    }
}

fn problems(text: &str) -> Vec<String> {
    Config::from_toml(text).expect_err("invalid").problems
}

#[test]
fn defaults_fill_every_unset_key() {
    let config = Config::from_toml(MINIMAL).expect("valid");
    assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(
        config.upstream.base_url.to_string(),
        "https://api.onomondo.com/"
    );
    assert_eq!(config.upstream.auth_scheme, AuthScheme::Raw);
    assert_eq!(config.upstream.timeout, Duration::from_secs(10));
    assert_eq!(config.cache.ttl, Duration::from_secs(60));
    assert_eq!(config.cache.max_bytes, 256 * 1024 * 1024);
    assert_eq!(
        config.callers[0].key_sha256.concat(),
        hex::decode(hash_key("billing-key")).expect("hex")
    );
    assert_eq!(config.server.auth_failures_per_minute, 60);
    assert_eq!(config.server.limits, RequestLimits::default());
    assert_eq!(config.server.limits.max_uri_bytes, 8 * 1024);
    assert_eq!(config.server.limits.header_timeout, Duration::from_secs(10));
    assert_eq!(config.cache.max_entry_bytes, 8 * 1024 * 1024);
    assert!(config.profiles.is_empty());
    assert_eq!(config.callers[0].scope, Scope::default());
}

#[test]
fn base_url_keeps_its_path_prefix_without_trailing_slash() {
    let config = Config::from_toml(&format!("{MINIMAL}\n[upstream]\n"));
    assert!(config.is_err(), "a table cannot be given twice");
    let text = MINIMAL.replace(
        "[upstream]",
        "[upstream]\nbase_url = \"http://127.0.0.1:9000/api/v1/\"",
    );
    let config = Config::from_toml(&text).expect("valid");
    assert_eq!(config.upstream.base_url.path(), "/api/v1");
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let found = problems(
        r#"
            [server]
            listen = "nowhere"
            [upstream]
            base_url = "ftp://example.com"
            timeout_ms = 0
            [cache]
            ttl_secs = 0
            [[callers]]
            name = "bad name!"
            key = "k"
            [[callers]]
            name = "ops"
            key_sha256 = "abc"
            "#,
    );
    assert_problems(
        &found,
        &[
            "server.listen",
            "upstream.base_url",
            "upstream.token",
            "upstream.timeout_ms",
            "cache.ttl_secs",
            "callers[0].name",
            "callers[1] (ops).key_sha256",
        ],
    );
}

#[test]
fn request_limits_out_of_range_are_each_named() {
    let found = problems(&format!(
        "[server]\nmax_uri_bytes = 10\nmax_header_bytes = 0\nmax_filters = 0\nmax_body_bytes = 99999999\nheader_timeout_ms = 5\nmax_connections = 0\n[cache]\nmax_entry_bytes = 99999999999\n{MINIMAL}"
    ));
    assert_problems(
        &found,
        &[
            "server.max_uri_bytes",
            "server.max_header_bytes",
            "server.max_filters",
            "server.max_body_bytes",
            "server.header_timeout_ms",
            "server.max_connections",
            "cache.max_entry_bytes",
        ],
    );
}

#[test]
fn cors_origins_are_named_origins_lower_cased_and_none_by_default() {
    let config = Config::from_toml(MINIMAL).expect("valid");
    assert!(config.server.cors.allow_origins.is_empty());
    assert_eq!(config.server.limits.max_body_bytes, 16 * 1024);
    let config = Config::from_toml(&format!(
        "[server.cors]\nallow_origins = [\"https://Dash.Example.com\", \"http://127.0.0.1:8000\"]\n{MINIMAL}"
    ))
    .expect("valid");
    assert_eq!(
        config.server.cors.allow_origins,
        ["https://dash.example.com", "http://127.0.0.1:8000"]
    );
    for bad in [
        "*",
        "null",
        "dash.example.com",
        "https://dash.example.com/",
        "https://dash.example.com/app",
        "ftp://dash.example.com",
        "https://user:secret@dash.example.com",
    ] {
        let found = problems(&format!(
            "[server.cors]\nallow_origins = [\"{bad}\"]\n{MINIMAL}"
        ));
        assert_problems(&found, &["server.cors.allow_origins"]);
        assert!(!found.iter().any(|p| p.contains("secret")), "{found:?}");
    }
}

#[test]
fn a_profile_that_fails_is_one_problem_not_one_more_per_caller_using_it() {
    let found = problems(&format!(
        "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken_env = \"USAGE_GATEWAY_TEST_SURELY_UNSET_7f3a\"\n[[callers]]\nname = \"partner-dashboard\"\nkey = \"k2\"\nupstream = \"partner\"\n"
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("token_env"), "{found:?}");
    // A profile that was never declared is still the caller's problem.
    let found = problems(&format!(
        "{MINIMAL}\n[[callers]]\nname = \"lost\"\nkey = \"k3\"\nupstream = \"nowhere\"\n"
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("no [[upstreams]] profile is named"),
        "{found:?}"
    );
}

#[test]
fn an_entry_bound_above_the_cache_bound_is_the_cache_bound() {
    let config = Config::from_toml(&format!(
        "[cache]\nmax_bytes = 4096\nmax_entry_bytes = 8192\n{MINIMAL}"
    ))
    .expect("valid");
    assert_eq!(config.cache.max_entry_bytes, 4096);
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let found = problems(&MINIMAL.replace("[upstream]", "[upstream]\ntoken_typo = 1"));
    assert!(found.iter().any(|p| p.contains("token_typo")), "{found:?}");
}

#[test]
fn unknown_enum_values_are_refused_by_name() {
    let found = problems(&MINIMAL.replace("[upstream]", "[upstream]\nauth_scheme = \"basic\""));
    assert!(
        found
            .iter()
            .any(|p| p.contains("basic") || p.contains("auth_scheme")),
        "{found:?}"
    );
}

#[test]
fn wrong_types_are_refused_without_echoing_the_value() {
    let found =
        problems(&MINIMAL.replace("[upstream]", "[upstream]\ntimeout_ms = \"soon-secret\""));
    let text = found.join("\n");
    assert!(text.contains("timeout_ms"), "{text}");
    assert!(!text.contains("soon-secret"), "{text}");
}

#[test]
fn callers_need_distinct_names_and_keys() {
    let found = problems(
        r#"
            [upstream]
            token = "t"
            [[callers]]
            name = "a"
            key = "same"
            [[callers]]
            name = "b"
            key = "same"
            [[callers]]
            name = "a"
            key = "other"
            "#,
    );
    assert_eq!(found.len(), 2, "{found:#?}");
}

#[test]
fn no_callers_is_a_problem() {
    let found = problems("[upstream]\ntoken = \"t\"\n");
    assert!(found.iter().any(|p| p.starts_with("callers")), "{found:?}");
}

#[test]
fn token_file_is_read_without_its_trailing_newline() {
    let dir = std::env::temp_dir().join(format!("usage-gateway-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("token");
    std::fs::write(&path, "file-token\n").expect("write token");
    let text = MINIMAL.replace(
        "token = \"org-token-123\"",
        &format!("token_file = {:?}", path.display().to_string()),
    );
    let config = Config::from_toml(&text).expect("valid");
    assert_eq!(config.upstream.token.expose(), "file-token");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_token_file_that_never_ends_is_refused_not_read_whole() {
    let text = MINIMAL.replace("token = \"org-token-123\"", "token_file = \"/dev/zero\"");
    let found = problems(&text);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("upstream.token_file") && p.contains("not a token file")),
        "{found:?}"
    );
}

#[test]
fn secrets_never_show_in_debug_or_summary() {
    let config = Config::from_toml(MINIMAL).expect("valid");
    let shown = format!("{config:?}\n{}", config.summary());
    assert!(!shown.contains("org-token-123"), "{shown}");
    assert!(!shown.contains("billing-key"), "{shown}");
    assert!(!shown.contains(&hash_key("billing-key")), "{shown}");
}

#[test]
fn hash_key_is_hex_sha256() {
    assert_eq!(
        hash_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn profiles_inherit_the_scheme_and_keep_their_own_budget() {
    let config = Config::from_toml(&format!(
        "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken = \"partner-token\"\nrate_limit_per_minute = 100\n"
    ))
    .expect("valid");
    let profiles = config.all_profiles();
    assert_eq!(profiles.len(), 2);
    assert_eq!(&*profiles[0].name, DEFAULT_PROFILE);
    assert_eq!(profiles[0].rate_limit_per_minute, 600);
    assert_eq!(&*profiles[1].name, "partner");
    assert_eq!(profiles[1].token.expose(), "partner-token");
    assert_eq!(profiles[1].auth_scheme, AuthScheme::Raw);
    assert_eq!(profiles[1].rate_limit_per_minute, 100);
}

#[test]
fn a_profile_token_may_come_from_the_environment() {
    let variable = format!("USAGE_GATEWAY_TEST_TOKEN_{}", std::process::id());
    std::env::set_var(&variable, "env-token");
    let config = Config::from_toml(&format!(
        "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken_env = \"{variable}\"\n"
    ))
    .expect("valid");
    assert_eq!(config.profiles[0].token.expose(), "env-token");
    let found = problems(&format!(
        "{MINIMAL}\n[[upstreams]]\nname = \"partner\"\ntoken_env = \"{variable}_UNSET\"\n"
    ));
    assert!(found.iter().any(|p| p.contains("token_env")), "{found:?}");
}

#[test]
fn profile_problems_are_reported_by_key() {
    let found = problems(&format!(
        r#"{MINIMAL}
            [[upstreams]]
            name = "default"
            token = "a"
            [[upstreams]]
            name = "same-token"
            token = "org-token-123"
            [[upstreams]]
            name = "both"
            token = "b"
            token_file = "/nonexistent"
            [[callers]]
            name = "lost"
            key = "lost-key"
            upstream = "nowhere"
            "#
    ));
    assert_problems(
        &found,
        &[
            "upstreams[0].name",
            "upstreams[1] (same-token).token",
            "upstreams[2] (both)",
            "callers[1] (lost).upstream",
        ],
    );
}

#[test]
fn scopes_are_parsed_and_checked() {
    let config = Config::from_toml(&format!(
        r#"{MINIMAL}
            [[callers]]
            name = "support"
            key = "support-key"
            routes = ["usage_by_sim", "usage"]
            sims = ["000000001"]
            tags = ["5F0C7A2E-9B1D-4C3E-8A55-0D2F6B7E1C90"]
            "#
    ))
    .expect("valid");
    let scope = &config.callers[1].scope;
    assert_eq!(scope.routes.as_ref().map(|r| r.len()), Some(2));
    assert!(scope.sims.as_ref().is_some_and(|s| s.contains("000000001")));
    assert!(scope
        .tags
        .as_ref()
        .is_some_and(|t| t.contains("5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90")));

    let found = problems(&format!(
        r#"{MINIMAL}
            [[callers]]
            name = "bad"
            key = "bad-key"
            routes = ["sims"]
            sims = ["1"]
            tags = ["nope"]
            [[callers]]
            name = "empty"
            key = "empty-key"
            sims = []
            "#
    ));
    assert_problems(
        &found,
        &[
            "callers[1] (bad).routes",
            "callers[1] (bad).sims",
            "callers[1] (bad).tags",
            "callers[2] (empty).sims",
        ],
    );
}

#[test]
fn routes_a_caller_s_restrictions_refuse_whole_are_a_contradiction() {
    let found = problems(&format!(
        r#"{MINIMAL}
            [[callers]]
            name = "sims-only"
            key = "sims-only-key"
            routes = ["usage_by_sim", "tag_total"]
            sims = ["000000001"]
            [[callers]]
            name = "tags-only"
            key = "tags-only-key"
            routes = ["usage", "tag_total"]
            tags = ["5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90"]
            "#
    ));
    assert_problems(
        &found,
        &[
            "callers[1] (sims-only).routes",
            "callers[2] (tags-only).routes",
        ],
    );
    assert!(found[0].contains("tag_total"), "{found:?}");
    assert!(found[1].contains("lists usage,"), "{found:?}");
    // Restrictions alone (no routes listed) are not a contradiction: they just narrow.
    Config::from_toml(&format!(
        r#"{MINIMAL}
            [[callers]]
            name = "sims-only"
            key = "sims-only-key"
            sims = ["000000001"]
            "#
    ))
    .expect("valid");
}

#[test]
fn key_sha256_takes_one_hash_or_a_list() {
    let one = hash_key("a");
    let two = hash_key("b");
    let config = Config::from_toml(&format!(
        "[upstream]\ntoken = \"t\"\n[[callers]]\nname = \"x\"\nkey_sha256 = [\"{one}\", \"{two}\"]\n[[callers]]\nname = \"y\"\nkey_sha256 = \"{}\"\n",
        hash_key("c")
    ))
    .expect("valid");
    assert_eq!(config.callers[0].key_sha256.len(), 2);
    assert_eq!(config.callers[1].key_sha256.len(), 1);
    let found = problems(&format!(
        "[upstream]\ntoken = \"t\"\n[[callers]]\nname = \"x\"\nkey_sha256 = [\"{one}\", \"{one}\"]\n[[callers]]\nname = \"y\"\nkey_sha256 = [\"{one}abc\"]\n[[callers]]\nname = \"z\"\nkey_sha256 = [\"{two}\", \"zz\"]\n"
    ));
    assert_eq!(found.len(), 3, "{found:#?}");
}

/// A string where a table or a list belongs (a token written as `upstream = "…"`) reaches
/// serde's own `invalid type` message, which would quote it.
#[test]
fn a_value_where_a_table_or_list_belongs_is_not_echoed() {
    for text in [
        "upstream = \"onok_misplaced-secret\"\n[[callers]]\nname = \"x\"\nkey = \"k\"\n",
        "callers = [\"misplaced-secret\"]\n[upstream]\ntoken = \"t\"\n",
        "[upstream]\ntoken = \"t\"\n[server]\ncors = \"misplaced-secret\"\n[[callers]]\nname = \"x\"\nkey = \"k\"\n",
        "[upstream]\ntoken = [\"listed-secret\"]\n[[callers]]\nname = \"x\"\nkey = { k = \"tabled-secret\" }\n",
    ] {
        let found = problems(text).join("\n");
        assert!(found.contains("invalid type"), "{found}");
        assert!(!found.contains("secret"), "{found}");
    }
    // A secret field of the wrong type says what it wants, and only that.
    let found = problems(&MINIMAL.replace("key = \"billing-key\"", "key = [\"listed-secret\"]"));
    assert_eq!(
        found,
        ["invalid type: expected a string for key `callers[0]key`"]
    );
}
