//! Real `redis-server` and `redis-sentinel` processes on free loopback ports.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::tls::{ClientTls, Pair, Pki};
use crate::{dies_with_parent, free_port, require, wait_until, Conn, Proc, Reply};

/// A real redis-server on a free loopback port.
pub struct Redis {
    /// Its port on 127.0.0.1 (kept to restart it on the same one with [`Redis::start_on`]).
    pub port: u16,
    /// The loopback address it listens on (127.0.0.1 unless started with [`Redis::start_at`]).
    ip: Ipv4Addr,
    /// The shell command that started it (see [`Redis::command_line`]).
    command: String,
    /// How [`Redis::cmd`] speaks to it: TLS for a server started with [`Redis::start_tls`].
    tls: Option<ClientTls>,
    proc: Proc,
    _dir: tempfile::TempDir,
}

/// `arg` quoted for a POSIX shell when it needs it.
fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

impl Redis {
    /// Starts a server with no persistence on a free port; waits until it answers PING.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Like [`Redis::start`], with `extra` command-line arguments (e.g. `["--requirepass", "pw"]`:
    /// then it counts as started when PING says NOAUTH, and [`Redis::cmd`] cannot talk to it).
    pub fn start_with(extra: &[&str]) -> Redis {
        let bin = require("redis-server", "redis-server");
        for _ in 0..20 {
            let port = free_port();
            if let Some(r) = Redis::try_start(&bin, Ipv4Addr::LOCALHOST, port, extra, None) {
                return r;
            }
        }
        panic!("redis-server did not start after 20 attempts");
    }

    /// A server that speaks TLS only (`--port 0 --tls-port`), with `pki`'s server certificate,
    /// wanting client certificates signed by its CA (Redis's default); [`Redis::cmd`] and
    /// [`Redis::addr`] are its TLS port's. `extra` as in [`Redis::start_with`].
    pub fn start_tls(pki: &Pki, extra: &[&str]) -> Redis {
        Redis::start_tls_as(pki, &pki.server, extra)
    }

    /// [`Redis::start_tls`] presenting `cert` (e.g. [`Pki::expired`], [`Pki::foreign`]).
    pub fn start_tls_as(pki: &Pki, cert: &Pair, extra: &[&str]) -> Redis {
        let bin = require("redis-server", "redis-server");
        for _ in 0..20 {
            let port = free_port();
            let tls = Some((pki, cert));
            if let Some(r) = Redis::try_start(&bin, Ipv4Addr::LOCALHOST, port, extra, tls) {
                return r;
            }
        }
        panic!("redis-server --tls-port did not start after 20 attempts");
    }

    /// A TLS master and its replica (`--tls-replication yes`), replication established.
    pub fn pair_tls(pki: &Pki) -> (Redis, Redis) {
        let start = || Redis::start_tls(pki, &["--tls-replication", "yes"]);
        Redis::pair_of(start(), start())
    }

    /// A master and its replica, replication established.
    pub fn pair() -> (Redis, Redis) {
        Redis::pair_of(Redis::start(), Redis::start())
    }

