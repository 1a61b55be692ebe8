//! The fuzz targets' properties under `cargo test`, on generated inputs (see fuzz/README.md).
//!
//! The checks themselves are fuzz/src/lib.rs, included here so that both assert the same
//! things: parsing never panics and what parses has a valid canonical form (`query_parse`);
//! the canonical form parses back to the same query (`canonical_roundtrip`); the config loader
//! never panics and never shows a secret (`config_load`). src/query.rs has its own proptests
//! about filter spellings on /usage; these add every route, every parameter, percent-escapes
//! and unicode anywhere, and the config loader.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use checks::{check_config, check_query, check_roundtrip, split_target, ICCID, SIM, TAG};
use proptest::prelude::*;
use usage_gateway::config::Config;
use usage_gateway::query::UsageQuery;

const EXAMPLE: &str = include_str!("../config/gateway.example.toml");

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    }
}

// === queries: anything at all ===

/// A piece of a query: real names and values, escapes good and bad, unicode, separators.
fn query_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "filter",
            "filter[]",
            "filter[3]",
            "filter%5B%5D",
            "FILTER",
            "limit",
            "offset",
            "group",
            "next_page",
            "hours",
            "time:",
            "sim_id:",
            "country_code:",
            "2024",
            "2024-02-29",
            "000000001",
            "DK",
            "=",
            "&",
            "?",
            "+",
            ":",
            "[",
            "]",
            "%",
            "%2",
            "%G0",
            "%C3%A9",
            "%ff",
            "%FF%FE",
            "%00",
            "\u{a0}",
            "\u{2003}",
            "\u{3000}",
            "é",
            "日本",
            "🦀",
            "\u{202e}",
            "\u{0}",
            "\t",
        ])
        .prop_map(str::to_owned),
        (any::<u8>(), any::<bool>()).prop_map(|(byte, upper)| if upper {
            format!("%{byte:02X}")
        } else {
            format!("%{byte:02x}")
        }),
        "\\PC{0,6}",
        any::<String>(),
    ]
}

fn any_target() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        Just("/usage".to_owned()),
        Just(format!("/usage/{SIM}")),
        Just(format!("/usage/{ICCID}")),
        Just(format!("/usage/tag-total/{}", TAG.to_uppercase())),
        "/usage/\\PC{0,12}",
        "\\PC{0,12}",
    ];
    (path, prop::collection::vec(query_piece(), 0..12))
        .prop_map(|(path, pieces)| format!("{path}?{}", pieces.concat()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_target_parses_or_is_refused_tidily_on_every_route(target in any_target()) {
        check_query(&target);
        check_roundtrip(&target);
    }

    #[test]
    fn any_string_at_all_is_a_target_that_never_panics(target in any::<String>()) {
        check_query(&target);
        check_roundtrip(&target);
    }
}

// === queries: valid questions in any spelling ===

#[derive(Debug, Clone)]
struct Question {
    route: usize,
    filters: Vec<(&'static str, String)>,
    limit: Option<u16>,
    /// An offset, a cursor, or both (clients from the Postman collection send `offset=0`
    /// beside every cursor).
    page: Option<(Option<u64>, Option<String>)>,
    hours: bool,
}

fn filter() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        (1u16..=9999, 1u8..=12, 1u8..=28).prop_flat_map(|(y, m, d)| prop::sample::select(vec![
            ("time", format!("{y:04}")),
            ("time", format!("{y:04}-{m:02}")),
            ("time", format!("{y:04}-{m:02}-{d:02}")),
        ])),
        (0u32..1_000_000_000).prop_map(|n| ("sim_id", format!("{n:09}"))),
        "[a-zA-Z]{2}".prop_map(|c| ("country_code", c)),
    ]
}

fn question() -> impl Strategy<Value = Question> {
    (
        0usize..3,
        prop::collection::vec(filter(), 0..5),
        prop::option::of(1u16..=1000),
        prop::option::of((
            prop::option::of(prop_oneof![Just(0u64), any::<u64>()]),
            prop::option::of("[A-Za-z0-9+/=_-]{1,256}"),
        )),
        any::<bool>(),
    )
        .prop_map(|(route, filters, limit, page, hours)| {
            let filters = filters
                .into_iter()
                // /usage/{sim_id} and tag totals take every parameter of /usage but sim_id.
                .filter(|(key, _)| route == 0 || *key != "sim_id")
                .collect();
            Question {
                route,
                filters,
                limit,
                page,
                hours,
            }
        })
}

