//! A catalogue of hostile HTTP/1 requests and HTTP/2 connections, sent as raw bytes by a captured
//! client through the real capture path (`cargo xtask abuse`, and the `abuse` end-to-end test). Each case says what
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
    /// Forward the upgrade: the endpoint's `101 Switching Protocols`.
    Switched,
    /// HTTP/2 with prior knowledge: the connection ends with a GOAWAY carrying this error code.
    GoAway(u32),
    /// HTTP/2 with prior knowledge: the request on the last stream is forwarded (its DATA is the
    /// endpoint's body).
    ServedH2,
}

impl Expect {
    fn h2(self) -> bool {
        matches!(self, Expect::GoAway(_) | Expect::ServedH2)
    }
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
    /// The agent's resident memory once the case was over (KiB).
    pub rss_kib: u64,
    /// Answered as expected, with the agent's memory back near its baseline afterwards.
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

/// HTTP/2 error codes (RFC 9113 §7).
const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// HTTP/2 frame types and flags.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The client connection preface and an empty SETTINGS frame.
fn h2_start() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first` (RFC 7541 §5.1).
fn hpack_int(first: u8, n: u32, mut value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut bytes = vec![first | max as u8];
    value -= max;
    while value >= 128 {
        bytes.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    bytes.push(value as u8);
    bytes
}

/// HPACK: a header literal without indexing, new name, no Huffman coding.
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut bytes = vec![0x00];
    bytes.extend(hpack_int(0, 7, name.len()));
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend(hpack_int(0, 7, value.len()));
    bytes.extend_from_slice(value.as_bytes());
    bytes
}

/// HPACK block of a request to my-app: `:method` (static index 2 GET, 3 POST), `:scheme http`
/// (6), `:path /` (4), `:authority` as a literal on static name 1.
fn request_block(post: bool) -> Vec<u8> {
    let mut bytes = vec![if post { 0x83 } else { 0x82 }, 0x86, 0x84];
    bytes.extend(hpack_int(0, 4, 1));
    bytes.extend(hpack_int(0, 7, 6));
    bytes.extend_from_slice(b"my-app");
    bytes
}

/// A whole GET on `stream`.
fn h2_get(stream: u32) -> Vec<u8> {
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &request_block(false))
}

/// An HTTP/2 connection: the preface, `middle`, then a GET on stream `last`.
fn h2_then_get(middle: impl IntoIterator<Item = Vec<u8>>, last: u32) -> Vec<u8> {
    let mut bytes = h2_start();
    bytes.extend(middle.into_iter().flatten());
    bytes.extend(h2_get(last));
    bytes
}

/// The catalogue.
pub fn catalogue() -> Vec<Case> {
    use Expect::{GoAway, Refused, Served, ServedEach, ServedH2, Switched};
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
        // Upgrades.
        case(
            "WebSocket upgrade with a malformed key",
            get("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: !!not base64!!\r\nSec-WebSocket-Version: 13\r\n"),
            Switched,
            "101 from the endpoint (with Istio's `upgrade_configs: websocket`): neither checks the key; the endpoint owns the handshake",
        ),
        case(
            "WebSocket upgrade of an unknown version",
            get("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n"),
            Switched,
            "101 from the endpoint, as above",
        ),
        case("h2c upgrade without HTTP2-Settings", get("Connection: Upgrade\r\nUpgrade: h2c\r\n"), Served, "200, the upgrade ignored (no HTTP2-Settings); the same here"),
        // HTTP/2 with prior knowledge.
        case("HTTP/2 GET", h2_then_get([], 1), ServedH2, "200"),
        case(
            "rapid reset, 1,000 streams",
            h2_then_get(
                (0..1000u32).map(|i| {
                    let mut pair = h2_get(2 * i + 1);
                    pair.extend(frame(RST_STREAM, 0, 2 * i + 1, &8u32.to_be_bytes()));
                    pair
                }),
                2001,
            ),
            GoAway(ENHANCE_YOUR_CALM),
            "closes the connection (premature-reset guard); the close, with bytes unread, reaches the client as a TCP reset, so any GOAWAY is lost; we: GOAWAY ENHANCE_YOUR_CALM from h2's limit on streams reset before they are served",
        ),
        case(
            "CONTINUATION flood, 4 MB of headers",
            {
                let mut bytes = h2_start();
                bytes.extend(frame(HEADERS, END_STREAM, 1, &request_block(false)));
                let junk = hpack_literal("x-a", &"a".repeat(1000));
                bytes.extend((0..4000).flat_map(|_| frame(CONTINUATION, 0, 1, &junk)));
                bytes
            },
            GoAway(ENHANCE_YOUR_CALM),
            "closes the connection (seen as a TCP reset); we: GOAWAY ENHANCE_YOUR_CALM once the header block passes the head limit",
        ),
        case(
            "PING flood, 10,000",
            h2_then_get((0..10_000u64).map(|i| frame(PING, 0, 0, &i.to_be_bytes())), 1),
            ServedH2,
            "closes the connection: its outbound flood guard (10,000 queued frames) trips on the PING ACKs; we answer every PING and serve the request, memory back at its baseline (checked after the catalogue)",
        ),
        case(
            "SETTINGS flood, 10,000",
            h2_then_get((0..10_000).map(|_| frame(SETTINGS, 0, 0, &[])), 1),
            ServedH2,
            "closes the connection, as for the PING flood (SETTINGS ACKs); we: as for the PING flood",
        ),
        case(
            "HPACK table size update past the limit",
            {
                let mut block = hpack_int(0x20, 5, 1 << 20);
                block.extend(request_block(false));
                let mut bytes = h2_start();
                bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
                bytes
            },
            GoAway(PROTOCOL_ERROR),
            "GOAWAY COMPRESSION_ERROR; we: GOAWAY PROTOCOL_ERROR (h2's code for it), the connection closed either way",
        ),
        case("HEADERS on an even stream", h2_then_get([h2_get(2)], 1), GoAway(PROTOCOL_ERROR), "closes the connection (seen as a TCP reset)"),
        case(
            "DATA past the flow-control window",
            {
                let mut bytes = h2_start();
                bytes.extend(frame(HEADERS, END_HEADERS, 1, &request_block(true)));
                let chunk = vec![b'x'; 16384];
                bytes.extend((0..256).flat_map(|_| frame(DATA, 0, 1, &chunk)));
                bytes
            },
            GoAway(FLOW_CONTROL_ERROR),
            "RST_STREAM FLOW_CONTROL_ERROR, connection kept (its connection window is 256 MiB); we: GOAWAY FLOW_CONTROL_ERROR, the 4 MB overrun hyper's 1 MiB connection window too",
        ),
    ]
}

/// Sends every case from the client pod to the service VIP, each on its own connection, judges
/// the answers and the agent's memory after each, and checks that `agent` still serves and its
/// memory is back near its baseline at the end.
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
        let mut args = vec!["--target", VIP, "--send-file", &path, "--read-ms", "3000"];
        if case.expect.h2() {
            args.push("--h2");
        }
        let report = node.raw(CLIENT, &args);
        let _ = std::fs::remove_file(&file);
        let report = report?;
        let closed = if report.closed { "closed" } else { "open" };
        let (ok, got) = if case.expect.h2() {
            judge_h2(case.expect, &report)
        } else {
            let status_line = report.response.lines().next().unwrap_or("").to_owned();
            let status = status_line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
            let answers = report.response.matches("HTTP/1.").count();
            let ok = match case.expect {
                Expect::Refused(code) => status == Some(code) && report.closed && answers == 1,
                Expect::Served => status == Some(200) && report.response.ends_with("v1"),
                Expect::Switched => status == Some(101),
                Expect::ServedEach(n) => report.response.matches(" 200 OK\r\n").count() == n && answers == n,
                Expect::GoAway(_) | Expect::ServedH2 => false,
            };
            (ok, format!("{status_line} ({answers} answers, {closed})"))
        };
        // Memory after each case, so a case that leaks is named, not only the catalogue's sum.
        let rss = rss_kib(pid)?;
        let ok = ok && rss <= rss_before_kib + MEMORY_SLACK_KIB;
        verdicts.push(Verdict { name: case.name, expect: case.expect, envoy: case.envoy, got, rss_kib: rss, ok });
    }
    let after = load(node, 20, &[]);
    let ready = node.node_get(ADMIN, "/ready").map(|(status, _)| status == 200).unwrap_or(false);
    let alive = warm.count("v1") == 20 && after.count("v1") == 20 && ready;
    Ok(Report { verdicts, rss_before_kib, rss_after_kib: rss_kib(pid)?, alive })
}

/// Judges an HTTP/2 answer: whether it is as `expect`ed, and a summary of it.
fn judge_h2(expect: Expect, report: &crate::RawReport) -> (bool, String) {
    let goaway = report.frames.iter().rev().find(|f| f.kind == 7).and_then(|f| f.error);
    let served = report.frames.iter().any(|f| f.data.as_deref() == Some("v1"));
    let resets = report.frames.iter().filter(|f| f.kind == RST_STREAM).count();
    let ok = match expect {
        Expect::GoAway(code) => goaway == Some(code) && report.closed,
        Expect::ServedH2 => served,
        _ => false,
    };
    let closed = if report.closed { "closed" } else { "open" };
    let goaway = goaway.map_or("no GOAWAY".to_owned(), |code| format!("GOAWAY {code:#x}"));
    let frames = report.frames.len();
    (ok, format!("{goaway}, {frames} frames, {resets} RST_STREAM, served={served}, {closed}"))
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
