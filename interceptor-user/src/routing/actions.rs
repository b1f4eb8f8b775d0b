//! Compiled rule actions (redirect, direct response, rewrite, header operations, retries, fault,
//! mirror, CORS) and the pure functions the proxy applies them with.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use regex::Regex;

use super::matcher::{MatchBlock, Matcher};
use super::{Action, Mirror, RouteAction, Rule, Target, Weights};
use crate::config::{self, Percent};
use crate::endpoints::Policy;

/// A problem at a field below the one being compiled: `(field, message)`.
pub type FieldMessage = (String, String);

/// Parses an Istio (Go-style) duration such as `5s`, `100ms`, `1m30s`, `0.5s`.
///
/// # Errors
/// Text that is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let spaced = insert_unit_spaces(text.trim());
    humantime::parse_duration(&spaced).map_err(|e| format!("{text:?} is not a duration like 5s or 100ms: {e}"))
}

/// `1m30s` → `1m 30s`: humantime wants separated spans; Go durations are written together.
fn insert_unit_spaces(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    let mut prev_alpha = false;
    for c in text.chars() {
        if (c.is_ascii_digit() || c == '.') && prev_alpha {
            out.push(' ');
        }
        prev_alpha = c.is_alphabetic();
        out.push(c);
    }
    out
}

/// A percentage (0–100) as a probability; `None` when outside the range.
pub fn probability(percent: f64) -> Option<f64> {
    (0.0..=100.0).contains(&percent).then_some(percent / 100.0)
}

