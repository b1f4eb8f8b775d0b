//! Turns a parsed snapshot into a [`RouteTable`]: resolves hosts and subsets, compiles matches,
//! actions and destination policies, and cross-checks them the way `istioctl analyze` would.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use super::actions::{
    parse_duration, probability, Cors, DirectResponse, Fault, HeaderPolicy, Redirect, RetryPolicy, Rewrite,
};
use super::{
    Action, Cluster, HashKey, MatchBlock, Mirror, RouteAction, RouteTable, Rule, ServiceRoutes, Target, TcpRule,
    WeightedTarget, Weights, DEFAULT_RULE,
};
use crate::config::{
    self, ConfigError, Destination, DestinationRule, Diagnostic, HttpRoute, Resource, Severity, Snapshot, Source,
    TrafficPolicy, VirtualService,
};
use crate::endpoints::{
    qualify_host, Balancer, LimitSettings, Limits, OutlierSettings, Policy, Protocol, Registry, Service,
};

/// Envoy's default connect timeout, which Istio keeps.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default for `connectionPool.tcp.idleTimeout`: a forwarded TCP connection with no byte
/// either way for an hour is closed.
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `idleTimeout: 0s` turns the timeout off: a century stands in for "never".
const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(super) fn compile(snapshot: &Snapshot) -> Result<RouteTable, ConfigError> {
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
        let default_rules = service
            .ports
            .iter()
            .map(|p| {
                let cluster = clusters.get(service, p.number, "");
                (p.number, default_rule(cluster))
            })
            .collect();
        routes.insert(service.host.clone(), ServiceRoutes { default_rules, ..Default::default() });
    }

    // Istio: when several VirtualServices claim a host, the oldest wins.
    let mut ordered: Vec<&Resource<VirtualService>> = snapshot.virtual_services.iter().collect();
    ordered.sort_by_key(|vs| creation_timestamp(vs).unwrap_or("~").to_owned());
    let delegated = delegate_targets(&snapshot.virtual_services);
    for vs in ordered {
        let key = (vs.meta.namespace.clone(), vs.meta.name.clone());
        if vs.spec.hosts.is_empty() {
            if !delegated.contains(&key) {
                diags.push(vs.source.diagnostic(
                    Severity::Warning,
                    "spec.hosts",
                    "no hosts: a delegate, but no rule delegates to it; it routes nothing",
                ));
            }
            continue;
        }
        let Some((http, tcp)) = compile_virtual_service(vs, snapshot, &mut clusters, &mut diags) else {
            continue;
        };
        bind(vs, Arc::new(http), Arc::new(tcp), &registry, &mut routes, &mut diags);
    }

    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(ConfigError { diagnostics: diags });
    }
    Ok(RouteTable { registry, routes, capture, warnings: diags })
}

fn creation_timestamp(vs: &Resource<VirtualService>) -> Option<&str> {
    vs.meta.other.get("creationTimestamp").and_then(|v| v.as_str())
}

/// (namespace, name) of every VirtualService some rule delegates to.
fn delegate_targets(all: &[Resource<VirtualService>]) -> Vec<(String, String)> {
    all.iter()
        .flat_map(|vs| {
            vs.spec.http.iter().filter_map(move |r| {
                r.delegate.as_ref().map(|d| {
                    let ns = if d.namespace.is_empty() { vs.meta.namespace.clone() } else { d.namespace.clone() };
                    (ns, d.name.clone())
                })
            })
        })
        .collect()
}

fn default_rule(cluster: Arc<Cluster>) -> Rule {
    Rule {
        label: DEFAULT_RULE.into(),
        matches: Vec::new(),
        action: Action::Route(RouteAction {
            targets: Weights {
                targets: vec![WeightedTarget {
                    weight: 1,
                    target: Target::Cluster(cluster),
                    headers: HeaderPolicy::default(),
                }],
                total: 1,
            },
            rewrite: None,
            timeout: None,
            retry: RetryPolicy::istio_default(),
            mirrors: Vec::new(),
        }),
        headers: HeaderPolicy::default(),
        fault: None,
        cors: None,
    }
}

/// Destination policy fields, each `None` when not set at this level.
#[derive(Clone, Debug, Default)]
struct PolicySettings {
    lb: Option<(Policy, Option<HashKey>)>,
    limits: Option<LimitSettings>,
    connect_timeout: Option<Duration>,
    tcp_idle_timeout: Option<Duration>,
    keep_alive: Option<bool>,
    outlier: Option<OutlierSettings>,
}

