//! Selecting and rendering result pages (§8.4 step 7, §8.5).
//!
//! Guarantees: a page is `matches[pos .. pos + limit]` of the records that pass the time ranges,
//! SIM set, country set and key scope, in view order; `has_more` is exactly
//! `pos + limit < total`. Selection never visits more than it must: time filters are binary
//! searches on the time-sorted view, SIM filters walk the per-SIM index, an unfiltered walk is
//! pure index arithmetic, and a filtered scan stops at the first match past the page. Pages are
//! rendered by copying runs of pre-serialized JSON, as the real API lays them out
//! (upstream-api.md §4.3): `{"pagination":{...},"usage":[...]}`, the last page's pagination
//! being `{"has_more":false}` with no `next_page` at all.

use std::fmt::Write as _;

use bytes::Bytes;

use crate::auth::Scope;
use crate::calendar::{write_iso_ms, write_plain_secs, MS_PER_HOUR};
use crate::data::{country_index, Data, View, COUNTRIES};
use crate::options::RecordShape;
use crate::query::Filters;

/// A set of country indices as a bitmask; `None` means every country.
pub(crate) type CountryMask = Option<u16>;

pub(crate) fn country_mask(filters: &Filters) -> CountryMask {
    if filters.countries.is_empty() {
        return None;
    }
    // Codes outside the table stay in the OR but match nothing.
    Some(
        filters
            .countries
            .iter()
            .filter_map(|c| country_index(*c))
            .fold(0u16, |m, i| m | (1 << i)),
    )
}

fn mask_has(mask: CountryMask, country: u8) -> bool {
    match mask {
        None => true,
        Some(m) => m & (1 << country) != 0,
    }
}

/// View position ranges `[lo, hi)` covered by the time filters, ascending and disjoint.
pub(crate) fn time_ranges(view: &View, filters: &Filters) -> Vec<(usize, usize)> {
    if filters.times.is_empty() {
        return vec![(0, view.recs.len())];
    }
    let mut ranges: Vec<(usize, usize)> = filters
        .times
        .iter()
        .map(|p| view.time_range(p.start_ms, p.end_ms))
        .filter(|(lo, hi)| lo < hi)
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// Which records a usage request asks for.
#[derive(Debug)]
pub(crate) struct Selection<'a> {
    pub view: &'a View,
    pub filters: &'a Filters,
    /// The SIM index named in `/usage/{sim_id}`.
    pub path_sim: Option<u32>,
    pub scope: &'a Scope,
    pub sim_count: usize,
}

/// One page of view positions.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub positions: Vec<u32>,
    pub has_more: bool,
}

impl Selection<'_> {
    /// The SIM indices the request is limited to, or `None` for "all SIMs in scope".
    fn sims(&self) -> Option<Vec<u32>> {
        let wanted = &self.filters.sim_numbers;
        let mut sims: Vec<u32> = match self.path_sim {
            Some(s) => {
                let named = wanted.is_empty() || wanted.binary_search(&(s + 1)).is_ok();
                if named {
                    vec![s]
                } else {
                    Vec::new()
                }
            }
            None if wanted.is_empty() => return None,
            None => wanted
                .iter()
                .filter_map(|n| n.checked_sub(1))
                .filter(|&i| (i as usize) < self.sim_count)
                .collect(),
        };
        sims.retain(|&s| self.scope.sees_sim(s));
        Some(sims)
    }

    pub fn page(&self, pos: u64, limit: u32) -> Page {
        let ranges = time_ranges(self.view, self.filters);
        let mask = country_mask(self.filters);
        match self.sims() {
            Some(sims) => self.page_of_sims(&sims, &ranges, mask, pos, limit),
            None if mask.is_none() && self.scope.visible.is_none() => {
                page_of_ranges(&ranges, pos, limit)
            }
            None => self.page_by_scan(&ranges, mask, pos, limit),
        }
    }

    fn page_of_sims(
        &self,
        sims: &[u32],
        ranges: &[(usize, usize)],
        mask: CountryMask,
        pos: u64,
        limit: u32,
    ) -> Page {
        let recs = &self.view.recs;
        let mut matches: Vec<u32> = Vec::new();
        for &s in sims {
            let list = &self.view.by_sim[s as usize];
            for &(lo, hi) in ranges {
                let a = list.partition_point(|&p| (p as usize) < lo);
                let b = list.partition_point(|&p| (p as usize) < hi);
                matches.extend(
                    list[a..b]
                        .iter()
                        .filter(|&&p| mask_has(mask, recs[p as usize].country)),
                );
            }
        }
        if sims.len() > 1 {
            // Each SIM's list is ascending; several SIMs interleave.
            matches.sort_unstable();
        }
        slice_page(&matches, pos, limit)
    }

    fn page_by_scan(
        &self,
        ranges: &[(usize, usize)],
        mask: CountryMask,
        pos: u64,
        limit: u32,
    ) -> Page {
        let recs = &self.view.recs;
        let mut skipped = 0u64;
        let mut positions = Vec::with_capacity(limit.min(1000) as usize);
        for &(lo, hi) in ranges {
            for (p, r) in recs[lo..hi].iter().enumerate().map(|(i, r)| (lo + i, r)) {
                if !mask_has(mask, r.country) || !self.scope.sees_sim(r.sim) {
                    continue;
                }
                if skipped < pos {
                    skipped += 1;
                } else if positions.len() < limit as usize {
                    positions.push(u32::try_from(p).expect("view positions fit u32"));
                } else {
                    return Page {
                        positions,
                        has_more: true,
                    };
                }
            }
        }
        Page {
            positions,
            has_more: false,
        }
    }
}

