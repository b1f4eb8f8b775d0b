//! Gateway listeners: one per port the Gateways this agent serves use, bound on the settings'
//! `gatewayAddress`. The ClientHello's SNI picks the server: a `PASSTHROUGH` one sends the TLS
//! bytes on by its `tls` rules; otherwise TLS is terminated with that server's certificate,
//! client verification and versions, HTTP is then served (`http`: the relay, else hyper),
//! and every request goes through the same decision (`plan`, with the gateway as part of its
//! input) and try loop as captured traffic. Listeners follow the route table: a reload opens the
//! ports that appeared and closes those that went, leaving the others' connections alone.

mod http;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn, Instrument};

use super::metrics::SourceWorkload;
use super::{client_hello, drain, limits, metrics, tcp, ProxyInputs};
use crate::config::{Diagnostic, Settings, Severity};
use crate::routing::{selects, L4View, RouteTable, ServerId, ServerProtocol};
use crate::tls::Credentials;

/// How a connection entered a gateway listener.
#[derive(Clone, Debug)]
pub struct GatewayConnection {
    /// Listener port.
    pub port: u16,
    /// The TLS server the SNI chose; `None` for plain HTTP.
    pub server: Option<ServerId>,
    /// The SNI the client sent.
    pub sni: Option<Box<str>>,
    /// The listener's address as the client reached it.
    pub local: Option<SocketAddr>,
    /// The agent's own workload: the source its metrics name, as an Istio gateway's do.
    pub workload: SourceWorkload,
}

/// Keeps the gateway servers this agent serves — those whose Gateway's selector its `labels`
/// match, and none without a `gatewayAddress` — and builds their TLS from their files or
/// credentials. A server whose TLS cannot be built keeps its place without a configuration, so
/// its handshakes are refused while the other servers serve (Envoy's filter chain waiting for a
/// secret), with an error naming the Gateway's field and the file or Secret.
pub fn prepare(table: &mut RouteTable, settings: &Settings, credentials: &Credentials) -> Vec<Diagnostic> {
    let gateways = table.gateways_mut();
    let selected: HashSet<Arc<str>> = match settings.gateway_address {
        None => HashSet::new(),
        Some(_) => {
            gateways.gateways().filter(|g| selects(&g.selector, &settings.labels)).map(|g| g.name.clone()).collect()
        }
    };
    gateways.retain_servers(|s| selected.contains(&s.id.gateway));
    let mut findings = Vec::new();
    for server in gateways.servers_mut() {
        let Some(tls) = &server.tls else { continue };
        match tls::server_config(tls, credentials) {
            Ok(config) => server.tls_config = Some(Arc::new(config)),
            Err(err) => findings.push(server.source.diagnostic(
                Severity::Error,
                format!("{}.tls.{}", server.at, err.field),
                format!("{}; its TLS handshakes are refused until it loads", err.message),
            )),
        }
    }
    findings
}

/// One open listener.
struct Listening {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The gateway listeners of one agent.
pub struct GatewayListeners {
    inputs: ProxyInputs,
    address: Option<IpAddr>,
    open: BTreeMap<u16, Listening>,
    drain: Duration,
    /// `limits.maxConnections` over all gateway listeners together.
    permits: Arc<Semaphore>,
    /// The agent's own workload, reported as the source of gateway requests.
    workload: SourceWorkload,
}

impl GatewayListeners {
    /// No listener yet; `address` `None` means this agent serves no gateway. `workload` is the
    /// agent's own, which Istio's metrics name as the source of what a gateway serves.
    pub fn new(inputs: ProxyInputs, address: Option<IpAddr>, drain: Duration, workload: SourceWorkload) -> Self {
        let permits = Arc::new(Semaphore::new(inputs.limits.max_connections));
        Self { inputs, address, open: BTreeMap::new(), drain, permits, workload }
    }

    /// The ports listened on.
    pub fn ports(&self) -> BTreeSet<u16> {
        self.open.keys().copied().collect()
    }

