//! `cargo xtask bench`: every target measured side by side in one run, interleaved round by
//! round (A B C A B C ...), reported as medians with min/max and ratios to a direct connection and
//! to the best peer of each row (HAProxy, HAProxy with splice, nginx), with a verdict. A full run
//! writes `bench/results/<time>.json`, `bench/results/latest.md`, SVG charts and the verdict and
//! latest-run sections of `bench/README.md`; `--quick` writes the same under
//! `bench/results/quick/` (not committed).

pub(crate) mod charts;
mod machine;
/// Also draws the failover drills' chart.
pub(crate) mod output;
mod scenarios;
mod targets;
mod tls;
mod tools;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use bench::Summary;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::prereq::{
    self, HAPROXY, IPERF3, NGINX, NGINX_STREAM, REDIS, REDIS_BENCHMARK, REDIS_CLI, SOCAT,
};
use scenarios::Scenario;
use targets::{start_targets, target_kinds, Bins};

/// Set by Ctrl-C: every loop stops at its next measurement and the guards reap the children.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Args)]
pub struct BenchArgs {
    /// `failover`: the kill -9 and planned switchover drills (forwarder with Sentinel vs
    /// HAProxy); `tls`: Redis over TLS, terminated and passed through (forwarder vs HAProxy and
    /// socat); instead of the throughput scenarios.
    suite: Option<Suite>,
    /// Drills per target for `failover`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    drills: u32,
    /// A smoke run (about 6 minutes): shorter measurements, written under bench/results/quick/.
    #[arg(long)]
    quick: bool,
    /// Only this scenario.
    #[arg(long)]
    only: Option<Scenario>,
    /// Forwarder data path modes to measure (a mode the binary rejects is reported absent).
    #[arg(long, value_delimiter = ',', default_value = "userspace,uring,sockmap")]
    modes: Vec<String>,
    /// Rounds per scenario (at least 3).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..=50))]
    rounds: u32,
}

/// A suite other than the throughput scenarios.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    Failover,
    Tls,
}

struct Settings {
    quick: bool,
    rounds: u32,
}

/// One measured (or absent) cell: a metric of a target over the rounds.
#[derive(Serialize, Clone)]
pub struct Row {
    scenario: Scenario,
    metric: String,
    unit: String,
    higher_is_better: bool,
    target: String,
    /// One sample per round, in round order.
    samples: Vec<f64>,
    summary: Option<Summary>,
    /// Latency rows: this target's value minus direct's, round by round.
    #[serde(skip_serializing_if = "Option::is_none")]
    added_vs_direct: Option<Summary>,
    absent: Option<String>,
}

