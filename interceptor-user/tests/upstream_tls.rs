//! Upstream TLS (DestinationRule `trafficPolicy.tls`) in process, without root: the proxy on
//! loopback, endpoints as rustls servers on 127.0.0.1 with certificates made here (rcgen), and
//! requests sent as a captured client would (a fake original destination).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use arc_swap::ArcSwap;
use bytes::Bytes;
use common::Answer;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use interceptor::config::Snapshot;
use interceptor::endpoints::ClusterStates;
use interceptor::proxy::OriginalDestination;
use interceptor::routing::{RequestView, RouteTable};
use interceptor::tls::credential::Entries;
use interceptor::tls::{Credentials, SecretSet};
use prometheus_client::registry::Registry;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "my-app.default.svc.cluster.local";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Every accepted connection was going to the service's VIP on `0` (what the kernel map says).
struct ToVip(u16);

impl OriginalDestination for ToVip {
    fn take(&self, _client: SocketAddr) -> Option<SocketAddr> {
        Some(SocketAddr::new(VIP.into(), self.0))
    }
}

/// Certificates made for one test, as PEM files in their own directory (removed on drop).
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("interceptor-utls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("interceptor {test} CA"));
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca, ca_key }
    }

    /// A leaf for `names` signed by the CA: `<file>.crt` / `<file>.key`; the path without extension.
    fn leaf(&self, file: &str, names: &[&str], client: bool) -> PathBuf {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        self.dir.join(file)
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a TLS endpoint saw of one connection.
#[derive(Clone, Debug, Default)]
struct Seen {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    client_certificate: bool,
}

/// What a TLS endpoint does on each connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// HTTP/1.1 or, by ALPN, HTTP/2: 200 with its name and the request's scheme (HTTP/2 only).
    Http,
    /// Echoes bytes.
    Echo,
    /// One HTTP/1.0 answer whose body ends with the connection (as `openssl s_server -WWW`).
    Http10,
}

/// A loopback TLS endpoint serving as `serve` says; counts TCP connections and requests, keeps
/// what each handshake showed.
struct TlsEndpoint {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TlsEndpoint {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `cert` (a [`Pki::leaf`] path); asks for a client certificate from `client_ca` when given.
async fn tls_endpoint(
    name: &'static str,
    cert: &Path,
    client_ca: Option<CertificateDer<'static>>,
    serve: Serve,
) -> TlsEndpoint {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert.with_extension("crt")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(cert.with_extension("key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, requests, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::default());
    let endpoint =
        TlsEndpoint { addr, connections: connections.clone(), requests: requests.clone(), seen: Arc::clone(&seen) };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            connections.fetch_add(1, Ordering::Relaxed);
            let (acceptor, requests, seen) = (acceptor.clone(), requests.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let (_, session) = tls.get_ref();
                let shown = Seen {
                    sni: session.server_name().map(str::to_owned),
                    alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                    client_certificate: session.peer_certificates().is_some_and(|c| !c.is_empty()),
                };
                let h2 = shown.alpn.as_deref() == Some(b"h2");
                seen.lock().unwrap().push(shown);
                if serve == Serve::Http10 {
                    let mut buf = [0u8; 4096];
                    if tls.read(&mut buf).await.is_ok() {
                        requests.fetch_add(1, Ordering::Relaxed);
                        let head = "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n";
                        let _ = tls.write_all(format!("{head}{name}").as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                    return;
                }
                if serve == Serve::Echo {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        requests.fetch_add(1, Ordering::Relaxed);
                        if tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let scheme = req.uri().scheme_str().unwrap_or("-").to_owned();
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        response.headers_mut().insert("x-seen-scheme", scheme.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                } else {
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                }
            });
        }
    });
    endpoint
}

/// The proxy on loopback serving `my-app` (VIP 10.96.0.10, port `port`, `protocol`) with the
/// endpoints (address, `version` label) and `yaml` (DestinationRule, VirtualService).
struct Harness {
    proxy: SocketAddr,
    registry: Registry,
    table: Arc<ArcSwap<RouteTable>>,
}

fn snapshot(endpoints: &[(SocketAddr, &str)], port: u16, protocol: &str, yaml: &str) -> Snapshot {
    let endpoints: String = endpoints
        .iter()
        .map(|(a, v)| format!("  - {{address: {}, ports: {{web: {}}}, labels: {{version: {v}}}}}\n", a.ip(), a.port()))
        .collect();
    let text = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: my-app}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  ports: [{{number: {port}, name: web, protocol: {protocol}}}]
  resolution: STATIC
  endpoints:
{endpoints}---
{yaml}"
    );
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("upstream-tls.yaml"), &text, "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}\n{text}");
    snapshot
}

