//! Who may use the admin listener. With `[admin] token` set, a request carries the token as
//! `Authorization: Bearer <token>` or as the password of HTTP Basic (any user name, so that a
//! browser can open the status page: a refusal is a 401 with a `Basic` challenge). The optional
//! `read_token` allows the read-only endpoints (`GET`/`HEAD`) only; anything else with it is a
//! 403. With a `read_token` and no `token` the listener is read-only: nothing can act through it.
//! `GET /live` and `GET /ready` (and `HEAD`) are health probes and need no token at all.
//!
//! A browser sends cached Basic credentials with any request to the listener, a cross-site form
//! included; so a `POST` authorised by Basic must also carry the [`ACTION_HEADER`] (the status
//! page's buttons send it), which no other site can add without a CORS preflight this listener
//! never grants. Bearer tokens are never sent by a browser on its own. Whatever the tokens, a
//! `POST` whose `Origin` is not this listener (a page of another site) is refused.

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// The tokens of `[admin]`.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Allows everything.
    pub full: Option<String>,
    /// Allows the read-only endpoints. No token at all: everything is allowed to everyone.
    pub read: Option<String>,
}

/// What an authorised request may do; handlers find it in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everything: the full token, or no token configured.
    Full,
    /// `GET` and `HEAD` only: the read token.
    Read,
}

/// The header a `POST` authorised by HTTP Basic must carry (any value).
pub const ACTION_HEADER: &str = "x-forwarder-action";

/// The paths open to everyone: health probes.
const OPEN: [&str; 2] = ["/live", "/ready"];

impl Tokens {
    /// What `headers` allow, or `None` when they carry no valid token.
    #[cfg(test)]
    fn access(&self, headers: &HeaderMap) -> Option<Access> {
        self.access_by(headers).map(|(access, _)| access)
    }

    /// What `headers` allow, and whether the token came by HTTP Basic.
    fn access_by(&self, headers: &HeaderMap) -> Option<(Access, bool)> {
        if self.full.is_none() && self.read.is_none() {
            return Some((Access::Full, false));
        }
        let (given, basic) = credential(headers)?;
        self.level(&given).map(|access| (access, basic))
    }

    /// What a token allows.
    fn level(&self, given: &str) -> Option<Access> {
        if self.full.as_deref().is_some_and(|f| eq(given, f)) {
            Some(Access::Full)
        } else if self.read.as_deref().is_some_and(|r| eq(given, r)) {
            Some(Access::Read)
        } else {
            None
        }
    }
}

/// The token a request carries, a Bearer token or the password of HTTP Basic, and whether it
/// came by Basic.
fn credential(headers: &HeaderMap) -> Option<(String, bool)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some((rest.trim().to_string(), false))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        Some((password.to_string(), true))
    } else {
        None
    }
}

/// Whether a browser sent the request from a page of another origin: it says so in `Origin`
/// (every browser sends it with a `POST`), which scripts and the CLI do not send. Without a
/// token configured nothing else would stop a page the operator opens from posting a form to
/// `/reload` or `/services/.../switchover` (no body needed).
fn cross_site(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let from = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    from.is_none() || from != host
}

/// Compares without stopping at the first difference (the time says nothing of the token).
fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The middleware: lets the open paths through, refuses a request without a valid token (401
/// with a Basic challenge) or a read token on anything but `GET`/`HEAD` (403), and records the
/// [`Access`] of the others.
pub async fn check(
    tokens: Tokens,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if OPEN.contains(&req.uri().path()) && matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads && cross_site(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "a cross-site request (its Origin is not this listener) cannot act here\n",
        )
            .into_response();
    }
    let Some((access, basic)) = tokens.access_by(req.headers()) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"forwarder\"")],
            "admin token required (Authorization: Bearer <token>, or HTTP Basic with the token \
             as password)\n",
        )
            .into_response();
    };
    if access == Access::Read && !reads {
        return (
            StatusCode::FORBIDDEN,
            "the read-only token allows GET only; this needs [admin] token (a listener without \
             one is read-only)\n",
        )
            .into_response();
    }
    if basic && !reads && !req.headers().contains_key(ACTION_HEADER) {
        return (
            StatusCode::FORBIDDEN,
            "a POST authorised by HTTP Basic needs the X-Forwarder-Action header (the status \
             page's buttons send it); scripts should send Authorization: Bearer <token>\n",
        )
            .into_response();
    }
    req.extensions_mut().insert(access);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    #[test]
    fn bearer_and_basic_carry_the_same_token() {
        let t = Tokens {
            full: Some("full-token-0123456".into()),
            read: Some("read-token-0123456".into()),
        };
        let full = Some(Access::Full);
        assert_eq!(
            t.access_by(&headers(&basic("u:full-token-0123456"))),
            Some((Access::Full, true))
        );
        assert_eq!(
            t.access_by(&headers("Bearer full-token-0123456")),
            Some((Access::Full, false))
        );
        assert_eq!(t.access(&headers("Bearer full-token-0123456")), full);
        assert_eq!(
            t.access(&headers(&basic("anyone:full-token-0123456"))),
            full
        );
        assert_eq!(t.access(&headers(&basic(":full-token-0123456"))), full);
        assert_eq!(
            t.access(&headers(&basic("x:read-token-0123456"))),
            Some(Access::Read)
        );
        for bad in [
            "Bearer wrong-token-0123456".to_string(),
            basic("full-token-0123456:"),
            basic("full-token-0123456"),
            "Basic !!!".into(),
            "full-token-0123456".into(),
        ] {
            assert_eq!(t.access(&headers(&bad)), None, "{bad}");
        }
        assert_eq!(t.access(&HeaderMap::new()), None);
        assert_eq!(Tokens::default().access(&HeaderMap::new()), full);
        let read_only = Tokens { full: None, ..t };
        assert_eq!(
            read_only.access(&headers("Bearer read-token-0123456")),
            Some(Access::Read)
        );
        assert_eq!(
            read_only.access(&headers("Bearer full-token-0123456")),
            None
        );
        assert_eq!(read_only.access(&HeaderMap::new()), None);
    }
}
