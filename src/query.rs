//! `UsageQuery`: what a caller is asking, parsed, validated and in canonical form.
//!
//! Pure: no I/O, no clock. Every spelling of one question (`filter=`, `filter[]=`, `filter[3]=`,
//! percent-encoded names, repeated or re-ordered filters, upper-case keys, stray whitespace,
//! `limit=0100`) parses to the same `UsageQuery`, whose [`UsageQuery::canonical`] form is both the
//! cache key and the only thing the upstream request is built from. Anything the gateway does not
//! understand is refused with an [`InvalidRequest`] naming the parameter, so it never reaches the
//! upstream or the cache.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use time::{Date, Month, OffsetDateTime, Time};

use crate::error::InvalidRequest;

/// Largest page the upstream serves, and the page size when `limit` is absent.
pub const MAX_LIMIT: u16 = 1000;
/// Longest `next_page` cursor accepted: upstream cursors are ~12 characters.
pub const MAX_CURSOR_LEN: usize = 256;
/// Longest caller value quoted back in an error message.
const QUOTE_LIMIT: usize = 64;

/// Which of the three usage endpoints, with its path parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /usage`
    Usage,
    /// `GET /usage/{sim_id}`, where `{sim_id}` is a SIM id or an ICCID (the upstream accepts
    /// both; the gateway does not know the mapping, so the two are different questions)
    UsageBySim(String),
    /// `GET /usage/tag-total/{tag_id}` (tag id lower-cased)
    TagTotal(String),
}

/// The three endpoints, as `[[callers]] routes` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteName {
    Usage,
    UsageBySim,
    TagTotal,
}

impl RouteName {
    pub const ALL: [RouteName; 3] = [RouteName::Usage, RouteName::UsageBySim, RouteName::TagTotal];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteName::Usage => "usage",
            RouteName::UsageBySim => "usage_by_sim",
            RouteName::TagTotal => "tag_total",
        }
    }

    pub fn parse(name: &str) -> Option<RouteName> {
        RouteName::ALL
            .into_iter()
            .find(|route| route.as_str() == name)
    }

    /// Which endpoint `route` is.
    pub fn of(route: &Route) -> RouteName {
        match route {
            Route::Usage => RouteName::Usage,
            Route::UsageBySim(_) => RouteName::UsageBySim,
            Route::TagTotal(_) => RouteName::TagTotal,
        }
    }
}

impl Route {
    /// Recognizes a request path. `Ok(None)` means "no such endpoint" (404); an endpoint with a
    /// malformed path parameter is a 400 naming it.
    pub fn from_path(path: &str) -> Result<Option<Route>, InvalidRequest> {
        let Some(rest) = path.strip_prefix("/usage") else {
            return Ok(None);
        };
        if rest.is_empty() {
            return Ok(Some(Route::Usage));
        }
        let Some(rest) = rest.strip_prefix('/') else {
            return Ok(None);
        };
        if let Some(tag) = rest.strip_prefix("tag-total/") {
            if tag.is_empty() || tag.contains('/') {
                return Ok(None);
            }
            return parse_tag_id(tag).map(|tag| Some(Route::TagTotal(tag)));
        }
        if rest.is_empty() || rest == "tag-total" || rest.contains('/') {
            return Ok(None);
        }
        if !is_sim_ref(rest) {
            return Err(InvalidRequest::new(
                "sim_id_invalid",
                format!(
                    "path parameter sim_id {} is invalid: give a SIM id of exactly 9 digits, like 000000001, or an ICCID of 19 or 20 digits",
                    quote(rest)
                ),
            ));
        }
        Ok(Some(Route::UsageBySim(rest.to_owned())))
    }

    /// Stable name for logs and metrics (the one `[[callers]] routes` uses).
    pub fn name(&self) -> &'static str {
        RouteName::of(self).as_str()
    }

    fn filter_keys(&self) -> &'static [FilterKey] {
        match self {
            Route::Usage => &[FilterKey::CountryCode, FilterKey::SimId, FilterKey::Time],
            // Tag totals take what /usage takes, minus sim_id: the tag names the SIMs.
            Route::UsageBySim(_) | Route::TagTotal(_) => &[FilterKey::CountryCode, FilterKey::Time],
        }
    }

    fn write_path(&self, out: &mut String) {
        match self {
            Route::Usage => out.push_str("/usage"),
            Route::UsageBySim(sim) => {
                out.push_str("/usage/");
                out.push_str(sim);
            }
            Route::TagTotal(tag) => {
                out.push_str("/usage/tag-total/");
                out.push_str(tag);
            }
        }
    }
}

/// The filter keys the upstream knows. Declared in name order: filters sort by key first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterKey {
    CountryCode,
    SimId,
    Time,
}