impl PolicySettings {
    /// Subset settings over the rule's: Istio overrides field by field.
    fn over(&self, base: &PolicySettings) -> PolicySettings {
        PolicySettings {
            lb: self.lb.clone().or_else(|| base.lb.clone()),
            limits: self.limits.or(base.limits),
            connect_timeout: self.connect_timeout.or(base.connect_timeout),
            tcp_idle_timeout: self.tcp_idle_timeout.or(base.tcp_idle_timeout),
            keep_alive: self.keep_alive.or(base.keep_alive),
            outlier: self.outlier.clone().or_else(|| base.outlier.clone()),
        }
    }
}

struct DrInfo<'a> {
    resource: &'a Resource<DestinationRule>,
    policy: PolicySettings,
    subsets: HashMap<String, (BTreeMap<String, String>, PolicySettings)>,
}

/// DestinationRules by fully qualified host; the first one for a host wins.
fn destination_rules<'a>(
    drs: &'a [Resource<DestinationRule>],
    diags: &mut Vec<Diagnostic>,
) -> HashMap<String, DrInfo<'a>> {
    let mut by_host: HashMap<String, DrInfo<'a>> = HashMap::new();
    for dr in drs {
        let src = &dr.source;
        if dr.spec.host.is_empty() {
            diags.push(src.diagnostic(Severity::Error, "spec.host", "a DestinationRule needs a host"));
            continue;
        }
        let host = qualify_host(&dr.spec.host, &dr.meta.namespace).into_owned();
        let policy = dr
            .spec
            .traffic_policy
            .as_ref()
            .map(|p| compile_policy(p, src, "spec.trafficPolicy", diags))
            .unwrap_or_default();
        let mut subsets = HashMap::new();
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if subset.name.is_empty() {
                diags.push(src.diagnostic(Severity::Error, format!("{at}.name"), "a subset needs a name"));
                continue;
            }
            let sp = subset
                .traffic_policy
                .as_ref()
                .map(|p| compile_policy(p, src, &format!("{at}.trafficPolicy"), diags))
                .unwrap_or_default();
            if subsets.insert(subset.name.clone(), (subset.labels.clone(), sp)).is_some() {
                diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.name"),
                    format!("subset {:?} is defined twice", subset.name),
                ));
            }
        }
        if let Some(first) = by_host.get(&host) {
            diags.push(src.diagnostic(
                Severity::Warning,
                "spec.host",
                format!("{host} already has DestinationRule {}; this one is ignored", first.resource.meta.name),
            ));
            continue;
        }
        by_host.insert(host, DrInfo { resource: dr, policy, subsets });
    }
    by_host
}

