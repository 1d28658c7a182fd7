//! The forwarder binary under test: [`Forwarder`] (a running daemon), `forwarder check|run` to
//! completion, and the admin listener's HTTP.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ChildStderr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{free_ports, wait_until, Proc};

/// A command prefix that runs the rest of its arguments without the capabilities BPF needs.
pub const WITHOUT_BPF_CAPS: &[&str] = &[
    "capsh",
    "--drop=cap_bpf,cap_sys_admin,cap_perfmon",
    "--",
    "-c",
    "exec \"$0\" \"$@\"",
];

/// `text` with each `{LISTEN}` replaced by a free loopback address, those addresses, and
/// `extra` more free loopback addresses, all distinct.
fn with_free_ports(text: &str, extra: usize) -> (String, Vec<SocketAddr>, Vec<SocketAddr>) {
    let mut text = text.to_string();
    let mut ports = free_ports(text.matches("{LISTEN}").count() + extra)
        .into_iter()
        .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)));
    let mut listen = Vec::new();
    while text.contains("{LISTEN}") {
        let a = ports.next().expect("a port per {LISTEN}");
        text = text.replacen("{LISTEN}", &a.to_string(), 1);
        listen.push(a);
    }
    (text, listen, ports.collect())
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
    log: Log,
    /// The `[datapath]` and `[admin]` sections of the configuration file.
    header: String,
    dir: tempfile::TempDir,
}

impl Forwarder {
    /// Rewrites the configuration file with `services` (same `[datapath]` and `[admin]`);
    /// `{LISTEN}` becomes a free port each time. Returns those addresses. The daemon picks the
    /// file up on SIGHUP or `forwarder reload`.
    pub fn rewrite(&self, services: &str) -> Vec<SocketAddr> {
        let (text, listen, _) = with_free_ports(services, 0);
        self.write_config(&format!("{}{text}", self.header));
        listen
    }

