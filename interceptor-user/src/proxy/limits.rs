//! Limits on downstream connections: header size and count (431), header read time (slowloris:
//! 408 and close), a cap on open connections (503 and close), and the HTTP/1 parser settings and
//! answers that keep request smuggling out. Defaults follow Envoy's.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// Envoy's `max_request_headers_kb` default: 60 KiB of request headers.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 60 * 1024;
/// Envoy's `max_headers_count` default.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Time a client has to send a whole request head, and to start the next one on a kept-alive
/// connection (so it is the downstream idle timeout between requests too). hyper's default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Open downstream connections at most; more are answered 503 and closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The answer to a client that was too slow to send its request head.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";
/// The answer to a connection over the cap. `OM` is Envoy's overload-manager response flag.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 11\r\nx-interceptor-flags: OM\r\nconnection: close\r\n\r\noverloaded\n";

/// The `limits` block of the settings file; every field optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsFile {
    /// Request header bytes at most (431 beyond).
    pub max_header_bytes: Option<usize>,
    /// Request header lines at most (431 beyond).
    pub max_headers: Option<usize>,
    /// Time to send a request head, e.g. `10s` (408 beyond).
    pub header_read_timeout: Option<String>,
    /// Open downstream connections at most (503 beyond).
    pub max_connections: Option<usize>,
}

/// Resolved limits.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Request header bytes at most.
    pub max_header_bytes: usize,
    /// Request header lines at most.
    pub max_headers: usize,
    /// Time to send a request head.
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// Open downstream connections at most.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl LimitsFile {
    /// Fills defaults and parses durations.
    ///
    /// # Errors
    /// A duration that does not parse, or a zero limit.
    pub fn resolve(&self) -> Result<Limits, String> {
        let d = Limits::default();
        let header_read_timeout = match &self.header_read_timeout {
            Some(text) => {
                humantime::parse_duration(text).map_err(|e| format!("limits.headerReadTimeout: {text:?}: {e}"))?
            }
            None => d.header_read_timeout,
        };
        let limits = Limits {
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            header_read_timeout,
            max_connections: self.max_connections.unwrap_or(d.max_connections),
        };
        if limits.max_header_bytes == 0
            || limits.max_headers == 0
            || limits.max_connections == 0
            || limits.header_read_timeout.is_zero()
        {
            return Err("limits: every limit must be above zero".into());
        }
        Ok(limits)
    }
}

impl Limits {
    /// An HTTP/1 server builder enforcing these limits.
    ///
    /// Smuggling: hyper refuses (400) differing duplicate `Content-Length`s, a `Transfer-Encoding`
    /// whose last coding is not `chunked`, and `Transfer-Encoding` in HTTP/1.0. A head with both
    /// `Transfer-Encoding` and `Content-Length` hyper would read as chunked; `proxy::framing`
    /// catches it first and the proxy answers 400 ([`ambiguous_length`]).
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

/// The answer to a request with both `Content-Length` and `Transfer-Encoding` (Envoy's default:
/// 400 with the `DPE` downstream-protocol-error flag); hyper closes the connection after it.
pub fn ambiguous_length() -> http::Response<super::outbound::ProxyBody> {
    let flag = crate::routing::ResponseFlag::DPE;
    let mut reply = super::local_reply::LocalReply::flagged(flag, "content-length and transfer-encoding together\n");
    reply.headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    reply.into_response()
}

/// Answers 408 on the proxy's end of a connection hyper gave up on, and closes it.
pub async fn request_timeout(spare: std::sync::Arc<TcpStream>) {
    answer_and_close(&spare, REQUEST_TIMEOUT).await;
}

/// Answers 503 (overloaded) on a connection over the cap and closes it.
pub async fn overloaded(stream: TcpStream) {
    answer_and_close(&stream, OVERLOADED).await;
}

async fn answer_and_close(stream: &TcpStream, answer: &[u8]) {
    // Best effort: the client may be gone already.
    let write = async {
        let mut rest = answer;
        while !rest.is_empty() {
            stream.writable().await?;
            match stream.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        super::shared_io::shutdown_write(stream)
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Serializes durations as humantime text (`10s`) in the config dump.
mod humantime_serde_compat {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_to_envoys_and_parse_durations() {
        assert_eq!(LimitsFile::default().resolve().unwrap(), Limits::default());
        let file =
            LimitsFile { header_read_timeout: Some("750ms".into()), max_connections: Some(3), ..Default::default() };
        let limits = file.resolve().unwrap();
        assert_eq!(limits.header_read_timeout, Duration::from_millis(750));
        assert_eq!(limits.max_connections, 3);
        assert!(LimitsFile { header_read_timeout: Some("soon".into()), ..Default::default() }.resolve().is_err());
        assert!(LimitsFile { max_connections: Some(0), ..Default::default() }.resolve().is_err());
    }

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
