use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{CheckKind, Config};

/// The seed guide's haproxy.cfg, from the issue.
const CLASSIC: &str = "\
defaults REDIS
mode tcp
timeout connect 4s
timeout server 15s
timeout client 15s
frontend ft_redis
bind *:6379 name redis
default_backend bk_redis
backend bk_redis
option tcp-check
tcp-check connect
tcp-check send PING\\r\\n
tcp-check expect string +PONG
tcp-check send info\\ replication\\r\\n
tcp-check expect string role:master
tcp-check send QUIT\\r\\n
tcp-check expect string +OK
server R1 10.0.0.3:6380 check inter 1s
server R2 10.0.0.4:6380 check inter 1s
";

fn checked(t: &Translation) -> Config {
    Config::parse(&t.toml, Path::new("imported.toml"))
        .unwrap_or_else(|e| panic!("the translation does not pass check: {e}\n{}", t.toml))
}

#[test]
fn the_seed_guide_config_becomes_a_redis_master_service() {
    let t = translate(CLASSIC).unwrap();
    assert_eq!(t.services, 1);
    assert_eq!(t.notes, [], "{}", t.toml);
    let c = checked(&t);
    let s = &c.service[0];
    assert_eq!(s.name, "ft_redis");
    assert_eq!(s.listen.to_string(), "0.0.0.0:6379");
    let servers: Vec<String> = s.servers.iter().map(|a| a.to_string()).collect();
    assert_eq!(servers, ["10.0.0.3:6380", "10.0.0.4:6380"]);
    assert_eq!(s.check.kind, CheckKind::RedisMaster);
    assert_eq!(s.check.interval, Duration::from_secs(1));
    assert_eq!((s.check.rise, s.check.fall), (2, 3));
    assert_eq!(s.timeout.connect, Duration::from_secs(4));
    assert_eq!(s.timeout.client, Duration::from_secs(15));
    assert_eq!(s.timeout.server, Duration::from_secs(15));
}

#[test]
fn what_is_not_translated_is_listed_by_line() {
    let text = "\
global
  maxconn 4000
  stats socket /run/haproxy.sock
defaults
  mode tcp
  option redispatch
  retries 3
  timeout check 500
frontend ft
  bind *:6379,10.0.0.1:6390 interface eth0
  acl local src 10.0.0.0/8
  use_backend other if local
  default_backend bk
  maxconn 100
frontend orphan
  bind :7000
  default_backend nowhere
frontend ft
  bind :7001
backend bk
  balance roundrobin
  server a 10.0.0.3:6380 check inter 500 rise 1 fall 2 weight 10
  server b 10.0.0.4:6380
  server c 10.0.0.3:6380 check
  server d localhost:6380 check inter 2s backup
  server e 10.0.0.6 check
  server a 10.0.0.9:6380 check
userlist admins
  user admin password x
listen stats
  bind :8404
  mode http
  stats enable
";
    let t = translate(text).unwrap();
    let at = |line: usize| {
        t.notes
            .iter()
            .find(|n| n.line == line)
            .unwrap_or_else(|| panic!("nothing noted at line {line}:\n{}", t.toml))
    };
    assert!(at(2).why.contains("budgets descriptors"));
    assert_eq!(at(3).directive, "stats socket /run/haproxy.sock");
    assert!(at(6).directive.contains("redispatch"));
    assert!(at(10).why.contains("interface eth0"), "{:?}", at(10));
    assert!(at(11).directive.starts_with("acl"));
    assert!(at(12).why.contains("no ACLs"));
    assert!(at(15).why.contains("\"nowhere\" not found"));
    assert!(at(18).why.contains("second proxy"));
    assert!(at(21).why.contains("one master"));
    assert!(at(22).why.contains("weight") || at(22).why.contains("not translated"));
    assert!(at(23).why.contains("without `check`"));
    assert!(at(24).why.contains("listed twice"));
    assert!(at(25).why.contains("differ") || at(25).why.contains("backup"));
    assert!(at(26).why.contains("no port"));
    assert!(at(27).why.contains("second server named \"a\""));
    assert!(at(28).why.contains("section not translated"));
    assert!(at(30).why.contains("no usable server"));
    assert!(at(32).why.contains("HTTP"));
    assert!(
        t.toml
            .contains("#   11: acl local src 10.0.0.0/8 -- not translated"),
        "{}",
        t.toml
    );
    // ft on two addresses, and the stats listen (it has no servers: not a service).
    assert_eq!(t.services, 2, "{}", t.toml);
    let c = checked(&t);
    let s = &c.service[0];
    assert_eq!(s.name, "ft");
    assert_eq!(c.service[1].name, "ft-2");
    assert_eq!(c.service[1].listen.to_string(), "10.0.0.1:6390");
    assert_eq!(s.maxconn, 100);
    assert_eq!(
        s.servers.len(),
        3,
        "a, b, d (a name), not c (twice) nor e (no port)"
    );
    // No `option tcp-check`: HAProxy's connect check, with server a's schedule.
    assert_eq!(s.check.kind, CheckKind::TcpCheck);
    assert_eq!(s.check.steps, ["connect"]);
    assert_eq!(s.check.interval, Duration::from_millis(500));
    assert_eq!((s.check.rise, s.check.fall), (1, 2));
    assert_eq!(s.check.timeout, Duration::from_millis(500));
}

