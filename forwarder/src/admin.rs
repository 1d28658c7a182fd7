//! The admin listener: `GET /metrics` (Prometheus text) and `GET /status` (JSON).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::budget;
use crate::daemon::Daemon;
use crate::datapath::DataPath;
use crate::metrics::{AdminReject, GlobalStats, StatsSnapshot};
use crate::service::RateLimit;

/// What the admin endpoints read.
pub struct State {
    pub daemon: Arc<Daemon>,
    pub global: Arc<GlobalStats>,
    pub datapath: DataPath,
    /// Why the data path is not the best one `auto` knows, when it fell back.
    pub fallback: Option<String>,
}

/// Longest wait for a request's headers, on a new or a kept-alive connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one admin connection, however busy: a slow client cannot hold a slot.
const CONNECTION_MAX: Duration = Duration::from_secs(30);
/// Request-buffer bound per connection (hyper's minimum is 8 KiB).
const MAX_BUF: usize = 16 * 1024;

/// Serves the admin endpoints until `shutdown`. At most `budget::ADMIN_CONNECTIONS` connections
/// at once (more are closed at once, counted); headers must arrive within `HEADER_TIMEOUT`, and
/// no connection lives longer than `CONNECTION_MAX`, so idle or half-sent requests cost a
/// bounded number of descriptors and bytes, never the data plane's.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    token: Option<String>,
    shutdown: CancellationToken,
) {
    let global = Arc::clone(&state.global);
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/reload", axum::routing::post(reload))
        .with_state(state)
        .layer(axum::middleware::from_fn(move |req, next| {
            bearer(token.clone(), req, next)
        }));
    let slots = Arc::new(Semaphore::new(budget::ADMIN_CONNECTIONS as usize));
    let (busy_log, accept_log) = (RateLimit::default(), RateLimit::default());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                global.admin_rejected[AdminReject::AcceptFailed as usize]
                    .fetch_add(1, Ordering::Relaxed);
                accept_log.log(|suppressed| {
                    tracing::warn!(error = %e, suppressed, "admin accept failed; pausing 100ms");
                });
                tokio::time::sleep(crate::service::ACCEPT_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            global.admin_rejected[AdminReject::Busy as usize].fetch_add(1, Ordering::Relaxed);
            busy_log.log(|suppressed| {
                tracing::warn!(
                    max = budget::ADMIN_CONNECTIONS,
                    suppressed,
                    "admin connection refused: too many open"
                );
            });
            continue; // dropping the stream closes it
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let global = Arc::clone(&global);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let why = match tokio::time::timeout(CONNECTION_MAX, conn).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) if e.is_timeout() => Some(AdminReject::Timeout),
                Ok(Err(_)) => None, // the client went away or sent garbage: closed
                Err(_) => Some(AdminReject::Timeout),
            };
            if let Some(why) = why {
                global.admin_rejected[why as usize].fetch_add(1, Ordering::Relaxed);
            }
            drop(slot);
        });
    }
}

