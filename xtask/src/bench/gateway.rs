//! The gateway phase: HTTPS terminated at the interceptor's gateway listener (config/gateway's
//! Gateway and VirtualService), at Envoy and at HAProxy, all with one certificate made here
//! (rcgen, ECDSA P-256) and offered one TLS 1.3 suite and group by the client, which runs outside
//! the mesh (the client pod's namespace, not captured). Measured: keep-alive req/s and CPU per
//! request at saturation, p99 added over a plain direct connection at a fixed rate, and full
//! handshakes per second with a new connection per request.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use testbed::Node;

use super::contenders::{Certificate, Kind, Running, CLIENT, GATEWAY_HOST};
use super::{check_job, latency, load, per_connection, slowest, spec, turns, Ask, Plan, Results, BETA_AGENT};

/// The gateway contenders: direct (plain HTTP to one backend, the latency baseline) and the
/// three that terminate HTTPS.
pub const KINDS: [Kind; 4] = [Kind::Direct, Kind::Interceptor, Kind::Envoy, Kind::Haproxy];
/// The fixed rate, as a fraction of the slowest gateway's keep-alive peak.
pub const RATE_FRACTION: f64 = 0.5;
/// config/gateway's `credentialName`.
const CREDENTIAL: &str = "my-app-cert";

/// Everything measured for one gateway contender.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GatewayResults {
    pub name: String,
    /// Keep-alive connections: saturation req/s, CPU and latency; the fixed rate in `rates`.
    pub keep_alive: Results,
    /// A new connection, so a full TLS handshake, per request at saturation: req/s is
    /// handshakes/s.
    pub handshakes: Results,
    /// What the client negotiated (none for direct).
    pub tls: Option<load::TlsInfo>,
}

