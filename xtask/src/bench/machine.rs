//! The machine a run measured on (kernel, CPU, versions of every program, load), for the report.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use super::first_line;

/// The first line (of stdout then stderr) of a command that contains `needle`.
fn version(cmd: &str, args: &[&str], needle: &str) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(crate::root())
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .find(|l| l.contains(needle))
                .map_or_else(|| first_line(&text), |l| l.trim().to_string())
        }
        Err(e) => format!("absent: {e}"),
    }
}

/// What the report says about the machine, by name.
pub fn machine_info() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("kernel".into(), version("uname", &["-r"], ""));
    m.insert(
        "cpus".into(),
        std::thread::available_parallelism().map_or("?".into(), |n| n.to_string()),
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    m.insert("cpu".into(), cpu);
    let mut rev = version("git", &["rev-parse", "--short", "HEAD"], "");
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(crate::root())
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        rev.push_str(" (with uncommitted changes)");
    }
    m.insert("forwarder git rev".into(), rev);
    m.insert("haproxy".into(), version("haproxy", &["-v"], "version"));
    m.insert("nginx".into(), version("nginx", &["-v"], "nginx version"));
    m.insert(
        "redis".into(),
        version("redis-server", &["--version"], "Redis"),
    );
    m.insert("socat".into(), version("socat", &["-V"], "socat version"));
    m.insert("iperf3".into(), version("iperf3", &["--version"], "iperf"));
    m.insert(
        "load average at start".into(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    );
    m
}
