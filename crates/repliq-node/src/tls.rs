//! Mutual TLS on the replication port (rustls with the `ring` provider).
//!
//! * Both ends present a certificate that must chain to `tls.ca`.
//! * Identity is checked after the handshake, against the member name a
//!   peer claims: the `Hello`'s node name for replication, the sender of a
//!   Raft RPC or a `Join` for the catalog, the member a node dials. A
//!   certificate names a member when one of its SANs (a DNS name) is it.
//! * ALPN tells the two protocols apart inside TLS ([`ALPN_REPLICATION`],
//!   [`ALPN_CATALOG`]); in plain TCP the catalog's `RQCL` magic does.
//! * The three files are re-read every [`RELOAD_EVERY`] by [`Tls::watch`],
//!   on the blocking pool (never on a connection's path), and loaded again
//!   when their bytes changed: a rotated Kubernetes Secret is used by new
//!   connections within seconds, without a restart. Comparing bytes, not
//!   modification times, catches a rewrite within the file system's
//!   timestamp granularity. A rotation that fails to load keeps the
//!   previous configuration and logs why, once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::config::{TlsMode, TlsSettings};

/// How often [`Tls::watch`] re-reads the certificate files.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// ALPN protocol of replication sessions.
pub const ALPN_REPLICATION: &[u8] = b"repliq/1";
/// ALPN protocol of catalog (Raft) connections.
pub const ALPN_CATALOG: &[u8] = b"repliq-catalog/1";

/// Which protocol a TLS connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// Replication sessions.
    Replication,
    /// The catalog's Raft RPCs.
    Catalog,
}

/// True if `bytes` (the first three of a connection) start a TLS handshake
/// record: content type 22, protocol major version 3. No plain replication
/// session starts so: its first bytes are a little-endian frame length, and
/// `16 03 0x` would declare more than the 64 KiB a `Hello` may take; the
/// catalog's start with `RQCL`.
pub fn is_tls_hello(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16, 0x03, 0x00..=0x04, ..])
}

/// The bytes of the three files (or why one could not be read).
type Stamp = [Result<Vec<u8>, String>; 3];

struct Loaded {
    stamp: Stamp,
    chain: Vec<CertificateDer<'static>>,
    server: Arc<ServerConfig>,
    replication: Arc<ClientConfig>,
    catalog: Arc<ClientConfig>,
}

/// This node's TLS identity and trust, reloaded from the files as they
/// change.
pub struct Tls {
    mode: TlsMode,
    files: [PathBuf; 3],
    loaded: Mutex<State>,
}

struct State {
    current: Arc<Loaded>,
    /// The stamp of files that failed to load (logged once, not retried
    /// until they change again).
    failed: Option<Stamp>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("files", &self.files)
            .finish()
    }
}

impl Tls {
    /// Loads the files of `settings`; `None` when TLS is disabled. Errors
    /// name the key and the file.
    pub fn from_settings(settings: &TlsSettings) -> Result<Option<Arc<Tls>>, String> {
        if settings.mode == TlsMode::Disabled {
            return Ok(None);
        }
        let file = |key: &str, p: &Option<PathBuf>| {
            p.clone()
                .ok_or_else(|| format!("{key}: required with tls.mode {:?}", settings.mode))
        };
        let files = [
            file("tls.cert", &settings.cert)?,
            file("tls.key", &settings.key)?,
            file("tls.ca", &settings.ca)?,
        ];
        let loaded = load(&files, stamp(&files))?;
        Ok(Some(Arc::new(Tls {
            mode: settings.mode,
            files,
            loaded: Mutex::new(State {
                current: Arc::new(loaded),
                failed: None,
            }),
        })))
    }

    /// Fails unless this node's own certificate names `node` (its
    /// `node.name`): peers would refuse it.
    pub fn check_own_name(&self, node: &str) -> Result<(), String> {
        let l = self.current();
        if certificate_names(&l.chain, node) {
            Ok(())
        } else {
            Err(format!(
                "tls.cert {}: the certificate names {} but not this node ({node:?}, node.name): \
                 its peers would refuse it",
                self.files[0].display(),
                sans(&l.chain).join(", ")
            ))
        }
    }

    /// The configured mode (never `Disabled`).
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// The configuration in force: a clone of an `Arc`, no file access
    /// (the files are re-read by [`Tls::watch`] off the async runtime).
    fn current(&self) -> Arc<Loaded> {
        // A panic elsewhere while holding the lock leaves a sound value.
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }

