//! Bad configurations: each one is refused with the file, the key and the reason, and a non-zero
//! exit, by `forwarder check` and by `forwarder run`.

use std::net::TcpListener;

use harness::{forwarder_exit, wait_until};

const SERVICE: &str = r#"[[service]]
name = "a"
listen = "127.0.0.1:16379"
servers = ["127.0.0.1:16380"]
"#;

fn with(extra: &str) -> String {
    format!("{SERVICE}{extra}")
}

#[test]
fn the_architecture_example_is_accepted() {
    let text = include_str!("../../forwarder.example.toml");
    let (code, out) = forwarder_exit("check", text);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn bad_configs_are_refused_with_key_and_reason() {
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("no service", "[datapath]\nmode = \"auto\"\n".into(), "service", "at least one"),
        (
            "missing listen",
            "[[service]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n".into(),
            "service[0]",
            "missing field `listen`",
        ),
        ("unknown key", with("colour = \"blue\"\n"), "service[0].colour", "unknown field `colour`"),
        ("unknown section", format!("[bogus]\nx = 1\n{SERVICE}"), "bogus", "unknown field `bogus`"),
        (
            "bad duration",
            with("timeout = { connect = \"4 parsecs\" }\n"),
            "service[0].timeout.connect",
            "not a duration",
        ),
        (
            "zero duration",
            with("timeout = { client = \"0s\" }\n"),
            "service[0].timeout.client",
            "greater than zero",
        ),
        ("bad CIDR", with("allow = [\"10.0.0.0/33\"]\n"), "service[0].allow[0]", "not a CIDR"),
        (
            "empty servers",
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nservers = []\n".into(),
            "service[0].servers",
            "at least one server",
        ),
        (
            "bad server address",
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nservers = [\"redis:6379x\"]\n".into(),
            "service[0].servers[0]",
            "not an IP:port",
        ),
        (
            "duplicate service name",
            format!("{SERVICE}{}", SERVICE.replace("16379", "16381")),
            "service[1].name",
            "duplicate service name",
        ),
        (
            "duplicate listen",
            format!("{SERVICE}{}", SERVICE.replace("name = \"a\"", "name = \"b\"")),
            "service[1].listen",
            "overlaps 127.0.0.1:16379, the listen address of another service",
        ),
        (
            "overlapping listen, written as the wildcard",
            format!(
                "{SERVICE}{}",
                SERVICE.replace("name = \"a\"", "name = \"b\"").replace("127.0.0.1:16379", "0.0.0.0:16379")
            ),
            "service[1].listen",
            "0.0.0.0:16379 overlaps 127.0.0.1:16379",
        ),
        (
            "a service on the admin port's wildcard",
            format!("[admin]\nlisten = \"0.0.0.0:16379\"\n{SERVICE}"),
            "service[0].listen",
            "overlaps the admin listen address",
        ),
        (
            "admin token not ASCII",
            format!("[admin]\nlisten = \"127.0.0.1:16390\"\ntoken = \"éééééééééééééééé\"\n{SERVICE}"),
            "admin.token",
            "printable ASCII only",
        ),
        (
            "a check timeout of a nanosecond",
            with("[service.check]\ntimeout = \"1ns\"\n"),
            "service[0].check.timeout",
            "at least 1ms",
        ),
        ("bad mode", format!("[datapath]\nmode = \"turbo\"\n{SERVICE}"), "datapath.mode", "unknown variant `turbo`"),
        ("maxconn zero", with("maxconn = 0\n"), "service[0].maxconn", "at least 1"),
        (
            "bad check step",
            with("[service.check]\nkind = \"tcp-check\"\nsteps = [\"connect\", \"expect rstring (\"]\n"),
            "service[0].check.steps[1]",
            "bad regex \"(\"",
        ),
        (
            "rise zero",
            with("[service.check]\nrise = 0\n"),
            "service[0].check.rise",
            "between 1 and 1000",
        ),
        ("maxconn word", with("maxconn = \"many\"\n"), "service[0].maxconn", "must be at least 1 (and at most 1000000), or \"auto\""),
        (
            "maxconn past the open-file limit",
            with("maxconn = 1000000\n"),
            "service[0].maxconn",
            "maxconn adds up to 1000000 sessions",
        ),
        ("port 0", SERVICE.replace("16379", "0"), "service[0].listen", "port 0"),
        (
            "multicast listen",
            SERVICE.replace("127.0.0.1:16379", "239.1.2.3:16379"),
            "service[0].listen",
            "not a unicast address",
        ),
        (
            "unspecified server",
            SERVICE.replace("127.0.0.1:16380", "0.0.0.0:16380"),
            "service[0].servers[0]",
            "no host to connect to",
        ),
        (
            "a loop written differently",
            SERVICE.replace("127.0.0.1:16379", "0.0.0.0:16380"),
            "service[0].servers[0]",
            "would connect to itself",
        ),
        (
            "a server that is the admin listener",
            format!("[admin]\nlisten = \"127.0.0.1:16380\"\n{SERVICE}"),
            "service[0].servers[0]",
            "the admin listen address",
        ),
        (
            "admin token of spaces",
            format!("[admin]\nlisten = \"127.0.0.1:16390\"\ntoken = \"                \"\n{SERVICE}"),
            "admin.token",
            "no spaces or control characters",
        ),
        (
            "a read token equal to the token",
            format!("[admin]\nlisten = \"127.0.0.1:16390\"\ntoken = \"0123456789abcdefg\"\nread_token = \"0123456789abcdefg\"\n{SERVICE}"),
            "admin.read_token",
            "must differ from admin.token",
        ),
        (
            "a short read token",
            format!("[admin]\nlisten = \"127.0.0.1:16390\"\nread_token = \"short\"\n{SERVICE}"),
            "admin.read_token",
            "at least 16 characters",
        ),
        (
            "admin token with a newline",
            format!("[admin]\nlisten = \"127.0.0.1:16390\"\ntoken = \"abcdefgh\\nijklmnop\"\n{SERVICE}"),
            "admin.token",
            "no spaces or control characters",
        ),
        (
            "a check interval of centuries",
            with("[service.check]\ninterval = \"5000years\"\n"),
            "service[0].check.interval",
            "at most 24 days",
        ),
        (
            "a timeout past 24 days",
            with("timeout = { client = \"30days\" }\n"),
            "service[0].timeout.client",
            "at most 24 days",
        ),
        (
            "the same Sentinel twice",
            with("[service.sentinel]\naddresses = [\"127.0.0.1:1\", \"127.0.0.1:1\", \"127.0.0.1:3\"]\nmaster_name = \"m\"\n"),
            "service[0].sentinel.addresses[1]",
            "listed twice",
        ),
        (
            "the same Sentinel twice, written differently",
            with("[service.sentinel]\naddresses = [\"127.0.0.1:1\", \"[::ffff:127.0.0.1]:1\", \"127.0.0.1:3\"]\nmaster_name = \"m\"\n"),
            "service[0].sentinel.addresses[1]",
            "listed twice",
        ),
        (
            "a Sentinel master name with a space",
            with("[service.sentinel]\naddresses = [\"127.0.0.1:1\"]\nmaster_name = \"my master\"\n"),
            "service[0].sentinel.master_name",
            "no spaces",
        ),
        (
            "max_servers zero",
            with("[service.sentinel]\naddresses = [\"127.0.0.1:1\"]\nmaster_name = \"m\"\nmax_servers = 0\n"),
            "service[0].sentinel.max_servers",
            "between 1 and 1024",
        ),
        (
            "bad on_master_change",
            with("on_master_change = \"pray\"\n"),
            "service[0].on_master_change",
            "unknown variant `pray`",
        ),
        ("not TOML", "[[service]\nname = ".into(), "-", "invalid table header"),
        (
            "Sentinel quorum below a majority",
            with("[service.sentinel]\naddresses = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\nmaster_name = \"m\"\nquorum = 1\n"),
            "service[0].sentinel.quorum",
            "must be between a majority (2)",
        ),
        (
            "Sentinel user without password",
            with("[service.sentinel]\naddresses = [\"127.0.0.1:1\"]\nmaster_name = \"m\"\nuser = \"u\"\n"),
            "service[0].sentinel.password",
            "required when user is set",
        ),
        (
            "process group without user",
            format!("[process]\ngroup = \"nogroup\"\n{SERVICE}"),
            "process.group",
            "needs process.user",
        ),
    ];
    // The defects are added to SERVICE, which on its own is accepted: each case is refused for
    // its own defect, not for something the cases share.
    let (code, out) = forwarder_exit("check", SERVICE);
    assert_eq!(code, 0, "the base service is refused: {out}");
    for (what, text, key, reason) in cases {
        for sub in ["check", "run"] {
            let (code, out) = forwarder_exit(sub, &text);
            assert_ne!(
                code, 0,
                "{what}: `forwarder {sub}` accepted it:\n{text}\n{out}"
            );
            // One error, and it is this case's: its key, then its reason, on the same line.
            let errors: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with("error: ") && l.contains("forwarder.toml:"))
                .collect();
            let ours = errors.first().and_then(|l| {
                l.split_once(&format!("forwarder.toml:{key}: "))
                    .map(|(_, why)| why)
            });
            assert!(
                errors.len() == 1 && ours.is_some_and(|why| why.contains(reason)),
                "{what}: `forwarder {sub}` said:\n{out}\nwanted one error line naming \
                 key {key:?} with reason {reason:?}"
            );
        }
    }
}

