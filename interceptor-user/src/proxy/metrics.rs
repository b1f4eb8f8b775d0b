//! The proxy's request metrics under Istio's standard names and labels (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`), so
//! dashboards and alerts written for Istio read them unchanged.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Label value for facts the proxy does not know (Istio prints `unknown` too).
const UNKNOWN: &str = "unknown";

/// The client's workload, when the route table knows its address (a ServiceEntry endpoint or a
/// WorkloadEntry).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SourceWorkload {
    /// Workload name, as Istio's `source_workload`.
    pub name: Arc<str>,
    /// Its namespace.
    pub namespace: Arc<str>,
}

/// A label value shared with the route table rather than copied per request; `unknown` when absent.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct SharedLabel(Option<Arc<str>>);

impl EncodeLabelValue for SharedLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_deref().unwrap_or(UNKNOWN), encoder)
    }
}

/// Labels of every request metric, as Istio names them. The proxy sees traffic on the client's
/// side of the hop, so `reporter` is `source`; the client workload is known only when its address
/// is a declared endpoint, else `unknown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    reporter: &'static str,
    source_workload: SharedLabel,
    source_workload_namespace: SharedLabel,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_version: String,
    destination_workload: &'static str,
    request_protocol: &'static str,
    response_code: u16,
    response_flags: String,
    connection_security_policy: &'static str,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// One finished request, as the metrics need it.
#[derive(Clone, Copy, Debug)]
pub struct RequestOutcome<'a> {
    /// Service host the request was addressed to, `-` when none.
    pub service: &'a str,
    /// Envoy cluster name `outbound|port|subset|host`, `-` when none was chosen.
    pub cluster: &'a str,
    /// Envoy's response flags, comma-separated (`UF,URX`), `-` when none.
    pub flags: &'a str,
    /// Status sent downstream.
    pub status: u16,
    /// Time from request start to the end of the response body.
    pub duration: Duration,
    /// Request body bytes the proxy read.
    pub request_bytes: u64,
    /// Response body bytes the proxy sent.
    pub response_bytes: u64,
    /// A gRPC call: `request_protocol="grpc"`.
    pub grpc: bool,
    /// The client's workload, when known.
    pub source: Option<&'a SourceWorkload>,
}

/// Labels of the TCP metrics (opaque connections).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    reporter: &'static str,
    destination_service: String,
    request_protocol: &'static str,
}

/// Why a downstream connection was turned away.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: &'static str,
}

/// The four request metrics of one label set.
#[derive(Debug)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// What a request's labels are made of, owned: the key of its [`Series`].
#[derive(Debug, Hash, PartialEq, Eq)]
struct SeriesKey {
    service: Box<str>,
    cluster: Box<str>,
    flags: Box<str>,
    status: u16,
    grpc: bool,
    source: Option<SourceWorkload>,
}

/// The same, borrowed from a request, so the lookup that finds its series allocates nothing.
/// Field for field as [`SeriesKey`]: both must hash alike.
#[derive(Hash)]
struct OutcomeKey<'a> {
    service: &'a str,
    cluster: &'a str,
    flags: &'a str,
    status: u16,
    grpc: bool,
    source: Option<&'a SourceWorkload>,
}

impl Equivalent<SeriesKey> for OutcomeKey<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        *self.service == *key.service
            && *self.cluster == *key.cluster
            && *self.flags == *key.flags
            && self.status == key.status
            && self.grpc == key.grpc
            && self.source == key.source.as_ref()
    }
}

impl<'a> OutcomeKey<'a> {
    fn of(outcome: &RequestOutcome<'a>) -> Self {
        let RequestOutcome { service, cluster, flags, status, grpc, source, .. } = *outcome;
        OutcomeKey { service, cluster, flags, status, grpc, source }
    }

    fn owned(&self) -> SeriesKey {
        SeriesKey {
            service: self.service.into(),
            cluster: self.cluster.into(),
            flags: self.flags.into(),
            status: self.status,
            grpc: self.grpc,
            source: self.source.cloned(),
        }
    }
}

/// Istio request metrics and the proxy's connection counters, registered once and shared by every
/// connection.
#[derive(Debug)]
pub struct ProxyMetrics {
    connections: Gauge,
    rejected: Family<RejectLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    relayed: Counter,
    mirrors_dropped: Family<RejectLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    /// Each label set's metrics, found by one cheap hash of the request's facts instead of
    /// building the labels and hashing them for each of the four families.
    series: RwLock<HashMap<SeriesKey, Series, foldhash::fast::RandomState>>,
}

