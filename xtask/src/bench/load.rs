//! The load generator: h2load (nghttp2-client) speaking HTTP/1.1 — plain or over TLS 1.3, with
//! keep-alive or a new connection per request — from the client pod, at saturation or at a fixed
//! rate, with per-request latencies from its log file.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use testbed::Node;

/// Where h2load lives (Debian's nghttp2-client).
pub const H2LOAD: &str = "/usr/bin/h2load";
/// The one TLS 1.3 cipher suite every HTTPS contender is offered, so that all do the same work
/// (servers would otherwise pick by their own preferences).
pub const TLS13_CIPHER: &str = "TLS_AES_128_GCM_SHA256";
/// The one key-exchange group offered.
pub const TLS_GROUP: &str = "X25519";

/// One load run.
pub struct Spec<'a> {
    /// Where the requests go (a proxy listener, the captured VIP, or a backend).
    pub target: SocketAddr,
    /// Run inside the capture cgroup (the interceptor contender).
    pub captured: bool,
    /// Keep-alive connections.
    pub connections: u32,
    /// Measured duration.
    pub duration: Duration,
    /// Send this many requests instead of loading for `duration` (h2load 1.52 never ends a
    /// timed run whose connections close after each request: it keeps reconnecting).
    pub requests: Option<u64>,
    /// Requests per second per connection; `None`: as fast as the target answers.
    pub rate_per_connection: Option<u32>,
    /// HTTPS with this SNI and Host (TLS 1.3, [`TLS13_CIPHER`]); `None`: plain HTTP.
    pub sni: Option<&'a str>,
    /// `connection: close` on every request: each request on a new connection (and, over TLS,
    /// after a full handshake — this h2load resumes no session).
    pub new_connections: bool,
    /// Per-request log (start, status, µs).
    pub log: &'a Path,
    /// The request path.
    pub path: &'a str,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Answered requests per second over the measured duration (h2load's figure).
    pub rps: f64,
    /// Requests completed.
    pub done: u64,
    /// Latencies of the 2xx answers, µs.
    pub latencies_us: Vec<u64>,
    /// What TLS the first connection negotiated (HTTPS runs).
    pub tls: Option<TlsInfo>,
    /// Busy CPU seconds of the whole machine while h2load ran.
    pub node_cpu_seconds: f64,
}

/// The TLS h2load reports for its first connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
    /// The server's key-exchange key (`X25519 253 bits`).
    pub key_exchange: String,
    pub alpn: String,
}

