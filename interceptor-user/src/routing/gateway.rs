//! Gateways compiled: the servers each port's listener serves (hosts, protocol, TLS settings) and
//! the virtual hosts — the hosts of the VirtualServices bound to a gateway, as Istio picks them —
//! among which a request's Host chooses, as Envoy's route table does at an Istio ingress gateway.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::index::RuleIndex;
use super::{Decision, Rule, TcpRule};
use crate::config::{Source, TlsMode, TlsProtocolVersion};

/// The name VirtualServices use for sidecar (here: captured) traffic.
pub const MESH: &str = "mesh";

/// A gateway reference as Istio resolves it, relative to the namespace of the VirtualService that
/// writes it: `ns/name` stays, `./name` and `name` take the namespace, the legacy
/// `name.ns.svc.cluster.local` becomes `ns/name`, and `mesh` stays `mesh`.
pub fn resolve_gateway_name(name: &str, namespace: &str) -> String {
    if name == MESH {
        return MESH.to_owned();
    }
    match name.split_once('/') {
        Some((".", rest)) => format!("{namespace}/{rest}"),
        Some(_) => name.to_owned(),
        None => match name.split_once('.') {
            None => format!("{namespace}/{name}"),
            Some((short, rest)) => {
                let ns = rest.split_once('.').map_or(rest, |(ns, _)| ns);
                format!("{ns}/{short}")
            }
        },
    }
}

/// Istio's host match (`host.Name.Matches`): equal names, or a wildcard (`*`, `*.example.com`)
/// covering the other name — in either direction, so two wildcards match when one's suffix ends
/// the other's.
pub fn hosts_intersect(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a_suffix), Some(b_suffix)) => {
            if a_suffix.len() < b_suffix.len() {
                b_suffix.ends_with(a_suffix)
            } else {
                a_suffix.ends_with(b_suffix)
            }
        }
        (Some(suffix), None) => b.ends_with(suffix),
        (None, Some(suffix)) => a.ends_with(suffix),
        (None, None) => a == b,
    }
}

/// How well a virtual host's domain matches a request host, Envoy's order: exact beats any
/// wildcard, a longer suffix beats a shorter one, `*` comes last; `None` when it does not match.
fn domain_rank(domain: &str, host: &str) -> Option<usize> {
    if domain == host {
        return Some(usize::MAX);
    }
    let suffix = domain.strip_prefix('*')?;
    // Envoy: a wildcard matches at least one character before its suffix.
    (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len())
}

/// How well a domain matches a ClientHello's server name (as [`domain_rank`]); without a server
/// name only `*` does.
pub(super) fn sni_rank(domain: &str, sni: Option<&str>) -> Option<usize> {
    match sni {
        None => (domain == "*").then_some(0),
        Some(name) => domain_rank(domain, &name.to_ascii_lowercase()),
    }
}

/// Selector labels an agent with `labels` satisfies: all of them (an empty selector: any agent).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What a server's port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerProtocol {
    /// Plain HTTP/1.1 or HTTP/2 (`HTTP`, `HTTP2`, `GRPC`, `GRPC-WEB`).
    Http,
    /// TLS terminated here, then HTTP (`HTTPS`, or `TLS` with a terminating mode).
    Https,
    /// TLS not terminated (`tls.mode: PASSTHROUGH`): the SNI picks the server and the `tls`
    /// rules of the VirtualServices bound to it, the bytes go through untouched.
    Passthrough,
    /// Opaque TCP (`TCP`, `MONGO`, `MYSQL`, `REDIS` without `tls`): the `tcp` rules of the
    /// VirtualServices bound to it pick the destination. Istio merges nothing onto its port.
    Tcp,
    /// TLS terminated here, then opaque TCP by the `tcp` rules (`TLS` or `TCP` with a
    /// terminating mode), as Istio's gateway builds a TLS filter chain with a TCP proxy.
    TerminatedTcp,
}

impl ServerProtocol {
    /// Whether connections open with a TLS ClientHello (terminated or passed through); such
    /// servers share a port, told apart by SNI, as Istio's TLS filter chains are.
    pub fn is_tls(self) -> bool {
        matches!(self, ServerProtocol::Https | ServerProtocol::Passthrough | ServerProtocol::TerminatedTcp)
    }