fn compile_policy(p: &TrafficPolicy, src: &Source, at: &str, diags: &mut Vec<Diagnostic>) -> PolicySettings {
    let mut err =
        |field: String, message: String| diags.push(src.diagnostic(Severity::Error, format!("{at}.{field}"), message));
    let mut out = PolicySettings::default();
    if let Some(lb) = &p.load_balancer {
        match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => err("loadBalancer".into(), "set either simple or consistentHash, not both".into()),
            (Some(simple), None) => out.lb = Some((Policy::from_simple(*simple), None)),
            (None, Some(ch)) => match consistent_hash(ch) {
                Ok(lb) => out.lb = Some(lb),
                Err((field, message)) => err(format!("loadBalancer.consistentHash{field}"), message),
            },
            (None, None) => {}
        }
    }
    if let Some(pool) = &p.connection_pool {
        let positive = |v: Option<i64>, field: &str, err: &mut dyn FnMut(String, String)| -> Option<usize> {
            let v = v?;
            match usize::try_from(v) {
                Ok(0) => None,
                Ok(n) => Some(n),
                _ => {
                    err(field.into(), format!("must be > 0, got {v}"));
                    None
                }
            }
        };
        let mut limits = LimitSettings::default();
        if let Some(tcp) = &pool.tcp {
            limits.max_active = positive(tcp.max_connections, "connectionPool.tcp.maxConnections", &mut err);
            if let Some(t) = &tcp.connect_timeout {
                match parse_duration(t) {
                    Ok(d) => out.connect_timeout = Some(d),
                    Err(e) => err("connectionPool.tcp.connectTimeout".into(), e),
                }
            }
            if let Some(t) = &tcp.idle_timeout {
                match parse_duration(t) {
                    Ok(d) if d > Duration::ZERO => out.tcp_idle_timeout = Some(d),
                    Ok(_) => out.tcp_idle_timeout = Some(NO_IDLE_TIMEOUT),
                    Err(e) => err("connectionPool.tcp.idleTimeout".into(), e),
                }
            }
        }
        if let Some(http) = &pool.http {
            let max_requests = positive(http.http2_max_requests, "connectionPool.http.http2MaxRequests", &mut err);
            limits.max_active = match (limits.max_active, max_requests) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            limits.max_pending =
                positive(http.http1_max_pending_requests, "connectionPool.http.http1MaxPendingRequests", &mut err);
            match http.max_requests_per_connection {
                None | Some(0) => {}
                Some(1) => out.keep_alive = Some(false),
                Some(n) if n < 0 => {
                    err("connectionPool.http.maxRequestsPerConnection".into(), format!("must be >= 0, got {n}"))
                }
                Some(_) => {}
            }
            if let Some(t) = &http.idle_timeout {
                if let Err(e) = parse_duration(t) {
                    err("connectionPool.http.idleTimeout".into(), e);
                }
            }
        }
        out.limits = Some(limits);
    }
    if let Some(od) = &p.outlier_detection {
        let count = |v: Option<i64>, field: &str, err: &mut dyn FnMut(String, String)| -> Option<u32> {
            let v = v?;
            u32::try_from(v).map_err(|_| err(field.into(), format!("must be >= 0, got {v}"))).ok()
        };
        let consecutive_5xx = count(od.consecutive_5xx_errors, "outlierDetection.consecutive5xxErrors", &mut err);
        let consecutive_gateway = count(
            od.consecutive_gateway_errors.or(od.consecutive_errors),
            "outlierDetection.consecutiveGatewayErrors",
            &mut err,
        );
        let duration = |v: &Option<String>, field: &str, default: Duration, err: &mut dyn FnMut(String, String)| {
            v.as_deref().map_or(Ok(default), parse_duration).unwrap_or_else(|e| {
                err(field.into(), e);
                default
            })
        };
        let base_ejection =
            duration(&od.base_ejection_time, "outlierDetection.baseEjectionTime", Duration::from_secs(30), &mut err);
        let _interval = duration(&od.interval, "outlierDetection.interval", Duration::from_secs(10), &mut err);
        let max_ejection_percent = match od.max_ejection_percent {
            None => 10,
            Some(v @ 0..=100) => v as u32,
            Some(v) => {
                err("outlierDetection.maxEjectionPercent".into(), format!("must be 0-100, got {v}"));
                10
            }
        };
        out.outlier = Some(OutlierSettings {
            // Envoy's default when neither count is set: 5 consecutive 5xx.
            consecutive_5xx: consecutive_5xx.or(if consecutive_gateway.is_none() { Some(5) } else { None }),
            consecutive_gateway,
            base_ejection,
            max_ejection_percent,
        });
    }
    let mut unsupported: Vec<String> = p.unsupported_fields().iter().map(|f| f.to_string()).collect();
    if let Some(pool) = &p.connection_pool {
        if let Some(tcp) = &pool.tcp {
            for (f, set) in [
                ("tcpKeepalive", tcp.tcp_keepalive.is_some()),
                ("maxConnectionDuration", tcp.max_connection_duration.is_some()),
            ] {
                if set {
                    unsupported.push(format!("connectionPool.tcp.{f}"));
                }
            }
        }
        if let Some(http) = &pool.http {
            for (f, set) in [
                ("idleTimeout", http.idle_timeout.is_some()),
                ("maxRetries", http.max_retries.is_some()),
                ("h2UpgradePolicy", http.h2_upgrade_policy.is_some()),
                ("useClientProtocol", http.use_client_protocol.is_some()),
                ("maxConcurrentStreams", http.max_concurrent_streams.is_some()),
                ("maxRequestsPerConnection", http.max_requests_per_connection.is_some_and(|n| n > 1)),
            ] {
                if set {
                    unsupported.push(format!("connectionPool.http.{f}"));
                }
            }
        }
    }
    if let Some(od) = &p.outlier_detection {
        if od.min_health_percent.is_some_and(|v| v > 0)
            || od.consecutive_local_origin_failures.is_some()
            || od.split_external_local_origin_errors.is_some()
        {
            unsupported.push("outlierDetection (minHealthPercent / local-origin settings)".into());
        }
    }
    if let Some(lb) = &p.load_balancer {
        if lb.locality_lb_setting.is_some() || lb.warmup_duration_secs.is_some() {
            unsupported.push("loadBalancer (localityLbSetting / warmupDurationSecs)".into());
        }
    }
    for field in unsupported {
        diags.push(src.diagnostic(Severity::Warning, format!("{at}.{field}"), "not supported yet; ignored"));
    }
    out
}

