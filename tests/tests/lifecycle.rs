//! The daemon's life beyond SIGTERM (`ops.rs`), in the data path under test: SIGINT drains
//! like SIGTERM and exits 0; a reload whose new listen address another process holds is refused
//! as a whole (logged, `forwarder reload` says why) while the running configuration keeps
//! serving; the privilege drop leaves no thread with root's group or supplementary groups.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use harness::{forwarder_bin, plain_service, tcp_server, wait_until, Forwarder};

/// Sends its tag byte, then echoes until EOF.
fn echo_tagged(mut s: TcpStream, tag: u8) {
    if s.write_all(&[tag]).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
}

fn one(s: TcpStream) {
    echo_tagged(s, b'1');
}

fn two(s: TcpStream) {
    echo_tagged(s, b'2');
}

/// A session through `addr`: the backend's tag, and the stream.
fn tagged_session(addr: SocketAddr) -> Option<(TcpStream, u8)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut t = [0u8; 1];
    c.read_exact(&mut t).ok()?;
    Some((c, t[0]))
}

fn ping(c: &mut TcpStream) -> bool {
    let mut got = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut got).is_ok() && &got == b"ping"
}

fn up(f: &Forwarder, service: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || f.master(service).is_some()),
        "{}",
        f.log_text()
    );
}

#[test]
fn sigint_drains_like_sigterm_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut f = Forwarder::start_env(
        &plain_service(
            "plain",
            "{LISTEN}",
            tcp_server(one),
            r#"timeout = { drain = "30s" }"#,
        ),
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    up(&f, "plain");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("readiness notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    let (mut c, _) = tagged_session(f.listen[0]).expect("a session");
    assert!(ping(&mut c));

    f.proc().signal(libc::SIGINT);
    let n = sock.recv(&mut buf).expect("stopping notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(f.listen[0])
            .is_err()),
        "the listener still accepts after SIGINT"
    );
    assert!(
        ping(&mut c),
        "an established session stopped working during the drain"
    );
    assert!(
        f.proc().wait_exit(Duration::from_millis(500)).is_none(),
        "exited before the session ended (SIGINT did not drain)"
    );
    drop(c);
    assert_eq!(f.proc().wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        f.log_text().contains("all sessions drained"),
        "{}",
        f.log_text()
    );
}