async fn harness(snapshot: &Snapshot, port: u16, credentials: &Credentials) -> Harness {
    let table = RouteTable::compile_with(snapshot, &ClusterStates::default(), credentials).unwrap();
    let table = Arc::new(ArcSwap::from_pointee(table));
    let (proxy, registry) = common::proxy(table.clone(), ToVip(port)).await;
    Harness { proxy, registry, table }
}

impl Harness {
    /// A plain GET (relayable-looking) or a POST with a body, on a connection of its own.
    async fn send(&self, post: bool, uri: &str) -> Answer {
        common::send(self.proxy, post, uri).await
    }

    /// Requests the raw relay carried out so far.
    fn relayed(&self) -> f64 {
        common::metric(&self.registry, "interceptor_relayed_requests_total", &[])
    }

    /// What `explain` prints for a GET to `my-app`.
    fn explain(&self, port: u16) -> String {
        let table = self.table.load();
        let headers = HeaderMap::new();
        let view = RequestView {
            method: "GET",
            path: "/",
            query: None,
            authority: "my-app",
            scheme: "http",
            headers: &headers,
            port,
            source: None,
        };
        table.explain(HOST, &view).to_string()
    }
}

/// A DestinationRule for `my-app` with `policy` as its `trafficPolicy` and subsets v1, v2
/// (each with `v1` / `v2` as its own `trafficPolicy` when not empty), and a VirtualService sending
/// `/v2…` to v2 and the rest to v1.
fn rules(policy: &str, v1: &str, v2: &str) -> String {
    let subset = |name: &str, policy: &str| {
        if policy.is_empty() {
            format!("  - {{name: {name}, labels: {{version: {name}}}}}\n")
        } else {
            format!("  - {{name: {name}, labels: {{version: {name}}}, trafficPolicy: {policy}}}\n")
        }
    };
    let policy = if policy.is_empty() { String::new() } else { format!("  trafficPolicy: {policy}\n") };
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: my-app}}
spec:
  host: my-app
{policy}  subsets:
{}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: my-app}}
spec:
  hosts: [my-app]
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: my-app, subset: v2}}}}]
  - route: [{{destination: {{host: my-app, subset: v1}}}}]
",
        subset("v1", v1),
        subset("v2", v2)
    )
}

fn no_credentials() -> Credentials {
    Credentials::files("/nonexistent")
}

#[tokio::test]
async fn simple_with_ca_certificates_verifies_the_endpoint_and_the_relay_declines() {
    let pki = Pki::new("simple");
    let server = pki.leaf("server", &[HOST], false);
    let v1 = tls_endpoint("v1", &server, None, Serve::Http).await;
    let tls = format!("{{tls: {{mode: SIMPLE, caCertificates: {}}}}}", pki.path("ca.pem"));
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(&tls, "", "")), 80, &no_credentials()).await;
    for post in [false, true] {
        let answer = h.send(post, "/").await;
        assert_eq!((answer.status, answer.body.as_str(), answer.flags()), (StatusCode::OK, "v1", "-"), "post {post}");
    }
    // A bodiless GET on a forwarding-only route, which the relay takes for plaintext clusters,
    // went by hyper over TLS: the relay declined it at compile time.
    assert_eq!(h.relayed(), 0.0);
    assert_eq!(v1.requests.load(Ordering::Relaxed), 2);
    // Istio's auto SNI: the service host, and ALPN for HTTP/1.1 upstream.
    let seen = v1.seen();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(s.sni.as_deref(), Some(HOST));
        assert_eq!(s.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert!(!s.client_certificate);
    }
    // One pooled TLS connection carried both requests.
    assert_eq!(v1.connections.load(Ordering::Relaxed), 1);
    let explained = h.explain(80);
    assert!(explained.contains("tls SIMPLE sni my-app.default.svc.cluster.local"), "{explained}");
    let routes = h.table.load().describe();
    assert!(routes.contains("outbound|80|v1|my-app.default.svc.cluster.local tls SIMPLE"), "{routes}");
}

