//! `loadgen`: the bench's own load generators and echo server (release build, run by
//! `cargo xtask bench`). Results are printed as one JSON line.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load generators for cargo xtask bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo server (runs until killed).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Request/response latency on one connection.
    Pingpong {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 20_000)]
        count: u64,
        /// Round trips per second; flat out when absent.
        #[arg(long)]
        rate: Option<u32>,
        /// Upper bound on the run, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Connections per second (connect, one round trip, close).
    Connrate {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Echo { listen } => bench::load::echo_server(listen),
        Cmd::Pingpong {
            addr,
            size,
            count,
            rate,
            seconds,
        } => {
            let l = bench::load::pingpong(addr, size, count, rate, Duration::from_secs(seconds))?;
            println!("{}", serde_json::to_string(&l)?);
            Ok(())
        }
        Cmd::Connrate {
            addr,
            threads,
            seconds,
        } => {
            let r = bench::load::connrate(addr, threads, Duration::from_secs(seconds))?;
            println!("{{\"per_second\":{r:.1}}}");
            Ok(())
        }
    }
}
