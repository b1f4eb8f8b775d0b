//! Wire types of the Istio resources the agent reads (networking.istio.io), field for field.
//!
//! Every struct denies unknown fields: a typo is an error, never a silently ignored rule. Fields of
//! the Istio API the agent does not act on yet are kept as raw values so `validate` can warn.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// `metadata` of any resource.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace`; empty means the agent's default namespace.
    #[serde(default)]
    pub namespace: String,
    /// Labels; unused by routing.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations; unused by routing.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Anything else Kubernetes puts in metadata (uid, resourceVersion …) is accepted and ignored.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `VirtualService.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Destination hosts the rules apply to.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways and sidecars the rules apply to; empty or `mesh` means sidecars (us).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP rules, in order; the first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// TLS rules: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Vec<TlsRoute>>,
    /// TCP rules for non-HTTP ports, in order.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Visibility; everything is visible to a node agent.
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// One `http` rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Rule name, used in logs.
    #[serde(default)]
    pub name: String,
    /// Match blocks, OR-ed; empty matches everything.
    #[serde(default, rename = "match", deserialize_with = "without_nulls")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of routing.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly instead of routing.
    pub direct_response: Option<HttpDirectResponse>,
    /// Take the rules of another VirtualService (one level).
    pub delegate: Option<Delegate>,
    /// Rewrite path and authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Whole-request timeout (Go duration, e.g. `5s`); none by default.
    pub timeout: Option<String>,
    /// Retry policy; Istio retries twice on connect failures and 503 when absent.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to another destination (fire and forget).
    pub mirror: Option<Destination>,
    /// Several mirrors, each with its own percentage.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Deprecated integer percentage for `mirror`.
    pub mirror_percent: Option<u32>,
    /// Percentage of requests mirrored by `mirror`; 100 when absent.
    pub mirror_percentage: Option<Percent>,
    /// CORS.
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation for the whole rule.
    pub headers: Option<Headers>,
}

/// A list whose `null` entries are dropped: Istio skips a null match block (it matches as if
/// absent), and one written by a generator must not refuse the resource.
fn without_nulls<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let entries: Option<Vec<Option<T>>> = Deserialize::deserialize(deserializer)?;
    Ok(entries.into_iter().flatten().flatten().collect())
}

/// `redirect`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replaces the whole path.
    pub uri: Option<String>,
    /// Replaces the authority.
    pub authority: Option<String>,
    /// Replaces the port.
    pub port: Option<u32>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    pub derive_port: Option<String>,
    /// Replaces the scheme.
    pub scheme: Option<String>,
    /// Status code; 301 when absent.
    pub redirect_code: Option<u32>,
    /// Replaces the matched prefix: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
}

/// `directResponse`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// Status code.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// `directResponse.body`: text or base64 bytes.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    /// Text body.
    pub string: Option<String>,
    /// Base64 body.
    pub bytes: Option<String>,
}

/// `delegate`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    pub name: String,
    /// Its namespace; the root's when empty.
    #[serde(default)]
    pub namespace: String,
}

/// `rewrite`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replaces the matched prefix (prefix match) or the whole path.
    pub uri: Option<String>,
    /// Replaces the authority (Host).
    pub authority: Option<String>,
    /// Regex rewrite of the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `uriRegexRewrite`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 regex.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement; `\1` refers to capture groups.
    pub rewrite: String,
}

/// `retries`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Retries allowed (not counting the first try).
    #[serde(default)]
    pub attempts: i64,
    /// Timeout of each try.
    pub per_try_timeout: Option<String>,
    /// Envoy retry conditions, comma-separated.
    pub retry_on: Option<String>,
    /// Locality handling; no effect on one node.
    pub retry_remote_localities: Option<bool>,
    /// Allow retrying on the same host.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries.
    pub backoff: Option<String>,
}

/// `fault`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    pub delay: Option<FaultDelay>,
    /// Answer with an error instead of forwarding.
    pub abort: Option<FaultAbort>,
}

/// `fault.delay`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// How long.
    pub fixed_delay: Option<String>,
    /// Not supported by Istio either.
    pub exponential_delay: Option<String>,
    /// Share of requests delayed.
    pub percentage: Option<Percent>,
    /// Deprecated integer share.
    pub percent: Option<i64>,
}

