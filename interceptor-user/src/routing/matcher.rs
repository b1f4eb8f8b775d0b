//! Compiled `match` blocks: string matchers (exact / prefix / anchored regex) and the request view
//! they are evaluated against.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use regex::Regex;

use crate::config::{HttpMatchRequest, StringMatch};
use crate::endpoints::Registry;
use crate::routing::gateway::{resolve_gateway_name, MESH};

/// The parts of a request that rules look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Host header or `:authority`, as sent (may carry a port).
    pub authority: &'a str,
    /// `http` (cleartext is all that is captured).
    pub scheme: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Service port the client connected to.
    pub port: u16,
    /// Client address, for sourceLabels / sourceNamespace.
    pub source: Option<IpAddr>,
}

/// A compiled `StringMatch`.
#[derive(Clone, Debug)]
pub enum Matcher {
    /// `{}`: the value only has to be present.
    Present,
    /// Whole value equals.
    Exact(String),
    /// Value starts with.
    Prefix(String),
    /// Whole value matches (the regex is anchored at both ends).
    Regex(LazyRegex),
}

/// A regex checked for syntax at config load and compiled on first use: a 10,000-rule config
/// compiles in milliseconds, and requests the rule index rules out never pay for it.
#[derive(Clone, Debug)]
pub struct LazyRegex {
    /// The anchored pattern: `^(?:…)$`, with `(?i)` when case-insensitive.
    pattern: String,
    /// Literals one of which every match starts with, when there are few (for the rule index).
    prefixes: Option<Vec<Box<[u8]>>>,
    compiled: std::sync::OnceLock<Option<Regex>>,
}

/// More alternative prefixes than this (e.g. from `(?i)`) are not worth indexing.
const MAX_INDEXED_PREFIXES: usize = 16;

impl LazyRegex {
    /// Checks the syntax (RE2-compatible subset, as the regex crate accepts it) without compiling.
    ///
    /// # Errors
    /// The parser's message.
    pub fn new(pattern: String) -> Result<Self, String> {
        let hir = regex_syntax::Parser::new().parse(&pattern).map_err(|e| {
            let text = e.to_string();
            text.lines().last().unwrap_or(&text).trim().to_owned()
        })?;
        let mut extractor = regex_syntax::hir::literal::Extractor::new();
        extractor.kind(regex_syntax::hir::literal::ExtractKind::Prefix);
        let prefixes = extractor.extract(&hir).literals().and_then(|lits| {
            let usable =
                !lits.is_empty() && lits.len() <= MAX_INDEXED_PREFIXES && lits.iter().all(|l| !l.as_bytes().is_empty());
            usable.then(|| lits.iter().map(|l| l.as_bytes().into()).collect())
        });
        Ok(Self { pattern, prefixes, compiled: std::sync::OnceLock::new() })
    }

    /// Literals one of which every match starts with, if the pattern has a usable set.
    pub fn prefixes(&self) -> Option<&[Box<[u8]>]> {
        self.prefixes.as_deref()
    }

    /// The anchored pattern.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole `value` matches. A pattern that parsed but does not build (e.g. over the
    /// size limit) never matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.get_or_init(|| Regex::new(&self.pattern).ok()).as_ref().is_some_and(|r| r.is_match(value))
    }
}

impl Matcher {
    /// Compiles a `StringMatch`; `ignore_case` lowers exact/prefix and makes the regex case-insensitive.
    ///
    /// # Errors
    /// More than one of exact/prefix/regex, or a regex that does not compile (RE2 syntax).
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<Self, String> {
        let lower = |s: &String| if ignore_case { s.to_lowercase() } else { s.clone() };
        match (&m.exact, &m.prefix, &m.regex) {
            (None, None, None) => Ok(Matcher::Present),
            (Some(exact), None, None) => Ok(Matcher::Exact(lower(exact))),
            (None, Some(prefix), None) => Ok(Matcher::Prefix(lower(prefix))),
            (None, None, Some(regex)) => {
                let flags = if ignore_case { "(?i)" } else { "" };
                LazyRegex::new(format!("^{flags}(?:{regex})$"))
                    .map(Matcher::Regex)
                    .map_err(|err| format!("invalid regex {regex:?}: {err}"))
            }
            _ => Err("set only one of exact, prefix, regex".into()),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Present => true,
            Matcher::Exact(exact) => value == exact,
            Matcher::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Matcher::Regex(regex) => regex.is_match(value),
        }
    }
}

