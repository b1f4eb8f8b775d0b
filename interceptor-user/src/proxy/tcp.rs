//! Captured connections to TCP service ports: routed by the VirtualService's `tcp` rules (or to
//! the whole service) and forwarded as a byte stream.

use std::net::{SocketAddr, SocketAddrV4};

use tokio::net::TcpStream;
use tracing::info;

use super::upstream::connect;
use super::ProxyInputs;
use crate::endpoints::PickContext;
use crate::routing::Target;

/// Forwards one TCP connection from `client`, originally to `original` (a VIP of `service`).
pub async fn serve(
    inputs: ProxyInputs,
    mut downstream: TcpStream,
    client: SocketAddr,
    original: SocketAddrV4,
    service: String,
) {
    let table = inputs.routes.load_full();
    let Some((rule, target)) = table.route_tcp(&service, original.port(), original, client) else {
        info!(target: "access", "[tcp] {service} {original} from {client}: NR (no tcp rule matched)");
        return;
    };
    let cluster = match target {
        Target::Cluster(c) => c.clone(),
        Target::Missing { cluster } => {
            info!(target: "access", "[tcp] {service} {original} rule={rule}: NC (cluster {cluster} not found)");
            return;
        }
    };
    let Some((endpoint, _in_flight)) = cluster.balancer.pick(PickContext::default()) else {
        info!(target: "access", "[tcp] {service} {original} rule={rule} cluster={}: UH (no healthy upstream)", cluster.name);
        return;
    };
    let mut upstream = match connect(endpoint, inputs.upstream.mark(), cluster.connect_timeout).await {
        Ok(stream) => stream,
        Err(err) => {
            info!(target: "access", "[tcp] {service} {original} -> {endpoint} rule={rule} cluster={} UF {err}", cluster.name);
            return;
        }
    };
    inputs.metrics.tcp_opened(&service);
    let copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    let (sent, received) = copied.unwrap_or((0, 0));
    inputs.metrics.tcp_bytes(&service, sent, received);
    info!(target: "access", "[tcp] {service} {original} -> {endpoint} rule={rule} cluster={} sent={sent} received={received}", cluster.name);
}
