//! DestinationRules: traffic policies (load balancer, pool limits, timeouts, outlier detection)
//! by host and subset, and the clusters built from them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::Compiler;
use crate::config::{self, ClientTlsSettings, DestinationRule, Diagnostic, Resource, Severity, Source, TrafficPolicy};
use crate::endpoints::{qualify_host, Balancer, LimitSettings, OutlierSettings, Policy, Service};
use crate::routing::actions::parse_duration;
use crate::routing::{Cluster, HashKey};
use crate::tls::upstream::{self as upstream_tls, ClusterTls};

/// Envoy's default connect timeout, which Istio keeps.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's default for `connectionPool.tcp.idleTimeout`: a forwarded TCP connection with no byte
/// either way for an hour is closed.
const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `idleTimeout: 0s` turns the timeout off (Istio): a century stands in for "never".
const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Clone, Debug, Default)]
pub(super) struct PolicySettings {
    lb: Option<(Policy, Option<HashKey>)>,
    limits: Option<LimitSettings>,
    connect_timeout: Option<Duration>,
    tcp_idle_timeout: Option<Duration>,
    keep_alive: Option<bool>,
    outlier: Option<OutlierSettings>,
    /// `tls`, with the field path it was read at.
    tls: Option<TlsAt>,
    /// `portLevelSettings[].tls` by port number.
    port_tls: HashMap<u16, TlsAt>,
}

/// A `tls` block and where it is.
#[derive(Clone, Debug)]
struct TlsAt {
    settings: ClientTlsSettings,
    at: String,
}

impl PolicySettings {
    /// Subset settings over the rule's: Istio overrides field by field.
    fn over(&self, base: &PolicySettings) -> PolicySettings {
        PolicySettings {
            lb: self.lb.clone().or_else(|| base.lb.clone()),
            limits: self.limits.or(base.limits),
            connect_timeout: self.connect_timeout.or(base.connect_timeout),
            tcp_idle_timeout: self.tcp_idle_timeout.or(base.tcp_idle_timeout),
            keep_alive: self.keep_alive.or(base.keep_alive),
            outlier: self.outlier.clone().or_else(|| base.outlier.clone()),
            // Per port: see `tls_for`.
            tls: None,
            port_tls: HashMap::new(),
        }
    }

    /// The `tls` of this level for `port`: its `portLevelSettings` entry's over its own.
    fn tls_for(&self, port: u16) -> Option<&TlsAt> {
        self.port_tls.get(&port).or(self.tls.as_ref())
    }
}

pub(super) struct DrInfo<'a> {
    pub(super) resource: &'a Resource<DestinationRule>,
    policy: PolicySettings,
    pub(super) subsets: HashMap<String, (BTreeMap<String, String>, PolicySettings)>,
}

/// DestinationRules by fully qualified host; the first one for a host wins.
pub(super) fn destination_rules<'a>(
    drs: &'a [Resource<DestinationRule>],
    diags: &mut Vec<Diagnostic>,
) -> HashMap<String, DrInfo<'a>> {
    let mut by_host: HashMap<String, DrInfo<'a>> = HashMap::new();
    for dr in drs {
        let src = &dr.source;
        if dr.spec.host.is_empty() {
            diags.push(src.diagnostic(Severity::Error, "spec.host", "a DestinationRule needs a host"));
            continue;
        }
        let host = qualify_host(&dr.spec.host, &dr.meta.namespace).into_owned();
        let policy = dr
            .spec
            .traffic_policy
            .as_ref()
            .map(|p| compile_policy(p, src, "spec.trafficPolicy", diags))
            .unwrap_or_default();
        let mut subsets = HashMap::new();
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if subset.name.is_empty() {
                diags.push(src.diagnostic(Severity::Error, format!("{at}.name"), "a subset needs a name"));
                continue;
            }
            let sp = subset
                .traffic_policy
                .as_ref()
                .map(|p| compile_policy(p, src, &format!("{at}.trafficPolicy"), diags))
                .unwrap_or_default();
            if subsets.insert(subset.name.clone(), (subset.labels.clone(), sp)).is_some() {
                diags.push(src.diagnostic(
                    Severity::Error,
                    format!("{at}.name"),
                    format!("subset {:?} is defined twice", subset.name),
                ));
            }
        }
        if let Some(first) = by_host.get(&host) {
            diags.push(src.diagnostic(
                Severity::Warning,
                "spec.host",
                format!("{host} already has DestinationRule {}; this one is ignored", first.resource.meta.name),
            ));
            continue;
        }
        by_host.insert(host, DrInfo { resource: dr, policy, subsets });
    }
    by_host
}

