//! The scenarios: what each one measures through a target (the metrics of its rows), and the
//! rounds that run it through every target in turn.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bench::{cpu_seconds_per_gb, cpu_us_per_op, summarize, Latency};
use clap::ValueEnum;
use serde::Serialize;

use super::targets::{Backend, Bins, Kind, Target};
use super::tools::{connrate, cpu_seconds, idle_memory, iperf3, pingpong, redis_benchmark};
use super::{check_stop, Row, Settings};

/// Connections per proxy in the memory scenario: a proxy holds two descriptors per connection and
/// the hard limit here is 20,000, so 10,000 cannot be reached.
const IDLE_CONNS_FULL: usize = 8000;
const IDLE_CONNS_QUICK: usize = 2000;

/// Runs one measurement through `t` and returns its result with the CPU seconds the proxy's
/// process tree spent meanwhile, or why there are none: the run failed, `/proc` could not be
/// read, or there is no proxy process (direct).
fn with_proxy_cpu<T>(
    t: &Target,
    run: impl FnOnce() -> Result<T, String>,
) -> (Result<T, String>, Result<f64, String>) {
    let before = t.pid().map(cpu_seconds).transpose();
    let res = run();
    // socat reaps its per-connection children (counted in cutime) a moment later.
    if matches!(t.kind, Kind::Socat) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = t.pid().map(cpu_seconds).transpose();
    let cpu = match (&res, before, after) {
        (Err(e), _, _) => Err(e.clone()),
        (_, Err(e), _) | (_, _, Err(e)) => Err(format!("{e:#}")),
        (Ok(_), Ok(None), _) | (Ok(_), _, Ok(None)) => Err("no proxy process (direct)".to_string()),
        (Ok(_), Ok(Some(a)), Ok(Some(b))) => Ok(b - a),
    };
    (res, cpu)
}

/// A scenario, in the order a run measures them; `--only` names one.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Redis,
    Bulk,
    Latency,
    Connrate,
    Memory,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metric's identity.
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

fn metric(name: impl Into<String>, unit: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        name: name.into(),
        unit,
        higher_is_better,
    }
}

/// The proxy's CPU per request of one redis-benchmark invocation (its SET and GET tests).
fn redis_cpu_metric(variant: &str) -> Metric {
    metric(format!("proxy CPU, {variant} -c 50"), "us/op", false)
}

const REDIS_VARIANTS: [(&str, &[&str], u64); 3] = [
    ("P1", &[], 100_000),
    ("P16", &["-P", "16"], 600_000),
    ("P1 16KiB", &["-d", "16384"], 40_000),
];

/// (name, payload bytes, round trips per second or flat out).
const LATENCY_VARIANTS: [(&str, usize, Option<u32>); 4] = [
    ("64B flat out", 64, None),
    ("4KiB flat out", 4096, None),
    ("64B at 1000/s", 64, Some(1000)),
    ("4KiB at 1000/s", 4096, Some(1000)),
];

/// Where a percentile is in loadgen's report.
type Percentile = fn(&Latency) -> f64;

