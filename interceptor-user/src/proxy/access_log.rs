//! One access-log line per request in Envoy's default format (plus Istio's trailing fields), so
//! tools that parse Istio proxy logs read ours.
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
//! %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
//! "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%"
//! "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%
//! %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Version};

/// What the access log and metrics need from a request, read before the request is forwarded.
/// Values are shared with the request (reference-counted), not copied.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    start: SystemTime,
    method: Method,
    path: Option<PathAndQuery>,
    protocol: &'static str,
    forwarded_for: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    authority: Option<HeaderValue>,
    /// A gRPC call (`content-type: application/grpc…`).
    pub grpc: bool,
}

impl RequestInfo {
    /// The request target's path and query, as received.
    pub fn path(&self) -> &str {
        self.path.as_ref().map_or("/", PathAndQuery::as_str)
    }

    /// A HEAD request, whose response has no body to send.
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// Host header, else the request target's authority; empty when neither is there (or it is
    /// not text).
    pub fn authority(&self) -> &str {
        text(self.authority.as_ref()).unwrap_or("")
    }

    /// Reads the logged fields of `req`.
    pub fn of<B>(req: &Request<B>) -> Self {
        let headers = req.headers();
        let authority = headers
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        Self {
            start: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            protocol: protocol(req.version()),
            forwarded_for: headers.get("x-forwarded-for").cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            request_id: headers.get("x-request-id").cloned(),
            authority,
            grpc: super::grpc::is_grpc(headers),
        }
    }
}

/// How a request ended, for the log line.
#[derive(Clone, Copy, Debug)]
pub struct Completion<'a> {
    /// Status sent downstream.
    pub status: u16,
    /// Envoy's response flags, comma-separated (`UF,URX`), `-` when none.
    pub flags: &'a str,
    /// Request body bytes read from the client (BYTES_RECEIVED).
    pub request_bytes: u64,
    /// Response body bytes sent to the client (BYTES_SENT).
    pub response_bytes: u64,
    /// Time to the end of the response (DURATION).
    pub duration: Duration,
    /// Time the endpoint took to answer with headers (X-ENVOY-UPSTREAM-SERVICE-TIME); `None` for
    /// the proxy's own replies.
    pub upstream_time: Option<Duration>,
    /// Endpoint the request went to.
    pub upstream: Option<SocketAddr>,
    /// Envoy cluster name, `-` when none.
    pub cluster: &'a str,
    /// Rule that matched, `-` when none.
    pub route: &'a str,
    /// Where the client meant to go (the captured VIP:port).
    pub original: Option<SocketAddr>,
    /// The client.
    pub client: SocketAddr,
    /// The server name the client's TLS asked for (REQUESTED_SERVER_NAME), when TLS ended here.
    pub sni: Option<&'a str>,
}

/// Formats the line.
pub fn format(req: &RequestInfo, done: &Completion<'_>) -> String {
    let mut line = String::with_capacity(256);
    let start = humantime::format_rfc3339_millis(req.start);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    // Writing to a String cannot fail.
    let _ = write!(
        line,
        "[{start}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} {}",
        req.method,
        req.path(),
        req.protocol,
        done.status,
        done.flags,
        done.request_bytes,
        done.response_bytes,
        done.duration.as_millis(),
        opt(done.upstream_time.map(|t| t.as_millis().to_string())),
        dash(&req.forwarded_for),
        dash(&req.user_agent),
        dash(&req.request_id),
        dash(&req.authority),
        opt(done.upstream.map(|u| u.to_string())),
        done.cluster,
        opt(done.original.map(|o| o.to_string())),
        done.client,
        done.sni.unwrap_or("-"),
        done.route,
    );
    line
}

/// Writes the line to the `access` log target.
pub fn emit(req: &RequestInfo, done: &Completion<'_>) {
    tracing::info!(target: "access", "{}", format(req, done));
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The header's text, `-` when absent or not text.
fn dash(value: &Option<HeaderValue>) -> &str {
    text(value.as_ref()).unwrap_or("-")
}

fn text(value: Option<&HeaderValue>) -> Option<&str> {
    value.and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_follows_envoys_default_format() {
        let req = Request::get("/api/users?id=1")
            .header("host", "my-app.default.svc.cluster.local")
            .header("user-agent", "curl/8")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let mut info = RequestInfo::of(&req);
        info.start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let done = Completion {
            status: 200,
            flags: "-",
            request_bytes: 0,
            response_bytes: 2,
            duration: Duration::from_millis(4),
            upstream_time: Some(Duration::from_millis(3)),
            upstream: Some("10.244.0.11:8080".parse().unwrap()),
            cluster: "outbound|80|v1|my-app.default.svc.cluster.local",
            route: "default/my-app-vs#0",
            original: Some("10.96.0.10:80".parse().unwrap()),
            client: "10.244.0.10:40000".parse().unwrap(),
            sni: None,
        };
        assert_eq!(
            format(&info, &done),
            "[2023-11-14T22:13:20.123Z] \"GET /api/users?id=1 HTTP/1.1\" 200 - 0 2 4 3 \"-\" \"curl/8\" \"-\" \
             \"my-app.default.svc.cluster.local\" \"10.244.0.11:8080\" \
             outbound|80|v1|my-app.default.svc.cluster.local - 10.96.0.10:80 10.244.0.10:40000 - default/my-app-vs#0"
        );
        let local =
            Completion { status: 503, flags: "UH", upstream: None, upstream_time: None, original: None, ..done };
        let line = format(&info, &local);
        assert!(line.contains("\" 503 UH 0 2 4 - \""), "{line}");
        assert!(line.contains("\"-\" outbound"), "{line}");
    }
}