fn slice_page(matches: &[u32], pos: u64, limit: u32) -> Page {
    let start = usize::try_from(pos)
        .unwrap_or(usize::MAX)
        .min(matches.len());
    let end = start.saturating_add(limit as usize).min(matches.len());
    Page {
        positions: matches[start..end].to_vec(),
        has_more: end < matches.len(),
    }
}

/// Page over the union of ranges when every record in them matches.
fn page_of_ranges(ranges: &[(usize, usize)], pos: u64, limit: u32) -> Page {
    let total: u64 = ranges.iter().map(|(lo, hi)| (hi - lo) as u64).sum();
    let mut positions = Vec::new();
    let mut skip = pos;
    let mut want = u64::from(limit);
    for &(lo, hi) in ranges {
        let len = (hi - lo) as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let from = lo as u64 + skip;
        let take = want.min(hi as u64 - from);
        positions.extend((from..from + take).map(|p| p as u32));
        want -= take;
        skip = 0;
        if want == 0 {
            break;
        }
    }
    Page {
        positions,
        has_more: pos.saturating_add(u64::from(limit)) < total,
    }
}

/// `{"pagination":{"has_more":...[,"next_page":"..."]},"usage":[`: the body up to its
/// records. A page without a next one has no `next_page` (not `null`), as the real API.
fn open_body(body: &mut Vec<u8>, has_more: bool, next_page: Option<&str>) {
    body.extend_from_slice(b"{\"pagination\":{\"has_more\":");
    body.extend_from_slice(if has_more { b"true" } else { b"false" });
    if let Some(cursor) = next_page {
        // Cursors are base64, which never needs JSON escaping.
        body.extend_from_slice(b",\"next_page\":\"");
        body.extend_from_slice(cursor.as_bytes());
        body.push(b'"');
    }
    body.extend_from_slice(b"},\"usage\":[");
}

/// `{"pagination":{...},"usage":[...]}` for a page of a view.
pub(crate) fn render_usage(view: &View, page: &Page, next_page: Option<&str>) -> Bytes {
    let mut body = Vec::with_capacity(96);
    open_body(&mut body, page.has_more, next_page);
    let p = &page.positions;
    let mut i = 0;
    while i < p.len() {
        let mut j = i + 1;
        while j < p.len() && p[j] == p[j - 1] + 1 {
            j += 1;
        }
        if i > 0 {
            body.push(b',');
        }
        if i == 0 {
            // The first run tells the size of the whole page well enough.
            body.reserve(
                view.run(p[i] as usize, p[j - 1] as usize + 1).len() * p.len() / (j - i) + 64,
            );
        }
        body.extend_from_slice(view.run(p[i] as usize, p[j - 1] as usize + 1));
        i = j;
    }
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

/// Aggregated tag usage, before pagination.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TagRows {
    /// `(country index, bytes)`, bytes descending then country index ascending.
    ByCountry(Vec<(u8, u64)>),
    /// `(hour start ms, bytes)`, time descending.
    ByHour(Vec<(i64, u64)>),
    /// Derived shape without `group`: `(first hour ms, total bytes)` if any usage matched.
    Total(Option<(i64, u64)>),
}

impl TagRows {
    pub fn len(&self) -> usize {
        match self {
            TagRows::ByCountry(v) => v.len(),
            TagRows::ByHour(v) => v.len(),
            TagRows::Total(t) => usize::from(t.is_some()),
        }
    }
}

/// Upper bound on the number of tag-total rows, which bounds a valid cursor position.
pub(crate) fn tag_rows_bound(data: &Data, hours: bool) -> usize {
    if hours {
        data.hours as usize
    } else {
        COUNTRIES.len()
    }
}