/// A latency row's percentile: its name and its value.
const PERCENTILES: [(&str, Percentile); 3] = [
    ("p50", |l| l.p50_us),
    ("p99", |l| l.p99_us),
    ("p999", |l| l.p999_us),
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Redis => "redis",
            Scenario::Bulk => "bulk",
            Scenario::Latency => "latency",
            Scenario::Connrate => "connrate",
            Scenario::Memory => "memory",
        }
    }

    /// The server behind every target: Redis, an iperf3 server or the loadgen echo server.
    pub fn backend(self) -> Backend {
        match self {
            Scenario::Redis => Backend::Redis,
            Scenario::Bulk => Backend::Iperf,
            Scenario::Latency | Scenario::Connrate | Scenario::Memory => Backend::Echo,
        }
    }

    /// The metrics a scenario produces (used to mark an absent target's rows).
    pub fn metrics(self) -> Vec<Metric> {
        match self {
            Scenario::Redis => REDIS_VARIANTS
                .iter()
                .flat_map(|(v, _, _)| {
                    ["SET", "GET"].map(|op| metric(format!("{op} {v} -c 50"), "ops/s", true))
                })
                .chain(REDIS_VARIANTS.iter().map(|(v, _, _)| redis_cpu_metric(v)))
                .collect(),
            Scenario::Bulk => vec![
                metric("1 stream", "Gbit/s", true),
                metric("8 streams", "Gbit/s", true),
                metric("proxy CPU, 1 stream", "s/GB", false),
                metric("proxy CPU, 8 streams", "s/GB", false),
            ],
            Scenario::Latency => LATENCY_VARIANTS
                .iter()
                .flat_map(|(v, _, _)| {
                    PERCENTILES.map(|(p, _)| metric(format!("{v} {p}"), "us", false))
                })
                .collect(),
            Scenario::Connrate => vec![metric("connect+1 RTT+close", "conn/s", true)],
            Scenario::Memory => vec![metric("RSS per idle connection", "KiB", false)],
        }
    }

    /// One round of the scenario through one target: a value, or why there is none, per metric.
    /// A reason is the error with its causes on one line, as the row prints it; one tool run
    /// gives several metrics, each keeping a copy.
    fn measure_one(
        self,
        t: &Target,
        s: &Settings,
        bins: &Bins,
    ) -> Vec<(Metric, Result<f64, String>)> {
        let err = |e: anyhow::Error| format!("{e:#}");
        match self {
            Scenario::Redis => {
                let scale = if s.quick { 10 } else { 1 };
                let mut out = Vec::new();
                let mut cpu = Vec::new();
                for (name, extra, n) in REDIS_VARIANTS {
                    let n = n / scale;
                    let (res, cpu_s) =
                        with_proxy_cpu(t, || redis_benchmark(t.addr, extra, n).map_err(err));
                    // One invocation runs SET then GET, n requests each: the CPU is over both.
                    let c = cpu_s.and_then(|c| {
                        cpu_us_per_op(c, 2 * n).ok_or_else(|| "no requests".to_string())
                    });
                    cpu.push((redis_cpu_metric(name), c));
                    for op in ["SET", "GET"] {
                        let v = match &res {
                            Ok(rows) => rows
                                .iter()
                                .find(|(k, _)| k == op)
                                .map(|(_, x)| *x)
                                .ok_or_else(|| format!("no {op} row")),
                            Err(e) => Err(e.clone()),
                        };
                        out.push((metric(format!("{op} {name} -c 50"), "ops/s", true), v));
                    }
                }
                out.extend(cpu);
                out
            }
            Scenario::Bulk => {
                let secs = if s.quick { 1 } else { 3 };
                let mut out = Vec::new();
                let mut cpu = Vec::new();
                for streams in [1, 8] {
                    let (r, cpu_s) =
                        with_proxy_cpu(t, || iperf3(t.addr, streams, secs).map_err(err));
                    let name = if streams == 1 {
                        "1 stream"
                    } else {
                        "8 streams"
                    };
                    out.push((
                        metric(name, "Gbit/s", true),
                        r.as_ref()
                            .map(|r| r.bits_per_second / 1e9)
                            .map_err(Clone::clone),
                    ));
                    let c = match (&r, cpu_s) {
                        (Ok(r), Ok(c)) => {
                            cpu_seconds_per_gb(c, r.bytes).ok_or_else(|| "no bytes".to_string())
                        }
                        (_, Err(e)) => Err(e),
                        (Err(e), _) => Err(e.clone()),
                    };
                    cpu.push((metric(format!("proxy CPU, {name}"), "s/GB", false), c));
                }
                out.extend(cpu);
                out
            }
            Scenario::Latency => {
                let count: u64 = if s.quick { 3_000 } else { 30_000 };
                let mut out = Vec::new();
                for (name, size, rate) in LATENCY_VARIANTS {
                    // At a fixed rate: 0.5 s (quick) or 5 s (full) of requests.
                    let n = rate.map_or(count, |r| {
                        if s.quick {
                            u64::from(r) / 2
                        } else {
                            u64::from(r) * 5
                        }
                    });
                    let res = pingpong(&bins.loadgen, t.addr, size, n, rate).map_err(err);
                    for (p, pick) in PERCENTILES {
                        out.push((
                            metric(format!("{name} {p}"), "us", false),
                            res.as_ref().map(pick).map_err(Clone::clone),
                        ));
                    }
                }
                out
            }
            Scenario::Connrate => {
                let secs = if s.quick { 1 } else { 3 };
                vec![(
                    metric("connect+1 RTT+close", "conn/s", true),
                    connrate(&bins.loadgen, t.addr, secs).map_err(err),
                )]
            }
            Scenario::Memory => {
                let m = metric("RSS per idle connection", "KiB", false);
                let n = if s.quick {
                    IDLE_CONNS_QUICK
                } else {
                    IDLE_CONNS_FULL
                };
                let v = match (&t.kind, t.pid()) {
                    (Kind::Socat, _) => Err("socat forks a process per connection".to_string()),
                    (_, None) => Err("no proxy process (direct)".to_string()),
                    (_, Some(pid)) => idle_memory(t.addr, pid, n).map_err(err),
                };
                vec![(m, v)]
            }
        }
    }
}