#[test]
fn other_tcp_checks_become_steps() {
    let text = "\
listen redis
  bind 127.0.0.1:7379
  option tcp-check
  tcp-check send-binary 2a310d0a
  tcp-check expect rstring ^\\+PONG
  tcp-check send \"GET k\\r\\n\"
  tcp-check expect binary 2B4F4B
  tcp-check expect ! string -ERR
  tcp-check connect port 6380
  server r [::1]:6380 check
  server s ipv6@fd00::1:6380 check
";
    let t = translate(text).unwrap();
    let c = checked(&t);
    let s = &c.service[0];
    assert_eq!(
        s.check.steps,
        [
            "connect",
            "send *1\\r\\n",
            "expect rstring ^\\+PONG",
            "send GET\\ k\\r\\n",
            "expect binary 2b4f4b"
        ],
        "{}",
        t.toml
    );
    assert_eq!(s.check.interval, Duration::from_secs(2), "HAProxy's inter");
    let servers: Vec<String> = s.servers.iter().map(|a| a.to_string()).collect();
    assert_eq!(servers, ["[::1]:6380", "[fd00::1]:6380"]);
    assert!(t
        .notes
        .iter()
        .any(|n| n.line == 8 && n.why.contains("negated")));
    assert!(t
        .notes
        .iter()
        .any(|n| n.line == 9 && n.why.contains("connect options")));

    let redis_check = "listen r\n bind :7380\n option redis-check\n server a 10.0.0.3:1 check\n";
    let c = checked(&translate(redis_check).unwrap());
    assert_eq!(
        c.service[0].check.steps,
        ["connect", "send PING\\r\\n", "expect string +PONG"]
    );
}

#[test]
fn the_guide_check_with_auth_keeps_the_password() {
    let text = CLASSIC.replace(
        "tcp-check connect\n",
        "tcp-check connect\ntcp-check send AUTH\\ s3cret\\r\\n\ntcp-check expect string +OK\n",
    );
    let t = translate(&text).unwrap();
    let c = checked(&t);
    assert_eq!(
        c.service[0].check.kind,
        CheckKind::RedisMaster,
        "{}",
        t.toml
    );
    assert!(t.toml.contains("password = \"s3cret\""), "{}", t.toml);
}

#[test]
fn nothing_to_serve_is_an_error_with_the_reasons() {
    for text in [
        "",
        "backend b\n server a 10.0.0.1:1 check\n",
        "frontend f\n bind :1\n",
        "frontend f\n bind :1\n default_backend b\nbackend b\n",
        "frontend f\n default_backend b\nbackend b\n server a 10.0.0.1:1\n",
        "garbage \"\\\n\u{0}\u{7f}",
    ] {
        let e = translate(text).expect_err(text);
        assert!(e.starts_with("no service"), "{e}");
    }
    let e = translate("frontend f\n bind :1\n default_backend b\n").unwrap_err();
    assert!(e.contains("backend \"b\" not found"), "{e}");
}

#[test]
fn times_and_addresses_read_as_haproxy_writes_them() {
    assert_eq!(duration("1000", 1, 10_000).as_deref(), Some("1000ms"));
    assert_eq!(duration("4s", 1, 10_000).as_deref(), Some("4s"));
    assert_eq!(duration("0", 0, 10).as_deref(), Some("0ms"));
    for bad in ["", "s", "1x", "-1", "0", "100us", "99999999999999s"] {
        assert_eq!(duration(bad, 1, 3_600_000), None, "{bad}");
    }
    assert_eq!(listen_addr("*:6379").unwrap().to_string(), "0.0.0.0:6379");
    assert_eq!(listen_addr(":6379").unwrap().to_string(), "0.0.0.0:6379");
    assert_eq!(listen_addr(":::6379").unwrap().to_string(), "[::]:6379");
    assert_eq!(
        listen_addr("ipv6@::1:6379").unwrap().to_string(),
        "[::1]:6379"
    );
    for bad in [
        "/run/x.sock",
        "unix@x",
        ":6379-6380",
        "*:0",
        "6379",
        "host.example:1",
        "*:+1",
    ] {
        assert!(listen_addr(bad).is_err(), "{bad}");
    }
    // HAProxy's `+1` is an offset from the port the client connected to, not port 1.
    let e = server_addr("10.0.0.3:+1").expect_err("an offset translated as a port");
    assert!(e.contains("no ranges or offsets"), "{e}");
    assert_eq!(server_addr("redis:6379").unwrap(), "redis:6379");
    assert_eq!(quote("a"), "\"a\"");
    assert_eq!(quote("send PING\\r\\n"), "'send PING\\r\\n'");
    assert_eq!(quote("it's \\ \"\n"), "\"it's \\\\ \\\"\\u000a\"");
    assert!(server_addr(":6379").is_err());
}

