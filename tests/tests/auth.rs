//! `AUTH` end to end with real servers: the redis-master check of a password-protected
//! redis-server (`check.password`, and `check.user` for a Redis 6 ACL user), and the queries to a
//! Sentinel that requires a password (`sentinel.password`). A wrong password gives no master and
//! says why (the server's `last_reason` in `/status`, the log for a Sentinel); the right one
//! routes. The checks and Sentinel queries do not depend on the data path.

use std::time::Duration;

use harness::{wait_until, Conn, Forwarder, Redis, Reply, Sentinel};

const PASSWORD: &str = "s3cret-pass";

fn checked_service(name: &str, r: &Redis, auth: &str) -> String {
    format!(
        r#"[[service]]
name = "{name}"
listen = "{{LISTEN}}"
servers = ["{}"]

[service.check]
kind = "redis-master"
interval = "200ms"
rise = 1
fall = 1
timeout = "500ms"
{auth}

"#,
        r.addr()
    )
}

/// Runs `args` on `r` after `AUTH`.
fn authed(r: &Redis, args: &[&str]) -> Reply {
    let mut c = Conn::open(r.addr()).unwrap();
    assert_eq!(
        c.cmd(&["AUTH", PASSWORD]).unwrap(),
        Reply::Simple("OK".into())
    );
    c.cmd(args).unwrap()
}

#[test]
fn the_check_authenticates_to_a_password_protected_master() {
    // `requirepass`, set on the running server (the harness waits for a PONG before
    // returning, which a server started with `--requirepass` does not give).
    let r = Redis::start();
    assert_eq!(
        r.cmd(&["CONFIG", "SET", "requirepass", PASSWORD]),
        Reply::Simple("OK".into())
    );
    // An ACL user that may run the check's commands and nothing else.
    assert_eq!(
        authed(
            &r,
            &[
                "ACL",
                "SETUSER",
                "checker",
                "on",
                ">checker-pass",
                "+ping",
                "+info",
                "+quit"
            ]
        ),
        Reply::Simple("OK".into())
    );
    let f = Forwarder::start(&format!(
        "{}{}{}{}",
        checked_service("right", &r, &format!("password = \"{PASSWORD}\"")),
        checked_service("acl", &r, "user = \"checker\"\npassword = \"checker-pass\""),
        checked_service("wrong", &r, "password = \"not-the-password\""),
        checked_service("none", &r, ""),
    ));
    for s in ["right", "acl"] {
        assert!(
            wait_until(Duration::from_secs(10), || f.master(s) == Some(r.addr())),
            "{s}: {:?}\n{}",
            f.status(),
            f.log_text()
        );
    }
    // Through the forwarder, the client authenticates itself.
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert_eq!(
        c.cmd(&["AUTH", PASSWORD]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(c.server_port().unwrap(), r.port);

    // A wrong password, or none, is no master, and the server's status says why.
    let reason = |s: &str| {
        f.service_status(s)
            .and_then(|st| st["servers"][0]["last_reason"].as_str().map(String::from))
    };
    for (s, why) in [("wrong", "WRONGPASS"), ("none", "NOAUTH")] {
        assert!(
            wait_until(Duration::from_secs(10), || reason(s)
                .is_some_and(|r| r.contains(why))),
            "{s}: {:?}",
            f.service_status(s)
        );
        assert_eq!(f.master(s), None, "{s} routes without the password");
    }
}

#[test]
fn sentinel_queries_authenticate_and_a_wrong_password_gives_no_master() {
    let master = Redis::start();
    let sentinel = Sentinel::start("mymaster", master.addr(), 1, 5000);
    // What `requirepass` in sentinel.conf does (Redis 6+: the default user's password), set on
    // the running Sentinel.
    let mut admin = Conn::open(sentinel.addr()).unwrap();
    assert_eq!(
        admin
            .cmd(&[
                "ACL",
                "SETUSER",
                "default",
                "resetpass",
                &format!(">{PASSWORD}")
            ])
            .unwrap(),
        Reply::Simple("OK".into())
    );
    match Conn::open(sentinel.addr()).unwrap().cmd(&["PING"]).unwrap() {
        Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("the Sentinel answers without a password: {other:?}"),
    }
    let service = |name: &str, password: &str| {
        harness::sentinel_service(&[master.addr()], &[sentinel.addr()], "5s")
            .replacen("name = \"mymaster\"", &format!("name = \"{name}\""), 1)
            .replace(
                "master_name = \"mymaster\"",
                &format!("master_name = \"mymaster\"\npassword = \"{password}\""),
            )
    };
    let f = Forwarder::start(&format!(
        "{}\n{}",
        service("right", PASSWORD),
        service("wrong", "not-the-password")
    ));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("right")
            == Some(master.addr())),
        "{:?}\n{}",
        f.status(),
        f.log_text()
    );
    let mut c = Conn::open(f.listen[0]).unwrap();
    assert_eq!(c.server_port().unwrap(), master.port);
    let sentinel_of = |s: &str| f.service_status(s).map(|st| st["sentinel"].clone());
    assert_eq!(
        sentinel_of("right").unwrap()["reachable"],
        1,
        "{:?}",
        f.status()
    );

    // The wrong password: the Sentinel does not count, so nothing is routed, and the log says
    // why.
    assert!(
        wait_until(Duration::from_secs(10), || f
            .log_text()
            .lines()
            .any(|l| l.contains("Sentinel query failed")
                && l.contains(&sentinel.addr().to_string())
                && l.contains("AUTH refused: WRONGPASS"))),
        "{}",
        f.log_text()
    );
    let st = sentinel_of("wrong").unwrap();
    assert_eq!(st["reachable"], 0, "{st}");
    assert_eq!(st["degraded"], true, "{st}");
    assert_eq!(f.master("wrong"), None, "{:?}", f.status());
}
