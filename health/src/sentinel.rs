//! Asking Redis Sentinel who the master is: `SENTINEL get-master-addr-by-name` polled on every
//! configured Sentinel, plus a `+switch-master` subscription on each so that a failover reaches
//! the data path within milliseconds of the Sentinels deciding it.
//!
//! An answer counts when `quorum` Sentinels (by default a majority of those configured) name the
//! same address. With fewer reachable, the last agreed master is kept and the view says
//! `degraded`: losing Sentinels must not move or drop the master.
//!
//! Every reply is parsed defensively: a malformed or hostile answer is an error with a reason for
//! that Sentinel, never a panic and never a master.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ratelimit::RateLimit;
use crate::resp::{self, Reply};
use crate::tcpcheck::Auth;

/// How to reach the Sentinels of one master.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    pub addresses: Vec<SocketAddr>,
    pub master_name: String,
    /// Sentinels that must name the same master; 0 means a majority of `addresses`.
    pub quorum: usize,
    pub auth: Option<Auth>,
    /// Per request (connect, AUTH, query), for the whole reply: a Sentinel that trickles its
    /// answer is unreachable, not slow.
    pub timeout: Duration,
    /// Servers learnt from the Sentinels that are checked at most.
    pub max_servers: usize,
    /// Between two queries of one Sentinel.
    pub interval: Duration,
    /// The forwarder's own listeners: never checked or routed to, whatever the Sentinels say
    /// (a wildcard listener also covers loopback addresses on its port).
    pub own: Vec<SocketAddr>,
}

impl SentinelConfig {
    fn quorum(&self) -> usize {
        match self.quorum {
            0 => self.addresses.len() / 2 + 1,
            q => q,
        }
    }

    /// Whether `addr` is one of the forwarder's own listeners.
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip() || (l.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }
}

/// What the Sentinels agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentinelView {
    /// The last master a quorum agreed on (kept while degraded).
    pub master: Option<SocketAddr>,
    /// Sentinels that answered their last query.
    pub reachable: usize,
    pub configured: usize,
    /// Fewer than a quorum reachable, or no quorum agrees: `master` is the last agreed one.
    pub degraded: bool,
}

/// One Sentinel's last word.
#[derive(Debug, Clone, Default)]
struct Answer {
    reachable: bool,
    master: Option<SocketAddr>,
    /// `+switch-master` pushes received from this Sentinel. A query answer is applied only if
    /// none arrived while it was in flight: the push is newer, and a stale answer naming the old
    /// master must not outvote it.
    pushes: u64,
    /// The master and replicas this Sentinel named in its last query (at most `MAX_KNOWN`).
    known: Vec<SocketAddr>,
}

/// Addresses kept from one Sentinel's `SENTINEL replicas` answer: a liar's flood stops here.
const MAX_KNOWN: usize = 1024;

/// Where an answer comes from.
enum Source {
    /// A query sent when the slot had seen this many pushes.
    Query {
        pushes: u64,
    },
    Push,
    Failure,
}

struct Shared {
    cfg: SentinelConfig,
    service: String,
    answers: Mutex<Vec<Answer>>,
    tx: watch::Sender<SentinelView>,
    /// The view's log lines ("agree on a new master", "degraded", "restored"): a flapping
    /// Sentinel must not fill the disk.
    view_log: RateLimit,
    /// The master and replica addresses that a quorum of reachable Sentinels report now, in
    /// order of first report. What one Sentinel alone says is never here.
    discovered: watch::Sender<Vec<SocketAddr>>,
    /// Log sites a Sentinel can flood, one per Sentinel each.
    logs: Vec<SentinelLogs>,
}

#[derive(Default)]
struct SentinelLogs {
    failed: RateLimit,
    push: RateLimit,
    event: RateLimit,
    unknown_name: RateLimit,
}

