//! TLS, translated: `bind ... ssl crt FILE [ca-file CA verify required]` becomes
//! `[service.tls]` (HAProxy's `crt` PEM holds the key too, else HAProxy reads `FILE.key`), and
//! the servers' `ssl`, `check-ssl`, `ca-file`, `crt`, `sni`/`verifyhost` become
//! `[service.server_tls]`: `ssl` (sessions in TLS to Redis) originates, `check-ssl` or
//! `tcp-check connect ssl` alone (checks in TLS, session bytes untouched) is `passthrough`.
//!
//! What would weaken TLS is never written silently: a bind with `ssl` and no `crt` is skipped
//! (it would listen in plaintext), `verify optional` becomes required, `verify none` towards
//! servers becomes verified against the system CAs, each with a note.

use std::fmt::Write as _;
use std::path::Path;

use super::cfg::Line;
use super::proxy::Proxy;
use super::{quote, Note};

/// Debian's bundle of the system CAs (HAProxy's `@system-ca`).
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A bind line's TLS towards clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

/// What a bind line says: no TLS, TLS, or a TLS that cannot be translated (skip the bind).
pub(super) enum Bind {
    Plain,
    Tls(ClientTls),
    Unusable,
}

/// The options of `bind ADDR ...`; what is not translated goes to `notes`.
pub(super) fn bind(l: &Line, notes: &mut Vec<Note>) -> Bind {
    let words: Vec<String> = (2..l.words.len()).map(|i| l.word(i)).collect();
    let (mut ssl, mut crt, mut ca, mut verify) = (false, None, None, None);
    let mut rest = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let value = words.get(i + 1).cloned();
        match (words[i].as_str(), value) {
            ("ssl", _) => ssl = true,
            ("name", Some(_)) => i += 1,
            ("crt", Some(v)) => (crt, i) = (Some(v), i + 1),
            ("ca-file", Some(v)) => (ca, i) = (Some(v), i + 1),
            ("verify", Some(v)) => (verify, i) = (Some(v), i + 1),
            (w, _) => rest.push(w.to_string()),
        }
        i += 1;
    }
    if !rest.is_empty() {
        notes.push(Note::new(
            l,
            format!("bind options not translated: {}", rest.join(" ")),
        ));
    }
    if !ssl {
        if crt.is_some() || ca.is_some() || verify.is_some() {
            notes.push(Note::new(
                l,
                "TLS options without `ssl`: unused, as in HAProxy",
            ));
        }
        return Bind::Plain;
    }
    let Some(cert) = crt else {
        notes.push(Note::new(
            l,
            "ssl without a crt file (crt-list, a folder?) is not translated: skipped, it would \
             listen in plaintext",
        ));
        return Bind::Unusable;
    };
    let client_ca = match (verify.as_deref(), ca) {
        (Some("required"), Some(ca)) => Some(ca),
        (Some("optional"), Some(ca)) => {
            notes.push(Note::new(
                l,
                "verify optional: the forwarder requires client certificates (client_ca) or does \
                 not ask for them; written as required, so clients without one are refused",
            ));
            Some(ca)
        }
        (Some("required" | "optional"), None) => {
            notes.push(Note::new(
                l,
                "verify without ca-file: skipped, set [service.tls] client_ca",
            ));
            return Bind::Unusable;
        }
        _ => None,
    };
    relative(l, &cert, notes);
    Bind::Tls(ClientTls {
        key: key_of(&cert),
        cert,
        client_ca,
    })
}

/// A backend's TLS towards its servers.
pub(super) struct ServerTls {
    /// The `[service.server_tls]` table.
    pub(super) toml: String,
    /// Only the checks speak TLS (`check-ssl` without `ssl`).
    pub(super) passthrough: bool,
    /// The server line it comes from.
    pub(super) line: Line,
}