#[tokio::test]
async fn a_certificate_without_the_expected_name_is_a_connect_failure() {
    let pki = Pki::new("san");
    let server = pki.leaf("server", &[HOST], false);
    let v1 = tls_endpoint("v1", &server, None, Serve::Http).await;
    let tls = format!(
        "{{tls: {{mode: SIMPLE, caCertificates: {}, subjectAltNames: [other.example.com]}}}}",
        pki.path("ca.pem")
    );
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(&tls, "", "")), 80, &no_credentials()).await;
    for post in [false, true] {
        let answer = h.send(post, "/").await;
        assert_eq!((answer.status, answer.flags()), (StatusCode::SERVICE_UNAVAILABLE, "UF"), "{answer:?}");
        assert!(
            answer.body.starts_with("upstream connect error or disconnect/reset before headers"),
            "{}",
            answer.body
        );
        assert!(answer.body.contains("TLS_error") && answer.body.contains("certificate"), "{}", answer.body);
    }
    assert_eq!(v1.requests.load(Ordering::Relaxed), 0);
    assert!(v1.connections.load(Ordering::Relaxed) >= 2);

    // The name it does carry is accepted, and an explicit `sni` is what the endpoint sees.
    let tls = format!(
        "{{tls: {{mode: SIMPLE, caCertificates: {}, subjectAltNames: [{HOST}], sni: api.example.com}}}}",
        pki.path("ca.pem")
    );
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(&tls, "", "")), 80, &no_credentials()).await;
    let answer = h.send(false, "/").await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "v1"));
    assert_eq!(v1.seen().last().and_then(|s| s.sni.clone()).as_deref(), Some("api.example.com"));
}

#[tokio::test]
async fn mutual_presents_the_client_certificate_and_simple_is_refused_by_such_an_endpoint() {
    let pki = Pki::new("mutual");
    let server = pki.leaf("server", &[HOST], false);
    let client = pki.leaf("client", &["client.example.com"], true);
    let v1 = tls_endpoint("v1", &server, Some(pki.ca_der()), Serve::Http).await;
    let mutual = format!(
        "{{tls: {{mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {}}}}}",
        pki.path("ca.pem"),
        client.with_extension("crt").display(),
        client.with_extension("key").display()
    );
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(&mutual, "", "")), 80, &no_credentials()).await;
    for post in [false, true] {
        let answer = h.send(post, "/").await;
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "v1"), "post {post}");
    }
    assert!(v1.seen().iter().all(|s| s.client_certificate));

    // The same through a `credentialName` directory (the gateway's convention).
    let credentials = pki.dir.join("credentials");
    std::fs::create_dir_all(credentials.join("my-app-client")).unwrap();
    for (from, to) in [("client.crt", "tls.crt"), ("client.key", "tls.key"), ("ca.pem", "ca.crt")] {
        std::fs::copy(pki.dir.join(from), credentials.join("my-app-client").join(to)).unwrap();
    }
    let named = "{tls: {mode: MUTUAL, credentialName: my-app-client}}";
    let h = harness(
        &snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(named, "", "")),
        80,
        &Credentials::files(&credentials),
    )
    .await;
    let answer = h.send(false, "/").await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "v1"));

    // The same from Kubernetes Secrets (as the cluster source reads them): Istio's generic keys,
    // the CA from the separate `<name>-cacert` Secret.
    let entries = |pairs: &[(&str, &str)]| -> Entries {
        pairs.iter().map(|(key, file)| ((*key).to_owned(), std::fs::read(pki.dir.join(file)).unwrap())).collect()
    };
    let secrets = [
        ("my-app-client".to_owned(), entries(&[("cert", "client.crt"), ("key", "client.key")])),
        ("my-app-client-cacert".to_owned(), entries(&[("ca.crt", "ca.pem")])),
    ]
    .into();
    let from_secrets = Credentials::Secrets(Arc::new(SecretSet { namespace: "gateways".into(), secrets }));
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(named, "", "")), 80, &from_secrets).await;
    let answer = h.send(false, "/").await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "v1"));
    let tls = h.table.load().clusters().iter().find_map(|c| c.tls.originate().map(|t| t.to_string())).unwrap();
    assert!(tls.contains("ca Secret gateways/my-app-client-cacert key ca.crt"), "{tls}");

    // Without a client certificate the endpoint turns the connection down: 503 UF.
    let before = v1.requests.load(Ordering::Relaxed);
    let simple = format!("{{tls: {{mode: SIMPLE, caCertificates: {}}}}}", pki.path("ca.pem"));
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(&simple, "", "")), 80, &no_credentials()).await;
    for post in [false, true] {
        let answer = h.send(post, "/").await;
        assert_eq!((answer.status, answer.flags()), (StatusCode::SERVICE_UNAVAILABLE, "UF"), "{answer:?}");
    }
    assert_eq!(v1.requests.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_an_unknown_ca_that_the_system_roots_refuse() {
    let pki = Pki::new("skip");
    let server = pki.leaf("server", &["elsewhere.example.com"], false);
    let v1 = tls_endpoint("v1", &server, None, Serve::Http).await;
    let skip = "{tls: {mode: SIMPLE, insecureSkipVerify: true}}";
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(skip, "", "")), 80, &no_credentials()).await;
    let answer = h.send(false, "/").await;
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "v1"));

    // Without caCertificates the system's roots decide, and they do not know this CA.
    let system = "{tls: {mode: SIMPLE}}";
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(system, "", "")), 80, &no_credentials()).await;
    let answer = h.send(false, "/").await;
    assert_eq!((answer.status, answer.flags()), (StatusCode::SERVICE_UNAVAILABLE, "UF"), "{answer:?}");
    assert!(answer.body.contains("TLS_error"), "{}", answer.body);
}

