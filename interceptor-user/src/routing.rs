//! Compiles a config [`Snapshot`] into an immutable [`RouteTable`] and decides, per request, which
//! rule applies; the rule's action (route, redirect, direct response) and its cluster follow.

mod actions;
mod compile;
mod explain;
mod gateway;
mod index;
mod matcher;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use rand::Rng;
use serde::Serialize;

use crate::config::{ConfigError, Diagnostic, Severity, Snapshot};
use crate::endpoints::{qualify_host, Balancer, ClusterStates, Limits, Protocol, Registry, Service};
pub use crate::tls::upstream::ClusterTls;
use crate::tls::Credentials;

pub use crate::endpoints::MIRRORS_IN_FLIGHT;
pub use actions::{
    parse_duration, Abort, Cors, DirectResponse, Fault, HeaderOps, HeaderPolicy, Redirect, RetryOn, RetryPolicy,
    Rewrite, TryFailure, GRPC_CODES,
};
pub use compile::{sni_matches, L4View};
pub use explain::Explanation;
pub use gateway::{
    hosts_intersect, request_host, resolve_gateway_name, selects, GatewayDecision, GatewayEntry, GatewayServer,
    GatewaySummary, GatewayTable, ServerHost, ServerId, ServerProtocol, ServerTls, MESH,
};
pub use matcher::{MatchBlock, Matcher, Mismatch, RequestView};

/// Why the proxy answered itself, as Envoy's response flags name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ResponseFlag {
    /// No route matched (404).
    NR,
    /// The chosen subset/cluster does not exist (503).
    NC,
    /// The subset has no healthy endpoint (503 "no healthy upstream").
    UH,
    /// Connecting to the endpoint failed (503).
    UF,
    /// The upstream connection ended before the whole response: 503 before the headers, else
    /// the status already sent.
    UC,
    /// Connection-pool limits reached (503).
    UO,
    /// The upstream timed out (504).
    UT,
    /// Retries exhausted.
    URX,
    /// Fault injection aborted the request.
    FI,
    /// Fault injection delayed the request.
    DI,
    /// The client went away before the whole response was sent.
    DC,
    /// The request broke HTTP's rules (400), e.g. both `Content-Length` and `Transfer-Encoding`.
    DPE,
    /// The client's request body stalled past the stream idle timeout (408).
    SI,
}

impl ResponseFlag {
    /// HTTP status the proxy answers with when this flag ends the request.
    pub fn status(self) -> u16 {
        match self {
            ResponseFlag::NR => 404,
            ResponseFlag::UT => 504,
            ResponseFlag::DPE => 400,
            ResponseFlag::SI => 408,
            _ => 503,
        }
    }

    /// The flag as Envoy prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::NR => "NR",
            ResponseFlag::NC => "NC",
            ResponseFlag::UH => "UH",
            ResponseFlag::UF => "UF",
            ResponseFlag::UC => "UC",
            ResponseFlag::UO => "UO",
            ResponseFlag::UT => "UT",
            ResponseFlag::URX => "URX",
            ResponseFlag::FI => "FI",
            ResponseFlag::DI => "DI",
            ResponseFlag::DC => "DC",
            ResponseFlag::DPE => "DPE",
            ResponseFlag::SI => "SI",
        }
    }
}

/// How a cluster turns a request into a consistent-hash key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// A header's value.
    Header(HeaderName),
    /// A cookie's value; generated (and set on the response) when absent and `ttl` is set.
    Cookie {
        /// Cookie name.
        name: String,
        /// Cookie path.
        path: Option<String>,
        /// Lifetime of a generated cookie.
        ttl: Option<Duration>,
    },
    /// The client IP.
    SourceIp,
    /// A query parameter's value.
    QueryParam(String),
}

