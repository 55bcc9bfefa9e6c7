//! TLS listeners: the certificate and key loaded from PEM files, reloaded on SIGHUP,
//! and the rustls server configuration each `,tls` listener wraps its service with.
//!
//! The certificate lives behind a swappable `Arc` read by a
//! [`ResolvesServerCert`] at every handshake, so a reload changes what new handshakes
//! present while established connections, which hold their own keys, carry on. A file
//! that does not parse leaves the old certificate in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("certificate {path}: {why}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The key file is unreadable or holds no PEM private key.
    #[error("key {path}: {why}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the pair (an unsupported key, a key that does not match the
    /// certificate) or the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the certificate chain and its key are read from (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, RSA (PKCS#1) or EC (SEC1).
    pub key: PathBuf,
}

/// The certificate every TLS listener of a process presents, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads the certificate and key; fails with a message naming the bad file.
    pub fn load(files: TlsFiles) -> Result<Arc<CertStore>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_pair(&files, &provider)?;
        Ok(Arc::new(CertStore {
            files,
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the same files again: new handshakes present what they now hold. On an
    /// error the certificate in use is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = read_pair(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The files this store reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A server configuration over this store: TLS 1.2 and 1.3 with rustls's default
    /// safe suites, session resumption by tickets and by session id, and ALPN
    /// `http/1.1` when `http` (the http and ws listeners).
    pub fn server_config(self: &Arc<Self>, http: bool) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        if http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// What a TLS listener needs: the certificate store and the handshake bound.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// The process's certificate.
    pub store: Arc<CertStore>,
    /// A client must complete its handshake this long after connecting
    /// (`--header-timeout`).
    pub handshake_timeout: Duration,
}

fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        why: e.to_string(),
    })?;
    Ok(CertifiedKey::from_der(certs, key, provider)?)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::Cert {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, names: &[&str]) -> TlsFiles {
        let key = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.cert, key.cert.pem()).unwrap();
        std::fs::write(&files.key, key.signing_key.serialize_pem()).unwrap();
        files
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("multiclient-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn presented(store: &CertStore) -> Vec<u8> {
        store.current.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn reload_swaps_the_certificate_and_a_broken_file_keeps_the_old_one() {
        let d = dir("reload");
        let files = write_pair(&d, &["localhost"]);
        let store = CertStore::load(files.clone()).unwrap();
        let first = presented(&store);
        write_pair(&d, &["localhost"]);
        store.reload().unwrap();
        let second = presented(&store);
        assert_ne!(first, second, "a new handshake gets the new certificate");
        std::fs::write(&files.cert, "not a certificate").unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.to_string().contains("cert.pem"), "{e}");
        assert_eq!(presented(&store), second, "the old certificate is kept");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let d = dir("mismatch");
        let files = write_pair(&d, &["localhost"]);
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&files.key, other.signing_key.serialize_pem()).unwrap();
        assert!(CertStore::load(files).is_err());
        let _ = std::fs::remove_dir_all(d);
    }
}
