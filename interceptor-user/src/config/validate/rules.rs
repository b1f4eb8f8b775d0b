//! Field rules shared by every kind: host names, labels, ports, durations, regexes, headers.
//!
//! Each rule returns Istio's reason (`pkg/config/validation`) so a user's search finds Istio's
//! documentation; the caller adds where it is.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

/// Istio's `dns1123LabelFmt`: unlike Kubernetes it allows upper case.
const DNS1123_LABEL: &str = "[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?";
/// Kubernetes' qualified name (label keys' name part and label values).
const QUALIFIED_NAME: &str = "(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
/// The longest DNS label.
const DNS1123_LABEL_MAX: usize = 63;
/// The longest regex Istio accepts (an approximation of Envoy's RE2 program size limit).
const REGEX_MAX_LEN: usize = 1024;
/// Istio's JWT claim pseudo-header prefix (`@request.auth.claims.sub`, `@request.auth.claims[a][b]`).
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims";

fn anchored(pattern: &str) -> Regex {
    // The patterns are constants of this file: a failure is a bug caught by the unit tests.
    Regex::new(&format!("^(?:{pattern})$")).expect("constant pattern compiles")
}

static DNS1123_LABEL_RE: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_LABEL));
static WILDCARD_LABEL_RE: LazyLock<Regex> = LazyLock::new(|| anchored(&format!(r"\*|(?:\*|\*-)?{DNS1123_LABEL}")));
static LABEL_KEY_RE: LazyLock<Regex> =
    LazyLock::new(|| anchored(&format!(r"({DNS1123_LABEL}(?:\.{DNS1123_LABEL})*/)?({QUALIFIED_NAME})")));
static LABEL_VALUE_RE: LazyLock<Regex> = LazyLock::new(|| anchored(&format!("(?:{QUALIFIED_NAME})?")));
/// Go's `time.ParseDuration` syntax: signed, one or more number-unit pairs.
static GO_DURATION_RE: LazyLock<Regex> =
    LazyLock::new(|| anchored(r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+"));
/// RFC 7230 `token` characters: what a header name may be made of.
static HEADER_NAME_RE: LazyLock<Regex> = LazyLock::new(|| anchored(r"[!#$%&'*+\-.^_`|~A-Za-z0-9]+"));

/// A DNS-1123 label as Istio checks it (upper case allowed, at most 63 characters).
pub(super) fn is_dns1123_label(value: &str) -> bool {
    value.len() <= DNS1123_LABEL_MAX && DNS1123_LABEL_RE.is_match(value)
}

fn is_wildcard_dns1123_label(value: &str) -> bool {
    value.len() <= DNS1123_LABEL_MAX && WILDCARD_LABEL_RE.is_match(value)
}

/// An IPv4 or IPv6 address.
pub(super) fn is_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let top = parts.last().copied().unwrap_or_default();
    // Go's Atoi: an optional sign, then digits.
    let digits = top.strip_prefix(['+', '-']).unwrap_or(top);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("domain name {domain:?} invalid (top level domain {top:?} cannot be all-numeric)"));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is allowed.
        if i + 1 == parts.len() && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

/// A fully qualified domain name (no wildcard).
pub(super) fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

/// A domain name whose first label may be a wildcard (`*`, `*.example.com`, `*-foo.example.com`).
pub(super) fn wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    rest.map_or(Ok(()), dns1123_labels)
}

/// Hosts of a VirtualService bound to gateways: as [`wildcard_domain`], plus the
/// `outbound_.<port>_._.<host>` names of AUTO_PASSTHROUGH SNI routes.
pub(super) fn gateway_domain(sni: bool, domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    if sni && domain.starts_with("outbound_") {
        let parts: Vec<&str> = domain.split('_').collect();
        if parts.len() < 4 {
            return Err(format!("domain name {domain} invalid, should follow 'outbound_.<PORT>_._.<HOSTNAME>' format"));
        }
        let port = parts[1].trim_matches('.');
        let host = parts[3].trim_matches('.');
        if !port.bytes().any(|b| b.is_ascii_digit()) {
            return Err(format!("domain name {domain:?} invalid (label {port:?} invalid)"));
        }
        if !host.bytes().any(|b| b.is_ascii_alphabetic()) {
            return Err(format!("domain name {domain:?} invalid (label {host:?} invalid)"));
        }
        return Ok(());
    }
    wildcard_domain(domain)
}

/// `*` allowed only alone or as the whole first label (`*.example.com`).
pub(super) fn partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

