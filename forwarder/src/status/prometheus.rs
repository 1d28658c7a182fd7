//! `GET /metrics`: the [`Status`] model as Prometheus text (exposition format 0.0.4).

use std::fmt::Write as _;

use health::histogram::BOUNDS;
use health::HistogramSnapshot;

use super::{SentinelStatus, ServiceStatus, Status};

/// The metric families, each with its HELP and TYPE lines.
pub fn render(st: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_service = |f: &dyn Fn(&ServiceStatus) -> String| {
        st.services
            .iter()
            .map(|s| (format!("{{service=\"{}\"}}", s.name), f(s)))
            .collect::<Vec<_>>()
    };
    family(
        "forwarder_build_info",
        "gauge",
        "The version and git commit of the running binary.",
        vec![(
            format!(
                "{{version=\"{}\",revision=\"{}\"}}",
                label_value(&st.build.version),
                label_value(&st.build.revision)
            ),
            "1".into(),
        )],
    );
    if let Some(p) = &st.process {
        let one = |v: String| vec![(String::new(), v)];
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            one(p.resident_memory_bytes.to_string()),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            one(p.open_fds.to_string()),
        );
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft limit).",
            one(p.max_fds.to_string()),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            one(seconds(p.start_time_unix_ms)),
        );
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            one(seconds(p.cpu_ms)),
        );
    }
    family(
        "forwarder_datapath_info",
        "gauge",
        "The data path in use; `fallback` says why it is not uring when auto fell back.",
        vec![(
            format!(
                "{{mode=\"{}\",fallback=\"{}\"}}",
                st.datapath,
                label_value(st.datapath_fallback.as_deref().unwrap_or(""))
            ),
            "1".into(),
        )],
    );
    if let Some(b) = &st.bpf {
        family(
            "forwarder_sockmap_trimmed_bytes_total",
            "counter",
            "Bytes retransmitted segments repeated, cut by the sockmap program before the redirect.",
            vec![(String::new(), b.trimmed_bytes.to_string())],
        );
        family(
            "forwarder_sockmap_faults_total",
            "counter",
            "Segments the sockmap program could not repair; each reset its session.",
            vec![(String::new(), b.faults.to_string())],
        );
        family(
            "forwarder_sockmap_spills_total",
            "counter",
            "Sessions moved out of the sockmap to the next data path because a peer fell behind.",
            vec![(String::new(), b.spills.to_string())],
        );
    }
    family(
        "forwarder_ready",
        "gauge",
        "1 when GET /ready answers 200: every listener bound, every service routing to a master.",
        vec![(String::new(), u8::from(st.ready).to_string())],
    );
    family(
        "forwarder_accept_errors_total",
        "counter",
        "accept(2) failures (e.g. EMFILE).",
        vec![(String::new(), st.accept_errors.to_string())],
    );
    family(
        "forwarder_admin_rejected_total",
        "counter",
        "Admin connections closed by the listener's limits (busy: too many open; timeout: \
         headers too slow or connection too old; accept_failed).",
        st.admin_rejected
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n.to_string()))
            .collect(),
    );
    family(
        "forwarder_connections_accepted_total",
        "counter",
        "Clients admitted.",
        per_service(&|s| s.stats.accepted.to_string()),
    );
    family(
        "forwarder_connections_active",
        "gauge",
        "Sessions open (queued ones included).",
        per_service(&|s| s.stats.active.to_string()),
    );
    let mut rejected = Vec::new();
    let mut ended = Vec::new();
    for s in &st.services {
        for (reason, n) in &s.stats.rejected {
            rejected.push((
                format!("{{service=\"{}\",reason=\"{reason}\"}}", s.name),
                n.to_string(),
            ));
        }
        for (how, n) in &s.stats.ended {
            ended.push((
                format!("{{service=\"{}\",how=\"{how}\"}}", s.name),
                n.to_string(),
            ));
        }
    }
    family(
        "forwarder_connections_rejected_total",
        "counter",
        "Clients turned away, by reason.",
        rejected,
    );
    family(
        "forwarder_sessions_ended_total",
        "counter",
        "Sessions ended, by how.",
        ended,
    );
    let mut handshakes = Vec::new();
    let mut expiry = Vec::new();
    for s in &st.services {
        for (side, by) in &s.stats.tls_handshake_failures {
            for (reason, n) in by {
                handshakes.push((
                    format!(
                        "{{service=\"{}\",side=\"{side}\",reason=\"{reason}\"}}",
                        s.name
                    ),
                    n.to_string(),
                ));
            }
        }
        for c in &s.certificates {
            expiry.push((
                format!(
                    "{{service=\"{}\",file=\"{}\"}}",
                    s.name,
                    label_value(&c.file)
                ),
                c.not_after_unix.to_string(),
            ));
        }
    }
    family(
        "forwarder_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed, by side (client: theirs with us; server: ours with the master) and reason.",
        handshakes,
    );
    family(
        "forwarder_tls_certificate_expiry_seconds",
        "gauge",
        "When a certificate the forwarder presents expires (notAfter, Unix time).",
        expiry,
    );
    let mut bytes = Vec::new();
    for s in &st.services {
        bytes.push((
            format!("{{service=\"{}\",direction=\"client_to_server\"}}", s.name),
            s.stats.bytes_client_to_server.to_string(),
        ));
        bytes.push((
            format!("{{service=\"{}\",direction=\"server_to_client\"}}", s.name),
            s.stats.bytes_server_to_client.to_string(),
        ));
    }
    family(
        "forwarder_bytes_total",
        "counter",
        "Payload bytes forwarded.",
        bytes,
    );
    family(
        "forwarder_master_changes_total",
        "counter",
        "Changes of the routed master.",
        per_service(&|s| s.master_changes.to_string()),
    );
    family(
        "forwarder_master_generation",
        "gauge",
        "Generation of the current master view.",
        per_service(&|s| s.generation.to_string()),
    );
    family(
        "forwarder_master_conflicts_total",
        "counter",
        "Times a second server claimed to be master (split brain avoided).",
        per_service(&|s| s.master_conflicts.to_string()),
    );
    family(
        "forwarder_no_master_episodes_total",
        "counter",
        "Episodes without a master after having had one (a failover counts one).",
        per_service(&|s| s.no_master_episodes.to_string()),
    );
    let mut held = Vec::new();
    let mut switchovers = Vec::new();
    for s in &st.services {
        for reason in ["drain", "switchover"] {
            held.push((
                format!("{{service=\"{}\",reason=\"{reason}\"}}", s.name),
                u8::from(s.hold.as_deref() == Some(reason)).to_string(),
            ));
        }
        for (result, n) in [
            ("done", s.stats.switchovers),
            ("failed", s.stats.switchovers_failed),
        ] {
            switchovers.push((
                format!("{{service=\"{}\",result=\"{result}\"}}", s.name),
                n.to_string(),
            ));
        }
    }
    family(
        "forwarder_master_held",
        "gauge",
        "1 while the master takes no new sessions for this reason (clients wait as in a failover).",
        held,
    );
    family(
        "forwarder_switchovers_total",
        "counter",
        "Planned switchovers asked for, by result.",
        switchovers,
    );
    family(
        "forwarder_last_switchover_pause_seconds",
        "gauge",
        "How long new clients were held in the last planned switchover done.",
        per_service(&|s| format!("{:.3}", s.stats.last_switchover_ms as f64 / 1000.0)),
    );
    family(
        "forwarder_bytes_copied_in_userspace_total",
        "counter",
        "Payload bytes that passed through userspace buffers (userspace sessions, and uring directions that found no pipe free).",
        per_service(&|s| s.stats.bytes_copied_in_userspace.to_string()),
    );
    family(
        "forwarder_sockmap_fallbacks_total",
        "counter",
        "Sessions that did not fit the sockmap and ran on the next data path.",
        per_service(&|s| s.stats.sockmap_fallbacks.to_string()),
    );
    let with_sentinel = |f: &dyn Fn(&SentinelStatus) -> String| {
        st.services
            .iter()
            .filter_map(|s| {
                s.sentinel
                    .as_ref()
                    .map(|v| (format!("{{service=\"{}\"}}", s.name), f(v)))
            })
            .collect::<Vec<_>>()
    };
    family(
        "forwarder_sentinels_reachable",
        "gauge",
        "Sentinels that answered their last query.",
        with_sentinel(&|v| v.reachable.to_string()),
    );
    family(
        "forwarder_sentinel_degraded",
        "gauge",
        "1 when fewer than a quorum of Sentinels answer or agree (the last agreed master is kept).",
        with_sentinel(&|v| u8::from(v.degraded).to_string()),
    );
    let mut sentinel_up = Vec::new();
    for s in &st.services {
        for n in s.sentinel.iter().flat_map(|v| &v.sentinels) {
            sentinel_up.push((
                format!(
                    "{{service=\"{}\",sentinel=\"{}\"}}",
                    s.name,
                    label_value(&n.addr)
                ),
                u8::from(n.up).to_string(),
            ));
        }
    }
    family(
        "forwarder_sentinel_up",
        "gauge",
        "1 when this Sentinel answered its last query (the reason it did not is in /status).",
        sentinel_up,
    );
    family(
        "forwarder_last_master_change_timestamp_seconds",
        "gauge",
        "Unix time of the last change of master (to none included); absent before the first master.",
        st.services
            .iter()
            .filter_map(|s| {
                let t = s.last_master_change_unix_ms?;
                Some((format!("{{service=\"{}\"}}", s.name), seconds(t)))
            })
            .collect(),
    );
    family(
        "forwarder_sentinel_discovered_over_cap",
        "gauge",
        "Servers a Sentinel quorum reported that are not checked (past max_servers).",
        per_service(&|s| s.discovered_over_cap.to_string()),
    );
    family(
        "forwarder_maxconn",
        "gauge",
        "maxconn in force (from the descriptor budget for \"auto\").",
        per_service(&|s| s.maxconn.to_string()),
    );
    family(
        "forwarder_no_master_seconds",
        "gauge",
        "Seconds the service has been without a master (0 when it has one).",
        per_service(&|s| format!("{:.3}", s.no_master_for_ms.unwrap_or(0) as f64 / 1000.0)),
    );
    let mut master = Vec::new();
    let mut up = Vec::new();
    let mut checks = Vec::new();
    let mut admin = Vec::new();
    for s in &st.services {
        if let Some(m) = &s.master {
            master.push((
                format!("{{service=\"{}\",server=\"{m}\"}}", s.name),
                "1".into(),
            ));
        }
        for srv in &s.servers {
            let l = format!("service=\"{}\",server=\"{}\"", s.name, srv.addr);
            up.push((format!("{{{l}}}"), u8::from(srv.up).to_string()));
            for state in health::AdminState::ALL {
                let state = state.as_str();
                admin.push((
                    format!("{{{l},state=\"{state}\"}}"),
                    u8::from(srv.admin_state == state).to_string(),
                ));
            }
            checks.push((format!("{{{l},result=\"ok\"}}"), srv.checks_ok.to_string()));
            checks.push((
                format!("{{{l},result=\"failed\"}}"),
                srv.checks_failed.to_string(),
            ));
            checks.push((
                format!("{{{l},result=\"unknown\"}}"),
                srv.checks_unknown.to_string(),
            ));
        }
    }
    family(
        "forwarder_master",
        "gauge",
        "The server currently routed to, per service.",
        master,
    );
    family(
        "forwarder_server_up",
        "gauge",
        "1 when the server passes its check (after rise/fall).",
        up,
    );
    family(
        "forwarder_server_admin_state",
        "gauge",
        "1 for the state the operator set the server to (ready, drain, maint).",
        admin,
    );
    family(
        "forwarder_checks_total",
        "counter",
        "Health checks run, by result.",
        checks,
    );
    histograms(&mut out, st);
    out
}

