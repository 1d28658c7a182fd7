//! TLS on every link, against real `redis-server --tls-port` (client certificates required, as
//! Redis wants by default) and real TLS Sentinels, with certificates the tests make: the three
//! modes (passthrough, terminate and originate, originate only), client certificates required
//! and refused, an expired and a foreign server certificate, a reload that swaps certificates
//! under an open session, `forwarder check` on TLS files, and a failover under TLS that loses
//! no acknowledged write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::tls::{cert_der, ClientTls, Pki};
use harness::{forwarder_exit, wait_until, Conn, Forwarder, Redis, Reply, Sentinel, Service};

/// A Redis service over `servers`: checks every 200 ms, rise 1, clients held up to 5 s.
fn service(servers: &[SocketAddr]) -> Service {
    Service::redis("mymaster", servers).set("timeout", "{ queue = \"5s\" }")
}

fn routed(f: &Forwarder, to: SocketAddr) {
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster") == Some(to)),
        "never routed to {to}: {:?}\n{}",
        f.status(),
        f.log_text()
    );
}

fn ok(r: std::io::Result<Reply>) -> bool {
    matches!(r, Ok(Reply::Simple(s)) if s == "OK")
}

/// `SET k v` then `GET k` on `c`.
fn set_get(c: &mut Conn, k: &str, v: &str) {
    assert!(ok(c.cmd(&["SET", k, v])), "SET {k} failed");
    assert_eq!(
        c.cmd(&["GET", k]).expect("GET"),
        Reply::Bulk(Some(v.as_bytes().to_vec()))
    );
}

