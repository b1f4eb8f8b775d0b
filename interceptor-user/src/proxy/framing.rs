//! HTTP/1 framing on raw bytes: the chunked decoder, the request watcher here and the response
//! codec the relay uses (`response`).
//!
//! The watcher follows request framing on the raw downstream bytes, to catch the one smuggling
//! vector hyper normalises away before we see the request: a head with both `Content-Length` and
//! `Transfer-Encoding`. hyper drops the length, reads chunked and closes afterwards (RFC 9112
//! §6.1); Envoy, and we, refuse such a request with 400 instead of guessing. It also refuses a
//! chunked body hyper's decoder would fail on, when it sees the bad bytes before the request is
//! routed: as in Envoy, the endpoint then never hears of it.
//!
//! The watcher only reads (httparse parses heads; chunk-size lines are read by hyper's rules);
//! hyper stays the one that frames requests. Whenever the watcher is unsure — a parse error, too
//! many headers, an upgrade or CONNECT after which bytes are no longer HTTP — it stops watching
//! rather than risk refusing a valid request.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::limits::Refusal;

pub mod response;

/// Header lines a head may have for the watcher to judge it; hyper refuses more (431) anyway.
const MAX_HEADERS: usize = 128;

/// Where a request ended in the byte stream, and whether its client wants the connection kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestEnd {
    /// 1-based request number.
    request: u64,
    /// Stream offset just past the request's last byte.
    pub offset: u64,
    /// HTTP/1.1 without `Connection: close`.
    pub keep_alive: bool,
}

/// What the watcher found, shared with the connection's service.
#[derive(Debug, Default)]
pub struct Verdicts {
    /// 1-based number of the request the watcher refused; 0 while none (it stops after one).
    refused: AtomicU64,
    /// Why, as [`Refusal`] `as u8`.
    refusal: AtomicU8,
    /// Requests the service has been handed so far.
    served: AtomicU64,
    /// Requests the service has answered so far.
    answered: AtomicU64,
    /// The connection switched protocols (a 101 went out): its bytes are no longer requests.
    switched: AtomicBool,
    /// An answer said `Connection: close`: hyper closes after it.
    closing: AtomicBool,
    /// The bytes read so far end inside a request head (more of it than blank lines).
    inside_head: AtomicBool,
}

impl Verdicts {
    /// Called once per request the service receives, in order: is this one refused, and why?
    pub fn next_refusal(&self) -> Option<Refusal> {
        // The watcher saw the bytes before hyper parsed them, in the same task: no ordering
        // needed beyond what the task's own polling gives.
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if n != self.refused.load(Ordering::Relaxed) {
            return None;
        }
        Refusal::from_code(self.refusal.load(Ordering::Relaxed))
    }

    /// Records that request `n` is refused (the first refusal only: the watcher stops after it).
    fn refuse(&self, n: u64, why: Refusal) {
        if self.refused.compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.refusal.store(why as u8, Ordering::Relaxed);
        }
    }

    /// Whether the bytes read so far end inside a request head: hyper's header read timeout then
    /// cuts a request short (408) rather than ending an idle connection (closed without a word).
    /// False once the watcher stopped, unsure.
    pub fn inside_head(&self) -> bool {
        self.inside_head.load(Ordering::Relaxed)
    }

    /// Requests the service has been handed so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Records that the service answered one more request.
    pub fn responded(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests the service has answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Records that an answer ends the connection.
    pub fn close_after(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether an answer ended the connection.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Records that the connection switched protocols.
    pub fn switch_protocols(&self) {
        self.switched.store(true, Ordering::Relaxed);
    }

    /// Whether the connection switched protocols.
    pub fn switched(&self) -> bool {
        self.switched.load(Ordering::Relaxed)
    }
}

/// Where in the request stream the watcher is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a request head (blank lines before it are skipped, as hyper does).
    Head,
    /// Inside a body of known length: bytes left.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// No longer watching.
    Stopped,
}

