//! Gateway rules (Istio's `ValidateGateway`): the name, at least one server, each server's hosts
//! (`namespace/host`), port (number, protocol, a name unique in the Gateway) and TLS settings.

use std::collections::HashSet;

use super::rules::{self, Protocol};
use super::{Findings, Validate};
use crate::config::{Gateway, GatewayPort, ObjectMeta, Server, ServerTlsSettings, TlsMode, TlsProtocolVersion};

/// Cipher suite names Envoy (BoringSSL) accepts, as Istio's `security.IsValidCipherSuite` lists them.
pub(crate) const ENVOY_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

impl Validate for Gateway {
    fn validate(&self, meta: &ObjectMeta, f: &mut Findings<'_>) {
        if !rules::is_dns1123_label(&meta.name) {
            f.error("metadata.name", format!("invalid gateway name: {:?}", meta.name));
        }
        if self.servers.is_empty() {
            f.error("spec.servers", "gateway must have at least one server");
        }
        let mut port_names = HashSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            validate_server(server, &at, f);
            let Some(port) = &server.port else { continue };
            if !port_names.insert(port.name.as_str()) {
                f.error(
                    format!("{at}.port.name"),
                    format!("port names in servers must be unique: duplicate name {}", port.name),
                );
            }
            let http = Protocol::parse(&port.protocol).is_some_and(Protocol::is_http);
            if !http && server.tls.as_ref().is_some_and(|t| t.https_redirect) {
                f.warning(format!("{at}.tls.httpsRedirect"), "tls.httpsRedirect should only be used with http servers");
            }
        }
        f.errors(|| "spec.selector".into(), rules::labels(&self.selector));
    }
}

fn validate_server(server: &Server, at: &str, f: &mut Findings<'_>) {
    if server.hosts.is_empty() {
        f.error(format!("{at}.hosts"), "server config must contain at least one host");
    }
    for (j, host) in server.hosts.iter().enumerate() {
        f.check(format!("{at}.hosts[{j}]"), namespace_slash_host(host));
    }
    let port_ok = validate_port(server.port.as_ref(), at, f);
    if let Some(bind) = server.bind.as_deref().filter(|b| !b.is_empty() && !b.starts_with("unix://")) {
        if !rules::is_ip(bind) {
            f.error(format!("{at}.bind"), format!("{bind} is not a valid IP"));
        }
    }
    if let Some(tls) = &server.tls {
        validate_tls(tls, &format!("{at}.tls"), f);
    }
    let (Some(port), true) = (&server.port, port_ok) else { return };
    let Some(protocol) = Protocol::parse(&port.protocol) else { return };
    match (&server.tls, protocol.is_tls()) {
        (None, true) => f.error(format!("{at}.tls"), "server must have TLS settings for HTTPS/TLS protocols"),
        (Some(tls), false) if protocol.is_http() => {
            let passthrough = matches!(tls.mode.unwrap_or_default(), TlsMode::Passthrough | TlsMode::AutoPassthrough);
            let material =
                tls.ca_certificates.is_some() || tls.private_key.is_some() || tls.server_certificate.is_some();
            if !passthrough || material {
                f.error(format!("{at}.tls"), "server cannot have TLS settings for plain text HTTP ports");
            }
        }
        (Some(_), false) => f.error(format!("{at}.tls"), "server cannot have TLS settings for non HTTPS/TLS ports"),
        _ => {}
    }
}

/// Whether the port is there and right (Istio checks the server's TLS against it only then).
fn validate_port(port: Option<&GatewayPort>, at: &str, f: &mut Findings<'_>) -> bool {
    let Some(port) = port else {
        f.error(format!("{at}.port"), "port is required");
        return false;
    };
    let before = f.error_count();
    if Protocol::parse(&port.protocol).is_none() {
        f.error(
            format!("{at}.port.protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP",
                port.protocol
            ),
        );
    }
    f.check(format!("{at}.port.number"), rules::port(u64::from(port.number)));
    if port.target_port.is_some_and(|p| p > 0) {
        f.error(format!("{at}.port.targetPort"), "targetPort has no impact on Gateways");
    }
    if port.name.is_empty() {
        f.error(format!("{at}.port.name"), "port name must be set");
    }
    f.error_count() == before
}

/// A server host: `namespace/dnsName` (`*`, `.` or a namespace), or a bare DNS name (the older
/// form, any namespace); the name may start with a wildcard.
fn namespace_slash_host(host: &str) -> Result<(), String> {
    let Some((namespace, name)) = host.split_once('/') else {
        return rules::wildcard_domain(host);
    };
    if namespace.is_empty() || name.is_empty() {
        return Err("config namespace and dnsName in host entry cannot be empty".into());
    }
    if namespace != "*" && namespace != "." && !rules::is_dns1123_label(namespace) {
        return Err(format!("invalid namespace value {namespace:?} in gateway"));
    }
    rules::wildcard_domain(name)
}

