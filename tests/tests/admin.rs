//! The admin interfaces, which do not depend on the data path: `forwarder status` and the status
//! page in a real browser show the running state; with `[admin] token` set, every admin endpoint
//! (`/`, `/status`, `/metrics`, `POST /reload`) and the `forwarder status` and `forwarder reload`
//! commands are refused (401) without the token or with a wrong one, and served with the right one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::endpoints::admin_request;
use harness::{
    echo, forwarder_bin, free_ports, plain_service, tcp_server, wait_until, Forwarder, Proc,
};

const TOKEN: &str = "the-right-admin-token";
const WRONG: &str = "a-wrong-admin-token-x";

/// A configuration whose admin listener on `admin` wants `token`.
fn config(admin: SocketAddr, listen: SocketAddr, backend: SocketAddr, token: &str) -> String {
    format!(
        "[datapath]\nmode = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\ntoken = \"{token}\"\n\n{}",
        harness::mode(),
        plain_service("plain", &listen.to_string(), backend, "")
    )
}

/// The daemon under test, its configuration file and its log file.
struct Daemon {
    _proc: Proc,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
    /// The configuration with `WRONG` as its token (same listeners).
    wrong: String,
}

impl Daemon {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts the forwarder with the token (the harness's `Forwarder` asks `/status` without one),
/// ready once `/status` answers the token.
fn start() -> Daemon {
    let backend = tcp_server(echo);
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(2);
        let at = |i: usize| SocketAddr::from((Ipv4Addr::LOCALHOST, ports[i]));
        let (admin, listen) = (at(0), at(1));
        let path = dir.path().join("forwarder.toml");
        std::fs::write(&path, config(admin, listen, backend, TOKEN)).unwrap();
        let log = dir.path().join("forwarder.log");
        let mut proc = Proc::spawn(
            Command::new(forwarder_bin())
                .args(["run", "--config"])
                .arg(&path)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        )
        .expect("spawn forwarder");
        let ready = wait_until(Duration::from_secs(10), || {
            proc.wait_exit(Duration::ZERO).is_some()
                || admin_request(admin, "GET", "/status", Some(TOKEN)).is_ok_and(|(c, _)| c == 200)
        });
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if ready && proc.pid() != 0 {
            return Daemon {
                _proc: proc,
                admin,
                config: path,
                log,
                wrong: config(admin, listen, backend, WRONG),
                dir,
            };
        }
        assert!(text.contains("in use"), "forwarder did not start: {text}");
    }
    panic!("forwarder did not start: ports kept being taken");
}

/// `forwarder <cmd> --config <config>` (plus `extra`); whether it succeeded, and what it
/// printed.
fn cli(cmd: &str, config: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(forwarder_bin())
        .arg(cmd)
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("run forwarder");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_admin_endpoint_wants_the_token() {
    let d = start();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("POST", "/reload"),
    ] {
        for token in [None, Some(WRONG), Some("")] {
            let (code, body) = admin_request(d.admin, method, path, token).unwrap();
            assert_eq!(code, 401, "{method} {path} with {token:?}: {body}");
            assert!(!body.contains("plain"), "{method} {path} leaked: {body}");
        }
    }
    // Nothing was reloaded by the refused requests.
    assert!(!d.log_text().contains("reloaded:"), "{}", d.log_text());

    let (code, body) = admin_request(d.admin, "GET", "/status", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["services"][0]["name"], "plain", "{st}");
    let (code, body) = admin_request(d.admin, "GET", "/metrics", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("forwarder_connections_active{service=\"plain\"}"),
        "{body}"
    );
    let (code, body) = admin_request(d.admin, "GET", "/", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("plain"), "{body}");
    let (code, body) = admin_request(d.admin, "POST", "/reload", Some(TOKEN)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("reloaded: 1 unchanged"), "{body}");
}

#[test]
fn forwarder_status_and_reload_send_the_token_of_their_config() {
    let d = start();
    let admin = d.admin.to_string();
    // No token: a --config that does not exist, the listener given with --admin.
    let none = d.dir.path().join("absent.toml");
    // A wrong token: the same file with another token.
    let wrong = d.dir.path().join("wrong.toml");
    std::fs::write(&wrong, &d.wrong).unwrap();
    for cmd in ["status", "reload"] {
        let (ok, text) = cli(cmd, &none, &["--admin", &admin]);
        assert!(!ok, "{cmd} without a token: {text}");
        assert!(text.contains("401"), "{cmd} without a token: {text}");
        let (ok, text) = cli(cmd, &wrong, &[]);
        assert!(!ok, "{cmd} with a wrong token: {text}");
        assert!(text.contains("401"), "{cmd} with a wrong token: {text}");
    }
    assert!(!d.log_text().contains("reloaded:"), "{}", d.log_text());

    let (ok, text) = cli("status", &d.config, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("service plain"), "{text}");
    let (ok, text) = cli("reload", &d.config, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("reloaded: 1 unchanged"), "{text}");
}

/// A session through the forwarder's first listener to its echo server, shown to work.
fn echo_session(f: &Forwarder) -> TcpStream {
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "{}",
        f.log_text()
    );
    let mut c = TcpStream::connect(f.listen[0]).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 4];
    c.write_all(b"ping").expect("write");
    c.read_exact(&mut got).expect("echo");
    assert_eq!(&got, b"ping");
    c
}

#[test]
fn forwarder_status_prints_the_running_state() {
    let f = Forwarder::start(&plain_service("plain", "{LISTEN}", tcp_server(echo), ""));
    let _c = echo_session(&f);
    let out = harness::run_within(
        Command::new(harness::forwarder_bin()).args(["status", "--admin", &f.admin.to_string()]),
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("service plain"), "{text}");
    assert!(
        text.contains(&format!("master {}", f.master("plain").unwrap())),
        "{text}"
    );
    assert!(text.contains("sessions active 1"), "{text}");
}

#[test]
fn status_page_renders_in_a_real_browser() {
    let chromium = harness::require("chromium", "chromium");
    let f = Forwarder::start(&plain_service("plain", "{LISTEN}", tcp_server(echo), ""));
    let _c = echo_session(&f);
    let master = f.master("plain").unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = harness::run_within(
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", dir.path().display()))
            .arg("--dump-dom")
            .arg(format!("http://{}/", f.admin)),
        Duration::from_secs(60),
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(&format!(
            "<td class=\"up\" id=\"master-plain\">{master}</td>"
        )),
        "master not shown: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("<h2 class=\"service\">plain</h2>"), "{dom}");
    assert!(dom.contains("class=\"server up\""), "{dom}");
}
