//! The test harness (crate `harness`): real `redis-server` and Sentinel processes and the
//! forwarder binary on free loopback ports, reaped on drop so no test leaks a process or a port.
//! The end-to-end suite (`tests/tests/`) runs on it, and so do `cargo xtask lab` and
//! `cargo xtask bench`.
//!
//! The data path under test comes from `FORWARDER_MODE` (set by `cargo xtask test`, which runs
//! the suite once per mode); the binary from `FORWARDER_BIN` (default: the workspace's
//! `target/debug/forwarder`).
#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use health::resp::Reply;

pub mod endpoints;
pub mod hostile;

/// A port that was free a moment ago. Callers retry if it is taken by the time they bind.
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of an installed `tool`; panics saying how to install `package` when it is missing.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run `cargo xtask test` as root, or `apt-get install -y {package}`");
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` as a reaped-on-drop child.
    pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
        Ok(Proc {
            child: Some(cmd.spawn()?),
        })
    }

    /// The child's pid; 0 once it has been reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (e.g. `libc::SIGKILL`, `libc::SIGSTOP`); a no-op once the process is reaped.
    /// Delivery errors are ignored: the child may have exited on its own.
    ///
    /// # Panics
    /// If `sig` is not a named signal (real-time signals are not supported).
    pub fn signal(&self, sig: i32) {
        let signal = rustix::process::Signal::from_named_raw(sig)
            .unwrap_or_else(|| panic!("Proc::signal: {sig} is not a named signal number"));
        if let Some(c) = &self.child {
            let pid = i32::try_from(c.id()).expect("pid fits i32");
            let pid = rustix::process::Pid::from_raw(pid).expect("a child's pid is positive");
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Kills and reaps the process now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status.code().unwrap_or(-1));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real redis-server on a free loopback port.
pub struct Redis {
    /// Its port on 127.0.0.1 (kept to restart it on the same one with [`Redis::start_on`]).
    pub port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a server with no persistence on a free port; waits until it answers PING.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Like [`Redis::start`], with `extra` command-line arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let bin = require("redis-server", "redis-server");
        for _ in 0..20 {
            let port = free_port();
            if let Some(r) = Redis::try_start(&bin, port, extra) {
                return r;
            }
        }
        panic!("redis-server did not start after 20 attempts");
    }

    /// A master and its replica, replication established.
    pub fn pair() -> (Redis, Redis) {
        let master = Redis::start();
        let replica = Redis::start();
        replica.replicaof(Some(&master));
        assert!(
            wait_until(Duration::from_secs(10), || replica
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up")),
            "replication did not come up"
        );
        (master, replica)
    }

    /// Starts a server on `port` (e.g. to restart one that was killed).
    pub fn start_on(port: u16, extra: &[&str]) -> Redis {
        let bin = require("redis-server", "redis-server");
        for _ in 0..50 {
            if let Some(r) = Redis::try_start(&bin, port, extra) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn try_start(bin: &PathBuf, port: u16, extra: &[&str]) -> Option<Redis> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_s = port.to_string();
        let mut args = vec![
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ];
        args.extend_from_slice(extra);
        let child = Command::new(bin)
            .args(&args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut proc = Proc { child: Some(child) };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let up = wait_until(Duration::from_secs(5), || {
            if proc.wait_exit(Duration::ZERO).is_some() {
                return true;
            }
            Conn::open(addr)
                .and_then(|mut c| c.cmd(&["PING"]))
                .is_ok_and(|r| r == Reply::Simple("PONG".into()))
        });
        if !up || proc.child.is_none() {
            proc.kill();
            return None;
        }
        Some(Redis {
            port,
            proc,
            _dir: dir,
        })
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Runs one command on a fresh direct connection.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        Conn::open(self.addr())
            .and_then(|mut c| c.cmd(args))
            .unwrap_or_else(|e| panic!("redis {}: {args:?}: {e}", self.port))
    }

    /// The value of `field` in `INFO section`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        match self.cmd(&["INFO", section]) {
            Reply::Bulk(Some(b)) => info_field(&String::from_utf8_lossy(&b), field),
            _ => None,
        }
    }

    /// Makes this server a replica of `master`, or a master again with `None` (`REPLICAOF NO
    /// ONE`); panics unless Redis says OK. Does not wait for the sync.
    pub fn replicaof(&self, master: Option<&Redis>) {
        let r = match master {
            Some(m) => self.cmd(&["REPLICAOF", "127.0.0.1", &m.port.to_string()]),
            None => self.cmd(&["REPLICAOF", "NO", "ONE"]),
        };
        assert_eq!(r, Reply::Simple("OK".into()), "REPLICAOF on {}", self.port);
    }

    /// The server's process, to signal or kill it.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// The value of `field` in INFO text.
