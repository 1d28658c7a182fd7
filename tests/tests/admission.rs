//! Admission: source allow list and maxconn, each rejection counted.

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::{connect_from, wait_until, Conn, Forwarder, Redis, Reply, Service};

fn service(r: &Redis, extra: &str) -> String {
    Service::redis("mymaster", &[r.addr()])
        .lines(extra)
        .to_string()
}

#[test]
fn allow_list_rejects_unknown_sources_and_counts_them() {
    let r = Redis::start();
    let f = Forwarder::start(&service(&r, "allow = [\"127.0.0.1/32\"]"));
    assert!(wait_until(Duration::from_secs(10), || f
        .master("mymaster")
        .is_some()));

    let mut ok = Conn::open(f.listen[0]).unwrap();
    assert_eq!(ok.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));

    let s = connect_from(Ipv4Addr::new(127, 0, 0, 2), f.listen[0]).expect("connect from 127.0.0.2");
    let mut denied = Conn::from_stream(s).unwrap();
    assert!(
        denied.cmd(&["PING"]).is_err(),
        "a client from 127.0.0.2 was served"
    );
    assert!(wait_until(Duration::from_secs(5), || f.counter(
        "mymaster",
        "rejected",
        "not_allowed"
    ) == 1));
    assert!(f.metrics().contains(
        "forwarder_connections_rejected_total{service=\"mymaster\",reason=\"not_allowed\"} 1"
    ));
    // The allowed client is unaffected.
    assert_eq!(ok.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
}

