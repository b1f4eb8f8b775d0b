//! Human answers to "why did my request go there?": rule-by-rule match results, destinations with
//! their probabilities, endpoints and balancing policy.

use std::fmt::{self, Write as _};

use super::{
    Action, ClusterTls, GatewayServer, L4View, RequestView, RouteTable, Rule, ServerProtocol, Target, TcpRule, Weights,
};

/// How one rule fared against the request.
#[derive(Debug)]
pub enum RuleResult {
    /// It matched (through this block, if it has blocks).
    Matched(Option<usize>),
    /// Each block's first failing field.
    NotMatched(Vec<String>),
    /// Not looked at: an earlier rule matched.
    NotReached,
}

/// The explanation of one request.
#[derive(Debug)]
pub struct Explanation<'t> {
    /// The service the request addresses.
    pub service: &'t str,
    /// The VirtualService bound to it, if any.
    pub virtual_service: Option<&'t str>,
    /// Each rule with its result.
    pub rules: Vec<(&'t Rule, RuleResult)>,
    /// For a request that entered a gateway: the gateway, the server, whether it redirects to
    /// https; the `service` is then the virtual host (a VirtualService host) the Host chose.
    pub gateway: Option<GatewayExplanation<'t>>,
    table: &'t RouteTable,
}

/// How a gateway took a request.
#[derive(Debug)]
pub struct GatewayExplanation<'t> {
    /// `namespace/name`.
    pub name: &'t str,
    /// The server whose virtual host matched, when one did.
    pub server: Option<&'t GatewayServer>,
}

pub(super) fn explain<'t>(table: &'t RouteTable, service: &'t str, req: &RequestView<'_>) -> Explanation<'t> {
    let mut out = Explanation { service, virtual_service: None, rules: Vec::new(), gateway: None, table };
    let Some(routes) = table.routes.get(service) else { return out };
    out.virtual_service = routes.virtual_service.as_deref();
    if routes.virtual_service.is_none() {
        if let Some(rule) = routes.default_rules.get(&req.port) {
            out.rules.push((rule, RuleResult::Matched(None)));
        }
        return out;
    }
    out.rules = explain_rules(table, &routes.rules, req, None);
    out
}

pub(super) fn explain_gateway<'t>(table: &'t RouteTable, gateway: &'t str, req: &RequestView<'t>) -> Explanation<'t> {
    let found = table.gateways.virtual_host_of(gateway, req.authority, req.port);
    let mut out = Explanation {
        service: found.map_or(req.authority, |(vh, _)| &*vh.domain),
        virtual_service: found.map(|(vh, _)| &*vh.virtual_service),
        rules: Vec::new(),
        gateway: Some(GatewayExplanation { name: gateway, server: found.map(|(_, server)| server) }),
        table,
    };
    if let Some((vh, _)) = found {
        out.rules = explain_rules(table, &vh.rules, req, Some(gateway));
    }
    out
}

/// Each of `rules` with how it fared against `req` (captured, or entered at `gateway`).
fn explain_rules<'t>(
    table: &RouteTable,
    rules: &'t [Rule],
    req: &RequestView<'_>,
    gateway: Option<&str>,
) -> Vec<(&'t Rule, RuleResult)> {
    let mut out = Vec::new();
    let mut matched = false;
    for rule in rules {
        if matched {
            out.push((rule, RuleResult::NotReached));
            continue;
        }
        if rule.matches.is_empty() {
            matched = true;
            out.push((rule, RuleResult::Matched(None)));
            continue;
        }
        let mut reasons = Vec::new();
        let mut hit = None;
        for (i, block) in rule.matches.iter().enumerate() {
            match block.first_mismatch_at(req, &table.registry, gateway) {
                None => {
                    hit = Some(i);
                    break;
                }
                Some(m) => reasons.push(format!("match[{i}]: {}", block.describe(m, req))),
            }
        }
        match hit {
            Some(i) => {
                matched = true;
                out.push((rule, RuleResult::Matched(Some(i))));
            }
            None => out.push((rule, RuleResult::NotMatched(reasons))),
        }
    }
    out
}

