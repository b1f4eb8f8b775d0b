//! Captured connections to TCP service ports: routed by the VirtualService's `tcp` rules (or to
//! the whole service; `tls` rules by SNI first for a connection that opens with a ClientHello) and
//! forwarded as a byte stream, over TLS when the cluster originates it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::client_hello::ClientHello;
use super::upstream::{connect, UpstreamStream};
use super::ProxyInputs;
use crate::bpf::{SpliceEnd, Spliced, Toward};
use crate::endpoints::PickContext;
use crate::routing::{Cluster, Target};

/// Forwards one TCP connection from `client`, originally to `original` (a VIP of `service`):
/// by the `tcp` rules, or — when it opened with a ClientHello (`hello`, already read off the
/// socket) — by the `tls` rules for its SNI first.
pub async fn serve(
    inputs: ProxyInputs,
    downstream: TcpStream,
    client: SocketAddr,
    original: SocketAddr,
    service: String,
    hello: Option<ClientHello>,
) {
    let table = inputs.routes.load_full();
    let sni = hello.as_ref().and_then(|h| h.sni.clone());
    let routed = match &hello {
        Some(_) => table.route_tls(&service, original.port(), original, client, sni.as_deref()),
        None => table.route_tcp(&service, original.port(), original, client),
    };
    let Some(routed) = routed else {
        let kind = if hello.is_some() { "tls" } else { "tcp" };
        info!(target: "access", "[{kind}] {service} {original} from {client} sni={}: NR (no {kind} rule matched)", sni.as_deref().unwrap_or("-"));
        return;
    };
    // A pod's socket the kernel may splice to the endpoint's, when the fast path is on.
    let splice_from = inputs
        .splices
        .as_ref()
        .and_then(|_| SpliceEnd::of(&downstream).inspect_err(|err| debug!(%err, "not spliced")).ok());
    let entry = Entry { client, original, service: Some(&service), sni: sni.as_deref(), splice_from };
    forward(&inputs, downstream, &entry, routed, hello).await;
}

/// Where a forwarded connection came from, for its access log line and metrics.
pub(super) struct Entry<'a> {
    /// The client.
    pub client: SocketAddr,
    /// Where it connected: a service VIP, or the gateway listener.
    pub original: SocketAddr,
    /// The captured service; `None` at a gateway (metrics then count under the cluster's host).
    pub service: Option<&'a str>,
    /// The ClientHello's server name, when there was one.
    pub sni: Option<&'a str>,
    /// The proxy's socket of a captured pod's connection, which the kernel may splice to the
    /// endpoint's (`None` at a gateway, or with the fast path off).
    pub splice_from: Option<SpliceEnd>,
}

