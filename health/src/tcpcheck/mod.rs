//! HAProxy's tcp-check: a program of `connect`, `send` and `expect` steps run against a server
//! under one deadline (HAProxy's `timeout check`, connect included).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::info::{self, Role};
use crate::resp;
use crate::tls::{Connector, Stream};

/// Most bytes an `expect` step buffers before it gives up ("reply too large").
pub const MAX_REPLY: usize = 64 * 1024;
/// Most characters of a server's error reply quoted in a failed check's reason.
const MAX_ERROR_SHOWN: usize = 200;

/// One step of a check program. Two steps are equal when they do the same (regular expressions
/// by their source text).
#[derive(Debug, Clone)]
pub enum Step {
    /// Opens the TCP connection to the server; only as the first step.
    Connect,
    /// Writes these bytes; what the next `expect` matches is what arrives after them.
    Send(Vec<u8>),
    /// The bytes received since the last `send` contain this string.
    ExpectString(String),
    /// ... match this regular expression.
    ExpectRegex(regex::bytes::Regex),
    /// ... contain these bytes.
    ExpectBinary(Vec<u8>),
    /// ... are a whole RESP reply to `INFO replication` whose `# Replication` section has this
    /// `role:` field (not merely the text anywhere, as `expect string role:master` would).
    ExpectRole(Role),
}