impl Explanation<'_> {
    /// The rule that matched, if any.
    pub fn matched(&self) -> Option<&Rule> {
        self.rules.iter().find(|(_, r)| matches!(r, RuleResult::Matched(_))).map(|(rule, _)| *rule)
    }
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(gateway) = &self.gateway {
            writeln!(f, "gateway: {}", gateway.name)?;
            let Some(server) = gateway.server else {
                return writeln!(
                    f,
                    "  host {:?}: no VirtualService bound to this gateway serves it (404 NR)",
                    self.service
                );
            };
            let tls = match server.protocol {
                ServerProtocol::Passthrough => "TLS passthrough",
                _ if server.tls.is_some() => "TLS terminated",
                _ => "plain",
            };
            writeln!(f, "server: {} (port {}, {tls})", server.id, server.port)?;
            if server.https_redirect {
                return writeln!(f, "result: 301 to https (httpsRedirect)");
            }
            writeln!(f, "virtual host: {}", self.service)?;
        } else {
            writeln!(f, "service: {}", self.service)?;
            if !self.table.routes.contains_key(self.service) {
                return writeln!(f, "  not a known service: the request is not routed (404 NR)");
            }
        }
        match self.virtual_service {
            Some(vs) => writeln!(f, "virtual service: {vs}")?,
            None => writeln!(f, "virtual service: none (Istio's default route to every endpoint of the service)")?,
        }
        for (rule, result) in &self.rules {
            match result {
                RuleResult::Matched(block) => {
                    let via = block.map_or_else(String::new, |b| format!(" (match[{b}])"));
                    writeln!(f, "  ✔ {}{via}: MATCHED", rule.label)?;
                }
                RuleResult::NotMatched(reasons) => {
                    writeln!(f, "  ✘ {}: no match", rule.label)?;
                    for r in reasons {
                        writeln!(f, "      {r}")?;
                    }
                }
                RuleResult::NotReached => writeln!(f, "  · {}: not evaluated (an earlier rule matched)", rule.label)?,
            }
        }
        let Some(rule) = self.matched() else {
            return writeln!(f, "result: 404 NR (no rule matched)");
        };
        write_action(f, rule)
    }
}

fn write_action(f: &mut fmt::Formatter<'_>, rule: &Rule) -> fmt::Result {
    if let Some(fault) = &rule.fault {
        if let Some((d, p)) = fault.delay {
            writeln!(f, "fault: delay {d:?} on {:.1}% of requests", p * 100.0)?;
        }
        if let Some(a) = &fault.abort {
            writeln!(f, "fault: abort with {} on {:.1}% of requests", a.status, a.probability * 100.0)?;
        }
    }
    match &rule.action {
        Action::Redirect(r) => writeln!(f, "result: redirect {}", r.code),
        Action::Direct(d) => writeln!(f, "result: direct response {} ({} bytes)", d.status, d.body.len()),
        Action::Route(route) => {
            writeln!(f, "result: route")?;
            if let Some(t) = route.timeout {
                writeln!(f, "  timeout: {t:?}")?;
            }
            writeln!(f, "  retries: {} attempt(s), per try {:?}", route.retry.attempts, route.retry.per_try_timeout)?;
            for (target, p) in route.probabilities() {
                writeln!(f, "  {:>6.2}%  {}", p * 100.0, target.target.name())?;
                write_target(f, &target.target, "           ")?;
            }
            for m in &route.mirrors {
                writeln!(f, "  mirror {:.1}% → {}", m.probability * 100.0, m.target.name())?;
            }
            Ok(())
        }
    }
}

