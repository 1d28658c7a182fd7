//! `cargo xtask bench tls`: Redis over TLS through each proxy, side by side in one run, rounds
//! interleaved. The backend is `redis-server --tls-port` wanting client certificates; the
//! client is `redis-benchmark --tls` with a client certificate; certificates are made for the
//! run (harness's rcgen PKI). Two groups of targets:
//! - **terminate+originate**: the proxy ends the client's TLS and opens its own to Redis
//!   (forwarder `[service.tls]` + `[service.server_tls]`, HAProxy `bind ... ssl crt` +
//!   `server ... ssl verify required`);
//! - **passthrough**: the client's TLS bytes go through untouched; the proxy's checks speak TLS
//!   (forwarder `passthrough = true` in each data path mode, HAProxy `check-ssl`, socat).
//!
//! Rows: SET/GET ops/s at P1 and P16 (50 clients), SET of 4 KiB values 16 at a time as Gbit/s
//! (8 clients),
//! and the proxy's CPU per request and per GB. Writes `bench/results/tls.md`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use bench::{cpu_seconds_per_gb, cpu_us_per_op, summarize, Summary};
use harness::tls::{ClientTls, Pki};
use harness::{free_port, http_get, wait_until, Conn, Proc, Redis, Reply};

use super::tools::cpu_seconds;
use crate::prereq::{self, HAPROXY, REDIS, REDIS_BENCHMARK, SOCAT};
use bench::parse_redis_benchmark_csv;

/// Which way a target carries TLS.
#[derive(Clone, Copy, PartialEq)]
enum Group {
    Terminate,
    Passthrough,
}