/// The request-framing watcher of one connection.
#[derive(Debug)]
pub struct RequestFraming {
    state: State,
    /// Bytes of a head, chunk-size line or trailer section split across reads; empty otherwise.
    partial: Vec<u8>,
    /// Heads seen so far.
    heads: u64,
    /// Bytes accounted for so far (all fed bytes but `partial`).
    consumed: u64,
    /// Whether the client of the request being read wants the connection kept.
    keep_alive: bool,
    /// A head was read and its request has not ended yet.
    awaiting_end: bool,
    /// Ends of the requests read but not yet served, oldest first, consecutive: as many as the
    /// client pipelined into what was read (none allocated without pipelining).
    ends: VecDeque<RequestEnd>,
    /// Longest head the watcher buffers (hyper refuses longer ones with 431).
    max_head_bytes: usize,
    verdicts: Arc<Verdicts>,
}

/// One step of the watcher over the bytes at hand.
enum Step {
    /// These many bytes are accounted for.
    Consumed(usize),
    /// The item at the front is incomplete; keep the bytes and wait for more.
    NeedMore,
    /// Stop watching.
    Stop,
}

impl RequestFraming {
    pub fn new(max_head_bytes: usize) -> Self {
        Self {
            state: State::Head,
            partial: Vec::new(),
            heads: 0,
            consumed: 0,
            keep_alive: false,
            awaiting_end: false,
            ends: VecDeque::new(),
            max_head_bytes,
            verdicts: Arc::new(Verdicts::default()),
        }
    }

    /// The verdicts, for the connection's service.
    pub fn verdicts(&self) -> Arc<Verdicts> {
        self.verdicts.clone()
    }

    /// Where request `n` (1-based) ended, if it has and has not been served before the last
    /// bytes were fed.
    pub fn request_end(&self, n: u64) -> Option<RequestEnd> {
        let first = self.ends.front()?.request;
        let end = *self.ends.get(usize::try_from(n.checked_sub(first)?).ok()?)?;
        (end.request == n).then_some(end)
    }

    /// Forgets the ends of requests served before the one in progress (they are never asked
    /// about again), and the room a burst of pipelined requests took.
    fn forget_served(&mut self) {
        let served = self.verdicts.served();
        while self.ends.front().is_some_and(|end| end.request < served) {
            self.ends.pop_front();
        }
        if self.ends.is_empty() && self.ends.capacity() > 4 {
            self.ends = VecDeque::new();
        }
    }

    /// Follows the next bytes the client sent.
    pub fn feed(&mut self, input: &[u8]) {
        if self.state == State::Stopped || input.is_empty() {
            return;
        }
        self.forget_served();
        if self.partial.is_empty() {
            self.consume(input);
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(input);
            self.consume(&joined);
        }
        let inside_head = self.state == State::Head && self.partial.iter().any(|b| !matches!(b, b'\r' | b'\n'));
        self.verdicts.inside_head.store(inside_head, Ordering::Relaxed);
    }

    fn consume(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.step(bytes) {
                Step::Consumed(n) => {
                    bytes = &bytes[n..];
                    self.consumed += n as u64;
                    if self.state == State::Head && self.awaiting_end {
                        self.awaiting_end = false;
                        let end =
                            RequestEnd { request: self.heads, offset: self.consumed, keep_alive: self.keep_alive };
                        self.ends.push_back(end);
                    }
                }
                Step::NeedMore if bytes.len() <= self.max_head_bytes => {
                    self.partial.extend_from_slice(bytes);
                    return;
                }
                Step::NeedMore | Step::Stop => {
                    self.state = State::Stopped;
                    self.partial = Vec::new();
                    return;
                }
            }
        }
    }

    fn step(&mut self, bytes: &[u8]) -> Step {
        match self.state {
            State::Head => self.head(bytes),
            State::Body(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                self.state = if n as u64 == left { State::Head } else { State::Body(left - n as u64) };
                Step::Consumed(n)
            }
            State::Chunked(mut chunked) => {
                let step = chunked.step(bytes);
                self.state = if chunked == Chunked::Done { State::Head } else { State::Chunked(chunked) };
                match step {
                    ChunkStep::Consumed { bytes, .. } => Step::Consumed(bytes),
                    ChunkStep::NeedMore => Step::NeedMore,
                    ChunkStep::Invalid => {
                        // hyper's decoder fails on the same bytes: whatever hyper does with the
                        // request, it cannot be forwarded whole. Refused when not routed yet.
                        self.verdicts.refuse(self.heads, Refusal::MalformedBody);
                        Step::Stop
                    }
                }
            }
            State::Stopped => Step::Stop,
        }
    }

    fn head(&mut self, bytes: &[u8]) -> Step {
        let blank = bytes.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        if blank > 0 {
            return Step::Consumed(blank);
        }
        // Uninitialised: zeroing 128 headers would cost more than parsing a typical head.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(bytes, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Step::NeedMore,
            Err(_) => return Step::Stop,
        };
        self.heads += 1;
        self.awaiting_end = true;
        let framing = Framing::of(&req);
        // HTTP/1.0 is not kept: hyper would end a response of unknown length by closing.
        self.keep_alive = req.version == Some(1) && !framing.close;
        if framing.content_length.is_some() && framing.transfer_encoding {
            self.verdicts.refuse(self.heads, Refusal::AmbiguousLength);
            // hyper closes the connection after this request: nothing later needs judging.
            return Step::Stop;
        }
        if framing.switches_protocol {
            return Step::Stop;
        }
        self.state = if framing.transfer_encoding {
            State::Chunked(Chunked::Size)
        } else {
            match framing.content_length {
                Some(0) | None => State::Head,
                Some(n) => State::Body(n),
            }
        };
        Step::Consumed(len)
    }
}