    /// Whether the agent holds the certificate and ends TLS for this server.
    pub fn terminates_tls(self) -> bool {
        matches!(self, ServerProtocol::Https | ServerProtocol::TerminatedTcp)
    }

    /// Whether servers of these two protocols may share a port (Istio's `MergeGateways`): plain
    /// HTTP ones with each other, TLS ones with each other (SNI tells them apart), opaque TCP
    /// with nothing.
    pub fn shares_port_with(self, other: ServerProtocol) -> bool {
        match (self, other) {
            (ServerProtocol::Tcp, _) | (_, ServerProtocol::Tcp) => false,
            _ => self.is_tls() == other.is_tls(),
        }
    }
}

/// A server's TLS settings as written, resolved to what the agent supports.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// `SIMPLE`, `MUTUAL` or `OPTIONAL_MUTUAL`.
    pub mode: TlsMode,
    /// Certificate chain file.
    pub certificate: Option<String>,
    /// Private key file.
    pub private_key: Option<String>,
    /// CA file client certificates must chain to.
    pub ca_certificates: Option<String>,
    /// Credential name: a directory under the agent's `credentials` (files source) or a Secret
    /// of the agent's namespace (cluster source).
    pub credential_name: Option<String>,
    /// Lowest version accepted.
    pub min_version: TlsProtocolVersion,
    /// Highest version accepted.
    pub max_version: TlsProtocolVersion,
    /// TLS 1.2 cipher suites by Envoy's names; empty: the library's defaults.
    pub cipher_suites: Vec<String>,
}

/// Which server of which gateway: stable across reloads while the Gateway keeps its servers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerId {
    /// `namespace/name` of the Gateway.
    pub gateway: Arc<str>,
    /// Position in `spec.servers`.
    pub index: u32,
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.gateway, self.index)
    }
}

/// A host a server admits, with the namespaces whose VirtualServices may serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost {
    /// `None`: any namespace (`*/`).
    pub namespace: Option<String>,
    /// Lower-case host, possibly a wildcard.
    pub host: String,
}

/// One VirtualService host bound to a server: what the request's Host chooses among.
#[derive(Debug, Clone)]
pub(super) struct VirtualHost {
    /// The VirtualService's host (qualified as Istio does, lower-case).
    pub(super) domain: Arc<str>,
    /// `namespace/name` of the VirtualService.
    pub(super) virtual_service: Arc<str>,
    pub(super) rules: Arc<Vec<Rule>>,
    pub(super) index: Option<Arc<RuleIndex>>,
    /// The VirtualService's `tls` rules (for `PASSTHROUGH` servers).
    pub(super) tls_rules: Arc<Vec<TcpRule>>,
    /// The VirtualService's `tcp` rules (for TCP servers, plain or TLS-terminated).
    pub(super) tcp_rules: Arc<Vec<TcpRule>>,
}

/// One `servers[]` entry of a Gateway.
#[derive(Debug)]
pub struct GatewayServer {
    /// Which server this is.
    pub id: ServerId,
    /// Port name (`https`), for logs.
    pub name: String,
    /// Listener port.
    pub port: u16,
    /// What it speaks.
    pub protocol: ServerProtocol,
    /// Hosts it admits.
    pub hosts: Vec<ServerHost>,
    /// TLS settings, for the protocols that terminate TLS.
    pub tls: Option<ServerTls>,
    /// `tls.httpsRedirect` on a plain HTTP server: every request gets a 301 to https.
    pub https_redirect: bool,
    /// Where the server is written, for findings about its certificates.
    pub source: Source,
    /// Field path of the server (`spec.servers[0]`).
    pub at: String,
    /// The TLS configuration built from `tls` (certificates read) once the agent prepared the
    /// table; `None` until then, for plain HTTP, or when its certificate did not load (cluster
    /// source: its handshakes are refused).
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    pub(super) virtual_hosts: Vec<VirtualHost>,
}

