//! Service-config templates: [`Service`], one builder for the `[[service]]` tables of the
//! forwarder's configuration file, and the two shapes most tests use.

use std::fmt;
use std::net::SocketAddr;

/// One `[[service]]` table (with its `[service.check]` and optional `[service.sentinel]`),
/// rendered with `to_string()`. It listens on `{LISTEN}` (a free port, see
/// [`crate::Forwarder::start`]) unless `listen` is set. Values are TOML as written; setting a key
/// again replaces it.
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    table: Vec<(String, String)>,
    lines: String,
    check: Vec<(String, String)>,
    sentinels: Vec<SocketAddr>,
    sentinel: Vec<(String, String)>,
}

/// `["a", "b"]`.
fn quoted(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", list.join(", "))
}

fn set(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(pair) => pair.1 = value.to_string(),
        None => pairs.push((key.to_string(), value.to_string())),
    }
}

impl Service {
    fn new(name: &str, servers: &[SocketAddr], check: &[(&str, &str)]) -> Service {
        let mut s = Service {
            name: name.to_string(),
            table: Vec::new(),
            lines: String::new(),
            check: Vec::new(),
            sentinels: Vec::new(),
            sentinel: Vec::new(),
        };
        set(&mut s.table, "name", &format!("\"{name}\""));
        set(&mut s.table, "listen", "\"{LISTEN}\"");
        if !servers.is_empty() {
            set(&mut s.table, "servers", &quoted(servers));
        }
        for (k, v) in check {
            set(&mut s.check, k, v);
        }
        s
    }

    /// A plain TCP service in front of `backend`: tcp-check `connect` every 200 ms, rise 1.
    pub fn tcp(name: &str, backend: SocketAddr) -> Service {
        Service::new(
            name,
            &[backend],
            &[
                ("kind", "\"tcp-check\""),
                ("steps", "[\"connect\"]"),
                ("interval", "\"200ms\""),
                ("rise", "1"),
            ],
        )
    }

    /// A Redis service over `servers` (none: only those discovered from Sentinels): the
    /// `redis-master` check every 200 ms, rise 1.
    pub fn redis(name: &str, servers: &[SocketAddr]) -> Service {
        Service::new(
            name,
            servers,
            &[
                ("kind", "\"redis-master\""),
                ("interval", "\"200ms\""),
                ("rise", "1"),
            ],
        )
    }

    /// Sets `key = value` in the service table, e.g. `("listen", "\"127.0.0.1:1\"")` or
    /// `("timeout", "{ queue = \"1s\" }")`.
    pub fn set(mut self, key: &str, value: &str) -> Service {
        set(&mut self.table, key, value);
        self
    }

    /// Appends `lines` (TOML, e.g. `maxconn = 2`) to the service table as they are.
    pub fn lines(mut self, lines: &str) -> Service {
        self.lines.push_str(lines);
        self.lines.push('\n');
        self
    }

    /// Sets `key = value` in `[service.check]`, e.g. `("fall", "1")`.
    pub fn check(mut self, key: &str, value: &str) -> Service {
        set(&mut self.check, key, value);
        self
    }

    /// Follows these Sentinels, for the master named like the service.
    pub fn sentinels(mut self, addrs: &[SocketAddr]) -> Service {
        self.sentinels = addrs.to_vec();
        self
    }

    /// Sets `key = value` in `[service.sentinel]` (with [`Service::sentinels`]), e.g.
    /// `("tls", pki.server_table(false))`.
    pub fn sentinel(mut self, key: &str, value: &str) -> Service {
        set(&mut self.sentinel, key, value);
        self
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[[service]]")?;
        for (k, v) in &self.table {
            writeln!(f, "{k} = {v}")?;
        }
        writeln!(f, "{}\n[service.check]", self.lines)?;
        for (k, v) in &self.check {
            writeln!(f, "{k} = {v}")?;
        }
        if !self.sentinels.is_empty() {
            writeln!(
                f,
                "\n[service.sentinel]\naddresses = {}\nmaster_name = \"{}\"",
                quoted(&self.sentinels),
                self.name
            )?;
            for (k, v) in &self.sentinel {
                writeln!(f, "{k} = {v}")?;
            }
        }
        writeln!(f)
    }
}

/// A `[[service]]` named `name` on `listen` for a plain TCP `backend` (tcp-check `connect`
/// every 200 ms, rise 1), with `extra` lines in the service table.
pub fn plain_service(name: &str, listen: &str, backend: SocketAddr, extra: &str) -> String {
    Service::tcp(name, backend)
        .set("listen", &format!("\"{listen}\""))
        .lines(extra)
        .to_string()
}

/// A Redis service named "mymaster" that follows `sentinels` (checks every 200 ms, rise and fall
/// 2), listing `servers` (none: discovered from the Sentinels), holding clients up to `queue`.
pub fn sentinel_service(servers: &[SocketAddr], sentinels: &[SocketAddr], queue: &str) -> String {
    Service::redis("mymaster", servers)
        .set(
            "timeout",
            &format!(
                "{{ connect = \"1s\", client = \"30s\", server = \"30s\", queue = \"{queue}\" }}"
            ),
        )
        .check("rise", "2")
        .check("fall", "2")
        .check("timeout", "\"500ms\"")
        .sentinels(sentinels)
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::{sentinel_service, Service};

    #[test]
    fn a_key_set_again_is_replaced_not_repeated() {
        let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let text = Service::redis("r", &[a])
            .set("listen", "\"127.0.0.1:1\"")
            .check("rise", "3")
            .lines("maxconn = 2")
            .to_string();
        assert_eq!(
            text,
            "[[service]]\nname = \"r\"\nlisten = \"127.0.0.1:1\"\nservers = [\"127.0.0.1:7000\"]\n\
             maxconn = 2\n\n[service.check]\nkind = \"redis-master\"\ninterval = \"200ms\"\n\
             rise = 3\n\n"
        );
    }

    #[test]
    fn a_sentinel_service_without_servers_lists_only_the_sentinels() {
        let s: SocketAddr = "127.0.0.1:26379".parse().unwrap();
        let text = sentinel_service(&[], &[s], "1s");
        assert!(!text.contains("servers"), "{text}");
        assert!(
            text.ends_with(
                "[service.sentinel]\naddresses = [\"127.0.0.1:26379\"]\nmaster_name = \"mymaster\"\n\n"
            ),
            "{text}"
        );
    }
}
