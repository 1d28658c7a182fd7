//! Processes the tests start: free ports, polling, prerequisites, and [`Proc`], a child reaped
//! on drop.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A port that was free a moment ago. Callers retry if it is taken by the time they bind.
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
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

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub(crate) child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` as a reaped-on-drop child.
    pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
        Ok(Proc {
            child: Some(cmd.spawn()?),
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
