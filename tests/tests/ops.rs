//! Operating the daemon through the data path: SIGTERM drain and its time limit, metrics that
//! follow the traffic, the privilege drop with the capabilities each path keeps. The admin
//! interfaces are in `admin.rs`, systemd's notifications in `systemd.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use harness::{echo, plain_service, tcp_server, wait_until, Forwarder};

fn service(backend: SocketAddr, drain: &str) -> String {
    plain_service(
        "plain",
        "{LISTEN}",
        backend,
        &format!("timeout = {{ drain = \"{drain}\" }}"),
    )
}

fn ping(c: &mut TcpStream) -> bool {
    let mut got = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut got).is_ok() && &got == b"ping"
}

fn session(f: &Forwarder) -> TcpStream {
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "{}",
        f.log_text()
    );
    let mut c = TcpStream::connect(f.listen[0]).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(ping(&mut c));
    c
}
#[test]
fn sigterm_closes_the_listener_and_lets_sessions_finish() {
    let mut f = Forwarder::start(&service(tcp_server(echo), "20s"));
    let mut c = session(&f);
    f.proc().signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(f.listen[0])
            .is_err()),
        "the listener still accepts while draining"
    );
    assert!(
        ping(&mut c),
        "an established session stops working during the drain"
    );
    assert!(
        f.proc().wait_exit(Duration::from_millis(500)).is_none(),
        "exited before the session ended"
    );
    drop(c);
    assert_eq!(f.proc().wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        f.wait_for_log("all sessions drained", Duration::from_secs(5)),
        "{}",
        f.log_text()
    );
}

#[test]
fn drain_time_limit_closes_the_rest_and_exits_cleanly() {
    let mut f = Forwarder::start(&service(tcp_server(echo), "1s"));
    let mut c = session(&f);
    f.proc().signal(libc::SIGTERM);
    // The forwarder closes the session (EOF or reset, long before this read gives up)...
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = c.read(&mut [0u8; 1]);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the session was not closed: {r:?}"
    );
    // ... and exits cleanly...
    assert_eq!(f.proc().wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        f.wait_for_log("drain time is up", Duration::from_secs(5)),
        "{}",
        f.log_text()
    );
    // ... having closed it itself: a session left open at the exit (closed by the kernel, which
    // the client cannot tell apart) is counted in the last line instead.
    assert!(
        f.wait_for_log("stopped: every session closed", Duration::from_secs(5)),
        "the forwarder did not close the session itself before exiting:\n{}",
        f.log_text()
    );
}

/// `/metrics` parsed by a Prometheus text parser: a sample's value, by name and labels.
fn metric(f: &Forwarder, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = f.metrics();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses as Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}
#[test]
fn metrics_parse_and_follow_the_traffic() {
    let f = Forwarder::start(&service(tcp_server(echo), "1s"));
    let svc = [("service", "plain")];
    let mut c = session(&f);
    assert_eq!(metric(&f, "forwarder_connections_active", &svc), Some(1.0));
    assert_eq!(
        metric(&f, "forwarder_connections_accepted_total", &svc),
        Some(1.0)
    );
    assert!(ping(&mut c));
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || metric(
        &f,
        "forwarder_connections_active",
        &svc
    ) == Some(0.0)));
    let up = metric(
        &f,
        "forwarder_bytes_total",
        &[("service", "plain"), ("direction", "client_to_server")],
    );
    assert!(
        up.is_some_and(|b| b >= 8.0),
        "bytes: {up:?}\n{}",
        f.metrics()
    );
    assert_eq!(
        metric(
            &f,
            "forwarder_sessions_ended_total",
            &[("service", "plain"), ("how", "closed")]
        ),
        Some(1.0),
        "{}",
        f.metrics()
    );
    assert_eq!(metric(&f, "forwarder_master_generation", &svc), Some(1.0));
}

#[test]
fn drops_privileges_to_the_configured_user() {
    let f = Forwarder::start(&format!(
        "[process]\nuser = \"nobody\"\n\n{}",
        service(tcp_server(echo), "1s")
    ));
    let mut c = session(&f);
    assert!(ping(&mut c));
    let mut fw = f;
    let pid = fw.proc().pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), vec!["65534"; 4], "{status}");
    // CAP_NET_BIND_SERVICE (10); with the sockmap path also CAP_NET_ADMIN (12), CAP_PERFMON (38)
    // and CAP_BPF (39).
    let want = if harness::mode() == "sockmap" {
        "000000c000001400"
    } else {
        "0000000000000400"
    };
    assert_eq!(field("CapEff:"), vec![want], "{status}");
    assert_eq!(field("CapPrm:"), vec![want], "{status}");
    assert!(
        fw.wait_for_log("privileges dropped", Duration::from_secs(5)),
        "{}",
        fw.log_text()
    );
}
