//! Servers and Sentinels written as `host:port`: resolved at start (`localhost`), a name that
//! does not resolve refused naming its key, and a name whose address changes followed without
//! dropping the sessions that were established.
//!
//! The moving name lives in a hosts file of the forwarder's own: it runs in a private mount
//! namespace (`unshare -m`, as root) where that file is bind-mounted on `/etc/hosts`, so the
//! test changes what the name resolves to without touching the machine's `/etc/hosts` or DNS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use harness::endpoints::admin_request;
use harness::{forwarder_exit, mode, require, wait_until, Conn, Forwarder, Redis, Reply, Sentinel};

/// The `host:port` names of the servers of `service` in /status, by address.
fn names(f: &Forwarder, service: &str) -> Vec<(String, Option<String>)> {
    f.service_status(service)
        .and_then(|s| {
            s["servers"].as_array().map(|a| {
                a.iter()
                    .map(|v| {
                        (
                            v["addr"].as_str().unwrap_or_default().to_string(),
                            v["name"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn get(c: &mut Conn, key: &str) -> Reply {
    c.cmd(&["GET", key]).expect("GET through the forwarder")
}

#[test]
fn localhost_servers_and_sentinels_resolve_at_start() {
    let (master, replica) = Redis::pair();
    let sentinel = Sentinel::start("mymaster", master.addr(), 1, 1000);
    let services = format!(
        "[[service]]\nname = \"mymaster\"\nlisten = \"{{LISTEN}}\"\n\
         servers = [\"localhost:{m}\", \"localhost:{r}\"]\n\
         [service.check]\ninterval = \"200ms\"\nrise = 1\n\
         [service.sentinel]\nmaster_name = \"mymaster\"\naddresses = [\"localhost:{s}\"]\n",
        m = master.port,
        r = replica.port,
        s = sentinel.port,
    );
    let f = Forwarder::start(&services);
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster")
            == Some(master.addr())),
        "never routed to the master: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    // localhost may also be ::1; the first sorted address (IPv4) is the one used.
    let mut want = vec![
        (
            master.addr().to_string(),
            Some(format!("localhost:{}", master.port)),
        ),
        (
            replica.addr().to_string(),
            Some(format!("localhost:{}", replica.port)),
        ),
    ];
    want.sort();
    let mut got = names(&f, "mymaster");
    got.sort();
    assert_eq!(got, want);
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["sentinel"]["reachable"], 1, "{st:#}");
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert_eq!(
        c.cmd(&["SET", "k", "v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert!(f.log_text().contains("name resolved"), "{}", f.log_text());

    // A reload onto a name that does not resolve is refused; nothing changes.
    let moved = services
        .replace("{LISTEN}", &f.listen[0].to_string())
        .replace(
            &format!("localhost:{}\", \"", master.port),
            "no-such-host.invalid:6379\", \"",
        );
    assert!(moved.contains("no-such-host.invalid"), "{moved}");
    f.rewrite(&moved);
    let (code, body) = admin_request(f.admin, "POST", "/reload", None).expect("POST /reload");
    assert_ne!(code, 200, "{body}");
    assert!(
        body.contains("service[0].servers[0]: cannot resolve \"no-such-host.invalid\""),
        "{body}"
    );
    assert_eq!(f.master("mymaster"), Some(master.addr()));
    assert_eq!(
        c.cmd(&["GET", "k"]).unwrap(),
        Reply::Bulk(Some(b"v".to_vec()))
    );
    // `forwarder status` finds the admin listener in that file without looking names up.
    let status_config = format!("[admin]\nlisten = \"{}\"\n\n{moved}", f.admin);
    let (code, err) = forwarder_exit("status", &status_config);
    assert_eq!(code, 0, "forwarder status: {err}");

    // `forwarder check` shows each name and what it resolved to.
    let (code, out) = forwarder_check(&services.replace("{LISTEN}", "127.0.0.1:1"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("name = \"localhost:{}\"", master.port))
            && out.contains(&format!("address = \"{}\"", master.addr())),
        "{out}"
    );
}

/// `forwarder check` on `config`: exit code and stdout + stderr.
fn forwarder_check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forwarder.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(harness::forwarder_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run forwarder check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_name_that_does_not_resolve_is_refused_naming_its_key() {
    let services = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\
                    servers = [\"127.0.0.1:7\", \"no-such-host.invalid:6379\"]\n";
    for sub in ["check", "run"] {
        let (code, err) = forwarder_exit(sub, services);
        assert_eq!(code, 2, "forwarder {sub}: {err}");
        assert!(
            err.contains("service[0].servers[1]: cannot resolve \"no-such-host.invalid\""),
            "forwarder {sub}: {err}"
        );
    }
}

/// A hosts file the forwarder sees as `/etc/hosts`; rewritten in place (the bind mount follows
/// the inode, not the name).
struct Hosts {
    dir: tempfile::TempDir,
}

impl Hosts {
    fn new(text: &str) -> Hosts {
        let h = Hosts {
            dir: tempfile::tempdir().unwrap(),
        };
        h.set(text);
        h
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("hosts")
    }

    fn set(&self, text: &str) {
        std::fs::write(self.path(), format!("127.0.0.1 localhost\n{text}\n")).unwrap();
    }

    /// A command prefix that runs the rest in a private mount namespace with this file as
    /// `/etc/hosts`.
    fn wrapper(&self) -> Vec<String> {
        require("unshare", "util-linux");
        let uid = std::process::Command::new("id")
            .arg("-u")
            .output()
            .expect("run id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test mounts a hosts file in a private mount namespace (unshare --mount): run \
             it as root (`cargo xtask test` as root does)"
        );
        vec![
            "unshare".into(),
            "--mount".into(),
            "sh".into(),
            "-c".into(),
            format!(
                "mount --bind {} /etc/hosts && exec \"$0\" \"$@\"",
                self.path().display()
            ),
        ]
    }
}

#[test]
fn a_moved_name_is_followed_and_established_sessions_keep_their_server() {
    const NAME: &str = "redis-moving.forwarder-test.internal";
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let port = harness::endpoints::free_port_at(IpAddr::V4(a_ip));
    let a = Redis::start_at(a_ip, port, &[]);
    let b = Redis::start_at(b_ip, port, &[]);
    assert_eq!(a.cmd(&["SET", "who", "a"]), Reply::Simple("OK".into()));
    assert_eq!(b.cmd(&["SET", "who", "b"]), Reply::Simple("OK".into()));

    let hosts = Hosts::new(&format!("{a_ip} {NAME}"));
    let services = format!(
        "[[service]]\nname = \"moving\"\nlisten = \"{{LISTEN}}\"\n\
         servers = [\"{NAME}:{port}\"]\nresolve_interval = \"1s\"\n\
         [service.check]\ninterval = \"200ms\"\nrise = 1\n"
    );
    let wrapper = hosts.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let f = Forwarder::start_with(&services, &format!("mode = \"{}\"", mode()), &wrapper);
    let routed_to =
        |addr: SocketAddr| wait_until(Duration::from_secs(10), || f.master("moving") == Some(addr));
    assert!(
        routed_to(a.addr()),
        "never routed to {}\n{}",
        a.addr(),
        f.log_text()
    );
    let mut before = Conn::open(f.listen[0]).unwrap();
    assert_eq!(get(&mut before, "who"), Reply::Bulk(Some(b"a".to_vec())));

    hosts.set(&format!("{b_ip} {NAME}"));
    assert!(
        routed_to(b.addr()),
        "the new address was not followed: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    assert_eq!(
        names(&f, "moving"),
        [(b.addr().to_string(), Some(format!("{NAME}:{port}")))]
    );
    let log = f.log_text();
    assert!(
        log.contains("name resolves to a new address") && log.contains(&b.addr().to_string()),
        "{log}"
    );
    // New clients reach the new address; the established one keeps its server.
    let mut after = Conn::open(f.listen[0]).unwrap();
    assert_eq!(get(&mut after, "who"), Reply::Bulk(Some(b"b".to_vec())));
    assert_eq!(get(&mut before, "who"), Reply::Bulk(Some(b"a".to_vec())));
    // Counters carried over, as on a reload.
    let st = f.service_status("moving").unwrap();
    assert_eq!(st["stats"]["accepted"], 2, "{st:#}");
}

#[test]
fn a_named_server_that_goes_down_is_resolved_again_soon() {
    const NAME: &str = "redis-down.forwarder-test.internal";
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 4), Ipv4Addr::new(127, 0, 0, 5));
    let port = harness::endpoints::free_port_at(IpAddr::V4(a_ip));
    let mut a = Redis::start_at(a_ip, port, &[]);
    let b = Redis::start_at(b_ip, port, &[]);
    let hosts = Hosts::new(&format!("{a_ip} {NAME}"));
    // Not before an hour by the interval: only the server going down makes it look again.
    let services = format!(
        "[[service]]\nname = \"down\"\nlisten = \"{{LISTEN}}\"\n\
         servers = [\"{NAME}:{port}\"]\nresolve_interval = \"1h\"\n\
         [service.check]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n"
    );
    let wrapper = hosts.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let f = Forwarder::start_with(&services, &format!("mode = \"{}\"", mode()), &wrapper);
    assert!(
        wait_until(Duration::from_secs(10), || f.master("down")
            == Some(a.addr())),
        "never routed to {}\n{}",
        a.addr(),
        f.log_text()
    );
    hosts.set(&format!("{b_ip} {NAME}"));
    a.proc().kill();
    assert!(
        wait_until(Duration::from_secs(15), || f.master("down")
            == Some(b.addr())),
        "the name was not resolved again after its server went down: {:?}\n{}",
        f.status(),
        f.log_text()
    );
}

#[test]
fn a_server_in_maint_stays_in_maint_when_its_name_moves() {
    const NAME: &str = "redis-maint.forwarder-test.internal";
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 6), Ipv4Addr::new(127, 0, 0, 7));
    let port = harness::endpoints::free_port_at(IpAddr::V4(a_ip));
    let a = Redis::start_at(a_ip, port, &[]);
    let b = Redis::start_at(b_ip, port, &[]);
    let hosts = Hosts::new(&format!("{a_ip} {NAME}"));
    let services = format!(
        "[[service]]\nname = \"maint\"\nlisten = \"{{LISTEN}}\"\n\
         servers = [\"{NAME}:{port}\"]\nresolve_interval = \"1s\"\n\
         [service.check]\ninterval = \"200ms\"\nrise = 1\n"
    );
    let wrapper = hosts.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let f = Forwarder::start_with(&services, &format!("mode = \"{}\"", mode()), &wrapper);
    assert!(
        wait_until(Duration::from_secs(10), || f.master("maint")
            == Some(a.addr())),
        "never routed to {}\n{}",
        a.addr(),
        f.log_text()
    );
    let (code, body) = f.post(&format!("/servers/maint/{}/state", a.addr()), "maint");
    assert_eq!(code, 200, "{body}");
    // The name moves: the server the operator took out is the name's, wherever it points.
    hosts.set(&format!("{b_ip} {NAME}"));
    assert!(
        wait_until(Duration::from_secs(10), || names(&f, "maint")
            .first()
            .is_some_and(|(addr, _)| *addr == b.addr().to_string())),
        "the new address was not followed: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    std::thread::sleep(Duration::from_secs(1)); // checks of the new address, were it ready
    assert_eq!(
        f.master("maint"),
        None,
        "a moved name took its server out of maint"
    );
    let st = f.service_status("maint").unwrap();
    assert_eq!(st["servers"][0]["admin_state"], "maint", "{st:#}");
}
