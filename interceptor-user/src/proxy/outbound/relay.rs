//! The fast path for the commonest request: HTTP/1.1 without a body, whose route the compiler
//! marked relayable (it only forwards). Its head is parsed once, copied upstream on a pooled raw
//! connection, and the response is relayed as the endpoint framed it (a body that ends at the
//! close, in chunks), with no hyper connection on either side.
//! It carries out the same plan as hyper, through the same try loop; whatever it does not handle
//! it declines before any I/O or random draw, and hyper serves that request the usual way.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::plan::{self, Outcome};
use super::tries::{self, Exchange, Tries, TryError};
use super::{Finish, Outbound, Received, Served};
use crate::proxy::access_log::RequestInfo;
use crate::proxy::body_count::{Ended, Tally};
use crate::proxy::downstream::Downstream;
use crate::proxy::drain::Watch;
use crate::proxy::framing::push_header;
use crate::proxy::framing::response::{invalid, BodyProgress, Framing, ResponseHead};
use crate::proxy::hop_by_hop::{self, is_hop_by_hop};
use crate::proxy::local_reply::LocalReply;
use crate::proxy::upstream::UpstreamClient;

/// Header lines a request may have for the fast path (more go the usual way).
const MAX_HEADERS: usize = 64;
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
    /// Answered in full: close the connection (cleanly).
    Close,
    /// The answer broke off, or the client left: close the connection without a clean end (over
    /// TLS, no close_notify), so that a client reading to the end of the connection can tell.
    Abort,
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
    pub async fn relay(self: &Arc<Self>, raw: &Bytes, downstream: &mut impl Downstream, drain: &Watch) -> Relayed {
        let started = Instant::now();
        let Some(parsed) = parse_request(raw, self.inputs.limits.max_headers, self.scheme()) else {
            return Relayed::Declined;
        };
        let table = self.inputs.routes.load_full();
        let seen = RequestInfo::of(&parsed.request);
        let request = self.plan_request(&parsed.request, seen.authority(), seen.path());
        let routed = plan::route(&table, &request);
        if !routed.relayable() {
            return Relayed::Declined;
        }
        let plan = plan::plan(routed, &request, &mut rand::thread_rng());
        let Outcome::Forward(forward) = &plan.outcome else {
            debug_assert!(false, "a relayable route (no fault, CORS, or missing cluster) planned a local reply");
            return Relayed::Declined;
        };

        // Committed: from here on the request is observed once, like any other.
        self.inputs.metrics.relayed();
        let mut served = Served { received: Received::Buffered(0), ..Served::default() };
        self.note(&mut served, &plan);
        let mut finish = Finish::new(self.clone(), &table, seen, served, started);
        let tries = Tries {
            cluster: forward.cluster,
            retry: &forward.route.retry,
            max_tries: 1 + forward.route.retry.attempts,
            hash: None,
            original: self.original,
        };
        let mut exchange = RawExchange {
            pool: &self.inputs.upstream,
            connect_timeout: forward.cluster.connect_timeout,
            head: &parsed.upstream_head,
            idempotent: parsed.request.method().is_idempotent(),
        };
        let tried = tokio::select! {
            biased;
            tried = tries::run(&mut exchange, tries, &mut finish.served) => tried,
            // As Envoy resets the upstream request: dropped, and observed with code 0 and DC.
            () = downstream.left() => return Relayed::Abort,
        };
        match tried {
            Ok((endpoint, response)) => self.respond(&mut finish, downstream, response, endpoint, drain).await,
            Err(reply) => local_reply(&mut finish, downstream, &reply, drain).await,
        }
    }

    /// Sends the response head and relays the body as the endpoint frames it, one that ends at the
    /// close in chunks.
    async fn respond(
        &self,
        finish: &mut Finish,
        downstream: &mut impl Downstream,
        response: RawResponse,
        endpoint: SocketAddr,
        drain: &Watch,
    ) -> Relayed {
        let RawResponse { mut conn, head, mut buf, body_start } = response;
        finish.status = StatusCode::from_u16(head.status).ok();
        let close = drain.is_draining();
        // A body that ends with the endpoint's connection goes on in chunks (its head says so), as
        // hyper sends it on the full path and Envoy to an HTTP/1.1 client: the client's
        // connection can stay, and a body cut short shows (no last chunk).
        let rechunk = head.framing == Framing::UntilClose;
        // What goes out before the next body bytes: the head, then a chunk's closing CRLF.
        let mut out = head.downstream;
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
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
                    let _ = downstream.send(&out, &[]).await;
                    finish.end(Ended::Failed);
                    return Relayed::Abort;
                }
            };
            let body = &buf[pos..pos + step.consumed];
            finish.add(step.data);
            if rechunk && !body.is_empty() {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{:x}\r\n", body.len());
            }
            // The head goes out with the first body bytes, in one write.
            if !(out.is_empty() && body.is_empty()) && downstream.send(&out, body).await.is_err() {
                finish.end(Ended::Dropped);
                return Relayed::Abort;
            }
            out.clear();
            if rechunk && !body.is_empty() {
                out.extend_from_slice(b"\r\n");
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
                return Relayed::Abort;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let read = tokio::select! {
                biased;
                read = conn.read_buf(&mut buf) => read,
                // A slow or endless body (long polling, events) must not outlive its client.
                () = downstream.left() => {
                    finish.end(Ended::Dropped);
                    return Relayed::Abort;
                }
            };
            match read {
                Ok(0) if framing.ends_at_close() => break,
                Ok(0) | Err(_) => {
                    finish.end(Ended::Failed);
                    return Relayed::Abort;
                }
                Ok(_) => {}
            }
        }
        if rechunk {
            out.extend_from_slice(b"0\r\n\r\n");
            if downstream.send(&out, &[]).await.is_err() {
                finish.end(Ended::Dropped);
                return Relayed::Abort;
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

/// One try on a pooled raw connection.
struct RawExchange<'a> {
    pool: &'a UpstreamClient,
    connect_timeout: Duration,
    /// The request head as the endpoint gets it.
    head: &'a [u8],
    idempotent: bool,
}

impl Exchange for RawExchange<'_> {
    type Response = RawResponse;
    type Error = std::io::Error;

    /// Sends the request head to `endpoint` and reads the response head, on a pooled connection
    /// when there is one. A pooled connection the endpoint closed meanwhile is replaced once: when
    /// the request could not be written, or when it is idempotent and nothing came back (RFC 9112
    /// §9.3.1: it may have been closed as the request arrived).
    async fn send(&mut self, endpoint: SocketAddr) -> Result<RawResponse, TryError<std::io::Error>> {
        let mut pooled = self.pool.checkout(endpoint);
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => crate::proxy::upstream::connect(endpoint, self.pool.mark(), self.connect_timeout)
                    .await
                    .map_err(TryError::Connect)?,
            };
            if let Err(err) = conn.write_all(self.head).await {
                if reused {
                    continue;
                }
                return Err(TryError::Reset(err));
            }
            let mut buf = Vec::with_capacity(FIRST_READ);
            loop {
                match conn.read_buf(&mut buf).await {
                    // A pooled connection that was closed under us, probably before the request arrived.
                    Ok(0) | Err(_) if reused && self.idempotent && buf.is_empty() => break,
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
                    Ok(Some((head, body_start))) => return Ok(RawResponse { conn, head, buf, body_start }),
                    Ok(None) if buf.len() < MAX_RESPONSE_HEAD => {}
                    Ok(None) => return Err(TryError::Reset(invalid("response head too large"))),
                    Err(err) => return Err(TryError::Reset(err)),
                }
            }
        }
    }

    fn status(response: &RawResponse) -> (u16, Option<u32>) {
        (response.head.status, response.head.grpc_status)
    }
}

