//! The admin interfaces, which do not depend on the data path: `forwarder status` and the status
//! page in a real browser show the running state; with `[admin] token` set, every admin endpoint
//! (`/`, `/status`, `/metrics`, `POST /reload`) and the `forwarder status` and `forwarder reload`
//! commands are refused (401) without the token or with a wrong one, and served with the right one.
//! The token also works as the password of HTTP Basic (a browser's login prompt); the read-only
//! token reads but cannot act (403); the health probes need no token.

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
const READ: &str = "the-read-only-token-1";
/// `Authorization: Basic` of `op:` and the token, of the wrong one and of the read-only one.
const BASIC: &str = "Basic b3A6dGhlLXJpZ2h0LWFkbWluLXRva2Vu";
const BASIC_WRONG: &str = "Basic b3A6YS13cm9uZy1hZG1pbi10b2tlbi14";
const BASIC_READ: &str = "Basic b3A6dGhlLXJlYWQtb25seS10b2tlbi0x";

/// A configuration whose admin listener on `admin` wants `token` (or `READ` for reading).
fn config(admin: SocketAddr, listen: SocketAddr, backend: SocketAddr, token: &str) -> String {
    format!(
        "[datapath]\nmode = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\ntoken = \"{token}\"\n\
         read_token = \"{READ}\"\n\n{}",
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

/// One request with `authorization` as its `Authorization` header: the status code, the
/// headers and the body.
fn with_auth(
    admin: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    with_headers(admin, method, path, authorization, "")
}

/// [`with_auth`] with `extra` header lines (each ending in `\r\n`).
fn with_headers(
    admin: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    extra: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Length: 0\r\n{auth}{extra}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("end of headers");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

#[test]
fn a_browser_logs_in_with_the_token_as_basic_password() {
    let d = start();
    let (code, head, body) = with_auth(d.admin, "GET", "/", None);
    assert_eq!(code, 401, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"forwarder\""),
        "no Basic challenge: {head}"
    );
    for path in ["/", "/status", "/metrics"] {
        let (code, _, body) = with_auth(d.admin, "GET", path, Some(BASIC_WRONG));
        assert_eq!(code, 401, "{path} with a wrong password: {body}");
        let (code, _, body) = with_auth(d.admin, "GET", path, Some(BASIC));
        assert_eq!(code, 200, "{path} with the token as password: {body}");
        assert!(body.contains("plain"), "{path}: {body}");
    }
    // The full token sees the buttons that act.
    let (_, _, page) = with_auth(d.admin, "GET", "/", Some(BASIC));
    assert!(page.contains(">drain</button>"), "{page}");
    // A browser would send the cached password with a cross-site form too: a POST by Basic needs
    // the header the page's buttons add.
    let (code, _, body) = with_auth(d.admin, "POST", "/reload", Some(BASIC));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("X-Forwarder-Action"), "{body}");
    assert!(!d.log_text().contains("reloaded:"), "{}", d.log_text());
    let action = "X-Forwarder-Action: 1\r\n";
    let (code, _, body) = with_headers(d.admin, "POST", "/reload", Some(BASIC), action);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("reloaded: 1 unchanged"), "{body}");
}

