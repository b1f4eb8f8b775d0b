//! Entry points of the fuzz targets (`fuzz/`), one per parser or decision; each panics on a finding.
//!
//! They live in the library, not in the fuzz crate, so that they reach crate-private parsers,
//! are built and linted with the workspace, and so that the ordinary test suite replays the
//! checked-in corpora and every crash found through them (see the tests below).

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, ReadBuf};

use crate::config::{
    Destination, HttpMatchRequest, HttpRoute, HttpRouteDestination, ObjectMeta, Resource, Snapshot, Source,
    StringMatch, VirtualService, DEFAULT_NAMESPACE,
};
use crate::proxy::framing::response::{BodyProgress, Framing, ResponseHead};
use crate::proxy::framing::RequestFraming;
use crate::proxy::h2c;
use crate::routing::{RequestView, RouteTable};

/// Splits a fuzz input into read sizes and payload: the first byte says how many size bytes
/// follow (0–7), each gives a read of 1–64 bytes, taken in turn; no size bytes means one read.
fn reads(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else { return (Vec::new(), data) };
    let (sizes, payload) = rest.split_at(usize::from(count % 8).min(rest.len()));
    (sizes.iter().map(|s| usize::from(s % 64) + 1).collect(), payload)
}

/// `payload` cut into pieces of `sizes`, in turn: one piece when there are none, and at least one
/// (empty) piece, as a reader looks at least once.
fn cut<'a>(payload: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() || payload.is_empty() {
        return vec![payload];
    }
    let mut pieces = Vec::new();
    let mut rest = payload;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((*size).min(rest.len()));
        pieces.push(piece);
        rest = after;
    }
    pieces
}

/// Target `config`: YAML bytes through the file source's parser (multi-document), Istio's
/// validation and the route table compiler. Errors are fine; a panic or a hang is a finding.
pub fn config(data: &[u8]) {
    // The file source reads files as UTF-8 and refuses the rest before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("fuzz.yaml"), text, DEFAULT_NAMESPACE, &mut errors);
    if !errors.is_empty() {
        // What the file source does: the change is refused before validation.
        return;
    }
    // `compile` validates every resource first (`config::validate`), then compiles.
    if let Ok(table) = RouteTable::compile(&snapshot) {
        let _ = table.describe();
        let _ = table.capture_set();
    }
}

/// Target `request_framing`: the request watcher follows the same bytes to the same conclusions
/// however they are split into reads (a difference would let TCP segmentation steer it).
pub fn request_framing(data: &[u8]) {
    let (sizes, stream) = reads(data);
    // No head limit here: where a limit cuts a long head off depends on the reads by design.
    let mut whole = RequestFraming::new(usize::MAX);
    whole.feed(stream);
    let mut split = RequestFraming::new(usize::MAX);
    for piece in cut(stream, &sizes) {
        split.feed(piece);
    }
    assert_eq!(format!("{whole:?}"), format!("{split:?}"), "reads {sizes:?}");
    // The agent's default limit, in the same reads: only that nothing panics.
    let mut limited = RequestFraming::new(crate::config::Limits::default().max_header_bytes);
    for piece in cut(stream, &sizes) {
        limited.feed(piece);
    }
}

/// The fields of a parsed response head that decide what the relay does.
fn head_facts(head: &ResponseHead) -> (u16, Option<u32>, Framing, bool, &[u8]) {
    (head.status, head.grpc_status, head.framing, head.keep_alive, &head.downstream)
}

