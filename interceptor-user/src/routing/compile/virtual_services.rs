//! VirtualServices: http rules (matches, actions, destinations and their weights) and the
//! services their hosts bind them to.

use std::collections::HashMap;
use std::sync::Arc;

use super::destination_rules::cluster_name;
use super::Compiler;
use crate::config::{Destination, HttpRoute, Resource, Severity, Source, VirtualService};
use crate::endpoints::{qualify_host, Protocol, Service};
use crate::routing::actions::{
    parse_duration, probability, Cors, DirectResponse, Fault, HeaderPolicy, Redirect, RetryPolicy, Rewrite,
};
use crate::routing::gateway::MESH;
use crate::routing::index::RuleIndex;
use crate::routing::{
    Action, Cluster, MatchBlock, Mirror, RouteAction, Rule, ServiceRoutes, Target, TcpRule, WeightedTarget, Weights,
    DEFAULT_RULE,
};

pub(super) fn creation_timestamp(vs: &Resource<VirtualService>) -> Option<&str> {
    vs.meta.other.get("creationTimestamp").and_then(|v| v.as_str())
}

/// The rule of a service port without VirtualService: all its endpoints.
pub(super) fn default_rule(cluster: Arc<Cluster>) -> Rule {
    Rule {
        label: DEFAULT_RULE.into(),
        matches: Vec::new(),
        action: Action::Route(RouteAction::new(
            Weights {
                targets: vec![WeightedTarget {
                    weight: 1,
                    target: Target::Cluster(cluster),
                    headers: HeaderPolicy::default(),
                }],
                total: 1,
            },
            None,
            None,
            RetryPolicy::istio_default(),
            Vec::new(),
        )),
        headers: HeaderPolicy::default(),
        fault: None,
        cors: None,
    }
}

/// The `tcp` and `tls` rules of one VirtualService.
pub(super) struct L4Rules {
    pub(super) tcp: Arc<Vec<TcpRule>>,
    pub(super) tls: Arc<Vec<TcpRule>>,
}

