//! The admin listener: `GET /` (status page), `GET /status` (JSON), `GET /metrics` (Prometheus
//! text), `GET /live` and `GET /ready` (probes), and the operator's actions: `POST /reload`,
//! `POST /servers/{service}/{server}/state` (body `ready`, `drain` or `maint`) and
//! `POST /services/{service}/switchover`. It knows the daemon only through [`Control`]: what it
//! reports and what it may be asked to do, nothing else of it.
//! Who may call what: [`auth`].

pub mod auth;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::budget;
use crate::metrics::{AdminReject, GlobalStats};
use crate::status::{self, Status};
use health::RateLimit;

/// What the admin listener may do with the daemon.
pub trait Control: Send + Sync + 'static {
    /// The daemon's status now.
    fn status(&self) -> Status;
    /// Why a reload was refused.
    type ReloadError: std::fmt::Display + Send;
    /// Re-reads the configuration file and applies it: a summary of what changed, or why
    /// nothing did.
    fn reload(&self) -> impl Future<Output = Result<String, Self::ReloadError>> + Send;
    /// `Ok` when every listener is bound and every service routes new clients to a master;
    /// otherwise why not, one line per service.
    fn readiness(&self) -> Result<(), Vec<String>>;
    /// Sets a server's operator state; what was done.
    fn set_server_state(
        &self,
        service: &str,
        server: &str,
        state: health::AdminState,
    ) -> impl Future<Output = Result<String, ControlError>> + Send;
    /// Runs a planned switchover of a service's master; what was done (the pause included).
    fn switchover(
        &self,
        service: &str,
    ) -> impl Future<Output = Result<String, ControlError>> + Send;
}

/// Why an operator's request was not done; each maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such service or server (404).
    #[error("{0}")]
    NotFound(String),
    /// The request makes no sense (400).
    #[error("{0}")]
    Invalid(String),
    /// Not now: the state of the service forbids it (409).
    #[error("{0}")]
    Conflict(String),
    /// Tried and failed: a server or Sentinel refused or did not answer in time (502).
    #[error("{0}")]
    Failed(String),
}

impl ControlError {
    fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }
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
pub async fn serve<C: Control>(
    listener: TcpListener,
    control: Arc<C>,
    global: Arc<GlobalStats>,
    tokens: auth::Tokens,
    shutdown: CancellationToken,
) {
    let app = axum::Router::new()
        .route("/", get(page::<C>))
        .route("/metrics", get(metrics::<C>))
        .route("/status", get(status::<C>))
        .route("/reload", axum::routing::post(reload::<C>))
        .route("/live", get(live))
        .route("/ready", get(ready::<C>))
        .route(
            "/servers/{service}/{server}/state",
            axum::routing::post(server_state::<C>),
        )
        .route(
            "/services/{service}/switchover",
            axum::routing::post(switchover::<C>),
        )
        .with_state(control)
        .layer(axum::middleware::from_fn(move |req, next| {
            auth::check(tokens.clone(), req, next)
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

/// `GET /`: the status page, with its buttons when the request may use them.
async fn page<C: Control>(
    AxState(control): AxState<Arc<C>>,
    access: Option<axum::Extension<auth::Access>>,
) -> impl IntoResponse {
    let may_act = access.is_some_and(|a| a.0 == auth::Access::Full);
    axum::response::Html(status::page::render(&control.status(), may_act))
}

/// `POST /reload`: re-read the configuration file and apply it (as SIGHUP does); the answer says
/// what changed, or why nothing did.
async fn reload<C: Control>(AxState(control): AxState<Arc<C>>) -> impl IntoResponse {
    match control.reload().await {
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

/// `GET /live`: the process answers (its runtime runs).
async fn live() -> &'static str {
    "live\n"
}

/// `GET /ready`: 200 when every service routes new clients, else 503 with the reasons.
async fn ready<C: Control>(AxState(control): AxState<Arc<C>>) -> impl IntoResponse {
    match control.readiness() {
        Ok(()) => (axum::http::StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        ),
    }
}

/// `POST /servers/{service}/{server}/state` with body `ready`, `drain` or `maint`.
async fn server_state<C: Control>(
    AxState(control): AxState<Arc<C>>,
    axum::extract::Path((service, server)): axum::extract::Path<(String, String)>,
    body: String,
) -> impl IntoResponse {
    let done = match body.parse::<health::AdminState>() {
        Ok(state) => control.set_server_state(&service, &server, state).await,
        Err(e) => Err(ControlError::Invalid(e)),
    };
    answer(done)
}

/// `POST /services/{service}/switchover`: waits for the switchover to end (bounded) and says
/// how it went.
async fn switchover<C: Control>(
    AxState(control): AxState<Arc<C>>,
    axum::extract::Path(service): axum::extract::Path<String>,
) -> impl IntoResponse {
    answer(control.switchover(&service).await)
}

fn answer(done: Result<String, ControlError>) -> (axum::http::StatusCode, String) {
    match done {
        Ok(text) => (axum::http::StatusCode::OK, format!("{text}\n")),
        Err(e) => {
            tracing::warn!(error = %e, "admin request refused");
            (e.status(), format!("{e}\n"))
        }
    }
}

async fn status<C: Control>(AxState(control): AxState<Arc<C>>) -> impl IntoResponse {
    axum::Json(control.status())
}

async fn metrics<C: Control>(AxState(control): AxState<Arc<C>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        status::prometheus::render(&control.status()),
    )
}