/// Where a chunked body is (RFC 9112 §7.1): the one decoder the request watcher and the
/// response relay share. The chunk-size line and trailer states follow hyper's chunked decoder
/// byte for byte, so that neither places a body's end before hyper's (a bare LF is part of a
/// trailer line there), and the watcher refuses only what hyper fails on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: bytes left, then CRLF.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// At the start of a trailer line (after the last chunk or a trailer line): CRLF ends the body.
    TrailerStart,
    /// Inside a trailer line, until its CR.
    TrailerLine,
    /// After a trailer line's CR: LF must follow.
    TrailerLf,
    /// After the CR that starts the final empty line: LF ends the body.
    TrailerEnd,
    /// The body ended.
    Done,
}

/// One step of the chunked decoder.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkStep {
    /// These many bytes at the front are the body's, `data` of them payload (not framing).
    Consumed { bytes: usize, data: u64 },
    /// The item at the front is incomplete; keep the bytes and wait for more.
    NeedMore,
    /// Not a chunked body.
    Invalid,
}

impl Chunked {
    /// Follows the body over the front of `bytes`, which must not be empty.
    pub fn step(&mut self, bytes: &[u8]) -> ChunkStep {
        let consumed = |bytes| ChunkStep::Consumed { bytes, data: 0 };
        let Some(&first) = bytes.first() else { return ChunkStep::NeedMore };
        match *self {
            Chunked::Size => match chunk_size_line(bytes) {
                Ok(Some((n, size))) => {
                    *self = if size == 0 { Chunked::TrailerStart } else { Chunked::Data(size) };
                    consumed(n)
                }
                Ok(None) => ChunkStep::NeedMore,
                Err(InvalidChunkSize) => ChunkStep::Invalid,
            },
            Chunked::Data(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                *self = if n as u64 == left { Chunked::DataEnd } else { Chunked::Data(left - n as u64) };
                ChunkStep::Consumed { bytes: n, data: n as u64 }
            }
            Chunked::DataEnd => match bytes {
                [b'\r', b'\n', ..] => {
                    *self = Chunked::Size;
                    consumed(2)
                }
                [b'\r'] => ChunkStep::NeedMore,
                _ => ChunkStep::Invalid,
            },
            Chunked::TrailerStart => {
                *self = if first == b'\r' { Chunked::TrailerEnd } else { Chunked::TrailerLine };
                consumed(1)
            }
            Chunked::TrailerLine => match bytes.iter().position(|b| *b == b'\r') {
                Some(cr) => {
                    *self = Chunked::TrailerLf;
                    consumed(cr + 1)
                }
                None => consumed(bytes.len()),
            },
            Chunked::TrailerLf | Chunked::TrailerEnd if first != b'\n' => ChunkStep::Invalid,
            Chunked::TrailerLf => {
                *self = Chunked::TrailerStart;
                consumed(1)
            }
            Chunked::TrailerEnd => {
                *self = Chunked::Done;
                consumed(1)
            }
            Chunked::Done => consumed(0),
        }
    }
}

