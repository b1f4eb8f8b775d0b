//! HTTP/1 responses from an endpoint on a raw connection: the head parsed (httparse) and
//! re-serialized for the client without its hop-by-hop headers, and the body's framing followed
//! as it arrives, so it can be relayed as framed (a body that ends at the close, in chunks).

use http::StatusCode;

use super::{push_header, ChunkStep, Chunked};
use crate::proxy::hop_by_hop::is_hop_by_hop;

/// Header (or trailer) lines a response may have: as many as hyper's client takes.
const MAX_RESPONSE_HEADERS: usize = 100;

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (or no body at all).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the endpoint closes.
    UntilClose,
}

/// A response head from an endpoint, with the head to send downstream (without the final CRLF).
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// `grpc-status`, for retry policies.
    pub grpc_status: Option<u32>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The endpoint keeps the connection after this response.
    pub keep_alive: bool,
    /// The head for the client, without hop-by-hop headers and without its final CRLF. A body
    /// that ends with the endpoint's connection goes on in chunks, so this head says `chunked`.
    pub downstream: Vec<u8>,
}

impl ResponseHead {
    /// Parses the head at the front of `buf`, and says where it ends; `None` while incomplete.
    /// Interim (1xx) responses are skipped, as hyper's client does.
    ///
    /// # Errors
    /// Not a response head hyper's client would take.
    pub fn parse(buf: &[u8]) -> std::io::Result<Option<(Self, usize)>> {
        let mut start = 0;
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
            let mut res = httparse::Response::new(&mut slots);
            let len = match res.parse(&buf[start..]) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(err) => return Err(invalid(&format!("invalid response head: {err}"))),
            };
            let status = res.code.unwrap_or(0);
            if status == 101 {
                return Err(invalid("101 without an upgrade request"));
            }
            if (100..200).contains(&status) {
                start += len;
                continue;
            }
            return Ok(Some((Self::from_parsed(&res, status)?, start + len)));
        }
    }

    fn from_parsed(res: &httparse::Response<'_, '_>, status: u16) -> std::io::Result<Self> {
        let http11 = res.version == Some(1);
        let mut named: Vec<&str> = Vec::new();
        let (mut says_close, mut says_keep_alive) = (false, false);
        let mut chunked = false;
        let mut chunked_codings = 0;
        let mut transfer_encoding = false;
        let mut length: Option<u64> = None;
        let mut grpc_status = None;
        for h in res.headers.iter() {
            // Only the few headers read here need their value as text.
            let value = || std::str::from_utf8(h.value).unwrap_or("");
            if h.name.eq_ignore_ascii_case("connection") {
                for token in value().split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    says_close |= token.eq_ignore_ascii_case("close");
                    says_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                    named.push(token);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                let codings = value();
                let is_chunked = |t: &str| t.trim().eq_ignore_ascii_case("chunked");
                chunked = codings.rsplit(',').next().is_some_and(is_chunked);
                chunked_codings += codings.split(',').filter(|t| is_chunked(t)).count();
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = content_length(value()).ok_or_else(|| invalid("invalid content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("differing content-lengths"));
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("grpc-status") {
                grpc_status = value().trim().parse().ok();
            }
        }
        // Chunked applied twice, or not last, is invalid (RFC 9112 §7), and the relay adds it
        // to a body that ends at the close.
        if chunked_codings > usize::from(chunked) {
            return Err(invalid("chunked is not the only and last transfer coding"));
        }
        // HTTP/1.0 keeps the connection only when asked to; `close` wins over anything.
        let close = says_close || (!http11 && !says_keep_alive);
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::Length(0)
        } else if transfer_encoding {
            if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else {
            length.map_or(Framing::UntilClose, Framing::Length)
        };
        let reason = res.reason.filter(|r| !r.is_empty());
        let reason = reason.or_else(|| StatusCode::from_u16(status).ok()?.canonical_reason()).unwrap_or("");
        let mut downstream = Vec::with_capacity(256);
        downstream.extend_from_slice(b"HTTP/1.1 ");
        // httparse read three digits, which StatusCode takes.
        let code = StatusCode::from_u16(status).map_err(|_| invalid("invalid status code"))?;
        downstream.extend_from_slice(code.as_str().as_bytes());
        downstream.push(b' ');
        downstream.extend_from_slice(reason.as_bytes());
        downstream.extend_from_slice(b"\r\n");
        for h in res.headers.iter() {
            // With Transfer-Encoding, a Content-Length means nothing (RFC 9112 §6.3) and would
            // mislead the client.
            let ignored_length = transfer_encoding && h.name.eq_ignore_ascii_case("content-length");
            // The body goes out as the endpoint framed it, so its framing headers go with it even
            // when `Connection` nominates them: without them the client would read the body
            // until close, and the next response on the connection as part of it.
            let framing_header =
                h.name.eq_ignore_ascii_case("content-length") || h.name.eq_ignore_ascii_case("transfer-encoding");
            let hop = is_hop_by_hop(h.name, &named) && !framing_header;
            if !hop && !ignored_length {
                push_header(&mut downstream, h.name, h.value);
            }
        }
        if framing == Framing::UntilClose {
            // The last coding, after any the endpoint applied (`gzip` becomes `gzip, chunked`).
            downstream.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        Ok(Self { status, grpc_status, framing, keep_alive: !close && framing != Framing::UntilClose, downstream })
    }
}

/// A `Content-Length` value as hyper reads it: digits only, or a list of one repeated value.
fn content_length(value: &str) -> Option<u64> {
    let mut length = None;
    for part in value.split(',').map(str::trim) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = part.parse().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Follows a response body's framing over the bytes as they arrive.
#[derive(Debug)]
pub struct BodyProgress {
    framing: Framing,
    chunked: Chunked,
}

/// How far one look at the buffered bytes got.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes at the front that belong to the body (the rest waits for more).
    pub consumed: usize,
    /// Payload bytes among them (chunk framing excluded).
    pub data: u64,
    /// The body ended with them.
    pub done: bool,
}

impl BodyProgress {
    /// At the start of a body framed by `framing`.
    pub fn new(framing: Framing) -> Self {
        Self { framing, chunked: Chunked::Size }
    }

    /// Whether the body ends when the endpoint closes.
    pub fn ends_at_close(&self) -> bool {
        self.framing == Framing::UntilClose
    }

    /// Accounts for as many of `bytes` as belong to the body and are complete.
    ///
    /// # Errors
    /// The chunked framing is broken.
    pub fn advance(&mut self, bytes: &[u8]) -> std::io::Result<Step> {
        match &mut self.framing {
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Ok(Step { consumed: n as usize, data: n, done: *left == 0 })
            }
            Framing::UntilClose => Ok(Step { consumed: bytes.len(), data: bytes.len() as u64, done: false }),
            Framing::Chunked => {
                let mut step = Step { consumed: 0, data: 0, done: false };
                while step.consumed < bytes.len() && self.chunked != Chunked::Done {
                    match self.chunked.step(&bytes[step.consumed..]) {
                        ChunkStep::Consumed { bytes, data } => {
                            step.consumed += bytes;
                            step.data += data;
                        }
                        ChunkStep::NeedMore => break,
                        ChunkStep::Invalid => return Err(invalid("invalid chunked framing")),
                    }
                }
                step.done = self.chunked == Chunked::Done;
                Ok(step)
            }
        }
    }
}

/// An I/O error for a response that is not valid HTTP.
pub fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ResponseHead {
        ResponseHead::parse(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_say_their_framing() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nx-version: v1\r\n\r\n");
        assert_eq!(
            String::from_utf8(h.downstream).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-version: v1\r\n"
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!String::from_utf8(h.downstream).unwrap().contains("Content-Length"));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        assert_eq!(
            String::from_utf8(h.downstream).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n"
        );
        for twice in ["chunked, gzip", "chunked, chunked", "chunked\r\nTransfer-Encoding: gzip"] {
            let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {twice}\r\n\r\n");
            assert!(ResponseHead::parse(raw.as_bytes()).is_err(), "{twice:?}");
        }
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert_eq!(head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n").framing, Framing::Length(5));
        for bad in ["+5", "5, 6", "", "0x5", "5 5"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(ResponseHead::parse(raw.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(head("HTTP/1.1 204 No Content\r\n\r\n").framing, Framing::Length(0));
        assert_eq!(
            head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 x\r\ngrpc-status: 14\r\n\r\n").grpc_status,
            Some(14)
        );
        assert!(ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(ResponseHead::parse(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(ResponseHead::parse(interim).unwrap().unwrap().1, interim.len() - 2);
    }

    #[test]
    fn a_connection_header_cannot_take_the_framing_headers_away() {
        // Found by the `response` fuzz target: the head relayed had no framing left.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\n");
        assert_eq!(String::from_utf8(h.downstream).unwrap(), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h =
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding, x\r\nx: 1\r\n\r\n");
        assert_eq!(String::from_utf8(h.downstream).unwrap(), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n");
        assert_eq!(h.framing, Framing::Chunked);
    }

    #[test]
    fn chunked_bodies_end_after_their_trailers_whatever_the_reads() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut progress = BodyProgress::new(Framing::Chunked);
            let mut buf = body[..split].to_vec();
            let (mut data, mut fed) = (0, split);
            let mut forwarded = Vec::new();
            loop {
                let step = progress.advance(&buf).unwrap();
                data += step.data;
                forwarded.extend(buf.drain(..step.consumed));
                if step.done {
                    break;
                }
                assert!(fed < body.len(), "split {split}: not done at the end");
                buf.push(body[fed]);
                fed += 1;
            }
            assert_eq!(data, 6, "split {split}");
            assert_eq!(forwarded, &body[..body.len() - 4], "split {split}");
        }
        assert!(BodyProgress::new(Framing::Chunked).advance(b"5\r\nhelloXX").is_err());
    }

    #[test]
    fn lengths_stop_at_their_end() {
        let mut p = BodyProgress::new(Framing::Length(3));
        assert_eq!(p.advance(b"ab").unwrap(), Step { consumed: 2, data: 2, done: false });
        assert_eq!(p.advance(b"cde").unwrap(), Step { consumed: 1, data: 1, done: true });
    }
}
