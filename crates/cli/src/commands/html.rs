//! `ferry status --html FILE` (and `ferry demo`): the status as one self-contained page, no
//! server and no external assets. Per table: freshness (stale tables marked and sorted first),
//! a 24-hour chart of freshness and rows per hour, files, failures, warnings and the reconcile
//! state; then the dead-letter queue and the latest failures. Columns sort when clicked.

use std::fmt::Write as _;
use std::time::Duration;

use ferry_local::{SqliteWarehouse, Status, TableStatus};

use super::local::{human_seconds, iso};

const HOUR: i64 = 3_600_000_000;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// One table's last 24 hours, hour by hour (oldest first).
#[derive(Debug, Default, Clone)]
struct Hours {
    rows: Vec<u64>,
    files: Vec<u64>,
    failures: Vec<u64>,
    /// Freshness at each hour's end, seconds (`None`: nothing loaded yet).
    lag: Vec<Option<f64>>,
}

/// Where the page's hourly history comes from.
pub(crate) enum History<'a> {
    /// Local mode's warehouse: its event and load ledgers.
    Local(&'a SqliteWarehouse),
    /// Production: `ferry_status.table_status_hourly`.
    Production(&'a [ferry_bigquery::status::HourRow]),
}

fn hours(history: &History<'_>, t: &TableStatus, now: i64) -> Hours {
    let start = now - 24 * HOUR;
    let mut h = Hours {
        rows: vec![0; 24],
        files: vec![0; 24],
        failures: vec![0; 24],
        lag: vec![None; 24],
    };
    let bucket = |at: i64| {
        usize::try_from((at - start) / HOUR)
            .ok()
            .filter(|b| *b < 24)
    };
    let warehouse = match history {
        History::Local(w) => *w,
        History::Production(rows) => {
            let mine: Vec<_> = rows
                .iter()
                .filter(|r| r.source == t.source && r.table == t.table)
                .collect();
            for r in &mine {
                // An hour that began before the window still ends inside it.
                if let Some(b) = bucket(r.hour_micros.max(start)) {
                    h.rows[b] += r.rows;
                    h.files[b] += r.loads;
                    h.failures[b] += r.failed_loads;
                }
            }
            let commits: Vec<(i64, i64)> = mine
                .iter()
                .filter_map(|r| r.newest_commit_micros)
                .map(|c| (c, c))
                .collect();
            fill_lag(&mut h, &commits, start, now);
            return h;
        }
    };
    let _ = warehouse.with_conn(|c| {
        if let Ok(mut stmt) = c.prepare(
            "SELECT at, kind, rows FROM _ferry_events WHERE source = ?1 AND table_name = ?2 AND at >= ?3",
        ) && let Ok(rows) = stmt.query_map(rusqlite::params![t.source, t.table, start], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        }) {
            for (at, kind, n) in rows.flatten() {
                if let Some(b) = bucket(at) {
                    if kind == "loaded" {
                        h.files[b] += 1;
                        h.rows[b] += u64::try_from(n).unwrap_or(0);
                    } else if kind.starts_with("failed_") {
                        h.failures[b] += 1;
                    }
                }
            }
        }
        if let Ok(mut stmt) = c.prepare(
            "SELECT loaded_at, commit_ts_max FROM _ferry_loads WHERE source = ?1 AND table_name = ?2 AND commit_ts_max IS NOT NULL ORDER BY loaded_at",
        ) && let Ok(rows) = stmt.query_map(rusqlite::params![t.source, t.table], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        }) {
            let loads: Vec<(i64, i64)> = rows.flatten().collect();
            fill_lag(&mut h, &loads, start, now);
        }
        Ok(())
    });
    h
}

/// Freshness at each hour's end: the end minus the newest commit known by then. `seen` holds
/// (when it was known, the commit time): the load time locally, the commit itself in production.
fn fill_lag(h: &mut Hours, seen: &[(i64, i64)], start: i64, now: i64) {
    for (i, lag) in h.lag.iter_mut().enumerate() {
        let end = (start + (i as i64 + 1) * HOUR).min(now);
        let newest = seen
            .iter()
            .filter(|(at, _)| *at <= end)
            .map(|(_, c)| *c)
            .max();
        #[allow(clippy::cast_precision_loss)]
        {
            *lag = newest.map(|n| ((end - n).max(0)) as f64 / 1e6);
        }
    }
}