/// A chunk-size line hyper's decoder refuses.
#[derive(Debug, PartialEq, Eq)]
struct InvalidChunkSize;

/// Where in a chunk-size line the reader is.
#[derive(Clone, Copy)]
enum SizeLine {
    /// Before the first hex digit.
    Start,
    /// Among the hex digits.
    Digits,
    /// Spaces or tabs after the digits.
    Space,
    /// After `;`: an extension, ignored up to the CR.
    Extension,
    /// After the CR.
    Lf,
}

/// Reads a chunk-size line (RFC 9112 §7.1) at the front of `bytes` by hyper's rules: at least one
/// hex digit, a size that fits in 64 bits (leading zeros do not count against it), then optional
/// spaces or tabs, an optional extension after `;` (any bytes but LF), and CRLF. Returns the
/// line's length and the size, or `None` while the line is incomplete. (httparse's reader differs:
/// it refuses a 17th digit even when it is a leading zero, and takes an empty line as size 0.)
fn chunk_size_line(bytes: &[u8]) -> Result<Option<(usize, u64)>, InvalidChunkSize> {
    let mut size: u64 = 0;
    let mut at = SizeLine::Start;
    for (i, &byte) in bytes.iter().enumerate() {
        at = match (at, byte) {
            (SizeLine::Start | SizeLine::Digits, _) if byte.is_ascii_hexdigit() => {
                let digit = u64::from(char::from(byte).to_digit(16).unwrap_or_default());
                size = size.checked_mul(16).and_then(|s| s.checked_add(digit)).ok_or(InvalidChunkSize)?;
                SizeLine::Digits
            }
            (SizeLine::Digits | SizeLine::Space, b' ' | b'\t') => SizeLine::Space,
            (SizeLine::Digits | SizeLine::Space, b';') => SizeLine::Extension,
            (SizeLine::Digits | SizeLine::Space | SizeLine::Extension, b'\r') => SizeLine::Lf,
            (SizeLine::Extension, b'\n') => return Err(InvalidChunkSize),
            (SizeLine::Extension, _) => SizeLine::Extension,
            (SizeLine::Lf, b'\n') => return Ok(Some((i + 1, size))),
            _ => return Err(InvalidChunkSize),
        };
    }
    Ok(None)
}

/// Appends one `name: value` header line.
pub fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How one request head frames its body, as far as the watcher needs to know.
struct Framing {
    content_length: Option<u64>,
    transfer_encoding: bool,
    /// An upgrade or CONNECT: what follows may not be HTTP.
    switches_protocol: bool,
    /// `Connection: close`.
    close: bool,
}

impl Framing {
    fn of(req: &httparse::Request<'_, '_>) -> Self {
        let mut framing = Framing {
            content_length: None,
            transfer_encoding: false,
            switches_protocol: req.method == Some("CONNECT"),
            close: false,
        };
        for header in req.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                // A length that does not parse is hyper's to refuse; any value counts as "has one".
                let value = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok());
                framing.content_length = Some(value.unwrap_or(u64::MAX));
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                framing.transfer_encoding = true;
            } else if header.name.eq_ignore_ascii_case("upgrade") {
                framing.switches_protocol = true;
            } else if header.name.eq_ignore_ascii_case("connection") {
                let mut tokens = header.value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
                framing.close |= tokens.any(|token| token.eq_ignore_ascii_case(b"close"));
            }
        }
        framing
    }
}

/// A downstream stream whose incoming bytes the watcher follows on their way to hyper (reads
/// only; writes go to the stream itself).
pub struct Watched<S> {
    inner: S,
    framing: RequestFraming,
}

impl<S> Watched<S> {
    pub fn new(inner: S, framing: RequestFraming) -> Self {
        Self { inner, framing }
    }

    /// The watcher.
    pub fn framing(&self) -> &RequestFraming {
        &self.framing
    }

