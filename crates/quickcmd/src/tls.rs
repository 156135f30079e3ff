//! TLS for talking to agents: which certificates we trust (public roots, a pinned
//! certificate file, or — loudly — anything), the rustls configs for HTTPS and WebSocket,
//! and `gen-cert`, which makes a self-signed agent certificate so nobody needs openssl.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Which server certificates a connection accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The public web PKI (Mozilla's roots, built in).
    PublicRoots,
    /// Exactly the certificates of a PEM file: the agent's own self-signed certificate, or
    /// the CA that issued it.
    Pinned {
        source: PathBuf,
        certs: Vec<CertificateDer<'static>>,
    },
    /// Any certificate at all (`--insecure`). Handshake signatures are still checked, so
    /// this stops nothing but a man in the middle — which is the point of TLS.
    Insecure,
}

/// Why TLS could not be set up, or a certificate not made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate file {path} holds no PEM certificate")]
    NoCertificates { path: PathBuf },
    #[error("certificate file {path} is not valid PEM: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("host name `{0}` is not a valid DNS name or IP address")]
    BadHost(String),
    #[error("{path} already exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Trust {
    /// Loads the certificates of a PEM file to pin (blocking file read).
    pub fn pinned_from_file(path: &Path) -> Result<Trust, TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let certs = rustls_pemfile::certs(&mut bytes.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadPem {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificates {
                path: path.to_path_buf(),
            });
        }
        Ok(Trust::Pinned {
            source: path.to_path_buf(),
            certs,
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config for `trust`, without ALPN: HTTP/1.1 for reqwest, and the only
/// protocol a WebSocket upgrade can use.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let config = match trust {
        Trust::PublicRoots => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned { certs, .. } => {
            let verifier = AgentCertVerifier::pinned(certs.clone(), provider)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AgentCertVerifier::any(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Pinned: accepts a server whose end-entity certificate is byte-for-byte one of the
/// pinned certificates (a self-signed agent certificate is its own anchor) and names the
/// host we dialled; otherwise verifies the chain against the pinned certificates as roots,
/// name included. The name check binds a pin to its agent entry: with one `ca_cert` bundle
/// of several agents' certificates, agent A's certificate must not answer for agent B's
/// URL. `--insecure`: any certificate. Handshake signatures are always verified.
#[derive(Debug)]
struct AgentCertVerifier {
    accept_any: bool,
    pinned: Vec<CertificateDer<'static>>,
    chain_verifier: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl AgentCertVerifier {
    fn any(provider: Arc<CryptoProvider>) -> AgentCertVerifier {
        AgentCertVerifier {
            accept_any: true,
            pinned: Vec::new(),
            chain_verifier: None,
            provider,
        }
    }

    fn pinned(
        pinned: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<AgentCertVerifier, TlsError> {
        let mut roots = RootCertStore::empty();
        let (valid, _invalid) = roots.add_parsable_certificates(pinned.iter().cloned());
        // A pinned leaf that webpki cannot use as an anchor can still match exactly.
        let chain_verifier = if valid > 0 {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Setup(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(AgentCertVerifier {
            accept_any: false,
            pinned,
            chain_verifier,
            provider,
        })
    }
}

impl ServerCertVerifier for AgentCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept_any {
            return Ok(ServerCertVerified::assertion());
        }
        if self
            .pinned
            .iter()
            .any(|pinned| pinned.as_ref() == end_entity.as_ref())
        {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.chain_verifier {
            Some(verifier) => verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct GeneratedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for GeneratedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// File names `gen-cert` writes, matching the agent's documented paths.
pub const CERT_FILE_NAME: &str = "agent-cert.pem";
pub const KEY_FILE_NAME: &str = "agent-key.pem";

/// A self-signed ECDSA P-256 server certificate for `hosts` (DNS names and IP addresses,
/// all put in the subject alternative names; the first is also the common name), valid
/// from yesterday for `valid_days`. It is not a CA.
pub fn generate_cert(hosts: &[String], valid_days: u32) -> Result<GeneratedCert, TlsError> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let Some(first) = hosts.first() else {
        return Err(TlsError::Generate("at least one --host is needed".into()));
    };
    let mut params = CertificateParams::default();
    params.subject_alt_names = hosts
        .iter()
        .map(|host| match host.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) if !is_dns_name(host) => Err(TlsError::BadHost(host.clone())),
            Err(_) => host
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| TlsError::BadHost(host.clone())),
        })
        .collect::<Result<_, _>>()?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, first.as_str());
    name.push(DnType::OrganizationName, "QuickCMD agent");
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(valid_days));
    let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(GeneratedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Whether `name` is a DNS name a certificate can carry: dot-separated labels of
/// letters, digits and inner hyphens, optionally a leading `*.` wildcard.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Writes `agent-cert.pem` (0644) and `agent-key.pem` (0600) into `dir`, creating it;
/// refuses to replace existing files unless `force`. Returns both paths.
pub fn write_cert_files(
    dir: &Path,
    generated: &GeneratedCert,
    force: bool,
) -> Result<(PathBuf, PathBuf), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert_path = dir.join(CERT_FILE_NAME);
    let key_path = dir.join(KEY_FILE_NAME);
    if !force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(TlsError::Exists { path: path.clone() });
            }
        }
    }
    write_with_mode(&key_path, generated.key_pem.as_bytes(), 0o600)?;
    write_with_mode(&cert_path, generated.cert_pem.as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(error)?;
    // `mode` applies only to new files; a replaced key file must not keep looser bits.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_cert_writes_pem_files_with_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let generated =
            generate_cert(&["localhost".into(), "127.0.0.1".into()], 30).expect("certificate");
        assert!(generated
            .cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(generated.key_pem.contains("PRIVATE KEY"));
        let (cert, key) = write_cert_files(dir.path(), &generated, false).expect("write");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert!(matches!(
            write_cert_files(dir.path(), &generated, false),
            Err(TlsError::Exists { .. })
        ));
        write_cert_files(dir.path(), &generated, true).expect("force replaces");
        match Trust::pinned_from_file(&cert).expect("pin") {
            Trust::Pinned { certs, .. } => assert_eq!(certs.len(), 1),
            other => panic!("unexpected trust {other:?}"),
        }
    }

    #[test]
    fn gen_cert_refuses_bad_hosts() {
        assert!(matches!(
            generate_cert(&["bad host!".into()], 1),
            Err(TlsError::BadHost(_))
        ));
        assert!(generate_cert(&[], 1).is_err());
        assert!(is_dns_name("agent-1.example.com"));
        assert!(is_dns_name("*.example.com"));
        assert!(!is_dns_name("-a.example"));
        assert!(!is_dns_name("a..b"));
    }

    /// Two agents' self-signed certificates in one pinned bundle: each is accepted for its
    /// own name only, so one agent cannot answer for the other.
    #[test]
    fn a_pinned_certificate_answers_only_for_its_own_names() {
        let der = |generated: &GeneratedCert| {
            rustls_pemfile::certs(&mut generated.cert_pem.as_bytes())
                .next()
                .expect("one certificate")
                .expect("pem")
        };
        let a = der(&generate_cert(&["agent-a.example".into()], 1).expect("cert a"));
        let b =
            der(&generate_cert(&["agent-b.example".into(), "10.0.0.2".into()], 1).expect("cert b"));
        let verifier =
            AgentCertVerifier::pinned(vec![a.clone(), b.clone()], provider()).expect("verifier");
        let check = |cert: &CertificateDer<'static>, name: &str| {
            let name = ServerName::try_from(name.to_string()).expect("name");
            verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        };
        assert!(check(&a, "agent-a.example").is_ok());
        assert!(check(&b, "agent-b.example").is_ok());
        assert!(check(&b, "10.0.0.2").is_ok());
        for (cert, name) in [
            (&a, "agent-b.example"),
            (&b, "agent-a.example"),
            (&a, "10.0.0.2"),
        ] {
            let refused = check(cert, name).expect_err("a pinned certificate for another name");
            assert!(
                matches!(
                    refused,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                        | rustls::Error::InvalidCertificate(
                            rustls::CertificateError::NotValidForNameContext { .. }
                        )
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn pin_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a pem\n").expect("write");
        assert!(matches!(
            Trust::pinned_from_file(&path),
            Err(TlsError::NoCertificates { .. })
        ));
    }

    #[test]
    fn every_trust_mode_builds_a_config() {
        let generated = generate_cert(&["localhost".into()], 1).expect("certificate");
        let certs = rustls_pemfile::certs(&mut generated.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        for trust in [
            Trust::PublicRoots,
            Trust::Insecure,
            Trust::Pinned {
                source: "x".into(),
                certs,
            },
        ] {
            let config = client_config(&trust).expect("config");
            assert!(config.alpn_protocols.is_empty());
        }
    }
}