/// A certificate for the Gateway's host in `run_dir/credentials/<credentialName>` (the
/// interceptor's `credentials`), the same files for Envoy, and both in one file for HAProxy.
///
/// # Errors
/// A file cannot be written.
pub fn certificate(run_dir: &Path) -> Result<Certificate> {
    let credentials = run_dir.join("credentials");
    let dir = credentials.join(CREDENTIAL);
    let ca = crate::certificate::issue(&dir, GATEWAY_HOST)?;
    let (chain, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let combined = run_dir.join("haproxy-gateway.pem");
    std::fs::write(&combined, [std::fs::read(&chain)?, std::fs::read(&key)?].concat())?;
    Ok(Certificate { credentials, chain, key, combined, ca })
}

/// Answers of `r`'s HTTPS listener to `n` requests (HTTP/1.1 on one connection), by curl in the
/// client pod, outside the mesh, verifying the certificate against the bench's CA.
///
/// # Errors
/// curl fails (refused, bad certificate, wrong SNI handling).
pub fn ask(node: &Node, r: &Running, cert: &Certificate, n: usize, beta: bool) -> Result<(usize, usize, String)> {
    let sni = r.sni.context("not an HTTPS contender")?;
    let port = r.target.port();
    let resolve = format!("{sni}:{port}:{}", r.target.ip());
    let url = format!("https://{sni}:{port}/");
    let ca = cert.ca.display().to_string();
    let mut args = vec!["-sS", "--max-time", "60", "--http1.1", "--tlsv1.3", "--cacert", &ca, "--resolve", &resolve];
    args.extend(["-w", "\n"]);
    if beta {
        args.extend(["-A", BETA_AGENT]);
    }
    args.extend(std::iter::repeat_n(url.as_str(), n));
    let out = node
        .command_in(&node.pod_netns(CLIENT.0), false, Path::new("curl"), &args)
        .output()
        .context("running curl in the client's namespace")?;
    ensure!(out.status.success(), "{}: curl {url}: {}", r.kind.name(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // Bodies are the backend's name on the first line, then padding.
    let count = |name: &str| text.lines().filter(|l| *l == name).count();
    let head: String = text.chars().take(200).collect();
    Ok((count("v1"), count("v2"), format!("{} lines, starting {head:?}", text.lines().count())))
}

/// Checks the job and the TLS, then measures: keep-alive saturation (the proxies), the fixed
/// rate (all, direct included), and handshakes at saturation (the proxies).
///
/// # Errors
/// A contender does not do the job, a load run fails, or the contenders did not negotiate the
/// same TLS.
pub fn phases(
    plan: &Plan,
    node: &Node,
    running: &[Running],
    cert: &Certificate,
    run_dir: &Path,
) -> Result<Vec<GatewayResults>> {
    let log = run_dir.join("h2load.tsv");
    let seconds = plan.gateway_seconds;
    // A connection per request: a handshake run is a number of requests (see `load::Spec`),
    // sized per contender from a first short run so that each turn lasts about `seconds`.
    let handshake_spec = |r, requests| load::Spec {
        new_connections: true,
        requests: Some(requests),
        ..spec(r, &log, plan.connections, seconds, None)
    };
    let first = u64::from(plan.connections) * 10;
    let mut sizes = Vec::new();
    allow_many_connections(node)?;
    for r in running {
        let https = |n: usize, beta: bool| ask(node, r, cert, n, beta);
        check_job(node, r, r.sni.is_some().then_some(&https as &Ask<'_>))?;
        // Warm-up: pools, allocators, page cache; not measured.
        load::run(node, CLIENT.0, &spec(r, &log, plan.connections, 1, None))?;
        if r.sni.is_some() {
            let rate = load::run(node, CLIENT.0, &handshake_spec(r, first))?.rps;
            sizes.push((r.kind, ((rate * seconds as f64) as u64).max(first)));
        }
    }
    let proxies: Vec<Running> = running.iter().filter(|r| r.sni.is_some()).cloned().collect();
    let profile = |suffix| plan.profile.then_some(suffix);

    let kept = turns(plan, node, &proxies, "gateway keep-alive", profile("-gateway"), |r| {
        spec(r, &log, plan.connections, seconds, None)
    })?;
    let handshakes = turns(plan, node, &proxies, "gateway handshakes", profile("-handshakes"), |r| {
        let requests = sizes.iter().find(|(k, _)| *k == r.kind).map_or(first, |(_, n)| *n);
        handshake_spec(r, requests)
    })?;
    let mut results: Vec<GatewayResults> = running
        .iter()
        .map(|r| GatewayResults {
            name: r.kind.name().into(),
            keep_alive: Results { name: r.kind.name().into(), ..Results::default() },
            handshakes: Results { name: r.kind.name().into(), ..Results::default() },
            tls: None,
        })
        .collect();
    let index = |r: &Running| running.iter().position(|x| x.kind == r.kind).unwrap_or(0);
    for ((r, k), h) in proxies.iter().zip(kept).zip(handshakes) {
        let res = &mut results[index(r)];
        check_tls(r, k.tls.as_ref())?;
        check_tls(r, h.tls.as_ref())?;
        res.tls = k.tls.clone();
        res.keep_alive = Results::saturated(r.kind.name(), k, seconds);
        res.handshakes = Results::saturated(r.kind.name(), h, seconds);
    }

    let peaks: Vec<Results> = results.iter().map(|g| g.keep_alive.clone()).collect();
    let slowest = slowest(&peaks, running)?;
    let rate = per_connection(slowest, RATE_FRACTION, plan.rate_connections);
    let rated = turns(plan, node, running, "gateway fixed rate", None, |r| {
        spec(r, &log, plan.rate_connections, seconds, Some(rate))
    })?;
    let offered = f64::from(rate * plan.rate_connections);
    eprintln!(
        "bench: gateway fixed rate {:.0}% of {slowest:.0} req/s = {offered:.0} req/s done",
        RATE_FRACTION * 100.0
    );
    for (res, t) in results.iter_mut().zip(rated) {
        res.keep_alive.rates.push(latency(RATE_FRACTION, offered, t));
    }
    Ok(results)
}

/// Lets the client pod open connections as fast as a handshake run closes them: the whole port
/// range (the test node already reuses ports in TIME_WAIT). Only the bench's own client
/// namespace is changed.
fn allow_many_connections(node: &Node) -> Result<()> {
    let netns = node.pod_netns(CLIENT.0);
    let args = ["-qw", "net.ipv4.ip_local_port_range=1024 65535"];
    let out = node.command_in(&netns, false, Path::new("sysctl"), &args).output().context("running sysctl")?;
    ensure!(out.status.success(), "sysctl in {netns}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The TLS every HTTPS contender must have negotiated: 1.3, the one suite and group offered,
/// HTTP/1.1 by ALPN.
fn check_tls(r: &Running, tls: Option<&load::TlsInfo>) -> Result<()> {
    let Some(tls) = tls else { bail!("{}: no TLS reported", r.kind.name()) };
    let expected = tls.protocol == "TLSv1.3"
        && tls.cipher == load::TLS13_CIPHER
        && tls.key_exchange.starts_with(load::TLS_GROUP)
        && tls.alpn == "http/1.1";
    ensure!(
        expected,
        "{}: negotiated {tls:?}, not TLSv1.3 {} {} http/1.1",
        r.kind.name(),
        load::TLS13_CIPHER,
        load::TLS_GROUP
    );
    Ok(())
}
