//! A gateway server's TLS, built with rustls from its settings: certificate chain and key from PEM
//! files (or a `credentialName` directory), client certificates checked against the CA for
//! MUTUAL, versions and TLS 1.2 cipher suites as configured, ALPN offering h2 and http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, ProtocolVersion, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::config::{TlsMode, TlsProtocolVersion};
use crate::routing::ServerTls;

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a server's TLS could not be built: the field (below `tls`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsError {
    /// `serverCertificate`, `privateKey`, `caCertificates`, `credentialName` …
    pub field: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

fn error(field: &'static str, message: impl Into<String>) -> TlsError {
    TlsError { field, message: message.into() }
}

/// The files a server's certificate, key and CA come from.
struct Files {
    certificate: (PathBuf, &'static str),
    key: (PathBuf, &'static str),
    ca: Option<(PathBuf, &'static str)>,
}

/// The first of `names` that exists in `dir` (Kubernetes TLS Secret keys first, then Istio's
/// generic ones); the first name when none does, so the error names what was expected.
fn first_existing(dir: &Path, names: &[&str]) -> PathBuf {
    names.iter().map(|n| dir.join(n)).find(|p| p.exists()).unwrap_or_else(|| dir.join(names[0]))
}

impl Files {
    fn of(tls: &ServerTls, credentials: &Path) -> Result<Self, TlsError> {
        if let Some(name) = &tls.credential_name {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(error("credentialName", format!("{name:?} is not a credential name")));
            }
            let dir = credentials.join(name);
            if !dir.is_dir() {
                return Err(error("credentialName", format!("no credential directory {}", dir.display())));
            }
            let ca = match tls.mode {
                TlsMode::Simple => None,
                _ => {
                    // Istio reads the CA from the same Secret, or from `<name>-cacert`.
                    let own = first_existing(&dir, &["ca.crt", "cacert"]);
                    let separate = credentials.join(format!("{name}-cacert")).join("ca.crt");
                    Some((if own.exists() || !separate.exists() { own } else { separate }, "credentialName"))
                }
            };
            return Ok(Files {
                certificate: (first_existing(&dir, &["tls.crt", "cert"]), "credentialName"),
                key: (first_existing(&dir, &["tls.key", "key"]), "credentialName"),
                ca,
            });
        }
        let certificate = tls.certificate.as_deref().ok_or_else(|| error("serverCertificate", "not set"))?;
        let key = tls.private_key.as_deref().ok_or_else(|| error("privateKey", "not set"))?;
        let ca = match tls.mode {
            TlsMode::Simple => None,
            _ => Some((
                PathBuf::from(tls.ca_certificates.as_deref().ok_or_else(|| error("caCertificates", "not set"))?),
                "caCertificates",
            )),
        };
        Ok(Files {
            certificate: (PathBuf::from(certificate), "serverCertificate"),
            key: (PathBuf::from(key), "privateKey"),
            ca,
        })
    }
}

fn certificates(path: &Path, field: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(field, format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| error(field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(error(field, format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

/// rustls's name of a TLS 1.2 suite written as Envoy (OpenSSL) names it; `None` for suites
/// rustls does not implement (CBC, non-ECDHE, 3DES), which are left out.
fn rustls_suite(envoy_name: &str) -> Option<CipherSuite> {
    Some(match envoy_name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384" => CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305" => CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// The versions between `min` and `max` that rustls speaks (1.2 and 1.3; `TLS_AUTO` means
/// Envoy's defaults for a server: 1.2 to 1.3).
fn versions(min: TlsProtocolVersion, max: TlsProtocolVersion) -> Vec<&'static SupportedProtocolVersion> {
    let max = if max == TlsProtocolVersion::Auto { TlsProtocolVersion::V1_3 } else { max };
    let mut out = Vec::new();
    if min <= TlsProtocolVersion::V1_2 && max >= TlsProtocolVersion::V1_2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= TlsProtocolVersion::V1_3 {
        out.push(&rustls::version::TLS13);
    }
    out
}

/// Builds the server's rustls configuration, reading its files (`credentialName` directories
/// under `credentials`).
///
/// # Errors
/// A file that cannot be read or holds no usable PEM, a key that does not fit, a CA bundle
/// without certificates, or versions that leave nothing to speak.
pub fn server_config(tls: &ServerTls, credentials: &Path) -> Result<ServerConfig, TlsError> {
    let files = Files::of(tls, credentials)?;
    let chain = certificates(&files.certificate.0, files.certificate.1)?;
    let (key_path, key_field) = (&files.key.0, files.key.1);
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| error(key_field, format!("{}: no usable private key: {e}", key_path.display())))?;

    let mut provider = rustls::crypto::ring::default_provider();
    let wanted: Vec<CipherSuite> = tls.cipher_suites.iter().filter_map(|s| rustls_suite(s)).collect();
    if !tls.cipher_suites.is_empty() {
        // The names select TLS 1.2 suites only (as in Envoy); TLS 1.3's are always offered.
        provider
            .cipher_suites
            .retain(|s| s.version().version == ProtocolVersion::TLSv1_3 || wanted.contains(&s.suite()));
    }
    let provider: Arc<CryptoProvider> = Arc::new(provider);
    let versions = versions(tls.min_version, tls.max_version);
    if versions.is_empty() {
        return Err(error("maxProtocolVersion", "leaves no TLS version rustls speaks (1.2, 1.3)"));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| error("cipherSuites", format!("no cipher suite left for the versions: {e}")))?;
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some((path, field)) => {
            let field = *field;
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, field)? {
                roots.add(cert).map_err(|e| error(field, format!("{}: not a CA certificate: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if tls.mode == TlsMode::OptionalMutual { verifier.allow_unauthenticated() } else { verifier };
            let verifier = verifier
                .build()
                .map_err(|e| error(field, format!("{}: cannot verify clients: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| error(key_field, format!("{} does not fit the certificate: {e}", key_path.display())))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_min_and_max() {
        use TlsProtocolVersion::*;
        let of = |min, max| versions(min, max).iter().map(|v| v.version).collect::<Vec<_>>();
        assert_eq!(of(Auto, Auto), [ProtocolVersion::TLSv1_2, ProtocolVersion::TLSv1_3]);
        assert_eq!(of(V1_3, Auto), [ProtocolVersion::TLSv1_3]);
        assert_eq!(of(Auto, V1_2), [ProtocolVersion::TLSv1_2]);
        assert_eq!(of(V1_0, V1_1), []);
    }

    #[test]
    fn envoy_suite_names_map_to_rustls() {
        assert_eq!(
            rustls_suite("ECDHE-RSA-AES128-GCM-SHA256"),
            Some(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        );
        assert_eq!(rustls_suite("AES128-SHA"), None);
    }

    #[test]
    fn a_missing_file_names_the_field_and_the_path() {
        let tls = ServerTls {
            mode: TlsMode::Simple,
            certificate: Some("/nonexistent/cert.pem".into()),
            private_key: Some("/nonexistent/key.pem".into()),
            ca_certificates: None,
            credential_name: None,
            min_version: TlsProtocolVersion::Auto,
            max_version: TlsProtocolVersion::Auto,
            cipher_suites: Vec::new(),
        };
        let err = server_config(&tls, Path::new("/nonexistent")).unwrap_err();
        assert_eq!(err.field, "serverCertificate");
        assert!(err.message.contains("/nonexistent/cert.pem"), "{err}");
    }
}
