//! gRPC (and HTTP/2) upstream choice: gRPC requests go upstream over HTTP/2 with `te: trailers`,
//! so trailers (`grpc-status`) reach the client; other requests go as HTTP/1.1.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Version};

/// Whether `headers` belong to a gRPC call (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// The upstream HTTP version for a request with these headers; gRPC also gets back
/// `te: trailers`, which gRPC servers expect and the hop-by-hop strip removed.
pub fn prepare(headers: &mut HeaderMap) -> Version {
    if is_grpc(headers) {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_told_by_content_type() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        assert!(is_grpc(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(!is_grpc(&h));
    }
}