/// `explain --sni`: each `tls` (then `tcp`) rule a TLS connection meets, the one that matched and
/// its destinations. At a gateway (`at.gateway`), the `PASSTHROUGH` server the SNI picks on
/// `at.port` and the `tls` rules of the VirtualServices bound to it.
pub(super) fn explain_tls<'t>(table: &'t RouteTable, service: &str, at: &L4View<'_>) -> String {
    let sni = at.sni.unwrap_or("(none)");
    let mut out = String::new();
    let mut tried: Vec<(&'t TcpRule, bool)> = Vec::new();
    let mut chosen: Option<(&'t str, &'t Weights)> = None;
    let mut tried_rules = |rules: &'t [TcpRule], at: &L4View<'_>| {
        for rule in rules {
            let matched = rule.matches.is_empty() || rule.matches.iter().any(|m| m.matches(at, &table.registry));
            tried.push((rule, matched));
            if matched {
                return true;
            }
        }
        false
    };
    if let Some(gateway) = at.gateway {
        let _ = writeln!(out, "gateway: {gateway} port {} (SNI {sni})", at.port);
        // An opaque TCP server is alone on its port; TLS servers are told apart by SNI.
        let server = table
            .gateways
            .servers(at.port)
            .iter()
            .filter(|s| &*s.id.gateway == gateway)
            .filter_map(|s| match s.protocol {
                ServerProtocol::Tcp => Some((usize::MAX, s)),
                p if p.is_tls() => s.sni_rank(at.sni).map(|rank| (rank, s)),
                _ => None,
            })
            .fold(None, |best: Option<(usize, &GatewayServer)>, (rank, s)| match best {
                Some((b, _)) if b >= rank => best,
                _ => Some((rank, s)),
            })
            .map(|(_, s)| s);
        let Some(server) = server else {
            let _ = writeln!(out, "  no TCP or TLS server of this gateway on this port admits the SNI: closed");
            return out;
        };
        match server.protocol {
            ServerProtocol::Passthrough => {
                let _ = writeln!(out, "server: {} (PASSTHROUGH)", server.id);
                for vh in super::passthrough_candidates(server, at.sni) {
                    let _ = writeln!(out, "virtual host: {} [{}]", vh.domain, vh.virtual_service);
                    if tried_rules(&vh.tls_rules, at) {
                        break;
                    }
                }
            }
            ServerProtocol::Tcp | ServerProtocol::TerminatedTcp => {
                let how = if server.protocol == ServerProtocol::Tcp { "TCP" } else { "TLS terminated, then TCP" };
                let _ = writeln!(out, "server: {} ({how})", server.id);
                for vh in super::tcp_candidates(server) {
                    let _ = writeln!(out, "virtual service: {}", vh.virtual_service);
                    if tried_rules(&vh.tcp_rules, at) {
                        break;
                    }
                }
            }
            ServerProtocol::Https | ServerProtocol::Http => {
                let _ = writeln!(out, "server: {} terminates TLS: explain it with --host instead", server.id);
                return out;
            }
        }
    } else {
        let _ = writeln!(out, "service: {service} (TLS, SNI {sni})");
        let Some(routes) = table.routes.get(service) else {
            let _ = writeln!(out, "  no known service has this host");
            return out;
        };
        if let Some(vs) = &routes.virtual_service {
            let _ = writeln!(out, "virtual service: {vs}");
        }
        if !tried_rules(&routes.tls_rules, at) && !tried_rules(&routes.tcp_rules, at) {
            if let Some(Action::Route(route)) = routes.default_rules.get(&at.port).map(|r| &r.action) {
                chosen = Some((super::DEFAULT_RULE, &route.targets));
            }
        }
    }
    for (rule, matched) in &tried {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            if *matched { "✔" } else { "✘" },
            rule.label,
            if *matched { "MATCHED" } else { "no match" }
        );
        if *matched {
            chosen = Some((&rule.label, &rule.targets));
        }
    }
    match chosen {
        None => {
            let _ = writeln!(out, "result: no rule matched: closed");
        }
        Some((label, targets)) => {
            let why =
                if label == super::DEFAULT_RULE { " (no tls or tcp rule matched: the service itself)" } else { "" };
            let _ = writeln!(out, "result: {label}{why}, bytes forwarded as they are");
            let _ = write!(out, "{}", Destinations(targets));
        }
    }
    out
}

/// Weighted destinations with their endpoints, as `explain` prints them.
struct Destinations<'t>(&'t Weights);

impl fmt::Display for Destinations<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (target, p) in self.0.probabilities() {
            writeln!(f, "  {:>6.2}%  {}", p * 100.0, target.target.name())?;
            write_target(f, &target.target, "           ")?;
        }
        Ok(())
    }
}

fn write_target(f: &mut fmt::Formatter<'_>, target: &Target, indent: &str) -> fmt::Result {
    match target {
        Target::Missing { .. } => writeln!(f, "{indent}cluster not defined: requests get 503 NC"),
        Target::Cluster(c) => {
            match &c.tls {
                ClusterTls::Plaintext => {}
                ClusterTls::Refused { .. } => writeln!(f, "{indent}tls {}: requests get 503 UF", c.tls)?,
                ClusterTls::Originate(_) => writeln!(f, "{indent}tls {}", c.tls)?,
            }
            let eps = c.balancer.endpoints();
            if eps.is_empty() {
                return writeln!(f, "{indent}no endpoints: requests get 503 UH (no healthy upstream)");
            }
            let mut line = format!("{indent}lb {}:", c.balancer.policy().name());
            for (i, e) in eps.iter().enumerate() {
                let _ = write!(line, " {e}{}", if c.balancer.is_ejected(i) { " (ejected)" } else { "" });
            }
            writeln!(f, "{line}")
        }
    }
}