/// The service's failed TLS handshakes on `side` for `reason`, per `/status`.
fn handshake_failures(f: &Forwarder, side: &str, reason: &str) -> u64 {
    let st = f.service_status("mymaster").expect("status");
    st["stats"]["tls_handshake_failures"][side][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no tls_handshake_failures.{side}.{reason}: {st:#}"))
}

#[test]
fn passthrough_forwards_the_clients_own_tls_and_the_checks_speak_tls() {
    let pki = Pki::new();
    let (master, replica) = Redis::pair_tls(&pki);
    let f = Forwarder::start(
        &service(&[master.addr(), replica.addr()])
            .set("server_tls", &pki.server_table(Some(true)))
            .to_string(),
    );
    // The checks reached both over TLS and found the master.
    routed(&f, master.addr());
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["tls"], "passthrough", "{st:#}");
    // The client's own handshake is with Redis: it sees Redis's certificate.
    let mut c = Conn::open_tls(f.listen[0], &pki.client_tls()).expect("TLS through");
    set_get(&mut c, "k", "passthrough");
    assert_eq!(c.peer_certificate(), Some(cert_der(&pki.server.cert)));
    assert_eq!(c.server_port().unwrap(), master.port);
    // Plain TCP reaches Redis's TLS port as it is, and Redis refuses it.
    let mut plain = Conn::open(f.listen[0]).expect("connect");
    assert!(plain.cmd(&["PING"]).is_err(), "plain TCP was served");
}

#[test]
fn terminate_and_originate_requires_client_certificates_and_refuses_the_rest() {
    let pki = Pki::new();
    let (master, replica) = Redis::pair_tls(&pki);
    let front = pki.mint_server("front");
    let f = Forwarder::start(
        &service(&[master.addr(), replica.addr()])
            .set("tls", &pki.listen_table(&front, true))
            .set("server_tls", &pki.server_table(None))
            .to_string(),
    );
    routed(&f, master.addr());
    let st = f.service_status("mymaster").unwrap();
    assert_eq!(st["tls"], "terminate+originate", "{st:#}");
    assert_eq!(
        st["certificates"][0]["file"],
        front.cert.display().to_string(),
        "{st:#}"
    );

    // With a client certificate of the CA: served, by the forwarder's certificate.
    let mut c = Conn::open_tls(f.listen[0], &pki.client_tls()).expect("TLS to the forwarder");
    assert_eq!(c.peer_certificate(), Some(cert_der(&front.cert)));
    set_get(&mut c, "k", "terminated");
    assert_eq!(c.server_port().unwrap(), master.port);
    assert_eq!(
        master.cmd(&["GET", "k"]),
        Reply::Bulk(Some(b"terminated".to_vec()))
    );

    // Without a client certificate: refused, counted.
    let anonymous = ClientTls::new(&pki.ca, None, None).unwrap();
    let refused = Conn::open_tls(f.listen[0], &anonymous).and_then(|mut c| c.cmd(&["PING"]));
    assert!(refused.is_err(), "served without a client certificate");
    // A client that trusts another CA refuses the forwarder's certificate.
    let stranger = ClientTls::new(&pki.foreign_ca, Some(&pki.client), None).unwrap();
    let e = Conn::open_tls(f.listen[0], &stranger)
        .err()
        .expect("handshake refused");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    // A client certificate of another CA is refused by the forwarder.
    let foreign = ClientTls::new(&pki.ca, Some(&pki.foreign), None).unwrap();
    let refused = Conn::open_tls(f.listen[0], &foreign).and_then(|mut c| c.cmd(&["PING"]));
    assert!(refused.is_err(), "served with a foreign client certificate");
    // Plain TCP to a TLS listener.
    let plain = Conn::open(f.listen[0]).and_then(|mut c| c.cmd(&["PING"]));
    assert!(plain.is_err(), "plain TCP was served");
    assert!(
        wait_until(Duration::from_secs(5), || {
            handshake_failures(&f, "client", "no_certificate") == 1
                && handshake_failures(&f, "client", "unknown_ca") >= 1
                && handshake_failures(&f, "client", "protocol") == 1
        }),
        "{:#}",
        f.service_status("mymaster").unwrap()
    );
    // None of them got a session, and the served one is still there.
    assert_eq!(c.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    let metrics = f.metrics();
    assert!(
        metrics.contains(
            "forwarder_tls_handshake_failures_total{service=\"mymaster\",side=\"client\",reason=\"no_certificate\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("forwarder_tls_certificate_expiry_seconds{service=\"mymaster\""),
        "{metrics}"
    );
}

#[test]
fn originate_only_serves_plain_clients_over_tls_to_redis() {
    let pki = Pki::new();
    let (master, replica) = Redis::pair_tls(&pki);
    let f = Forwarder::start(
        &service(&[master.addr(), replica.addr()])
            .set("server_tls", &pki.server_table(None))
            .to_string(),
    );
    routed(&f, master.addr());
    assert_eq!(f.service_status("mymaster").unwrap()["tls"], "originate");
    let mut c = Conn::open(f.listen[0]).expect("connect");
    set_get(&mut c, "k", "originated");
    // Redis listens on its TLS port only: the session reached it over TLS.
    assert_eq!(c.server_port().unwrap(), master.port);
    // A large value both ways (bigger than a TLS record and the relay's buffer).
    let big = "x".repeat(1 << 20);
    set_get(&mut c, "big", &big);
}

#[test]
fn a_server_with_an_expired_or_foreign_certificate_is_never_routed_to() {
    let pki = Pki::new();
    let expired = Redis::start_tls_as(&pki, &pki.expired, &[]);
    let foreign = Redis::start_tls_as(&pki, &pki.foreign, &[]);
    let f = Forwarder::start(
        &service(&[expired.addr(), foreign.addr()])
            .set("server_tls", &pki.server_table(None))
            .set("timeout", "{ queue = \"1s\" }")
            .to_string(),
    );
    let reason = |addr: SocketAddr| {
        f.service_status("mymaster").and_then(|s| {
            s["servers"]
                .as_array()?
                .iter()
                .find(|x| x["addr"] == addr.to_string())
                .and_then(|x| x["last_reason"].as_str().map(str::to_string))
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            reason(expired.addr())
                .is_some_and(|r| r.contains("TLS handshake") && r.contains("certificate expired"))
                && reason(foreign.addr())
                    .is_some_and(|r| r.contains("TLS handshake") && r.contains("UnknownIssuer"))
        }),
        "{:#}",
        f.service_status("mymaster").unwrap()
    );
    assert_eq!(f.master("mymaster"), None);
    // A client is held, then closed: never sent to either.
    let mut c = Conn::open(f.listen[0]).expect("connect");
    assert!(c.cmd(&["PING"]).is_err());
}

#[test]
fn a_reload_swaps_the_certificate_without_dropping_an_open_session() {
    let pki = Pki::new();
    let (master, replica) = Redis::pair_tls(&pki);
    let front = pki.mint_server("front");
    let text = service(&[master.addr(), replica.addr()])
        .set("tls", &pki.listen_table(&front, false))
        .set("server_tls", &pki.server_table(None))
        .to_string();
    let mut f = Forwarder::start(&text);
    routed(&f, master.addr());
    let tls = pki.client_tls();
    let mut old = Conn::open_tls(f.listen[0], &tls).expect("TLS");
    set_get(&mut old, "a", "1");
    let before = cert_der(&front.cert);
    assert_eq!(old.peer_certificate(), Some(before.clone()));

    // Traffic on the open session while the certificate files are replaced and reloaded.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let traffic = {
        let (stop, errors) = (Arc::clone(&stop), Arc::clone(&errors));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if !ok(old.cmd(&["SET", "a", &i.to_string()])) {
                    errors.lock().unwrap().push(i);
                }
            }
            old
        })
    };
    let next = pki.mint_server("next");
    std::fs::copy(&next.cert, &front.cert).unwrap();
    std::fs::copy(&next.key, &front.key).unwrap();
    f.reload(&text);
    assert!(f.log_text().contains("1 changed"), "{}", f.log_text());
    let mut new = Conn::open_tls(f.listen[0], &tls).expect("TLS after the reload");
    assert_eq!(new.peer_certificate(), Some(cert_der(&next.cert)));
    set_get(&mut new, "b", "2");
    stop.store(true, Ordering::Relaxed);
    let mut old = traffic.join().unwrap();
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    assert_eq!(old.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    assert_eq!(old.peer_certificate(), Some(before));
}