/// Istio's host matching: equal, or either one's wildcard covers the other.
pub(super) fn hosts_overlap(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => a.ends_with(b) || b.ends_with(a),
        (Some(suffix), None) => b.ends_with(suffix),
        (None, Some(suffix)) => a.ends_with(suffix),
        (None, None) => a == b,
    }
}

/// `host` is covered by `of` (one direction of [`hosts_overlap`]).
pub(super) fn host_subset_of(host: &str, of: &str) -> bool {
    match (host.strip_prefix('*'), of.strip_prefix('*')) {
        (Some(host), Some(of)) => host.ends_with(of),
        (Some(_), None) => false,
        (None, Some(suffix)) => host.ends_with(suffix),
        (None, None) => host == of,
    }
}

/// A port number.
pub(super) fn port(number: u64) -> Result<(), String> {
    if (1..=65535).contains(&number) {
        Ok(())
    } else {
        Err(format!("port number {number} must be in the range 1..65535"))
    }
}

/// A duration as Istio's `ValidateDuration` wants it: at least 1ms, whole milliseconds.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    let value = parse_duration(text)?;
    if value < Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if value.subsec_nanos() % 1_000_000 != 0 {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(value)
}

/// A duration of any size, in Go's syntax (`300ms`, `1h30m`, `1.5s`; Istio reads durations with
/// Go's `time.ParseDuration`, so `1d` or `5 s` are refused).
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    if matches!(text, "0" | "+0" | "-0") {
        return Ok(Duration::ZERO);
    }
    if !GO_DURATION_RE.is_match(text) {
        return Err(format!("time: invalid duration {text:?}"));
    }
    crate::routing::parse_duration(text)
}

/// A `{value: …}` percentage: 0, or between 0.0001 and 100.
pub(super) fn percentage(value: f64) -> Result<(), String> {
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        return Err(format!("percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"));
    }
    Ok(())
}

/// An integer percentage, 0 to 100.
pub(super) fn percent(value: i64) -> Result<(), String> {
    if (0..=100).contains(&value) {
        Ok(())
    } else {
        Err(format!("percentage {value} is not in range 0..100"))
    }
}

/// A regex as Envoy will run it: RE2 syntax, at most 1024 characters.
///
/// The `regex` crate accepts the RE2 syntax Go's `regexp` does, with two known differences:
/// `\Q…\E` quoting (RE2 only: refused here) and counted repetitions above 1000 (refused by RE2
/// only: checked here on the parsed pattern). The size limit keeps compiling bounded.
pub(super) fn regex(pattern: &str, at: &str) -> Result<(), String> {
    if pattern.len() > REGEX_MAX_LEN {
        return Err(format!("{at:?}: regex is too large, max length allowed is {REGEX_MAX_LEN}"));
    }
    if let Ok(ast) = regex_syntax::ast::parse::Parser::new().parse(pattern) {
        regex_syntax::ast::visit(&ast, Re2RepeatLimit).map_err(|reason| {
            format!(
                "{at:?}: {reason}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)"
            )
        })?;
    }
    let refused = |reason: &str| {
        format!("{at:?}: {reason}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)")
    };
    // The syntax as the `regex` crate parses it (the same defaults), then only the automaton whose
    // size the limit is about: the matcher builds the full regex (DFA, prefilters) on first use,
    // and building it here as well made validation the largest cost of a reload of many regexes.
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .map_err(|err| refused(err.to_string().lines().last().unwrap_or_default().trim()))?;
    if NFA_COMPILER.with(|compiler| compiler.build_from_hir(&hir).is_ok()) {
        Ok(())
    } else {
        Err(refused(&format!("Compiled regex exceeds size limit of {REGEX_MAX_NFA_BYTES} bytes.")))
    }
}

thread_local! {
    /// The size check's compiler, kept for the next regex: a new one allocates and fills a
    /// 10,000-entry cache of UTF-8 states (≈ 400 KiB) for its first Unicode class (`.` is one),
    /// which made that fill most of the cost of validating many regexes. What it keeps between
    /// patterns is that cache and the largest NFA seen, at most [`REGEX_MAX_NFA_BYTES`].
    static NFA_COMPILER: regex_automata::nfa::thompson::Compiler = size_check_compiler();
}

/// A compiler that refuses NFAs over [`REGEX_MAX_NFA_BYTES`].
fn size_check_compiler() -> regex_automata::nfa::thompson::Compiler {
    let mut compiler = regex_automata::nfa::thompson::Compiler::new();
    compiler.configure(regex_automata::nfa::thompson::Config::new().nfa_size_limit(Some(REGEX_MAX_NFA_BYTES)));
    compiler
}

