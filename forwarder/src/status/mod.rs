//! What the daemon reports about itself: one typed model, [`Status`], built once per request from
//! the running services and rendered three ways: `/status` is its JSON, [`page`] the HTML status
//! page, [`prometheus`] the `/metrics` text; [`cli`] reads the JSON back into the same type for
//! `forwarder status`. A field renamed here is renamed everywhere, or the build fails.
//! [`process`] reads the build and process facts (`forwarder_build_info`, `process_*`).

pub mod cli;
pub mod page;
pub mod process;
pub mod prometheus;

use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use health::HistogramSnapshot;
use serde::{Deserialize, Serialize};

use crate::metrics::{ServiceStats, StatsSnapshot};
pub use process::{BuildInfo, ProcessStats};

/// The whole daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The version and git commit of this binary.
    pub build: BuildInfo,
    /// Memory, descriptors and CPU of the process; `None` when `/proc` cannot be read.
    pub process: Option<ProcessStats>,
    /// What `GET /ready` says: every listener bound, every service routing to a master.
    pub ready: bool,
    /// Why not ready, one line per service; empty when ready.
    pub not_ready: Vec<String>,
    /// How long the daemon has run, in ms.
    pub uptime_ms: u128,
    /// The data path sessions take: `userspace`, `uring` or `sockmap` ([`DataPath::name`]).
    ///
    /// [`DataPath::name`]: crate::datapath::DataPath::name
    pub datapath: String,
    /// Why the data path is not the best one `auto` knows, when it fell back.
    pub datapath_fallback: Option<String>,
    /// Kernel-side byte totals of the sockmap program (sockmap mode only).
    pub bpf: Option<BpfTotals>,
    /// Pipes the uring workers' sessions hold now (uring only): a session keeps one per
    /// streaming direction until it has been idle a second; an idle session holds none.
    pub pipes_held: Option<usize>,
    /// accept(2) failures on the services' listeners (EMFILE, ENFILE, ...), all services together.
    pub accept_errors: u64,
    /// Admin connections closed by the listener's limits, by reason.
    pub admin_rejected: BTreeMap<String, u64>,
    /// The running services, in configuration order.
    pub services: Vec<ServiceStatus>,
}

/// The sockmap program's byte totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfTotals {
    /// Bytes the program redirected from one socket to its peer.
    pub redirected_bytes: u64,
    /// Bytes left to their own socket because it had no peer in the map (should stay 0).
    pub passed_bytes: u64,
    /// Bytes retransmitted skbs repeated, cut by the program before the redirect.
    pub trimmed_bytes: u64,
    /// Skbs the program could not repair (and spills that found bytes consumed without it);
    /// each reset its session.
    pub faults: u64,
    /// Sessions moved to the next data path because a peer fell behind.
    #[serde(default)]
    pub spills: u64,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service's name in the configuration.
    pub name: String,
    /// The address it listens on, `ip:port`.
    pub listen: String,
    /// Where new sessions go now, `ip:port`; `None` while there is no master.
    pub master: Option<String>,
    /// How many times the master changed when this one was chosen (see [`Route::generation`]).
    ///
    /// [`Route::generation`]: crate::router::Route::generation
    pub generation: u64,
    /// Changes of master since the service first ran, to none included.
    pub master_changes: u64,
    /// Episodes of a second server passing the master check while another, alive, is master.
    pub master_conflicts: u64,
    /// Episodes without a master after having had one (a failover is one).
    pub no_master_episodes: u64,
    /// Why the master takes no new sessions now (`drain`, `switchover`); `None` when it does.
    pub hold: Option<String>,
    /// How long the service has been without a master, in ms; `None` while it has one.
    pub no_master_for_ms: Option<u128>,
    /// When the master last changed (to none included), in ms since the Unix epoch; `None`
    /// before the first master was chosen.
    pub last_master_change_unix_ms: Option<u64>,
    /// Why the master the Sentinels name is not routed to, while that is so.
    pub note: Option<String>,
    /// Servers a Sentinel quorum reported that are not checked (past `max_servers`).
    pub discovered_over_cap: u64,
    /// `maxconn` in force (resolved from the descriptor budget for `"auto"`).
    pub maxconn: u32,
    /// What the Sentinels agree on, when configured; `degraded` when fewer than a quorum answer
    /// or agree (the last agreed master is kept).
    pub sentinel: Option<SentinelStatus>,
    /// The session counters.
    pub stats: StatsSnapshot,
    /// How long its health checks took (those that ran), every server together.
    pub check_duration: HistogramSnapshot,
    /// The checked servers, configured or discovered, in the order the checks run.
    pub servers: Vec<ServerStatus>,
    /// How its sessions use TLS ([`crate::config::TlsMode::as_str`]): `plain`, `passthrough`,
    /// `terminate`, `originate` or `terminate+originate`.
    #[serde(default)]
    pub tls: String,
    /// The certificates its TLS presents (its own to clients, its client certificates).
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
}

