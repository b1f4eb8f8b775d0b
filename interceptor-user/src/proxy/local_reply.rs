//! Answers the proxy makes itself (Envoy's local replies): a status, the response flag in
//! `x-interceptor-flags`, a short body; rendered for hyper or as HTTP/1.1 bytes for the relay.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::outbound::ProxyBody;
use crate::routing::ResponseFlag;

/// Header on responses the proxy made itself, carrying Envoy's response flags (NR, NC, UH, UF …).
pub const FLAGS_HEADER: &str = "x-interceptor-flags";

/// A response made by the proxy rather than an endpoint.
#[derive(Debug)]
pub struct LocalReply {
    /// Status sent.
    pub status: StatusCode,
    /// Why the proxy answered itself, when it was a failure or a fault (also the access log's flag).
    pub flag: Option<ResponseFlag>,
    /// Headers besides the flag (and, on the relay, the length).
    pub headers: HeaderMap,
    /// Body sent.
    pub body: Bytes,
}

impl LocalReply {
    /// Envoy's reply for `flag`: its status, the flag header, a text body.
    pub fn flagged(flag: ResponseFlag, body: impl Into<Bytes>) -> Self {
        let status = StatusCode::from_u16(flag.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut reply = Self::text(status, body);
        reply.set_flag(flag);
        reply
    }

    /// `status` with a text body.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Self { status, flag: None, headers, body: body.into() }
    }

    /// `status` with no body and no headers.
    pub fn empty(status: StatusCode) -> Self {
        Self { status, flag: None, headers: HeaderMap::new(), body: Bytes::new() }
    }

    /// Marks the reply with `flag`, in its headers too.
    pub fn set_flag(&mut self, flag: ResponseFlag) {
        self.flag = Some(flag);
        self.headers.insert(FLAGS_HEADER, HeaderValue::from_static(flag.as_str()));
    }

    /// The reply as a hyper response.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(Full::new(self.body).map_err(|never| match never {}).boxed());
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }

    /// The reply as HTTP/1.1 bytes, with its length, and `Connection: close` when `close`.
    pub fn to_http1(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            super::framing::push_header(&mut out, name.as_str(), value.as_bytes());
        }
        super::framing::push_header(&mut out, "content-length", self.body.len().to_string().as_bytes());
        if close {
            super::framing::push_header(&mut out, "connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_reply(flag: ResponseFlag, body: String) -> Response<ProxyBody> {
        LocalReply::flagged(flag, body).into_response()
    }

    #[test]
    fn local_replies_carry_status_and_flag() {
        let r = local_reply(ResponseFlag::NC, "x".into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[FLAGS_HEADER], "NC");
        assert_eq!(local_reply(ResponseFlag::NR, String::new()).status(), 404);
        assert_eq!(local_reply(ResponseFlag::UT, String::new()).status(), 504);
        assert_eq!(local_reply(ResponseFlag::UC, String::new()).headers()[FLAGS_HEADER], "UC");
    }

    #[test]
    fn both_renderings_say_the_same() {
        let reply = LocalReply::flagged(ResponseFlag::UH, "no healthy upstream");
        assert_eq!(
            String::from_utf8(reply.to_http1(true)).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nx-interceptor-flags: UH\r\n\
             content-length: 19\r\nconnection: close\r\n\r\nno healthy upstream"
        );
    }
}