/// Samples (or why there are none) per target index.
type PerTarget = BTreeMap<usize, Result<Vec<f64>, String>>;

/// Runs every round of a scenario, target after target, and collects the rows. The memory
/// scenario starts fresh proxies every round: a process keeps the memory of closed connections,
/// so a second measurement in the same process would see no growth.
pub fn measure(
    scenario: Scenario,
    start: impl Fn() -> Vec<Target>,
    s: &Settings,
    bins: &Bins,
    names: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let fresh = scenario == Scenario::Memory;
    let mut cells: Vec<(Metric, PerTarget)> = Vec::new();
    let mut record = |m: Metric, t: usize, v: Result<f64, String>| {
        let pos = match cells.iter().position(|(x, _)| x.name == m.name) {
            Some(p) => p,
            None => {
                cells.push((m, BTreeMap::new()));
                cells.len() - 1
            }
        };
        let e = cells[pos].1.entry(t).or_insert_with(|| Ok(Vec::new()));
        match (e, v) {
            (Ok(samples), Ok(x)) => samples.push(x),
            (e @ Ok(_), Err(why)) => *e = Err(why),
            (Err(_), _) => {}
        }
    };
    let mut targets = start();
    let target_names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    if names.is_empty() {
        names.clone_from(&target_names);
    }
    for round in 0..s.rounds {
        eprintln!("bench: {scenario} round {}/{}", round + 1, s.rounds);
        if fresh && round > 0 {
            drop(targets);
            targets = start();
        }
        for (i, t) in targets.iter().enumerate() {
            check_stop()?;
            if let Some(why) = &t.absent {
                for m in scenario.metrics() {
                    record(m, i, Err(why.clone()));
                }
                continue;
            }
            for (m, v) in scenario.measure_one(t, s, bins) {
                match &v {
                    Err(e) if !matches!(t.kind, Kind::Direct) => {
                        eprintln!("bench: {} {}: {e}", t.name, m.name);
                    }
                    _ => {}
                }
                record(m, i, v);
            }
        }
    }
    drop(targets);
    let mut rows = Vec::new();
    for (m, per_target) in cells {
        for (i, name) in target_names.iter().enumerate() {
            let (samples, absent) = match per_target.get(&i) {
                Some(Ok(v)) => (v.clone(), None),
                Some(Err(why)) => (Vec::new(), Some(why.clone())),
                None => (Vec::new(), Some("not measured".to_string())),
            };
            rows.push(Row {
                scenario,
                metric: m.name.clone(),
                unit: m.unit.to_string(),
                higher_is_better: m.higher_is_better,
                target: name.clone(),
                summary: summarize(&samples),
                samples,
                added_vs_direct: None,
                absent,
            });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_command_line_and_the_json() {
        for s in Scenario::value_variants() {
            let cli = s.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(cli.as_deref(), Some(s.name()));
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
    }
}