    /// Rewrites the configuration with `services`, its `{LISTEN}` the first listener's address
    /// (unchanged), sends SIGHUP and waits until the daemon logs one more applied reload
    /// (`reloaded: ...`), panicking with the log if none comes within 10 s.
    pub fn reload(&mut self, services: &str) {
        let applied = |f: &Forwarder| f.log_text().matches("reloaded: ").count();
        let before = applied(self);
        self.rewrite(&services.replace("{LISTEN}", &self.listen[0].to_string()));
        self.proc().signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(10), || applied(self) > before),
            "no reload applied: {}",
            self.log_text()
        );
    }

    /// Replaces the configuration file with `text` as is.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("forwarder.toml"), text).expect("write config");
    }

    /// Starts the forwarder with `services` (TOML `[[service]]` blocks in which `{LISTEN}` is
    /// replaced by a free port, once per service). The `[datapath]` and `[admin]` sections are
    /// added here. Waits until every listener accepts.
    pub fn start(services: &str) -> Forwarder {
        Forwarder::start_args(services, &[])
    }

    /// Like `start`, with extra arguments after `run` (e.g. `--log-format json`).
    pub fn start_args(services: &str, args: &[&str]) -> Forwarder {
        let m = mode();
        let datapath = format!("mode = \"{m}\"");
        Forwarder::launch(services, &datapath, &[], &[], args, Some(&m))
    }

    /// Like `start`, with extra environment variables for the forwarder process.
    pub fn start_env(services: &str, env: &[(&str, &str)]) -> Forwarder {
        let m = mode();
        Forwarder::launch(
            services,
            &format!("mode = \"{m}\""),
            &[],
            env,
            &[],
            Some(&m),
        )
    }

    /// Like `start`, with `datapath` as the body of the `[datapath]` section, run through
    /// `wrapper` (a command prefix that execs the rest of its arguments, e.g. `deny-io-uring`).
    pub fn start_with(services: &str, datapath: &str, wrapper: &[&str]) -> Forwarder {
        Forwarder::launch(services, datapath, wrapper, &[], &[], None)
    }

    fn launch(
        services: &str,
        datapath: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
        args: &[&str],
        expect: Option<&str>,
    ) -> Forwarder {
        for _ in 0..10 {
            match Forwarder::try_start(services, datapath, wrapper, env, args, expect) {
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
        args: &[&str],
        expect: Option<&str>,
    ) -> Result<Forwarder, String> {
        // The admin port too, so that it cannot be one of the listeners'.
        let (text, listen, admin) = with_free_ports(services, 1);
        let admin = admin[0];
        let header = format!("[datapath]\n{datapath}\n\n[admin]\nlisten = \"{admin}\"\n\n");
        let config = format!("{header}{text}");
        let run: Vec<&str> = std::iter::once("run").chain(args.iter().copied()).collect();
        let (proc, log, dir) = spawn_forwarder(wrapper, env, &run, &config);
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
            // Dead: its stderr ends, and the whole log (the reason it did not start) is in.
            f.log.finish();
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
        self.log.text()
    }

    /// Waits up to `limit` until the forwarder's stderr has a line containing `needle`; returns
    /// whether it has. Use it rather than `log_text().contains(..)` right after the event that
    /// logs the line: the reader thread may not have caught up yet. Gives up early once the
    /// process has exited and its stderr is read to the end (no line can come any more).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || {
            self.log.text().contains(needle) || self.log.ended()
        });
        self.log.text().contains(needle)
    }

    /// `GET /status` from the admin listener, parsed.
    pub fn status(&self) -> Option<serde_json::Value> {
        let body = http_get(self.admin, "/status").ok()?;
        serde_json::from_str(&body).ok()
    }

    /// `POST path` with `body` to the admin listener: the status code and the answer.
    ///
    /// # Panics
    /// If the admin listener does not answer at all.
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        crate::endpoints::admin_call(self.admin, "POST", path, body, None)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_text()))
    }

    /// `GET path` from the admin listener: the status code and the body.
    ///
    /// # Panics
    /// If the admin listener does not answer at all.
    pub fn get(&self, path: &str) -> (u16, String) {
        crate::endpoints::admin_request(self.admin, "GET", path, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_text()))
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").unwrap_or_default()
    }

    /// A service's counter from `/status` (`services[name].stats.<group>.<name>`), e.g.
    /// `("mymaster", "rejected", "maxconn")`.
    ///
    /// # Panics
    /// If the admin listener does not answer, or there is no such service or counter (a renamed
    /// counter must fail the test, not read as 0); the message shows the status JSON.
    pub fn counter(&self, service: &str, group: &str, name: &str) -> u64 {
        let what = format!("counter {group}.{name} of service {service:?}");
        let Some(st) = self.status() else {
            panic!(
                "{what}: the admin listener at {} does not answer\n{}",
                self.admin,
                self.log_text()
            );
        };
        let svc = st["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service));
        let Some(svc) = svc else {
            panic!("{what}: no such service in /status: {st:#}");
        };
        svc["stats"][group][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: no such counter in /status: {st:#}"))
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

    /// How many checks of `server` in `service` passed, per `/status`; 0 while the daemon does
    /// not list that server (yet).
    pub fn checks_ok(&self, service: &str, server: SocketAddr) -> u64 {
        self.service_status(service)
            .and_then(|s| {
                s["servers"].as_array()?.iter().find_map(|x| {
                    (x["addr"].as_str()? == server.to_string()).then(|| x["checks_ok"].as_u64())?
                })
            })
            .unwrap_or(0)
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

/// A child's stderr, collected line by line by a reader thread.
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    /// The reader; it ends at EOF, i.e. once the child (and whatever inherited its stderr) exited.
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Log {
    /// Starts a thread reading `stderr` into the log.
    fn read(stderr: ChildStderr) -> Log {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            }
        });
        Log {
            lines,
            reader: Mutex::new(Some(reader)),
        }
    }

    /// The lines so far, joined by newlines.
    fn text(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Whether the reader has reached EOF: nothing more will be logged.
    fn ended(&self) -> bool {
        self.reader
            .lock()
            .map(|r| r.as_ref().is_none_or(JoinHandle::is_finished))
            .unwrap_or(true)
    }

    /// Waits for the reader to reach EOF: call it only once the child has exited, then the log
    /// is complete.
    fn finish(&self) {
        let reader = self.reader.lock().ok().and_then(|mut r| r.take());
        if let Some(r) = reader {
            r.join().expect("the stderr reader thread panicked");
        }
    }
}

/// Runs `forwarder <args> --config <file with text>` and returns the process and its log.
fn spawn_forwarder(
    wrapper: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
    config: &str,
) -> (Proc, Log, tempfile::TempDir) {
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
    let mut child = crate::dies_with_parent(&mut cmd)
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
    let log = Log::read(child.stderr.take().expect("stderr is piped"));
    (Proc { child: Some(child) }, log, dir)
}

/// Runs `forwarder check --config` (or `run`) on `config` to completion; returns (exit code,
/// stderr); the code is -1 when a signal ended it.
///
/// # Panics
/// If it is still running after 20 s (it is killed first); the message shows its stderr.
pub fn forwarder_exit(subcommand: &str, config: &str) -> (i32, String) {
    forwarder_exit_with(&[], subcommand, config)
}

/// `forwarder_exit` run through the command prefix `wrapper`.
pub fn forwarder_exit_with(wrapper: &[&str], subcommand: &str, config: &str) -> (i32, String) {
    let (mut proc, log, _dir) = spawn_forwarder(wrapper, &[], &[subcommand], config);
    let limit = Duration::from_secs(20);
    let code = proc.wait_exit(limit);
    // Killed if it still runs; either way it has exited, so its stderr reaches EOF.
    proc.kill();
    log.finish();
    let text = log.text();
    match code {
        Some(code) => (code, text),
        None => panic!("`forwarder {subcommand}` did not exit within {limit:?}: killed\n{text}"),
    }
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
