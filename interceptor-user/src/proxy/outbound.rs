//! One captured client connection: routes each of its requests and carries out the rule's action
//! (fault, CORS, redirect, direct response, or forwarding with rewrite, headers, mirrors, retries
//! and timeout).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use rand::Rng;
use tracing::debug;

use super::access_log::RequestInfo;
use super::body_count::{Counted, Ended, Tally};
use super::metrics::SourceWorkload;
use super::upstream::UpstreamBody;
use super::ProxyInputs;
use crate::endpoints::{Outcome, PickContext, Policy};
use crate::routing::{
    Action, Cluster, HashKey, MatchBlock, RequestView, ResponseFlag, RouteAction, RouteTable, Rule, Target,
};

mod relay;

pub use relay::Relayed;

/// Body of every response the proxy sends downstream.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Header on responses the proxy made itself, carrying Envoy's response flags (NR, NC, UH, UF …).
pub const FLAGS_HEADER: &str = "x-interceptor-flags";

/// Request bodies up to this size are buffered so retries and mirrors can replay them (Envoy
/// buffers for the same reason); larger or unsized bodies stream, tried once, not mirrored.
pub const REPLAY_BUFFER_LIMIT: u64 = 64 * 1024;

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1), never forwarded; the names
/// `Connection` lists are too. Lowercase, as `HeaderMap` keys are.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A captured connection from `client`, originally addressed to `original`.
pub struct Outbound {
    inputs: ProxyInputs,
    client: SocketAddr,
    original: Option<SocketAddrV4>,
}

/// What the access log says about one request.
#[derive(Default)]
pub struct Served {
    /// Service addressed.
    pub service: Arc<str>,
    /// Rule label.
    pub rule: Arc<str>,
    /// Cluster name.
    pub cluster: Arc<str>,
    /// Endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    /// Tries made.
    pub tries: u32,
    /// Response flags.
    pub flags: Vec<ResponseFlag>,
    /// Time the endpoint took to answer the last try with headers.
    pub upstream_time: Option<Duration>,
    /// Request body bytes read so far.
    received: Received,
}

/// How many request body bytes the proxy read.
#[derive(Default)]
enum Received {
    /// Not read: the proxy answered before forwarding.
    #[default]
    Nothing,
    /// Read whole, to replay.
    Buffered(u64),
    /// Streaming upstream: counted as the upstream client pulls it, possibly from another task.
    Streaming(Arc<AtomicU64>),
}

impl Received {
    fn bytes(&self) -> u64 {
        match self {
            Received::Nothing => 0,
            Received::Buffered(n) => *n,
            Received::Streaming(count) => count.load(Ordering::Relaxed),
        }
    }
}

impl Served {
    /// Envoy's comma-separated flags; borrowed (no allocation) in the common none-or-one case.
    fn flags(&self) -> Cow<'static, str> {
        match self.flags.as_slice() {
            [] => Cow::Borrowed("-"),
            [one] => Cow::Borrowed(one.as_str()),
            many => Cow::Owned(many.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(",")),
        }
    }
}

/// The request body, replayable when small.
enum RequestBody {
    Buffered(Bytes),
    Stream(Option<Counted<Incoming, Arc<AtomicU64>>>),
}

impl RequestBody {
    /// Buffers or wraps `body`, so `served` learns the bytes it carries.
    async fn read(body: Incoming, served: &mut Served) -> Result<Self, hyper::Error> {
        match body.size_hint().exact() {
            Some(n) if n <= REPLAY_BUFFER_LIMIT => {
                let bytes = body.collect().await?.to_bytes();
                served.received = Received::Buffered(bytes.len() as u64);
                Ok(RequestBody::Buffered(bytes))
            }
            _ => {
                let count = Arc::new(AtomicU64::new(0));
                served.received = Received::Streaming(count.clone());
                Ok(RequestBody::Stream(Some(Counted::new(body, count))))
            }
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The body for one try; a stream can be taken once.
    fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(Full::new(bytes.clone()).map_err(|never| match never {}).boxed()),
            RequestBody::Stream(stream) => stream.take().map(|b| b.boxed()),
        }
    }
}

/// The request as forwarded, minus the body; rebuilt for every try.
#[derive(Clone)]
struct Head {
    method: Method,
    version: Version,
    path_and_query: String,
    headers: HeaderMap,
}

