//! `cargo xtask test`: prerequisites, build, unit tests, then the end-to-end suite in every mode
//! (the files that do not depend on the mode once), and a summary of what ran where.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::builder::PossibleValuesParser;
use clap::Args;

use crate::prereq::{
    self, CAPSH, CHROMIUM, IPROUTE, IPTABLES, PRLIMIT, PROMTOOL, REDIS, REDIS_CLI, SENTINEL,
    SYSTEMD_ANALYZE,
};

/// The data path modes this build has; the end-to-end suite runs in each (`--modes` picks some).
pub const MODES: &[&str] = &["userspace", "uring", "sockmap"];

/// How an end-to-end test file runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Runs {
    /// None of its tests depends on `FORWARDER_MODE`: run once, in the first mode.
    Once,
    /// Run in every mode.
    PerMode,
}

/// Every file of the end-to-end suite (`tests/tests/<name>.rs`) and how it runs. A file is
/// [`Runs::Once`] only when no test in it depends on the data path under test (the mode picks the
/// data path, and each path has its own accept/queue/connect front and session loop); a file
/// that mixes both kinds runs per mode. A unit test below checks that every file in tests/tests/
/// is listed here exactly once, so a new file cannot be forgotten.
const E2E_FILES: &[(&str, Runs)] = &[
    // The status page, `forwarder status`, the admin token: the admin listener only.
    ("admin", Runs::Once),
    // Admission and descriptor/pipe budgets: enforced by each path's front.
    ("admission", Runs::PerMode),
    // The redis-master check and the Sentinel queries authenticating.
    ("auth", Runs::Once),
    // Partitions under a write loop: sessions cut and resumed by the data path.
    ("chaos", Runs::PerMode),
    // Bad configurations: refused before any data path starts.
    ("config", Runs::Once),
    // Chooses its own data path (`auto`, and uring and sockmap explicitly).
    ("datapath", Runs::Once),
    // Attacks that meet the data path: a second instance meets the path's listener set (one
    // per uring worker), clients are held and refused by the path's front, attack bytes go
    // through it.
    ("hardening", Runs::PerMode),
    // IPv6 listeners, servers and allow lists: each path's front and dialer.
    ("ipv6", Runs::PerMode),
    // SIGINT drain, a reload onto a taken port, the privilege drop of every thread.
    ("lifecycle", Runs::PerMode),
    // Server states at run time (drain and maint cut and hold through each path's front),
    // probes, counters across reload.
    ("operate", Runs::PerMode),
    // SIGTERM drain of sessions, metrics of the traffic, capabilities kept per path.
    ("ops", Runs::PerMode),
    // `forwarder import-haproxy`: the translation checked and run once.
    ("import", Runs::Once),
    // Host names resolved and followed (in a private mount namespace with its own hosts file):
    // the configuration and the daemon, not the data path.
    ("names", Runs::Once),
    // Clients held while there is no master, and the queue timeout: each path's front.
    ("queue", Runs::PerMode),
    // Sessions routed to the master and cut when it changes.
    ("redis_ha", Runs::PerMode),
    // Listeners and sessions carried across a reload.
    ("reload", Runs::PerMode),
    // timeout.server, a client's reset, on_master_change = keep: how each path ends a session.
    ("session_end", Runs::PerMode),
    // TLS in its three modes: terminated and originated sessions run in tokio, passthrough ones
    // on each path.
    ("tls", Runs::PerMode),
    // log_sessions lines (bytes, end) and the latency histograms, written by each path.
    ("session_log", Runs::PerMode),
    // Failover drills: sessions cut and writes resumed through the data path.
    ("sentinel", Runs::PerMode),
    // A planned switchover holds and cuts through each path's front; two forwarders agree.
    ("switchover", Runs::PerMode),
    // The sockmap path, whatever FORWARDER_MODE says.
    ("sockmap", Runs::Once),
    // systemd's READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1, sent by the daemon whatever
    // its path, and `systemd-analyze verify` of the unit.
    ("systemd", Runs::Once),
    // The data path contract itself: bytes, half-close, resets, timeouts.
    ("tcp", Runs::PerMode),
    // promtool on a live /metrics, the alert rules and the dashboard's queries.
    ("telemetry", Runs::Once),
    // Lying Sentinels and an admin slowloris: the choice of master and the admin listener.
    ("trust", Runs::Once),
];

