//! One captured client connection: each request is decided once (`plan`) and carried out by hyper
//! here or by the raw `relay`, both through the one try loop (`tries`); observed once (`Finish`).

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use tracing::debug;

use super::access_log::RequestInfo;
use super::body_count::{Counted, Ended, Tally};
use super::cutoff::{BoxError, Cutoff, StreamIdle};
use super::gateway::GatewayConnection;
use super::hop_by_hop;
use super::limits::Refusal;
use super::local_reply::LocalReply;
use super::metrics::SourceWorkload;
use super::upstream::UpstreamBody;
use super::ProxyInputs;
use crate::endpoints::PickContext;
use crate::routing::{Cluster, GatewayEntry, HashKey, ResponseFlag, RouteTable};
use plan::{Forward, Outcome, Plan, PlanRequest};
use tries::TryError;

pub mod plan;
mod relay;
mod tries;

pub use relay::Relayed;

/// Body of every response the proxy sends downstream.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Request bodies up to this size are buffered so retries and mirrors can replay them (Envoy
/// buffers for the same reason); larger or unsized bodies stream, tried once, not mirrored.
pub const REPLAY_BUFFER_LIMIT: u64 = 64 * 1024;

/// A captured connection from `client`, originally addressed to `original`, or a connection
/// that entered a gateway listener.
pub struct Outbound {
    inputs: ProxyInputs,
    client: SocketAddr,
    original: Option<SocketAddr>,
    gateway: Option<GatewayConnection>,
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
    /// When the route's timeout ends the response, body included.
    deadline: Option<tokio::time::Instant>,
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
    /// Records what was decided: names for the log, and the flags of a delay or a local reply.
    fn note(&mut self, plan: &Plan<'_>) {
        if let Some(service) = plan.service {
            self.service = service.clone();
        }
        if let Some(rule) = plan.rule {
            self.rule = rule.label.clone();
        }
        if let Some(cluster) = plan.cluster {
            self.cluster = cluster.clone();
        }
        if plan.delay.is_some() {
            self.flags.push(ResponseFlag::DI);
        }
        if let Outcome::Reply(LocalReply { flag: Some(flag), .. }) = &plan.outcome {
            self.flags.push(*flag);
        }
    }

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
    Stream {
        /// Taken by the one try.
        body: Option<UpstreamBody>,
        /// How the client failed its body while it streamed ([`BodyFault`]).
        fault: Arc<AtomicU8>,
    },
}

/// How a client failed its request body — its fault, not the endpoint's (not when it left).
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    None = 0,
    /// The bytes broke the body's framing.
    Malformed = 1,
    /// No byte for the stream idle timeout.
    Stalled = 2,
}

impl BodyFault {
    fn of(err: &BoxError) -> Self {
        if err.is::<StreamIdle>() {
            BodyFault::Stalled
        } else if err.downcast_ref::<hyper::Error>().is_some_and(undecodable) {
            BodyFault::Malformed
        } else {
            BodyFault::None
        }
    }
}

impl RequestBody {
    /// Buffers or wraps `body`, so `served` learns the bytes it carries; a body that stalls for
    /// `idle` fails with [`StreamIdle`].
    async fn read(body: Incoming, served: &mut Served, idle: Duration) -> Result<Self, BoxError> {
        let exact = body.size_hint().exact();
        let body = Cutoff::idle(body, idle);
        match exact {
            Some(n) if n <= REPLAY_BUFFER_LIMIT => {
                let bytes = body.collect().await?.to_bytes();
                served.received = Received::Buffered(bytes.len() as u64);
                Ok(RequestBody::Buffered(bytes))
            }
            _ => {
                let count = Arc::new(AtomicU64::new(0));
                served.received = Received::Streaming(count.clone());
                let fault = Arc::new(AtomicU8::new(BodyFault::None as u8));
                let noted = fault.clone();
                let body = body.map_err(move |err| {
                    noted.store(BodyFault::of(&err) as u8, Ordering::Relaxed);
                    err
                });
                Ok(RequestBody::Stream { body: Some(Counted::new(body, count).boxed()), fault })
            }
        }
    }