    /// Re-reads the files every [`RELOAD_EVERY`] on the blocking pool and
    /// takes them when they changed and load, until the task is aborted: a
    /// rotated Kubernetes Secret is served to new connections within
    /// seconds, without a restart.
    pub async fn watch(self: Arc<Tls>) {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }

    /// One check of the files (blocking file reads); true if a new
    /// configuration was taken.
    fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        {
            let g = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if now == g.current.stamp || g.failed.as_ref() == Some(&now) {
                return false;
            }
        }
        // Parsed outside the lock: handshakes go on with the old files.
        let res = load(&self.files, now.clone());
        let mut g = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        match res {
            Ok(l) => {
                tracing::info!(cert = %self.files[0].display(), "tls: certificate files changed: reloaded");
                g.current = Arc::new(l);
                g.failed = None;
                true
            }
            Err(e) => {
                // Half-written during a rotation, or wrong: keep the
                // previous configuration until the files change again.
                tracing::warn!("tls: certificate files changed but cannot be loaded (the previous ones stay in use): {e}");
                g.failed = Some(now);
                false
            }
        }
    }

    /// Completes the server side of a handshake on `tcp` (the peer must
    /// present a certificate chaining to the CA); returns the stream and
    /// the protocol the client asked for.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Alpn)> {
        let cfg = self.current().server.clone();
        let s = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await?;
        let alpn = match s.get_ref().1.alpn_protocol() {
            Some(p) if p == ALPN_CATALOG => Alpn::Catalog,
            _ => Alpn::Replication,
        };
        Ok((s, alpn))
    }

    /// Completes the client side of a handshake on `tcp` for `alpn`; with
    /// `expect`, the server's certificate must name that member.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        expect: Option<&str>,
        alpn: Alpn,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let l = self.current();
        let cfg = match alpn {
            Alpn::Replication => l.replication.clone(),
            Alpn::Catalog => l.catalog.clone(),
        };
        // The name sent (SNI) and given to the verifier, which checks the
        // chain only (see `ChainOnly`); without an expected name, a loopback
        // address (no SNI is sent for an address).
        let sni = expect
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| {
                ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
            });
        let s = tokio_rustls::TlsConnector::from(cfg)
            .connect(sni, tcp)
            .await?;
        if let Some(name) = expect {
            let certs = s.get_ref().1.peer_certificates().unwrap_or(&[]);
            if !certificate_names(certs, name) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "the peer's certificate does not name {name:?} (its SANs: {})",
                        sans(certs).join(", ")
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// [`Tls::dial`]; in `permissive` mode, when the peer closes or resets
    /// the connection during the handshake (a node not upgraded yet, which
    /// reads the ClientHello as an oversized frame), again in plain TCP. A
    /// certificate problem never falls back.
    pub async fn dial_for_mode(
        &self,
        addr: &str,
        expect: Option<&str>,
        alpn: Alpn,
    ) -> std::io::Result<Dialed> {
        use std::io::ErrorKind::*;
        match self.dial(addr, expect, alpn).await {
            Ok(s) => Ok(Dialed::Tls(Box::new(s))),
            Err(e)
                if self.mode == TlsMode::Permissive
                    && matches!(
                        e.kind(),
                        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
                    ) =>
            {
                tracing::debug!(%addr, "tls: the peer does not speak TLS ({e}); plain TCP (tls.mode permissive)");
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                Ok(Dialed::Plain(tcp))
            }
            Err(e) => Err(e),
        }
    }

    /// Connects to `addr` and completes a handshake (see [`Tls::connect`]).
    pub async fn dial(
        &self,
        addr: &str,
        expect: Option<&str>,
        alpn: Alpn,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        self.connect(tcp, expect, alpn).await
    }
}

/// A connection made by [`Tls::dial_for_mode`].
#[derive(Debug)]
pub enum Dialed {
    /// Mutual TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Plain TCP (`permissive`, to a peer that does not speak TLS).
    Plain(TcpStream),
}

/// True if the end-entity certificate of `chain` names `name` in a SAN.
pub fn certificate_names(chain: &[CertificateDer<'_>], name: &str) -> bool {
    let Some(ee) = chain.first() else {
        return false;
    };
    let Ok(sn) = ServerName::try_from(name) else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(ee) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&sn).is_ok()
}

