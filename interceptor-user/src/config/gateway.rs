//! Wire types of Istio's `Gateway` (networking.istio.io v1, v1beta1, v1alpha3), field for field.
//!
//! As with the other kinds, unknown fields are errors; fields the agent does not act on are kept
//! as raw values so compiling can warn about them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// `Gateway.spec`: listeners (servers) on the workloads its `selector` picks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Servers: a port, its protocol, the hosts it serves and its TLS settings.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// Labels of the workloads (here: agents) that serve this gateway; empty selects every one.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

/// One `servers[]` entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port the gateway listens on.
    pub port: Option<GatewayPort>,
    /// Address or Unix socket to bind to: not supported yet (the agent's `gatewayAddress` is used).
    pub bind: Option<String>,
    /// `namespace/host` entries (`*/`, `./` or a namespace; wildcard hosts allowed); a host
    /// without a namespace means `*/host`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS settings; required for HTTPS and TLS, on HTTP only for `httpsRedirect`.
    pub tls: Option<ServerTlsSettings>,
    /// Default endpoint: not supported yet.
    pub default_endpoint: Option<String>,
    /// Name, used in stats.
    #[serde(default)]
    pub name: String,
}

/// `servers[].port`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTPS`, `HTTP2`, `GRPC`, `GRPC-WEB`, `TLS`, `TCP`, `MONGO` (case-insensitive).
    #[serde(default)]
    pub protocol: String,
    /// Port name; unique among the gateway's servers.
    #[serde(default)]
    pub name: String,
    /// Deprecated; ignored as Istio does for gateways.
    pub target_port: Option<u32>,
}

/// `servers[].tls`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Answer every plain HTTP request with a 301 to https.
    #[serde(default)]
    pub https_redirect: bool,
    /// `PASSTHROUGH` (when absent), `SIMPLE`, `MUTUAL`, `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL`,
    /// `OPTIONAL_MUTUAL`.
    pub mode: Option<TlsMode>,
    /// Certificate chain file (PEM).
    pub server_certificate: Option<String>,
    /// Private key file (PEM).
    pub private_key: Option<String>,
    /// CA certificates that client certificates must chain to (MUTUAL), PEM file.
    pub ca_certificates: Option<String>,
    /// Certificate revocation list: not supported yet.
    pub ca_crl: Option<String>,
    /// Name of the credential holding certificate, key and CA: with files, a directory of PEM
    /// files under the agent's `credentials` directory; from the API server, a Secret of the
    /// agent's namespace.
    pub credential_name: Option<String>,
    /// Several credentials (RSA and ECDSA): not supported yet.
    #[serde(default)]
    pub credential_names: Vec<String>,
    /// Inline certificate sets: not supported yet.
    pub tls_certificates: Option<Value>,
    /// Names a client certificate must carry: not supported yet.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SPKI pins: not supported yet.
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    /// Certificate hash pins: not supported yet.
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version accepted.
    pub min_protocol_version: Option<TlsProtocolVersion>,
    /// Highest TLS version accepted.
    pub max_protocol_version: Option<TlsProtocolVersion>,
    /// Cipher suites for TLS 1.2 and below, by their OpenSSL/Envoy names.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

impl ServerTlsSettings {
    /// Names of the fields set here that the agent does not act on.
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        [
            ("caCrl", self.ca_crl.is_some()),
            ("credentialNames", !self.credential_names.is_empty()),
            ("tlsCertificates", self.tls_certificates.is_some()),
            ("subjectAltNames", !self.subject_alt_names.is_empty()),
            ("verifyCertificateSpki", !self.verify_certificate_spki.is_empty()),
            ("verifyCertificateHash", !self.verify_certificate_hash.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// `tls.mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Forward the TLS stream as it is, routed by SNI (`tls` rules); the proto's zero value, so
    /// a `tls` block without `mode` means it.
    #[default]
    Passthrough,
    /// Terminate TLS with the server's certificate.
    Simple,
    /// Terminate TLS and require a client certificate signed by `caCertificates`.
    Mutual,
    /// Passthrough with the SNI naming the cluster (Istio's east-west gateway).
    AutoPassthrough,
    /// Mutual TLS with Istio's own certificates.
    IstioMutual,
    /// Ask for a client certificate but accept connections without one.
    OptionalMutual,
}

/// `minProtocolVersion` / `maxProtocolVersion`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsProtocolVersion {
    /// The TLS library's choice.
    #[default]
    #[serde(rename = "TLS_AUTO")]
    Auto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    V1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    V1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    V1_3,
}