/// Runs `forwarder reload --admin <f's admin>`; returns whether it succeeded, and its stdout
/// and stderr.
fn cli_reload(f: &Forwarder) -> (bool, String) {
    let out = Command::new(forwarder_bin())
        .args(["reload", "--admin", &f.admin.to_string()])
        .output()
        .expect("run forwarder reload");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_reload_onto_a_port_in_use_changes_nothing_and_says_why() {
    let (b1, b2) = (tcp_server(one), tcp_server(two));
    let mut f = Forwarder::start(&plain_service("a", "{LISTEN}", b1, ""));
    up(&f, "a");
    let a = f.listen[0].to_string();
    let changed = |new_listen: &str| {
        format!(
            "{}{}",
            plain_service("a", &a, b2, ""),
            plain_service("b", new_listen, b1, "")
        )
    };

    // 1. SIGHUP, with the new address held by another process as written.
    let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken = holder.local_addr().unwrap();
    f.rewrite(&changed(&taken.to_string()));
    f.proc().signal(libc::SIGHUP);
    let refusal = format!("service[1].listen: cannot listen on {taken}");
    assert!(
        wait_until(Duration::from_secs(10), || f.log_text().contains(&refusal)),
        "{}",
        f.log_text()
    );
    assert!(
        f.log_text()
            .contains("reload refused, the running configuration stays"),
        "{}",
        f.log_text()
    );
    assert!(f.log_text().contains("already in use"), "{}", f.log_text());

    // 2. `forwarder reload`, with the port held on the wildcard address: the same port written
    // differently.
    let wildcard = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = wildcard.local_addr().unwrap().port();
    let same = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    f.rewrite(&changed(&same.to_string()));
    let (ok, text) = cli_reload(&f);
    assert!(!ok, "the reload was accepted: {text}");
    assert!(
        text.contains(&format!("cannot listen on {same}")) && text.contains("in use"),
        "{text}"
    );

    // Nothing changed: "a" still sends its clients to its old server, "b" does not exist.
    for _ in 0..3 {
        let got = tagged_session(f.listen[0]).map(|(_, t)| t);
        assert_eq!(
            got,
            Some(b'1'),
            "service a changed although the reload was refused"
        );
    }
    assert!(f.service_status("b").is_none(), "{:?}", f.status());
    assert!(!f.log_text().contains("reloaded:"), "{}", f.log_text());

    // Once the port is free, the same file is accepted: the refusal was the port's.
    drop(wildcard);
    drop(holder);
    let (ok, text) = cli_reload(&f);
    assert!(ok, "{text}");
    assert!(
        text.contains("reloaded: 0 unchanged, 1 changed, 1 added, 0 removed"),
        "{text}"
    );
    assert!(wait_until(Duration::from_secs(10), || tagged_session(
        f.listen[0]
    )
    .is_some_and(|(_, t)| t == b'2')));
    assert!(wait_until(Duration::from_secs(10), || tagged_session(same)
        .is_some_and(|(_, t)| t == b'1')));
}

/// The credentials of one thread, from `/proc/<pid>/task/<tid>/status`.
#[derive(Debug)]
struct Credentials {
    task: String,
    uid: Vec<String>,
    gid: Vec<String>,
    groups: Vec<String>,
}

/// The `Uid:`, `Gid:` and `Groups:` fields of every thread of `pid`.
fn credentials_of_every_thread(pid: u32) -> Vec<Credentials> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue; // a thread that just exited
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
                .unwrap_or_else(|| panic!("no {name} in {}", task.display()))
        };
        out.push(Credentials {
            task: task.display().to_string(),
            uid: field("Uid:"),
            gid: field("Gid:"),
            groups: field("Groups:"),
        });
    }
    out
}

/// Starts the forwarder as root holding supplementary groups 0, 4 and 27 (`setpriv`), with
/// `[process]` set to `process`; a session proves it serves.
fn started_with_groups(process: &str) -> Forwarder {
    harness::require("setpriv", "util-linux");
    let f = Forwarder::start_with(
        &format!(
            "[process]\n{process}\n\n{}",
            plain_service("plain", "{LISTEN}", tcp_server(one), "")
        ),
        &format!("mode = \"{}\"", harness::mode()),
        &["setpriv", "--groups", "0,4,27", "--"],
    );
    up(&f, "plain");
    let (mut c, _) = tagged_session(f.listen[0]).expect("a session");
    assert!(ping(&mut c));
    f
}

fn assert_dropped_to(f: &mut Forwarder, uid: &str, gid: &str) {
    let pid = f.proc().pid();
    let threads = credentials_of_every_thread(pid);
    assert!(threads.len() > 1, "{threads:?}");
    for t in &threads {
        assert_eq!(t.uid, vec![uid.to_string(); 4], "{}", t.task);
        assert_eq!(
            t.gid,
            vec![gid.to_string(); 4],
            "{}: the group was not dropped",
            t.task
        );
        assert!(
            t.groups.iter().all(|g| g == gid),
            "{}: supplementary groups left: {:?}",
            t.task,
            t.groups
        );
    }
}

#[test]
fn the_privilege_drop_drops_the_group_and_supplementary_groups() {
    // The user's primary group by default (nobody: nogroup, 65534).
    let mut f = started_with_groups("user = \"nobody\"");
    assert_dropped_to(&mut f, "65534", "65534");
    // Or the configured group (daemon: 1).
    let mut f = started_with_groups("user = \"nobody\"\ngroup = \"daemon\"");
    assert_dropped_to(&mut f, "65534", "1");
}
