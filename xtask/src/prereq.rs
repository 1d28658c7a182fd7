//! Prerequisites: Debian packages the workflow needs, installed when we are root, otherwise a
//! message that says exactly what to install. Nothing is skipped silently.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// A program (or, given as an absolute path, a file) and the Debian package that ships it.
pub struct Tool {
    pub program: &'static str,
    /// One package, or several separated by spaces, all installed together.
    pub package: &'static str,
}

pub const REDIS: Tool = Tool {
    program: "redis-server",
    package: "redis-server",
};
pub const SENTINEL: Tool = Tool {
    program: "redis-sentinel",
    package: "redis-sentinel",
};
pub const REDIS_CLI: Tool = Tool {
    program: "redis-cli",
    package: "redis-tools",
};
/// The comparison proxy of `cargo xtask bench` and its failover drills.
pub const HAPROXY: Tool = Tool {
    program: "haproxy",
    package: "haproxy",
};
/// nginx with its stream (TCP proxy) module, a comparison target of `cargo xtask bench`.
pub const NGINX: Tool = Tool {
    program: "nginx",
    package: "nginx libnginx-mod-stream",
};
/// The stream module alone, for an nginx installed without it.
pub const NGINX_STREAM: Tool = Tool {
    program: "/usr/lib/nginx/modules/ngx_stream_module.so",
    package: "libnginx-mod-stream",
};
pub const SOCAT: Tool = Tool {
    program: "socat",
    package: "socat",
};
pub const IPERF3: Tool = Tool {
    program: "iperf3",
    package: "iperf3",
};
pub const REDIS_BENCHMARK: Tool = Tool {
    program: "redis-benchmark",
    package: "redis-tools",
};
pub const CLANG: Tool = Tool {
    program: "clang-19",
    package: "clang-19",
};
pub const LIBBPF: Tool = Tool {
    program: "/usr/include/bpf/bpf_helpers.h",
    package: "libbpf-dev",
};
pub const KERNEL_HEADERS: Tool = Tool {
    program: "/usr/include/linux/bpf.h",
    package: "linux-libc-dev",
};
/// A real browser for the status page test.
pub const CHROMIUM: Tool = Tool {
    program: "chromium",
    package: "chromium",
};
/// `iptables` and `ip netns`, for the partition drill (`tests/tests/chaos.rs`).
pub const IPTABLES: Tool = Tool {
    program: "iptables",
    package: "iptables",
};
pub const IPROUTE: Tool = Tool {
    program: "ip",
    package: "iproute2",
};
/// `prlimit`, to run the forwarder under a small open-file limit in a test.
pub const PRLIMIT: Tool = Tool {
    program: "prlimit",
    package: "util-linux",
};
/// `capsh`, to run the forwarder without CAP_BPF in a test.
pub const CAPSH: Tool = Tool {
    program: "capsh",
    package: "libcap2-bin",
};
/// `promtool`, to check the alert rules, their unit tests and a live `/metrics`
/// (`tests/tests/telemetry.rs`); Debian ships it only in the Prometheus server's package.
pub const PROMTOOL: Tool = Tool {
    program: "promtool",
    package: "prometheus",
};
/// `systemd-analyze verify` of `dist/forwarder.service` (`tests/tests/systemd.rs`).
pub const SYSTEMD_ANALYZE: Tool = Tool {
    program: "systemd-analyze",
    package: "systemd",
};

/// Whether `program` is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes sure every tool is installed: installs the missing packages with apt-get when root,
/// otherwise fails with the command to run.
pub fn ensure(tools: &[Tool]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|t| {
            if t.program.starts_with('/') {
                !Path::new(t.program).is_file()
            } else {
                !have(t.program)
            }
        })
        .flat_map(|t| t.package.split_whitespace())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let cmd = format!("apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!("missing prerequisites; install them with: sudo {cmd}");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for t in tools {
        if !have(t.program) {
            bail!("{} is still missing after `{cmd}`", t.program);
        }
    }
    Ok(())
}

/// Runs a command to completion, failing with its command line on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
