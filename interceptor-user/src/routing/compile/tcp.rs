//! VirtualService `tcp` and `tls` rules, one concept: L4 matches (destination subnet, port, source
//! labels and namespace, gateways; SNI hosts for `tls`) and weighted destinations.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::Compiler;
use crate::config::{Resource, RouteDestination, Severity, VirtualService};
use crate::endpoints::Registry;
use crate::routing::gateway::{resolve_gateway_name, MESH};
use crate::routing::{HeaderPolicy, TcpRule, WeightedTarget, Weights};

/// A compiled `tcp` or `tls` match block.
#[derive(Debug)]
pub(in crate::routing) struct L4Match {
    /// `tls` only: lower-case SNI names, exact or wildcard (`*.example.com`, `*`); empty for `tcp`.
    sni_hosts: Vec<String>,
    subnets: Vec<(IpAddr, u8)>,
    port: Option<u16>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    /// Resolved gateway names (`ns/name`, `mesh`); empty: those of the VirtualService.
    gateways: Vec<String>,
}

/// Where an L4 connection is being decided: the facts its match blocks look at.
#[derive(Clone, Copy, Debug)]
pub struct L4View<'a> {
    /// Service port (or gateway listener port).
    pub port: u16,
    /// Original destination (or the gateway listener's address).
    pub destination: SocketAddr,
    /// The client.
    pub source: SocketAddr,
    /// The ClientHello's server name, for TLS.
    pub sni: Option<&'a str>,
    /// The gateway the connection entered (`ns/name`); `None` for captured traffic.
    pub gateway: Option<&'a str>,
}

/// Whether an SNI pattern admits `sni`: equal names (case-insensitive), a wildcard
/// `*.example.com` covering at least one more label's characters, or `*` (anything).
pub fn sni_matches(pattern: &str, sni: Option<&str>) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some(sni) = sni else { return false };
    match pattern.strip_prefix('*') {
        Some(suffix) => sni.len() > suffix.len() && sni.to_ascii_lowercase().ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(sni),
    }
}

impl L4Match {
    pub(in crate::routing) fn matches(&self, at: &L4View<'_>, registry: &Registry) -> bool {
        let gateway = at.gateway.unwrap_or(MESH);
        if !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == gateway) {
            return false;
        }
        if !self.sni_hosts.is_empty() && !self.sni_hosts.iter().any(|p| sni_matches(p, at.sni)) {
            return false;
        }
        let (port, destination, source) = (at.port, at.destination, at.source);
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if !self.subnets.is_empty() && !self.subnets.iter().any(|(net, len)| in_subnet(destination.ip(), *net, *len)) {
            return false;
        }
        if !self.source_labels.is_empty() || self.source_namespace.is_some() {
            let Some(w) = registry.workload(source.ip()) else { return false };
            if !w.has_labels(&self.source_labels)
                || self.source_namespace.as_ref().is_some_and(|ns| **ns != *w.namespace)
            {
                return false;
            }
        }
        true
    }
}

fn in_subnet(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// A `tcp` or `tls` match block as written: the fields both share, and `sniHosts`.
struct Written<'a> {
    sni_hosts: &'a [String],
    destination_subnets: &'a [String],
    port: Option<u32>,
    source_labels: &'a BTreeMap<String, String>,
    source_namespace: &'a str,
    gateways: &'a [String],
}