/// `fault.abort`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status answered.
    pub http_status: Option<i64>,
    /// gRPC status answered (name, e.g. `UNAVAILABLE`).
    pub grpc_status: Option<String>,
    /// HTTP/2 error: not supported.
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    pub percentage: Option<Percent>,
}

/// `{value: 12.5}`: a percentage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// 0 to 100.
    #[serde(default)]
    pub value: f64,
}

/// One of `mirrors`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where copies go.
    pub destination: Destination,
    /// Share of requests copied; 100 when absent.
    pub percentage: Option<Percent>,
}

/// `corsPolicy`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Allowed origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// Allowed methods.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a preflight may be cached.
    pub max_age: Option<String>,
    /// Allow credentials.
    pub allow_credentials: Option<bool>,
    /// `FORWARD` (default) or `IGNORE` preflights whose origin is not allowed.
    pub unmatched_preflights: Option<String>,
}

/// `headers`: request and response manipulation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// On the request sent upstream.
    pub request: Option<HeaderOperations>,
    /// On the response sent downstream.
    pub response: Option<HeaderOperations>,
}

/// `set`, `add`, `remove`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replace.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One `tcp` rule.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRoute {
    /// Match blocks, OR-ed; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// A `tcp` match block.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IP subnets (CIDR or IP).
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Service port.
    pub port: Option<u32>,
    /// Client IP subnet: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_subnet: Option<String>,
    /// Client labels.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Client namespace.
    #[serde(default)]
    pub source_namespace: String,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// One `tls` rule: routes a TLS connection by its ClientHello's SNI (compiled with `tcp` rules).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRoute {
    /// Match blocks, OR-ed.
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// A `tls` match block.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI names to match.
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// Destination IP subnets.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Service port.
    pub port: Option<u32>,
    /// Client labels.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Client namespace.
    #[serde(default)]
    pub source_namespace: String,
}

/// A weighted L4 destination.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative weight.
    pub weight: Option<i64>,
}

/// One `match` block; its fields are AND-ed.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name, used in logs.
    #[serde(default)]
    pub name: String,
    /// Request path (without query).
    pub uri: Option<StringMatch>,
    /// `http` or `https`.
    pub scheme: Option<StringMatch>,
    /// HTTP method.
    pub method: Option<StringMatch>,
    /// Host header (`:authority`).
    pub authority: Option<StringMatch>,
    /// Request headers; keys are lower-case. `{}` means "present".
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Compare `uri` case-insensitively.
    #[serde(default)]
    pub ignore_uri_case: bool,
    /// Service port the request was sent to.
    pub port: Option<u32>,
    /// Labels the client workload must carry.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Namespace of the client workload.
    #[serde(default)]
    pub source_namespace: String,
    /// Gateways this block applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Stat prefix; no effect on routing.
    #[serde(default)]
    pub stat_prefix: String,
}

/// `exact`, `prefix` or `regex`; none of them (`{}`) means "present".
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    /// Whole value equals.
    pub exact: Option<String>,
    /// Value starts with.
    pub prefix: Option<String>,
    /// RE2 regex that must match the whole value.
    pub regex: Option<String>,
}

/// One weighted destination.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative weight; absent means 100 when alone, else 0 (Istio's rule).
    pub weight: Option<i64>,
    /// Header manipulation when this destination is chosen.
    pub headers: Option<Headers>,
}

/// A service (and optionally subset and port).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host, short or fully qualified.
    pub host: String,
    /// Subset name from the host's DestinationRule.
    #[serde(default)]
    pub subset: String,
    /// Service port; needed when the service has several.
    pub port: Option<PortSelector>,
}

/// `port: {number: N}`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    pub number: u32,
}

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRule {
    /// Service host the rule applies to.
    pub host: String,
    /// Policy for the whole service.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets by labels.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Visibility; everything is visible to a node agent.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Workloads the rule applies to: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<MatchLabelsSelector>,
}