/// The DNS names of the end-entity certificate of `chain`, for messages.
pub fn sans(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let Some(ee) = chain.first() else {
        return vec!["no certificate".into()];
    };
    match webpki::EndEntityCert::try_from(ee) {
        Ok(c) => c.valid_dns_names().map(str::to_string).collect::<Vec<_>>(),
        Err(e) => vec![format!("unreadable certificate: {e}")],
    }
}

/// A [`crate::config::TlsSettings`]-driven connector for the catalog.
#[derive(Debug)]
pub struct CatalogDialer(pub Arc<Tls>);

impl repliq_catalog::network::Connector for CatalogDialer {
    fn connect<'a>(
        &'a self,
        addr: &'a str,
        name: Option<&'a str>,
    ) -> repliq_catalog::network::ConnectFuture<'a> {
        Box::pin(async move {
            Ok(
                match self.0.dial_for_mode(addr, name, Alpn::Catalog).await? {
                    Dialed::Tls(s) => s as repliq_catalog::network::BoxStream,
                    Dialed::Plain(s) => Box::new(s) as repliq_catalog::network::BoxStream,
                },
            )
        })
    }
}

fn stamp(files: &[PathBuf; 3]) -> Stamp {
    let one = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read: {e}"));
    [one(&files[0]), one(&files[1]), one(&files[2])]
}

/// The `ring` provider with AES-128-GCM preferred: the same security
/// margin for replication traffic (128-bit keys, AEAD) at about two thirds
/// of AES-256's cost per byte, which both ends of a replica pay for every
/// record (Go's TLS orders them so too). The rest of the list is rustls'.
pub fn provider() -> rustls::crypto::CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        )
    });
    p
}