    /// The stream watched.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream watched, to write to (writes are not watched).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The watcher, to follow bytes read past this stream.
    pub fn framing_mut(&mut self) -> &mut RequestFraming {
        &mut self.framing
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.framing.feed(&buf.filled()[before..]);
        }
        polled
    }
}

/// Writes go to the stream itself, unwatched.
impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_a_head_means_more_of_one_than_blank_lines() {
        let mut framing = RequestFraming::new(64 * 1024);
        let verdicts = framing.verdicts();
        let mut fed = |bytes: &[u8]| {
            framing.feed(bytes);
            verdicts.inside_head()
        };
        assert!(!fed(b"\r\n"), "blank lines before a head");
        assert!(fed(b"GET / HTTP/1.1\r\nHost: a"));
        assert!(!fed(b"\r\nContent-Length: 4\r\n\r\nab"), "inside a body");
        assert!(!fed(b"cd"), "between requests");
        assert!(fed(b"P"));
        assert!(!fed(b"OST / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nGET"), "stopped");
    }

    /// Feeds `stream` in pieces of `chunk` bytes and returns the verdict of each served request.
    fn judge(stream: &[u8], chunk: usize, requests: usize) -> (Vec<bool>, State) {
        let mut framing = RequestFraming::new(64 * 1024);
        for piece in stream.chunks(chunk) {
            framing.feed(piece);
        }
        let verdicts = framing.verdicts();
        let ambiguous = |_| verdicts.next_refusal() == Some(Refusal::AmbiguousLength);
        ((0..requests).map(ambiguous).collect(), framing.state)
    }

    #[test]
    fn both_lengths_are_caught_in_any_order_and_any_split() {
        let cl_te = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let te_cl = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n";
        for stream in [&cl_te[..], &te_cl[..]] {
            for chunk in [1, 3, 7, stream.len()] {
                assert_eq!(judge(stream, chunk, 1), (vec![true], State::Stopped), "chunk {chunk}");
            }
        }
    }

    #[test]
    fn the_ambiguous_request_is_found_behind_valid_ones() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
            \r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for chunk in [1, 2, 5, 13, stream.len()] {
            assert_eq!(judge(stream, chunk, 4).0, vec![false, false, false, true], "chunk {chunk}");
        }
    }

    #[test]
    fn trailers_end_where_hyper_ends_them() {
        // A bare LF after the last chunk starts a trailer line for hyper, not the end.
        let stream =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nX-A: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let body_end = stream.len() - b"GET / HTTP/1.1\r\n\r\n".len();
        for chunk in [1, 2, 7, stream.len()] {
            let mut framing = RequestFraming::new(1024);
            for piece in stream.chunks(chunk) {
                framing.feed(piece);
            }
            assert_eq!(framing.request_end(1).map(|e| e.offset), Some(body_end as u64), "chunk {chunk}");
            assert_eq!(framing.heads, 2, "chunk {chunk}");
        }
        // A CR not followed by LF in the trailers is hyper's error: stop watching.
        let mut framing = RequestFraming::new(1024);
        framing.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-A: 1\rX");
        assert_eq!(framing.state, State::Stopped);
    }

    #[test]
    fn valid_traffic_is_never_judged_ambiguous() {
        let stream =
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\n\r\n";
        let (verdicts, state) = judge(stream, 4, 3);
        assert_eq!(verdicts, vec![false; 3]);
        assert_eq!(state, State::Head);
    }

    #[test]
    fn chunk_size_lines_are_read_by_hypers_rules() {
        for (line, size) in [
            ("5\r\n", 5),
            ("A;ext=1\r\n", 10),
            ("a \t;x=\"y\"\r\n", 10),
            ("00000000000000000005\r\n", 5),
            ("ffffffffffffffff\r\n", u64::MAX),
            ("0\r\n", 0),
        ] {
            assert_eq!(chunk_size_line(line.as_bytes()), Ok(Some((line.len(), size))), "{line:?}");
        }
        for line in ["-5\r\n", "10000000000000000\r\n", "\r\n", "5 5\r\n", "5;a\nb\r\n", "5\rx", "x\r\n", " 5\r\n"] {
            assert_eq!(chunk_size_line(line.as_bytes()), Err(InvalidChunkSize), "{line:?}");
        }
        assert_eq!(chunk_size_line(b"5;ext"), Ok(None));
        assert_eq!(chunk_size_line(b"fffff"), Ok(None));
        assert_eq!(chunk_size_line(b"5\r"), Ok(None));
    }

    #[test]
    fn a_body_hypers_decoder_fails_on_is_refused_in_any_split() {
        for size in ["-5", "10000000000000000", "5\r\nhelloXY"] {
            let stream = format!(
                "GET / HTTP/1.1\r\nHost: a\r\n\r\n\
                 POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
            );
            for chunk in [1, 5, stream.len()] {
                let mut framing = RequestFraming::new(1024);
                for piece in stream.as_bytes().chunks(chunk) {
                    framing.feed(piece);
                }
                let verdicts = framing.verdicts();
                let judged = (verdicts.next_refusal(), verdicts.next_refusal());
                assert_eq!(judged, (None, Some(Refusal::MalformedBody)), "{size:?} in pieces of {chunk}");
                assert_eq!(framing.state, State::Stopped);
            }
        }
    }

    #[test]
    fn the_watcher_stops_when_unsure() {
        // After an upgrade, bytes are whatever the new protocol says.
        let upgrade = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(judge(upgrade, 9, 2), (vec![false, false], State::Stopped));
        assert_eq!(judge(b"\x16\x03\x01 not http\r\n\r\n", 4, 0).1, State::Stopped);
        // A head longer than the limit is hyper's to refuse (431).
        let mut framing = RequestFraming::new(32);
        framing.feed(b"GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!((framing.state, framing.partial.len()), (State::Stopped, 0));
    }

    #[test]
    fn the_end_of_every_pipelined_request_is_kept_until_it_is_served() {
        let one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut framing = RequestFraming::new(1024);
        framing.feed(&one.repeat(100));
        let verdicts = framing.verdicts();
        for n in 1..=100u64 {
            assert_eq!(framing.request_end(n).map(|e| e.offset), Some(n * one.len() as u64), "request {n}");
            assert!(verdicts.next_refusal().is_none());
        }
        // The served ones are forgotten when the next bytes come.
        framing.feed(b"\r\n");
        assert_eq!((framing.request_end(1), framing.ends.len()), (None, 1));
        assert!(framing.request_end(100).is_some());
    }

    #[test]
    fn a_partial_head_is_kept_only_until_it_completes() {
        let mut framing = RequestFraming::new(1024);
        framing.feed(b"GET / HTTP/1.1\r\nHo");
        assert!(!framing.partial.is_empty());
        framing.feed(b"st: a\r\n\r\n");
        assert!(framing.partial.is_empty());
        assert_eq!((framing.state, framing.heads), (State::Head, 1));
    }

    /// One valid request: no body, a sized body, or a chunked body with chunks of these sizes.
    fn request(kind: u8, sizes: &[usize]) -> Vec<u8> {
        let body: Vec<u8> = sizes.iter().flat_map(|n| std::iter::repeat_n(b'x', *n)).collect();
        match kind % 3 {
            0 => b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            1 => [format!("PUT /b HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(), &body].concat(),
            _ => {
                let mut out = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for n in sizes.iter().filter(|n| **n > 0) {
                    out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    out.extend(std::iter::repeat_n(b'y', *n));
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn valid_streams_split_anywhere_are_followed_to_the_end(
            requests in proptest::collection::vec((0u8..3, proptest::collection::vec(0usize..40, 0..4)), 1..6),
            chunk in 1usize..64,
        ) {
            let stream: Vec<u8> = requests.iter().flat_map(|(kind, sizes)| request(*kind, sizes)).collect();
            let mut framing = RequestFraming::new(64 * 1024);
            for piece in stream.chunks(chunk) {
                framing.feed(piece);
            }
            proptest::prop_assert_eq!(framing.state, State::Head);
            proptest::prop_assert_eq!(framing.heads, requests.len() as u64);
            proptest::prop_assert!(framing.partial.is_empty());
            let verdicts = framing.verdicts();
            proptest::prop_assert!((0..requests.len()).all(|_| verdicts.next_refusal().is_none()));
        }
    }
}