/// One subset of one service port: Envoy's `outbound|port|subset|host` cluster.
#[derive(Debug)]
pub struct Cluster {
    /// `outbound|80|v1|my-app.default.svc.cluster.local`.
    pub name: Arc<str>,
    /// Service host.
    pub host: String,
    /// Subset name; empty for the whole service.
    pub subset: String,
    /// Service port.
    pub port: u16,
    /// Endpoints and their load balancer (counts, cursor and ejections live in the cluster's
    /// [`ClusterState`](crate::endpoints::ClusterState), so they outlast this table).
    pub balancer: Balancer,
    /// Connection-pool limits, on the limiter the cluster keeps across tables.
    pub limits: Limits,
    /// Consistent-hash key, when the policy hashes.
    pub hash_key: Option<HashKey>,
    /// Upstream connect timeout (Istio default 10 s).
    pub connect_timeout: Duration,
    /// A forwarded TCP connection idle this long either way is closed (Istio default 1 h).
    pub tcp_idle_timeout: Duration,
    /// Mirror copies to this cluster in flight at most ([`MIRRORS_IN_FLIGHT`], across tables);
    /// beyond, dropped.
    pub mirror_slots: Arc<tokio::sync::Semaphore>,
    /// Reuse upstream connections (`maxRequestsPerConnection: 1` turns it off).
    pub keep_alive: bool,
    /// Upstream TLS (DestinationRule `tls`, merged as Istio does: subset over rule, port-level
    /// over each), built once per compile.
    pub tls: ClusterTls,
}

/// A mirror copy not answered in this long is abandoned (Envoy's default route timeout).
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a destination of a rule leads.
#[derive(Debug, Clone)]
pub enum Target {
    /// A cluster that exists.
    Cluster(Arc<Cluster>),
    /// The host or subset is not defined: requests get 503 NC.
    Missing {
        /// The cluster name that does not exist.
        cluster: Arc<str>,
    },
}

impl Target {
    /// The cluster's name.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Target::Cluster(c) => &c.name,
            Target::Missing { cluster } => cluster,
        }
    }
}

/// A destination with its weight and destination-level headers.
#[derive(Debug, Clone)]
pub struct WeightedTarget {
    /// Relative weight (> 0).
    pub weight: u64,
    /// The cluster.
    pub target: Target,
    /// `route[].headers`.
    pub headers: HeaderPolicy,
}

/// A copy of traffic sent elsewhere.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Where copies go.
    pub target: Target,
    /// Share of requests copied.
    pub probability: f64,
}

/// Weighted destinations: at least one, weights Istio's int32 at most, their sum > 0 — so a pick
/// can neither overflow nor draw from an empty range.
#[derive(Debug)]
pub struct Weights {
    targets: Vec<WeightedTarget>,
    total: u64,
}

impl Weights {
    /// The targets with a positive weight; `None` when none has one. Weights above `i32::MAX`
    /// are refused at compile time; the sum saturates all the same.
    pub fn new(targets: Vec<WeightedTarget>) -> Option<Self> {
        let targets: Vec<WeightedTarget> = targets.into_iter().filter(|t| t.weight > 0).collect();
        let total = targets.iter().fold(0u64, |sum, t| sum.saturating_add(t.weight));
        (total > 0).then_some(Self { targets, total })
    }

    /// Picks a destination by weight.
    pub fn pick(&self) -> &WeightedTarget {
        self.pick_with(&mut rand::thread_rng())
    }

    /// Picks a destination by weight, drawing from `rng`.
    pub fn pick_with(&self, rng: &mut impl Rng) -> &WeightedTarget {
        if self.targets.len() > 1 {
            let mut roll = rng.gen_range(0..self.total);
            for t in &self.targets {
                if roll < t.weight {
                    return t;
                }
                roll -= t.weight;
            }
        }
        // `new` keeps at least one target.
        &self.targets[0]
    }

    /// Each destination with its probability.
    pub fn probabilities(&self) -> impl Iterator<Item = (&WeightedTarget, f64)> {
        self.targets.iter().map(|t| (t, t.weight as f64 / self.total as f64))
    }

    /// The destinations, in rule order.
    pub fn iter(&self) -> std::slice::Iter<'_, WeightedTarget> {
        self.targets.iter()
    }

    /// The first destination.
    pub fn first(&self) -> &WeightedTarget {
        &self.targets[0]
    }
}

