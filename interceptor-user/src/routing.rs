//! Compiles a config [`Snapshot`] into an immutable [`RouteTable`] and decides, per request, which
//! rule applies and which subset (cluster) the request goes to.

mod matcher;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddrV4;
use std::sync::Arc;

use rand::Rng;
use serde::Serialize;

use crate::config::{ConfigError, DestinationRule, Diagnostic, Resource, Severity, Snapshot, VirtualService};
use crate::endpoints::{qualify_host, Balancer, Policy, Registry, Service};

pub use matcher::{MatchBlock, Matcher, RequestView};

/// Why a request got no upstream, as Envoy's response flags name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ResponseFlag {
    /// No route matched (404).
    NR,
    /// The chosen subset/cluster does not exist (503).
    NC,
    /// The subset has no endpoint (503 "no healthy upstream").
    UH,
    /// Connecting to the endpoint failed (503).
    UF,
    /// The upstream timed out (504).
    UT,
}

impl ResponseFlag {
    /// HTTP status the proxy answers with.
    pub fn status(self) -> u16 {
        match self {
            ResponseFlag::NR => 404,
            ResponseFlag::UT => 504,
            ResponseFlag::NC | ResponseFlag::UH | ResponseFlag::UF => 503,
        }
    }

    /// The flag as Envoy prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::NR => "NR",
            ResponseFlag::NC => "NC",
            ResponseFlag::UH => "UH",
            ResponseFlag::UF => "UF",
            ResponseFlag::UT => "UT",
        }
    }
}

/// One subset of one service port: Envoy's `outbound|port|subset|host` cluster.
#[derive(Debug)]
pub struct Cluster {
    /// `outbound|80|v1|my-app.default.svc.cluster.local`.
    pub name: String,
    /// Service host.
    pub host: String,
    /// Subset name; empty for the whole service.
    pub subset: String,
    /// Service port.
    pub port: u16,
    /// Endpoints and their load balancer.
    pub balancer: Balancer,
}

/// Where a destination of a rule leads.
#[derive(Debug, Clone)]
enum Target {
    Cluster(Arc<Cluster>),
    /// The host or subset is not defined: requests get 503 NC.
    Missing {
        cluster: Arc<str>,
    },
}

#[derive(Debug, Clone)]
struct WeightedTarget {
    weight: u64,
    target: Target,
}

/// A compiled `http` rule.
#[derive(Debug)]
struct Rule {
    label: String,
    matches: Vec<MatchBlock>,
    targets: Vec<WeightedTarget>,
    total_weight: u64,
}

/// The rules of the VirtualService bound to a service.
#[derive(Debug)]
struct VirtualHost {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct ServiceRoutes {
    virtual_host: Option<Arc<VirtualHost>>,
    /// Whole-service clusters by port, used when no VirtualService applies.
    default_clusters: HashMap<u16, Arc<Cluster>>,
}

/// The routing decision for one request.
#[derive(Debug, Clone)]
pub struct Decision<'t> {
    /// Service the request was addressed to.
    pub service: &'t str,
    /// `namespace/name#rule` of the rule that matched, or `default` without a VirtualService.
    pub rule: &'t str,
    /// The chosen cluster, or why there is none.
    pub outcome: Result<&'t Arc<Cluster>, Unroutable<'t>>,
}

/// A request the table cannot route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unroutable<'t> {
    /// NR or NC.
    pub flag: ResponseFlag,
    /// The cluster that does not exist (NC), or the service (NR).
    pub detail: &'t str,
}

/// Everything the proxy needs to route, compiled once per config version and then only read.
#[derive(Debug)]
pub struct RouteTable {
    registry: Registry,
    routes: HashMap<String, ServiceRoutes>,
    /// Service VIP:port → (host, service id).
    capture: BTreeMap<SocketAddrV4, (String, u32)>,
    warnings: Vec<Diagnostic>,
}

/// The text of a rule label without a VirtualService.
pub const DEFAULT_RULE: &str = "default";