/// An inline SVG: rows per hour as bars, freshness as a line (red above `stale_after`).
fn chart(h: &Hours, stale_after: f64) -> String {
    let (w, ht) = (240.0_f64, 40.0_f64);
    let step = w / 24.0;
    #[allow(clippy::cast_precision_loss)]
    let max_rows = h.rows.iter().copied().max().unwrap_or(0).max(1) as f64;
    let max_lag = h
        .lag
        .iter()
        .flatten()
        .copied()
        .fold(stale_after, f64::max)
        .max(1.0);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {ht}\" width=\"{w}\" height=\"{ht}\" role=\"img\"><title>last 24 h: rows per hour (bars), freshness (line)</title>"
    );
    for (i, r) in h.rows.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let bh = (*r as f64 / max_rows) * (ht - 4.0);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" class=\"bar{}\"/>",
            i as f64 * step + 0.5,
            ht - bh,
            step - 1.0,
            if h.failures[i] > 0 { " failed" } else { "" }
        );
    }
    let points: Vec<String> = h
        .lag
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            l.map(|l| {
                format!(
                    "{:.1},{:.1}",
                    (i as f64 + 0.5) * step,
                    ht - 2.0 - (l.min(max_lag) / max_lag) * (ht - 4.0)
                )
            })
        })
        .collect();
    if !points.is_empty() {
        let _ = write!(
            svg,
            "<polyline class=\"lag\" points=\"{}\"/>",
            points.join(" ")
        );
    }
    let y = ht - 2.0 - (stale_after / max_lag) * (ht - 4.0);
    let _ = write!(
        svg,
        "<line class=\"limit\" x1=\"0\" x2=\"{w}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/></svg>"
    );
    svg
}

/// Whether a table counts as stale.
fn is_stale(t: &TableStatus, stale_after: f64) -> bool {
    t.state == "mapped" && t.lag_seconds.is_none_or(|l| l > stale_after)
}

