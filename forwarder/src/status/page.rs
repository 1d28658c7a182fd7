//! The status page (`GET /` on the admin listener): the [`Status`] model as a small HTML page
//! in the spirit of HAProxy's stats page.

use std::fmt::Write as _;

use super::Status;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A small status page in the spirit of HAProxy's stats page; refreshes itself every 2 s.
pub fn render(st: &Status) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>forwarder status</title><style>body{font-family:sans-serif;margin:1em}\
         table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #999;padding:2px 8px}\
         th{background:#eee}.up{background:#c8f0c8}.down{background:#f4c4c4}.warn{background:#f8e8a0}\
         </style></head><body><h1>forwarder</h1>",
    );
    let _ = write!(
        h,
        "<p>data path: <b id=\"datapath\">{}</b>",
        esc(&st.datapath)
    );
    if let Some(f) = &st.datapath_fallback {
        let _ = write!(h, " (fallback: {})", esc(f));
    }
    h.push_str("</p>");
    for svc in &st.services {
        let _ = write!(
            h,
            "<h2 class=\"service\">{name}</h2><table><tr><th>listen</th><th>master</th>\
             <th>generation</th><th>sentinel</th><th>active</th><th>accepted</th><th>rejected</th>\
             <th>bytes in</th><th>bytes out</th><th>master changes</th><th>conflicts</th></tr>\
             <tr><td>{listen}</td><td class=\"{mc}\" id=\"master-{name}\">{master}</td><td>{gen}</td>\
             <td class=\"{sc}\">{sentinel}</td><td>{active}</td><td>{accepted}</td><td>{rejected}</td>\
             <td>{bin}</td><td>{bout}</td><td>{changes}</td><td>{conflicts}</td></tr></table>",
            name = esc(&svc.name),
            listen = esc(&svc.listen),
            mc = if svc.master.is_some() { "up" } else { "down" },
            master = esc(svc.master.as_deref().unwrap_or("none")),
            gen = svc.generation,
            sc = match &svc.sentinel {
                Some(s) if s.degraded => "warn",
                _ => "",
            },
            sentinel = match &svc.sentinel {
                Some(s) => format!(
                    "{}/{} reachable{}",
                    s.reachable,
                    s.configured,
                    if s.degraded { ", degraded" } else { "" }
                ),
                None => "-".into(),
            },
            active = svc.stats.active,
            accepted = svc.stats.accepted,
            rejected = svc.stats.rejected.values().sum::<u64>(),
            bin = svc.stats.bytes_client_to_server,
            bout = svc.stats.bytes_server_to_client,
            changes = svc.master_changes,
            conflicts = svc.master_conflicts,
        );
        if let Some(note) = &svc.note {
            let _ = write!(h, "<p class=\"warn\">{}</p>", esc(note));
        }
        h.push_str(
            "<table><tr><th>server</th><th>check</th><th>role</th><th>last check</th>\
             <th>ok</th><th>failed</th><th>took</th></tr>",
        );
        for s in &svc.servers {
            let _ = write!(
                h,
                "<tr class=\"server {cls}\"><td>{addr}</td><td>{state}</td><td>{role}</td>\
                 <td>{last}</td><td>{ok}</td><td>{failed}</td><td>{took}</td></tr>",
                cls = if s.up { "up" } else { "down" },
                addr = esc(&s.addr),
                state = esc(&s.state),
                role = esc(s.role.as_deref().unwrap_or("-")),
                last = match (s.last_ok, &s.last_reason) {
                    (Some(true), _) => "ok".to_string(),
                    (Some(false), Some(r)) => esc(r),
                    (Some(false), None) => "failed".into(),
                    (None, _) => "not checked yet".into(),
                },
                ok = s.checks_ok,
                failed = s.checks_failed,
                took = s.last_check_ms.map_or("-".into(), |m| format!("{m} ms")),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}