impl RouteTable {
    /// Compiles and cross-checks a snapshot.
    ///
    /// # Errors
    /// Every error found (bad regex, negative weight, undefined subset in an existing
    /// DestinationRule, VIP claimed twice …), each with file, line and field.
    pub fn compile(snapshot: &Snapshot) -> Result<Self, ConfigError> {
        let mut diags = snapshot.warnings.clone();
        let registry = Registry::build(snapshot, &mut diags);
        let rules = destination_rules(&snapshot.destination_rules, &mut diags);
        let mut clusters = ClusterCache { registry: &registry, rules: &rules, built: HashMap::new() };

        let mut capture = BTreeMap::new();
        let mut routes = HashMap::new();
        for (id, service) in registry.services().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            for vip in &service.vips {
                for port in &service.ports {
                    let key = SocketAddrV4::new(*vip, port.number);
                    if let Some((other, _)) = capture.insert(key, (service.host.clone(), id)) {
                        diags.push(Diagnostic {
                            severity: Severity::Error,
                            file: Default::default(),
                            line: 0,
                            resource: format!("service {}", service.host),
                            field: "spec.addresses".into(),
                            message: format!("{key} is also the address of {other}"),
                        });
                    }
                }
            }
            let default_clusters =
                service.ports.iter().map(|p| (p.number, clusters.get(service, p.number, ""))).collect();
            routes.insert(service.host.clone(), ServiceRoutes { virtual_host: None, default_clusters });
        }

        for vs in &snapshot.virtual_services {
            let Some(virtual_host) = compile_virtual_service(vs, &mut clusters, &mut diags) else {
                continue;
            };
            let virtual_host = Arc::new(virtual_host);
            bind_virtual_host(vs, &virtual_host, &registry, &mut routes, &mut diags);
        }

        if diags.iter().any(|d| d.severity == Severity::Error) {
            return Err(ConfigError { diagnostics: diags });
        }
        Ok(RouteTable { registry, routes, capture, warnings: diags })
    }

    /// Warnings found while compiling.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The capture set the kernel maps must hold: service VIP:port → service id.
    pub fn capture_set(&self) -> BTreeMap<SocketAddrV4, u32> {
        self.capture.iter().map(|(k, (_, id))| (*k, *id)).collect()
    }

    /// The service behind a captured VIP:port.
    pub fn service_at(&self, vip: SocketAddrV4) -> Option<&str> {
        self.capture.get(&vip).map(|(host, _)| host.as_str())
    }

    /// The service named by a Host header (`my-app`, `my-app.default.svc.cluster.local:80`), for
    /// connections that reached the proxy without a captured original destination.
    pub fn service_for_authority(&self, authority: &str, namespace: &str) -> Option<&Service> {
        let host = authority.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(authority, |(h, _)| h);
        self.registry.service(&qualify_host(host, namespace))
    }

    /// The endpoint registry this table was built with.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Decides where a request to `service` goes.
    pub fn route<'t>(&'t self, service: &'t str, req: &RequestView<'_>) -> Decision<'t> {
        let unroutable = |flag, detail| Decision { service, rule: "", outcome: Err(Unroutable { flag, detail }) };
        let Some(routes) = self.routes.get(service) else {
            return unroutable(ResponseFlag::NR, service);
        };
        let Some(virtual_host) = &routes.virtual_host else {
            return match routes.default_clusters.get(&req.port) {
                Some(cluster) => Decision { service, rule: DEFAULT_RULE, outcome: Ok(cluster) },
                None => unroutable(ResponseFlag::NR, service),
            };
        };
        let Some(rule) = virtual_host
            .rules
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(req, &self.registry)))
        else {
            return unroutable(ResponseFlag::NR, service);
        };
        let target = pick_weighted(&rule.targets, rule.total_weight);
        let outcome = match target {
            Target::Cluster(cluster) => Ok(cluster),
            Target::Missing { cluster } => Err(Unroutable { flag: ResponseFlag::NC, detail: cluster }),
        };
        Decision { service, rule: &rule.label, outcome }
    }
}

