//! Admission: source allow list and maxconn, each rejection counted.

use std::net::Ipv4Addr;
use std::time::Duration;

use e2e::{connect_from, wait_until, Conn, Forwarder, Redis, Reply};

fn service(r: &Redis, extra: &str) -> String {
    format!(
        r#"[[service]]
name = "mymaster"
listen = "{{LISTEN}}"
servers = ["{}"]
{extra}

[service.check]
kind = "redis-master"
interval = "200ms"
rise = 1
"#,
        r.addr()
    )
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

#[test]
fn running_out_of_descriptors_is_counted_and_accepting_resumes() {
    let prlimit = e2e::require("prlimit", "util-linux");
    let r = Redis::start();
    let datapath = format!("mode = \"{}\"", e2e::mode());
    // 64 descriptors: a few dozen sessions (two each) exhaust them.
    let extra = "[service.timeout]\nqueue = \"1s\"";
    let wrapper = [prlimit.to_str().unwrap(), "--nofile=64:64", "--"];
    let f = Forwarder::start_with(&service(&r, extra), &datapath, &wrapper);
    assert!(wait_until(Duration::from_secs(10), || f
        .master("mymaster")
        .is_some()));
    let accept_errors = || {
        f.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("forwarder_accept_errors_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The kernel completes these handshakes whether or not the forwarder can accept them.
    let held: Vec<_> = (0..60)
        .map(|_| std::net::TcpStream::connect(f.listen[0]).unwrap())
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || accept_errors() >= 1),
        "EMFILE was not counted; log:\n{}",
        f.log_text()
    );
    assert!(f.log_text().contains("accept failed; pausing 100ms"));
    drop(held);
    // Once descriptors are free again, accepting resumes on its own.
    assert!(
        wait_until(Duration::from_secs(10), || {
            Conn::open(f.listen[0])
                .and_then(|mut c| c.cmd(&["PING"]))
                .is_ok_and(|r| r == Reply::Simple("PONG".into()))
        }),
        "no client served after the descriptors came back; log:\n{}",
        f.log_text()
    );
}
