//! Enforces the limits on downstream connections (settings in [`crate::config::Limits`]): header
//! size and count (431), header read time (slowloris: 408 and close), a cap on open connections
//! (503 and close), and the HTTP/1 parser settings and refusals (400) that keep request smuggling
//! and host confusion out.

use tokio::net::TcpStream;

pub use crate::config::Limits;

use super::downstream::{answer_and_close, Downstream};
use super::local_reply::LocalReply;
use crate::routing::ResponseFlag;

/// The answer to a client that was too slow to send its request head.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";
/// The answer to a connection over the cap. `OM` is Envoy's overload-manager response flag.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 11\r\nx-interceptor-flags: OM\r\nconnection: close\r\n\r\noverloaded\n";

impl Limits {
    /// An HTTP/1 server builder enforcing these limits.
    ///
    /// Smuggling: hyper refuses (400) differing duplicate `Content-Length`s, a `Transfer-Encoding`
    /// whose last coding is not `chunked`, and `Transfer-Encoding` in HTTP/1.0. A head with both
    /// `Transfer-Encoding` and `Content-Length` hyper would read as chunked; `proxy::framing`
    /// catches it first and the proxy answers 400 ([`Refusal::AmbiguousLength`]).
    pub fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(self.max_headers)
            // A request head must fit the read buffer (431 beyond); hyper's minimum is 8 KiB.
            .max_buf_size(self.max_header_bytes.max(8192));
        builder
    }

    /// An HTTP/2 server builder enforcing these limits (header list size).
    pub fn http2(&self) -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        builder
    }
}

/// Why an HTTP/1 request is refused before routing: 400, and the connection closed after the
/// answer (what follows cannot be trusted to start where the client meant its next request to).
/// What Envoy 1.40 does with the same bytes is said for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding`: the framing watcher's verdict. Envoy: 400
    /// `DPE` (`http1.content_length_and_chunked_not_allowed`).
    AmbiguousLength = 1,
    /// A chunked body hyper's decoder refuses — a chunk size that is negative, has more hex
    /// digits than fit in 64 bits, or misses its CRLF: the watcher's verdict when it saw the
    /// bytes before routing, the failed body's when they came later. Envoy: 400 `DPE`
    /// (`http1.codec_error`), the upstream request reset.
    MalformedBody = 2,
    /// HTTP/1.1 in origin form without `Host` (RFC 9112 §3.2; HTTP/1.0 clients need not send
    /// one, and an absolute-form target names the authority itself). Envoy: 400 with no flag
    /// (`missing_host_header`).
    MissingHost = 3,
    /// More than one `Host` line, in any version (RFC 9112 §3.2): which one names the service
    /// would be anybody's guess. Envoy joins them (`a,b`) and routes that, which matches no
    /// domain or, worse, a wildcard one; we refuse, as the RFC asks, with `DPE` as for the other
    /// protocol errors.
    DuplicateHost = 4,
}

impl Refusal {
    /// The refusal a verdict code stands for ([`Refusal`] `as u8`).
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::AmbiguousLength, Self::MalformedBody, Self::MissingHost, Self::DuplicateHost]
            .into_iter()
            .find(|r| *r as u8 == code)
    }

    /// The request's `Host` lines, judged: one is required in HTTP/1.1 unless the target names
    /// the authority, two are never allowed.
    pub fn of_host<B>(req: &http::Request<B>) -> Option<Self> {
        let mut hosts = req.headers().get_all(http::header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => Some(Self::DuplicateHost),
            (None, _) if req.version() == http::Version::HTTP_11 && req.uri().authority().is_none() => {
                Some(Self::MissingHost)
            }
            _ => None,
        }
    }

    /// The `reason` label of `interceptor_downstream_connections_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::AmbiguousLength => super::metrics::REJECT_AMBIGUOUS_LENGTH,
            Self::MalformedBody => super::metrics::REJECT_MALFORMED_BODY,
            Self::MissingHost => super::metrics::REJECT_MISSING_HOST,
            Self::DuplicateHost => super::metrics::REJECT_DUPLICATE_HOST,
        }
    }

    /// The answer: 400, Envoy's flag for it (`DPE`, but none for a missing `Host`), a line
    /// saying why, `Connection: close`.
    pub fn reply(self) -> LocalReply {
        let why = match self {
            Self::AmbiguousLength => "content-length and transfer-encoding together\n",
            Self::MalformedBody => "malformed chunked request body\n",
            Self::MissingHost => "missing host header\n",
            Self::DuplicateHost => "more than one host header\n",
        };
        let mut reply = match self {
            Self::MissingHost => LocalReply::text(http::StatusCode::BAD_REQUEST, why),
            _ => LocalReply::flagged(ResponseFlag::DPE, why),
        };
        reply.headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        reply
    }
}

/// Answers 408 to a client too slow to send its request head (on the proxy's end of a connection
/// hyper gave up on, or a gateway's stream), and closes.
pub async fn request_timeout(downstream: impl Downstream) {
    answer_and_close(downstream, REQUEST_TIMEOUT).await;
}

/// Answers 503 (overloaded) on a connection over the cap and closes it.
pub async fn overloaded(stream: TcpStream) {
    answer_and_close(&stream, OVERLOADED).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_answers_have_the_right_lengths() {
        for answer in [REQUEST_TIMEOUT, OVERLOADED] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|v| v.parse().ok()).unwrap();
            assert_eq!(len, body.len(), "{text}");
        }
    }
}
