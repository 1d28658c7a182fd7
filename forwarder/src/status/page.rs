//! The status page (`GET /` on the admin listener): the [`Status`] model as a small HTML page
//! in the spirit of HAProxy's stats page. With `may_act` (the request carried the full token, or
//! none is configured) each server gets Ready / Drain / Maint buttons and each service with a
//! Sentinel a Switchover button; they POST to the admin listener and reload the page.

use std::fmt::Write as _;

use super::{human_ms, ServerStatus, Status};

/// The buttons' script: POST, then show the answer if it is not a 2xx, and reload.
const SCRIPT: &str = "<script>async function act(path, body) {\
  try { const r = await fetch(path, {method: 'POST', body: body, headers: {'X-Forwarder-Action': '1'}});\
    if (!r.ok) alert(r.status + ' ' + await r.text()); } catch (e) { alert(e); }\
  location.reload(); }</script>";

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The class of a server's row: `up` (green), `standby` (neutral), `warn` (rising or falling) or
/// `down` (red).
fn class(s: &ServerStatus) -> &'static str {
    match s.display_state() {
        "up" => "up",
        "standby" => "standby",
        "down" => "down",
        _ => "warn",
    }
}

/// The Ready / Drain / Maint buttons of one server, the one in force disabled.
fn server_buttons(h: &mut String, service: &str, s: &ServerStatus) {
    h.push_str("<td>");
    for state in ["ready", "drain", "maint"] {
        let _ = write!(
            h,
            "<button onclick=\"act('/servers/'+encodeURIComponent('{svc}')+'/'+\
             encodeURIComponent('{addr}')+'/state','{state}')\"{dis}>{state}</button>",
            svc = esc(service),
            addr = esc(&s.addr),
            dis = if s.admin_state == state {
                " disabled"
            } else {
                ""
            },
        );
    }
    h.push_str("</td>");
}

/// A small status page in the spirit of HAProxy's stats page; refreshes itself every 2 s.
/// `may_act`: show the buttons that change server states and switch masters over.
pub fn render(st: &Status, may_act: bool) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>forwarder status</title><style>body{font-family:sans-serif;margin:1em}\
         table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #999;padding:2px 8px}\
         th{background:#eee}.up{background:#c8f0c8}.down{background:#f4c4c4}.warn{background:#f8e8a0}\
         .standby{background:#e4e8f0}</style></head><body><h1>forwarder</h1>",
    );
    if may_act {
        h.push_str(SCRIPT);
    }
    let _ = write!(
        h,
        "<p>version <b id=\"version\">{}</b>, up {}</p>",
        esc(&st.build.version),
        human_ms(st.uptime_ms)
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
            listen = esc(&match svc.tls.as_str() {
                "" | "plain" => svc.listen.clone(),
                tls => format!("{} (tls {tls})", svc.listen),
            }),
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
        if may_act && svc.sentinel.is_some() {
            let _ = write!(
                h,
                "<p><button onclick=\"act('/services/'+encodeURIComponent('{0}')+'/switchover','')\">\
                 switchover</button> (Sentinel promotes a replica)</p>",
                esc(&svc.name)
            );
        }
        h.push_str(
            "<table><tr><th>server</th><th>check</th><th>for</th><th>role</th><th>admin</th>\
             <th>last check</th><th>ok</th><th>failed</th><th>took</th>",
        );
        h.push_str(if may_act {
            "<th>set</th></tr>"
        } else {
            "</tr>"
        });
        for s in &svc.servers {
            let _ = write!(
                h,
                "<tr class=\"server {cls}\"><td>{addr}</td><td>{state}</td><td>{since}</td>\
                 <td>{role}</td><td>{admin}</td><td>{last}</td><td>{ok}</td><td>{failed}</td>\
                 <td>{took}</td>",
                cls = class(s),
                addr = esc(&s.addr),
                state = esc(s.display_state()),
                since = human_ms(s.in_state_ms),
                role = esc(s.role.as_deref().unwrap_or("-")),
                admin = esc(&s.admin_state),
                last = esc(s.display_check()),
                ok = s.checks_ok,
                failed = s.checks_failed,
                took = s.last_check_ms.map_or("-".into(), |m| format!("{m} ms")),
            );
            if may_act {
                server_buttons(&mut h, &svc.name, s);
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}
