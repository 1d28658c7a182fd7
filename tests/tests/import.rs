//! `forwarder import-haproxy`: the seed guide's haproxy.cfg, translated, passes `forwarder
//! check` and, run, routes to the master of a real pair (in plaintext, and with TLS on both
//! sides against `redis-server --tls-port`); a file with nothing to serve is refused.

use std::process::Command;
use std::time::Duration;

use harness::tls::{ClientTls, Pair, Pki};
use harness::{forwarder_bin, wait_until, Conn, Forwarder, Redis, Reply};

/// The guide's haproxy.cfg (from issue #15), with the servers at `servers`.
fn classic(servers: &[std::net::SocketAddr]) -> String {
    classic_with(servers, "", "")
}

/// [`classic`] with `bind` options and `server` options added.
fn classic_with(servers: &[std::net::SocketAddr], bind: &str, server: &str) -> String {
    let mut text = "defaults REDIS\nmode tcp\ntimeout connect 4s\ntimeout server 15s\n\
                    timeout client 15s\nfrontend ft_redis\nbind *:6379 name redis{BIND}\n\
                    default_backend bk_redis\nbackend bk_redis\noption tcp-check\n\
                    tcp-check connect\ntcp-check send PING\\r\\n\n\
                    tcp-check expect string +PONG\ntcp-check send info\\ replication\\r\\n\n\
                    tcp-check expect string role:master\ntcp-check send QUIT\\r\\n\n\
                    tcp-check expect string +OK\n"
        .replace("{BIND}", bind);
    for (i, s) in servers.iter().enumerate() {
        text.push_str(&format!("server R{} {s} check inter 1s{server}\n", i + 1));
    }
    text.push_str("balance roundrobin\n");
    text
}

/// Runs `forwarder <args> <file with text>`: exit code, stdout, stderr.
fn forwarder(args: &[&str], text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(forwarder_bin())
        .args(args)
        .arg(&path)
        .output()
        .expect("run forwarder");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_guide_haproxy_cfg_translates_checks_and_routes_to_the_master() {
    let (master, replica) = Redis::pair();
    let (code, toml, err) = forwarder(
        &["import-haproxy"],
        &classic(&[master.addr(), replica.addr()]),
    );
    assert_eq!(code, 0, "{err}");
    assert!(toml.contains("kind = \"redis-master\""), "{toml}");
    assert!(toml.contains("listen = \"0.0.0.0:6379\""), "{toml}");
    assert!(
        toml.contains("#   20: balance roundrobin -- "),
        "the untranslated directive is listed with its line:\n{toml}"
    );
    assert!(!err.contains("warning"), "{err}");

    let f = check_and_run(&toml, &master);
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert_eq!(
        c.cmd(&["SET", "k", "v"]).unwrap(),
        Reply::Simple("OK".into())
    );
}

#[test]
fn a_file_with_nothing_to_serve_is_refused_with_the_reasons() {
    let (code, out, err) = forwarder(
        &["import-haproxy"],
        "global\n  daemon\nfrontend f\n  bind :1\n",
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("no service") && err.contains("no default_backend"),
        "{err}"
    );
    let (code, _, err) = forwarder(&["import-haproxy"], "");
    assert_eq!(code, 2, "{err}");
}

/// Passes `toml` through `forwarder check`, then runs it (on a free port instead of 6379) and
/// waits until it routes to `master`.
fn check_and_run(toml: &str, master: &Redis) -> Forwarder {
    let (code, _, err) = forwarder(&["check", "--config"], toml);
    assert_eq!(
        code, 0,
        "`forwarder check` refused the translation: {err}\n{toml}"
    );
    let f = Forwarder::start(&toml.replace("0.0.0.0:6379", "{LISTEN}"));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("ft_redis")
            == Some(master.addr())),
        "the translated service never routed to the master: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    f
}

/// HAProxy's `crt` file: the certificate and its key in one PEM.
fn combined(pair: &Pair, dir: &std::path::Path) -> String {
    let mut pem = std::fs::read_to_string(&pair.cert).unwrap();
    pem.push_str(&std::fs::read_to_string(&pair.key).unwrap());
    let path = dir.join(format!(
        "{}.pem",
        pair.cert.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

#[test]
fn a_tls_haproxy_cfg_translates_to_terminate_and_originate_and_serves_tls_clients() {
    let pki = Pki::new();
    let (master, replica) = Redis::pair_tls(&pki);
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca.display().to_string();
    let bind = format!(
        " ssl crt {} ca-file {ca} verify required",
        combined(&pki.server, dir.path())
    );
    let server = format!(
        " ssl verify required ca-file {ca} crt {}",
        combined(&pki.client, dir.path())
    );
    let text = classic_with(&[master.addr(), replica.addr()], &bind, &server)
        .replace("tcp-check connect\n", "tcp-check connect ssl\n");
    let (code, toml, err) = forwarder(&["import-haproxy"], &text);
    assert_eq!(code, 0, "{err}");
    for table in [
        "[service.tls]",
        "client_ca = ",
        "[service.server_tls]",
        "passthrough = false",
    ] {
        assert!(toml.contains(table), "no {table}:\n{toml}");
    }
    assert!(toml.contains("kind = \"redis-master\""), "{toml}");
    assert!(!toml.contains("tcp-check connect ssl --"), "{toml}");
    let f = check_and_run(&toml, &master);
    assert_eq!(
        f.service_status("ft_redis").unwrap()["tls"],
        "terminate+originate"
    );
    let mut c = Conn::open_tls(f.listen[0], &pki.client_tls()).unwrap();
    assert_eq!(
        c.cmd(&["SET", "k", "v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(master.cmd(&["GET", "k"]), Reply::Bulk(Some(b"v".to_vec())));
    // `verify required` carried over: a client without a certificate is refused.
    let anonymous = ClientTls::new(&pki.ca, None, None).unwrap();
    let refused = Conn::open_tls(f.listen[0], &anonymous).and_then(|mut c| c.cmd(&["PING"]));
    assert!(refused.is_err(), "served without a client certificate");
}
