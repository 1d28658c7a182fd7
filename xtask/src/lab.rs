//! `cargo xtask lab`: the seed guide's HA setup on loopback — a master, a replica, three
//! Sentinels, and the forwarder in front — with a one-line status every few seconds, and what to
//! try at a failover. Ctrl-C, SIGTERM or a closed terminal (SIGHUP) stop it and everything it
//! started; its children die with it even when it is killed (PR_SET_PDEATHSIG, see
//! [`harness::dies_with_parent`]).

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use harness::{http_get, wait_until, Proc, Redis, Sentinel};

use crate::prereq::{self, REDIS, REDIS_CLI, SENTINEL};

#[derive(Args)]
pub struct LabArgs {
    /// Port the forwarder listens on (127.0.0.1); taken, it is an error naming who holds it.
    #[arg(long, default_value_t = 6379)]
    port: u16,
    /// Data path mode.
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 3)]
    every: u64,
}

fn port_from(start: u16) -> anyhow::Result<u16> {
    (start..start.saturating_add(100))
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .with_context(|| format!("no free port in {start}..{}", start.saturating_add(100)))
}

/// Fails when `port` is taken on 127.0.0.1, naming the process that holds it when `ss` can tell.
fn free_or_say_who(port: u16) -> anyhow::Result<()> {
    if TcpListener::bind(("127.0.0.1", port)).is_ok() {
        return Ok(());
    }
    let holder = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|t| !t.is_empty());
    let who = match holder {
        Some(line) if line.contains("users:") => {
            format!("held by {}", &line[line.find("users:").unwrap_or(0)..])
        }
        Some(line) => format!("held by a process of another user ({line})"),
        None => "held by another process".into(),
    };
    bail!(
        "port {port} is taken ({who}): stop that process, or run `cargo xtask lab --port PORT` \
         with a free port"
    )
}