/// Most `+switch-master` pushes for our master one Sentinel may send in `PUSH_WINDOW`; more is a
/// flood (a real failover sends one), and the subscription is dropped and retried with backoff.
const PUSH_BURST: u32 = 5;
/// Most pub/sub messages of any kind (other masters' included) one subscription may deliver in
/// `PUSH_WINDOW`: enough for a Sentinel of a hundred masters in a bad minute, not for a flood.
const MESSAGE_BURST: u32 = 1000;
const PUSH_WINDOW: Duration = Duration::from_secs(10);
/// A subscription that lived this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Records what Sentinel `i` reported (its master and replicas) and republishes the
    /// addresses a quorum of reachable Sentinels report.
    fn discover(&self, i: usize, mut addrs: Vec<SocketAddr>) {
        addrs.truncate(MAX_KNOWN);
        let confirmed = {
            let mut answers = lock(&self.answers);
            let Some(slot) = answers.get_mut(i) else {
                return;
            };
            slot.known = addrs;
            confirmed(&answers, self.cfg.quorum())
        };
        self.discovered.send_if_modified(|known| {
            if *known == confirmed {
                return false;
            }
            *known = confirmed;
            true
        });
    }

    /// Pushes seen so far from Sentinel `i`.
    fn pushes(&self, i: usize) -> u64 {
        lock(&self.answers).get(i).map_or(0, |a| a.pushes)
    }

    fn set(&self, i: usize, reachable: bool, master: Option<SocketAddr>, source: Source) {
        let view = {
            let mut answers = lock(&self.answers);
            let Some(slot) = answers.get_mut(i) else {
                return;
            };
            match source {
                Source::Query { pushes } if pushes != slot.pushes => return, // stale
                Source::Push => slot.pushes += 1,
                _ => {}
            }
            slot.reachable = reachable;
            slot.master = master;
            if !reachable {
                slot.known.clear();
            }
            agree(&answers, self.cfg.quorum(), *self.tx.borrow())
        };
        self.tx.send_if_modified(|v| {
            if *v == view {
                return false;
            }
            let (old, service) = (*v, &self.service);
            if old.master != view.master || old.degraded != view.degraded {
                self.view_log.log(
                    |suppressed| match (old.master != view.master, view.degraded) {
                        (true, _) => {
                            tracing::warn!(%service, old = ?old.master, new = ?view.master,
                        reachable = view.reachable, suppressed, "Sentinels agree on a new master")
                        }
                        (false, true) => tracing::error!(%service, reachable = view.reachable,
                        configured = view.configured, master = ?view.master, suppressed,
                        "Sentinel view degraded: no quorum; keeping the last agreed master"),
                        (false, false) => tracing::info!(%service, reachable = view.reachable,
                        suppressed, "Sentinel quorum restored"),
                    },
                );
            }
            *v = view;
            true
        });
    }
}

/// The addresses that at least `quorum` reachable Sentinels report, in the order they are first
/// reported.
fn confirmed(answers: &[Answer], quorum: usize) -> Vec<SocketAddr> {
    let mut votes: std::collections::HashMap<SocketAddr, usize> = Default::default();
    let mut order = Vec::new();
    for a in answers.iter().filter(|a| a.reachable) {
        let mut seen = std::collections::HashSet::new();
        for addr in a.known.iter().filter(|x| seen.insert(**x)) {
            let n = votes.entry(*addr).or_insert(0);
            if *n == 0 {
                order.push(*addr);
            }
            *n += 1;
        }
    }
    order.retain(|a| votes[a] >= quorum);
    order
}

