//! The Sentinel client: per Sentinel, one task polling `SENTINEL get-master-addr-by-name` (and
//! `SENTINEL replicas`) and one holding a `+switch-master` subscription, both reconnecting with
//! jittered backoff; the flood rules that drop a subscription sending too much; and the RESP
//! connection with its timeouts and reply size limit.
//!
//! Everything a Sentinel says goes to `view`, which alone decides what counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::parse::{
    kind, parse_master_addr, parse_message, parse_replicas, parse_switch_master, ReplyError,
};
use super::view::{Shared, Source};
use super::{SentinelConfig, SentinelReport, SentinelView};
use crate::resp::{self, Reply};
use crate::tcpcheck::Auth;
use crate::tls::{Connector, Stream};

/// Most `+switch-master` pushes for our master one Sentinel may send in `PUSH_WINDOW`; more is a
/// flood (a real failover sends one), and the subscription is dropped and retried with backoff.
const PUSH_BURST: u32 = 5;
/// Most pub/sub messages of any kind (other masters' included) one subscription may deliver in
/// `PUSH_WINDOW`: enough for a Sentinel of a hundred masters in a bad minute, not for a flood.
const MESSAGE_BURST: u32 = 1000;
const PUSH_WINDOW: Duration = Duration::from_secs(10);
/// A subscription that lived this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Why a query session or a subscription ended: its Display is the `error` of the log line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SentinelError {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("AUTH refused: {0}")]
    AuthRefused(String),
    /// AUTH answered neither OK nor an error; holds what it answered (`kind`).
    #[error("AUTH: unexpected {0}")]
    AuthUnexpected(&'static str),
    #[error("write timed out")]
    WriteTimeout,
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("malformed reply: {0}")]
    Malformed(resp::RespError),
    #[error("reply over {} bytes", MAX_REPLY)]
    TooLarge,
    #[error("no whole reply within {0:?}")]
    ReadTimeout(Duration),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("more than {} messages in {:?}: a flood", MESSAGE_BURST, PUSH_WINDOW)]
    MessageFlood,
    #[error(
        "more than {} +switch-master in {:?}: a flood, not a failover",
        PUSH_BURST,
        PUSH_WINDOW
    )]
    PushFlood,
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

/// The Sentinel tasks of one service. Dropping it stops them.
pub struct Sentinels {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sentinels {
    /// Starts querying and subscribing to every Sentinel. Must run inside a tokio runtime.
    pub fn spawn(service: String, cfg: SentinelConfig) -> Sentinels {
        let n = cfg.addresses.len();
        let shared = Arc::new(Shared::new(service, cfg));
        let mut tasks = Vec::with_capacity(2 * n);
        for i in 0..n {
            tasks.push(tokio::spawn(query_loop(Arc::clone(&shared), i)));
            tasks.push(tokio::spawn(subscribe_loop(Arc::clone(&shared), i)));
        }
        Sentinels { shared, tasks }
    }

    /// A receiver of the agreed view, updated whenever it changes.
    pub fn subscribe(&self) -> watch::Receiver<SentinelView> {
        self.shared.tx.subscribe()
    }

    /// The agreed view now.
    pub fn view(&self) -> SentinelView {
        *self.shared.tx.borrow()
    }

    /// Each configured Sentinel's last query result, in configuration order.
    pub fn reports(&self) -> Vec<SentinelReport> {
        self.shared.reports()
    }

