//! A gateway server's TLS, built with rustls from its settings: certificate chain and key from PEM
//! files (or a `credentialName` directory), client certificates checked against the CA for
//! MUTUAL, versions and TLS 1.2 cipher suites as configured, ALPN offering h2 and http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, ProtocolVersion, RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::config::{TlsMode, TlsProtocolVersion};
use crate::routing::ServerTls;
pub use crate::tls::TlsError;
use crate::tls::{certificates, credential_ca, credential_dir, error, first_existing};

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The files a server's certificate, key and CA come from.
struct Files {
    certificate: (PathBuf, &'static str),
    key: (PathBuf, &'static str),
    ca: Option<(PathBuf, &'static str)>,
}

impl Files {
    fn of(tls: &ServerTls, credentials: &Path) -> Result<Self, TlsError> {
        if let Some(name) = &tls.credential_name {
            let dir = credential_dir(credentials, name)?;
            let ca = match tls.mode {
                TlsMode::Simple => None,
                // Istio reads the CA from the same Secret, or from `<name>-cacert`; when neither
                // exists the error names the Secret's own file.
                _ => Some((
                    credential_ca(credentials, name, &dir).unwrap_or_else(|| dir.join("ca.crt")),
                    "credentialName",
                )),
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