/// The page. `history` gives the 24-hour charts (and, in local mode, the dead letters and the
/// failures); `dlq_oldest` (production) names the dead-letter queue's oldest message.
pub(crate) fn page(
    status: &Status,
    history: &History<'_>,
    dlq_oldest: Option<(i64, String)>,
    now: i64,
    stale_after: Duration,
) -> String {
    let limit = stale_after.as_secs_f64();
    let mut tables: Vec<&TableStatus> = status.tables.iter().collect();
    // Stale first, then the stalest.
    tables.sort_by(|a, b| {
        is_stale(b, limit)
            .cmp(&is_stale(a, limit))
            .then_with(|| {
                b.lag_seconds
                    .unwrap_or(f64::INFINITY)
                    .total_cmp(&a.lag_seconds.unwrap_or(f64::INFINITY))
            })
            .then_with(|| a.table.cmp(&b.table))
    });
    let stale_count = tables.iter().filter(|t| is_stale(t, limit)).count();
    let mut rows = String::new();
    for t in &tables {
        let stale = is_stale(t, limit);
        let h = hours(history, t, now);
        let lag = t
            .lag_seconds
            .map_or_else(|| "nothing loaded".to_owned(), human_seconds);
        let verified = match (t.reconcile.as_deref(), t.verified_through_micros) {
            (Some("differ"), _) => "<span class=\"bad\">differs</span>".to_owned(),
            (_, Some(v)) => esc(&iso(v)),
            _ => "-".into(),
        };
        let _ = write!(
            rows,
            "<tr class=\"{cls}\" data-table=\"{name}\"><td>{source}</td><td>{name}</td><td>{state}</td>\
             <td data-sort=\"{lagsort}\">{badge}{lag}</td><td>{last}</td><td>{chart}</td>\
             <td data-sort=\"{files}\">{files}</td><td data-sort=\"{rows24}\">{rows24}</td>\
             <td data-sort=\"{fail}\" class=\"{failcls}\">{fail}</td><td data-sort=\"{warn}\">{warn}</td><td>{verified}</td></tr>",
            cls = if stale { "stale" } else { "fresh" },
            source = esc(&t.source),
            name = esc(&t.table),
            state = esc(&t.state),
            lagsort = t.lag_seconds.unwrap_or(f64::MAX),
            badge = if stale {
                "<span class=\"badge\">STALE</span> "
            } else {
                ""
            },
            last = t
                .last_commit_micros
                .map_or_else(|| "-".to_owned(), |m| esc(&iso(m))),
            chart = chart(&h, limit),
            files = t.files_24h,
            rows24 = t.rows_24h,
            fail = t.failures_24h,
            failcls = if t.failures_24h > 0 { "bad" } else { "" },
            warn = t.warnings_24h,
        );
    }
    let mut dlq = String::new();
    let mut failures = String::new();
    if let Some((at, reason)) = &dlq_oldest {
        let _ = write!(
            dlq,
            "<tr><td>{}</td><td>oldest of {}</td><td>{}</td></tr>",
            esc(&iso(*at)),
            status.dead_letters,
            esc(reason)
        );
    }
    let warehouse = match history {
        History::Local(w) => Some(*w),
        History::Production(_) => None,
    };
    let _ = warehouse.map(|w| w.with_conn(|c| {
        if let Ok(mut s) = c.prepare("SELECT at, reason, repeats FROM _ferry_dlq ORDER BY at DESC LIMIT 50")
            && let Ok(r) = s.query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })
        {
            for (at, reason, repeats) in r.flatten() {
                let _ = write!(
                    dlq,
                    "<tr><td>{}</td><td>{repeats}</td><td>{}</td></tr>",
                    esc(&iso(at)),
                    esc(&reason)
                );
            }
        }
        if let Ok(mut s) = c.prepare(
            "SELECT at, table_name, key, message FROM _ferry_events WHERE kind LIKE 'failed_%' AND at >= ?1 ORDER BY at DESC LIMIT 50",
        ) && let Ok(r) = s.query_map([now - 24 * HOUR], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        }) {
            for (at, table, key, message) in r.flatten() {
                let _ = write!(
                    failures,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&iso(at)),
                    esc(table.as_deref().unwrap_or("-")),
                    esc(&key),
                    esc(message.as_deref().unwrap_or_default())
                );
            }
        }
        Ok(())
    }));
    let empty = |s: &str, cols: usize, what: &str| {
        if s.is_empty() {
            format!("<tr><td colspan=\"{cols}\">{what}</td></tr>")
        } else {
            s.to_owned()
        }
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ferry status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1b1f24; }}
h1 {{ font-size: 1.3rem; margin: 0 0 .2rem; }} h2 {{ font-size: 1.05rem; margin-top: 1.6rem; }}
.summary span {{ margin-right: 1.2rem; }} .summary .bad, .bad {{ color: #b42318; font-weight: 600; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ padding: .3rem .5rem; border-bottom: 1px solid #e4e7ec; text-align: left; vertical-align: middle; }}
th {{ cursor: pointer; user-select: none; background: #f2f4f7; position: sticky; top: 0; }}
tr.stale {{ background: #fef3f2; }} .badge {{ background: #b42318; color: #fff; border-radius: 3px; padding: 0 .3rem; font-size: .75rem; }}
.chart .bar {{ fill: #84adff; }} .chart .bar.failed {{ fill: #f97066; }} .chart .lag {{ fill: none; stroke: #1b1f24; stroke-width: 1.5; }}
.chart .limit {{ stroke: #b42318; stroke-dasharray: 3 2; stroke-width: 1; }}
</style></head><body>
<h1>ferry status</h1>
<p class="summary"><span>generated {generated} UTC</span><span>{n} tables</span><span class="{stale_cls}" id="stale-count">{stale_count} stale (no change loaded for {limit_text})</span><span class="{dlq_cls}">dead-letter queue: {dlq_n}</span></p>
<table id="tables"><thead><tr><th>source</th><th>table</th><th>state</th><th>freshness</th><th>last commit (UTC)</th><th>last 24 h</th><th>files 24 h</th><th>rows 24 h</th><th>failures</th><th>warnings</th><th>verified through</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Dead-letter queue</h2>
<table><thead><tr><th>at (UTC)</th><th>deliveries</th><th>reason</th></tr></thead><tbody>{dlq}</tbody></table>
<h2>Failures, last 24 hours</h2>
<table><thead><tr><th>at (UTC)</th><th>table</th><th>object</th><th>reason</th></tr></thead><tbody>{failures}</tbody></table>
<script>
document.querySelectorAll('#tables th').forEach(function (th, i) {{
  th.addEventListener('click', function () {{
    var body = th.closest('table').tBodies[0];
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    var key = function (tr) {{ var td = tr.children[i]; var v = td.dataset.sort; return v === undefined ? td.textContent : parseFloat(v); }};
    Array.from(body.rows).sort(function (a, b) {{ var x = key(a), y = key(b); return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); }})
      .forEach(function (tr) {{ body.appendChild(tr); }});
  }});
}});
</script>
</body></html>
"#,
        generated = esc(&iso(now)),
        n = tables.len(),
        stale_cls = if stale_count > 0 { "bad" } else { "" },
        limit_text = human_seconds(limit),
        dlq_cls = if status.dead_letters > 0 { "bad" } else { "" },
        dlq_n = status.dead_letters,
        dlq = empty(&dlq, 3, "empty"),
        failures = empty(&failures, 4, "none"),
    )
}