impl ProxyMetrics {
    /// Creates the metrics and registers them (without prefix: the names are Istio's).
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self {
            connections: Gauge::default(),
            rejected: Family::default(),
            tcp_opened: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            requests: Family::default(),
            relayed: Counter::default(),
            mirrors_dropped: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS_MS.into_iter())),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            series: RwLock::default(),
        };
        registry.register("istio_requests", "Requests handled by the proxy", this.requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from request start to the end of the response, in milliseconds",
            this.duration.clone(),
        );
        registry.register("istio_request_bytes", "Request body sizes", this.request_bytes.clone());
        registry.register("istio_response_bytes", "Response body sizes", this.response_bytes.clone());
        registry.register(
            "interceptor_mirror_requests_dropped",
            "Mirror copies not sent (reason overflow: the cluster's in-flight cap) or abandoned (reason timeout)",
            this.mirrors_dropped.clone(),
        );
        registry.register(
            "interceptor_relayed_requests",
            "HTTP/1.1 requests the fast path relayed (no body, a plain forwarding rule); the others went through hyper",
            this.relayed.clone(),
        );
        registry.register(
            "interceptor_downstream_connections",
            "Open downstream (captured) connections",
            this.connections.clone(),
        );
        registry.register(
            "interceptor_downstream_connections_rejected",
            "Downstream connections turned away: overload (503), header_timeout (408), a refused request (400)",
            this.rejected.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "Opaque (non-HTTP) connections forwarded as TCP",
            this.tcp_opened.clone(),
        );
        registry.register("istio_tcp_sent_bytes", "Bytes sent upstream on TCP connections", this.tcp_sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from upstream on TCP connections",
            this.tcp_received.clone(),
        );
        for reason in [
            REJECT_OVERLOAD,
            REJECT_HEADER_TIMEOUT,
            REJECT_AMBIGUOUS_LENGTH,
            REJECT_MALFORMED_BODY,
            REJECT_MISSING_HOST,
            REJECT_DUPLICATE_HOST,
            REJECT_CLIENT_HELLO,
            REJECT_NO_ROUTE,
        ] {
            let _ = this.rejected.get_or_create(&RejectLabels { reason });
        }
        this
    }

    /// An opaque connection to `service` was forwarded as TCP.
    pub fn tcp_opened(&self, service: &str) {
        self.tcp_opened.get_or_create(&tcp_labels(service)).inc();
    }

    /// A TCP connection to `service` ended after `sent` bytes upstream and `received` back.
    pub fn tcp_bytes(&self, service: &str, sent: u64, received: u64) {
        let labels = tcp_labels(service);
        self.tcp_sent.get_or_create(&labels).inc_by(sent);
        self.tcp_received.get_or_create(&labels).inc_by(received);
    }

    /// A downstream connection was turned away for `reason` ([`REJECT_OVERLOAD`], …).
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    /// Counts a mirror copy dropped for `reason` (`overflow`, `timeout`).
    pub fn mirror_dropped(&self, reason: &'static str) {
        self.mirrors_dropped.get_or_create(&RejectLabels { reason }).inc();
    }

    /// Counts a request the fast path took.
    pub fn relayed(&self) {
        self.relayed.inc();
    }

    /// Counts an open downstream connection until the guard drops.
    #[must_use = "the connection counts as open while the guard lives"]
    pub fn open_connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard { gauge: self.connections.clone() }
    }

    /// Counts one finished request.
    pub fn record(&self, outcome: &RequestOutcome<'_>) {
        let key = OutcomeKey::of(outcome);
        if let Some(series) = self.series.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
            series.observe(outcome);
            return;
        }
        let labels = labels(outcome);
        let mut all = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let series = all.entry(key.owned()).or_insert_with(|| Series {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
        });
        series.observe(outcome);
    }
}

impl Series {
    fn observe(&self, outcome: &RequestOutcome<'_>) {
        self.requests.inc();
        self.duration.observe(outcome.duration.as_secs_f64() * 1000.0);
        self.request_bytes.observe(outcome.request_bytes as f64);
        self.response_bytes.observe(outcome.response_bytes as f64);
    }
}

fn tcp_labels(service: &str) -> TcpLabels {
    TcpLabels { reporter: "source", destination_service: service.to_owned(), request_protocol: "tcp" }
}

/// Reason label: a connection that opened as TLS sent no usable ClientHello (malformed, too
/// large, too slow), or one no rule or gateway server admits; closed.
pub const REJECT_CLIENT_HELLO: &str = "client_hello";
/// Reason label: a connection to a gateway's TCP server that no `tcp` rule routes; closed.
pub const REJECT_NO_ROUTE: &str = "no_route";
/// Reason label: the connection cap was reached.
pub const REJECT_OVERLOAD: &str = "overload";
/// Reason label: the request head did not arrive in time.
pub const REJECT_HEADER_TIMEOUT: &str = "header_timeout";
/// Reason label: a request head with both `Content-Length` and `Transfer-Encoding` (400).
pub const REJECT_AMBIGUOUS_LENGTH: &str = "ambiguous_length";
/// Reason label: a chunked request body that does not parse (400).
pub const REJECT_MALFORMED_BODY: &str = "malformed_body";
/// Reason label: an HTTP/1.1 request without `Host` (400).
pub const REJECT_MISSING_HOST: &str = "missing_host";
/// Reason label: a request with more than one `Host` line (400).
pub const REJECT_DUPLICATE_HOST: &str = "duplicate_host";

