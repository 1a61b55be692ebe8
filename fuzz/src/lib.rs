//! The properties the fuzz targets check, shared with `tests/properties.rs` (which includes this
//! file by path), so that `cargo fuzz` and `cargo test` assert exactly the same things.
//!
//! Each `check_*` function takes one input and panics (via `assert!`) when a property fails.

use http::{Method, Request};
use usage_gateway::config::{Config, DEFAULT_MAX_FILTERS};
use usage_gateway::error::GatewayError;
use usage_gateway::normalize::classify;
use usage_gateway::query::{Route, UsageQuery, MAX_LIMIT};

/// A SIM id, an ICCID and a tag id used to build `/usage/{sim_id}` and
/// `/usage/tag-total/{tag_id}` routes.
pub const SIM: &str = "000000001";
pub const ICCID: &str = "89457387300000000016";
pub const TAG: &str = "5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90";

/// Longest error message a query may produce: quoted caller text is cut to 64 characters
/// (each escaped to at most `\u{10ffff}`) around a fixed sentence.
const MAX_MESSAGE_LEN: usize = 1024;

/// Splits a request target at its first `?` into path and raw query.
pub fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// The three routes (`/usage/{sim_id}` by SIM id and by ICCID).
fn routes() -> [Route; 4] {
    [
        Route::Usage,
        Route::UsageBySim(SIM.to_owned()),
        Route::UsageBySim(ICCID.to_owned()),
        Route::TagTotal(TAG.to_owned()),
    ]
}

/// `query_parse`: parsing never panics; what parses has a valid canonical form, what does not
/// has a short, printable error; `classify` agrees with `UsageQuery::parse`.
pub fn check_query(target: &str) {
    let (path, query) = split_target(target);
    for route in routes() {
        match UsageQuery::parse_query(route.clone(), query) {
            Ok(parsed) => {
                assert_eq!(parsed.route(), &route);
                assert_canonical_is_valid(&parsed);
            }
            Err(error) => assert_error_is_tidy(&error.message),
        }
    }
    // The path as given, and as the parameter of each parameterized route.
    for path in [
        path.to_owned(),
        format!("/usage/{path}"),
        format!("/usage/tag-total/{path}"),
    ] {
        match UsageQuery::parse(&path, Some(query)) {
            Ok(Some(parsed)) => assert_canonical_is_valid(&parsed),
            Ok(None) => {}
            Err(error) => assert_error_is_tidy(&error.message),
        }
    }
    check_classify(target);
}

/// `classify` (the normalize layer) answers what `UsageQuery::parse_within` answers for any
/// request target `http` accepts, and refuses every method but GET on a usage route; the
/// filter bound refuses nothing but too many filters.
fn check_classify(target: &str) {
    let Ok(request) = Request::get(target).body(()) else {
        return;
    };
    let uri = request.uri();
    let max_filters = usize::try_from(DEFAULT_MAX_FILTERS).unwrap_or(usize::MAX);
    let parsed = UsageQuery::parse_within(uri.path(), uri.query(), max_filters);
    match (&parsed, UsageQuery::parse(uri.path(), uri.query())) {
        (Err(bounded), _) if bounded.code == "too_many_filters" => {}
        (bounded, unbounded) => assert_eq!(bounded, &unbounded, "{target:?}"),
    }
    let classified = classify(&request, max_filters);
    match (&parsed, &classified) {
        (Ok(Some(expected)), Ok(got)) => {
            assert_eq!(expected, got);
            assert_canonical_is_valid(got);
        }
        (Ok(None), Err(GatewayError::NotFound)) => {}
        (Err(expected), Err(GatewayError::InvalidRequest(got))) => assert_eq!(expected, got),
        _ => panic!("classify({target:?}) = {classified:?} but parse = {parsed:?}"),
    }
    if let Ok(Some(_)) = parsed {
        let mut post = Request::new(());
        *post.method_mut() = Method::POST;
        *post.uri_mut() = request.uri().clone();
        assert!(matches!(
            classify(&post, max_filters),
            Err(GatewayError::MethodNotAllowed)
        ));
    }
}