fn compile_policy(p: &TrafficPolicy, src: &Source, at: &str, diags: &mut Vec<Diagnostic>) -> PolicySettings {
    let mut err =
        |field: String, message: String| diags.push(src.diagnostic(Severity::Error, format!("{at}.{field}"), message));
    let mut out = PolicySettings::default();
    if let Some(lb) = &p.load_balancer {
        match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => err("loadBalancer".into(), "set either simple or consistentHash, not both".into()),
            (Some(simple), None) => out.lb = Some((Policy::from_simple(*simple), None)),
            (None, Some(ch)) => match consistent_hash(ch) {
                Ok(lb) => out.lb = Some(lb),
                Err((field, message)) => err(format!("loadBalancer.consistentHash{field}"), message),
            },
            (None, None) => {}
        }
    }
    if let Some(pool) = &p.connection_pool {
        let positive = |v: Option<i64>, field: &str, err: &mut dyn FnMut(String, String)| -> Option<usize> {
            let v = v?;
            match usize::try_from(v) {
                Ok(0) => None, // proto3's "unset"; Istio refuses only negatives
                Ok(n) => Some(n),
                _ => {
                    err(field.into(), format!("must be > 0, got {v}"));
                    None
                }
            }
        };
        let mut limits = LimitSettings::default();
        if let Some(tcp) = &pool.tcp {
            limits.max_active = positive(tcp.max_connections, "connectionPool.tcp.maxConnections", &mut err);
            if let Some(t) = &tcp.connect_timeout {
                match parse_duration(t) {
                    Ok(d) => out.connect_timeout = Some(d),
                    Err(e) => err("connectionPool.tcp.connectTimeout".into(), e),
                }
            }
            if let Some(t) = &tcp.idle_timeout {
                match parse_duration(t) {
                    Ok(d) if d > Duration::ZERO => out.tcp_idle_timeout = Some(d),
                    Ok(_) => out.tcp_idle_timeout = Some(NO_IDLE_TIMEOUT),
                    Err(e) => err("connectionPool.tcp.idleTimeout".into(), e),
                }
            }
        }
        if let Some(http) = &pool.http {
            let max_requests = positive(http.http2_max_requests, "connectionPool.http.http2MaxRequests", &mut err);
            limits.max_active = match (limits.max_active, max_requests) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            limits.max_pending =
                positive(http.http1_max_pending_requests, "connectionPool.http.http1MaxPendingRequests", &mut err);
            match http.max_requests_per_connection {
                None | Some(0) => {}
                Some(1) => out.keep_alive = Some(false),
                Some(n) if n < 0 => {
                    err("connectionPool.http.maxRequestsPerConnection".into(), format!("must be >= 0, got {n}"))
                }
                Some(_) => {}
            }
            if let Some(t) = &http.idle_timeout {
                if let Err(e) = parse_duration(t) {
                    err("connectionPool.http.idleTimeout".into(), e);
                }
            }
        }
        out.limits = Some(limits);
    }
    if let Some(od) = &p.outlier_detection {
        let count = |v: Option<i64>, field: &str, err: &mut dyn FnMut(String, String)| -> Option<u32> {
            let v = v?;
            u32::try_from(v).map_err(|_| err(field.into(), format!("must be >= 0, got {v}"))).ok()
        };
        let consecutive_5xx = count(od.consecutive_5xx_errors, "outlierDetection.consecutive5xxErrors", &mut err);
        let consecutive_gateway = count(
            od.consecutive_gateway_errors.or(od.consecutive_errors),
            "outlierDetection.consecutiveGatewayErrors",
            &mut err,
        );
        let duration = |v: &Option<String>, field: &str, default: Duration, err: &mut dyn FnMut(String, String)| {
            v.as_deref().map_or(Ok(default), parse_duration).unwrap_or_else(|e| {
                err(field.into(), e);
                default
            })
        };
        let base_ejection =
            duration(&od.base_ejection_time, "outlierDetection.baseEjectionTime", Duration::from_secs(30), &mut err);
        let _interval = duration(&od.interval, "outlierDetection.interval", Duration::from_secs(10), &mut err);
        let max_ejection_percent = match od.max_ejection_percent {
            None => 10,
            Some(v @ 0..=100) => v as u32,
            Some(v) => {
                err("outlierDetection.maxEjectionPercent".into(), format!("must be 0-100, got {v}"));
                10
            }
        };
        out.outlier = Some(OutlierSettings {
            // Envoy's default when neither count is set: 5 consecutive 5xx.
            consecutive_5xx: consecutive_5xx.or(if consecutive_gateway.is_none() { Some(5) } else { None }),
            consecutive_gateway,
            base_ejection,
            max_ejection_percent,
        });
    }
    if let Some(tls) = &p.tls {
        out.tls = Some(TlsAt { settings: tls.clone(), at: format!("{at}.tls") });
    }
    let mut unsupported: Vec<String> = p.unsupported_fields().iter().map(|f| f.to_string()).collect();
    for (k, port_policy) in p.port_level_settings.iter().flatten().enumerate() {
        let pat = format!("portLevelSettings[{k}]");
        if let (Some(tls), Some(port)) = (&port_policy.tls, &port_policy.port) {
            // Validation refuses numbers that are no port.
            if let Ok(number) = u16::try_from(port.number) {
                // The first entry for a port wins, as Istio's lookup does.
                out.port_tls
                    .entry(number)
                    .or_insert_with(|| TlsAt { settings: tls.clone(), at: format!("{at}.{pat}.tls") });
            }
            if tls.ca_crl.is_some() {
                unsupported.push(format!("{pat}.tls.caCrl"));
            }
        }
        for (f, set) in [
            ("loadBalancer", port_policy.load_balancer.is_some()),
            ("connectionPool", port_policy.connection_pool.is_some()),
            ("outlierDetection", port_policy.outlier_detection.is_some()),
        ] {
            if set {
                unsupported.push(format!("{pat}.{f}"));
            }
        }
    }
    if p.tls.as_ref().is_some_and(|t| t.ca_crl.is_some()) {
        unsupported.push("tls.caCrl".into());
    }
    if let Some(pool) = &p.connection_pool {
        if let Some(tcp) = &pool.tcp {
            for (f, set) in [
                ("tcpKeepalive", tcp.tcp_keepalive.is_some()),
                ("maxConnectionDuration", tcp.max_connection_duration.is_some()),
            ] {
                if set {
                    unsupported.push(format!("connectionPool.tcp.{f}"));
                }
            }
        }
        if let Some(http) = &pool.http {
            for (f, set) in [
                ("idleTimeout", http.idle_timeout.is_some()),
                ("maxRetries", http.max_retries.is_some()),
                ("h2UpgradePolicy", http.h2_upgrade_policy.is_some()),
                ("useClientProtocol", http.use_client_protocol.is_some()),
                ("maxConcurrentStreams", http.max_concurrent_streams.is_some()),
                ("maxRequestsPerConnection", http.max_requests_per_connection.is_some_and(|n| n > 1)),
            ] {
                if set {
                    unsupported.push(format!("connectionPool.http.{f}"));
                }
            }
        }
    }
    if let Some(od) = &p.outlier_detection {
        if od.min_health_percent.is_some_and(|v| v > 0)
            || od.consecutive_local_origin_failures.is_some()
            || od.split_external_local_origin_errors.is_some()
        {
            unsupported.push("outlierDetection (minHealthPercent / local-origin settings)".into());
        }
    }
    if let Some(lb) = &p.load_balancer {
        if lb.locality_lb_setting.is_some() || lb.warmup_duration_secs.is_some() {
            unsupported.push("loadBalancer (localityLbSetting / warmupDurationSecs)".into());
        }
    }
    for field in unsupported {
        diags.push(src.diagnostic(Severity::Warning, format!("{at}.{field}"), "not supported yet; ignored"));
    }
    out
}

