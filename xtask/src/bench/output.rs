//! What a run leaves behind: the table (terminal and Markdown), the summary, the README section
//! and the SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use bench::{differences, ratio, summarize};

use super::{Report, Row, Scenario};

const BEGIN: &str = "<!-- bench:latest:begin (written by cargo xtask bench) -->";
const END: &str = "<!-- bench:latest:end -->";

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

/// The table: per metric a line, per target a cell `median [min-max] +added (ratio to direct,
/// ratio to HAProxy)`; absent cells point to a numbered reason below the table.
pub fn render_markdown(r: &Report) -> String {
    let mut out = String::new();
    out.push_str("| scenario | metric | unit |");
    for t in &r.targets {
        let _ = write!(out, " {t} |");
    }
    out.push_str("\n|---|---|---|");
    for _ in &r.targets {
        out.push_str("---:|");
    }
    out.push('\n');
    let mut reasons: Vec<(String, String)> = Vec::new();
    for (scenario, metric, unit) in metric_keys(r) {
        let direct = median(r, scenario, &metric, "direct");
        let haproxy = median(r, scenario, &metric, "haproxy");
        let _ = write!(out, "| {scenario} | {metric} | {unit} |");
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
                        let _ = write!(c, " {:+.1}", a.median);
                    }
                    let mut rs = Vec::new();
                    if t != "direct" {
                        if let Some(x) = direct.and_then(|d| ratio(s.median, d)) {
                            rs.push(format!("{x:.2}d"));
                        }
                    }
                    if t != "haproxy" {
                        if let Some(x) = haproxy.and_then(|h| ratio(s.median, h)) {
                            rs.push(format!("{x:.2}h"));
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
         and to HAProxy without splice (`h`). Latency cells also show the added latency versus \
         direct in µs (`+x`, median of per-round differences). Higher is better for ops/s, \
         Gbit/s and conn/s; lower for µs, s/GB and KiB. Raw samples: [`{json}`]({prefix}{json}).\n",
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
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + END.len()..])
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
struct Bar {
    metric: usize,
    target: usize,
    value: f64,
    low: f64,
    high: f64,
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
        draw(&dir.join(c.file), c, &metrics, &targets, &bars)?;
        written.push(c.file.to_string());
    }
    Ok(written)
}

fn draw(
    path: &Path,
    c: &Chart,
    metrics: &[String],
    targets: &[&String],
    bars: &[Bar],
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
    // The scale follows the medians; a whisker (min-max over the rounds) may leave the plot.
    let top = bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let bottom = bars.iter().map(|b| b.value).fold(0.0, f64::min);
    let mut ymax = top * 1.15;
    if c.value == Value::RatioToDirect {
        ymax = ymax.max(1.1);
    }
    if ymax <= 0.0 {
        ymax = 1.0;
    }
    let ymin = if bottom < 0.0 { bottom * 1.15 } else { 0.0 };
    let legend_w = 190;
    let width = 150 + legend_w + 170 * u32::try_from(metrics.len()).unwrap_or(1);
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, legend) = root.split_horizontally(width - legend_w);
    let nm = metrics.len() as f64;
    let slots = targets.len() as f64 + 1.0;
    let mut chart = ChartBuilder::on(&plot)
        .caption(c.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..nm, ymin..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(c.y)
        .draw()?;
    let mut entries = Vec::new();
    // A target keeps its colour across charts: direct (always first) is left out of the relative
    // charts, so their indices are shifted by one.
    let shift = usize::from(c.value != Value::Absolute);
    for (ti, t) in targets.iter().enumerate() {
        let color = colors[(ti + shift) % colors.len()];
        let mine: Vec<&Bar> = bars.iter().filter(|b| b.target == ti).collect();
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
        chart.draw_series(mine.iter().map(|b| {
            let x = x0(b) + 0.45 / slots;
            let clip = |y: f64| y.clamp(ymin, ymax);
            PathElement::new([(x, clip(b.low)), (x, clip(b.high))], BLACK.stroke_width(1))
        }))?;
        entries.push((t.to_string(), color));
    }
    if c.value == Value::RatioToDirect {
        chart.draw_series(LineSeries::new([(0.0, 1.0), (nm, 1.0)], BLACK))?;
        entries.push(("direct = 1".to_string(), BLACK));
    }
    let label = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, m) in metrics.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, ymin));
        plot.draw(&Text::new(m.clone(), (x, y + 8), label.clone()))?;
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

    #[test]
    fn table_cells() {
        let mut absent = row(Scenario::Latency, "64B p50", "socat", &[]);
        absent.absent = Some("not installed".into());
        let r = report(with_added_latency(vec![
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
            absent,
        ]));
        let t = render_markdown(&r);
        let line = t.lines().nth(2).unwrap();
        assert_eq!(
            line,
            "| latency | 64B p50 | us | 100.0 [90.0–110.0] (0.80h) | 125.0 [120.0–130.0] +30.0 (1.25d) | absent (1) |"
        );
        assert!(t.contains("(1) socat: not installed"));
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
    }
}