/// A canonical form is a valid origin-form request target: printable ASCII without spaces,
/// percent-escapes well formed, the route's own path, parameters in name order, `limit` always
/// (on every route), and nothing the accessors disagree with.
pub fn assert_canonical_is_valid(query: &UsageQuery) {
    let canonical = query.canonical();
    assert!(
        canonical.bytes().all(|b| b.is_ascii_graphic()),
        "canonical form has a space, control or non-ASCII byte: {canonical:?}"
    );
    assert!(!canonical.contains('#'), "fragment in {canonical:?}");
    let bytes = canonical.as_bytes();
    for (i, _) in canonical.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3);
        assert!(
            escape.is_some_and(|hex| hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))),
            "malformed or lower-case escape at {i} in {canonical:?}"
        );
    }
    let uri: http::Uri = canonical
        .parse()
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} is not a URI: {e}"));
    assert_eq!(uri.path_and_query().map(|pq| pq.as_str()), Some(canonical));
    let (path, raw_query) = split_target(canonical);
    assert_eq!(
        Route::from_path(path),
        Ok(Some(query.route().clone())),
        "path of {canonical:?}"
    );
    assert!((1..=MAX_LIMIT).contains(&query.limit()));
    assert!(
        query.filters().windows(2).all(|pair| pair[0] < pair[1]),
        "filters not sorted and distinct: {:?}",
        query.filters()
    );
    if matches!(query.route(), Route::TagTotal(_)) {
        assert!(
            !canonical.contains("sim_id:"),
            "a tag total never carries a sim_id filter: {canonical:?}"
        );
    }
    let names: Vec<&str> = raw_query
        .split('&')
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("pair without `=` in {canonical:?}"));
            assert!(!value.is_empty(), "empty value in {canonical:?}");
            name
        })
        .collect();
    assert!(
        names.windows(2).all(|pair| pair[0] <= pair[1]),
        "parameters out of order in {canonical:?}"
    );
    assert!(names.contains(&"limit"), "no limit in {canonical:?}");
    let filters = names.iter().filter(|n| n.starts_with("filter")).count();
    assert_eq!(filters, query.filters().len(), "filters in {canonical:?}");
}

/// Errors are quoted back to callers: short, and without raw control characters.
fn assert_error_is_tidy(message: &str) {
    assert!(
        message.len() <= MAX_MESSAGE_LEN,
        "error message of {} bytes",
        message.len()
    );
    assert!(
        !message.chars().any(char::is_control),
        "raw control character in error message {message:?}"
    );
}

/// `canonical_roundtrip`: whenever a query parses, its canonical form parses to the same query
/// (so to the same canonical form), and canonicalizing the canonical form changes nothing.
pub fn check_roundtrip(target: &str) {
    let (path, query) = split_target(target);
    let mut parsed: Vec<UsageQuery> = routes()
        .into_iter()
        .filter_map(|route| UsageQuery::parse_query(route, query).ok())
        .collect();
    if let Ok(Some(from_path)) = UsageQuery::parse(path, Some(query)) {
        parsed.push(from_path);
    }
    for first in parsed {
        let canonical = first.canonical();
        let second = reparse(canonical);
        assert_eq!(second.canonical(), canonical, "canonical form not stable");
        assert_eq!(
            second, first,
            "canonical form {canonical:?} means something else"
        );
        let third = reparse(second.canonical());
        assert_eq!(
            third.canonical(),
            canonical,
            "canonicalizing is not idempotent"
        );
    }
}

fn reparse(canonical: &str) -> UsageQuery {
    let (path, query) = split_target(canonical);
    match UsageQuery::parse(path, Some(query)) {
        Ok(Some(query)) => query,
        other => panic!("canonical form {canonical:?} does not parse back: {other:?}"),
    }
}