/// Sums the hourly view over the tag's SIMs, within the time and country filters.
pub(crate) fn tag_rows(
    data: &Data,
    tag: u16,
    filters: &Filters,
    hours: bool,
    shape: RecordShape,
) -> TagRows {
    let view = &data.hourly;
    let ranges = time_ranges(view, filters);
    let mask = country_mask(filters);
    let mut per_hour = vec![0u64; if hours { data.hours as usize } else { 0 }];
    let mut per_country = [0u64; COUNTRIES.len()];
    let mut first_hour: Option<i64> = None;
    for &s in &data.sims_of_tag[tag as usize] {
        let list = &view.by_sim[s as usize];
        for &(lo, hi) in &ranges {
            let a = list.partition_point(|&p| (p as usize) < lo);
            let b = list.partition_point(|&p| (p as usize) < hi);
            for &p in &list[a..b] {
                let r = &view.recs[p as usize];
                if !mask_has(mask, r.country) {
                    continue;
                }
                if hours {
                    let h = (r.time_ms - data.start_ms) / MS_PER_HOUR;
                    per_hour[h as usize] += r.bytes;
                } else {
                    per_country[r.country as usize] += r.bytes;
                    first_hour = Some(first_hour.map_or(r.time_ms, |f| f.min(r.time_ms)));
                }
            }
        }
    }
    if hours {
        // Every record has bytes >= 64, so a zero sum means "no usage that hour".
        let rows = per_hour
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, &b)| b > 0)
            .map(|(h, &b)| (data.start_ms + h as i64 * MS_PER_HOUR, b))
            .collect();
        return TagRows::ByHour(rows);
    }
    if shape == RecordShape::Derived {
        return TagRows::Total(first_hour.map(|f| (f, per_country.iter().sum())));
    }
    let mut rows: Vec<(u8, u64)> = per_country
        .iter()
        .enumerate()
        .filter(|(_, &b)| b > 0)
        .map(|(c, &b)| (c as u8, b))
        .collect();
    rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    TagRows::ByCountry(rows)
}

/// `{"pagination":{...},"usage":[...]}` for rows `pos..pos+limit` of a tag total.
pub(crate) fn render_tag(
    rows: &TagRows,
    tag_id: &str,
    shape: RecordShape,
    pos: usize,
    limit: usize,
    next_page: Option<&str>,
) -> Bytes {
    let total = rows.len();
    let start = pos.min(total);
    let end = start.saturating_add(limit).min(total);
    let mut s = String::with_capacity(64 + (end - start) * 96);
    for i in start..end {
        if i > start {
            s.push(',');
        }
        match (rows, shape) {
            (TagRows::ByCountry(v), _) => {
                let (c, b) = v[i];
                let country = &COUNTRIES[c as usize];
                let _ = write!(
                    s,
                    "{{\"tag_id\":\"{tag_id}\",\"bytes\":{b},\"network\":{{\"country\":\"{}\",\"country_code\":\"{}\"}}}}",
                    country.name, country.code
                );
            }
            (TagRows::ByHour(v), RecordShape::Onomondo) => {
                let (t, b) = v[i];
                let _ = write!(s, "{{\"tag_id\":\"{tag_id}\",\"time\":\"");
                write_plain_secs(&mut s, t);
                let _ = write!(s, "\",\"bytes\":{b}}}");
            }
            (TagRows::ByHour(v), RecordShape::Derived) => {
                let (t, b) = v[i];
                derived_row(&mut s, t, b);
            }
            (TagRows::Total(Some((t, b))), _) => derived_row(&mut s, *t, *b),
            (TagRows::Total(None), _) => {}
        }
    }
    let mut body = Vec::with_capacity(s.len() + 64);
    open_body(&mut body, end < total, next_page);
    body.extend_from_slice(s.as_bytes());
    body.extend_from_slice(b"]}");
    Bytes::from(body)
}

