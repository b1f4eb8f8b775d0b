//! Deciding what to do with a request, before any I/O: a pure function of the route table, the
//! request and the random draws, whose answer both transports (the raw relay and hyper) carry out.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use rand::Rng;

use super::split_query;
use crate::proxy::local_reply::LocalReply;
use crate::routing::{
    request_host, Abort, Action, Cluster, Cors, GatewayEntry, HeaderOps, MatchBlock, RequestView, ResponseFlag,
    RouteAction, RouteTable, Rule, Target, WeightedTarget,
};

/// The request as deciding sees it.
#[derive(Clone, Copy)]
pub struct PlanRequest<'r> {
    /// Method.
    pub method: &'r Method,
    /// Host header (or the target's authority).
    pub authority: &'r str,
    /// Request target, origin form.
    pub path_and_query: &'r str,
    /// Request headers.
    pub headers: &'r HeaderMap,
    /// The client's address.
    pub client: IpAddr,
    /// Where the client's connection was going before capture, when captured.
    pub original: Option<SocketAddr>,
    /// Namespace short Host headers resolve against.
    pub namespace: &'r str,
    /// Where the request entered a gateway listener; `None` for captured traffic.
    pub gateway: Option<GatewayEntry<'r>>,
}

impl<'r> PlanRequest<'r> {
    /// What the rules look at, for the request addressed to `port`.
    fn view(&self, port: u16) -> RequestView<'r> {
        let (path, query) = split_query(self.path_and_query);
        RequestView {
            method: self.method.as_str(),
            path,
            query,
            authority: self.authority,
            scheme: self.scheme(),
            headers: self.headers,
            port,
            source: Some(self.client),
        }
    }

    /// `https` for a request that came over TLS (a gateway's terminated TLS), else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.gateway {
            Some(GatewayEntry { server: Some(_), .. }) => "https",
            _ => "http",
        }
    }
}

/// Which rule serves a request: the half of deciding that draws nothing.
#[derive(Clone, Copy)]
pub struct Routed<'t> {
    /// Service addressed, when known.
    pub service: Option<&'t Arc<str>>,
    /// Matching rule.
    pub rule: Option<&'t Rule>,
    block: Option<&'t MatchBlock>,
    /// A gateway server's `httpsRedirect` answers the request (301 to https).
    https_redirect: bool,
}

impl Routed<'_> {
    /// Whether the raw relay may carry out the plan: its rule only forwards (decided when the
    /// route was compiled, for all its destinations, so declining never skews the split) and no
    /// gateway's `httpsRedirect` answers instead.
    pub fn relayable(&self) -> bool {
        !self.https_redirect
            && self.rule.is_some_and(|rule| matches!(&rule.action, Action::Route(route) if route.relayable))
    }
}

/// What to do with a request.
pub struct Plan<'t> {
    /// Service addressed, when known.
    pub service: Option<&'t Arc<str>>,
    /// Matching rule, when one matched.
    pub rule: Option<&'t Rule>,
    /// Destination cluster drawn, by name (also when it does not exist: NC).
    pub cluster: Option<&'t Arc<str>>,
    /// A fault delay drawn (DI): waited before anything else.
    pub delay: Option<Duration>,
    /// Answer locally, or forward.
    pub outcome: Outcome<'t>,
    /// The rule's response header operations, applied to whatever answer the request gets.
    pub response_headers: Option<&'t HeaderOps>,
    /// CORS headers for the answer: the policy and the allowed origin.
    pub cors: Option<(&'t Cors, HeaderValue)>,
}

/// The proxy answers, or an endpoint does.
pub enum Outcome<'t> {
    /// A reply made by the proxy (no route, no cluster, fault abort, CORS preflight, direct
    /// response, redirect).
    Reply(LocalReply),
    /// Forward to a cluster.
    Forward(Forward<'t>),
}