/// The largest compiled program a route regex may have (1 MiB; the `regex` crate's default is 10).
const REGEX_MAX_NFA_BYTES: usize = 1 << 20;

/// RE2 refuses counted repetitions above 1000 (`a{1001}`); the `regex` crate would take them.
struct Re2RepeatLimit;

impl regex_syntax::ast::Visitor for Re2RepeatLimit {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, ast: &regex_syntax::ast::Ast) -> Result<(), String> {
        use regex_syntax::ast::{Ast, RepetitionKind, RepetitionRange};
        const RE2_MAX_REPEAT: u32 = 1000;
        if let Ast::Repetition(repetition) = ast {
            if let RepetitionKind::Range(range) = &repetition.op.kind {
                let largest = match *range {
                    RepetitionRange::Exactly(n) | RepetitionRange::AtLeast(n) => n,
                    RepetitionRange::Bounded(_, m) => m,
                };
                if largest > RE2_MAX_REPEAT {
                    return Err(format!("invalid repeat count: {{{largest}}} (RE2 allows at most {RE2_MAX_REPEAT})"));
                }
            }
        }
        Ok(())
    }
}

/// Labels as Kubernetes allows them (`prefix/name` keys, values up to 63 characters).
pub(super) fn labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, value) in labels {
        match LABEL_KEY_RE.captures(key) {
            None => errors.push(format!("invalid tag key: {key:?}")),
            Some(caps) => {
                if caps.get(1).is_some_and(|prefix| prefix.len() - 1 > 253) {
                    errors.push(format!("invalid tag key: {key:?} (DNS prefix is too long)"));
                }
                if caps.get(2).is_some_and(|name| name.len() > DNS1123_LABEL_MAX) {
                    errors.push(format!("invalid tag key: {key:?} (name is too long)"));
                }
            }
        }
        // Istio checks the characters of a value, not its length.
        if !LABEL_VALUE_RE.is_match(value) {
            errors.push(format!("invalid tag value: {value:?}"));
        }
    }
    errors
}

/// A header name made of RFC 7230 token characters.
pub(super) fn is_header_token(name: &str) -> bool {
    HEADER_NAME_RE.is_match(name)
}

/// `@request.auth.claims.a.b` or `@request.auth.claims[a][b]`: a JWT claim, routable on gateways.
pub(super) fn is_jwt_claim(name: &str) -> bool {
    let Some(head) = name.get(..JWT_CLAIM_PREFIX.len()) else { return false };
    if !head.eq_ignore_ascii_case(JWT_CLAIM_PREFIX) {
        return false;
    }
    let rest = &name[JWT_CLAIM_PREFIX.len()..];
    (rest.starts_with('.') && rest.len() > 1) || (rest.starts_with('[') && rest.ends_with(']') && rest.len() > 2)
}

/// HTTP/2 pseudo-headers a match may name.
pub(super) const PSEUDO_HEADERS: &[&str] = &[":method", ":scheme", ":authority", ":path", ":status"];

/// A header name in `match.headers` / `withoutHeaders`.
pub(super) fn match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim(name) || PSEUDO_HEADERS.contains(&name) || is_header_token(name) {
        return Ok(());
    }
    Err(format!("header name {name} is not a valid header name"))
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

/// `:authority` or `Host`.
pub(super) fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// A header set or added on the request: `Host`/`:authority` allowed (they rewrite the authority).
pub(super) fn request_set_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_internal_header(name) && !is_authority_header(name) {
        return Err(format!("invalid header {name:?}: header cannot have \":\" prefix"));
    }
    Ok(())
}

/// A header removed from the request, or changed on the response.
pub(super) fn header_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if is_internal_header(name) {
        return Err(format!("invalid header {name:?}: header cannot have \":\" prefix"));
    }
    Ok(())
}

/// A header name in a CORS policy: a token or `*`.
pub(super) fn cors_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name == "*" || is_header_token(name) {
        return Ok(());
    }
    Err(format!("header name {name} is not a valid header name"))
}

