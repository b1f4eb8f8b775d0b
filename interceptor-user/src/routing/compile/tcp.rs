//! VirtualService `tcp` rules: L4 matches (destination subnet, port, source labels and
//! namespace) and weighted destinations.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use super::Compiler;
use crate::config::{Resource, Severity, VirtualService};
use crate::endpoints::Registry;
use crate::routing::{HeaderPolicy, TcpRule, WeightedTarget, Weights};

/// A compiled `tcp` match block.
#[derive(Debug)]
pub(in crate::routing) struct L4Match {
    subnets: Vec<(IpAddr, u8)>,
    port: Option<u16>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    gateway_only: bool,
}

impl L4Match {
    pub(in crate::routing) fn matches(
        &self,
        port: u16,
        destination: SocketAddrV4,
        source: SocketAddr,
        registry: &Registry,
    ) -> bool {
        if self.gateway_only || self.port.is_some_and(|p| p != port) {
            return false;
        }
        if !self.subnets.is_empty()
            && !self.subnets.iter().any(|(net, len)| in_subnet(IpAddr::V4(*destination.ip()), *net, *len))
        {
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

impl Compiler<'_> {
    /// The `tcp` rules of `vs`, labelled `{label}#tcp-N`.
    pub(super) fn tcp(&mut self, vs: &Resource<VirtualService>, label: &str) -> Vec<TcpRule> {
        let src = &vs.source;
        let mut rules = Vec::new();
        for (i, tcp) in vs.spec.tcp.iter().enumerate() {
            let at = format!("spec.tcp[{i}]");
            let mut matches = Vec::new();
            for (j, m) in tcp.matches.iter().enumerate() {
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
                    subnets,
                    port,
                    source_labels: m.source_labels.clone(),
                    source_namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.clone()),
                    gateway_only: !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh"),
                });
            }
            let single = tcp.route.len() == 1;
            let mut targets = Vec::new();
            for (j, dest) in tcp.route.iter().enumerate() {
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
                    "a tcp rule needs a destination with weight > 0",
                ));
                continue;
            };
            rules.push(TcpRule { label: format!("{label}#tcp-{i}").into(), matches, targets });
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
}