#[derive(Args)]
pub struct TestArgs {
    /// Data path modes to run the end-to-end suite in; files that do not depend on the mode run
    /// in the first one only.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = PossibleValuesParser::new(MODES),
        default_values = MODES,
    )]
    modes: Vec<String>,
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

/// Passed and failed test counts of one test binary (summed over its `test result:` lines).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Tally {
    passed: u64,
    failed: u64,
    /// Whether a `test result:` line was seen: a binary that crashed has none.
    finished: bool,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        self.finished = true;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }

    /// Failed tests, counting a binary that never reported as one failure.
    fn failures(&self) -> u64 {
        if self.finished {
            self.failed
        } else {
            self.failed.max(1)
        }
    }

    fn cell(&self) -> String {
        if self.finished {
            format!("{}/{}", self.passed, self.failed)
        } else {
            "crashed".to_string()
        }
    }
}

/// One test binary cargo ran: `name` (its target, e.g. `tcp` or `health`) and `source` (e.g.
/// `tests/tcp.rs`, `src/lib.rs`, `doc-tests`).
#[derive(Debug, PartialEq)]
struct Binary {
    name: String,
    source: String,
    tally: Tally,
}

/// Follows `cargo test` output (stdout and stderr in one stream): cargo's `Running` and
/// `Doc-tests` lines say which binary the `test result:` lines that follow belong to.
#[derive(Default)]
struct Parser {
    binaries: Vec<Binary>,
}

impl Parser {
    fn line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Running ") {
            // `Running tests/tcp.rs (target/debug/deps/tcp-0123abcd)` or
            // `Running unittests src/lib.rs (target/debug/deps/health-0123abcd)`.
            let rest = rest.strip_prefix("unittests ").unwrap_or(rest);
            let (source, path) = rest.split_once(" (").unwrap_or((rest, ""));
            let file = path.trim_end_matches(')').rsplit('/').next().unwrap_or("");
            let name = file.rsplit_once('-').map_or(file, |(n, _)| n);
            self.start(name, source);
        } else if let Some(name) = line.strip_prefix("Doc-tests ") {
            self.start(name, "doc-tests");
        } else if let Some(b) = self.binaries.last_mut() {
            b.tally.add_line(line);
        }
    }

    fn start(&mut self, name: &str, source: &str) {
        self.binaries.push(Binary {
            name: name.to_string(),
            source: source.to_string(),
            tally: Tally::default(),
        });
    }
}

/// Runs `cargo test ...`, echoing its output (stderr merged into stdout, in order) and counting
/// its results per test binary.
fn cargo_test(mut cmd: Command) -> anyhow::Result<(Vec<Binary>, ExitStatus)> {
    let (read, write) = rustix::pipe::pipe().context("pipe")?;
    cmd.stdout(Stdio::from(write.try_clone()?))
        .stderr(Stdio::from(write));
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    // Our copies of the write end go with the command: EOF comes when cargo and its children
    // are done.
    drop(cmd);
    let mut parser = Parser::default();
    let mut out = BufReader::new(File::from(read));
    let mut buf = Vec::new();
    while out.read_until(b'\n', &mut buf)? > 0 {
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        println!("{line}");
        parser.line(line);
        buf.clear();
    }
    let status = child.wait()?;
    if !status.success() {
        eprintln!("xtask: {what} failed: {status}");
    }
    Ok((parser.binaries, status))
}

/// What ran: the unit test binaries, and the end-to-end ones per mode.
struct Summary {
    unit: Vec<Binary>,
    modes: Vec<(String, Vec<Binary>)>,
}