impl FilterKey {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterKey::CountryCode => "country_code",
            FilterKey::SimId => "sim_id",
            FilterKey::Time => "time",
        }
    }

    fn parse(name: &str) -> Option<FilterKey> {
        [FilterKey::CountryCode, FilterKey::SimId, FilterKey::Time]
            .into_iter()
            .find(|key| key.as_str().eq_ignore_ascii_case(name))
    }
}

/// One `key:value` filter, value in canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Filter {
    pub key: FilterKey,
    pub value: String,
}

/// A UTC calendar period named by a `time` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Year(i32),
    Month(i32, Month),
    Day(Date),
}

impl Period {
    /// Parses `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; `None` unless it names a real date.
    pub fn parse(text: &str) -> Option<Period> {
        let bytes = text.as_bytes();
        let digits = |range: std::ops::Range<usize>| -> Option<u16> {
            let part = bytes.get(range)?;
            if !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(part).ok()?.parse().ok()
        };
        let year = i32::from(digits(0..4)?);
        if year == 0 {
            return None;
        }
        match bytes.len() {
            4 => Some(Period::Year(year)),
            7 if bytes[4] == b'-' => {
                let month = Month::try_from(u8::try_from(digits(5..7)?).ok()?).ok()?;
                Some(Period::Month(year, month))
            }
            10 if bytes[4] == b'-' && bytes[7] == b'-' => {
                let month = Month::try_from(u8::try_from(digits(5..7)?).ok()?).ok()?;
                let day = u8::try_from(digits(8..10)?).ok()?;
                Date::from_calendar_date(year, month, day)
                    .ok()
                    .map(Period::Day)
            }
            _ => None,
        }
    }

    /// The first instant after the period (UTC, exclusive end).
    pub fn end(self) -> OffsetDateTime {
        let next_day = match self {
            Period::Year(year) => Date::from_calendar_date(year + 1, Month::January, 1).ok(),
            Period::Month(year, month) => {
                let (year, month) = match month {
                    Month::December => (year + 1, Month::January),
                    month => (year, month.next()),
                };
                Date::from_calendar_date(year, month, 1).ok()
            }
            Period::Day(date) => date.next_day(),
        };
        // Years are 1..=9999, so the next day always exists; saturate rather than panic anyway.
        next_day
            .unwrap_or(Date::MAX)
            .with_time(Time::MIDNIGHT)
            .assume_utc()
    }
}

/// Where the page starts: an upstream `next_page` cursor (kept byte for byte) and an offset.
///
/// Clients built from the published Postman collection send `offset=0` on every page, cursor
/// or not, so the two may come together. How the upstream combines a cursor with a non-zero
/// offset is undocumented, so such an offset is kept and forwarded as asked (and is part of the
/// cache key); `offset=0` is the documented default and means the same as no offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Page {
    pub cursor: Option<String>,
    pub offset: u64,
}

/// A validated usage question in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageQuery {
    route: Route,
    /// Sorted and de-duplicated.
    filters: Vec<Filter>,
    group_hours: bool,
    limit: u16,
    page: Page,
    canonical: Arc<str>,
}

impl UsageQuery {
    /// Parses a request path and its raw (still percent-encoded) query string, with no bound
    /// on the number of filters (callers' requests go through [`UsageQuery::parse_within`]).
    /// `Ok(None)` means the path is not one of the usage endpoints.
    pub fn parse(
        path: &str,
        raw_query: Option<&str>,
    ) -> Result<Option<UsageQuery>, InvalidRequest> {
        Self::parse_within(path, raw_query, usize::MAX)
    }