/// Header `set`/`add`/`remove` on one direction.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Compiles `HeaderOperations`; errors are `(field, message)`.
    ///
    /// # Errors
    /// Invalid header names or values.
    pub fn compile(ops: &config::HeaderOperations) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut pairs = |field: &str, map: &std::collections::BTreeMap<String, String>| {
            let mut out = Vec::new();
            for (k, v) in map {
                // Setting `:authority` sets the Host header (Istio's authority rewrite).
                let key = if k == ":authority" { "host".to_owned() } else { k.to_ascii_lowercase() };
                match (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(v)) {
                    (Ok(name), Ok(value)) => out.push((name, value)),
                    _ => errors.push((format!("{field}.{k}"), format!("{k}: {v:?} is not a valid header"))),
                }
            }
            out
        };
        let set = pairs("set", &ops.set);
        let add = pairs("add", &ops.add);
        let mut remove = Vec::new();
        for (i, k) in ops.remove.iter().enumerate() {
            match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
                Ok(name) => remove.push(name),
                Err(_) => errors.push((format!("remove[{i}]"), format!("{k:?} is not a valid header name"))),
            }
        }
        if errors.is_empty() {
            Ok(Self { set, add, remove })
        } else {
            Err(errors)
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the operations in Envoy's order: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Request and response header operations.
#[derive(Clone, Debug, Default)]
pub struct HeaderPolicy {
    /// On the request sent upstream.
    pub request: HeaderOps,
    /// On the response sent downstream.
    pub response: HeaderOps,
}

impl HeaderPolicy {
    /// Compiles `headers`; errors are `(field, message)`.
    ///
    /// # Errors
    /// Invalid header names or values.
    pub fn compile(headers: Option<&config::Headers>) -> Result<Self, Vec<(String, String)>> {
        let Some(headers) = headers else { return Ok(Self::default()) };
        let prefix = |dir: &str, errs: Vec<(String, String)>| -> Vec<(String, String)> {
            errs.into_iter().map(|(f, m)| (format!("{dir}.{f}"), m)).collect()
        };
        let request = headers.request.as_ref().map(HeaderOps::compile).transpose().map_err(|e| prefix("request", e));
        let response = headers.response.as_ref().map(HeaderOps::compile).transpose().map_err(|e| prefix("response", e));
        match (request, response) {
            (Ok(request), Ok(response)) => {
                Ok(Self { request: request.unwrap_or_default(), response: response.unwrap_or_default() })
            }
            (Err(mut a), Err(b)) => {
                a.extend(b);
                Err(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}

/// `rewrite`.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    uri: Option<String>,
    regex: Option<(Regex, String)>,
    /// New authority (Host).
    pub authority: Option<String>,
}

impl Rewrite {
    /// Compiles `rewrite`.
    ///
    /// # Errors
    /// `(field, message)` for a bad regex or both uri forms at once.
    pub fn compile(r: &config::HttpRewrite) -> Result<Self, (String, String)> {
        if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
            return Err(("uri".into(), "set either uri or uriRegexRewrite, not both".into()));
        }
        let regex = match &r.uri_regex_rewrite {
            None => None,
            Some(rr) => {
                let regex = Regex::new(&rr.pattern).map_err(|e| {
                    ("uriRegexRewrite.match".to_owned(), format!("invalid regex {:?}: {e}", rr.pattern))
                })?;
                // RE2 writes groups as \1; the regex crate as ${1}.
                static RE2_GROUP: std::sync::LazyLock<Regex> =
                    std::sync::LazyLock::new(|| Regex::new(r"\\(\d+)").expect("a valid literal regex"));
                Some((regex, RE2_GROUP.replace_all(&rr.rewrite, "$${$1}").into_owned()))
            }
        };
        Ok(Self { uri: r.uri.clone(), regex, authority: r.authority.clone() })
    }

    /// The new path, given the prefix the rule matched (if it matched by prefix); `None` when the
    /// path stays.
    pub fn path(&self, path: &str, matched_prefix: Option<&str>) -> Option<String> {
        if let Some(uri) = &self.uri {
            return Some(match matched_prefix {
                Some(prefix) if path.starts_with(prefix) => format!("{uri}{}", &path[prefix.len()..]),
                _ => uri.clone(),
            });
        }
        let (regex, replacement) = self.regex.as_ref()?;
        Some(regex.replace_all(path, replacement.as_str()).into_owned())
    }
}

/// `redirect`.
#[derive(Clone, Debug)]
pub struct Redirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<u16>,
    port_from_scheme: bool,
    scheme: Option<String>,
    /// Status code.
    pub code: u16,
}

impl Redirect {
    /// Compiles `redirect`.
    ///
    /// # Errors
    /// `(field, message)` for a bad code, port or derivePort.
    pub fn compile(r: &config::HttpRedirect) -> Result<Self, (String, String)> {
        let code = r.redirect_code.unwrap_or(301);
        if !(300..=399).contains(&code) {
            return Err(("redirectCode".into(), format!("{code} is not a valid redirect code, must be 3xx")));
        }
        let port = match r.port {
            None => None,
            Some(0) => None, // proto3's "unset"
            Some(p) => Some(
                u16::try_from(p).ok().filter(|p| *p > 0).ok_or(("port".to_owned(), format!("{p} is not a port")))?,
            ),
        };
        let port_from_scheme = match r.derive_port.as_deref() {
            None | Some("FROM_REQUEST_PORT") => false,
            Some("FROM_PROTOCOL_DEFAULT") => true,
            Some(other) => {
                return Err((
                    "derivePort".into(),
                    format!("{other:?} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
                ))
            }
        };
        if port.is_some() && r.derive_port.is_some() {
            return Err(("derivePort".into(), "set either port or derivePort, not both".into()));
        }
        Ok(Self {
            uri: r.uri.clone(),
            authority: r.authority.clone(),
            port,
            port_from_scheme,
            scheme: r.scheme.clone(),
            code: u16::try_from(code).unwrap_or(301),
        })
    }

    /// The `Location` for a request with this scheme, authority and path (with query).
    pub fn location(&self, scheme: &str, authority: &str, path_and_query: &str) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (req_host, req_port) = split_authority(authority);
        let host = self.authority.as_deref().map(|a| split_authority(a).0).unwrap_or(req_host);
        let port = if self.port_from_scheme {
            None
        } else {
            self.port.or(self.authority.as_deref().and_then(|a| split_authority(a).1)).or(req_port)
        };
        let default_port = match scheme {
            "https" => 443,
            _ => 80,
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let path = self.uri.as_deref().unwrap_or(path);
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port.filter(|p| *p != default_port) {
            location.push_str(&format!(":{port}"));
        }
        location.push_str(path);
        if let Some(q) = query.filter(|_| !path.contains('?')) {
            location.push('?');
            location.push_str(q);
        }
        location
    }
}

fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// `directResponse`.
#[derive(Clone, Debug)]
pub struct DirectResponse {
    /// Status.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl DirectResponse {
    /// Compiles `directResponse`.
    ///
    /// # Errors
    /// `(field, message)` for a bad status or body.
    pub fn compile(d: &config::HttpDirectResponse) -> Result<Self, (String, String)> {
        use base64::Engine as _;
        let status = u16::try_from(d.status)
            .ok()
            .filter(|s| (200..=600).contains(s))
            .ok_or(("status".to_owned(), format!("{} is not an HTTP status (200-600, as Istio)", d.status)))?;
        let body = match &d.body {
            None => Bytes::new(),
            Some(config::HttpBody { string: Some(_), bytes: Some(_) }) => {
                return Err(("body".into(), "set either string or bytes, not both".into()))
            }
            Some(config::HttpBody { string: Some(s), .. }) => Bytes::from(s.clone()),
            Some(config::HttpBody { bytes: Some(b), .. }) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Bytes::from)
                .map_err(|e| ("body.bytes".to_owned(), format!("not base64: {e}")))?,
            Some(_) => Bytes::new(),
        };
        Ok(Self { status, body })
    }
}

/// Which failures a retry policy retries (Envoy's `retry_on` tokens).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx answer, connect failure or reset.
    pub any_5xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `reset`: connection reset or broken before an answer.
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `refused-stream` (HTTP/2 REFUSED_STREAM; counted as a reset here).
    pub refused_stream: bool,
    /// `retriable-status-codes` plus the codes listed among the tokens.
    pub status_codes: Vec<u16>,
    /// gRPC status names retried (`cancelled`, `unavailable` …) from the `grpc-status` trailer/header.
    pub grpc: Vec<u32>,
}

/// A failed try, as retry conditions see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryFailure {
    /// Connecting failed.
    Connect,
    /// The connection broke before an answer.
    Reset,
    /// The per-try timeout fired.
    Timeout,
}