/// Target `response`: the relay's response head parser over a buffer growing read by read (as
/// the relay reads) agrees with one parse of all the bytes; the head it re-serializes for the
/// client parses back with the same status and the same body framing; and the body codec
/// accounts for the rest the same way whatever the reads.
pub fn response(data: &[u8]) {
    let (sizes, bytes) = reads(data);
    let whole = ResponseHead::parse(bytes);
    let mut seen = 0;
    let mut incremental = Ok(None);
    for piece in cut(bytes, &sizes) {
        seen += piece.len();
        incremental = ResponseHead::parse(&bytes[..seen]);
        if !matches!(incremental, Ok(None)) {
            break;
        }
    }
    let (head, body_start) = match (whole, incremental) {
        (Ok(Some((head, at))), Ok(Some((other, other_at)))) => {
            assert!(at == other_at && head_facts(&head) == head_facts(&other), "reads {sizes:?}");
            (head, at)
        }
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => return,
        (whole, incremental) => {
            panic!(
                "one parse: {:?}; read by read: {:?} (reads {sizes:?})",
                whole.map(|h| h.map(|h| h.1)),
                incremental.map(|h| h.map(|h| h.1))
            )
        }
    };

    // The client reads the head the relay writes: same status, same body framing, except that a
    // body ending at the close goes on in chunks.
    let mut downstream = head.downstream.clone();
    downstream.extend_from_slice(b"\r\n");
    let relayed = if head.framing == Framing::UntilClose { Framing::Chunked } else { head.framing };
    match ResponseHead::parse(&downstream) {
        Ok(Some((again, len))) => {
            assert_eq!(len, downstream.len(), "the downstream head parses to its end");
            assert_eq!(again.status, head.status);
            assert_eq!(again.framing, relayed, "downstream head {:?}", String::from_utf8_lossy(&downstream));
        }
        other => panic!(
            "the downstream head {:?} does not parse: {:?}",
            String::from_utf8_lossy(&downstream),
            other.map(|h| h.map(|h| h.1))
        ),
    }

    // The body: one look at everything against the relay's read-by-read loop.
    let body = &bytes[body_start..];
    let once = BodyProgress::new(head.framing).advance(body).map(|s| (s.consumed, s.data, s.done));
    let mut progress = BodyProgress::new(head.framing);
    let mut buf: Vec<u8> = Vec::new();
    let (mut consumed, mut payload, mut done) = (0, 0, false);
    let mut failed = false;
    for piece in cut(body, &sizes) {
        buf.extend_from_slice(piece);
        match progress.advance(&buf) {
            Ok(step) => {
                consumed += step.consumed;
                payload += step.data;
                done = step.done;
                buf.drain(..step.consumed);
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
        if done {
            break;
        }
    }
    match once {
        Ok(step) if !failed => assert_eq!(step, (consumed, payload, done), "reads {sizes:?}"),
        Err(_) if failed => {}
        once => panic!("one look: {once:?}; read by read failed: {failed} (reads {sizes:?})"),
    }
}

/// The request hyper would hand the service for an HTTP/1 head, or `None` where hyper refuses it.
fn request_of(head: &[u8]) -> Option<(http::Request<()>, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(len) = parsed.parse(head).ok()? else { return None };
    let version = match parsed.version? {
        0 => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    };
    let mut builder = http::Request::builder()
        .method(http::Method::from_bytes(parsed.method?.as_bytes()).ok()?)
        .uri(parsed.path?.parse::<http::Uri>().ok()?)
        .version(version);
    for h in parsed.headers.iter() {
        builder =
            builder.header(HeaderName::from_bytes(h.name.as_bytes()).ok()?, HeaderValue::from_bytes(h.value).ok()?);
    }
    Some((builder.body(()).ok()?, len))
}

/// Reads an HPACK integer with an N-bit prefix (RFC 7541 §5.1) at the front of `bytes`.
fn hpack_integer(bytes: &mut &[u8], prefix_bits: u32) -> usize {
    let max_prefix = (1usize << prefix_bits) - 1;
    let (&first, rest) = bytes.split_first().expect("an integer");
    *bytes = rest;
    let mut value = usize::from(first) & max_prefix;
    if value < max_prefix {
        return value;
    }
    let mut shift = 0;
    loop {
        let (&byte, rest) = bytes.split_first().expect("a continuation byte");
        *bytes = rest;
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return value;
        }
    }
}

/// Reads a string literal without Huffman coding (RFC 7541 §5.2).
fn hpack_string<'a>(bytes: &mut &'a [u8]) -> &'a [u8] {
    assert_eq!(bytes.first().map(|b| b & 0x80), Some(0), "no Huffman coding");
    let len = hpack_integer(bytes, 7);
    let (text, rest) = bytes.split_at(len);
    *bytes = rest;
    text
}

