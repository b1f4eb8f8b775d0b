//! A catalogue of hostile HTTP/1 requests, sent as raw bytes by a captured client through the
//! real capture path (`cargo xtask abuse`, and the `abuse` end-to-end test). Each case says what
//! the agent must answer and what Envoy 1.40 with its default settings answers to the same bytes
//! (seen by sending them to it); where the two differ, the case says why.

use std::path::Path;

use anyhow::{Context, Result};

use crate::fixtures::{load, CLIENT, VIP};
use crate::{Agent, Node, ADMIN};

/// What the agent must do with a case's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Refuse with this status and close the connection, the request never forwarded.
    Refused(u16),
    /// Forward it: an endpoint's 200.
    Served,
    /// Forward every one of this many pipelined requests, answering each 200 in order.
    ServedEach(usize),
}

/// One hostile request.
#[derive(Debug)]
pub struct Case {
    /// Short name.
    pub name: &'static str,
    /// The bytes sent, alone on a fresh connection.
    pub bytes: Vec<u8>,
    /// The agent's answer.
    pub expect: Expect,
    /// Envoy's answer to the same bytes, and why the agent differs where it does.
    pub envoy: &'static str,
}

/// What became of one case.
#[derive(Debug)]
pub struct Verdict {
    /// The case's name.
    pub name: &'static str,
    /// What was expected.
    pub expect: Expect,
    /// Envoy's answer.
    pub envoy: &'static str,
    /// The agent's status line (empty: none) and whether it closed the connection.
    pub got: String,
    /// Answered as expected.
    pub ok: bool,
}

/// The whole run.
#[derive(Debug)]
pub struct Report {
    /// One verdict per case, in catalogue order.
    pub verdicts: Vec<Verdict>,
    /// The agent's resident memory after a warm-up, before the catalogue (KiB).
    pub rss_before_kib: u64,
    /// The same after the catalogue and a round of ordinary requests (KiB).
    pub rss_after_kib: u64,
    /// The agent still ran and answered `/ready` and ordinary requests afterwards.
    pub alive: bool,
}

/// Resident memory the agent may keep above its baseline after the catalogue: allocator caches,
/// not growth per request.
pub const MEMORY_SLACK_KIB: u64 = 8 * 1024;

impl Report {
    /// Cases answered as expected.
    pub fn ok(&self) -> usize {
        self.verdicts.iter().filter(|v| v.ok).count()
    }

    /// Memory back near its baseline.
    pub fn memory_ok(&self) -> bool {
        self.rss_after_kib <= self.rss_before_kib + MEMORY_SLACK_KIB
    }
}

fn case(name: &'static str, bytes: impl Into<Vec<u8>>, expect: Expect, envoy: &'static str) -> Case {
    Case { name, bytes: bytes.into(), expect, envoy }
}

/// A POST to my-app with `headers` (each ending in CRLF) and a raw `body`.
fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: my-app\r\nConnection: close\r\n{headers}\r\n{body}").into_bytes()
}

/// A GET to my-app with `headers` (each ending in CRLF).
fn get(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: my-app\r\nConnection: close\r\n{headers}\r\n").into_bytes()
}

/// `n` GETs to my-app in one write, the last one closing the connection.
fn pipelined(n: usize) -> Vec<u8> {
    let mut bytes = b"GET / HTTP/1.1\r\nHost: my-app\r\n\r\n".repeat(n.saturating_sub(1));
    bytes.extend_from_slice(&get(""));
    bytes
}