#[tokio::test]
async fn istio_mutual_is_refused_with_a_reason_and_nothing_reaches_the_endpoint() {
    let pki = Pki::new("istio");
    let server = pki.leaf("server", &[HOST], false);
    let v1 = tls_endpoint("v1", &server, None, Serve::Http).await;
    let h = harness(
        &snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules("{tls: {mode: ISTIO_MUTUAL}}", "", "")),
        80,
        &no_credentials(),
    )
    .await;
    for post in [false, true] {
        let answer = h.send(post, "/").await;
        assert_eq!((answer.status, answer.flags()), (StatusCode::SERVICE_UNAVAILABLE, "UF"), "{answer:?}");
        assert!(answer.body.contains("outbound|80|v1|my-app.default.svc.cluster.local"), "{}", answer.body);
        assert!(answer.body.contains("ISTIO_MUTUAL"), "{}", answer.body);
    }
    assert_eq!(v1.connections.load(Ordering::Relaxed), 0);
    let explained = h.explain(80);
    assert!(explained.contains("tls ISTIO_MUTUAL: refused"), "{explained}");
}

#[tokio::test]
async fn subset_and_port_level_settings_override_the_rule_as_istio_merges_them() {
    let pki = Pki::new("levels");
    let server = pki.leaf("server", &[HOST], false);
    let (v1, v2) =
        (tls_endpoint("v1", &server, None, Serve::Http).await, tls_endpoint("v2", &server, None, Serve::Http).await);
    let good = format!("{{mode: SIMPLE, caCertificates: {}}}", pki.path("ca.pem"));
    let wrong_name =
        format!("{{mode: SIMPLE, caCertificates: {}, subjectAltNames: [nobody.example.com]}}", pki.path("ca.pem"));
    let endpoints = [(v1.addr, "v1"), (v2.addr, "v2")];

    // The rule says ISTIO_MUTUAL; subset v1 says SIMPLE: v1 answers, v2 is refused.
    let yaml = rules("{tls: {mode: ISTIO_MUTUAL}}", &format!("{{tls: {good}}}"), "");
    let h = harness(&snapshot(&endpoints, 80, "HTTP", &yaml), 80, &no_credentials()).await;
    assert_eq!(h.send(false, "/").await.status, StatusCode::OK);
    let refused = h.send(false, "/v2").await;
    assert_eq!((refused.status, refused.flags()), (StatusCode::SERVICE_UNAVAILABLE, "UF"));
    assert!(refused.body.contains("ISTIO_MUTUAL"), "{}", refused.body);

    // The rule's port-level tls beats the rule's tls (both subsets inherit it).
    let yaml =
        rules(&format!("{{tls: {wrong_name}, portLevelSettings: [{{port: {{number: 80}}, tls: {good}}}]}}"), "", "");
    let h = harness(&snapshot(&endpoints, 80, "HTTP", &yaml), 80, &no_credentials()).await;
    assert_eq!(h.send(false, "/").await.status, StatusCode::OK);
    assert_eq!(h.send(true, "/v2").await.status, StatusCode::OK);

    // A subset's tls beats the rule's port-level tls; the subset's own port-level tls beats both.
    let yaml = rules(
        &format!("{{portLevelSettings: [{{port: {{number: 80}}, tls: {good}}}]}}"),
        &format!("{{tls: {wrong_name}}}"),
        &format!("{{tls: {{mode: ISTIO_MUTUAL}}, portLevelSettings: [{{port: {{number: 80}}, tls: {good}}}]}}"),
    );
    let h = harness(&snapshot(&endpoints, 80, "HTTP", &yaml), 80, &no_credentials()).await;
    let wrong = h.send(false, "/").await;
    assert_eq!((wrong.status, wrong.flags()), (StatusCode::SERVICE_UNAVAILABLE, "UF"), "{wrong:?}");
    assert!(wrong.body.contains("TLS_error"), "{}", wrong.body);
    assert_eq!(h.send(false, "/v2").await.status, StatusCode::OK);
    // A port-level setting for another port changes nothing here.
    let yaml = rules(
        &format!("{{tls: {good}, portLevelSettings: [{{port: {{number: 81}}, tls: {{mode: ISTIO_MUTUAL}}}}]}}"),
        "",
        "",
    );
    let h = harness(&snapshot(&endpoints, 80, "HTTP", &yaml), 80, &no_credentials()).await;
    assert_eq!(h.send(false, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn grpc_goes_upstream_over_tls_with_alpn_h2() {
    let pki = Pki::new("grpc");
    let server = pki.leaf("server", &[HOST], false);
    let v1 = tls_endpoint("v1", &server, None, Serve::Http).await;
    let tls = format!("{{tls: {{mode: SIMPLE, caCertificates: {}}}}}", pki.path("ca.pem"));
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(&tls, "", "")), 80, &no_credentials()).await;
    let stream = TcpStream::connect(h.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = Request::post("/pkg.Service/Call")
        .header("host", "my-app")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // HTTP/2 upstream carries the scheme: `https` over TLS.
    assert_eq!(response.headers()["x-seen-scheme"], "https");
    assert_eq!(v1.seen().last().and_then(|s| s.alpn.clone()).as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn a_tcp_route_to_a_tls_cluster_originates_tls() {
    let pki = Pki::new("tcp");
    let server = pki.leaf("server", &[HOST], false);
    let echo = tls_endpoint("echo", &server, None, Serve::Echo).await;
    let dr = format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: my-app}}
spec:
  host: my-app
  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {}, subjectAltNames: [{HOST}]}}}}
