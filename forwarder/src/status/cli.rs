//! `forwarder status` and `forwarder reload`: a small HTTP client of the admin listener, and
//! the [`Status`] it answers as a terminal table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{human_ms, Status};

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

/// Fetches `/status` as the daemon sent it, pretty-printed (`forwarder status --json`).
pub fn fetch_json(admin: SocketAddr, token: Option<&str>) -> Result<String, ClientError> {
    let body = request(admin, "GET", "/status", "", token)?;
    let value: serde_json::Value = serde_json::from_str(&body).map_err(ClientError::NotStatus)?;
    Ok(format!("{value:#}\n"))
}

/// `forwarder status`: where to ask, with which token, and how to show the answer.
pub struct Cli {
    /// The admin listener.
    pub admin: SocketAddr,
    /// The token sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Print the JSON instead of the table.
    pub json: bool,
}

impl Cli {
    /// One rendering: the table, or the JSON.
    pub fn once(&self) -> Result<String, ClientError> {
        let token = self.token.as_deref();
        if self.json {
            fetch_json(self.admin, token)
        } else {
            fetch(self.admin, token).map(|st| render(&st))
        }
    }

    /// `--watch`: renders every `every` until the process is interrupted. On a terminal each
    /// rendering replaces the last (the screen is cleared); elsewhere they follow each other
    /// under a separator line. A failed request is printed and tried again.
    pub fn watch(&self, every: Duration) -> ! {
        use std::io::IsTerminal as _;
        let terminal = std::io::stdout().is_terminal();
        let mut first = true;
        loop {
            let text = match self.once() {
                Ok(text) => text,
                Err(e) => format!("error: {e} (trying again in {}s)\n", every.as_secs()),
            };
            let mut out = std::io::stdout().lock();
            let written = if terminal {
                write!(out, "\x1b[H\x1b[2J{text}")
            } else if first {
                write!(out, "{text}")
            } else {
                write!(out, "----\n{text}")
            };
            if written.and_then(|()| out.flush()).is_err() {
                std::process::exit(0); // the reader went away (`| head`)
            }
            drop(out);
            first = false;
            std::thread::sleep(every);
        }
    }
}

/// Lays out rows as columns, each as wide as its widest cell plus two spaces (the last one
/// unpadded), indented by two spaces: every column starts at the same offset on every row.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Renders a status as aligned text.
pub fn render(st: &Status) -> String {
    let mut out = format!(
        "forwarder {}  up {}  datapath {}{}\n",
        st.build.version,
        human_ms(st.uptime_ms),
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
        if let Some(note) = &svc.note {
            out.push_str(&format!("  note: {note}\n"));
        }
        if !svc.tls.is_empty() && svc.tls != "plain" {
            let failed: u64 = svc
                .stats
                .tls_handshake_failures
                .values()
                .flat_map(|by| by.values())
                .sum();
            out.push_str(&format!(
                "  tls {}  handshakes failed {failed}{}\n",
                svc.tls,
                svc.certificates
                    .iter()
                    .map(|c| format!("  {} until {}", c.file, human_unix(c.not_after_unix)))
                    .collect::<String>()
            ));
        }
        let mut rows = vec![[
            "server", "check", "for", "role", "admin", "ok", "failed", "last",
        ]
        .map(String::from)
        .to_vec()];
        rows.extend(svc.servers.iter().map(|s| {
            vec![
                s.addr.clone(),
                s.display_state().to_string(),
                human_ms(s.in_state_ms),
                s.role.clone().unwrap_or_else(|| "-".into()),
                s.admin_state.clone(),
                s.checks_ok.to_string(),
                s.checks_failed.to_string(),
                s.display_check().to_string(),
            ]
        }));
        out.push_str(&table(&rows));
    }
    out
}

/// A Unix time in UTC, `2027-01-12T13:44:33Z`.
fn human_unix(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}
