//! What a run leaves behind: the table (terminal and Markdown), the summary, the README section
//! and the SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

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

fn find<'a>(r: &'a Report, scenario: Scenario, metric: &str, target: &str) -> Option<&'a Row> {
    r.rows
        .iter()
        .find(|x| x.scenario == scenario && x.metric == metric && x.target == target)
}

fn median(r: &Report, scenario: Scenario, metric: &str, target: &str) -> Option<f64> {
    find(r, scenario, metric, target)
        .and_then(|x| x.summary)
        .map(|s| s.median)
}

/// (scenario, metric, unit) in the order first measured.
fn metric_keys(r: &Report) -> Vec<(Scenario, String, String)> {
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

#[derive(Clone, Copy, PartialEq)]
enum Value {
    /// The target's median over direct's; direct is the line at 1.
    RatioToDirect,
    /// The median of the per-round added latency versus direct.
    AddedVsDirect,
    /// The median itself (direct usually has none: no proxy process).
    Absolute,
}

struct Chart {
    file: &'static str,
    title: &'static str,
    scenario: Scenario,
    unit: &'static str,
    /// Only the metrics whose name ends so ("" for all).
    suffix: &'static str,
    value: Value,
    y: &'static str,
}

const CHARTS: [Chart; 9] = [
    Chart {
        file: "redis.svg",
        title: "redis-benchmark -c 50: throughput, ratio to direct",
        scenario: Scenario::Redis,
        unit: "ops/s",
        suffix: "",
        value: Value::RatioToDirect,
        y: "ratio to direct (higher is better)",
    },
    Chart {
        file: "redis-cpu.svg",
        title: "Proxy CPU (user+sys) per Redis request (SET and GET runs)",
        scenario: Scenario::Redis,
        unit: "us/op",
        suffix: "",
        value: Value::Absolute,
        y: "CPU µs per request (lower is better)",
    },
    Chart {
        file: "bulk.svg",
        title: "iperf3 bulk throughput, ratio to direct",
        scenario: Scenario::Bulk,
        unit: "Gbit/s",
        suffix: "",
        value: Value::RatioToDirect,
        y: "ratio to direct (higher is better)",
    },
    Chart {
        file: "cpu.svg",
        title: "Proxy CPU (user+sys) per GB forwarded",
        scenario: Scenario::Bulk,
        unit: "s/GB",
        suffix: "",
        value: Value::Absolute,
        y: "CPU seconds per GB (lower is better)",
    },
    Chart {
        file: "latency-p50.svg",
        title: "Ping-pong: p50 latency added versus direct",
        scenario: Scenario::Latency,
        unit: "us",
        suffix: " p50",
        value: Value::AddedVsDirect,
        y: "added p50 latency, µs (lower is better)",
    },
    Chart {
        file: "latency-p99.svg",
        title: "Ping-pong: p99 latency added versus direct",
        scenario: Scenario::Latency,
        unit: "us",
        suffix: " p99",
        value: Value::AddedVsDirect,
        y: "added p99 latency, µs (lower is better)",
    },
    Chart {
        file: "latency-p999.svg",
        title: "Ping-pong: p99.9 latency added versus direct",
        scenario: Scenario::Latency,
        unit: "us",
        suffix: " p999",
        value: Value::AddedVsDirect,
        y: "added p99.9 latency, µs (lower is better)",
    },
    Chart {
        file: "connrate.svg",
        title: "Connection rate (connect, 1 round trip, close), ratio to direct",
        scenario: Scenario::Connrate,
        unit: "conn/s",
        suffix: "",
        value: Value::RatioToDirect,
        y: "ratio to direct (higher is better)",
    },
    Chart {
        file: "memory.svg",
        title: "Proxy RSS per idle connection",
        scenario: Scenario::Memory,
        unit: "KiB",
        suffix: "",
        value: Value::Absolute,
        y: "KiB per connection (lower is better)",
    },
];

/// A bar: metric index, target index, value and its spread over the rounds.
pub struct Bar {
    pub metric: usize,
    pub target: usize,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// One plot of a chart file: its metrics along the x axis, a bar per target and metric.
pub struct Panel<'a> {
    pub title: &'a str,
    /// The y axis' description.
    pub y: &'a str,
    pub metrics: &'a [String],
    pub bars: &'a [Bar],
    /// Draw the line at 1 (direct) of a ratio chart.
    pub ratio_line: bool,
}

fn bars(r: &Report, c: &Chart, metrics: &[String], targets: &[&String]) -> Vec<Bar> {
    let mut out = Vec::new();
    for (mi, m) in metrics.iter().enumerate() {
        let direct = median(r, c.scenario, m, "direct");
        for (ti, t) in targets.iter().enumerate() {
            let Some(row) = find(r, c.scenario, m, t) else {
                continue;
            };
            let bar = match (c.value, row.summary, row.added_vs_direct, direct) {
                (Value::RatioToDirect, Some(s), _, Some(d)) => {
                    match (ratio(s.median, d), ratio(s.min, d), ratio(s.max, d)) {
                        (Some(value), Some(low), Some(high)) => Some((value, low, high)),
                        _ => None,
                    }
                }
                (Value::AddedVsDirect, _, Some(a), _) => Some((a.median, a.min, a.max)),
                (Value::Absolute, Some(s), _, _) => Some((s.median, s.min, s.max)),
                _ => None,
            };
            if let Some((value, low, high)) = bar {
                out.push(Bar {
                    metric: mi,
                    target: ti,
                    value,
                    low,
                    high,
                });
            }
        }
    }
    out
}

/// One SVG per chart that has data; returns their file names.
pub fn write_charts(r: &Report, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    for c in &CHARTS {
        let metrics: Vec<String> = metric_keys(r)
            .into_iter()
            .filter(|(s, m, u)| *s == c.scenario && u == c.unit && m.ends_with(c.suffix))
            .map(|(_, m, _)| m)
            .collect();
        let targets: Vec<&String> = r
            .targets
            .iter()
            .filter(|t| c.value == Value::Absolute || *t != "direct")
            .collect();
        let bars = bars(r, c, &metrics, &targets);
        if bars.is_empty() {
            continue;
        }
        let panel = Panel {
            title: c.title,
            y: c.y,
            metrics: &metrics,
            bars: &bars,
            ratio_line: c.value == Value::RatioToDirect,
        };
        // A target keeps its colour across charts: direct (always first) is left out of the
        // relative charts, so their indices are shifted by one.
        let shift = usize::from(c.value != Value::Absolute);
        draw(&dir.join(c.file), &[panel], &targets, shift)?;
        written.push(c.file.to_string());
    }
    Ok(written)
}

/// Draws `panels` side by side into one SVG, with one legend: target `i` has colour
/// `i + shift` of the palette.
pub fn draw(
    path: &Path,
    panels: &[Panel],
    targets: &[&String],
    shift: usize,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
    ];
    let legend_w = 190;
    let widths: Vec<u32> = panels
        .iter()
        .map(|p| 150 + 170 * u32::try_from(p.metrics.len()).unwrap_or(1))
        .collect();
    let width = legend_w + widths.iter().sum::<u32>();
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (mut rest, legend) = root.split_horizontally(width - legend_w);
    let mut entries: Vec<(String, RGBColor)> = Vec::new();
    let mut ratio_line = false;
    for (p, w) in panels.iter().zip(&widths) {
        let (plot, right) = rest.split_horizontally(*w);
        rest = right;
        // The scale follows the medians; a whisker (min-max over the rounds) may leave the plot.
        let top = p.bars.iter().map(|b| b.value).fold(0.0, f64::max);
        let bottom = p.bars.iter().map(|b| b.value).fold(0.0, f64::min);
        let mut ymax = top * 1.15;
        if p.ratio_line {
            ymax = ymax.max(1.1);
        }
        if ymax <= 0.0 {
            ymax = 1.0;
        }
        let ymin = if bottom < 0.0 { bottom * 1.15 } else { 0.0 };
        let nm = p.metrics.len() as f64;
        let slots = targets.len() as f64 + 1.0;
        let mut chart = ChartBuilder::on(&plot)
            .caption(p.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..nm, ymin..ymax)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(p.y)
            .draw()?;
        for (ti, t) in targets.iter().enumerate() {
            let color = colors[(ti + shift) % colors.len()];
            let mine: Vec<&Bar> = p.bars.iter().filter(|b| b.target == ti).collect();
            if mine.is_empty() {
                continue;
            }
            let x0 = |b: &Bar| b.metric as f64 + (ti as f64 + 0.5) / slots;
            chart.draw_series(mine.iter().map(|b| {
                Rectangle::new(
                    [(x0(b), 0.0), (x0(b) + 0.9 / slots, b.value)],
                    color.filled(),
                )
            }))?;
            chart.draw_series(mine.iter().filter(|b| b.low < b.high).map(|b| {
                let x = x0(b) + 0.45 / slots;
                let clip = |y: f64| y.clamp(ymin, ymax);
                PathElement::new([(x, clip(b.low)), (x, clip(b.high))], BLACK.stroke_width(1))
            }))?;
            if !entries.iter().any(|(n, _)| n == *t) {
                entries.push((t.to_string(), color));
            }
        }
        if p.ratio_line {
            chart.draw_series(LineSeries::new([(0.0, 1.0), (nm, 1.0)], BLACK))?;
            ratio_line = true;
        }
        let label = ("sans-serif", 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        // backend_coord is in the whole picture's pixels, not the panel's: draw on the root.
        for (i, m) in p.metrics.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, ymin));
            root.draw(&Text::new(m.clone(), (x, y + 8), label.clone()))?;
        }
    }
    if ratio_line {
        entries.push(("direct = 1".to_string(), BLACK));
    }
    let text = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, (name, color)) in entries.iter().enumerate() {
        let y = 50 + 22 * i32::try_from(i).unwrap_or(0);
        legend.draw(&Rectangle::new([(8, y), (22, y + 12)], color.filled()))?;
        legend.draw(&Text::new(name.clone(), (30, y), text.clone()))?;
    }
    legend.draw(&Text::new(
        "bars: median; lines: min-max",
        (8, 60 + 22 * i32::try_from(entries.len()).unwrap_or(0)),
        ("sans-serif", 11).into_font().color(&BLACK),
    ))?;
    root.present()?;
    Ok(())
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
