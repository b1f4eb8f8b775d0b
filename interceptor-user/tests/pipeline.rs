//! The request pipeline end to end, in process and without root: a fake original-destination
//! source, the proxy on loopback, endpoints as tokio listeners on 127.0.0.1. Each scenario runs
//! on both transports: a plain GET (the raw relay takes it when its route allows) and a POST with
//! a body (always hyper).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use arc_swap::ArcSwap;
use bytes::Bytes;
use common::Answer;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use interceptor::config::Snapshot;
use interceptor::proxy::OriginalDestination;
use interceptor::routing::RouteTable;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);

/// Every accepted connection was going to the service's VIP (what the kernel map would say).
struct ToVip;

impl OriginalDestination for ToVip {
    fn take(&self, _client: SocketAddr) -> Option<SocketAddr> {
        Some(VIP.into())
    }
}

/// What a loopback endpoint does with each request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200, body "ok".
    Ok,
    /// This status, body "busy".
    Status(u16),
    /// 200 after this long.
    Slow(Duration),
    /// Closes the connection without answering.
    Hangup,
    /// 200 once the whole request body has arrived.
    ReadBody,
}

/// A loopback endpoint; `hits` counts the requests (or connections, for `Hangup`) it got.
struct Endpoint {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn endpoint(behaviour: Behaviour) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let hits = counted.clone();
            if let Behaviour::Hangup = behaviour {
                hits.fetch_add(1, Ordering::Relaxed);
                drop(stream);
                continue;
            }
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::Relaxed);
                    let (status, body) = match behaviour {
                        Behaviour::ReadBody => match req.into_body().collect().await {
                            Ok(_) => (StatusCode::OK, "ok"),
                            Err(_) => (StatusCode::BAD_REQUEST, "body failed"),
                        },
                        Behaviour::Status(code) => (StatusCode::from_u16(code).unwrap(), "busy"),
                        Behaviour::Slow(wait) => {
                            tokio::time::sleep(wait).await;
                            (StatusCode::OK, "ok")
                        }
                        Behaviour::Ok | Behaviour::Hangup => (StatusCode::OK, "ok"),
                    };
                    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Endpoint { addr, hits }
}

/// A loopback port nothing listens on.
async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The proxy on loopback, serving `my-app` (VIP 10.96.0.10:80).
struct Harness {
    proxy: SocketAddr,
    registry: Registry,
}

/// `my-app`'s endpoints with their `version` label (subset `v1` is `version: v1`; subset `none`
/// has no endpoint), routed by the VirtualService `http` rules.
async fn harness(endpoints: &[(SocketAddr, &str)], http: &str) -> Harness {
    let endpoints: String = endpoints
        .iter()
        .map(|(addr, version)| {
            format!(
                "  - {{address: {}, ports: {{http: {}}}, labels: {{version: {version}}}}}\n",
                addr.ip(),
                addr.port()
            )
        })
        .collect();
    let config = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: my-app}}
spec:
  hosts: [my-app.default.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: my-app}}
spec:
  host: my-app
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: none, labels: {{version: none}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: my-app}}
spec:
  hosts: [my-app]
  http:
{http}"
    );
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("pipeline.yaml"), &config, "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}\n{config}");
    let table = RouteTable::compile(&snapshot).unwrap();
    let (proxy, registry) = common::proxy(Arc::new(ArcSwap::from_pointee(table)), ToVip).await;
    Harness { proxy, registry }
}

/// The transports: which request shape reaches which.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// A plain GET: the raw relay takes it when the route is relayable.
    Relay,
    /// A POST with a body: always hyper.
    Hyper,
}

const BOTH: [Transport; 2] = [Transport::Relay, Transport::Hyper];

impl Harness {
    /// Sends one request on its own connection.
    async fn send(&self, transport: Transport, uri: &str) -> Answer {
        common::send(self.proxy, matches!(transport, Transport::Hyper), uri).await
    }