/// Forwarding settings of a `route` action.
#[derive(Debug)]
pub struct RouteAction {
    /// Weighted destinations.
    pub targets: Weights,
    /// Path/authority rewrite.
    pub rewrite: Option<Rewrite>,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
    /// Whether the raw relay may carry this out (decided at compile time, see [`RouteAction::new`]).
    pub relayable: bool,
}

impl RouteAction {
    /// Picks a destination by weight.
    pub fn pick(&self) -> &WeightedTarget {
        self.targets.pick()
    }

    /// Each destination with its probability.
    pub fn probabilities(&self) -> impl Iterator<Item = (&WeightedTarget, f64)> {
        self.targets.probabilities()
    }
}

/// What a matching rule does.
#[derive(Debug)]
pub enum Action {
    /// Forward to a destination.
    Route(RouteAction),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    Direct(DirectResponse),
}

/// A compiled `http` rule.
#[derive(Debug)]
pub struct Rule {
    /// `namespace/name#rule`, or `default` for a service without VirtualService.
    pub label: Arc<str>,
    matches: Vec<MatchBlock>,
    /// What it does.
    pub action: Action,
    /// Rule-level header operations.
    pub headers: HeaderPolicy,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// CORS.
    pub cors: Option<Cors>,
}

impl Rule {
    /// The block that matches the request (`Some(None)` for a rule without match blocks), for
    /// captured traffic (`gateway` `None`) or a request that entered `gateway`.
    fn matching_block(
        &self,
        req: &RequestView<'_>,
        registry: &Registry,
        gateway: Option<&str>,
    ) -> Option<Option<&MatchBlock>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches_at(req, registry, gateway)).map(Some)
    }
}

/// A compiled `tcp` or `tls` rule (a `tls` rule's blocks also match the SNI).
#[derive(Debug)]
pub struct TcpRule {
    /// `namespace/name#tcp-N` or `namespace/name#tls-N`.
    pub label: Arc<str>,
    matches: Vec<compile::L4Match>,
    targets: Weights,
}

/// The rules bound to a service.
#[derive(Debug, Default)]
struct ServiceRoutes {
    /// Name of the VirtualService bound to the service.
    virtual_service: Option<String>,
    rules: Arc<Vec<Rule>>,
    /// Prefilter over `rules`.
    index: Option<Arc<index::RuleIndex>>,
    tcp_rules: Arc<Vec<TcpRule>>,
    /// `tls` rules, tried before `tcp_rules` for a connection that opened with a ClientHello.
    tls_rules: Arc<Vec<TcpRule>>,
    /// Routes used when no VirtualService applies, by port.
    default_rules: HashMap<u16, Rule>,
}

/// The routing decision for one request.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'t> {
    /// Service the request was addressed to.
    pub service: &'t str,
    /// The rule that matched; `None` is 404 NR.
    pub rule: Option<&'t Rule>,
    /// The match block that matched, if the rule has blocks.
    pub block: Option<&'t MatchBlock>,
}

/// Everything the proxy needs to route, compiled once per config version and then only read.
#[derive(Debug)]
pub struct RouteTable {
    registry: Registry,
    /// Every cluster the table routes to, once.
    clusters: Vec<Arc<Cluster>>,
    routes: HashMap<Arc<str>, ServiceRoutes>,
    /// Service VIP:port → (host, service id).
    capture: BTreeMap<SocketAddr, (Arc<str>, u32)>,
    /// Gateway servers by port and the VirtualServices bound to them.
    gateways: GatewayTable,
    warnings: Vec<Diagnostic>,
    /// Upstream TLS files that did not load: their clusters refuse requests.
    credential_errors: Vec<Diagnostic>,
}

/// The rule label without a VirtualService.
pub const DEFAULT_RULE: &str = "default";

/// Istio's validation of `snapshot`: the names (`Kind namespace/name`) of the resources it
/// refuses, and all its findings.
fn validated(snapshot: &Snapshot) -> (std::collections::HashSet<String>, Vec<Diagnostic>) {
    let findings = snapshot.validate();
    let refused = findings.iter().filter(|d| d.severity == Severity::Error).map(|d| d.resource.clone()).collect();
    (refused, findings)
}

