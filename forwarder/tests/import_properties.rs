//! Bounded property tests for `forwarder::import::translate` (`forwarder import-haproxy`): it
//! never panics, whatever the text (arbitrary strings, and files made of plausible haproxy.cfg
//! lines in any order), and whenever it prints a translation of such lines, that translation
//! passes the configuration's validation (`forwarder check`).
//!
//! Every block runs at most 256 cases so that the file stays within a few seconds in a debug
//! build; `PROPTEST_CASES` overrides the count for a longer local run.

use std::path::Path;

use forwarder::config::Config;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        failure_persistence: None,
        ..default
    }
}

/// Lines an haproxy.cfg may hold, good and bad. Servers use IP addresses only (no lookups) on
/// ports that no `bind` uses (no loops). `{PEM}` is a certificate and its key in one file.
const LINES: &[&str] = &[
    "global",
    "  maxconn 4000",
    "defaults",
    "defaults REDIS",
    "  mode tcp",
    "  mode http",
    "  timeout connect 4s",
    "  timeout client 15000",
    "  timeout server 0",
    "  timeout queue 0",
    "  timeout check 100us",
    "  timeout check 2s",
    "  timeout tunnel 1h",
    "  timeout connect 99999d",
    "frontend ft",
    "frontend ft_redis",
    "frontend \"odd name\"",
    "frontend ft\\nx",
    "backend bk\\r\\n",
    "  default_backend bk\\r\\n",
    "  bind *:6379 name redis",
    "  bind :7000,:7001",
    "  bind [::1]:7002",
    "  bind :::7003 ssl crt {PEM}",
    "  bind :7004 ssl crt {PEM} ca-file {PEM} verify required",
    "  bind :7005 ssl crt {PEM} verify optional",
    "  bind :7006 ssl",
    "  bind /run/sock",
    "  bind :6379-6380",
    "  default_backend bk",
    "  default_backend bk_redis",
    "  default_backend missing",
    "  use_backend bk",
    "  use_backend bk if { src 10.0.0.1 }",
    "  maxconn 100",
    "  maxconn 0",
    "  acl a src 10.0.0.0/8",
    "backend bk",
    "backend bk_redis",
    "listen li",
    "listen li\\ x",
    "  option tcp-check",
    "  option redis-check",
    "  option httpchk GET /",
    "  option redispatch",
    "  balance roundrobin",
    "  tcp-check connect",
    "  tcp-check connect port 1",
    "  tcp-check send PING\\r\\n",
    "  tcp-check expect string +PONG",
    "  tcp-check send info\\ replication\\r\\n",
    "  tcp-check expect string role:master",
    "  tcp-check send QUIT\\r\\n",
    "  tcp-check expect string +OK",
    "  tcp-check send AUTH\\ pw\\r\\n",
    "  tcp-check send-binary 2a31",
    "  tcp-check send-binary zz",
    "  tcp-check expect rstring ^(",
    "  tcp-check expect rstring ^\\+OK",
    "  tcp-check expect binary 2b4f",
    "  tcp-check expect binary xyz",
    "  tcp-check expect ! string -ERR",
    "  tcp-check send \"\\x00\\xff'\\\"\"",
    "  tcp-check comment hello",
    "  default-server inter 3s rise 1",
    "  default-server inter 0",
    "  server a 10.0.0.3:6380 check inter 1s",
    "  server b 10.0.0.4:6380 check inter 500 rise 1001 fall 0",
    "  server c 10.0.0.3:6380 check",
    "  server d [fd00::1]:6380 check backup",
    "  server e 10.0.0.5 check",
    "  server f 10.0.0.6:0",
    "  server g *:6380",
    "  server h 10.0.0.7:6381 weight 10 maxconn 5",
    "  server t 10.0.0.8:6380 check ssl ca-file {PEM} crt {PEM} sni str(redis.internal)",
    "  server u 10.0.0.9:6380 check check-ssl ca-file {PEM}",
    "  tcp-check connect ssl",
    "userlist u",
    "  user admin password x",
    "# a comment",
    "",
    "\\",
    "\"",
];

/// A self-signed certificate for `redis.internal` and its key in one PEM file, made once.
fn pem() -> String {
    static PEM: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["redis.internal".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let path = dir.path().join("redis.pem");
        std::fs::write(&path, cert.pem() + &key.serialize_pem()).unwrap();
        let path = path.display().to_string();
        (dir, path)
    })
    .1
    .clone()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = forwarder::import::translate(&text);
    }

    #[test]
    fn plausible_files_translate_to_valid_configs(
        picks in prop::collection::vec(0..LINES.len(), 0..40)
    ) {
        let pem = pem();
        let text: String = picks
            .iter()
            .map(|&i| format!("{}\n", LINES[i].replace("{PEM}", &pem)))
            .collect();
        match forwarder::import::translate(&text) {
            Ok(t) => {
                prop_assert!(t.services > 0);
                if let Err(e) = Config::parse(&t.toml, Path::new("imported.toml")) {
                    return Err(TestCaseError::fail(format!(
                        "{e}\n--- haproxy.cfg\n{text}--- translation\n{}", t.toml
                    )));
                }
            }
            Err(e) => prop_assert!(e.starts_with("no service"), "{}", e),
        }
    }
}