/// A header value Envoy accepts: no control characters, `%` only as `%%` or around a
/// `%VARIABLE%` / `%VARIABLE(args)%` command.
pub(super) fn header_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}')) {
        return Err(format!("header value configuration {value} is invalid"));
    }
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('%') {
            rest = escaped;
            continue;
        }
        if after.is_empty() {
            return Err("header value configuration: invalid header configuration. Un-escaped %".into());
        }
        // A command: its name runs to the closing `%`, arguments in parentheses may hold `%`.
        let close = match after.find(['%', '(']) {
            Some(i) if after.as_bytes()[i] == b'(' => after[i..].find(")%").map(|j| i + j + 1),
            found => found,
        };
        match close {
            Some(end) => rest = &after[end + 1..],
            None => {
                return Err(format!(
                "header value configuration: invalid header configuration. Un-terminated variable expression '{value}'"
            ))
            }
        }
    }
    Ok(())
}

/// An IP address or CIDR block.
pub(super) fn ip_subnet(subnet: &str) -> Result<(), String> {
    if subnet.matches('/').count() == 1 {
        let (ip, len) = subnet.split_once('/').unwrap_or_default();
        let max = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return Err(format!("{subnet} is not a valid CIDR block")),
        };
        let valid_len = !len.is_empty()
            && len.bytes().all(|b| b.is_ascii_digit())
            && !(len.len() > 1 && len.starts_with('0'))
            && len.parse::<u32>().is_ok_and(|n| n <= max);
        return if valid_len { Ok(()) } else { Err(format!("{subnet} is not a valid CIDR block")) };
    }
    if is_ip(subnet) {
        Ok(())
    } else {
        Err(format!("{subnet} is not a valid IP"))
    }
}

/// `exportTo`: `.`, `*`, `~` (ServiceEntry only) or namespaces, without duplicates or mixes.
pub(super) fn export_to(
    namespace: &str,
    entries: &[String],
    service_entry: bool,
    selects_workloads: bool,
) -> Vec<String> {
    let mut errors = Vec::new();
    if entries.is_empty() {
        return errors;
    }
    let mut seen: Vec<&str> = Vec::new();
    for entry in entries {
        let key = if entry == "." { namespace } else { entry.as_str() };
        if seen.contains(&key) {
            errors.push(if key != entry {
                format!("duplicate entries in exportTo: . and current namespace {namespace}")
            } else {
                format!("duplicate entries in exportTo for entry {entry}")
            });
            continue;
        }
        if service_entry && entry == "~" {
            seen.push(key);
            continue;
        }
        match key {
            "." | "*" => seen.push(key),
            "~" => errors.push("exportTo ~ (none) is not allowed for Istio configuration objects".into()),
            _ if is_dns1123_label(key) => seen.push(key),
            _ => errors.push("only .,*, or a valid DNS 1123 label is allowed as exportTo entry".into()),
        }
    }
    if selects_workloads && !seen.is_empty() {
        if seen.contains(&namespace) {
            if seen.len() > 1 {
                errors.push("destination rule with workload selector cannot have multiple entries in exportTo".into());
            }
        } else {
            errors.push("destination rule with workload selector cannot have exportTo beyond current namespace".into());
        }
    }
    if seen.contains(&"*") && entries.len() > 1 {
        errors.push("cannot have both public (*) and non-public exportTo values for a resource".into());
    }
    if seen.contains(&"~") && entries.len() > 1 {
        errors.push("cannot export service entry to no one (~) and someone".into());
    }
    errors
}

/// Gateway names of a VirtualService or match: `namespace/name`, or a legacy single name.
/// Returns `(errors, warnings)`.
pub(super) fn gateway_names(names: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for name in names {
        let Some((namespace, gateway)) = name.split_once('/') else {
            if let Some((first, rest)) = name.split_once('.') {
                let second = rest.split('.').next().unwrap_or_default();
                warnings.push(format!(
                    "using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: \"{second}/{first}\""
                ));
            }
            if let Err(e) = fqdn(name) {
                errors.push(e);
            }
            // Istio stops at the first name without a namespace; so do we, to agree with it.
            return (errors, warnings);
        };
        if namespace.is_empty() || gateway.is_empty() {
            errors.push("config namespace and gateway name cannot be empty".into());
        }
        if !is_dns1123_label(namespace) {
            errors.push(format!("invalid value for namespace: {namespace:?}"));
        }
        if !is_dns1123_label(gateway) {
            errors.push(format!("invalid value for gateway name: {gateway:?}"));
        }
    }
    (errors, warnings)
}

/// Port names: DNS-1123 labels.
pub(super) fn port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name}"))
    }
}

/// Protocols Istio knows (case-insensitive); empty means "sniff".
pub(super) fn protocol(name: &str) -> Result<(), String> {
    if name.is_empty() || Protocol::parse(name).is_some() {
        Ok(())
    } else {
        Err(format!("unsupported protocol: {name}"))
    }
}

