//! Query-string parsing for the usage endpoints (§8.4 steps 2–5, plus unknown parameters).
//!
//! Pure: a raw query string in, a typed `UsageQuery` or the first `QueryError` out, in the
//! spec's order: `limit`, `offset`, `group`, `filter`, then unknown parameters. (`next_page` is
//! only extracted here; whether it decodes is the cursor's business, checked last.)
//!
//! Decoding rules: names and values are percent-decoded; `+` means a space except in
//! `next_page`, whose base64 cursors contain literal `+`. `filter`, `filter[]` and `filter[N]`
//! (N digits), in any percent-encoded spelling, all add one filter. A repeated scalar parameter
//! (`limit`, `offset`, `group`, `next_page`): the last occurrence wins.
//!
//! The filter lists come out sorted and deduplicated, since repeated values of one key are ORed
//! and different keys ANDed: order carries no meaning, and the canonical form feeds cursor
//! fingerprints.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::calendar::{days_in_month, ms_from_civil};

const MS_PER_DAY: i64 = 86_400_000;
pub(crate) const MAX_LIMIT: u32 = 1000;

/// How forgiving the parser is (`--strict-filters`, `--strict-limit`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strictness {
    pub filters: bool,
    pub limit: bool,
}

/// Which filter keys an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterKeys {
    /// `time`, `sim_id`, `country_code` (`/usage`, `/usage/{sim_id}`).
    Usage,
    /// `time`, `country_code` (`/usage/tag-total/{tag_id}`).
    TagTotal,
}

/// The first validation failure, mapped to the §8.8 catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryError {
    Limit,
    Offset,
    Group,
    Filter,
    Parameter,
}

impl QueryError {
    pub fn code(self) -> &'static str {
        match self {
            QueryError::Limit => "limit_invalid",
            QueryError::Offset => "offset_invalid",
            QueryError::Group => "group_invalid",
            QueryError::Filter => "filter_invalid",
            QueryError::Parameter => "parameter_invalid",
        }
    }
}

/// A UTC period `[start_ms, end_ms)` named by a `time:` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Period {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// Parsed filters; each list sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filters {
    pub times: Vec<Period>,
    /// SIM numbers as written (`000000007` → 7); 0 matches nothing.
    pub sim_numbers: Vec<u32>,
    /// Lower-case ASCII country codes.
    pub countries: Vec<[u8; 2]>,
}

/// A validated usage query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsageQuery<'a> {
    pub limit: u32,
    pub offset: u64,
    pub hours: bool,
    pub filters: Filters,
    pub next_page: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Limit,
    Offset,
    Group,
    NextPage,
    Filter,
    Unknown,
}

fn classify(name: &str) -> Param {
    match name {
        "limit" => Param::Limit,
        "offset" => Param::Offset,
        "group" => Param::Group,
        "next_page" => Param::NextPage,
        "filter" | "filter[]" => Param::Filter,
        _ => match name
            .strip_prefix("filter[")
            .and_then(|rest| rest.strip_suffix(']'))
        {
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Param::Filter,
            _ => Param::Unknown,
        },
    }
}

/// Percent-decodes one component; `+` becomes a space when `plus_is_space`.
fn decode(s: &str, plus_is_space: bool) -> Cow<'_, str> {
    if plus_is_space && s.contains('+') {
        let spaced = s.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
    } else {
        percent_decode_str(s).decode_utf8_lossy()
    }
}

/// Parses a raw query string (without the `?`).
pub(crate) fn parse(
    raw: &str,
    keys: FilterKeys,
    strict: Strictness,
) -> Result<UsageQuery<'_>, QueryError> {
    let mut limit = None;
    let mut offset = None;
    let mut group = None;
    let mut next_page = None;
    let mut filters_raw: Vec<Cow<'_, str>> = Vec::new();
    let mut unknown = false;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match classify(&decode(name, true)) {
            Param::Limit => limit = Some(decode(value, true)),
            Param::Offset => offset = Some(decode(value, true)),
            Param::Group => group = Some(decode(value, true)),
            Param::NextPage => next_page = Some(decode(value, false)),
            Param::Filter => filters_raw.push(decode(value, true)),
            Param::Unknown => unknown = true,
        }
    }
    let limit = parse_limit(limit.as_deref(), strict.limit)?;
    let offset = parse_offset(offset.as_deref())?;
    let hours = match group.as_deref() {
        None => false,
        Some("hours") => true,
        Some(_) => return Err(QueryError::Group),
    };
    let filters = parse_filters(&filters_raw, keys, strict.filters)?;
    if unknown && strict.filters {
        return Err(QueryError::Parameter);
    }
    Ok(UsageQuery {
        limit,
        offset,
        hours,
        filters,
        next_page,
    })
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `limit`: absent → 1000; `^[0-9]+$` in 1..=1000. Lenient mode clamps numbers into range and
/// treats anything else as absent.
fn parse_limit(value: Option<&str>, strict: bool) -> Result<u32, QueryError> {
    let Some(v) = value else {
        return Ok(MAX_LIMIT);
    };
    let number = all_digits(v).then(|| v.parse::<u64>().ok()).flatten();
    match number {
        Some(n) if (1..=u64::from(MAX_LIMIT)).contains(&n) => {
            Ok(u32::try_from(n).expect("n is at most 1000"))
        }
        _ if strict => Err(QueryError::Limit),
        Some(0) => Ok(1),
        // Digits too large for u64 are still "too large", so they clamp down too.
        _ => Ok(MAX_LIMIT),
    }
}

