//! The fast path for the commonest request: HTTP/1.1 without a body, whose rule only forwards (no
//! rewrite, header operations, fault, CORS, mirror, timeout or hashing). Its head is parsed once,
//! copied upstream on a pooled raw connection, and the response is relayed byte for byte, with no
//! hyper connection on either side. Whatever the fast path does not handle it declines before any
//! I/O, and hyper serves that request the usual way; once it has sent a request upstream it sees
//! the request through, retries and local replies included, as the hyper path would.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::{backoff, split_query, Finish, Outbound, Received, Served, HOP_BY_HOP};
use crate::endpoints::{Outcome, PickContext, Policy};
use crate::proxy::access_log::RequestInfo;
use crate::proxy::body_count::{Ended, Tally};
use crate::proxy::drain::Watch;
use crate::routing::{Action, RequestView, ResponseFlag, RouteAction, Rule, Target, TryFailure};

/// Header lines a request may have for the fast path (more go the usual way).
const MAX_HEADERS: usize = 64;
/// Header (or trailer) lines a response may have: as many as hyper's client takes.
const MAX_RESPONSE_HEADERS: usize = 100;
/// Longest response head read from an endpoint.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// First read size for a response: a head and a small body in one read.
const FIRST_READ: usize = 4 * 1024;
/// Read size for the rest of a larger response.
const READ_CHUNK: usize = 16 * 1024;

/// What became of a request offered to the fast path.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// Not taken, and nothing was done: serve it the usual way.
    Declined,
    /// Answered; the connection can take the next request.
    KeepAlive,
    /// Answered, or the client left: close the connection.
    Close,
}

/// A request head the fast path can take: parsed for routing and logging, and re-serialized for
/// the endpoint without its hop-by-hop headers.
struct Parsed {
    request: Request<()>,
    upstream_head: Vec<u8>,
}

impl Outbound {
    /// Serves `raw`, which holds exactly one request head and nothing more, answering on
    /// `downstream`; declines (having done nothing) whenever the request needs the full path.
    /// Once `drain` is draining, the answer is the connection's last.
    pub async fn relay(self: &Arc<Self>, raw: &Bytes, downstream: &TcpStream, drain: &Watch) -> Relayed {
        let started = Instant::now();
        let Some(parsed) = parse_request(raw, self.inputs.limits.max_headers) else { return Relayed::Declined };
        let table = self.inputs.routes.load_full();
        let seen = RequestInfo::of(&parsed.request);
        let (service, port) = self.service(&table, seen.authority());
        let Some(service) = service else { return Relayed::Declined };
        let (path, query) = split_query(seen.path());
        let view = RequestView {
            method: parsed.request.method().as_str(),
            path,
            query,
            authority: seen.authority(),
            scheme: "http",
            headers: parsed.request.headers(),
            port,
            source: Some(self.client.ip()),
        };
        let decision = table.route(service, &view);
        let Some(rule) = decision.rule else { return Relayed::Declined };
        let Action::Route(route) = &rule.action else { return Relayed::Declined };
        if !relayable(rule, route) {
            return Relayed::Declined;
        }
        let weighted = route.pick();
        // Always a cluster: `relayable` checked every destination.
        let Target::Cluster(cluster) = &weighted.target else { return Relayed::Declined };

        // Committed (past the weighted pick, so that declining could not skew the split): from
        // here on the request is observed once, like any other.
        self.inputs.metrics.relayed();
        let served = Served {
            service: service.clone(),
            rule: rule.label.clone(),
            cluster: cluster.name.clone(),
            received: Received::Buffered(0),
            ..Served::default()
        };
        let mut finish = Finish::new(self.clone(), &table, seen, served, started);
        let retry = &route.retry;
        let max_tries = 1 + retry.attempts;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let idempotent = parsed.request.method().is_idempotent();
        loop {
            finish.served.tries += 1;
            finish.served.upstream_time = None;
            if finish.served.tries > 1 {
                backoff(retry.backoff, finish.served.tries - 1).await;
            }
            let last = finish.served.tries >= max_tries;
            let Ok(slot) = cluster.limits.acquire().await else {
                let body = "upstream connect error or disconnect/reset before headers: overflow";
                return local_reply(&mut finish, downstream, ResponseFlag::UO, body, drain).await;
            };
            let avoid: &[SocketAddr] = if retry.other_hosts { &tried } else { &[] };
            let Some((endpoint, in_flight)) = cluster.balancer.pick(PickContext { hash: None, avoid }) else {
                return local_reply(&mut finish, downstream, ResponseFlag::UH, "no healthy upstream", drain).await;
            };
            finish.served.endpoint = Some(endpoint);
            let sent_at = Instant::now();
            let exchange = self.exchange(endpoint, cluster.connect_timeout, &parsed.upstream_head, idempotent);
            let exchanged = tokio::select! {
                biased;
                exchanged = exchange => exchanged,
                // As Envoy resets the upstream request: dropped, and observed with code 0 and DC.
                () = client_left(downstream) => return Relayed::Close,
            };
            // Held until the response head, as on the full path.
            drop((slot, in_flight));
            let (failure, err) = match exchanged {
                Ok(exchange) => {
                    finish.served.upstream_time = Some(sent_at.elapsed());
                    let status = exchange.head.status;
                    cluster.balancer.record(endpoint, Outcome::Status(status));
                    if retry.on.retries_status(status, exchange.head.grpc_status) {
                        if !last {
                            tried.push(endpoint);
                            continue;
                        }
                        if finish.served.tries > 1 {
                            finish.served.flags.push(ResponseFlag::URX);
                        }
                    }
                    return self.respond(&mut finish, downstream, exchange, endpoint, drain).await;
                }
                Err(TryError::Connect(err)) => (TryFailure::Connect, err),
                Err(TryError::Reset(err)) => (TryFailure::Reset, err),
            };
            cluster.balancer.record(endpoint, Outcome::ConnectFailure);
            debug!(%endpoint, error = %err, "try failed");
            if !last && retry.on.retries_failure(failure) {
                tried.push(endpoint);
                continue;
            }
            let flag = if failure == TryFailure::Connect { ResponseFlag::UF } else { ResponseFlag::UC };
            finish.served.flags.push(flag);
            if finish.served.tries > 1 {
                finish.served.flags.push(ResponseFlag::URX);
            }
            let body = format!("upstream connect error or disconnect/reset before headers: {err}");
            return local_reply(&mut finish, downstream, flag, &body, drain).await;
        }
    }

