//! Shared by the in-process test files: the proxy on loopback, one request to it as a client
//! sends it and the answer as the client sees it, metric samples from its registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use interceptor::proxy::limits::Limits;
use interceptor::proxy::metrics::ProxyMetrics;
use interceptor::proxy::{upstream_client, OriginalDestination, Proxy, ProxyInputs};
use interceptor::routing::RouteTable;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;

/// The header local replies carry their response flags in.
pub const FLAGS: &str = "x-interceptor-flags";

/// One answer, as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// Envoy's response flags of a local reply, `-` for an endpoint's answer.
    pub fn flags(&self) -> &str {
        self.headers.get(FLAGS).map_or("-", |v| v.to_str().unwrap())
    }
}

/// Sends one request for `my-app` to `proxy` on a connection of its own: a bodiless GET (the
/// shape the raw relay takes) or, with `post`, a POST with a body (always hyper).
pub async fn send(proxy: SocketAddr, post: bool, uri: &str) -> Answer {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::builder().uri(uri).header("host", "my-app");
    let request = if post {
        request.method("POST").body(Full::new(Bytes::from_static(b"x")))
    } else {
        request.method("GET").body(Full::new(Bytes::new()))
    };
    let response = sender.send_request(request.unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// The sum of the samples of `metric` in `registry` whose labels contain every one of `labels`.
pub fn metric(registry: &Registry, metric: &str, labels: &[&str]) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The proxy serving `table` on a loopback port, its connections' original destinations from
/// `original`: its address and metrics registry.
pub async fn proxy(
    table: Arc<ArcSwap<RouteTable>>,
    original: impl OriginalDestination + 'static,
) -> (SocketAddr, Registry) {
    let mut registry = Registry::default();
    let inputs = ProxyInputs {
        routes: table,
        original_destinations: Arc::new(original),
        namespace: "default".into(),
        upstream: upstream_client(None),
        metrics: Arc::new(ProxyMetrics::register(&mut registry)),
        limits: Limits::default(),
        splices: None,
    };
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), inputs).await.unwrap();
    let addr = proxy.local_addr().unwrap();
    tokio::spawn(proxy.run(std::future::pending(), Duration::from_secs(1)));
    (addr, registry)
}
