//! `[service.tls]`, `[service.server_tls]` and `[service.sentinel] tls`: the TLS keys of a
//! service, validated, with their material read ([`crate::tls`]). Paths are relative to the
//! configuration file's folder. A reload reads the files again: new certificates make the
//! service (and its checks) changed, so new sessions and checks use them while established
//! sessions keep the ones they started with.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::raw::{RawServerTls, RawTls};
use super::validate::{Res, Validator};
use crate::tls::{self, Acceptor, CertInfo};

/// `[service.tls]`: the forwarder terminates the clients' TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientTls {
    /// The certificate chain presented to clients (PEM, end entity first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    /// The material, read.
    #[serde(skip)]
    pub acceptor: Acceptor,
}

/// `[service.server_tls]` (TLS towards the Redis servers) or the Sentinels' `tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTls {
    /// The CA the servers' certificates must be signed by.
    pub ca: PathBuf,
    /// The client certificate presented to them (Redis asks for one by default).
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// The name their certificates must carry; by default the address connected to (an IP
    /// address SAN).
    pub server_name: Option<String>,
    /// Sessions forward the client's own TLS bytes untouched; only the checks speak TLS.
    pub passthrough: bool,
    /// The material, read.
    #[serde(skip)]
    pub connector: health::tls::Connector,
    /// The client certificate's facts.
    #[serde(skip)]
    pub client_cert: Option<CertInfo>,
}

/// How a service's sessions and checks use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS anywhere.
    Plain,
    /// Clients' TLS bytes forwarded untouched; the checks speak TLS.
    Passthrough,
    /// TLS from clients terminated; plain TCP to Redis.
    Terminate,
    /// Plain clients; TLS to Redis.
    Originate,
    /// TLS from clients terminated, TLS to Redis.
    TerminateOriginate,
}

impl TlsMode {
    /// As `/status` and the logs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Plain => "plain",
            TlsMode::Passthrough => "passthrough",
            TlsMode::Terminate => "terminate",
            TlsMode::Originate => "originate",
            TlsMode::TerminateOriginate => "terminate+originate",
        }
    }

    /// Whether sessions need TLS done here, which only the tokio path does (no kernel TLS).
    pub fn in_userspace(self) -> bool {
        !matches!(self, TlsMode::Plain | TlsMode::Passthrough)
    }
}

impl super::Service {
    /// How this service uses TLS.
    pub fn tls_mode(&self) -> TlsMode {
        let origin = self.server_tls.as_ref().filter(|t| !t.passthrough);
        match (&self.tls, origin, &self.server_tls) {
            (Some(_), Some(_), _) => TlsMode::TerminateOriginate,
            (Some(_), None, _) => TlsMode::Terminate,
            (None, Some(_), _) => TlsMode::Originate,
            (None, None, Some(_)) => TlsMode::Passthrough,
            (None, None, None) => TlsMode::Plain,
        }
    }

    /// Every certificate the service's TLS reads, for expiry: its own, and the client
    /// certificates it presents to servers and Sentinels.
    pub fn certificates(&self) -> Vec<&CertInfo> {
        let mut v: Vec<&CertInfo> = self.tls.iter().map(|t| &t.acceptor.cert).collect();
        v.extend(
            self.server_tls
                .iter()
                .filter_map(|t| t.client_cert.as_ref()),
        );
        v.extend(
            self.sentinel
                .iter()
                .filter_map(|s| s.tls.as_ref())
                .filter_map(|t| t.client_cert.as_ref()),
        );
        v
    }
}

impl super::Config {
    /// One line per service with TLS (its mode, each certificate's names and expiry), then a
    /// warning for each certificate expired or expiring within 14 days: `forwarder check`
    /// prints them, the daemon logs the warnings at every load.
    pub fn tls_report(&self, now: std::time::SystemTime) -> (Vec<String>, Vec<String>) {
        let (mut lines, mut warnings) = (Vec::new(), Vec::new());
        for svc in &self.service {
            let mode = svc.tls_mode();
            if mode == TlsMode::Plain {
                continue;
            }
            let certs: Vec<String> = svc
                .certificates()
                .iter()
                .map(|c| {
                    let days = c
                        .not_after
                        .duration_since(now)
                        .map_or(0, |d| d.as_secs() / 86_400);
                    format!(
                        "{} names {} ({} days left)",
                        c.path.display(),
                        c.names.join(","),
                        days
                    )
                })
                .collect();
            lines.push(format!(
                "service {}: tls {}{}{}",
                svc.name,
                mode.as_str(),
                if certs.is_empty() { "" } else { "; " },
                certs.join("; ")
            ));
            warnings.extend(
                svc.certificates()
                    .iter()
                    .filter_map(|c| c.expiry_warning(now))
                    .map(|w| format!("service {}: {w}", svc.name)),
            );
        }
        (lines, warnings)
    }
}

impl Validator<'_> {
    /// A path as written, relative to the configuration file's folder.
    fn tls_path(&self, key: &str, p: &str) -> Res<PathBuf> {
        if p.trim().is_empty() {
            return Err(self.err(key, "a file path is required"));
        }
        let p = Path::new(p);
        Ok(match Path::new(&self.file).parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        })
    }

    /// `[service.tls]` at `key`.
    pub(super) fn client_tls(&self, key: &str, t: RawTls) -> Res<ClientTls> {
        let cert = self.tls_path(&format!("{key}.cert"), &t.cert)?;
        let k = self.tls_path(&format!("{key}.key"), &t.key)?;
        let client_ca = t
            .client_ca
            .as_deref()
            .map(|c| self.tls_path(&format!("{key}.client_ca"), c))
            .transpose()?;
        let acceptor = Acceptor::load(&cert, &k, client_ca.as_deref())
            .map_err(|e| self.err(key, e.to_string()))?;
        Ok(ClientTls {
            cert,
            key: k,
            client_ca,
            acceptor,
        })
    }

    /// `[service.server_tls]` or a Sentinel's `tls` at `key`; `passthrough` may only be set
    /// where `may_pass` (not towards Sentinels).
    pub(super) fn server_tls(&self, key: &str, t: RawServerTls, may_pass: bool) -> Res<ServerTls> {
        if t.passthrough.is_some() && !may_pass {
            return Err(self.err(
                format!("{key}.passthrough"),
                "only [service.server_tls] has passthrough (Sentinel connections are the \
                 forwarder's own)",
            ));
        }
        let ca = self.tls_path(&format!("{key}.ca"), &t.ca)?;
        let client = match (&t.cert, &t.key) {
            (Some(c), Some(k)) => Some((
                self.tls_path(&format!("{key}.cert"), c)?,
                self.tls_path(&format!("{key}.key"), k)?,
            )),
            (None, None) => None,
            (Some(_), None) => return Err(self.err(format!("{key}.key"), "required with cert")),
            (None, Some(_)) => return Err(self.err(format!("{key}.cert"), "required with key")),
        };
        let (connector, client_cert) = tls::connector(
            &ca,
            client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            t.server_name.as_deref(),
        )
        .map_err(|e| self.err(key, e.to_string()))?;
        let (cert, key_path) = client.unzip();
        Ok(ServerTls {
            ca,
            cert,
            key: key_path,
            server_name: t.server_name,
            passthrough: t.passthrough.unwrap_or(false),
            connector,
            client_cert,
        })
    }
}