    /// Parses a request target (path, then `?` and the query, if any): what a cache key
    /// holds and what tests write.
    pub fn from_target(target: &str) -> Result<Option<UsageQuery>, InvalidRequest> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Self::parse(path, Some(query))
    }

    /// [`UsageQuery::parse`], refusing a query with more than `max_filters` filter parameters
    /// (counted as written, before duplicates fold) before it parses any of them further.
    pub fn parse_within(
        path: &str,
        raw_query: Option<&str>,
        max_filters: usize,
    ) -> Result<Option<UsageQuery>, InvalidRequest> {
        let Some(route) = Route::from_path(path)? else {
            return Ok(None);
        };
        Self::parse_query_within(route, raw_query.unwrap_or(""), max_filters).map(Some)
    }

    /// Parses the query string of a known route.
    pub fn parse_query(route: Route, raw_query: &str) -> Result<UsageQuery, InvalidRequest> {
        Self::parse_query_within(route, raw_query, usize::MAX)
    }

    fn parse_query_within(
        route: Route,
        raw_query: &str,
        max_filters: usize,
    ) -> Result<UsageQuery, InvalidRequest> {
        let mut builder = Builder::default();
        let mut filters = 0usize;
        for pair in raw_query.split('&').filter(|pair| !pair.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name, true).map_err(|()| not_utf8("a parameter name"))?;
            if is_filter_name(&name) {
                filters += 1;
                if filters > max_filters {
                    return Err(InvalidRequest::new(
                        "too_many_filters",
                        format!("the query has more than {max_filters} filter parameters, the most the gateway accepts in one question"),
                    ));
                }
            }
            builder.add(&route, &name, raw_value)?;
        }
        Ok(builder.finish(route))
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    pub fn group_hours(&self) -> bool {
        self.group_hours
    }

    pub fn limit(&self) -> u16 {
        self.limit
    }

    pub fn page(&self) -> &Page {
        &self.page
    }

    /// The periods named by `time` filters.
    pub fn periods(&self) -> impl Iterator<Item = Period> + '_ {
        self.filters
            .iter()
            .filter(|filter| filter.key == FilterKey::Time)
            .filter_map(|filter| Period::parse(&filter.value))
    }

    /// Path and query in canonical form: the cache key and the upstream request target.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The canonical form, shared without copying (cache keys hold it).
    pub fn canonical_shared(&self) -> Arc<str> {
        Arc::clone(&self.canonical)
    }
}

impl fmt::Display for UsageQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// Accumulates parameters; conflicts are caught as they arrive.
#[derive(Default)]
struct Builder {
    filters: Vec<Filter>,
    group_hours: Option<bool>,
    limit: Option<u16>,
    offset: Option<u64>,
    cursor: Option<String>,
}

impl Builder {
    fn add(&mut self, route: &Route, name: &str, raw_value: &str) -> Result<(), InvalidRequest> {
        if is_filter_name(name) {
            let value = decode(raw_value, true).map_err(|()| not_utf8("filter"))?;
            let filter = parse_filter(route, &value)?;
            self.filters.push(filter);
            return Ok(());
        }
        match name {
            "limit" => {
                let value = decode(raw_value, true).map_err(|()| not_utf8("limit"))?;
                let limit = parse_limit(&value)?;
                set_once(&mut self.limit, limit, "limit")
            }
            "offset" => {
                let value = decode(raw_value, true).map_err(|()| not_utf8("offset"))?;
                let offset = parse_offset(&value)?;
                set_once(&mut self.offset, offset, "offset")
            }
            "group" => {
                let value = decode(raw_value, true).map_err(|()| not_utf8("group"))?;
                if value.trim() != "hours" {
                    return Err(InvalidRequest::new(
                        "group_invalid",
                        format!(
                            "query parameter group {} is invalid: the only grouping is `hours`",
                            quote(&value)
                        ),
                    ));
                }
                set_once(&mut self.group_hours, true, "group")
            }
            "next_page" => {
                // A cursor is base64 and may hold `+`: here `+` is a literal, not a space.
                let value = decode(raw_value, false).map_err(|()| not_utf8("next_page"))?;
                let cursor = parse_cursor(&value)?;
                set_once(&mut self.cursor, cursor, "next_page")
            }
            _ => Err(InvalidRequest::new(
                "parameter_invalid",
                format!(
                    "query parameter {} is not accepted: use filter (or filter[]), limit, offset, group or next_page",
                    quote(name)
                ),
            )),
        }
    }

    fn finish(mut self, route: Route) -> UsageQuery {
        self.filters.sort();
        self.filters.dedup();
        let page = Page {
            cursor: self.cursor,
            offset: self.offset.unwrap_or(0),
        };
        let mut query = UsageQuery {
            route,
            filters: self.filters,
            group_hours: self.group_hours.unwrap_or(false),
            limit: self.limit.unwrap_or(MAX_LIMIT),
            page,
            canonical: Arc::from(""),
        };
        query.canonical = render(&query).into();
        query
    }
}

/// Renders the canonical request target, the same way on every route. Parameters in name
/// order; one filter as `filter=k:v`, several as `filter[]=k:v` in sorted order (the two forms
/// the upstream documents); `limit` always (so "absent" and `limit=1000` meet); `offset` only
/// when non-zero, with or without a cursor.
fn render(query: &UsageQuery) -> String {
    let mut out = String::with_capacity(64);
    query.route.write_path(&mut out);
    let mut separator = '?';
    let mut param = |out: &mut String, name: &str| {
        out.push(separator);
        out.push_str(name);
        out.push('=');
        separator = '&';
    };
    let filter_name = if query.filters.len() == 1 {
        "filter"
    } else {
        "filter[]"
    };
    for filter in &query.filters {
        param(&mut out, filter_name);
        out.push_str(filter.key.as_str());
        out.push(':');
        // Canonical values are digits, letters and `-` only: nothing to escape.
        out.push_str(&filter.value);
    }
    if query.group_hours {
        param(&mut out, "group");
        out.push_str("hours");
    }
    param(&mut out, "limit");
    let _ = write!(out, "{}", query.limit);
    if let Some(cursor) = &query.page.cursor {
        param(&mut out, "next_page");
        out.extend(utf8_percent_encode(cursor, COMPONENT));
    }
    if query.page.offset != 0 {
        param(&mut out, "offset");
        let _ = write!(out, "{}", query.page.offset);
    }
    out
}