    /// Opens a listener for each port `table` has servers on and none listens on yet, and closes
    /// those of ports it no longer has (their connections drain). A port that cannot be bound is
    /// logged and tried again at the next reload.
    pub async fn reconcile(&mut self, table: &RouteTable) {
        let Some(address) = self.address else { return };
        let wanted: BTreeSet<u16> = table.gateways().ports().map(|(port, _)| port).collect();
        let gone: Vec<u16> = self.open.keys().filter(|p| !wanted.contains(p)).copied().collect();
        for port in gone {
            if let Some(listening) = self.open.remove(&port) {
                let _ = listening.stop.send(());
                info!(port, "gateway listener closed");
            }
        }
        for port in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(address, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let (stop, stopped) = oneshot::channel();
                    let span = tracing::info_span!("gateway", port);
                    let accepting = Accepting {
                        port,
                        inputs: self.inputs.clone(),
                        permits: self.permits.clone(),
                        workload: self.workload.clone(),
                    };
                    let task = tokio::spawn(listen(listener, accepting, stopped, self.drain).instrument(span));
                    self.open.insert(port, Listening { stop, task });
                    info!(%addr, "gateway listener open");
                }
                Err(err) => error!(%addr, %err, "cannot listen for a gateway; tried again at the next config change"),
            }
        }
    }

    /// Closes every listener and waits until their connections drained (bounded by the drain
    /// deadline each listener keeps).
    pub async fn shutdown(self) {
        let mut tasks = Vec::new();
        for (_, listening) in self.open {
            let _ = listening.stop.send(());
            tasks.push(listening.task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// What one gateway listener hands its connections.
struct Accepting {
    port: u16,
    inputs: ProxyInputs,
    permits: Arc<Semaphore>,
    workload: SourceWorkload,
}

/// Accepts on one gateway port until told to stop, then drains its connections: HTTP ones finish
/// the request in flight; whatever is still open at the deadline — TCP and passthrough streams,
/// which have no request boundary to stop at, included — is closed, as Envoy closes a drained
/// listener's connections. Over the connection cap a plain HTTP connection is answered 503 `OM`
/// and any other closed.
async fn listen(listener: TcpListener, accepting: Accepting, stop: oneshot::Receiver<()>, deadline: Duration) {
    let Accepting { port, inputs, permits, workload } = accepting;
    let connections = drain::Drain::new();
    let mut tasks = JoinSet::new();
    let stopped = async {
        let _ = stop.await;
    };
    tokio::pin!(stopped);
    while let Some((stream, client)) = super::accept(&listener, None, stopped.as_mut()).await {
        // Finished connections leave the set here, so it holds only open ones.
        while tasks.try_join_next().is_some() {}
        let inputs = inputs.clone();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%client, max = inputs.limits.max_connections, "gateway connection cap reached");
            inputs.metrics.rejected(metrics::REJECT_OVERLOAD);
            let plain =
                inputs.routes.load().gateways().servers(port).first().map(|s| s.protocol) == Some(ServerProtocol::Http);
            if plain {
                tokio::spawn(limits::overloaded(stream));
            }
            continue;
        };
        let watch = connections.watch();
        let span = tracing::debug_span!("conn", %client);
        let workload = workload.clone();
        tasks.spawn(
            async move {
                let _permit = permit;
                connection(inputs, port, workload, stream, client, watch).await;
            }
            .instrument(span),
        );
    }
    drop(listener);
    tokio::select! {
        () = connections.drain() => debug!("gateway connections drained"),
        () = tokio::time::sleep(deadline) => {
            warn!(?deadline, open = tasks.len(), "drain deadline passed; closing remaining gateway connections");
            tasks.abort_all();
        }
    }
}

/// One downstream connection: TLS (when the port terminates it), then HTTP.
async fn connection(
    inputs: ProxyInputs,
    port: u16,
    workload: SourceWorkload,
    mut stream: TcpStream,
    client: SocketAddr,
    watch: drain::Watch,
) {
    let _open = inputs.metrics.open_connection();
    let local = stream.local_addr().ok();
    let first = inputs.routes.load().gateways().servers(port).first().map(|s| (s.protocol, s.id.clone()));
    let Some((protocol, first)) = first else {
        debug!("port no longer served by a gateway; closing");
        return;
    };
    match protocol {
        ServerProtocol::Http => {
            let entered = GatewayConnection { port, server: None, sni: None, local, workload };
            return http::serve(inputs, entered, client, stream, false, watch).await;
        }
        // Alone on its port (Istio merges nothing with it).
        ServerProtocol::Tcp => {
            let entered = GatewayConnection { port, server: Some(first), sni: None, local, workload };
            return forward(inputs, entered, client, stream, None).await;
        }
        ServerProtocol::Https | ServerProtocol::Passthrough | ServerProtocol::TerminatedTcp => {}
    }
    // The ClientHello is read here, not by rustls' lazy acceptor, so that a passthrough server
    // can still send its bytes on untouched.
    let handshake_timeout = inputs.limits.header_read_timeout;
    let hello = match client_hello::read(&mut stream, handshake_timeout).await {
        Ok(hello) => hello,
        Err(err) => {
            inputs.metrics.rejected(metrics::REJECT_CLIENT_HELLO);
            return debug!(%err, "no usable ClientHello; closing");
        }
    };
    let sni: Option<Box<str>> = hello.sni.as_deref().map(Into::into);
    let chosen = {
        let table = inputs.routes.load();
        table
            .gateways()
            .server_for_sni(port, sni.as_deref())
            .map(|server| (server.id.clone(), server.protocol, server.tls_config.clone()))
    };
    let Some((server, protocol, config)) = chosen else {
        // Envoy: no filter chain for this server name, and the connection closes.
        inputs.metrics.rejected(metrics::REJECT_CLIENT_HELLO);
        return debug!(?sni, "no gateway server for this SNI; closing");
    };
    if protocol == ServerProtocol::Passthrough {
        let entered = GatewayConnection { port, server: Some(server), sni, local, workload };
        return forward(inputs, entered, client, stream, Some(hello)).await;
    }
    let Some(config) = config else {
        // Its certificate did not load (reported when the config was applied): no handshake.
        inputs.metrics.rejected(metrics::REJECT_CLIENT_HELLO);
        return debug!(%server, ?sni, "the server's certificate is not loaded; handshake refused");
    };
    let replayed = client_hello::Prefixed::new(hello.bytes, stream);
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), replayed);
    let start = match tokio::time::timeout(handshake_timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(err)) => return debug!(%err, "not a TLS ClientHello"),
        Err(_) => return debug!("no ClientHello in time"),
    };
    let stream = match tokio::time::timeout(handshake_timeout, start.into_stream(config)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return debug!(%err, ?sni, "TLS handshake failed"),
        Err(_) => return debug!(?sni, "TLS handshake not done in time"),
    };
    let entered = GatewayConnection { port, server: Some(server), sni, local, workload };
    match protocol {
        ServerProtocol::TerminatedTcp => forward(inputs, entered, client, stream, None).await,
        _ => {
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            http::serve(inputs, entered, client, stream, http2, watch).await;
        }
    }
}