fn parse_offset(value: Option<&str>) -> Result<u64, QueryError> {
    match value {
        None => Ok(0),
        Some(v) if all_digits(v) => v.parse().map_err(|_| QueryError::Offset),
        Some(_) => Err(QueryError::Offset),
    }
}

fn parse_filters(
    raw: &[Cow<'_, str>],
    keys: FilterKeys,
    strict: bool,
) -> Result<Filters, QueryError> {
    let mut f = Filters::default();
    for item in raw {
        let ok = match item.split_once(':') {
            Some(("time", v)) => parse_period(v).map(|p| f.times.push(p)).is_some(),
            Some(("sim_id", v)) if keys == FilterKeys::Usage => {
                parse_sim_number(v).map(|n| f.sim_numbers.push(n)).is_some()
            }
            Some(("country_code", v)) => parse_country(v).map(|c| f.countries.push(c)).is_some(),
            _ => false,
        };
        if !ok && strict {
            return Err(QueryError::Filter);
        }
    }
    f.times.sort_unstable();
    f.times.dedup();
    f.sim_numbers.sort_unstable();
    f.sim_numbers.dedup();
    f.countries.sort_unstable();
    f.countries.dedup();
    Ok(f)
}

fn parse_sim_number(v: &str) -> Option<u32> {
    (v.len() == 9 && all_digits(v))
        .then(|| v.parse().ok())
        .flatten()
}

fn parse_country(v: &str) -> Option<[u8; 2]> {
    match v.as_bytes() {
        &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_lowercase(), b.to_ascii_lowercase()])
        }
        _ => None,
    }
}

