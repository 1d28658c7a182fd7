//! What operators scrape and alert on, checked by Prometheus' own tool (`promtool`, Debian package
//! `prometheus`): a live `/metrics` of a forwarder in front of a real redis-server and real
//! Sentinels passes `promtool check metrics` with no lint and carries the build, process,
//! per-Sentinel and last-change metrics with sane values; `dist/prometheus`'s alert rules pass
//! `promtool check rules` and their unit tests; every metric name the rules and the Grafana
//! dashboard use is one the forwarder exports (or one of the few listed below), and every
//! dashboard query parses. None of it depends on the data path.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{
    echo, forwarder_bin, free_port, plain_service, require, run_within, tcp_server, wait_until,
    Conn, Forwarder, Redis, Reply, Sentinel,
};

fn promtool() -> PathBuf {
    require("promtool", "prometheus")
}

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

/// `promtool ARGS` run in `dir`, within a minute.
fn run_promtool(dir: &Path, args: &[&str]) -> Output {
    run_within(
        Command::new(promtool()).args(args).current_dir(dir),
        Duration::from_secs(60),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn samples(text: &str) -> Vec<prometheus_parse::Sample> {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses as Prometheus text")
        .samples
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = dist().join("prometheus");
    let out = run_promtool(&dir, &["check", "rules", "forwarder.rules.yml"]);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        text(&out)
    );
    let out = run_promtool(&dir, &["test", "rules", "forwarder.rules.test.yml"]);
    assert!(out.status.success(), "promtool test rules:\n{}", text(&out));
}

#[test]
fn a_live_scrape_passes_promtool_and_carries_build_process_and_sentinel_metrics() {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let redis = Redis::start();
    let sentinels: Vec<Sentinel> = (0..2)
        .map(|_| Sentinel::start("mymaster", redis.addr(), 2, 5000))
        .collect();
    // A third configured Sentinel that is not there: down, with its reason.
    let gone = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut addrs: Vec<SocketAddr> = sentinels.iter().map(Sentinel::addr).collect();
    addrs.push(gone);
    let f = Forwarder::start(&harness::sentinel_service(&[redis.addr()], &addrs, "5s"));
    assert!(
        wait_until(Duration::from_secs(10), || f.master("mymaster")
            == Some(redis.addr())),
        "never routed to the master: {:?}\n{}",
        f.status(),
        f.log_text()
    );
    for _ in 0..3 {
        let mut c = Conn::open(f.listen[0]).expect("connect through the forwarder");
        assert_eq!(c.cmd(&["PING"]).unwrap(), Reply::Simple("PONG".into()));
    }
    let sentinel_list = || {
        f.service_status("mymaster")
            .and_then(|s| s["sentinel"]["sentinels"].as_array().cloned())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let list = sentinel_list();
            list.len() == 3
                && list[..2].iter().all(|s| s["up"] == true)
                && list[2]["last_error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty())
        }),
        "each Sentinel is not reported: {:#?}",
        sentinel_list()
    );
    let list = sentinel_list();
    assert_eq!(list[2]["addr"], gone.to_string());
    assert_eq!(list[2]["up"], false);

    let scrape = f.metrics();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &scrape).unwrap();
    // promtool reads the exposition from stdin.
    let out = run_within(
        Command::new("sh")
            .args(["-c", "exec \"$0\" check metrics < \"$1\""])
            .arg(promtool())
            .arg(file.path()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "promtool check metrics ({}):\n{}\n--- scrape ---\n{scrape}",
        out.status,
        text(&out)
    );

    let s = samples(&scrape);
    let build = s
        .iter()
        .find(|x| x.metric == "forwarder_build_info")
        .unwrap_or_else(|| panic!("no forwarder_build_info:\n{scrape}"));
    let version = run_within(
        Command::new(forwarder_bin()).arg("--version"),
        Duration::from_secs(10),
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("forwarder {}", build.labels.get("version").unwrap_or("-"))
    );
    let revision = build.labels.get("revision").unwrap_or("");
    assert!(
        revision == "unknown"
            || (revision.len() == 12 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "revision {revision:?}"
    );
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}:\n{scrape}"))
    };
    let (open, max) = (get("process_open_fds", &[]), get("process_max_fds", &[]));
    assert!(open > 0.0 && open <= max, "open {open}, max {max}");
    assert!(get("process_resident_memory_bytes", &[]) > 1e6);
    assert!(get("process_cpu_seconds_total", &[]) >= 0.0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = get("process_start_time_seconds", &[]);
    // The kernel's boot time is whole seconds: the start may read up to a second early.
    assert!(
        start >= started.as_secs_f64() - 2.0 && start <= now,
        "start {start}, test began {started:?}, now {now}"
    );
    let change = get(
        "forwarder_last_master_change_timestamp_seconds",
        &[("service", "mymaster")],
    );
    assert!(
        change >= start - 1.0 && change <= now,
        "last change {change}"
    );
    for (addr, up) in [(addrs[0], 1.0), (addrs[1], 1.0), (gone, 0.0)] {
        let labels = [("service", "mymaster"), ("sentinel", &*addr.to_string())];
        assert_eq!(get("forwarder_sentinel_up", &labels), up, "{addr}");
    }
}

/// The metric names `text` mentions: words starting `forwarder_` or `process_`.
fn names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("forwarder_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_and_rules_use_only_exported_metrics_and_their_queries_parse() {
    let f = Forwarder::start(&plain_service("plain", "{LISTEN}", tcp_server(echo), ""));
    let scrape = f.metrics();
    // Every family has its TYPE line, with or without samples.
    let known: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    assert!(known.contains("process_open_fds"), "{scrape}");
    let exported = |name: &str| {
        known.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|h| known.contains(h)))
    };
    let dashboard_path = dist().join("grafana/forwarder.json");
    let dashboard_text = std::fs::read_to_string(&dashboard_path).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let rules = std::fs::read_to_string(dist().join("prometheus/forwarder.rules.yml")).unwrap();
    for (file, text) in [("dashboard", &dashboard_text), ("rules", &rules)] {
        let unknown: Vec<String> = names_in(text)
            .into_iter()
            .filter(|n| !exported(n))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unknown metrics {unknown:?}"
        );
    }

    // Every panel query, with the dashboard's variables filled in, is valid PromQL: promtool
    // checks them as recording rules.
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                t["expr"]
                    .as_str()
                    .expect("a target has an expr")
                    .to_string(),
            );
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$service", ".*")
            .replace("$job", ".*");
        let quoted = serde_json::to_string(&e).unwrap();
        file.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.rules.yml"), file).unwrap();
    let out = run_promtool(dir.path(), &["check", "rules", "dashboard.rules.yml"]);
    assert!(out.status.success(), "dashboard queries:\n{}", text(&out));
}
