//! TLS for the tests: one self-signed leaf certificate per test process, and clients whose
//! only trust anchor is that certificate.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// A certificate and key on disk that an agent serves with, made elsewhere (e.g. by
/// `quickcmd agent gen-cert`).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub(crate) struct TestCert {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    cert_der: Vec<u8>,
}

/// One self-signed leaf certificate (not a CA) for 127.0.0.1 and localhost per test process.
pub(crate) fn test_cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
                .expect("rcgen makes a self-signed certificate");
        TestCert {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
            cert_der: certified.cert.der().to_vec(),
        }
    })
}

/// A rustls client config whose only trust anchor is the test certificate.
pub fn rustls_client() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            test_cert().cert_der.clone(),
        ))
        .expect("the test certificate is a valid trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A reqwest client (rustls, no proxy) whose only trust anchor is the test certificate.
pub fn http_client() -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes())
        .expect("reqwest reads the test certificate");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .no_proxy()
        .build()
        .expect("reqwest client builds")
}