impl Summary {
    fn totals(&self) -> (u64, u64) {
        let all = self
            .unit
            .iter()
            .chain(self.modes.iter().flat_map(|(_, b)| b));
        all.fold((0, 0), |(p, f), b| {
            (p + b.tally.passed, f + b.tally.failures())
        })
    }

    /// The report: unit test binaries, then a table of end-to-end file by mode.
    fn render(&self, filter: Option<&str>, took: Duration) -> String {
        let mut s = String::from("\nxtask: summary (passed/failed)");
        if let Some(f) = filter {
            s.push_str(&format!(", tests whose name contains {f:?}"));
        }
        let label = |b: &Binary| format!("{} ({})", b.name, b.source);
        let width = self
            .unit
            .iter()
            .map(|b| label(b).len())
            .chain(E2E_FILES.iter().map(|(f, _)| f.len()))
            .max()
            .unwrap_or(0);
        s.push_str("\nunit tests (binaries with none left out)\n");
        let ran = |b: &&Binary| b.tally.passed + b.tally.failures() > 0;
        for b in self.unit.iter().filter(ran) {
            s.push_str(&format!("  {:<width$} {:>9}\n", label(b), b.tally.cell()));
        }
        s.push_str(&format!(
            "{:<w$}",
            "end-to-end (tests/tests/)",
            w = width + 2
        ));
        for (mode, _) in &self.modes {
            s.push_str(&format!(" {mode:>9}"));
        }
        s.push('\n');
        for (file, runs) in E2E_FILES {
            s.push_str(&format!("  {file:<width$}"));
            for (i, (_, binaries)) in self.modes.iter().enumerate() {
                let ran = binaries.iter().find(|b| b.name == *file);
                let cell = match ran {
                    Some(b) => b.tally.cell(),
                    None if i > 0 && *runs == Runs::Once => "once".to_string(),
                    None => "not run".to_string(),
                };
                s.push_str(&format!(" {cell:>9}"));
            }
            s.push('\n');
        }
        s.push_str(
            "  (once: does not depend on the mode, ran in the first one; see E2E_FILES in \
             xtask/src/test.rs)\n",
        );
        let (passed, failed) = self.totals();
        let secs = took.as_secs();
        s.push_str(&format!(
            "xtask: {passed} passed, {failed} failed in {}m{:02}s",
            secs / 60,
            secs % 60
        ));
        s
    }
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    prereq::ensure(&[
        REDIS,
        SENTINEL,
        REDIS_CLI,
        CAPSH,
        CHROMIUM,
        IPTABLES,
        IPROUTE,
        PRLIMIT,
        PROMTOOL,
        SYSTEMD_ANALYZE,
    ])?;
    // The forwarder's build.rs compiles the BPF object the sockmap tests need.
    crate::ebpf::prerequisites()?;
    prereq::run(crate::cargo().args(["build", "-p", "forwarder"]))?;
    let bin = crate::root().join("target/debug/forwarder");

    let started = Instant::now();
    let filter: Vec<String> = args.filter.iter().cloned().collect();
    let mut failed_runs = Vec::new();
    let mut summary = Summary {
        unit: Vec::new(),
        modes: Vec::new(),
    };
    eprintln!("xtask: unit tests");
    for scope in [
        &["--workspace", "--exclude", "harness"][..],
        &["-p", "harness", "--lib"],
    ] {
        let mut cmd = crate::cargo();
        cmd.args(["test", "--no-fail-fast"])
            .args(scope)
            .arg("--")
            .args(&filter);
        let (binaries, status) = cargo_test(cmd)?;
        summary.unit.extend(binaries);
        if !status.success() {
            failed_runs.push(format!("unit tests ({})", scope.join(" ")));
        }
    }
    for (i, mode) in args.modes.iter().enumerate() {
        let files: Vec<&str> = E2E_FILES
            .iter()
            .filter(|(_, runs)| i == 0 || *runs == Runs::PerMode)
            .map(|(f, _)| *f)
            .collect();
        eprintln!("xtask: end-to-end suite, datapath mode {mode}: {files:?}");
        let mut cmd = crate::cargo();
        cmd.args(["test", "--no-fail-fast", "-p", "harness"]);
        for f in &files {
            cmd.args(["--test", f]);
        }
        cmd.arg("--")
            .args(&filter)
            .env("FORWARDER_MODE", mode)
            .env("FORWARDER_BIN", &bin);
        let (binaries, status) = cargo_test(cmd)?;
        summary.modes.push((mode.clone(), binaries));
        if !status.success() {
            failed_runs.push(format!("end-to-end suite in mode {mode}"));
        }
    }
    println!(
        "{}",
        summary.render(args.filter.as_deref(), started.elapsed())
    );
    if !failed_runs.is_empty() {
        bail!("failed: {}", failed_runs.join(", "));
    }
    eprintln!("xtask: all tests passed in modes {:?}", args.modes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Binary, Parser, Runs, Summary, Tally, E2E_FILES};