impl Outbound {
    /// State for one accepted connection.
    pub fn new(inputs: ProxyInputs, client: SocketAddr, original: Option<SocketAddrV4>) -> Self {
        Self { inputs, client, original }
    }

    /// Routes one request and carries out its rule. Never fails: errors become Envoy-style local replies.
    ///
    /// The request is logged and counted when its response body ends (or is dropped), as Envoy does.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        // The table current at the start of the request serves all of it, even across a reload.
        let table = self.inputs.routes.load_full();
        // hyper drops this future when the client leaves before the answer: `finish` is observed
        // then too, on drop.
        let mut finish = Finish::new(self.clone(), &table, RequestInfo::of(&req), Served::default(), started);
        let Finish { seen, served, .. } = &mut finish;
        // The access-log record already copied authority and path: route with those.
        let mut response = self.dispatch(&table, req, seen.authority(), seen.path(), served).await;
        finish.status = Some(response.status());
        if let Some(closing) = response.extensions_mut().remove::<super::upgrade::Closing>() {
            closing.observe_on_close(Box::new(finish));
            return Ok(response);
        }
        Ok(response.map(|body| Counted::new(body, finish).boxed()))
    }

    /// Answers `req` with `response`, made before routing because the request itself was refused
    /// (`flag` says why); observed like any other request.
    pub fn refuse<B>(
        self: Arc<Self>,
        req: &Request<B>,
        flag: ResponseFlag,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let mut served = Served::default();
        served.flags.push(flag);
        let finish = Finish {
            status: Some(response.status()),
            outbound: self,
            seen: RequestInfo::of(req),
            served,
            started: Instant::now(),
            source: None,
            response_bytes: 0,
            ended: false,
        };
        response.map(|body| Counted::new(body, finish).boxed())
    }

    async fn dispatch(
        &self,
        table: &RouteTable,
        req: Request<Incoming>,
        authority: &str,
        path_and_query: &str,
        served: &mut Served,
    ) -> Response<ProxyBody> {
        let (service, port) = self.service(table, authority);
        let Some(service) = service else {
            served.flags.push(ResponseFlag::NR);
            return local_reply(ResponseFlag::NR, format!("no service for authority {authority:?}"));
        };
        served.service = service.clone();
        let (path, query) = split_query(path_and_query);
        let view = RequestView {
            method: req.method().as_str(),
            path,
            query,
            authority,
            scheme: "http",
            headers: req.headers(),
            port,
            source: Some(self.client.ip()),
        };
        let decision = table.route(service, &view);
        let Some(rule) = decision.rule else {
            served.flags.push(ResponseFlag::NR);
            return local_reply(ResponseFlag::NR, format!("no route matched for {service}"));
        };
        served.rule = rule.label.clone();
        let origin = req.headers().get(header::ORIGIN).cloned();
        let cors = rule.cors.as_ref().zip(origin.as_ref()).filter(|(c, o)| o.to_str().is_ok_and(|o| c.allows(o)));

        if let (Some(policy), Some(_)) = (&rule.cors, &origin) {
            if is_preflight(&req) {
                if let Some((c, o)) = cors {
                    let mut response = empty(StatusCode::OK);
                    c.preflight_headers(o, response.headers_mut());
                    return response;
                }
                if !policy.forward_unmatched {
                    return empty(StatusCode::OK);
                }
            }
        }

        let mut response = match self.fault(rule, served).await {
            Some(aborted) => aborted,
            None => match &rule.action {
                Action::Direct(d) => {
                    let mut r = Response::new(full(d.body.clone()));
                    *r.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
                    if !d.body.is_empty() {
                        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    }
                    r
                }
                Action::Redirect(r) => {
                    let mut response = empty(StatusCode::from_u16(r.code).unwrap_or(StatusCode::MOVED_PERMANENTLY));
                    if let Ok(location) = HeaderValue::from_str(&r.location("http", authority, path_and_query)) {
                        response.headers_mut().insert(header::LOCATION, location);
                    }
                    response
                }
                Action::Route(route) => self.forward(req, route, rule, decision.block, authority, served).await,
            },
        };
        rule.headers.response.apply(response.headers_mut());
        if let Some((c, o)) = cors {
            c.response_headers(o, response.headers_mut());
        }
        response
    }

    /// Applies the rule's fault: delays in place, returns the abort reply.
    async fn fault(&self, rule: &Rule, served: &mut Served) -> Option<Response<ProxyBody>> {
        let fault = rule.fault.as_ref()?;
        if let Some((delay, p)) = fault.delay {
            if rand::thread_rng().gen_bool(p) {
                served.flags.push(ResponseFlag::DI);
                tokio::time::sleep(delay).await;
            }
        }
        let abort = fault.abort.as_ref()?;
        if !rand::thread_rng().gen_bool(abort.probability) {
            return None;
        }
        served.flags.push(ResponseFlag::FI);
        let mut r = Response::new(full(Bytes::from_static(b"fault filter abort")));
        *r.status_mut() = StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if let Some(grpc) = abort.grpc_status {
            r.headers_mut().insert("grpc-status", HeaderValue::from(grpc));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        }
        r.headers_mut().insert(FLAGS_HEADER, HeaderValue::from_static("FI"));
        Some(r)
    }

    /// The service and port this request addresses: the captured VIP:port when there is one, else
    /// the Host header (a direct connection to the proxy).
    fn service<'t>(&self, table: &'t RouteTable, authority: &str) -> (Option<&'t Arc<str>>, u16) {
        if let Some(original) = self.original {
            if let Some(service) = table.service_at(original) {
                return (Some(service), original.port());
            }
        }
        let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80);
        let service = table.service_for_authority(authority, &self.inputs.namespace).map(|s| &s.host);
        (service, port)
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        route: &RouteAction,
        rule: &Rule,
        block: Option<&MatchBlock>,
        authority: &str,
        served: &mut Served,
    ) -> Response<ProxyBody> {
        let weighted = route.pick();
        served.cluster = weighted.target.name().clone();
        let cluster = match &weighted.target {
            Target::Missing { cluster } => {
                served.flags.push(ResponseFlag::NC);
                return local_reply(ResponseFlag::NC, format!("cluster not found: {cluster}"));
            }
            Target::Cluster(cluster) => cluster.clone(),
        };
        let upgrade = super::upgrade::take(&mut req);
        let (parts, body) = req.into_parts();
        let mut head = Head {
            method: parts.method,
            version: parts.version,
            path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            headers: parts.headers,
        };
        if let Some(rewrite) = &route.rewrite {
            let (path, query) = split_query(&head.path_and_query);
            if let Some(new_path) = rewrite.path(path, block.and_then(MatchBlock::uri_prefix)) {
                head.path_and_query = match query {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path,
                };
            }
            if let Some(a) = rewrite.authority.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
                head.headers.insert(header::HOST, a);
            }
        }
        strip_hop_by_hop(&mut head.headers);
        if let Some(upgrade) = &upgrade {
            upgrade.restore(&mut head.headers);
        }
        // gRPC needs HTTP/2 upstream (trailers, streams); everything else goes as HTTP/1.1,
        // whatever the client spoke.
        head.version = super::grpc::prepare(&mut head.headers);
        rule.headers.request.apply(&mut head.headers);
        weighted.headers.request.apply(&mut head.headers);
        head.headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        if !cluster.keep_alive {
            head.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }

        let mut body = match RequestBody::read(body, served).await {
            Ok(body) => body,
            Err(err) => {
                debug!(%err, "downstream body failed");
                return reply(StatusCode::BAD_REQUEST, "request body could not be read", None);
            }
        };
        if body.replayable() {
            for mirror in &route.mirrors {
                if rand::thread_rng().gen_bool(mirror.probability) {
                    if let (Target::Cluster(c), RequestBody::Buffered(bytes)) = (&mirror.target, &body) {
                        self.mirror(c.clone(), head.clone(), bytes.clone(), authority);
                    }
                }
            }
        }

        let tries = self.tries(&head, &mut body, &cluster, route, served);
        let mut response = match route.timeout {
            None => tries.await,
            Some(timeout) => match tokio::time::timeout(timeout, tries).await {
                Ok(response) => response,
                Err(_) => {
                    served.flags.push(ResponseFlag::UT);
                    local_reply(ResponseFlag::UT, "upstream request timeout".into())
                }
            },
        };
        weighted.headers.response.apply(response.headers_mut());
        if let Some(upgrade) = upgrade {
            upgrade.finish(&mut response);
        }
        response
    }

    /// The first try and the retries the policy allows, each on a newly picked endpoint.
    async fn tries(
        &self,
        head: &Head,
        body: &mut RequestBody,
        cluster: &Arc<Cluster>,
        route: &RouteAction,
        served: &mut Served,
    ) -> Response<ProxyBody> {
        let retry = &route.retry;
        let max_tries = if body.replayable() { 1 + retry.attempts } else { 1 };
        let (hash, set_cookie) = self.hash(cluster, head);
        let client = self.inputs.upstream.get(cluster.connect_timeout, head.version == Version::HTTP_2);
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            served.tries += 1;
            // Only the try that answered has an upstream time; a local reply after it has none.
            served.upstream_time = None;
            if served.tries > 1 {
                backoff(retry.backoff, served.tries - 1).await;
            }
            let last = served.tries >= max_tries;
            let Ok(_slot) = cluster.limits.acquire().await else {
                served.flags.push(ResponseFlag::UO);
                return local_reply(
                    ResponseFlag::UO,
                    "upstream connect error or disconnect/reset before headers: overflow".into(),
                );
            };
            let avoid: &[SocketAddr] = if retry.other_hosts { &tried } else { &[] };
            let picked = cluster.balancer.pick(PickContext { hash, avoid });
            let (endpoint, _in_flight) = match (picked, cluster.balancer.policy(), self.original) {
                (Some((e, guard)), _, _) => (e, Some(guard)),
                (None, Policy::Passthrough, Some(original)) => (SocketAddr::V4(original), None),
                (None, ..) => {
                    served.flags.push(ResponseFlag::UH);
                    return local_reply(ResponseFlag::UH, "no healthy upstream".into());
                }
            };
            served.endpoint = Some(endpoint);
            let Some(try_body) = body.take() else {
                served.flags.push(ResponseFlag::UF);
                return local_reply(ResponseFlag::UF, "request body already consumed".into());
            };
            let request = match build_request(head, endpoint, try_body) {
                Ok(r) => r,
                Err(err) => return reply(StatusCode::BAD_REQUEST, &format!("bad request target: {err}"), None),
            };
            let sent_at = Instant::now();
            let sent = client.request(request);
            let result = match retry.per_try_timeout {
                Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
                None => Ok(sent.await),
            };
            match result {
                Ok(Ok(mut response)) => {
                    served.upstream_time = Some(sent_at.elapsed());
                    let status = response.status().as_u16();
                    cluster.balancer.record(endpoint, Outcome::Status(status));
                    let grpc = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
                    if retry.on.retries_status(status, grpc) {
                        if !last {
                            tried.push(endpoint);
                            continue;
                        }
                        if served.tries > 1 {
                            served.flags.push(ResponseFlag::URX);
                        }
                    }
                    strip_hop_by_hop(response.headers_mut());
                    if let Some(cookie) = &set_cookie {
                        response.headers_mut().append(header::SET_COOKIE, cookie.clone());
                    }
                    return response.map(|b| b.boxed());
                }
                Ok(Err(err)) => {
                    cluster.balancer.record(endpoint, Outcome::ConnectFailure);
                    // Envoy's flags: UF when no connection was made, UC when it ended before the headers.
                    let (failure, flag) = if err.is_connect() {
                        (crate::routing::TryFailure::Connect, ResponseFlag::UF)
                    } else {
                        (crate::routing::TryFailure::Reset, ResponseFlag::UC)
                    };
                    debug!(%endpoint, error = %err, "try failed");
                    if !last && retry.on.retries_failure(failure) {
                        tried.push(endpoint);
                        continue;
                    }
                    served.flags.push(flag);
                    if served.tries > 1 {
                        served.flags.push(ResponseFlag::URX);
                    }
                    return local_reply(
                        flag,
                        format!("upstream connect error or disconnect/reset before headers: {}", error_chain(&err)),
                    );
                }
                Err(()) => {
                    cluster.balancer.record(endpoint, Outcome::Status(504));
                    if !last && retry.on.retries_failure(crate::routing::TryFailure::Timeout) {
                        tried.push(endpoint);
                        continue;
                    }
                    served.flags.push(ResponseFlag::UT);
                    return local_reply(ResponseFlag::UT, "upstream request timeout".into());
                }
            }
        }
    }

    /// The consistent-hash value of the request, and a cookie to set when one was generated.
    fn hash(&self, cluster: &Cluster, head: &Head) -> (Option<u64>, Option<HeaderValue>) {
        let Some(key) = &cluster.hash_key else { return (None, None) };
        let h = |bytes: &[u8]| Some(xxhash_rust::xxh3::xxh3_64(bytes));
        match key {
            HashKey::Header(name) => (head.headers.get(name).and_then(|v| h(v.as_bytes())), None),
            HashKey::SourceIp => (h(self.client.ip().to_string().as_bytes()), None),
            HashKey::QueryParam(name) => {
                let query = split_query(&head.path_and_query).1.unwrap_or("");
                let value = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == name.as_str())
                    .map(|(_, v)| v.into_owned());
                (value.and_then(|v| h(v.as_bytes())), None)
            }
            HashKey::Cookie { name, path, ttl } => {
                let found = head
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| c.trim().strip_prefix(name.as_str())?.strip_prefix('=').map(str::to_owned));
                match (found, ttl) {
                    (Some(value), _) => (h(value.as_bytes()), None),
                    (None, Some(ttl)) => {
                        // Envoy generates the cookie so the client sticks from its next request on.
                        let value = format!("{:016x}", rand::random::<u64>());
                        let mut cookie = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                        if let Some(path) = path {
                            cookie.push_str(&format!("; Path={path}"));
                        }
                        cookie.push_str("; HttpOnly");
                        (h(format!("\"{value}\"").as_bytes()), HeaderValue::from_str(&cookie).ok())
                    }
                    (None, None) => (None, None),
                }
            }
        }
    }

    /// Sends a copy of the request to a mirror cluster and forgets it (Envoy adds `-shadow` to
    /// the authority so the mirror can tell); bounded per cluster in number and time.
    fn mirror(&self, cluster: Arc<Cluster>, mut head: Head, body: Bytes, authority: &str) {
        let client = self.inputs.upstream.get(cluster.connect_timeout, head.version == Version::HTTP_2);
        let host = authority.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok());
        let shadow = match host {
            Some((h, p)) => format!("{h}-shadow:{p}"),
            None => format!("{authority}-shadow"),
        };
        if let Ok(v) = HeaderValue::from_str(&shadow) {
            head.headers.insert(header::HOST, v);
        }
        let metrics = self.inputs.metrics.clone();
        let Ok(slot) = cluster.mirror_slots.clone().try_acquire_owned() else {
            metrics.mirror_dropped("overflow");
            return;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let Some((endpoint, _in_flight)) = cluster.balancer.pick(PickContext::default()) else { return };
            let Ok(request) = build_request(&head, endpoint, Full::new(body).map_err(|never| match never {}).boxed())
            else {
                return;
            };
            let exchange = async {
                match client.request(request).await {
                    Ok(response) => {
                        // Read the answer so the connection goes back to the pool.
                        let _ = response.into_body().collect().await;
                    }
                    Err(err) => debug!(%endpoint, %err, "mirror request failed"),
                }
            };
            if tokio::time::timeout(crate::routing::MIRROR_TIMEOUT, exchange).await.is_err() {
                metrics.mirror_dropped("timeout");
            }
        });
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Envoy's back-off: a random wait up to `base · 2^(n-1)`, capped at ten times the base.
async fn backoff(base: Duration, retry: u32) {
    let cap = base.saturating_mul(10);
    let ceiling = base.saturating_mul(1 << (retry - 1).min(10)).min(cap);
    let wait = ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
    tokio::time::sleep(wait).await;
}