/// The whole table, service by service.
pub(super) fn describe(table: &RouteTable) -> String {
    let mut out = String::new();
    for (vip, (host, _)) in &table.capture {
        let _ = writeln!(out, "capture {vip} → {host}");
    }
    let mut hosts: Vec<&std::sync::Arc<str>> = table.routes.keys().collect();
    hosts.sort();
    for host in hosts {
        let routes = &table.routes[host];
        let _ = writeln!(out, "\n{host}  [{}]", routes.virtual_service.as_deref().unwrap_or("no VirtualService"));
        if routes.virtual_service.is_none() {
            let mut ports: Vec<_> = routes.default_rules.iter().collect();
            ports.sort_by_key(|(p, _)| **p);
            for (port, rule) in ports {
                let _ = writeln!(out, "  port {port}: {}", targets(rule));
            }
            tls_lines(&mut out, routes.default_rules.values());
            continue;
        }
        for rule in routes.rules.iter() {
            let conditions = if rule.matches.is_empty() {
                "always".to_owned()
            } else {
                format!("{} match block(s)", rule.matches.len())
            };
            let _ = writeln!(out, "  {} ({conditions}): {}", rule.label, targets(rule));
        }
        tls_lines(&mut out, routes.rules.iter());
        for (kind, rule) in
            routes.tls_rules.iter().map(|r| ("tls", r)).chain(routes.tcp_rules.iter().map(|r| ("tcp", r)))
        {
            let names: Vec<String> =
                rule.targets.iter().map(|t| format!("{} w{}", t.target.name(), t.weight)).collect();
            let _ = writeln!(out, "  {} ({kind}): {}", rule.label, names.join(", "));
        }
    }
    for (port, servers) in table.gateways.ports() {
        for server in servers {
            let hosts: Vec<String> =
                server.hosts.iter().map(|h| format!("{}/{}", h.namespace.as_deref().unwrap_or("*"), h.host)).collect();
            let kind = match (&server.tls, server.https_redirect) {
                _ if server.protocol == ServerProtocol::Passthrough => "PASSTHROUGH TLS".to_owned(),
                _ if server.protocol == ServerProtocol::Tcp => "TCP".to_owned(),
                (Some(tls), _) if server.protocol == ServerProtocol::TerminatedTcp => {
                    format!("{:?} TLS, then TCP", tls.mode)
                }
                (Some(tls), _) => format!("{:?} TLS", tls.mode),
                (None, true) => "HTTP, redirect to https".to_owned(),
                (None, false) => "HTTP".to_owned(),
            };
            let _ = writeln!(out, "\ngateway {} port {port} ({kind}) hosts {}", server.id, hosts.join(", "));
            for vh in &server.virtual_hosts {
                let _ = writeln!(out, "  {} [{}]", vh.domain, vh.virtual_service);
            }
        }
    }
    out
}

/// One line per cluster the rules route to that does not speak plaintext: its upstream TLS.
fn tls_lines<'r>(out: &mut String, rules: impl Iterator<Item = &'r Rule>) {
    let mut seen = std::collections::BTreeMap::new();
    for rule in rules {
        if let Action::Route(route) = &rule.action {
            for t in route.targets.iter() {
                if let Target::Cluster(c) = &t.target {
                    if !c.tls.is_plaintext() {
                        seen.insert(c.name.clone(), c.tls.to_string());
                    }
                }
            }
        }
    }
    for (name, tls) in seen {
        let _ = writeln!(out, "  {name} tls {tls}");
    }
}

fn targets(rule: &Rule) -> String {
    match &rule.action {
        Action::Redirect(r) => format!("redirect {}", r.code),
        Action::Direct(d) => format!("direct response {}", d.status),
        Action::Route(route) => route
            .probabilities()
            .map(|(t, p)| format!("{:.1}% {}", p * 100.0, t.target.name()))
            .collect::<Vec<_>>()
            .join(", "),
    }
}
