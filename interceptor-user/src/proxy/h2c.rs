//! HTTP/2 cleartext by upgrade (RFC 7540 §3.2): from the HTTP/1.1 request asking for it to HTTP/2.

// hyper's (h2's) HTTP/2 server cannot be told about the implicit stream 1 an upgrade opens, so the
// request is spliced into the client's byte stream as a HEADERS frame right after the client's
// first SETTINGS frame, where a prior-knowledge client would have sent it. The header block is
// HPACK with literal representations only; no crate in the dependency tree exposes an HPACK
// encoder (h2's is private), and literals without indexing need neither Huffman nor a table.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, Instrument};

use super::drain::Watch;
use super::hop_by_hop::{header_tokens, is_hop_by_hop, nominated};
use super::limits::Limits;
use super::outbound::{Outbound, ProxyBody};

/// The client connection preface (RFC 7540 §3.5).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header bytes (RFC 7540 §4.1).
const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's initial value: the largest frame the server accepts before it said
/// otherwise, so the largest stream-1 HEADERS frame we may inject and client SETTINGS frame we buffer.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;
/// HEADERS with END_STREAM | END_HEADERS: the upgrade request has no body and no CONTINUATION.
const HEADERS_END_STREAM_END_HEADERS: [u8; 2] = [0x1, 0x4 | 0x1];

/// A connection's way to HTTP/2 by upgrade: what the switched connection needs besides the service.
pub struct Switch {
    limits: Limits,
    watch: Watch,
}

impl Switch {
    /// For one HTTP/1 connection; `watch` lets the HTTP/2 connection it may become drain too.
    pub fn new(limits: Limits, watch: Watch) -> Self {
        Self { limits, watch }
    }

    /// Serves one HTTP/1 request: switches the connection to HTTP/2 when the request asks for h2c
    /// acceptably, else hands the request to `outbound` as HTTP/1.1.
    pub fn serve(
        &self,
        mut req: Request<Incoming>,
        outbound: Arc<Outbound>,
    ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        let switched = self.switch(&mut req, || {
            let outbound = outbound.clone();
            hyper::service::service_fn(move |req| outbound.clone().handle(req))
        });
        async move {
            match switched {
                Some(response) => Ok(response),
                None => outbound.handle(req).await,
            }
        }
    }

    /// When `req` is an h2c upgrade we take: starts the HTTP/2 connection the service from
    /// `service` will serve (it waits for hyper to hand the connection over after the 101) and
    /// returns the 101.
    fn switch<S, B>(&self, req: &mut Request<Incoming>, service: impl FnOnce() -> S) -> Option<Response<ProxyBody>>
    where
        S: hyper::service::HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    {
        let block = stream1_header_block(req)?;
        let downstream = hyper::upgrade::on(&mut *req);
        let serve = serve_switched(downstream, block, self.limits.http2(), self.watch.clone(), service());
        tokio::spawn(serve.instrument(tracing::Span::current()));
        Some(switching_protocols())
    }
}

/// Serves the upgraded connection as HTTP/2 until it ends or drains.
async fn serve_switched<S, B>(
    downstream: OnUpgrade,
    block: Vec<u8>,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    mut watch: Watch,
    service: S,
) where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    let upgraded = match downstream.await {
        Ok(upgraded) => upgraded,
        Err(err) => return debug!(%err, "h2c upgrade did not complete"),
    };
    let io = TokioIo::new(Spliced::new(TokioIo::new(upgraded), &block));
    let conn = std::pin::pin!(http2.serve_connection(io, service));
    if let Err(err) = watch.run(conn, |conn| conn.graceful_shutdown()).await {
        debug!(%err, "downstream h2c connection ended with an error");
    }
}

fn switching_protocols() -> Response<ProxyBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    response
}

/// The HPACK header block of `req` as HTTP/2 stream 1, when `req` is an h2c upgrade we take.
/// Anything we do not take is served as HTTP/1.1, which RFC 7540 §3.2 allows.
pub(crate) fn stream1_header_block<B>(req: &Request<B>) -> Option<Vec<u8>> {
    if !asks_for_h2c(req) || !has_no_body(req.headers()) {
        return None;
    }
    let block = header_block(req);
    // One HEADERS frame, no CONTINUATION: the splice stays a single frame.
    (block.len() <= DEFAULT_MAX_FRAME_SIZE).then_some(block)
}