    /// How the client failed the body while it streamed upstream.
    fn fault(&self) -> BodyFault {
        match self {
            RequestBody::Stream { fault, .. } => match fault.load(Ordering::Relaxed) {
                1 => BodyFault::Malformed,
                2 => BodyFault::Stalled,
                _ => BodyFault::None,
            },
            RequestBody::Buffered(_) => BodyFault::None,
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The body for one try; a stream can be taken once.
    fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(Full::new(bytes.clone()).map_err(|never| match never {}).boxed()),
            RequestBody::Stream { body, .. } => body.take(),
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
    pub fn new(inputs: ProxyInputs, client: SocketAddr, original: Option<SocketAddr>) -> Self {
        Self { inputs, client, original, gateway: None }
    }

    /// State for one connection accepted by a gateway listener.
    pub fn at_gateway(inputs: ProxyInputs, client: SocketAddr, gateway: GatewayConnection) -> Self {
        Self { inputs, client, original: None, gateway: Some(gateway) }
    }

    /// `https` when the client's connection was TLS terminated here, else `http`.
    fn scheme(&self) -> &'static str {
        match &self.gateway {
            Some(GatewayConnection { server: Some(_), .. }) => "https",
            _ => "http",
        }
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

    /// Answers `req` with the 400 its `refusal` calls for, counted under its reason and observed
    /// like any other request.
    pub fn refuse<B>(self: Arc<Self>, req: &Request<B>, refusal: Refusal) -> Response<ProxyBody> {
        debug!(?refusal, "request refused; answering 400");
        self.inputs.metrics.rejected(refusal.reason());
        let reply = refusal.reply();
        let mut served = Served::default();
        served.flags.extend(reply.flag);
        let response = reply.into_response();
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

    /// Decides what to do with `req` and carries it out.
    async fn dispatch(
        &self,
        table: &RouteTable,
        req: Request<Incoming>,
        authority: &str,
        path_and_query: &str,
        served: &mut Served,
    ) -> Response<ProxyBody> {
        let plan = plan::decide(table, &self.plan_request(&req, authority, path_and_query), &mut rand::thread_rng());
        self.note(served, &plan);
        if let Some(delay) = plan.delay {
            tokio::time::sleep(delay).await;
        }
        let mut response = match plan.outcome {
            Outcome::Reply(reply) => reply.into_response(),
            Outcome::Forward(forward) => self.forward(req, forward, authority, served).await,
        };
        if let Some(ops) = plan.response_headers {
            ops.apply(response.headers_mut());
        }
        if let Some((policy, origin)) = &plan.cors {
            policy.response_headers(origin, response.headers_mut());
        }
        response
    }

    /// Records what was decided for the log and metrics ([`Served::note`]).
    fn note(&self, served: &mut Served, plan: &Plan<'_>) {
        served.note(plan);
        if let (Some(_), Outcome::Forward(forward)) = (&self.gateway, &plan.outcome) {
            // At a gateway the virtual host is a public name; Istio reports the service routed to.
            served.service = forward.cluster.host.as_str().into();
        }
    }

    /// The request as deciding sees it.
    fn plan_request<'r, B>(
        &'r self,
        req: &'r Request<B>,
        authority: &'r str,
        path_and_query: &'r str,
    ) -> PlanRequest<'r> {
        PlanRequest {
            method: req.method(),
            authority,
            path_and_query,
            headers: req.headers(),
            client: self.client.ip(),
            original: self.original,
            namespace: &self.inputs.namespace,
            gateway: self.gateway.as_ref().map(|g| GatewayEntry { port: g.port, server: g.server.as_ref() }),
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        forward: Forward<'_>,
        authority: &str,
        served: &mut Served,
    ) -> Response<ProxyBody> {
        let Forward { route, target, cluster, request_headers, path_and_query, authority: new_authority, mirrors } =
            forward;
        let upgrade = super::upgrade::take(&mut req);
        let (parts, body) = req.into_parts();
        let path_and_query =
            path_and_query.unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned());
        let mut head = Head { method: parts.method, version: parts.version, path_and_query, headers: parts.headers };
        if let Some(a) = new_authority {
            head.headers.insert(header::HOST, a);
        }
        hop_by_hop::strip(&mut head.headers);
        if let Some(upgrade) = &upgrade {
            upgrade.restore(&mut head.headers);
        }
        // gRPC needs HTTP/2 upstream (trailers, streams); everything else goes as HTTP/1.1,
        // whatever the client spoke.
        head.version = super::grpc::prepare(&mut head.headers);
        if head.version != Version::HTTP_2 && !authority.is_empty() && !head.headers.contains_key(header::HOST) {
            // An HTTP/2 client's `:authority` is the Host of the HTTP/1.1 request sent upstream.
            if let Ok(host) = HeaderValue::from_str(authority) {
                head.headers.insert(header::HOST, host);
            }
        }
        for ops in request_headers {
            ops.apply(&mut head.headers);
        }
        head.headers.insert("x-forwarded-proto", HeaderValue::from_static(self.scheme()));
        if !cluster.keep_alive {
            head.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }

        let mut body = match RequestBody::read(body, served, self.inputs.limits.stream_idle_timeout).await {
            Ok(body) => body,
            Err(err) if err.is::<StreamIdle>() => {
                served.flags.push(ResponseFlag::SI);
                return LocalReply::flagged(ResponseFlag::SI, "stream timeout").into_response();
            }
            Err(err) => {
                debug!(%err, "downstream body failed");
                return LocalReply::text(StatusCode::BAD_REQUEST, "request body could not be read").into_response();
            }
        };
        if let RequestBody::Buffered(bytes) = &body {
            for mirror in mirrors {
                self.mirror(mirror.clone(), head.clone(), bytes.clone(), authority);
            }
        }

        let (hash, set_cookie) = self.hash(cluster, &head);
        let tries = tries::Tries {
            cluster,
            retry: &route.retry,
            max_tries: if body.replayable() { 1 + route.retry.attempts } else { 1 },
            hash,
            original: self.original,
        };
        let tls = cluster.tls.originate().map(|t| &**t);
        let client = self.inputs.upstream.get(cluster.connect_timeout, head.version == Version::HTTP_2, tls);
        let mut exchange =
            HyperExchange { client, head: &head, body: &mut body, metrics: &self.inputs.metrics, tls: tls.is_some() };
        let deadline = route.timeout.map(|timeout| tokio::time::Instant::now() + timeout);
        served.deadline = deadline;
        let tried = tries::run(&mut exchange, tries, served);
        let tried = match deadline {
            None => tried.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, tried).await {
                Ok(tried) => tried,
                Err(_) => {
                    served.flags.push(ResponseFlag::UT);
                    Err(LocalReply::flagged(ResponseFlag::UT, "upstream request timeout"))
                }
            },
        };
        let mut response = match tried {
            Ok((_, mut response)) => {
                hop_by_hop::strip(response.headers_mut());
                // The answer is in the downstream's protocol, as Envoy's: an HTTP/1.0 head passed
                // on would have hyper delimit a body of unknown length by closing the connection,
                // which it does not own (the socket is parked for the next request), so the client
                // would wait for an end that never comes. HTTP/1.1 frames it in chunks instead.
                if response.version() == Version::HTTP_10 {
                    *response.version_mut() = Version::HTTP_11;
                }
                if let Some(cookie) = &set_cookie {
                    response.headers_mut().append(header::SET_COOKIE, cookie.clone());
                }
                match deadline {
                    Some(deadline) => response.map(|b| Cutoff::at(b, deadline).boxed()),
                    None => response.map(|b| b.map_err(Into::into).boxed()),
                }
            }
            Err(reply) => reply.into_response(),
        };
        target.headers.response.apply(response.headers_mut());
        if let Some(upgrade) = upgrade {
            upgrade.finish(&mut response);
        }
        response
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
        if cluster.tls.refusal().is_some() {
            debug!(cluster = %cluster.name, "mirror cluster refuses to connect (upstream TLS); copy dropped");
            return;
        }
        let tls = cluster.tls.originate().cloned();
        let client = self.inputs.upstream.get(cluster.connect_timeout, head.version == Version::HTTP_2, tls.as_deref());
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
            let body = Full::new(body).map_err(|never| match never {}).boxed();
            let Ok(request) = build_request(&head, endpoint, tls.is_some(), body) else {
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

/// The request of one try to `endpoint`; its URI says `https` when the connection is TLS (the
/// `:scheme` an HTTP/2 upstream sees).
fn build_request(
    head: &Head,
    endpoint: SocketAddr,
    tls: bool,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, http::Error> {
    let uri = Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(endpoint.to_string())
        .path_and_query(head.path_and_query.as_str())
        .build()?;
    let mut request = Request::builder().method(head.method.clone()).uri(uri).version(head.version).body(body)?;
    *request.headers_mut() = head.headers.clone();
    Ok(request)
}

/// Whether the endpoint's TLS turned the connection down after the proxy's side of the handshake
/// was done: a TLS 1.3 server checks the client certificate after the client finished, so its
/// refusal (an alert) comes with the first read. Envoy counts a TLS failure as a connection
/// failure (UF), not a reset.
fn tls_refused(err: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(err);
    // Bounded: an error chain is short, and this stops at 16 links whatever it is.
    for _ in 0..16 {
        let Some(cause) = source else { return false };
        let tls = cause
            .downcast_ref::<rustls::Error>()
            .or_else(|| cause.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>());
        if let Some(tls) = tls {
            return matches!(tls, rustls::Error::AlertReceived(_) | rustls::Error::InvalidCertificate(_));
        }
        source = cause.source();
    }
    false
}

/// Whether a downstream body failed because its bytes did not parse: hyper's HTTP/1 decoder
/// reports that as an I/O error of kind `InvalidInput` or `InvalidData` (a client that left
/// mid-body is `UnexpectedEof`; an HTTP/2 stream reset is no I/O error at all).
fn undecodable(err: &hyper::Error) -> bool {
    let cause = std::error::Error::source(err).and_then(|s| s.downcast_ref::<std::io::Error>());
    cause.is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData))
}

fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

/// An error with its sources, as one line.
struct Chain<E>(E);

impl<E: std::error::Error> std::fmt::Display for Chain<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// One try on hyper's pooled client.
struct HyperExchange<'a> {
    client: super::upstream::Client,
    head: &'a Head,
    body: &'a mut RequestBody,
    metrics: &'a super::metrics::ProxyMetrics,
    /// The cluster originates TLS.
    tls: bool,
}

impl tries::Exchange for HyperExchange<'_> {
    type Response = Response<Incoming>;
    type Error = Chain<hyper_util::client::legacy::Error>;

