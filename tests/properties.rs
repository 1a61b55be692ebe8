//! The fuzz targets' properties under `cargo test` (see fuzz/README.md).
//!
//! The checks themselves are fuzz/src/lib.rs, included here so that both assert the same things.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use checks::check_config;
use usage_gateway::config::Config;

// === regressions found by fuzzing (fuzz/README.md) ===

/// A TOML syntax error quoted the source line, and the quote-pair redaction only covered
/// double-quoted values that happened to pair up.
#[test]
fn a_syntax_error_on_a_secrets_line_does_not_show_the_secret() {
    let cases = [
        // literal strings were never redacted
        "[upstream]\ntoken = 'onok_literal-secret' trailing\n",
        "[[callers]]\nname = \"x\"\nkey = '''caller-literal-secret''' x\n",
        // an unclosed string before the value shifted the pairs (config_load crash-14d7b310)
        "[[callers]]\nname = \"ops, key = \"caller-shifted-secret\", routes = [\"usage\"] }\n",
        // an escaped quote inside the value ended the redaction early
        "[upstream]\ntoken = \"a\\\"escaped-secret\\\"b\" x\n",
    ];
    for text in cases {
        let error = Config::from_toml(text)
            .expect_err("a syntax error")
            .to_string();
        assert!(!error.contains("secret"), "{error}\n--- from:\n{text}");
        assert!(error.contains("TOML parse error at line"), "{error}");
        check_config(text);
    }
}