impl RouteTable {
    /// Compiles and cross-checks a snapshot, with runtime state of its own (`validate`,
    /// `explain`, tests: a table that replaces no other), reading `credentialName` directories
    /// under the default `credentials` directory.
    ///
    /// # Errors
    /// Every error found (bad regex, negative weight, undefined subset in an existing
    /// DestinationRule, VIP claimed twice, an upstream TLS file that does not load …), each with
    /// file, line and field.
    pub fn compile(snapshot: &Snapshot) -> Result<Self, ConfigError> {
        Self::compile_with(snapshot, &ClusterStates::default(), &Credentials::files(crate::config::DEFAULT_CREDENTIALS))
    }

    /// Compiles a snapshot whose clusters take their runtime state (counts, ejections, pool
    /// limiters) from `states`, so a table replacing another keeps it; `credentialName`
    /// credentials come from `credentials`. All or nothing: an upstream TLS file that does
    /// not load is an error like any other (files source).
    ///
    /// # Errors
    /// As [`RouteTable::compile`].
    pub fn compile_with(
        snapshot: &Snapshot,
        states: &ClusterStates,
        credentials: &Credentials,
    ) -> Result<Self, ConfigError> {
        match Self::compile_checked(snapshot, states, credentials) {
            Ok(table) if table.credential_errors.is_empty() => Ok(table),
            Ok(table) => {
                let mut diagnostics = table.credential_errors;
                diagnostics.extend(table.warnings);
                Err(ConfigError { diagnostics })
            }
            Err((mut err, credential_errors)) => {
                err.diagnostics.extend(credential_errors);
                Err(err)
            }
        }
    }

    /// Compiles for the command line (`validate`, `routes`, `explain`), which often runs where the
    /// agent's certificate files are not (a laptop, a CI job): an upstream TLS file that does not
    /// load is a warning here, as Istio's validation reads no files; the agent, which reads them,
    /// refuses such a config.
    ///
    /// # Errors
    /// As [`RouteTable::compile`], but for the files.
    pub fn compile_offline(snapshot: &Snapshot) -> Result<Self, ConfigError> {
        let credentials = &Credentials::files(crate::config::DEFAULT_CREDENTIALS);
        let unread = |errors: Vec<Diagnostic>| {
            errors.into_iter().map(|d| Diagnostic {
                severity: Severity::Warning,
                message: format!("{} (not readable here; the agent refuses the config where it is not)", d.message),
                ..d
            })
        };
        match Self::compile_checked(snapshot, &ClusterStates::default(), credentials) {
            Ok(mut table) => {
                let errors = std::mem::take(&mut table.credential_errors);
                table.warnings.extend(unread(errors));
                Ok(table)
            }
            Err((mut err, errors)) => {
                err.diagnostics.extend(unread(errors));
                Err(err)
            }
        }
    }

    /// Validates and compiles; upstream TLS files that did not load are left for the caller to
    /// weigh: in the table's `credential_errors`, or beside the other errors.
    fn compile_checked(
        snapshot: &Snapshot,
        states: &ClusterStates,
        credentials: &Credentials,
    ) -> Result<Self, (ConfigError, Vec<Diagnostic>)> {
        // Istio's validation first, on every resource: the one place both sources pass.
        let (refused, mut findings) = validated(snapshot);
        let compiled = if refused.is_empty() {
            compile::compile(snapshot, states, credentials)
        } else {
            // The rest is compiled too, so one run reports every error; refused resources are
            // left out of it so that their errors are not reported twice.
            let mut rest = snapshot.clone();
            rest.remove_resources(&refused.iter().map(String::as_str).collect());
            compile::compile(&rest, states, credentials)
        };
        // What only the table just dropped (or an older one) used goes now.
        states.prune();
        match compiled {
            Ok(mut table) if refused.is_empty() => {
                table.warnings.extend(findings);
                Ok(table)
            }
            Ok(table) => {
                findings.extend(table.warnings);
                Err((ConfigError { diagnostics: findings }, table.credential_errors))
            }
            Err(mut err) => {
                findings.append(&mut err.diagnostics);
                Err((ConfigError { diagnostics: findings }, Vec::new()))
            }
        }
    }