/// How one question is spelled: per character, whether to percent-escape it (and in which
/// case), and what whitespace pads the values that are trimmed.
#[derive(Debug, Clone)]
struct Spelling {
    escapes: Vec<u8>,
    pads: Vec<&'static str>,
    filter_names: Vec<&'static str>,
    order: Vec<usize>,
}

fn spelling() -> impl Strategy<Value = Spelling> {
    (
        prop::collection::vec(any::<u8>(), 64),
        prop::collection::vec(
            prop::sample::select(vec!["", "", " ", "+", "%20", "%09", "%C2%A0", "%E3%80%80"]),
            16,
        ),
        prop::collection::vec(
            prop::sample::select(vec!["filter", "filter[]", "filter[0]", "filter[123456]"]),
            8,
        ),
        prop::collection::vec(any::<usize>(), 8),
    )
        .prop_map(|(escapes, pads, filter_names, order)| Spelling {
            escapes,
            pads,
            filter_names,
            order,
        })
}

impl Spelling {
    /// Percent-escapes some characters of `text`; `+` is always escaped (it would be a space,
    /// or in a cursor a literal `+` either way).
    fn escape(&self, text: &str, salt: usize) -> String {
        let mut out = String::new();
        for (i, c) in text.chars().enumerate() {
            let roll = self.escapes[(i + salt) % self.escapes.len()];
            if c == '+' || roll.is_multiple_of(4) {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    if roll.is_multiple_of(8) {
                        out.push_str(&format!("%{byte:02x}"));
                    } else {
                        out.push_str(&format!("%{byte:02X}"));
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    fn pad(&self, i: usize) -> &'static str {
        self.pads[i % self.pads.len()]
    }

    fn render(&self, question: &Question) -> String {
        let path = match question.route {
            0 => "/usage".to_owned(),
            1 => format!("/usage/{SIM}"),
            _ => format!("/usage/tag-total/{}", TAG.to_uppercase()),
        };
        let mut params = Vec::new();
        for (i, (key, value)) in question.filters.iter().enumerate() {
            let name = self.filter_names[i % self.filter_names.len()];
            let key = if i % 2 == 0 {
                key.to_uppercase()
            } else {
                key.to_string()
            };
            let value = format!(
                "{}{key}{}:{}{value}{}",
                self.pad(i),
                self.pad(i + 1),
                self.pad(i + 2),
                self.pad(i + 3)
            );
            params.push(format!(
                "{}={}",
                self.escape(name, i),
                self.escape_keeping_escapes(&value, i)
            ));
        }
        if let Some(limit) = question.limit {
            params.push(format!("limit={}{:0>4}{}", self.pad(5), limit, self.pad(6)));
        }
        if let Some((offset, cursor)) = &question.page {
            if let Some(offset) = offset {
                params.push(format!("offset={}{offset}", self.pad(7)));
            }
            if let Some(cursor) = cursor {
                params.push(format!("next_page={}", self.escape(cursor, 9)));
            }
        }
        if question.hours {
            params.push(format!(
                "{}={}hours{}",
                self.escape("group", 3),
                self.pad(8),
                self.pad(9)
            ));
        }
        // A seeded shuffle: parameter order never matters.
        for i in (1..params.len()).rev() {
            params.swap(i, self.order[i % self.order.len()] % (i + 1));
        }
        format!("{path}?{}", params.join("&"))
    }

    /// Like `escape`, but leaves the pads' own `%XX` escapes and `+` spaces as they are.
    fn escape_keeping_escapes(&self, text: &str, salt: usize) -> String {
        let mut out = String::new();
        let mut rest = text;
        while !rest.is_empty() {
            if rest.starts_with('%') && rest.len() >= 3 {
                out.push_str(&rest[..3]);
                rest = &rest[3..];
            } else if let Some(stripped) = rest.strip_prefix('+') {
                out.push('+');
                rest = stripped;
            } else {
                let len = rest.chars().next().map_or(1, char::len_utf8);
                out.push_str(&self.escape(&rest[..len], salt + out.len()));
                rest = &rest[len..];
            }
        }
        out
    }
}

/// The plain spelling: no escapes, no padding, `filter[]` throughout, in generated order.
fn plain(question: &Question) -> String {
    let spelling = Spelling {
        escapes: vec![1],
        pads: vec![""],
        filter_names: vec!["filter[]"],
        order: (0..8).collect(),
    };
    spelling.render(question)
}

fn canonical(target: &str) -> String {
    let (path, query) = split_target(target);
    match UsageQuery::parse(path, Some(query)) {
        Ok(Some(query)) => query.canonical().to_owned(),
        other => panic!("{target:?} does not parse: {other:?}"),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_spelling_of_a_valid_question_parses_round_trips_and_means_the_plain_one(
        question in question(),
        spelling in spelling(),
    ) {
        let target = spelling.render(&question);
        let spelled = canonical(&target);
        prop_assert_eq!(&spelled, &canonical(&plain(&question)), "spelled as {}", target);
        check_query(&target);
        check_roundtrip(&target);
    }
}

// === the config loader ===

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Insert(usize, String),
    /// Replaces what follows the line's `=` (if any).
    Value(usize, String),
    /// Cuts the line after this many characters.
    Cut(usize, usize),
}

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "18446744073709551616",
            "1e3",
            "inf",
            "nan",
            "true",
            "\"\"",
            "''",
            "[]",
            "{}",
            "[1, \"a\"]",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
            "\"127.0.0.1:0\"",
            "\"http://[::1]:1/x/\"",
            "\"a\\u00e9\"",
            "\"\\q\"",
            "'''\nx\n'''",
            "\"unterminated",
            "'x' y",
            "\"x\" = 1",
        ])
        .prop_map(str::to_owned),
        any::<u64>().prop_map(|n| n.to_string()),
        "\"[ -~]{0,12}\"",
        "\\PC{0,12}",
    ]
}

fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "[server]",
            "[upstream]",
            "[cache]",
            "[[callers]]",
            "[[upstreams]]",
            "[admin]",
            "[log]",
            "[upstream.x]",
            "name = \"n\"",
            "key = \"k-1\"",
            "token = \"t-1\"",
            "token_env = \"USAGE_GATEWAY_PROPERTIES_UNSET\"",
            "token_file = \"/nonexistent\"",
            "key_sha256 = []",
            "routes = [\"usage\"]",
            "sims = [\"000000001\"]",
            "upstream = \"partner-org\"",
            "worker_threads = 0",
            "[",
            "]]",
            "= 1",
            "\"\"\"",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,12} = [ -~]{0,12}",
        "\\PC{0,16}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = any::<usize>();
    prop_oneof![
        line.prop_map(Mutation::Delete),
        line.prop_map(Mutation::Duplicate),
        (line, line).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (line, toml_line()).prop_map(|(a, text)| Mutation::Insert(a, text)),
        (line, toml_value()).prop_map(|(a, text)| Mutation::Value(a, text)),
        (line, 0usize..40).prop_map(|(a, n)| Mutation::Cut(a, n)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for mutation in mutations {
        let len = lines.len().max(1);
        match mutation {
            Mutation::Delete(i) if !lines.is_empty() => {
                lines.remove(i % len);
            }
            Mutation::Duplicate(i) if !lines.is_empty() => {
                let copy = lines[i % len].clone();
                lines.insert(i % len, copy);
            }
            Mutation::Swap(a, b) if !lines.is_empty() => lines.swap(a % len, b % len),
            Mutation::Insert(i, text) => lines.insert(i % (lines.len() + 1), text.clone()),
            Mutation::Value(i, value) if !lines.is_empty() => {
                let line = &mut lines[i % len];
                if let Some((key, _)) = line.split_once('=') {
                    *line = format!("{key}= {value}");
                }
            }
            Mutation::Cut(i, n) if !lines.is_empty() => {
                let line = &mut lines[i % len];
                *line = line.chars().take(*n).collect();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

/// Where a generated secret goes: which `token`/`key` line of the example, or a new profile.
#[derive(Debug, Clone, Copy)]
enum Place {
    UpstreamToken,
    CallerKey,
    PartnerKey,
    NewProfileToken,
    InlineCaller,
}

/// How the secret's line is written, and what breaks it (or the file) around it.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    None,
    TrailingJunk,
    UnclosedStringBefore,
    EscapedQuoteInside,
    DuplicateKey,
    WrongTypeElsewhere,
    BrokenLineAfter,
}

fn place_secret(secret: &str, quote: usize, place: Place, breakage: Breakage) -> String {
    let quoted = match quote % 4 {
        0 => format!("\"{secret}\""),
        1 => format!("'{secret}'"),
        2 => format!("\"\"\"{secret}\"\"\""),
        _ => format!("'''{secret}'''"),
    };
    let mut assignment = match place {
        Place::UpstreamToken | Place::NewProfileToken => format!("token = {quoted}"),
        _ => format!("key = {quoted}"),
    };
    match breakage {
        Breakage::TrailingJunk => assignment.push_str(" trailing, junk"),
        Breakage::UnclosedStringBefore => assignment = format!("name = \"ops, {assignment}"),
        Breakage::EscapedQuoteInside => {
            assignment = assignment.replacen(secret, &format!("a\\\"{secret}\\\"b"), 1);
            if !quote.is_multiple_of(4) {
                assignment.push_str(" x");
            }
        }
        _ => {}
    }
    let mut text = match place {
        // The example leaves the token to the environment; its commented line is where one goes.
        Place::UpstreamToken => EXAMPLE.replace("# token = \"onok_replace-me\"", &assignment),
        Place::CallerKey => EXAMPLE.replace("key = \"dev-only-dashboards-key\"", &assignment),
        Place::PartnerKey => EXAMPLE.replace("key = \"dev-only-partner-key\"", &assignment),
        Place::NewProfileToken => {
            format!("{EXAMPLE}\n[[upstreams]]\nname = \"extra\"\n{assignment}\n")
        }
        // Top-level keys come before the first table.
        Place::InlineCaller => format!(
            "callers = [ {{ name = \"inline\", {assignment} }} ]\n{}",
            EXAMPLE.split("[[callers]]").next().unwrap_or_default()
        ),
    };
    match breakage {
        Breakage::DuplicateKey => {
            text = text.replace(&assignment, &format!("{assignment}\n{assignment}"))
        }
        Breakage::WrongTypeElsewhere => {
            text = text.replace("ttl_secs = 60", "ttl_secs = \"sixty\"")
        }
        Breakage::BrokenLineAfter => {
            text = text.replace(&assignment, &format!("{assignment}\n= = ="))
        }
        _ => {}
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mutated_example_files_load_or_fail_without_panic_or_secrets(
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        check_config(&mutate(EXAMPLE, &mutations));
    }

    #[test]
    fn arbitrary_text_never_panics_the_loader(text in "\\PC{0,200}") {
        check_config(&text);
    }

    #[test]
    fn a_secret_is_never_shown_however_its_line_is_written_or_broken(
        secret in "S3cr3t[A-Za-z0-9_-]{8,24}",
        quote in 0usize..4,
        place in prop::sample::select(vec![
            Place::UpstreamToken, Place::CallerKey, Place::PartnerKey, Place::NewProfileToken,
            Place::InlineCaller,
        ]),
        breakage in prop::sample::select(vec![
            Breakage::None, Breakage::TrailingJunk, Breakage::UnclosedStringBefore,
            Breakage::EscapedQuoteInside, Breakage::DuplicateKey, Breakage::WrongTypeElsewhere,
            Breakage::BrokenLineAfter,
        ]),
        mutations in prop::collection::vec(mutation(), 0..3),
    ) {
        let text = mutate(&place_secret(&secret, quote, place, breakage), &mutations);
        let shown = match Config::from_toml(&text) {
            Ok(config) => format!("{config:?}\n{}", config.summary()),
            Err(error) => error.to_string(),
        };
        prop_assert!(!shown.contains(&secret), "{} shown:\n{}\n--- from:\n{}", secret, shown, text);
        check_config(&text);
    }
}

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

#[test]
fn the_seed_corpus_passes_every_check() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seen = 0;
    for (target, check) in [
        ("query_parse", check_query as fn(&str)),
        ("canonical_roundtrip", check_roundtrip),
        ("config_load", check_config),
    ] {
        let dir = corpus.join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let is_seed = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"));
            if is_seed {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                check(&text);
                seen += 1;
            }
        }
    }
    assert!(seen > 100, "only {seen} seeds");
}

#[test]
fn secrets_are_found_in_every_quoting_and_rotate_away() {
    let text = "token = \"basic-secret\"\nkey='literal-secret'\nx.token = \"\"\"ml-secret\"\"\"\n{ key = 'inline-secret' }\nkey_sha256 = \"not-this-one\"\n";
    assert_eq!(
        checks::secrets(text),
        [
            "basic-secret",
            "ml-secret",
            "literal-secret",
            "inline-secret"
        ]
    );
    assert_eq!(checks::rotate("az-AZ-09"), "ba-BA-10");
}

#[test]
fn canonical_forms_of_every_route_are_valid() {
    for target in [
        "/usage",
        &format!("/usage/{SIM}?group=hours"),
        &format!("/usage/tag-total/{TAG}"),
    ] {
        let (path, query) = split_target(target);
        let query = UsageQuery::parse(path, Some(query))
            .expect("valid")
            .expect("a route");
        checks::assert_canonical_is_valid(&query);
    }
}
