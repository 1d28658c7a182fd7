//! IPv6 end to end, in the data path under test: a service listening on `[::1]` in front of a
//! redis-server on `[::1]` (checked, routed, data through), and allow lists with IPv6 networks,
//! including a dual-stack `[::]` listener whose IPv4 clients match IPv4 networks.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use harness::endpoints::{free_port_at, tcp_server_at};
use harness::{connect_from, echo, plain_service, wait_until, Conn, Forwarder, Redis, Reply};

const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// `[::1]:<a free port>`.
fn v6_listen() -> SocketAddr {
    SocketAddr::new(V6, free_port_at(V6))
}

#[test]
fn a_v6_service_in_front_of_a_v6_redis_routes_and_forwards() {
    // Bound to both loopbacks: the harness waits for it on 127.0.0.1, the forwarder uses ::1.
    let r = Redis::start_with(&["--bind", "127.0.0.1", "::1"]);
    let server = SocketAddr::new(V6, r.port);
    let listen = v6_listen();
    let f = Forwarder::start(&format!(
        r#"[[service]]
name = "v6"
listen = "{listen}"
servers = ["{server}"]

[service.check]
kind = "redis-master"
interval = "200ms"
rise = 1
"#
    ));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("v6") == Some(server)),
        "the v6 server was never routed to: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    let mut c = Conn::open(listen).expect("connect to [::1]");
    assert_eq!(c.server_port().unwrap(), r.port);
    // The forwarder's own connection to Redis is IPv6 too.
    match c.cmd(&["CLIENT", "INFO"]).unwrap() {
        Reply::Bulk(Some(b)) => {
            let info = String::from_utf8_lossy(&b);
            assert!(info.contains(&format!("laddr=[::1]:{}", r.port)), "{info}");
        }
        other => panic!("CLIENT INFO: {other:?}"),
    }
    let value = "v6".repeat(512 * 1024);
    assert_eq!(
        c.cmd(&["SET", "big", &value]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        c.cmd(&["GET", "big"]).unwrap(),
        Reply::Bulk(Some(value.into_bytes()))
    );
    // The sockmap path adds its kernel-side byte counts on a timer: wait for them.
    assert!(
        wait_until(Duration::from_secs(5), || f
            .service_status("v6")
            .and_then(|st| st["stats"]["bytes_client_to_server"].as_u64())
            .is_some_and(|b| b > 1024 * 1024)),
        "{:?}",
        f.service_status("v6")
    );
}

/// True when a client connected from `from` to `to` gets its bytes echoed (admitted); false
/// when the forwarder closes it (rejected).
fn admitted(mut c: TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if c.write_all(b"ping").is_err() {
        return false;
    }
    let mut got = [0u8; 4];
    match c.read_exact(&mut got) {
        Ok(()) => {
            assert_eq!(&got, b"ping");
            true
        }
        Err(e) => {
            assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "no answer, no close"
            );
            false
        }
    }
}

#[test]
fn v6_allow_lists_admit_and_reject_by_source() {
    let backend = tcp_server_at(V6, echo);
    let (ok, no) = (v6_listen(), v6_listen());
    let dual = SocketAddr::new(
        Ipv6Addr::UNSPECIFIED.into(),
        free_port_at(Ipv6Addr::UNSPECIFIED.into()),
    );
    let f = Forwarder::start(&format!(
        "{}{}{}",
        plain_service("ok", &ok.to_string(), backend, r#"allow = ["::1/128"]"#),
        plain_service(
            "no",
            &no.to_string(),
            backend,
            r#"allow = ["fd00::/8", "127.0.0.1"]"#
        ),
        plain_service(
            "dual",
            &dual.to_string(),
            backend,
            r#"allow = ["127.0.0.0/8"]"#
        ),
    ));
    for s in ["ok", "no", "dual"] {
        assert!(
            wait_until(Duration::from_secs(10), || f.master(s) == Some(backend)),
            "{s}: {:?}\n{}",
            f.status(),
            f.log_text()
        );
    }
    assert!(
        admitted(TcpStream::connect(ok).unwrap()),
        "::1 refused by ::1/128"
    );
    assert!(
        !admitted(TcpStream::connect(no).unwrap()),
        "::1 admitted by fd00::/8"
    );
    // The dual-stack listener sees its IPv4 clients as ::ffff:127.0.0.x: they match 127.0.0.0/8,
    // and its IPv6 clients do not.
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, dual.port()));
    assert!(
        admitted(connect_from(Ipv4Addr::new(127, 0, 0, 2), v4).unwrap()),
        "127.0.0.2 refused by 127.0.0.0/8 on [::]"
    );
    let v6 = SocketAddr::new(V6, dual.port());
    assert!(
        !admitted(TcpStream::connect(v6).unwrap()),
        "::1 admitted by 127.0.0.0/8"
    );

    for (s, accepted, refused) in [("ok", 1, 0), ("no", 0, 1), ("dual", 1, 1)] {
        assert!(
            wait_until(Duration::from_secs(5), || {
                let st = f.service_status(s).unwrap();
                st["stats"]["accepted"] == accepted
                    && st["stats"]["rejected"]["not_allowed"] == refused
            }),
            "{s}: {:?}",
            f.service_status(s)
        );
    }
}
