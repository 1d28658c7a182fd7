//! A private network namespace for one test thread: the thread moves in, so every process it
//! starts (redis-server, the forwarder, iptables) runs on that namespace's own loopback, and
//! rules and addresses vanish with it.

use std::process::Command;
use std::time::Duration;

use crate::process::{require, run_within};

/// A network namespace the calling thread lives in until drop, then deleted.
pub struct Netns {
    name: String,
}

/// Runs `cmd args` (within 30 s); panics with its stderr unless it succeeds.
pub fn run(cmd: &str, args: &[&str]) {
    let tool = require(cmd, if cmd == "ip" { "iproute2" } else { cmd });
    let out = run_within(Command::new(tool).args(args), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Creates the namespace and moves the calling thread into it (its children follow), with
    /// its loopback up.
    pub fn enter(tag: &str) -> Netns {
        let name = format!("fwd-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.join();
        run("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Moves the calling thread into the namespace.
    pub fn join(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        run_within(
            Command::new("ip").args(["netns", "del", &self.name]),
            Duration::from_secs(30),
        );
    }
}