/// A well-formed h2c upgrade request (RFC 7540 §3.2): HTTP/1.1, `Upgrade: h2c`, `Connection`
/// nominating both `Upgrade` and `HTTP2-Settings`, and exactly one `HTTP2-Settings` holding a
/// SETTINGS payload.
fn asks_for_h2c<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    // CONNECT already switches protocols by itself; an h2c CONNECT would have no `:path`.
    if req.version() != Version::HTTP_11 || req.method() == Method::CONNECT {
        return false;
    }
    let upgrade_h2c = header_tokens(headers, &header::UPGRADE).any(|t| t.eq_ignore_ascii_case("h2c"));
    let nominated = |name: &str| header_tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case(name));
    upgrade_h2c && nominated("upgrade") && nominated("http2-settings") && has_settings_payload(headers)
}

/// Exactly one `HTTP2-Settings`, base64url (padding tolerated) of whole 6-byte settings.
///
/// Only checked, not applied: the client must also send its settings as its first SETTINGS frame
/// (RFC 7540 §3.5), which h2 reads before the spliced stream 1.
fn has_settings_payload(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all("http2-settings").iter();
    let (Some(value), None) = (values.next(), values.next()) else { return false };
    let Ok(text) = value.to_str() else { return false };
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim().trim_end_matches('='));
    payload.is_ok_and(|p| p.len() % 6 == 0)
}

/// No request body. A body would have to be replayed as DATA on stream 1 after the switch, and
/// hyper has already decoded it as HTTP/1 by then; such requests are served as HTTP/1.1 instead.
fn has_no_body(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers.get_all(header::CONTENT_LENGTH).iter().all(|v| v.as_bytes().trim_ascii() == b"0")
}

/// `req` as an HTTP/2 header block: pseudo-headers, then the headers that are not about this
/// HTTP/1.1 connection (RFC 9113 §8.2.2 makes those malformed in HTTP/2, and h2 rejects them).
fn header_block<B>(req: &Request<B>) -> Vec<u8> {
    let headers = req.headers();
    let mut block = Vec::with_capacity(256);
    encode_literal(&mut block, b":method", req.method().as_str().as_bytes());
    encode_literal(&mut block, b":scheme", b"http");
    let authority = headers.get(header::HOST).map(HeaderValue::as_bytes);
    if let Some(authority) = authority.or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes())) {
        encode_literal(&mut block, b":authority", authority);
    }
    encode_literal(&mut block, b":path", req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    let nominated: Vec<&str> = nominated(headers).collect();
    for (name, value) in headers {
        // The hop-by-hop rules, and what HTTP/2 adds: the upgrade's own settings, no framing
        // header, and `TE` only as `trailers`.
        let te = name == header::TE;
        let connection_specific = (is_hop_by_hop(name.as_str(), &nominated) && !te)
            || name == "http2-settings"
            || name == header::TRANSFER_ENCODING;
        let te_other_than_trailers = te && !value.as_bytes().eq_ignore_ascii_case(b"trailers");
        if connection_specific || te_other_than_trailers || name == header::HOST {
            continue;
        }
        // HeaderName is lower case already, as HTTP/2 requires.
        encode_literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
    }
    block
}

/// "Literal Header Field without Indexing — New Name" (RFC 7541 §6.2.2), strings without Huffman.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_string(out, name);
    encode_string(out, value);
}

/// A string literal (RFC 7541 §5.2) with H = 0.
fn encode_string(out: &mut Vec<u8>, text: &[u8]) {
    encode_integer(out, 0x00, 7, text.len());
    out.extend_from_slice(text);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `flags` are the first byte's bits above it.
fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix_bits: u32, value: usize) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        // Below the prefix maximum, so it fits the prefix bits.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A HEADERS frame on stream 1 carrying `block` (at most the default max frame size).
fn stream1_headers_frame(block: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(FRAME_HEADER_LEN + block.len());
    let len = u32::try_from(block.len()).unwrap_or(u32::MAX).to_be_bytes();
    frame.put_slice(&len[1..]);
    frame.put_slice(&HEADERS_END_STREAM_END_HEADERS);
    frame.put_u32(1);
    frame.put_slice(block);
    frame.freeze()
}

/// The upgraded connection as the HTTP/2 server reads it: the client's preface and first frame
/// (its SETTINGS), then the spliced stream-1 HEADERS, then everything else the client sends.
/// Writes go straight through.
pub(crate) struct Spliced<IO> {
    io: IO,
    phase: Phase,
    stream1: Bytes,
}

enum Phase {
    /// Collecting the preface and the first frame, so that stream 1 goes right after them.
    Head(Vec<u8>),
    /// Handing out the head with stream 1 spliced in.
    Replay(Bytes),
    /// Everything after that.
    Through,
}