#[test]
fn forwarder_check_reads_every_tls_file_and_warns_of_expiry() {
    let pki = Pki::new();
    let text = |tls: &str| {
        Service::redis("mymaster", &["127.0.0.1:6379".parse().unwrap()])
            .set("tls", tls)
            .set("server_tls", &pki.server_table(None))
            .to_string()
            .replace("{LISTEN}", "127.0.0.1:16379")
    };
    // (`out` is what it wrote to stderr: warnings and errors.)
    let (code, out) = forwarder_exit("check", &text(&pki.listen_table(&pki.server, true)));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("warning"), "{out}");
    // An expired certificate loads, with a warning.
    let (code, out) = forwarder_exit("check", &text(&pki.listen_table(&pki.expired, false)));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("certificate expired"), "{out}");
    // A key that is not the certificate's, a missing file, a file that is no certificate.
    let mismatched = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        pki.server.cert.display(),
        pki.client.key.display()
    );
    let (code, out) = forwarder_exit("check", &text(&mismatched));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("service[0].tls"), "{out}");
    let missing = "{ cert = \"/nonexistent.crt\", key = \"/nonexistent.key\" }";
    let (code, out) = forwarder_exit("check", &text(missing));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("/nonexistent.crt"), "{out}");
    let not_pem = format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        pki.server.key.display(),
        pki.server.key.display()
    );
    let (code, out) = forwarder_exit("check", &text(&not_pem));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("CERTIFICATE"), "{out}");
}

#[test]
fn a_failover_under_tls_loses_no_acknowledged_write() {
    let pki = Pki::new();
    let (mut master, replica) = Redis::pair_tls(&pki);
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start_tls(&pki, "mymaster", master.addr(), 2, 2000))
        .collect();
    for s in &sentinels {
        assert!(
            wait_until(Duration::from_secs(30), || s.ready("mymaster")),
            "TLS Sentinel {} did not discover its peers",
            s.addr()
        );
    }
    let addrs: Vec<SocketAddr> = sentinels.iter().map(Sentinel::addr).collect();
    let front = pki.mint_server("front");
    let f = Forwarder::start(
        &service(&[master.addr(), replica.addr()])
            .set("tls", &pki.listen_table(&front, true))
            .set("server_tls", &pki.server_table(None))
            .set("timeout", "{ queue = \"20s\" }")
            .sentinels(&addrs)
            .sentinel("tls", &pki.server_table(None))
            .to_string(),
    );
    routed(&f, master.addr());
    assert!(
        f.service_status("mymaster").unwrap()["sentinel"]["reachable"] == 3,
        "{:#}",
        f.service_status("mymaster").unwrap()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, to, tls) = (
            Arc::clone(&stop),
            Arc::clone(&acked),
            f.listen[0],
            pki.client_tls(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("w-{i}");
                let r = Conn::open_tls(to, &tls).and_then(|mut c| {
                    c.stream().set_read_timeout(Some(Duration::from_secs(25)))?;
                    c.cmd(&["SET", &key, "1"])
                });
                if ok(r) {
                    acked.lock().unwrap().push(key);
                }
                // Pacing: about 100 writes a second.
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let count = || acked.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(10), || count() >= 50));
    master.proc().kill();
    routed(&f, replica.addr());
    let after = count();
    assert!(
        wait_until(Duration::from_secs(10), || count() >= after + 50),
        "writes did not resume after the failover"
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    replica.assert_holds(&acked.lock().unwrap());
}

#[test]
fn silent_tls_clients_stall_no_one_and_are_closed_after_timeout_handshake() {
    let pki = Pki::new();
    let (master, replica) = Redis::pair_tls(&pki);
    let f = Forwarder::start(
        &service(&[master.addr(), replica.addr()])
            .set("tls", &pki.listen_table(&pki.server, false))
            .set("server_tls", &pki.server_table(None))
            .set("timeout", "{ handshake = \"1s\" }")
            .to_string(),
    );
    routed(&f, master.addr());
    // Fifty clients that connect and never say a word.
    let silent: Vec<Conn> = (0..50)
        .map(|_| Conn::open(f.listen[0]).expect("connect"))
        .collect();
    // Meanwhile others are served at once.
    for i in 0..5 {
        let mut c = Conn::open_tls(f.listen[0], &pki.client_tls()).expect("TLS");
        set_get(&mut c, &format!("k{i}"), "v");
    }
    // Each silent one is closed once its handshake time is up, and counted.
    for mut c in silent {
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "a silent client was kept"
        );
    }
    assert_eq!(handshake_failures(&f, "client", "timeout"), 50);
}