impl PartialEq for Step {
    fn eq(&self, other: &Step) -> bool {
        match (self, other) {
            (Step::Connect, Step::Connect) => true,
            (Step::Send(a), Step::Send(b)) | (Step::ExpectBinary(a), Step::ExpectBinary(b)) => {
                a == b
            }
            (Step::ExpectString(a), Step::ExpectString(b)) => a == b,
            (Step::ExpectRegex(a), Step::ExpectRegex(b)) => a.as_str() == b.as_str(),
            (Step::ExpectRole(a), Step::ExpectRole(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Step {}

/// A step that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Not a step this checker knows (or `expect role` of something else): the whole line.
    #[error(
        "unknown step {0:?}: expected connect, send <data>, expect string|rstring|binary <pattern>, expect role master|replica"
    )]
    Unknown(String),
    /// `send` or `expect ...` with nothing to send or match: the line.
    #[error("{0:?} needs an argument")]
    MissingArgument(String),
    /// A backslash escape other than those listed: the argument it is in.
    #[error("bad escape in {0:?}: use \\r \\n \\t \\\\ \\\" \\<space> or \\xHH")]
    BadEscape(String),
    /// An `expect rstring` pattern the regex crate rejects: the pattern, and why.
    #[error("bad regex {0:?}: {1}")]
    BadRegex(String, String),
    /// An `expect binary` argument that is not pairs of hex digits: the argument.
    #[error("bad hex {0:?}: expected pairs of hex digits")]
    BadHex(String),
    /// A program with no steps.
    #[error("a check program needs at least one step")]
    Empty,
    /// A program that does not start with `connect`.
    #[error("the first step must be connect")]
    FirstNotConnect,
    /// A `connect` after the first step (a program checks one connection).
    #[error("connect may only be the first step")]
    LaterConnect,
}

impl FromStr for Step {
    type Err = StepError;

    /// Parses `connect`, `send PING\r\n`, `expect string +PONG`, `expect rstring ^role:master`,
    /// `expect binary 2b504f4e47`.
    fn from_str(s: &str) -> Result<Step, StepError> {
        let s = trim_unescaped(s);
        let (word, rest) = s.split_once(' ').unwrap_or((s, ""));
        let rest = rest.trim_start();
        match word {
            "connect" if rest.is_empty() => Ok(Step::Connect),
            "send" => {
                if rest.is_empty() {
                    return Err(StepError::MissingArgument(s.into()));
                }
                Ok(Step::Send(unescape(rest)?))
            }
            "expect" => {
                let (kind, pat) = rest.split_once(' ').unwrap_or((rest, ""));
                let pat = pat.trim_start();
                if pat.is_empty() {
                    return Err(StepError::MissingArgument(s.into()));
                }
                match kind {
                    "string" => Ok(Step::ExpectString(
                        String::from_utf8_lossy(&unescape(pat)?).into_owned(),
                    )),
                    "rstring" => regex::bytes::Regex::new(pat)
                        .map(Step::ExpectRegex)
                        .map_err(|e| StepError::BadRegex(pat.into(), e.to_string())),
                    "binary" => hex(pat).map(Step::ExpectBinary),
                    "role" => match pat {
                        "master" => Ok(Step::ExpectRole(Role::Master)),
                        "replica" | "slave" => Ok(Step::ExpectRole(Role::Replica)),
                        _ => Err(StepError::Unknown(s.into())),
                    },
                    _ => Err(StepError::Unknown(s.into())),
                }
            }
            _ => Err(StepError::Unknown(s.into())),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Connect => write!(f, "connect"),
            Step::Send(d) => write!(f, "send {:?}", String::from_utf8_lossy(d)),
            Step::ExpectString(p) => write!(f, "expect string {p:?}"),
            Step::ExpectRegex(r) => write!(f, "expect rstring {:?}", r.as_str()),
            Step::ExpectBinary(b) => {
                write!(f, "expect binary ")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
            Step::ExpectRole(Role::Master) => write!(f, "expect role master"),
            Step::ExpectRole(Role::Replica) => write!(f, "expect role replica"),
        }
    }
}

/// `s` without surrounding white space, except an escaped space at the end (`send A\ `).
fn trim_unescaped(s: &str) -> &str {
    let s = s.trim_start();
    let t = s.trim_end();
    let backslashes = t.bytes().rev().take_while(|b| *b == b'\\').count();
    if backslashes % 2 == 1 && t.len() < s.len() {
        let escaped = s[t.len()..].chars().next().map_or(0, char::len_utf8);
        &s[..t.len() + escaped]
    } else {
        t
    }
}

fn unescape(s: &str) -> Result<Vec<u8>, StepError> {
    let bad = || StepError::BadEscape(s.into());
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next().ok_or_else(bad)? {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'\\' => out.push(b'\\'),
            b'"' => out.push(b'"'),
            b' ' => out.push(b' '),
            b'x' => {
                let hi = it.next().ok_or_else(bad)?;
                let lo = it.next().ok_or_else(bad)?;
                let h =
                    hex(std::str::from_utf8(&[hi, lo]).map_err(|_| bad())?).map_err(|_| bad())?;
                out.extend_from_slice(&h);
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn hex(s: &str) -> Result<Vec<u8>, StepError> {
    let bad = || StepError::BadHex(s.into());
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .filter(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// Credentials for `AUTH` before the Redis check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Redis 6 ACL user; `None` for `requirepass`.
    pub user: Option<String>,
    /// The password, sent in clear over the check's connection.
    pub password: String,
}

/// A validated check program: starts with `connect`, has no other `connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    steps: Vec<Step>,
    /// Replies are RESP: an `expect` fails as soon as one whole reply is in without a match,
    /// instead of waiting for the timeout (a replica answers INFO at once; no need to wait).
    resp_framed: bool,
    /// `connect` also does a TLS handshake with this (HAProxy's `check-ssl`).
    tls: Option<Connector>,
}

/// The outcome of one run of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Every step succeeded within the timeout.
    pub ok: bool,
    /// The run failed because of this host, not the server (out of descriptors, buffers or
    /// ports: EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL). Such a result says nothing about
    /// the server and must not move its rise/fall.
    pub local: bool,
    /// Index (from 0) of the step that failed; `None` when the run passed.
    pub failed_step: Option<usize>,
    /// Why the run failed, naming the step (`step 4 (expect role master): ...`); `None` when
    /// it passed.
    pub reason: Option<String>,
    /// For each `expect` that matched, the bytes received when it matched.
    pub replies: Vec<Vec<u8>>,
    /// What the failed `expect` had received (e.g. a replica's INFO reply).
    pub partial: Vec<u8>,
    /// How long the run took, connect included (at most about the timeout).
    pub elapsed: Duration,
}

impl Program {
    /// Validates a program: non-empty, `connect` first and only first.
    pub fn new(steps: Vec<Step>) -> Result<Program, StepError> {
        match steps.first() {
            None => return Err(StepError::Empty),
            Some(Step::Connect) => {}
            Some(_) => return Err(StepError::FirstNotConnect),
        }
        if steps.iter().skip(1).any(|s| matches!(s, Step::Connect)) {
            return Err(StepError::LaterConnect);
        }
        Ok(Program {
            steps,
            resp_framed: false,
            tls: None,
        })
    }

    /// The steps, in order (the first is `connect`).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The seed guide's HAProxy sequence: [AUTH/+OK], PING/+PONG, INFO replication/role:master,
    /// QUIT/+OK.
    pub fn redis_master(auth: Option<&Auth>) -> Program {
        let mut steps = vec![Step::Connect];
        if let Some(a) = auth {
            let cmd = match &a.user {
                Some(u) => resp::encode_command(&[b"AUTH", u.as_bytes(), a.password.as_bytes()]),
                None => resp::encode_command(&[b"AUTH", a.password.as_bytes()]),
            };
            steps.push(Step::Send(cmd));
            steps.push(Step::ExpectString("+OK".into()));
        }
        steps.extend([
            Step::Send(b"PING\r\n".to_vec()),
            Step::ExpectString("+PONG".into()),
            Step::Send(b"INFO replication\r\n".to_vec()),
            Step::ExpectRole(Role::Master),
            Step::Send(b"QUIT\r\n".to_vec()),
            Step::ExpectString("+OK".into()),
        ]);
        Program {
            steps,
            resp_framed: true,
            tls: None,
        }
    }

    /// The same program over TLS (`Some`) or plain TCP.
    pub fn with_tls(self, tls: Option<Connector>) -> Program {
        Program { tls, ..self }
    }

    /// The TLS its `connect` step speaks, if any.
    pub fn tls(&self) -> Option<&Connector> {
        self.tls.as_ref()
    }

    /// Runs the program against `addr`; the whole run, connect included, must end within
    /// `timeout`. Never panics; every failure is a report with a reason.
    pub async fn run(&self, addr: SocketAddr, timeout: Duration) -> CheckReport {
        let start = Instant::now();
        let mut run = Run {
            at: 0,
            buf: Vec::new(),
            replies: Vec::new(),
        };
        let res = tokio::time::timeout(timeout, run.exec(self, addr)).await;
        let (ok, local, reason) = match res {
            Ok(Ok(())) => (true, false, None),
            Ok(Err(f)) => (false, f.local, Some(f.reason)),
            Err(_) => (
                false,
                false,
                Some(format!(
                    "timeout after {timeout:?} ({} bytes received)",
                    run.buf.len()
                )),
            ),
        };
        CheckReport {
            ok,
            local,
            failed_step: (!ok).then_some(run.at),
            reason: reason.map(|r| match self.steps.get(run.at) {
                Some(step) => format!("step {} ({step}): {r}", run.at + 1),
                None => r,
            }),
            replies: run.replies,
            partial: if ok { Vec::new() } else { run.buf },
            elapsed: start.elapsed(),
        }
    }
}

/// Why a step failed.
struct Fail {
    reason: String,
    /// This host's fault (see [`CheckReport::local`]).
    local: bool,
}

impl From<String> for Fail {
    fn from(reason: String) -> Fail {
        Fail {
            reason,
            local: false,
        }
    }
}

impl From<&str> for Fail {
    fn from(reason: &str) -> Fail {
        Fail::from(reason.to_string())
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        let local = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE)
                | Some(libc::ENFILE)
                | Some(libc::ENOBUFS)
                | Some(libc::ENOMEM)
                | Some(libc::EADDRNOTAVAIL)
        );
        Fail {
            reason: if local {
                format!("{e} (a local error: the server is not judged)")
            } else {
                e.to_string()
            },
            local,
        }
    }
}

/// The state of a run, kept outside the future so a timeout still knows where it stopped.
struct Run {
    at: usize,
    buf: Vec<u8>,
    replies: Vec<Vec<u8>>,
}

impl Run {
    async fn exec(&mut self, program: &Program, addr: SocketAddr) -> Result<(), Fail> {
        let steps = &program.steps;
        let mut conn: Option<Stream> = None;
        for (i, step) in steps.iter().enumerate() {
            self.at = i;
            match step {
                Step::Connect => {
                    let s = TcpStream::connect(addr).await?;
                    let _ = s.set_nodelay(true);
                    conn = Some(match &program.tls {
                        None => Stream::Plain(s),
                        Some(t) => t
                            .connect(s, addr)
                            .await
                            .map_err(|e| Fail::from(format!("TLS handshake: {e}")))?,
                    });
                }
                Step::Send(data) => {
                    let s = conn.as_mut().ok_or("not connected")?;
                    self.buf.clear();
                    s.write_all(data).await?;
                }
                Step::ExpectRole(want) => {
                    // Read to the end of the INFO reply however long it is (a client can
                    // lengthen the master's), keeping its start, where the role is.
                    let s = conn.as_mut().ok_or("not connected")?;
                    let mut discarded = 0usize;
                    let role = loop {
                        if let Some(r) = info::reply_role_streamed(&self.buf, discarded) {
                            break r;
                        }
                        if self.buf.len() + discarded > info::MAX_INFO {
                            return Err(format!("INFO reply over {} bytes", info::MAX_INFO).into());
                        }
                        let mut chunk = [0u8; 16 * 1024];
                        let n = s.read(&mut chunk).await?;
                        if n == 0 {
                            return Err(format!(
                                "EOF after {} bytes of the INFO reply",
                                self.buf.len() + discarded
                            )
                            .into());
                        }
                        let room = MAX_REPLY - self.buf.len();
                        self.buf.extend_from_slice(&chunk[..n.min(room)]);
                        discarded += n - n.min(room);
                    };
                    let n = self.buf.len() + discarded;
                    match role {
                        Ok(r) if r == *want => self.replies.push(self.buf.clone()),
                        Ok(Role::Master) => {
                            return Err(format!("role:master in the {n}-byte reply").into())
                        }
                        Ok(Role::Replica) => {
                            return Err(format!("role:slave in the {n}-byte reply").into())
                        }
                        Err(e) => return Err(format!("{e} ({n}-byte reply)").into()),
                    }
                }
                expect => {
                    let s = conn.as_mut().ok_or("not connected")?;
                    loop {
                        if matches(expect, &self.buf) {
                            self.replies.push(self.buf.clone());
                            break;
                        }
                        if program.resp_framed {
                            match resp::parse(&self.buf) {
                                Ok(None) => {}
                                // The server's own words say why (-WRONGPASS, -NOAUTH, ...),
                                // cut short and without control characters: they go to the
                                // log and the status page.
                                Ok(Some((resp::Reply::Error(e), _))) => {
                                    let e: String = e
                                        .chars()
                                        .filter(|c| !c.is_control())
                                        .take(MAX_ERROR_SHOWN)
                                        .collect();
                                    return Err(format!("the server answered -{e}").into());
                                }
                                Ok(Some(_)) | Err(_) => {
                                    let n = self.buf.len();
                                    return Err(format!("not found in the {n}-byte reply").into());
                                }
                            }
                        }
                        if self.buf.len() >= MAX_REPLY {
                            return Err(format!(
                                "reply too large (over {MAX_REPLY} bytes) without a match"
                            )
                            .into());
                        }
                        let mut chunk = [0u8; 4096];
                        let n = s.read(&mut chunk).await?;
                        if n == 0 {
                            return Err(format!(
                                "not found in {} bytes received before EOF",
                                self.buf.len()
                            )
                            .into());
                        }
                        let room = MAX_REPLY - self.buf.len();
                        self.buf.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        }
        self.at = steps.len();
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

fn matches(step: &Step, buf: &[u8]) -> bool {
    match step {
        Step::ExpectString(s) => contains(buf, s.as_bytes()),
        Step::ExpectRegex(r) => r.is_match(buf),
        Step::ExpectBinary(b) => contains(buf, b),
        Step::ExpectRole(_) => false, // read to its end in `Run::exec`
        Step::Connect | Step::Send(_) => true,
    }
}

#[cfg(test)]
mod tests;