",
        pki.path("ca.pem")
    );
    let h = harness(&snapshot(&[(echo.addr, "v1")], 5432, "TCP", &dr), 5432, &no_credentials()).await;
    let mut stream = TcpStream::connect(h.proxy).await.unwrap();
    stream.write_all(b"hello over tls").await.unwrap();
    let mut got = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"hello over tls");
    // Envoy sends no SNI for TCP unless `sni` is set, and no ALPN.
    let seen = echo.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].sni.as_deref(), seen[0].alpn.as_deref()), (None, None));

    // ISTIO_MUTUAL on a TCP route: closed without dialling.
    let dr = dr.replace(
        &format!("mode: SIMPLE, caCertificates: {}, subjectAltNames: [{HOST}]", pki.path("ca.pem")),
        "mode: ISTIO_MUTUAL",
    );
    let h = harness(&snapshot(&[(echo.addr, "v1")], 5432, "TCP", &dr), 5432, &no_credentials()).await;
    let mut stream = TcpStream::connect(h.proxy).await.unwrap();
    let _ = stream.write_all(b"x").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await.unwrap();
    assert!(read.is_err() || rest.is_empty());
    assert_eq!(echo.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_answer_that_ends_with_its_connection_ends_for_the_client_too() {
    // TLS clusters are all served by hyper (never the relay): an HTTP/1.0 answer without a length
    // must reach the client framed (chunked), not wait for a close that never comes.
    let pki = Pki::new("http10");
    let server = pki.leaf("server", &[HOST], false);
    let v1 = tls_endpoint("v1", &server, None, Serve::Http10).await;
    let tls = format!("{{tls: {{mode: SIMPLE, caCertificates: {}}}}}", pki.path("ca.pem"));
    let h = harness(&snapshot(&[(v1.addr, "v1")], 80, "HTTP", &rules(&tls, "", "")), 80, &no_credentials()).await;
    for post in [false, true] {
        let answer = tokio::time::timeout(Duration::from_secs(5), h.send(post, "/")).await.expect("the answer ends");
        assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, "v1"), "post {post}");
    }
}
