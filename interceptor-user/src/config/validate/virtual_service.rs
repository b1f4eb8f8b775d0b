//! VirtualService rules: hosts and gateways, delegates, and every field of http, tls and tcp routes.

use super::rules;
use super::{Findings, Validate};
use crate::config::{
    Destination, Headers, HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute,
    HttpRouteDestination, ObjectMeta, RouteDestination, StringMatch, TcpRoute, TlsRoute, VirtualService,
};

/// The gateway name that means "sidecars".
const MESH_GATEWAY: &str = "mesh";
/// Methods a CORS policy may allow (Go's `net/http` method names, and `*`).
const CORS_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"];
/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` conditions.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];
/// Direct response bodies above this are refused, above a tenth of it warned about.
const DIRECT_RESPONSE_MAX_BYTES: usize = 1024 * 1024;
const DIRECT_RESPONSE_WARN_BYTES: usize = 100 * 1024;

impl Validate for VirtualService {
    fn validate(&self, meta: &ObjectMeta, f: &mut Findings<'_>) {
        let tls = self.tls.as_deref().unwrap_or_default();
        let is_delegate = self.hosts.is_empty();
        if is_delegate {
            if !self.gateways.is_empty() {
                f.error("spec.gateways", "delegate virtual service must have no gateways specified");
            }
            if !tls.is_empty() {
                f.error("spec.tls", "delegate virtual service must have no tls route specified");
            }
            if !self.tcp.is_empty() {
                f.error("spec.tcp", "delegate virtual service must have no tcp route specified");
            }
        }
        let to_gateway = !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == MESH_GATEWAY);
        if !self.gateways.is_empty() {
            gateway_names(&self.gateways, "spec.gateways", f);
        }
        if !to_gateway {
            jwt_claims_need_a_gateway(self, f);
        }
        hosts(self, to_gateway, tls, f);
        if self.http.is_empty() && self.tcp.is_empty() && tls.is_empty() {
            f.error("spec", "http, tcp or tls must be provided in virtual service");
        }
        for (i, route) in self.http.iter().enumerate() {
            http_route(route, &format!("spec.http[{i}]"), is_delegate, f);
        }
        for (i, route) in tls.iter().enumerate() {
            tls_route(route, self, to_gateway, &format!("spec.tls[{i}]"), f);
        }
        for (i, route) in self.tcp.iter().enumerate() {
            tcp_route(route, &format!("spec.tcp[{i}]"), f);
        }
        f.errors(|| "spec.exportTo".into(), rules::export_to(&meta.namespace, &self.export_to, false, false));
    }
}

fn gateway_names(names: &[String], at: &str, f: &mut Findings<'_>) {
    let (errors, warnings) = rules::gateway_names(names);
    f.errors(|| at.to_owned(), errors);
    for warning in warnings {
        f.warning(at, warning);
    }
}

/// Routing on JWT claims happens in gateways only.
fn jwt_claims_need_a_gateway(vs: &VirtualService, f: &mut Findings<'_>) {
    let gateways = format!("[{}]", vs.gateways.join(" "));
    for (i, route) in vs.http.iter().enumerate() {
        for (j, m) in route.matches.iter().enumerate() {
            for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
                for key in map.keys().filter(|k| rules::is_jwt_claim(k)) {
                    f.error(
                        format!("spec.http[{i}].match[{j}].{field}.{key}"),
                        format!(
                            "JWT claim based routing (key: {key}) is only supported for gateway, found no gateways: {gateways}"
                        ),
                    );
                }
            }
        }
    }
}

fn hosts(vs: &VirtualService, to_gateway: bool, tls: &[TlsRoute], f: &mut Findings<'_>) {
    let sni = tls.iter().any(|r| r.matches.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_valid = true;
    for (i, host) in vs.hosts.iter().enumerate() {
        let checked = if to_gateway { rules::gateway_domain(sni, host) } else { rules::wildcard_domain(host) };
        match checked {
            Err(e) if !rules::is_ip(host) => {
                f.error(format!("spec.hosts[{i}]"), e);
                all_valid = false;
            }
            Err(_) => {}
            Ok(()) if !to_gateway && host == "*" => {
                f.error(
                    format!("spec.hosts[{i}]"),
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_valid = false;
            }
            Ok(()) => {}
        }
    }
    if !all_valid {
        return;
    }
    for (i, a) in vs.hosts.iter().enumerate() {
        for b in &vs.hosts[i + 1..] {
            if rules::hosts_overlap(a, b) {
                f.error(format!("spec.hosts[{i}]"), format!("duplicate hosts in virtual service: {a} & {b}"));
            }
        }
    }
}

fn http_route(route: &HttpRoute, at: &str, in_delegate: bool, f: &mut Findings<'_>) {
    conflicts(route, at, in_delegate, f);
    for (j, m) in route.matches.iter().enumerate() {
        match_request(m, &format!("{at}.match[{j}]"), f);
    }
    header_operations(route.headers.as_ref(), &format!("{at}.headers"), f);
    if let Some(cors) = &route.cors_policy {
        cors_policy(cors, &format!("{at}.corsPolicy"), f);
    }
    if let Some(fault) = &route.fault {
        fault_injection(fault, &format!("{at}.fault"), f);
    }
    if let Some(percent) = route.mirror_percent {
        if percent > 100 {
            f.error(
                format!("{at}.mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {percent})"),
            );
        }
        f.warning(
            format!("{at}.mirrorPercent"),
            r#"using deprecated setting "mirrorPercent", use "mirrorPercentage" instead"#,
        );
    }
    if let Some(percentage) = &route.mirror_percentage {
        mirror_percentage(percentage.value, "mirror_percentage", &format!("{at}.mirrorPercentage.value"), f);
    }
    if let Some(mirror) = &route.mirror {
        destination(mirror, &format!("{at}.mirror"), f);
    }
    for (k, mirror) in route.mirrors.iter().enumerate() {
        let mat = format!("{at}.mirrors[{k}]");
        destination(&mirror.destination, &format!("{mat}.destination"), f);
        if let Some(percentage) = &mirror.percentage {
            mirror_percentage(percentage.value, "mirror percentage", &format!("{mat}.percentage.value"), f);
        }
    }
    if let Some(redirect) = &route.redirect {
        f.check(format!("{at}.redirect"), http_redirect(redirect, &route.matches));
        if redirect.prefix_rewrite.as_deref().is_some_and(|p| !p.is_empty()) {
            f.not_supported(format!("{at}.redirect.prefixRewrite"));
        }
    }
    if let Some(direct) = &route.direct_response {
        let size = match &direct.body {
            Some(body) => {
                body.string.as_ref().map_or(0, String::len) + body.bytes.as_ref().map_or(0, |b| b.len() / 4 * 3)
            }
            None => 0,
        };
        if size > DIRECT_RESPONSE_MAX_BYTES {
            f.error(
                format!("{at}.directResponse.body"),
                "large direct_responses may impact control plane performance, must be less than 1MB",
            );
        } else if size > DIRECT_RESPONSE_WARN_BYTES {
            f.warning(
                format!("{at}.directResponse.body"),
                "large direct_responses may impact control plane performance",
            );
        }
        if let Some(body) = &direct.body {
            if body.string.is_some() && body.bytes.is_some() {
                f.error(format!("{at}.directResponse.body"), "only one of string or bytes may be set");
            }
        }
        f.check(format!("{at}.directResponse.status"), http_status(i64::from(direct.status)));
    }
    if let Some(retries) = &route.retries {
        http_retry(retries, &format!("{at}.retries"), f);
    }
    if let Some(rewrite) = &route.rewrite {
        f.check(format!("{at}.rewrite"), http_rewrite(rewrite));
    }
    f.check(format!("{at}.rewrite.authority"), authority_set_once(route.rewrite.as_ref(), route.headers.as_ref()));
    http_route_destinations(&route.route, at, f);
    if let Some(timeout) = &route.timeout {
        f.check(format!("{at}.timeout"), rules::duration(timeout));
    }
}

/// Which actions a rule may combine, by its place: a root (delegating) rule, a rule of a
/// delegate, or an ordinary one.
fn conflicts(route: &HttpRoute, at: &str, in_delegate: bool, f: &mut Findings<'_>) {
    let has_route = !route.route.is_empty();
    if !in_delegate && route.delegate.is_some() {
        if route.redirect.is_some() {
            f.error(format!("{at}.redirect"), format!("root HTTP route {} must not specify redirect", route.name));
        }
        if has_route {
            f.error(format!("{at}.route"), format!("root HTTP route {} must not specify route", route.name));
        }
        return;
    }
    if in_delegate && route.delegate.is_some() {
        f.error(format!("{at}.delegate"), "delegate HTTP route cannot contain delegate");
    }
    // Reported at the rule: the rule is what combines them.
    let combined: &[(bool, &str)] = if route.redirect.is_some() {
        &[
            (has_route, "HTTP route cannot contain both route and redirect"),
            (route.fault.is_some(), "HTTP route cannot contain both fault and redirect"),
            (route.rewrite.is_some(), "HTTP route rule cannot contain both rewrite and redirect"),
            (route.direct_response.is_some(), "HTTP route rule cannot contain both direct_response and redirect"),
        ]
    } else if route.direct_response.is_some() {
        &[
            (has_route, "HTTP route cannot contain both route and direct_response"),
            (route.fault.is_some(), "HTTP route cannot contain both fault and direct_response"),
            (route.rewrite.is_some(), "HTTP route rule cannot contain both rewrite and direct_response"),
        ]
    } else {
        &[]
    };
    for (set, message) in combined {
        if *set {
            f.error(at.to_owned(), *message);
        }
    }
    if route.redirect.is_none() && route.direct_response.is_none() && !has_route {
        f.error(
            at.to_owned(),
            "HTTP route, redirect or direct_response is required (a rule needs one of route, redirect, directResponse, delegate)",
        );
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        f.error(format!("{at}.mirrors"), "HTTP route cannot contain both mirror and mirrors");
    }
}

fn match_request(m: &HttpMatchRequest, at: &str, f: &mut Findings<'_>) {
    for (name, sm) in &m.headers {
        let hat = format!("{at}.headers.{name}");
        f.check(&hat, rules::match_header_name(name));
        string_match(sm, "headers", &hat, f);
        pseudo_header_not_seen(name, &hat, f);
    }
    for (name, sm) in &m.without_headers {
        let hat = format!("{at}.withoutHeaders.{name}");
        f.check(&hat, rules::match_header_name(name));
        // `regex: "*"` is not a regex: Istio reads it as "present".
        if sm.regex.as_deref() != Some("*") {
            string_match(sm, "withoutHeaders", &hat, f);
        }
        pseudo_header_not_seen(name, &hat, f);
    }
    // An empty uri prefix is allowed (Envoy matches every path); not for the other fields.
    if let Some(uri) = &m.uri {
        one_of(uri, &format!("{at}.uri"), f);
        string_match_regex(uri, "uri", &format!("{at}.uri"), f);
    }
    for (field, sm) in [("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)] {
        if let Some(sm) = sm {
            string_match(sm, field, &format!("{at}.{field}"), f);
        }
    }
    for (name, sm) in &m.query_params {
        string_match(sm, "queryParams", &format!("{at}.queryParams.{name}"), f);
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        f.check(format!("{at}.port"), rules::port(u64::from(port)));
    }
    f.errors(|| format!("{at}.sourceLabels"), rules::labels(&m.source_labels));
    gateway_names(&m.gateways, &format!("{at}.gateways"), f);
    if !m.source_namespace.is_empty() && !rules::is_dns1123_label(&m.source_namespace) {
        f.error(format!("{at}.sourceNamespace"), format!("sourceNamespace match {} is invalid", m.source_namespace));
    }
}

/// Pseudo-headers other than `:authority` are not in the request headers the agent sees.
fn pseudo_header_not_seen(name: &str, at: &str, f: &mut Findings<'_>) {
    if name.starts_with(':') && name != ":authority" && rules::PSEUDO_HEADERS.contains(&name) {
        f.warning(at, format!("matching on {name} is not supported yet; this condition never matches"));
    }
}

/// A `StringMatch` is a oneof: at most one kind.
fn one_of(sm: &StringMatch, at: &str, f: &mut Findings<'_>) {
    let kinds = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some()].iter().filter(|k| **k).count();
    if kinds > 1 {
        f.error(at, "only one of exact, prefix or regex may be set");
    }
}

fn string_match(sm: &StringMatch, field: &str, at: &str, f: &mut Findings<'_>) {
    one_of(sm, at, f);
    if sm.prefix.as_deref() == Some("") {
        f.error(at, format!("{field:?}: prefix string match should not be empty"));
    }
    string_match_regex(sm, field, at, f);
}

fn string_match_regex(sm: &StringMatch, field: &str, at: &str, f: &mut Findings<'_>) {
    match sm.regex.as_deref() {
        None => {}
        Some("") => f.error(at, format!("{field:?}: regex string match should not be empty")),
        Some(re) => f.check(at, rules::regex(re, field)),
    }
}

fn header_operations(headers: Option<&Headers>, at: &str, f: &mut Findings<'_>) {
    let Some(headers) = headers else { return };
    type NameRule = fn(&str) -> Result<(), String>;
    // The request may set its authority (`Host`, `:authority`); nothing else may touch those.
    let directions: [(&str, _, NameRule); 2] = [
        ("request", headers.request.as_ref(), rules::request_set_header_name),
        ("response", headers.response.as_ref(), rules::header_operation_name),
    ];
    for (direction, ops, set_name) in directions {
        let Some(ops) = ops else { continue };
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                let hat = format!("{at}.{direction}.{op}.{name}");
                f.check(&hat, set_name(name));
                f.check(&hat, rules::header_value(value));
            }
        }
        for (k, name) in ops.remove.iter().enumerate() {
            f.check(format!("{at}.{direction}.remove[{k}]"), rules::header_operation_name(name));
        }
    }
}

fn cors_policy(cors: &crate::config::CorsPolicy, at: &str, f: &mut Findings<'_>) {
    for (k, origin) in cors.allow_origins.iter().enumerate() {
        let oat = format!("{at}.allowOrigins[{k}]");
        one_of(origin, &oat, f);
        let value = origin.exact.as_deref().or(origin.prefix.as_deref()).or(origin.regex.as_deref()).unwrap_or("");
        if value.is_empty() {
            f.error(&oat, format!("'{value}' is not a valid match type for CORS allow origins"));
        } else {
            string_match_regex(origin, "corsPolicy.allowOrigins", &oat, f);
        }
    }
    for (k, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            f.error(format!("{at}.allowMethods[{k}]"), format!("{method:?} is not a supported HTTP method"));
        }
    }
    for (field, names) in [("allowHeaders", &cors.allow_headers), ("exposeHeaders", &cors.expose_headers)] {
        for (k, name) in names.iter().enumerate() {
            f.check(format!("{at}.{field}[{k}]"), rules::cors_header_name(name));
        }
    }
    if let Some(max_age) = &cors.max_age {
        match rules::duration(max_age) {
            Ok(age) if age.subsec_nanos() > 0 => {
                f.error(format!("{at}.maxAge"), "max_age duration is accurate only to seconds precision")
            }
            other => f.check(format!("{at}.maxAge"), other),
        }
    }
    if let Some(mode) = &cors.unmatched_preflights {
        if !matches!(mode.as_str(), "UNSPECIFIED" | "FORWARD" | "IGNORE") {
            f.error(format!("{at}.unmatchedPreflights"), format!("{mode:?} is not UNSPECIFIED, FORWARD or IGNORE"));
        }
    }
}

fn fault_injection(fault: &HttpFaultInjection, at: &str, f: &mut Findings<'_>) {
    if fault.abort.is_none() && fault.delay.is_none() {
        f.error(at, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(abort) = &fault.abort {
        if let Some(p) = &abort.percentage {
            f.check(format!("{at}.abort.percentage.value"), rules::percentage(p.value));
        }
        let kinds = [abort.http_status.is_some(), abort.grpc_status.is_some(), abort.http2_error.is_some()];
        if kinds.iter().filter(|k| **k).count() > 1 {
            f.error(format!("{at}.abort"), "only one of httpStatus, grpcStatus or http2Error may be set");
        } else if let Some(status) = abort.http_status {
            f.check(format!("{at}.abort.httpStatus"), http_status(status));
        } else if let Some(status) = &abort.grpc_status {
            if !crate::routing::GRPC_CODES.contains(&status.as_str()) {
                f.error(
                    format!("{at}.abort.grpcStatus"),
                    format!(
                        "gRPC status {status:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"
                    ),
                );
            }
        } else if abort.http2_error.is_some() {
            f.error(format!("{at}.abort.http2Error"), "HTTP/2 abort fault injection not supported yet");
        } else {
            f.warning(format!("{at}.abort"), "abort configured, but error type not set");
        }
    }
    if let Some(delay) = &fault.delay {
        if let Some(p) = &delay.percentage {
            f.check(format!("{at}.delay.percentage.value"), rules::percentage(p.value));
        }
        if delay.fixed_delay.is_some() && delay.exponential_delay.is_some() {
            f.error(format!("{at}.delay"), "only one of fixedDelay or exponentialDelay may be set");
        }
        if let Some(fixed) = &delay.fixed_delay {
            f.check(format!("{at}.delay.fixedDelay"), rules::duration(fixed));
        }
        if let Some(exponential) = &delay.exponential_delay {
            f.check(format!("{at}.delay.exponentialDelay"), rules::duration(exponential));
            f.error(format!("{at}.delay.exponentialDelay"), "exponentialDelay not supported yet");
        }
    }
}

fn http_status(status: i64) -> Result<(), String> {
    if (200..=600).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP status {status} is not in range 200-599"))
    }
}

fn mirror_percentage(value: f64, name: &str, at: &str, f: &mut Findings<'_>) {
    if value > 100.0 {
        f.error(at, format!("{name} must have a max value of 100 (it has {value:.6})"));
    }
    if value < 0.0 {
        f.error(at, format!("{name} must have a min value of 0 (it has {value:.6})"));
    }
}

fn destination(d: &Destination, at: &str, f: &mut Findings<'_>) {
    if d.host == "*" {
        f.error(format!("{at}.host"), format!("invalid destination host {}", d.host));
    } else {
        f.check(format!("{at}.host"), rules::wildcard_domain(&d.host));
    }
    if !d.subset.is_empty() && !rules::is_dns1123_label(&d.subset) {
        f.error(format!("{at}.subset"), format!("subset name is invalid: {}", d.subset));
    }
    if let Some(port) = &d.port {
        f.check(format!("{at}.port.number"), rules::port(u64::from(port.number)));
    }
}

/// Istio reports only the first problem of a redirect.
fn http_redirect(r: &HttpRedirect, matches: &[HttpMatchRequest]) -> Result<(), String> {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    if set(&r.uri) && set(&r.prefix_rewrite) {
        return Err("redirect may only specify one of uri or prefix_rewrite".into());
    }
    if set(&r.prefix_rewrite) && matches.iter().any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none())) {
        return Err("redirect prefix_rewrite requires all URI matches to use prefix match type".into());
    }
    if r.port.is_some() && r.derive_port.is_some() {
        return Err("only one of port or derivePort may be set".into());
    }
    if !set(&r.uri)
        && !set(&r.prefix_rewrite)
        && !set(&r.authority)
        && r.port.is_none()
        && r.derive_port.is_none()
        && !set(&r.scheme)
    {
        return Err("redirect must specify URI, authority, scheme, or port".into());
    }
    if let Some(code) = r.redirect_code.filter(|c| *c != 0) {
        if !(300..=399).contains(&code) {
            return Err(format!("{code} is not a valid redirect code, must be 3xx"));
        }
    }
    if let Some(scheme) = r.scheme.as_deref().filter(|s| !s.is_empty()) {
        if scheme != "http" && scheme != "https" {
            return Err(r#"invalid redirect scheme, must be "http" or "https""#.into());
        }
    }
    if let Some(derive) = &r.derive_port {
        if !matches!(derive.as_str(), "FROM_PROTOCOL_DEFAULT" | "FROM_REQUEST_PORT") {
            return Err(format!("{derive:?} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"));
        }
    }
    match r.port {
        Some(port) if port > 0 => rules::port(u64::from(port)),
        _ => Ok(()),
    }
}

fn http_retry(r: &HttpRetry, at: &str, f: &mut Findings<'_>) {
    if r.attempts < 0 {
        f.error(format!("{at}.attempts"), "attempts cannot be negative");
    }
    if r.attempts > i64::from(i32::MAX) {
        f.error(format!("{at}.attempts"), format!("{} is out of range for an int32", r.attempts));
    }
    let retry_on = r.retry_on.as_deref().unwrap_or_default();
    if r.attempts == 0 && (r.per_try_timeout.is_some() || !retry_on.is_empty() || r.retry_remote_localities.is_some()) {
        f.error(at, "http retry policy configured when attempts are set to 0 (disabled)");
    }
    if let Some(timeout) = &r.per_try_timeout {
        f.check(format!("{at}.perTryTimeout"), rules::duration(timeout));
    }
    if !retry_on.is_empty() {
        for policy in retry_on.split(',') {
            if !is_http_status_code(policy) && !RETRY_ON.contains(&policy) {
                f.error(format!("{at}.retryOn"), format!("{policy:?} is not a valid retryOn policy"));
            }
        }
    }
    if let Some(backoff) = &r.backoff {
        f.check(format!("{at}.backoff"), rules::duration(backoff));
    }
}

/// A status code Go's `net/http` has a name for (what Istio accepts in `retryOn`).
fn is_http_status_code(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(code) = digits.parse::<u32>() else { return false };
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

/// Istio reports only the first problem of a rewrite.
fn http_rewrite(r: &HttpRewrite) -> Result<(), String> {
    let uri = r.uri.as_deref().is_some_and(|u| !u.is_empty());
    let authority = r.authority.as_deref().is_some_and(|a| !a.is_empty());
    if uri && r.uri_regex_rewrite.is_some() {
        return Err("rewrite may only contain one of URI or UriRegexRewrite".into());
    }
    if !uri && r.uri_regex_rewrite.is_none() && !authority {
        return Err("rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified".into());
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        if rr.pattern.is_empty() || rr.rewrite.is_empty() {
            return Err(
                "UriRegexRewrite has errors: UriRegexRewrite requires both Rewrite and Match fields to be specified"
                    .into(),
            );
        }
        rules::regex(&rr.pattern, "HTTPRewrite.UriRegexRewrite.Match")
            .map_err(|e| format!("UriRegexRewrite has errors: {e}"))?;
    }
    Ok(())
}

/// The authority may be rewritten in one place only: `rewrite.authority` or a Host header.
fn authority_set_once(rewrite: Option<&HttpRewrite>, headers: Option<&Headers>) -> Result<(), String> {
    let mut current = rewrite.and_then(|r| r.authority.clone()).unwrap_or_default();
    let Some(request) = headers.and_then(|h| h.request.as_ref()) else { return Ok(()) };
    for map in [&request.set, &request.add] {
        for (name, value) in map.iter().filter(|(name, _)| rules::is_authority_header(name)) {
            if !current.is_empty() {
                return Err(format!(
                    "authority header cannot be set multiple times: have {current:?}, attempting to set {value:?} ({name})"
                ));
            }
            current = value.clone();
        }
    }
    Ok(())
}

fn weight(weight: Option<i64>, at: &str, f: &mut Findings<'_>) -> i64 {
    let w = weight.unwrap_or(0);
    if w < 0 {
        f.error(format!("{at}.weight"), format!("weight {w} < 0"));
    }
    if w > i64::from(i32::MAX) {
        f.error(format!("{at}.weight"), format!("weight {w} is out of range for an int32"));
    }
    w
}

fn http_route_destinations(route: &[HttpRouteDestination], at: &str, f: &mut Findings<'_>) {
    let mut total = 0i64;
    for (j, d) in route.iter().enumerate() {
        let dat = format!("{at}.route[{j}]");
        header_operations(d.headers.as_ref(), &format!("{dat}.headers"), f);
        destination(&d.destination, &format!("{dat}.destination"), f);
        total = total.saturating_add(weight(d.weight, &dat, f));
    }
    if route.len() > 1 && total == 0 {
        f.error(format!("{at}.route"), "total destination weight = 0");
    }
}

fn route_destinations(route: &[RouteDestination], at: &str, f: &mut Findings<'_>) {
    let mut total = 0i64;
    for (j, d) in route.iter().enumerate() {
        let dat = format!("{at}.route[{j}]");
        destination(&d.destination, &format!("{dat}.destination"), f);
        total = total.saturating_add(weight(d.weight, &dat, f));
    }
    if route.len() > 1 && total == 0 {
        f.error(format!("{at}.route"), "total destination weight = 0");
    }
}

/// The fields tcp and tls match blocks share.
fn l4_match(
    subnets: &[String],
    port: Option<u32>,
    source_labels: &std::collections::BTreeMap<String, String>,
    gateways: &[String],
    at: &str,
    f: &mut Findings<'_>,
) {
    for (k, subnet) in subnets.iter().enumerate() {
        f.check(format!("{at}.destinationSubnets[{k}]"), rules::ip_subnet(subnet));
    }
    if let Some(port) = port.filter(|p| *p != 0) {
        f.check(format!("{at}.port"), rules::port(u64::from(port)));
    }
    f.errors(|| format!("{at}.sourceLabels"), rules::labels(source_labels));
    gateway_names(gateways, &format!("{at}.gateways"), f);
}

fn tcp_route(route: &TcpRoute, at: &str, f: &mut Findings<'_>) {
    for (j, m) in route.matches.iter().enumerate() {
        let mat = format!("{at}.match[{j}]");
        l4_match(&m.destination_subnets, m.port, &m.source_labels, &m.gateways, &mat, f);
        if m.source_subnet.as_deref().is_some_and(|s| !s.is_empty()) {
            f.not_supported(format!("{mat}.sourceSubnet"));
        }
    }
    if route.route.is_empty() {
        f.error(format!("{at}.route"), "TCP route is required");
    }
    route_destinations(&route.route, at, f);
}

fn tls_route(route: &TlsRoute, vs: &VirtualService, to_gateway: bool, at: &str, f: &mut Findings<'_>) {
    if route.matches.is_empty() {
        f.error(format!("{at}.match"), "TLS route must have at least one match condition");
    }
    for (j, m) in route.matches.iter().enumerate() {
        let mat = format!("{at}.match[{j}]");
        if m.sni_hosts.is_empty() {
            f.error(format!("{mat}.sniHosts"), "TLS match must have at least one SNI host");
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            sni_host(sni, vs, to_gateway, &format!("{mat}.sniHosts[{k}]"), f);
        }
        l4_match(&m.destination_subnets, m.port, &m.source_labels, &m.gateways, &mat, f);
    }
    if route.route.is_empty() {
        f.error(format!("{at}.route"), "TLS route is required");
    }
    route_destinations(&route.route, at, f);
}

fn sni_host(sni: &str, vs: &VirtualService, to_gateway: bool, at: &str, f: &mut Findings<'_>) {
    let checked = if to_gateway { rules::gateway_domain(true, sni) } else { rules::wildcard_domain(sni) };
    if let Err(e) = checked {
        if rules::is_ip(sni) {
            f.warning(
                at,
                format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"),
            );
        } else {
            f.error(at, e);
        }
        return;
    }
    if !vs.hosts.iter().any(|h| rules::host_subset_of(sni, h)) {
        f.error(
            at,
            format!(
                "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                vs.hosts.join(", ")
            ),
        );
    }
}