impl Compiler<'_> {
    /// The `tcp` rules of `vs`, labelled `{label}#tcp-N`.
    pub(super) fn tcp(&mut self, vs: &Resource<VirtualService>, label: &str) -> Vec<TcpRule> {
        let rules = vs.spec.tcp.iter().map(|r| {
            let matches = r.matches.iter().map(|m| Written {
                sni_hosts: &[],
                destination_subnets: &m.destination_subnets,
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: &m.source_namespace,
                gateways: &m.gateways,
            });
            (matches.collect(), r.route.as_slice())
        });
        self.l4_rules(vs, label, "tcp", rules.collect())
    }

    /// The `tls` rules of `vs`, labelled `{label}#tls-N`: as `tcp` rules, each block also
    /// matching the ClientHello's SNI.
    pub(super) fn tls(&mut self, vs: &Resource<VirtualService>, label: &str) -> Vec<TcpRule> {
        let Some(tls) = vs.spec.tls.as_deref() else { return Vec::new() };
        let rules = tls.iter().map(|r| {
            let matches = r.matches.iter().map(|m| Written {
                sni_hosts: &m.sni_hosts,
                destination_subnets: &m.destination_subnets,
                port: m.port,
                source_labels: &m.source_labels,
                source_namespace: &m.source_namespace,
                gateways: &m.gateways,
            });
            (matches.collect(), r.route.as_slice())
        });
        self.l4_rules(vs, label, "tls", rules.collect())
    }

    /// Compiles `kind` (`tcp` or `tls`) rules written as `(match blocks, route)`.
    fn l4_rules(
        &mut self,
        vs: &Resource<VirtualService>,
        label: &str,
        kind: &str,
        written: Vec<(Vec<Written<'_>>, &[RouteDestination])>,
    ) -> Vec<TcpRule> {
        let src = &vs.source;
        let namespace = vs.meta.namespace.as_str();
        let mut rules = Vec::new();
        for (i, (blocks, route)) in written.into_iter().enumerate() {
            let at = format!("spec.{kind}[{i}]");
            let mut matches = Vec::new();
            for (j, m) in blocks.into_iter().enumerate() {
                let mut subnets = Vec::new();
                for (k, s) in m.destination_subnets.iter().enumerate() {
                    let (ip, len) = s.split_once('/').map_or((s.as_str(), None), |(ip, len)| (ip, Some(len)));
                    match (ip.parse::<IpAddr>(), len.map(str::parse::<u8>).transpose()) {
                        (Ok(ip), Ok(len)) => subnets.push((ip, len.unwrap_or(if ip.is_ipv4() { 32 } else { 128 }))),
                        _ => self.diags.push(src.diagnostic(
                            Severity::Error,
                            format!("{at}.match[{j}].destinationSubnets[{k}]"),
                            format!("{s:?} is not an IP or CIDR"),
                        )),
                    }
                }
                let port = m.port.and_then(|p| u16::try_from(p).ok());
                matches.push(L4Match {
                    sni_hosts: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    subnets,
                    port,
                    source_labels: m.source_labels.clone(),
                    source_namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.to_owned()),
                    gateways: m.gateways.iter().map(|g| resolve_gateway_name(g, namespace)).collect(),
                });
            }
            let single = route.len() == 1;
            let mut targets = Vec::new();
            for (j, dest) in route.iter().enumerate() {
                let dat = format!("{at}.route[{j}]");
                let Some(weight) = self.weight(dest.weight, single, src, &dat) else { continue };
                if let Some(target) = self.destination(&dest.destination, vs, &dat) {
                    targets.push(WeightedTarget { weight, target, headers: HeaderPolicy::default() });
                }
            }
            let Some(targets) = Weights::new(targets) else {
                self.diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.route"),
                    format!("a {kind} rule needs a destination with weight > 0"),
                ));
                continue;
            };
            rules.push(TcpRule { label: format!("{label}#{kind}-{i}").into(), matches, targets });
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        assert!(in_subnet("10.96.0.10".parse().unwrap(), "10.96.0.0".parse().unwrap(), 12));
        assert!(!in_subnet("10.112.0.1".parse().unwrap(), "10.96.0.0".parse().unwrap(), 12));
        assert!(in_subnet("1.2.3.4".parse().unwrap(), "0.0.0.0".parse().unwrap(), 0));
    }

    #[test]
    fn sni_patterns_match_exactly_or_by_wildcard() {
        assert!(sni_matches("a.example.com", Some("A.Example.com")));
        assert!(!sni_matches("a.example.com", Some("b.example.com")));
        assert!(sni_matches("*.example.com", Some("a.b.example.com")));
        assert!(!sni_matches("*.example.com", Some("example.com")));
        assert!(!sni_matches("*.example.com", Some(".example.com")));
        assert!(!sni_matches("*.example.com", None));
        assert!(sni_matches("*", None));
        assert!(sni_matches("*", Some("anything")));
    }
}