/// Where stream 1 goes in what the client sent first.
#[derive(Debug, PartialEq, Eq)]
enum SplicePoint {
    NeedMore,
    At(usize),
    /// Not the start of an HTTP/2 connection (or a first frame too big): pass it on untouched and
    /// let h2 refuse it.
    Never,
}

impl<IO> Spliced<IO> {
    pub(crate) fn new(io: IO, block: &[u8]) -> Self {
        Self { io, phase: Phase::Head(Vec::with_capacity(128)), stream1: stream1_headers_frame(block) }
    }
}

fn splice_point(head: &[u8]) -> SplicePoint {
    let seen = head.len().min(PREFACE.len());
    if head[..seen] != PREFACE[..seen] {
        return SplicePoint::Never;
    }
    let Some(frame_header) = head.get(PREFACE.len()..PREFACE.len() + FRAME_HEADER_LEN) else {
        return SplicePoint::NeedMore;
    };
    let payload = usize::from(frame_header[0]) << 16 | usize::from(frame_header[1]) << 8 | usize::from(frame_header[2]);
    if payload > DEFAULT_MAX_FRAME_SIZE {
        return SplicePoint::Never;
    }
    let end = PREFACE.len() + FRAME_HEADER_LEN + payload;
    if head.len() < end {
        return SplicePoint::NeedMore;
    }
    SplicePoint::At(end)
}

/// `head` with `stream1` at its splice point, once that is known (or never will be).
fn splice(head: &mut Vec<u8>, stream1: &mut Bytes, eof: bool) -> Option<Bytes> {
    let at = match splice_point(head) {
        SplicePoint::NeedMore if !eof => return None,
        SplicePoint::NeedMore | SplicePoint::Never => return Some(Bytes::from(std::mem::take(head))),
        SplicePoint::At(at) => at,
    };
    let stream1 = std::mem::take(stream1);
    let mut out = BytesMut::with_capacity(head.len() + stream1.len());
    out.put_slice(&head[..at]);
    out.put_slice(&stream1);
    out.put_slice(&head[at..]);
    head.clear();
    Some(out.freeze())
}