/// A compiled `match` block: every field set must match.
#[derive(Clone, Debug, Default)]
pub struct MatchBlock {
    uri: Option<Matcher>,
    ignore_uri_case: bool,
    scheme: Option<Matcher>,
    method: Option<Matcher>,
    authority: Option<Matcher>,
    headers: Vec<(http::HeaderName, Matcher)>,
    without_headers: Vec<(http::HeaderName, Matcher)>,
    query_params: Vec<(String, Matcher)>,
    port: Option<u16>,
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    /// The gateways the block is limited to (`namespace/name`, or `mesh` for captured traffic);
    /// `None`: wherever its VirtualService applies.
    gateways: Option<Arc<[Box<str>]>>,
}

impl MatchBlock {
    /// Compiles a `match` block. Errors come back as `(field below the block, message)`.
    ///
    /// # Errors
    /// Every field that does not compile.
    pub fn compile(m: &HttpMatchRequest) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut one = |field: &str, sm: &Option<StringMatch>, ignore_case: bool| -> Option<Matcher> {
            let sm = sm.as_ref()?;
            Matcher::compile(sm, ignore_case).map_err(|e| errors.push((field.to_owned(), e))).ok()
        };
        let uri = one("uri", &m.uri, m.ignore_uri_case);
        let scheme = one("scheme", &m.scheme, false);
        let method = one("method", &m.method, false);
        let authority = one("authority", &m.authority, false);
        let mut headers_of = |field: &str, map: &BTreeMap<String, StringMatch>| {
            let mut out = Vec::new();
            for (name, sm) in map {
                let at = format!("{field}.{name}");
                let header = match http::HeaderName::from_bytes(header_key(name).as_bytes()) {
                    Ok(h) => h,
                    Err(_) => {
                        errors.push((at, format!("{name:?} is not a valid header name")));
                        continue;
                    }
                };
                // `regex: "*"` is Istio's "present", not a regex.
                let present = StringMatch::default();
                let sm = if sm.regex.as_deref() == Some("*") { &present } else { sm };
                match Matcher::compile(sm, false) {
                    Ok(matcher) => out.push((header, matcher)),
                    Err(e) => errors.push((at, e)),
                }
            }
            out
        };
        let headers = headers_of("headers", &m.headers);
        let without_headers = headers_of("withoutHeaders", &m.without_headers);
        let mut query_params = Vec::new();
        for (name, sm) in &m.query_params {
            match Matcher::compile(sm, false) {
                Ok(matcher) => query_params.push((name.clone(), matcher)),
                Err(e) => errors.push((format!("queryParams.{name}"), e)),
            }
        }
        let port = match m.port.map(u16::try_from) {
            // 0 is proto3's "unset".
            None | Some(Ok(0)) => None,
            Some(Ok(p)) if p > 0 => Some(p),
            Some(_) => {
                errors.push(("port".into(), format!("{} is not a port (1-65535)", m.port.unwrap_or(0))));
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(MatchBlock {
            uri,
            ignore_uri_case: m.ignore_uri_case,
            scheme,
            method,
            authority,
            headers,
            without_headers,
            query_params,
            port,
            source_labels: m.source_labels.clone(),
            source_namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.clone()),
            gateways: (!m.gateways.is_empty()).then(|| m.gateways.iter().map(|g| g.as_str().into()).collect()),
        })
    }

    /// Resolves the gateway names of the block as Istio does, relative to the namespace of the
    /// VirtualService that writes them (`gw` → `namespace/gw`).
    pub fn resolve_gateways(&mut self, namespace: &str) {
        if let Some(names) = &self.gateways {
            self.gateways = Some(names.iter().map(|g| resolve_gateway_name(g, namespace).into_boxed_str()).collect());
        }
    }

    /// Whether the block matches the request (captured traffic).
    pub fn matches(&self, req: &RequestView<'_>, registry: &Registry) -> bool {
        self.first_mismatch(req, registry).is_none()
    }

    /// Whether the block matches the request, captured (`gateway` `None`) or entered at `gateway`.
    pub fn matches_at(&self, req: &RequestView<'_>, registry: &Registry, gateway: Option<&str>) -> bool {
        self.first_mismatch_at(req, registry, gateway).is_none()
    }

    /// The first field that does not match a captured request, or `None` when the block matches.
    pub fn first_mismatch(&self, req: &RequestView<'_>, registry: &Registry) -> Option<Mismatch> {
        self.first_mismatch_at(req, registry, None)
    }