impl Compiler<'_> {
    /// The http, tcp and tls rules of `vs`; `None` when it has errors (reported).
    pub(super) fn virtual_service(&mut self, vs: &Resource<VirtualService>) -> Option<(Vec<Rule>, L4Rules)> {
        let src = &vs.source;
        let before = self.error_count();
        let label = format!("{}/{}", vs.meta.namespace, vs.meta.name);
        let mut rules = Vec::new();
        for (i, http) in vs.spec.http.iter().enumerate() {
            let at = format!("spec.http[{i}]");
            let rule_label =
                format!("{label}#{}", if http.name.is_empty() { i.to_string() } else { http.name.clone() });
            // Keep compiling a rule whose matches failed, to report all its errors at once.
            let matches = self.matches(http, &vs.meta.namespace, src, &at).unwrap_or_default();
            match &http.delegate {
                None => {
                    if let Some(rule) = self.rule(http, matches, rule_label, vs, &at) {
                        rules.push(rule);
                    }
                }
                Some(delegate) => rules.extend(self.delegate(http, delegate, matches, &rule_label, vs, &at)),
            }
        }
        self.warn_shadowed(&rules, &vs.spec.http, src);
        let l4 = L4Rules { tcp: Arc::new(self.tcp(vs, &label)), tls: Arc::new(self.tls(vs, &label)) };
        (self.error_count() == before).then_some((rules, l4))
    }

    /// The match blocks of rule `http` (of a VirtualService in `namespace`, which its gateway
    /// names resolve against); `None` when one has errors (reported).
    pub(super) fn matches(
        &mut self,
        http: &HttpRoute,
        namespace: &str,
        src: &Source,
        at: &str,
    ) -> Option<Vec<MatchBlock>> {
        let mut blocks = Vec::new();
        let mut ok = true;
        for (j, m) in http.matches.iter().enumerate() {
            match MatchBlock::compile(m) {
                Ok(mut block) => {
                    block.resolve_gateways(namespace);
                    blocks.push(block)
                }
                Err(errors) => {
                    ok = false;
                    self.report(src, &format!("{at}.match[{j}]"), errors);
                }
            }
        }
        ok.then_some(blocks)
    }

    /// Later rules that an earlier rule without conditions makes unreachable.
    fn warn_shadowed(&mut self, rules: &[Rule], http: &[HttpRoute], src: &Source) {
        let Some(first_catch_all) =
            rules.iter().position(|r| r.matches.is_empty() || r.matches.iter().any(MatchBlock::is_catch_all))
        else {
            return;
        };
        if first_catch_all + 1 < http.len() && first_catch_all + 1 < rules.len() {
            for i in first_catch_all + 1..http.len() {
                self.diags.push(src.diagnostic(
                    Severity::Warning,
                    format!("spec.http[{i}]"),
                    format!("unreachable: rule {first_catch_all} matches every request before it"),
                ));
            }
        }
    }

    /// Rule `http` of `owner` (at `at`) with its compiled `matches`; `None` when it has errors.
    pub(super) fn rule(
        &mut self,
        http: &HttpRoute,
        matches: Vec<MatchBlock>,
        label: String,
        owner: &Resource<VirtualService>,
        at: &str,
    ) -> Option<Rule> {
        let src = &owner.source;
        let before = self.error_count();
        let actions = [!http.route.is_empty(), http.redirect.is_some(), http.direct_response.is_some()]
            .iter()
            .filter(|a| **a)
            .count();
        if actions != 1 {
            self.diags.push(src.diagnostic(
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
            .map_err(|e| self.report(src, &format!("{at}.headers"), e))
            .unwrap_or_default();
        let fault = match &http.fault {
            None => None,
            Some(f) => match Fault::compile(f) {
                Ok((fault, warnings)) => {
                    for (field, message) in warnings {
                        self.diags.push(src.diagnostic(Severity::Warning, format!("{at}.fault.{field}"), message));
                    }
                    Some(fault)
                }
                Err(e) => {
                    self.report(src, &format!("{at}.fault"), [e]);
                    None
                }
            },
        };
        let cors = http
            .cors_policy
            .as_ref()
            .and_then(|c| Cors::compile(c).map_err(|e| self.report(src, &format!("{at}.corsPolicy"), [e])).ok());
        let action = if let Some(r) = &http.redirect {
            Redirect::compile(r)
                .map(Action::Redirect)
                .map_err(|e| self.report(src, &format!("{at}.redirect"), [e]))
                .ok()
        } else if let Some(d) = &http.direct_response {
            DirectResponse::compile(d)
                .map(Action::Direct)
                .map_err(|e| self.report(src, &format!("{at}.directResponse"), [e]))
                .ok()
        } else {
            self.route(http, owner, at).map(Action::Route)
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
                    self.diags.push(src.diagnostic(
                        Severity::Warning,
                        format!("{at}.{field}"),
                        "has no effect without route",
                    ));
                }
            }
        }
        (self.error_count() == before).then(|| Rule::new(label.into(), matches, action, headers, fault, cors))
    }

    fn route(&mut self, http: &HttpRoute, owner: &Resource<VirtualService>, at: &str) -> Option<RouteAction> {
        let src = &owner.source;
        let single = http.route.len() == 1;
        let mut targets = Vec::new();
        for (j, dest) in http.route.iter().enumerate() {
            let at = format!("{at}.route[{j}]");
            let Some(weight) = self.weight(dest.weight, single, src, &at) else { continue };
            let headers = HeaderPolicy::compile(dest.headers.as_ref())
                .map_err(|e| self.report(src, &format!("{at}.headers"), e))
                .unwrap_or_default();
            let Some(target) = self.destination(&dest.destination, owner, &at) else { continue };
            targets.push(WeightedTarget { weight, target, headers });
        }
        let Some(targets) = Weights::new(targets) else {
            if !http.route.is_empty() && self.error_count() == 0 {
                self.diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.route"),
                    "every destination has weight 0",
                ));
            }
            return None;
        };
        let rewrite = http
            .rewrite
            .as_ref()
            .and_then(|r| Rewrite::compile(r).map_err(|e| self.report(src, &format!("{at}.rewrite"), [e])).ok());
        let timeout = http.timeout.as_deref().and_then(|t| {
            parse_duration(t).map_err(|e| self.report(src, &format!("{at}.timeout"), [(String::new(), e)])).ok()
        });
        let retry = match &http.retries {
            None => RetryPolicy::istio_default(),
            Some(r) => RetryPolicy::compile(r)
                .map_err(|e| self.report(src, &format!("{at}.retries"), [e]))
                .unwrap_or_else(|()| RetryPolicy::istio_default()),
        };
        let mut mirrors = Vec::new();
        if let Some(dest) = &http.mirror {
            let pct = http
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(http.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            match (probability(pct), self.destination(dest, owner, &format!("{at}.mirror"))) {
                (Some(p), Some(target)) => mirrors.push(Mirror { target, probability: p }),
                (None, _) => self.diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.mirrorPercentage.value"),
                    format!("{pct} is not between 0 and 100"),
                )),
                _ => {}
            }
        }
        for (k, m) in http.mirrors.iter().enumerate() {
            let pct = m.percentage.as_ref().map_or(100.0, |p| p.value);
            match (probability(pct), self.destination(&m.destination, owner, &format!("{at}.mirrors[{k}].destination")))
            {
                (Some(p), Some(target)) => mirrors.push(Mirror { target, probability: p }),
                (None, _) => self.diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.mirrors[{k}].percentage.value"),
                    format!("{pct} is not between 0 and 100"),
                )),
                _ => {}
            }
        }
        Some(RouteAction::new(targets, rewrite, timeout, retry, mirrors))
    }

    /// A destination's weight; `None` (reported) when negative. Istio: a lone destination without
    /// a weight takes all traffic; among several, an absent weight is 0.
    pub(super) fn weight(&mut self, weight: Option<i64>, single: bool, src: &Source, at: &str) -> Option<u64> {
        match weight {
            None | Some(0) if single => Some(100),
            None => Some(0),
            Some(w) if w < 0 => {
                self.diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.weight"),
                    format!("weight must be >= 0, got {w}"),
                ));
                None
            }
            // Istio's weights are int32: more is refused there, and would overflow sums here.
            Some(w) if w > i64::from(i32::MAX) => {
                self.diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.weight"),
                    format!("weight must be <= {} (an int32), got {w}", i32::MAX),
                ));
                None
            }
            Some(w) => Some(w.unsigned_abs()),
        }
    }

    /// Where `dest` (in `owner`, at `at`) leads; `None` when it is an error (reported).
    pub(super) fn destination(
        &mut self,
        dest: &Destination,
        owner: &Resource<VirtualService>,
        at: &str,
    ) -> Option<Target> {
        let (ns, src) = (owner.meta.namespace.as_str(), &owner.source);
        let host = qualify_host(&dest.host, ns).into_owned();
        let subset = dest.subset.as_str();
        if dest.host.is_empty() {
            self.diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.destination.host"),
                "a destination needs a host",
            ));
            return None;
        }
        let Some(service) = self.registry.service(&host) else {
            let port = dest.port.as_ref().map_or(0, |p| p.number);
            self.diags.push(src.diagnostic(
                Severity::Warning,
                format!("{at}.destination.host"),
                format!("no service {host} is known; requests routed here get 503 NC"),
            ));
            return Some(Target::Missing {
                cluster: cluster_name(&host, subset, u16::try_from(port).unwrap_or(0)).into(),
            });
        };
        let port = match (&dest.port, service.ports.as_slice()) {
            (Some(p), _) => match service.ports.iter().find(|sp| u32::from(sp.number) == p.number) {
                Some(sp) => sp.number,
                None => {
                    self.diags.push(src.diagnostic(
                        Severity::Error,
                        format!("{at}.destination.port.number"),
                        format!("service {host} has no port {}", p.number),
                    ));
                    return None;
                }
            },
            (None, [only]) => only.number,
            (None, _) => {
                self.diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.destination.port"),
                    format!("service {host} has several ports; name one"),
                ));
                return None;
            }
        };
        if !subset.is_empty() {
            match self.rules.get(&host) {
                Some(dr) if !dr.subsets.contains_key(subset) => {
                    let mut defined: Vec<&str> = dr.resource.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                    defined.dedup();
                    self.diags.push(src.diagnostic(
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
                    self.diags.push(src.diagnostic(
                        Severity::Warning,
                        format!("{at}.destination.subset"),
                        format!("no DestinationRule defines subsets for {host}; requests routed here get 503 NC"),
                    ));
                    return Some(Target::Missing { cluster: cluster_name(&host, subset, port).into() });
                }
            }
        }
        let cluster = self.cluster(service, port, subset);
        if cluster.balancer.endpoints().is_empty() {
            self.diags.push(src.diagnostic(
                Severity::Warning,
                format!("{at}.destination"),
                format!("{} selects no endpoint; requests routed here get 503 no healthy upstream", cluster.name),
            ));
        }
        Some(Target::Cluster(cluster))
    }

    /// The prefilter over `http`, the rules of `vs`; `None` (warned) when it cannot be built.
    pub(super) fn index(&mut self, vs: &Resource<VirtualService>, http: &[Rule]) -> Option<Arc<RuleIndex>> {
        match RuleIndex::build(http) {
            Ok(index) => Some(Arc::new(index)),
            Err(e) => {
                // Still correct without the prefilter, only slower.
                self.diags.push(vs.source.diagnostic(
                    Severity::Warning,
                    "spec.http",
                    format!("{e}; rules are checked one by one"),
                ));
                None
            }
        }
    }

    /// Attaches compiled rules to the services a VirtualService's hosts name, unless it applies
    /// only to gateways. The oldest VirtualService for a host wins, as with Istio sidecars;
    /// later ones only warn.
    pub(super) fn bind(
        &mut self,
        vs: &Resource<VirtualService>,
        http: Arc<Vec<Rule>>,
        index: Option<Arc<RuleIndex>>,
        l4: &L4Rules,
        routes: &mut HashMap<Arc<str>, ServiceRoutes>,
    ) {
        let registry = self.registry;
        let src = &vs.source;
        let mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == MESH);
        if !mesh {
            return;
        }
        let name = format!("{}/{}", vs.meta.namespace, vs.meta.name);
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
                    Some(existing) => self.diags.push(src.diagnostic(
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
                        service_routes.tcp_rules = l4.tcp.clone();
                        service_routes.tls_rules = l4.tls.clone();
                        let tcp_ports = service.ports.iter().filter(|p| p.protocol == Protocol::Tcp).count();
                        if !http.is_empty() && tcp_ports == service.ports.len() {
                            self.diags.push(src.diagnostic(
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
                self.diags.push(src.diagnostic(
                    Severity::Warning,
                    format!("spec.hosts[{i}]"),
                    format!("no known service is named {pattern}; these rules route nothing"),
                ));
            }
        }
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}