/// Parses a request head the fast path can take: HTTP/1.1, keep-alive, exactly one `Host`, no
/// body, no upgrade or `Expect`, not HEAD or CONNECT, not gRPC, in origin form. The endpoint is
/// told the client's `scheme` (`x-forwarded-proto`).
/// Header values and the target are slices of `raw`, not copies.
fn parse_request(raw: &Bytes, max_headers: usize, scheme: &str) -> Option<Parsed> {
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
    let named: Vec<&str> = hop_by_hop::nominated(&headers).collect();
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
    for part in ["x-forwarded-proto: ", scheme, "\r\n\r\n"] {
        upstream_head.extend_from_slice(part.as_bytes());
    }
    drop(named);
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some(Parsed { request, upstream_head })
}

/// Answers with a reply the proxy made, observed like the full path's local replies.
async fn local_reply(
    finish: &mut Finish,
    downstream: &mut impl Downstream,
    reply: &LocalReply,
    drain: &Watch,
) -> Relayed {
    let close = drain.is_draining();
    finish.status = Some(reply.status);
    if downstream.send(&reply.to_http1(close), &[]).await.is_err() {
        finish.end(Ended::Dropped);
        return Relayed::Abort;
    }
    finish.add(reply.body.len() as u64);
    finish.end(Ended::Complete);
    if close {
        Relayed::Close
    } else {
        Relayed::KeepAlive
    }
}

/// A response head read on an upstream connection, and what was read past it.
struct RawResponse {
    conn: TcpStream,
    head: ResponseHead,
    buf: Vec<u8>,
    /// Where the body starts in `buf`.
    body_start: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_gets_are_taken_and_anything_with_a_body_or_upgrade_is_declined() {
        let parsed = parse_request(&Bytes::from_static(b"GET /a?b=1 HTTP/1.1\r\nHost: my-app\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\nUser-Agent: curl\r\nX-Forwarded-Proto: https\r\n\r\n"), 100, "http").unwrap();
        assert_eq!(
            String::from_utf8(parsed.upstream_head).unwrap(),
            "GET /a?b=1 HTTP/1.1\r\nHost: my-app\r\nUser-Agent: curl\r\nx-forwarded-proto: http\r\n\r\n"
        );
        assert_eq!(parsed.request.headers()["user-agent"], "curl");
        assert_eq!(parsed.request.uri().query(), Some("b=1"));
        let fragment =
            parse_request(&Bytes::from_static(b"GET /a#x HTTP/1.1\r\nHost: a\r\n\r\n"), 100, "https").unwrap();
        assert!(fragment.upstream_head.starts_with(b"GET /a HTTP/1.1\r\n"));
        // At a gateway that ended TLS the endpoint hears `https`.
        assert!(fragment.upstream_head.ends_with(b"\r\nx-forwarded-proto: https\r\n\r\n"));
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
            assert!(parse_request(&Bytes::from(declined), 100, "http").is_none(), "{declined}");
        }
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "x: 1\r\n".repeat(10));
        assert!(parse_request(&Bytes::from(many), 5, "http").is_none());
    }
}