/// Everything but RFC 3986 unreserved characters is escaped in a rendered cursor.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn is_filter_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("filter") else {
        return false;
    };
    if rest.is_empty() || rest == "[]" {
        return true;
    }
    rest.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|index| index.len() <= 6 && index.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_filter(route: &Route, text: &str) -> Result<Filter, InvalidRequest> {
    let allowed = route.filter_keys();
    let accepted = || {
        allowed
            .iter()
            .map(|key| key.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some((raw_key, raw_value)) = text.split_once(':') else {
        return Err(InvalidRequest::new(
            "filter_invalid",
            format!(
                "filter {} is invalid: a filter is key:value with key one of {}",
                quote(text),
                accepted()
            ),
        ));
    };
    let key = FilterKey::parse(raw_key.trim())
        .filter(|key| allowed.contains(key))
        .ok_or_else(|| {
            InvalidRequest::new(
                "filter_invalid",
                format!(
                    "filter key {} is not accepted on {} routes: use one of {}",
                    quote(raw_key.trim()),
                    route.name(),
                    accepted()
                ),
            )
        })?;
    let value = raw_value.trim();
    let canonical = match key {
        FilterKey::Time => Period::parse(value).map(|_| value.to_owned()),
        FilterKey::SimId => is_sim_id(value).then(|| value.to_owned()),
        FilterKey::CountryCode => (value.len() == 2
            && value.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| value.to_ascii_lowercase()),
    };
    let expected = match key {
        FilterKey::Time => "a real UTC date written YYYY, YYYY-MM or YYYY-MM-DD",
        FilterKey::SimId => "exactly 9 digits, like 000000001",
        FilterKey::CountryCode => "two letters, like dk",
    };
    canonical.map(|value| Filter { key, value }).ok_or_else(|| {
        InvalidRequest::new(
            "filter_invalid",
            format!(
                "filter {}:{} is invalid: {} must be {}",
                key.as_str(),
                quote(value),
                key.as_str(),
                expected
            ),
        )
    })
}

fn parse_limit(text: &str) -> Result<u16, InvalidRequest> {
    let trimmed = text.trim();
    let parsed = (!trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()))
        .then(|| trimmed.trim_start_matches('0').parse::<u16>().ok())
        .flatten()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit));
    parsed.ok_or_else(|| {
        InvalidRequest::new(
            "limit_invalid",
            format!(
                "query parameter limit {} is invalid: it must be a whole number from 1 to {MAX_LIMIT}",
                quote(text)
            ),
        )
    })
}

fn parse_offset(text: &str) -> Result<u64, InvalidRequest> {
    let trimmed = text.trim();
    let parsed = (!trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()))
        .then(|| {
            let digits = trimmed.trim_start_matches('0');
            if digits.is_empty() {
                Some(0)
            } else {
                digits.parse::<u64>().ok()
            }
        })
        .flatten();
    parsed.ok_or_else(|| {
        InvalidRequest::new(
            "offset_invalid",
            format!(
                "query parameter offset {} is invalid: it must be a whole number, 0 or more",
                quote(text)
            ),
        )
    })
}

fn parse_cursor(text: &str) -> Result<String, InvalidRequest> {
    let valid = !text.is_empty()
        && text.len() <= MAX_CURSOR_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'='));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(InvalidRequest::new(
            "next_page_invalid",
            format!(
                "query parameter next_page {} is invalid: pass the cursor from the previous page's pagination.next_page unchanged (base64, at most {MAX_CURSOR_LEN} characters, percent-encoded)",
                quote(text)
            ),
        ))
    }
}

/// A tag id as the path carries it: a hyphenated UUID, returned lower-case.
pub fn parse_tag_id(text: &str) -> Result<String, InvalidRequest> {
    // A hand-written shape check: the uuid crate would also accept braced, URN and
    // simple forms, which the upstream path does not, so we would have to reject them anyway.
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if shaped {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(InvalidRequest::new(
            "tag_id_invalid",
            format!(
                "path parameter tag_id {} is invalid: a tag id is a UUID like 5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90",
                quote(text)
            ),
        ))
    }
}