/// The protocols Istio names for ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    MySql,
}

impl Protocol {
    /// `None` for a name Istio does not know.
    pub(super) fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "http" => Self::Http,
            "http_proxy" => Self::HttpProxy,
            "http2" => Self::Http2,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::MySql,
            _ => return None,
        })
    }

    /// Carried over HTTP (the Host header tells services apart).
    pub(super) fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc | Self::GrpcWeb | Self::HttpProxy)
    }

    /// TLS (SNI tells services apart).
    pub(super) fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }

    /// Proxied as TCP.
    pub(super) fn is_tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Https | Self::Tls | Self::Mongo | Self::Redis | Self::MySql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(wildcard_domain("*.example.com").is_ok());
        assert!(wildcard_domain("*").is_ok());
        assert!(wildcard_domain("*-foo.Example.com").is_ok());
        assert!(wildcard_domain("foo.*.com").is_err());
        assert!(wildcard_domain("example.123").is_err());
        assert!(wildcard_domain("istio.io.").is_ok());
        assert!(wildcard_domain("").is_err());
        assert!(fqdn("*.example.com").is_err());
        assert!(hosts_overlap("*.foo.com", "*.com") && hosts_overlap("a.foo.com", "*.foo.com"));
        assert!(!hosts_overlap("a.com", "b.com"));
    }

    #[test]
    fn labels_and_headers() {
        let ok = [("app.kubernetes.io/name".to_owned(), "v1".to_owned())];
        assert!(labels(ok.iter().map(|(k, v)| (k, v))).is_empty());
        let bad = [("a b".to_owned(), "-x".to_owned())];
        assert_eq!(labels(bad.iter().map(|(k, v)| (k, v))).len(), 2);
        assert!(header_value("100%%").is_ok() && header_value("%HOSTNAME%").is_ok());
        assert!(header_value("abc%").is_err() && header_value("abc%123").is_err() && header_value("a\nb").is_err());
        assert!(is_jwt_claim("@request.auth.claims.sub") && is_jwt_claim("@request.auth.claims[a][b]"));
        assert!(!is_jwt_claim("@request.auth.claims."));
    }

    #[test]
    fn durations_regexes_subnets() {
        assert!(duration("1ms").is_ok() && duration("1m30s").is_ok());
        assert!(duration("0s").is_err() && duration("1500us").is_err() && duration("500us").is_err());
        assert!(duration("1d").is_err() && duration("5 s").is_err() && parse_duration("0").is_ok());
        assert!(regex("a.*b", "uri").is_ok() && regex("(", "uri").is_err());
        assert!(regex(&"a".repeat(1025), "uri").is_err());
        assert!(regex("a{1000}", "uri").is_ok() && regex("a{2,1001}", "uri").is_err());
        // Within RE2's repetition limits, too large once compiled; the syntax error's own line.
        assert!(regex(r"(?:\w{1000}){1000}", "uri").is_err_and(|e| e.contains("exceeds size limit of 1048576")));
        assert!(regex("a(", "uri").is_err_and(|e| e.contains("unclosed group")));
        // Escaped punctuation is RE2 syntax too.
        assert!(regex(r"^\/api\/[a-z\-_]+\.json$", "uri").is_ok() && regex(r"\_\/\:", "uri").is_ok());
        assert!(ip_subnet("10.0.0.0/8").is_ok() && ip_subnet("::1").is_ok());
        assert!(ip_subnet("10.0.0.0/33").is_err() && ip_subnet("nope").is_err());
    }

    #[test]
    fn the_kept_size_check_compiler_decides_every_regex_as_a_new_one_would() {
        let new_compiler = |pattern: &str| {
            let hir = regex_syntax::Parser::new().parse(pattern).expect("valid syntax");
            size_check_compiler().build_from_hir(&hir).is_ok()
        };
        // Around the limit, in an order where each refusal is followed by a pattern just under it.
        let mut outcomes = std::collections::BTreeSet::new();
        for repeat in [10, 1000, 20, 900, 40, 700, 80, 500, 160, 300] {
            for pattern in [format!(r"(?:\w{{{repeat}}}){{{repeat}}}"), format!(".*beta-tester.{{{repeat}}}É")] {
                let kept = regex(&pattern, "uri").is_ok();
                assert_eq!(kept, new_compiler(&pattern), "{pattern}");
                outcomes.insert(kept);
            }
        }
        assert_eq!(outcomes.len(), 2, "both accepted and refused patterns are tried");
    }
}
