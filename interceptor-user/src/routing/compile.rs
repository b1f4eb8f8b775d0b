//! Turns a parsed snapshot into a [`RouteTable`]: resolves hosts and subsets, compiles matches,
//! actions and destination policies, and cross-checks them the way `istioctl analyze` would.
//! One [`Compiler`] carries what every step needs; each resource kind has its own file.

mod delegates;
mod destination_rules;
mod gateways;
mod tcp;
mod virtual_services;

use crate::tls::Credentials;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Cluster, RouteTable, ServiceRoutes};
use crate::config::{ConfigError, Diagnostic, Resource, Severity, Snapshot, Source, VirtualService};
use crate::endpoints::{ClusterStates, Registry};

pub(super) use tcp::L4Match;
pub use tcp::{sni_matches, L4View};

/// What compiling one snapshot reads and builds, shared by every step.
struct Compiler<'a> {
    snapshot: &'a Snapshot,
    registry: &'a Registry,
    /// DestinationRules by fully qualified host.
    rules: HashMap<String, destination_rules::DrInfo<'a>>,
    /// Where clusters find their runtime state.
    states: &'a ClusterStates,
    /// Each (host, subset, port) cluster, built once so that rules sharing it share its balancer.
    clusters: HashMap<(String, String, u16), Arc<Cluster>>,
    diags: Vec<Diagnostic>,
    /// Where upstream TLS finds `credentialName` credentials.
    credentials: &'a Credentials,
    /// Upstream TLS by (DestinationRule, field path of its `tls`, service host).
    tls: HashMap<(String, String, String), crate::tls::upstream::ClusterTls>,
    /// Upstream TLS files that did not load (see [`RouteTable::credential_errors`]).
    credential_errors: Vec<Diagnostic>,
}

pub(super) fn compile(
    snapshot: &Snapshot,
    states: &ClusterStates,
    credentials: &Credentials,
) -> Result<RouteTable, ConfigError> {
    let mut diags = snapshot.warnings.clone();
    let registry = Registry::build(snapshot, &mut diags);
    let rules = destination_rules::destination_rules(&snapshot.destination_rules, &mut diags);
    let mut cx = Compiler {
        snapshot,
        registry: &registry,
        rules,
        states,
        clusters: HashMap::new(),
        diags,
        credentials,
        tls: HashMap::new(),
        credential_errors: Vec::new(),
    };

    let mut capture = BTreeMap::new();
    let mut routes = HashMap::new();
    for (id, service) in registry.services().enumerate() {
        let id = u32::try_from(id).unwrap_or(u32::MAX);
        for vip in &service.vips {
            for port in &service.ports {
                let key = SocketAddr::new(*vip, port.number);
                // Istio accepts two services on one address; here the first keeps it.
                if let Some((other, _)) = capture.get(&key) {
                    cx.diags.push(Diagnostic {
                        severity: Severity::Warning,
                        file: Default::default(),
                        line: 0,
                        resource: format!("service {}", service.host),
                        field: "spec.addresses".into(),
                        message: format!(
                            "{key} is also the address of {other}; {} is not captured there",
                            service.host
                        ),
                    });
                    continue;
                }
                capture.insert(key, (service.host.clone(), id));
            }
        }
        let default_rules = service
            .ports
            .iter()
            .map(|p| {
                let cluster = cx.cluster(service, p.number, "");
                (p.number, virtual_services::default_rule(cluster))
            })
            .collect();
        routes.insert(service.host.clone(), ServiceRoutes { default_rules, ..Default::default() });
    }

    let mut gateways = cx.gateways();
    // Istio: when several VirtualServices claim a host, the oldest wins.
    let mut ordered: Vec<&Resource<VirtualService>> = snapshot.virtual_services.iter().collect();
    ordered.sort_by_key(|vs| virtual_services::creation_timestamp(vs).unwrap_or("~").to_owned());
    let delegated = delegates::delegate_targets(&snapshot.virtual_services);
    for vs in ordered {
        let key = (vs.meta.namespace.clone(), vs.meta.name.clone());
        if vs.spec.hosts.is_empty() {
            if !delegated.contains(&key) {
                // Istio accepts it (a delegate); unused, it only routes nothing.
                cx.diags.push(vs.source.diagnostic(
                    Severity::Warning,
                    "spec.hosts",
                    "no hosts: a delegate, but no rule delegates to it; it routes nothing",
                ));
            }
            continue;
        }
        let Some((http, l4)) = cx.virtual_service(vs) else {
            continue;
        };
        let http = Arc::new(http);
        let index = cx.index(vs, &http);
        cx.bind(vs, http.clone(), index.clone(), &l4, &mut routes);
        cx.bind_gateways(vs, &http, &index, &l4, &mut gateways);
    }

    let Compiler { clusters, diags, credential_errors, .. } = cx;
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(ConfigError { diagnostics: diags });
    }
    let clusters = clusters.into_values().collect();
    Ok(RouteTable { registry, clusters, routes, capture, gateways, warnings: diags, credential_errors })
}

impl Compiler<'_> {
    /// Reports `(field, message)` errors below `at`.
    fn report(&mut self, src: &Source, at: &str, errors: impl IntoIterator<Item = (String, String)>) {
        for (field, message) in errors {
            let field = if field.is_empty() { at.to_owned() } else { format!("{at}.{field}") };
            self.diags.push(src.diagnostic(Severity::Error, field, message));
        }
    }

    /// Errors reported so far.
    fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.severity == Severity::Error).count()
    }
}