/// A SIM id: exactly 9 digits.
pub fn is_sim_id(text: &str) -> bool {
    text.len() == 9 && text.bytes().all(|b| b.is_ascii_digit())
}

/// An ICCID: 19 or 20 digits (ITU-T E.118; Onomondo's are 20, the last a Luhn check digit,
/// which is the upstream's to verify, not ours).
pub fn is_iccid(text: &str) -> bool {
    matches!(text.len(), 19 | 20) && text.bytes().all(|b| b.is_ascii_digit())
}

/// What may stand for one SIM in `/usage/{sim_id}` and in a caller's `sims` scope: a SIM id
/// or an ICCID.
pub fn is_sim_ref(text: &str) -> bool {
    is_sim_id(text) || is_iccid(text)
}

fn set_once<T: PartialEq>(
    slot: &mut Option<T>,
    value: T,
    name: &str,
) -> Result<(), InvalidRequest> {
    match slot {
        Some(existing) if *existing != value => Err(InvalidRequest::new(
            format_code(name),
            format!("query parameter {name} is given twice with different values: give it once"),
        )),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

fn format_code(name: &str) -> &'static str {
    match name {
        "limit" => "limit_invalid",
        "offset" => "offset_invalid",
        "group" => "group_invalid",
        "next_page" => "next_page_invalid",
        _ => "parameter_invalid",
    }
}

/// Percent-decodes one query component; `plus_is_space` follows HTML form encoding.
fn decode(raw: &str, plus_is_space: bool) -> Result<Cow<'_, str>, ()> {
    let spaced: Cow<'_, str> = if plus_is_space && raw.contains('+') {
        Cow::Owned(raw.replace('+', " "))
    } else {
        Cow::Borrowed(raw)
    };
    if !spaced.contains('%') {
        return Ok(spaced);
    }
    let decoded = percent_decode(spaced.as_bytes())
        .decode_utf8()
        .map_err(|_| ())?
        .into_owned();
    Ok(Cow::Owned(decoded))
}

fn not_utf8(what: &str) -> InvalidRequest {
    InvalidRequest::new(
        "parameter_invalid",
        format!("{what} is not valid UTF-8 once percent-decoded"),
    )
}