pub fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::to_string)
    })
}

/// A blocking RESP connection (direct to Redis or through the forwarder).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (within 5 s) and sets it up as [`Conn::from_stream`] does.
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Conn::from_stream(stream)
    }

    /// Wraps a connected stream: 10 s read and write timeouts, `TCP_NODELAY`.
    pub fn from_stream(stream: TcpStream) -> io::Result<Conn> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one command (as a RESP array of `args`) and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.stream
            .write_all(&health::resp::encode_command(&args))?;
        self.read_reply()
    }

    /// Reads the next reply (e.g. a pub/sub push); bytes past it stay buffered for the next
    /// call. Malformed RESP is an `InvalidData` error, EOF an `UnexpectedEof` one.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        loop {
            match health::resp::parse(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The `tcp_port` of the Redis server at the other end: who we really talk to.
    pub fn server_port(&mut self) -> io::Result<u16> {
        match self.cmd(&["INFO", "server"])? {
            Reply::Bulk(Some(b)) => info_field(&String::from_utf8_lossy(&b), "tcp_port")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| io::Error::other("no tcp_port in INFO server")),
            other => Err(io::Error::other(format!("INFO server: {other:?}"))),
        }
    }

    /// True when the peer closed or reset the connection (read returns 0 or an error other than
    /// a timeout) within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(limit));
        let mut b = [0u8; 1];
        let r = self.stream.read(&mut b);
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(10)));
        match r {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }

    /// The underlying socket (to shut it down or read its addresses); reading from it bypasses
    /// the reply buffer.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// A command prefix that runs the rest of its arguments without the capabilities BPF needs.
pub const WITHOUT_BPF_CAPS: &[&str] = &[
    "capsh",
    "--drop=cap_bpf,cap_sys_admin,cap_perfmon",
    "--",
    "-c",
    "exec \"$0\" \"$@\"",
];

/// `text` with each `{LISTEN}` replaced by a free loopback address, and those addresses.
fn with_free_ports(text: &str) -> (String, Vec<SocketAddr>) {
    let mut text = text.to_string();
    let mut listen = Vec::new();
    while text.contains("{LISTEN}") {
        let a = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        text = text.replacen("{LISTEN}", &a.to_string(), 1);
        listen.push(a);
    }
    (text, listen)
}

/// The data path mode the suite runs in.
pub fn mode() -> String {
    std::env::var("FORWARDER_MODE").unwrap_or_else(|_| "userspace".to_string())
}

/// The forwarder binary under test.
pub fn forwarder_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FORWARDER_BIN") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/forwarder");
    assert!(
        p.exists(),
        "{} does not exist: run `cargo xtask test` (or `cargo build -p forwarder` first)",
        p.display()
    );
    p
}

/// The forwarder binary, run as a real process.
pub struct Forwarder {
    proc: Proc,
    /// The admin listener (`/status`, `/metrics`), on a free loopback port.
    pub admin: SocketAddr,
    /// The address each `{LISTEN}` became, in the order they appear in the services.
    pub listen: Vec<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    /// The `[datapath]` and `[admin]` sections of the configuration file.
    header: String,
    dir: tempfile::TempDir,
}

impl Forwarder {
    /// Rewrites the configuration file with `services` (same `[datapath]` and `[admin]`);
    /// `{LISTEN}` becomes a free port each time. Returns those addresses. The daemon picks the
    /// file up on SIGHUP or `forwarder reload`.
    pub fn rewrite(&self, services: &str) -> Vec<SocketAddr> {
        let (text, listen) = with_free_ports(services);
        self.write_config(&format!("{}{text}", self.header));
        listen
    }