fn build_request(head: &Head, endpoint: SocketAddr, body: UpstreamBody) -> Result<Request<UpstreamBody>, http::Error> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.to_string())
        .path_and_query(head.path_and_query.as_str())
        .build()?;
    let mut request = Request::builder().method(head.method.clone()).uri(uri).version(head.version).body(body)?;
    *request.headers_mut() = head.headers.clone();
    Ok(request)
}

fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Everything the one observation of a request needs, owned by its response body until it ends.
struct Finish {
    outbound: Arc<Outbound>,
    seen: RequestInfo,
    served: Served,
    /// None while no answer has been made.
    status: Option<StatusCode>,
    started: Instant,
    source: Option<SourceWorkload>,
    response_bytes: u64,
    /// Observed already (exactly once: at the end of the response body, or on drop).
    ended: bool,
}

impl Finish {
    /// The observation of a request from `outbound`'s client, started at `started`.
    fn new(outbound: Arc<Outbound>, table: &RouteTable, seen: RequestInfo, served: Served, started: Instant) -> Self {
        let source = table
            .registry()
            .workload(outbound.client.ip())
            .map(|w| SourceWorkload { name: w.workload.clone(), namespace: w.namespace.clone() });
        Self { outbound, seen, served, status: None, started, source, response_bytes: 0, ended: false }
    }

