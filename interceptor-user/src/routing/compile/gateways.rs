//! Gateways: each server's port, protocol, hosts and TLS settings (validated already, by
//! `config::validate`), grouped by port, with warnings for what the agent does not serve; then the
//! VirtualServices bound to each gateway, host by host, as Istio's gateway code picks them
//! (namespace, then wildcard-aware host intersection).

use std::sync::Arc;

use super::virtual_services::L4Rules;
use super::Compiler;
use crate::config::{
    Gateway, Resource, Server, ServerTlsSettings, Severity, Source, TlsMode, TlsProtocolVersion, VirtualService,
};
use crate::endpoints::qualify_host;
use crate::routing::gateway::{
    hosts_intersect, resolve_gateway_name, GatewayServer, GatewaySummary, GatewayTable, ServerHost, ServerId,
    ServerProtocol, ServerTls, VirtualHost, MESH,
};
use crate::routing::index::RuleIndex;
use crate::routing::Rule;

fn creation_timestamp<T>(resource: &Resource<T>) -> &str {
    resource.meta.other.get("creationTimestamp").and_then(|v| v.as_str()).unwrap_or("~")
}

impl Compiler<'_> {
    /// Every Gateway's servers by port; the oldest Gateway's server wins a port whose protocol
    /// another one contradicts.
    pub(super) fn gateways(&mut self) -> GatewayTable {
        let mut table = GatewayTable::default();
        let mut ordered: Vec<&Resource<Gateway>> = self.snapshot.gateways.iter().collect();
        ordered.sort_by_key(|g| creation_timestamp(g).to_owned());
        for gw in ordered {
            let name: Arc<str> = format!("{}/{}", gw.meta.namespace, gw.meta.name).into();
            table
                .gateways
                .insert(name.clone(), GatewaySummary { name: name.clone(), selector: gw.spec.selector.clone() });
            for (i, server) in gw.spec.servers.iter().enumerate() {
                let Some(server) = self.server(gw, &name, i, server) else { continue };
                let on_port = table.ports.entry(server.port).or_default();
                // Istio merges TLS servers on one port (terminated or passed through, told apart
                // by SNI) and plain HTTP ones, never the two kinds, and nothing with opaque TCP.
                if let Some(first) = on_port.iter().find(|s| !s.protocol.shares_port_with(server.protocol)) {
                    self.diags.push(server.source.diagnostic(
                        Severity::Warning,
                        format!("{}.port", server.at),
                        format!(
                            "port {} already serves {:?} for {}; this server is ignored",
                            server.port, first.protocol, first.id
                        ),
                    ));
                    continue;
                }
                on_port.push(server);
            }
        }
        table
    }

    /// Server `i` of `gw` (validated); `None` for a kind the agent does not serve yet (warned).
    fn server(&mut self, gw: &Resource<Gateway>, name: &Arc<str>, i: usize, server: &Server) -> Option<GatewayServer> {
        let (src, at) = (&gw.source, format!("spec.servers[{i}]"));
        let port = server.port.as_ref()?;
        let number = u16::try_from(port.number).ok().filter(|n| *n > 0)?;
        let hosts = server.hosts.iter().map(|h| server_host(h, &gw.meta.namespace)).collect();
        let warn = |cx: &mut Self, field: &str, message: &str| {
            cx.diags.push(src.diagnostic(Severity::Warning, format!("{at}.{field}"), message));
        };
        if server.bind.as_deref().is_some_and(|b| !b.is_empty()) {
            warn(self, "bind", "not supported yet; the agent's gatewayAddress is used");
        }
        if server.default_endpoint.is_some() {
            warn(self, "defaultEndpoint", "not supported yet; ignored");
        }
        let protocol = port.protocol.to_ascii_uppercase();
        let (protocol, tls, https_redirect) = match (protocol.as_str(), &server.tls) {
            ("HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB", tls) => {
                (ServerProtocol::Http, None, tls.as_ref().is_some_and(|t| t.https_redirect))
            }
            ("TCP" | "MONGO" | "MYSQL" | "REDIS", None) => (ServerProtocol::Tcp, None, false),
            // An absent mode is PASSTHROUGH (Istio's default).
            ("HTTPS" | "TLS" | "TCP" | "MONGO" | "MYSQL" | "REDIS", Some(t))
                if t.mode.unwrap_or_default() == TlsMode::Passthrough =>
            {
                (ServerProtocol::Passthrough, None, false)
            }
            ("HTTPS", Some(t)) => (ServerProtocol::Https, Some(self.server_tls(t, src, &format!("{at}.tls"))?), false),
            // Istio: a non-HTTP server with terminating TLS is a TLS filter chain in front of a TCP
            // proxy routed by the `tcp` rules.
            ("TLS" | "TCP" | "MONGO" | "MYSQL" | "REDIS", Some(t)) => {
                (ServerProtocol::TerminatedTcp, Some(self.server_tls(t, src, &format!("{at}.tls"))?), false)
            }
            _ => {
                let message = format!("{} servers are not supported yet; this server is not served", port.protocol);
                warn(self, "port.protocol", &message);
                return None;
            }
        };
        Some(GatewayServer {
            id: ServerId { gateway: name.clone(), index: u32::try_from(i).unwrap_or(u32::MAX) },
            name: port.name.clone(),
            port: number,
            protocol,
            hosts,
            tls,
            https_redirect,
            source: src.clone(),
            at,
            tls_config: None,
            virtual_hosts: Vec::new(),
        })
    }

    /// The TLS settings of an HTTPS/TLS server; `None` when its mode terminates nothing here
    /// (warned).
    fn server_tls(&mut self, t: &ServerTlsSettings, src: &Source, at: &str) -> Option<ServerTls> {
        let mode = t.mode.unwrap_or_default();
        let warn = |cx: &mut Self, field: &str, message: String| {
            cx.diags.push(src.diagnostic(Severity::Warning, format!("{at}.{field}"), message));
        };
        for field in t.unsupported_fields() {
            warn(self, field, "not supported yet; ignored".into());
        }
        match mode {
            TlsMode::IstioMutual => {
                warn(
                    self,
                    "mode",
                    "ISTIO_MUTUAL needs Istio's CA, which the agent does not have; server not served".into(),
                );
                return None;
            }
            TlsMode::AutoPassthrough => {
                let message = "AUTO_PASSTHROUGH routes by SNI naming Istio's clusters (east-west gateways), \
                               which the agent does not do; server not served";
                warn(self, "mode", message.into());
                return None;
            }
            // Taken apart by `server` before this.
            TlsMode::Passthrough => return None,
            TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual => {}
        }
        let min = t.min_protocol_version.unwrap_or_default();
        if matches!(min, TlsProtocolVersion::V1_0 | TlsProtocolVersion::V1_1) {
            warn(self, "minProtocolVersion", "TLS below 1.2 is not offered (rustls); 1.2 is the lowest".into());
        }
        Some(ServerTls {
            mode,
            certificate: t.server_certificate.clone(),
            private_key: t.private_key.clone(),
            ca_certificates: t.ca_certificates.clone(),
            credential_name: t.credential_name.clone(),
            min_version: min,
            max_version: t.max_protocol_version.unwrap_or_default(),
            cipher_suites: t.cipher_suites.clone(),
        })
    }

    /// Binds `vs` (compiled to `rules`, and `l4` rules for passthrough and TCP servers) to the
    /// servers of the gateways it names, host by host.
    pub(super) fn bind_gateways(
        &mut self,
        vs: &Resource<VirtualService>,
        rules: &Arc<Vec<Rule>>,
        index: &Option<Arc<RuleIndex>>,
        l4: &L4Rules,
        table: &mut GatewayTable,
    ) {
        let namespace = vs.meta.namespace.as_str();
        let label: Arc<str> = format!("{namespace}/{}", vs.meta.name).into();
        let names: Vec<String> = vs.spec.gateways.iter().map(|g| resolve_gateway_name(g, namespace)).collect();
        for (i, gateway) in names.iter().enumerate().filter(|(_, g)| *g != MESH) {
            if !self.snapshot.gateways.iter().any(|g| format!("{}/{}", g.meta.namespace, g.meta.name) == *gateway) {
                self.diags.push(vs.source.diagnostic(
                    Severity::Warning,
                    format!("spec.gateways[{i}]"),
                    format!("no Gateway {gateway} is known; these rules route nothing there"),
                ));
                continue;
            }
            let mut bound = vec![false; vs.spec.hosts.len()];
            for server in table.ports.values_mut().flatten().filter(|s| &*s.id.gateway == gateway.as_str()) {
                for (h, host) in vs.spec.hosts.iter().enumerate() {
                    let domain = qualify_host(host, namespace).to_ascii_lowercase();
                    let admitted = server.hosts.iter().any(|sh| {
                        sh.namespace.as_deref().is_none_or(|ns| ns == namespace) && hosts_intersect(&sh.host, &domain)
                    });
                    if !admitted {
                        continue;
                    }
                    bound[h] = true;
                    if let Some(taken) = server.virtual_hosts.iter().find(|v| *v.domain == *domain) {
                        self.diags.push(vs.source.diagnostic(
                            Severity::Warning,
                            format!("spec.hosts[{h}]"),
                            format!(
                                "{domain} on {} is already routed by VirtualService {} (older); this one is ignored there",
                                server.id, taken.virtual_service
                            ),
                        ));
                        continue;
                    }
                    server.virtual_hosts.push(VirtualHost {
                        domain: domain.into(),
                        virtual_service: label.clone(),
                        rules: rules.clone(),
                        index: index.clone(),
                        tls_rules: l4.tls.clone(),
                        tcp_rules: l4.tcp.clone(),
                    });
                }
            }
            for (h, bound) in bound.iter().enumerate() {
                if !bound {
                    // istioctl analyze IST0132.
                    self.diags.push(vs.source.diagnostic(
                        Severity::Warning,
                        format!("spec.hosts[{h}]"),
                        format!(
                            "one or more host [{}] defined in VirtualService {label} not found in Gateway {gateway}",
                            vs.spec.hosts[h]
                        ),
                    ));
                }
            }
        }
    }
}