    /// The first field that does not match, or `None` when the block matches, for a captured
    /// request (`gateway` `None`) or one that entered `gateway`. Allocation-free except for
    /// repeated headers (joined) and case-insensitive paths.
    pub fn first_mismatch_at(
        &self,
        req: &RequestView<'_>,
        registry: &Registry,
        gateway: Option<&str>,
    ) -> Option<Mismatch> {
        if let Some(names) = &self.gateways {
            let here = gateway.unwrap_or(MESH);
            if !names.iter().any(|name| &**name == here) {
                return Some(Mismatch::Gateways);
            }
        }
        if let Some(uri) = &self.uri {
            let ok = if self.ignore_uri_case && !matches!(uri, Matcher::Regex(_)) {
                uri.matches(&req.path.to_lowercase())
            } else {
                uri.matches(req.path)
            };
            if !ok {
                return Some(Mismatch::Uri);
            }
        }
        let field = |m: &Option<Matcher>, v: &str| m.as_ref().is_none_or(|m| m.matches(v));
        if !field(&self.scheme, req.scheme) {
            return Some(Mismatch::Scheme);
        }
        if !field(&self.method, req.method) {
            return Some(Mismatch::Method);
        }
        if !field(&self.authority, req.authority) {
            return Some(Mismatch::Authority);
        }
        if self.port.is_some_and(|p| p != req.port) {
            return Some(Mismatch::Port);
        }
        for (i, (name, m)) in self.headers.iter().enumerate() {
            if !header_value(req.headers, name).is_some_and(|v| m.matches(&v)) {
                return Some(Mismatch::Header(i));
            }
        }
        // Envoy's inverted header match: a missing header only satisfies an inverted presence check.
        for (i, (name, m)) in self.without_headers.iter().enumerate() {
            let ok = match header_value(req.headers, name) {
                Some(v) => !m.matches(&v),
                None => matches!(m, Matcher::Present),
            };
            if !ok {
                return Some(Mismatch::WithoutHeader(i));
            }
        }
        for (i, (name, m)) in self.query_params.iter().enumerate() {
            let query = req.query.unwrap_or("");
            if !form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == name.as_str() && m.matches(&v)) {
                return Some(Mismatch::QueryParam(i));
            }
        }
        if !self.source_labels.is_empty() || self.source_namespace.is_some() {
            let Some(workload) = req.source.and_then(|ip| registry.workload(ip)) else {
                return Some(Mismatch::SourceUnknown);
            };
            if !workload.has_labels(&self.source_labels) {
                return Some(Mismatch::SourceLabels);
            }
            if self.source_namespace.as_ref().is_some_and(|ns| **ns != *workload.namespace) {
                return Some(Mismatch::SourceNamespace);
            }
        }
        None
    }

    /// Says why `mismatch` happened for this request, for `explain`.
    pub fn describe(&self, mismatch: Mismatch, req: &RequestView<'_>) -> String {
        let header = |name: &http::HeaderName| {
            header_value(req.headers, name).map_or_else(|| "absent".to_owned(), |v| format!("{v:?}"))
        };
        match mismatch {
            Mismatch::Gateways => format!(
                "applies only to {}",
                self.gateways.as_deref().map_or_else(String::new, |names| names.join(", "))
            ),
            Mismatch::Uri => format!(
                "uri {:?} does not match {}",
                req.path,
                self.uri.as_ref().map_or(String::new(), |m| m.to_string())
            ),
            Mismatch::Scheme => format!("scheme {:?} does not match {}", req.scheme, opt(&self.scheme)),
            Mismatch::Method => format!("method {:?} does not match {}", req.method, opt(&self.method)),
            Mismatch::Authority => format!("authority {:?} does not match {}", req.authority, opt(&self.authority)),
            Mismatch::Port => format!("port {} is not {}", req.port, self.port.unwrap_or(0)),
            Mismatch::Header(i) => {
                let (name, m) = &self.headers[i];
                format!("header {name} is {} and does not match {m}", header(name))
            }
            Mismatch::WithoutHeader(i) => {
                let (name, m) = &self.without_headers[i];
                format!(
                    "withoutHeaders {name}: header is {} (must not match {m}; absent only passes for {{}})",
                    header(name)
                )
            }
            Mismatch::QueryParam(i) => {
                let (name, m) = &self.query_params[i];
                format!("query parameter {name} does not match {m} in {:?}", req.query.unwrap_or(""))
            }
            Mismatch::SourceUnknown => {
                format!("client {:?} is not a known workload (sourceLabels/sourceNamespace)", req.source)
            }
            Mismatch::SourceLabels => format!("client does not carry labels {:?}", self.source_labels),
            Mismatch::SourceNamespace => {
                format!("client is not in namespace {}", self.source_namespace.as_deref().unwrap_or(""))
            }
        }
    }

    /// The literal prefix of a `uri: {prefix: …}` match, used by prefix rewrites.
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(Matcher::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    /// The `uri` condition and whether it ignores case (for the rule index).
    pub(super) fn uri(&self) -> Option<(&Matcher, bool)> {
        self.uri.as_ref().map(|m| (m, self.ignore_uri_case))
    }

    /// The `headers` conditions (for the rule index).
    pub(super) fn header_conditions(&self) -> &[(http::HeaderName, Matcher)] {
        &self.headers
    }

    /// Whether the block matches every request (no field set).
    pub fn is_catch_all(&self) -> bool {
        self.uri.is_none()
            && self.scheme.is_none()
            && self.method.is_none()
            && self.authority.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
            && self.port.is_none()
            && self.source_labels.is_empty()
            && self.source_namespace.is_none()
            && self.gateways.as_ref().is_none_or(|names| names.iter().any(|name| &**name == MESH))
    }

    /// Istio's delegate merge: the delegate's fields win where both set one, header and query
    /// conditions add up.
    pub fn merge(root: &MatchBlock, delegate: &MatchBlock) -> MatchBlock {
        let mut out = delegate.clone();
        out.uri = delegate.uri.clone().or_else(|| root.uri.clone());
        if delegate.uri.is_none() {
            out.ignore_uri_case = root.ignore_uri_case;
        }
        out.scheme = delegate.scheme.clone().or_else(|| root.scheme.clone());
        out.method = delegate.method.clone().or_else(|| root.method.clone());
        out.authority = delegate.authority.clone().or_else(|| root.authority.clone());
        out.port = delegate.port.or(root.port);
        let add = |ours: &mut Vec<(http::HeaderName, Matcher)>, theirs: &[(http::HeaderName, Matcher)]| {
            for (name, m) in theirs {
                if !ours.iter().any(|(n, _)| n == name) {
                    ours.push((name.clone(), m.clone()));
                }
            }
        };
        add(&mut out.headers, &root.headers);
        add(&mut out.without_headers, &root.without_headers);
        for (name, m) in &root.query_params {
            if !out.query_params.iter().any(|(n, _)| n == name) {
                out.query_params.push((name.clone(), m.clone()));
            }
        }
        for (k, v) in &root.source_labels {
            out.source_labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        out.source_namespace = delegate.source_namespace.clone().or_else(|| root.source_namespace.clone());
        // Both limit the rule: it applies where both let it.
        out.gateways = match (&root.gateways, &delegate.gateways) {
            (Some(root), Some(delegate)) => Some(root.iter().filter(|g| delegate.contains(g)).cloned().collect()),
            (Some(only), None) | (None, Some(only)) => Some(only.clone()),
            (None, None) => None,
        };
        out
    }
}

fn opt(m: &Option<Matcher>) -> String {
    m.as_ref().map_or(String::new(), |m| m.to_string())
}

/// The field of a match block that did not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The block names gateways but not `mesh`.
    Gateways,
    /// `uri`.
    Uri,
    /// `scheme`.
    Scheme,
    /// `method`.
    Method,
    /// `authority`.
    Authority,
    /// `port`.
    Port,
    /// The i-th `headers` entry.
    Header(usize),
    /// The i-th `withoutHeaders` entry.
    WithoutHeader(usize),
    /// The i-th `queryParams` entry.
    QueryParam(usize),
    /// sourceLabels/sourceNamespace set, client unknown.
    SourceUnknown,
    /// `sourceLabels`.
    SourceLabels,
    /// `sourceNamespace`.
    SourceNamespace,
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Present => write!(f, "{{}} (present)"),
            Matcher::Exact(v) => write!(f, "exact {v:?}"),
            Matcher::Prefix(v) => write!(f, "prefix {v:?}"),
            Matcher::Regex(r) => {
                let full = r.as_str();
                // Show the regex as written, without the anchoring added at compile time.
                let inner = full.strip_prefix('^').unwrap_or(full).trim_start_matches("(?i)");
                let inner = inner.strip_prefix("(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(inner);
                write!(f, "regex {inner:?}")
            }
        }
    }
}

