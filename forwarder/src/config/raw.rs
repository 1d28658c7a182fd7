//! The configuration file as written: serde types that mirror its TOML tables key for key.
//!
//! This is the first of the three stages (raw -> validated -> runtime): every key is optional
//! here unless the file cannot mean anything without it, values stay text where the file writes
//! text (addresses, durations, networks), and `deny_unknown_fields` turns a misspelt key into an
//! error rather than a silently ignored setting. Defaults, ranges and cross-checks are
//! `validate.rs`'s; the types the daemon runs on are in `mod.rs`.

use serde::Deserialize;

use super::{CheckKind, ConfigError, Mode, OnMasterChange};

/// The whole file: its top-level tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) datapath: RawDatapath,
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) process: RawProcess,
    #[serde(default)]
    pub(super) service: Vec<RawService>,
}

/// `[process]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProcess {
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
}

/// `[datapath]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatapath {
    pub(super) mode: Option<Mode>,
    pub(super) workers: Option<usize>,
    pub(super) sockmap_sessions: Option<u32>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    pub(super) token: Option<String>,
    pub(super) read_token: Option<String>,
}

/// One `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    pub(super) listen: String,
    pub(super) share_listen: Option<bool>,
    #[serde(default)]
    pub(super) servers: Vec<String>,
    pub(super) allow: Option<Vec<String>>,
    pub(super) maxconn: Option<RawMaxconn>,
    pub(super) maxconn_per_source: Option<u32>,
    pub(super) on_master_change: Option<OnMasterChange>,
    pub(super) log_sessions: Option<bool>,
    #[serde(default)]
    pub(super) timeout: RawTimeouts,
    #[serde(default)]
    pub(super) check: RawCheck,
    pub(super) sentinel: Option<RawSentinel>,
    pub(super) resolve_interval: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) server_tls: Option<RawServerTls>,
}

/// `[service.tls]`: TLS from clients, terminated here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) client_ca: Option<String>,
}

/// `[service.server_tls]`, and `tls = { ... }` of `[service.sentinel]` (without `passthrough`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    pub(super) ca: String,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) server_name: Option<String>,
    pub(super) passthrough: Option<bool>,
}

/// `maxconn = 4000` or `maxconn = "auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawMaxconn {
    Number(i64),
    Word(String),
}

/// `[service.timeout]`: durations as written (`"4s"`, `"250ms"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) connect: Option<String>,
    pub(super) client: Option<String>,
    pub(super) server: Option<String>,
    pub(super) queue: Option<String>,
    pub(super) drain: Option<String>,
    pub(super) handshake: Option<String>,
}

/// `[service.check]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) kind: Option<CheckKind>,
    pub(super) steps: Option<Vec<String>>,
    pub(super) interval: Option<String>,
    pub(super) fastinter: Option<String>,
    pub(super) downinter: Option<String>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) timeout: Option<String>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
}

/// `[service.sentinel]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub(super) addresses: Vec<String>,
    pub(super) master_name: String,
    pub(super) quorum: Option<usize>,
    pub(super) max_servers: Option<usize>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) tls: Option<RawServerTls>,
}

/// Reads `text` into the raw types: TOML syntax, types and unknown keys. An error names the
/// key path serde was at (`-` for the file as a whole) and, when TOML knows it, the line and
/// column.
pub(super) fn from_toml(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let mut reason = match inner.message().trim() {
            "" => "invalid TOML".to_string(),
            m => m.replace('\n', "; "),
        };
        if let Some(span) = inner.span() {
            let (line, col) = line_col(text, span.start);
            reason = format!("{reason} (line {line}, column {col})");
        }
        ConfigError {
            file: file.to_string(),
            key: if key == "." { "-".into() } else { key },
            reason,
        }
    })
}

/// The 1-based line and column of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}