/// A certificate the forwarder presents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// The file, as configured (resolved against the configuration's folder).
    pub file: String,
    /// Its DNS and IP names.
    pub names: Vec<String>,
    /// Its `notAfter`, in seconds since the Unix epoch.
    pub not_after_unix: u64,
}

/// What the Sentinels of a service agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentinelStatus {
    /// The last master a quorum agreed on, `ip:port` (kept while degraded).
    pub master: Option<String>,
    /// Sentinels that answered their last query.
    pub reachable: usize,
    /// Sentinels configured.
    pub configured: usize,
    /// Fewer than a quorum reachable, or no quorum agrees.
    pub degraded: bool,
    /// Each configured Sentinel, in configuration order.
    pub sentinels: Vec<SentinelNodeStatus>,
}

/// One configured Sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentinelNodeStatus {
    /// The Sentinel, `ip:port`.
    pub addr: String,
    /// Whether it answered its last query; `false` before the first answer.
    pub up: bool,
    /// Why its last query failed, while it is down; `None` before the first attempt ends.
    pub last_error: Option<String>,
}

/// One checked server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server, `ip:port`.
    pub addr: String,
    /// The `host:port` it was written as in `servers`, when a name (`addr` is what it resolved
    /// to).
    #[serde(default)]
    pub name: Option<String>,
    /// `up`, `down`, `rising` or `falling` (see [`health::ServerState::as_str`]); what to show
    /// is [`ServerStatus::display_state`].
    pub state: String,
    /// How long it has been in `state`, in ms.
    pub in_state_ms: u128,
    /// Whether it is routable: `up` or `falling`.
    pub up: bool,
    /// The last check failed only in that the server answered as a replica: a healthy standby.
    #[serde(default)]
    pub standby: bool,
    /// `master` or `replica`, from its last INFO reply.
    pub role: Option<String>,
    /// Whether the last check that ran passed; `None` before the first one.
    pub last_ok: Option<bool>,
    /// Why the last check failed; `None` when it passed or none has run.
    pub last_reason: Option<String>,
    /// How long the last check that ran took, in ms.
    pub last_check_ms: Option<u128>,
    /// Checks that passed.
    pub checks_ok: u64,
    /// Checks that failed because of the server (or the path to it).
    pub checks_failed: u64,
    /// Checks that could not run because of this host (EMFILE, ...): they leave the state alone.
    pub checks_unknown: u64,
    /// As the operator set it: `ready`, `drain` or `maint` (see [`health::AdminState`]).
    #[serde(default = "ready")]
    pub admin_state: String,
}

fn ready() -> String {
    "ready".into()
}

impl ServerStatus {
    /// The state to show: `standby` for a down server that failed its check only by answering
    /// as a replica, else [`ServerStatus::state`]. The page, the CLI and the metrics all use it.
    pub fn display_state(&self) -> &str {
        if self.standby && !self.up {
            "standby"
        } else {
            &self.state
        }
    }

    /// What its last check said: `ok`, `replica` for a standby, the failure's reason, or `not
    /// checked yet`.
    pub fn display_check(&self) -> &str {
        match (self.last_ok, &self.last_reason) {
            (Some(true), _) => "ok",
            (Some(false), _) if self.standby => "replica",
            (Some(false), Some(r)) => r,
            (Some(false), None) => "failed",
            (None, _) => "not checked yet",
        }
    }
}

/// A duration in ms as the page and the CLI show it: `45s`, `12m05s`, `3h02m`, `2d04h`.
pub fn human_ms(ms: u128) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

