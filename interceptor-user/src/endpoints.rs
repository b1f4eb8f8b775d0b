//! Services and their endpoints (from ServiceEntry and WorkloadEntry files), subsets by labels,
//! the load balancers that pick an endpoint, and the runtime state they keep across reloads.

mod balancer;
pub mod hash;
mod limits;
mod outlier;
mod state;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::{Diagnostic, Resource, ServiceEntry, Severity, Snapshot, WorkloadEntry};

pub use balancer::{Balancer, InFlight, PickContext, Policy};
pub use limits::{LimitSettings, Limits, Overflow, Slot};
pub use outlier::{Outcome, OutlierSettings};
pub use state::{ClusterState, ClusterStates, EndpointState, MIRRORS_IN_FLIGHT};

/// Kubernetes' cluster domain: `name.namespace.svc.cluster.local`.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Expands a short host (`reviews`) against `namespace` the way Istio does; names with a dot and
/// wildcards are taken as written.
pub fn qualify_host<'h>(host: &'h str, namespace: &str) -> Cow<'h, str> {
    if host.contains('.') || host.contains('*') {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        }
    } else {
        Cow::Owned(format!("{}.{namespace}.{CLUSTER_DOMAIN}", host.to_ascii_lowercase()))
    }
}

/// A workload: an address with labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Workload IP.
    pub ip: IpAddr,
    /// Namespace the workload lives in.
    pub namespace: Arc<str>,
    /// Labels subsets select on.
    pub labels: BTreeMap<String, String>,
    /// Port name → port on the workload.
    pub ports: BTreeMap<String, u16>,
    /// The workload's name, for the `source_workload` metric label.
    pub workload: Arc<str>,
}

impl Endpoint {
    /// Whether the endpoint carries every one of `labels`.
    pub fn has_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port clients use.
    pub number: u16,
    /// Name, for endpoint port maps.
    pub name: String,
    /// Port on endpoints that don't name one.
    pub target: u16,
    /// How the proxy treats traffic on the port.
    pub protocol: Protocol,
}

/// The application protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1, HTTP/2, gRPC, or unspecified (sniffed as HTTP).
    Http,
    /// Anything else (TCP, TLS, HTTPS, MONGO, MYSQL, REDIS …): forwarded as a byte stream.
    Tcp,
}

impl Protocol {
    /// Istio's rule: the `protocol` field, else the port name's prefix (`http-web`, `tcp-db`).
    pub fn of(protocol: &str, name: &str) -> Self {
        let declared = if protocol.is_empty() { name.split('-').next().unwrap_or("") } else { protocol };
        match declared.to_ascii_uppercase().as_str() {
            "TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS" | "UDP" => Protocol::Tcp,
            _ => Protocol::Http,
        }
    }
}

/// A service: its host name, VIPs, ports and endpoints.
#[derive(Clone, Debug)]
pub struct Service {
    /// Fully qualified host.
    pub host: Arc<str>,
    /// Namespace of the ServiceEntry.
    pub namespace: String,
    /// Captured virtual IPs, of either family (a dual-stack service has one of each).
    pub vips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// The port with number `number`.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// Addresses of the endpoints carrying `labels`, on the workload side of `port`.
    pub fn endpoint_addrs(&self, port: &ServicePort, labels: &BTreeMap<String, String>) -> Vec<SocketAddr> {
        self.endpoints
            .iter()
            .filter(|e| e.has_labels(labels))
            .map(|e| SocketAddr::new(e.ip, e.ports.get(&port.name).copied().unwrap_or(port.target)))
            .collect()
    }
}

/// Every known service by host, and every known workload by IP.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    services: BTreeMap<Arc<str>, Service>,
    workloads: HashMap<IpAddr, Endpoint>,
}

