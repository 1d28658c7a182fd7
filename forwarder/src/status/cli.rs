//! `forwarder status` and `forwarder reload`: a small HTTP client of the admin listener, and
//! the [`Status`] it answers as a terminal table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::Status;

/// Why a request to the admin listener failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection failed or timed out.
    #[error("cannot reach the admin listener at {admin}: {source}")]
    Connect {
        /// The admin listener's address, from the configuration.
        admin: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Sending the request failed.
    #[error("write: {0}")]
    Write(std::io::Error),
    /// Reading the answer failed or timed out.
    #[error("read: {0}")]
    Read(std::io::Error),
    /// The answer has no blank line ending its headers.
    #[error("malformed HTTP response")]
    Malformed,
    /// Not a 200: the status line and the body (e.g. why a reload was refused).
    #[error("admin listener answered {status}: {body}")]
    Refused {
        /// The status line, e.g. `HTTP/1.1 401 Unauthorized`.
        status: String,
        /// The body, verbatim.
        body: String,
    },
    /// A 200 whose body is not the JSON of [`Status`] (another version of the forwarder?).
    #[error("/status is not the status of this version: {0}")]
    NotStatus(serde_json::Error),
}

/// Fetches `/status` from the admin listener at `admin`.
pub fn fetch(admin: SocketAddr, token: Option<&str>) -> Result<Status, ClientError> {
    let body = request(admin, "GET", "/status", "", token)?;
    serde_json::from_str(&body).map_err(ClientError::NotStatus)
}

/// One HTTP/1.0 request to the admin listener: the body of a 200 answer, else an error with the
/// status line and the body.
pub fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<String, ClientError> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))
        .map_err(|source| ClientError::Connect { admin, source })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Length: {}\r\n{auth}\r\n{body}",
        body.len()
    )
    .map_err(ClientError::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(ClientError::Read)?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or(ClientError::Malformed)?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(ClientError::Refused {
            status: head.lines().next().unwrap_or("").to_string(),
            body: body.trim().to_string(),
        });
    }
    Ok(body.to_string())
}

/// Renders a status as aligned text.
pub fn render(st: &Status) -> String {
    let mut out = format!(
        "datapath {}{}\n",
        st.datapath,
        st.datapath_fallback
            .as_deref()
            .map_or(String::new(), |f| format!(" (fallback: {f})"))
    );
    for svc in &st.services {
        let rejected: u64 = svc.stats.rejected.values().sum();
        let sentinel = match &svc.sentinel {
            Some(s) => format!(
                "  sentinel {}/{}{}",
                s.reachable,
                s.configured,
                if s.degraded { " DEGRADED" } else { "" }
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "\nservice {}  listen {}  master {} (generation {}){}\n  sessions active {}  accepted {}  rejected {}  master changes {}  conflicts {}\n",
            svc.name,
            svc.listen,
            svc.master.as_deref().unwrap_or("NONE"),
            svc.generation,
            sentinel,
            svc.stats.active,
            svc.stats.accepted,
            rejected,
            svc.master_changes,
            svc.master_conflicts,
        ));
        out.push_str(&format!(
            "  {:<22} {:<12} {:<8} {:>8} {:>8}  {}\n",
            "server", "check", "role", "ok", "failed", "last"
        ));
        for s in &svc.servers {
            out.push_str(&format!(
                "  {:<22} {:<12} {:<8} {:>8} {:>8}  {}\n",
                s.addr,
                s.state,
                s.role.as_deref().unwrap_or("-"),
                s.checks_ok,
                s.checks_failed,
                match (s.last_ok, &s.last_reason) {
                    (Some(true), _) => "ok",
                    (Some(false), Some(r)) => r.as_str(),
                    (Some(false), None) => "failed",
                    (None, _) => "not checked yet",
                }
            ));
        }
    }
    out
}
