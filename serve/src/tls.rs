//! TLS for the viewer-facing listeners: one certificate store shared by the
//! TCP listener (HTTP/1.1 and HTTP/2 through Pingora's rustls acceptor) and
//! the QUIC listener (HTTP/3), reloaded from its files without a restart,
//! and the self-signed certificate `cascade dev` makes for itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use prometheus::IntCounterVec;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no PEM certificate in the file")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("{0}: no PEM private key in the file")]
    NoKey(PathBuf),
    /// The key is of a kind rustls cannot sign with, or does not belong to
    /// the certificate.
    #[error("key and certificate: {0}")]
    Mismatch(String),
    /// Making a certificate failed.
    #[error("generating a certificate: {0}")]
    Generate(String),
}

/// The edge's certificate and key, loaded from two PEM files and swapped
/// atomically when they change. Handshakes in progress keep the pair they
/// started with; connections already open are not disturbed.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// SHA-256 of the files when last loaded, so a reload happens only on
    /// change (a digest, not the bytes: the key must not be in `Debug`).
    loaded: Mutex<[u8; 32]>,
}

impl CertStore {
    /// Loads the pair, checking that the key belongs to the certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<CertStore>, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert_path, key_path)?;
        let key = certified_key(cert_path, key_path, &cert_pem, &key_pem)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(key),
            loaded: Mutex::new(digest(&cert_pem, &key_pem)),
        }))
    }

    /// Reads the files again; swaps in the new pair when they changed and
    /// make a valid pair. `Ok(false)`: unchanged. On error the old pair stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        // Read under the lock, so that two reloads cannot put back the older pair.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let now = digest(&cert_pem, &key_pem);
        if *loaded == now {
            return Ok(false);
        }
        let key = certified_key(&self.cert_path, &self.key_path, &cert_pem, &key_pem)?;
        self.current.store(Arc::new(key));
        *loaded = now;
        Ok(true)
    }

    /// The SHA-256 of the certificate in use (hex), for logs.
    pub fn fingerprint(&self) -> String {
        let current = self.current.load();
        current
            .end_entity_cert()
            .map(|c| hex(ring::digest::digest(&ring::digest::SHA256, c).as_ref()))
            .unwrap_or_default()
    }

    /// Checks the files every `every` and on SIGHUP, reloading on change;
    /// counts reloads in `counter` by result (`reloaded`, `failed`).
    pub fn spawn_reloader(
        self: Arc<Self>,
        every: Duration,
        counter: IntCounterVec,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(_) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                let store = self.clone();
                let result = tokio::task::spawn_blocking(move || store.reload()).await;
                match result {
                    Ok(Ok(true)) => {
                        counter.with_label_values(&["reloaded"]).inc();
                        tracing::info!(
                            cert = %self.cert_path.display(),
                            sha256 = %self.fingerprint(),
                            "TLS certificate reloaded"
                        );
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        // Often a half-written renewal (new certificate, old
                        // key): the next check picks up the finished pair.
                        counter.with_label_values(&["failed"]).inc();
                        tracing::warn!(error = %e, "TLS certificate reload failed; keeping the current one");
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
                }
            }
        })
    }

    /// A rustls server config over this store for TCP: TLS 1.2 and 1.3,
    /// ALPN `h2` then `http/1.1`. Early data stays off: TCP 0-RTT is not offered.
    pub fn tcp_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap_or_else(|_| unreachable_versions())
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg
    }

    /// A rustls server config over this store for QUIC: TLS 1.3 only, ALPN
    /// `h3`; `early_data` accepts 0-RTT (quinn needs `u32::MAX` for that).
    pub fn quic_config(self: &Arc<Self>, early_data: bool) -> rustls::ServerConfig {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|_| unreachable_versions())
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h3".to_vec()];
        cfg.max_early_data_size = if early_data { u32::MAX } else { 0 };
        cfg
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The certificate `cascade dev` serves: a leaf for `localhost`, `127.0.0.1`
/// and `::1`, signed by a one-off local CA.
#[derive(Debug, Clone)]
pub struct DevCert {
    /// The leaf's chain (leaf, then CA), PEM.
    pub cert: PathBuf,
    /// The leaf's key, PEM.
    pub key: PathBuf,
    /// The CA certificate to trust, PEM.
    pub ca: PathBuf,
    /// Base64 SHA-256 of the leaf's public key, for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
    /// Whether this call made it (else it was already there).
    pub created: bool,
}

