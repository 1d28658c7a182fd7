//! `forwarder status`: the admin listener's `/status`, as a terminal table.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Fetches `/status` from the admin listener at `admin`.
pub fn fetch(admin: SocketAddr, token: Option<&str>) -> Result<Value, String> {
    let body = request(admin, "GET", "/status", token)?;
    serde_json::from_str(&body).map_err(|e| format!("/status is not JSON: {e}"))
}

/// One HTTP/1.0 request to the admin listener: the body of a 200 answer, else an error with the
/// status line and the body.
pub fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))
        .map_err(|e| format!("cannot reach the admin listener at {admin}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "admin listener answered {}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        ));
    }
    Ok(body.to_string())
}

/// Renders a `/status` document as aligned text.
pub fn render(st: &Value) -> String {
    let mut out = format!(
        "datapath {}{}\n",
        st["datapath"].as_str().unwrap_or("?"),
        st["datapath_fallback"]
            .as_str()
            .map_or(String::new(), |f| format!(" (fallback: {f})"))
    );
    for svc in st["services"].as_array().into_iter().flatten() {
        let stats = &svc["stats"];
        let rejected: u64 = stats["rejected"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let sentinel = match svc["sentinel"].as_object() {
            Some(s) => format!(
                "  sentinel {}/{}{}",
                s.get("reachable").and_then(Value::as_u64).unwrap_or(0),
                s.get("configured").and_then(Value::as_u64).unwrap_or(0),
                if s.get("degraded").and_then(Value::as_bool) == Some(true) {
                    " DEGRADED"
                } else {
                    ""
                }
            ),
            None => String::new(),
        };
        out.push_str(&format!(
            "\nservice {}  listen {}  master {} (generation {}){}\n  sessions active {}  accepted {}  rejected {}  master changes {}  conflicts {}\n",
            svc["name"].as_str().unwrap_or("?"),
            svc["listen"].as_str().unwrap_or("?"),
            svc["master"].as_str().unwrap_or("NONE"),
            svc["generation"],
            sentinel,
            stats["active"],
            stats["accepted"],
            rejected,
            stats["master_changes"],
            svc["master_conflicts"],
        ));
        out.push_str(&format!(
            "  {:<22} {:<12} {:<8} {:>8} {:>8}  {}\n",
            "server", "check", "role", "ok", "failed", "last"
        ));
        for s in svc["servers"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<22} {:<12} {:<8} {:>8} {:>8}  {}\n",
                s["addr"].as_str().unwrap_or("?"),
                s["state"].as_str().unwrap_or("?"),
                s["role"].as_str().unwrap_or("-"),
                s["checks_ok"],
                s["checks_failed"],
                match (s["last_ok"].as_bool(), s["last_reason"].as_str()) {
                    (Some(true), _) => "ok".to_string(),
                    (Some(false), Some(r)) => r.to_string(),
                    (Some(false), None) => "failed".to_string(),
                    (None, _) => "not checked yet".to_string(),
                }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_services_and_servers() {
        let st: Value = serde_json::json!({
            "datapath": "userspace",
            "datapath_fallback": "uring: EPERM",
            "services": [{
                "name": "mymaster", "listen": "127.0.0.1:6379", "master": "127.0.0.1:6380",
                "generation": 3, "master_conflicts": 1,
                "sentinel": {"reachable": 1, "configured": 3, "degraded": true},
                "stats": {"active": 2, "accepted": 10, "rejected": {"maxconn": 1, "no_master": 2},
                          "master_changes": 2},
                "servers": [
                    {"addr": "127.0.0.1:6380", "state": "Up", "role": "master", "checks_ok": 5,
                     "checks_failed": 0, "last_ok": true},
                    {"addr": "127.0.0.1:6381", "state": "Down", "role": "replica",
                     "checks_ok": 0, "checks_failed": 5, "last_ok": false,
                     "last_reason": "step 5: expected \"role:master\""}
                ]
            }]
        });
        let text = render(&st);
        assert!(
            text.contains("datapath userspace (fallback: uring: EPERM)"),
            "{text}"
        );
        assert!(
            text.contains("master 127.0.0.1:6380 (generation 3)  sentinel 1/3 DEGRADED"),
            "{text}"
        );
        assert!(text.contains("rejected 3"), "{text}");
        assert!(text.contains("step 5: expected"), "{text}");
    }
}
