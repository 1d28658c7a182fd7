//! Processes the tests start: free ports, polling, prerequisites, and [`Proc`], a child reaped
//! on drop.

use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Makes the process `cmd` spawns get SIGKILL when the thread that spawns it ends: with the test,
/// or with `cargo xtask lab` even when that is killed or its terminal closes, so that no
/// redis-server, Sentinel or forwarder outlives whoever started it.
pub fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the forked child before exec. It only makes two syscalls
    // (prctl(PR_SET_PDEATHSIG), getppid), which are async-signal-safe; it allocates nothing and
    // takes no lock (the error of a failed check is a constant).
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died between fork and prctl: then nobody would kill us.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::ErrorKind::NotFound.into());
            }
            Ok(())
        })
    }
}

/// A port that was free a moment ago. Callers retry if it is taken by the time they bind.
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// `n` distinct ports that were free a moment ago: all are bound at once before any is let go,
/// so two calls of [`free_port`] cannot hand out the same one.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Polls `f` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        // Pacing: the poll interval.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of an installed `tool`; panics saying how to install `package` when it is missing.
pub fn require(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run `cargo xtask test` as root, or `apt-get install -y {package}`");
}

/// Runs `cmd` to completion within `limit` and returns its output: stdin is null, stdout and
/// stderr are captured, and it runs in its own process group. Use it for every short-lived
/// child of a test (a CLI call, a browser, `ip`): none may hang the suite.
///
/// # Panics
/// If `cmd` cannot be started; if it is still running at `limit` (it and its process group are
/// killed first); or if it exited but something it started still holds its output open at
/// `limit` (that process group is killed too). The message names the command, the limit and
/// shows what it printed so far.
pub fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = Collector::read(child.stdout.take().expect("stdout is piped"));
    let stderr = Collector::read(child.stderr.take().expect("stderr is piped"));
    let mut status = None;
    wait_until(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let pgid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("a child's pid is a positive i32");
    let kill_group = || {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    };
    let Some(status) = status else {
        kill_group();
        let _ = child.wait();
        // Whatever it printed until the kill (a grandchild outside the group may hold the pipes:
        // give the readers a moment, not forever).
        wait_until(Duration::from_secs(2), || stdout.ended() && stderr.ended());
        panic!(
            "{cmd:?} did not finish within {limit:?}: killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.text(),
            stderr.text()
        );
    };
    // Exited: its pipes reach EOF once whatever it started has let go of them too.
    let rest = limit.saturating_sub(start.elapsed());
    if !wait_until(rest, || stdout.ended() && stderr.ended()) {
        kill_group();
        panic!(
            "{cmd:?} exited ({status}) but a process it started kept its output open past \
             {limit:?}: killed its process group\n--- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.text(),
            stderr.text()
        );
    }
    Output {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// A pipe read to its end by a thread; what arrived so far is readable at any time.
struct Collector {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: JoinHandle<()>,
}

impl Collector {
    fn read(mut from: impl Read + Send + 'static) -> Collector {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let bytes = Arc::clone(&bytes);
            move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n @ 1..) = from.read(&mut buf) {
                    if let Ok(mut b) = bytes.lock() {
                        b.extend_from_slice(&buf[..n]);
                    }
                }
            }
        });
        Collector { bytes, reader }
    }

    /// Whether the pipe reached EOF (or failed): nothing more will arrive.
    fn ended(&self) -> bool {
        self.reader.is_finished()
    }

    /// What arrived so far, as text.
    fn text(&self) -> String {
        self.bytes
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Everything, once [`Collector::ended`].
    fn finish(self) -> Vec<u8> {
        self.reader.join().expect("a pipe reader thread panicked");
        Arc::try_unwrap(self.bytes)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .unwrap_or_default()
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub(crate) child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` as a reaped-on-drop child that dies with its parent ([`dies_with_parent`]).
    pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
        Ok(Proc {
            child: Some(dies_with_parent(cmd).spawn()?),
        })
    }

    /// The child's pid; 0 once it has been reaped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (e.g. `libc::SIGKILL`, `libc::SIGSTOP`); a no-op once the process is reaped.
    /// Delivery errors are ignored: the child may have exited on its own.
    ///
    /// # Panics
    /// If `sig` is not a named signal (real-time signals are not supported).
    pub fn signal(&self, sig: i32) {
        let signal = rustix::process::Signal::from_named_raw(sig)
            .unwrap_or_else(|| panic!("Proc::signal: {sig} is not a named signal number"));
        if let Some(c) = &self.child {
            let pid = i32::try_from(c.id()).expect("pid fits i32");
            let pid = rustix::process::Pid::from_raw(pid).expect("a child's pid is positive");
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Kills and reaps the process now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Some(status.code().unwrap_or(-1));
                }
            }
            // Pacing: the poll interval (a child's exit has no waitable handle with a timeout).
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use super::run_within;

    #[test]
    fn run_within_returns_the_output_of_a_child_that_finishes() {
        let out = run_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    #[should_panic(expected = "did not finish within 1s: killed\n--- stdout ---\nstarted")]
    fn run_within_kills_a_child_past_its_limit_and_shows_its_output() {
        run_within(
            Command::new("sh").args(["-c", "echo started; exec sleep 60"]),
            Duration::from_secs(1),
        );
    }

    #[test]
    #[should_panic(expected = "kept its output open")]
    fn run_within_does_not_wait_forever_for_a_grandchild_holding_the_output() {
        run_within(
            Command::new("sh").args(["-c", "sleep 60 & echo left it running"]),
            Duration::from_secs(1),
        );
    }
}