/// Value of a run of ASCII digits (at most 4, so no overflow).
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` as a UTC period.
pub(crate) fn parse_period(v: &str) -> Option<Period> {
    let b = v.as_bytes();
    let year = i64::from(digits(b.get(0..4)?)?);
    let (start_ms, end_ms) = match b.len() {
        4 => (ms_from_civil(year, 1, 1), ms_from_civil(year + 1, 1, 1)),
        7 if b[4] == b'-' => {
            let m = digits(&b[5..7]).filter(|m| (1..=12).contains(m))?;
            let end = if m == 12 {
                ms_from_civil(year + 1, 1, 1)
            } else {
                ms_from_civil(year, m + 1, 1)
            };
            (ms_from_civil(year, m, 1), end)
        }
        10 if b[4] == b'-' && b[7] == b'-' => {
            let m = digits(&b[5..7]).filter(|m| (1..=12).contains(m))?;
            let d = digits(&b[8..10]).filter(|d| (1..=days_in_month(year, m)).contains(d))?;
            let start = ms_from_civil(year, m, d);
            (start, start + MS_PER_DAY)
        }
        _ => return None,
    };
    Some(Period { start_ms, end_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Strictness = Strictness {
        filters: true,
        limit: true,
    };
    const LENIENT: Strictness = Strictness {
        filters: false,
        limit: false,
    };

    fn usage(raw: &str) -> Result<UsageQuery<'_>, QueryError> {
        parse(raw, FilterKeys::Usage, STRICT)
    }

    #[test]
    fn defaults_apply_to_an_empty_query() {
        let q = usage("").expect("valid");
        assert_eq!((q.limit, q.offset, q.hours), (1000, 0, false));
        assert_eq!(q.filters, Filters::default());
        assert_eq!(q.next_page, None);
    }

    #[test]
    fn each_invalid_parameter_maps_to_its_code() {
        let rows: &[(&str, QueryError)] = &[
            // limit: digits only, 1..=1000
            ("limit=0", QueryError::Limit),
            ("limit=1001", QueryError::Limit),
            ("limit=-1", QueryError::Limit),
            ("limit=", QueryError::Limit),
            ("limit=1e3", QueryError::Limit),
            ("limit=99999999999999999999999", QueryError::Limit),
            // offset: non-negative integer
            ("offset=-1", QueryError::Offset),
            ("offset=x", QueryError::Offset),
            // group: only hours
            ("group=days", QueryError::Group),
            ("group=", QueryError::Group),
            // filter: known key, valid value
            ("filter=color:red", QueryError::Filter),
            ("filter=time", QueryError::Filter),
            ("filter=time:2024-13", QueryError::Filter),
            ("filter=time:2023-02-29", QueryError::Filter),
            ("filter=time:24", QueryError::Filter),
            ("filter=sim_id:1", QueryError::Filter),
            ("filter=country_code:dnk", QueryError::Filter),
            ("filter[]=country_code:d1", QueryError::Filter),
            // unknown parameter
            ("foo=bar", QueryError::Parameter),
            ("filter[x]=time:2024", QueryError::Parameter),
        ];
        for (raw, want) in rows {
            assert_eq!(usage(raw).err(), Some(*want), "query {raw:?}");
        }
    }

    #[test]
    fn the_first_failure_in_spec_order_wins() {
        assert_eq!(
            usage("foo=1&filter=x&group=y&offset=z&limit=0").err(),
            Some(QueryError::Limit)
        );
        assert_eq!(
            usage("foo=1&filter=x&group=y&offset=z").err(),
            Some(QueryError::Offset)
        );
        assert_eq!(
            usage("foo=1&filter=x&group=y").err(),
            Some(QueryError::Group)
        );
        assert_eq!(usage("foo=1&filter=x").err(), Some(QueryError::Filter));
    }

    #[test]
    fn all_filter_spellings_add_a_filter() {
        let spellings = [
            "filter=country_code:dk",
            "filter[]=country_code:dk",
            "filter[0]=country_code:dk",
            "filter%5B%5D=country_code:dk",
            "filter%5b3%5d=country_code%3Adk",
            "filter[]=country_code:DK",
        ];
        for raw in spellings {
            let q = usage(raw).expect("valid");
            assert_eq!(q.filters.countries, vec![*b"dk"], "query {raw:?}");
        }
    }

    #[test]
    fn repeated_values_are_sorted_and_deduplicated() {
        let q = usage("filter[]=country_code:se&filter[]=country_code:dk&filter[]=country_code:se")
            .expect("valid");
        assert_eq!(q.filters.countries, vec![*b"dk", *b"se"]);
    }

    #[test]
    fn plus_is_a_space_except_in_next_page() {
        let q = usage("next_page=ab+c%2Bd%3D").expect("valid");
        assert_eq!(q.next_page.as_deref(), Some("ab+c+d="));
        assert_eq!(usage("group=ho+urs").err(), Some(QueryError::Group));
        assert_eq!(usage("limit=%31%30").expect("valid").limit, 10);
    }

    #[test]
    fn lenient_mode_clamps_limit_and_drops_bad_filters() {
        let q = parse(
            "limit=5000&filter=color:red&filter=country_code:dk&foo=1",
            FilterKeys::Usage,
            LENIENT,
        )
        .expect("lenient");
        assert_eq!(q.limit, 1000);
        assert_eq!(q.filters.countries, vec![*b"dk"]);
        let q = parse("limit=0", FilterKeys::Usage, LENIENT).expect("lenient");
        assert_eq!(q.limit, 1);
        let q = parse("limit=abc", FilterKeys::Usage, LENIENT).expect("lenient");
        assert_eq!(q.limit, 1000);
    }

    #[test]
    fn tag_total_rejects_a_sim_id_filter() {
        let r = parse("filter=sim_id:000000001", FilterKeys::TagTotal, STRICT);
        assert_eq!(r.err(), Some(QueryError::Filter));
    }

    #[test]
    fn time_periods_are_utc_days_months_and_years() {
        let day = parse_period("2024-02-29").expect("leap day");
        assert_eq!(day.end_ms - day.start_ms, MS_PER_DAY);
        let month = parse_period("2024-12").expect("december");
        assert_eq!(month.end_ms, ms_from_civil(2025, 1, 1));
        let year = parse_period("2024").expect("year");
        assert_eq!(year.start_ms, 1_704_067_200_000);
        assert_eq!(year.end_ms - year.start_ms, 366 * MS_PER_DAY);
        assert!(parse_period("2024-1").is_none());
        assert!(parse_period("2024-01-1").is_none());
        assert!(parse_period("2024/01").is_none());
        assert!(parse_period("20é4").is_none());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsing_never_panics(raw in "[a-z_=&%:\\[\\]0-9+-]{0,40}") {
                let _ = parse(&raw, FilterKeys::Usage, STRICT);
                let _ = parse(&raw, FilterKeys::TagTotal, LENIENT);
            }

            #[test]
            fn filter_order_does_not_change_the_query(
                a in "(dk|se|de|gb)", b in "(dk|se|de|gb)", t in "(2024|2024-03|2024-03-05)"
            ) {
                let one = format!("filter[]=country_code:{a}&filter[]=time:{t}&filter[]=country_code:{b}");
                let two = format!("filter[]=country_code:{b}&filter[]=country_code:{a}&filter[]=time:{t}");
                let q1 = usage(&one).map(|q| q.filters);
                let q2 = usage(&two).map(|q| q.filters);
                prop_assert_eq!(q1, q2);
            }
        }
    }
}