    #[test]
    fn counts_cargo_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 23 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.30s");
        t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!((t.passed, t.failed, t.finished), (26, 2, true));
    }

    #[test]
    fn attributes_results_to_the_binary_cargo_said_it_runs() {
        let mut p = Parser::default();
        for line in [
            "   Compiling harness v0.1.0 (/w/tests)",
            "     Running unittests src/lib.rs (target/debug/deps/health-0123abcd)",
            "running 2 tests",
            "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "     Running tests/tcp.rs (target/debug/deps/tcp-89ab)",
            "test result: FAILED. 7 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
            "     Running tests/chaos.rs (target/debug/deps/chaos-cdef)",
            "error: test failed, to rerun pass `-p harness --test chaos`",
            "   Doc-tests health",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            p.line(line);
        }
        let got: Vec<(&str, &str, u64, u64)> = p
            .binaries
            .iter()
            .map(|b| {
                (
                    b.name.as_str(),
                    b.source.as_str(),
                    b.tally.passed,
                    b.tally.failures(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("health", "src/lib.rs", 2, 0),
                ("tcp", "tests/tcp.rs", 7, 1),
                ("chaos", "tests/chaos.rs", 0, 1),
                ("health", "doc-tests", 0, 0),
            ]
        );
    }

    #[test]
    fn the_summary_shows_each_file_per_mode_and_once_files_once() {
        let bin = |name: &str, passed| Binary {
            name: name.into(),
            source: format!("tests/{name}.rs"),
            tally: Tally {
                passed,
                failed: 0,
                finished: true,
            },
        };
        let s = Summary {
            unit: vec![bin("health", 3)],
            modes: vec![
                ("userspace".into(), vec![bin("config", 4), bin("tcp", 8)]),
                ("uring".into(), vec![bin("tcp", 8)]),
            ],
        };
        let text = s.render(None, std::time::Duration::from_secs(75));
        let row = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
        };
        assert_eq!(row("config"), Some(vec!["config", "4/0", "once"]), "{text}");
        assert_eq!(row("tcp"), Some(vec!["tcp", "8/0", "8/0"]), "{text}");
        assert_eq!(
            row("admission"),
            Some(vec!["admission", "not", "run", "not", "run"]),
            "{text}"
        );
        assert!(
            text.ends_with("xtask: 23 passed, 0 failed in 1m15s"),
            "{text}"
        );
    }

    /// A new file in tests/tests/ must be classified, and a classified file must exist.
    #[test]
    fn every_end_to_end_file_is_classified_exactly_once() {
        let dir = crate::root().join("tests/tests");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".rs").map(str::to_string)
            })
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = E2E_FILES.iter().map(|(f, _)| f.to_string()).collect();
        listed.sort();
        let mut unique = listed.clone();
        unique.dedup();
        assert_eq!(listed, unique, "a file is classified twice in E2E_FILES");
        assert_eq!(
            listed, on_disk,
            "E2E_FILES (xtask/src/test.rs) must list every file in tests/tests/ exactly once"
        );
        assert!(E2E_FILES.iter().any(|(_, r)| *r == Runs::PerMode));
    }
}
