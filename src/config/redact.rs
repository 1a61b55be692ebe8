//! Config errors, rendered from their structure so that no value from the file or the
//! environment reaches a terminal or a log.
//!
//! - A TOML syntax error is the parser's own message (fixed text from the `toml` crate: what it
//!   expected, never what it found) and a line and column computed from its span. The
//!   parser's Display, which quotes the offending source line, is never used: a token on that
//!   line would be shown whatever its quoting (the fuzzer's finding, fuzz/README.md).
//! - A value of the wrong type is named by its kind (`a string`, `an integer`), never quoted.
//! - serde's own messages (an unknown key, an unknown enum variant) name keys and variants;
//!   secret fields are [`Secret`](super::Secret)s, whose deserializer answers a wrong type with
//!   a fixed message, so no serde message can carry a token or a caller key from its own
//!   field. One rule on message text is left (see [`without_found_value`]): a value written
//!   where a table or a list belongs is quoted by serde's default `invalid type` message.

use super::raw::File;

/// `TOML parse error at line L, column C: <message>`.
pub(super) fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            format!(
                "TOML parse error at line {line}, column {column}: {}",
                error.message()
            )
        }
        None => format!("TOML parse error: {}", error.message()),
    }
}

/// The 1-based line and column (in characters) of byte `at`, counted as the `toml` crate's
/// own Display counts them (an offset at the very end is one past the last character).
fn position(text: &str, at: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return (1, at + 1);
    }
    let index = at.min(bytes.len() - 1);
    let past_end = at - index;
    let line_start = bytes[..index]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = bytes[..line_start].iter().filter(|&&b| b == b'\n').count();
    let column = std::str::from_utf8(&bytes[line_start..=index])
        .map(|s| s.chars().count() - 1)
        .unwrap_or(index - line_start);
    (line + 1, column + past_end + 1)
}

/// What the `config` crate reports while layering and deserializing `file` and the
/// environment, without a value in it.
pub(super) fn layering_error(error: &config::ConfigError, file: Option<&File<'_>>) -> String {
    use config::ConfigError as E;
    let place = |mut message: String, key: &Option<String>, origin: Option<&str>| {
        if let Some(key) = key {
            message.push_str(&format!(" for key `{key}`"));
        }
        if let Some(origin) = origin {
            message.push_str(&format!(" in {origin}"));
        }
        message
    };
    match error {
        E::Type {
            origin,
            unexpected,
            expected,
            key,
        } => place(
            format!("invalid type: {}, expected {expected}", kind(unexpected)),
            key,
            // A value without an origin came from the file (the environment names itself).
            origin
                .as_deref()
                .or(file.and_then(|file| file.name.as_deref())),
        ),
        E::At { error, origin, key } => place(layering_error(error, file), key, origin.as_deref()),
        E::FileParse { cause, .. } => {
            let text = file.map_or("", |file| &file.text);
            let message = if let Some(syntax) = cause.downcast_ref::<toml::de::Error>() {
                syntax_error(text, syntax)
            } else if let Some(number) = cause.downcast_ref::<std::num::ParseIntError>() {
                number.to_string()
            } else if let Some(number) = cause.downcast_ref::<std::num::ParseFloatError>() {
                number.to_string()
            } else {
                // The text parsed as TOML already (raw.rs); what is left is the `config`
                // crate's reading of a number, in words of its own.
                "a number in the file cannot be read (out of range?)".to_owned()
            };
            place(message, &None, file.and_then(|file| file.name.as_deref()))
        }
        // serde's own: unknown keys and enum variants by name (see the module's comment).
        E::Message(message) => without_found_value(message),
        E::NotFound(key) => format!("missing configuration field {key:?}"),
        // A key path, or a frozen builder: no value in either.
        E::PathParse { .. } | E::Frozen => error.to_string(),
        // Only a file the `config` crate reads itself fails this way, and it reads none.
        _ => "the configuration could not be read".to_owned(),
    }
}

