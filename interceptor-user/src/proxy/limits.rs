//! Enforces the limits on downstream connections (settings in [`crate::config::Limits`]): header
//! size and count (431), header read time (slowloris: 408 and close), a cap on open connections
//! (503 and close), and the HTTP/1 parser settings and answers that keep request smuggling out.

use std::time::Duration;

use tokio::net::TcpStream;

pub use crate::config::Limits;

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