fn consistent_hash(ch: &config::ConsistentHashLb) -> Result<(Policy, Option<HashKey>), (String, String)> {
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip == Some(true),
        ch.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        return Err((
            String::new(),
            "set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName".into(),
        ));
    }
    let key = if let Some(h) = &ch.http_header_name {
        HashKey::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| (".httpHeaderName".to_owned(), format!("{h:?} is not a header name")))?,
        )
    } else if let Some(c) = &ch.http_cookie {
        let ttl = c.ttl.as_deref().map(parse_duration).transpose().map_err(|e| (".httpCookie.ttl".to_owned(), e))?;
        HashKey::Cookie { name: c.name.clone(), path: c.path.clone(), ttl: ttl.filter(|d| !d.is_zero()) }
    } else if let Some(q) = &ch.http_query_parameter_name {
        HashKey::QueryParam(q.clone())
    } else if ch.use_source_ip == Some(true) {
        HashKey::SourceIp
    } else {
        return Ok((Policy::LeastRequest, None)); // no key: Istio hashes nothing, so plain balancing
    };
    let policy = match (&ch.ring_hash, &ch.maglev) {
        (Some(_), Some(_)) => return Err((String::new(), "set either ringHash or maglev, not both".into())),
        (None, Some(m)) => {
            let size = m.table_size.unwrap_or(65537);
            if !is_prime(size) {
                return Err((".maglev.tableSize".into(), format!("{size} is not a prime")));
            }
            Policy::Maglev(size as usize)
        }
        (ring, None) => Policy::RingHash(
            ring.as_ref().and_then(|r| r.minimum_ring_size).or(ch.minimum_ring_size).unwrap_or(1024).clamp(1, 1 << 23)
                as usize,
        ),
    };
    Ok((policy, Some(key)))
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// Builds each (host, subset, port) cluster once, so rules that share it share its balancer.
pub(super) struct ClusterCache<'a> {
    registry: &'a Registry,
    rules: &'a HashMap<String, DrInfo<'a>>,
    built: HashMap<(String, String, u16), Arc<Cluster>>,
}

impl ClusterCache<'_> {
    /// The cluster of `subset` (empty: whole service) on `port` of `service`. The subset must exist.
    fn get(&mut self, service: &Service, port: u16, subset: &str) -> Arc<Cluster> {
        let key = (service.host.to_string(), subset.to_owned(), port);
        if let Some(cluster) = self.built.get(&key) {
            return cluster.clone();
        }
        let dr = self.rules.get(&*service.host);
        let (labels, policy) = match dr {
            None => (BTreeMap::new(), PolicySettings::default()),
            Some(dr) => match dr.subsets.get(subset) {
                Some((labels, sp)) => (labels.clone(), sp.over(&dr.policy)),
                None => (BTreeMap::new(), dr.policy.clone()),
            },
        };
        let endpoints = service.port(port).map(|p| service.endpoint_addrs(p, &labels)).unwrap_or_default();
        let (lb, hash_key) = policy.lb.unwrap_or((Policy::LeastRequest, None));
        let cluster = Arc::new(Cluster {
            name: cluster_name(&service.host, subset, port).into(),
            host: service.host.to_string(),
            subset: subset.to_owned(),
            port,
            balancer: Balancer::new(lb, endpoints, policy.outlier),
            limits: Limits::new(policy.limits.unwrap_or_default()),
            mirror_slots: Arc::new(tokio::sync::Semaphore::new(super::MIRRORS_IN_FLIGHT)),
            hash_key,
            connect_timeout: policy.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            tcp_idle_timeout: policy.tcp_idle_timeout.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT),
            keep_alive: policy.keep_alive.unwrap_or(true),
        });
        self.built.insert(key, cluster.clone());
        cluster
    }
}