#[test]
fn a_real_browser_opens_the_page_with_the_token_as_password() {
    let chromium = harness::require("chromium", "chromium");
    let d = start();
    let dir = tempfile::tempdir().unwrap();
    let dump = |url: String| {
        let out = harness::run_within(
            Command::new(&chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                ])
                .arg(format!("--user-data-dir={}", dir.path().display()))
                .arg("--dump-dom")
                .arg(url),
            Duration::from_secs(60),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let dom = dump(format!("http://op:{TOKEN}@{}/", d.admin));
    assert!(dom.contains("<h2 class=\"service\">plain</h2>"), "{dom}");
    assert!(dom.contains(">drain</button>"), "{dom}");
    let dom = dump(format!("http://op:{READ}@{}/", d.admin));
    assert!(dom.contains("<h2 class=\"service\">plain</h2>"), "{dom}");
    assert!(!dom.contains("<button"), "{dom}");
}

#[test]
fn the_read_token_reads_and_cannot_act() {
    let d = start();
    for auth in [format!("Bearer {READ}"), BASIC_READ.to_string()] {
        for path in ["/", "/status", "/metrics"] {
            let (code, _, body) = with_auth(d.admin, "GET", path, Some(&auth));
            assert_eq!(code, 200, "{path} with {auth}: {body}");
            assert!(body.contains("plain"), "{path}: {body}");
        }
        let (_, _, page) = with_auth(d.admin, "GET", "/", Some(&auth));
        assert!(
            !page.contains("<button"),
            "buttons for the read token: {page}"
        );
        for path in [
            "/reload",
            "/servers/plain/127.0.0.1:1/state",
            "/services/plain/switchover",
        ] {
            let (code, _, body) = with_auth(d.admin, "POST", path, Some(&auth));
            assert_eq!(code, 403, "POST {path} with {auth}: {body}");
            assert!(body.contains("read-only token"), "{body}");
        }
    }
    assert!(!d.log_text().contains("reloaded:"), "{}", d.log_text());
    // `forwarder status` with only the read token in its configuration.
    let read_only = d.dir.path().join("read.toml");
    let text = std::fs::read_to_string(&d.config).unwrap();
    let text = text.replace(&format!("token = \"{TOKEN}\"\n"), "");
    assert!(!text.contains(TOKEN), "{text}");
    std::fs::write(&read_only, text).unwrap();
    let (ok, text) = cli("status", &read_only, &[]);
    assert!(ok, "{text}");
    assert!(text.contains("service plain"), "{text}");
    let (ok, text) = cli("reload", &read_only, &[]);
    assert!(!ok && text.contains("403"), "{text}");
}

#[test]
fn the_health_probes_need_no_token() {
    let d = start();
    for path in ["/live", "/ready"] {
        let (code, _, body) = with_auth(d.admin, "GET", path, None);
        assert!(
            code != 401 && code != 403,
            "GET {path} refused: {code} {body}"
        );
        // Some load balancers probe with HEAD.
        let (code, _, body) = with_auth(d.admin, "HEAD", path, None);
        assert!(
            code != 401 && code != 403,
            "HEAD {path} refused: {code} {body}"
        );
        let (code, _, _) = with_auth(d.admin, "POST", path, None);
        assert_eq!(code, 401, "POST {path} without a token");
    }
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

/// `forwarder status --admin ADDR` plus `extra`: whether it succeeded, and its stdout.
fn status_cli(admin: SocketAddr, extra: &[&str]) -> (bool, String) {
    let out = harness::run_within(
        Command::new(forwarder_bin())
            .args(["status", "--admin", &admin.to_string()])
            .args(extra),
        Duration::from_secs(20),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_healthy_replica_is_a_standby_in_status_json_and_table() {
    let (master, replica) = harness::Redis::pair();
    let f = Forwarder::start(
        &harness::Service::redis("mymaster", &[master.addr(), replica.addr()]).to_string(),
    );
    let replica_addr = replica.addr().to_string();
    let standby = || {
        f.service_status("mymaster").is_some_and(|s| {
            s["servers"].as_array().into_iter().flatten().any(|srv| {
                srv["addr"] == replica_addr.as_str()
                    && srv["standby"] == true
                    && srv["state"] == "down"
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), standby),
        "{:?}",
        f.status()
    );

    let (ok, json) = status_cli(f.admin, &["--json"]);
    assert!(ok, "{json}");
    let st: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(st["build"]["version"], env!("CARGO_PKG_VERSION"), "{st}");
    assert!(st["uptime_ms"].as_u64().is_some(), "{st}");
    let servers = st["services"][0]["servers"].as_array().unwrap();
    assert!(
        servers.iter().all(|s| s["in_state_ms"].as_u64().is_some()),
        "{st}"
    );

    let (ok, text) = status_cli(f.admin, &[]);
    assert!(ok, "{text}");
    let line = |addr: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(addr))
            .unwrap_or_else(|| panic!("no row for {addr}: {text}"))
            .to_string()
    };
    let (m, r) = (line(&master.addr().to_string()), line(&replica_addr));
    assert!(m.contains(" up ") && m.contains(" master "), "{text}");
    assert!(r.contains(" standby ") && r.ends_with(" replica"), "{text}");
    assert!(!r.contains("role:"), "an error-looking reason: {text}");
}

#[test]
fn status_watch_repeats_and_survives_an_unreachable_listener() {
    // Nothing listens there: each round prints the error and the next one tries again.
    let nobody = SocketAddr::from((Ipv4Addr::LOCALHOST, free_ports(1)[0]));
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let mut watch = Proc::spawn(
        Command::new(forwarder_bin())
            .args(["status", "--watch", "1", "--admin", &nobody.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let rounds = || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        text.matches("cannot reach the admin listener").count() >= 3
    };
    assert!(
        wait_until(Duration::from_secs(15), rounds),
        "{}",
        std::fs::read_to_string(&out_path).unwrap_or_default()
    );
    assert_eq!(watch.wait_exit(Duration::ZERO), None, "--watch gave up");
    let text = std::fs::read_to_string(&out_path).unwrap();
    // Not a terminal: a separator between renderings, no screen clearing.
    assert!(text.contains("\n----\n"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
}

#[test]
fn a_cross_site_post_is_refused_even_without_a_token() {
    // No [admin] token (everything allowed): a web page the operator's browser opens must
    // still not reload or switch over through a form posted to the admin listener.
    let backend = tcp_server(echo);
    let f = Forwarder::start(&plain_service("plain", "{LISTEN}", backend, ""));
    let (code, _, body) = with_headers(
        f.admin,
        "POST",
        "/reload",
        None,
        "Origin: http://evil.example\r\n",
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cross-site"), "{body}");
    assert!(!f.log_text().contains("reloaded"), "{}", f.log_text());
    // The status page's own buttons (same origin) and scripts (no Origin) still work.
    let same = format!("Origin: http://{}\r\n", f.admin);
    let (code, _, body) = with_headers(f.admin, "POST", "/reload", None, &same);
    assert_eq!(code, 200, "{body}");
    assert_eq!(f.post("/reload", "").0, 200);
}
