//! The SVG charts of a run (one per scenario, ratio to direct or absolute values, min-max
//! whiskers), and `draw`, which the failover drills use too.

use std::path::Path;

use bench::ratio;

use super::output::{find, median, metric_keys};
use super::{Report, Scenario};

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