#[derive(Serialize)]
pub struct Report {
    started_unix: u64,
    started_utc: String,
    duration_s: f64,
    quick: bool,
    rounds: u32,
    modes: Vec<String>,
    machine: BTreeMap<String, String>,
    targets: Vec<String>,
    rows: Vec<Row>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.suite {
        Some(Suite::Failover) => return crate::failover::run(args.drills),
        Some(Suite::Tls) => return tls::run(args.rounds),
        None => {}
    }
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    prereq::ensure(&[REDIS, REDIS_CLI, REDIS_BENCHMARK])?;
    // The comparison targets: installed when we can; otherwise their rows say why they are absent.
    let mut missing = BTreeMap::new();
    for t in [HAPROXY, IPERF3, NGINX, SOCAT] {
        let program = t.program;
        if let Err(e) = prereq::ensure(&[t]) {
            missing.insert(program, first_line(&format!("{e:#}")));
        }
    }
    // An nginx installed without its stream module: the module alone.
    if !missing.contains_key(NGINX.program) && targets::nginx_stream_module().is_none() {
        if let Err(e) = prereq::ensure(&[NGINX_STREAM]) {
            missing.insert(NGINX.program, first_line(&format!("{e:#}")));
        }
    }
    let settings = Settings {
        quick: args.quick,
        rounds: args.rounds,
    };
    prereq::run(crate::cargo().args(["build", "--release", "-p", "bench"]))?;
    // Without the BPF object the sockmap rows are absent, with the forwarder's reason.
    if let Err(e) = crate::ebpf::prerequisites() {
        eprintln!("bench: the BPF object cannot be built ({e:#}); sockmap rows will be absent");
    }
    // The forwarder is being written alongside: a build failure makes its rows absent, not the run.
    let forwarder = crate::root().join("target/release/forwarder");
    let built = crate::cargo()
        .args(["build", "--release", "-p", "forwarder"])
        .status();
    let bins = Bins {
        forwarder: match built {
            Ok(s) if s.success() && forwarder.exists() => Ok(forwarder),
            Ok(s) if s.success() => Err("binary not built".to_string()),
            Ok(s) => Err(format!("cargo build --release -p forwarder: {s}")),
            Err(e) => Err(format!("cargo build: {e}")),
        },
        loadgen: crate::root().join("target/release/loadgen"),
    };

    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let started = Instant::now();
    let machine = machine::machine_info();
    let mut rows = Vec::new();
    let mut names = Vec::new();
    for &scenario in Scenario::value_variants() {
        if args.only.is_some_and(|o| o != scenario) {
            continue;
        }
        eprintln!(
            "bench: scenario {scenario} (at {:.0} s)",
            started.elapsed().as_secs_f64()
        );
        let backend = scenario.backend();
        match backend.start(&bins, &missing) {
            Ok((backend_guard, backend_addr)) => {
                let start = || start_targets(backend_addr, backend, &args.modes, &bins, &missing);
                let res = scenarios::measure(scenario, start, &settings, &bins, &mut names);
                drop(backend_guard);
                rows.extend(res?);
            }
            Err(e) => {
                // No backend, no measurement: every row of the scenario says why.
                let why = first_line(&format!("backend: {e:#}"));
                eprintln!("bench: {scenario} absent: {why}");
                for m in scenario.metrics() {
                    for (name, _) in target_kinds(&args.modes) {
                        rows.push(Row {
                            scenario,
                            metric: m.name.clone(),
                            unit: m.unit.to_string(),
                            higher_is_better: m.higher_is_better,
                            target: name,
                            samples: Vec::new(),
                            summary: None,
                            added_vs_direct: None,
                            absent: Some(why.clone()),
                        });
                    }
                }
            }
        }
    }
    if names.is_empty() {
        names = target_kinds(&args.modes)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    }

    let report = Report {
        started_unix,
        started_utc: bench::utc_stamp(started_unix),
        duration_s: started.elapsed().as_secs_f64(),
        quick: settings.quick,
        rounds: settings.rounds,
        modes: args.modes.clone(),
        machine,
        targets: names,
        rows: output::with_added_latency(rows),
    };
    let table = output::render_markdown(&report);
    println!("\n{table}");
    let mut dir = crate::root().join("bench/results");
    if report.quick {
        dir = dir.join("quick");
    }
    std::fs::create_dir_all(&dir)?;
    let json = dir.join(format!(
        "{}{}.json",
        report.started_utc,
        if report.quick { "-quick" } else { "" }
    ));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let charts = charts::write_charts(&report, &dir)?;
    let verdict = output::verdict(&report);
    if !verdict.is_empty() {
        println!("\n{verdict}");
    }
    let md = output::summary_markdown(&report, &table, &charts, json_name(&json), "");
    std::fs::write(dir.join("latest.md"), format!("{verdict}\n{md}"))?;
    if !report.quick && args.only.is_none() {
        let readme = crate::root().join("bench/README.md");
        let text = std::fs::read_to_string(&readme).unwrap_or_default();
        let section = output::readme_section(&output::summary_markdown(
            &report,
            &table,
            &charts,
            json_name(&json),
            "results/",
        ));
        let text = output::replace_verdict(&text, &verdict);
        std::fs::write(&readme, output::replace_section(&text, &section))?;
    }
    eprintln!(
        "bench: {:.0} s; wrote {}, {} and {} chart(s)",
        report.duration_s,
        json.display(),
        dir.join("latest.md").display(),
        charts.len()
    );
    Ok(())
}

fn json_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
