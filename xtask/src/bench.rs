//! `cargo xtask bench`: every target measured side by side in one run, interleaved round by
//! round (A B C A B C ...), reported as medians with min/max and ratios to a direct connection and
//! to HAProxy. A full run writes `bench/results/<time>.json`, `bench/results/latest.md`, SVG charts
//! and the latest-run section of `bench/README.md`; `--quick` writes the same under
//! `bench/results/quick/` (not committed).

mod output;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bench::{
    cpu_seconds_per_gb, parse_iperf3_json, parse_proc_stat_ticks, parse_redis_benchmark_csv,
    parse_vmrss_kib, per_connection_kib, summarize, Latency, Summary,
};
use clap::Args;
use e2e::{free_port, http_get, wait_until, Conn, Proc, Redis, Reply};
use serde::Serialize;

use crate::prereq::{self, HAPROXY, IPERF3, REDIS, REDIS_BENCHMARK, REDIS_CLI, SOCAT};

const SCENARIOS: [&str; 5] = ["redis", "bulk", "latency", "connrate", "memory"];

/// Connections per proxy in the memory scenario: a proxy holds two descriptors per connection and
/// the hard limit here is 20,000, so 10,000 cannot be reached.
const IDLE_CONNS_FULL: usize = 8000;
const IDLE_CONNS_QUICK: usize = 2000;

/// Set by Ctrl-C: every loop stops at its next measurement and the guards reap the children.
static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Args)]
pub struct BenchArgs {
    /// `failover`: the kill -9 drills (forwarder with Sentinel vs HAProxy) instead of the
    /// throughput scenarios.
    #[arg(value_parser = ["failover"])]
    suite: Option<String>,
    /// Drills per target for `failover`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    drills: u32,
    /// A smoke run (under 3 minutes): shorter measurements, written under bench/results/quick/.
    #[arg(long)]
    quick: bool,
    /// Only this scenario.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    only: Option<String>,
    /// Forwarder data path modes to measure (a mode the binary rejects is reported absent).
    #[arg(long, value_delimiter = ',', default_value = "userspace,uring,sockmap")]
    modes: Vec<String>,
    /// Rounds per scenario (at least 3).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(3..=50))]
    rounds: u32,
}

struct Settings {
    quick: bool,
    rounds: u32,
}

/// One measured (or absent) cell: a metric of a target over the rounds.
#[derive(Serialize, Clone)]
pub struct Row {
    scenario: String,
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

/// What the backend is, which decides the health check of each proxy and the readiness probe.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Redis,
    Iperf,
    Echo,
}

#[derive(Clone)]
enum Kind {
    Direct,
    Forwarder(String),
    Haproxy { splice: bool },
    Socat,
}

struct Target {
    name: String,
    kind: Kind,
    addr: SocketAddr,
    proc: Option<Proc>,
    absent: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // socat runs in its own process group: its per-connection children go with it.
        if let (Kind::Socat, Some(pid)) = (&self.kind, self.pid()) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on the process group of our own child.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}

