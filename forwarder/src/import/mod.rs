//! `forwarder import-haproxy FILE`: an haproxy.cfg translated into an equivalent forwarder
//! configuration, with every directive it could not translate listed (line, directive, why) in
//! a comment block at the end.
//!
//! Read as HAProxy reads it ([`cfg`]: words, escapes, quotes, comments, sections), then into
//! proxies with their `defaults` ([`proxy`]); each `frontend` (or `listen`) with a backend that
//! has servers becomes one `[[service]]` per `bind` address: `bind *:6379` listens on
//! `0.0.0.0:6379`, `default_backend` (or an unconditional `use_backend`) names the servers,
//! `timeout connect|client|server|queue|check` and `maxconn` carry over, and the check
//! ([`check`]) is the backend's `tcp-check` rules (the seed guide's six Redis lines become
//! `kind = "redis-master"`) with the first checked server's `inter`, `fastinter`, `downinter`,
//! `rise` and `fall` (HAProxy's `inter` default, 2s, written out), and TLS ([`tls`]: `bind ...
//! ssl crt`, the servers' `ssl` / `check-ssl`). What HAProxy does that the forwarder does not
//! (balancing, ACLs, HTTP, stats, ...) is reported, never guessed.
//! Any input gives a result or an error, never a panic (`forwarder/tests/import_properties.rs`).

mod cfg;
mod check;
mod proxy;
mod tls;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use proxy::Proxy;

/// A directive that was not translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Its line in haproxy.cfg (1-based).
    pub line: usize,
    /// The line as written.
    pub directive: String,
    /// Why it is not in the translation, and what to do instead where there is something.
    pub why: String,
}

impl Note {
    fn new(l: &cfg::Line, why: impl Into<String>) -> Note {
        Note {
            line: l.no,
            directive: l.text.clone(),
            why: why.into(),
        }
    }
}

/// The translation of one haproxy.cfg.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The forwarder configuration (TOML), the notes at its end as comments.
    pub toml: String,
    /// The `[[service]]` tables in it (at least one).
    pub services: usize,
    /// What was not translated, by line.
    pub notes: Vec<Note>,
}

/// Translates haproxy.cfg `text`; an error (with the notes that explain it) when no service
/// comes out of it.
pub fn translate(text: &str) -> Result<Translation, String> {
    let (sections, orphans) = cfg::sections(text);
    let mut notes: Vec<Note> = orphans
        .iter()
        .map(|l| Note::new(l, "outside any section"))
        .collect();
    let proxies = proxy::proxies(&sections, &mut notes);
    let mut frontends: Vec<&Proxy> = Vec::new();
    let mut backends: Vec<&Proxy> = Vec::new();
    for p in &proxies {
        let is_front = p.kind != "backend";
        let is_back = p.kind != "frontend";
        let dup = (is_front && frontends.iter().any(|f| f.name == p.name))
            || (is_back && backends.iter().any(|b| b.name == p.name));
        if dup {
            notes.push(Note {
                line: p.line,
                directive: format!("{} {}", p.kind, p.name),
                why: "a second proxy of that name (HAProxy refuses it): ignored".into(),
            });
            continue;
        }
        if is_front {
            frontends.push(p);
        }
        if is_back {
            backends.push(p);
        }
    }
    let mut out = String::from(
        "# Translated from haproxy.cfg by `forwarder import-haproxy`; review it, then\n\
         # `forwarder check --config FILE`. What was not translated is listed at the end.\n",
    );
    let mut names = HashSet::new();
    let mut listens: Vec<SocketAddr> = Vec::new();
    let mut services = 0;
    for f in frontends {
        services += service(f, &backends, &mut names, &mut listens, &mut out, &mut notes);
    }
    notes.sort_by_key(|n| n.line);
    if !notes.is_empty() {
        out.push_str("\n# Not translated (haproxy.cfg line: directive -- why):\n");
        for n in &notes {
            let _ = writeln!(
                out,
                "#   {}: {} -- {}",
                n.line,
                one_line(&n.directive),
                one_line(&n.why)
            );
        }
    }
    if services == 0 {
        return Err(format!(
            "no service: no frontend or listen section with a bind and a backend with servers\n{}",
            notes
                .iter()
                .map(|n| format!(
                    "  line {}: {} -- {}\n",
                    n.line,
                    one_line(&n.directive),
                    one_line(&n.why)
                ))
                .collect::<String>()
        ));
    }
    Ok(Translation {
        toml: out,
        services,
        notes,
    })
}