pub fn run(args: LabArgs) -> anyhow::Result<()> {
    // Before anything slow: a taken port is the most likely reason the lab cannot run.
    free_or_say_who(args.port)?;
    prereq::ensure(&[REDIS, SENTINEL, REDIS_CLI])?;
    if args.mode == "sockmap" {
        // The BPF program is embedded in the forwarder only when clang and the headers are there.
        crate::ebpf::prerequisites()?;
    }
    eprintln!("lab: building the forwarder (cargo build --release -p forwarder)");
    prereq::run(crate::cargo().args(["build", "--release", "-p", "forwarder"]))?;
    let bin = crate::root().join("target/release/forwarder");

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C / SIGTERM / SIGHUP handler")?;
    }

    eprintln!("lab: starting a master, a replica and three Sentinels on loopback");
    let master = Redis::start();
    let replica = Redis::start();
    replica.replicaof(Some(&master));
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start("mymaster", master.addr(), 2, 3000))
        .collect();

    let port = args.port;
    let admin_port = port_from(9121)?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let quoted = |addrs: Vec<SocketAddr>| {
        addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = format!(
        r#"# Written by `cargo xtask lab`.
[datapath]
mode = "{mode}"

[admin]
listen = "{admin}"

[[service]]
name = "mymaster"
listen = "{listen}"
servers = [{servers}]
allow = ["127.0.0.0/8"]
timeout = {{ connect = "1s", client = "1h", server = "1h", queue = "10s" }}

[service.check]
kind = "redis-master"
interval = "1s"
rise = 1
fall = 1
timeout = "1s"

[service.sentinel]
addresses = [{sentinels}]
master_name = "mymaster"
"#,
        mode = args.mode,
        servers = quoted(vec![master.addr(), replica.addr()]),
        sentinels = quoted(sentinels.iter().map(Sentinel::addr).collect()),
    );
    let dir = std::env::temp_dir().join(format!("forwarder-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg_path = dir.join("forwarder.toml");
    std::fs::write(&cfg_path, &config)?;
    let log_path = dir.join("forwarder.log");
    let log = std::fs::File::create(&log_path)?;

    let mut fwd = Proc::spawn(
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )
    .context("starting the forwarder")?;
    let ready = wait_until(Duration::from_secs(10), || {
        fwd.wait_exit(Duration::ZERO).is_some() || http_get(admin, "/status").is_ok()
    });
    if !ready || http_get(admin, "/status").is_err() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("the forwarder did not start:\n{text}");
    }

    println!(
        "\nThe lab is up.\n\
         \x20 forwarder   {listen}  (datapath {mode}; admin http://{admin}/status and /metrics)\n\
         \x20 master      {m}\n\
         \x20 replica     {r}\n\
         \x20 sentinels   {s}\n\
         \x20 config      {cfg}\n\
         \x20 log         {log}\n\n\
         Try the guide's failover test in another terminal:\n\
         \x20 redis-cli -p {port} info replication      # role:master, connected_slaves:1\n\
         \x20 redis-cli -p {mp} shutdown nosave         # kill the master; Sentinels promote the replica\n\
         \x20 redis-cli -p {port} info replication      # role:master again, now the other server, 0 slaves\n\
         Or a planned one, without an error for any new client ({bin}):\n\
         \x20 forwarder switchover mymaster --admin {admin}   # prints how long clients were held\n\
         \x20 forwarder server mymaster {r} drain --admin {admin}   # or maint, ready\n\
         \x20 forwarder status --admin {admin} --watch\n\
         Ctrl-C stops everything.\n",
        bin = bin.display(),
        mode = args.mode,
        m = master.addr(),
        r = replica.addr(),
        s = sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        cfg = cfg_path.display(),
        log = log_path.display(),
        mp = master.port,
    );

    let started = Instant::now();
    let limit = args.seconds.map(Duration::from_secs);
    let mut next = Instant::now();
    let mut failed_over = false;
    while !stop.load(Ordering::SeqCst) && limit.is_none_or(|l| started.elapsed() < l) {
        if fwd.wait_exit(Duration::ZERO).is_some() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the forwarder exited:\n{text}");
        }
        if Instant::now() >= next {
            let (line, routed) = status_line(admin);
            println!("{line}");
            match routed {
                Some(new) if !failed_over && new != master.addr().to_string() => {
                    failed_over = true;
                    let alive = harness::Conn::open(master.addr())
                        .and_then(|mut c| c.cmd(&["PING"]))
                        .is_ok();
                    if alive {
                        println!(
                            "\nlab: the forwarder now routes to {new} (was {}), which is still up: \
                             a planned switchover. The Sentinels make the old master a replica of \
                             {new} (the status lines show it `standby replica` soon); no client \
                             was refused meanwhile.\n",
                            master.addr()
                        );
                    } else {
                        println!("{}", after_failover(&master, &new, port));
                    }
                }
                _ => {}
            }
            next = Instant::now() + Duration::from_secs(args.every.max(1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("lab: stopping");
    fwd.signal(15);
    fwd.wait_exit(Duration::from_secs(5));
    drop(fwd);
    drop(sentinels);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What to do once the Sentinels have promoted the replica: bring the old master back, and what
/// to look for.
fn after_failover(old: &Redis, new: &str, port: u16) -> String {
    format!(
        "\nlab: failover: the forwarder now routes to {new} (was {old_addr}).\n\
         Next step of the guide's test: restart the old master as it was, in another terminal:\n\
         \x20 {cmd}\n\
         and watch it: `redis-cli -p {old_port} info replication` says role:master for a few \
         seconds, until the Sentinels make it a replica of {new} (the status lines show it `UP \
         master` and `conflicts` goes up, then `standby replica`). The forwarder never routes to \
         it (the status lines keep `-> {new}`, `redis-cli -p {port} info replication` keeps \
         answering from {new}): split-brain protection. Stop it with Ctrl-C when done; the lab \
         does not own it.\n",
        old_addr = old.addr(),
        cmd = old.command_line(),
        old_port = old.port,
    )
}

/// One status line, and the master the forwarder routes to (`None` while there is none or the
/// status cannot be read).
fn status_line(admin: SocketAddr) -> (String, Option<String>) {
    let v: serde_json::Value = match http_get(admin, "/status").map(|b| serde_json::from_str(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return (format!("status: unreadable JSON: {e}"), None),
        Err(e) => return (format!("status: {e}"), None),
    };
    let mut parts = Vec::new();
    for s in v["services"].as_array().into_iter().flatten() {
        let servers: Vec<String> = s["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|srv| {
                format!(
                    "{} {} {}",
                    srv["addr"].as_str().unwrap_or("?"),
                    match (srv["up"].as_bool(), srv["standby"].as_bool()) {
                        (Some(true), _) => "UP",
                        (_, Some(true)) => "standby",
                        _ => "DOWN",
                    },
                    srv["role"].as_str().unwrap_or("-"),
                )
            })
            .collect();
        parts.push(format!(
            "{} -> {} (gen {}, conflicts {}) | {} | active {} accepted {} bytes in/out {}/{}",
            s["name"].as_str().unwrap_or("?"),
            s["master"].as_str().unwrap_or("NO MASTER"),
            s["generation"],
            s["master_conflicts"],
            servers.join(", "),
            s["stats"]["active"],
            s["stats"]["accepted"],
            s["stats"]["bytes_client_to_server"],
            s["stats"]["bytes_server_to_client"],
        ));
    }
    let routed = v["services"][0]["master"].as_str().map(str::to_string);
    (
        format!("[{}] {}", chrono_less_now(), parts.join(" || ")),
        routed,
    )
}

/// Wall-clock HH:MM:SS (UTC) without a date-time crate.
fn chrono_less_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}