#[derive(Clone)]
enum Kind {
    Direct,
    Forwarder { mode: &'static str },
    Haproxy,
    Socat,
}

struct Target {
    name: String,
    group: Group,
    kind: Kind,
    addr: SocketAddr,
    proc: Option<Proc>,
    absent: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// (row, redis-benchmark arguments, requests per test, value bytes).
const LOADS: [(&str, &[&str], u64, u64); 3] = [
    ("P1", &["-c", "50", "-t", "set,get"], 50_000, 3),
    (
        "P16",
        &["-c", "50", "-P", "16", "-t", "set,get"],
        300_000,
        3,
    ),
    // Larger values stall redis-benchmark's TLS client on Nagle (44 ms a request, direct
    // too): bytes in bulk are 4 KiB values, 16 in flight per connection.
    (
        "SET 4KiB P16",
        &["-c", "8", "-P", "16", "-t", "set", "-d", "4096"],
        200_000,
        4096,
    ),
];

/// One run of redis-benchmark over TLS against `addr`: (test, requests per second).
fn benchmark(
    pki: &Pki,
    addr: SocketAddr,
    extra: &[&str],
    n: u64,
) -> anyhow::Result<Vec<(String, f64)>> {
    let out = Command::new("timeout")
        .args(["120", "redis-benchmark", "--tls", "--cacert"])
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client.cert)
        .arg("--key")
        .arg(&pki.client.key)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["--csv", "-n", &n.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .context("redis-benchmark")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    parse_redis_benchmark_csv(&String::from_utf8_lossy(&out.stdout))
}

/// A PING over TLS through `addr` answers PONG.
fn answers(addr: SocketAddr, tls: &ClientTls) -> bool {
    Conn::open_tls(addr, tls)
        .and_then(|mut c| c.cmd(&["PING"]))
        .is_ok_and(|r| r == Reply::Simple("PONG".into()))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(kind: &Kind, group: Group, pki: &Pki, redis: SocketAddr) -> anyhow::Result<Target> {
    let dir = tempfile::tempdir()?;
    let listen = loopback(free_port());
    let mut proc = match kind {
        Kind::Direct => None,
        Kind::Forwarder { mode } => {
            let bin = crate::root().join("target/release/forwarder");
            let admin = loopback(free_port());
            let tls = match group {
                Group::Terminate => format!(
                    "tls = {}\nserver_tls = {}\n",
                    pki.listen_table(&pki.server, false),
                    pki.server_table(None)
                ),
                Group::Passthrough => format!("server_tls = {}\n", pki.server_table(Some(true))),
            };
            let cfg = dir.path().join("forwarder.toml");
            std::fs::write(
                &cfg,
                format!(
                    "[datapath]\nmode = \"{mode}\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
                     [[service]]\nname = \"bench\"\nlisten = \"{listen}\"\nservers = [\"{redis}\"]\n\
                     maxconn = 9000\n{tls}\
                     timeout = {{ connect = \"4s\", client = \"60s\", server = \"60s\", queue = \"5s\" }}\n\n\
                     [service.check]\nkind = \"redis-master\"\ninterval = \"1s\"\n"
                ),
            )?;
            let mut p = Proc::spawn(
                Command::new(bin)
                    .args(["run", "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", "warn")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.path().join("forwarder.log"))?),
            )?;
            let master = format!("\"master\":\"{redis}\"");
            let has = wait_until(Duration::from_secs(15), || {
                p.wait_exit(Duration::ZERO).is_some()
                    || http_get(admin, "/status").is_ok_and(|s| s.contains(&master))
            });
            if !has {
                let log =
                    std::fs::read_to_string(dir.path().join("forwarder.log")).unwrap_or_default();
                bail!("no master: {}", log.lines().last().unwrap_or("exited"));
            }
            Some(p)
        }
        Kind::Haproxy => {
            // HAProxy wants the certificate and its key in one file.
            let bundle = |cert: &Path, key: &Path, name: &str| -> anyhow::Result<String> {
                let p = dir.path().join(name);
                std::fs::write(
                    &p,
                    std::fs::read_to_string(cert)? + &std::fs::read_to_string(key)?,
                )?;
                Ok(p.display().to_string())
            };
            let front = bundle(&pki.server.cert, &pki.server.key, "front.pem")?;
            let client = bundle(&pki.client.cert, &pki.client.key, "client.pem")?;
            let ca = pki.ca.display();
            let (bind, server) = match group {
                Group::Terminate => (
                    format!("{listen} ssl crt {front}"),
                    format!("ssl verify required ca-file {ca} crt {client}"),
                ),
                Group::Passthrough => (
                    listen.to_string(),
                    format!("check-ssl verify required ca-file {ca} crt {client}"),
                ),
            };
            let cfg = dir.path().join("haproxy.cfg");
            std::fs::write(
                &cfg,
                format!(
                    "global\n  maxconn 9000\n  nbthread 2\n\ndefaults\n  mode tcp\n  \
                     timeout connect 4s\n  timeout client 60s\n  timeout server 60s\n  maxconn 9000\n\n\
                     frontend fe\n  bind {bind}\n  default_backend be\n\nbackend be\n  \
                     option tcp-check\n  tcp-check connect ssl\n  tcp-check send PING\\r\\n\n  \
                     tcp-check expect string +PONG\n  tcp-check send info\\ replication\\r\\n\n  \
                     tcp-check expect string role:master\n  tcp-check send QUIT\\r\\n\n  \
                     tcp-check expect string +OK\n  server redis1 {redis} check inter 1s {server}\n"
                ),
            )?;
            Some(Proc::spawn(
                Command::new("haproxy")
                    .args(["-db", "-f"])
                    .arg(&cfg)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.path().join("haproxy.log"))?),
            )?)
        }
        Kind::Socat => Some(Proc::spawn(
            Command::new("socat")
                .arg(format!(
                    "TCP-LISTEN:{},fork,reuseaddr,nodelay,backlog=1024,bind=127.0.0.1",
                    listen.port()
                ))
                .arg(format!("TCP:{redis},nodelay"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0),
        )?),
    };
    let addr = if matches!(kind, Kind::Direct) {
        redis
    } else {
        listen
    };
    let tls = pki.client_tls();
    if !wait_until(Duration::from_secs(15), || answers(addr, &tls)) {
        if let Some(p) = proc.as_mut() {
            p.kill();
        }
        bail!("no PING over TLS through {addr} in 15 s");
    }
    Ok(Target {
        name: String::new(),
        group,
        kind: kind.clone(),
        addr,
        proc,
        absent: None,
        _dir: Some(dir),
    })
}

impl Drop for Target {
    fn drop(&mut self) {
        if let (Kind::Socat, Some(p)) = (&self.kind, &self.proc) {
            if let Some(pid) = i32::try_from(p.pid())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The metric rows of one round through `t`: (row, unit, higher is better, value or why not).
fn measure(t: &Target, pki: &Pki) -> Vec<(String, &'static str, bool, Result<f64, String>)> {
    let mut out = Vec::new();
    for (name, args, n, size) in LOADS {
        let before = t.proc.as_ref().map(|p| cpu_seconds(p.pid()));
        let res = benchmark(pki, t.addr, args, n).map_err(|e| format!("{e:#}"));
        if matches!(t.kind, Kind::Socat) {
            std::thread::sleep(Duration::from_millis(200)); // socat reaps its children late
        }
        let after = t.proc.as_ref().map(|p| cpu_seconds(p.pid()));
        let cpu = match (before, after) {
            (Some(Ok(a)), Some(Ok(b))) => Ok(b - a),
            (None, _) => Err("no proxy process (direct)".to_string()),
            _ => Err("proxy CPU unreadable".to_string()),
        };
        let tests: Vec<&str> = if size > 1_000 {
            vec!["SET"]
        } else {
            vec!["SET", "GET"]
        };
        for op in &tests {
            let v = res.as_ref().map_err(Clone::clone).and_then(|rows| {
                rows.iter()
                    .find(|(k, _)| k == op)
                    .map(|(_, x)| *x)
                    .ok_or_else(|| format!("no {op} row"))
            });
            if size > 1_000 {
                out.push((
                    format!("{name} Gbit/s"),
                    "Gbit/s",
                    true,
                    v.map(|x| x * size as f64 * 8.0 / 1e9),
                ));
            } else {
                out.push((format!("{op} {name} ops/s"), "ops/s", true, v));
            }
        }
        let requests = n * tests.len() as u64;
        let c = match (&res, cpu) {
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => Err(e),
            (Ok(_), Ok(c)) if size > 1_000 => {
                cpu_seconds_per_gb(c, (requests * size) as f64).ok_or_else(|| "no bytes".into())
            }
            (Ok(_), Ok(c)) => cpu_us_per_op(c, requests).ok_or_else(|| "no requests".into()),
        };
        if size > 1_000 {
            out.push((format!("proxy CPU, {name}"), "s/GB", false, c));
        } else {
            out.push((format!("proxy CPU, {name}"), "us/op", false, c));
        }
    }
    out
}

/// Runs the TLS suite: `rounds` rounds, every target in turn each round.
pub fn run(rounds: u32) -> anyhow::Result<()> {
    prereq::ensure(&[REDIS, REDIS_BENCHMARK, HAPROXY, SOCAT])?;
    prereq::run(crate::cargo().args(["build", "--release", "-p", "forwarder"]))?;
    let pki = Pki::new();
    let redis = Redis::start_tls(&pki, &[]);
    let kinds: Vec<(&str, Group, Kind)> = vec![
        ("direct", Group::Terminate, Kind::Direct),
        (
            "forwarder",
            Group::Terminate,
            Kind::Forwarder { mode: "userspace" },
        ),
        ("haproxy", Group::Terminate, Kind::Haproxy),
        (
            "forwarder-uring",
            Group::Passthrough,
            Kind::Forwarder { mode: "uring" },
        ),
        (
            "forwarder-userspace",
            Group::Passthrough,
            Kind::Forwarder { mode: "userspace" },
        ),
        ("haproxy", Group::Passthrough, Kind::Haproxy),
        ("socat", Group::Passthrough, Kind::Socat),
    ];
    let targets: Vec<Target> = kinds
        .into_iter()
        .map(|(name, group, kind)| {
            let mut t = start(&kind, group, &pki, redis.addr()).unwrap_or_else(|e| {
                eprintln!("bench tls: {name} absent: {e:#}");
                Target {
                    name: String::new(),
                    group,
                    kind: kind.clone(),
                    addr: redis.addr(),
                    proc: None,
                    absent: Some(format!("{e:#}")),
                    _dir: None,
                }
            });
            t.name = name.to_string();
            t
        })
        .collect();
    // samples[target][row]
    let mut rows: Vec<(String, &'static str, bool)> = Vec::new();
    let mut samples: Vec<Vec<Result<Vec<f64>, String>>> =
        targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        eprintln!("bench tls: round {}/{rounds}", round + 1);
        for (i, t) in targets.iter().enumerate() {
            if t.absent.is_some() {
                continue;
            }
            for (j, (name, unit, higher, v)) in measure(t, &pki).into_iter().enumerate() {
                if rows.len() <= j {
                    rows.push((name, unit, higher));
                }
                if samples[i].len() <= j {
                    samples[i].push(Ok(Vec::new()));
                }
                match (&mut samples[i][j], v) {
                    (Ok(s), Ok(x)) => s.push(x),
                    (slot @ Ok(_), Err(e)) => *slot = Err(e),
                    (Err(_), _) => {}
                }
            }
        }
    }
    let summary = |i: usize, j: usize| -> Result<Summary, String> {
        if let Some(why) = &targets[i].absent {
            return Err(why.clone());
        }
        match samples[i].get(j) {
            Some(Ok(s)) => summarize(s).ok_or_else(|| "no samples".into()),
            Some(Err(e)) => Err(e.clone()),
            None => Err("not measured".into()),
        }
    };
    let mut md = format!(
        "TLS (`cargo xtask bench tls`, {rounds} rounds): redis-benchmark --tls with a client \
         certificate against redis-server --tls-port (tls-auth-clients yes). Cells: median; \
         `d` = ratio to direct, `p` = ratio to HAProxy in the same group.\n"
    );
    for (group, title) in [
        (
            Group::Terminate,
            "terminate+originate (the proxy ends the client's TLS and opens its own to Redis)",
        ),
        (
            Group::Passthrough,
            "passthrough (the client's TLS goes through untouched; checks over TLS)",
        ),
    ] {
        let idx: Vec<usize> = std::iter::once(0)
            .chain((1..targets.len()).filter(|&i| targets[i].group == group))
            .collect();
        let haproxy = idx
            .iter()
            .copied()
            .find(|&i| matches!(targets[i].kind, Kind::Haproxy));
        let _ = write!(md, "\n**{title}**\n\n| row |");
        for &i in &idx {
            let _ = write!(md, " {} |", targets[i].name);
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(idx.len()));
        md.push('\n');
        for (j, (name, unit, _)) in rows.iter().enumerate() {
            let _ = write!(md, "| {name} ({unit}) |");
            let direct = summary(0, j).ok().map(|s| s.median);
            let peer = haproxy.and_then(|h| summary(h, j).ok()).map(|s| s.median);
            for &i in &idx {
                let cell = match summary(i, j) {
                    Ok(s) => {
                        let mut c = fmt(s.median);
                        let mut ratios = Vec::new();
                        if let Some(d) = direct.filter(|_| i != 0 && !name.starts_with("proxy")) {
                            ratios.push(format!("{:.2}d", s.median / d));
                        }
                        if let Some(p) = peer.filter(|_| Some(i) != haproxy && i != 0) {
                            ratios.push(format!("{:.2}p", s.median / p));
                        }
                        if !ratios.is_empty() {
                            let _ = write!(c, " ({})", ratios.join(" "));
                        }
                        c
                    }
                    Err(_) if i == 0 && name.starts_with("proxy") => "–".to_string(),
                    Err(why) => format!("absent: {}", why.lines().next().unwrap_or("")),
                };
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
    }
    println!("\n{md}");
    let path = crate::root().join("bench/results/tls.md");
    std::fs::write(&path, &md)?;
    eprintln!("bench tls: wrote {}", path.display());
    Ok(())
}

/// A value with three significant digits or so.
fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