impl Registry {
    /// Builds the registry from a snapshot's ServiceEntries and WorkloadEntries.
    ///
    /// Errors (bad addresses, ports) go to `diagnostics` as errors; the resource is skipped.
    pub fn build(snapshot: &Snapshot, diagnostics: &mut Vec<Diagnostic>) -> Self {
        let mut registry = Registry::default();
        let workload_entries: Vec<(Endpoint, &Resource<WorkloadEntry>)> = snapshot
            .workload_entries
            .iter()
            .filter_map(|we| {
                let (namespace, workload) = (we.meta.namespace.as_str().into(), we.meta.name.as_str().into());
                let endpoint = endpoint(&we.spec, &namespace, &workload, &we.source, &|| "spec".into(), diagnostics)?;
                Some((endpoint, we))
            })
            .collect();
        for (endpoint, _) in &workload_entries {
            registry.workloads.insert(endpoint.ip, endpoint.clone());
        }
        for se in &snapshot.service_entries {
            registry.add_service_entry(se, &workload_entries, diagnostics);
        }
        registry
    }

    fn add_service_entry(
        &mut self,
        se: &Resource<ServiceEntry>,
        workload_entries: &[(Endpoint, &Resource<WorkloadEntry>)],
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let src = &se.source;
        let namespace = &se.meta.namespace;
        // Istio names an inline endpoint's workload after its ServiceEntry (and a WorkloadEntry's
        // after the WorkloadEntry: pilot's ambient index, `workloadEntryWorkloadBuilder` and
        // `serviceEntryWorkloadBuilder`), so that is what `source_workload` reads here too.
        let workload: Arc<str> = se.meta.name.as_str().into();
        // One allocation shared by every endpoint of the entry.
        let shared_namespace: Arc<str> = namespace.as_str().into();
        let mut vips = Vec::new();
        for (i, address) in se.spec.addresses.iter().enumerate() {
            match address.parse::<IpAddr>() {
                // An IPv4-mapped IPv6 address is the IPv4 address, as the kernel sees it.
                Ok(ip) => vips.push(ip.to_canonical()),
                // Istio accepts CIDRs (validation checks the syntax): not captured, not refused.
                Err(_) => diagnostics.push(src.diagnostic(
                    Severity::Warning,
                    format!("spec.addresses[{i}]"),
                    format!("{address:?} is not an IP address (CIDR VIPs are not captured); ignored"),
                )),
            }
        }
        let mut ports = Vec::new();
        for (i, port) in se.spec.ports.iter().enumerate() {
            let field = || format!("spec.ports[{i}]");
            let Some(number) = valid_port(port.number, || format!("{}.number", field()), src, diagnostics) else {
                continue;
            };
            let target = match port.target_port {
                // 0 is proto3's "unset".
                Some(t) if t != 0 => {
                    valid_port(t, || format!("{}.targetPort", field()), src, diagnostics).unwrap_or(number)
                }
                _ => number,
            };
            if ports.iter().any(|p: &ServicePort| p.number == number) {
                diagnostics.push(src.diagnostic(
                    Severity::Error,
                    format!("{}.number", field()),
                    format!("port {number} is listed twice"),
                ));
            }
            ports.push(ServicePort {
                number,
                name: port.name.clone(),
                target,
                protocol: Protocol::of(&port.protocol, &port.name),
            });
        }
        if ports.is_empty() {
            // Istio accepts a ServiceEntry without ports; there is just nothing to capture or route.
            diagnostics.push(src.diagnostic(
                Severity::Warning,
                "spec.ports",
                "no ports: nothing of this service is captured or routed",
            ));
        }
        if let Some(resolution) = se.spec.resolution.as_deref() {
            if resolution != "STATIC" {
                diagnostics.push(src.diagnostic(
                    Severity::Warning,
                    "spec.resolution",
                    format!("resolution {resolution} is not supported yet; endpoints are used as STATIC"),
                ));
            }
        }
        let mut endpoints: Vec<Endpoint> = se
            .spec
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                endpoint(e, &shared_namespace, &workload, src, &|| format!("spec.endpoints[{i}]"), diagnostics)
            })
            .collect();
        if let Some(selector) = &se.spec.workload_selector {
            endpoints.extend(
                workload_entries
                    .iter()
                    .filter(|(e, we)| &we.meta.namespace == namespace && e.has_labels(&selector.labels))
                    .map(|(e, _)| e.clone()),
            );
        }
        for e in &endpoints {
            self.workloads.entry(e.ip).or_insert_with(|| e.clone());
        }
        if se.spec.hosts.is_empty() {
            diagnostics.push(src.diagnostic(Severity::Error, "spec.hosts", "a ServiceEntry needs at least one host"));
        }
        let last = se.spec.hosts.len().saturating_sub(1);
        for (i, host) in se.spec.hosts.iter().enumerate() {
            let host: Arc<str> = qualify_host(host, namespace).into();
            if self.services.contains_key(&host) {
                // Istio accepts several entries for one host (it merges them); here the first wins.
                diagnostics.push(src.diagnostic(
                    Severity::Warning,
                    format!("spec.hosts[{i}]"),
                    format!("host {host} is already defined by another ServiceEntry; this one is ignored for it"),
                ));
                continue;
            }
            let service = Service {
                host: host.clone(),
                namespace: namespace.clone(),
                // VIPs belong to the entry's first host; a second host would capture the same traffic.
                vips: if i == 0 { vips.clone() } else { Vec::new() },
                ports: ports.clone(),
                // The last host takes the list itself: most entries have one host.
                endpoints: if i == last { std::mem::take(&mut endpoints) } else { endpoints.clone() },
            };
            self.services.insert(host, service);
        }
    }

    /// The service named `host` (fully qualified).
    pub fn service(&self, host: &str) -> Option<&Service> {
        self.services.get(host)
    }

    /// Every service, by host.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// The workload at `ip`, if known.
    pub fn workload(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.workloads.get(&ip)
    }
}

