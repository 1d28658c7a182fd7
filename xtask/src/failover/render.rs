//! The drills' tables (`bench/results/failover.md`) and charts, drawn like the bench charts.
//!
//! Kill -9, per target: the client-visible write outage (the longest gap between two
//! acknowledged writes after the kill), when the Sentinels decided, failed write attempts, and
//! acknowledged writes lost — split between those acknowledged before the kill (Redis'
//! asynchronous replication may lose them whatever the proxy does) and those acknowledged after
//! it, which a proxy that routes only to the Sentinel master never loses.
//!
//! Planned switchover, per target: the write outage after it began, the forwarder's reported
//! pause, failed attempts split between new connections (opened after it began: could not
//! connect, or the first write failed) and established ones, and acknowledged writes lost.

use std::path::Path;
use std::time::Duration;

use bench::summarize;

use super::drill::{Kill, Switch};
use super::{Results, Target};
use crate::bench::charts::{draw, Bar, Panel};

/// The charts next to failover.md.
const KILL_CHART: &str = "failover.svg";
const SWITCH_CHART: &str = "failover-switchover.svg";

/// Writes failover.md and both charts into `dir`; returns the Markdown.
pub(super) fn write(results: &Results, drills: u32, dir: &Path) -> anyhow::Result<String> {
    kill_chart(&results.kill, &dir.join(KILL_CHART))?;
    switch_chart(&results.switchover, &dir.join(SWITCH_CHART))?;
    let md = format!(
        "{}\n![failover drills]({KILL_CHART})\n\n{}\n![planned switchover]({SWITCH_CHART})\n",
        kill_table(&results.kill, drills),
        switch_table(&results.switchover, drills)
    );
    std::fs::write(dir.join("failover.md"), &md)?;
    Ok(md)
}

fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// Every drill of one kind, per target.
type Drills<D> = [(Target, Vec<D>)];
/// One value per drill of each target (`None`: the drill has none).
type Series<D> = fn(&D) -> Option<f64>;
/// One count per drill, summed over the drills.
type Count<D> = fn(&D) -> u64;

/// Per target and series: the median with the min-max over the drills.
fn spread_bars<D>(results: &Drills<D>, series: &[Series<D>]) -> Vec<Bar> {
    let mut out = Vec::new();
    for (target, (_, ds)) in results.iter().enumerate() {
        for (metric, f) in series.iter().enumerate() {
            let v: Vec<f64> = ds.iter().filter_map(f).collect();
            if let Some(s) = summarize(&v) {
                out.push(Bar {
                    metric,
                    target,
                    value: s.median,
                    low: s.min,
                    high: s.max,
                });
            }
        }
    }
    out
}

/// Per target and count: the sum over the drills.
fn sum_bars<D>(results: &Drills<D>, counts: &[Count<D>]) -> Vec<Bar> {
    let mut out = Vec::new();
    for (target, (_, ds)) in results.iter().enumerate() {
        for (metric, f) in counts.iter().enumerate() {
            let value = ds.iter().map(f).sum::<u64>() as f64;
            out.push(Bar {
                metric,
                target,
                value,
                low: value,
                high: value,
            });
        }
    }
    out
}

/// The table cell of a series: `median [min–max]`, or `–` without values.
fn spread_cell<D>(ds: &[D], f: Series<D>) -> String {
    let v: Vec<f64> = ds.iter().filter_map(f).collect();
    summarize(&v).map_or("–".into(), |s| {
        format!("{:.0} [{:.0}–{:.0}]", s.median, s.min, s.max)
    })
}

/// The table cell of a series' median.
fn median_cell<D>(ds: &[D], f: Series<D>) -> String {
    let v: Vec<f64> = ds.iter().filter_map(f).collect();
    summarize(&v).map_or("–".into(), |s| format!("{:.0}", s.median))
}

fn sum<D>(ds: &[D], f: Count<D>) -> u64 {
    ds.iter().map(f).sum()
}

fn panel<'a>(title: &'a str, y: &'a str, metrics: &'a [String], bars: &'a [Bar]) -> Panel<'a> {
    Panel {
        title,
        y,
        metrics,
        bars,
        ratio_line: false,
    }
}