    /// Sends `first`, then (once `sent_on` holds, if given) `then`, on one connection, as raw
    /// bytes; returns everything the proxy sent until it closed (bounded: 5 s).
    async fn send_raw(&self, first: &[u8], then: Option<(&[u8], &dyn Fn() -> bool)>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let mut stream = TcpStream::connect(self.proxy).await.unwrap();
        stream.write_all(first).await.unwrap();
        if let Some((rest, sent_on)) = then {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !sent_on() {
                assert!(Instant::now() < deadline, "the condition for sending the rest never held");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stream.write_all(rest).await.unwrap();
        }
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the proxy did not close the connection: {}", String::from_utf8_lossy(&out));
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The sum of the samples of `metric` whose labels contain every one of `labels`.
    fn metric(&self, metric: &str, labels: &[&str]) -> f64 {
        common::metric(&self.registry, metric, labels)
    }

    /// Requests the raw relay carried out so far.
    fn relayed(&self) -> u64 {
        self.metric("interceptor_relayed_requests_total", &[]) as u64
    }

    /// Sends on `transport` and checks which transport served it: the relay for a relayable route's GET.
    async fn send_checked(&self, transport: Transport, uri: &str, relayable: bool) -> Answer {
        let before = self.relayed();
        let answer = self.send(transport, uri).await;
        let relayed = matches!(transport, Transport::Relay) && relayable;
        assert_eq!(self.relayed() - before, u64::from(relayed), "{transport:?} {uri}: relayed?");
        answer
    }

    /// Sends `n` requests on each transport, all of which must be answered 200 by an endpoint.
    async fn all_ok(&self, n: usize, relayable: bool) {
        for transport in BOTH {
            for _ in 0..n {
                let answer = self.send_checked(transport, "/", relayable).await;
                assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "ok"), "{transport:?}");
            }
        }
    }
}

const PLAIN: &str = "  - route: [{destination: {host: my-app, subset: v1}}]\n";