fn cluster_name(host: &str, subset: &str, port: u16) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Reports `(field, message)` errors below `at`.
fn report(src: &Source, at: &str, diags: &mut Vec<Diagnostic>, errors: impl IntoIterator<Item = (String, String)>) {
    for (field, message) in errors {
        let field = if field.is_empty() { at.to_owned() } else { format!("{at}.{field}") };
        diags.push(src.diagnostic(Severity::Error, field, message));
    }
}

fn error_count(diags: &[Diagnostic]) -> usize {
    diags.iter().filter(|d| d.severity == Severity::Error).count()
}

fn compile_virtual_service(
    vs: &Resource<VirtualService>,
    snapshot: &Snapshot,
    clusters: &mut ClusterCache<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Vec<Rule>, Vec<TcpRule>)> {
    let src = &vs.source;
    if vs.spec.tls.is_some() {
        diags.push(src.diagnostic(Severity::Warning, "spec.tls", "not supported yet; ignored"));
    }
    let before = error_count(diags);
    let label = format!("{}/{}", vs.meta.namespace, vs.meta.name);
    let mut rules = Vec::new();
    for (i, http) in vs.spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        let rule_label = format!("{label}#{}", if http.name.is_empty() { i.to_string() } else { http.name.clone() });
        // Keep compiling a rule whose matches failed, to report all its errors at once.
        let matches = compile_matches(http, src, &at, diags).unwrap_or_default();
        match &http.delegate {
            None => {
                if let Some(rule) =
                    compile_rule(http, matches, rule_label, &vs.meta.namespace, src, &at, clusters, diags)
                {
                    rules.push(rule);
                }
            }
            Some(delegate) => rules.extend(compile_delegate(
                http,
                delegate,
                matches,
                &rule_label,
                &vs.meta.namespace,
                snapshot,
                clusters,
                src,
                &at,
                diags,
            )),
        }
    }
    warn_shadowed(&rules, &vs.spec.http, src, diags);
    let tcp = compile_tcp(vs, &label, clusters, diags);
    (error_count(diags) == before).then_some((rules, tcp))
}

fn compile_matches(http: &HttpRoute, src: &Source, at: &str, diags: &mut Vec<Diagnostic>) -> Option<Vec<MatchBlock>> {
    let mut blocks = Vec::new();
    let mut ok = true;
    for (j, m) in http.matches.iter().enumerate() {
        match MatchBlock::compile(m) {
            Ok(block) => blocks.push(block),
            Err(errors) => {
                ok = false;
                report(src, &format!("{at}.match[{j}]"), diags, errors);
            }
        }
    }
    ok.then_some(blocks)
}