/// Two panels, one legend; the colours of forwarder-userspace and haproxy in the bench charts.
fn chart_file<D>(results: &Drills<D>, panels: &[Panel], path: &Path) -> anyhow::Result<()> {
    let names: Vec<String> = results.iter().map(|(t, _)| t.name().to_string()).collect();
    let targets: Vec<&String> = names.iter().collect();
    draw(path, panels, &targets, 0)
}

const KILL_OUTAGE: [Series<Kill>; 2] = [
    |d| Some(ms(d.outage)),
    |d| Some(ms(d.outage) - ms(d.sentinel)),
];
const KILL_LOST: [Count<Kill>; 2] = [|d| d.lost_before_kill, |d| d.lost_after_kill];

/// The kill chart's bars: per target, the write outage and the outage beyond Sentinel's
/// decision (median, min-max over the drills, ms); and the acknowledged writes lost, before and
/// after the kill (sums over the drills, as in the table).
fn kill_bars(results: &Drills<Kill>) -> (Vec<Bar>, Vec<Bar>) {
    (
        spread_bars(results, &KILL_OUTAGE),
        sum_bars(results, &KILL_LOST),
    )
}

/// failover.svg: the write outage and the lost acknowledged writes per target.
fn kill_chart(results: &Drills<Kill>, path: &Path) -> anyhow::Result<()> {
    let (outage, lost) = kill_bars(results);
    let outage_metrics = ["write outage".to_string(), "beyond Sentinel".to_string()];
    let lost_metrics = [
        "acked before the kill".to_string(),
        "acked after the kill".to_string(),
    ];
    let panels = [
        panel(
            "Write outage after kill -9 of the master",
            "ms, median over the drills (lower is better)",
            &outage_metrics,
            &outage,
        ),
        panel(
            "Acknowledged writes lost, all drills",
            "writes (lower is better)",
            &lost_metrics,
            &lost,
        ),
    ];
    chart_file(results, &panels, path)
}

fn kill_table(results: &Drills<Kill>, drills: u32) -> String {
    let mut out = format!(
        "Failover drills (`cargo xtask bench failover --drills {drills}`): kill -9 of the master \
         under a write loop, old master restarted empty once writes resume; Sentinel \
         down-after-milliseconds 1000.\n\n\
         | target | write outage ms, median [min–max] | Sentinel decided after, ms (median) | \
         outage beyond Sentinel, ms (median) | failed attempts (median) | acked writes | \
         lost, acked before the kill | lost, acked after the kill (split brain) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (t, ds) in results {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.name(),
            spread_cell(ds, KILL_OUTAGE[0]),
            median_cell(ds, |d| Some(ms(d.sentinel))),
            median_cell(ds, KILL_OUTAGE[1]),
            median_cell(ds, |d| Some(d.failed as f64)),
            sum(ds, |d| d.acked),
            sum(ds, KILL_LOST[0]),
            sum(ds, KILL_LOST[1]),
        ));
    }
    out
}

const SWITCH_OUTAGE: [Series<Switch>; 2] = [|d| Some(ms(d.outage)), |d| d.paused.map(ms)];
const SWITCH_ERRORS: [Count<Switch>; 3] =
    [|d| d.new_conn_errors, |d| d.established_errors, |d| d.lost];

/// The switchover chart's bars: per target, the write outage and the forwarder's reported
/// pause (median, min-max over the drills, ms); and the errors on new and on established
/// connections and the acknowledged writes lost (sums over the drills, as in the table).
fn switch_bars(results: &Drills<Switch>) -> (Vec<Bar>, Vec<Bar>) {
    (
        spread_bars(results, &SWITCH_OUTAGE),
        sum_bars(results, &SWITCH_ERRORS),
    )
}