/// Keeps `interceptor_downstream_connections` up by one while alive.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Istio's size buckets: 1 B to 100 MB, by powers of ten.
fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 10.0, 9))
}

fn labels(outcome: &RequestOutcome<'_>) -> RequestLabels {
    let service = if outcome.service == "-" { UNKNOWN } else { outcome.service };
    let (name, namespace) = split_service(service);
    RequestLabels {
        reporter: "source",
        source_workload: SharedLabel(outcome.source.map(|s| s.name.clone())),
        source_workload_namespace: SharedLabel(outcome.source.map(|s| s.namespace.clone())),
        destination_service: service.to_owned(),
        destination_service_name: name.to_owned(),
        destination_service_namespace: namespace.to_owned(),
        destination_version: subset_of(outcome.cluster).unwrap_or(UNKNOWN).to_owned(),
        destination_workload: UNKNOWN,
        request_protocol: if outcome.grpc { "grpc" } else { "http" },
        response_code: outcome.status,
        response_flags: outcome.flags.to_owned(),
        connection_security_policy: UNKNOWN,
    }
}

/// `name.namespace.svc…` → (name, namespace); other hosts (ServiceEntry names) keep their whole
/// name and an unknown namespace.
fn split_service(host: &str) -> (&str, &str) {
    let mut parts = host.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(namespace), Some(rest)) if rest == "svc" || rest.starts_with("svc.") => (name, namespace),
        _ => (host, UNKNOWN),
    }
}

/// The subset of an Envoy cluster name `outbound|port|subset|host`; `None` for the whole service.
fn subset_of(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(_), Some(subset)) if !subset.is_empty() => Some(subset),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn service_hosts_split_into_name_and_namespace() {
        assert_eq!(split_service("my-app.default.svc.cluster.local"), ("my-app", "default"));
        assert_eq!(split_service("api.example.com"), ("api.example.com", UNKNOWN));
        assert_eq!(subset_of("outbound|80|v2|my-app.default.svc.cluster.local"), Some("v2"));
        assert_eq!(subset_of("outbound|80||my-app.default.svc.cluster.local"), None);
        assert_eq!(subset_of("-"), None);
    }

    #[test]
    fn a_request_finds_its_series_by_borrowed_facts() {
        use std::hash::BuildHasher;
        let client = SourceWorkload { name: "billing-vm".into(), namespace: "pay".into() };
        let hasher = foldhash::fast::RandomState::default();
        for source in [None, Some(&client)] {
            let key = OutcomeKey {
                service: "a.b.svc",
                cluster: "outbound|80|v1|a.b.svc",
                flags: "UF,URX",
                status: 503,
                grpc: true,
                source,
            };
            let owned = key.owned();
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(&owned));
            assert!(key.equivalent(&owned));
            assert!(!OutcomeKey { status: 200, ..key }.equivalent(&owned));
        }
    }

    #[test]
    fn a_request_shows_under_istio_names_and_labels() {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let outcome = RequestOutcome {
            service: "my-app.default.svc.cluster.local",
            cluster: "outbound|80|v1|my-app.default.svc.cluster.local",
            flags: "-",
            status: 200,
            duration: Duration::from_millis(3),
            request_bytes: 0,
            response_bytes: 2,
            grpc: false,
            source: None,
        };
        metrics.record(&outcome);
        metrics.record(&outcome);
        metrics.record(&RequestOutcome { cluster: "-", flags: "NC", status: 503, ..outcome });
        let client = SourceWorkload { name: "billing-vm".into(), namespace: "pay".into() };
        metrics.record(&RequestOutcome { source: Some(&client), response_bytes: 5000, ..outcome });
        let text = scrape(&registry);
        let ok = text
            .lines()
            .find(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("response_code=\"200\"")
                    && l.contains("source_workload=\"unknown\"")
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert!(ok.contains("reporter=\"source\""), "{ok}");
        assert!(ok.contains("source_workload=\"unknown\",source_workload_namespace=\"unknown\""), "{ok}");
        assert!(ok.contains("destination_service=\"my-app.default.svc.cluster.local\""), "{ok}");
        assert!(ok.contains("destination_version=\"v1\""), "{ok}");
        assert!(ok.contains("response_flags=\"-\""), "{ok}");
        assert!(ok.ends_with(" 2"), "{ok}");
        assert!(text.contains("response_flags=\"NC\""), "{text}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"), "{text}");
        assert!(text.contains("istio_response_bytes_sum{"), "{text}");
        let known = text
            .lines()
            .find(|l| l.starts_with("istio_response_bytes_sum{") && l.contains("source_workload=\"billing-vm\""))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(known.contains("source_workload_namespace=\"pay\""), "{known}");
        assert!(known.ends_with(" 5000.0"), "{known}");
    }
}