/// Later rules that an earlier rule without conditions makes unreachable.
fn warn_shadowed(rules: &[Rule], http: &[HttpRoute], src: &Source, diags: &mut Vec<Diagnostic>) {
    let Some(first_catch_all) =
        rules.iter().position(|r| r.matches.is_empty() || r.matches.iter().any(MatchBlock::is_catch_all))
    else {
        return;
    };
    if first_catch_all + 1 < http.len() && first_catch_all + 1 < rules.len() {
        for i in first_catch_all + 1..http.len() {
            diags.push(src.diagnostic(
                Severity::Warning,
                format!("spec.http[{i}]"),
                format!("unreachable: rule {first_catch_all} matches every request before it"),
            ));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_delegate(
    root: &HttpRoute,
    delegate: &config::Delegate,
    root_matches: Vec<MatchBlock>,
    root_label: &str,
    namespace: &str,
    snapshot: &Snapshot,
    clusters: &mut ClusterCache<'_>,
    src: &Source,
    at: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Rule> {
    if !root.route.is_empty() || root.redirect.is_some() || root.direct_response.is_some() {
        diags.push(src.diagnostic(
            Severity::Error,
            format!("{at}.delegate"),
            "a delegating rule may only have match conditions",
        ));
        return Vec::new();
    }
    let ns = if delegate.namespace.is_empty() { namespace } else { &delegate.namespace };
    let Some(target) =
        snapshot.virtual_services.iter().find(|v| v.meta.namespace == ns && v.meta.name == delegate.name)
    else {
        diags.push(src.diagnostic(
            Severity::Warning,
            format!("{at}.delegate"),
            format!("no VirtualService {ns}/{} to delegate to; this rule routes nothing", delegate.name),
        ));
        return Vec::new();
    };
    if !target.spec.hosts.is_empty() {
        diags.push(target.source.diagnostic(
            Severity::Warning,
            "spec.hosts",
            format!("a delegate (of {root_label}) must not set hosts; the delegation is ignored"),
        ));
        return Vec::new();
    }
    let mut out = Vec::new();
    for (j, http) in target.spec.http.iter().enumerate() {
        let dat = format!("spec.http[{j}]");
        if http.delegate.is_some() {
            diags.push(target.source.diagnostic(
                Severity::Error,
                format!("{dat}.delegate"),
                "delegation is only one level deep",
            ));
            continue;
        }
        let Some(delegate_matches) = compile_matches(http, &target.source, &dat, diags) else { continue };
        // The root's conditions narrow every delegate rule (Istio merges them).
        let matches = match (root_matches.is_empty(), delegate_matches.is_empty()) {
            (true, _) => delegate_matches,
            (false, true) => root_matches.clone(),
            (false, false) => root_matches
                .iter()
                .flat_map(|r| delegate_matches.iter().map(move |d| MatchBlock::merge(r, d)))
                .collect(),
        };
        let label = format!(
            "{root_label}→{}/{}#{}",
            target.meta.namespace,
            target.meta.name,
            if http.name.is_empty() { j.to_string() } else { http.name.clone() }
        );
        if let Some(rule) =
            compile_rule(http, matches, label, &target.meta.namespace, &target.source, &dat, clusters, diags)
        {
            out.push(rule);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn compile_rule(
    http: &HttpRoute,
    matches: Vec<MatchBlock>,
    label: String,
    ns: &str,
    src: &Source,
    at: &str,
    clusters: &mut ClusterCache<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Rule> {
    let before = error_count(diags);
    let actions = [!http.route.is_empty(), http.redirect.is_some(), http.direct_response.is_some()]
        .iter()
        .filter(|a| **a)
        .count();
    if actions != 1 {
        diags.push(src.diagnostic(
            Severity::Error,
            at.to_owned(),
            if actions == 0 {
                "a rule needs one of route, redirect, directResponse, delegate"
            } else {
                "set only one of route, redirect, directResponse"
            },
        ));
        return None;
    }
    let headers = HeaderPolicy::compile(http.headers.as_ref())
        .map_err(|e| report(src, &format!("{at}.headers"), diags, e))
        .unwrap_or_default();
    let fault = match &http.fault {
        None => None,
        Some(f) => match Fault::compile(f) {
            Ok((fault, warnings)) => {
                for (field, message) in warnings {
                    diags.push(src.diagnostic(Severity::Warning, format!("{at}.fault.{field}"), message));
                }
                Some(fault)
            }
            Err(e) => {
                report(src, &format!("{at}.fault"), diags, [e]);
                None
            }
        },
    };
    let cors = http
        .cors_policy
        .as_ref()
        .and_then(|c| Cors::compile(c).map_err(|e| report(src, &format!("{at}.corsPolicy"), diags, [e])).ok());
    let action = if let Some(r) = &http.redirect {
        Redirect::compile(r).map(Action::Redirect).map_err(|e| report(src, &format!("{at}.redirect"), diags, [e])).ok()
    } else if let Some(d) = &http.direct_response {
        DirectResponse::compile(d)
            .map(Action::Direct)
            .map_err(|e| report(src, &format!("{at}.directResponse"), diags, [e]))
            .ok()
    } else {
        compile_route(http, ns, src, at, clusters, diags).map(Action::Route)
    };
    let action = action?;
    if !matches!(action, Action::Route(_)) {
        for (field, set) in [
            ("rewrite", http.rewrite.is_some()),
            ("retries", http.retries.is_some()),
            ("timeout", http.timeout.is_some()),
            ("mirror", http.mirror.is_some() || !http.mirrors.is_empty()),
        ] {
            if set {
                diags.push(src.diagnostic(Severity::Warning, format!("{at}.{field}"), "has no effect without route"));
            }
        }
    }
    (error_count(diags) == before).then_some(Rule { label: label.into(), matches, action, headers, fault, cors })
}

fn compile_route(
    http: &HttpRoute,
    ns: &str,
    src: &Source,
    at: &str,
    clusters: &mut ClusterCache<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<RouteAction> {
    let single = http.route.len() == 1;
    let mut targets = Vec::new();
    for (j, dest) in http.route.iter().enumerate() {
        let at = format!("{at}.route[{j}]");
        let Some(weight) = weight(dest.weight, single, src, &at, diags) else { continue };
        let headers = HeaderPolicy::compile(dest.headers.as_ref())
            .map_err(|e| report(src, &format!("{at}.headers"), diags, e))
            .unwrap_or_default();
        let Some(target) = compile_destination(&dest.destination, ns, &at, src, clusters, diags) else { continue };
        targets.push(WeightedTarget { weight, target, headers });
    }
    let Some(targets) = Weights::new(targets) else {
        if !http.route.is_empty() && error_count(diags) == 0 {
            diags.push(src.diagnostic(Severity::Error, format!("{at}.route"), "every destination has weight 0"));
        }
        return None;
    };
    let rewrite = http
        .rewrite
        .as_ref()
        .and_then(|r| Rewrite::compile(r).map_err(|e| report(src, &format!("{at}.rewrite"), diags, [e])).ok());
    let timeout = http.timeout.as_deref().and_then(|t| {
        parse_duration(t).map_err(|e| report(src, &format!("{at}.timeout"), diags, [(String::new(), e)])).ok()
    });
    let retry = match &http.retries {
        None => RetryPolicy::istio_default(),
        Some(r) => RetryPolicy::compile(r)
            .map_err(|e| report(src, &format!("{at}.retries"), diags, [e]))
            .unwrap_or_else(|()| RetryPolicy::istio_default()),
    };
    let mut mirrors = Vec::new();
    if let Some(dest) = &http.mirror {
        let pct =
            http.mirror_percentage.as_ref().map(|p| p.value).or(http.mirror_percent.map(f64::from)).unwrap_or(100.0);
        match (probability(pct), compile_destination(dest, ns, &format!("{at}.mirror"), src, clusters, diags)) {
            (Some(p), Some(target)) => mirrors.push(Mirror { target, probability: p }),
            (None, _) => diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.mirrorPercentage.value"),
                format!("{pct} is not between 0 and 100"),
            )),
            _ => {}
        }
    }
    for (k, m) in http.mirrors.iter().enumerate() {
        let pct = m.percentage.as_ref().map_or(100.0, |p| p.value);
        match (
            probability(pct),
            compile_destination(&m.destination, ns, &format!("{at}.mirrors[{k}].destination"), src, clusters, diags),
        ) {
            (Some(p), Some(target)) => mirrors.push(Mirror { target, probability: p }),
            (None, _) => diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.mirrors[{k}].percentage.value"),
                format!("{pct} is not between 0 and 100"),
            )),
            _ => {}
        }
    }
    Some(RouteAction { targets, rewrite, timeout, retry, mirrors })
}

/// A destination's weight; `None` (reported) when negative. Istio: a lone destination without
/// a weight takes all traffic; among several, an absent weight is 0.
fn weight(weight: Option<i64>, single: bool, src: &Source, at: &str, diags: &mut Vec<Diagnostic>) -> Option<u64> {
    match weight {
        None | Some(0) if single => Some(100),
        None => Some(0),
        Some(w) if w < 0 => {
            diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.weight"),
                format!("weight must be >= 0, got {w}"),
            ));
            None
        }
        // Istio's weights are int32: more is refused there, and would overflow sums here.
        Some(w) if w > i64::from(i32::MAX) => {
            diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.weight"),
                format!("weight must be <= {} (an int32), got {w}", i32::MAX),
            ));
            None
        }
        Some(w) => Some(w.unsigned_abs()),
    }
}

fn compile_destination(
    dest: &Destination,
    ns: &str,
    at: &str,
    src: &Source,
    clusters: &mut ClusterCache<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Target> {
    let host = qualify_host(&dest.host, ns).into_owned();
    let subset = dest.subset.as_str();
    if dest.host.is_empty() {
        diags.push(src.diagnostic(Severity::Error, format!("{at}.destination.host"), "a destination needs a host"));
        return None;
    }
    let Some(service) = clusters.registry.service(&host) else {
        let port = dest.port.as_ref().map_or(0, |p| p.number);
        diags.push(src.diagnostic(
            Severity::Warning,
            format!("{at}.destination.host"),
            format!("no service {host} is known; requests routed here get 503 NC"),
        ));
        return Some(Target::Missing { cluster: cluster_name(&host, subset, u16::try_from(port).unwrap_or(0)).into() });
    };
    let port = match (&dest.port, service.ports.as_slice()) {
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
            Some(dr) if !dr.subsets.contains_key(subset) => {
                let mut defined: Vec<&str> = dr.resource.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                defined.dedup();
                diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.destination.subset"),
                    format!(
                        "subset {subset:?} is not defined by DestinationRule {}/{} for {host} (defined: {})",
                        dr.resource.meta.namespace,
                        dr.resource.meta.name,
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

/// A compiled `tcp` match block.
#[derive(Debug)]
pub(super) struct L4Match {
    subnets: Vec<(IpAddr, u8)>,
    port: Option<u16>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    gateway_only: bool,
}

impl L4Match {
    pub(super) fn matches(
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

fn compile_tcp(
    vs: &Resource<VirtualService>,
    label: &str,
    clusters: &mut ClusterCache<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<TcpRule> {
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
                    _ => diags.push(src.diagnostic(
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
            let Some(weight) = weight(dest.weight, single, src, &dat, diags) else { continue };
            if let Some(target) = compile_destination(&dest.destination, &vs.meta.namespace, &dat, src, clusters, diags)
            {
                targets.push(WeightedTarget { weight, target, headers: HeaderPolicy::default() });
            }
        }
        let Some(targets) = Weights::new(targets) else {
            diags.push(src.diagnostic(
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

/// Attaches compiled rules to the services a VirtualService's hosts name. The oldest
/// VirtualService for a host wins, as with Istio sidecars; later ones only warn.
fn bind(
    vs: &Resource<VirtualService>,
    http: Arc<Vec<Rule>>,
    tcp: Arc<Vec<TcpRule>>,
    registry: &Registry,
    routes: &mut HashMap<Arc<str>, ServiceRoutes>,
    diags: &mut Vec<Diagnostic>,
) {
    let src = &vs.source;
    let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
    if !mesh {
        diags.push(src.diagnostic(
            Severity::Warning,
            "spec.gateways",
            "applies only to gateways (no `mesh`); it has no effect on mesh traffic",
        ));
        return;
    }
    let name = format!("{}/{}", vs.meta.namespace, vs.meta.name);
    let index = match super::index::RuleIndex::build(&http) {
        Ok(index) => Some(Arc::new(index)),
        Err(e) => {
            // Still correct without the prefilter, only slower.
            diags.push(src.diagnostic(Severity::Warning, "spec.http", format!("{e}; rules are checked one by one")));
            None
        }
    };
    for (i, host) in vs.spec.hosts.iter().enumerate() {
        let pattern = qualify_host(host, &vs.meta.namespace).into_owned();
        let mut bound = false;
        // An exact host is one lookup; only a wildcard looks at every service.
        let matching: Vec<&Service> = if pattern.starts_with('*') {
            registry.services().filter(|s| host_matches(&pattern, &s.host)).collect()
        } else {
            registry.service(&pattern).into_iter().collect()
        };
        for service in matching {
            let Some(service_routes) = routes.get_mut(&service.host) else { continue };
            match &service_routes.virtual_service {
                Some(existing) => diags.push(src.diagnostic(
                    Severity::Warning,
                    format!("spec.hosts[{i}]"),
                    format!(
                        "{} is already routed by VirtualService {existing} (older); this one is ignored for it",
                        service.host
                    ),
                )),
                None => {
                    service_routes.virtual_service = Some(name.clone());
                    service_routes.rules = http.clone();
                    service_routes.index = index.clone();
                    service_routes.tcp_rules = tcp.clone();
                    let tcp_ports = service.ports.iter().filter(|p| p.protocol == Protocol::Tcp).count();
                    if !http.is_empty() && tcp_ports == service.ports.len() {
                        diags.push(src.diagnostic(
                            Severity::Warning,
                            "spec.http",
                            format!("{} has only TCP ports; http rules never apply", service.host),
                        ));
                    }
                }
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
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        assert!(in_subnet("10.96.0.10".parse().unwrap(), "10.96.0.0".parse().unwrap(), 12));
        assert!(!in_subnet("10.112.0.1".parse().unwrap(), "10.96.0.0".parse().unwrap(), 12));
        assert!(in_subnet("1.2.3.4".parse().unwrap(), "0.0.0.0".parse().unwrap(), 0));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(251) && !is_prime(65536) && !is_prime(1));
    }
}
