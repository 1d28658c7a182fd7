//! What a run leaves behind: the table (terminal and Markdown), the summary, the verdict and
//! the README sections (the SVG charts are `charts.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bench::{advantage, best_by_median, differences, ratio, summarize, within_noise, Summary};

use super::{Report, Row, Scenario};

const BEGIN: &str = "<!-- bench:latest:begin (written by cargo xtask bench) -->";
const END: &str = "<!-- bench:latest:end -->";
const VERDICT_BEGIN: &str = "<!-- bench:verdict:begin (written by cargo xtask bench) -->";
const VERDICT_END: &str = "<!-- bench:verdict:end -->";

/// Fills `added_vs_direct` of every latency row: the target's percentile minus direct's, round by
/// round (both were measured in the same round, one after the other).
pub fn with_added_latency(mut rows: Vec<Row>) -> Vec<Row> {
    let direct: BTreeMap<String, Vec<f64>> = rows
        .iter()
        .filter(|r| r.scenario == Scenario::Latency && r.target == "direct")
        .map(|r| (r.metric.clone(), r.samples.clone()))
        .collect();
    for r in rows
        .iter_mut()
        .filter(|r| r.scenario == Scenario::Latency && r.target != "direct")
    {
        r.added_vs_direct = direct
            .get(&r.metric)
            .and_then(|d| differences(&r.samples, d))
            .and_then(|v| summarize(&v));
    }
    rows
}

fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

pub(super) fn find<'a>(
    r: &'a Report,
    scenario: Scenario,
    metric: &str,
    target: &str,
) -> Option<&'a Row> {
    r.rows
        .iter()
        .find(|x| x.scenario == scenario && x.metric == metric && x.target == target)
}

pub(super) fn median(r: &Report, scenario: Scenario, metric: &str, target: &str) -> Option<f64> {
    find(r, scenario, metric, target)
        .and_then(|x| x.summary)
        .map(|s| s.median)
}