/// A named group of endpoints.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Name routes refer to.
    pub name: String,
    /// Labels an endpoint must carry (all of them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule's policy for this subset.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `trafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Endpoint selection.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port policies (only their `tls` is enforced yet).
    pub port_level_settings: Option<Vec<PortTrafficPolicy>>,
    /// Tunnelling: not supported yet.
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol: not supported yet.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// `workloadSelector` of a DestinationRule (`matchLabels`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelsSelector {
    /// Labels a workload must carry.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// `trafficPolicy.tls`: upstream TLS origination.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    pub mode: Option<String>,
    /// Client certificate file (MUTUAL).
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    pub private_key: Option<String>,
    /// CA bundle file.
    pub ca_certificates: Option<String>,
    /// Secret holding the certificates.
    pub credential_name: Option<String>,
    /// Names the server certificate must carry.
    pub subject_alt_names: Option<Vec<String>>,
    /// SNI sent.
    pub sni: Option<String>,
    /// Skip server certificate checks.
    pub insecure_skip_verify: Option<bool>,
    /// Revocation list file: not supported yet.
    pub ca_crl: Option<String>,
}

/// One of `trafficPolicy.portLevelSettings`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port this policy is for.
    pub port: Option<PortSelector>,
    /// Endpoint selection.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    pub tls: Option<ClientTlsSettings>,
}

/// `trafficPolicy.tunnel`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (default) or `POST`.
    pub protocol: Option<String>,
    /// Host of the tunnel proxy.
    #[serde(default)]
    pub target_host: String,
    /// Port of the tunnel proxy.
    #[serde(default)]
    pub target_port: u32,
}

/// `trafficPolicy.proxyProtocol`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// `V1` or `V2`.
    pub version: Option<String>,
}

/// `trafficPolicy.retryBudget`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Share of active requests that may be retries.
    pub percent: Option<f64>,
    /// Retries always allowed.
    pub min_retry_concurrency: Option<u32>,
    /// Window of the budget.
    pub budget_interval: Option<String>,
}

impl TrafficPolicy {
    /// Names of the Istio fields set here that the agent does not enforce yet.
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        [
            ("tunnel", self.tunnel.is_some()),
            ("proxyProtocol", self.proxy_protocol.is_some()),
            ("retryBudget", self.retry_budget.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// `connectionPool`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// `connectionPool.tcp`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Most connections to the whole cluster.
    pub max_connections: Option<i64>,
    /// Connect timeout (Go duration).
    pub connect_timeout: Option<String>,
    /// Keepalive: not supported yet.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Connection lifetime: not supported yet.
    pub max_connection_duration: Option<String>,
    /// Idle timeout of TCP proxying: not supported yet.
    pub idle_timeout: Option<String>,
}

/// `connectionPool.http`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Requests that may wait for a connection.
    pub http1_max_pending_requests: Option<i64>,
    /// Requests in flight to the cluster.
    pub http2_max_requests: Option<i64>,
    /// Requests per upstream connection; 1 disables keep-alive.
    pub max_requests_per_connection: Option<i64>,
    /// Retries in flight: not supported yet.
    pub max_retries: Option<i64>,
    /// Idle timeout of upstream connections.
    pub idle_timeout: Option<String>,
    /// `DEFAULT`, `DO_NOT_UPGRADE`, `UPGRADE`: not supported yet.
    pub h2_upgrade_policy: Option<String>,
    /// Use the client's protocol upstream: not supported yet.
    pub use_client_protocol: Option<bool>,
    /// HTTP/2 streams per connection: not supported yet.
    pub max_concurrent_streams: Option<i64>,
    /// HTTP/2 keepalive pings: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Http2Keepalive>,
}

/// `connectionPool.tcp.tcpKeepalive`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped.
    pub probes: Option<u32>,
    /// Idle time before probing.
    pub time: Option<String>,
    /// Time between probes.
    pub interval: Option<String>,
}

/// `connectionPool.http.http2KeepAlive`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Http2Keepalive {
    /// Time between pings.
    pub interval: Option<String>,
    /// Time to wait for a ping's answer.
    pub timeout: Option<String>,
}

/// `outlierDetection`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Deprecated: gateway errors in a row (as `consecutiveGatewayErrors`).
    pub consecutive_errors: Option<i64>,
    /// Gateway errors (502, 503, 504, connect failures) in a row before ejection.
    pub consecutive_gateway_errors: Option<i64>,
    /// 5xx answers (and connect failures) in a row before ejection; Istio's default 5.
    pub consecutive_5xx_errors: Option<i64>,
    /// Local-origin failures: not supported yet.
    pub consecutive_local_origin_failures: Option<i64>,
    /// Split local-origin errors: not supported yet.
    pub split_external_local_origin_errors: Option<bool>,
    /// Analysis interval; 10s by default.
    pub interval: Option<String>,
    /// Ejection time, times the number of ejections; 30s by default.
    pub base_ejection_time: Option<String>,
    /// Most endpoints ejected at once, in percent; 10 by default (at least one).
    pub max_ejection_percent: Option<i64>,
    /// Below this healthy share ejection is ignored; 0 by default.
    pub min_health_percent: Option<i64>,
    /// Status codes counted as errors: not supported yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// `loadBalancer`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality settings: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Zone-aware settings: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    /// Warm-up (deprecated form): not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<String>,
    /// Warm-up: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
}

