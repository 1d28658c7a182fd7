//! Certificates made by the tests ([`Pki`], with rcgen) and the client side of TLS
//! ([`ClientTls`], with rustls) for `redis-server --tls-port`, TLS Sentinels and the forwarder's
//! TLS listeners.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate and its key, written as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A test CA and the certificates the TLS tests need, in a temporary folder:
/// - [`Pki::server`]: signed by [`Pki::ca`], for `127.0.0.1`, `localhost` and `redis.internal`,
///   usable as a server and as a client certificate (Redis replicas present theirs);
/// - [`Pki::client`]: signed by the CA, a client certificate;
/// - [`Pki::expired`]: like `server`, expired a year ago;
/// - [`Pki::foreign`]: a server certificate of another CA, [`Pki::foreign_ca`].
pub struct Pki {
    dir: tempfile::TempDir,
    ca_cert: Certificate,
    ca_key: KeyPair,
    serial: AtomicU64,
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// Server certificate (also for client authentication) signed by the CA.
    pub server: Pair,
    /// Client certificate signed by the CA.
    pub client: Pair,
    /// An expired server certificate signed by the CA.
    pub expired: Pair,
    /// Another CA's certificate (PEM).
    pub foreign_ca: PathBuf,
    /// A server certificate signed by [`Pki::foreign_ca`].
    pub foreign: Pair,
}

fn ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (p.self_signed(&key).expect("self-signed CA"), key)
}

impl Pki {
    /// Makes the CA and every certificate, fresh keys each time.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_cert, ca_key) = ca("forwarder test CA");
        let (foreign_cert, foreign_key) = ca("another CA");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        let ca = write("ca.crt", &ca_cert.pem());
        let foreign_ca = write("foreign-ca.crt", &foreign_cert.pem());
        let mut pki = Pki {
            ca,
            foreign_ca,
            server: Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            client: Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            expired: Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            foreign: Pair {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            dir,
            ca_cert,
            ca_key,
            serial: AtomicU64::new(1),
        };
        pki.server = pki.mint("server", Kind::Server, false);
        pki.client = pki.mint("client", Kind::Client, false);
        pki.expired = pki.mint("expired", Kind::Server, true);
        pki.foreign = pki.sign("foreign", Kind::Server, false, &foreign_cert, &foreign_key);
        pki
    }

    /// A new server certificate (new key, new serial) signed by the CA, as `<name>.crt` and
    /// `<name>.key`: for a reload that swaps certificates.
    pub fn mint_server(&self, name: &str) -> Pair {
        self.mint(name, Kind::Server, false)
    }

    fn mint(&self, name: &str, kind: Kind, expired: bool) -> Pair {
        self.sign(name, kind, expired, &self.ca_cert, &self.ca_key)
    }

    fn sign(
        &self,
        name: &str,
        kind: Kind,
        expired: bool,
        issuer: &Certificate,
        issuer_key: &KeyPair,
    ) -> Pair {
        let key = KeyPair::generate().expect("key");
        let names = match kind {
            Kind::Server => vec!["localhost".to_string(), "redis.internal".to_string()],
            Kind::Client => vec!["client.internal".to_string()],
        };
        let mut p = CertificateParams::new(names).expect("params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.serial_number = Some(SerialNumber::from(
            self.serial
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes()
                .to_vec(),
        ));
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        match kind {
            Kind::Server => {
                p.subject_alt_names
                    .push(SanType::IpAddress([127, 0, 0, 1].into()));
                p.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Kind::Client => p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
        let now = time::OffsetDateTime::now_utc();
        if expired {
            p.not_before = now - time::Duration::days(400);
            p.not_after = now - time::Duration::days(365);
        } else {
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(90);
        }
        let cert = p.signed_by(&key, issuer, issuer_key).expect("sign");
        let pair = Pair {
            cert: self.dir.path().join(format!("{name}.crt")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }

    /// The arguments that make `redis-server` serve TLS with `cert` and require client
    /// certificates signed by the CA.
    pub fn redis_args(&self, cert: &Pair) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            cert.cert.display().to_string(),
            "--tls-key-file".into(),
            cert.key.display().to_string(),
            "--tls-ca-cert-file".into(),
            self.ca.display().to_string(),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]
    }

    /// `{ cert = ..., key = ... }` for `[service.tls]` with `pair`; with `client_ca`, clients
    /// must present a certificate of the CA.
    pub fn listen_table(&self, pair: &Pair, client_ca: bool) -> String {
        let ca = if client_ca {
            format!(", client_ca = \"{}\"", self.ca.display())
        } else {
            String::new()
        };
        format!(
            "{{ cert = \"{}\", key = \"{}\"{ca} }}",
            pair.cert.display(),
            pair.key.display()
        )
    }

    /// `{ ca = ..., cert = ..., key = ... }` for `[service.server_tls]` (with `passthrough`
    /// when asked) or a Sentinel's `tls`: trusts the CA, presents [`Pki::client`].
    pub fn server_table(&self, passthrough: Option<bool>) -> String {
        let pass = passthrough.map_or(String::new(), |p| format!(", passthrough = {p}"));
        format!(
            "{{ ca = \"{}\", cert = \"{}\", key = \"{}\"{pass} }}",
            self.ca.display(),
            self.client.cert.display(),
            self.client.key.display()
        )
    }

    /// A client that trusts the CA and presents [`Pki::client`] (what Redis wants by default).
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::new(&self.ca, Some(&self.client), None).expect("client TLS")
    }
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Server,
    Client,
}

/// The DER of the first certificate in a PEM file (to tell which certificate a peer showed).
pub fn cert_der(pem: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem)
        .expect("a PEM certificate")
        .as_ref()
        .to_vec()
}

/// How a test client speaks TLS: whom it trusts, what it presents, which name it verifies.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    name: Option<String>,
}

impl ClientTls {
    /// Trusts `ca`, presents `cert` when given, verifies `name` (by default the address
    /// connected to). Errors are those of reading the files.
    pub fn new(ca: &Path, cert: Option<&Pair>, name: Option<&str>) -> io::Result<ClientTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(io::Error::other)? {
            roots
                .add(c.map_err(io::Error::other)?)
                .map_err(io::Error::other)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots);
        let config = match cert {
            Some(p) => {
                let chain = CertificateDer::pem_file_iter(&p.cert)
                    .map_err(io::Error::other)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io::Error::other)?;
                let key = PrivateKeyDer::from_pem_file(&p.key).map_err(io::Error::other)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(io::Error::other)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            name: name.map(str::to_string),
        })
    }

    /// The TLS handshake over `tcp` (to `addr`), completed before it returns so that a refused
    /// handshake is an error here, with rustls's reason (`invalid peer certificate: ...`, or
    /// the alert the server sent).
    pub(crate) fn connect(
        &self,
        tcp: std::net::TcpStream,
        addr: SocketAddr,
    ) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
        let name = match &self.name {
            Some(n) => ServerName::try_from(n.clone()).map_err(io::Error::other)?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let conn = rustls::ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // With TLS 1.3 a server that refuses the client's certificate says so after this: the
        // first command then fails with its alert.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(s)
    }
}

/// Whether `e` is our TLS client refusing the server's certificate (expired, unknown CA, ...).
pub fn refused_certificate(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}
