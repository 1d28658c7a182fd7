//! A backend's health check, translated: its `tcp-check` rules as forwarder steps (the seed
//! guide's six Redis lines, with or without `AUTH` first, become `kind = "redis-master"`), or
//! `option redis-check`, or HAProxy's plain connect check; and the schedule (`inter`, `rise`,
//! ...) of its servers.

use super::cfg::Line;
use super::proxy::{Proxy, CHECK_PARAMS};
use super::{duration, Note};

/// The translated `[service.check]`.
#[derive(Debug, Default)]
pub(super) struct Check {
    /// `redis-master` or `tcp-check`.
    pub(super) kind: &'static str,
    /// The steps (tcp-check only), in the forwarder's syntax.
    pub(super) steps: Vec<String>,
    /// `AUTH` of the redis-master check: user (optional) and password.
    pub(super) auth: Option<(Option<String>, String)>,
    /// `interval`, `fastinter`, `downinter`, `rise`, `fall`, `timeout`, as the forwarder writes
    /// them.
    pub(super) keys: Vec<(&'static str, String)>,
    /// A `tcp-check connect ssl` rule: the checks speak TLS (the forwarder's do whenever
    /// `[service.server_tls]` is there).
    pub(super) ssl: bool,
}

/// HAProxy's `inter` when a server does not say.
const HAPROXY_INTER: &str = "2s";

/// The guide's check after its `connect`, in the forwarder's syntax (lowercased to compare).
const CLASSIC: &[&str] = &[
    "send ping\\r\\n",
    "expect string +pong",
    "send info\\ replication\\r\\n",
    "expect string role:master",
    "send quit\\r\\n",
    "expect string +ok",
];

/// The check of backend `b`.
pub(super) fn translate(b: &Proxy, notes: &mut Vec<Note>) -> Check {
    let mut c = Check {
        kind: "tcp-check",
        steps: vec!["connect".into()],
        ..Check::default()
    };
    match b.check_option.as_ref().map(|(_, o)| o.as_str()) {
        Some("tcp-check") => rules(b, &mut c, notes),
        Some("redis-check") => {
            c.steps.push("send PING\\r\\n".into());
            c.steps.push("expect string +PONG".into());
        }
        _ => {
            for l in &b.tcp_check {
                notes.push(Note::new(l, "tcp-check without `option tcp-check`: unused"));
            }
        }
    }
    schedule(b, &mut c, notes);
    c
}

/// `tcp-check` rules -> steps.
fn rules(b: &Proxy, c: &mut Check, notes: &mut Vec<Note>) {
    let mut steps: Vec<(String, &Line)> = Vec::new();
    for l in &b.tcp_check {
        if l.word(1) == "connect" && l.words.len() == 3 && l.word(2) == "ssl" {
            c.ssl = true;
            steps.push(("connect".into(), l));
            continue;
        }
        match step(l) {
            Ok(Some(s)) => match s.parse::<health::Step>() {
                Ok(_) => steps.push((s, l)),
                Err(e) => notes.push(Note::new(l, format!("not a forwarder step: {e}"))),
            },
            Ok(None) => {}
            Err(why) => notes.push(Note::new(l, why)),
        }
    }
    // HAProxy connects first when the rules do not say so; the forwarder wants it written.
    if steps.first().is_some_and(|(s, _)| s == "connect") {
        steps.remove(0);
    }
    steps.retain(|(s, l)| {
        let later = s == "connect";
        if later {
            notes.push(Note::new(
                l,
                "a second connect: the forwarder checks one connection",
            ));
        }
        !later
    });
    let lower: Vec<String> = steps.iter().map(|(s, _)| s.to_lowercase()).collect();
    if lower == CLASSIC {
        c.kind = "redis-master";
        c.steps.clear();
        return;
    }
    if lower.len() == CLASSIC.len() + 2
        && lower[2..] == *CLASSIC
        && lower[0].starts_with("send auth\\ ")
        && lower[1] == "expect string +ok"
    {
        if let Some(auth) = auth_of(steps[0].1) {
            c.kind = "redis-master";
            c.steps.clear();
            c.auth = Some(auth);
            return;
        }
    }
    c.steps.extend(steps.into_iter().map(|(s, _)| s));
}

/// The user and password of `tcp-check send AUTH [user] password\r\n`.
fn auth_of(l: &Line) -> Option<(Option<String>, String)> {
    let arg = l.word(2);
    let rest = arg.strip_suffix("\r\n")?;
    let mut w = rest.split(' ');
    if !w.next()?.eq_ignore_ascii_case("auth") {
        return None;
    }
    let parts: Vec<&str> = w.collect();
    let ok = |s: &str| !s.is_empty() && !s.chars().any(char::is_control);
    match parts.as_slice() {
        [p] if ok(p) => Some((None, p.to_string())),
        [u, p] if ok(u) && ok(p) => Some((Some(u.to_string()), p.to_string())),
        _ => None,
    }
}

/// One `tcp-check` rule as a step; `None` for a comment; the error says why not.
fn step(l: &Line) -> Result<Option<String>, String> {
    let n = l.words.len();
    match l.word(1).as_str() {
        "connect" if n == 2 => Ok(Some("connect".into())),
        "connect" => Err("connect options (port, send-proxy, ...) are not translated".into()),
        "send" if n == 3 => Ok(Some(format!("send {}", escape(&l.words[2])))),
        "send-binary" if n == 3 => {
            let hex = l.word(2);
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .filter(|_| hex.len().is_multiple_of(2) && !hex.is_empty())
                .ok_or("send-binary needs pairs of hex digits")?;
            Ok(Some(format!("send {}", escape(&bytes))))
        }
        "comment" => Ok(None),
        "expect" => expect(l),
        _ => Err("this tcp-check rule is not translated".into()),
    }
}

/// `tcp-check expect [!] string|rstring|binary <pattern>`.
fn expect(l: &Line) -> Result<Option<String>, String> {
    if l.words.iter().any(|w| w == b"!") {
        return Err("a negated expect is not translated".into());
    }
    if l.words.len() != 4 {
        return Err(
            "only `expect string|rstring|binary <pattern>` is translated (no options)".into(),
        );
    }
    let pat = &l.words[3];
    match l.word(2).as_str() {
        "string" => Ok(Some(format!("expect string {}", escape(pat)))),
        "rstring" => Ok(Some(format!(
            "expect rstring {}",
            String::from_utf8_lossy(pat)
        ))),
        "binary" => Ok(Some(format!(
            "expect binary {}",
            String::from_utf8_lossy(pat).to_lowercase()
        ))),
        _ => Err("this expect is not translated".into()),
    }
}

/// Bytes in the step syntax: printable ASCII as is, spaces and backslashes escaped, `\r`, `\n`,
/// `\t`, and `\xHH` for anything else.
fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b' ' => s.push_str("\\ "),
            b'"' => s.push_str("\\\""),
            0x21..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

/// The schedule: the first checked server's parameters; servers that differ are noted.
fn schedule(b: &Proxy, c: &mut Check, notes: &mut Vec<Note>) {
    let checked: Vec<_> = b.servers.iter().filter(|s| s.check).collect();
    for s in b.servers.iter().filter(|s| !s.check) {
        notes.push(Note::new(
            &s.line,
            "a server without `check` is always up for HAProxy; the forwarder checks every server",
        ));
    }
    let Some(first) = checked.first() else {
        return;
    };
    for s in &checked[1..] {
        let mut a = s.params.clone();
        let mut f = first.params.clone();
        a.sort();
        f.sort();
        if a != f {
            notes.push(Note::new(
                &s.line,
                format!(
                    "check parameters differ from server {}'s, which are used for every server",
                    first.name
                ),
            ));
        }
    }
    let get = |k: &str| first.params.iter().find(|(p, _)| p == k).map(|(_, v)| v);
    for k in CHECK_PARAMS {
        let key = match *k {
            "inter" => "interval",
            "fastinter" => "fastinter",
            "downinter" => "downinter",
            "rise" => "rise",
            _ => "fall",
        };
        let value = match get(k) {
            Some(v) => v.clone(),
            None if *k == "inter" => HAPROXY_INTER.into(),
            None => continue,
        };
        let ok = match key {
            "rise" | "fall" => value
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .map(|n| n.to_string()),
            _ => duration(&value, 1, 3_600_000).map(|d| format!("\"{d}\"")),
        };
        match ok {
            Some(v) => c.keys.push((key, v)),
            None => notes.push(Note::new(
                &first.line,
                format!("{k} {value}: out of the forwarder's range, its default is used"),
            )),
        }
    }
    if let Some((_, v, line)) = b.timeouts.iter().find(|(k, _, _)| k == "check") {
        match duration(v, 1, 3_600_000) {
            Some(d) => c.keys.push(("timeout", format!("\"{d}\""))),
            None => notes.push(Note {
                line: *line,
                directive: format!("timeout check {v}"),
                why: "out of the forwarder's range (1ms to 1h); the interval is used".into(),
            }),
        }
    }
}
