//! The sections that matter, read into [`Proxy`]s: what each `defaults`, `frontend`, `backend`
//! and `listen` says that the forwarder can use, each proxy starting from the `defaults` section
//! above it (a new `defaults` starts from nothing, as in HAProxy). Every directive that is not
//! used becomes a [`Note`].

use super::cfg::{Line, Section};
use super::Note;

/// A `server` line.
#[derive(Debug, Clone)]
pub(super) struct Server {
    pub(super) line: Line,
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) check: bool,
    /// `inter`, `fastinter`, `downinter`, `rise`, `fall`, as written (after `default-server`).
    pub(super) params: Vec<(String, String)>,
    /// The TLS parameters ([`TLS_PARAMS`]; a flag's value is empty), after `default-server`.
    pub(super) tls: Vec<(String, String)>,
}

/// What a proxy (or a `defaults` section) says.
#[derive(Debug, Clone, Default)]
pub(super) struct Proxy {
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) mode: Option<(usize, String)>,
    pub(super) binds: Vec<Line>,
    pub(super) default_backend: Option<(usize, String)>,
    pub(super) use_backend: Option<(usize, String)>,
    /// `timeout <what> <value>` with its line, for connect, client, server, check and queue.
    pub(super) timeouts: Vec<(String, String, usize)>,
    pub(super) maxconn: Option<(usize, String)>,
    /// `option tcp-check`, `option redis-check` or another check option, with its line.
    pub(super) check_option: Option<(usize, String)>,
    pub(super) tcp_check: Vec<Line>,
    /// `default-server` parameters that servers inherit: check, then TLS ones.
    pub(super) default_server: Vec<(String, String)>,
    pub(super) default_tls: Vec<(String, String)>,
    /// `default-server check`.
    pub(super) default_check: bool,
    pub(super) servers: Vec<Server>,
}

/// Server parameters that the forwarder's `[service.check]` takes; each has a value.
pub(super) const CHECK_PARAMS: &[&str] = &["inter", "fastinter", "downinter", "rise", "fall"];

/// Server parameters that `[service.server_tls]` takes: flags, then those with a value.
pub(super) const TLS_FLAGS: &[&str] = &["ssl", "check-ssl"];
pub(super) const TLS_PARAMS: &[&str] = &["ca-file", "crt", "sni", "verify", "verifyhost"];

/// Reads the proxies of `sections`, in order; notes go to `notes`.
pub(super) fn proxies(sections: &[Section], notes: &mut Vec<Note>) -> Vec<Proxy> {
    let mut defaults = Proxy::default();
    let mut out = Vec::new();
    for s in sections {
        match s.kind.as_str() {
            "global" => {
                for l in &s.lines {
                    let why = match l.word(0).as_str() {
                        "maxconn" => {
                            "the forwarder budgets descriptors itself (service maxconn = \"auto\")"
                        }
                        "user" | "group" => "set [process] user / group",
                        "stats" => "the admin listener has /status and /metrics ([admin] listen)",
                        _ => "no global equivalent",
                    };
                    notes.push(Note::new(l, why));
                }
            }
            "defaults" | "frontend" | "backend" | "listen" => {
                let mut p = if s.kind == "defaults" {
                    Proxy::default()
                } else {
                    defaults.clone()
                };
                p.kind = s.kind.clone();
                p.name = s.name.clone();
                p.line = s.header.no;
                if s.header.words.len() > 2 {
                    notes.push(Note::new(
                        &s.header,
                        "only the section name is used (no `from`, no address on the header)",
                    ));
                }
                for l in &s.lines {
                    read(&mut p, l, notes);
                }
                if s.kind == "defaults" {
                    defaults = p;
                } else {
                    out.push(p);
                }
            }
            _ => {
                notes.push(Note::new(&s.header, "section not translated"));
                for l in &s.lines {
                    notes.push(Note::new(l, "in a section that is not translated"));
                }
            }
        }
    }
    out
}