/// The catalogue.
pub fn catalogue() -> Vec<Case> {
    use Expect::{Refused, Served, ServedEach};
    const TE: &str = "Transfer-Encoding: chunked\r\n";
    vec![
        // Request smuggling.
        case(
            "CL.TE",
            post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nX"),
            Refused(400),
            "400 DPE",
        ),
        case(
            "TE.CL",
            post("Transfer-Encoding: chunked\r\nContent-Length: 6\r\n", "0\r\n\r\nX"),
            Refused(400),
            "400 DPE",
        ),
        case(
            "TE.TE, a second coding",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", "0\r\n\r\n"),
            Refused(400),
            "501 DPE (unknown coding); we: 400, hyper's answer to a last coding that is not chunked",
        ),
        case(
            "TE xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            Refused(400),
            "501 DPE; we: 400, as above",
        ),
        case(
            "TE with a space before the colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            Refused(400),
            "400 DPE",
        ),
        case(
            "two differing Content-Lengths",
            post("Content-Length: 4\r\nContent-Length: 40\r\n", "abcd"),
            Refused(400),
            "400 DPE",
        ),
        case(
            "obs-fold",
            get("X-A: 1\r\n  folded\r\n"),
            Refused(400),
            "200, unfolded; we: 400, RFC 9112 §5.2 allows either",
        ),
        case("bare LF line ends", b"GET / HTTP/1.1\nHost: my-app\nConnection: close\n\n".to_vec(), Served, "200"),
        case("comma-joined equal Content-Lengths", post("Content-Length: 4, 4\r\n", "abcd"), Refused(400), "400 DPE"),
        case(
            "bare CR in a header value",
            get("X-A: a\rb\r\n"),
            Refused(400),
            "200; we: 400, RFC 9112 §2.2 allows either",
        ),
        case("control byte in a header name", get("X\x01A: 1\r\n"), Refused(400), "400"),
        case("NUL in a header value", get("X-A: a\0b\r\n"), Refused(400), "400 DPE"),
        // Chunked framing.
        case("negative chunk size", post(TE, "-5\r\nhello\r\n0\r\n\r\n"), Refused(400), "400 DPE"),
        case("chunk size past 64 bits", post(TE, "10000000000000000\r\nhello\r\n0\r\n\r\n"), Refused(400), "400 DPE"),
        case("chunk size with leading zeros", post(TE, "00000000000000000005\r\nhello\r\n0\r\n\r\n"), Served, "200"),
        case("chunk data without its CRLF", post(TE, "5\r\nhelloXX0\r\n\r\n"), Refused(400), "400 DPE"),
        case("chunk extension", post(TE, "5;a=b\r\nhello\r\n0\r\n\r\n"), Served, "200"),
        case("trailers", post(TE, "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), Served, "200"),
        // Host.
        case(
            "two Host lines",
            get("Host: other\r\n"),
            Refused(400),
            "200, routed as `my-app,other`; we: 400 DPE, RFC 9112 §3.2",
        ),
        case(
            "no Host in HTTP/1.1",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            Refused(400),
            "400, no flag",
        ),
        case(
            "no Host in HTTP/1.0",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            Served,
            "426 DPE (HTTP/1.0 is off by default); we serve HTTP/1.0, which needs no Host",
        ),
        // Request line.
        case("bad method", b"G<T / HTTP/1.1\r\nHost: my-app\r\n\r\n".to_vec(), Refused(400), "400 DPE"),
        case("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: my-app\r\n\r\n".to_vec(), Refused(400), "426 DPE (not 1.1)"),
        case(
            "absolute form",
            b"GET http://my-app/ HTTP/1.1\r\nHost: my-app\r\nConnection: close\r\n\r\n".to_vec(),
            Served,
            "200",
        ),
        // Pipelining.
        case("100 pipelined requests", pipelined(100), ServedEach(100), "100 × 200"),
        // Size.
        case(
            "1 MB header",
            format!("GET / HTTP/1.1\r\nHost: my-app\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20)),
            Refused(431),
            "431",
        ),
        case(
            "100 KB request target",
            format!("GET /{} HTTP/1.1\r\nHost: my-app\r\n\r\n", "a".repeat(100 << 10)),
            Refused(431),
            "431",
        ),
    ]
}

/// Sends every case from the client pod to the service VIP, each on its own connection, judges
/// the answers, and checks that `agent` still serves and its memory is back near its baseline.
/// `scratch` is a directory for the payload files.
///
/// # Errors
/// The client cannot run, or the agent's memory cannot be read.
pub fn run(node: &Node, agent: &Agent, scratch: &Path) -> Result<Report> {
    let pid = agent.pid().context("the agent is not running")?;
    let warm = load(node, 20, &[]);
    let rss_before_kib = rss_kib(pid)?;
    let mut verdicts = Vec::new();
    for (i, case) in catalogue().into_iter().enumerate() {
        let file = scratch.join(format!("abuse-{i}.http"));
        std::fs::write(&file, &case.bytes).with_context(|| format!("writing {}", file.display()))?;
        let path = file.display().to_string();
        let report = node.raw(CLIENT, &["--target", VIP, "--send-file", &path, "--read-ms", "3000"]);
        let _ = std::fs::remove_file(&file);
        let report = report?;
        let status_line = report.response.lines().next().unwrap_or("").to_owned();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
        let answers = report.response.matches("HTTP/1.").count();
        let ok = match case.expect {
            Expect::Refused(code) => status == Some(code) && report.closed && answers == 1,
            Expect::Served => status == Some(200) && report.response.ends_with("v1"),
            Expect::ServedEach(n) => report.response.matches(" 200 OK\r\n").count() == n && answers == n,
        };
        let closed = if report.closed { "closed" } else { "open" };
        let got = format!("{status_line} ({answers} answers, {closed})");
        verdicts.push(Verdict { name: case.name, expect: case.expect, envoy: case.envoy, got, ok });
    }
    let after = load(node, 20, &[]);
    let ready = node.node_get(ADMIN, "/ready").map(|(status, _)| status == 200).unwrap_or(false);
    let alive = warm.count("v1") == 20 && after.count("v1") == 20 && ready;
    Ok(Report { verdicts, rss_before_kib, rss_after_kib: rss_kib(pid)?, alive })
}

/// Resident memory of process `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