impl RetryOn {
    /// Parses Envoy's comma-separated tokens; numbers are retriable status codes.
    ///
    /// # Errors
    /// An unknown token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut on = RetryOn::default();
        let mut wants_codes = false;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "5xx" => on.any_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" | "http3-post-connect-failure" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-status-codes" => wants_codes = true,
                "retriable-headers" | "envoy-ratelimited" => {}
                "cancelled" => on.grpc.push(1),
                "deadline-exceeded" => on.grpc.push(4),
                "resource-exhausted" => on.grpc.push(8),
                "internal" => on.grpc.push(13),
                "unavailable" => on.grpc.push(14),
                other => match other.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => on.status_codes.push(code),
                    _ => return Err(format!("{other:?} is not an Envoy retry condition")),
                },
            }
        }
        // Istio turns listed codes into retriable-status-codes; the token alone retries 503.
        if wants_codes && on.status_codes.is_empty() {
            on.status_codes.push(503);
        }
        Ok(on)
    }

    /// Whether an answer with `status` (and `grpc-status` header, if any) is retried.
    pub fn retries_status(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (self.any_5xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || self.status_codes.contains(&status)
            || grpc_status.is_some_and(|g| self.grpc.contains(&g))
    }

    /// Whether a try that failed this way is retried.
    pub fn retries_failure(&self, failure: TryFailure) -> bool {
        match failure {
            TryFailure::Connect => self.connect_failure || self.any_5xx || self.gateway_error,
            TryFailure::Reset => self.reset || self.refused_stream || self.any_5xx || self.gateway_error,
            TryFailure::Timeout => self.any_5xx || self.gateway_error,
        }
    }
}

/// `retries`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of each try.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub on: RetryOn,
    /// Try another endpoint than the ones tried (Envoy's previous_hosts predicate).
    pub other_hosts: bool,
    /// Base back-off between tries (Envoy: 25 ms, jittered, doubling).
    pub backoff: Duration,
}

