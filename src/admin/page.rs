//! The status page for people: server-rendered HTML with inline SVG charts, no external assets,
//! refreshing itself. Pure: it renders the numbers it is given.

use std::fmt::Write as _;
use std::time::Duration;

use crate::metrics::{CallerTotals, Sample};
use crate::shared::SharedView;

/// Everything the page shows.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    pub version: &'static str,
    pub uptime: Duration,
    pub requests: u64,
    pub from_cache: u64,
    pub hits: u64,
    pub collapsed: u64,
    pub stale: u64,
    pub upstream_calls: u64,
    pub errors: u64,
    pub cache_entries: u64,
    pub cache_bytes: u64,
    /// Per credential profile: name, budget left now, breaker open.
    pub profiles: Vec<(String, usize, bool)>,
    pub callers: Vec<(String, CallerTotals)>,
    /// Cumulative samples, oldest first, one per sampling interval.
    pub history: Vec<Sample>,
    pub draining: bool,
    /// The shared tier (`[shared]`), if any: where Redis is (never its credentials), whether
    /// it answers, and this replica's name in it.
    pub shared: Option<SharedView>,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (days, hours, minutes) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes}m {}s", secs % 60),
        (0, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The shared tier: one process, or the replicas' Redis and whether it answers.
fn shared_section(shared: Option<&SharedView>) -> String {
    let Some(shared) = shared else {
        return "<h2>Shared state</h2><p>none: one process (budget, quotas and cache in memory)</p>"
            .to_owned();
    };
    let state = if shared.up {
        "up: the budget is shared by every replica"
    } else {
        r#"<span class="bad">down</span>: no upstream call goes out (hits and stale answers go on)"#
    };
    let totals = &shared.totals;
    format!(
        "<h2>Shared state</h2><table><tr><th>Redis</th><td>{}</td></tr><tr><th>state</th><td>{state}</td></tr><tr><th>key prefix</th><td>{}</td></tr><tr><th>this replica</th><td>{}</td></tr><tr><th>shared-cache hits</th><td>{} of {} lookups</td></tr><tr><th>waits for another replica's fill</th><td>{} ({} taken over)</td></tr><tr><th>other replicas' purges applied</th><td>{} (memory dropped after a gap: {})</td></tr></table>",
        escape(&shared.redis),
        escape(&shared.key_prefix),
        escape(&shared.instance_id),
        totals.hits,
        totals.lookups,
        totals.lock_waits,
        totals.takeovers,
        totals.purges_applied,
        totals.purge_gaps,
    )
}

/// A small line chart of `values` (oldest first) as inline SVG.
pub fn sparkline(title: &str, values: &[f64], unit: &str) -> String {
    const WIDTH: f64 = 300.0;
    const HEIGHT: f64 = 60.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let scale = if max > 0.0 { HEIGHT / max } else { 0.0 };
    let step = if values.len() > 1 {
        WIDTH / (values.len() - 1) as f64
    } else {
        0.0
    };
    let mut points = String::new();
    for (i, value) in values.iter().enumerate() {
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            i as f64 * step,
            HEIGHT - value * scale
        );
    }
    let last = values.last().copied().unwrap_or(0.0);
    // The newest point is marked, so one sample (right after start) still shows.
    let dot = match values.len() {
        0 => String::new(),
        n => format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#2b7bb9"/>"##,
            (n - 1) as f64 * step,
            HEIGHT - last * scale
        ),
    };
    format!(
        r##"<figure><figcaption>{title}: <b>{last:.1}{unit}</b> <small>(max {max:.1})</small></figcaption><svg viewBox="-4 -4 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{title}"><rect x="-4" y="-4" width="{w}" height="{h}" fill="#f6f8fa"/><polyline fill="none" stroke="#2b7bb9" stroke-width="2" points="{points}"/>{dot}</svg></figure>"##,
        title = escape(title),
        w = WIDTH + 8.0,
        h = HEIGHT + 8.0,
        points = points.trim_end(),
    )
}

/// Per-interval differences of the cumulative history.
fn deltas(history: &[Sample], pick: impl Fn(&Sample) -> u64) -> Vec<f64> {
    history
        .windows(2)
        .map(|pair| pick(&pair[1]).saturating_sub(pick(&pair[0])) as f64)
        .collect()
}

