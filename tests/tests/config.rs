//! Bad configurations: each one is refused with the file, the key and the reason, and a non-zero
//! exit, by `forwarder check` and by `forwarder run`.

use std::net::TcpListener;

use e2e::forwarder_exit;

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
            "already the listen address",
        ),
        ("bad mode", format!("[datapath]\nmode = \"turbo\"\n{SERVICE}"), "datapath.mode", "unknown variant"),
        ("maxconn zero", with("maxconn = 0\n"), "service[0].maxconn", "at least 1"),
        (
            "bad check step",
            with("[service.check]\nkind = \"tcp-check\"\nsteps = [\"connect\", \"expect rstring (\"]\n"),
            "service[0].check.steps[1]",
            "regex",
        ),
        (
            "rise zero",
            with("[service.check]\nrise = 0\n"),
            "service[0].check.rise",
            "between 1 and 1000",
        ),
        ("wrong type", with("maxconn = \"many\"\n"), "service[0].maxconn", "invalid type"),
        (
            "bad on_master_change",
            with("on_master_change = \"pray\"\n"),
            "service[0].on_master_change",
            "unknown variant",
        ),
        ("not TOML", "[[service]\nname = ".into(), "-", "line 1"),
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
    assert!(cases.len() >= 12);
    for (what, text, key, reason) in cases {
        for sub in ["check", "run"] {
            let (code, out) = forwarder_exit(sub, &text);
            assert_ne!(
                code, 0,
                "{what}: `forwarder {sub}` accepted it:\n{text}\n{out}"
            );
            assert!(
                out.contains(&format!("forwarder.toml:{key}:")) && out.contains(reason),
                "{what}: `forwarder {sub}` said:\n{out}\nwanted key {key:?} and {reason:?}"
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
        out.contains("service[0].listen") && out.contains("Address already in use"),
        "{out}"
    );
}