/// One directive of a proxy section.
fn read(p: &mut Proxy, l: &Line, notes: &mut Vec<Note>) {
    let n = l.words.len();
    let has_frontend = p.kind != "backend";
    let has_backend = p.kind != "frontend";
    let w0 = l.word(0);
    match w0.as_str() {
        "mode" if n == 2 => {
            if l.word(1) != "tcp" {
                notes.push(Note::new(
                    l,
                    "the forwarder forwards TCP: HTTP features do not carry over",
                ));
            }
            p.mode = Some((l.no, l.word(1)));
        }
        "bind" if has_frontend && n >= 2 => p.binds.push(l.clone()),
        "default_backend" if has_frontend && n == 2 => {
            p.default_backend = Some((l.no, l.word(1)));
        }
        "use_backend" if has_frontend && n == 2 && p.use_backend.is_none() => {
            p.use_backend = Some((l.no, l.word(1)));
        }
        "use_backend" => notes.push(Note::new(
            l,
            "conditional (or second) use_backend: the forwarder has no ACLs; default_backend \
             (or the first unconditional use_backend) is used",
        )),
        "timeout" if n == 3 => {
            let what = l.word(1);
            let side_ok = match what.as_str() {
                "client" => has_frontend,
                "connect" | "server" | "check" | "queue" => has_backend,
                _ => false,
            };
            if side_ok {
                p.timeouts.retain(|(k, _, _)| *k != what);
                p.timeouts.push((what, l.word(2), l.no));
            } else {
                notes.push(Note::new(l, "no equivalent timeout here"));
            }
        }
        "maxconn" if has_frontend && n == 2 => p.maxconn = Some((l.no, l.word(1))),
        "option" if n == 2 && (l.word(1).ends_with("-check") || l.word(1) == "httpchk") => {
            let opt = l.word(1);
            if opt != "tcp-check" && opt != "redis-check" {
                notes.push(Note::new(
                    l,
                    "only tcp-check and redis-check checks are translated; a connect check is used",
                ));
            }
            p.check_option = Some((l.no, opt));
        }
        "tcp-check" if has_backend => p.tcp_check.push(l.clone()),
        "default-server" if has_backend => {
            let (params, tls, rest) = server_params(&l.words[1..]);
            merge(&mut p.default_server, params);
            merge(&mut p.default_tls, tls);
            let (check, rest): (Vec<String>, Vec<String>) =
                rest.into_iter().partition(|r| r == "check");
            p.default_check |= !check.is_empty();
            if !rest.is_empty() {
                notes.push(Note::new(l, format!("not translated: {}", rest.join(" "))));
            }
        }
        "server" if has_backend && n >= 3 => {
            let (params, tls, rest) = server_params(&l.words[3..]);
            let check = p.default_check || rest.iter().any(|r| r == "check");
            let rest: Vec<&String> = rest.iter().filter(|r| *r != "check").collect();
            if !rest.is_empty() {
                let why = match rest.iter().any(|r| *r == "backup") {
                    true => "backup, weight and the like: the forwarder routes to the one master"
                        .to_string(),
                    false => format!(
                        "server parameters not translated: {}",
                        rest.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                };
                notes.push(Note::new(l, why));
            }
            let mut merged = p.default_server.clone();
            merge(&mut merged, params);
            let mut merged_tls = p.default_tls.clone();
            merge(&mut merged_tls, tls);
            p.servers.push(Server {
                line: l.clone(),
                name: l.word(1),
                addr: l.word(2),
                check,
                params: merged,
                tls: merged_tls,
            });
        }
        "balance" => notes.push(Note::new(
            l,
            "the forwarder routes every client to the one master",
        )),
        _ => notes.push(Note::new(l, "not translated")),
    }
}

/// `over` laid over `base`: a parameter given again replaces the earlier one.
fn merge(base: &mut Vec<(String, String)>, over: Vec<(String, String)>) {
    for (k, v) in over {
        base.retain(|(k2, _)| *k2 != k);
        base.push((k, v));
    }
}

/// Server parameters split into the check ones and the TLS ones (with their values; a flag's
/// is empty) and the rest, as written.
type Split = (Vec<(String, String)>, Vec<(String, String)>, Vec<String>);

fn server_params(words: &[Vec<u8>]) -> Split {
    let words: Vec<String> = words
        .iter()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let (mut params, mut tls, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let valued = i + 1 < words.len();
        if CHECK_PARAMS.contains(&w) && valued {
            params.push((words[i].clone(), words[i + 1].clone()));
            i += 2;
        } else if TLS_PARAMS.contains(&w) && valued {
            tls.push((words[i].clone(), words[i + 1].clone()));
            i += 2;
        } else if TLS_FLAGS.contains(&w) {
            tls.push((words[i].clone(), String::new()));
            i += 1;
        } else {
            rest.push(words[i].clone());
            i += 1;
        }
    }
    (params, tls, rest)
}
