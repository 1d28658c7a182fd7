//! Choosing the data path: `auto` takes uring where it works and falls back to userspace with a
//! reason when the kernel or a sandbox forbids it; an explicitly requested path that cannot run
//! is a startup error. The obstacles are real: a
//! seccomp filter that denies `io_uring_setup` (`deny-io-uring`), and `capsh` dropping CAP_BPF
//! and CAP_SYS_ADMIN.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use harness::{
    echo, forwarder_exit_with, plain_service, tcp_server, wait_until, Forwarder, WITHOUT_BPF_CAPS,
};

const DENY_URING: &str = env!("CARGO_BIN_EXE_deny-io-uring");

fn service(backend: SocketAddr, listen: &str) -> String {
    plain_service("plain", listen, backend, "")
}

fn round_trip(f: &Forwarder) {
    assert!(
        wait_until(Duration::from_secs(10), || f.master("plain").is_some()),
        "backend never became up: {}",
        f.log_text()
    );
    let mut c = TcpStream::connect(f.listen[0]).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).expect("echo through the forwarder");
    assert_eq!(&got, b"ping");
}

/// The one log line in which `auto` says what it chose and why.
fn auto_line(f: &Forwarder) -> String {
    let logged = f.wait_for_log("datapath auto: using", Duration::from_secs(5));
    let log = f.log_text();
    assert!(logged, "auto never said what it chose: {log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("datapath auto: using"))
        .collect();
    assert_eq!(lines.len(), 1, "one log line says what auto chose: {log}");
    lines[0].to_string()
}

#[test]
fn auto_uses_uring_where_it_works() {
    let f = Forwarder::start_with(
        &service(tcp_server(echo), "{LISTEN}"),
        "mode = \"auto\"",
        &[],
    );
    let st = f.status().expect("status");
    assert_eq!(st["datapath"], "uring", "{}", f.log_text());
    assert!(st["datapath_fallback"].is_null());
    assert!(auto_line(&f).contains("using uring"));
    round_trip(&f);
}

#[test]
fn auto_falls_back_to_userspace_when_io_uring_is_forbidden() {
    let f = Forwarder::start_with(
        &service(tcp_server(echo), "{LISTEN}"),
        "mode = \"auto\"",
        &[DENY_URING],
    );
    let st = f.status().expect("status");
    assert_eq!(st["datapath"], "userspace", "{}", f.log_text());
    let why = st["datapath_fallback"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("uring: ") && why.contains("EPERM"),
        "fallback reason: {why:?}"
    );
    let line = auto_line(&f);
    assert!(
        line.contains("using userspace, because uring cannot run here") && line.contains("EPERM"),
        "{line}"
    );
    assert!(
        f.metrics()
            .contains("forwarder_datapath_info{mode=\"userspace\",fallback=\"uring: "),
        "{}",
        f.metrics()
    );
    round_trip(&f);
}

#[test]
fn uring_requested_where_it_is_forbidden_is_a_startup_error() {
    let config = format!(
        "[datapath]\nmode = \"uring\"\n\n{}",
        service(
            tcp_server(echo),
            &format!("127.0.0.1:{}", harness::free_port())
        )
    );
    let (code, log) = forwarder_exit_with(&[DENY_URING], "run", &config);
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("datapath mode \"uring\" cannot run here") && log.contains("EPERM"),
        "{log}"
    );
}

/// Whether this process holds every capability in `bits` (numbers, as in `capability.h`) in its
/// effective set.
fn holds_capabilities(bits: &[u32]) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapEff in /proc/self/status");
    bits.iter().all(|b| eff & (1 << b) != 0)
}

/// The claim is that dropping CAP_BPF (with CAP_SYS_ADMIN and CAP_PERFMON) is what stops the
/// sockmap path, so the same start must work with them: without root this test would pass for
/// free, so it refuses to run instead.
#[test]
fn sockmap_requested_without_cap_bpf_is_a_startup_error() {
    harness::require("capsh", "libcap2-bin");
    // CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39: what WITHOUT_BPF_CAPS drops.
    assert!(
        holds_capabilities(&[21, 38, 39]),
        "this test needs CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN to drop (it proves that dropping \
         them is what stops sockmap): run it as root, e.g. `sudo cargo xtask test` or \
         `sudo -E cargo test -p harness --test datapath`"
    );
    let backend = tcp_server(echo);
    // With the capabilities, through capsh without dropping anything, sockmap runs.
    let f = Forwarder::start_with(
        &service(backend, "{LISTEN}"),
        "mode = \"sockmap\"",
        &["capsh", "--", "-c", "exec \"$0\" \"$@\""],
    );
    assert_eq!(
        f.status().expect("status")["datapath"],
        "sockmap",
        "{}",
        f.log_text()
    );
    round_trip(&f);
    drop(f);
    // The same, with them dropped: refused at startup.
    let config = format!(
        "[datapath]\nmode = \"sockmap\"\n\n{}",
        service(backend, &format!("127.0.0.1:{}", harness::free_port()))
    );
    let (code, log) = forwarder_exit_with(WITHOUT_BPF_CAPS, "run", &config);
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("datapath mode \"sockmap\" cannot run here"),
        "{log}"
    );
    // And for want of the permission, not something else.
    assert!(log.contains("Operation not permitted"), "{log}");
}