    /// Compiles `snapshot` the way Istio treats a cluster: a resource with an error is left out
    /// alone and everything else applies. Returns the table, the snapshot it was built from and
    /// the errors of the resources left out. An upstream TLS file that does not load leaves its
    /// DestinationRule in (leaving it out would send plaintext where TLS was asked for): its
    /// clusters refuse requests, and the error is returned with the others, as Envoy keeps a
    /// cluster whose secret cannot be had and fails its connections.
    ///
    /// # Errors
    /// An error that names no resource of the snapshot (nothing to leave out).
    pub fn compile_isolating(
        mut snapshot: Snapshot,
        states: &ClusterStates,
        credentials: &Credentials,
    ) -> Result<(Self, Snapshot, Vec<Diagnostic>), ConfigError> {
        let mut rejected = Vec::new();
        loop {
            let err = match Self::compile_checked(&snapshot, states, credentials) {
                Ok(table) => {
                    rejected.extend(table.credential_errors.iter().cloned());
                    return Ok((table, snapshot, rejected));
                }
                // Files that did not load come back with the pass that compiles.
                Err((err, _)) => err,
            };
            let errors: Vec<Diagnostic> =
                err.diagnostics.iter().filter(|d| d.severity == Severity::Error).cloned().collect();
            let names: std::collections::HashSet<&str> = errors.iter().map(|d| d.resource.as_str()).collect();
            // Each pass removes at least one resource, so this ends.
            if snapshot.remove_resources(&names) == 0 {
                return Err(err);
            }
            rejected.extend(errors);
        }
    }

    /// Upstream TLS files that did not load (their clusters refuse requests); empty for a table
    /// from [`RouteTable::compile_with`], which refuses them.
    pub fn credential_errors(&self) -> &[Diagnostic] {
        &self.credential_errors
    }

    /// Moves the pool limiters this table shares with older tables to its own thresholds. Call
    /// once the table serves, so that a refused config never changes the live limits.
    pub fn apply_limits(&self) {
        for cluster in &self.clusters {
            cluster.limits.apply();
        }
    }