/// `n` as a port, or an error at `field` (made only then: this runs for every endpoint).
fn valid_port(
    n: u32,
    field: impl FnOnce() -> String,
    src: &crate::config::Source,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            diagnostics.push(src.diagnostic(Severity::Error, field(), format!("{n} is not a port (1-65535)")));
            None
        }
    }
}

fn endpoint(
    spec: &WorkloadEntry,
    namespace: &Arc<str>,
    workload: &Arc<str>,
    src: &crate::config::Source,
    field: &dyn Fn() -> String,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Endpoint> {
    let ip = match spec.address.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            // Istio accepts DNS names, Unix sockets and network-only entries: left out, not refused.
            diagnostics.push(src.diagnostic(
                Severity::Warning,
                format!("{}.address", field()),
                format!("{:?} is not an IP address (DNS endpoints are not supported yet); left out", spec.address),
            ));
            return None;
        }
    };
    let mut ports = BTreeMap::new();
    for (name, number) in &spec.ports {
        let port = valid_port(*number, || format!("{}.ports.{name}", field()), src, diagnostics)?;
        ports.insert(name.clone(), port);
    }
    Some(Endpoint { ip, namespace: namespace.clone(), labels: spec.labels.clone(), ports, workload: workload.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hosts_resolve_against_the_namespace() {
        assert_eq!(qualify_host("reviews", "prod"), "reviews.prod.svc.cluster.local");
        assert_eq!(qualify_host("Reviews.prod.svc.cluster.local", "x"), "reviews.prod.svc.cluster.local");
        // Istio takes names with a dot as written, even when they look short.
        assert_eq!(qualify_host("reviews.prod", "x"), "reviews.prod");
        assert_eq!(qualify_host("*.example.com", "x"), "*.example.com");
    }

    #[test]
    fn protocols_come_from_the_field_then_the_port_name() {
        assert_eq!(Protocol::of("TCP", "http"), Protocol::Tcp);
        assert_eq!(Protocol::of("", "tcp-db"), Protocol::Tcp);
        assert_eq!(Protocol::of("GRPC", ""), Protocol::Http);
        assert_eq!(Protocol::of("", "web"), Protocol::Http);
    }

    #[test]
    fn endpoints_use_named_ports_then_target_port() {
        let port = ServicePort { number: 80, name: "http".into(), target: 8080, protocol: Protocol::Http };
        let mut named = Endpoint {
            ip: "10.0.0.1".parse().unwrap(),
            namespace: "default".into(),
            labels: BTreeMap::from([("version".into(), "v1".into())]),
            ports: BTreeMap::new(),
            workload: "a".into(),
        };
        let plain = Endpoint { ip: "10.0.0.2".parse().unwrap(), ..named.clone() };
        named.ports.insert("http".into(), 9090);
        let service = Service {
            host: "a".into(),
            namespace: "default".into(),
            vips: vec![],
            ports: vec![port.clone()],
            endpoints: vec![named, plain],
        };
        let v1 = BTreeMap::from([("version".to_string(), "v1".to_string())]);
        assert_eq!(
            service.endpoint_addrs(&port, &v1),
            vec!["10.0.0.1:9090".parse::<SocketAddr>().unwrap(), "10.0.0.2:8080".parse().unwrap()]
        );
        let v2 = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        assert!(service.endpoint_addrs(&port, &v2).is_empty());
    }

    /// The snapshot of one YAML file (which must parse), its registry, and the registry's
    /// diagnostics.
    fn registry_of(text: &str) -> (Snapshot, Registry, Vec<Diagnostic>) {
        let mut snapshot = Snapshot::default();
        let mut diagnostics = Vec::new();
        snapshot.add_file(std::path::Path::new("t.yaml"), text, "default", &mut diagnostics);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let registry = Registry::build(&snapshot, &mut diagnostics);
        (snapshot, registry, diagnostics)
    }

    #[test]
    fn workloads_are_named_after_their_entry_as_istio_does() {
        let text = "\
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: billing-vm, namespace: pay}
spec:
  address: 10.0.0.5
  labels: {app: billing}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example.com]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.6}]
