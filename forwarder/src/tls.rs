//! TLS material: PEM certificates and keys read from the files the configuration names, and
//! the rustls configurations built from them, once per load (start and every reload, so new
//! certificates take effect on SIGHUP while established sessions keep theirs).
//!
//! rustls with the `ring` provider; TLS 1.2 and 1.3; no ALPN (Redis needs none). Kernel TLS
//! (the `tls` ULP) would let the splice paths carry terminated sessions; this kernel has no
//! `tls` module, so terminated and originated sessions run in userspace (`datapath/tls.rs`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// A certificate expiring sooner than this is warned about (`forwarder check`, at load).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why TLS material cannot be used; `Display` is the reason part of a config error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not PEM of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the material (a key that does not match its certificate, a CA that is not
    /// one).
    #[error("{0}")]
    Rustls(String),
}

/// A certificate's facts that an operator watches: what it names and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The file it was read from (the first certificate of the file: the end entity).
    pub path: PathBuf,
    /// Its DNS and IP subject alternative names (the subject CN when it has none).
    pub names: Vec<String>,
    /// Its `notAfter`.
    pub not_after: SystemTime,
}

impl CertInfo {
    /// `notAfter` in seconds since the epoch (negative never: certificates before 1970 are 0).
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// Expired already, or expiring within [`EXPIRY_WARNING`]: the warning to log, if any.
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let path = self.path.display();
        match self.not_after.duration_since(now) {
            Err(_) => Some(format!("{path}: certificate expired (notAfter passed)")),
            Ok(left) if left < EXPIRY_WARNING => Some(format!(
                "{path}: certificate expires in {} days",
                left.as_secs() / 86_400
            )),
            Ok(_) => None,
        }
    }
}

/// The bytes of every file read, and a digest of them: a reload tells new material from the
/// same by comparing digests (see [`health::tls::Connector`]).
#[derive(Default)]
struct Files {
    hasher: std::collections::hash_map::DefaultHasher,
}

impl Files {
    fn read(&mut self, path: &Path) -> Result<Vec<u8>, TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        path.hash(&mut self.hasher);
        bytes.hash(&mut self.hasher);
        Ok(bytes)
    }

    fn certs(&mut self, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bytes = self.read(path)?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| pem(path, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(pem(path, "no CERTIFICATE block".into()));
        }
        Ok(certs)
    }

    fn key(&mut self, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
        let bytes = self.read(path)?;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
            pem(
                path,
                format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
            )
        })
    }

    fn roots(&mut self, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in self.certs(path)? {
            roots
                .add(c)
                .map_err(|e| pem(path, format!("not a usable CA certificate: {e}")))?;
        }
        Ok(Arc::new(roots))
    }

    fn digest(&self) -> u64 {
        self.hasher.finish()
    }
}

fn pem(path: &Path, what: String) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_error(e: rustls::Error) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// What a service presents to its clients (`[service.tls]`): the acceptor and its material.
#[derive(Clone)]
pub struct Acceptor {
    /// The rustls server configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// The server certificate.
    pub cert: CertInfo,
    /// Whether clients must present a certificate signed by `client_ca`.
    pub client_auth: bool,
    digest: u64,
}

impl Acceptor {
    /// Reads `cert` (a chain, end entity first) and `key`, and with `client_ca` requires client
    /// certificates that it signed.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Acceptor, TlsError> {
        let mut files = Files::default();
        let chain = files.certs(cert)?;
        let info = cert_info(cert, &chain[0])?;
        let key_der = files.key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(files.roots(ca)?, provider())
                        .build()
                        .map_err(|e| TlsError::Rustls(format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key_der).map_err(|e| {
            TlsError::Rustls(format!("{} and {}: {e}", cert.display(), key.display()))
        })?;
        Ok(Acceptor {
            config: Arc::new(config),
            cert: info,
            client_auth: client_ca.is_some(),
            digest: files.digest(),
        })
    }
}

impl PartialEq for Acceptor {
    fn eq(&self, other: &Acceptor) -> bool {
        self.digest == other.digest && self.client_auth == other.client_auth
    }
}

impl Eq for Acceptor {}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("cert", &self.cert)
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

/// TLS towards servers (Redis, or Sentinels): the trusted CA, an optional client certificate
/// and the name to verify. Returns the connector health uses and the client certificate's
/// facts, if there is one.
pub fn connector(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    server_name: Option<&str>,
) -> Result<(health::tls::Connector, Option<CertInfo>), TlsError> {
    let mut files = Files::default();
    let roots = files.roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_root_certificates(roots);
    let (config, info) = match client {
        Some((cert, key)) => {
            let chain = files.certs(cert)?;
            let info = cert_info(cert, &chain[0])?;
            let config = builder
                .with_client_auth_cert(chain, files.key(key)?)
                .map_err(|e| {
                    TlsError::Rustls(format!("{} and {}: {e}", cert.display(), key.display()))
                })?;
            (config, Some(info))
        }
        None => (builder.with_no_client_auth(), None),
    };
    let name = server_name
        .map(|n| {
            ServerName::try_from(n.to_string())
                .map_err(|e| TlsError::Rustls(format!("server_name {n:?}: {e}")))
        })
        .transpose()?;
    server_name.hash(&mut files.hasher);
    Ok((
        health::tls::Connector::new(Arc::new(config), name, files.digest()),
        info,
    ))
}

/// The names and `notAfter` of a certificate.
fn cert_info(path: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| pem(path, format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*ip) {
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_string),
        );
    }
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok(CertInfo {
        path: path.to_path_buf(),
        names,
        not_after: UNIX_EPOCH + Duration::from_secs(secs),
    })
}