    async fn send(&mut self, endpoint: SocketAddr) -> Result<Self::Response, TryError<Self::Error>> {
        let Some(body) = self.body.take() else {
            return Err(TryError::Refused(LocalReply::flagged(ResponseFlag::UF, "request body already consumed")));
        };
        let request = build_request(self.head, endpoint, self.tls, body).map_err(|err| {
            TryError::Refused(LocalReply::text(StatusCode::BAD_REQUEST, format!("bad request target: {err}")))
        })?;
        self.client.request(request).await.map_err(|err| {
            // The client's fault, not the endpoint's: no retry, no outlier failure, and Envoy's
            // answer to a codec error (a later chunk of the body did not parse).
            match self.body.fault() {
                BodyFault::Malformed => {
                    debug!(%endpoint, "request body malformed while streaming upstream; answering 400");
                    self.metrics.rejected(Refusal::MalformedBody.reason());
                    return TryError::Refused(Refusal::MalformedBody.reply());
                }
                BodyFault::Stalled => {
                    debug!(%endpoint, "request body stalled while streaming upstream; answering 408");
                    return TryError::Refused(LocalReply::flagged(ResponseFlag::SI, "stream timeout"));
                }
                BodyFault::None => {}
            }
            if err.is_connect() || tls_refused(&err) {
                TryError::Connect(Chain(err))
            } else {
                TryError::Reset(Chain(err))
            }
        })
    }

    fn status(response: &Self::Response) -> (u16, Option<u32>) {
        let grpc = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok());
        (response.status().as_u16(), grpc)
    }
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
        // At a gateway the agent itself is the source, as Istio's ingress gateway reports its
        // requests under its own workload.
        let source = match &outbound.gateway {
            Some(gateway) => Some(gateway.workload.clone()),
            None => table
                .registry()
                .workload(outbound.client.ip())
                .map(|w| SourceWorkload { name: w.workload.clone(), namespace: w.namespace.clone() }),
        };
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
            // The client got the status and part of the body: the route's deadline cut the rest
            // off, or the upstream broke off.
            let timed_out = self.served.deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            self.served.flags.push(if timed_out { ResponseFlag::UT } else { ResponseFlag::UC });
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
            original: self.outbound.original.or(self.outbound.gateway.as_ref().and_then(|g| g.local)),
            client: self.outbound.client,
            sni: self.outbound.gateway.as_ref().and_then(|g| g.sni.as_deref()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_like_envoy() {
        let mut s = Served::default();
        assert_eq!(s.flags(), "-");
        s.flags = vec![ResponseFlag::UF, ResponseFlag::URX];
        assert_eq!(s.flags(), "UF,URX");
    }
}
