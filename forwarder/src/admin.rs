//! The admin listener: `GET /metrics` (Prometheus text) and `GET /status` (JSON).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::daemon::ServiceHandle;
use crate::datapath::DataPath;
use crate::metrics::{GlobalStats, StatsSnapshot};

/// What the admin endpoints read.
pub struct State {
    pub services: Vec<ServiceHandle>,
    pub global: Arc<GlobalStats>,
    pub datapath: DataPath,
    /// Why the data path is not the best one `auto` knows, when it fell back.
    pub fallback: Option<String>,
}

pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state);
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "admin listener failed");
    }
}

#[derive(Serialize)]
struct Status {
    datapath: &'static str,
    datapath_fallback: Option<String>,
    /// Kernel-side byte totals of the sockmap program (sockmap mode only).
    bpf: Option<crate::datapath::sockmap::Totals>,
    accept_errors: u64,
    services: Vec<ServiceStatus>,
}

#[derive(Serialize)]
struct ServiceStatus {
    name: String,
    listen: String,
    master: Option<String>,
    generation: u64,
    master_conflicts: u64,
    no_master_for_ms: Option<u128>,
    /// What the Sentinels agree on, when configured; `degraded` when fewer than a quorum answer
    /// or agree (the last agreed master is kept).
    sentinel: Option<SentinelStatus>,
    stats: StatsSnapshot,
    servers: Vec<ServerStatus>,
}

#[derive(Serialize)]
struct SentinelStatus {
    master: Option<String>,
    reachable: usize,
    configured: usize,
    degraded: bool,
}

#[derive(Serialize)]
struct ServerStatus {
    addr: String,
    state: String,
    up: bool,
    role: Option<String>,
    last_ok: Option<bool>,
    last_reason: Option<String>,
    last_check_ms: Option<u128>,
    checks_ok: u64,
    checks_failed: u64,
}

fn status_of(state: &State) -> Status {
    Status {
        datapath: state.datapath.name(),
        datapath_fallback: state.fallback.clone(),
        bpf: state.datapath.bpf_totals(),
        accept_errors: state.global.accept_errors.load(Ordering::Relaxed),
        services: state
            .services
            .iter()
            .map(|h| {
                let view = h.monitor.view();
                let stats = h.monitor.stats();
                ServiceStatus {
                    name: h.config.name.clone(),
                    listen: h.config.listen.to_string(),
                    master: view.master.map(|m| m.to_string()),
                    generation: view.generation,
                    master_conflicts: stats.conflicts,
                    no_master_for_ms: stats.no_master_since.map(|t| t.elapsed().as_millis()),
                    sentinel: h.monitor.sentinel_view().map(|v| SentinelStatus {
                        master: v.master.map(|m| m.to_string()),
                        reachable: v.reachable,
                        configured: v.configured,
                        degraded: v.degraded,
                    }),
                    stats: h.runtime.stats.snapshot(),
                    servers: h
                        .monitor
                        .servers()
                        .into_iter()
                        .map(|s| ServerStatus {
                            addr: s.addr.to_string(),
                            state: format!("{:?}", s.state),
                            up: s.state.is_up(),
                            role: s.role.map(|r| format!("{r:?}").to_lowercase()),
                            last_ok: s.last_ok,
                            last_reason: s.last_reason,
                            last_check_ms: s.last_elapsed.map(|d| d.as_millis()),
                            checks_ok: s.checks_ok,
                            checks_failed: s.checks_failed,
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

async fn status(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    axum::Json(status_of(&state))
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&state),
    )
}

fn render_metrics(state: &State) -> String {
    let st = status_of(state);
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
    family(
        "forwarder_accept_errors_total",
        "counter",
        "accept(2) failures (e.g. EMFILE).",
        vec![(String::new(), st.accept_errors.to_string())],
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
        per_service(&|s| s.stats.master_changes.to_string()),
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
        "forwarder_no_master_seconds",
        "gauge",
        "Seconds the service has been without a master (0 when it has one).",
        per_service(&|s| format!("{:.3}", s.no_master_for_ms.unwrap_or(0) as f64 / 1000.0)),
    );
    let mut master = Vec::new();
    let mut up = Vec::new();
    let mut checks = Vec::new();
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
            checks.push((format!("{{{l},result=\"ok\"}}"), srv.checks_ok.to_string()));
            checks.push((
                format!("{{{l},result=\"failed\"}}"),
                srv.checks_failed.to_string(),
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
        "forwarder_checks_total",
        "counter",
        "Health checks run, by result.",
        checks,
    );
    out
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