/// Forwarding as decided.
pub struct Forward<'t> {
    /// Retry and timeout policy, mirrors.
    pub route: &'t RouteAction,
    /// Destination drawn by weight.
    pub target: &'t WeightedTarget,
    /// Its cluster.
    pub cluster: &'t Arc<Cluster>,
    /// Request header operations: the rule's, then the destination's.
    pub request_headers: [&'t HeaderOps; 2],
    /// The request target after a rewrite.
    pub path_and_query: Option<String>,
    /// The Host after a rewrite.
    pub authority: Option<HeaderValue>,
    /// Mirror clusters drawn (copied when the body can be replayed).
    pub mirrors: Vec<&'t Arc<Cluster>>,
}

/// Decides in one go: [`route`] then [`plan`].
pub fn decide<'t>(table: &'t RouteTable, req: &PlanRequest<'_>, rng: &mut impl Rng) -> Plan<'t> {
    plan(route(table, req), req, rng)
}

/// The service `req` addresses and its matching rule; for a request that entered a gateway,
/// the virtual host its Host chose among the VirtualServices bound to the gateway.
pub fn route<'t>(table: &'t RouteTable, req: &PlanRequest<'_>) -> Routed<'t> {
    if let Some(entry) = &req.gateway {
        return route_gateway(table, entry, req);
    }
    let (service, port) = service(table, req);
    let Some(service) = service else {
        return Routed { service: None, rule: None, block: None, https_redirect: false };
    };
    let view = req.view(port);
    let decision = table.route(service, &view);
    Routed { service: Some(service), rule: decision.rule, block: decision.block, https_redirect: false }
}

fn route_gateway<'t>(table: &'t RouteTable, entry: &GatewayEntry<'_>, req: &PlanRequest<'_>) -> Routed<'t> {
    let view = req.view(entry.port);
    let decided = table.route_gateway(entry, &view);
    let (rule, block) = decided.decision.map_or((None, None), |d| (d.rule, d.block));
    Routed { service: decided.domain, rule, block, https_redirect: decided.https_redirect }
}

/// What `routed` means for `req`, with faults, the weighted pick and mirrors drawn from `rng`.
pub fn plan<'t>(routed: Routed<'t>, req: &PlanRequest<'_>, rng: &mut impl Rng) -> Plan<'t> {
    let Routed { service, rule, block, https_redirect } = routed;
    let (mut cluster, mut delay, mut response_headers, mut cors) = (None, None, None, None);
    let outcome = 'decided: {
        if https_redirect {
            // Envoy's `require_tls`: the same host (without its port) and path over https.
            let mut reply = LocalReply::empty(StatusCode::MOVED_PERMANENTLY);
            let location = format!("https://{}{}", request_host(req.authority), req.path_and_query);
            if let Ok(location) = HeaderValue::from_str(&location) {
                reply.headers.insert(header::LOCATION, location);
            }
            break 'decided Outcome::Reply(reply);
        }
        let Some(service) = service else {
            if req.gateway.is_some() {
                let body = format!("no virtual host for authority {:?} at this gateway", req.authority);
                break 'decided Outcome::Reply(LocalReply::flagged(ResponseFlag::NR, body));
            }
            let body = format!("no service for authority {:?}", req.authority);
            break 'decided Outcome::Reply(LocalReply::flagged(ResponseFlag::NR, body));
        };
        let Some(rule) = rule else {
            let body = format!("no route matched for {service}");
            break 'decided Outcome::Reply(LocalReply::flagged(ResponseFlag::NR, body));
        };
        if let Some(policy) = &rule.cors {
            if let Some(origin) = req.headers.get(header::ORIGIN) {
                let allowed = origin.to_str().is_ok_and(|o| policy.allows(o));
                if is_preflight(req) && (allowed || !policy.forward_unmatched) {
                    let mut reply = LocalReply::empty(StatusCode::OK);
                    if allowed {
                        policy.preflight_headers(origin, &mut reply.headers);
                    }
                    break 'decided Outcome::Reply(reply);
                }
                cors = allowed.then(|| (policy, origin.clone()));
            }
        }
        response_headers = Some(&rule.headers.response);
        if let Some(fault) = &rule.fault {
            if let Some((wait, p)) = fault.delay {
                delay = rng.gen_bool(p).then_some(wait);
            }
            if let Some(abort) = fault.abort.as_ref().filter(|a| rng.gen_bool(a.probability)) {
                break 'decided Outcome::Reply(abort_reply(abort));
            }
        }
        match &rule.action {
            Action::Direct(d) => {
                let mut reply = LocalReply::empty(StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK));
                if !d.body.is_empty() {
                    reply.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                }
                reply.body = d.body.clone();
                Outcome::Reply(reply)
            }
            Action::Redirect(r) => {
                let status = StatusCode::from_u16(r.code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
                let mut reply = LocalReply::empty(status);
                if let Ok(location) =
                    HeaderValue::from_str(&r.location(req.scheme(), req.authority, req.path_and_query))
                {
                    reply.headers.insert(header::LOCATION, location);
                }
                Outcome::Reply(reply)
            }
            Action::Route(route) => {
                let target = route.targets.pick_with(rng);
                cluster = Some(target.target.name());
                match &target.target {
                    Target::Missing { cluster } => {
                        let body = format!("cluster not found: {cluster}");
                        Outcome::Reply(LocalReply::flagged(ResponseFlag::NC, body))
                    }
                    Target::Cluster(cluster) => match cluster.tls.refusal() {
                        // Envoy fails such a cluster's connections in its transport socket (a
                        // secret it cannot have): a connection failure, UF; here before any I/O.
                        Some(why) => Outcome::Reply(LocalReply::flagged(
                            ResponseFlag::UF,
                            format!(
                                "upstream connect error or disconnect/reset before headers. reset reason: connection \
                                 failure, transport failure reason: TLS_error: cluster {} refuses to connect: {why}",
                                cluster.name
                            ),
                        )),
                        None => Outcome::Forward(forward(rule, route, target, cluster, block, req, rng)),
                    },
                }
            }
        }
    };
    Plan { service, rule, cluster, delay, outcome, response_headers, cors }
}