/// Writes the services of frontend (or listen) `f` to `out`; returns how many.
fn service(
    f: &Proxy,
    backends: &[&Proxy],
    names: &mut HashSet<String>,
    listens: &mut Vec<SocketAddr>,
    out: &mut String,
    notes: &mut Vec<Note>,
) -> usize {
    let skip = |notes: &mut Vec<Note>, why: String| {
        notes.push(Note {
            line: f.line,
            directive: format!("{} {}", f.kind, f.name),
            why,
        });
        0
    };
    let b = if f.kind == "listen" {
        f
    } else {
        let Some((_, target)) = f.use_backend.as_ref().or(f.default_backend.as_ref()) else {
            return skip(notes, "no default_backend: no service".into());
        };
        match backends.iter().find(|b| b.name == *target) {
            Some(b) => b,
            None => return skip(notes, format!("backend {target:?} not found: no service")),
        }
    };
    if f.binds.is_empty() {
        return skip(notes, "no bind: no service".into());
    }
    let servers = servers(b, notes);
    if servers.is_empty() {
        return skip(
            notes,
            format!("backend {:?} has no usable server: no service", b.name),
        );
    }
    let check = check::translate(b, notes);
    let mut count = 0;
    let server_tls = tls::server(b, check.ssl, notes);
    for bind in &f.binds {
        let client_tls = match tls::bind(bind, notes) {
            tls::Bind::Plain => None,
            tls::Bind::Tls(t) => Some(t),
            tls::Bind::Unusable => continue,
        };
        for a in bind.word(1).split(',') {
            let listen = match listen_addr(a) {
                Ok(l) => l,
                Err(why) => {
                    notes.push(Note::new(bind, why));
                    continue;
                }
            };
            let overlaps = |l: &SocketAddr| {
                l.port() == listen.port()
                    && (l.ip() == listen.ip()
                        || l.ip().is_unspecified()
                        || listen.ip().is_unspecified())
            };
            if listens.iter().any(overlaps) {
                notes.push(Note::new(
                    bind,
                    format!("{listen} overlaps an address already translated: skipped"),
                ));
                continue;
            }
            listens.push(listen);
            let name = unique(names, &f.name);
            let _ = writeln!(
                out,
                "\n# {} {} (line {}) -> backend {} (line {})\n[[service]]\nname = {}\nlisten = {}",
                f.kind,
                one_line(&f.name),
                f.line,
                one_line(&b.name),
                b.line,
                quote(&name),
                quote(&listen.to_string())
            );
            let list: Vec<String> = servers.iter().map(|s| quote(s)).collect();
            let _ = writeln!(out, "servers = [{}]", list.join(", "));
            write_service_keys(f, b, &check, out, notes);
            if let Some(t) = &client_tls {
                out.push_str(&t.toml());
            }
            if let Some(t) = &server_tls {
                out.push_str(t.for_service(client_tls.as_ref(), notes));
            }
            count += 1;
        }
    }
    count
}

/// maxconn, `[service.timeout]` and `[service.check]`.
fn write_service_keys(
    f: &Proxy,
    b: &Proxy,
    check: &check::Check,
    out: &mut String,
    notes: &mut Vec<Note>,
) {
    if let Some((line, v)) = &f.maxconn {
        match v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
        {
            Some(n) => {
                let _ = writeln!(out, "maxconn = {n}");
            }
            None => notes.push(Note {
                line: *line,
                directive: format!("maxconn {v}"),
                why: "not between 1 and 1000000: maxconn = \"auto\" is used".into(),
            }),
        }
    }
    const DAYS_24: u128 = 24 * 24 * 3600 * 1000;
    let mut timeouts = Vec::new();
    for (what, from) in [("connect", b), ("client", f), ("server", b), ("queue", b)] {
        let Some((_, v, line)) = from.timeouts.iter().find(|(k, _, _)| k == what) else {
            continue;
        };
        let min = if what == "queue" { 0 } else { 1 };
        match duration(v, min, DAYS_24) {
            Some(d) => timeouts.push(format!("{what} = \"{d}\"")),
            None => notes.push(Note {
                line: *line,
                directive: format!("timeout {what} {v}"),
                why: "not a duration the forwarder takes (at most 24 days): its default is used"
                    .into(),
            }),
        }
    }
    if !timeouts.is_empty() {
        let _ = writeln!(out, "timeout = {{ {} }}", timeouts.join(", "));
    }
    let _ = writeln!(out, "\n[service.check]\nkind = {}", quote(check.kind));
    if check.kind == "redis-master" {
        out.push_str(
            "# from the tcp-check lines PING/+PONG, INFO replication/role:master, QUIT/+OK\n",
        );
    }
    if check.kind == "tcp-check" {
        let steps: Vec<String> = check.steps.iter().map(|s| quote(s)).collect();
        let _ = writeln!(out, "steps = [{}]", steps.join(", "));
    }
    if let Some((user, password)) = &check.auth {
        if let Some(u) = user {
            let _ = writeln!(out, "user = {}", quote(u));
        }
        let _ = writeln!(out, "password = {}", quote(password));
    }
    for (k, v) in &check.keys {
        let _ = writeln!(out, "{k} = {v}");
    }
}

