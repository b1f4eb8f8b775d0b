//! The proxy: accepts connections the kernel redirected, routes every HTTP request by the rules of
//! the service it was addressed to, and forwards it to an endpoint of the chosen subset.

pub mod access_log;
mod body_count;
pub mod client_hello;
mod copy;
mod cutoff;
mod downstream;
mod drain;
pub(crate) mod framing;
pub mod gateway;
pub mod grpc;
pub(crate) mod h2c;
pub(crate) mod hop_by_hop;
mod http1;
pub mod limits;
mod local_reply;
pub mod metrics;
mod outbound;
mod shared_io;
pub mod sniff;
mod tcp;
pub mod upgrade;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn, Instrument};

use crate::routing::RouteTable;

pub use outbound::Outbound;
pub use upstream::{client as upstream_client, UpstreamClient};

/// Serves HTTP/2 (prior knowledge) on one downstream connection until it ends or drains.
async fn serve_http2(
    inputs: ProxyInputs,
    http2: &hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    mut watch: drain::Watch,
    stream: tokio::net::TcpStream,
    client: SocketAddr,
    original: Option<SocketAddr>,
) {
    let outbound = Arc::new(Outbound::new(inputs, client, original));
    let service = hyper::service::service_fn(move |req| outbound.clone().handle(req));
    let conn = std::pin::pin!(http2.serve_connection(TokioIo::new(stream), service));
    if let Err(err) = watch.run(conn, |conn| conn.graceful_shutdown()).await {
        debug!(%err, "downstream HTTP/2 connection ended with an error");
    }
}

/// A captured connection that opened with a TLS record: its ClientHello is read (bounded in size
/// and by the header read timeout), then it is forwarded by the `tls` rules for its SNI, the
/// hello replayed first. A hello that does not come whole is counted and the connection closed.
async fn serve_tls(
    inputs: ProxyInputs,
    mut stream: tokio::net::TcpStream,
    client: SocketAddr,
    original: SocketAddr,
    service: String,
) {
    match client_hello::read(&mut stream, inputs.limits.header_read_timeout).await {
        Ok(hello) => tcp::serve(inputs, stream, client, original, service, Some(hello)).await,
        Err(err) => {
            inputs.metrics.rejected(metrics::REJECT_CLIENT_HELLO);
            tracing::info!(target: "access", "[tls] {service} {original} from {client}: closed ({err})");
        }
    }
}

/// A connection's place under the connection cap and in the open-connections gauge; whoever ends
/// up owning the socket (a tunnel or an HTTP/2 connection after an upgrade) holds it too.
pub(crate) struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: metrics::ConnectionGuard,
}

use hop_by_hop::header_tokens;

/// Answers "where was this accepted connection going before it was redirected?".
pub trait OriginalDestination: Send + Sync + 'static {
    /// The original destination of the connection from `client`, consumed by the call.
    fn take(&self, client: SocketAddr) -> Option<SocketAddr>;
}

impl OriginalDestination for crate::bpf::OrigDstTable {
    fn take(&self, client: SocketAddr) -> Option<SocketAddr> {
        match crate::bpf::OrigDstTable::take(self, client) {
            Ok(found) => found,
            Err(err) => {
                warn!(%client, %err, "original destination lookup failed");
                None
            }
        }
    }
}

/// The service behind `original` when its port is a TCP (non-HTTP) port.
fn tcp_service(inputs: &ProxyInputs, original: SocketAddr) -> Option<String> {
    let table = inputs.routes.load();
    let service = table.service_at(original)?;
    (table.protocol(service, original.port()) == crate::endpoints::Protocol::Tcp).then(|| service.to_string())
}