    /// Replaces the configuration file with `text` as is.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("forwarder.toml"), text).expect("write config");
    }

    /// Starts the forwarder with `services` (TOML `[[service]]` blocks in which `{LISTEN}` is
    /// replaced by a free port, once per service). The `[datapath]` and `[admin]` sections are
    /// added here. Waits until every listener accepts.
    pub fn start(services: &str) -> Forwarder {
        let m = mode();
        Forwarder::launch(services, &format!("mode = \"{m}\""), &[], &[], Some(&m))
    }

    /// Like `start`, with extra environment variables for the forwarder process.
    pub fn start_env(services: &str, env: &[(&str, &str)]) -> Forwarder {
        let m = mode();
        Forwarder::launch(services, &format!("mode = \"{m}\""), &[], env, Some(&m))
    }

    /// Like `start`, with `datapath` as the body of the `[datapath]` section, run through
    /// `wrapper` (a command prefix that execs the rest of its arguments, e.g. `deny-io-uring`).
    pub fn start_with(services: &str, datapath: &str, wrapper: &[&str]) -> Forwarder {
        Forwarder::launch(services, datapath, wrapper, &[], None)
    }

    fn launch(
        services: &str,
        datapath: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
        expect: Option<&str>,
    ) -> Forwarder {
        for _ in 0..10 {
            match Forwarder::try_start(services, datapath, wrapper, env, expect) {
                Ok(f) => return f,
                Err(e) if e.contains("in use") => continue,
                Err(e) => panic!("forwarder did not start: {e}"),
            }
        }
        panic!("forwarder did not start: ports kept being taken");
    }

    fn try_start(
        services: &str,
        datapath: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
        expect: Option<&str>,
    ) -> Result<Forwarder, String> {
        let (text, listen) = with_free_ports(services);
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let header = format!("[datapath]\n{datapath}\n\n[admin]\nlisten = \"{admin}\"\n\n");
        let config = format!("{header}{text}");
        let (proc, log, dir) = spawn_forwarder(wrapper, env, &["run"], &config);
        let mut f = Forwarder {
            proc,
            admin,
            listen,
            log,
            header,
            dir,
        };
        // The admin listener starts after every service listener is bound, so an answer from
        // it means the daemon is ready (probing the service ports would count as sessions).
        let ready = wait_until(Duration::from_secs(10), || {
            f.proc.wait_exit(Duration::ZERO).is_some() || f.status().is_some()
        });
        if !ready || f.proc.child.is_none() {
            f.proc.kill();
            return Err(f.log_text());
        }
        // The suite must exercise the mode it claims to: no silent fallback.
        let running = f
            .status()
            .and_then(|s| s["datapath"].as_str().map(str::to_string));
        if let Some(mode) = expect.filter(|m| *m != "auto") {
            assert_eq!(
                running.as_deref(),
                Some(mode),
                "the forwarder runs another data path than FORWARDER_MODE"
            );
        }
        Ok(f)
    }

    /// The forwarder's stderr so far.
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// `GET /status` from the admin listener, parsed.
    pub fn status(&self) -> Option<serde_json::Value> {
        let body = http_get(self.admin, "/status").ok()?;
        serde_json::from_str(&body).ok()
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }

    /// A service's counter from `/status`, e.g. `("mymaster", "rejected", "maxconn")`.
    pub fn counter(&self, service: &str, group: &str, name: &str) -> u64 {
        self.service_status(service)
            .and_then(|s| s["stats"][group][name].as_u64())
            .unwrap_or(0)
    }

    /// The servers `service` checks, per `/status`.
    pub fn servers(&self, service: &str) -> Vec<String> {
        self.service_status(service)
            .and_then(|s| {
                s["servers"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v["addr"].as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The entry of `service` in `/status`; `None` when there is no such service or the admin
    /// listener does not answer.
    pub fn service_status(&self, service: &str) -> Option<serde_json::Value> {
        let st = self.status()?;
        st["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == service)
            .cloned()
    }

    /// The master the forwarder routes `service` to, per `/status`.
    pub fn master(&self, service: &str) -> Option<SocketAddr> {
        self.service_status(service)?["master"]
            .as_str()?
            .parse()
            .ok()
    }

    /// The forwarder's process, to signal it (SIGHUP reloads) or kill it.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// Runs `forwarder <args> --config <file with text>` and returns the process and its log lines.
fn spawn_forwarder(
    wrapper: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
    config: &str,
) -> (Proc, Arc<Mutex<Vec<String>>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("forwarder.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = match wrapper.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(forwarder_bin());
            c
        }
        None => Command::new(forwarder_bin()),
    };
    let mut child = cmd
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn forwarder");
    let log = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = child.stderr.take() {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = log.lock() {
                    l.push(line);
                }
            }
        });
    }
    (Proc { child: Some(child) }, log, dir)
}

/// Runs `forwarder check --config` (or `run`) on `config` to completion; returns (exit code, stderr).
pub fn forwarder_exit(subcommand: &str, config: &str) -> (i32, String) {
    forwarder_exit_with(&[], subcommand, config)
}

/// `forwarder_exit` run through the command prefix `wrapper`.
pub fn forwarder_exit_with(wrapper: &[&str], subcommand: &str, config: &str) -> (i32, String) {
    let (mut proc, log, _dir) = spawn_forwarder(wrapper, &[], &[subcommand], config);
    let code = proc.wait_exit(Duration::from_secs(20));
    // Let the reader thread drain stderr.
    std::thread::sleep(Duration::from_millis(100));
    let text = log.lock().map(|l| l.join("\n")).unwrap_or_default();
    (code.unwrap_or(-1), text)
}

/// A minimal HTTP/1.0 GET (the admin listener speaks HTTP/1.1 and answers it).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(io::Error::other(format!("GET {path}: {out}"))),
    }
}