impl GatewayServer {
    /// Whether this server serves `sni` (a TLS ClientHello's server name; `None` when the client
    /// sent none): one of its hosts covers it, or it admits every host.
    pub fn sni_rank(&self, sni: Option<&str>) -> Option<usize> {
        self.hosts.iter().filter_map(|h| sni_rank(&h.host, sni)).max()
    }
}

/// A compiled Gateway: its selector, for the agent to decide whether it serves it.
#[derive(Debug, Clone)]
pub struct GatewaySummary {
    /// `namespace/name`.
    pub name: Arc<str>,
    /// Labels an agent must carry to serve it.
    pub selector: BTreeMap<String, String>,
}

/// Every gateway server by port, with the virtual hosts bound to each.
#[derive(Debug, Default)]
pub struct GatewayTable {
    pub(super) gateways: BTreeMap<Arc<str>, GatewaySummary>,
    /// Servers by port, in Gateway order (oldest first).
    pub(super) ports: BTreeMap<u16, Vec<GatewayServer>>,
}

/// Where a request entered a gateway: the listener port, and for TLS the server its SNI chose.
#[derive(Clone, Copy, Debug)]
pub struct GatewayEntry<'a> {
    /// Listener port.
    pub port: u16,
    /// The server whose certificate the TLS handshake used; `None` for plain HTTP, where every
    /// server on the port is a candidate.
    pub server: Option<&'a ServerId>,
}

/// The decision for a request that entered a gateway.
#[derive(Debug, Clone, Copy)]
pub struct GatewayDecision<'t> {
    /// The rule decision (its `service` is the virtual host's domain).
    pub decision: Option<Decision<'t>>,
    /// The gateway the chosen virtual host belongs to.
    pub gateway: Option<&'t Arc<str>>,
    /// The virtual host chosen.
    pub domain: Option<&'t Arc<str>>,
    /// The server's `httpsRedirect` applies: answer 301 to https.
    pub https_redirect: bool,
}

impl GatewayTable {
    /// The gateways compiled, by name.
    pub fn gateways(&self) -> impl Iterator<Item = &GatewaySummary> {
        self.gateways.values()
    }

    /// Ports with servers, each with its servers.
    pub fn ports(&self) -> impl Iterator<Item = (u16, &[GatewayServer])> {
        self.ports.iter().map(|(p, s)| (*p, s.as_slice()))
    }

    /// The servers on `port`.
    pub fn servers(&self, port: u16) -> &[GatewayServer] {
        self.ports.get(&port).map_or(&[], Vec::as_slice)
    }

    /// Every server, mutable (to keep only the selected ones and attach their TLS).
    pub fn servers_mut(&mut self) -> impl Iterator<Item = &mut GatewayServer> {
        self.ports.values_mut().flatten()
    }

    /// Keeps the servers `keep` accepts; ports left without servers go.
    pub fn retain_servers(&mut self, mut keep: impl FnMut(&GatewayServer) -> bool) {
        for servers in self.ports.values_mut() {
            servers.retain(&mut keep);
        }
        self.ports.retain(|_, servers| !servers.is_empty());
    }

    /// The server a TLS ClientHello on `port` naming `sni` is for: the best host match, the
    /// first server among equals.
    pub fn server_for_sni(&self, port: u16, sni: Option<&str>) -> Option<&GatewayServer> {
        let mut best: Option<(usize, &GatewayServer)> = None;
        for server in self.servers(port).iter().filter(|s| s.protocol.is_tls()) {
            if let Some(rank) = server.sni_rank(sni) {
                if best.is_none_or(|(b, _)| rank > b) {
                    best = Some((rank, server));
                }
            }
        }
        best.map(|(_, s)| s)
    }