struct Bins {
    /// The forwarder binary, or why there is none.
    forwarder: Result<PathBuf, String>,
    loadgen: PathBuf,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.suite.as_deref() == Some("failover") {
        return crate::failover::run(args.drills);
    }
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    prereq::ensure(&[REDIS, REDIS_CLI, REDIS_BENCHMARK])?;
    // The comparison targets: installed when we can; otherwise their rows say why they are absent.
    let mut missing = BTreeMap::new();
    for t in [HAPROXY, IPERF3, SOCAT] {
        let program = t.program;
        if let Err(e) = prereq::ensure(&[t]) {
            missing.insert(program, first_line(&format!("{e:#}")));
        }
    }
    let settings = Settings {
        quick: args.quick,
        rounds: args.rounds,
    };
    prereq::run(crate::cargo().args(["build", "--release", "-p", "bench"]))?;
    // Without the BPF object the sockmap rows are absent, with the forwarder's reason.
    if let Err(e) = crate::ebpf::build() {
        eprintln!("bench: the BPF object was not built ({e:#}); sockmap rows will be absent");
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
    let machine = machine_info();
    let mut rows = Vec::new();
    let mut names = Vec::new();
    for scenario in SCENARIOS {
        if args.only.as_deref().is_some_and(|o| o != scenario) {
            continue;
        }
        eprintln!(
            "bench: scenario {scenario} (at {:.0} s)",
            started.elapsed().as_secs_f64()
        );
        match start_backend(scenario, &bins, &missing) {
            Ok((backend_guard, backend_addr, backend)) => {
                let start = || start_targets(backend_addr, backend, &args.modes, &bins, &missing);
                let res = measure(scenario, start, &settings, &bins, &mut names);
                drop(backend_guard);
                rows.extend(res?);
            }
            Err(e) => {
                // No backend, no measurement: every row of the scenario says why.
                let why = first_line(&format!("backend: {e:#}"));
                eprintln!("bench: {scenario} absent: {why}");
                for m in metrics_of(scenario) {
                    for (name, _) in target_kinds(&args.modes) {
                        rows.push(Row {
                            scenario: scenario.to_string(),
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
    let charts = output::write_charts(&report, &dir)?;
    let md = output::summary_markdown(&report, &table, &charts, json_name(&json), "");
    std::fs::write(dir.join("latest.md"), &md)?;
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

// ---------------------------------------------------------------------------------------------
// Servers and targets.

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Keeps a backend process alive until dropped.
type Guard = Box<dyn std::any::Any>;

fn start_backend(
    scenario: &str,
    bins: &Bins,
    missing: &BTreeMap<&str, String>,
) -> anyhow::Result<(Guard, SocketAddr, Backend)> {
    match scenario {
        "redis" => {
            let r = Redis::start();
            let addr = r.addr();
            Ok((Box::new(r), addr, Backend::Redis))
        }
        "bulk" => {
            if let Some(why) = missing.get("iperf3") {
                bail!("iperf3 is required for the bulk scenario: {why}");
            }
            let port = free_port();
            let mut p = Proc::spawn(
                Command::new("iperf3")
                    .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )?;
            let addr = loopback(port);
            wait_listening(addr, &mut p).context("iperf3 -s")?;
            Ok((Box::new(p), addr, Backend::Iperf))
        }
        _ => {
            let addr = loopback(free_port());
            let mut p = Proc::spawn(
                Command::new(&bins.loadgen)
                    .args(["echo", "--listen", &addr.to_string()])
                    .stdout(Stdio::null()),
            )?;
            wait_listening(addr, &mut p).context("loadgen echo")?;
            Ok((Box::new(p), addr, Backend::Echo))
        }
    }
}

fn exited(p: &mut Proc) -> bool {
    p.wait_exit(Duration::from_millis(1)).is_some()
}

/// Waits (10 s at most) until `addr` accepts connections, failing early if `p` exits.
fn wait_listening(addr: SocketAddr, p: &mut Proc) -> anyhow::Result<()> {
    let mut dead = false;
    let up = wait_until(Duration::from_secs(10), || {
        dead = exited(p);
        dead || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    });
    if dead {
        bail!("exited before listening on {addr}");
    }
    if !up {
        bail!("nothing listens on {addr} after 10 s");
    }
    Ok(())
}

/// One real request through `addr`: PING for Redis, a byte for the echo server. An iperf3 server
/// cannot be probed without starting a test, so a connect has to do.
fn probe(addr: SocketAddr, backend: Backend) -> bool {
    match backend {
        Backend::Redis => Conn::open(addr)
            .and_then(|mut c| c.cmd(&["PING"]))
            .is_ok_and(|r| matches!(r, Reply::Simple(s) if s == "PONG")),
        Backend::Echo => echo_once(addr).is_ok(),
        Backend::Iperf => TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
    }
}

fn echo_once(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(s)
}

/// Waits (10 s at most) until a real request through the proxy succeeds.
fn wait_ready(addr: SocketAddr, backend: Backend, p: &mut Proc) -> anyhow::Result<()> {
    let mut dead = false;
    let ok = wait_until(Duration::from_secs(10), || {
        dead = exited(p);
        dead || probe(addr, backend)
    });
    if dead {
        bail!("exited at startup");
    }
    if !ok {
        bail!("no request through {addr} succeeded in 10 s");
    }
    Ok(())
}

fn target_kinds(modes: &[String]) -> Vec<(String, Kind)> {
    let mut kinds = vec![("direct".to_string(), Kind::Direct)];
    for m in modes {
        kinds.push((format!("forwarder-{m}"), Kind::Forwarder(m.clone())));
    }
    kinds.push(("haproxy".into(), Kind::Haproxy { splice: false }));
    kinds.push(("haproxy-splice".into(), Kind::Haproxy { splice: true }));
    kinds.push(("socat".into(), Kind::Socat));
    kinds
}

fn start_targets(
    backend: SocketAddr,
    bk: Backend,
    modes: &[String],
    bins: &Bins,
    missing: &BTreeMap<&str, String>,
) -> Vec<Target> {
    target_kinds(modes)
        .into_iter()
        .map(|(name, kind)| {
            let started = match &kind {
                Kind::Haproxy { .. } if missing.contains_key("haproxy") => {
                    Err(anyhow::anyhow!("{}", missing["haproxy"]))
                }
                Kind::Socat if missing.contains_key("socat") => {
                    Err(anyhow::anyhow!("{}", missing["socat"]))
                }
                _ => start_target(&kind, backend, bk, bins),
            };
            match started {
                Ok((addr, proc, dir)) => Target {
                    name,
                    kind,
                    addr,
                    proc,
                    absent: None,
                    _dir: dir,
                },
                Err(e) => {
                    let why = first_line(&format!("{e:#}"));
                    eprintln!("bench: {name} absent: {why}");
                    Target {
                        name,
                        kind,
                        addr: backend,
                        proc: None,
                        absent: Some(why),
                        _dir: None,
                    }
                }
            }
        })
        .collect()
}

type Started = (SocketAddr, Option<Proc>, Option<tempfile::TempDir>);

/// The first line of a log with the first of `markers` that occurs (or its first line), without
/// terminal colours.
fn log_error(path: &Path, markers: &[&str]) -> Option<String> {
    let text = strip_ansi(&std::fs::read_to_string(path).ok()?);
    markers
        .iter()
        .find_map(|m| text.lines().find(|l| l.contains(m)))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn start_target(
    k: &Kind,
    backend: SocketAddr,
    bk: Backend,
    bins: &Bins,
) -> anyhow::Result<Started> {
    let dir = tempfile::tempdir()?;
    let listen = loopback(free_port());
    match k {
        Kind::Direct => Ok((backend, None, None)),
        Kind::Forwarder(mode) => {
            let bin = bins
                .forwarder
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let admin = loopback(free_port());
            let path = dir.path().join("forwarder.toml");
            std::fs::write(&path, forwarder_config(mode, listen, admin, backend, bk))?;
            let log = dir.path().join("forwarder.log");
            let mut p = Proc::spawn(
                Command::new(bin)
                    .args(["run", "--config"])
                    .arg(&path)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log)?),
            )?;
            // The forwarder holds clients until its first check passes; the admin status says
            // when it has a master, then a real request must go through.
            let master = format!("\"master\":\"{backend}\"");
            let mut dead = false;
            let has_master = wait_until(Duration::from_secs(10), || {
                dead = exited(&mut p);
                dead || http_get(admin, "/status").is_ok_and(|s| s.contains(&master))
            });
            let ready = if dead {
                Err(anyhow::anyhow!("exited at startup"))
            } else if !has_master {
                Err(anyhow::anyhow!("no master in /status after 10 s"))
            } else {
                wait_ready(listen, bk, &mut p)
            };
            if let Err(e) = ready {
                match log_error(&log, &["error:", "ERROR", "rror"]) {
                    Some(why) => bail!("{why}"),
                    None => bail!("{e}"),
                }
            }
            Ok((listen, Some(p), Some(dir)))
        }
        Kind::Haproxy { splice } => {
            let path = dir.path().join("haproxy.cfg");
            std::fs::write(&path, haproxy_config(*splice, listen, backend, bk))?;
            let log = dir.path().join("haproxy.log");
            let mut p = Proc::spawn(
                Command::new("haproxy")
                    .args(["-db", "-f"])
                    .arg(&path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log)?),
            )?;
            let ready = wait_listening(listen, &mut p).and_then(|()| {
                if bk == Backend::Iperf {
                    // Let the first health check pass (servers start up, but be sure).
                    std::thread::sleep(Duration::from_millis(1200));
                }
                wait_ready(listen, bk, &mut p)
            });
            if let Err(e) = ready {
                match log_error(&log, &["[ALERT]"]) {
                    Some(why) => bail!("{why} ({e})"),
                    None => bail!("{e}"),
                }
            }
            Ok((listen, Some(p), Some(dir)))
        }
        Kind::Socat => {
            // nodelay on both sides: without it, 16 KiB Redis values stall on Nagle + delayed
            // ACKs (40 ms per request); and a listen backlog above socat's default of 5, which
            // drops 50 simultaneous connects. Both measure socat defaults rather than forwarding.
            // Its own process group, so that the forked children can be killed with it.
            let mut p = Proc::spawn(
                Command::new("socat")
                    .arg(format!(
                        "TCP-LISTEN:{},fork,reuseaddr,nodelay,backlog=1024,bind=127.0.0.1",
                        listen.port()
                    ))
                    .arg(format!("TCP:{backend},nodelay"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0),
            )?;
            wait_listening(listen, &mut p)?;
            wait_ready(listen, bk, &mut p)?;
            Ok((listen, Some(p), Some(dir)))
        }
    }
}

fn forwarder_config(
    mode: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
    bk: Backend,
) -> String {
    let check = match bk {
        Backend::Redis => "kind = \"redis-master\"",
        Backend::Iperf | Backend::Echo => "kind = \"tcp-check\"\nsteps = [\"connect\"]",
    };
    format!(
        "[datapath]\nmode = \"{mode}\"\nworkers = 0\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [[service]]\nname = \"bench\"\nlisten = \"{listen}\"\nservers = [\"{backend}\"]\n\
         allow = [\"127.0.0.0/8\"]\nmaxconn = 9000\n\
         timeout = {{ connect = \"4s\", client = \"60s\", server = \"60s\", queue = \"5s\" }}\n\n\
         [service.check]\n{check}\ninterval = \"1s\"\n"
    )
}

/// The seed guide's HAProxy configuration. maxconn is 9,000, not 20,000: the descriptor hard limit
/// here is 20,000 and HAProxy refuses to start when maxconn cannot be met; the splice variant
/// also needs descriptors for its pipes.
fn haproxy_config(splice: bool, listen: SocketAddr, backend: SocketAddr, bk: Backend) -> String {
    let checks = match bk {
        Backend::Redis => {
            "  option tcp-check\n  tcp-check connect\n  tcp-check send PING\\r\\n\n  \
             tcp-check expect string +PONG\n  tcp-check send info\\ replication\\r\\n\n  \
             tcp-check expect string role:master\n  tcp-check send QUIT\\r\\n\n  \
             tcp-check expect string +OK\n"
        }
        Backend::Iperf | Backend::Echo => "  option tcp-check\n  tcp-check connect\n",
    };
    let (pipes, option) = if splice {
        ("  maxpipes 256\n", "  option splice-auto\n")
    } else {
        ("", "")
    };
    format!(
        "global\n  maxconn 9000\n  nbthread 2\n{pipes}\ndefaults\n  mode tcp\n  \
         timeout connect 4s\n  timeout client 60s\n  timeout server 60s\n  maxconn 9000\n{option}\n\
         frontend fe\n  bind {listen}\n  default_backend be\n\nbackend be\n{checks}  \
         server redis1 {backend} check inter 1s\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// A metric's identity.
struct Metric {
    name: String,
    unit: &'static str,
    higher_is_better: bool,
}

fn metric(name: impl Into<String>, unit: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        name: name.into(),
        unit,
        higher_is_better,
    }
}

/// Samples (or why there are none) per target index.
type PerTarget = BTreeMap<usize, Result<Vec<f64>, String>>;

/// Runs every round of a scenario, target after target, and collects the rows. The memory
/// scenario starts fresh proxies every round: a process keeps the memory of closed connections,
/// so a second measurement in the same process would see no growth.
fn measure(
    scenario: &str,
    start: impl Fn() -> Vec<Target>,
    s: &Settings,
    bins: &Bins,
    names: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let fresh = scenario == "memory";
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
                for m in metrics_of(scenario) {
                    record(m, i, Err(why.clone()));
                }
                continue;
            }
            for (m, v) in measure_one(scenario, t, s, bins) {
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
                scenario: scenario.to_string(),
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

const PERCENTILES: [&str; 3] = ["p50", "p99", "p999"];

/// The metrics a scenario produces (used to mark an absent target's rows).
fn metrics_of(scenario: &str) -> Vec<Metric> {
    match scenario {
        "redis" => REDIS_VARIANTS
            .iter()
            .flat_map(|(v, _, _)| {
                ["SET", "GET"].map(|op| metric(format!("{op} {v} -c 50"), "ops/s", true))
            })
            .collect(),
        "bulk" => vec![
            metric("1 stream", "Gbit/s", true),
            metric("8 streams", "Gbit/s", true),
            metric("proxy CPU, 1 stream", "s/GB", false),
            metric("proxy CPU, 8 streams", "s/GB", false),
        ],
        "latency" => LATENCY_VARIANTS
            .iter()
            .flat_map(|(v, _, _)| PERCENTILES.map(|p| metric(format!("{v} {p}"), "us", false)))
            .collect(),
        "connrate" => vec![metric("connect+1 RTT+close", "conn/s", true)],
        "memory" => vec![metric("RSS per idle connection", "KiB", false)],
        _ => Vec::new(),
    }
}

fn measure_one(
    scenario: &str,
    t: &Target,
    s: &Settings,
    bins: &Bins,
) -> Vec<(Metric, Result<f64, String>)> {
    let err = |e: anyhow::Error| format!("{e:#}");
    match scenario {
        "redis" => {
            let scale = if s.quick { 10 } else { 1 };
            let mut out = Vec::new();
            for (name, extra, n) in REDIS_VARIANTS {
                let res = redis_benchmark(t.addr, extra, n / scale);
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
            out
        }
        "bulk" => {
            let secs = if s.quick { 1 } else { 3 };
            let mut out = Vec::new();
            let mut cpu = Vec::new();
            for streams in [1, 8] {
                let before = t.pid().map(cpu_seconds).transpose();
                let r = iperf3(t.addr, streams, secs);
                // socat reaps its per-connection children (counted in cutime) a moment later.
                if matches!(t.kind, Kind::Socat) {
                    std::thread::sleep(Duration::from_millis(200));
                }
                let after = t.pid().map(cpu_seconds).transpose();
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
                let c = match (&r, before, after) {
                    (Err(e), _, _) => Err(e.clone()),
                    (_, Err(e), _) | (_, _, Err(e)) => Err(err(e)),
                    (Ok(_), Ok(None), _) | (Ok(_), _, Ok(None)) => {
                        Err("no proxy process (direct)".to_string())
                    }
                    (Ok(r), Ok(Some(a)), Ok(Some(b))) => {
                        cpu_seconds_per_gb(b - a, r.bytes).ok_or_else(|| "no bytes".to_string())
                    }
                };
                cpu.push((metric(format!("proxy CPU, {name}"), "s/GB", false), c));
            }
            out.extend(cpu);
            out
        }
        "latency" => {
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
                let res = pingpong(&bins.loadgen, t.addr, size, n, rate);
                for p in PERCENTILES {
                    let pick = |l: &Latency| match p {
                        "p50" => l.p50_us,
                        "p99" => l.p99_us,
                        _ => l.p999_us,
                    };
                    out.push((
                        metric(format!("{name} {p}"), "us", false),
                        res.as_ref().map(pick).map_err(Clone::clone),
                    ));
                }
            }
            out
        }
        "connrate" => {
            let secs = if s.quick { 1 } else { 3 };
            vec![(
                metric("connect+1 RTT+close", "conn/s", true),
                connrate(&bins.loadgen, t.addr, secs).map_err(err),
            )]
        }
        "memory" => {
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
        _ => Vec::new(),
    }
}

fn output(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let so = String::from_utf8_lossy(&out.stdout);
        return Err(first_line(&format!(
            "{what} failed ({}): {} {}",
            out.status,
            err.trim(),
            so.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn redis_benchmark(addr: SocketAddr, extra: &[&str], n: u64) -> Result<Vec<(String, f64)>, String> {
    let out = output(
        Command::new("timeout")
            .args(["120", "redis-benchmark", "-h"])
            .arg(addr.ip().to_string())
            .args(["-p", &addr.port().to_string(), "-c", "50", "-t", "set,get"])
            .args(["--csv", "-n", &n.to_string()])
            .args(extra),
        "redis-benchmark",
    )?;
    parse_redis_benchmark_csv(&out).map_err(|e| format!("{e:#}"))
}

fn iperf3(addr: SocketAddr, streams: u32, secs: u32) -> Result<bench::Iperf, String> {
    let out = Command::new("timeout")
        .args(["60", "iperf3", "-c"])
        .arg(addr.ip().to_string())
        .args([
            "-p",
            &addr.port().to_string(),
            "-J",
            "-t",
            &secs.to_string(),
        ])
        .args(["-P", &streams.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("iperf3: {e}"))?;
    // iperf3 -J reports errors inside its JSON, with a non-zero exit.
    parse_iperf3_json(&String::from_utf8_lossy(&out.stdout)).map_err(|e| format!("{e:#}"))
}

fn pingpong(
    loadgen: &Path,
    addr: SocketAddr,
    size: usize,
    count: u64,
    rate: Option<u32>,
) -> Result<Latency, String> {
    let mut cmd = Command::new(loadgen);
    cmd.args(["pingpong", "--addr", &addr.to_string()]).args([
        "--size",
        &size.to_string(),
        "--count",
        &count.to_string(),
    ]);
    if let Some(r) = rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    let out = output(&mut cmd, "loadgen pingpong")?;
    serde_json::from_str(out.trim()).map_err(|e| format!("loadgen pingpong: {e}: {out}"))
}

fn connrate(loadgen: &Path, addr: SocketAddr, secs: u32) -> anyhow::Result<f64> {
    let out = output(
        Command::new(loadgen)
            .args(["connrate", "--addr", &addr.to_string()])
            .args(["--seconds", &secs.to_string(), "--threads", "2"]),
        "loadgen connrate",
    )
    .map_err(anyhow::Error::msg)?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    v["per_second"]
        .as_f64()
        .context("loadgen connrate: no per_second")
}

/// user+sys CPU seconds of a process and of its reaped children, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_proc_stat_ticks(&stat)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) = {hz}");
    }
    Ok(ticks as f64 / hz as f64)
}

fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    parse_vmrss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status"))?)
}

/// RSS growth of a fresh proxy per established, idle connection, each one proven end to end by a
/// one-byte echo.
fn idle_memory(addr: SocketAddr, pid: u32, n: usize) -> anyhow::Result<f64> {
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("opened only {i} connections in 60 s");
        }
        if i % 500 == 0 {
            check_stop()?;
        }
        conns.push(echo_once(addr).with_context(|| format!("connection {i}"))?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid)?;
    drop(conns);
    per_connection_kib(before, after, n).context("no connections")
}

// ---------------------------------------------------------------------------------------------
// Machine.

/// The first line (of stdout then stderr) of a command that contains `needle`.
fn version(cmd: &str, args: &[&str], needle: &str) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(crate::root())
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| l.contains(needle))
                .map_or_else(|| first_line(&text), |l| l.trim().to_string())
        }
        Err(e) => format!("absent: {e}"),
    }
}

fn machine_info() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("kernel".into(), version("uname", &["-r"], ""));
    m.insert(
        "cpus".into(),
        std::thread::available_parallelism().map_or("?".into(), |n| n.to_string()),
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    m.insert("cpu".into(), cpu);
    let mut rev = version("git", &["rev-parse", "--short", "HEAD"], "");
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(crate::root())
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        rev.push_str(" (with uncommitted changes)");
    }
    m.insert("forwarder git rev".into(), rev);
    m.insert("haproxy".into(), version("haproxy", &["-v"], "version"));
    m.insert(
        "redis".into(),
        version("redis-server", &["--version"], "Redis"),
    );
    m.insert("socat".into(), version("socat", &["-V"], "socat version"));
    m.insert("iperf3".into(), version("iperf3", &["--version"], "iperf"));
    m.insert(
        "load average at start".into(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m x"),
            "2026 ERROR x"
        );
    }

    #[test]
    fn proxy_configs() {
        let (l, b) = (loopback(1000), loopback(2000));
        let h = haproxy_config(true, l, b, Backend::Redis);
        assert!(h.contains("option splice-auto\n") && h.contains("maxpipes"));
        assert!(h.contains("tcp-check expect string role:master\n"));
        assert!(h.contains("server redis1 127.0.0.1:2000 check inter 1s\n"));
        let h = haproxy_config(false, l, b, Backend::Echo);
        assert!(!h.contains("splice") && !h.contains("PING"));
        let f = forwarder_config("uring", l, loopback(3000), b, Backend::Iperf);
        assert!(f.contains("mode = \"uring\"") && f.contains("kind = \"tcp-check\""));
    }
}