/// Target `h2c`: for an HTTP/1 request head (after the read sizes) and the bytes the client sends
/// after it, the upgrade is taken only when well-formed; the stream-1 header block decodes to
/// the pseudo-headers and the request's own headers without any connection-specific one; and
/// the splice puts one HEADERS frame right after the client's first frame, whatever the reads.
pub fn h2c(data: &[u8]) {
    let (sizes, bytes) = reads(data);
    let (block, client) = match request_of(bytes) {
        Some((req, len)) => (h2c::stream1_header_block(&req).inspect(|block| check_block(&req, block)), &bytes[len..]),
        None => (None, bytes),
    };
    // Bytes that are not a taken upgrade still exercise the splice, with a stand-in block.
    let block = block.unwrap_or_else(|| b"\x00\x01a\x01b".to_vec());
    let mut frame = u32::try_from(block.len()).expect("a frame's length").to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[0x1, 0x5, 0, 0, 0, 1]);
    frame.extend_from_slice(&block);
    // Where a prior-knowledge client's first frame (its SETTINGS) ends, if it fits one frame.
    let first_frame_end = client.strip_prefix(h2c::PREFACE.as_slice()).and_then(|rest| {
        let header = rest.get(..9)?;
        let payload = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let end = h2c::PREFACE.len() + 9 + payload;
        (payload <= h2c::DEFAULT_MAX_FRAME_SIZE && client.len() >= end).then_some(end)
    });
    let expected = match first_frame_end {
        Some(end) => [&client[..end], &frame, &client[end..]].concat(),
        None => client.to_vec(),
    };
    let reader = Reads(cut(client, &sizes).into_iter().map(<[u8]>::to_vec).collect());
    let mut spliced = h2c::Spliced::new(reader, &block);
    let mut out = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for size in sizes.iter().rev().chain(&[4096]).cycle() {
        let mut buf = vec![0u8; *size];
        let mut buf = ReadBuf::new(&mut buf);
        match Pin::new(&mut spliced).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            other => panic!("the splice over a ready reader gave {other:?}"),
        }
    }
    assert_eq!(out, expected, "reads {sizes:?}");
}

/// Checks the stream-1 header block of a taken upgrade against the request it came from.
fn check_block(req: &http::Request<()>, block: &[u8]) {
    assert!(block.len() <= h2c::DEFAULT_MAX_FRAME_SIZE);
    let mut rest = block;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (&kind, after) = rest.split_first().expect("a field");
        assert_eq!(kind, 0x00, "literal without indexing, new name");
        rest = after;
        let name = hpack_string(&mut rest);
        let value = hpack_string(&mut rest);
        fields.push((name, value));
    }
    let pseudo: Vec<&[u8]> = fields.iter().map(|(n, _)| *n).take_while(|n| n.starts_with(b":")).collect();
    let authority = pseudo.len() == 4;
    let expected: &[&[u8]] = if authority {
        &[b":method", b":scheme", b":authority", b":path"]
    } else {
        &[b":method", b":scheme", b":path"]
    };
    assert_eq!(pseudo, expected);
    assert_eq!(fields[0].1, req.method().as_str().as_bytes());
    let nominated: Vec<String> =
        crate::proxy::hop_by_hop::nominated(req.headers()).map(str::to_ascii_lowercase).collect();
    for (name, value) in &fields[pseudo.len()..] {
        let name = std::str::from_utf8(name).expect("a header name");
        assert!(!name.starts_with(':') && name.bytes().all(|b| !b.is_ascii_uppercase()), "{name:?}");
        let connection_specific =
            ["connection", "keep-alive", "proxy-connection", "upgrade", "http2-settings", "transfer-encoding", "host"];
        // `te: trailers` is the one hop-by-hop header HTTP/2 keeps (RFC 9113 §8.2.2), nominated or not.
        let nominated_here = name != "te" && nominated.iter().any(|n| n == name);
        assert!(!connection_specific.contains(&name) && !nominated_here, "{name:?} was kept");
        assert!(name != "te" || value.eq_ignore_ascii_case(b"trailers"), "te: {value:?}");
        assert!(req.headers().get_all(name).iter().any(|v| v.as_bytes() == *value), "{name:?} was not sent");
    }
}