impl ServiceStatus {
    /// The status of one running service: its configuration, its session counters, and what its
    /// checks and decider say.
    pub fn of(
        config: &crate::config::Service,
        stats: &ServiceStats,
        monitor: &health::Monitor,
    ) -> ServiceStatus {
        let view = monitor.view();
        let counts = monitor.stats();
        ServiceStatus {
            name: config.name.clone(),
            listen: config.listen.to_string(),
            master: view.master.map(|m| m.to_string()),
            generation: view.generation,
            master_changes: counts.master_changes,
            master_conflicts: counts.conflicts,
            no_master_episodes: counts.no_master_episodes,
            hold: view.hold.map(|h| h.as_str().to_string()),
            no_master_for_ms: counts.no_master_since.map(|t| t.elapsed().as_millis()),
            last_master_change_unix_ms: counts.last_master_change.map(unix_ms),
            note: monitor.note(),
            discovered_over_cap: counts.discovered_over_cap,
            maxconn: config.maxconn,
            sentinel: monitor.sentinel_view().map(|v| SentinelStatus {
                master: v.master.map(|m| m.to_string()),
                reachable: v.reachable,
                configured: v.configured,
                degraded: v.degraded,
                sentinels: monitor
                    .sentinels()
                    .into_iter()
                    .map(|r| SentinelNodeStatus {
                        addr: r.addr.to_string(),
                        up: r.up,
                        last_error: r.last_error,
                    })
                    .collect(),
            }),
            stats: stats.snapshot(),
            tls: config.tls_mode().as_str().to_string(),
            certificates: config
                .certificates()
                .into_iter()
                .map(|c| CertificateStatus {
                    file: c.path.display().to_string(),
                    names: c.names.clone(),
                    not_after_unix: c.not_after_unix(),
                })
                .collect(),
            check_duration: monitor.check_durations(),
            servers: monitor
                .servers()
                .into_iter()
                .map(|s| ServerStatus {
                    addr: s.addr.to_string(),
                    name: config
                        .resolved
                        .iter()
                        .find(|r| r.is_server() && r.address == s.addr)
                        .map(|r| r.name.clone()),
                    state: s.state.as_str().to_string(),
                    in_state_ms: s.state_since.elapsed().as_millis(),
                    up: s.state.is_up(),
                    standby: s.standby,
                    role: s.role.map(|r| r.as_str().to_string()),
                    last_ok: s.last_ok,
                    last_reason: s.last_reason,
                    last_check_ms: s.last_elapsed.map(|d| d.as_millis()),
                    checks_ok: s.checks_ok,
                    checks_failed: s.checks_failed,
                    checks_unknown: s.checks_unknown,
                    admin_state: s.admin.as_str().to_string(),
                })
                .collect(),
        }
    }
}