    /// The virtual host for `host` among the servers `entry` allows, Envoy's way (exact, then the
    /// longest wildcard, then `*`), with the server it came from.
    pub(super) fn virtual_host(
        &self,
        entry: &GatewayEntry<'_>,
        host: &str,
    ) -> (Option<(&VirtualHost, &GatewayServer)>, bool) {
        let candidates = self.servers(entry.port).iter().filter(|s| entry.server.is_none_or(|id| *id == s.id));
        let mut best: Option<(usize, &VirtualHost, &GatewayServer)> = None;
        let mut redirect: Option<usize> = None;
        for server in candidates {
            for vh in &server.virtual_hosts {
                if let Some(rank) = domain_rank(&vh.domain, host) {
                    if best.is_none_or(|(b, ..)| rank > b) {
                        best = Some((rank, vh, server));
                    }
                }
            }
            // A redirecting server answers for its hosts even without a VirtualService.
            if server.https_redirect {
                let rank = server.hosts.iter().filter_map(|h| domain_rank(&h.host, host)).max();
                redirect = redirect.max(rank);
            }
        }
        match best {
            Some((rank, vh, server)) => {
                let redirect = server.https_redirect || redirect.is_some_and(|r| r > rank);
                (Some((vh, server)), redirect)
            }
            None => (None, redirect.is_some()),
        }
    }

    /// The virtual host serving `host` on a server of `gateway` (for `explain`), with its server:
    /// among the servers on `port` when the gateway has any there, else among all of them.
    pub(super) fn virtual_host_of(
        &self,
        gateway: &str,
        host: &str,
        port: u16,
    ) -> Option<(&VirtualHost, &GatewayServer)> {
        let host = request_host(host);
        let servers = || self.ports.values().flatten().filter(|s| &*s.id.gateway == gateway);
        let on_port = servers().any(|s| s.port == port);
        let mut best: Option<(usize, &VirtualHost, &GatewayServer)> = None;
        for server in servers().filter(|s| !on_port || s.port == port) {
            for vh in &server.virtual_hosts {
                if let Some(rank) = domain_rank(&vh.domain, &host) {
                    if best.is_none_or(|(b, ..)| rank > b) {
                        best = Some((rank, vh, server));
                    }
                }
            }
        }
        best.map(|(_, vh, s)| (vh, s))
    }
}

/// The Host header without its port, lower-case (Envoy matches domains case-insensitively).
pub fn request_host(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_resolve_as_istio_does() {
        assert_eq!(resolve_gateway_name("gw", "shop"), "shop/gw");
        assert_eq!(resolve_gateway_name("./gw", "shop"), "shop/gw");
        assert_eq!(resolve_gateway_name("istio-system/gw", "shop"), "istio-system/gw");
        assert_eq!(resolve_gateway_name("gw.istio-system.svc.cluster.local", "shop"), "istio-system/gw");
        assert_eq!(resolve_gateway_name("gw.istio-system", "shop"), "istio-system/gw");
        assert_eq!(resolve_gateway_name("mesh", "shop"), "mesh");
    }

    #[test]
    fn host_intersection_follows_istio() {
        assert!(hosts_intersect("*", "a.example.com"));
        assert!(hosts_intersect("*.example.com", "a.example.com"));
        assert!(hosts_intersect("a.example.com", "*.example.com"));
        assert!(hosts_intersect("*.example.com", "*.a.example.com"));
        assert!(hosts_intersect("*.a.example.com", "*.example.com"));
        assert!(!hosts_intersect("*.example.com", "example.com"));
        assert!(!hosts_intersect("a.example.com", "b.example.com"));
        assert!(!hosts_intersect("*.a.example.com", "*.b.example.com"));
    }

    #[test]
    fn selectors_need_every_label() {
        let labels = BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())]);
        assert!(selects(&BTreeMap::new(), &labels));
        assert!(selects(&labels, &labels));
        assert!(!selects(&BTreeMap::from([("app".to_owned(), "x".to_owned())]), &labels));
    }

    #[test]
    fn domains_rank_exact_then_longest_wildcard_then_star() {
        assert_eq!(domain_rank("a.example.com", "a.example.com"), Some(usize::MAX));
        assert!(domain_rank("*.a.example.com", "x.a.example.com") > domain_rank("*.example.com", "x.a.example.com"));
        assert_eq!(domain_rank("*.example.com", "example.com"), None);
        assert_eq!(domain_rank("*", "anything"), Some(0));
        assert_eq!(request_host("A.Example.com:443"), "a.example.com");
        assert_eq!(request_host("a.example.com"), "a.example.com");
    }
}
