//! DestinationRule rules: host, subsets, and traffic policies field by field (load balancer,
//! connection pool, outlier detection, TLS, port-level settings, tunnel, PROXY protocol).

use super::rules;
use super::{Findings, Validate};
use crate::config::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, LocalityFailover, ObjectMeta,
    OutlierDetection, TrafficPolicy,
};
use crate::endpoints::hash::MAX_RING_SIZE;

/// Node topology labels, which failover priorities may not name where failover is by region.
const TOPOLOGY_LABELS: &[&str] =
    &["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];
/// Maglev tables must be smaller than this prime.
const MAGLEV_TABLE_LIMIT: u64 = 5_000_011;
/// `credentialName` prefix of certificates read from a ConfigMap.
const CONFIGMAP_CREDENTIAL: &str = "configmap://";

impl Validate for DestinationRule {
    fn validate(&self, meta: &ObjectMeta, f: &mut Findings<'_>) {
        f.check("spec.host", rules::wildcard_domain(&self.host));
        if let Some(policy) = &self.traffic_policy {
            traffic_policy(policy, &meta.namespace, "spec.trafficPolicy", f);
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, subset) in self.subsets.iter().enumerate() {
            let at = format!("spec.subsets[{i}]");
            if names.contains(&subset.name.as_str()) {
                f.error(format!("{at}.name"), format!("duplicate subset names: {}", subset.name));
            }
            names.push(&subset.name);
            if subset.name.is_empty() {
                f.error(format!("{at}.name"), "subset name cannot be empty");
            } else if !rules::is_dns1123_label(&subset.name) {
                f.error(format!("{at}.name"), format!("subset name is invalid: {}", subset.name));
            }
            f.errors(|| format!("{at}.labels"), rules::labels(&subset.labels));
            if let Some(policy) = &subset.traffic_policy {
                traffic_policy(policy, &meta.namespace, &format!("{at}.trafficPolicy"), f);
            }
        }
        let selects_workloads = self.workload_selector.is_some();
        f.errors(
            || "spec.exportTo".into(),
            rules::export_to(&meta.namespace, &self.export_to, false, selects_workloads),
        );
        if let Some(selector) = &self.workload_selector {
            for (key, value) in &selector.match_labels {
                if key.is_empty() {
                    f.error(
                        "spec.workloadSelector.matchLabels",
                        format!("empty key is not supported in selector: \"{key}={value}\""),
                    );
                }
                if key.contains('*') || value.contains('*') {
                    f.error(
                        "spec.workloadSelector.matchLabels",
                        format!("wildcard is not supported in selector: \"{key}={value}\""),
                    );
                }
            }
            if selector.match_labels.is_empty() {
                f.warning("spec.workloadSelector", "workload selector specified without labels");
            }
            f.not_supported("spec.workloadSelector");
        }
    }
}

fn traffic_policy(p: &TrafficPolicy, namespace: &str, at: &str, f: &mut Findings<'_>) {
    let empty = p.outlier_detection.is_none()
        && p.connection_pool.is_none()
        && p.load_balancer.is_none()
        && p.tls.is_none()
        && p.port_level_settings.is_none()
        && p.tunnel.is_none()
        && p.proxy_protocol.is_none()
        && p.retry_budget.is_none();
    if empty {
        f.error(at, "traffic policy must have at least one field");
        return;
    }
    if p.tunnel.is_some() && p.proxy_protocol.is_some() {
        f.error(at, "tunnel and proxyProtocol must not be set together");
        return;
    }
    if let Some(lb) = &p.load_balancer {
        load_balancer(lb, p.outlier_detection.as_ref(), &format!("{at}.loadBalancer"), f);
    }
    if let Some(pool) = &p.connection_pool {
        connection_pool(pool, &format!("{at}.connectionPool"), f);
    }
    if let Some(od) = &p.outlier_detection {
        outlier_detection(od, &format!("{at}.outlierDetection"), f);
    }
    if let Some(tls) = &p.tls {
        client_tls(tls, namespace, &format!("{at}.tls"), f);
    }
    for (k, port_policy) in p.port_level_settings.iter().flatten().enumerate() {
        let pat = format!("{at}.portLevelSettings[{k}]");
        match &port_policy.port {
            None => f.error(format!("{pat}.port"), "portTrafficPolicy must have valid port"),
            Some(port) => f.check(format!("{pat}.port.number"), rules::port(u64::from(port.number))),
        }
        let empty = port_policy.outlier_detection.is_none()
            && port_policy.connection_pool.is_none()
            && port_policy.load_balancer.is_none()
            && port_policy.tls.is_none();
        if empty {
            f.error(&pat, "port traffic policy must have at least one field");
            continue;
        }
        if let Some(od) = &port_policy.outlier_detection {
            outlier_detection(od, &format!("{pat}.outlierDetection"), f);
        }
        if let Some(pool) = &port_policy.connection_pool {
            connection_pool(pool, &format!("{pat}.connectionPool"), f);
        }
        if let Some(lb) = &port_policy.load_balancer {
            load_balancer(lb, port_policy.outlier_detection.as_ref(), &format!("{pat}.loadBalancer"), f);
        }
        if let Some(tls) = &port_policy.tls {
            client_tls(tls, namespace, &format!("{pat}.tls"), f);
        }
    }
    if let Some(tunnel) = &p.tunnel {
        let tat = format!("{at}.tunnel");
        if let Some(protocol) = tunnel.protocol.as_deref().filter(|p| !p.is_empty()) {
            if protocol != "CONNECT" && protocol != "POST" {
                f.error(format!("{tat}.protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"");
            }
        }
        if let Err(e) = rules::fqdn(&tunnel.target_host) {
            if !rules::is_ip(&tunnel.target_host) {
                f.error(
                    format!("{tat}.targetHost"),
                    format!(
                        "tunnel target host must be valid FQDN or IP address: {e}; {} is not a valid IP",
                        tunnel.target_host
                    ),
                );
            }
        }
        if let Err(e) = rules::port(u64::from(tunnel.target_port)) {
            f.error(format!("{tat}.targetPort"), format!("tunnel target port is invalid: {e}"));
        }
    }
    if let Some(proxy_protocol) = &p.proxy_protocol {
        if let Some(version) = proxy_protocol.version.as_deref() {
            if version != "V1" && version != "V2" {
                f.error(format!("{at}.proxyProtocol.version"), format!("proxy protocol version is invalid: {version}"));
            }
        }
    }
    if let Some(budget) = &p.retry_budget {
        if let Some(percent) = budget.percent {
            if !(0.0..=100.0).contains(&percent) {
                f.error(format!("{at}.retryBudget.percent"), format!("percentage {percent} is not in range 0..100"));
            }
        }
        if let Some(interval) = &budget.budget_interval {
            f.check(format!("{at}.retryBudget.budgetInterval"), rules::parse_duration(interval));
        }
    }
}

fn outlier_detection(od: &OutlierDetection, at: &str, f: &mut Findings<'_>) {
    if let Some(t) = &od.base_ejection_time {
        f.check(format!("{at}.baseEjectionTime"), rules::duration(t));
    }
    if od.consecutive_errors.is_some_and(|n| n != 0) {
        f.warning(
            format!("{at}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if od.split_external_local_origin_errors != Some(true)
        && od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        f.error(
            format!("{at}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    for (field, value) in [
        ("consecutiveErrors", od.consecutive_errors),
        ("consecutiveGatewayErrors", od.consecutive_gateway_errors),
        ("consecutive5xxErrors", od.consecutive_5xx_errors),
        ("consecutiveLocalOriginFailures", od.consecutive_local_origin_failures),
    ] {
        // int32 or UInt32Value on the wire.
        let range = if field == "consecutiveErrors" {
            i64::from(i32::MIN)..=i64::from(i32::MAX)
        } else {
            0..=i64::from(u32::MAX)
        };
        if let Some(v) = value.filter(|v| !range.contains(v)) {
            f.error(format!("{at}.{field}"), format!("{v} is out of range"));
        }
    }
    if let Some(t) = &od.interval {
        f.check(format!("{at}.interval"), rules::duration(t));
    }
    f.check(format!("{at}.maxEjectionPercent"), rules::percent(od.max_ejection_percent.unwrap_or(0)));
    f.check(format!("{at}.minHealthPercent"), rules::percent(od.min_health_percent.unwrap_or(0)));
    if !od.outlier_detection_http_error_codes.is_empty() {
        // The CRD's schema bounds each code.
        for (k, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                f.error(
                    format!("{at}.outlierDetectionHttpErrorCodes[{k}]"),
                    format!("{code} is not in range 100..599"),
                );
            }
        }
        f.not_supported(format!("{at}.outlierDetectionHttpErrorCodes"));
    }
}

fn non_negative(value: Option<i64>, field: &str, message: &str, at: &str, f: &mut Findings<'_>) {
    match value {
        Some(v) if v < 0 => f.error(format!("{at}.{field}"), message),
        Some(v) if v > i64::from(i32::MAX) => {
            f.error(format!("{at}.{field}"), format!("{v} is out of range for an int32"))
        }
        _ => {}
    }
}

fn connection_pool(pool: &ConnectionPoolSettings, at: &str, f: &mut Findings<'_>) {
    if pool.http.is_none() && pool.tcp.is_none() {
        f.error(at, "connection pool must have at least one field");
        return;
    }
    if let Some(http) = &pool.http {
        let hat = format!("{at}.http");
        non_negative(
            http.http1_max_pending_requests,
            "http1MaxPendingRequests",
            "http1 max pending requests must be non-negative",
            &hat,
            f,
        );
        non_negative(http.http2_max_requests, "http2MaxRequests", "http2 max requests must be non-negative", &hat, f);
        non_negative(
            http.max_requests_per_connection,
            "maxRequestsPerConnection",
            "max requests per connection must be non-negative",
            &hat,
            f,
        );
        non_negative(http.max_retries, "maxRetries", "max retries must be non-negative", &hat, f);
        non_negative(
            http.max_concurrent_streams,
            "maxConcurrentStreams",
            "max concurrent streams must be non-negative",
            &hat,
            f,
        );
        if let Some(t) = &http.idle_timeout {
            f.check(format!("{hat}.idleTimeout"), rules::duration(t));
        }
        if let Some(policy) = &http.h2_upgrade_policy {
            if !matches!(policy.as_str(), "DEFAULT" | "DO_NOT_UPGRADE" | "UPGRADE") {
                f.error(
                    format!("{hat}.h2UpgradePolicy"),
                    format!("{policy:?} is not DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
                );
            } else if policy == "UPGRADE" && http.use_client_protocol == Some(true) {
                f.error(
                    format!("{hat}.useClientProtocol"),
                    "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
                );
            }
        }
        if let Some(keepalive) = &http.http2_keep_alive {
            match &keepalive.interval {
                None => f.error(format!("{hat}.http2KeepAlive.interval"), "http2 keepalive interval is required"),
                Some(t) => f.check(format!("{hat}.http2KeepAlive.interval"), rules::duration(t)),
            }
            match &keepalive.timeout {
                None => f.error(format!("{hat}.http2KeepAlive.timeout"), "http2 keepalive timeout is required"),
                Some(t) => f.check(format!("{hat}.http2KeepAlive.timeout"), rules::duration(t)),
            }
            f.not_supported(format!("{hat}.http2KeepAlive"));
        }
    }
    if let Some(tcp) = &pool.tcp {
        let tat = format!("{at}.tcp");
        non_negative(tcp.max_connections, "maxConnections", "max connections must be non-negative", &tat, f);
        if let Some(t) = &tcp.connect_timeout {
            f.check(format!("{tat}.connectTimeout"), rules::duration(t));
        }
        if let Some(t) = &tcp.max_connection_duration {
            f.check(format!("{tat}.maxConnectionDuration"), rules::duration(t));
        }
        if let Some(t) = &tcp.idle_timeout {
            // 0s turns the idle timeout off: allowed.
            match rules::parse_duration(t) {
                Ok(d) if d.as_millis() == 0 && d.is_zero() => {}
                _ => f.check(format!("{tat}.idleTimeout"), rules::duration(t)),
            }
        }
        if let Some(keepalive) = &tcp.tcp_keepalive {
            if let Some(t) = &keepalive.time {
                f.check(format!("{tat}.tcpKeepalive.time"), rules::duration(t));
            }
            if let Some(t) = &keepalive.interval {
                f.check(format!("{tat}.tcpKeepalive.interval"), rules::duration(t));
            }
        }
    }
}

fn load_balancer(lb: &LoadBalancerSettings, outlier: Option<&OutlierDetection>, at: &str, f: &mut Findings<'_>) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        f.error(at, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cat = format!("{at}.consistentHash");
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() > 1 {
            f.error(&cat, "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set");
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            f.error(&cat, "only one of ringHash or maglev may be set");
        }
        if let Some(cookie) = &ch.http_cookie {
            if cookie.name.is_empty() {
                f.error(format!("{cat}.httpCookie.name"), "name required for HttpCookie");
            }
            let mut names: Vec<&str> = Vec::new();
            for (k, attribute) in cookie.attributes.iter().enumerate() {
                let aat = format!("{cat}.httpCookie.attributes[{k}].name");
                if attribute.name.is_empty() {
                    f.error(aat, "cookie attribute name cannot be empty");
                } else if names.contains(&attribute.name.as_str()) {
                    f.error(aat, format!("duplicate cookie attribute name: {}", attribute.name));
                } else {
                    names.push(&attribute.name);
                }
            }
            if !cookie.attributes.is_empty() {
                f.not_supported(format!("{cat}.httpCookie.attributes"));
            }
            if let Some(ttl) = &cookie.ttl {
                f.check(format!("{cat}.httpCookie.ttl"), rules::parse_duration(ttl));
            }
        }
        if ch.minimum_ring_size.is_some_and(|n| n != 0) {
            f.warning(
                format!("{cat}.minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                f.error(
                    format!("{cat}.minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        let rings = [
            (format!("{cat}.minimumRingSize"), ch.minimum_ring_size),
            (format!("{cat}.ringHash.minimumRingSize"), ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size)),
        ];
        for (field, size) in rings {
            if size.is_some_and(|n| n > MAX_RING_SIZE) {
                f.warning(
                    field,
                    format!(
                        "rings are capped at {MAX_RING_SIZE} points here (16 bytes each, per cluster; Envoy allows 8388608)"
                    ),
                );
            }
        }
        if let Some(maglev) = &ch.maglev {
            let size = maglev.table_size.unwrap_or(0);
            let mat = format!("{cat}.maglev.tableSize");
            if size == 0 {
                f.error(&mat, "tableSize must be set for maglev");
            }
            if size >= MAGLEV_TABLE_LIMIT {
                f.error(&mat, format!("tableSize must be less than {MAGLEV_TABLE_LIMIT} for maglev"));
            } else if !envoy_is_prime(size) {
                // Only below the limit: trial division of a huge size would take seconds.
                f.error(&mat, "tableSize must be a prime number for maglev");
            }
        }
    }
    if lb.locality_lb_setting.is_some() && lb.zone_aware_lb_setting.is_some() {
        f.error(at, "only one of localityLbSetting and zoneAwareLbSetting can be set");
    }
    if let Some(locality) = &lb.locality_lb_setting {
        locality_lb(locality, outlier, &format!("{at}.localityLbSetting"), f);
    }
    if let Some(zone) = &lb.zone_aware_lb_setting {
        zone_aware_lb(zone, outlier, &format!("{at}.zoneAwareLbSetting"), f);
        if zone.min_cluster_size == Some(0) {
            f.error(format!("{at}.zoneAwareLbSetting.minClusterSize"), "minClusterSize must be at least 1");
        }
        f.not_supported(format!("{at}.zoneAwareLbSetting"));
    }
    if let Some(warmup) = &lb.warmup {
        let wat = format!("{at}.warmup");
        match &warmup.duration {
            None => f.error(format!("{wat}.duration"), "duration is required"),
            Some(d) => f.check(format!("{wat}.duration"), rules::duration(d)),
        }
        if warmup.minimum_percent.is_some_and(|p| p > 100.0) {
            f.error(format!("{wat}.minimumPercent"), "minimumPercent value should be less than or equal to 100");
        }
        if warmup.aggression.is_some_and(|a| a <= 0.0) {
            f.error(format!("{wat}.aggression"), "aggression should be greater than 0");
        }
        f.not_supported(wat);
    }
    if let Some(secs) = &lb.warmup_duration_secs {
        // The CRD's rule: at least 1ms (no precision rule here).
        let checked = rules::parse_duration(secs).and_then(|d| {
            if d < std::time::Duration::from_millis(1) {
                Err("must be a valid duration greater than 1ms".into())
            } else {
                Ok(d)
            }
        });
        f.check(format!("{at}.warmupDurationSecs"), checked);
    }
}

/// Envoy's primality test (1, 2 and 3 count as prime), which Istio copies.
fn envoy_is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    // `d <= x / d` rather than `d * d <= x`: no overflow near u64::MAX.
    (3..).step_by(2).take_while(|d| *d <= x / d).all(|d| !x.is_multiple_of(d))
}

fn failovers(failover: &[LocalityFailover], kind: &str, region_only: &str, at: &str, f: &mut Findings<'_>) {
    for (k, fo) in failover.iter().enumerate() {
        let fat = format!("{at}.failover[{k}]");
        if fo.from == fo.to {
            f.error(&fat, format!("{kind} failover settings must specify different regions"));
        }
        if fo.from.contains('/') || fo.to.contains('/') {
            f.error(&fat, region_only.to_owned());
        }
        if fo.from.contains('*') || fo.to.contains('*') {
            f.error(&fat, format!("{kind} failover region should not contain '*' wildcard"));
        }
    }
}

fn locality_lb(
    lb: &crate::config::LocalityLbSetting,
    outlier: Option<&OutlierDetection>,
    at: &str,
    f: &mut Findings<'_>,
) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        f.error(at, "can not simultaneously specify 'distribute' and 'failover'");
        return;
    }
    if !lb.failover.is_empty() {
        if let Some(label) = lb.failover_priority.iter().find(|l| TOPOLOGY_LABELS.contains(&l.as_str())) {
            f.error(
                format!("{at}.failoverPriority"),
                format!("can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"),
            );
            return;
        }
    }
    let mut sources = Vec::new();
    for (k, distribute) in lb.distribute.iter().enumerate() {
        sources.push(distribute.from.clone());
        let dat = format!("{at}.distribute[{k}]");
        if distribute.to.values().any(|w| *w == 0 || *w > 100) {
            f.error(format!("{dat}.to"), "locality weight must be in range [1, 100]");
            return;
        }
        let total: u64 = distribute.to.values().map(|w| u64::from(*w)).sum();
        if total != 100 {
            f.error(format!("{dat}.to"), format!("total locality weight {total} != 100"));
            return;
        }
        f.check(format!("{dat}.to"), localities(distribute.to.keys().map(String::as_str)));
    }
    f.check(format!("{at}.distribute"), localities(sources.iter().map(String::as_str)));
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && outlier.is_none() {
        f.warning(at, "outlier detection policy must be provided for failover");
    }
    failovers(&lb.failover, "locality lb", "locality lb failover only specify region", at, f);
}

fn zone_aware_lb(
    lb: &crate::config::ZoneAwareLbSetting,
    outlier: Option<&OutlierDetection>,
    at: &str,
    f: &mut Findings<'_>,
) {
    for label in lb.failover_priority.iter().filter(|l| TOPOLOGY_LABELS.contains(&l.as_str())) {
        f.error(
            format!("{at}.failoverPriority"),
            format!(
                "'failover_priority' for zone aware lb must not use topology label '{label}'; region- and zone-level routing are handled automatically"
            ),
        );
    }
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && outlier.is_none() {
        f.warning(at, "outlier detection policy must be provided for failover");
    }
    failovers(
        &lb.failover,
        "zone aware lb",
        "zone aware lb failover only specifies region; zone and subzone failover are handled automatically",
        at,
        f,
    );
}

/// `region/zone/subzone` localities, `*` only at the end, none covering another.
fn localities<'a>(list: impl Iterator<Item = &'a str>) -> Result<(), String> {
    use std::collections::{BTreeMap, BTreeSet};
    const ANY: &str = "*";
    let mut regions: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for locality in list {
        let overlap = || Err(format!("locality {locality} overlap with previous specified ones"));
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!("locality {locality} wildcard '*' number can not exceed 1 and must be in the end"));
        }
        if regions.contains_key(ANY) {
            return overlap();
        }
        let parts: Vec<&str> = locality.splitn(3, '/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("locality {locality} must not contain empty region/zone/subzone info"));
        }
        match parts.as_slice() {
            [region] => {
                if regions.contains_key(region) {
                    return overlap();
                }
                regions.insert(region, BTreeMap::from([(ANY, BTreeSet::from([ANY]))]));
            }
            [region, zone] => {
                let zones = regions.entry(region).or_default();
                if zones.contains_key(ANY) || zones.contains_key(zone) {
                    return overlap();
                }
                zones.insert(zone, BTreeSet::from([ANY]));
            }
            [region, zone, subzone, ..] => {
                let zones = regions.entry(region).or_default();
                if zones.contains_key(ANY) {
                    return overlap();
                }
                let subzones = zones.entry(zone).or_default();
                if subzones.contains(ANY) || !subzones.insert(subzone) {
                    return overlap();
                }
            }
            [] => {}
        }
    }
    Ok(())
}

fn client_tls(tls: &ClientTlsSettings, namespace: &str, at: &str, f: &mut Findings<'_>) {
    let mode = tls.mode.as_deref().unwrap_or("DISABLE");
    if !matches!(mode, "DISABLE" | "SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL") {
        f.error(format!("{at}.mode"), format!("{mode:?} is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"));
    }
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    // Not Istio's findings: what this agent cannot do with settings Istio accepts.
    if mode == "ISTIO_MUTUAL" {
        f.warning(
            format!("{at}.mode"),
            "ISTIO_MUTUAL needs Istio's CA, which this agent does not have: requests to this destination get 503 UF \
             (never plaintext)",
        );
    }
    for (i, name) in tls.subject_alt_names.iter().flatten().enumerate() {
        if name.contains("://") {
            f.warning(
                format!("{at}.subjectAltNames[{i}]"),
                format!("URI name {name:?} cannot be checked yet: a server certificate must match one of the DNS or IP names"),
            );
        }
    }
    if let Some(credential) = tls.credential_name.as_deref() {
        if let Some(rest) = credential.strip_prefix(CONFIGMAP_CREDENTIAL) {
            let (ns, name) = rest.split_once('/').map_or((namespace, rest), |(ns, name)| (ns, name));
            if name.is_empty() || rest.matches('/').count() > 1 {
                f.error(
                    format!("{at}.credentialName"),
                    format!("invalid configmap:// credentialName: invalid resource name {credential:?}"),
                );
            } else if ns != namespace || namespace.is_empty() {
                f.error(
                    format!("{at}.credentialName"),
                    format!("invalid configmap:// credentialName: namespace must match the configuration namespace {namespace:?}"),
                );
            }
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        if mode == "SIMPLE"
            && (set(&tls.ca_certificates) || set(&tls.credential_name) || tls.subject_alt_names.is_some())
        {
            f.error(at, "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true");
        }
        if mode == "MUTUAL" && (set(&tls.ca_certificates) || tls.subject_alt_names.is_some()) {
            f.error(at, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true");
        }
    }
    if matches!(mode, "SIMPLE" | "MUTUAL") && set(&tls.credential_name) {
        if set(&tls.client_certificate) || set(&tls.ca_certificates) || set(&tls.private_key) || set(&tls.ca_crl) {
            f.error(at, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
        }
        return;
    }
    if mode == "MUTUAL" {
        if !set(&tls.client_certificate) {
            f.error(format!("{at}.clientCertificate"), "client certificate required for mutual tls");
        }
        if !set(&tls.private_key) {
            f.error(format!("{at}.privateKey"), "private key required for mutual tls");
        }
    }
}