/// The next connection on `listener` or `listener6` (no-delay set), or `None` once `stop`
/// resolves. A failed accept (EMFILE and friends) is logged and waited out, keeping the
/// connections already open.
async fn accept(
    listener: &TcpListener,
    listener6: Option<&TcpListener>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = stop.as_mut() => return None,
            accepted = listener.accept() => accepted,
            accepted = async {
                match listener6 {
                    Some(listener6) => listener6.accept().await,
                    None => std::future::pending().await,
                }
            } => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let _ = stream.set_nodelay(true);
                // A dual-stack peer `::ffff:a.b.c.d` is the IPv4 client the kernel keyed.
                return Some((stream, SocketAddr::new(client.ip().to_canonical(), client.port())));
            }
            Err(err) => {
                warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Everything a connection needs, cheap to clone.
#[derive(Clone)]
pub struct ProxyInputs {
    /// The active route table; swapped whole on reload.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// Original destinations of redirected connections.
    pub original_destinations: Arc<dyn OriginalDestination>,
    /// Namespace short Host headers resolve against.
    pub namespace: Arc<str>,
    /// Pooled upstream connections (HTTP/1.1, and HTTP/2 for gRPC).
    pub upstream: UpstreamClient,
    /// Istio request metrics.
    pub metrics: Arc<metrics::ProxyMetrics>,
    /// Limits on downstream connections.
    pub limits: limits::Limits,
    /// With the fast path on: where the proxy splices the byte streams it relays between pods.
    pub splices: Option<crate::bpf::SpliceTable>,
}

/// The listeners for captured connections: one per family.
pub struct Proxy {
    listener: TcpListener,
    listener6: Option<TcpListener>,
    inputs: ProxyInputs,
}

impl Proxy {
    /// Binds the listener now, so a bad address fails at start-up.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, inputs: ProxyInputs) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, listener6: None, inputs })
    }

    /// Adds an IPv6 listener beside the first one. It is IPv6-only, so `[::]` and `0.0.0.0` can
    /// share a port.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn bind_v6(&mut self, addr: std::net::SocketAddrV6) -> std::io::Result<()> {
        use socket2::{Domain, Socket, Type};

        let socket = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        socket.set_only_v6(true)?;
        // What std's (and so tokio's) `bind` does on Unix: a restarted agent rebinds at once.
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::V6(addr).into())?;
        socket.listen(1024)?;
        self.listener6 = Some(TcpListener::from_std(socket.into())?);
        Ok(())
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` resolves, then lets in-flight requests finish (keep-alive
    /// connections close after their current request) for at most `drain`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>, drain: Duration) {
        let connections = drain::Drain::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(self.inputs.limits.max_connections));
        let http1 = self.inputs.limits.http1();
        let http2 = self.inputs.limits.http2();
        let reaper = tokio::spawn(self.inputs.upstream.clone().reap_idle());
        tokio::pin!(shutdown);
        while let Some((stream, client)) = accept(&self.listener, self.listener6.as_ref(), shutdown.as_mut()).await {
            let inputs = self.inputs.clone();
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                warn!(%client, max = self.inputs.limits.max_connections, "connection cap reached; answering 503");
                self.inputs.metrics.rejected(metrics::REJECT_OVERLOAD);
                tokio::spawn(async move {
                    // Consumed all the same, so the entry does not linger in the kernel table.
                    let _ = inputs.original_destinations.take(client);
                    limits::overloaded(stream).await;
                });
                continue;
            };
            let open = self.inputs.metrics.open_connection();
            let (http1, http2) = (http1.clone(), http2.clone());
            let watch = connections.watch();
            let span = tracing::debug_span!("conn", %client);
            // The rarer protocols are boxed, so that every connection's task is only as big as an
            // HTTP/1 one (idle keep-alive connections are most of the memory).
            tokio::spawn(
                async move {
                    let slot = Slot { _permit: permit, _open: open };
                    // Looked up here, not in the accept loop: the lookup is two syscalls under a
                    // lock, and accepting must not wait on it.
                    let original = inputs.original_destinations.take(client);
                    debug!(?original, "accepted");
                    let tcp_port = original.and_then(|o| tcp_service(&inputs, o).map(|s| (o, s)));
                    // Declared TCP ports go through as TCP, by the VirtualService's tcp rules —
                    // and by its tls rules when it has some and the client opens with TLS.
                    if let Some((original, service)) = tcp_port {
                        let tls_rules = inputs.routes.load().has_tls_rules(&service);
                        if tls_rules && sniff::sniff(&stream).await == sniff::Sniffed::Tls {
                            return Box::pin(serve_tls(inputs, stream, client, original, service)).await;
                        }
                        return Box::pin(tcp::serve(inputs, stream, client, original, service, None)).await;
                    }
                    let sniffed = sniff::sniff(&stream).await;
                    if sniffed == sniff::Sniffed::Http2 {
                        return Box::pin(serve_http2(inputs, &http2, watch, stream, client, original)).await;
                    }
                    // A captured connection that does not speak HTTP goes through as TCP too (TLS
                    // by its SNI).
                    if let (sniff::Sniffed::Opaque | sniff::Sniffed::Tls, Some(original)) = (sniffed, original) {
                        let table = inputs.routes.load();
                        let Some(service) = table.service_at(original).map(|s| s.to_string()) else {
                            debug!(%original, "opaque connection to an unknown service port; closing");
                            return;
                        };
                        drop(table);
                        if sniffed == sniff::Sniffed::Tls {
                            return Box::pin(serve_tls(inputs, stream, client, original, service)).await;
                        }
                        return Box::pin(tcp::serve(inputs, stream, client, original, service, None)).await;
                    }
                    http1::serve(inputs, &http1, watch, stream, slot, client, original).await;
                }
                .instrument(span),
            );
        }
        drop((self.listener, self.listener6));
        reaper.abort();
        tokio::select! {
            () = connections.drain() => debug!("all connections drained"),
            () = tokio::time::sleep(drain) => warn!(?drain, "drain deadline passed; closing remaining connections"),
        }
    }
}