/// The request header a `headers` / `withoutHeaders` key reads. `:authority` is the Host header
/// here; other pseudo-headers and JWT claims (`@request.auth.claims.…`, gateways only) are not
/// request headers the agent sees, so they read a name no request carries (validation warns).
fn header_key(name: &str) -> String {
    const NEVER_SENT: &str = "x-interceptor-unseen-pseudo-header";
    match name {
        ":authority" => "host".into(),
        _ if name.starts_with(':') || name.starts_with('@') => NEVER_SENT.into(),
        _ => name.to_ascii_lowercase(),
    }
}

/// A header's value; repeated headers are joined with `,` as Envoy does. Non-UTF-8 never matches.
pub(super) fn header_value<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<std::borrow::Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.to_str().ok()?;
    let mut rest = values.peekable();
    if rest.peek().is_none() {
        return Some(first.into());
    }
    let mut joined = first.to_owned();
    for v in rest {
        joined.push(',');
        joined.push_str(v.to_str().ok()?);
    }
    Some(joined.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(exact: Option<&str>, prefix: Option<&str>, regex: Option<&str>) -> StringMatch {
        StringMatch { exact: exact.map(Into::into), prefix: prefix.map(Into::into), regex: regex.map(Into::into) }
    }

    fn view<'a>(headers: &'a HeaderMap, path: &'a str) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path,
            query: None,
            authority: "my-app",
            scheme: "http",
            headers,
            port: 80,
            source: None,
        }
    }

    #[test]
    fn regex_is_a_full_match() {
        let m = Matcher::compile(&sm(None, None, Some("beta")), false).unwrap();
        assert!(m.matches("beta"));
        assert!(!m.matches("xbeta"), "Envoy's safe_regex is anchored");
        let m = Matcher::compile(&sm(None, None, Some(".*beta-tester.*")), false).unwrap();
        assert!(m.matches("Mozilla beta-tester/1"));
        assert!(!m.matches("Mozilla"));
    }

    #[test]
    fn a_bad_regex_says_why() {
        let err = Matcher::compile(&sm(None, None, Some("(unclosed")), false).unwrap_err();
        assert!(err.contains("(unclosed"), "{err}");
        let err = Matcher::compile(&sm(Some("a"), Some("b"), None), false).unwrap_err();
        assert!(err.contains("only one"), "{err}");
    }

    #[test]
    fn header_names_are_case_insensitive_and_empty_means_present() {
        let block = MatchBlock::compile(&HttpMatchRequest {
            headers: BTreeMap::from([
                ("User-Agent".into(), sm(None, Some("curl"), None)),
                ("x-env".into(), StringMatch::default()),
            ]),
            ..Default::default()
        })
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/8".parse().unwrap());
        let registry = Registry::default();
        assert!(!block.matches(&view(&headers, "/"), &registry), "x-env missing");
        headers.insert("x-env", "".parse().unwrap());
        assert!(block.matches(&view(&headers, "/"), &registry));
    }

    #[test]
    fn without_headers_follows_envoy_on_missing_headers() {
        let block = MatchBlock::compile(&HttpMatchRequest {
            without_headers: BTreeMap::from([("x-a".into(), sm(Some("1"), None, None))]),
            ..Default::default()
        })
        .unwrap();
        let registry = Registry::default();
        let mut headers = HeaderMap::new();
        assert!(!block.matches(&view(&headers, "/"), &registry));
        headers.insert("x-a", "2".parse().unwrap());
        assert!(block.matches(&view(&headers, "/"), &registry));
        headers.insert("x-a", "1".parse().unwrap());
        assert!(!block.matches(&view(&headers, "/"), &registry));
    }

    #[test]
    fn uri_case_and_query_params() {
        let block = MatchBlock::compile(&HttpMatchRequest {
            uri: Some(sm(None, Some("/API"), None)),
            ignore_uri_case: true,
            query_params: BTreeMap::from([("user".into(), sm(Some("jason"), None, None))]),
            ..Default::default()
        })
        .unwrap();
        let registry = Registry::default();
        let headers = HeaderMap::new();
        let mut req = view(&headers, "/api/v1");
        assert!(!block.matches(&req, &registry));
        req.query = Some("a=b&user=jason");
        assert!(block.matches(&req, &registry));
        req.path = "/other";
        assert!(!block.matches(&req, &registry));
    }

    #[test]
    fn gateway_only_blocks_never_match_mesh_traffic() {
        let block =
            MatchBlock::compile(&HttpMatchRequest { gateways: vec!["istio-system/gw".into()], ..Default::default() })
                .unwrap();
        assert!(!block.matches(&view(&HeaderMap::new(), "/"), &Registry::default()));
    }
}
