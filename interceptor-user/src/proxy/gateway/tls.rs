//! A gateway server's TLS, built with rustls from its settings: certificate chain and key from PEM
//! files or a `credentialName` credential (a directory, or a Kubernetes Secret), client
//! certificates checked against the CA for MUTUAL, versions and TLS 1.2 cipher suites as
//! configured, ALPN offering h2 and http/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{CipherSuite, ProtocolVersion, ServerConfig, SupportedProtocolVersion};

use crate::config::{TlsMode, TlsProtocolVersion};
use crate::routing::ServerTls;
use crate::tls::credential::KeyPair;
pub use crate::tls::TlsError;
use crate::tls::{error, Credentials, Pem};

/// ALPN protocols offered, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A server's certificate, key and (MUTUAL) client CA, read from wherever its settings say.
struct Material {
    pair: KeyPair,
    ca: Option<Pem>,
}

impl Material {
    fn of(tls: &ServerTls, credentials: &Credentials) -> Result<Self, TlsError> {
        let wants_ca = tls.mode != TlsMode::Simple;
        if let Some(name) = &tls.credential_name {
            let pair = credentials.key_pair(name)?;
            // Istio reads the CA from `<name>-cacert`, else from the credential itself.
            let ca = if wants_ca { Some(credentials.required_ca(name)?) } else { None };
            return Ok(Material { pair, ca });
        }
        let certificate = tls.certificate.as_deref().ok_or_else(|| error("serverCertificate", "not set"))?;
        let key = tls.private_key.as_deref().ok_or_else(|| error("privateKey", "not set"))?;
        let pair = KeyPair {
            certificate: Pem::read(Path::new(certificate), "serverCertificate")?,
            key: Pem::read(Path::new(key), "privateKey")?,
        };
        let ca = match (wants_ca, tls.ca_certificates.as_deref()) {
            (false, _) => None,
            (true, None) => return Err(error("caCertificates", "not set")),
            (true, Some(path)) => Some(Pem::read(Path::new(path), "caCertificates")?),
        };
        Ok(Material { pair, ca })
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

/// Builds the server's rustls configuration, reading its files or credential.
///
/// # Errors
/// A file or credential that cannot be read or holds no usable PEM, a key that does not fit, a
/// CA bundle without certificates, or versions that leave nothing to speak.
pub fn server_config(tls: &ServerTls, credentials: &Credentials) -> Result<ServerConfig, TlsError> {
    let material = Material::of(tls, credentials)?;
    let chain = material.pair.certificate.certificates()?;
    let key = material.pair.key.private_key()?;

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
    let builder = match &material.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), provider);
            let verifier =
                if tls.mode == TlsMode::OptionalMutual { verifier.allow_unauthenticated() } else { verifier };
            let verifier =
                verifier.build().map_err(|e| error(ca.field, format!("{}: cannot verify clients: {e}", ca.origin)))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| material.pair.key.mismatch(e))?;
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
        let err = server_config(&tls, &Credentials::files("/nonexistent")).unwrap_err();
        assert_eq!(err.field, "serverCertificate");
        assert!(err.message.contains("/nonexistent/cert.pem"), "{err}");
    }

    /// A CA and a leaf for `name` signed by it, as PEM: (ca, cert, key).
    fn pki(name: &str) -> (String, String, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        (ca.pem(), leaf.pem(), key.serialize_pem())
    }

    use crate::tls::credential::test_secrets as secrets;

    fn server(mode: TlsMode, credential: &str) -> ServerTls {
        ServerTls {
            mode,
            certificate: None,
            private_key: None,
            ca_certificates: None,
            credential_name: Some(credential.into()),
            min_version: TlsProtocolVersion::Auto,
            max_version: TlsProtocolVersion::Auto,
            cipher_suites: Vec::new(),
        }
    }

    #[test]
    fn a_secret_gives_a_server_its_certificate_and_mutual_its_ca_from_the_cacert_secret() {
        let (ca, cert, key) = pki("a.example.com");
        let (_, _, other_key) = pki("b.example.com");
        let c = secrets(&[
            ("tls", &[("tls.crt", &cert), ("tls.key", &key)]),
            ("tls-cacert", &[("ca.crt", &ca)]),
            ("mismatch", &[("tls.crt", &cert), ("tls.key", &other_key)]),
            ("badca", &[("cert", &cert), ("key", &key), ("cacert", "garbage")]),
        ]);
        assert!(server_config(&server(TlsMode::Simple, "tls"), &c).is_ok());
        assert!(server_config(&server(TlsMode::Mutual, "tls"), &c).is_ok());
        let err = server_config(&server(TlsMode::Simple, "mismatch"), &c).unwrap_err();
        assert_eq!(err.field, "credentialName");
        assert!(err.message.starts_with("Secret gw/mismatch key tls.key does not fit the certificate"), "{err}");
        let err = server_config(&server(TlsMode::Mutual, "badca"), &c).unwrap_err();
        assert!(err.message.starts_with("Secret gw/badca key cacert: no PEM certificate"), "{err}");
        let err = server_config(&server(TlsMode::Mutual, "mismatch"), &c).unwrap_err();
        assert!(err.message.starts_with("Secret gw/mismatch: no CA"), "{err}");
        let no_ca = secrets(&[("tls", &[("tls.crt", &cert), ("tls.key", &key)])]);
        let err = server_config(&server(TlsMode::Mutual, "tls"), &no_ca).unwrap_err();
        assert!(err.message.contains("Secret gw/tls: no CA to verify client certificates with"), "{err}");
    }
}