fn pick_weighted(targets: &[WeightedTarget], total: u64) -> &Target {
    if targets.len() > 1 {
        let mut roll = rand::thread_rng().gen_range(0..total);
        for t in targets {
            if roll < t.weight {
                return &t.target;
            }
            roll -= t.weight;
        }
    }
    // Compilation guarantees at least one target with a positive weight.
    &targets[0].target
}

/// DestinationRules by fully qualified host; the first one for a host wins.
fn destination_rules<'a>(
    drs: &'a [Resource<DestinationRule>],
    diags: &mut Vec<Diagnostic>,
) -> HashMap<String, &'a Resource<DestinationRule>> {
    let mut by_host: HashMap<String, &Resource<DestinationRule>> = HashMap::new();
    for dr in drs {
        let host = qualify_host(&dr.spec.host, &dr.meta.namespace);
        if dr.spec.host.is_empty() {
            diags.push(dr.source.diagnostic(Severity::Error, "spec.host", "a DestinationRule needs a host"));
            continue;
        }
        let mut names = Vec::new();
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            if subset.name.is_empty() {
                diags.push(dr.source.diagnostic(
                    Severity::Error,
                    format!("spec.subsets[{i}].name"),
                    "a subset needs a name",
                ));
            } else if names.contains(&subset.name.as_str()) {
                diags.push(dr.source.diagnostic(
                    Severity::Error,
                    format!("spec.subsets[{i}].name"),
                    format!("subset {:?} is defined twice", subset.name),
                ));
            }
            names.push(&subset.name);
            if let Some(policy) = &subset.traffic_policy {
                warn_unsupported(
                    &dr.source,
                    &format!("spec.subsets[{i}].trafficPolicy"),
                    &policy.unsupported_fields(),
                    diags,
                );
            }
        }
        if let Some(policy) = &dr.spec.traffic_policy {
            warn_unsupported(&dr.source, "spec.trafficPolicy", &policy.unsupported_fields(), diags);
        }
        if let Some(first) = by_host.get(&host) {
            diags.push(dr.source.diagnostic(
                Severity::Warning,
                "spec.host",
                format!("{host} already has DestinationRule {}; this one is ignored", first.meta.name),
            ));
            continue;
        }
        by_host.insert(host, dr);
    }
    by_host
}

fn warn_unsupported(source: &crate::config::Source, at: &str, fields: &[&str], diags: &mut Vec<Diagnostic>) {
    for field in fields {
        diags.push(source.diagnostic(Severity::Warning, format!("{at}.{field}"), "not supported yet; ignored"));
    }
}

/// Builds each (host, subset, port) cluster once, so rules that share it share its balancer.
struct ClusterCache<'a> {
    registry: &'a Registry,
    rules: &'a HashMap<String, &'a Resource<DestinationRule>>,
    built: HashMap<(String, String, u16), Arc<Cluster>>,
}

impl ClusterCache<'_> {
    /// The cluster of `subset` (empty: whole service) on `port` of `service`. The subset must exist.
    fn get(&mut self, service: &Service, port: u16, subset: &str) -> Arc<Cluster> {
        let key = (service.host.clone(), subset.to_owned(), port);
        if let Some(cluster) = self.built.get(&key) {
            return cluster.clone();
        }
        let dr = self.rules.get(&service.host);
        let subset_spec = dr.and_then(|dr| dr.spec.subsets.iter().find(|s| s.name == subset));
        let lb = subset_spec
            .and_then(|s| s.traffic_policy.as_ref())
            .and_then(|p| p.load_balancer.as_ref())
            .or_else(|| dr.and_then(|dr| dr.spec.traffic_policy.as_ref()).and_then(|p| p.load_balancer.as_ref()))
            .and_then(|lb| lb.simple)
            .unwrap_or_default();
        let labels = subset_spec.map(|s| s.labels.clone()).unwrap_or_default();
        let endpoints = service.port(port).map(|p| service.endpoint_addrs(p, &labels)).unwrap_or_default();
        let cluster = Arc::new(Cluster {
            name: cluster_name(&service.host, subset, port),
            host: service.host.clone(),
            subset: subset.to_owned(),
            port,
            balancer: Balancer::new(Policy::from(lb), endpoints),
        });
        self.built.insert(key, cluster.clone());
        cluster
    }
}