/// (scenario, metric, unit) in the order first measured.
pub(super) fn metric_keys(r: &Report) -> Vec<(Scenario, String, String)> {
    let mut keys = Vec::new();
    for row in &r.rows {
        let k = (row.scenario, row.metric.clone(), row.unit.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// The comparison proxies a forwarder cell is measured against: the best of them per row.
pub const PEERS: [&str; 3] = ["haproxy", "haproxy-splice", "nginx"];

/// The best of `names` for one row by median (highest or lowest, as the row says).
fn best_of<'a>(
    r: &Report,
    scenario: Scenario,
    metric: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<(&'a str, Summary, bool)> {
    let mut higher = true;
    let candidates: Vec<(&str, Summary)> = names
        .into_iter()
        .filter_map(|t| {
            let row = find(r, scenario, metric, t)?;
            higher = row.higher_is_better;
            Some((t, row.summary?))
        })
        .collect();
    best_by_median(&candidates, higher).map(|(t, s)| (t, s, higher))
}

/// The best peer of a row: its name and summary, and whether higher is better.
fn best_peer(
    r: &Report,
    scenario: Scenario,
    metric: &str,
) -> Option<(&'static str, Summary, bool)> {
    best_of(r, scenario, metric, PEERS)
}

fn is_forwarder(target: &str) -> bool {
    target.starts_with("forwarder-")
}

/// The added latency of a cell: `+x` µs, or `~-x` when the target was faster than direct, which
/// a proxy in the path cannot be: noise.
fn fmt_added(added: f64) -> String {
    if added < 0.0 {
        format!("~{added:.1}")
    } else {
        format!("{added:+.1}")
    }
}

/// The table: per metric a line with its best peer, per target a cell `median [min-max] +added
/// (ratio to direct, ratio to the best peer)`; `~` marks a forwarder's ratio to the best peer that
/// is within noise and a negative added latency; absent cells point to a numbered reason below
/// the table.
pub fn render_markdown(r: &Report) -> String {
    let mut out = String::new();
    out.push_str("| scenario | metric | unit | best peer |");
    for t in &r.targets {
        let _ = write!(out, " {t} |");
    }
    out.push_str("\n|---|---|---|---|");
    for _ in &r.targets {
        out.push_str("---:|");
    }
    out.push('\n');
    let mut reasons: Vec<(String, String)> = Vec::new();
    for (scenario, metric, unit) in metric_keys(r) {
        let direct = median(r, scenario, &metric, "direct");
        let peer = best_peer(r, scenario, &metric);
        let _ = write!(
            out,
            "| {scenario} | {metric} | {unit} | {} |",
            peer.map_or("–", |p| p.0)
        );
        for t in &r.targets {
            let cell = match find(r, scenario, &metric, t) {
                Some(Row {
                    summary: Some(s),
                    added_vs_direct,
                    ..
                }) => {
                    let mut c = format!(
                        "{} [{}–{}]",
                        fmt_num(s.median),
                        fmt_num(s.min),
                        fmt_num(s.max)
                    );
                    if let Some(a) = added_vs_direct {
                        let _ = write!(c, " {}", fmt_added(a.median));
                    }
                    let mut rs = Vec::new();
                    if t != "direct" {
                        if let Some(x) = direct.and_then(|d| ratio(s.median, d)) {
                            rs.push(format!("{x:.2}d"));
                        }
                    }
                    if let Some((_, p, _)) = peer.filter(|p| p.0 != t) {
                        if let Some(x) = ratio(s.median, p.median) {
                            let noise = is_forwarder(t) && within_noise(s, &p);
                            rs.push(format!("{}{x:.2}p", if noise { "~" } else { "" }));
                        }
                    }
                    if !rs.is_empty() {
                        let _ = write!(c, " ({})", rs.join(" "));
                    }
                    c
                }
                Some(Row {
                    absent: Some(why), ..
                }) => {
                    let key = (t.clone(), why.clone());
                    let n = match reasons.iter().position(|x| *x == key) {
                        Some(i) => i + 1,
                        None => {
                            reasons.push(key);
                            reasons.len()
                        }
                    };
                    format!("absent ({n})")
                }
                _ => "–".to_string(),
            };
            let _ = write!(out, " {} |", cell.replace('|', "/"));
        }
        out.push('\n');
    }
    if !reasons.is_empty() {
        out.push('\n');
        for (i, (t, why)) in reasons.iter().enumerate() {
            let _ = writeln!(out, "({}) {t}: {}  ", i + 1, why.replace('|', "/"));
        }
    }
    out
}

/// The verdict of a run, one line per row of the table: which target wins, and how the best
/// forwarder mode compares with the best peer (`Nx`: N times better, i.e. the forwarder's median
/// over the peer's, inverted for lower-is-better rows), `~` when within noise.
pub fn verdict(r: &Report) -> String {
    let mut lines = String::new();
    let (mut rows, mut wins, mut losses, mut noisy) = (0, 0, 0, 0);
    for (scenario, metric, _) in metric_keys(r) {
        let targets = r.targets.iter().map(String::as_str);
        let Some((winner, _, _)) =
            best_of(r, scenario, &metric, targets.filter(|t| *t != "direct"))
        else {
            continue;
        };
        let forwarders = r
            .targets
            .iter()
            .map(String::as_str)
            .filter(|t| is_forwarder(t));
        let (Some((peer, p, higher)), Some((fwd, f, _))) = (
            best_peer(r, scenario, &metric),
            best_of(r, scenario, &metric, forwarders),
        ) else {
            continue;
        };
        let Some(x) = advantage(&f, &p, higher) else {
            continue;
        };
        let noise = within_noise(&f, &p);
        rows += 1;
        if noise {
            noisy += 1;
        } else if x > 1.0 {
            wins += 1;
        } else {
            losses += 1;
        }
        let _ = writeln!(
            lines,
            "| {scenario} {metric} | {winner} | {fwd} {}{x:.2}x {peer} |",
            if noise { "~" } else { "" }
        );
    }
    if rows == 0 {
        return String::new();
    }
    format!(
        "Verdict of the run of {} (`cargo xtask bench{}`, {} rounds): the best forwarder mode \
         beats the best peer (HAProxy, HAProxy with splice, nginx) in {wins} of {rows} rows and \
         loses in {losses}; {noisy} are within noise. `Nx`: how many times better than the best peer (the \
         forwarder's median over the peer's, inverted where lower is better); `~`: within noise \
         (the medians differ by less than the wider min–max range).\n\n\
         | row | winner | best forwarder vs best peer |\n|---|---|---|\n{lines}",
        r.started_utc,
        if r.quick { " --quick" } else { "" },
        r.rounds,
    )
}

/// The Markdown summary of a run; chart links are prefixed with `prefix` (the summary lives next
/// to the charts, the README one level up).
pub fn summary_markdown(
    r: &Report,
    table: &str,
    charts: &[String],
    json: &str,
    prefix: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Run of {} (`cargo xtask bench{}`, {:.0} s): {} rounds, targets interleaved within each \
         round; each cell is the median [min–max] over the rounds, then the ratio to direct (`d`) \
         and to the row's best peer (`p`; the best of HAProxy, HAProxy with splice and nginx, \
         named in the `best peer` column). `~` before a forwarder's `p`: within noise (the \
         medians differ by less than the wider of the two min–max ranges). Latency cells also \
         show the added latency versus direct in µs (`+x`, median of per-round differences; \
         `~-x`, faster than direct, is noise). Higher is better for ops/s, Gbit/s and conn/s; \
         lower for µs, us/op, s/GB and KiB. Raw samples: [`{json}`]({prefix}{json}).\n",
        r.started_utc,
        if r.quick { " --quick" } else { "" },
        r.duration_s,
        r.rounds,
    );
    for (k, v) in &r.machine {
        let _ = writeln!(out, "- {k}: {v}");
    }
    out.push('\n');
    out.push_str(table);
    out.push('\n');
    for c in charts {
        let name = c.trim_end_matches(".svg");
        let _ = writeln!(out, "![{name}]({prefix}{c})");
    }
    out
}

/// The latest-run section of bench/README.md.
pub fn readme_section(summary: &str) -> String {
    format!("{BEGIN}\n{summary}{END}")
}

/// `text` with its latest-run section replaced by `section` (appended when there is none).
pub fn replace_section(text: &str, section: &str) -> String {
    replace_between(text, BEGIN, END, section)
}

/// `text` with its verdict section (near the top of bench/README.md) replaced by `verdict`
/// (appended when there is none).
pub fn replace_verdict(text: &str, verdict: &str) -> String {
    let section = format!("{VERDICT_BEGIN}\n{verdict}{VERDICT_END}");
    replace_between(text, VERDICT_BEGIN, VERDICT_END, &section)
}

/// `text` with everything from `begin` to `end` (both included) replaced by `section`, or
/// `section` appended when the markers are not there in this order.
fn replace_between(text: &str, begin: &str, end: &str, section: &str) -> String {
    match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + end.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: Scenario, metric: &str, target: &str, samples: &[f64]) -> Row {
        Row {
            scenario,
            metric: metric.into(),
            unit: "us".into(),
            higher_is_better: false,
            target: target.into(),
            samples: samples.to_vec(),
            summary: summarize(samples),
            added_vs_direct: None,
            absent: None,
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            started_unix: 0,
            started_utc: "1970-01-01T00-00-00Z".into(),
            duration_s: 1.0,
            quick: true,
            rounds: 3,
            modes: vec!["userspace".into()],
            machine: BTreeMap::new(),
            targets: vec!["direct".into(), "haproxy".into(), "socat".into()],
            rows,
        }
    }

    #[test]
    fn added_latency_is_per_round() {
        let rows = with_added_latency(vec![
            row(
                Scenario::Latency,
                "64B p50",
                "direct",
                &[100.0, 110.0, 90.0],
            ),
            row(
                Scenario::Latency,
                "64B p50",
                "haproxy",
                &[130.0, 125.0, 120.0],
            ),
            row(Scenario::Latency, "64B p50", "socat", &[130.0]),
        ]);
        assert_eq!(rows[0].added_vs_direct, None);
        // Differences 30, 15, 30: median 30, not 125 - 100.
        let a = rows[1].added_vs_direct.unwrap();
        assert_eq!((a.median, a.min, a.max), (30.0, 15.0, 30.0));
        // Round counts differ: no pairing.
        assert_eq!(rows[2].added_vs_direct, None);
    }

    fn higher(scenario: Scenario, metric: &str, target: &str, samples: &[f64]) -> Row {
        Row {
            unit: "ops/s".into(),
            higher_is_better: true,
            ..row(scenario, metric, target, samples)
        }
    }

    /// A latency row (lower is better, with a negative added latency), a throughput row (higher
    /// is better) and a row the best peer wins within noise.
    fn sample_report() -> Report {
        let mut absent = row(Scenario::Latency, "64B p50", "socat", &[]);
        absent.absent = Some("not installed".into());
        let l = |t, v: &[f64]| row(Scenario::Latency, "64B p50", t, v);
        let h = |t, v: &[f64]| higher(Scenario::Redis, "SET P1", t, v);
        let c = |t, v: &[f64]| higher(Scenario::Connrate, "conn", t, v);
        let mut r = report(with_added_latency(vec![
            l("direct", &[100.0, 110.0, 90.0]),
            l("forwarder-userspace", &[95.0, 100.0, 85.0]),
            l("forwarder-uring", &[128.0, 121.0, 122.0]),
            l("haproxy", &[130.0, 125.0, 120.0]),
            l("nginx", &[140.0, 135.0, 150.0]),
            absent,
            h("direct", &[200.0, 201.0, 199.0]),
            h("forwarder-uring", &[110.0, 112.0, 111.0]),
            h("haproxy", &[100.0, 101.0, 99.0]),
            h("nginx", &[105.0, 104.0, 106.0]),
            c("forwarder-uring", &[90.0, 100.0, 80.0]),
            c("haproxy", &[95.0, 96.0, 94.0]),
        ]));
        r.targets = [
            "direct",
            "forwarder-userspace",
            "forwarder-uring",
            "haproxy",
            "nginx",
            "socat",
        ]
        .map(String::from)
        .to_vec();
        r
    }

    #[test]
    fn table_cells() {
        let t = render_markdown(&sample_report());
        let mut lines = t.lines().skip(2);
        // Lower is better: haproxy is the best peer. userspace was faster than direct (noise);
        // uring is within noise of haproxy (3 apart, haproxy's range is 10 wide).
        assert_eq!(
            lines.next().unwrap(),
            "| latency | 64B p50 | us | haproxy | 100.0 [90.0–110.0] (0.80p) | \
             95.0 [85.0–100.0] ~-5.0 (0.95d 0.76p) | 122.0 [121.0–128.0] +28.0 (1.22d ~0.98p) | \
             125.0 [120.0–130.0] +30.0 (1.25d) | 140.0 [135.0–150.0] +40.0 (1.40d 1.12p) | \
             absent (1) |"
        );
        // Higher is better: nginx is the best peer; a missing row is a dash.
        assert_eq!(
            lines.next().unwrap(),
            "| redis | SET P1 | ops/s | nginx | 200.0 [199.0–201.0] (1.90p) | – | \
             111.0 [110.0–112.0] (0.56d 1.06p) | 100.0 [99.0–101.0] (0.50d 0.95p) | \
             105.0 [104.0–106.0] (0.53d) | – |"
        );
        assert!(t.contains("(1) socat: not installed"));
    }

    #[test]
    fn verdict_lines() {
        let v = verdict(&sample_report());
        assert!(
            v.contains(
                "beats the best peer (HAProxy, HAProxy with splice, nginx) in 2 of 3 rows \
                 and loses in 0; 1 are within noise."
            ),
            "{v}"
        );
        let table: Vec<&str> = v.lines().skip_while(|l| !l.starts_with("| row")).collect();
        assert_eq!(
            table,
            [
                "| row | winner | best forwarder vs best peer |",
                "|---|---|---|",
                // 125 / 95: lower is better, so the ratio is inverted.
                "| latency 64B p50 | forwarder-userspace | forwarder-userspace 1.32x haproxy |",
                "| redis SET P1 | forwarder-uring | forwarder-uring 1.06x nginx |",
                "| connrate conn | haproxy | forwarder-uring ~0.95x haproxy |",
            ]
        );
        // No peer measured: no verdict.
        assert_eq!(verdict(&report(Vec::new())), "");
    }

    #[test]
    fn readme_section_is_replaced() {
        let text = format!("# Bench\n\nintro\n\n{BEGIN}\nold\n{END}\n\nafter\n");
        let new = replace_section(&text, &readme_section("new\n"));
        assert_eq!(
            new,
            format!("# Bench\n\nintro\n\n{BEGIN}\nnew\n{END}\n\nafter\n")
        );
        let appended = replace_section("# Bench\n", &readme_section("x\n"));
        assert_eq!(appended, format!("# Bench\n{BEGIN}\nx\n{END}\n"));
        // The verdict has its own section, and leaves the latest one alone.
        let text = format!("# Bench\n{VERDICT_BEGIN}\nold\n{VERDICT_END}\n\n{BEGIN}\nold\n{END}\n");
        assert_eq!(
            replace_verdict(&text, "v\n"),
            format!("# Bench\n{VERDICT_BEGIN}\nv\n{VERDICT_END}\n\n{BEGIN}\nold\n{END}\n")
        );
    }
}
