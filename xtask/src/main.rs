//! `cargo xtask build-ebpf | test | bench | lab`: the only build script a human runs.
#![forbid(unsafe_code)]

mod bench;
mod ebpf;
mod failover;
mod lab;
mod prereq;
mod test;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Workflow of the forwarder project")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the BPF prerequisites (clang-19, libbpf-dev, linux-libc-dev) and build the
    /// forwarder, whose build.rs compiles the sockmap program (ebpf/forwarder.bpf.c).
    BuildEbpf,
    /// Install prerequisites, build, and run every test (the end-to-end suite once per data path
    /// mode; its files that do not depend on the mode once), then print what ran where.
    Test(test::TestArgs),
    /// Measure every data path side by side with a direct connection, HAProxy and socat.
    Bench(bench::BenchArgs),
    /// Run the whole HA setup on loopback (2 Redis, 3 Sentinels, the forwarder in front).
    Lab(lab::LabArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::BuildEbpf => ebpf::build(),
        Cmd::Test(a) => test::run(a),
        Cmd::Lab(a) => lab::run(a),
        Cmd::Bench(a) => bench::run(a),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// `cargo` as invoked us (or from PATH).
pub fn cargo() -> std::process::Command {
    let mut c =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}