impl<IO: AsyncRead + Unpin> AsyncRead for Spliced<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Head(head) => {
                    let mut chunk = [0u8; 512];
                    let mut chunk = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
                    let eof = chunk.filled().is_empty();
                    head.extend_from_slice(chunk.filled());
                    if let Some(replay) = splice(head, &mut this.stream1, eof) {
                        this.phase = Phase::Replay(replay);
                    }
                }
                Phase::Replay(replay) if replay.is_empty() => this.phase = Phase::Through,
                Phase::Replay(replay) => {
                    let n = replay.len().min(buf.remaining());
                    buf.put_slice(&replay.split_to(n));
                    return Poll::Ready(Ok(()));
                }
                Phase::Through => return Pin::new(&mut this.io).poll_read(cx, buf),
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Spliced<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn literals_match_rfc_7541_examples() {
        // C.2.1 and C.2.3 are new-name literals with indexing (0x40) and never indexed (0x10);
        // without indexing differs only in that first byte (§6.2.2: 0x00).
        let mut block = Vec::new();
        encode_literal(&mut block, b"custom-key", b"custom-header");
        assert_eq!(hex(&block), "000a637573746f6d2d6b65790d637573746f6d2d686561646572");
        block.clear();
        encode_literal(&mut block, b"password", b"secret");
        assert_eq!(hex(&block), "000870617373776f726406736563726574");
    }

    #[test]
    fn integers_match_rfc_7541_examples() {
        let encoded = |flags, prefix, value| {
            let mut out = Vec::new();
            encode_integer(&mut out, flags, prefix, value);
            hex(&out)
        };
        assert_eq!(encoded(0, 5, 10), "0a"); // C.1.1
        assert_eq!(encoded(0, 5, 1337), "1f9a0a"); // C.1.2
        assert_eq!(encoded(0, 8, 42), "2a"); // C.1.3
                                             // The prefix maximum itself takes a continuation byte of zero.
        assert_eq!(encoded(0, 7, 127), "7f00");
        assert_eq!(encoded(0x80, 7, 126), "fe");
    }

    const SETTINGS: &str = "AAMAAABkAAQAoAAAAAIAAAAA"; // curl's: three settings, 18 bytes

    fn upgrade_request() -> http::request::Builder {
        Request::get("http://ignored/a/b?c=d")
            .header("host", "my-app:80")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", SETTINGS)
    }

    #[test]
    fn a_well_formed_bodiless_h2c_upgrade_is_taken() {
        assert!(stream1_header_block(&upgrade_request().body(()).unwrap()).is_some());
        let padded = upgrade_request().header("http2-settings", "AAMAAABk").body(()).unwrap();
        assert!(!asks_for_h2c(&padded), "two HTTP2-Settings");
        let mut padded = upgrade_request().body(()).unwrap();
        padded.headers_mut().insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQ="));
        assert!(!asks_for_h2c(&padded), "9 bytes are not whole settings");
        padded.headers_mut().insert("http2-settings", HeaderValue::from_static("AAMAAABkAAQAoAAAAAIAAAAA=="));
        assert!(asks_for_h2c(&padded), "padding is tolerated");
        padded.headers_mut().insert("http2-settings", HeaderValue::from_static(""));
        assert!(asks_for_h2c(&padded), "no settings at all is a valid payload");
        padded.headers_mut().insert("http2-settings", HeaderValue::from_static("AA+/"));
        assert!(!asks_for_h2c(&padded), "base64, not base64url");
    }

    #[test]
    fn upgrades_missing_a_part_or_with_a_body_are_served_as_http1() {
        let mut no_settings = upgrade_request().body(()).unwrap();
        no_settings.headers_mut().remove("http2-settings");
        assert!(stream1_header_block(&no_settings).is_none());
        let mut not_nominated = upgrade_request().body(()).unwrap();
        not_nominated.headers_mut().insert("connection", HeaderValue::from_static("Upgrade"));
        assert!(stream1_header_block(&not_nominated).is_none());
        let mut no_upgrade_token = upgrade_request().body(()).unwrap();
        no_upgrade_token.headers_mut().insert("connection", HeaderValue::from_static("HTTP2-Settings"));
        assert!(stream1_header_block(&no_upgrade_token).is_none());
        let websocket = upgrade_request().header("upgrade", "websocket").body(()).unwrap();
        assert!(stream1_header_block(&websocket).is_some(), "h2c is among the offered protocols");
        let mut websocket_only = upgrade_request().body(()).unwrap();
        websocket_only.headers_mut().insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(stream1_header_block(&websocket_only).is_none());
        let http10 = upgrade_request().version(Version::HTTP_10).body(()).unwrap();
        assert!(stream1_header_block(&http10).is_none());
        let sized = upgrade_request().header("content-length", "5").body(()).unwrap();
        assert!(stream1_header_block(&sized).is_none());
        let chunked = upgrade_request().header("transfer-encoding", "chunked").body(()).unwrap();
        assert!(stream1_header_block(&chunked).is_none());
        let empty = upgrade_request().header("content-length", "0").body(()).unwrap();
        assert!(stream1_header_block(&empty).is_some());
        let huge = upgrade_request().header("x-big", "a".repeat(DEFAULT_MAX_FRAME_SIZE)).body(()).unwrap();
        assert!(stream1_header_block(&huge).is_none(), "the block would not fit one frame");
    }

    #[test]
    fn the_header_block_has_pseudo_headers_first_and_no_connection_headers() {
        let req = upgrade_request()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "gzip")
            .header("User-Agent", "curl")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let mut expected = Vec::new();
        for (name, value) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "my-app:80"),
            (":path", "/a/b?c=d"),
            ("user-agent", "curl"),
            ("accept", "*/*"),
        ] {
            encode_literal(&mut expected, name.as_bytes(), value.as_bytes());
        }
        assert_eq!(hex(&header_block(&req)), hex(&expected));
        let trailers = Request::get("/").header("te", "trailers").body(()).unwrap();
        let mut expected = Vec::new();
        for (name, value) in [(":method", "GET"), (":scheme", "http"), (":path", "/"), ("te", "trailers")] {
            encode_literal(&mut expected, name.as_bytes(), value.as_bytes());
        }
        assert_eq!(hex(&header_block(&trailers)), hex(&expected));
    }

    /// A reader that hands out its bytes in the given chunk sizes.
    struct Chunked(VecDeque<Vec<u8>>);

    impl Chunked {
        fn new(bytes: &[u8], sizes: &[usize]) -> Self {
            let mut chunks = VecDeque::new();
            let mut rest = bytes;
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, after) = rest.split_at((*size).min(rest.len()));
                chunks.push_back(chunk.to_vec());
                rest = after;
            }
            Self(chunks)
        }
    }

    impl AsyncRead for Chunked {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = len[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    async fn read_all_in(mut reader: impl AsyncRead + Unpin, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; size];
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn stream1_goes_right_after_the_clients_first_settings_frame() {
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100, 0, 4, 0, 0x10, 0, 0]);
        let window_update = frame(0x8, 0, 0, &[0, 0x10, 0, 0]);
        let ping = frame(0x6, 0, 0, b"12345678");
        let sent = [PREFACE.as_slice(), &settings, &window_update, &ping].concat();
        let block = b"stream one".as_slice();
        let expected = [PREFACE.as_slice(), &settings, &frame(0x1, 0x5, 1, block), &window_update, &ping].concat();
        for (sizes, read_size) in [(vec![1], 7), (vec![5, 3, 11], 1), (vec![sent.len()], 4096), (vec![30, 2, 100], 13)]
        {
            let spliced = Spliced::new(Chunked::new(&sent, &sizes), block);
            assert_eq!(hex(&read_all_in(spliced, read_size).await), hex(&expected), "chunks {sizes:?}");
        }
    }

    #[tokio::test]
    async fn what_is_no_http2_connection_start_passes_through_untouched() {
        let not_preface = b"GET / HTTP/1.1\r\n\r\nmore bytes than a preface and a frame header".to_vec();
        assert_eq!(read_all_in(Spliced::new(Chunked::new(&not_preface, &[3]), b"x"), 5).await, not_preface);
        let cut_short = [PREFACE.as_slice(), &[0, 0, 6, 4]].concat();
        assert_eq!(read_all_in(Spliced::new(Chunked::new(&cut_short, &[3]), b"x"), 5).await, cut_short);
        let oversized = [PREFACE.as_slice(), &[0, 0x40, 1, 4, 0, 0, 0, 0, 0], b"rest"].concat();
        assert_eq!(splice_point(&oversized), SplicePoint::Never);
    }

    /// The frames of one HTTP/2 connection as the client reads them.
    async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> (u8, u8, u32, Vec<u8>) {
        let mut header = [0u8; FRAME_HEADER_LEN];
        io.read_exact(&mut header).await.unwrap();
        let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.unwrap();
        (header[3], header[4], stream, payload)
    }

    #[tokio::test]
    async fn an_upgraded_connection_answers_the_upgrade_request_on_stream_1() {
        let drain = super::super::drain::Drain::new();
        let switch = Arc::new(Switch::new(Limits::default(), drain.watch()));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let http1 = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let switched = switch.switch(&mut req, || {
                    hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let seen = format!(
                            "{:?} {} {} {:?} {:?}",
                            req.version(),
                            req.method(),
                            req.uri(),
                            req.headers().get("x-seen"),
                            req.headers().get("connection"),
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
                    })
                });
                async move { Ok::<_, Infallible>(switched.expect("an h2c upgrade")) }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .with_upgrades()
                .await
        });
        let mut client = client;
        client
            .write_all(
                format!(
                    "GET /hello?x=1 HTTP/1.1\r\nHost: my-app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                     Upgrade: h2c\r\nHTTP2-Settings: {SETTINGS}\r\nx-seen: yes\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(client.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101 switching protocols\r\n"), "{head}");
        assert!(head.contains("upgrade: h2c\r\n") && head.contains("connection: upgrade\r\n"), "{head}");
        client.write_all(PREFACE).await.unwrap();
        client.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();

        let mut body = Vec::new();
        let mut status_200 = false;
        loop {
            let (kind, flags, stream, payload) =
                tokio::time::timeout(std::time::Duration::from_secs(5), read_frame(&mut client)).await.unwrap();
            match (kind, stream) {
                (0x4, 0) if flags & 0x1 == 0 => client.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(),
                // h2 sends `:status: 200` as static table entry 8.
                (0x1, 1) => status_200 = payload.first() == Some(&0x88),
                (0x0, 1) => {
                    body.extend_from_slice(&payload);
                    if flags & 0x1 != 0 {
                        break;
                    }
                }
                (0x7, _) | (0x3, _) => panic!("stream or connection refused: {kind} {}", hex(&payload)),
                _ => {}
            }
        }
        assert!(status_200);
        assert_eq!(String::from_utf8(body).unwrap(), "HTTP/2.0 GET http://my-app/hello?x=1 Some(\"yes\") None");
        assert!(http1.await.unwrap().is_ok());
        drop(client);
        tokio::time::timeout(std::time::Duration::from_secs(5), drain.drain()).await.unwrap();
    }
}
