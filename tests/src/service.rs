//! Service-config templates: `[[service]]` tables for the forwarder's configuration file.

use std::net::SocketAddr;

/// A `[[service]]` named `name` on `listen` for a plain TCP `backend` (tcp-check `connect`
/// every 200 ms, rise 1), with `extra` lines in the service table.
pub fn plain_service(name: &str, listen: &str, backend: SocketAddr, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nservers = [\"{backend}\"]\n{extra}\n\n\
         [service.check]\nkind = \"tcp-check\"\nsteps = [\"connect\"]\ninterval = \"200ms\"\nrise = 1\n\n"
    )
}

/// A Redis service named "mymaster" that follows `sentinels` (checks every 200 ms, rise and fall
/// 2), listing `servers` (none: discovered from the Sentinels), holding clients up to `queue`.
pub fn sentinel_service(servers: &[SocketAddr], sentinels: &[SocketAddr], queue: &str) -> String {
    let quoted = |a: &[SocketAddr]| {
        a.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let servers = match servers {
        [] => String::new(),
        s => format!("servers = [{}]", quoted(s)),
    };
    format!(
        r#"[[service]]
name = "mymaster"
listen = "{{LISTEN}}"
{servers}
timeout = {{ connect = "1s", client = "30s", server = "30s", queue = "{queue}" }}

[service.check]
kind = "redis-master"
interval = "200ms"
rise = 2
fall = 2
timeout = "500ms"

[service.sentinel]
addresses = [{}]
master_name = "mymaster"
"#,
        quoted(sentinels)
    )
}
