//! A cluster's upstream TLS (DestinationRule `trafficPolicy.tls`), built once per compile.
//!
//! Modes: `DISABLE` is plaintext; `SIMPLE` and `MUTUAL` originate TLS with rustls (client
//! certificate for MUTUAL); `ISTIO_MUTUAL` needs Istio's CA, which the agent does not have, so
//! such a cluster refuses every request rather than send plaintext.
//!
//! Server checks follow Istio with its default mesh config (`ENABLE_AUTO_SNI` and
//! `VERIFY_CERTIFICATE_AT_CLIENT` on): the chain is verified against `caCertificates` (or the
//! credential's CA), else the system's trust store; the name against `subjectAltNames` when
//! given; without them and without `sni`, HTTP traffic gets Envoy's `auto_sni` and
//! `auto_san_validation` (SNI and checked name: the Host, here the cluster's service host, see
//! [`UpstreamTls::http_name`]); with `sni` but no `subjectAltNames` Envoy checks no name, and
//! neither does this. TCP traffic sends `sni` only when set (auto SNI is an HTTP feature).
//! `insecureSkipVerify` checks nothing but the handshake signatures.

use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::credential::KeyPair;
use super::{error, Credentials, Pem, TlsError};
use crate::config::ClientTlsSettings;

/// What a cluster does about TLS.
#[derive(Clone, Debug, Default)]
pub enum ClusterTls {
    /// `DISABLE`, or no `tls`: plaintext.
    #[default]
    Plaintext,
    /// `SIMPLE` or `MUTUAL`: TLS is originated.
    Originate(Arc<UpstreamTls>),
    /// Requests are refused (503 `UF`) and nothing is sent: `ISTIO_MUTUAL`, or settings whose
    /// files did not load (cluster source: the DestinationRule stays, its cluster refuses).
    Refused {
        /// The mode as configured.
        mode: &'static str,
        /// Why, for the local reply and `explain`.
        reason: Arc<str>,
    },
}

impl ClusterTls {
    /// Whether connections to the cluster's endpoints are plain TCP.
    pub fn is_plaintext(&self) -> bool {
        matches!(self, ClusterTls::Plaintext)
    }

    /// The TLS to originate, if any.
    pub fn originate(&self) -> Option<&Arc<UpstreamTls>> {
        match self {
            ClusterTls::Originate(tls) => Some(tls),
            _ => None,
        }
    }

    /// Why requests to the cluster are refused, if they are.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            ClusterTls::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

impl fmt::Display for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterTls::Plaintext => f.write_str("plaintext"),
            ClusterTls::Originate(tls) => write!(f, "{tls}"),
            ClusterTls::Refused { mode, reason } => write!(f, "{mode}: refused ({reason})"),
        }
    }
}

/// `SIMPLE` or `MUTUAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Server verified, no client certificate.
    Simple,
    /// Server verified, client certificate presented.
    Mutual,
}

/// The name an upstream connection announces (SNI) and is verified for.
#[derive(Clone, Debug)]
struct Target {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// Built TLS settings of one cluster: a rustls client config per use (HTTP/1.1, HTTP/2, TCP).
#[derive(Debug)]
pub struct UpstreamTls {
    /// The mode.
    pub mode: Mode,
    /// Fingerprint of the settings and of the bytes of every file read: connection pools key on
    /// it, so connections of different TLS identities never mix, and an unchanged identity keeps
    /// its warm connections across reloads.
    pub id: u64,
    http1: Target,
    h2: Target,
    tcp: Target,
    summary: String,
}

impl fmt::Display for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

impl UpstreamTls {
    /// Config and server name for HTTP traffic: ALPN `h2` when `http2` (gRPC), else `http/1.1`.
    ///
    /// The SNI is `sni`, else the cluster's service host: Envoy's `auto_sni` takes the request's
    /// Host, which mesh clients set to the service's name; taking the host the cluster was
    /// compiled for keeps one pool per TLS identity instead of one per Host value a client sends.
    pub fn http(&self, http2: bool) -> (Arc<ClientConfig>, ServerName<'static>) {
        let t = if http2 { &self.h2 } else { &self.http1 };
        (t.config.clone(), t.name.clone())
    }