fn cluster_name(host: &str, subset: &str, port: u16) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

fn compile_virtual_service(
    vs: &Resource<VirtualService>,
    clusters: &mut ClusterCache<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<VirtualHost> {
    let src = &vs.source;
    let ns = &vs.meta.namespace;
    if vs.spec.hosts.is_empty() {
        diags.push(src.diagnostic(Severity::Error, "spec.hosts", "a VirtualService needs at least one host"));
    }
    for (field, set) in [("spec.tcp", vs.spec.tcp.is_some()), ("spec.tls", vs.spec.tls.is_some())] {
        if set {
            diags.push(src.diagnostic(Severity::Warning, field, "not supported yet; ignored"));
        }
    }
    let mut rules = Vec::new();
    let errors_before = diags.iter().filter(|d| d.severity == Severity::Error).count();
    for (i, http) in vs.spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        for field in http.unsupported_fields() {
            let replaces_routing = matches!(field, "redirect" | "directResponse" | "delegate");
            let (severity, message) = if replaces_routing {
                (Severity::Error, "not supported yet; the rule could not be applied as written")
            } else {
                (Severity::Warning, "not supported yet; ignored")
            };
            diags.push(src.diagnostic(severity, format!("{at}.{field}"), message));
        }
        let mut matches = Vec::new();
        for (j, m) in http.matches.iter().enumerate() {
            match MatchBlock::compile(m) {
                Ok(block) => matches.push(block),
                Err(errors) => diags.extend(errors.into_iter().map(|(field, message)| {
                    src.diagnostic(Severity::Error, format!("{at}.match[{j}].{field}"), message)
                })),
            }
        }
        if http.route.is_empty() {
            diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.route"),
                "a rule needs at least one route destination",
            ));
            continue;
        }
        let single = http.route.len() == 1;
        let mut targets = Vec::new();
        for (j, dest) in http.route.iter().enumerate() {
            let at = format!("{at}.route[{j}]");
            if let Some(field) = dest.headers.as_ref().map(|_| "headers") {
                diags.push(src.diagnostic(Severity::Warning, format!("{at}.{field}"), "not supported yet; ignored"));
            }
            // Istio: a lone destination without a weight takes all traffic; with several, absent is 0.
            let weight = match dest.weight {
                None if single => 100,
                None => 0,
                Some(w) if w < 0 => {
                    diags.push(src.diagnostic(
                        Severity::Error,
                        format!("{at}.weight"),
                        format!("weight must be >= 0, got {w}"),
                    ));
                    continue;
                }
                Some(w) => w.unsigned_abs(),
            };
            if weight == 0 {
                continue;
            }
            if let Some(target) = compile_destination(dest, ns, &at, src, clusters, diags) {
                targets.push(WeightedTarget { weight, target });
            }
        }
        let total_weight = targets.iter().map(|t| t.weight).sum();
        if targets.is_empty() && diags.iter().filter(|d| d.severity == Severity::Error).count() == errors_before {
            diags.push(src.diagnostic(Severity::Error, format!("{at}.route"), "every destination has weight 0"));
        }
        let name = if http.name.is_empty() { i.to_string() } else { http.name.clone() };
        rules.push(Rule { label: format!("{ns}/{}#{name}", vs.meta.name), matches, targets, total_weight });
    }
    let errors_after = diags.iter().filter(|d| d.severity == Severity::Error).count();
    (errors_after == errors_before).then(|| VirtualHost { name: format!("{ns}/{}", vs.meta.name), rules })
}