impl RetryPolicy {
    /// Istio's policy when a rule sets none: 2 retries on connect failure, refused stream,
    /// gRPC unavailable/cancelled and 503.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            on: RetryOn::parse("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes")
                .expect("Istio's default retry conditions are valid"),
            other_hosts: true,
            backoff: Duration::from_millis(25),
        }
    }

    /// Compiles `retries`.
    ///
    /// # Errors
    /// `(field, message)` for negative attempts, bad durations or unknown conditions.
    pub fn compile(r: &config::HttpRetry) -> Result<Self, (String, String)> {
        let attempts = u32::try_from(r.attempts)
            .map_err(|_| ("attempts".to_owned(), format!("must be >= 0, got {}", r.attempts)))?;
        let per_try_timeout = r
            .per_try_timeout
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| ("perTryTimeout".to_owned(), e))?;
        if per_try_timeout.is_some_and(|d| d < Duration::from_millis(1)) {
            return Err(("perTryTimeout".into(), "must be at least 1ms".into()));
        }
        let default_on = RetryPolicy::istio_default().on;
        let on = match r.retry_on.as_deref() {
            None => default_on,
            Some(text) => RetryOn::parse(text).map_err(|e| ("retryOn".to_owned(), e))?,
        };
        let backoff = r.backoff.as_deref().map(parse_duration).transpose().map_err(|e| ("backoff".to_owned(), e))?;
        Ok(Self {
            attempts,
            per_try_timeout,
            on,
            other_hosts: !r.retry_ignore_previous_hosts.unwrap_or(false),
            backoff: backoff.unwrap_or(Duration::from_millis(25)),
        })
    }
}

/// `fault`.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Delay and the probability of applying it.
    pub delay: Option<(Duration, f64)>,
    /// Status answered and the probability of aborting.
    pub abort: Option<Abort>,
}

/// `fault.abort`.
#[derive(Clone, Debug)]
pub struct Abort {
    /// HTTP status answered.
    pub status: u16,
    /// gRPC status set as `grpc-status` when the abort is a gRPC one.
    pub grpc_status: Option<u32>,
    /// Probability.
    pub probability: f64,
}

/// gRPC status codes by name.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Fault {
    /// Compiles `fault`; also returns warnings `(field, message)`.
    ///
    /// # Errors
    /// `(field, message)` for bad durations, statuses or percentages.
    pub fn compile(f: &config::HttpFaultInjection) -> Result<(Self, Vec<FieldMessage>), FieldMessage> {
        let mut warnings = Vec::new();
        let share = |field: &str, pct: &Option<Percent>, int: Option<i64>, warnings: &mut Vec<(String, String)>| {
            let value = match (pct, int) {
                (Some(p), _) => p.value,
                (None, Some(i)) => i as f64,
                (None, None) => {
                    warnings
                        .push((format!("{field}.percentage"), "not set: Istio applies the fault to no request".into()));
                    0.0
                }
            };
            probability(value).ok_or((format!("{field}.percentage.value"), format!("{value} is not between 0 and 100")))
        };
        let delay = match &f.delay {
            None => None,
            Some(d) => {
                if d.exponential_delay.is_some() {
                    return Err((
                        "delay.exponentialDelay".into(),
                        "not supported (Istio does not support it either)".into(),
                    ));
                }
                // Istio accepts a delay without fixedDelay: it delays nothing.
                match d.fixed_delay.as_deref() {
                    None => None,
                    Some(fixed) => {
                        let duration = parse_duration(fixed).map_err(|e| ("delay.fixedDelay".to_owned(), e))?;
                        Some((duration, share("delay", &d.percentage, d.percent, &mut warnings)?))
                    }
                }
            }
        };
        let abort =
            match &f.abort {
                None => None,
                Some(a) => {
                    let probability = share("abort", &a.percentage, None, &mut warnings)?;
                    if a.http2_error.is_some() {
                        return Err(("abort.http2Error".into(), "not supported".into()));
                    }
                    let grpc_status =
                        match &a.grpc_status {
                            None => None,
                            Some(name) => Some(GRPC_CODES.iter().position(|c| c == name).map(|i| i as u32).ok_or((
                                "abort.grpcStatus".to_owned(),
                                format!("{name:?} is not a gRPC status name"),
                            ))?),
                        };
                    let status = match (a.http_status, grpc_status) {
                        (Some(s), _) => u16::try_from(s).ok().filter(|s| (200..=600).contains(s)).ok_or((
                            "abort.httpStatus".to_owned(),
                            format!("{s} is not an HTTP status (200-600, as Istio)"),
                        ))?,
                        (None, Some(_)) => 200,
                        // Istio only warns about an abort without an error type: it aborts nothing.
                        (None, None) => return Ok((Self { delay, abort: None }, warnings)),
                    };
                    Some(Abort { status, grpc_status, probability })
                }
            };
        Ok((Self { delay, abort }, warnings))
    }
}