/// The fault filter's abort: its status (and gRPC status), flagged FI.
fn abort_reply(abort: &Abort) -> LocalReply {
    let status = StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut reply = LocalReply::empty(status);
    reply.body = Bytes::from_static(b"fault filter abort");
    if let Some(grpc) = abort.grpc_status {
        reply.headers.insert("grpc-status", HeaderValue::from(grpc));
        reply.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    }
    reply.set_flag(ResponseFlag::FI);
    reply
}

fn forward<'t>(
    rule: &'t Rule,
    route: &'t RouteAction,
    target: &'t WeightedTarget,
    cluster: &'t Arc<Cluster>,
    block: Option<&'t MatchBlock>,
    req: &PlanRequest<'_>,
    rng: &mut impl Rng,
) -> Forward<'t> {
    let mut forward = Forward {
        route,
        target,
        cluster,
        request_headers: [&rule.headers.request, &target.headers.request],
        path_and_query: None,
        authority: None,
        mirrors: Vec::new(),
    };
    if let Some(rewrite) = &route.rewrite {
        let (path, query) = split_query(req.path_and_query);
        forward.path_and_query =
            rewrite.path(path, block.and_then(MatchBlock::uri_prefix)).map(|new_path| match query {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            });
        forward.authority = rewrite.authority.as_deref().and_then(|a| HeaderValue::from_str(a).ok());
    }
    for mirror in &route.mirrors {
        if rng.gen_bool(mirror.probability) {
            if let Target::Cluster(c) = &mirror.target {
                forward.mirrors.push(c);
            }
        }
    }
    forward
}

/// The service and port a request addresses: the captured VIP:port when there is one, else the
/// Host header (a direct connection to the proxy).
fn service<'t>(table: &'t RouteTable, req: &PlanRequest<'_>) -> (Option<&'t Arc<str>>, u16) {
    if let Some(original) = req.original {
        if let Some(service) = table.service_at(original) {
            return (Some(service), original.port());
        }
    }
    let port = req.authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
    let service = table.service_for_authority(req.authority, req.namespace).map(|s| &s.host);
    (service, port)
}

fn is_preflight(req: &PlanRequest<'_>) -> bool {
    *req.method == Method::OPTIONS && req.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[cfg(test)]
mod tests;
