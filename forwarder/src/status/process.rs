//! The build and the process as Prometheus' standard metrics describe them: `forwarder_build_info`
//! (the version and the git commit `build.rs` found, `unknown` outside a git checkout) and
//! `process_*` (resident memory, descriptors open and allowed, start time, CPU time), read from
//! `/proc/self` with plain file reads.

use serde::{Deserialize, Serialize};

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// The crate version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The git commit it was built from, `unknown` when not built in a git checkout.
    pub revision: String,
}

impl BuildInfo {
    /// This binary's.
    pub fn current() -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: env!("FORWARDER_REVISION").to_string(),
        }
    }
}

/// The process's resources, as `/proc/self` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Resident set size, in bytes.
    pub resident_memory_bytes: u64,
    /// Descriptors open now.
    pub open_fds: u64,
    /// The open-file soft limit (after the start raised it to the hard limit).
    pub max_fds: u64,
    /// When the process started, in ms since the Unix epoch.
    pub start_time_unix_ms: u64,
    /// User and system CPU time used, in ms.
    pub cpu_ms: u64,
}

impl ProcessStats {
    /// Reads them now; `None` (and the `process_*` metrics absent) when `/proc` is not mounted.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields = stat_fields(&stat)?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let ticks = rustix::param::clock_ticks_per_second().max(1);
        let ms = |t: u64| t.saturating_mul(1000) / ticks;
        Some(ProcessStats {
            resident_memory_bytes: pages.saturating_mul(rustix::param::page_size() as u64),
            open_fds,
            max_fds: soft,
            start_time_unix_ms: btime.saturating_mul(1000) + ms(fields.start_ticks),
            cpu_ms: ms(fields.utime.saturating_add(fields.stime)),
        })
    }
}

/// The fields of `/proc/self/stat` used here, in clock ticks.
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// Fields 14, 15 and 22 of `/proc/PID/stat` (`man 5 proc`). The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses: counting starts after the last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: at(14)?,
        stime: at(15)?,
        start_ticks: at(22)?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    17 5 0 0 20 0 3 0 987654 12345678 900 18446744073709551615";
        assert_eq!(
            stat_fields(line),
            Some(StatFields {
                utime: 17,
                stime: 5,
                start_ticks: 987654,
            })
        );
        assert_eq!(stat_fields("12 (short) S 1 2"), None);
    }

    #[test]
    fn this_process_reads_as_running_with_descriptors_and_memory() {
        let p = ProcessStats::read().expect("/proc is mounted here");
        assert!(p.open_fds >= 3, "{p:?}");
        assert!(p.max_fds >= p.open_fds, "{p:?}");
        assert!(p.resident_memory_bytes > 0, "{p:?}");
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        // btime is whole seconds: the start can read up to a second early, never in the future.
        assert!(p.start_time_unix_ms <= now_ms + 1000, "{p:?}");
        assert!(p.start_time_unix_ms > 1_600_000_000_000, "{p:?}");
    }

    #[test]
    fn the_build_names_its_version() {
        let b = BuildInfo::current();
        assert_eq!(b.version, env!("CARGO_PKG_VERSION"));
        assert!(!b.revision.is_empty());
    }
}
