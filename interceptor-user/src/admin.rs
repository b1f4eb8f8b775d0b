//! The admin server, on loopback only: `/ready` (200 while the agent captures and serves, 503
//! otherwise), `/config_dump` (the active config as JSON) and `/stats/prometheus` (every
//! subsystem's metrics plus the kernel counters).

pub mod config_dump;
mod kernel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, warn};

pub use config_dump::{AppliedConfig, ConfigDump};
pub use kernel::KernelCollector;

/// Content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints show; shared with the agent, which updates it.
pub struct AdminState {
    ready: AtomicBool,
    not_ready_reason: std::sync::OnceLock<ReasonProbe>,
    config: ArcSwap<Option<AppliedConfig>>,
    registry: Registry,
}

/// Says why the agent is not ready, when something knows (the cluster source waiting for its
/// API server).
pub type ReasonProbe = Box<dyn Fn() -> Option<String> + Send + Sync>;

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").field("ready", &self.ready).finish_non_exhaustive()
    }
}

impl AdminState {
    /// Not ready, no config yet, serving `registry` (every metric registered beforehand).
    pub fn new(registry: Registry) -> Self {
        Self {
            ready: AtomicBool::new(false),
            not_ready_reason: std::sync::OnceLock::new(),
            config: ArcSwap::from_pointee(None),
            registry,
        }
    }

    /// Sets what `/ready` asks for the reason while it answers 503 (once; later calls are ignored).
    pub fn set_not_ready_reason(&self, probe: ReasonProbe) {
        let _ = self.not_ready_reason.set(probe);
    }

    /// Marks the agent ready (capturing and serving) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Replaces the config `/config_dump` shows; returns the previous one (for the caller to free
    /// where it costs no request time).
    pub fn set_config(&self, applied: AppliedConfig) -> Arc<Option<AppliedConfig>> {
        self.config.swap(Arc::new(Some(applied)))
    }

    /// The metrics page in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            warn!(%err, "encoding metrics");
        }
        text
    }

    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
        }
        match req.uri().path() {
            "/ready" if self.is_ready() => reply(StatusCode::OK, "text/plain", "LIVE\n".into()),
            "/ready" => {
                let reason = self.not_ready_reason.get().and_then(|probe| probe());
                let text = reason.map_or_else(|| "NOT READY\n".to_owned(), |r| format!("NOT READY: {r}\n"));
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", text)
            }
            "/config_dump" => {
                let json = self.config.load().as_ref().as_ref().map_or_else(|| "{}".to_owned(), |c| c.dump().to_json());
                reply(StatusCode::OK, "application/json", json)
            }
            "/stats/prometheus" | "/metrics" => reply(StatusCode::OK, PROMETHEUS_TEXT, self.metrics_text()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "admin endpoints: /ready /config_dump /stats/prometheus\n".into(),
            ),
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// The bound admin listener.
pub struct Admin {
    listener: TcpListener,
    state: Arc<AdminState>,
}

impl Admin {
    /// Binds `addr` now, so a taken port fails the start.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<Self> {
        Ok(Self { listener: TcpListener::bind(addr).await?, state })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped or aborted.
    pub async fn run(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(%err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = self.state.clone();
            let service = hyper::service::service_fn(move |req| {
                let response = state.answer(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                if let Err(err) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    debug!(%peer, %err, "admin connection ended with an error");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_answer_over_http() {
        use http_body_util::{BodyExt, Empty};

        let mut registry = Registry::default();
        let metrics = crate::proxy::metrics::ProxyMetrics::register(&mut registry);
        metrics.record(&crate::proxy::metrics::RequestOutcome {
            service: "a.default.svc.cluster.local",
            cluster: "outbound|80|v1|a.default.svc.cluster.local",
            flags: "-",
            status: 200,
            duration: std::time::Duration::from_millis(1),
            request_bytes: 0,
            response_bytes: 1,
            grpc: false,
            source: None,
        });
        let state = Arc::new(AdminState::new(registry));
        let admin = Admin::bind("127.0.0.1:0".parse().unwrap(), state.clone()).await.unwrap();
        let addr = admin.local_addr().unwrap();
        let server = tokio::spawn(admin.run());

        let get = |path: &'static str| async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let req = Request::get(path).header("host", "admin").body(Empty::<Bytes>::new()).unwrap();
            let response = sender.send_request(req).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        assert_eq!(get("/ready").await.0, 503);
        state.set_ready(true);
        assert_eq!(get("/ready").await.0, 200);
        let (status, text) = get("/stats/prometheus").await;
        assert_eq!(status, 200);
        assert!(text.contains("istio_requests_total{reporter=\"source\""), "{text}");
        assert_eq!(get("/nope").await.0, 404);
        server.abort();
    }
}
