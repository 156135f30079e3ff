//! The server certificate, swappable at run time: SIGHUP re-reads the files and new
//! handshakes use the new pair, while open connections keep theirs.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::ring::cipher_suite;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsFiles;

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("{path}: key type not supported: {message}")]
    BadKey { path: String, message: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a certificate chain and key from PEM files.
pub(crate) fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read(&files.cert_file)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: files.cert_file.display().to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert_file.display().to_string(),
        });
    }
    let key_pem = read(&files.key_file)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: files.key_file.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: files.key_file.display().to_string(),
        })?;
    let signing_key = any_supported_type(&key).map_err(|e| TlsError::BadKey {
        path: files.key_file.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// The resolver rustls asks for every handshake.
#[derive(Debug)]
pub(crate) struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Arc<ReloadableCert> {
        Arc::new(ReloadableCert {
            current: RwLock::new(key),
        })
    }

    pub(crate) fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The only cipher suites the agent offers: TLS 1.3's AEAD suites and, under TLS 1.2, ECDHE
/// (forward secret) with an AEAD. rustls has no CBC, RC4, static-RSA or DHE suites, but the
/// list is pinned here so a change of the library's defaults cannot widen it unnoticed
/// (tests/tls.rs checks it with `openssl s_client`).
const CIPHER_SUITES: &[rustls::SupportedCipherSuite] = &[
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// A rustls server config: TLS 1.2 and 1.3 only, [`CIPHER_SUITES`] only, ALPN h2 and
/// http/1.1.
pub(crate) fn server_config(
    resolver: Arc<ReloadableCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..rustls::crypto::ring::default_provider()
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
