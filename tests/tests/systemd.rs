//! systemd's notifications, none of which depends on the data path: `READY=1` once listening and
//! `STOPPING=1` on SIGTERM (`NOTIFY_SOCKET`), and, started the way systemd starts a `Type=notify`
//! unit with `WatchdogSec=` (`WATCHDOG_USEC`, and `WATCHDOG_PID` naming the daemon itself),
//! `WATCHDOG=1` again and again after `READY=1`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use harness::{echo, plain_service, tcp_server, Forwarder};

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