#[test]
fn port_in_use_is_a_startup_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text =
        format!("[[service]]\nname = \"a\"\nlisten = \"{addr}\"\nservers = [\"127.0.0.1:1\"]\n");
    let (code, out) = forwarder_exit("run", &text);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("service[0].listen") && out.contains("already in use"),
        "{out}"
    );
}

#[test]
fn an_endless_huge_or_blocking_file_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    let made = harness::run_within(
        std::process::Command::new("mkfifo").arg(&fifo),
        std::time::Duration::from_secs(10),
    );
    assert!(made.status.success(), "mkfifo: {made:?}");
    let fifo = fifo.to_str().unwrap().to_string();
    for (path, why) in [
        ("/dev/zero".to_string(), "larger than"),
        (fifo.clone(), "not a regular file"),
        (
            dir.path().to_str().unwrap().to_string(),
            "not a regular file",
        ),
    ] {
        for sub in ["check", "run"] {
            let mut child = std::process::Command::new(harness::forwarder_bin())
                .args([sub, "--config", &path])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run forwarder");
            let exited = wait_until(std::time::Duration::from_secs(10), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
            }
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(exited, "{sub} {path}: still running");
            assert_eq!(out.status.code(), Some(2), "{sub} {path}: {err}");
            assert!(
                err.contains(&format!("{path}:-: {why}")),
                "{sub} {path}: {err}"
            );
        }
    }
}