    /// Every cluster the table routes to.
    pub fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }

    /// Warnings found while validating and compiling.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The capture set the kernel maps must hold: service VIP:port → service id.
    pub fn capture_set(&self) -> BTreeMap<SocketAddr, u32> {
        self.capture.iter().map(|(k, (_, id))| (*k, *id)).collect()
    }

    /// The service behind a captured VIP:port.
    pub fn service_at(&self, vip: SocketAddr) -> Option<&Arc<str>> {
        self.capture.get(&vip).map(|(host, _)| host)
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

    /// How traffic to `service` on `port` is handled.
    pub fn protocol(&self, service: &str, port: u16) -> Protocol {
        self.registry.service(service).and_then(|s| s.port(port)).map_or(Protocol::Http, |p| p.protocol)
    }

    /// Decides which rule a request to `service` falls under.
    pub fn route<'t>(&'t self, service: &'t str, req: &RequestView<'_>) -> Decision<'t> {
        let none = Decision { service, rule: None, block: None };
        let Some(routes) = self.routes.get(service) else { return none };
        if routes.virtual_service.is_none() {
            return match routes.default_rules.get(&req.port) {
                Some(rule) => Decision { service, rule: Some(rule), block: None },
                None => none,
            };
        }
        self.first_rule(service, &routes.rules, routes.index.as_deref(), req, None)
    }

    /// Decides which rule of which virtual host a request that entered a gateway at `entry`
    /// falls under (Host picks the virtual host among the servers `entry` allows).
    pub fn route_gateway<'t>(&'t self, entry: &GatewayEntry<'_>, req: &RequestView<'_>) -> GatewayDecision<'t> {
        let host = request_host(req.authority);
        let (found, https_redirect) = self.gateways.virtual_host(entry, &host);
        let Some((vh, server)) = found else {
            return GatewayDecision { decision: None, gateway: None, domain: None, https_redirect };
        };
        let decision = self.first_rule(&vh.domain, &vh.rules, vh.index.as_deref(), req, Some(&*server.id.gateway));
        GatewayDecision {
            decision: Some(decision),
            gateway: Some(&server.id.gateway),
            domain: Some(&vh.domain),
            https_redirect,
        }
    }

    /// The first of `rules` (prefiltered by `index`) that matches, for captured traffic
    /// (`gateway` `None`) or traffic that entered `gateway`.
    fn first_rule<'t>(
        &'t self,
        service: &'t str,
        rules: &'t [Rule],
        index: Option<&index::RuleIndex>,
        req: &RequestView<'_>,
        gateway: Option<&str>,
    ) -> Decision<'t> {
        let none = Decision { service, rule: None, block: None };
        let Some(index) = index else {
            for rule in rules {
                if let Some(block) = rule.matching_block(req, &self.registry, gateway) {
                    return Decision { service, rule: Some(rule), block };
                }
            }
            return none;
        };
        let found = index.first(req, |at| match at.block {
            None => true,
            Some(b) => rules[at.rule as usize].matches[b as usize].matches_at(req, &self.registry, gateway),
        });
        match found {
            None => none,
            Some(at) => {
                let rule = &rules[at.rule as usize];
                Decision { service, rule: Some(rule), block: at.block.map(|b| &rule.matches[b as usize]) }
            }
        }
    }

    /// Gateway servers by port, with what they serve.
    pub fn gateways(&self) -> &GatewayTable {
        &self.gateways
    }

    /// Gateway servers, to keep the ones this agent serves and attach their TLS configuration.
    pub fn gateways_mut(&mut self) -> &mut GatewayTable {
        &mut self.gateways
    }

    /// Decides where a TCP connection to `service` on `port`, from `source`, goes: the first
    /// `tcp` rule that matches, else — as Istio's sidecar listener, whose last TCP filter chain is
    /// the service itself unless a rule already catches everything — the service's own cluster.
    pub fn route_tcp<'t>(
        &'t self,
        service: &str,
        port: u16,
        destination: SocketAddr,
        source: SocketAddr,
    ) -> Option<(&'t str, &'t Target)> {
        let routes = self.routes.get(service)?;
        let at = L4View { port, destination, source, sni: None, gateway: None };
        self.first_l4(&routes.tcp_rules, &at).or_else(|| self.default_l4(routes, port))
    }

    /// Decides where a captured TLS connection to `service` whose ClientHello named `sni` goes:
    /// the first `tls` rule that matches; else, as Istio's sidecar listener (its TLS filter
    /// chains come before the TCP ones, which end with the service itself), the `tcp` rules,
    /// then the service's own cluster.
    pub fn route_tls<'t>(
        &'t self,
        service: &str,
        port: u16,
        destination: SocketAddr,
        source: SocketAddr,
        sni: Option<&str>,
    ) -> Option<(&'t str, &'t Target)> {
        let routes = self.routes.get(service)?;
        let at = L4View { port, destination, source, sni, gateway: None };
        self.first_l4(&routes.tls_rules, &at)
            .or_else(|| self.first_l4(&routes.tcp_rules, &at))
            .or_else(|| self.default_l4(routes, port))
    }

    /// Whether `service` has `tls` rules (then a TCP port is worth reading a ClientHello on).
    pub fn has_tls_rules(&self, service: &str) -> bool {
        self.routes.get(service).is_some_and(|r| !r.tls_rules.is_empty())
    }

    /// Decides where a TLS connection that entered gateway server `server` on `at.port`
    /// (`PASSTHROUGH`) goes: the virtual hosts of the server the SNI admits, most specific
    /// first (Envoy's order for server names), each VirtualService's `tls` rules in order.
    /// Returns the rule's label and target.
    pub fn route_passthrough<'t>(&'t self, server: &ServerId, at: &L4View<'_>) -> Option<(&'t str, &'t Target)> {
        let server = self.gateways.servers(at.port).iter().find(|s| s.id == *server)?;
        let at = L4View { gateway: Some(&server.id.gateway), ..*at };
        passthrough_candidates(server, at.sni).into_iter().find_map(|vh| self.first_l4(&vh.tls_rules, &at))
    }

    /// Decides where a connection that entered TCP gateway server `server` on `at.port` (plain,
    /// or after its TLS was terminated) goes: as Istio's gateway, the VirtualServices bound to
    /// the server in order, the first `tcp` rule matching. Returns the rule's label and target.
    pub fn route_gateway_tcp<'t>(&'t self, server: &ServerId, at: &L4View<'_>) -> Option<(&'t str, &'t Target)> {
        let server = self.gateways.servers(at.port).iter().find(|s| s.id == *server)?;
        let at = L4View { gateway: Some(&server.id.gateway), ..*at };
        tcp_candidates(server).find_map(|vh| self.first_l4(&vh.tcp_rules, &at))
    }

    /// Explains how a TLS connection naming `at.sni` is routed: captured, to `service`
    /// (`tls`, then `tcp` rules, then the service), or at `at.gateway`'s `PASSTHROUGH` server on
    /// `at.port` (for `interceptor explain --sni`).
    pub fn explain_tls(&self, service: &str, at: &L4View<'_>) -> String {
        explain::explain_tls(self, service, at)
    }

    /// The first of `rules` whose blocks match `at` (a rule without blocks matches anything).
    fn first_l4<'t>(&'t self, rules: &'t [TcpRule], at: &L4View<'_>) -> Option<(&'t str, &'t Target)> {
        let rule =
            rules.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(at, &self.registry)))?;
        Some((&rule.label, &rule.targets.pick().target))
    }

    /// The service's own cluster on `port`.
    fn default_l4<'t>(&'t self, routes: &'t ServiceRoutes, port: u16) -> Option<(&'t str, &'t Target)> {
        let rule = routes.default_rules.get(&port)?;
        match &rule.action {
            Action::Route(route) => Some((&rule.label, &route.targets.first().target)),
            _ => None,
        }
    }

    /// Explains, rule by rule, how a request to `service` is routed (for `interceptor explain`).
    pub fn explain<'t>(&'t self, service: &'t str, req: &RequestView<'_>) -> Explanation<'t> {
        explain::explain(self, service, req)
    }

    /// Explains how a request that entered `gateway` (`namespace/name`) with `req.authority` as
    /// its Host is routed (for `interceptor explain --gateway`).
    pub fn explain_gateway<'t>(&'t self, gateway: &'t str, req: &RequestView<'t>) -> Explanation<'t> {
        explain::explain_gateway(self, gateway, req)
    }

    /// Every service host with its VirtualService name (for `interceptor routes`).
    pub fn describe(&self) -> String {
        explain::describe(self)
    }
}

/// The virtual hosts of a TCP gateway server in the order their `tcp` rules are tried: one per
/// VirtualService, oldest first (one bound by several hosts is one candidate, at its first place).
fn tcp_candidates(server: &GatewayServer) -> impl Iterator<Item = &gateway::VirtualHost> {
    let mut seen: Vec<&str> = Vec::new();
    server.virtual_hosts.iter().filter(move |vh| {
        let first = !seen.contains(&&*vh.virtual_service);
        if first {
            seen.push(&vh.virtual_service);
        }
        first
    })
}

/// The virtual hosts of a `PASSTHROUGH` server `sni` may reach, most specific domain first
/// (Envoy's order for server names), then in binding order (the older VirtualService first).
fn passthrough_candidates<'s>(server: &'s GatewayServer, sni: Option<&str>) -> Vec<&'s gateway::VirtualHost> {
    let mut ranked: Vec<(usize, usize)> = server
        .virtual_hosts
        .iter()
        .enumerate()
        .filter_map(|(i, vh)| gateway::sni_rank(&vh.domain, sni).map(|rank| (rank, i)))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().map(|(_, i)| &server.virtual_hosts[i]).collect()
}

#[cfg(test)]
pub(crate) mod tests;