/// A reader that hands out its pieces one read at a time, then end of stream.
struct Reads(VecDeque<Vec<u8>>);

impl AsyncRead for Reads {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// One request of the `route` target: what the rules below look at.
#[derive(Clone, Debug)]
pub struct RouteRequest {
    /// Path, without query.
    pub path: String,
    /// Method.
    pub method: String,
    /// Header lines, in order (names lower case); a name may repeat.
    pub headers: Vec<(String, String)>,
}

/// The service every `route` rule set is bound to.
const ROUTE_SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: my-app}
spec:
  hosts: [my-app.default.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.11}]
";

/// A VirtualService for `my-app` with one rule per entry of `rules` (its match blocks), each
/// routing to `my-app`'s `subset` (empty: the whole service).
pub fn virtual_service(rules: &[Vec<HttpMatchRequest>], subset: &str) -> VirtualService {
    let destination = Destination { host: "my-app".into(), subset: subset.into(), port: None };
    VirtualService {
        hosts: vec!["my-app".into()],
        http: rules
            .iter()
            .map(|blocks| HttpRoute {
                matches: blocks.clone(),
                route: vec![HttpRouteDestination { destination: destination.clone(), ..Default::default() }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Target `route` (differential): a VirtualService whose rules have the match blocks `rules`,
/// each routing to the service, decides every request as [`naive_route`] reads the rules.
pub fn route(rules: &[Vec<HttpMatchRequest>], requests: &[RouteRequest]) {
    static SERVICE: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    let mut snapshot = SERVICE
        .get_or_init(|| {
            let mut snapshot = Snapshot::default();
            let mut errors = Vec::new();
            snapshot.add_file(Path::new("service.yaml"), ROUTE_SERVICE, DEFAULT_NAMESPACE, &mut errors);
            assert!(errors.is_empty(), "{errors:?}");
            snapshot
        })
        .clone();
    let spec = virtual_service(rules, "");
    let meta = ObjectMeta { name: "vs".into(), namespace: DEFAULT_NAMESPACE.into(), ..Default::default() };
    let source = Source::cluster("VirtualService default/vs".into());
    snapshot.virtual_services.push(Resource { meta, spec, source });
    // Rules Istio refuses (an empty header prefix, say) are the config target's business.
    let Ok(table) = RouteTable::compile(&snapshot) else { return };
    for request in requests {
        // Only lines a client could send; the naive reading sees the same ones.
        let lines: Vec<(HeaderName, HeaderValue)> = request
            .headers
            .iter()
            .filter_map(|(n, v)| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?)))
            .collect();
        let mut headers = HeaderMap::new();
        for (name, value) in &lines {
            headers.append(name.clone(), value.clone());
        }
        let view = RequestView {
            method: &request.method,
            path: &request.path,
            query: None,
            authority: "my-app",
            scheme: "http",
            headers: &headers,
            port: 80,
            source: None,
        };
        let got = table.route("my-app.default.svc.cluster.local", &view).rule.map(|r| r.label.to_string());
        // Repeated lines read as one comma-joined value (RFC 9110 §5.3), as Envoy matches them.
        let header = |name: &str| {
            let values: Vec<&str> =
                lines.iter().filter(|(n, _)| n.as_str() == name).filter_map(|(_, v)| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        let want = naive_route(rules, &request.path, &request.method, &header).map(|i| format!("default/vs#{i}"));
        assert_eq!(got, want, "{request:?}");
    }
}

/// Whether `value` matches all of `pattern` (case-insensitively with `ci`). Compiled patterns are
/// kept per thread (at most a few thousand): the fuzz target asks the same few patterns for every
/// request, and compiling them anew each time was most of its cost.
fn full_match(pattern: &str, ci: bool, value: &str) -> bool {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static COMPILED: RefCell<HashMap<(String, bool), regex::Regex>> = RefCell::new(HashMap::new());
    }
    COMPILED.with_borrow_mut(|compiled| {
        if compiled.len() > 4096 {
            compiled.clear();
        }
        compiled
            .entry((pattern.to_owned(), ci))
            .or_insert_with(|| {
                let flags = if ci { "(?i)" } else { "" };
                regex::Regex::new(&format!("^{flags}(?:{pattern})$")).expect("a valid regex")
            })
            .is_match(value)
    })
}

/// Istio's first-match semantics read straight off the rules' match blocks (`uri`, `method`,
/// `headers`, `withoutHeaders`, `ignoreUriCase`), with nothing precompiled: the index of the
/// first rule with a matching block (or none). `header` gives a request header's value by name.
/// The routing property test and the `route` fuzz target both compare the route table with it.
pub fn naive_route(
    rules: &[Vec<HttpMatchRequest>],
    path: &str,
    method: &str,
    header: &dyn Fn(&str) -> Option<String>,
) -> Option<usize> {
    let check = |m: &StringMatch, v: &str, ci: bool| {
        let (v, lower) = if ci { (v.to_lowercase(), true) } else { (v.to_owned(), false) };
        let fold = |s: &String| if lower { s.to_lowercase() } else { s.clone() };
        match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), ..) => v == fold(e),
            (_, Some(p), _) => v.starts_with(&fold(p)),
            (.., Some(r)) => full_match(r, ci, if ci { path } else { &v }),
            _ => true,
        }
    };
    // `regex: "*"` in a header match is Istio's "present".
    let present = StringMatch::default();
    let header_match = |m: &StringMatch| if m.regex.as_deref() == Some("*") { present.clone() } else { m.clone() };
    rules.iter().position(|blocks| {
        blocks.is_empty()
            || blocks.iter().any(|b| {
                b.uri.as_ref().is_none_or(|m| check(m, path, b.ignore_uri_case))
                    && b.method.as_ref().is_none_or(|m| check(m, method, false))
                    && b.headers
                        .iter()
                        .all(|(name, m)| header(name).is_some_and(|v| check(&header_match(m), &v, false)))
                    && b.without_headers.iter().all(|(name, m)| match header(name) {
                        Some(v) => !check(&header_match(m), &v, false),
                        None => header_match(m) == present,
                    })
            })
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The checked-in corpus of `target` (seeds, and every input that once crashed it).
    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus in {}", dir.display());
        files.into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect()
    }

    /// Runs `target` over every file of its corpus.
    fn replay(target: &str, run: fn(&[u8])) {
        for (file, bytes) in corpus(target) {
            let replayed = std::panic::catch_unwind(|| run(&bytes));
            assert!(replayed.is_ok(), "{target}: {} fails", file.display());
        }
    }

    #[test]
    fn the_byte_targets_pass_their_corpora() {
        replay("config", config);
        replay("request_framing", request_framing);
        replay("response", response);
        replay("h2c", h2c);
    }

    #[test]
    fn read_sizes_come_from_the_first_bytes() {
        assert_eq!(reads(b"\x02\x00\x41abc"), (vec![1, 2], &b"abc"[..]));
        assert_eq!(cut(b"abcd", &[1, 2]), vec![&b"a"[..], b"bc", b"d"]);
        assert_eq!(cut(b"abcd", &[]), vec![&b"abcd"[..]]);
    }
}