fn compile_destination(
    dest: &crate::config::HttpRouteDestination,
    ns: &str,
    at: &str,
    src: &crate::config::Source,
    clusters: &mut ClusterCache<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Target> {
    let host = qualify_host(&dest.destination.host, ns);
    let subset = dest.destination.subset.as_str();
    let Some(service) = clusters.registry.service(&host) else {
        let port = dest.destination.port.as_ref().map_or(0, |p| p.number);
        diags.push(src.diagnostic(
            Severity::Warning,
            format!("{at}.destination.host"),
            format!("no service {host} is known; requests routed here get 503 NC"),
        ));
        return Some(Target::Missing { cluster: cluster_name(&host, subset, u16::try_from(port).unwrap_or(0)).into() });
    };
    let port = match (&dest.destination.port, service.ports.as_slice()) {
        (Some(p), _) => match service.ports.iter().find(|sp| u32::from(sp.number) == p.number) {
            Some(sp) => sp.number,
            None => {
                diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.destination.port.number"),
                    format!("service {host} has no port {}", p.number),
                ));
                return None;
            }
        },
        (None, [only]) => only.number,
        (None, _) => {
            diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.destination.port"),
                format!("service {host} has several ports; name one"),
            ));
            return None;
        }
    };
    if !subset.is_empty() {
        match clusters.rules.get(&host) {
            Some(dr) if !dr.spec.subsets.iter().any(|s| s.name == subset) => {
                let defined: Vec<&str> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.destination.subset"),
                    format!(
                        "subset {subset:?} is not defined by DestinationRule {}/{} for {host} (defined: {})",
                        dr.meta.namespace,
                        dr.meta.name,
                        if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
                    ),
                ));
                return None;
            }
            Some(_) => {}
            None => {
                diags.push(src.diagnostic(
                    Severity::Warning,
                    format!("{at}.destination.subset"),
                    format!("no DestinationRule defines subsets for {host}; requests routed here get 503 NC"),
                ));
                return Some(Target::Missing { cluster: cluster_name(&host, subset, port).into() });
            }
        }
    }
    let cluster = clusters.get(service, port, subset);
    if cluster.balancer.endpoints().is_empty() {
        diags.push(src.diagnostic(
            Severity::Warning,
            format!("{at}.destination"),
            format!("{} selects no endpoint; requests routed here get 503 no healthy upstream", cluster.name),
        ));
    }
    Some(Target::Cluster(cluster))
}

/// Attaches a compiled VirtualService to the services its hosts name. The first VirtualService
/// for a host wins, as with Istio sidecars; later ones only warn.
fn bind_virtual_host(
    vs: &Resource<VirtualService>,
    virtual_host: &Arc<VirtualHost>,
    registry: &Registry,
    routes: &mut HashMap<String, ServiceRoutes>,
    diags: &mut Vec<Diagnostic>,
) {
    let src = &vs.source;
    let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
    if !mesh {
        diags.push(src.diagnostic(
            Severity::Warning,
            "spec.gateways",
            "applies only to gateways (no `mesh`); it has no effect on sidecar-less mesh traffic",
        ));
        return;
    }
    for (i, host) in vs.spec.hosts.iter().enumerate() {
        let pattern = qualify_host(host, &vs.meta.namespace);
        let mut bound = false;
        for service in registry.services().filter(|s| host_matches(&pattern, &s.host)) {
            let Some(service_routes) = routes.get_mut(&service.host) else { continue };
            match &service_routes.virtual_host {
                Some(existing) => diags.push(src.diagnostic(
                    Severity::Warning,
                    format!("spec.hosts[{i}]"),
                    format!(
                        "{} is already routed by VirtualService {}; this one is ignored for it",
                        service.host, existing.name
                    ),
                )),
                None => service_routes.virtual_host = Some(virtual_host.clone()),
            }
            bound = true;
        }
        if !bound {
            diags.push(src.diagnostic(
                Severity::Warning,
                format!("spec.hosts[{i}]"),
                format!("no known service is named {pattern}; these rules route nothing"),
            ));
        }
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests;