/// Forwards `downstream` to an endpoint of the target `routed` names (with the label of the rule
/// that chose it), replaying the ClientHello's bytes first when `replay` holds one (TLS passed
/// through; a terminated one is not replayed).
pub(super) async fn forward<D: AsyncRead + AsyncWrite + Unpin>(
    inputs: &ProxyInputs,
    mut downstream: D,
    entry: &Entry<'_>,
    (rule, target): (&str, &Target),
    replay: Option<ClientHello>,
) {
    let kind = if replay.is_some() { "tls" } else { "tcp" };
    let (client, original, sni) = (entry.client, entry.original, entry.sni.unwrap_or("-"));
    let cluster = match target {
        Target::Cluster(c) => c.clone(),
        Target::Missing { cluster } => {
            let service = entry.service.unwrap_or("-");
            info!(target: "access", "[{kind}] {service} {original} sni={sni} rule={rule}: NC (cluster {cluster} not found)");
            return;
        }
    };
    let service = entry.service.unwrap_or(&cluster.host);
    if let Some(why) = cluster.tls.refusal() {
        // Never plaintext where TLS was asked for: nothing is dialled.
        info!(target: "access", "[{kind}] {service} {original} sni={sni} rule={rule} cluster={}: UF (upstream TLS: {why})", cluster.name);
        return;
    }
    let Some((endpoint, _in_flight)) = cluster.balancer.pick(PickContext::default()) else {
        info!(target: "access", "[{kind}] {service} {original} sni={sni} rule={rule} cluster={}: UH (no healthy upstream)", cluster.name);
        return;
    };
    let mut upstream = match connect_upstream(inputs, &cluster, endpoint).await {
        Ok(stream) => stream,
        Err(err) => {
            info!(target: "access", "[{kind}] {service} {original} -> {endpoint} sni={sni} rule={rule} cluster={} UF {err}", cluster.name);
            return;
        }
    };
    inputs.metrics.tcp_opened(service);
    let replayed = match replay {
        Some(hello) => match upstream.write_all(&hello.bytes).await {
            Ok(()) => hello.bytes.len() as u64,
            Err(err) => {
                info!(target: "access", "[{kind}] {service} {original} -> {endpoint} sni={sni} rule={rule} cluster={} UC {err}", cluster.name);
                return;
            }
        },
        None => 0,
    };
    let spliced = match (&inputs.splices, entry.splice_from, &upstream) {
        (Some(splices), Some(from), UpstreamStream::Plain(to)) => {
            splices.splice(from, to, replayed).inspect_err(|err| debug!(%err, "not spliced")).ok().flatten()
        }
        _ => None,
    };
    let relayed = relay(&mut downstream, &mut upstream, cluster.tcp_idle_timeout, spliced.as_ref()).await;
    drop(spliced);
    let sent = relayed.sent + replayed;
    inputs.metrics.tcp_bytes(service, sent, relayed.received);
    let (received, idle) = (relayed.received, if relayed.idled { " idle timeout" } else { "" });
    let past = match relayed.past_the_proxy {
        (0, 0) => String::new(),
        (sent, received) => format!(" spliced={sent}/{received}"),
    };
    info!(target: "access", "[{kind}] {service} {original} -> {endpoint} from {client} sni={sni} rule={rule} cluster={} sent={sent} received={received}{past}{idle}", cluster.name);
}

/// Connects to `endpoint` of `cluster`, with TLS when the cluster originates it; the handshake is
/// part of connecting, within the same timeout (as Envoy's).
async fn connect_upstream(inputs: &ProxyInputs, cluster: &Cluster, endpoint: SocketAddr) -> io::Result<UpstreamStream> {
    let started = Instant::now();
    let tcp = connect(endpoint, inputs.upstream.mark(), cluster.connect_timeout).await?;
    let Some(tls) = cluster.tls.originate() else { return Ok(UpstreamStream::Plain(tcp)) };
    let left = cluster.connect_timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, tls.connect_tcp(tcp)).await {
        Ok(tls) => Ok(UpstreamStream::Tls(Box::new(tls?))),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
    }
}

/// What one relayed connection carried.
#[derive(Debug, PartialEq, Eq)]
struct Relayed {
    /// Bytes from the client to the endpoint.
    sent: u64,
    /// Bytes from the endpoint to the client.
    received: u64,
    /// Of those, the bytes the kernel moved past the proxy (a spliced connection), each way.
    past_the_proxy: (u64, u64),
    /// Closed because nothing moved either way for the idle timeout.
    idled: bool,
}