/// `corsPolicy`.
#[derive(Clone, Debug)]
pub struct Cors {
    origins: Vec<Matcher>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    /// Forward preflights whose origin is not allowed (Istio's default) instead of answering them.
    pub forward_unmatched: bool,
}

impl Cors {
    /// Compiles `corsPolicy`.
    ///
    /// # Errors
    /// `(field, message)` for bad matchers, durations or header values.
    pub fn compile(c: &config::CorsPolicy) -> Result<Self, (String, String)> {
        let mut origins = Vec::new();
        for (i, m) in c.allow_origins.iter().enumerate() {
            origins.push(Matcher::compile(m, false).map_err(|e| (format!("allowOrigins[{i}]"), e))?);
        }
        origins.extend(c.allow_origin.iter().map(|o| Matcher::Exact(o.clone())));
        let join = |field: &str, list: &[String]| -> Result<Option<HeaderValue>, (String, String)> {
            if list.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&list.join(","))
                .map(Some)
                .map_err(|_| (field.to_owned(), "not a valid header value".to_owned()))
        };
        let max_age = match &c.max_age {
            None => None,
            Some(text) => {
                let secs = parse_duration(text).map_err(|e| ("maxAge".to_owned(), e))?.as_secs();
                Some(HeaderValue::from(secs))
            }
        };
        let forward_unmatched = match c.unmatched_preflights.as_deref() {
            None | Some("FORWARD") | Some("UNSPECIFIED") => true,
            Some("IGNORE") => false,
            Some(other) => return Err(("unmatchedPreflights".into(), format!("{other:?} is not FORWARD or IGNORE"))),
        };
        Ok(Self {
            origins,
            methods: join("allowMethods", &c.allow_methods)?,
            headers: join("allowHeaders", &c.allow_headers)?,
            expose: join("exposeHeaders", &c.expose_headers)?,
            max_age,
            credentials: c.allow_credentials.unwrap_or(false),
            forward_unmatched,
        })
    }

    /// Whether `origin` is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches(origin))
    }

    /// Headers answering an allowed preflight.
    pub fn preflight_headers(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        use http::header::*;
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(v) = &self.methods {
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, v.clone());
        }
        if let Some(v) = &self.headers {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.max_age {
            headers.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        if self.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }

    /// Headers added to the answer of an allowed actual request.
    pub fn response_headers(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        use http::header::*;
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(v) = &self.expose {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        if self.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

// === impl RouteAction, Rule: relay eligibility ===

impl RouteAction {
    /// A route action. It is `relayable` when it only forwards, so the raw relay carries it out
    /// exactly as hyper would: no rewrite, timeout, per-try timeout or mirror, and every
    /// destination a keep-alive plaintext cluster without hashing, passthrough or header
    /// operations. Decided
    /// for all destinations at once, so that the relay declining never skews the weighted split.
    pub fn new(
        targets: Weights,
        rewrite: Option<Rewrite>,
        timeout: Option<Duration>,
        retry: RetryPolicy,
        mirrors: Vec<Mirror>,
    ) -> Self {
        let relayable = rewrite.is_none()
            && timeout.is_none()
            && mirrors.is_empty()
            && retry.per_try_timeout.is_none()
            && targets.iter().all(|t| {
                t.headers.request.is_empty()
                    && t.headers.response.is_empty()
                    && matches!(&t.target, Target::Cluster(c)
                        if c.keep_alive && c.hash_key.is_none() && c.balancer.policy() != Policy::Passthrough
                            // The relay speaks plain TCP only; TLS clusters (and refusing ones) go by hyper.
                            && c.tls.is_plaintext())
            });
        Self { targets, rewrite, timeout, retry, mirrors, relayable }
    }
}

impl Rule {
    /// A compiled rule; its route stays relayable only without rule-level faults, CORS or header
    /// operations (the relay applies none of them).
    pub fn new(
        label: std::sync::Arc<str>,
        matches: Vec<MatchBlock>,
        mut action: Action,
        headers: HeaderPolicy,
        fault: Option<Fault>,
        cors: Option<Cors>,
    ) -> Self {
        if let Action::Route(route) = &mut action {
            route.relayable &=
                fault.is_none() && cors.is_none() && headers.request.is_empty() && headers.response.is_empty();
        }
        Self { label, matches, action, headers, fault, cors }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("five").is_err());
    }

    #[test]
    fn prefix_rewrite_replaces_only_the_matched_prefix() {
        let r = Rewrite::compile(&config::HttpRewrite { uri: Some("/v2".into()), ..Default::default() }).unwrap();
        assert_eq!(r.path("/v1/users", Some("/v1")).as_deref(), Some("/v2/users"));
        assert_eq!(r.path("/exact", None).as_deref(), Some("/v2"));
    }

    #[test]
    fn regex_rewrite_uses_re2_groups() {
        let r = Rewrite::compile(&config::HttpRewrite {
            uri_regex_rewrite: Some(config::RegexRewrite {
                pattern: "^/service/([^/]+)(/.*)$".into(),
                rewrite: "\\2/instance/\\1".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.path("/service/foo/v1/api", None).as_deref(), Some("/v1/api/instance/foo"));
    }

    #[test]
    fn redirect_locations() {
        let r = Redirect::compile(&config::HttpRedirect { uri: Some("/new".into()), ..Default::default() }).unwrap();
        assert_eq!(r.code, 301);
        assert_eq!(r.location("http", "my-app:8080", "/old?a=1"), "http://my-app:8080/new?a=1");
        let r = Redirect::compile(&config::HttpRedirect {
            authority: Some("other.example".into()),
            scheme: Some("https".into()),
            derive_port: Some("FROM_PROTOCOL_DEFAULT".into()),
            redirect_code: Some(308),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.location("http", "my-app:8080", "/x"), "https://other.example/x");
        assert!(Redirect::compile(&config::HttpRedirect { redirect_code: Some(200), ..Default::default() }).is_err());
    }

    #[test]
    fn retry_conditions() {
        let on = RetryOn::parse("gateway-error,connect-failure,409").unwrap();
        assert!(on.retries_status(503, None));
        assert!(!on.retries_status(500, None));
        assert!(on.retries_status(409, None));
        assert!(on.retries_failure(TryFailure::Connect));
        assert!(RetryOn::parse("sometimes").is_err());
        let default = RetryPolicy::istio_default();
        assert!(default.on.retries_status(503, None) && !default.on.retries_status(500, None));
        assert!(default.on.retries_status(200, Some(14)), "gRPC unavailable");
    }

    #[test]
    fn header_operations_remove_set_add() {
        let ops = HeaderOps::compile(&config::HeaderOperations {
            set: [("x-a".to_string(), "1".to_string())].into(),
            add: [("x-b".to_string(), "2".to_string())].into(),
            remove: vec!["x-c".into()],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", "0".parse().unwrap());
        h.insert("x-b", "1".parse().unwrap());
        h.insert("x-c", "1".parse().unwrap());
        ops.apply(&mut h);
        assert_eq!(h["x-a"], "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-c"));
    }

    #[test]
    fn fault_percentages_and_statuses() {
        let (f, warnings) = Fault::compile(&config::HttpFaultInjection {
            abort: Some(config::FaultAbort {
                http_status: Some(418),
                percentage: Some(Percent { value: 50.0 }),
                ..Default::default()
            }),
            delay: Some(config::FaultDelay { fixed_delay: Some("1s".into()), ..Default::default() }),
        })
        .unwrap();
        assert_eq!(f.abort.unwrap().probability, 0.5);
        assert_eq!(f.delay.unwrap().1, 0.0);
        assert_eq!(warnings.len(), 1);
        assert!(Fault::compile(&config::HttpFaultInjection {
            abort: Some(config::FaultAbort { http_status: Some(99), ..Default::default() }),
            delay: None
        })
        .is_err());
    }

    #[test]
    fn cors_origins() {
        let c = Cors::compile(&config::CorsPolicy {
            allow_origins: vec![config::StringMatch {
                regex: Some("https://.*\\.example\\.com".into()),
                ..Default::default()
            }],
            allow_methods: vec!["GET".into(), "POST".into()],
            max_age: Some("24h".into()),
            ..Default::default()
        })
        .unwrap();
        assert!(c.allows("https://a.example.com"));
        assert!(!c.allows("https://evil.com"));
        let mut h = HeaderMap::new();
        c.preflight_headers(&HeaderValue::from_static("https://a.example.com"), &mut h);
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-max-age"], "86400");
    }
}