    /// Sends the request head to `endpoint` and reads the response head, on a pooled connection
    /// when there is one. A pooled connection the endpoint closed meanwhile is replaced once: when
    /// the request could not be written, or when it is idempotent and nothing came back (RFC 9112
    /// §9.3.1: it may have been closed as the request arrived).
    async fn exchange(
        &self,
        endpoint: SocketAddr,
        connect_timeout: std::time::Duration,
        head: &[u8],
        idempotent: bool,
    ) -> Result<Exchange, TryError> {
        let pool = &self.inputs.upstream;
        let mut pooled = pool.checkout(endpoint);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => crate::proxy::upstream::connect(endpoint, pool.mark(), connect_timeout)
                    .await
                    .map_err(TryError::Connect)?,
            };
            if let Err(err) = conn.write_all(head).await {
                if reused {
                    continue;
                }
                return Err(TryError::Reset(err));
            }
            let mut buf = Vec::with_capacity(FIRST_READ);
            loop {
                match conn.read_buf(&mut buf).await {
                    // A pooled connection that was closed under us, probably before the request arrived.
                    Ok(0) | Err(_) if reused && idempotent && buf.is_empty() => break,
                    Ok(0) => {
                        return Err(TryError::Reset(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "connection closed before the response head",
                        )))
                    }
                    Err(err) => return Err(TryError::Reset(err)),
                    Ok(_) => {}
                }
                // A long head: read on in larger steps than `read_buf`'s own growth.
                if buf.capacity() - buf.len() < FIRST_READ / 4 {
                    buf.reserve(FIRST_READ);
                }
                match ResponseHead::parse(&buf) {
                    Ok(Some((head, body_start))) => return Ok(Exchange { conn, head, buf, body_start }),
                    Ok(None) if buf.len() < MAX_RESPONSE_HEAD => {}
                    Ok(None) => return Err(TryError::Reset(invalid("response head too large"))),
                    Err(err) => return Err(TryError::Reset(err)),
                }
            }
        }
    }

    /// Sends the response head and relays the body as the endpoint sends it.
    async fn respond(
        &self,
        finish: &mut Finish,
        downstream: &TcpStream,
        exchange: Exchange,
        endpoint: SocketAddr,
        drain: &Watch,
    ) -> Relayed {
        let Exchange { mut conn, head, mut buf, body_start } = exchange;
        finish.status = StatusCode::from_u16(head.status).ok();
        // A body that ends with the connection cannot be framed for a kept connection.
        let close = drain.is_draining() || head.framing == Framing::UntilClose;
        let mut head_out = head.downstream;
        if close {
            head_out.extend_from_slice(b"connection: close\r\n");
        }
        head_out.extend_from_slice(b"\r\n");
        let mut head_out = Some(head_out);
        let mut framing = BodyProgress::new(head.framing);
        let mut done = false;
        let mut upstream_reusable = head.keep_alive;
        // Bytes of `buf` before `pos` are relayed already.
        let mut pos = body_start;
        loop {
            let step = match framing.advance(&buf[pos..]) {
                Ok(step) => step,
                Err(err) => {
                    debug!(%endpoint, %err, "response body framing broke");
                    if let Some(head) = head_out {
                        let _ = write_all(downstream, &head, &[]).await;
                    }
                    finish.end(Ended::Failed);
                    return Relayed::Close;
                }
            };
            let body = &buf[pos..pos + step.consumed];
            finish.add(step.data);
            // The head goes out with the first body bytes, in one write.
            let head = head_out.take().unwrap_or_default();
            if !(head.is_empty() && body.is_empty()) && write_all(downstream, &head, body).await.is_err() {
                finish.end(Ended::Dropped);
                return Relayed::Close;
            }
            pos += step.consumed;
            if step.done {
                done = true;
                // Bytes past the response: the endpoint is not speaking HTTP as we understand it.
                upstream_reusable &= pos == buf.len();
                break;
            }
            // What is left is the start of a chunk-size line or trailer: keep it, read on.
            buf.drain(..pos);
            pos = 0;
            if buf.len() >= MAX_RESPONSE_HEAD {
                debug!(%endpoint, "chunk-size line or trailers too long");
                finish.end(Ended::Failed);
                return Relayed::Close;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let read = tokio::select! {
                biased;
                read = conn.read_buf(&mut buf) => read,
                // A slow or endless body (long polling, events) must not outlive its client.
                () = client_left(downstream) => {
                    finish.end(Ended::Dropped);
                    return Relayed::Close;
                }
            };
            match read {
                Ok(0) if framing.ends_at_close() => break,
                Ok(0) | Err(_) => {
                    finish.end(Ended::Failed);
                    return Relayed::Close;
                }
                Ok(_) => {}
            }
        }
        finish.end(Ended::Complete);
        if done && upstream_reusable {
            self.inputs.upstream.checkin(endpoint, conn);
        }
        if close {
            Relayed::Close
        } else {
            Relayed::KeepAlive
        }
    }
}