/// `t` in ms since the Unix epoch (0 for a time before it).
fn unix_ms(t: SystemTime) -> u64 {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let server = |addr: &str, up: bool, role: &str, reason: Option<&str>| ServerStatus {
            addr: addr.into(),
            name: None,
            state: if up { "up" } else { "down" }.into(),
            in_state_ms: 754_000,
            up,
            standby: false,
            role: Some(role.into()),
            last_ok: Some(up),
            last_reason: reason.map(str::to_string),
            last_check_ms: Some(1),
            checks_ok: if up { 5 } else { 0 },
            checks_failed: if up { 0 } else { 5 },
            checks_unknown: 0,
            admin_state: if up { "ready" } else { "maint" }.into(),
        };
        Status {
            build: BuildInfo {
                version: "1.2.3".into(),
                revision: "abc\"def".into(),
            },
            process: Some(ProcessStats {
                resident_memory_bytes: 8 << 20,
                open_fds: 12,
                max_fds: 1024,
                start_time_unix_ms: 1_700_000_000_250,
                cpu_ms: 1500,
            }),
            ready: false,
            not_ready: vec![
                "service mymaster: master 127.0.0.1:6380 takes no new sessions (drain)".into(),
            ],
            uptime_ms: 3_725_000,
            datapath: "userspace".into(),
            datapath_fallback: Some("uring: EPERM".into()),
            bpf: None,
            pipes_held: None,
            accept_errors: 0,
            admin_rejected: BTreeMap::from([("busy".to_string(), 4)]),
            services: vec![ServiceStatus {
                name: "mymaster".into(),
                listen: "127.0.0.1:6379".into(),
                master: Some("127.0.0.1:6380".into()),
                generation: 3,
                master_changes: 2,
                master_conflicts: 1,
                no_master_episodes: 1,
                hold: Some("drain".into()),
                no_master_for_ms: None,
                last_master_change_unix_ms: Some(1_700_000_100_500),
                note: Some("the <quorum> names X".into()),
                discovered_over_cap: 0,
                maxconn: 100,
                sentinel: Some(SentinelStatus {
                    master: Some("127.0.0.1:6380".into()),
                    reachable: 1,
                    configured: 3,
                    degraded: true,
                    sentinels: vec![
                        SentinelNodeStatus {
                            addr: "127.0.0.1:26379".into(),
                            up: true,
                            last_error: None,
                        },
                        SentinelNodeStatus {
                            addr: "127.0.0.1:26380".into(),
                            up: false,
                            last_error: Some("connect: Connection refused".into()),
                        },
                    ],
                }),
                stats: StatsSnapshot {
                    accepted: 10,
                    active: 2,
                    rejected: BTreeMap::from([
                        ("maxconn".to_string(), 1),
                        ("no_master".to_string(), 2),
                    ]),
                    ended: BTreeMap::new(),
                    bytes_client_to_server: 7,
                    bytes_server_to_client: 9,
                    bytes_copied_in_userspace: 16,
                    sockmap_fallbacks: 0,
                    tls_handshake_failures: BTreeMap::new(),
                    switchovers: 1,
                    switchovers_failed: 0,
                    last_switchover_ms: 1500,
                    queue_wait: HistogramSnapshot::default(),
                    connect: HistogramSnapshot {
                        le: [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2],
                        count: 3,
                        sum_us: 10_002_000,
                    },
                },
                check_duration: HistogramSnapshot::default(),
                tls: "plain".into(),
                certificates: Vec::new(),
                servers: vec![
                    server("127.0.0.1:6380", true, "master", None),
                    server(
                        "127.0.0.1:6381",
                        false,
                        "replica",
                        Some("step 5: expected \"role:master\""),
                    ),
                    ServerStatus {
                        standby: true,
                        admin_state: "drain".into(),
                        ..server(
                            "127.0.0.1:6382",
                            false,
                            "replica",
                            Some("step 4 (expect role master): role:replica"),
                        )
                    },
                ],
            }],
        }
    }

    #[test]
    fn the_cli_reads_back_exactly_what_the_daemon_writes() {
        let st = sample();
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
    }

    #[test]
    fn the_cli_renders_services_and_servers() {
        let text = cli::render(&sample());
        for want in [
            "datapath userspace (fallback: uring: EPERM)",
            "master 127.0.0.1:6380 (generation 3)  sentinel 1/3 DEGRADED",
            "rejected 3  master changes 2  conflicts 1",
            "step 5: expected",
            "forwarder 1.2.3  up 1h02m",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        assert!(!text.contains("role:replica"), "{text}");
    }

    #[test]
    fn a_healthy_replica_is_a_standby_and_a_broken_one_is_down() {
        let st = sample();
        let s = &st.services[0].servers;
        assert_eq!((s[0].display_state(), s[0].display_check()), ("up", "ok"));
        assert_eq!(s[1].display_state(), "down");
        assert_eq!(s[1].display_check(), "step 5: expected \"role:master\"");
        assert_eq!(
            (s[2].display_state(), s[2].display_check()),
            ("standby", "replica")
        );
        let html = page::render(&st, false);
        assert!(
            html.contains("<tr class=\"server standby\"><td>127.0.0.1:6382</td><td>standby</td>"),
            "{html}"
        );
        assert!(
            html.contains("<tr class=\"server down\"><td>127.0.0.1:6381</td><td>down</td>"),
            "{html}"
        );
    }

    #[test]
    fn every_column_of_the_server_table_starts_at_the_same_offset() {
        let text = cli::render(&sample());
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.trim_start().starts_with("server "))
            .expect("a header");
        let starts: Vec<usize> = [
            "server", "check", "for", "role", "admin", "ok", "failed", "last",
        ]
        .iter()
        .map(|h| lines[header].find(&format!(" {h}")).unwrap() + 1)
        .collect();
        let rows = &lines[header + 1..header + 4];
        for row in rows {
            for &at in &starts {
                let bytes = row.as_bytes();
                assert!(
                    bytes[at - 1] == b' ' && bytes[at] != b' ',
                    "a column of {row:?} does not start at {at}:\n{text}"
                );
            }
        }
        assert!(
            rows[2].contains("standby") && rows[2].contains("drain"),
            "{text}"
        );
        assert!(rows[0].contains("12m34s"), "{text}");
        assert!(!text.contains('\t') && !text.contains("Rising("), "{text}");
    }

    #[test]
    fn durations_read_as_an_operator_writes_them() {
        assert_eq!(human_ms(999), "0s");
        assert_eq!(human_ms(61_000), "1m01s");
        assert_eq!(human_ms(3_725_000), "1h02m");
        assert_eq!(human_ms(90_000_000), "1d01h");
    }

    #[test]
    fn the_page_escapes_and_shows_every_server() {
        let html = page::render(&sample(), false);
        assert!(
            html.contains("id=\"master-mymaster\">127.0.0.1:6380<"),
            "{html}"
        );
        assert!(html.contains("the &lt;quorum&gt; names X"), "{html}");
        assert!(
            html.contains("version <b id=\"version\">1.2.3</b>, up 1h02m"),
            "{html}"
        );
        assert_eq!(html.matches("<tr class=\"server ").count(), 3, "{html}");
        assert!(!html.contains("<button"), "{html}");
        let html = page::render(&sample(), true);
        assert_eq!(html.matches("switchover</button>").count(), 1, "{html}");
        assert!(
            html.contains("encodeURIComponent('127.0.0.1:6382')+'/state','drain')\" disabled>"),
            "{html}"
        );
        assert_eq!(html.matches(">maint</button>").count(), 3, "{html}");
    }

    #[test]
    fn a_service_without_a_master_yet_has_no_last_change_sample() {
        let mut st = sample();
        st.services[0].last_master_change_unix_ms = None;
        st.process = None;
        let text = prometheus::render(&st);
        assert!(
            !text.contains("forwarder_last_master_change_timestamp_seconds{"),
            "{text}"
        );
        assert!(!text.contains("process_open_fds "), "{text}");
        assert!(text.contains("forwarder_build_info{"), "{text}");
    }

    #[test]
    fn the_json_lists_each_sentinel_with_its_error() {
        let json = serde_json::to_value(sample()).unwrap();
        let s = &json["services"][0]["sentinel"]["sentinels"];
        assert_eq!(s[0]["up"], true);
        assert_eq!(s[1]["addr"], "127.0.0.1:26380");
        assert_eq!(s[1]["last_error"], "connect: Connection refused");
        assert_eq!(json["build"]["version"], "1.2.3");
    }

    #[test]
    fn the_metrics_carry_the_same_numbers() {
        let text = prometheus::render(&sample());
        for want in [
            "forwarder_master_changes_total{service=\"mymaster\"} 2\n",
            "forwarder_master_conflicts_total{service=\"mymaster\"} 1\n",
            "forwarder_connections_rejected_total{service=\"mymaster\",reason=\"no_master\"} 2\n",
            "forwarder_admin_rejected_total{reason=\"busy\"} 4\n",
            "forwarder_master{service=\"mymaster\",server=\"127.0.0.1:6380\"} 1\n",
            "forwarder_server_up{service=\"mymaster\",server=\"127.0.0.1:6381\"} 0\n",
            "forwarder_datapath_info{mode=\"userspace\",fallback=\"uring: EPERM\"} 1\n",
            "forwarder_build_info{version=\"1.2.3\",revision=\"abc\\\"def\"} 1\n",
            "process_resident_memory_bytes 8388608\n",
            "process_open_fds 12\n",
            "process_max_fds 1024\n",
            "process_start_time_seconds 1700000000.250\n",
            "process_cpu_seconds_total 1.500\n",
            "forwarder_sentinel_up{service=\"mymaster\",sentinel=\"127.0.0.1:26379\"} 1\n",
            "forwarder_sentinel_up{service=\"mymaster\",sentinel=\"127.0.0.1:26380\"} 0\n",
            "forwarder_last_master_change_timestamp_seconds{service=\"mymaster\"} 1700000100.500\n",
            "forwarder_ready 0\n",
            "forwarder_no_master_episodes_total{service=\"mymaster\"} 1\n",
            "forwarder_master_held{service=\"mymaster\",reason=\"drain\"} 1\n",
            "forwarder_switchovers_total{service=\"mymaster\",result=\"done\"} 1\n",
            "forwarder_server_admin_state{service=\"mymaster\",server=\"127.0.0.1:6381\",state=\"maint\"} 1\n",
            "forwarder_server_admin_state{service=\"mymaster\",server=\"127.0.0.1:6380\",state=\"maint\"} 0\n",
            "# TYPE forwarder_connect_seconds histogram\n",
            "forwarder_connect_seconds_bucket{service=\"mymaster\",le=\"0.001\"} 0\n",
            "forwarder_connect_seconds_bucket{service=\"mymaster\",le=\"0.0025\"} 1\n",
            "forwarder_connect_seconds_bucket{service=\"mymaster\",le=\"10\"} 2\n",
            "forwarder_connect_seconds_bucket{service=\"mymaster\",le=\"+Inf\"} 3\n",
            "forwarder_connect_seconds_sum{service=\"mymaster\"} 10.002\n",
            "forwarder_connect_seconds_count{service=\"mymaster\"} 3\n",
            "forwarder_queue_wait_seconds_count{service=\"mymaster\"} 0\n",
            "forwarder_check_duration_seconds_bucket{service=\"mymaster\",le=\"0.0005\"} 0\n",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
    }
}
