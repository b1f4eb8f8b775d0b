//! Which headers describe one hop rather than the message (RFC 9110 §7.6.1): the one list the
//! hyper path, the relay and the h2c upgrade all drop.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that are never forwarded; the names `Connection` lists are not either. Lowercase, as
/// `HeaderMap` keys are.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The comma-separated tokens of every `name` header (`Connection: keep-alive, Upgrade`).
pub fn header_tokens<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// The header names a message's `Connection` header nominates as hop-by-hop.
pub fn nominated(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    header_tokens(headers, &header::CONNECTION).filter(|t| !t.is_empty())
}

/// Whether a header called `name` (any case) is hop-by-hop, given the names `Connection` nominated.
pub fn is_hop_by_hop(name: &str, nominated: &[&str]) -> bool {
    HOP_BY_HOP.iter().chain(nominated).any(|h| h.eq_ignore_ascii_case(name))
}

/// Removes the hop-by-hop headers, and those `Connection` nominates, from `headers`.
pub fn strip(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> =
        nominated(headers).filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()).collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("user-agent", "beta-tester".parse().unwrap());
        strip(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("user-agent"));
        assert!(is_hop_by_hop("X-Secret", &["x-secret"]));
        assert!(is_hop_by_hop("Keep-Alive", &[]));
        assert!(!is_hop_by_hop("user-agent", &["x-secret"]));
    }
}