fn derived_row(s: &mut String, time_ms: i64, bytes: u64) {
    let _ = write!(s, "{{\"sim_id\":null,\"bytes\":{bytes},\"timestamp\":\"");
    write_iso_ms(s, time_ms);
    s.push_str("\"}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::GenParams;
    use crate::query::Period;

    fn data() -> Data {
        Data::generate(&GenParams {
            seed: 11,
            sims: 30,
            tags: 3,
            start_ms: 1_704_067_200_000,
            hours: 72,
            activity: 0.4,
            shape: RecordShape::Onomondo,
        })
    }

    /// The reference: filter every record one by one, no shortcuts.
    fn brute(d: &Data, sel: &Selection<'_>) -> Vec<u32> {
        let sims = sel.sims();
        let mask = country_mask(sel.filters);
        (0..d.raw.recs.len() as u32)
            .filter(|&p| {
                let r = &d.raw.recs[p as usize];
                let t_ok = sel.filters.times.is_empty()
                    || sel
                        .filters
                        .times
                        .iter()
                        .any(|t| r.time_ms >= t.start_ms && r.time_ms < t.end_ms);
                let s_ok = match &sims {
                    None => true,
                    Some(v) => v.contains(&r.sim),
                };
                t_ok && s_ok && mask_has(mask, r.country) && sel.scope.sees_sim(r.sim)
            })
            .collect()
    }

    fn day(d: u32) -> Period {
        let start = 1_704_067_200_000 + i64::from(d - 1) * 86_400_000;
        Period {
            start_ms: start,
            end_ms: start + 86_400_000,
        }
    }

    #[test]
    fn every_selection_strategy_agrees_with_brute_force() {
        let d = data();
        let sim_tags: Vec<Vec<u16>> = d.sims.iter().map(|s| s.tags.clone()).collect();
        let scoped = Scope::of_tags(vec![1], &sim_tags);
        let org = Scope::organization();
        let filter_sets = [
            Filters::default(),
            Filters {
                times: vec![day(2)],
                ..Filters::default()
            },
            Filters {
                times: vec![day(1), day(3)],
                countries: vec![*b"dk", *b"zz"],
                ..Filters::default()
            },
            Filters {
                sim_numbers: vec![3, 7, 999],
                times: vec![day(2), day(3)],
                ..Filters::default()
            },
            Filters {
                countries: vec![*b"zz"],
                ..Filters::default()
            },
        ];
        for filters in &filter_sets {
            for scope in [&org, &scoped] {
                for path_sim in [None, Some(2)] {
                    let sel = Selection {
                        view: &d.raw,
                        filters,
                        path_sim,
                        scope,
                        sim_count: d.sims.len(),
                    };
                    let all = brute(&d, &sel);
                    for (pos, limit) in [
                        (0, 1000),
                        (0, 7),
                        (5, 7),
                        (all.len() as u64, 3),
                        (10_000, 5),
                    ] {
                        let page = sel.page(pos, limit);
                        let want = slice_page(&all, pos, limit);
                        assert_eq!(
                            page, want,
                            "{filters:?} {path_sim:?} pos {pos} limit {limit}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_rendered_page_is_valid_json_with_the_records_in_order() {
        let d = data();
        let page = Page {
            positions: vec![0, 1, 2, 5, 9, 10],
            has_more: true,
        };
        let body = render_usage(&d.raw, &page, Some("MDAwMDAwMDEx"));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let usage = v["usage"].as_array().expect("array");
        assert_eq!(usage.len(), 6);
        let fifth: serde_json::Value = serde_json::from_slice(d.raw.run(9, 10)).expect("record");
        assert_eq!(usage[4], fifth);
        assert_eq!(v["pagination"]["next_page"], "MDAwMDAwMDEx");
        let empty = render_usage(&d.raw, &Page::default(), None);
        assert_eq!(
            &empty[..],
            b"{\"pagination\":{\"has_more\":false},\"usage\":[]}"
        );
        assert!(body.starts_with(
            b"{\"pagination\":{\"has_more\":true,\"next_page\":\"MDAwMDAwMDEx\"},\"usage\":[{"
        ));
    }

    #[test]
    fn tag_totals_by_country_and_by_hour_agree_with_raw_sums() {
        let d = data();
        let tag = 1u16;
        let filters = Filters::default();
        let raw_sum: u64 = d
            .raw
            .recs
            .iter()
            .filter(|r| d.sims[r.sim as usize].tags.contains(&tag))
            .map(|r| r.bytes)
            .sum();
        let by_country = tag_rows(&d, tag, &filters, false, RecordShape::Onomondo);
        let by_hour = tag_rows(&d, tag, &filters, true, RecordShape::Onomondo);
        let total = tag_rows(&d, tag, &filters, false, RecordShape::Derived);
        match (by_country, by_hour, total) {
            (TagRows::ByCountry(c), TagRows::ByHour(h), TagRows::Total(Some((_, t)))) => {
                assert_eq!(c.iter().map(|r| r.1).sum::<u64>(), raw_sum);
                assert_eq!(h.iter().map(|r| r.1).sum::<u64>(), raw_sum);
                assert_eq!(t, raw_sum);
                assert!(c.windows(2).all(|w| w[0].1 >= w[1].1));
                assert!(h.windows(2).all(|w| w[0].0 > w[1].0));
            }
            other => panic!("unexpected rows {other:?}"),
        }
    }
}