/// Quotes caller text for an error message, cut short so a message stays small.
fn quote(text: &str) -> String {
    let mut shown: String = text.chars().take(QUOTE_LIMIT).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    format!("`{}`", shown.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(target: &str) -> String {
        UsageQuery::from_target(target)
            .expect("valid")
            .expect("a usage route")
            .canonical()
            .to_owned()
    }

    fn error_code(target: &str) -> &'static str {
        UsageQuery::from_target(target).expect_err("invalid").code
    }

    #[test]
    fn spellings_of_one_question_share_a_canonical_form() {
        // (spelling, canonical) — one row per normalization rule.
        let rows = [
            // absent limit is the upstream default, rendered explicitly
            ("/usage", "/usage?limit=1000"),
            ("/usage?limit=1000", "/usage?limit=1000"),
            // leading zeros and whitespace in numbers
            ("/usage?limit=0100", "/usage?limit=100"),
            ("/usage?limit=%2050", "/usage?limit=50"),
            // offset 0 is the start of the list
            ("/usage?offset=0", "/usage?limit=1000"),
            ("/usage?offset=007", "/usage?limit=1000&offset=7"),
            // one filter renders as filter=
            (
                "/usage?filter[]=time:2024",
                "/usage?filter=time:2024&limit=1000",
            ),
            (
                "/usage?filter%5B%5D=time%3A2024",
                "/usage?filter=time:2024&limit=1000",
            ),
            (
                "/usage?filter[7]=time:2024",
                "/usage?filter=time:2024&limit=1000",
            ),
            // keys are case-insensitive; values trimmed; country codes lower-cased
            (
                "/usage?filter=TIME:2024",
                "/usage?filter=time:2024&limit=1000",
            ),
            (
                "/usage?filter=+country_code+:+DK+",
                "/usage?filter=country_code:dk&limit=1000",
            ),
            // several filters sort and de-duplicate, rendered as filter[]=
            (
                "/usage?filter=time:2024-03&filter=country_code:dk&filter=country_code:DK",
                "/usage?filter[]=country_code:dk&filter[]=time:2024-03&limit=1000",
            ),
            // parameter order does not matter
            (
                "/usage?limit=5&group=hours&filter=sim_id:000000001",
                "/usage?filter=sim_id:000000001&group=hours&limit=5",
            ),
            // repeated identical parameters are one
            ("/usage?limit=5&limit=5", "/usage?limit=5"),
            // empty pairs are ignored
            ("/usage?&limit=5&&", "/usage?limit=5"),
            // cursors are kept exactly and escaped when rendered; `+` there is literal
            (
                "/usage?next_page=MDAwMDAwMDAy",
                "/usage?limit=1000&next_page=MDAwMDAwMDAy",
            ),
            (
                "/usage?next_page=ab+c/d%3D",
                "/usage?limit=1000&next_page=ab%2Bc%2Fd%3D",
            ),
            (
                "/usage?next_page=ab%2Bc%2Fd%3D",
                "/usage?limit=1000&next_page=ab%2Bc%2Fd%3D",
            ),
            // path parameters
            (
                "/usage/000000042?filter=time:2024",
                "/usage/000000042?filter=time:2024&limit=1000",
            ),
            // an ICCID (19 or 20 digits) stands where a SIM id does
            (
                "/usage/89457387300000000073?filter=time%3A2024-03-05",
                "/usage/89457387300000000073?filter=time:2024-03-05&limit=1000",
            ),
            (
                "/usage/8945738730000000007",
                "/usage/8945738730000000007?limit=1000",
            ),
            // offset beside next_page (the Postman collection sends offset=0 on every page):
            // 0 is the default and dropped, anything else is kept for the upstream to see
            (
                "/usage?limit=1000&offset=0&next_page=MDAwMDAwMDAy",
                "/usage?limit=1000&next_page=MDAwMDAwMDAy",
            ),
            (
                "/usage?offset=3&next_page=MDAw",
                "/usage?limit=1000&next_page=MDAw&offset=3",
            ),
            // tag totals: the same parameters, normalized the same way
            (
                "/usage/tag-total/5F0C7A2E-9B1D-4C3E-8A55-0D2F6B7E1C90",
                "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90?limit=1000",
            ),
            (
                "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90?limit=0100&offset=0&group=hours&filter=TIME:2024-03&filter[]=country_code:DK&next_page=ab%2Bc",
                "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90?filter[]=country_code:dk&filter[]=time:2024-03&group=hours&limit=100&next_page=ab%2Bc",
            ),
        ];
        for (spelling, expected) in rows {
            assert_eq!(canonical(spelling), expected, "spelling {spelling}");
        }
    }

    #[test]
    fn malformed_input_is_refused_naming_the_parameter() {
        // (request, error code) — one row per rule.
        let rows = [
            ("/usage?limit=0", "limit_invalid"),
            ("/usage?limit=1001", "limit_invalid"),
            ("/usage?limit=-1", "limit_invalid"),
            ("/usage?limit=abc", "limit_invalid"),
            ("/usage?limit=", "limit_invalid"),
            ("/usage?limit=99999999999999999999", "limit_invalid"),
            ("/usage?limit=5&limit=6", "limit_invalid"),
            ("/usage?offset=-3", "offset_invalid"),
            ("/usage?offset=1.5", "offset_invalid"),
            ("/usage?group=days", "group_invalid"),
            ("/usage?group", "group_invalid"),
            ("/usage?filter=time", "filter_invalid"),
            ("/usage?filter=colour:red", "filter_invalid"),
            ("/usage?filter=time:2024-13", "filter_invalid"),
            ("/usage?filter=time:2023-02-29", "filter_invalid"),
            ("/usage?filter=time:0000", "filter_invalid"),
            ("/usage?filter=time:24-01", "filter_invalid"),
            ("/usage?filter=time:2024-1-01", "filter_invalid"),
            ("/usage?filter=sim_id:1", "filter_invalid"),
            ("/usage?filter=sim_id:00000000a", "filter_invalid"),
            ("/usage?filter=country_code:dnk", "filter_invalid"),
            ("/usage?filter=country_code:d1", "filter_invalid"),
            // /usage/{sim_id} already names its SIM
            ("/usage/000000001?filter=sim_id:000000001", "filter_invalid"),
            ("/usage?next_page=", "next_page_invalid"),
            ("/usage?next_page=a%20b", "next_page_invalid"),
            ("/usage?next_page=a.b", "next_page_invalid"),
            ("/usage?colour=red", "parameter_invalid"),
            ("/usage?filter[x]=time:2024", "parameter_invalid"),
            ("/usage?filter=time:%FF", "parameter_invalid"),
            ("/usage?%C3%28=1", "parameter_invalid"),
            // a tag total names SIMs by its tag, never by a sim_id filter
            (
                "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90?filter=sim_id:000000001",
                "filter_invalid",
            ),
            (
                "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90?limit=5000",
                "limit_invalid",
            ),
            (
                "/usage/tag-total/5f0c7a2e-9b1d-4c3e-8a55-0d2f6b7e1c90?colour=red",
                "parameter_invalid",
            ),
            ("/usage/12345", "sim_id_invalid"),
            // neither 9 digits nor an ICCID's 19 or 20
            ("/usage/0000000001", "sim_id_invalid"),
            ("/usage/894573873000000000", "sim_id_invalid"),
            ("/usage/894573873000000000731", "sim_id_invalid"),
            ("/usage/8945738730000000007a", "sim_id_invalid"),
            ("/usage/tag-total/not-a-uuid", "tag_id_invalid"),
            (
                "/usage/tag-total/5f0c7a2e9b1d4c3e8a550d2f6b7e1c90",
                "tag_id_invalid",
            ),
        ];
        for (request, code) in rows {
            assert_eq!(error_code(request), code, "request {request}");
        }
    }

    #[test]
    fn a_sim_id_and_an_iccid_are_different_questions() {
        // The gateway does not know which ICCID belongs to which SIM id: each is its own key.
        assert_ne!(
            canonical("/usage/000000007"),
            canonical("/usage/89457387300000000073")
        );
        let query = UsageQuery::parse("/usage/89457387300000000073", None)
            .expect("valid")
            .expect("route");
        assert_eq!(
            query.route(),
            &Route::UsageBySim("89457387300000000073".into())
        );
    }

    #[test]
    fn error_messages_name_the_parameter_and_what_is_accepted() {
        let error =
            UsageQuery::parse("/usage", Some("filter=time:2024-13")).expect_err("invalid month");
        assert!(error.message.contains("time"), "{}", error.message);
        assert!(error.message.contains("YYYY-MM"), "{}", error.message);
        let error = UsageQuery::parse("/usage", Some("limit=5000")).expect_err("too large");
        assert!(error.message.contains("limit") && error.message.contains("1 to 1000"));
    }

    #[test]
    fn error_messages_quote_at_most_a_short_prefix() {
        let long = "x".repeat(10_000);
        let error =
            UsageQuery::parse("/usage", Some(&format!("filter=time:{long}"))).expect_err("invalid");
        assert!(error.message.len() < 400, "{}", error.message.len());
    }

    #[test]
    fn more_filters_than_the_limit_are_refused_counting_repeats() {
        let filters = |n: usize| vec!["filter=sim_id:000000001"; n].join("&");
        let at_limit = UsageQuery::parse_within("/usage", Some(&filters(3)), 3)
            .expect("three filters are within a limit of three");
        assert_eq!(at_limit.map(|q| q.filters().len()), Some(1));
        let error = UsageQuery::parse_within("/usage", Some(&filters(4)), 3)
            .expect_err("a fourth filter, even a repeat, is one too many");
        assert_eq!(error.code, "too_many_filters");
        assert!(
            error.message.contains("more than 3 filter"),
            "{}",
            error.message
        );
        let other = UsageQuery::parse_within("/usage", Some("limit=5&offset=10&group=hours"), 1)
            .expect("other parameters are not filters");
        assert!(other.is_some());
    }

    #[test]
    fn unknown_paths_are_not_routes() {
        for path in [
            "/",
            "/usages",
            "/usage/",
            "/usage/tag-total",
            "/usage/tag-total/",
            "/usage/000000001/extra",
            "/sims",
        ] {
            assert_eq!(UsageQuery::parse(path, None), Ok(None), "path {path}");
        }
    }

    #[test]
    fn periods_end_at_the_next_utc_boundary() {
        let cases = [
            ("2024", "2025-01-01"),
            ("2024-02", "2024-03-01"),
            ("2024-12", "2025-01-01"),
            ("2024-02-29", "2024-03-01"),
            ("2024-12-31", "2025-01-01"),
        ];
        for (text, end) in cases {
            let period = Period::parse(text).expect("valid period");
            assert_eq!(period.end().date().to_string(), end, "period {text}");
            assert_eq!(period.end().time(), Time::MIDNIGHT);
        }
    }

    #[test]
    fn time_filters_expose_their_periods() {
        let query = UsageQuery::parse("/usage", Some("filter[]=time:2024-03&filter[]=time:2023"))
            .expect("valid")
            .expect("route");
        let periods: Vec<_> = query.periods().collect();
        assert_eq!(
            periods,
            [Period::Year(2023), Period::Month(2024, Month::March)]
        );
    }

    #[test]
    fn canonical_form_is_a_valid_request_target() {
        let query = UsageQuery::parse(
            "/usage",
            Some("filter[]=time:2024&filter[]=country_code:dk&next_page=a%2Bb%3D"),
        )
        .expect("valid")
        .expect("route");
        let uri: http::Uri = query
            .canonical()
            .parse()
            .expect("canonical targets parse as URIs");
        assert_eq!(uri.path(), "/usage");
    }

    // === properties ===

    fn filter_spelling() -> impl Strategy<Value = (String, String)> {
        // (canonical filter, one of its spellings)
        let time = (2000u16..2030, 1u8..=12, 1u8..=28).prop_flat_map(|(y, m, d)| {
            prop_oneof![
                Just((format!("time:{y}"), format!("time:{y}"))),
                Just((format!("time:{y}-{m:02}"), format!("TIME: {y}-{m:02}"))),
                Just((
                    format!("time:{y}-{m:02}-{d:02}"),
                    format!("Time:{y}-{m:02}-{d:02} ")
                )),
            ]
        });
        let sim = (1u32..1000).prop_map(|n| (format!("sim_id:{n:09}"), format!(" sim_id:{n:09}")));
        let country = prop::sample::select(vec!["dk", "de", "se", "gb", "us"]).prop_map(|c| {
            (
                format!("country_code:{c}"),
                format!("country_code:{}", c.to_uppercase()),
            )
        });
        prop_oneof![time, sim, country]
    }

    fn param_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("filter".to_owned()),
            Just("filter[]".to_owned()),
            Just("filter%5B%5D".to_owned()),
            (0u32..100).prop_map(|i| format!("filter[{i}]")),
        ]
    }

    fn encode_value(value: &str, percent: bool) -> String {
        if percent {
            utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
        } else {
            value.replace(' ', "+")
        }
    }

    proptest! {
        #[test]
        fn respelling_reordering_and_duplicating_filters_keep_the_canonical_form(
            filters in prop::collection::vec((filter_spelling(), param_name(), any::<bool>()), 1..6),
            duplicate in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let plain: Vec<String> = filters.iter().map(|((c, _), _, _)| format!("filter={c}")).collect();
            let baseline = canonical(&format!("/usage?{}", plain.join("&")));

            let mut spelled: Vec<String> = filters
                .iter()
                .map(|((_, s), name, percent)| format!("{name}={}", encode_value(s, *percent)))
                .collect();
            let copy = spelled[duplicate.index(spelled.len())].clone();
            spelled.push(copy);
            // A seeded rotation and reversal: a different order of the same filters.
            let len = spelled.len();
            spelled.rotate_left((seed as usize) % len);
            if seed % 2 == 0 {
                spelled.reverse();
            }
            prop_assert_eq!(canonical(&format!("/usage?{}", spelled.join("&"))), baseline);
        }

        #[test]
        fn canonicalizing_is_idempotent(
            filters in prop::collection::vec(filter_spelling(), 0..5),
            limit in 1u16..=1000,
            offset in 0u64..100_000,
            hours in any::<bool>(),
        ) {
            let mut params: Vec<String> = filters.iter().map(|(_, s)| format!("filter[]={}", encode_value(s, true))).collect();
            params.push(format!("limit={limit}"));
            params.push(format!("offset={offset}"));
            if hours { params.push("group=hours".to_owned()); }
            let once = canonical(&format!("/usage?{}", params.join("&")));
            prop_assert_eq!(canonical(&once), once.clone());
        }

        #[test]
        fn different_questions_never_share_a_canonical_form(
            a in prop::collection::btree_set(filter_spelling().prop_map(|(c, _)| c), 0..4),
            b in prop::collection::btree_set(filter_spelling().prop_map(|(c, _)| c), 0..4),
            limit_a in 1u16..=1000,
            limit_b in 1u16..=1000,
        ) {
            let render = |filters: &std::collections::BTreeSet<String>, limit: u16| {
                let mut params: Vec<String> = filters.iter().map(|f| format!("filter[]={f}")).collect();
                params.push(format!("limit={limit}"));
                canonical(&format!("/usage?{}", params.join("&")))
            };
            let same_question = a == b && limit_a == limit_b;
            prop_assert_eq!(render(&a, limit_a) == render(&b, limit_b), same_question);
        }

        #[test]
        fn arbitrary_query_strings_never_panic(raw in "[a-z%0-9\\[\\]=&:+_ -]{0,80}") {
            let _ = UsageQuery::parse("/usage", Some(&raw));
        }

        #[test]
        fn cursors_survive_the_round_trip(cursor in "[A-Za-z0-9+/=_-]{1,64}") {
            let encoded = utf8_percent_encode(&cursor, NON_ALPHANUMERIC).to_string();
            let query = UsageQuery::parse("/usage", Some(&format!("next_page={encoded}")))
                .expect("valid").expect("route");
            prop_assert_eq!(query.page(), &Page { cursor: Some(cursor.clone()), offset: 0 });
            let again = canonical(query.canonical());
            prop_assert_eq!(again, query.canonical());
        }
    }
}