/// failover-switchover.svg: the write outage, the errors and the lost acknowledged writes per
/// target in a planned switchover.
fn switch_chart(results: &Drills<Switch>, path: &Path) -> anyhow::Result<()> {
    let (outage, errors) = switch_bars(results);
    let outage_metrics = [
        "write outage".to_string(),
        "new clients held (reported)".to_string(),
    ];
    let error_metrics = [
        "errors, new connections".to_string(),
        "errors, established".to_string(),
        "acked writes lost".to_string(),
    ];
    let panels = [
        panel(
            "Write outage in a planned switchover",
            "ms, median over the drills (lower is better)",
            &outage_metrics,
            &outage,
        ),
        panel(
            "Errors and lost writes, all drills",
            "attempts / writes (lower is better)",
            &error_metrics,
            &errors,
        ),
    ];
    chart_file(results, &panels, path)
}

fn switch_table(results: &Drills<Switch>, drills: u32) -> String {
    let mut out = format!(
        "Planned switchover (`cargo xtask bench failover --drills {drills}`): the forwarder's \
         `POST /services/mymaster/switchover`; for HAProxy the manual procedure, `SENTINEL \
         FAILOVER mymaster` to one Sentinel (its checks follow); the same write loop, the old \
         master stays up and is demoted by Sentinel. Counted from the moment the switchover \
         began; a new connection is one opened after that.\n\n\
         | target | write outage ms, median [min–max] | new clients held ms (forwarder's \
         answer), median [min–max] | Sentinel decided after, ms (median) | old master \
         demoted after, ms (median) | failed attempts (median) | errors on new \
         connections (all drills) | errors on established connections (all drills) | acked \
         writes | acked writes lost |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for (t, ds) in results {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.name(),
            spread_cell(ds, SWITCH_OUTAGE[0]),
            spread_cell(ds, SWITCH_OUTAGE[1]),
            median_cell(ds, |d| Some(ms(d.named))),
            median_cell(ds, |d| Some(ms(d.demoted))),
            median_cell(ds, |d| Some(d.failed as f64)),
            sum(ds, SWITCH_ERRORS[0]),
            sum(ds, SWITCH_ERRORS[1]),
            sum(ds, |d| d.acked),
            sum(ds, SWITCH_ERRORS[2]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(outage_ms: u64, sentinel_ms: u64, lost_before: u64, lost_after: u64) -> Kill {
        Kill {
            sentinel: Duration::from_millis(sentinel_ms),
            outage: Duration::from_millis(outage_ms),
            failed: 2,
            acked: 1000,
            lost_before_kill: lost_before,
            lost_after_kill: lost_after,
        }
    }

    fn kills() -> Vec<(Target, Vec<Kill>)> {
        vec![
            (
                Target::Forwarder,
                vec![
                    kill(2246, 2245, 0, 0),
                    kill(2285, 2240, 1, 0),
                    kill(2242, 2238, 0, 0),
                ],
            ),
            (
                Target::Haproxy,
                vec![kill(4084, 2238, 0, 1000), kill(4041, 2230, 0, 2458)],
            ),
        ]
    }

    fn value(b: &[Bar], m: usize, t: usize) -> Option<(f64, f64, f64)> {
        b.iter()
            .find(|x| x.metric == m && x.target == t)
            .map(|x| (x.value, x.low, x.high))
    }

    /// Draws `chart` into a temporary file; the SVG text.
    fn svg<D>(results: &Drills<D>, chart: fn(&Drills<D>, &Path) -> anyhow::Result<()>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        chart(results, &path).unwrap();
        std::fs::read_to_string(&path).unwrap()
    }

    /// The x of the text element `label`.
    fn label_x(svg: &str, label: &str) -> f64 {
        let at = svg.find(&format!("{label}\n</text>")).unwrap();
        let tag = &svg[svg[..at].rfind("<text x=\"").unwrap() + 9..];
        tag[..tag.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn chart_has_the_table_numbers() {
        let (outage, lost) = kill_bars(&kills());
        assert_eq!(value(&outage, 0, 0), Some((2246.0, 2242.0, 2285.0)));
        // Beyond Sentinel: 1, 45, 4 ms.
        assert_eq!(value(&outage, 1, 0), Some((4.0, 1.0, 45.0)));
        // Two drills: the median is their mean.
        assert_eq!(value(&outage, 0, 1), Some((4062.5, 4041.0, 4084.0)));
        assert_eq!(value(&lost, 0, 0), Some((1.0, 1.0, 1.0)));
        assert_eq!(value(&lost, 1, 1), Some((3458.0, 3458.0, 3458.0)));
        let table = kill_table(&kills(), 3);
        assert!(table
            .contains("| forwarder (Sentinel) | 2246 [2242–2285] | 2240 | 4 | 2 | 3000 | 1 | 0 |"));
        assert!(table.contains(
            "| HAProxy (guide config) | 4062 [4041–4084] | 2234 | 1828 | 2 | 2000 | 0 | 3458 |"
        ));
        let svg = svg(&kills(), kill_chart);
        assert!(svg.contains("<svg") && svg.contains("HAProxy (guide config)"));
        assert!(svg.contains("Acknowledged writes lost"));
        // Each metric's label sits under its own bars: the second panel's are not piled up at
        // its edge.
        let (before, after) = (
            label_x(&svg, "acked before the kill"),
            label_x(&svg, "acked after the kill"),
        );
        assert!(label_x(&svg, "beyond Sentinel") < before && before + 100.0 < after);
    }

    fn switch(
        outage_ms: u64,
        paused_ms: Option<u64>,
        new: u64,
        established: u64,
        lost: u64,
    ) -> Switch {
        Switch {
            outage: Duration::from_millis(outage_ms),
            named: Duration::from_millis(1200),
            demoted: Duration::from_millis(9500),
            failed: new + established,
            new_conn_errors: new,
            established_errors: established,
            paused: paused_ms.map(Duration::from_millis),
            acked: 1500,
            lost,
        }
    }

    fn switches() -> Vec<(Target, Vec<Switch>)> {
        vec![
            (
                Target::Forwarder,
                vec![
                    switch(1850, Some(1834), 0, 1, 0),
                    switch(1790, Some(1776), 0, 1, 0),
                    switch(2010, Some(1990), 0, 1, 0),
                ],
            ),
            (
                Target::Haproxy,
                vec![
                    switch(4100, None, 30, 1, 12),
                    switch(3900, None, 28, 2, 0),
                    switch(4300, None, 33, 1, 7),
                ],
            ),
        ]
    }

    #[test]
    fn switchover_chart_has_the_table_numbers() {
        let (outage, errors) = switch_bars(&switches());
        assert_eq!(value(&outage, 0, 0), Some((1850.0, 1790.0, 2010.0)));
        assert_eq!(value(&outage, 1, 0), Some((1834.0, 1776.0, 1990.0)));
        assert_eq!(value(&outage, 0, 1), Some((4100.0, 3900.0, 4300.0)));
        assert_eq!(value(&outage, 1, 1), None, "HAProxy reports no pause");
        assert_eq!(value(&errors, 0, 0), Some((0.0, 0.0, 0.0)));
        assert_eq!(value(&errors, 1, 0), Some((3.0, 3.0, 3.0)));
        assert_eq!(value(&errors, 0, 1), Some((91.0, 91.0, 91.0)));
        assert_eq!(value(&errors, 2, 1), Some((19.0, 19.0, 19.0)));
        let table = switch_table(&switches(), 3);
        assert!(table.contains("Planned switchover"));
        assert!(table.contains(
            "| forwarder (Sentinel) | 1850 [1790–2010] | 1834 [1776–1990] | 1200 | 9500 | 1 | 0 | 3 | 4500 | 0 |"
        ));
        assert!(table.contains(
            "| HAProxy (guide config) | 4100 [3900–4300] | – | 1200 | 9500 | 31 | 91 | 4 | 4500 | 19 |"
        ));
        let svg = svg(&switches(), switch_chart);
        assert!(svg.contains("<svg") && svg.contains("HAProxy (guide config)"));
        assert!(svg.contains("Write outage in a planned switchover"));
        assert!(svg.contains("Errors and lost writes, all drills"));
        let xs: Vec<f64> = [
            "new clients held (reported)",
            "errors, new connections",
            "errors, established",
            "acked writes lost",
        ]
        .iter()
        .map(|l| label_x(&svg, l))
        .collect();
        assert!(xs.windows(2).all(|w| w[0] + 100.0 < w[1]), "{xs:?}");
    }
}