/// `[service.server_tls]` of backend `b` (from its first server with TLS), `None` without TLS;
/// `checks_ssl`: the check rules say `tcp-check connect ssl`.
pub(super) fn server(b: &Proxy, checks_ssl: bool, notes: &mut Vec<Note>) -> Option<ServerTls> {
    let with_tls: Vec<_> = b.servers.iter().filter(|s| !s.tls.is_empty()).collect();
    let first = match with_tls.first() {
        Some(s) => *s,
        None if checks_ssl => b.servers.first()?,
        None => return None,
    };
    let mut tls = first.tls.clone();
    tls.sort();
    for s in &b.servers {
        let mut other = s.tls.clone();
        other.sort();
        if other != tls {
            notes.push(Note::new(
                &s.line,
                format!(
                    "TLS parameters differ from server {}'s, which are used for every server",
                    first.name
                ),
            ));
        }
    }
    let get = |k: &str| {
        first
            .tls
            .iter()
            .find(|(p, _)| p == k)
            .map(|(_, v)| v.clone())
    };
    let l = &first.line;
    let ca = match (get("ca-file"), get("verify").as_deref()) {
        (_, Some("none")) => {
            notes.push(Note::new(
                l,
                format!(
                    "verify none: the forwarder always verifies servers; {SYSTEM_CA} is \
                     written, set your CA"
                ),
            ));
            SYSTEM_CA.to_string()
        }
        (Some(ca), _) if ca == "@system-ca" => SYSTEM_CA.to_string(),
        (Some(ca), _) => {
            relative(l, &ca, notes);
            ca
        }
        (None, _) => {
            notes.push(Note::new(
                l,
                format!("no ca-file: the system CAs ({SYSTEM_CA}) verify the servers"),
            ));
            SYSTEM_CA.to_string()
        }
    };
    let mut out = format!("\n[service.server_tls]\nca = {}\n", quote(&ca));
    if let Some(crt) = get("crt") {
        relative(l, &crt, notes);
        let _ = writeln!(
            out,
            "cert = {}\nkey = {}",
            quote(&crt),
            quote(&key_of(&crt))
        );
    }
    let sni = get("sni").map(
        |s| match s.strip_prefix("str(").and_then(|s| s.strip_suffix(')')) {
            Some(name) => Ok(name.to_string()),
            None => Err(s),
        },
    );
    match (get("verifyhost"), sni) {
        (Some(name), _) | (None, Some(Ok(name))) => {
            let _ = writeln!(out, "server_name = {}", quote(&name));
        }
        (None, Some(Err(expr))) => notes.push(Note::new(
            l,
            format!(
                "sni {expr}: only sni str(NAME) is translated; the server's address is verified"
            ),
        )),
        (None, None) => {}
    }
    let passthrough = get("ssl").is_none();
    let _ = writeln!(out, "passthrough = {passthrough}");
    Some(ServerTls {
        toml: out,
        passthrough,
        line: l.clone(),
    })
}

impl ServerTls {
    /// The table for a service whose clients' TLS is `client` (terminated here, or not): with
    /// terminated clients and checks alone in TLS (HAProxy: `bind ... ssl` and `check-ssl`,
    /// usually with a check `port`), the sessions go to Redis in plaintext, so the checks do
    /// too: no table, noted.
    pub(super) fn for_service(&self, client: Option<&ClientTls>, notes: &mut Vec<Note>) -> &str {
        if client.is_some() && self.passthrough {
            notes.push(Note::new(
                &self.line,
                "check-ssl behind a bind with ssl: sessions reach Redis in plaintext here, and so                  do the checks (a separate check port is not translated)",
            ));
            return "";
        }
        &self.toml
    }
}

impl ClientTls {
    /// The `[service.tls]` table.
    pub(super) fn toml(&self) -> String {
        let mut out = format!(
            "\n[service.tls]\ncert = {}\nkey = {}\n",
            quote(&self.cert),
            quote(&self.key)
        );
        if let Some(ca) = &self.client_ca {
            let _ = writeln!(out, "client_ca = {}", quote(ca));
        }
        out
    }
}

/// The key of HAProxy's `crt` file: the file itself, unless it is a readable PEM (a regular
/// file under 1 MiB) that holds no key while `FILE.key` exists (HAProxy then reads that).
fn key_of(crt: &str) -> String {
    let separate = format!("{crt}.key");
    let pem = std::fs::metadata(crt)
        .ok()
        .filter(|m| m.is_file() && m.len() < 1 << 20)
        .and_then(|_| std::fs::read_to_string(crt).ok());
    match pem {
        Some(pem) if !pem.contains("PRIVATE KEY") && Path::new(&separate).is_file() => separate,
        _ => crt.to_string(),
    }
}

/// A note for a relative path: HAProxy reads it from its working directory (or `crt-base` /
/// `ca-base`), the forwarder from the configuration file's folder.
fn relative(l: &Line, path: &str, notes: &mut Vec<Note>) {
    if Path::new(path).is_relative() {
        notes.push(Note::new(
            l,
            format!(
                "{path}: a relative path is read from this file's folder here, from HAProxy's \
                 working directory (or crt-base/ca-base) there"
            ),
        ));
    }
}