/// serde's `invalid type: <found>, expected <wanted>` (and `invalid value: …`) with `<found>`
/// cut to its kind. The one rule left on message text, and why: a string where a table or a
/// list belongs (`upstream = "onok_…"`, a token in the wrong place) reaches a derived visitor
/// through the `config` crate, and serde's default message quotes it. serde writes the kind
/// first and the value after it in quotes or backticks (`string "…"`, `integer `5``); only a
/// kind serde writes without a value is kept, anything else becomes `another type`.
fn without_found_value(message: &str) -> String {
    const KINDS: &[&str] = &[
        "boolean",
        "integer",
        "floating point",
        "character",
        "string",
        "byte array",
        "unit value",
        "Option value",
        "newtype struct",
        "sequence",
        "map",
        "enum",
        "unit variant",
        "newtype variant",
        "tuple variant",
        "struct variant",
    ];
    for prefix in ["invalid type: ", "invalid value: "] {
        // What was wanted is our own types' description, so the last separator is it.
        let parts = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "));
        if let Some((found, wanted)) = parts {
            let kind = found
                .split(['"', '`'])
                .next()
                .unwrap_or_default()
                .trim_end();
            let kind = if KINDS.contains(&kind) {
                kind
            } else {
                "another type"
            };
            return format!("{prefix}{kind}, expected {wanted}");
        }
    }
    message.to_owned()
}

/// What kind of value the `config` crate found where another was expected, without the value.
/// Its `Unexpected` is not exported, so the kind is read from the variant's name, the leading
/// identifier of its derived `Debug` (`Str("…")` is `Str`); the value after it is dropped.
fn kind(unexpected: &impl std::fmt::Debug) -> &'static str {
    let shown = format!("{unexpected:?}");
    let variant = shown
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    match variant {
        "Str" => "a string",
        "Bool" => "a boolean",
        "I64" | "I128" | "U64" | "U128" => "an integer",
        "Float" => "a float",
        "Unit" => "nothing",
        "Seq" => "an array",
        "Map" => "a table",
        _ => "another type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax(text: &str) -> String {
        let error = toml::de::DeTable::parse(text).expect_err("a syntax error");
        syntax_error(text, &error)
    }

    /// The position is the one the parser's own Display gives, and nothing of the line is kept.
    #[test]
    fn a_syntax_error_is_its_position_and_message_only() {
        for text in [
            "[upstream]\ntoken = 'onok_literal-secret' trailing\n",
            "[upstream]\ntoken = \"a\\\"escaped-secret\\\"b\" x\n",
            "a = 1\n[[callers]]\nname = \"ops, key = \"shifted-secret\" }\n",
            "[upstream]\ntoken = \"unterminated-secret\n",
            "é = 1\nx = 'é' é-secret",
            "[upstream",
            "[upstream\n",
        ] {
            let error = toml::de::DeTable::parse(text).expect_err("a syntax error");
            let theirs = error.to_string();
            let ours = syntax_error(text, &error);
            let position = theirs.lines().next().expect("a first line");
            assert!(ours.starts_with(position), "{ours}\n--- theirs:\n{theirs}");
            assert!(ours.ends_with(error.message()), "{ours}");
            assert!(!ours.contains("secret"), "{ours}");
        }
        assert_eq!(
            syntax("x = 1\ny = 2 z\n"),
            "TOML parse error at line 2, column 5: string values must be quoted, expected literal string"
        );
    }

    #[test]
    fn a_wrong_type_is_named_by_its_kind_only() {
        let error = config::Config::builder()
            .add_source(config::File::from_str(
                "timeout_ms = \"soon-secret\"",
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.get::<u64>("timeout_ms"))
            .expect_err("not a number");
        let file = File {
            name: Some("gateway.toml".into()),
            text: "".into(),
        };
        assert!(error.to_string().contains("soon-secret"), "{error}");
        assert_eq!(
            layering_error(&error, Some(&file)),
            "invalid type: a string, expected an integer for key `timeout_ms` in gateway.toml"
        );
    }

    #[test]
    fn serde_s_invalid_type_keeps_the_kind_found_and_drops_the_value() {
        for (message, shown) in [
            (
                "invalid type: string \"onok_secret\", expected struct RawUpstream",
                "invalid type: string, expected struct RawUpstream",
            ),
            (
                "invalid type: string \"a\\\", expected b secret\", expected a sequence",
                "invalid type: string, expected a sequence",
            ),
            (
                "invalid value: integer `918273645`, expected a secret",
                "invalid value: integer, expected a secret",
            ),
            (
                "invalid type: something secret, expected a map",
                "invalid type: another type, expected a map",
            ),
            (
                "invalid type: map, expected a string",
                "invalid type: map, expected a string",
            ),
            // Not serde's shape: left as written (the Secret's own fixed message is one).
            (
                "invalid type: expected a string",
                "invalid type: expected a string",
            ),
            ("unknown field `tokn`", "unknown field `tokn`"),
        ] {
            assert_eq!(without_found_value(message), shown, "{message}");
        }
    }
}