/// Copies both ways until both sides are done (or one fails), or until no byte moved either way
/// for `idle` (DestinationRule `connectionPool.tcp.idleTimeout`). A spliced connection tells the
/// kernel what it forwarded whenever it has read all a side sent, and counts in what the kernel
/// moved past the proxy — as traffic too, sampled every quarter of the timeout (so such a
/// connection closes within 1¼ timeouts of its last byte).
async fn relay<D: AsyncRead + AsyncWrite + Unpin, U: AsyncRead + AsyncWrite + Unpin>(
    downstream: &mut D,
    upstream: &mut U,
    idle: Duration,
    spliced: Option<&Spliced>,
) -> Relayed {
    let start = Instant::now();
    // Milliseconds after `start` of the last byte read on either side.
    let last = AtomicU64::new(0);
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let side = |toward| spliced.map(|s| (s, toward));
    let mut client = Counted { inner: downstream, bytes: &sent, last: &last, start, spliced: side(Toward::Client) };
    let mut endpoint =
        Counted { inner: upstream, bytes: &received, last: &last, start, spliced: side(Toward::Endpoint) };
    let copy = super::copy::both_ways(&mut client, &mut endpoint);
    tokio::pin!(copy);
    let past = || spliced.map_or((0, 0), Spliced::moved_past);
    let mut seen_past = (0, 0);
    let idled = loop {
        let mut quiet_until = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        if spliced.is_some() {
            quiet_until = quiet_until.min(Instant::now() + idle / 4);
        }
        tokio::select! {
            _ = &mut copy => break false,
            () = tokio::time::sleep_until(quiet_until.into()) => {
                // Bytes moved past the proxy are traffic too.
                let now_past = past();
                if now_past != seen_past {
                    seen_past = now_past;
                    last.store(millis_since(start), Ordering::Relaxed);
                } else if Instant::now() >= start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle {
                    break true;
                }
            }
        }
    };
    let (to_endpoint, to_client) = past();
    Relayed {
        sent: sent.load(Ordering::Relaxed) + to_endpoint,
        received: received.load(Ordering::Relaxed) + to_client,
        past_the_proxy: (to_endpoint, to_client),
        idled,
    }
}

/// Milliseconds since `start`: the stamps of a relay's last traffic.
fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A stream that counts the bytes read from it and stamps when the last ones came; on a spliced
/// connection (as the side `Toward` names), it counts what was written on it, and tells when all
/// it sent was read.
struct Counted<'a, S> {
    inner: &'a mut S,
    bytes: &'a AtomicU64,
    last: &'a AtomicU64,
    start: Instant,
    spliced: Option<(&'a Spliced, Toward)>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.bytes.fetch_add(read, Ordering::Relaxed);
            self.last.store(millis_since(self.start), Ordering::Relaxed);
        }
        if let (Poll::Pending, Some((spliced, side))) = (&polled, self.spliced) {
            // Nothing more to read from this side: what it sent was all written on the other.
            spliced.caught_up(side.opposite());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.inner).poll_write(cx, data);
        if let (Poll::Ready(Ok(n @ 1..)), Some((spliced, side))) = (&polled, self.spliced) {
            spliced.wrote(side, *n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    #[tokio::test]
    async fn relays_both_ways_and_closes_a_connection_idle_for_the_timeout() {
        let (mut client, mut downstream) = pair().await;
        let (mut upstream, mut endpoint) = pair().await;
        let idle = Duration::from_millis(300);
        let relay = tokio::spawn(async move { relay(&mut downstream, &mut upstream, idle, None).await });

        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        endpoint.read_exact(&mut got).await.unwrap();
        endpoint.write_all(b"pong!").await.unwrap();
        let mut back = [0u8; 5];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!((&got, &back), (b"ping", b"pong!"));

        // Then nothing: the relay ends after the idle timeout and both sides see the close.
        let quiet = Instant::now();
        let relayed = relay.await.unwrap();
        assert_eq!(relayed, Relayed { sent: 4, received: 5, past_the_proxy: (0, 0), idled: true });
        assert!(quiet.elapsed() >= Duration::from_millis(250), "{:?}", quiet.elapsed());
        assert_eq!(client.read(&mut back).await.unwrap(), 0, "the client sees the close");
        assert_eq!(endpoint.read(&mut got).await.unwrap(), 0, "the endpoint sees the close");
    }

    #[tokio::test]
    async fn a_connection_that_ends_before_the_timeout_is_not_idle() {
        let (mut client, mut downstream) = pair().await;
        let (mut upstream, mut endpoint) = pair().await;
        let relay =
            tokio::spawn(async move { relay(&mut downstream, &mut upstream, Duration::from_secs(60), None).await });
        client.write_all(b"bye").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        endpoint.read_to_end(&mut got).await.unwrap();
        drop(endpoint);
        assert_eq!(relay.await.unwrap(), Relayed { sent: 3, received: 0, past_the_proxy: (0, 0), idled: false });
    }
}
