//! The descriptor budget, computed at start instead of discovered at EMFILE.
//!
//! Every session holds two descriptors (client and server socket); the uring path adds pipes
//! (two descriptors each, at most its pipe budget per worker); the control plane needs its own:
//! one per health check in flight, two per Sentinel (query and subscription), the listeners, the
//! admin connections, and room to do it all twice during a reload (new listeners and checks
//! start beside the old ones). The open-file soft limit is raised to the hard limit first.
//!
//! A configuration whose explicit `maxconn` values cannot all be honoured is refused with the
//! numbers; `maxconn = "auto"` (the default) shares what is left, HAProxy-style. Admission then
//! turns clients away (counted as `maxconn`) before the process runs out, so running out of
//! descriptors never fails a health check, and never cuts a session.

use crate::config::{Config, Mode, MAX_MAXCONN};

/// Pipes one uring worker may have open at most, pooled and held (two descriptors each); the
/// plan may give it fewer (`Budget::pipes_per_worker`).
pub const PIPES_PER_WORKER_MAX: usize = 384;

/// Descriptors for everything that is not per service: stdio, the tokio driver, rings and their
/// eventfds, BPF maps and programs, log files.
const BASE: u64 = 64;
/// Admin connections open at once, at most (see `admin`).
pub const ADMIN_CONNECTIONS: u64 = 64;
/// `maxconn = "auto"` gives one service at most this many sessions.
const AUTO_MAX: u64 = 10_000;

/// What the descriptors were planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The open-file limit the plan is for.
    pub limit: u64,
    /// Descriptors kept for everything but sessions.
    pub reserved: u64,
    /// Sessions all services may hold together (two descriptors each).
    pub sessions: u64,
    /// Pipes each uring worker may open (0 when uring cannot run).
    pub pipes_per_worker: usize,
}

/// A configuration the limit cannot honour: the key to change (`-` for the file as a whole) and
/// why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct BudgetError {
    /// The configuration key to change, e.g. `service.cache.maxconn`; `-` for the whole file.
    pub key: String,
    /// Why, with the numbers (limit, reserve, what was asked).
    pub reason: String,
}

fn refuse(key: impl Into<String>, reason: String) -> BudgetError {
    BudgetError {
        key: key.into(),
        reason,
    }
}

/// Raises the soft open-file limit to the hard limit and returns it.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard)
}

/// The hard open-file limit of this process (what `run` will raise the soft limit to).
pub fn hard_nofile_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, Resource};
    Ok(getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(std::io::Error::from)?
        .1)
}

