//! `cargo xtask test`: prerequisites, build, unit tests, then the end-to-end suite in every mode.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::Args;

use crate::prereq::{
    self, CAPSH, CHROMIUM, IPROUTE, IPTABLES, PRLIMIT, REDIS, REDIS_CLI, SENTINEL,
};

/// The data path modes this build has; the end-to-end suite runs in each.
pub const MODES: &[&str] = &["userspace", "uring", "sockmap"];
/// The modes `cargo xtask test` runs without `--modes`: sockmap is experimental (a kernel 6.18
/// skb duplication under concurrent bulk load, see README) and runs only when asked for.
pub const DEFAULT_MODES: &[&str] = &["userspace", "uring"];

#[derive(Args)]
pub struct TestArgs {
    /// Data path modes to run the end-to-end suite in (default: all).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Only run tests whose name contains this.
    filter: Option<String>,
}

/// Passed and failed test counts, summed over cargo's `test result:` lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
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
}

/// Runs `cargo test ...`, echoing its output and counting its results.
fn cargo_test(cmd: &mut Command, tally: &mut Tally) -> anyhow::Result<()> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            tally.add_line(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "xtask: {} passed, {} failed",
            tally.passed,
            tally.failed.max(1)
        );
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    prereq::ensure(&[
        REDIS, SENTINEL, REDIS_CLI, CAPSH, CHROMIUM, IPTABLES, IPROUTE, PRLIMIT,
    ])?;
    // The forwarder's build.rs compiles the BPF object the sockmap tests need.
    crate::ebpf::prerequisites()?;
    let modes: Vec<String> = if args.modes.is_empty() {
        DEFAULT_MODES.iter().map(|m| m.to_string()).collect()
    } else {
        args.modes
    };
    for m in &modes {
        if !MODES.contains(&m.as_str()) {
            bail!("unknown mode {m:?}: this build has {MODES:?}");
        }
    }
    prereq::run(crate::cargo().args(["build", "-p", "forwarder"]))?;
    let bin = crate::root().join("target/debug/forwarder");

    let filter: Vec<String> = args.filter.into_iter().collect();
    let mut tally = Tally::default();
    eprintln!("xtask: unit tests");
    cargo_test(
        crate::cargo()
            .args(["test", "--workspace", "--exclude", "harness", "--"])
            .args(&filter),
        &mut tally,
    )?;
    for mode in &modes {
        eprintln!("xtask: end-to-end suite, datapath mode {mode}");
        cargo_test(
            crate::cargo()
                .args(["test", "-p", "harness", "--"])
                .args(&filter)
                .env("FORWARDER_MODE", mode)
                .env("FORWARDER_BIN", &bin),
            &mut tally,
        )?;
    }
    eprintln!("xtask: all tests passed in modes {modes:?}");
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn counts_cargo_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 23 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.30s");
        t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!((t.passed, t.failed), (26, 2));
    }
}