    fn pair_of(master: Redis, replica: Redis) -> (Redis, Redis) {
        replica.replicaof(Some(&master));
        assert!(
            wait_until(Duration::from_secs(10), || replica
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up")),
            "replication did not come up (port {} -> {})",
            replica.port,
            master.port
        );
        (master, replica)
    }

    /// Starts a server on `port` (e.g. to restart one that was killed).
    pub fn start_on(port: u16, extra: &[&str]) -> Redis {
        Redis::start_at(Ipv4Addr::LOCALHOST, port, extra)
    }

    /// Starts a server on `ip:port`, `ip` any loopback address (e.g. two servers on one port
    /// at 127.0.0.2 and 127.0.0.3, for a name that moves from one to the other).
    pub fn start_at(ip: Ipv4Addr, port: u16, extra: &[&str]) -> Redis {
        let bin = require("redis-server", "redis-server");
        for _ in 0..50 {
            if let Some(r) = Redis::try_start(&bin, ip, port, extra, None) {
                return r;
            }
            // Pacing: the port of a killed server may still be in use for a moment; retry.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn try_start(
        bin: &PathBuf,
        ip: Ipv4Addr,
        port: u16,
        extra: &[&str],
        pki: Option<(&Pki, &Pair)>,
    ) -> Option<Redis> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_s = port.to_string();
        let ip_s = ip.to_string();
        let tls_args = pki.map(|(p, c)| p.redis_args(c)).unwrap_or_default();
        let mut args: Vec<&str> = match pki {
            Some(_) => vec!["--port", "0", "--tls-port", &port_s],
            None => vec!["--port", &port_s],
        };
        args.extend(tls_args.iter().map(String::as_str));
        args.extend([
            "--bind",
            &ip_s,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]);
        args.extend_from_slice(extra);
        let tls = pki.map(|(p, _)| p.client_tls());
        let child = dies_with_parent(&mut Command::new(bin))
            .args(&args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut proc = Proc { child: Some(child) };
        let addr = SocketAddr::from((ip, port));
        let up = wait_until(Duration::from_secs(5), || {
            if proc.wait_exit(Duration::ZERO).is_some() {
                return true;
            }
            // Up when it answers: PONG, or NOAUTH under `--requirepass`; over TLS, also a
            // certificate we refuse (a test's expired or foreign one): it did answer.
            match Conn::open_with(addr, tls.as_ref()).and_then(|mut c| c.cmd(&["PING"])) {
                Ok(Reply::Simple(s)) => s == "PONG",
                Ok(Reply::Error(e)) => e.starts_with("NOAUTH"),
                Ok(_) => false,
                Err(e) => crate::tls::refused_certificate(&e),
            }
        });
        if !up || proc.child.is_none() {
            proc.kill();
            return None;
        }
        let command = format!(
            "cd {} && {} {}",
            shell_quote(&dir.path().display().to_string()),
            shell_quote(&bin.display().to_string()),
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        Some(Redis {
            port,
            ip,
            command,
            tls,
            proc,
            _dir: dir,
        })
    }

    /// The shell command that starts this server again exactly as it was started (same port,
    /// arguments and directory), e.g. to bring a killed master back by hand.
    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// `127.0.0.1:port` (or the address given to [`Redis::start_at`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    /// Runs one command on a fresh direct connection.
    pub fn cmd(&self, args: &[&str]) -> Reply {
        Conn::open_with(self.addr(), self.tls.as_ref())
            .and_then(|mut c| c.cmd(args))
            .unwrap_or_else(|e| panic!("redis {}: {args:?}: {e}", self.port))
    }

    /// Asserts that every key in `acked` (writes a client saw acknowledged) exists here.
    pub fn assert_holds(&self, acked: &[String]) {
        let mut c = Conn::open_with(self.addr(), self.tls.as_ref())
            .unwrap_or_else(|e| panic!("redis {}: {e}", self.port));
        let lost: Vec<&String> = acked
            .iter()
            .filter(|k| c.cmd(&["EXISTS", k]).ok() != Some(Reply::Integer(1)))
            .collect();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes lost on {}, e.g. {:?}",
            lost.len(),
            acked.len(),
            self.port,
            &lost[..lost.len().min(5)]
        );
    }

    /// The value of `field` in `INFO section`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        match self.cmd(&["INFO", section]) {
            Reply::Bulk(Some(b)) => info_field(&String::from_utf8_lossy(&b), field),
            _ => None,
        }
    }

    /// Makes this server a replica of `master`, or a master again with `None` (`REPLICAOF NO
    /// ONE`); panics unless Redis says OK. Does not wait for the sync.
    pub fn replicaof(&self, master: Option<&Redis>) {
        let r = match master {
            Some(m) => self.cmd(&["REPLICAOF", &m.ip.to_string(), &m.port.to_string()]),
            None => self.cmd(&["REPLICAOF", "NO", "ONE"]),
        };
        assert_eq!(r, Reply::Simple("OK".into()), "REPLICAOF on {}", self.port);
    }

    /// The server's process, to signal or kill it.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// The value of `field` in INFO text.
pub fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::to_string)
    })
}

/// A real Redis Sentinel on a free loopback port, monitoring one master.
pub struct Sentinel {
    /// Its port on 127.0.0.1.
    pub port: u16,
    tls: Option<ClientTls>,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a Sentinel watching `master` under `name` with `quorum` and `down_after_ms`.
    pub fn start(name: &str, master: SocketAddr, quorum: u32, down_after_ms: u32) -> Sentinel {
        Sentinel::start_many(&[(name, master)], quorum, down_after_ms)
    }

    /// Starts a Sentinel watching several masters, each under its name.
    pub fn start_many(masters: &[(&str, SocketAddr)], quorum: u32, down_after_ms: u32) -> Sentinel {
        Sentinel::launch(masters, quorum, down_after_ms, None)
    }