/// Istio's `validateTLSOptions` for a server.
fn validate_tls(tls: &ServerTlsSettings, at: &str, f: &mut Findings<'_>) {
    let mode = tls.mode.unwrap_or_default();
    let old = matches!(tls.min_protocol_version, Some(TlsProtocolVersion::V1_0 | TlsProtocolVersion::V1_1));
    if old && tls.cipher_suites.is_empty() {
        f.warning(
            format!("{at}.minProtocolVersion"),
            "TLS version below TLSV1_2 require setting compatible ciphers as by default they no longer include compatible ciphers.",
        );
    }
    let (mut valid, mut invalid, mut duplicate) = (HashSet::new(), Vec::new(), Vec::new());
    for suite in &tls.cipher_suites {
        if !ENVOY_CIPHER_SUITES.contains(&suite.as_str()) {
            invalid.push(suite.as_str());
        } else if !valid.insert(suite.as_str()) {
            duplicate.push(suite.as_str());
        }
    }
    for (list, what) in [(&mut invalid, "invalid"), (&mut duplicate, "duplicate")] {
        if !list.is_empty() {
            list.sort_unstable();
            f.warning(format!("{at}.cipherSuites"), format!("ignoring {what} cipher suites: {list:?}"));
        }
    }
    let credential_names = !tls.credential_names.is_empty();
    if mode == TlsMode::IstioMutual {
        for (field, set) in [
            ("server certificate", tls.server_certificate.is_some()),
            ("private key", tls.private_key.is_some()),
            ("CA bundle", tls.ca_certificates.is_some()),
            ("tlsCertificates", tls.tls_certificates.is_some()),
            ("credentialName", tls.credential_name.is_some()),
            ("credentialNames", credential_names),
        ] {
            if set {
                f.error(at, format!("ISTIO_MUTUAL TLS cannot have associated {field}"));
            }
        }
        return;
    }
    let certificates = tls.ca_crl.is_some()
        || tls.server_certificate.is_some()
        || tls.private_key.is_some()
        || tls.ca_certificates.is_some()
        || tls.tls_certificates.is_some()
        || tls.credential_name.is_some()
        || credential_names;
    if matches!(mode, TlsMode::Passthrough | TlsMode::AutoPassthrough) && certificates {
        f.warning(format!("{at}.mode"), format!("{mode:?} mode does not use certificates, they will be ignored"));
    }
    let sources = [
        tls.server_certificate.is_some() && tls.private_key.is_some(),
        tls.credential_name.is_some(),
        credential_names,
        tls.tls_certificates.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        f.error(
            at,
            "only one of credential_name, credential_names, server_certificate/private_key, tls_certificates should be specified",
        );
    }
    let terminating = matches!(mode, TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual);
    if terminating && (tls.credential_name.is_some() || credential_names) {
        // The credential holds certificate, key and CA: nothing else is required.
        return;
    }
    if terminating {
        let prefix = if mode == TlsMode::Simple { "SIMPLE TLS" } else { "MUTUAL TLS" };
        if mode != TlsMode::Simple && tls.ca_certificates.is_none() {
            f.error(format!("{at}.caCertificates"), format!("{prefix} requires a client CA bundle"));
        }
        // Inline `tlsCertificates` are not read by the agent (warned when compiling).
        if tls.tls_certificates.is_none() {
            if tls.server_certificate.is_none() {
                f.error(format!("{at}.serverCertificate"), format!("{prefix} requires a server certificate"));
            }
            if tls.private_key.is_none() {
                f.error(format!("{at}.privateKey"), format!("{prefix} requires a private key"));
            }
        }
    }
    if tls.ca_crl.is_some() {
        if tls.credential_name.is_some() {
            f.error(
                format!("{at}.caCrl"),
                "CRL is not supported with credentialName. CRL has to be specified in the credential",
            );
        }
        if mode == TlsMode::Simple {
            f.error(format!("{at}.caCrl"), "CRL is not supported with SIMPLE TLS");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts_take_a_namespace_or_none() {
        assert!(namespace_slash_host("*/a.example.com").is_ok());
        assert!(namespace_slash_host("./*.example.com").is_ok());
        assert!(namespace_slash_host("shop/*").is_ok());
        assert!(namespace_slash_host("a.example.com").is_ok());
        assert!(namespace_slash_host("Bad_NS/a.com").unwrap_err().contains("invalid namespace"));
        assert!(namespace_slash_host("/a.com").unwrap_err().contains("cannot be empty"));
        assert!(namespace_slash_host("shop/a.*.com").is_err());
    }
}
