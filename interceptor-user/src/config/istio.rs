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
    pub tls: Option<Value>,
    /// TCP rules: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Value>,
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
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Not supported yet.
    pub redirect: Option<Value>,
    /// Not supported yet.
    pub direct_response: Option<Value>,
    /// Not supported yet.
    pub delegate: Option<Value>,
    /// Not supported yet.
    pub rewrite: Option<Value>,
    /// Not supported yet.
    pub timeout: Option<Value>,
    /// Not supported yet.
    pub retries: Option<Value>,
    /// Not supported yet.
    pub fault: Option<Value>,
    /// Not supported yet.
    pub mirror: Option<Value>,
    /// Not supported yet.
    pub mirrors: Option<Value>,
    /// Not supported yet.
    pub mirror_percent: Option<Value>,
    /// Not supported yet.
    pub mirror_percentage: Option<Value>,
    /// Not supported yet.
    pub cors_policy: Option<Value>,
    /// Not supported yet.
    pub headers: Option<Value>,
}

impl HttpRoute {
    /// Names of the Istio fields set on this rule that the agent does not act on yet.
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        [
            ("redirect", self.redirect.is_some()),
            ("directResponse", self.direct_response.is_some()),
            ("delegate", self.delegate.is_some()),
            ("rewrite", self.rewrite.is_some()),
            ("timeout", self.timeout.is_some()),
            ("retries", self.retries.is_some()),
            ("fault", self.fault.is_some()),
            ("mirror", self.mirror.is_some()),
            ("mirrors", self.mirrors.is_some()),
            ("mirrorPercent", self.mirror_percent.is_some()),
            ("mirrorPercentage", self.mirror_percentage.is_some()),
            ("corsPolicy", self.cors_policy.is_some()),
            ("headers", self.headers.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
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
    /// Header manipulation: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Value>,
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
    pub workload_selector: Option<Value>,
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

/// `trafficPolicy`: the load balancer is acted on; the rest is accepted and not yet enforced.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Endpoint selection.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Not enforced yet.
    pub connection_pool: Option<Value>,
    /// Not enforced yet.
    pub outlier_detection: Option<Value>,
    /// Not enforced yet.
    pub tls: Option<Value>,
    /// Not enforced yet.
    pub port_level_settings: Option<Value>,
    /// Not enforced yet.
    pub tunnel: Option<Value>,
    /// Not enforced yet.
    pub proxy_protocol: Option<Value>,
}

impl TrafficPolicy {
    /// Names of the Istio fields set here that the agent does not enforce yet.
    pub fn unsupported_fields(&self) -> Vec<&'static str> {
        [
            ("connectionPool", self.connection_pool.is_some()),
            ("outlierDetection", self.outlier_detection.is_some()),
            ("tls", self.tls.is_some()),
            ("portLevelSettings", self.port_level_settings.is_some()),
            ("tunnel", self.tunnel.is_some()),
            ("proxyProtocol", self.proxy_protocol.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// `loadBalancer`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Consistent hashing: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<Value>,
    /// Locality settings: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<Value>,
    /// Warm-up: not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Value>,
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