    /// Master and replica addresses a quorum of the Sentinels reports (`SENTINEL replicas`).
    pub fn discovered(&self) -> watch::Receiver<Vec<SocketAddr>> {
        self.shared.discovered.subscribe()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reconnect delay: doubles from 100 ms to 5 s, with up to 50% jitter so that many forwarders do
/// not hammer a recovering Sentinel in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(6));
    let base = base.min(Duration::from_secs(5));
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 2);
    base + Duration::from_millis(jitter)
}

async fn query_loop(shared: Arc<Shared>, i: usize) {
    let addr = shared.cfg.addresses[i];
    let mut attempt = 0;
    loop {
        if let Err(e) = query_session(&shared, i, &mut attempt).await {
            shared.logs[i].failed.log(|suppressed| {
                tracing::warn!(service = %shared.service, sentinel = %addr, error = %e,
                    suppressed, "Sentinel query failed");
            });
            // The reason is shown in /status: a hostile Sentinel's AUTH error text is cut short.
            let reason = e.to_string().chars().take(200).collect();
            shared.set(i, false, None, Source::Failure(reason));
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Queries one Sentinel every `interval` until an error; every whole answer resets the reconnect
/// backoff.
async fn query_session(shared: &Shared, i: usize, attempt: &mut u32) -> Result<(), SentinelError> {
    let cfg = &shared.cfg;
    let mut conn = Conn::open(
        cfg.addresses[i],
        cfg.timeout,
        cfg.auth.as_ref(),
        cfg.tls.as_ref(),
    )
    .await?;
    loop {
        let pushes = shared.pushes(i);
        let reply = conn
            .call(&[
                b"SENTINEL",
                b"get-master-addr-by-name",
                cfg.master_name.as_bytes(),
            ])
            .await?;
        let master = parse_master_addr(&reply)?;
        if master.is_none() {
            shared.logs[i].unknown_name.log(|suppressed| {
                tracing::warn!(service = %shared.service, sentinel = %cfg.addresses[i],
                    master_name = %cfg.master_name, suppressed,
                    "this Sentinel does not know the master name");
            });
        }
        shared.set(i, true, master, Source::Query { pushes });
        if let Some(m) = master {
            let reply = conn
                .call(&[b"SENTINEL", b"replicas", cfg.master_name.as_bytes()])
                .await?;
            let mut found = vec![m];
            found.extend(parse_replicas(&reply)?);
            shared.discover(i, found);
        }
        *attempt = 0;
        tokio::time::sleep(cfg.interval).await;
    }
}

async fn subscribe_loop(shared: Arc<Shared>, i: usize) {
    let addr = shared.cfg.addresses[i];
    let mut attempt = 0;
    loop {
        let started = tokio::time::Instant::now();
        let res = subscription(&shared, i).await;
        if started.elapsed() >= STABLE {
            attempt = 0;
        }
        if let Err(e) = res {
            shared.logs[i].failed.log(|suppressed| {
                tracing::warn!(service = %shared.service, sentinel = %addr, error = %e,
                    suppressed, "Sentinel subscription lost");
            });
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// The events worth a log line besides `+switch-master`.
const EVENTS: [&str; 5] = [
    "+switch-master",
    "+sdown",
    "+odown",
    "-odown",
    "+failover-end",
];

async fn subscription(shared: &Shared, i: usize) -> Result<(), SentinelError> {
    let cfg = &shared.cfg;
    let sentinel = cfg.addresses[i];
    let mut conn = Conn::open(sentinel, cfg.timeout, cfg.auth.as_ref(), cfg.tls.as_ref()).await?;
    let mut cmd: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    cmd.extend(EVENTS.iter().map(|e| e.as_bytes()));
    conn.send(&cmd).await?;
    let mut window = (tokio::time::Instant::now(), 0u32);
    let mut messages = (tokio::time::Instant::now(), 0u32);
    loop {
        // No timeout: a subscription is silent until something happens.
        let reply = conn.read(None).await?;
        if messages.0.elapsed() > PUSH_WINDOW {
            messages = (tokio::time::Instant::now(), 0);
        }
        messages.1 += 1;
        if messages.1 > MESSAGE_BURST {
            return Err(SentinelError::MessageFlood);
        }
        let Some((channel, payload)) = parse_message(&reply)? else {
            continue; // a subscribe confirmation
        };
        // Payloads start with "master <name> ..." or, for +switch-master, "<name> ...".
        let ours = payload.split(' ').take(2).any(|w| w == cfg.master_name);
        if !ours {
            continue;
        }
        if channel == "+switch-master" {
            let new = parse_switch_master(&payload, &cfg.master_name)?;
            if window.0.elapsed() > PUSH_WINDOW {
                window = (tokio::time::Instant::now(), 0);
            }
            window.1 += 1;
            if window.1 > PUSH_BURST {
                return Err(SentinelError::PushFlood);
            }
            shared.logs[i].push.log(|suppressed| {
                tracing::warn!(service = %shared.service, %sentinel, new_master = %new,
                    suppressed, "Sentinel +switch-master");
            });
            shared.set(i, true, Some(new), Source::Push);
        } else {
            shared.logs[i].event.log(|suppressed| {
                tracing::info!(service = %shared.service, %sentinel, event = %channel,
                    payload = %payload.chars().take(200).collect::<String>(), suppressed,
                    "Sentinel event");
            });
        }
    }
}

/// A RESP connection to one Sentinel.
/// One RESP connection (to a Sentinel, or to a Redis server for a switchover) with its timeouts
/// and reply size limit.
pub(crate) struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Where the reply in `buf` ends, found without re-parsing it at every read.
    framer: resp::Framer,
    timeout: Duration,
}

/// Replies larger than this from a Sentinel are hostile.
const MAX_REPLY: usize = 1 << 20;

impl Conn {
    pub(crate) async fn open(
        addr: SocketAddr,
        timeout: Duration,
        auth: Option<&Auth>,
        tls: Option<&Connector>,
    ) -> Result<Conn, SentinelError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SentinelError::ConnectTimeout(timeout))?
            .map_err(SentinelError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(t) => tokio::time::timeout(timeout, t.connect(tcp, addr))
                .await
                .map_err(|_| SentinelError::ConnectTimeout(timeout))?
                .map_err(SentinelError::Handshake)?,
        };
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            framer: resp::Framer::default(),
            timeout,
        };
        if let Some(a) = auth {
            let mut cmd: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &a.user {
                cmd.push(u.as_bytes());
            }
            cmd.push(a.password.as_bytes());
            match c.call(&cmd).await? {
                Reply::Simple(s) if s == "OK" => {}
                Reply::Error(e) => return Err(SentinelError::AuthRefused(e)),
                other => return Err(SentinelError::AuthUnexpected(kind(&other))),
            }
        }
        Ok(c)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), SentinelError> {
        let bytes = resp::encode_command(args);
        tokio::time::timeout(self.timeout, self.stream.write_all(&bytes))
            .await
            .map_err(|_| SentinelError::WriteTimeout)?
            .map_err(SentinelError::Write)
    }

    pub(crate) async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, SentinelError> {
        self.send(args).await?;
        self.read(Some(self.timeout)).await
    }

    /// Reads one whole reply. With `timeout`, all of it must arrive within that time; without,
    /// the wait for its first byte is unbounded (a subscription is silent until something
    /// happens), but the rest must follow within `self.timeout`: a trickling Sentinel is cut.
    async fn read(&mut self, timeout: Option<Duration>) -> Result<Reply, SentinelError> {
        let mut deadline = timeout.map(|t| (tokio::time::Instant::now() + t, t));
        loop {
            if self.framer.ready(&self.buf) {
                self.framer = resp::Framer::default();
                match resp::parse(&self.buf) {
                    Ok(Some((reply, used))) => {
                        self.buf.drain(..used);
                        return Ok(reply);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(SentinelError::Malformed(e)),
                }
            }
            if self.buf.len() > MAX_REPLY {
                return Err(SentinelError::TooLarge);
            }
            if deadline.is_none() && !self.buf.is_empty() {
                deadline = Some((tokio::time::Instant::now() + self.timeout, self.timeout));
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = self.stream.read(&mut chunk);
            let n = match deadline {
                Some((at, t)) => tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| SentinelError::ReadTimeout(t))?,
                None => read.await,
            }
            .map_err(SentinelError::Read)?;
            if n == 0 {
                return Err(SentinelError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are those of the log lines and of the tests that read them.
    #[test]
    fn error_texts() {
        for (err, text) in [
            (
                SentinelError::ConnectTimeout(Duration::from_millis(200)),
                "connect timed out after 200ms",
            ),
            (
                SentinelError::AuthUnexpected("an integer"),
                "AUTH: unexpected an integer",
            ),
            (SentinelError::TooLarge, "reply over 1048576 bytes"),
            (
                SentinelError::ReadTimeout(Duration::from_secs(1)),
                "no whole reply within 1s",
            ),
            (SentinelError::Closed, "connection closed"),
            (
                SentinelError::MessageFlood,
                "more than 1000 messages in 10s: a flood",
            ),
            (
                SentinelError::PushFlood,
                "more than 5 +switch-master in 10s: a flood, not a failover",
            ),
            (SentinelError::from(ReplyError::PortZero), "port 0"),
        ] {
            assert_eq!(err.to_string(), text);
        }
    }
}