/// Builds the configurations from `bytes`, the contents of `files`.
fn load(files: &[PathBuf; 3], bytes: Stamp) -> Result<Loaded, String> {
    let [cert_p, key_p, ca_p] = files;
    let [cert_b, key_b, ca_b] = &bytes;
    let cert_b = cert_b
        .as_ref()
        .map_err(|e| format!("tls.cert {}: {e}", cert_p.display()))?;
    let key_b = key_b
        .as_ref()
        .map_err(|e| format!("tls.key {}: {e}", key_p.display()))?;
    let ca_b = ca_b
        .as_ref()
        .map_err(|e| format!("tls.ca {}: {e}", ca_p.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_b)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", cert_p.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert {}: no CERTIFICATE in the file",
            cert_p.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_b)
        .map_err(|e| format!("tls.key {}: {e}", key_p.display()))?;
    let mut roots = RootCertStore::empty();
    let mut n = 0usize;
    for c in CertificateDer::pem_slice_iter(ca_b) {
        let c = c.map_err(|e| format!("tls.ca {}: {e}", ca_p.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("tls.ca {}: {e}", ca_p.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "tls.ca {}: no CERTIFICATE in the file",
            ca_p.display()
        ));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(provider());
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("tls.ca {}: {e}", ca_p.display()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("tls.cert/tls.key {}: {e}", cert_p.display()))?;
    server.alpn_protocols = vec![ALPN_REPLICATION.to_vec(), ALPN_CATALOG.to_vec()];
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("tls.ca {}: {e}", ca_p.display()))?;
    let verifier = Arc::new(ChainOnly(server_verifier));
    let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, String> {
        let mut c = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("tls.cert/tls.key {}: {e}", cert_p.display()))?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    let replication = client(ALPN_REPLICATION)?;
    let catalog = client(ALPN_CATALOG)?;
    Ok(Loaded {
        chain,
        stamp: bytes,
        server: Arc::new(server),
        replication,
        catalog,
    })
}

/// Verifies the server's chain to the CA and its signatures, but not its
/// name: which member a node expects is checked after the handshake (see
/// [`Tls::connect`]), and a node dialing a discovered address does not
/// know it yet.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// PEM files of a new certificate authority: `(certificate, private key)`.
pub fn generate_ca(common_name: &str) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("certificate parameters: {e}"))?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let cert = p
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// PEM files of a node certificate signed by the CA (`ca_cert_pem`,
/// `ca_key_pem`), its SANs `names` (the node name first): `(certificate,
/// private key)`. Usable as a server and as a client certificate.
pub fn generate_node(
    names: &[String],
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<(String, String), String> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|e| format!("the CA key: {e}"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| format!("the CA certificate: {e}"))?;
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut p = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("a SAN is not a valid name: {e}"))?;
    if let Some(n) = names.first() {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, n.as_str());
    }
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    // A random serial, so a re-issued certificate is told apart.
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| format!("no randomness: {e}"))?;
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    p.not_before = rcgen::date_time_ymd(2025, 1, 1);
    p.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the node certificate: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a certificate naming `name`, its key and the CA into
    /// `dir/name/`; the settings that load them.
    pub(crate) fn write_node(dir: &Path, name: &str, ca: &(String, String)) -> TlsSettings {
        let (c, k) = generate_node(&[name.to_string()], &ca.0, &ca.1).expect("node cert");
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("tls.crt"), c).expect("write");
        std::fs::write(d.join("tls.key"), k).expect("write");
        std::fs::write(d.join("ca.crt"), &ca.0).expect("write");
        TlsSettings {
            mode: TlsMode::Required,
            cert: Some(d.join("tls.crt")),
            key: Some(d.join("tls.key")),
            ca: Some(d.join("ca.crt")),
        }
    }

    #[tokio::test]
    async fn a_dialer_checks_the_chain_always_and_the_name_when_it_expects_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca("t").expect("ca");
        let server = Tls::from_settings(&write_node(dir.path(), "a", &ca))
            .expect("load")
            .expect("enabled");
        let client = Tls::from_settings(&write_node(dir.path(), "b", &ca))
            .expect("load")
            .expect("enabled");
        let other_ca = generate_ca("other").expect("ca");
        let stranger = Tls::from_settings(&write_node(dir.path(), "c", &other_ca))
            .expect("load")
            .expect("enabled");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let srv = server.clone();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                let srv = srv.clone();
                tokio::spawn(async move {
                    if let Ok((mut s, alpn)) = srv.accept(c).await {
                        let b = [u8::from(alpn == Alpn::Catalog)];
                        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, &b).await;
                        let _ = tokio::io::AsyncWriteExt::flush(&mut s).await;
                    }
                });
            }
        });
        let first_byte = |t: Arc<Tls>, expect: Option<&'static str>, alpn: Alpn| {
            let addr = addr.clone();
            async move {
                let mut s = t.dial(&addr, expect, alpn).await?;
                let mut b = [0u8; 1];
                tokio::io::AsyncReadExt::read_exact(&mut s, &mut b).await?;
                Ok::<u8, std::io::Error>(b[0])
            }
        };
        // The name expected, none expected; the ALPN reaches the server.
        assert_eq!(
            first_byte(client.clone(), Some("a"), Alpn::Replication)
                .await
                .expect("a"),
            0
        );
        assert_eq!(
            first_byte(client.clone(), None, Alpn::Catalog)
                .await
                .expect("none"),
            1
        );
        // TLS 1.3 with AES-128-GCM, the suite `provider` puts first.
        let s = client
            .dial(&addr, Some("a"), Alpn::Replication)
            .await
            .expect("dial");
        assert_eq!(
            s.get_ref().1.negotiated_cipher_suite().map(|c| c.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        drop(s);
        // Another name expected: refused after the handshake.
        let e = first_byte(client.clone(), Some("x"), Alpn::Replication)
            .await
            .expect_err("x");
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("does not name \"x\""), "{e}");
        // Another CA: neither side trusts the other.
        assert!(first_byte(stranger, None, Alpn::Replication).await.is_err());
    }

    #[test]
    fn tls_records_are_told_from_plain_frames_and_rqcl() {
        assert!(is_tls_hello(&[0x16, 0x03, 0x01]));
        assert!(is_tls_hello(&[0x16, 0x03, 0x03, 0x00]));
        assert!(!is_tls_hello(b"RQCL"));
        // A plain Hello of 22 bytes starts 16 00 00 00.
        assert!(!is_tls_hello(&[0x16, 0x00, 0x00]));
        assert!(!is_tls_hello(&[0x16, 0x03]));
    }

    #[test]
    fn certificates_name_their_sans_only() {
        let ca = generate_ca("t").expect("ca");
        let (c, _) = generate_node(&["node-a".into(), "alias".into()], &ca.0, &ca.1).expect("cert");
        let der = CertificateDer::from_pem_slice(c.as_bytes()).expect("pem");
        let chain = [der];
        assert!(certificate_names(&chain, "node-a"));
        assert!(certificate_names(&chain, "alias"));
        assert!(!certificate_names(&chain, "node-b"));
        assert!(!certificate_names(&chain, "node-"));
        assert!(!certificate_names(&[], "node-a"));
        assert_eq!(sans(&chain), ["node-a", "alias"]);
    }

    #[test]
    fn missing_or_bad_files_are_errors_naming_the_key_and_a_bad_rotation_keeps_the_old_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca("t").expect("ca");
        let s = write_node(dir.path(), "a", &ca);
        let mut missing = s.clone();
        missing.ca = Some(dir.path().join("nope.crt"));
        let e = Tls::from_settings(&missing).expect_err("missing CA");
        assert!(e.starts_with("tls.ca ") && e.contains("nope.crt"), "{e}");
        let mut not_pem = s.clone();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a key").expect("write");
        not_pem.key = Some(junk);
        let e = Tls::from_settings(&not_pem).expect_err("bad key");
        assert!(e.starts_with("tls.key "), "{e}");

        let tls = Tls::from_settings(&s).expect("load").expect("enabled");
        let before = Arc::as_ptr(&tls.current());
        assert!(!tls.reload_if_changed(), "reloaded without a change");
        assert_eq!(Arc::as_ptr(&tls.current()), before);
        // A key that does not match the certificate: the old pair stays.
        let other = generate_node(&["a".to_string()], &ca.0, &ca.1).expect("cert");
        std::fs::write(s.key.as_ref().expect("key"), other.1).expect("write");
        assert!(!tls.reload_if_changed(), "a mismatched pair was taken");
        assert_eq!(
            Arc::as_ptr(&tls.current()),
            before,
            "a mismatched pair was taken"
        );
        // Its certificate too: the new pair is loaded.
        std::fs::write(s.cert.as_ref().expect("cert"), other.0).expect("write");
        assert!(
            tls.current().stamp != stamp(&tls.files),
            "the files changed on disk but nothing was re-read yet"
        );
        assert!(tls.reload_if_changed(), "a rotation was not taken");
        assert_ne!(
            Arc::as_ptr(&tls.current()),
            before,
            "a rotation was not taken"
        );
    }

    /// Writes `files` into a new timestamped directory of `dir` and points
    /// `dir/..data` at it by renaming a fresh symlink over the old one, as
    /// the kubelet's atomic writer updates a mounted Secret.
    fn kubelet_write(dir: &Path, generation: u32, files: &[(&str, &str)]) {
        let ts = format!("..2026_11_30_00_00_0{generation}");
        std::fs::create_dir_all(dir.join(&ts)).expect("mkdir");
        for (name, body) in files {
            std::fs::write(dir.join(&ts).join(name), body).expect("write");
            let link = dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).expect("link");
            }
        }
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("symlink");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    }

    #[test]
    fn a_secret_updated_the_way_the_kubelet_does_it_is_taken_without_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = generate_ca("t").expect("ca");
        let one = generate_node(&["node-1".to_string()], &ca.0, &ca.1).expect("cert");
        let files = |c: &(String, String)| {
            [
                ("node-1.crt", c.0.clone()),
                ("node-1.key", c.1.clone()),
                ("ca.crt", ca.0.clone()),
            ]
        };
        let f1 = files(&one);
        let f1: Vec<(&str, &str)> = f1.iter().map(|(n, b)| (*n, b.as_str())).collect();
        kubelet_write(dir.path(), 1, &f1);
        let settings = TlsSettings {
            mode: TlsMode::Required,
            cert: Some(dir.path().join("node-1.crt")),
            key: Some(dir.path().join("node-1.key")),
            ca: Some(dir.path().join("ca.crt")),
        };
        let tls = Tls::from_settings(&settings)
            .expect("load")
            .expect("enabled");
        let first = tls.current().chain.clone();
        assert!(!tls.reload_if_changed(), "nothing changed yet");
        // cert-manager renews: a new certificate and key, the same paths.
        let two = generate_node(&["node-1".to_string()], &ca.0, &ca.1).expect("cert");
        let f2 = files(&two);
        let f2: Vec<(&str, &str)> = f2.iter().map(|(n, b)| (*n, b.as_str())).collect();
        kubelet_write(dir.path(), 2, &f2);
        assert!(tls.reload_if_changed(), "the renewed Secret was not taken");
        assert_ne!(tls.current().chain, first);
        assert!(certificate_names(&tls.current().chain, "node-1"));
    }
}