";
        let (_, registry, _) = registry_of(text);
        let vm = registry.workload("10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!((&*vm.workload, &*vm.namespace), ("billing-vm", "pay"));
        let inline = registry.workload("10.0.0.6".parse().unwrap()).unwrap();
        assert_eq!((&*inline.workload, &*inline.namespace), ("legacy", "default"));
        assert!(registry.workload("10.0.0.7".parse().unwrap()).is_none());
    }

    #[test]
    fn diagnostics_name_the_field_of_the_endpoint_or_port_at_fault() {
        // The field paths are built only for a diagnostic: each must still name its place.
        let text = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: faulty}
spec:
  hosts: [faulty.example.com]
  ports: [{number: 80, name: http}, {number: 70000, name: big}, {number: 81, name: t, targetPort: 70001}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.6, labels: {app: '-x'}}, {address: 10.0.0.7, ports: {http: 70002}}, {address: vm.example.com}]
";
        let (snapshot, _, diagnostics) = registry_of(text);
        let fields: Vec<&str> = diagnostics.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ports[1].number",
                "spec.ports[2].targetPort",
                "spec.endpoints[1].ports.http",
                "spec.endpoints[2].address"
            ]
        );
        let validated = snapshot.validate();
        let at = |field: &str| validated.iter().filter(|d| d.field == field).count();
        assert_eq!((at("spec.endpoints[0].labels"), at("spec.endpoints[1].ports.http")), (1, 1), "{validated:?}");
    }

    #[test]
    fn a_vip_per_family_is_captured_and_a_cidr_is_warned_about() {
        let text = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: dual}
spec:
  hosts: [dual.example.com]
  addresses: [10.96.0.10, \"fd00:10:96::10\", \"::ffff:10.96.0.11\", 10.97.0.0/16]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.11}, {address: \"fd00:10:244::11\"}]
";
        let (_, registry, diagnostics) = registry_of(text);
        let service = registry.service("dual.example.com").unwrap();
        // An IPv4-mapped VIP is the IPv4 address the kernel keys it by.
        let vips: Vec<IpAddr> = ["10.96.0.10", "fd00:10:96::10", "10.96.0.11"].map(|a| a.parse().unwrap()).into();
        assert_eq!(service.vips, vips);
        assert_eq!(service.endpoints.len(), 2, "endpoints of both families");
        assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
        assert!(diagnostics[0].field.ends_with("addresses[3]"), "{diagnostics:?}");
    }
}
