//! The measuring tools, each run against one address: redis-benchmark, iperf3, the loadgen
//! ping-pong and connection-rate clients, and the idle-connection memory probe; plus the CPU and
//! RSS readings of a proxy process from /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bench::{
    parse_iperf3_json, parse_proc_stat_ppid_ticks, parse_redis_benchmark_csv, parse_vmrss_kib,
    per_connection_kib, tree_pids, tree_ticks, Latency,
};

use super::{check_stop, first_line};

/// One byte echoed through `addr`; the connection stays open.
pub fn echo_once(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(s)
}

fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| what.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let so = String::from_utf8_lossy(&out.stdout);
        bail!(
            "{}",
            first_line(&format!(
                "{what} failed ({}): {} {}",
                out.status,
                err.trim(),
                so.trim()
            ))
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn redis_benchmark(
    addr: SocketAddr,
    extra: &[&str],
    n: u64,
) -> anyhow::Result<Vec<(String, f64)>> {
    let out = output(
        Command::new("timeout")
            .args(["120", "redis-benchmark", "-h"])
            .arg(addr.ip().to_string())
            .args(["-p", &addr.port().to_string(), "-c", "50", "-t", "set,get"])
            .args(["--csv", "-n", &n.to_string()])
            .args(extra),
        "redis-benchmark",
    )?;
    parse_redis_benchmark_csv(&out)
}

pub fn iperf3(addr: SocketAddr, streams: u32, secs: u32) -> anyhow::Result<bench::Iperf> {
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
        .context("iperf3")?;
    // iperf3 -J reports errors inside its JSON, with a non-zero exit.
    parse_iperf3_json(&String::from_utf8_lossy(&out.stdout))
}

pub fn pingpong(
    loadgen: &Path,
    addr: SocketAddr,
    size: usize,
    count: u64,
    rate: Option<u32>,
) -> anyhow::Result<Latency> {
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
    serde_json::from_str(out.trim()).map_err(|e| anyhow!("loadgen pingpong: {e}: {out}"))
}

pub fn connrate(loadgen: &Path, addr: SocketAddr, secs: u32) -> anyhow::Result<f64> {
    let out = output(
        Command::new(loadgen)
            .args(["connrate", "--addr", &addr.to_string()])
            .args(["--seconds", &secs.to_string(), "--threads", "2"]),
        "loadgen connrate",
    )?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    v["per_second"]
        .as_f64()
        .context("loadgen connrate: no per_second")
}

/// `(pid, ppid, utime + stime + cutime + cstime)` of every process, from `/proc/*/stat`.
fn processes() -> anyhow::Result<Vec<(u32, u32, u64)>> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(p) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: skip it (its parent, if in the
        // tree, counts it in cutime once it has reaped it).
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        if let Ok((ppid, ticks)) = parse_proc_stat_ppid_ticks(&stat) {
            procs.push((p, ppid, ticks));
        }
    }
    Ok(procs)
}

/// user+sys CPU seconds of a process and of all its descendants (nginx's workers, socat's
/// per-connection children), living or reaped: the sum over the process tree under `pid` of
/// utime + stime + cutime + cstime.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let ticks = tree_ticks(&processes()?, pid).with_context(|| format!("no process {pid}"))?;
    let hz = rustix::param::clock_ticks_per_second();
    if hz == 0 {
        bail!("sysconf(_SC_CLK_TCK) = 0");
    }
    Ok(ticks as f64 / hz as f64)
}

/// VmRSS of a process and of all its descendants (nginx's workers hold the connections, not its
/// master). Pages they share are counted in each, but the growth the memory scenario measures is
/// the workers' own.
fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let tree = tree_pids(&processes()?, pid);
    if tree.is_empty() {
        bail!("no process {pid}");
    }
    let rss = |p: &u32| -> anyhow::Result<f64> {
        parse_vmrss_kib(&std::fs::read_to_string(format!("/proc/{p}/status"))?)
    };
    // A descendant that exited (gone, or a zombie without VmRSS) holds no memory.
    Ok(rss(&tree[0])? + tree[1..].iter().filter_map(|p| rss(p).ok()).sum::<f64>())
}

/// RSS growth of a fresh proxy per established, idle connection, each one proven end to end by a
/// one-byte echo.
pub fn idle_memory(addr: SocketAddr, pid: u32, n: usize) -> anyhow::Result<f64> {
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