#[tokio::test]
async fn both_transports_forward_and_only_relayable_requests_are_relayed() {
    let up = endpoint(Behaviour::Ok).await;
    let h = harness(&[(up.addr, "v1")], PLAIN).await;
    for transport in BOTH {
        let answer = h.send_checked(transport, "/hello", true).await;
        assert_eq!((answer.status, answer.body.as_str(), answer.flags()), (StatusCode::OK, "ok", "-"), "{transport:?}");
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_failed_connect_is_retried_on_another_endpoint() {
    let up = endpoint(Behaviour::Ok).await;
    let dead = dead_port().await;
    let h = harness(&[(up.addr, "v1"), (dead, "v1")], PLAIN).await;
    h.all_ok(8, true).await;
}

#[tokio::test]
async fn when_every_try_fails_both_transports_give_the_same_local_reply() {
    let dead = dead_port().await;
    let hangup = endpoint(Behaviour::Hangup).await;
    for (addr, flag) in [(dead, "UF"), (hangup.addr, "UC")] {
        let h = harness(&[(addr, "v1")], PLAIN).await;
        let answers = on_both(&h, "/").await;
        for (transport, answer) in BOTH.iter().zip(&answers) {
            assert_eq!((answer.status, answer.flags()), (StatusCode::SERVICE_UNAVAILABLE, flag), "{transport:?}");
            assert!(
                answer.body.starts_with("upstream connect error or disconnect/reset before headers: "),
                "{transport:?}: {}",
                answer.body
            );
            assert_eq!(answer.headers["content-type"], "text/plain");
        }
    }
    // Istio's default policy retries a reset too (as a refused stream): three tries per request.
    assert_eq!(hangup.hits.load(Ordering::Relaxed), 6);
}

/// Both transports, one after the other, each checked for the transport that served it.
async fn on_both(h: &Harness, uri: &str) -> Vec<Answer> {
    let mut answers = Vec::new();
    for transport in BOTH {
        answers.push(h.send_checked(transport, uri, true).await);
    }
    answers
}

#[tokio::test]
async fn retriable_statuses_are_retried_and_the_last_answer_passed_on() {
    let busy = endpoint(Behaviour::Status(503)).await;
    let h = harness(&[(busy.addr, "v1")], PLAIN).await;
    for transport in BOTH {
        let before = busy.hits.load(Ordering::Relaxed);
        let answer = h.send_checked(transport, "/", true).await;
        // The endpoint's own answer, not a local reply.
        assert_eq!(
            (answer.status, answer.body.as_str(), answer.flags()),
            (StatusCode::SERVICE_UNAVAILABLE, "busy", "-")
        );
        assert_eq!(busy.hits.load(Ordering::Relaxed) - before, 3, "{transport:?}: first try and Istio's two retries");
    }
}

#[tokio::test]
async fn no_healthy_upstream_is_answered_by_either_transport() {
    let up = endpoint(Behaviour::Ok).await;
    let h = harness(&[(up.addr, "v1")], "  - route: [{destination: {host: my-app, subset: none}}]\n").await;
    for transport in BOTH {
        let answer = h.send_checked(transport, "/", true).await;
        assert_eq!(
            (answer.status, answer.flags(), answer.body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "UH", "no healthy upstream"),
            "{transport:?}"
        );
    }
}

#[tokio::test]
async fn a_route_timeout_answers_504_ut() {
    let slow = endpoint(Behaviour::Slow(Duration::from_secs(5))).await;
    let rules = "  - timeout: 200ms\n    route: [{destination: {host: my-app, subset: v1}}]\n";
    let h = harness(&[(slow.addr, "v1")], rules).await;
    for transport in BOTH {
        let started = Instant::now();
        // A timeout is not the relay's: hyper serves the GET too.
        let answer = h.send_checked(transport, "/", false).await;
        assert_eq!((answer.status, answer.flags()), (StatusCode::GATEWAY_TIMEOUT, "UT"), "{transport:?}");
        assert_eq!(answer.body, "upstream request timeout");
        assert!(started.elapsed() < Duration::from_secs(2), "{transport:?}: {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_per_try_timeout_moves_on_to_the_next_endpoint() {
    let slow = endpoint(Behaviour::Slow(Duration::from_secs(5))).await;
    let up = endpoint(Behaviour::Ok).await;
    let rules = "  - retries: {attempts: 2, perTryTimeout: 100ms, retryOn: gateway-error}\n    route: [{destination: {host: my-app, subset: v1}}]\n";
    let h = harness(&[(slow.addr, "v1"), (up.addr, "v1")], rules).await;
    h.all_ok(4, false).await;
}

#[tokio::test]
async fn rule_replies_and_unmatched_requests_are_local() {
    let up = endpoint(Behaviour::Ok).await;
    let rules = "  - match: [{uri: {prefix: /direct}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: my-app, subset: v1}}]
  - match: [{uri: {prefix: /ok}}]
    route: [{destination: {host: my-app, subset: v1}}]
";
    let h = harness(&[(up.addr, "v1")], rules).await;
    for transport in BOTH {
        let direct = h.send_checked(transport, "/direct", false).await;
        assert_eq!((direct.status, direct.body.as_str(), direct.flags()), (StatusCode::IM_A_TEAPOT, "teapot", "-"));
        let abort = h.send_checked(transport, "/abort", false).await;
        assert_eq!(
            (abort.status, abort.body.as_str(), abort.flags()),
            (StatusCode::INTERNAL_SERVER_ERROR, "fault filter abort", "FI")
        );
        let unmatched = h.send_checked(transport, "/elsewhere", false).await;
        assert_eq!((unmatched.status, unmatched.flags()), (StatusCode::NOT_FOUND, "NR"), "{transport:?}");
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 0);
}

/// A chunked POST to `my-app` whose first chunk-size line is `size`, in one piece, on a connection
/// the client closes after the answer.
fn chunked_post(size: &str) -> Vec<u8> {
    let head = "POST / HTTP/1.1\r\nHost: my-app\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    format!("{head}{size}\r\nhello\r\n0\r\n\r\n").into_bytes()
}

/// The answer is a refusal as Envoy makes it: 400 with `flag` (`-`: none), and the connection closed.
fn assert_refused(answer: &str, why: &str, flag: &str) {
    assert_eq!(status_line(answer).split_once(' ').map(|(_, s)| s), Some("400 Bad Request"), "{why}: {answer}");
    let flags = answer.lines().find_map(|l| l.strip_prefix("x-interceptor-flags: ")).unwrap_or("-");
    assert_eq!(flags, flag, "{why}: {answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{why}: {answer}");
    assert_eq!(answer.matches("HTTP/1.").count(), 1, "{why}: one answer, then the close: {answer}");
}

/// The first line of an answer (HTTP/1.0 clients get an HTTP/1.0 one).
fn status_line(answer: &str) -> &str {
    answer.split_once("\r\n").map_or(answer, |(line, _)| line)
}

#[tokio::test]
async fn an_invalid_chunk_size_is_a_downstream_protocol_error_and_never_reaches_the_endpoint() {
    let up = endpoint(Behaviour::ReadBody).await;
    let h = harness(&[(up.addr, "v1")], PLAIN).await;
    // Negative; more hex digits than fit in 64 bits; no digit at all; a digit after a space.
    for size in ["-5", "10000000000000000", "", "5 5", "5;ext\nx"] {
        let answer = h.send_raw(&chunked_post(size), None).await;
        assert_refused(&answer, size, "DPE");
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 0, "the endpoint saw a refused request");
    let refused = ["response_code=\"400\"", "response_flags=\"DPE\""];
    assert_eq!(h.metric("istio_requests_total", &refused), 5.0);
    assert_eq!(h.metric("interceptor_downstream_connections_rejected_total", &["malformed_body"]), 5.0);
    // Leading zeros do not count against the 64 bits (hyper's reading, and RFC 9112's).
    let answer = h.send_raw(&chunked_post("00000000000000000005"), None).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ok"), "{answer}");
}

#[tokio::test]
async fn an_invalid_chunk_size_after_the_request_went_upstream_is_still_a_400_not_an_upstream_failure() {
    let up = endpoint(Behaviour::ReadBody).await;
    let h = harness(&[(up.addr, "v1")], PLAIN).await;
    let head = b"POST / HTTP/1.1\r\nHost: my-app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let hits = up.hits.clone();
    let forwarded = move || hits.load(Ordering::Relaxed) == 1;
    let answer = h.send_raw(head, Some((b"-5\r\nhello\r\n0\r\n\r\n", &forwarded))).await;
    assert_refused(&answer, "late", "DPE");
    let refused = ["response_code=\"400\"", "response_flags=\"DPE\""];
    assert_eq!(h.metric("istio_requests_total", &refused), 1.0);
    assert_eq!(h.metric("istio_requests_total", &["response_code=\"503\""]), 0.0);
    // The endpoint is not blamed: the next request goes to it as usual.
    h.all_ok(1, true).await;
}

#[tokio::test]
async fn host_lines_are_required_once_in_http_1_1_and_never_twice() {
    let up = endpoint(Behaviour::Ok).await;
    let h = harness(&[(up.addr, "v1")], PLAIN).await;
    for (request, why, flag) in [
        ("GET / HTTP/1.1\r\nHost: my-app\r\nHost: other\r\n\r\n", "two hosts", "DPE"),
        ("GET / HTTP/1.1\r\nHost: my-app\r\nHost: my-app\r\n\r\n", "the same host twice", "DPE"),
        ("GET / HTTP/1.0\r\nHost: my-app\r\nHost: other\r\n\r\n", "two hosts in HTTP/1.0", "DPE"),
        // Envoy's answer to a missing Host carries no flag.
        ("GET / HTTP/1.1\r\n\r\n", "no host in HTTP/1.1", "-"),
        ("POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", "no host, with a body", "-"),
    ] {
        assert_refused(&h.send_raw(request.as_bytes(), None).await, why, flag);
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 0, "the endpoint saw a refused request");
    assert_eq!(h.metric("interceptor_downstream_connections_rejected_total", &["duplicate_host"]), 3.0);
    assert_eq!(h.metric("interceptor_downstream_connections_rejected_total", &["missing_host"]), 2.0);
    let refused = ["response_code=\"400\"", "response_flags=\"DPE\""];
    assert_eq!(h.metric("istio_requests_total", &refused), 3.0);
    let refused = ["response_code=\"400\"", "response_flags=\"-\""];
    assert_eq!(h.metric("istio_requests_total", &refused), 2.0);
    // HTTP/1.0 needs no Host, and an absolute-form target names the authority itself: both routed.
    for request in ["GET / HTTP/1.0\r\n\r\n", "GET http://my-app/ HTTP/1.1\r\nConnection: close\r\n\r\n"] {
        let answer = h.send_raw(request.as_bytes(), None).await;
        assert!(status_line(&answer).ends_with(" 200 OK") && answer.ends_with("ok"), "{request}: {answer}");
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 2);
}

/// An endpoint that answers each connection's request (its head, and a body by
/// `Content-Length`) with a head without length, then sends `pieces` one by one, each when `go`
/// grants a permit, and closes the connection.
async fn until_close_endpoint(pieces: &'static [&'static str], go: Arc<Semaphore>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut request = Vec::new();
            let body_end = loop {
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head.lines().find_map(|l| l.strip_prefix("content-length:"));
                    break end + 4 + length.map_or(0, |v| v.trim().parse::<usize>().unwrap());
                }
                if stream.read_buf(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
            };
            while request.len() < body_end {
                if stream.read_buf(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n").await.unwrap();
            for piece in pieces {
                go.acquire().await.unwrap().forget();
                stream.write_all(piece.as_bytes()).await.unwrap();
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_body_that_ends_with_the_endpoints_connection_goes_on_in_chunks_as_it_comes_on_both_transports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let go = Arc::new(Semaphore::new(0));
    let pieces: [(&[&str], &str); 2] =
        [(&["first", "second piece"], "5\r\nfirst\r\nc\r\nsecond piece\r\n0\r\n\r\n"), (&[], "0\r\n\r\n")];
    for (pieces, chunked) in pieces {
        let up = until_close_endpoint(pieces, go.clone()).await;
        let h = harness(&[(up, "v1")], PLAIN).await;
        let mut client = TcpStream::connect(h.proxy).await.unwrap();
        // Each piece reaches the client before the endpoint sends the next, on either transport,
        // and the connection stays for the next request.
        for transport in BOTH {
            let before = h.relayed();
            let request = match transport {
                Transport::Relay => "GET / HTTP/1.1\r\nHost: my-app\r\n\r\n",
                Transport::Hyper => "POST / HTTP/1.1\r\nHost: my-app\r\nContent-Length: 2\r\n\r\nhi",
            };
            client.write_all(request.as_bytes()).await.unwrap();
            let (mut got, mut seen) = (Vec::new(), 0);
            for piece in pieces {
                go.add_permits(1);
                while !got[seen..].windows(piece.len()).any(|w| w == piece.as_bytes()) {
                    assert_ne!(client.read_buf(&mut got).await.unwrap(), 0, "{transport:?} {pieces:?}");
                }
                seen = got.len();
            }
            while !got.ends_with(b"0\r\n\r\n") {
                assert_ne!(client.read_buf(&mut got).await.unwrap(), 0, "{transport:?} {pieces:?}");
            }
            assert_eq!(h.relayed() - before, u64::from(matches!(transport, Transport::Relay)), "{transport:?}");
            // A chunk per piece, as it came; the connection kept (the next request goes on it).
            let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(got.contains("\r\ntransfer-encoding: chunked\r\n") && !got.contains("connection: close"), "{got}");
            assert!(got.ends_with(&format!("\r\n\r\n{chunked}")), "{transport:?}: {got}");
        }
    }
}