    /// Like [`Sentinel::start`], speaking TLS only: to its clients and other Sentinels
    /// (`port 0`, `tls-port`, client certificates of `pki`'s CA required) and to the Redis
    /// servers (`tls-replication yes`), with `pki`'s server certificate.
    pub fn start_tls(
        pki: &Pki,
        name: &str,
        master: SocketAddr,
        quorum: u32,
        down_after_ms: u32,
    ) -> Sentinel {
        Sentinel::launch(&[(name, master)], quorum, down_after_ms, Some(pki))
    }

    fn launch(
        masters: &[(&str, SocketAddr)],
        quorum: u32,
        down_after_ms: u32,
        pki: Option<&Pki>,
    ) -> Sentinel {
        let bin = require("redis-sentinel", "redis-sentinel");
        let tls = pki.map(Pki::client_tls);
        for _ in 0..20 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let conf = dir.path().join("sentinel.conf");
            let listen = match pki {
                Some(p) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-replication yes\n",
                    p.server.cert.display(),
                    p.server.key.display(),
                    p.ca.display()
                ),
                None => format!("port {port}\n"),
            };
            let mut text = format!(
                "{listen}bind 127.0.0.1\ndaemonize no\ndir {dir}\n",
                dir = dir.path().display(),
            );
            for (name, master) in masters {
                text.push_str(&format!(
                    "sentinel monitor {name} {ip} {mport} {quorum}\n\
                     sentinel down-after-milliseconds {name} {down_after_ms}\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    ip = master.ip(),
                    mport = master.port(),
                ));
            }
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let child = dies_with_parent(&mut Command::new(&bin))
                .arg(&conf)
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            let mut proc = Proc { child: Some(child) };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let up = wait_until(Duration::from_secs(5), || {
                proc.wait_exit(Duration::ZERO).is_some()
                    || Conn::open_with(addr, tls.as_ref())
                        .and_then(|mut c| c.cmd(&["PING"]))
                        .is_ok_and(|r| r == Reply::Simple("PONG".into()))
            });
            if up && proc.child.is_some() {
                return Sentinel {
                    port,
                    tls,
                    _proc: proc,
                    _dir: dir,
                };
            }
        }
        panic!("redis-sentinel did not start after 20 attempts");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Runs one command on a fresh connection; `None` when the Sentinel does not answer.
    pub fn cmd(&self, args: &[&str]) -> Option<Reply> {
        Conn::open_with(self.addr(), self.tls.as_ref())
            .and_then(|mut c| c.cmd(args))
            .ok()
    }

    /// The master this Sentinel names for `name` (`SENTINEL get-master-addr-by-name`); `None`
    /// when it names none or does not answer.
    pub fn master_addr(&self, name: &str) -> Option<SocketAddr> {
        let Some(Reply::Array(Some(a))) = self.cmd(&["SENTINEL", "get-master-addr-by-name", name])
        else {
            return None;
        };
        match a.as_slice() {
            [Reply::Bulk(Some(ip)), Reply::Bulk(Some(port))] => format!(
                "{}:{}",
                String::from_utf8_lossy(ip),
                String::from_utf8_lossy(port)
            )
            .parse()
            .ok(),
            _ => None,
        }
    }

    /// Whether this Sentinel knows `name`'s replica and two other Sentinels, i.e. could take
    /// part in a failover of it.
    pub fn ready(&self, name: &str) -> bool {
        let Ok(mut c) = Conn::open_with(self.addr(), self.tls.as_ref()) else {
            return false;
        };
        let Ok(Reply::Array(Some(info))) = c.cmd(&["SENTINEL", "master", name]) else {
            return false;
        };
        let field = |key: &str| {
            info.chunks(2).find_map(|kv| match kv {
                [Reply::Bulk(Some(k)), Reply::Bulk(Some(v))] if k == key.as_bytes() => {
                    String::from_utf8(v.clone()).ok()
                }
                _ => None,
            })
        };
        field("num-slaves").as_deref() == Some("1")
            && field("num-other-sentinels").as_deref() == Some("2")
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn arguments_are_quoted_only_when_a_shell_needs_it() {
        assert_eq!(shell_quote("--port"), "--port");
        assert_eq!(shell_quote("/tmp/.tmpAb1/x"), "/tmp/.tmpAb1/x");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
