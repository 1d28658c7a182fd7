//! The targets a scenario measures, and the backends behind them: how each is started, configured
//! and proven ready (a real request through it) before it is measured. A target that cannot be
//! started is kept, absent, with the first line of its reason.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use harness::{free_port, http_get, wait_until, Conn, Proc, Redis, Reply};

use super::first_line;
use super::tools::echo_once;
use crate::prereq::{HAPROXY, IPERF3, NGINX, SOCAT};

/// What the backend is, which decides the health check of each proxy and the readiness probe.
#[derive(Clone, Copy, PartialEq)]
pub enum Backend {
    Redis,
    Iperf,
    Echo,
}

#[derive(Clone)]
pub enum Kind {
    Direct,
    Forwarder(String),
    Haproxy { splice: bool },
    Nginx,
    Socat,
}

pub struct Target {
    pub name: String,
    pub kind: Kind,
    pub addr: SocketAddr,
    proc: Option<Proc>,
    pub absent: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // socat and nginx run in their own process groups: socat's per-connection children and
        // nginx's workers go with them.
        if let (Kind::Socat | Kind::Nginx, Some(pid)) = (&self.kind, self.pid()) {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The binaries built for the run.
pub struct Bins {
    /// The forwarder binary, or why there is none.
    pub forwarder: Result<PathBuf, String>,
    pub loadgen: PathBuf,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Keeps a backend process alive until dropped.
pub type Guard = Box<dyn std::any::Any>;

impl Backend {
    /// Starts the backend on a free loopback port; `missing` holds the comparison programs that
    /// are not installed, and why.
    pub fn start(
        self,
        bins: &Bins,
        missing: &BTreeMap<&str, String>,
    ) -> anyhow::Result<(Guard, SocketAddr)> {
        match self {
            Backend::Redis => {
                let r = Redis::start();
                let addr = r.addr();
                Ok((Box::new(r), addr))
            }
            Backend::Iperf => {
                if let Some(why) = missing.get(IPERF3.program) {
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
                Ok((Box::new(p), addr))
            }
            Backend::Echo => {
                let addr = loopback(free_port());
                let mut p = Proc::spawn(
                    Command::new(&bins.loadgen)
                        .args(["echo", "--listen", &addr.to_string()])
                        .stdout(Stdio::null()),
                )?;
                wait_listening(addr, &mut p).context("loadgen echo")?;
                Ok((Box::new(p), addr))
            }
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

/// Every target of a run, named as in the table, for the given forwarder modes.
pub fn target_kinds(modes: &[String]) -> Vec<(String, Kind)> {
    let mut kinds = vec![("direct".to_string(), Kind::Direct)];
    for m in modes {
        kinds.push((format!("forwarder-{m}"), Kind::Forwarder(m.clone())));
    }
    kinds.push(("haproxy".into(), Kind::Haproxy { splice: false }));
    kinds.push(("haproxy-splice".into(), Kind::Haproxy { splice: true }));
    kinds.push(("nginx".into(), Kind::Nginx));
    kinds.push(("socat".into(), Kind::Socat));
    kinds
}

/// Starts every target in front of `backend`; one that fails is absent with its reason.
pub fn start_targets(
    backend: SocketAddr,
    bk: Backend,
    modes: &[String],
    bins: &Bins,
    missing: &BTreeMap<&str, String>,
) -> Vec<Target> {
    target_kinds(modes)
        .into_iter()
        .map(|(name, kind)| {
            let program = match &kind {
                Kind::Haproxy { .. } => Some(HAPROXY.program),
                Kind::Nginx => Some(NGINX.program),
                Kind::Socat => Some(SOCAT.program),
                Kind::Direct | Kind::Forwarder(_) => None,
            };
            let started = match program.and_then(|p| missing.get(p)) {
                Some(why) => Err(anyhow::anyhow!("{why}")),
                None => start_target(&kind, backend, bk, bins),
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
        Kind::Nginx => {
            let module = nginx_stream_module().context("ngx_stream_module.so not found")?;
            let d = dir.path();
            let conf = d.join("nginx.conf");
            let log = d.join("error.log");
            std::fs::write(&conf, nginx_config(&module, d, cpus(), listen, backend))?;
            // -e: the startup error log too is ours, not /var/log/nginx/error.log. Its own process
            // group, so that the workers can be killed with the master.
            let mut p = Proc::spawn(
                Command::new("nginx")
                    .arg("-p")
                    .arg(d)
                    .arg("-c")
                    .arg(&conf)
                    .arg("-e")
                    .arg(&log)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0),
            )?;
            let ready =
                wait_listening(listen, &mut p).and_then(|()| wait_ready(listen, bk, &mut p));
            if let Err(e) = ready {
                // Kill the workers too, now: the Target that would do it is not built.
                if let Some(pid) = i32::try_from(p.pid())
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                match log_error(&log, &["[emerg]", "[alert]", "[crit]"]) {
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

/// Where Debian's libnginx-mod-stream put the stream module (/usr/lib/nginx/modules, with a link
/// in /usr/share/nginx/modules on some releases).
pub fn nginx_stream_module() -> Option<PathBuf> {
    ["/usr/lib/nginx/modules", "/usr/share/nginx/modules"]
        .iter()
        .map(|d| Path::new(d).join("ngx_stream_module.so"))
        .find(|p| p.is_file())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// nginx as a TCP proxy: one worker per CPU, `reuseport` (a listening socket per worker, as
/// HAProxy's threads and the forwarder's workers share the accepts), Nagle off towards the
/// server, timeouts like the others'.
fn nginx_config(
    module: &Path,
    dir: &Path,
    workers: usize,
    listen: SocketAddr,
    backend: SocketAddr,
) -> String {
    let (m, d) = (module.display(), dir.display());
    format!(
        "load_module {m};\nworker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nworker_rlimit_nofile 20000;\n\
         events {{\n  worker_connections 10000;\n}}\n\
         stream {{\n  server {{\n    listen {listen} reuseport backlog=1024;\n    \
         proxy_pass {backend};\n    tcp_nodelay on;\n    proxy_timeout 60s;\n    \
         proxy_connect_timeout 5s;\n  }}\n}}\n"
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
        let n = nginx_config(
            Path::new("/usr/lib/nginx/modules/ngx_stream_module.so"),
            Path::new("/tmp/x"),
            2,
            l,
            b,
        );
        assert!(n.starts_with("load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"));
        assert!(n.contains("worker_processes 2;\ndaemon off;\npid /tmp/x/nginx.pid;\n"));
        assert!(n.contains("listen 127.0.0.1:1000 reuseport backlog=1024;\n"));
        assert!(n.contains("proxy_pass 127.0.0.1:2000;\n"));
        let f = forwarder_config("uring", l, loopback(3000), b, Backend::Iperf);
        assert!(f.contains("mode = \"uring\"") && f.contains("kind = \"tcp-check\""));
    }
}
