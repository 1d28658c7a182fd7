//! Dropping root after setup: `[process] user`/`group`. Runs while the process is still
//! single-threaded, so every thread started afterwards (tokio, io_uring workers) inherits exactly
//! the kept credentials and capabilities.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Group, Uid, User};

use crate::config::{Mode, Process};

/// The capabilities still needed after the switch: binding ports below 1024 (reloads add
/// listeners), and for the sockmap data path loading BPF and updating its maps.
pub fn needed(mode: Mode) -> CapsHashSet {
    let mut keep = CapsHashSet::from([Capability::CAP_NET_BIND_SERVICE]);
    if mode == Mode::Sockmap {
        keep.insert(Capability::CAP_BPF);
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    keep
}

/// Switches to `p.user`/`p.group` keeping `keep`; nothing to do when no user is configured.
pub fn drop_to(p: &Process, keep: &CapsHashSet) -> Result<(), String> {
    let Some(name) = &p.user else {
        return Ok(());
    };
    let user = User::from_name(name)
        .map_err(|e| format!("process.user: looking up {name:?}: {e}"))?
        .ok_or_else(|| format!("process.user: no user {name:?}"))?;
    let gid = match &p.group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("process.group: looking up {g:?}: {e}"))?
                .ok_or_else(|| format!("process.group: no group {g:?}"))?
                .gid
        }
        None => user.gid,
    };
    switch(user.uid, gid, keep).map_err(|e| format!("dropping privileges to {name:?}: {e}"))?;
    tracing::info!(user = %name, uid = user.uid.as_raw(), gid = gid.as_raw(),
        capabilities = ?keep, "privileges dropped");
    Ok(())
}

fn switch(uid: Uid, gid: Gid, keep: &CapsHashSet) -> Result<(), String> {
    // Nothing outside `keep` may ever come back, not even through exec.
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("bounding set: {e}"))?;
        }
    }
    // Keep the permitted set across setuid; the effective set is restored below.
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
    nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(gid).map_err(|e| format!("setgid: {e}"))?;
    nix::unistd::setuid(uid).map_err(|e| format!("setuid: {e}"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
    caps::set(None, CapSet::Permitted, keep).map_err(|e| format!("permitted set: {e}"))?;
    caps::set(None, CapSet::Effective, keep).map_err(|e| format!("effective set: {e}"))?;
    if Uid::current() != uid || Uid::effective() != uid {
        return Err("the uid did not change".into());
    }
    Ok(())
}