/// `loadBalancer.localityLbSetting`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Weighted spreading by locality.
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    /// Region failover order.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Labels that order failover.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// On or off.
    pub enabled: Option<bool>,
}

/// One of `localityLbSetting.distribute`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Origin locality.
    #[serde(default)]
    pub from: String,
    /// Destination localities and their weights.
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// One of `failover`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalityFailover {
    /// Origin region.
    #[serde(default)]
    pub from: String,
    /// Region to fail over to.
    #[serde(default)]
    pub to: String,
}

/// `loadBalancer.zoneAwareLbSetting`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    /// On or off.
    pub enabled: Option<bool>,
    /// Region failover order.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Labels that order failover.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Smallest cluster zone awareness applies to.
    pub min_cluster_size: Option<u64>,
}

/// `loadBalancer.warmup`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Warmup {
    /// How long a new endpoint warms up.
    pub duration: Option<String>,
    /// Starting share of traffic, in percent.
    pub minimum_percent: Option<f64>,
    /// Curve of the ramp.
    pub aggression: Option<f64>,
}

/// `loadBalancer.consistentHash`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash on a request header.
    pub http_header_name: Option<String>,
    /// Hash on a cookie (generated when absent and `ttl` is set).
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the client IP.
    pub use_source_ip: Option<bool>,
    /// Hash on a query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash (default).
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<Maglev>,
    /// Deprecated ring size.
    pub minimum_ring_size: Option<u64>,
}

/// `consistentHash.httpCookie`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    pub ttl: Option<String>,
    /// Extra attributes: not supported yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

/// One of `httpCookie.attributes`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CookieAttribute {
    /// Attribute name.
    #[serde(default)]
    pub name: String,
    /// Attribute value.
    pub value: Option<String>,
}

/// `consistentHash.ringHash`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Ring entries; 1024 by default.
    pub minimum_ring_size: Option<u64>,
}

/// `consistentHash.maglev`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    /// Table size (a prime); 65537 by default.
    pub table_size: Option<u64>,
}

/// `loadBalancer.simple`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Istio's default since 1.14.
    #[default]
    LeastRequest,
    /// Deprecated alias of LEAST_REQUEST.
    LeastConn,
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// To the original destination (no load balancing).
    Passthrough,
    /// Unspecified: the default.
    Unspecified,
}

/// `ServiceEntry.spec`: a service, its VIPs and (here) its endpoints.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Host names of the service.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs; connections to these on `ports` are captured.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Service ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `MESH_INTERNAL` or `MESH_EXTERNAL`; no effect here.
    pub location: Option<String>,
    /// `STATIC` (endpoints by IP) is what the agent supports.
    pub resolution: Option<String>,
    /// Endpoints inline.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// Select WorkloadEntries by labels instead of listing endpoints.
    pub workload_selector: Option<WorkloadSelector>,
    /// Visibility; everything is visible to a node agent.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// TLS identities; no effect here.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// A service port.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port clients connect to.
    pub number: u32,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP` …; the agent proxies HTTP/1.1 for now.
    #[serde(default)]
    pub protocol: String,
    /// Port name, used by endpoint port maps.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints when they do not say.
    pub target_port: Option<u32>,
}

/// `workloadSelector`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a WorkloadEntry must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `WorkloadEntry.spec`, also the shape of `ServiceEntry.spec.endpoints[]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP address of the workload.
    #[serde(default)]
    pub address: String,
    /// Port name → port number on this workload.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels subsets select on.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network; no effect here.
    pub network: Option<String>,
    /// Locality; no effect here.
    pub locality: Option<String>,
    /// Load-balancing weight; not used yet.
    pub weight: Option<u32>,
    /// Service account; no effect here.
    pub service_account: Option<String>,
}