pub fn render(view: &StatusView) -> String {
    let hit_ratio = ratio(view.from_cache, view.requests) * 100.0;
    let saved = view.hits + view.collapsed + view.stale;
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>usage-gateway status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}}
h1{{font-size:1.4em}} .tiles{{display:flex;flex-wrap:wrap;gap:1em}}
.tile{{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:10em}}
.tile b{{display:block;font-size:1.6em}} table{{border-collapse:collapse;margin-top:1em}}
td,th{{border-bottom:1px solid #eee;padding:.3em .8em;text-align:right}} th:first-child,td:first-child{{text-align:left}}
.charts{{display:flex;flex-wrap:wrap;gap:1.5em}} figure{{margin:0}} .bad{{color:#b00}}
</style></head><body>
<h1>usage-gateway {version}{draining}</h1>
<div class="tiles">
<div class="tile">uptime<b>{uptime}</b></div>
<div class="tile">requests<b>{requests}</b></div>
<div class="tile">hit ratio<b>{hit_ratio:.1}%</b></div>
<div class="tile">upstream calls made<b>{upstream_calls}</b></div>
<div class="tile">upstream calls saved<b>{saved}</b><small>{hits} hits, {collapsed} collapsed, {stale} stale</small></div>
<div class="tile">errors<b>{errors}</b></div>
<div class="tile">cache<b>{entries} entries</b><small>{bytes}</small></div>
</div>
"#,
        version = escape(view.version),
        draining = if view.draining {
            r#" <span class="bad">(draining)</span>"#
        } else {
            ""
        },
        uptime = human_duration(view.uptime),
        requests = view.requests,
        upstream_calls = view.upstream_calls,
        hits = view.hits,
        collapsed = view.collapsed,
        stale = view.stale,
        errors = view.errors,
        entries = view.cache_entries,
        bytes = human_bytes(view.cache_bytes),
    );

    html.push_str("<h2>Upstream budget</h2><table><tr><th>profile</th><th>calls left now</th><th>breaker</th></tr>");
    for (name, remaining, open) in &view.profiles {
        let breaker = if *open {
            r#"<span class="bad">open</span>"#
        } else {
            "closed"
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{remaining}</td><td>{breaker}</td></tr>",
            escape(name)
        );
    }
    html.push_str("</table>");
    html.push_str(&shared_section(view.shared.as_ref()));

    html.push_str("<h2>Last 15 minutes</h2><div class=\"charts\">");
    let per_interval = |pick: fn(&Sample) -> u64| deltas(&view.history, pick);
    let requests = per_interval(|s| s.requests);
    let cached = per_interval(|s| s.from_cache);
    let hit_ratios: Vec<f64> = requests
        .iter()
        .zip(&cached)
        .map(|(all, from_cache)| {
            if *all > 0.0 {
                from_cache / all * 100.0
            } else {
                0.0
            }
        })
        .collect();
    let budget: Vec<f64> = view
        .history
        .iter()
        .map(|s| s.budget_remaining as f64)
        .collect();
    html.push_str(&sparkline("requests per 10 s", &requests, ""));
    html.push_str(&sparkline("hit ratio", &hit_ratios, "%"));
    html.push_str(&sparkline(
        "upstream calls per 10 s",
        &per_interval(|s| s.upstream_calls),
        "",
    ));
    html.push_str(&sparkline("budget left", &budget, ""));
    html.push_str(&sparkline(
        "errors per 10 s",
        &per_interval(|s| s.errors),
        "",
    ));
    html.push_str("</div>");

    html.push_str("<h2>Callers</h2><table><tr><th>caller</th><th>requests</th><th>from cache</th><th>hit ratio</th><th>upstream calls</th></tr>");
    for (name, totals) in &view.callers {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td></tr>",
            escape(name),
            totals.requests,
            totals.from_cache,
            ratio(totals.from_cache, totals.requests) * 100.0,
            totals.upstream_calls
        );
    }
    html.push_str("</table><p><small>Refreshes every 10 s. Metrics for machines: <a href=\"/metrics\">/metrics</a>.</small></p></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_the_numbers_it_is_given() {
        let view = StatusView {
            version: "1.2.3",
            uptime: Duration::from_secs(3_700),
            requests: 1000,
            from_cache: 900,
            hits: 850,
            collapsed: 40,
            stale: 10,
            upstream_calls: 100,
            profiles: vec![("default".into(), 512, false), ("partner".into(), 0, true)],
            callers: vec![(
                "billing".into(),
                CallerTotals {
                    requests: 10,
                    from_cache: 5,
                    upstream_calls: 5,
                },
            )],
            history: (0..5)
                .map(|i| Sample {
                    requests: i * 100,
                    from_cache: i * 90,
                    ..Sample::default()
                })
                .collect(),
            ..StatusView::default()
        };
        let html = render(&view);
        for expected in [
            "usage-gateway 1.2.3",
            "1h 1m",
            "<b>1000</b>",
            "90.0%",
            "850 hits, 40 collapsed, 10 stale",
            "<td>partner</td><td>0</td><td><span class=\"bad\">open</span>",
            "<td>billing</td><td>10</td><td>5</td><td>50.0%</td><td>5</td>",
            "<svg",
            "http-equiv=\"refresh\"",
        ] {
            assert!(html.contains(expected), "missing {expected}");
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external assets"
        );
    }

    #[test]
    fn the_page_says_whether_the_shared_redis_answers() {
        let mut view = StatusView::default();
        assert!(render(&view).contains("none: one process"));
        view.shared = Some(SharedView {
            redis: "redis://cache.internal:6379".into(),
            up: false,
            key_prefix: "usage-gateway".into(),
            instance_id: "pod-1:7:0000abcd".into(),
            totals: crate::metrics::SharedTotals {
                hits: 7,
                lookups: 9,
                lock_waits: 3,
                takeovers: 1,
                purges_applied: 4,
                purge_gaps: 2,
            },
        });
        let html = render(&view);
        for expected in [
            "<td>redis://cache.internal:6379</td>",
            "<span class=\"bad\">down</span>",
            "<td>pod-1:7:0000abcd</td>",
            "<td>7 of 9 lookups</td>",
            "<td>3 (1 taken over)</td>",
            "<td>4 (memory dropped after a gap: 2)</td>",
        ] {
            assert!(html.contains(expected), "missing {expected} in {html}");
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn a_sparkline_scales_to_its_maximum() {
        let svg = sparkline("t", &[0.0, 5.0, 10.0], "");
        assert!(
            svg.contains("points=\"0.0,60.0 150.0,30.0 300.0,0.0\""),
            "{svg}"
        );
        let empty = sparkline("t", &[], "");
        assert!(empty.contains("<svg"));
    }
}