/// Runs h2load from pod `client` of `node`.
///
/// # Errors
/// h2load fails, any request fails or answers other than 2xx (a contender that cannot do the
/// job is a broken bench, not a slow contender), or its output cannot be read.
pub fn run(node: &Node, client: &str, spec: &Spec<'_>) -> Result<Outcome> {
    let secs = spec.duration.as_secs().max(1).to_string();
    let conns = spec.connections.to_string();
    let log = spec.log.display().to_string();
    let mut args: Vec<String> =
        ["--h1", "-t", "1", "-c", &conns, "-m", "1", "--log-file", &log].map(String::from).to_vec();
    match spec.requests {
        Some(n) => args.extend(["-n".into(), n.to_string()]),
        None => args.extend(["-D".into(), secs]),
    }
    if let Some(r) = spec.rate_per_connection {
        args.push(format!("--rps={r}"));
    }
    if spec.new_connections {
        args.extend(["-H".into(), "connection: close".into()]);
    }
    match spec.sni {
        None => args.push(format!("http://{}{}", spec.target, spec.path)),
        Some(host) => {
            // The URL's host is the SNI and the Host header; --connect-to says where to connect.
            args.push(format!("--connect-to={}", spec.target));
            args.push(format!("--tls13-ciphers={TLS13_CIPHER}"));
            args.push(format!("--groups={TLS_GROUP}"));
            args.push(format!("https://{host}{}", spec.path));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Around h2load alone: reading its log below takes CPU the run did not.
    let node_before = super::procstat::node_busy_seconds()?;
    let out = node
        .command_in(&node.pod_netns(client), spec.captured, Path::new(H2LOAD), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("running h2load")?;
    let node_cpu_seconds = super::procstat::node_busy_seconds()? - node_before;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load {args:?} failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let summary = parse_summary(&text).with_context(|| format!("reading h2load output:\n{text}"))?;
    if summary.failed > 0 || summary.non_2xx > 0 || summary.done == 0 {
        bail!(
            "{} of {} requests to {} failed and {} were not 2xx:\n{text}",
            summary.failed,
            summary.done,
            spec.target,
            summary.non_2xx
        );
    }
    let log_text = std::fs::read_to_string(spec.log).with_context(|| format!("reading {log}"))?;
    let latencies_us = parse_log(&log_text);
    let _ = std::fs::remove_file(spec.log);
    let tls = parse_tls(&text);
    if spec.sni.is_some() && tls.is_none() {
        bail!("h2load reported no TLS for {}:\n{text}", spec.target);
    }
    Ok(Outcome { rps: summary.rps, done: summary.done, latencies_us, tls, node_cpu_seconds })
}

/// Reads `TLS Protocol: …`, `Cipher: …`, `Server Temp Key: …` and `Application protocol: …`.
fn parse_tls(text: &str) -> Option<TlsInfo> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned());
    Some(TlsInfo {
        protocol: field("TLS Protocol: ")?,
        cipher: field("Cipher: ")?,
        key_exchange: field("Server Temp Key: ").unwrap_or_default(),
        alpn: field("Application protocol: ").unwrap_or_default(),
    })
}

#[derive(Debug, PartialEq)]
struct Summary {
    rps: f64,
    done: u64,
    failed: u64,
    non_2xx: u64,
}

/// Reads `finished in 2.00s, 12990.50 req/s, …`, `requests: … N done, … N failed, N errored, N timeout`
/// and `status codes: N 2xx, N 3xx, N 4xx, N 5xx`.
fn parse_summary(text: &str) -> Option<Summary> {
    let finished = text.lines().find_map(|l| l.strip_prefix("finished in "))?;
    let rps = finished.split(", ").find_map(|p| p.strip_suffix(" req/s"))?.trim().parse().ok()?;
    let requests = text.lines().find_map(|l| l.strip_prefix("requests: "))?;
    let count = |line: &str, word: &str| -> Option<u64> {
        line.split(", ").find_map(|p| p.trim().strip_suffix(word)).and_then(|n| n.trim().parse().ok())
    };
    let done = count(requests, " done")?;
    let failed = count(requests, " failed")? + count(requests, " errored")? + count(requests, " timeout")?;
    let codes = text.lines().find_map(|l| l.strip_prefix("status codes: "))?;
    let non_2xx = count(codes, " 3xx")? + count(codes, " 4xx")? + count(codes, " 5xx")?;
    Some(Summary { rps, done, failed, non_2xx })
}

/// Latencies (third column, µs) of the 2xx rows of an h2load log.
fn parse_log(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let (_start, status, micros) = (cols.next()?, cols.next()?, cols.next()?);
            let status: i32 = status.trim().parse().ok()?;
            (200..300).contains(&status).then(|| micros.trim().parse().ok()).flatten()
        })
        .collect()
}

/// The `q` quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "starting benchmark...
spawning thread #0: 32 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 12990.50 req/s, 13.52MB/s
requests: 25981 total, 25990 started, 25981 done, 25980 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 25980 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 27.05MB (28361430) total, 3.00MB (3143701) headers (space savings 0.00%), 25.37MB (26604544) data
";

    #[test]
    fn reads_the_summary() {
        let s = parse_summary(OUTPUT).unwrap();
        assert_eq!(s, Summary { rps: 12990.5, done: 25981, failed: 1, non_2xx: 1 });
        assert_eq!(parse_summary("nothing"), None);
    }

    #[test]
    fn reads_the_negotiated_tls() {
        let text = "TLS Protocol: TLSv1.3\nCipher: TLS_AES_128_GCM_SHA256\nServer Temp Key: X25519 253 bits\nApplication protocol: http/1.1\n";
        let tls = parse_tls(&format!("starting benchmark...\n{text}{OUTPUT}")).unwrap();
        assert_eq!((tls.protocol.as_str(), tls.cipher.as_str()), ("TLSv1.3", "TLS_AES_128_GCM_SHA256"));
        assert_eq!((tls.key_exchange.as_str(), tls.alpn.as_str()), ("X25519 253 bits", "http/1.1"));
        assert_eq!(parse_tls(OUTPUT), None);
    }

    #[test]
    fn reads_2xx_latencies_from_the_log() {
        let log = "1700000000000000\t200\t850\n1700000000000100\t503\t90\n1700000000000200\t-1\t5\n1700000000000300\t200\t1200\n";
        assert_eq!(parse_log(log), vec![850, 1200]);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.9), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