#[test]
fn tls_binds_and_servers_become_the_tls_tables() {
    let text = CLASSIC
        .replace(
            "bind *:6379 name redis",
            "bind *:6379 name redis ssl crt /etc/haproxy/redis.pem ca-file /etc/haproxy/ca.pem \
             verify required",
        )
        .replace("tcp-check connect\n", "tcp-check connect ssl\n")
        .replace(
            "check inter 1s",
            "check inter 1s ssl verify required ca-file /etc/haproxy/ca.pem crt /etc/haproxy/client.pem verifyhost redis.internal",
        );
    let t = translate(&text).unwrap();
    assert!(t.notes.is_empty(), "{:?}", t.notes);
    assert!(t.toml.contains("kind = \"redis-master\""), "{}", t.toml);
    let tables = "\n[service.tls]\ncert = \"/etc/haproxy/redis.pem\"\n\
                  key = \"/etc/haproxy/redis.pem\"\nclient_ca = \"/etc/haproxy/ca.pem\"\n\
                  \n[service.server_tls]\nca = \"/etc/haproxy/ca.pem\"\n\
                  cert = \"/etc/haproxy/client.pem\"\nkey = \"/etc/haproxy/client.pem\"\n\
                  server_name = \"redis.internal\"\npassthrough = false\n";
    assert!(t.toml.contains(tables), "{}", t.toml);
}

#[test]
fn tls_that_would_weaken_is_noted_and_check_ssl_alone_is_passthrough() {
    let text = "\
frontend f
  bind :6379 ssl crt /c.pem ca-file /ca.pem verify optional alpn h2
  bind :6380 ssl
  bind :6381 crt /c.pem
  default_backend b
backend b
  default-server check inter 1s check-ssl verify none
  server R1 10.0.0.3:6380 sni str(redis.internal)
  server R2 10.0.0.4:6380 sni req.hdr(host) ca-file ca.pem
";
    let t = translate(text).unwrap();
    let why = |line: usize, part: &str| {
        assert!(
            t.notes
                .iter()
                .any(|n| n.line == line && n.why.contains(part)),
            "no note {part:?} at line {line}: {:#?}",
            t.notes
        );
    };
    why(2, "alpn h2");
    why(2, "written as required");
    why(3, "listen in plaintext");
    why(4, "without `ssl`");
    why(8, "always verifies servers");
    why(8, "reach Redis in plaintext"); // :6379 terminates, its servers get check-ssl only
    why(9, "differ from server R1's");
    assert!(
        !t.notes.iter().any(|n| n.why.contains("relative path")),
        "only the first TLS server's files are used: {:#?}",
        t.notes
    );
    assert_eq!(
        t.services, 2,
        "the bind without a crt is skipped:\n{}",
        t.toml
    );
    assert!(!t.toml.contains("0.0.0.0:6380"), "{}", t.toml);
    assert!(t.toml.contains("client_ca = \"/ca.pem\""), "{}", t.toml);
    assert!(
        t.toml.contains(
            "[service.server_tls]\nca = \"/etc/ssl/certs/ca-certificates.crt\"\n\
             server_name = \"redis.internal\"\npassthrough = true\n"
        ),
        "{}",
        t.toml
    );
    assert!(
        !t.notes.iter().any(|n| n.why.contains("without `check`")),
        "default-server check is inherited: {:#?}",
        t.notes
    );
}

#[test]
fn a_crt_without_its_key_uses_the_key_file_beside_it_as_haproxy_does() {
    let dir = tempfile::tempdir().unwrap();
    let crt = dir.path().join("redis.pem");
    std::fs::write(
        &crt,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let text =
        |crt: &str| format!("listen r\n bind :6379 ssl crt {crt}\n server a 10.0.0.3:1 check\n");
    let crt = crt.display().to_string();
    let t = translate(&text(&crt)).unwrap();
    assert!(
        t.toml.contains(&format!("key = \"{crt}\"")),
        "no key file yet:\n{}",
        t.toml
    );
    std::fs::write(format!("{crt}.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let t = translate(&text(&crt)).unwrap();
    assert!(
        t.toml.contains(&format!("key = \"{crt}.key\"")),
        "{}",
        t.toml
    );
    // Not a file to read (a device, a folder): the crt is written as the key, nothing read.
    let t = translate(&text("/dev/zero")).unwrap();
    assert!(t.toml.contains("key = \"/dev/zero\""), "{}", t.toml);
}