/// Plans `cfg` for `limit` descriptors: resolves every `maxconn = "auto"` and checks that the
/// explicit ones fit.
pub fn plan(cfg: &mut Config, limit: u64) -> Result<Budget, BudgetError> {
    let threads = cfg.datapath.threads() as u64;
    let uring = matches!(cfg.datapath.mode, Mode::Auto | Mode::Uring | Mode::Sockmap);
    let listeners = match cfg.datapath.mode {
        Mode::Auto | Mode::Uring => threads,
        Mode::Userspace | Mode::Sockmap => 1,
    };
    let mut control = BASE + cfg.admin.as_ref().map_or(0, |_| ADMIN_CONNECTIONS + 1);
    for s in &cfg.service {
        let checked = match &s.sentinel {
            Some(st) if s.servers.is_empty() => st.max_servers as u64,
            _ => s.servers.len() as u64,
        };
        let sentinels = s
            .sentinel
            .as_ref()
            .map_or(0, |st| 2 * st.addresses.len() as u64);
        // Twice: a reload binds and checks beside the running service before it swaps.
        control += 2 * (listeners + checked + sentinels);
    }
    // Pipes: a sixteenth of the limit, split among the workers, within [8, max] each.
    let pipes_per_worker = if uring {
        (limit / 16 / threads.max(1)).clamp(8, PIPES_PER_WORKER_MAX as u64) as usize
    } else {
        0
    };
    let reserved = control + 2 * threads * pipes_per_worker as u64;
    let Some(free) = limit.checked_sub(reserved).filter(|f| *f >= 2) else {
        return Err(refuse(
            "-",
            format!(
                "the open-file limit is {limit} descriptors, and {reserved} are needed before any \
             session (checks, Sentinels, listeners, admin, pipes): raise it (LimitNOFILE= in the \
             systemd unit, ulimit -n)"
            ),
        ));
    };
    let sessions = free / 2;
    let mut explicit = 0u64;
    let mut over = None;
    for (i, s) in cfg
        .service
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.maxconn_auto)
    {
        explicit += u64::from(s.maxconn);
        if explicit > sessions && over.is_none() {
            over = Some(format!("service[{i}].maxconn"));
        }
    }
    if let Some(key) = over {
        return Err(refuse(
            key,
            format!(
            "maxconn adds up to {explicit} sessions, which need {} descriptors (two each) plus \
             {reserved} reserved (checks, Sentinels, listeners, admin, pipes) = {}; the \
             open-file limit is {limit}, enough for {sessions} sessions: lower maxconn, use \
             maxconn = \"auto\", or raise the limit (LimitNOFILE=, ulimit -n)",
            2 * explicit,
            2 * explicit + reserved
        ),
        ));
    }
    let autos = cfg.service.iter().filter(|s| s.maxconn_auto).count() as u64;
    if let Some(share) = (sessions - explicit).checked_div(autos) {
        let share = share.min(AUTO_MAX.min(u64::from(MAX_MAXCONN)));
        if share == 0 {
            return Err(refuse(
                "-",
                format!(
                "no descriptors are left for the services with maxconn = \"auto\": the explicit \
                 maxconn values take {explicit} of the {sessions} sessions the open-file limit \
                 ({limit}) allows"
            ),
            ));
        }
        for (i, s) in cfg.service.iter_mut().enumerate() {
            if s.maxconn_auto {
                s.maxconn = share as u32;
                if let Some(p) = s.maxconn_per_source.filter(|p| *p > s.maxconn) {
                    return Err(refuse(
                        format!("service[{i}].maxconn_per_source"),
                        format!(
                            "{p} is more than maxconn (\"auto\": {share} under the open-file \
                             limit of {limit})"
                        ),
                    ));
                }
            }
        }
    }
    Ok(Budget {
        limit,
        reserved,
        sessions,
        pipes_per_worker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(mode: &str, maxconn: &str) -> Config {
        let text = format!(
            "[datapath]\nmode = \"{mode}\"\nworkers = 2\n[[service]]\nname = \"a\"\n\
             listen = \"127.0.0.1:7000\"\nservers = [\"127.0.0.1:7001\"]\n{maxconn}\n"
        );
        Config::parse(&text, Path::new("t.toml")).expect("valid")
    }

    #[test]
    fn auto_shares_what_the_reserve_leaves() {
        let mut c = cfg("userspace", "");
        let b = plan(&mut c, 20_000).unwrap();
        assert_eq!(b.pipes_per_worker, 0);
        assert_eq!(u64::from(c.service[0].maxconn), b.sessions.min(AUTO_MAX));
        assert!(2 * u64::from(c.service[0].maxconn) + b.reserved <= 20_000);

        let mut c = cfg("uring", "maxconn = \"auto\"");
        let b = plan(&mut c, 1024).unwrap();
        assert!(b.pipes_per_worker >= 8);
        let used = 2 * u64::from(c.service[0].maxconn) + b.reserved;
        assert!(used <= 1024, "{b:?} uses {used}");
        assert!(c.service[0].maxconn > 300, "{b:?}");
    }

    #[test]
    fn an_explicit_maxconn_past_the_limit_is_refused_with_the_numbers() {
        let mut c = cfg("uring", "maxconn = 10000");
        let e = plan(&mut c, 20_000).unwrap_err().to_string();
        assert!(e.contains("10000 sessions") && e.contains("20000"), "{e}");
        let mut c = cfg("uring", "maxconn = 9000");
        let b = plan(&mut c, 20_000).unwrap();
        assert!(18_000 + b.reserved <= 20_000, "{b:?}");
        assert!(plan(&mut cfg("userspace", ""), 60).is_err());
    }
}