    /// Originates TLS on `tcp` for a TCP route (no ALPN; SNI only when `sni` is set).
    ///
    /// # Errors
    /// The handshake failed.
    pub async fn connect_tcp(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        TlsConnector::from(self.tcp.config.clone()).connect(self.tcp.name.clone(), tcp).await.map_err(handshake_error)
    }
}

/// A failed handshake as the local reply and the access log tell it (Envoy's transport failure
/// reason starts with `TLS_error`).
pub fn handshake_error(err: std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), format!("TLS_error: {err}"))
}

/// The settings of one `tls` block, for the cluster of service `host`.
pub struct Settings<'a> {
    /// The block.
    pub tls: &'a ClientTlsSettings,
    /// The cluster's service host (auto SNI).
    pub host: &'a str,
    /// Where `credentialName` credentials come from.
    pub credentials: &'a Credentials,
}

/// Builds what a cluster does about TLS, reading the files the settings name.
///
/// # Errors
/// A file that cannot be read or holds nothing usable, named with its field.
pub fn build(settings: &Settings<'_>) -> Result<ClusterTls, TlsError> {
    let tls = settings.tls;
    let mode = match tls.mode.as_deref().unwrap_or("DISABLE") {
        "SIMPLE" => Mode::Simple,
        "MUTUAL" => Mode::Mutual,
        "ISTIO_MUTUAL" => return Ok(ClusterTls::Refused {
            mode: "ISTIO_MUTUAL",
            reason:
                "ISTIO_MUTUAL needs the mesh's workload certificates from Istio's CA, which this agent does not have; \
                         nothing is sent rather than plaintext"
                    .into(),
        }),
        // Validation refuses other modes before this is reached.
        _ => return Ok(ClusterTls::Plaintext),
    };
    let mut fingerprint = xxhash_rust::xxh3::Xxh3::new();
    (mode, &tls.sni, &tls.subject_alt_names, tls.insecure_skip_verify, settings.host).hash(&mut fingerprint);
    fn set(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }

    // The client certificate and key (MUTUAL) and the CA, from the credential or from files.
    let (pair, ca) = match set(&tls.credential_name) {
        Some(name) => {
            let pair = if mode == Mode::Mutual { Some(settings.credentials.key_pair(name)?) } else { None };
            (pair, settings.credentials.ca(name)?)
        }
        None => {
            let file = |v: &Option<String>, field| set(v).map(|p| Pem::read(Path::new(p), field)).transpose();
            let pair = match mode {
                Mode::Mutual => Some(KeyPair {
                    certificate: file(&tls.client_certificate, "clientCertificate")?
                        .ok_or_else(|| error("clientCertificate", "not set"))?,
                    key: file(&tls.private_key, "privateKey")?.ok_or_else(|| error("privateKey", "not set"))?,
                }),
                Mode::Simple => None,
            };
            (pair, file(&tls.ca_certificates, "caCertificates")?)
        }
    };
    for pem in pair.iter().flat_map(|p| [&p.certificate, &p.key]).chain(ca.as_ref()) {
        pem.bytes.hash(&mut fingerprint);
    }
    let client_auth = match &pair {
        Some(pair) => Some((pair.certificate.certificates()?, pair.key.private_key()?, &pair.key)),
        None => None,
    };
    let skip_verify = tls.insecure_skip_verify == Some(true);
    let roots = match (&ca, skip_verify) {
        (_, true) => None,
        (Some(ca), false) => Some(Arc::new(ca.roots()?)),
        (None, false) => Some(system_roots().map_err(|message| error("caCertificates", message))?),
    };

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let sans: Vec<ServerName<'static>> = tls
        .subject_alt_names
        .iter()
        .flatten()
        // URI names (spiffe://…) are not DNS or IP names: validation warns, and they match nothing.
        .filter_map(|n| ServerName::try_from(n.clone()).ok())
        .collect();
    let explicit_sni = set(&tls.sni).and_then(|s| ServerName::try_from(s.to_owned()).ok());
    let auto_name = ServerName::try_from(settings.host.to_owned()).ok();
    let wants_sans = tls.subject_alt_names.as_ref().is_some_and(|s| !s.is_empty());
    let check = |auto: bool| -> NameCheck {
        if wants_sans {
            NameCheck::AnyOf(sans.clone())
        } else if auto {
            // Envoy's auto_san_validation: the name the auto SNI announced.
            NameCheck::Sni
        } else {
            NameCheck::None
        }
    };
    let verifier = |names: NameCheck| -> Result<Arc<Verifier>, TlsError> {
        let webpki = match &roots {
            None => None,
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| error(ca.as_ref().map_or("caCertificates", |c| c.field), format!("{e}")))?,
            ),
        };
        Ok(Arc::new(Verifier { webpki, names, algorithms: provider.signature_verification_algorithms }))
    };
    let config = |verifier: Arc<Verifier>, alpn: &[&[u8]], sni: bool| -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("mode", format!("{e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &client_auth {
            None => builder.with_no_client_auth(),
            Some((chain, key, key_pem)) => {
                builder.with_client_auth_cert(chain.clone(), key.clone_key()).map_err(|e| key_pem.mismatch(e))?
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = sni;
        Ok(Arc::new(config))
    };
    // A name must be given to rustls even when none is sent or checked.
    let unsent = ServerName::try_from("upstream.invalid").map_err(|e| error("sni", format!("{e}")))?;
    let (http_name, http_auto) = match (&explicit_sni, &auto_name) {
        (Some(sni), _) => (sni.clone(), false),
        (None, Some(host)) => (host.clone(), true),
        // A wildcard or otherwise unusable host: no SNI, and no name to check but the SANs.
        (None, None) => (unsent.clone(), false),
    };
    let http_sni = explicit_sni.is_some() || auto_name.is_some();
    let http_verifier = verifier(check(http_auto))?;
    let tcp_verifier = verifier(check(false))?;
    let http1 = Target { config: config(http_verifier.clone(), &[b"http/1.1"], http_sni)?, name: http_name.clone() };
    let h2 = Target { config: config(http_verifier, &[b"h2"], http_sni)?, name: http_name.clone() };
    let tcp = Target {
        config: config(tcp_verifier, &[], explicit_sni.is_some())?,
        name: explicit_sni.clone().unwrap_or(unsent),
    };

    // What `explain` and `routes` show.
    let mut summary = String::from(if mode == Mode::Mutual { "MUTUAL" } else { "SIMPLE" });
    let sni = if http_sni { name_str(&http_name) } else { "-".into() };
    let _ = write!(summary, " sni {sni}");
    if skip_verify {
        summary.push_str(", insecureSkipVerify");
    } else {
        match &ca {
            Some(ca) => {
                let _ = write!(summary, ", ca {}", ca.origin);
            }
            None => summary.push_str(", ca system"),
        }
        if wants_sans {
            let names: Vec<&str> = tls.subject_alt_names.iter().flatten().map(String::as_str).collect();
            let _ = write!(summary, ", san {}", names.join(" "));
        } else if http_auto {
            summary.push_str(", san = sni");
        }
    }
    if let Some(pair) = &pair {
        let _ = write!(summary, ", cert {}", pair.certificate.origin);
    }
    Ok(ClusterTls::Originate(Arc::new(UpstreamTls { mode, id: fingerprint.finish(), http1, h2, tcp, summary })))
}

fn name_str(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => "?".into(),
    }
}