/// A server host as Istio reads it (validated): `ns/host`, `./host` (the Gateway's namespace),
/// `*/host` or a bare `host` (any namespace).
fn server_host(written: &str, gateway_namespace: &str) -> ServerHost {
    let (namespace, host) = match written.split_once('/') {
        None => (None, written),
        Some(("*", host)) => (None, host),
        Some((".", host)) => (Some(gateway_namespace.to_owned()), host),
        Some((namespace, host)) => (Some(namespace.to_owned()), host),
    };
    ServerHost { namespace, host: host.to_ascii_lowercase() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::routing::{GatewayEntry, RequestView, RouteTable};

    const GATEWAYS: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"shop/*.example.com\", \"*/api.example.com\"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: internal, namespace: shop}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"./*\"]
";

    /// The rule and gateway (or `NR`) a request with `host` and `path` entering port 80 gets.
    fn at_gateway(table: &RouteTable, host: &str, path: &str) -> String {
        at_server(table, None, host, path)
    }

    /// As [`at_gateway`], the candidates limited to the first server of `gateway`.
    fn at_server(table: &RouteTable, gateway: Option<&str>, host: &str, path: &str) -> String {
        let id = gateway.map(|g| ServerId { gateway: g.into(), index: 0 });
        let headers = http::HeaderMap::new();
        let req = RequestView {
            method: "GET",
            path,
            query: None,
            authority: host,
            scheme: "http",
            headers: &headers,
            port: 80,
            source: None,
        };
        let decided = table.route_gateway(&GatewayEntry { port: 80, server: id.as_ref() }, &req);
        let Some(rule) = decided.decision.and_then(|d| d.rule) else { return "NR".into() };
        format!("{}@{}", rule.label, decided.gateway.map_or("-", |g| &**g))
    }

    fn vs(namespace: &str, name: &str, hosts: &str, gateways: &str, http: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: {hosts}\n  gateways: {gateways}\n  http:\n{http}"
        )
    }

    const TO_V1: &str = "  - route: [{destination: {host: my-app.default.svc.cluster.local, subset: v1}}]\n";

    #[test]
    fn server_hosts_admit_virtual_services_by_namespace_and_host() {
        let config = [
            GATEWAYS.to_owned(),
            vs("shop", "store", "[store.example.com]", "[istio-system/public]", TO_V1),
            // Not in `shop`: the public gateway's `*.example.com` is only for shop's.
            vs("default", "blog", "[blog.example.com, api.example.com]", "[istio-system/public]", TO_V1),
        ]
        .join("---\n");
        let table = crate::routing::tests::compile(&config).unwrap();
        assert_eq!(at_gateway(&table, "store.example.com", "/"), "shop/store#0@istio-system/public");
        assert_eq!(at_gateway(&table, "blog.example.com", "/"), "NR");
        assert_eq!(at_gateway(&table, "api.example.com:80", "/"), "default/blog#0@istio-system/public");
        let warned = table.warnings().iter().any(|d| {
            d.resource == "VirtualService default/blog"
                && d.field == "spec.hosts[0]"
                && d.message.contains("not found in Gateway")
        });
        assert!(warned, "{:?}", table.warnings());
        // Not bound to the mesh: captured traffic to my-app is untouched by these.
        assert!(table
            .route(
                "my-app.default.svc.cluster.local",
                &RequestView {
                    method: "GET",
                    path: "/",
                    query: None,
                    authority: "my-app",
                    scheme: "http",
                    headers: &http::HeaderMap::new(),
                    port: 80,
                    source: None,
                }
            )
            .rule
            .is_some_and(|r| &*r.label == "default"));
    }

    #[test]
    fn match_level_gateways_narrow_rules_per_gateway() {
        let http = "  - match: [{uri: {prefix: /admin}, gateways: [internal]}]
    route: [{destination: {host: my-app.default.svc.cluster.local, subset: v2}}]
  - match: [{gateways: [mesh]}]
    route: [{destination: {host: my-app.default.svc.cluster.local, subset: v2}}]
  - route: [{destination: {host: my-app.default.svc.cluster.local, subset: v1}}]
";
        let config =
            [GATEWAYS.to_owned(), vs("shop", "shop", "[\"*.example.com\"]", "[internal, istio-system/public]", http)]
                .join("---\n");
        let table = crate::routing::tests::compile(&config).unwrap();
        // Both gateways serve port 80 with the same virtual host: the older Gateway's comes first.
        assert_eq!(at_gateway(&table, "a.example.com", "/admin"), "shop/shop#2@istio-system/public");
        assert_eq!(at_server(&table, Some("shop/internal"), "a.example.com", "/admin"), "shop/shop#0@shop/internal");
        // The mesh-only rule never applies at a gateway.
        assert_eq!(at_server(&table, Some("shop/internal"), "a.example.com", "/"), "shop/shop#2@shop/internal");
    }

    #[test]
    fn servers_are_checked_as_istio_validates_them() {
        let config = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bad}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
  - port: {number: 80, name: https, protocol: HTTP}
    hosts: []
    tls: {mode: SIMPLE, serverCertificate: /c, privateKey: /k}
  - port: {number: 8443, name: mutual, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: MUTUAL, serverCertificate: /c, privateKey: /k}
  - port: {number: 9000, name: odd, protocol: QUIC}
    hosts: [\"bad host\"]
";
        let err = crate::routing::tests::compile(config).unwrap_err();
        let errors: Vec<(String, String)> = err
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.field.clone(), d.message.clone()))
            .collect();
        let has = |field: &str, text: &str| errors.iter().any(|(f, m)| f == field && m.contains(text));
        assert!(has("spec.servers[0].tls", "must have TLS settings"), "{errors:?}");
        assert!(has("spec.servers[1].port.name", "must be unique"), "{errors:?}");
        assert!(has("spec.servers[1].hosts", "at least one host"), "{errors:?}");
        assert!(has("spec.servers[1].tls", "plain text HTTP ports"), "{errors:?}");
        assert!(has("spec.servers[2].tls.caCertificates", "requires a client CA bundle"), "{errors:?}");
        assert!(has("spec.servers[3].port.protocol", "invalid protocol"), "{errors:?}");
        assert!(has("spec.servers[3].hosts[0]", "invalid"), "{errors:?}");
    }

    #[test]
    fn the_gateway_example_routes_the_seed_at_the_gateway() {
        let mut snapshot = crate::config::Snapshot::default();
        let mut errors = Vec::new();
        let mesh = include_str!("../../../../config/mesh/my-app.yaml");
        let gateway = include_str!("../../../../config/gateway/my-app-gateway.yaml");
        snapshot.add_file(std::path::Path::new("my-app.yaml"), mesh, "default", &mut errors);
        snapshot.add_file(std::path::Path::new("my-app-gateway.yaml"), gateway, "default", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let table = RouteTable::compile(&snapshot).unwrap();
        assert!(table.warnings().is_empty(), "{:?}", table.warnings());
        assert_eq!(at_server(&table, None, "my-app.example.com", "/"), "NR", "nothing on port 80");
        let https = ServerId { gateway: "default/my-app-gateway".into(), index: 0 };
        let headers = http::HeaderMap::new();
        let req = RequestView {
            method: "GET",
            path: "/",
            query: None,
            authority: "my-app.example.com:8443",
            scheme: "https",
            headers: &headers,
            port: 8443,
            source: None,
        };
        let decided = table.route_gateway(&GatewayEntry { port: 8443, server: Some(&https) }, &req);
        let rule = decided.decision.and_then(|d| d.rule).map(|r| r.label.to_string());
        assert_eq!(rule.as_deref(), Some("default/my-app-edge#1"));
        let redirect =
            table.route_gateway(&GatewayEntry { port: 8080, server: None }, &RequestView { port: 8080, ..req });
        assert!(redirect.https_redirect);
        let mut beta = http::HeaderMap::new();
        beta.insert("user-agent", "Mozilla beta-tester".parse().unwrap());
        let explained =
            table.explain_gateway("default/my-app-gateway", &RequestView { headers: &beta, ..req }).to_string();
        assert!(explained.contains("server: default/my-app-gateway#0 (port 8443, TLS terminated)"), "{explained}");
        assert!(explained.contains("✔ default/my-app-edge#0"), "{explained}");
    }

    #[test]
    fn server_hosts_read_as_istio() {
        let any = |host: &str| ServerHost { namespace: None, host: host.into() };
        assert_eq!(server_host("*/a.example.com", "gw"), any("a.example.com"));
        assert_eq!(server_host("a.example.com", "gw"), any("a.example.com"));
        assert_eq!(
            server_host("./A.example.com", "gw"),
            ServerHost { namespace: Some("gw".into()), host: "a.example.com".into() }
        );
        assert_eq!(server_host("shop/*.example.com", "gw").namespace.as_deref(), Some("shop"));
        assert_eq!(server_host("*", "gw"), any("*"));
    }
}