/// The view from the Sentinels' answers: the address a quorum names, else the previous master,
/// degraded.
fn agree(answers: &[Answer], quorum: usize, prev: SentinelView) -> SentinelView {
    let reachable = answers.iter().filter(|a| a.reachable).count();
    let mut best: Option<(SocketAddr, usize)> = None;
    for a in answers.iter().filter(|a| a.reachable) {
        if let Some(m) = a.master {
            let n = answers
                .iter()
                .filter(|b| b.reachable && b.master == Some(m))
                .count();
            if best.is_none_or(|(_, k)| n > k) {
                best = Some((m, n));
            }
        }
    }
    match best {
        Some((m, n)) if n >= quorum => SentinelView {
            master: Some(m),
            reachable,
            configured: answers.len(),
            degraded: false,
        },
        _ => SentinelView {
            master: prev.master,
            reachable,
            configured: answers.len(),
            degraded: true,
        },
    }
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
        let (tx, _) = watch::channel(SentinelView {
            master: None,
            reachable: 0,
            configured: n,
            degraded: true,
        });
        let shared = Arc::new(Shared {
            cfg,
            service,
            answers: Mutex::new(vec![Answer::default(); n]),
            tx,
            view_log: RateLimit::default(),
            discovered: watch::channel(Vec::new()).0,
            logs: (0..n).map(|_| SentinelLogs::default()).collect(),
        });
        let mut tasks = Vec::with_capacity(2 * n);
        for i in 0..n {
            tasks.push(tokio::spawn(query_loop(Arc::clone(&shared), i)));
            tasks.push(tokio::spawn(subscribe_loop(Arc::clone(&shared), i)));
        }
        Sentinels { shared, tasks }
    }

    pub fn subscribe(&self) -> watch::Receiver<SentinelView> {
        self.shared.tx.subscribe()
    }

    pub fn view(&self) -> SentinelView {
        *self.shared.tx.borrow()
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
            shared.set(i, false, None, Source::Failure);
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Queries one Sentinel every `interval` until an error; every whole answer resets the reconnect
/// backoff.
async fn query_session(shared: &Shared, i: usize, attempt: &mut u32) -> Result<(), String> {
    let cfg = &shared.cfg;
    let mut conn = Conn::open(cfg.addresses[i], cfg.timeout, cfg.auth.as_ref()).await?;
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

async fn subscription(shared: &Shared, i: usize) -> Result<(), String> {
    let cfg = &shared.cfg;
    let sentinel = cfg.addresses[i];
    let mut conn = Conn::open(sentinel, cfg.timeout, cfg.auth.as_ref()).await?;
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
            return Err(format!(
                "more than {MESSAGE_BURST} messages in {PUSH_WINDOW:?}: a flood"
            ));
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
                return Err(format!(
                    "more than {PUSH_BURST} +switch-master in {PUSH_WINDOW:?}: a flood, not a failover"
                ));
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

/// `SENTINEL get-master-addr-by-name` reply: `[ip, port]`, or a null array for an unknown name.
pub fn parse_master_addr(reply: &Reply) -> Result<Option<SocketAddr>, String> {
    match reply {
        Reply::Array(None) => Ok(None),
        Reply::Array(Some(items)) => match items.as_slice() {
            [Reply::Bulk(Some(ip)), Reply::Bulk(Some(port))] => {
                let ip = std::str::from_utf8(ip).map_err(|_| "IP is not UTF-8".to_string())?;
                let port =
                    std::str::from_utf8(port).map_err(|_| "port is not UTF-8".to_string())?;
                addr(ip, port).map(Some)
            }
            _ => Err(format!(
                "expected [ip, port], got an array of {} elements",
                items.len()
            )),
        },
        Reply::Error(e) => Err(format!("Sentinel error: {e}")),
        other => Err(format!("expected an array, got {}", kind(other))),
    }
}

fn addr(ip: &str, port: &str) -> Result<SocketAddr, String> {
    let ip: IpAddr = ip.parse().map_err(|_| {
        format!("{ip:?} is not an IP address (hostnames from announce-hostnames are not supported)")
    })?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|_| port.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{ip} is not the address of one server"));
    }
    Ok(SocketAddr::new(ip.to_canonical(), port))
}

/// `SENTINEL replicas` reply: an array of flat field/value arrays; the `ip` and `port` fields of
/// each.
pub fn parse_replicas(reply: &Reply) -> Result<Vec<SocketAddr>, String> {
    let items = match reply {
        Reply::Array(Some(items)) => items,
        Reply::Array(None) => return Ok(Vec::new()),
        Reply::Error(e) => return Err(format!("Sentinel error: {e}")),
        other => return Err(format!("expected an array, got {}", kind(other))),
    };
    items
        .iter()
        .map(|r| {
            let Reply::Array(Some(fields)) = r else {
                return Err(format!("expected a replica's fields, got {}", kind(r)));
            };
            let field = |name: &str| {
                fields.chunks(2).find_map(|kv| match kv {
                    [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == name.as_bytes() => {
                        std::str::from_utf8(v).ok()
                    }
                    _ => None,
                })
            };
            match (field("ip"), field("port")) {
                (Some(ip), Some(port)) => addr(ip, port),
                _ => Err("a replica without ip or port".to_string()),
            }
        })
        .collect()
}

/// `+switch-master` payload: `<name> <old ip> <old port> <new ip> <new port>`.
pub fn parse_switch_master(payload: &str, name: &str) -> Result<SocketAddr, String> {
    let parts: Vec<&str> = payload.split(' ').collect();
    match parts.as_slice() {
        [n, _, _, ip, port] if *n == name => addr(ip, port),
        [n, ..] if *n != name => Err(format!("+switch-master for {n:?}, not {name:?}")),
        _ => Err(format!("malformed +switch-master payload {payload:?}")),
    }
}

/// A pub/sub push: `Some((channel, payload))` for a `message`, `None` for (un)subscribe
/// confirmations.
pub fn parse_message(reply: &Reply) -> Result<Option<(String, String)>, String> {
    let Reply::Array(Some(items)) = reply else {
        return Err(format!("expected a pub/sub array, got {}", kind(reply)));
    };
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        other => Err(format!("expected a bulk string, got {}", kind(other))),
    };
    match items.as_slice() {
        [Reply::Bulk(Some(k)), channel, payload] if k.as_slice() == b"message" => {
            Ok(Some((text(channel)?, text(payload)?)))
        }
        [Reply::Bulk(Some(k)), _, Reply::Integer(_)]
            if k.as_slice() == b"subscribe" || k.as_slice() == b"unsubscribe" =>
        {
            Ok(None)
        }
        _ => Err(format!(
            "unexpected pub/sub push of {} elements",
            items.len()
        )),
    }
}

fn kind(r: &Reply) -> &'static str {
    match r {
        Reply::Simple(_) => "a simple string",
        Reply::Error(_) => "an error",
        Reply::Integer(_) => "an integer",
        Reply::Bulk(_) => "a bulk string",
        Reply::Array(_) => "an array",
    }
}

/// A RESP connection to one Sentinel.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Where the reply in `buf` ends, found without re-parsing it at every read.
    framer: resp::Framer,
    timeout: Duration,
}