/// The system's trust store (`rustls-native-certs`: `SSL_CERT_FILE` / `SSL_CERT_DIR`, else the
/// distribution's bundle), read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "not set, and no system CA certificates were found to verify with ({})",
                    if why.is_empty() { "none installed".into() } else { why.join("; ") }
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Which name the server certificate must carry.
#[derive(Clone, Debug)]
enum NameCheck {
    /// The name announced (SNI).
    Sni,
    /// One of these (`subjectAltNames`).
    AnyOf(Vec<ServerName<'static>>),
    /// None: the chain alone (Envoy without SANs and without auto SAN validation).
    None,
}

/// Verifies a server certificate as the cluster's settings ask.
#[derive(Debug)]
struct Verifier {
    /// `None`: `insecureSkipVerify`.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    names: NameCheck,
    algorithms: WebPkiSupportedAlgorithms,
}

/// A certificate error about the name only: rustls's verifier checks the chain first, so this
/// means the chain was good.
fn wrong_name(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else { return Ok(ServerCertVerified::assertion()) };
        match &self.names {
            NameCheck::Sni => webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            NameCheck::None => {
                match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                    Err(err) if wrong_name(&err) => Ok(ServerCertVerified::assertion()),
                    verified => verified,
                }
            }
            NameCheck::AnyOf(names) => {
                let mut last = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
                for name in names {
                    match webpki.verify_server_cert(end_entity, intermediates, name, ocsp_response, now) {
                        Err(err) if wrong_name(&err) => last = err,
                        verified => return verified,
                    }
                }
                Err(last)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> ClientTlsSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn istio_mutual_is_refused_and_disable_is_plaintext() {
        let at = |yaml: &str| {
            build(&Settings {
                tls: &settings(yaml),
                host: "a.example.com",
                credentials: &Credentials::files("/nonexistent"),
            })
            .unwrap()
        };
        assert!(at("{mode: ISTIO_MUTUAL}").refusal().is_some_and(|r| r.contains("Istio's CA")));
        assert!(at("{mode: DISABLE}").is_plaintext());
        assert!(at("{}").is_plaintext());
    }

    /// A CA certificate written to a fresh file, and the file's path.
    fn ca_file(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("interceptor-utls-unit-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        path
    }

    #[test]
    fn the_identity_pools_key_on_changes_with_the_settings_and_the_files_bytes() {
        let path = ca_file("identity");
        let id = |yaml: &str, host: &str| {
            let built =
                build(&Settings { tls: &settings(yaml), host, credentials: &Credentials::files("/nonexistent") });
            built.unwrap().originate().map(|t| t.id).unwrap()
        };
        let simple = format!("{{mode: SIMPLE, caCertificates: {}}}", path.display());
        let first = id(&simple, "a.example.com");
        // Compiled again (a reload): the same identity, so warm connections are kept.
        assert_eq!(id(&simple, "a.example.com"), first);
        // Another SNI (host), other names, or another CA's bytes at the same path: another pool.
        assert_ne!(id(&simple, "b.example.com"), first);
        let sans = format!("{{mode: SIMPLE, caCertificates: {}, subjectAltNames: [a.example.com]}}", path.display());
        assert_ne!(id(&sans, "a.example.com"), first);
        std::fs::remove_file(&path).unwrap();
        let rotated = ca_file("identity");
        assert_eq!(rotated, path);
        assert_ne!(id(&simple, "a.example.com"), first);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn missing_files_name_their_field_and_path() {
        let err = |yaml: &str| {
            build(&Settings {
                tls: &settings(yaml),
                host: "a.example.com",
                credentials: &Credentials::files("/nonexistent"),
            })
            .unwrap_err()
        };
        let e = err("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}");
        assert_eq!(e.field, "caCertificates");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        let e = err("{mode: MUTUAL, clientCertificate: /nonexistent/c.pem, privateKey: /nonexistent/k.pem}");
        assert_eq!(e.field, "clientCertificate");
        let e = err("{mode: SIMPLE, credentialName: client}");
        assert_eq!(e.field, "credentialName");
        assert!(e.message.contains("/nonexistent/client"), "{e}");
    }
}