#[test]
fn an_allow_range_admits_inside_and_refuses_outside() {
    let r = Redis::start();
    let services = format!(
        "{}{}",
        Service::redis("out", &[r.addr()]).lines("allow = [\"127.0.0.2-127.0.0.9\"]"),
        Service::redis("in", &[r.addr()]).lines("allow = [\"127.0.0.0-127.0.0.1\"]"),
    );
    let f = Forwarder::start(&services);
    assert!(wait_until(Duration::from_secs(10), || f
        .master("out")
        .is_some()
        && f.master("in").is_some()));
    // 127.0.0.1 is below the first range and the end of the second.
    let mut denied = Conn::open(f.listen[0]).unwrap();
    assert!(
        denied.cmd(&["PING"]).is_err(),
        "a client from 127.0.0.1 was served"
    );
    assert!(wait_until(Duration::from_secs(5), || f.counter(
        "out",
        "rejected",
        "not_allowed"
    ) == 1));
    let mut admitted = Conn::open(f.listen[1]).unwrap();
    assert_eq!(
        admitted.cmd(&["PING"]).unwrap(),
        Reply::Simple("PONG".into())
    );
    // Both ends of the first range are inside it.
    for last in [2, 9] {
        let s = connect_from(Ipv4Addr::new(127, 0, 0, last), f.listen[0]).expect("connect");
        let mut ok = Conn::from_stream(s).unwrap();
        assert_eq!(ok.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    }
    assert_eq!(f.counter("out", "rejected", "not_allowed"), 1);
    assert_eq!(f.counter("in", "rejected", "not_allowed"), 0);
}

#[test]
fn maxconn_rejects_the_next_client_cleanly() {
    let r = Redis::start();
    let f = Forwarder::start(&service(&r, "maxconn = 2"));
    assert!(wait_until(Duration::from_secs(10), || f
        .master("mymaster")
        .is_some()));
    let mut a = Conn::open(f.listen[0]).unwrap();
    let mut b = Conn::open(f.listen[0]).unwrap();
    assert_eq!(a.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    assert_eq!(b.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));

    let mut c = Conn::open(f.listen[0]).unwrap();
    assert!(c.cmd(&["PING"]).is_err(), "the third client was served");
    assert_eq!(f.counter("mymaster", "rejected", "maxconn"), 1);
    assert_eq!(
        a.cmd(&["SET", "a", "1"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        b.cmd(&["GET", "a"]).unwrap(),
        Reply::Bulk(Some(b"1".to_vec()))
    );

    // A slot frees when a session ends.
    drop(a);
    assert!(wait_until(Duration::from_secs(5), || f
        .service_status("mymaster")
        .is_some_and(|s| s["stats"]["active"] == 1)));
    let mut d = Conn::open(f.listen[0]).unwrap();
    assert_eq!(d.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
}

#[test]
fn per_source_limit_rejects_only_the_greedy_source() {
    let r = Redis::start();
    let f = Forwarder::start(&service(&r, "maxconn_per_source = 2"));
    assert!(wait_until(Duration::from_secs(10), || f
        .master("mymaster")
        .is_some()));
    let greedy = Ipv4Addr::new(127, 0, 0, 2);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::from_stream(connect_from(greedy, f.listen[0]).unwrap()).unwrap();
        assert_eq!(c.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
        held.push(c);
    }
    let mut third = Conn::from_stream(connect_from(greedy, f.listen[0]).unwrap()).unwrap();
    assert!(
        third.cmd(&["PING"]).is_err(),
        "a third session from 127.0.0.2 was served"
    );
    let mut other =
        Conn::from_stream(connect_from(Ipv4Addr::new(127, 0, 0, 3), f.listen[0]).unwrap()).unwrap();
    assert_eq!(other.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    assert!(wait_until(Duration::from_secs(5), || f.counter(
        "mymaster",
        "rejected",
        "per_source"
    ) == 1));
    // A slot given back is usable again.
    held.pop();
    assert!(wait_until(Duration::from_secs(5), || {
        Conn::from_stream(connect_from(greedy, f.listen[0]).unwrap())
            .and_then(|mut c| c.cmd(&["PING"]))
            .is_ok_and(|r| r == Reply::Simple("PONG".into()))
    }));
}

/// Under a small open-file limit (`prlimit --nofile=400`), `maxconn = "auto"` is derived from
/// the descriptor budget: clients past it are turned away by admission (counted `maxconn`),
/// accept never hits EMFILE, the health check keeps running, the master stays routed, and no
/// established session is cut. (Before the budget, EMFILE failed the check's own connect, the
/// master went DOWN and every session was reset.)
#[test]
fn descriptor_exhaustion_is_refused_at_admission_and_never_fails_the_master() {
    let prlimit = harness::require("prlimit", "util-linux");
    let r = Redis::start();
    let datapath = format!("mode = \"{}\"", harness::mode());
    let wrapper = [prlimit.to_str().unwrap(), "--nofile=400:400", "--"];
    let f = Forwarder::start_with(&service(&r, ""), &datapath, &wrapper);
    assert!(wait_until(Duration::from_secs(10), || f
        .master("mymaster")
        .is_some()));
    let st = f.service_status("mymaster").expect("status");
    let maxconn = st["maxconn"].as_u64().expect("maxconn in /status") as usize;
    assert!(
        (50..200).contains(&maxconn),
        "maxconn \"auto\" under 400 descriptors is {maxconn}"
    );
    // Every slot taken by a working session...
    let mut held: Vec<Conn> = (0..maxconn)
        .map(|i| {
            let mut c = Conn::open(f.listen[0]).expect("connect");
            assert_eq!(
                c.cmd(&["PING"]).map_err(|e| format!("{e}")),
                Ok(Reply::Simple("PONG".into())),
                "session {i} of {maxconn} not served; log:\n{}",
                f.log_text()
            );
            c
        })
        .collect();
    // ...then a flood past them: each is refused by admission, not by the kernel.
    let extra: Vec<_> = (0..100)
        .map(|_| std::net::TcpStream::connect(f.listen[0]).expect("connect"))
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || f
            .counter("mymaster", "rejected", "maxconn")
            >= 100),
        "the clients past maxconn were not refused by admission: {:?}",
        f.service_status("mymaster")
    );
    // The check still runs and passes: the master is not mistaken for failed.
    let ok_before = f.service_status("mymaster").expect("status")["servers"][0]["checks_ok"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(10), || f
            .service_status("mymaster")
            .and_then(|s| s["servers"][0]["checks_ok"].as_u64())
            .unwrap_or(0)
            >= ok_before + 3),
        "the health check stopped passing: {:?}\n{}",
        f.service_status("mymaster"),
        f.log_text()
    );
    let st = f.service_status("mymaster").expect("status");
    assert_eq!(st["master"].as_str(), Some(r.addr().to_string().as_str()));
    assert_eq!(st["servers"][0]["state"], "up", "{st}");
    assert_eq!(
        st["stats"]["ended"]["master_changed"].as_u64(),
        Some(0),
        "{st}"
    );
    assert_eq!(st["stats"]["ended"]["reset"].as_u64(), Some(0), "{st}");
    // Admitted clients got their connection to the master: no descriptor ran out for it.
    assert_eq!(
        st["stats"]["rejected"]["connect_failed"].as_u64(),
        Some(0),
        "{st}"
    );
    let status = f.status().expect("status");
    assert_eq!(
        status["accept_errors"].as_u64(),
        Some(0),
        "EMFILE was reached: {status}"
    );
    // Every held session still works.
    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(
            c.cmd(&["PING"]).map_err(|e| format!("{e}")),
            Ok(Reply::Simple("PONG".into())),
            "held session {i} was cut"
        );
    }
    drop(extra);
}

/// A limit too small for the reserve is a startup error that names the limit.
#[test]
fn a_limit_too_small_for_the_reserve_is_a_startup_error() {
    let prlimit = harness::require("prlimit", "util-linux");
    let r = Redis::start();
    let text = service(&r, "").replace("{LISTEN}", "127.0.0.1:1");
    let (code, out) = harness::forwarder_exit_with(
        &[prlimit.to_str().unwrap(), "--nofile=64:64", "--"],
        "run",
        &format!("[datapath]\nmode = \"{}\"\n{text}", harness::mode()),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("the open-file limit is 64 descriptors") && out.contains("LimitNOFILE="),
        "{out}"
    );
}

/// Slow readers (each asks for a 1 MiB value and never reads) hold uring pipes full of bytes
/// until the worker's pipe share is used up. New sessions still work: a direction that finds no
/// pipe free copies through a small userspace buffer instead of being reset. The slow readers
/// are not cut either.
#[test]
fn slow_readers_holding_every_pipe_do_not_stop_new_sessions() {
    let prlimit = harness::require("prlimit", "util-linux");
    let r = Redis::start();
    let big = "x".repeat(1 << 20);
    assert_eq!(r.cmd(&["SET", "big", &big]), Reply::Simple("OK".into()));
    let datapath = format!("mode = \"{}\"", harness::mode());
    // 400 descriptors: a dozen pipes per uring worker.
    let wrapper = [prlimit.to_str().unwrap(), "--nofile=400:400", "--"];
    let f = Forwarder::start_with(&service(&r, ""), &datapath, &wrapper);
    assert!(wait_until(Duration::from_secs(10), || f
        .master("mymaster")
        .is_some()));
    let slow: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(4096).unwrap();
            s.connect(&f.listen[0].into()).unwrap();
            let mut s: std::net::TcpStream = s.into();
            std::io::Write::write_all(&mut s, b"GET big\r\n").unwrap();
            s
        })
        .collect();
    let ping = || {
        Conn::open(f.listen[0])
            .and_then(|mut c| c.cmd(&["PING"]))
            .map_err(|e| e.to_string())
    };
    if harness::mode() == "uring" {
        assert!(
            wait_until(Duration::from_secs(10), || {
                assert_eq!(ping(), Ok(Reply::Simple("PONG".into())), "{}", f.log_text());
                f.log_text().contains("no pipe free")
            }),
            "the pipe share was never used up: {:?}",
            f.service_status("mymaster")
        );
    }
    for i in 0..20 {
        assert_eq!(ping(), Ok(Reply::Simple("PONG".into())), "client {i}");
    }
    let st = f.service_status("mymaster").expect("status");
    if harness::mode() == "uring" {
        assert!(
            st["stats"]["bytes_copied_in_userspace"].as_u64() > Some(0),
            "{st}"
        );
    }
    assert_eq!(st["stats"]["ended"]["reset"].as_u64(), Some(0), "{st}");
    // The pings' sessions end a moment after their clients close; the slow readers stay.
    assert!(
        wait_until(Duration::from_secs(5), || f
            .service_status("mymaster")
            .and_then(|s| s["stats"]["active"].as_u64())
            == Some(40)),
        "slow readers were cut: {:?}",
        f.service_status("mymaster")
    );
    drop(slow);
}