fn consistent_hash(ch: &config::ConsistentHashLb) -> Result<(Policy, Option<HashKey>), (String, String)> {
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip == Some(true),
        ch.http_query_parameter_name.is_some(),
    ];
    if keys.iter().filter(|k| **k).count() > 1 {
        return Err((
            String::new(),
            "set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName".into(),
        ));
    }
    let key = if let Some(h) = &ch.http_header_name {
        HashKey::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| (".httpHeaderName".to_owned(), format!("{h:?} is not a header name")))?,
        )
    } else if let Some(c) = &ch.http_cookie {
        let ttl = c.ttl.as_deref().map(parse_duration).transpose().map_err(|e| (".httpCookie.ttl".to_owned(), e))?;
        HashKey::Cookie { name: c.name.clone(), path: c.path.clone(), ttl: ttl.filter(|d| !d.is_zero()) }
    } else if let Some(q) = &ch.http_query_parameter_name {
        HashKey::QueryParam(q.clone())
    } else if ch.use_source_ip == Some(true) {
        HashKey::SourceIp
    } else {
        return Ok((Policy::LeastRequest, None)); // no key: Istio hashes nothing, so plain balancing
    };
    let policy = match (&ch.ring_hash, &ch.maglev) {
        (Some(_), Some(_)) => return Err((String::new(), "set either ringHash or maglev, not both".into())),
        (None, Some(m)) => {
            let size = m.table_size.unwrap_or(65537);
            if !is_prime(size) {
                return Err((".maglev.tableSize".into(), format!("{size} is not a prime")));
            }
            Policy::Maglev(size as usize)
        }
        (ring, None) => Policy::RingHash(
            ring.as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .unwrap_or(1024)
                .clamp(1, crate::endpoints::hash::MAX_RING_SIZE) as usize,
        ),
    };
    Ok((policy, Some(key)))
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