/// A connection a gateway server sends on as bytes, to the destination its rules pick: a
/// `PASSTHROUGH` server's (`hello`, replayed first) by the `tls` rules of the VirtualServices bound
/// to it; a TCP server's (plain, or its TLS already ended here) by their `tcp` rules. No rule:
/// closed, as Envoy closes a connection no filter chain takes.
async fn forward<I>(
    inputs: ProxyInputs,
    entered: GatewayConnection,
    client: SocketAddr,
    stream: I,
    hello: Option<client_hello::ClientHello>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let GatewayConnection { port, server, sni, local, .. } = entered;
    let Some(server) = server else { return };
    let table = inputs.routes.load_full();
    let destination = local.unwrap_or(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port));
    let at = L4View { port, destination, source: client, sni: sni.as_deref(), gateway: None };
    let (routed, kind, reason) = match hello {
        Some(_) => (table.route_passthrough(&server, &at), "tls", metrics::REJECT_CLIENT_HELLO),
        None => (table.route_gateway_tcp(&server, &at), "tcp", metrics::REJECT_NO_ROUTE),
    };
    let Some(routed) = routed else {
        inputs.metrics.rejected(reason);
        let sni = sni.as_deref().unwrap_or("-");
        return info!(target: "access", "[{kind}] gateway {server} port {port} from {client} sni={sni}: NR (no {kind} rule matched)");
    };
    let entry = tcp::Entry { client, original: destination, service: None, sni: sni.as_deref(), splice_from: None };
    tcp::forward(&inputs, stream, &entry, routed, hello).await;
}