/// Replies larger than this from a Sentinel are hostile.
const MAX_REPLY: usize = 1 << 20;

impl Conn {
    async fn open(
        addr: SocketAddr,
        timeout: Duration,
        auth: Option<&Auth>,
    ) -> Result<Conn, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect timed out after {timeout:?}"))?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
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
                Reply::Error(e) => return Err(format!("AUTH refused: {e}")),
                other => return Err(format!("AUTH: unexpected {}", kind(&other))),
            }
        }
        Ok(c)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
        let bytes = resp::encode_command(args);
        tokio::time::timeout(self.timeout, self.stream.write_all(&bytes))
            .await
            .map_err(|_| "write timed out".to_string())?
            .map_err(|e| format!("write: {e}"))
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        self.send(args).await?;
        self.read(Some(self.timeout)).await
    }

    /// Reads one whole reply. With `timeout`, all of it must arrive within that time; without,
    /// the wait for its first byte is unbounded (a subscription is silent until something
    /// happens), but the rest must follow within `self.timeout`: a trickling Sentinel is cut.
    async fn read(&mut self, timeout: Option<Duration>) -> Result<Reply, String> {
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
                    Err(e) => return Err(format!("malformed reply: {e}")),
                }
            }
            if self.buf.len() > MAX_REPLY {
                return Err(format!("reply over {MAX_REPLY} bytes"));
            }
            if deadline.is_none() && !self.buf.is_empty() {
                deadline = Some((tokio::time::Instant::now() + self.timeout, self.timeout));
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = self.stream.read(&mut chunk);
            let n = match deadline {
                Some((at, t)) => tokio::time::timeout_at(at, read)
                    .await
                    .map_err(|_| format!("no whole reply within {t:?}"))?,
                None => read.await,
            }
            .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn master_addr_replies() {
        let ok = Reply::Array(Some(vec![bulk("127.0.0.1"), bulk("6380")]));
        assert_eq!(
            parse_master_addr(&ok),
            Ok(Some("127.0.0.1:6380".parse().unwrap()))
        );
        let v6 = Reply::Array(Some(vec![bulk("::1"), bulk("6380")]));
        assert_eq!(
            parse_master_addr(&v6),
            Ok(Some("[::1]:6380".parse().unwrap()))
        );
        assert_eq!(parse_master_addr(&Reply::Array(None)), Ok(None));
        for bad in [
            Reply::Array(Some(vec![bulk("127.0.0.1")])),
            Reply::Array(Some(vec![bulk("redis-1.example"), bulk("6380")])),
            Reply::Array(Some(vec![bulk("127.0.0.1"), bulk("70000")])),
            Reply::Array(Some(vec![bulk("127.0.0.1"), bulk("0")])),
            Reply::Array(Some(vec![bulk("127.0.0.1"), Reply::Integer(6380)])),
            Reply::Array(Some(vec![Reply::Bulk(Some(vec![0xff])), bulk("1")])),
            Reply::Error("ERR unknown command".into()),
            Reply::Simple("OK".into()),
            Reply::Bulk(None),
        ] {
            assert!(parse_master_addr(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replicas_replies() {
        let replica = |ip: &str, port: &str| {
            Reply::Array(Some(vec![
                bulk("name"),
                bulk("x"),
                bulk("ip"),
                bulk(ip),
                bulk("port"),
                bulk(port),
                bulk("flags"),
                bulk("slave"),
            ]))
        };
        let ok = Reply::Array(Some(vec![
            replica("127.0.0.1", "6381"),
            replica("::1", "6382"),
        ]));
        assert_eq!(
            parse_replicas(&ok),
            Ok(vec![
                "127.0.0.1:6381".parse().unwrap(),
                "[::1]:6382".parse().unwrap()
            ])
        );
        assert_eq!(parse_replicas(&Reply::Array(Some(vec![]))), Ok(vec![]));
        assert!(parse_replicas(&Reply::Array(Some(vec![replica("host", "1")]))).is_err());
        assert!(parse_replicas(&Reply::Array(Some(vec![Reply::Integer(1)]))).is_err());
        assert!(
            parse_replicas(&Reply::Array(Some(vec![Reply::Array(Some(vec![bulk(
                "ip"
            )]))])))
            .is_err()
        );
        assert!(parse_replicas(&Reply::Integer(3)).is_err());
    }

    #[test]
    fn switch_master_payloads() {
        assert_eq!(
            parse_switch_master("mymaster 127.0.0.1 6380 127.0.0.1 6381", "mymaster"),
            Ok("127.0.0.1:6381".parse().unwrap())
        );
        assert!(parse_switch_master("other 127.0.0.1 6380 127.0.0.1 6381", "mymaster").is_err());
        assert!(parse_switch_master("mymaster 127.0.0.1 6380 127.0.0.1", "mymaster").is_err());
        assert!(parse_switch_master("mymaster 1 2 x 6381", "mymaster").is_err());
        assert!(parse_switch_master("", "mymaster").is_err());
    }

    #[test]
    fn pubsub_pushes() {
        let msg = Reply::Array(Some(vec![
            bulk("message"),
            bulk("+sdown"),
            bulk("master m 1 2"),
        ]));
        assert_eq!(
            parse_message(&msg),
            Ok(Some(("+sdown".into(), "master m 1 2".into())))
        );
        let sub = Reply::Array(Some(vec![
            bulk("subscribe"),
            bulk("+sdown"),
            Reply::Integer(1),
        ]));
        assert_eq!(parse_message(&sub), Ok(None));
        assert!(parse_message(&Reply::Integer(1)).is_err());
        assert!(parse_message(&Reply::Array(Some(vec![bulk("message")]))).is_err());
    }

    fn ans(reachable: bool, m: Option<&str>) -> Answer {
        Answer {
            reachable,
            master: m.map(|s| s.parse().unwrap()),
            pushes: 0,
            known: Vec::new(),
        }
    }

    #[test]
    fn only_what_a_quorum_reports_is_discovered() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let liar: Vec<SocketAddr> = (10..5000u16)
            .map(|p| SocketAddr::from(([127, 0, 0, 9], p)))
            .collect();
        let with = |reachable, known: Vec<SocketAddr>| Answer {
            known,
            ..ans(reachable, Some("127.0.0.1:1"))
        };
        // Two honest Sentinels and one that floods: only the honest pair's addresses.
        let mut flood = liar.clone();
        flood.push(a);
        let answers = [
            with(true, vec![a, b]),
            with(true, vec![a, b]),
            with(true, flood),
        ];
        assert_eq!(confirmed(&answers, 2), vec![a, b]);
        // One Sentinel listing an address twice is still one vote.
        let answers = [
            with(true, vec![a, b, b]),
            with(true, vec![a]),
            with(false, vec![b]),
        ];
        assert_eq!(confirmed(&answers, 2), vec![a]);
        // An unreachable Sentinel's old list does not count.
        let answers = [
            with(true, vec![a, b]),
            with(false, vec![a, b]),
            with(true, vec![]),
        ];
        assert_eq!(confirmed(&answers, 2), Vec::<SocketAddr>::new());
    }

    #[test]
    fn quorum_agreement_and_degradation() {
        let none = SentinelView {
            master: None,
            reachable: 0,
            configured: 3,
            degraded: true,
        };
        let a = "127.0.0.1:1";
        let b = "127.0.0.1:2";
        // Two of three agree: that is the master.
        let v = agree(
            &[ans(true, Some(a)), ans(true, Some(a)), ans(true, Some(b))],
            2,
            none,
        );
        assert_eq!(v.master, Some(a.parse().unwrap()));
        assert!(!v.degraded);
        // One Sentinel alone cannot move the master.
        let v2 = agree(
            &[ans(true, Some(b)), ans(false, None), ans(false, None)],
            2,
            v,
        );
        assert_eq!(
            v2.master,
            Some(a.parse().unwrap()),
            "last agreed master kept"
        );
        assert!(v2.degraded);
        assert_eq!(v2.reachable, 1);
        // Split answers: no quorum, keep the last.
        let v3 = agree(
            &[ans(true, Some(a)), ans(true, Some(b)), ans(false, None)],
            2,
            v,
        );
        assert_eq!(v3.master, v.master);
        assert!(v3.degraded);
        // Nothing known yet: no master.
        let v4 = agree(
            &[ans(false, None), ans(false, None), ans(false, None)],
            2,
            none,
        );
        assert_eq!(v4.master, None);
    }

    #[test]
    fn a_stale_query_answer_cannot_outvote_a_push() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let (tx, rx) = watch::channel(SentinelView {
            master: None,
            reachable: 0,
            configured: 3,
            degraded: true,
        });
        let shared = Shared {
            cfg: SentinelConfig {
                addresses: vec![a; 3],
                master_name: "m".into(),
                quorum: 0,
                auth: None,
                timeout: Duration::from_secs(1),
                interval: Duration::from_secs(1),
                max_servers: 8,
                own: Vec::new(),
            },
            service: "t".into(),
            answers: Mutex::new(vec![Answer::default(); 3]),
            tx,
            view_log: RateLimit::default(),
            discovered: watch::channel(Vec::new()).0,
            logs: (0..3).map(|_| SentinelLogs::default()).collect(),
        };
        for i in 0..3 {
            shared.set(i, true, Some(a), Source::Query { pushes: 0 });
        }
        assert_eq!(rx.borrow().master, Some(a));
        // Queries are in flight to Sentinels 0 and 1 when they push +switch-master...
        let sent = [shared.pushes(0), shared.pushes(1)];
        shared.set(0, true, Some(b), Source::Push);
        shared.set(1, true, Some(b), Source::Push);
        assert_eq!(rx.borrow().master, Some(b));
        // ...and their answers, computed before the switch, arrive after it: ignored.
        shared.set(0, true, Some(a), Source::Query { pushes: sent[0] });
        shared.set(1, true, Some(a), Source::Query { pushes: sent[1] });
        assert_eq!(
            rx.borrow().master,
            Some(b),
            "a stale answer moved the master back"
        );
        // A fresh query still counts.
        shared.set(
            0,
            true,
            Some(b),
            Source::Query {
                pushes: shared.pushes(0),
            },
        );
        assert_eq!(rx.borrow().master, Some(b));
    }

    /// Random bytes through the RESP parser and the Sentinel parsers: errors, never panics.
    /// (cargo-fuzz needs nightly, which this project does not use; this runs on stable.)
    #[test]
    fn hostile_replies_never_panic() {
        let seeds: [&[u8]; 6] = [
            b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n",
            b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$38\r\nmymaster 127.0.0.1 6380 127.0.0.1 6381\r\n",
            b"*-1\r\n",
            b"-ERR no\r\n",
            b"*1\r\n*1\r\n*1\r\n:1\r\n",
            b"$-1\r\n",
        ];
        let mut rng_state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state
        };
        for _ in 0..20_000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize];
            let mut input = seed.to_vec();
            for _ in 0..(next() % 4) {
                let pos = (next() % input.len() as u64) as usize;
                match next() % 3 {
                    0 => input[pos] = next() as u8,
                    1 => input.truncate(pos),
                    _ => input.insert(pos, next() as u8),
                }
                if input.is_empty() {
                    break;
                }
            }
            if let Ok(Some((reply, _))) = resp::parse(&input) {
                let _ = parse_master_addr(&reply);
                let _ = parse_replicas(&reply);
                if let Ok(Some((_, payload))) = parse_message(&reply) {
                    let _ = parse_switch_master(&payload, "mymaster");
                }
            }
        }
    }
}