impl Compiler<'_> {
    /// The cluster of `subset` (empty: whole service) on `port` of `service`, built once per
    /// compile so rules that share it share its balancer. The subset must exist.
    pub(super) fn cluster(&mut self, service: &Service, port: u16, subset: &str) -> Arc<Cluster> {
        let key = (service.host.to_string(), subset.to_owned(), port);
        if let Some(cluster) = self.clusters.get(&key) {
            return cluster.clone();
        }
        let dr = self.rules.get(&*service.host);
        // Istio's merge: the rule's policy with its port-level settings, then the subset's with
        // its own port-level settings over it.
        let (labels, policy, tls) = match dr {
            None => (BTreeMap::new(), PolicySettings::default(), None),
            Some(dr) => match dr.subsets.get(subset) {
                Some((labels, sp)) => (
                    labels.clone(),
                    sp.over(&dr.policy),
                    sp.tls_for(port)
                        .or_else(|| dr.policy.tls_for(port))
                        .map(|t| (t.clone(), dr.resource.source.clone())),
                ),
                None => (
                    BTreeMap::new(),
                    dr.policy.clone(),
                    dr.policy.tls_for(port).map(|t| (t.clone(), dr.resource.source.clone())),
                ),
            },
        };
        let tls = match tls {
            None => ClusterTls::Plaintext,
            Some((tls, source)) => self.upstream_tls(&tls, &source, &service.host),
        };
        let endpoints = service.port(port).map(|p| service.endpoint_addrs(p, &labels)).unwrap_or_default();
        let (lb, hash_key) = policy.lb.unwrap_or((Policy::LeastRequest, None));
        let name: Arc<str> = cluster_name(&service.host, subset, port).into();
        let state = self.states.cluster(&name);
        let cluster = Arc::new(Cluster {
            name,
            host: service.host.to_string(),
            subset: subset.to_owned(),
            port,
            limits: state.limits(policy.limits.unwrap_or_default()),
            mirror_slots: state.mirror_slots().clone(),
            balancer: Balancer::new(lb, endpoints, policy.outlier, state),
            hash_key,
            connect_timeout: policy.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            tcp_idle_timeout: policy.tcp_idle_timeout.unwrap_or(DEFAULT_TCP_IDLE_TIMEOUT),
            keep_alive: policy.keep_alive.unwrap_or(true),
            tls,
        });
        self.clusters.insert(key, cluster.clone());
        cluster
    }
}

impl Compiler<'_> {
    /// The TLS of a cluster of `host` under the `tls` block `tls`, built once per block and host
    /// (subsets and ports sharing a block share it). Files that do not load are reported once,
    /// apart from the other errors (see [`RouteTable::credential_errors`](crate::routing::RouteTable::credential_errors)),
    /// and the cluster refuses its requests: it never falls back to plaintext.
    fn upstream_tls(&mut self, tls: &TlsAt, source: &Source, host: &str) -> ClusterTls {
        let key = (source.resource.clone(), tls.at.clone(), host.to_owned());
        if let Some(built) = self.tls.get(&key) {
            return built.clone();
        }
        let settings = upstream_tls::Settings { tls: &tls.settings, host, credentials: self.credentials };
        let built = match upstream_tls::build(&settings) {
            Ok(built) => built,
            Err(err) => {
                let field = format!("{}.{}", tls.at, err.field);
                self.credential_errors.push(source.diagnostic(Severity::Error, field.clone(), err.message.clone()));
                ClusterTls::Refused {
                    mode: if tls.settings.mode.as_deref() == Some("MUTUAL") { "MUTUAL" } else { "SIMPLE" },
                    reason: format!("{} {field}: {}", source.resource, err.message).into(),
                }
            }
        };
        self.tls.insert(key, built.clone());
        built
    }
}

pub(super) fn cluster_name(host: &str, subset: &str, port: u16) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65537) && is_prime(251) && !is_prime(65536) && !is_prime(1));
    }
}