/// A `tcp_server` handler: echoes until EOF, then half-closes.
pub fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// A `[[service]]` named `name` on `listen` for a plain TCP `backend` (tcp-check `connect`
/// every 200 ms, rise 1), with `extra` lines in the service table.
pub fn plain_service(name: &str, listen: &str, backend: SocketAddr, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nservers = [\"{backend}\"]\n{extra}\n\n\
         [service.check]\nkind = \"tcp-check\"\nsteps = [\"connect\"]\ninterval = \"200ms\"\nrise = 1\n\n"
    )
}

/// A Redis service named "mymaster" that follows `sentinels` (checks every 200 ms, rise and fall
/// 2), listing `servers` (none: discovered from the Sentinels), holding clients up to `queue`.
pub fn sentinel_service(servers: &[SocketAddr], sentinels: &[SocketAddr], queue: &str) -> String {
    let quoted = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let servers = match servers {
        [] => String::new(),
        s => format!("servers = [{}]", quoted(s)),
    };
    format!(
        r#"[[service]]
name = "mymaster"
listen = "{{LISTEN}}"
{servers}
timeout = {{ connect = "1s", client = "30s", server = "30s", queue = "{queue}" }}

[service.check]
kind = "redis-master"
interval = "200ms"
rise = 2
fall = 2
timeout = "500ms"

[service.sentinel]
addresses = [{}]
master_name = "mymaster"
"#,
        quoted(sentinels)
    )
}

/// A TCP server on a free port run by a thread per connection with `handler`; stops with the
/// test process.
pub fn tcp_server(handler: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || handler(s));
        }
    });
    addr
}

/// A client socket bound to a given local address (e.g. 127.0.0.2) before connecting.
pub fn connect_from(local: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((local, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// A real Redis Sentinel on a free loopback port, monitoring one master.
pub struct Sentinel {
    /// Its port on 127.0.0.1.
    pub port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a Sentinel watching `master` under `name` with `quorum` and `down_after_ms`.
    pub fn start(name: &str, master: SocketAddr, quorum: u32, down_after_ms: u32) -> Sentinel {
        Sentinel::start_many(&[(name, master)], quorum, down_after_ms)
    }

    /// Starts a Sentinel watching several masters, each under its name.
    pub fn start_many(masters: &[(&str, SocketAddr)], quorum: u32, down_after_ms: u32) -> Sentinel {
        let bin = require("redis-sentinel", "redis-sentinel");
        for _ in 0..20 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let conf = dir.path().join("sentinel.conf");
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n",
                dir = dir.path().display(),
            );
            for (name, master) in masters {
                text.push_str(&format!(
                    "sentinel monitor {name} {ip} {mport} {quorum}\n\
                     sentinel down-after-milliseconds {name} {down_after_ms}\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    ip = master.ip(),
                    mport = master.port(),
                ));
            }
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let child = Command::new(&bin)
                .arg(&conf)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            let mut proc = Proc { child: Some(child) };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let up = wait_until(Duration::from_secs(5), || {
                proc.wait_exit(Duration::ZERO).is_some()
                    || Conn::open(addr)
                        .and_then(|mut c| c.cmd(&["PING"]))
                        .is_ok_and(|r| r == Reply::Simple("PONG".into()))
            });
            if up && proc.child.is_some() {
                return Sentinel {
                    port,
                    _proc: proc,
                    _dir: dir,
                };
            }
        }
        panic!("redis-sentinel did not start after 20 attempts");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Whether this Sentinel knows `name`'s replica and two other Sentinels, i.e. could take
    /// part in a failover of it.
    pub fn ready(&self, name: &str) -> bool {
        let Ok(mut c) = Conn::open(self.addr()) else {
            return false;
        };
        let Ok(Reply::Array(Some(info))) = c.cmd(&["SENTINEL", "master", name]) else {
            return false;
        };
        let field = |key: &str| {
            info.chunks(2).find_map(|kv| match kv {
                [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == key.as_bytes() => {
                    String::from_utf8(v.clone()).ok()
                }
                _ => None,
            })
        };
        field("num-slaves").as_deref() == Some("1")
            && field("num-other-sentinels").as_deref() == Some("2")
    }
}