/// With a token configured, answers 401 to any request without `Authorization: Bearer <token>`.
async fn bearer(
    token: Option<String>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(t) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(t.as_str()) {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "admin token required\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

#[derive(Serialize)]
struct Status {
    datapath: &'static str,
    datapath_fallback: Option<String>,
    /// Kernel-side byte totals of the sockmap program (sockmap mode only).
    bpf: Option<crate::datapath::sockmap::Totals>,
    accept_errors: u64,
    /// Admin connections closed by the listener's limits, by reason.
    admin_rejected: std::collections::BTreeMap<&'static str, u64>,
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
    /// Why the master the Sentinels name is not routed to, while that is so.
    note: Option<String>,
    /// Servers a Sentinel quorum reported that are not checked (past `max_servers`).
    discovered_over_cap: u64,
    /// `maxconn` in force (resolved from the descriptor budget for `"auto"`).
    maxconn: u32,
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
    /// Checks that could not run because of this host (EMFILE, ...): they leave the state alone.
    checks_unknown: u64,
}

fn status_of(state: &State) -> Status {
    Status {
        datapath: state.datapath.name(),
        datapath_fallback: state.fallback.clone(),
        bpf: state.datapath.bpf_totals(),
        accept_errors: state.global.accept_errors.load(Ordering::Relaxed),
        admin_rejected: AdminReject::ALL
            .iter()
            .map(|r| {
                let n = state.global.admin_rejected[*r as usize].load(Ordering::Relaxed);
                (r.as_str(), n)
            })
            .collect(),
        services: state
            .daemon
            .services()
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
                    note: h.monitor.note(),
                    discovered_over_cap: stats.discovered_over_cap,
                    maxconn: h.config.maxconn,
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
                            checks_unknown: s.checks_unknown,
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

async fn page(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    axum::response::Html(render_page(&status_of(&state)))
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A small status page in the spirit of HAProxy's stats page; refreshes itself every 2 s.
fn render_page(st: &Status) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>forwarder status</title><style>body{font-family:sans-serif;margin:1em}\
         table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #999;padding:2px 8px}\
         th{background:#eee}.up{background:#c8f0c8}.down{background:#f4c4c4}.warn{background:#f8e8a0}\
         </style></head><body><h1>forwarder</h1>",
    );
    let _ = write!(
        h,
        "<p>data path: <b id=\"datapath\">{}</b>",
        esc(st.datapath)
    );
    if let Some(f) = &st.datapath_fallback {
        let _ = write!(h, " (fallback: {})", esc(f));
    }
    h.push_str("</p>");
    for svc in &st.services {
        let _ = write!(
            h,
            "<h2 class=\"service\">{name}</h2><table><tr><th>listen</th><th>master</th>\
             <th>generation</th><th>sentinel</th><th>active</th><th>accepted</th><th>rejected</th>\
             <th>bytes in</th><th>bytes out</th><th>master changes</th><th>conflicts</th></tr>\
             <tr><td>{listen}</td><td class=\"{mc}\" id=\"master-{name}\">{master}</td><td>{gen}</td>\
             <td class=\"{sc}\">{sentinel}</td><td>{active}</td><td>{accepted}</td><td>{rejected}</td>\
             <td>{bin}</td><td>{bout}</td><td>{changes}</td><td>{conflicts}</td></tr></table>",
            name = esc(&svc.name),
            listen = esc(&svc.listen),
            mc = if svc.master.is_some() { "up" } else { "down" },
            master = esc(svc.master.as_deref().unwrap_or("none")),
            gen = svc.generation,
            sc = match &svc.sentinel {
                Some(s) if s.degraded => "warn",
                _ => "",
            },
            sentinel = match &svc.sentinel {
                Some(s) => format!(
                    "{}/{} reachable{}",
                    s.reachable,
                    s.configured,
                    if s.degraded { ", degraded" } else { "" }
                ),
                None => "-".into(),
            },
            active = svc.stats.active,
            accepted = svc.stats.accepted,
            rejected = svc.stats.rejected.values().sum::<u64>(),
            bin = svc.stats.bytes_client_to_server,
            bout = svc.stats.bytes_server_to_client,
            changes = svc.stats.master_changes,
            conflicts = svc.master_conflicts,
        );
        if let Some(note) = &svc.note {
            let _ = write!(h, "<p class=\"warn\">{}</p>", esc(note));
        }
        h.push_str(
            "<table><tr><th>server</th><th>check</th><th>role</th><th>last check</th>\
             <th>ok</th><th>failed</th><th>took</th></tr>",
        );
        for s in &svc.servers {
            let _ = write!(
                h,
                "<tr class=\"server {cls}\"><td>{addr}</td><td>{state}</td><td>{role}</td>\
                 <td>{last}</td><td>{ok}</td><td>{failed}</td><td>{took}</td></tr>",
                cls = if s.up { "up" } else { "down" },
                addr = esc(&s.addr),
                state = esc(&s.state),
                role = esc(s.role.as_deref().unwrap_or("-")),
                last = match (s.last_ok, &s.last_reason) {
                    (Some(true), _) => "ok".to_string(),
                    (Some(false), Some(r)) => esc(r),
                    (Some(false), None) => "failed".into(),
                    (None, _) => "not checked yet".into(),
                },
                ok = s.checks_ok,
                failed = s.checks_failed,
                took = s.last_check_ms.map_or("-".into(), |m| format!("{m} ms")),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

/// `POST /reload`: re-read the configuration file and apply it (as SIGHUP does); the answer says
/// what changed, or why nothing did.
async fn reload(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    match state.daemon.reload().await {
        Ok(summary) => (axum::http::StatusCode::OK, format!("{summary}\n")),
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e}");
            (
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused, the running configuration stays: {e}\n"),
            )
        }
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