/// The latency histograms: cumulative `_bucket{le=...}` samples, `_sum` (seconds) and `_count`.
fn histograms(out: &mut String, st: &Status) {
    type Pick = fn(&ServiceStatus) -> &HistogramSnapshot;
    let families: [(&str, &str, Pick); 3] = [
        (
            "forwarder_queue_wait_seconds",
            "Time an admitted client was held before its connect to the master started (or \
             until it was closed without a session).",
            |s| &s.stats.queue_wait,
        ),
        (
            "forwarder_connect_seconds",
            "Time a successful connect to the master took.",
            |s| &s.stats.connect,
        ),
        (
            "forwarder_check_duration_seconds",
            "Time a health check took (those that ran), every server of the service together.",
            |s| &s.check_duration,
        ),
    ];
    for (name, help, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for s in &st.services {
            let h = pick(s);
            let service = &s.name;
            for (le, n) in BOUNDS.iter().zip(h.le) {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{service=\"{service}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{service=\"{service}\",le=\"+Inf\"}} {count}\n\
                 {name}_sum{{service=\"{service}\"}} {sum}\n\
                 {name}_count{{service=\"{service}\"}} {count}",
                count = h.count,
                sum = h.sum_seconds(),
            );
        }
    }
}

/// Milliseconds as seconds with three decimals.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