/// The servers of backend `b` as the forwarder writes them; the others noted.
fn servers(b: &Proxy, notes: &mut Vec<Note>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut names = HashSet::new();
    for s in &b.servers {
        if !names.insert(s.name.as_str()) {
            notes.push(Note::new(
                &s.line,
                format!(
                    "a second server named {:?} (HAProxy refuses it): skipped",
                    s.name
                ),
            ));
            continue;
        }
        match server_addr(&s.addr) {
            Ok(a) if out.contains(&a) => {
                notes.push(Note::new(&s.line, format!("{a} is listed twice: skipped")));
            }
            Ok(a) => out.push(a),
            Err(why) => notes.push(Note::new(&s.line, why)),
        }
    }
    out
}

/// A `bind` address as an `IP:port` to listen on (`*` and an empty host are every address).
fn listen_addr(a: &str) -> Result<SocketAddr, String> {
    let (host, port) = host_port(a)?;
    let host = match host.as_str() {
        "" | "*" => "0.0.0.0".to_string(),
        "::" => "[::]".to_string(),
        h => h.to_string(),
    };
    format!("{host}:{port}")
        .parse::<SocketAddr>()
        .map(|s| SocketAddr::new(s.ip().to_canonical(), s.port()))
        .map_err(|_| format!("bind {a}: the forwarder listens on IP:port addresses only"))
}

/// A `server` address as `IP:port` or `host:port`.
fn server_addr(a: &str) -> Result<String, String> {
    let (host, port) = host_port(a)?;
    if host.is_empty() || host == "*" {
        return Err(format!("server address {a:?} has no host"));
    }
    Ok(format!("{host}:{port}"))
}

/// Splits `[ipv4@|ipv6@]host:port` (IPv6 with or without brackets) into a host as the
/// forwarder writes it (`[v6]`) and a port that is one number between 1 and 65535.
fn host_port(a: &str) -> Result<(String, u16), String> {
    let bare = ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"]
        .iter()
        .find_map(|p| a.strip_prefix(p))
        .unwrap_or(a);
    if bare.starts_with('/') || bare.contains('@') {
        return Err(format!(
            "{a}: not a TCP address (UNIX sockets and the like are not translated)"
        ));
    }
    let Some((host, port)) = bare.rsplit_once(':') else {
        return Err(format!(
            "{a}: no port (HAProxy's port-less servers are not translated)"
        ));
    };
    // Digits only: `+1` (HAProxy's offset from the client's port) parses as a u16 too.
    let port = Some(port)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            format!("{a}: the port must be one number from 1 to 65535 (no ranges or offsets)")
        })?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => format!("[{v6}]"),
        None if host.contains(':') => format!("[{host}]"),
        None => host.to_string(),
    };
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        return Err(format!("{a:?}: not an address"));
    }
    Ok((host, port))
}

/// A service name from a proxy name: letters, digits, `-`, `_`, `.` kept, the rest `_`; a
/// suffix (`-2`, ...) when it is taken.
fn unique(names: &mut HashSet<String>, proxy: &str) -> String {
    let mut base: String = proxy
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() {
        base = "service".into();
    }
    let mut name = base.clone();
    let mut i = 2;
    while !names.insert(name.clone()) {
        name = format!("{base}-{i}");
        i += 1;
    }
    name
}

/// HAProxy time (`1000` is ms, or `100us`, `4s`, `1m`, `1h`, `1d`) written for the forwarder,
/// when it is between `min_ms` and `max_ms`.
pub(crate) fn duration(s: &str, min_ms: u128, max_ms: u128) -> Option<String> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 12 {
        return None;
    }
    let n: u128 = s[..digits].parse().ok()?;
    let unit = &s[digits..];
    let us = match unit {
        "us" => n,
        "" | "ms" => n * 1000,
        "s" => n * 1_000_000,
        "m" => n * 60_000_000,
        "h" => n * 3_600_000_000,
        "d" => n * 86_400_000_000,
        _ => return None,
    };
    if us < min_ms * 1000 || us > max_ms * 1000 {
        return None;
    }
    Some(format!("{n}{}", if unit.is_empty() { "ms" } else { unit }))
}

/// `s` on one line (it goes into a comment): runs of whitespace and control characters become
/// one space.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A TOML string: `"..."`, or `'...'` (literal) when it holds backslashes, which keeps step
/// escapes readable.
fn quote(s: &str) -> String {
    let plain = !s.chars().any(char::is_control);
    if plain && !s.contains('\\') && !s.contains('"') {
        return format!("\"{s}\"");
    }
    if plain && !s.contains('\'') {
        return format!("'{s}'");
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests;
