//! systemd's notifications, none of which depends on the data path: `READY=1` once listening and
//! `STOPPING=1` on SIGTERM (`NOTIFY_SOCKET`), and, started the way systemd starts a `Type=notify`
//! unit with `WatchdogSec=` (`WATCHDOG_USEC`, and `WATCHDOG_PID` naming the daemon itself),
//! `WATCHDOG=1` again and again after `READY=1`; a reload (SIGHUP, `POST /reload`) framed by
//! `RELOADING=1` and `READY=1`, whether it is applied or refused; and `dist/forwarder.service`
//! clean under `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::endpoints::admin_request;
use harness::{echo, forwarder_bin, plain_service, require, run_within, tcp_server, Forwarder};

#[test]
fn watchdog_keepalives_are_sent_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // systemd sets WATCHDOG_PID to the service's main pid: `exec` keeps the shell's.
    let env = format!(
        "export NOTIFY_SOCKET='{}' WATCHDOG_USEC=400000 WATCHDOG_PID=$$; exec \"$0\" \"$@\"",
        path.display()
    );
    let mut f = Forwarder::start_with(
        &plain_service("plain", "{LISTEN}", tcp_server(echo), ""),
        &format!("mode = \"{}\"", harness::mode()),
        &["sh", "-c", &env],
    );
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification from the forwarder: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().contains("READY=1"));
    // Every message after readiness is a keepalive, until we stop it.
    for i in 0..5 {
        let msg = next();
        assert_eq!(msg.trim(), "WATCHDOG=1", "message {i} after READY=1");
    }
    f.proc().signal(libc::SIGTERM);
    // Keepalives already sent may come first.
    let mut msg = next();
    while msg.trim() == "WATCHDOG=1" {
        msg = next();
    }
    assert!(msg.contains("STOPPING=1"), "{msg}");
    assert_eq!(f.proc().wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn systemd_is_told_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut f = Forwarder::start_env(
        &plain_service("plain", "{LISTEN}", tcp_server(echo), ""),
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("readiness notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    f.proc().signal(libc::SIGTERM);
    let n = sock.recv(&mut buf).expect("stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert_eq!(f.proc().wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_reload_is_framed_by_reloading_and_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let services = plain_service("plain", "{LISTEN}", tcp_server(echo), "");
    let mut f = Forwarder::start_env(&services, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification from the forwarder: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().contains("READY=1"));

    // SIGHUP with a good file: RELOADING=1 with the time systemd wants beside it, then READY=1.
    f.rewrite(&services);
    f.proc().signal(libc::SIGHUP);
    let begin = next();
    assert!(begin.lines().any(|l| l == "RELOADING=1"), "{begin:?}");
    let usec = begin
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= in {begin:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{begin:?}");
    let end = next();
    assert!(end.lines().any(|l| l == "READY=1"), "{end:?}");
    assert!(end.contains("STATUS=configuration reloaded"), "{end:?}");

    // POST /reload of a broken file: refused, and systemd still hears the reload end.
    f.write_config("[[service]]\nname = \"broken\"\n");
    let (code, body) = admin_request(f.admin, "POST", "/reload", None).unwrap();
    assert_ne!(code, 200, "{body}");
    assert!(next().lines().any(|l| l == "RELOADING=1"));
    let end = next();
    assert!(end.lines().any(|l| l == "READY=1"), "{end:?}");
    assert!(end.contains("STATUS=reload refused"), "{end:?}");
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let analyze = require("systemd-analyze", "systemd");
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/forwarder.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let active: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    for want in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
    ] {
        assert!(active.contains(&want), "{want:?} not in the unit");
    }
    assert!(
        !active
            .iter()
            .any(|l| l.contains("CAP_BPF") || l.contains("CAP_NET_ADMIN")),
        "sockmap's capabilities belong in the commented variant only"
    );
    // verify wants every Exec binary to exist: the same unit, run from the binary under test.
    let bin = std::fs::canonicalize(forwarder_bin()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("forwarder.service");
    let text = text.replace("/usr/local/bin/forwarder", bin.to_str().unwrap());
    std::fs::write(&copy, text).unwrap();
    let out = run_within(
        Command::new(analyze).arg("verify").arg(&copy),
        Duration::from_secs(60),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}