    /// Whether the response carries no body whatever its headers say (RFC 9110 §6.4.1), so hyper
    /// may drop it unread without the client having missed anything.
    fn bodiless(&self) -> bool {
        self.seen.is_head()
            || self
                .status
                .is_some_and(|s| s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED)
    }
}

impl super::upgrade::TunnelEnd for Finish {
    fn closed(mut self: Box<Self>, up: u64, down: u64) {
        // Envoy's record of an upgraded stream: its whole life and every byte of the tunnel.
        self.served.received = Received::Buffered(up);
        self.response_bytes = down;
        self.end(Ended::Complete);
    }
}

/// A request dropped before it was answered (the client left) is observed as Envoy does:
/// response code 0, flag `DC`.
impl Drop for Finish {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Ended::Dropped);
        }
    }
}

impl Tally for Finish {
    fn add(&mut self, n: u64) {
        self.response_bytes += n;
    }

    /// Access log line and Istio metrics for the finished request.
    fn end(&mut self, ended: Ended) {
        use super::access_log::{emit, Completion};
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if ended == Ended::Dropped && !self.bodiless() {
            self.served.flags.push(ResponseFlag::DC);
        }
        if ended == Ended::Failed {
            // The upstream broke off mid-body; the client got the status and part of the body.
            self.served.flags.push(ResponseFlag::UC);
        }
        let took = self.started.elapsed();
        let served = &self.served;
        let flags = served.flags();
        let done = Completion {
            status: self.status.map_or(0, |s| s.as_u16()),
            flags: &flags,
            request_bytes: served.received.bytes(),
            response_bytes: self.response_bytes,
            duration: took,
            upstream_time: served.upstream_time,
            upstream: served.endpoint,
            cluster: or_dash(&served.cluster),
            route: or_dash(&served.rule),
            original: self.outbound.original,
            client: self.outbound.client,
        };
        emit(&self.seen, &done);
        self.outbound.inputs.metrics.record(&super::metrics::RequestOutcome {
            service: or_dash(&served.service),
            cluster: or_dash(&served.cluster),
            flags: &flags,
            status: done.status,
            duration: took,
            request_bytes: done.request_bytes,
            response_bytes: done.response_bytes,
            grpc: self.seen.grpc,
            source: self.source.as_ref(),
        });
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<header::HeaderName> = super::header_tokens(headers, &header::CONNECTION)
        .filter_map(|name| header::HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn reply(status: StatusCode, body: &str, flag: Option<ResponseFlag>) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some(flag) = flag {
        response.headers_mut().insert(FLAGS_HEADER, HeaderValue::from_static(flag.as_str()));
    }
    response
}

/// A response the proxy makes itself, as Envoy would: status from the flag, a short text body.
fn local_reply(flag: ResponseFlag, body: String) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(flag.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    reply(status, &body, Some(flag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("user-agent", "beta-tester".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("user-agent"));
    }

    #[test]
    fn local_replies_carry_status_and_flag() {
        let r = local_reply(ResponseFlag::NC, "x".into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[FLAGS_HEADER], "NC");
        assert_eq!(local_reply(ResponseFlag::NR, String::new()).status(), 404);
        assert_eq!(local_reply(ResponseFlag::UT, String::new()).status(), 504);
        assert_eq!(local_reply(ResponseFlag::UC, String::new()).headers()[FLAGS_HEADER], "UC");
    }

    #[test]
    fn flags_print_like_envoy() {
        let mut s = Served::default();
        assert_eq!(s.flags(), "-");
        s.flags = vec![ResponseFlag::UF, ResponseFlag::URX];
        assert_eq!(s.flags(), "UF,URX");
    }
}