/// Whether the rule is plain forwarding the fast path carries out exactly as the full path would.
/// Decided for every destination before the weighted pick, so that declining never skews weights.
fn relayable(rule: &Rule, route: &RouteAction) -> bool {
    rule.fault.is_none()
        && rule.cors.is_none()
        && rule.headers.request.is_empty()
        && rule.headers.response.is_empty()
        && route.rewrite.is_none()
        && route.timeout.is_none()
        && route.mirrors.is_empty()
        && route.retry.per_try_timeout.is_none()
        && route.targets.iter().all(|t| {
            t.headers.request.is_empty()
                && t.headers.response.is_empty()
                && matches!(&t.target, Target::Cluster(c)
                    if c.keep_alive && c.hash_key.is_none() && c.balancer.policy() != Policy::Passthrough)
        })
}

/// Parses a request head the fast path can take: HTTP/1.1, keep-alive, exactly one `Host`, no
/// body, no upgrade or `Expect`, not HEAD or CONNECT, not gRPC, in origin form.
/// Header values and the target are slices of `raw`, not copies.
fn parse_request(raw: &Bytes, max_headers: usize) -> Option<Parsed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(len) = req.parse(raw).ok()? else { return None };
    if len != raw.len() || req.version != Some(1) || req.headers.len() > max_headers {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let target = req.path?;
    if method == Method::HEAD || method == Method::CONNECT || !target.starts_with('/') {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(raw.slice_ref(h.value)).ok()?;
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return None;
        }
        if name == header::CONTENT_LENGTH && value != "0" {
            return None;
        }
        hosts += usize::from(name == header::HOST);
        headers.append(name, value);
    }
    let named: Vec<&str> = crate::proxy::header_tokens(&headers, &header::CONNECTION).collect();
    if hosts != 1 || named.iter().any(|t| t.eq_ignore_ascii_case("close")) || crate::proxy::grpc::is_grpc(&headers) {
        return None;
    }
    let uri = Uri::from_maybe_shared(raw.slice_ref(target.as_bytes())).ok()?;
    // As parsed (a fragment dropped), like the full path.
    let target = uri.path_and_query().map_or(target, |p| p.as_str());
    let mut upstream_head = Vec::with_capacity(len + 32);
    for part in [method.as_str(), " ", target, " HTTP/1.1\r\n"] {
        upstream_head.extend_from_slice(part.as_bytes());
    }
    for h in req.headers.iter() {
        // The proxy says the scheme itself, below.
        if !is_hop_by_hop(h.name, &named) && !h.name.eq_ignore_ascii_case("x-forwarded-proto") {
            push_header(&mut upstream_head, h.name, h.value);
        }
    }
    upstream_head.extend_from_slice(b"x-forwarded-proto: http\r\n\r\n");
    drop(named);
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some(Parsed { request, upstream_head })
}

