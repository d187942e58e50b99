//! TLS termination (rustls): the certificate chain and key, reloadable on
//! SIGHUP without dropping a connection, and the one server config every
//! shard's acceptor shares.
//!
//! Handshakes read the current certificate through [`Certificates`] (a read
//! lock taken once per TLS handshake, never on the delivery path); a reload
//! swaps it for new handshakes, and a bad new file leaves the old one in
//! place. [`ServerStream`]: a client's connection under TLS, holding no
//! buffer while idle; `stream`: a TCP stream, plain or under TLS;
//! [`client_config`]: what `rediss://` connections verify their server with.

mod client;
mod server;
mod stream;

pub use client::client_config;
pub use server::ServerStream;
pub use stream::{MaybeTls, Over};

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;

/// Why the certificate or key cannot be used. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key in {key} does not match the certificate in {cert}: {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
}

/// The lowest TLS version accepted (`[tls] min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// The served certificate chain and key, and where they come from.
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Replaced whole on reload; handshakes clone the `Arc` they find.
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads a PEM chain and key and checks that they belong together.
fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate { path: cert_file.into(), reason };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| TlsError::Key { path: key_file.into(), reason: format!("{e} (expected PKCS#8, PKCS#1 or SEC1 PEM)") })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Mismatch {
        cert: cert_file.into(),
        key: key_file.into(),
        reason: e.to_string(),
    })
}

impl Certificates {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Certificates, TlsError> {
        let key = load(cert_file, key_file)?;
        Ok(Certificates { cert_file: cert_file.into(), key_file: key_file.into(), current: RwLock::new(Arc::new(key)) })
    }

    /// Reads the files again; new handshakes use them from now on. On error
    /// the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(key);
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls server config: TLS 1.3 (and 1.2 unless `min_version` is 1.3),
/// ALPN `http/1.1`, certificates from `certs`; sessions resumed with
/// `tickets` (stateless tickets: nothing kept per session), or never.
pub fn server_config(certs: Arc<Certificates>, min_version: MinVersion, tickets: Option<Arc<dyn ProducesTickets>>) -> Arc<ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    match tickets {
        Some(tickets) => config.ticketer = tickets,
        None => {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
    }
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
    }

    #[test]
    fn loads_rsa_ecdsa_and_ed25519_keys_in_every_pem_form() {
        for (cert, k) in [
            ("rsa.cert.pem", "rsa.key.pem"),
            ("rsa.cert.pem", "rsa.pkcs1.key.pem"),
            ("ec256.cert.pem", "ec256.key.pem"),
            ("ec256.cert.pem", "ec256.sec1.key.pem"),
            ("ed25519.cert.pem", "ed25519.key.pem"),
        ] {
            let certs = Certificates::load(&key(cert), &key(k)).unwrap_or_else(|e| panic!("{cert} + {k}: {e}"));
            certs.reload().unwrap();
            let _ = server_config(Arc::new(certs), MinVersion::Tls12, None);
        }
    }

    #[test]
    fn refuses_what_does_not_belong_together_and_keeps_the_old_on_reload() {
        assert!(matches!(Certificates::load(&key("rsa.cert.pem"), &key("ec256.key.pem")), Err(TlsError::Mismatch { .. })));
        assert!(matches!(Certificates::load(&key("rsa.key.pem"), &key("rsa.key.pem")), Err(TlsError::Certificate { .. })));
        assert!(matches!(Certificates::load(&key("rsa.cert.pem"), &key("rsa.pub.pem")), Err(TlsError::Key { .. })));
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::copy(key("ec256.cert.pem"), &c).unwrap();
        std::fs::copy(key("ec256.key.pem"), &k).unwrap();
        let certs = Certificates::load(&c, &k).unwrap();
        let before = certs.current();
        std::fs::write(&k, "garbage").unwrap();
        assert!(certs.reload().is_err());
        assert!(Arc::ptr_eq(&before, &certs.current()), "the old certificate stays");
    }
}
