//! Dropping root after setup: `[process] user`/`group`. Runs while the process is still
//! single-threaded, so every thread started afterwards (tokio, io_uring workers) inherits exactly
//! the kept credentials and capabilities.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Group, Uid, User};

use crate::config::{Mode, Process};

/// Why the privileges could not be dropped; the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// `process.user` or `process.group` names nobody, or the lookup failed.
    #[error("process.{key}: {what}")]
    Lookup {
        /// `user` or `group`.
        key: &'static str,
        /// What went wrong, with the name looked up.
        what: String,
    },
    /// A step of the switch failed (after it, nothing of the old credentials may be left).
    #[error("dropping privileges to {user:?}: {step}: {source}")]
    Switch {
        /// The configured user.
        user: String,
        /// The step that failed, e.g. `setuid` or `permitted set`.
        step: &'static str,
        /// Its error.
        source: std::io::Error,
    },
    /// Every call succeeded and yet the process still has its old uid.
    #[error("dropping privileges to {user:?}: the uid did not change")]
    Unchanged {
        /// The configured user.
        user: String,
    },
}

/// The capabilities still needed after the switch: binding ports below 1024 (reloads add
/// listeners), and for the sockmap data path loading BPF (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)
/// and updating its maps.
pub fn needed(mode: Mode) -> CapsHashSet {
    let mut keep = CapsHashSet::from([Capability::CAP_NET_BIND_SERVICE]);
    if mode == Mode::Sockmap {
        keep.insert(Capability::CAP_BPF);
        keep.insert(Capability::CAP_NET_ADMIN);
        // The program reads the socket's TCP state (bpf_skc_to_tcp_sock), a helper the
        // verifier grants only with CAP_PERFMON.
        keep.insert(Capability::CAP_PERFMON);
    }
    keep
}

/// Switches to `p.user`/`p.group` keeping `keep`; nothing to do when no user is configured.
pub fn drop_to(p: &Process, keep: &CapsHashSet) -> Result<(), PrivilegeError> {
    let Some(name) = &p.user else {
        return Ok(());
    };
    let lookup = |key, what| PrivilegeError::Lookup { key, what };
    let user = User::from_name(name)
        .map_err(|e| lookup("user", format!("looking up {name:?}: {e}")))?
        .ok_or_else(|| lookup("user", format!("no user {name:?}")))?;
    let gid = match &p.group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| lookup("group", format!("looking up {g:?}: {e}")))?
                .ok_or_else(|| lookup("group", format!("no group {g:?}")))?
                .gid
        }
        None => user.gid,
    };
    switch(user.uid, gid, keep).map_err(|(step, source)| PrivilegeError::Switch {
        user: name.clone(),
        step,
        source,
    })?;
    if Uid::current() != user.uid || Uid::effective() != user.uid {
        return Err(PrivilegeError::Unchanged { user: name.clone() });
    }
    let mut kept: Vec<String> = keep.iter().map(ToString::to_string).collect();
    kept.sort();
    tracing::info!(user = %name, uid = user.uid.as_raw(), gid = gid.as_raw(),
        capabilities = %health::plain::Joined(&kept), "privileges dropped");
    Ok(())
}

/// The switch, step by step; an error names the step that failed.
fn switch(uid: Uid, gid: Gid, keep: &CapsHashSet) -> Result<(), (&'static str, std::io::Error)> {
    let caps =
        |step| move |e: caps::errors::CapsError| (step, std::io::Error::other(e.to_string()));
    let sys = |step| move |e: nix::Error| (step, std::io::Error::from(e));
    // Nothing outside `keep` may ever come back, not even through exec.
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(caps("bounding set"))?;
        }
    }
    // Keep the permitted set across setuid; the effective set is restored below.
    nix::sys::prctl::set_keepcaps(true).map_err(sys("PR_SET_KEEPCAPS"))?;
    nix::unistd::setgroups(&[gid]).map_err(sys("setgroups"))?;
    nix::unistd::setgid(gid).map_err(sys("setgid"))?;
    nix::unistd::setuid(uid).map_err(sys("setuid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("PR_SET_KEEPCAPS"))?;
    caps::set(None, CapSet::Permitted, keep).map_err(caps("permitted set"))?;
    caps::set(None, CapSet::Effective, keep).map_err(caps("effective set"))?;
    Ok(())
}