/// Makes the development certificate under `dir` unless it is there already.
/// The CA's key is never written: trusting the CA trusts this leaf only.
pub fn dev_certificate(dir: &Path) -> Result<DevCert, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ca = dir.join("ca.pem");
    let spki_file = dir.join("spki-sha256.txt");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Read { path, source }
    };
    if cert.exists() && key.exists() && ca.exists() {
        if let Ok(spki) = std::fs::read_to_string(&spki_file) {
            // Only reuse a pair that still loads.
            CertStore::load(&cert, &key)?;
            return Ok(DevCert {
                cert,
                key,
                ca,
                spki_sha256: spki.trim().to_string(),
                created: false,
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let generated = generate(&["localhost", "127.0.0.1", "::1"])?;
    std::fs::write(&ca, &generated.ca_pem).map_err(io(&ca))?;
    std::fs::write(&cert, format!("{}{}", generated.cert_pem, generated.ca_pem))
        .map_err(io(&cert))?;
    write_private(&key, generated.key_pem.as_bytes()).map_err(io(&key))?;
    std::fs::write(&spki_file, format!("{}\n", generated.spki_sha256)).map_err(io(&spki_file))?;
    Ok(DevCert {
        cert,
        key,
        ca,
        spki_sha256: generated.spki_sha256,
        created: true,
    })
}

/// A freshly made leaf and its CA, in PEM.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
    /// The CA that signed it.
    pub ca_pem: String,
    /// Base64 SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub spki_sha256: String,
}

/// Makes a leaf for `names` (DNS names or IP addresses) signed by a new CA
/// whose key is dropped at once. Also what the tests use to make and rotate
/// certificates.
pub fn generate(names: &[&str]) -> Result<Generated, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
    };
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let now = time_now();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Cascade development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A day back for clocks a little behind; 825 days in all, the most
    // Apple's platforms accept for a server certificate.
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(824);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    let leaf_key = KeyPair::generate().map_err(err)?;
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<String>>())
            .map_err(err)?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("cascade"),
    );
    params.is_ca = IsCa::NoCa;
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(824);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&leaf_key, &ca).map_err(err)?;
    let spki = ring::digest::digest(&ring::digest::SHA256, &leaf_key.subject_public_key_info());
    Ok(Generated {
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        ca_pem: ca.pem(),
        spki_sha256: base64::engine::general_purpose::STANDARD.encode(spki.as_ref()),
    })
}

/// The crypto provider: ring, as everywhere else in Cascade.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn unreachable_versions<T>() -> T {
    // ring supports TLS 1.2 and 1.3; with_protocol_versions fails only for a
    // provider without them.
    panic!("the ring provider supports TLS 1.2 and 1.3")
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| TlsError::NoKey(key_path.to_path_buf()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch(e.to_string()))
}

/// One digest of both files.
fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(cert_pem.len() as u64).to_be_bytes());
    ctx.update(cert_pem);
    ctx.update(key_pem);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, g: &Generated) {
        std::fs::write(dir.join("cert.pem"), &g.cert_pem).expect("write");
        std::fs::write(dir.join("key.pem"), &g.key_pem).expect("write");
    }

    #[test]
    fn reloads_only_a_changed_and_matching_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (
            generate(&["localhost"]).expect("a"),
            generate(&["localhost"]).expect("b"),
        );
        write(dir.path(), &a);
        let store =
            CertStore::load(&dir.path().join("cert.pem"), &dir.path().join("key.pem")).expect("a");
        let first = store.fingerprint();
        assert_eq!(first.len(), 64);
        assert!(!store.reload().expect("unchanged"), "nothing changed");
        // A renewal half done: b's certificate, a's key.
        std::fs::write(dir.path().join("cert.pem"), &b.cert_pem).expect("write");
        assert!(matches!(store.reload(), Err(TlsError::Mismatch(_))));
        assert_eq!(store.fingerprint(), first, "the old pair stays");
        write(dir.path(), &b);
        assert!(store.reload().expect("b"));
        assert_ne!(store.fingerprint(), first);
    }

    #[test]
    fn the_dev_certificate_is_made_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = dev_certificate(dir.path()).expect("made");
        assert!(made.created);
        let kept = dev_certificate(dir.path()).expect("kept");
        assert!(!kept.created);
        assert_eq!(made.spki_sha256, kept.spki_sha256);
        assert_eq!(made.spki_sha256.len(), 44, "base64 of 32 bytes");
        CertStore::load(&kept.cert, &kept.key).expect("a valid pair");
        // No CA key is written.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(!names.iter().any(|n| n.contains("ca-key")), "{names:?}");
    }
}