/// `config_load`: `Config::from_toml` never panics; neither its error (Display) nor a loaded
/// config's `Debug` and summary shows a secret (`token = "…"` or `key = "…"` string value).
///
/// A secret is taken as shown only if the output *follows* it: it contains the value, and with
/// the value changed (letters and digits rotated) it contains the changed value. That rules out
/// values that happen to spell a word the messages use anyway.
pub fn check_config(text: &str) {
    if reaches_outside(text) {
        return;
    }
    let shown = shown(text);
    for secret in secrets(text) {
        if !shown.contains(secret) || text.matches(secret).count() != 1 {
            continue;
        }
        let changed = rotate(secret);
        let changed_text = text.replacen(secret, &changed, 1);
        if changed_text.matches(changed.as_str()).count() != 1 {
            continue;
        }
        let changed_shown = self::shown(&changed_text);
        assert!(
            !changed_shown.contains(&changed),
            "secret {secret:?} is shown:\n{shown}\n(and {changed:?} in:\n{changed_shown})"
        );
    }
}

/// What the loader shows of `text`: the error's Display, or a loaded config's Debug and summary.
fn shown(text: &str) -> String {
    match Config::from_toml(text) {
        Ok(config) => format!("{config:?}\n{}", config.summary()),
        Err(error) => error.to_string(),
    }
}

/// `token_file` reads whatever path it names: /dev/zero would never end and a FIFO would block,
/// so inputs that could name a device or process file (or spell one with escapes) are skipped.
fn reaches_outside(text: &str) -> bool {
    ["/dev", "/proc", "/sys", "fd/", "\\u", "\\U"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// Secret string values in `text`: the raw text of every string assigned to a key named
/// `token` or `key` (bare, quoted or the last part of a dotted key, in any table or inline
/// table), with at least four letters or digits.
pub fn secrets(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for name in ["token", "key"] {
        for (start, _) in text.match_indices(name) {
            let before = start.checked_sub(1).map(|i| bytes[i]);
            if !matches!(
                before,
                None | Some(b' ' | b'\t' | b'\n' | b'\r' | b'{' | b',' | b'.' | b'"' | b'\'')
            ) {
                continue;
            }
            let mut i = start + name.len();
            if matches!(bytes.get(i), Some(b'"' | b'\'')) {
                i += 1;
            }
            i = skip_blanks(bytes, i);
            if bytes.get(i) != Some(&b'=') {
                continue;
            }
            i = skip_blanks(bytes, i + 1);
            if let Some(value) = string_value(text, i) {
                if value.bytes().filter(u8::is_ascii_alphanumeric).count() >= 4 {
                    found.push(value);
                }
            }
        }
    }
    found
}

fn skip_blanks(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// The raw text of the TOML string starting at byte `at` (any of the four quotings); an
/// unterminated string runs to the end of its line (or of the text, for multi-line strings).
fn string_value(text: &str, at: usize) -> Option<&str> {
    let rest = text.get(at..)?;
    for delimiter in ["\"\"\"", "'''", "\"", "'"] {
        let Some(body) = rest.strip_prefix(delimiter) else {
            continue;
        };
        if delimiter.len() == 3 {
            return Some(body.find(delimiter).map_or(body, |end| &body[..end]));
        }
        let line = body.find('\n').map_or(body, |end| &body[..end]);
        // A basic string ends at the first `"` not escaped by a backslash; a literal one at `'`.
        let mut escaped = false;
        let end = line.char_indices().find(|&(_, c)| {
            let end = delimiter.starts_with(c) && !escaped;
            escaped = delimiter == "\"" && c == '\\' && !escaped;
            end
        });
        return Some(end.map_or(line, |(end, _)| &line[..end]));
    }
    None
}

/// `secret` with every ASCII letter and digit moved one along (z→a, 9→0).
pub fn rotate(secret: &str) -> String {
    secret
        .chars()
        .map(|c| match c {
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c if c.is_ascii_alphanumeric() => char::from(c as u8 + 1),
            c => c,
        })
        .collect()
}