fn is_hop_by_hop(name: &str, named: &[&str]) -> bool {
    HOP_BY_HOP.iter().chain(named).any(|h| h.eq_ignore_ascii_case(name))
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Answers with a reply the proxy made (Envoy's status for `flag`, a short text), observed like
/// the full path's local replies.
async fn local_reply(
    finish: &mut Finish,
    downstream: &TcpStream,
    flag: ResponseFlag,
    body: &str,
    drain: &Watch,
) -> Relayed {
    let close = drain.is_draining();
    if !finish.served.flags.contains(&flag) {
        finish.served.flags.push(flag);
    }
    let status = StatusCode::from_u16(flag.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    finish.status = Some(status);
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(&mut out, "content-type", b"text/plain");
    push_header(&mut out, super::FLAGS_HEADER, flag.as_str().as_bytes());
    push_header(&mut out, "content-length", body.len().to_string().as_bytes());
    if close {
        push_header(&mut out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    if write_all(downstream, &out, &[]).await.is_err() {
        finish.end(Ended::Dropped);
        return Relayed::Close;
    }
    finish.add(body.len() as u64);
    finish.end(Ended::Complete);
    if close {
        Relayed::Close
    } else {
        Relayed::KeepAlive
    }
}

/// Resolves when the client closes its connection (or it fails); never while it is open, whether
/// or not it sends more (a pipelined request waits for its turn).
async fn client_left(downstream: &TcpStream) {
    let mut byte = [0u8; 1];
    if let Ok(1..) = downstream.peek(&mut byte).await {
        std::future::pending::<()>().await;
    }
}

/// Writes all of `first` and then `second` to the downstream socket (shared with the parked
/// connection), in one system call when the socket takes them.
async fn write_all(stream: &TcpStream, mut first: &[u8], mut second: &[u8]) -> std::io::Result<()> {
    while !first.is_empty() || !second.is_empty() {
        match stream.try_write_vectored(&[IoSlice::new(first), IoSlice::new(second)]) {
            Ok(n) => {
                let from_first = n.min(first.len());
                first = &first[from_first..];
                second = &second[n - from_first..];
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Why one try failed.
enum TryError {
    /// No connection.
    Connect(std::io::Error),
    /// The connection broke, or the endpoint sent no valid response head.
    Reset(std::io::Error),
}

/// A response head read on an upstream connection, and what was read past it.
struct Exchange {
    conn: TcpStream,
    head: ResponseHead,
    buf: Vec<u8>,
    /// Where the body starts in `buf`.
    body_start: usize,
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head from an endpoint, with the head to send downstream (without the final CRLF).
struct ResponseHead {
    status: u16,
    grpc_status: Option<u32>,
    framing: Framing,
    /// The endpoint keeps the connection after this response.
    keep_alive: bool,
    downstream: Vec<u8>,
}

impl ResponseHead {
    /// Parses the head at the front of `buf`, and says where it ends; `None` while incomplete.
    /// Interim (1xx) responses are skipped, as hyper's client does.
    fn parse(buf: &[u8]) -> std::io::Result<Option<(Self, usize)>> {
        let mut start = 0;
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut res = httparse::Response::new(&mut slots);
            let len = match res.parse(&buf[start..]) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(err) => return Err(invalid(&format!("invalid response head: {err}"))),
            };
            let status = res.code.unwrap_or(0);
            if status == 101 {
                return Err(invalid("101 without an upgrade request"));
            }
            if (100..200).contains(&status) {
                start += len;
                continue;
            }
            return Ok(Some((Self::from_parsed(&res, status)?, start + len)));
        }
    }

    fn from_parsed(res: &httparse::Response<'_, '_>, status: u16) -> std::io::Result<Self> {
        let http11 = res.version == Some(1);
        let mut named: Vec<&str> = Vec::new();
        let (mut says_close, mut says_keep_alive) = (false, false);
        let mut chunked = false;
        let mut transfer_encoding = false;
        let mut length: Option<u64> = None;
        let mut grpc_status = None;
        for h in res.headers.iter() {
            // Only the few headers read here need their value as text.
            let value = || std::str::from_utf8(h.value).unwrap_or("");
            if h.name.eq_ignore_ascii_case("connection") {
                for token in value().split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    says_close |= token.eq_ignore_ascii_case("close");
                    says_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                    named.push(token);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                chunked = value().rsplit(',').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = content_length(value()).ok_or_else(|| invalid("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("differing content-lengths"));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("grpc-status") {
                grpc_status = value().trim().parse().ok();
            }
        }
        // HTTP/1.0 keeps the connection only when asked to; `close` wins over anything.
        let close = says_close || (!http11 && !says_keep_alive);
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Length(0)
        } else if transfer_encoding {
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else {
            length.map_or(Framing::UntilClose, Framing::Length)
        };
        let reason = res.reason.filter(|r| !r.is_empty());
        let reason = reason.or_else(|| StatusCode::from_u16(status).ok()?.canonical_reason()).unwrap_or("");
        let mut downstream = Vec::with_capacity(256);
        downstream.extend_from_slice(b"HTTP/1.1 ");
        // httparse read three digits, which StatusCode takes.
        let code = StatusCode::from_u16(status).map_err(|_| invalid("invalid status code"))?;
        downstream.extend_from_slice(code.as_str().as_bytes());
        downstream.push(b' ');
        downstream.extend_from_slice(reason.as_bytes());
        downstream.extend_from_slice(b"\r\n");
        for h in res.headers.iter() {
            // With Transfer-Encoding, a Content-Length means nothing (RFC 9112 §6.3) and would
            // mislead the client.
            let ignored_length = transfer_encoding && h.name.eq_ignore_ascii_case("content-length");
            if !is_hop_by_hop(h.name, &named) && !ignored_length {
                push_header(&mut downstream, h.name, h.value);
            }
        }
        Ok(Self { status, grpc_status, framing, keep_alive: !close && framing != Framing::UntilClose, downstream })
    }
}

/// A `Content-Length` value as hyper reads it: digits only, or a list of one repeated value.
fn content_length(value: &str) -> Option<u64> {
    let mut length = None;
    for part in value.split(',').map(str::trim) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = part.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Follows a response body's framing over the bytes as they arrive.
#[derive(Debug)]
struct BodyProgress {
    framing: Framing,
    state: Chunk,
}

/// Where in a chunked body the relay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// How far one look at the buffered bytes got.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    /// Bytes at the front that belong to the body (the rest waits for more).
    consumed: usize,
    /// Payload bytes among them (chunk framing excluded).
    data: u64,
    /// The body ended with them.
    done: bool,
}

impl BodyProgress {
    fn new(framing: Framing) -> Self {
        Self { framing, state: Chunk::Size }
    }

    fn ends_at_close(&self) -> bool {
        self.framing == Framing::UntilClose
    }

    /// Accounts for as many of `bytes` as belong to the body and are complete.
    fn advance(&mut self, bytes: &[u8]) -> std::io::Result<Step> {
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Ok(Step { consumed: n as usize, data: n, done: *left == 0 })
            }
            Framing::UntilClose => Ok(Step { consumed: bytes.len(), data: bytes.len() as u64, done: false }),
            Framing::Chunked => {
                let mut step = Step { consumed: 0, data: 0, done: false };
                loop {
                    let rest = &bytes[step.consumed..];
                    match self.state {
                        Chunk::Size => match httparse::parse_chunk_size(rest) {
                            Ok(httparse::Status::Complete((n, 0))) => {
                                step.consumed += n;
                                self.state = Chunk::Trailers;
                            }
                            Ok(httparse::Status::Complete((n, size))) => {
                                step.consumed += n;
                                self.state = Chunk::Data(size);
                            }
                            Ok(httparse::Status::Partial) => return Ok(step),
                            Err(_) => return Err(invalid("invalid chunk size")),
                        },
                        Chunk::Data(left) => {
                            if rest.is_empty() {
                                return Ok(step);
                            }
                            let n = left.min(rest.len() as u64);
                            step.consumed += n as usize;
                            step.data += n;
                            self.state = if n == left { Chunk::DataEnd } else { Chunk::Data(left - n) };
                        }
                        Chunk::DataEnd => match rest {
                            [b'\r', b'\n', ..] => {
                                step.consumed += 2;
                                self.state = Chunk::Size;
                            }
                            [] | [b'\r'] => return Ok(step),
                            _ => return Err(invalid("chunk data not followed by CRLF")),
                        },
                        Chunk::Trailers => {
                            let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
                            return match httparse::parse_headers(rest, &mut slots) {
                                Ok(httparse::Status::Complete((n, _))) => {
                                    step.consumed += n;
                                    step.done = true;
                                    Ok(step)
                                }
                                Ok(httparse::Status::Partial) => Ok(step),
                                Err(_) => Err(invalid("invalid trailers")),
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ResponseHead {
        ResponseHead::parse(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn plain_gets_are_taken_and_anything_with_a_body_or_upgrade_is_declined() {
        let parsed = parse_request(&Bytes::from_static(b"GET /a?b=1 HTTP/1.1\r\nHost: my-app\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\nUser-Agent: curl\r\nX-Forwarded-Proto: https\r\n\r\n"), 100).unwrap();
        assert_eq!(
            String::from_utf8(parsed.upstream_head).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nHost: my-app\r\nUser-Agent: curl\r\nx-forwarded-proto: http\r\n\r\n"
        );
        assert_eq!(parsed.request.headers()["user-agent"], "curl");
        assert_eq!(parsed.request.uri().query(), Some("b=1"));
        let fragment = parse_request(&Bytes::from_static(b"GET /a#x HTTP/1.1\r\nHost: a\r\n\r\n"), 100).unwrap();
        assert!(fragment.upstream_head.starts_with(b"GET /a HTTP/1.1\r\n"));
        for declined in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(parse_request(&Bytes::from(declined), 100).is_none(), "{declined}");
        }
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "x: 1\r\n".repeat(10));
        assert!(parse_request(&Bytes::from(many), 5).is_none());
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_say_their_framing() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-version: v1\r\n\r\n");
        assert_eq!(
            String::from_utf8(h.downstream).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-version: v1\r\n"
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!String::from_utf8(h.downstream).unwrap().contains("Content-Length"));
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::UntilClose);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n").framing, Framing::Length(5));
        for bad in ["+5", "5, 6", "", "0x5", "5 5"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(ResponseHead::parse(raw.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Length(0));
        assert_eq!(
            head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 x\r\ngrpc-status: 14\r\n\r\n").grpc_status,
            Some(14)
        );
        assert!(ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(ResponseHead::parse(interim).unwrap().unwrap().1, interim.len() - 2);
    }

    #[test]
    fn chunked_bodies_end_after_their_trailers_whatever_the_reads() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut progress = BodyProgress::new(Framing::Chunked);
            let mut buf = body[..split].to_vec();
            let (mut data, mut fed) = (0, split);
            let mut forwarded = Vec::new();
            loop {
                let step = progress.advance(&buf).unwrap();
                data += step.data;
                forwarded.extend(buf.drain(..step.consumed));
                if step.done {
                    break;
                }
                assert!(fed < body.len(), "split {split}: not done at the end");
                buf.push(body[fed]);
                fed += 1;
            }
            assert_eq!(data, 6, "split {split}");
            assert_eq!(forwarded, &body[..body.len() - 4], "split {split}");
        }
        assert!(BodyProgress::new(Framing::Chunked).advance(b"5\r\nhelloXX").is_err());
    }

    #[test]
    fn lengths_stop_at_their_end() {
        let mut p = BodyProgress::new(Framing::Length(3));
        assert_eq!(p.advance(b"ab").unwrap(), Step { consumed: 2, data: 2, done: false });
        assert_eq!(p.advance(b"cde").unwrap(), Step { consumed: 1, data: 1, done: true });
    }
}
