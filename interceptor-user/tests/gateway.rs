//! Gateways in process, without root: the agent's gateway listeners on loopback ports, TLS
//! certificates made here (rcgen), endpoints as tokio listeners on 127.0.0.1, and real clients —
//! rustls with hyper (HTTP/1.1 and HTTP/2 by ALPN) and Debian's curl.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use interceptor::config::{Diagnostic, Settings, SettingsFile, Snapshot};
use interceptor::proxy::gateway::{prepare, GatewayListeners};
use interceptor::proxy::limits::Limits;
use interceptor::proxy::metrics::{ProxyMetrics, SourceWorkload};
use interceptor::proxy::{upstream_client, OriginalDestination, Proxy, ProxyInputs};
use interceptor::routing::RouteTable;
use interceptor::tls::Credentials;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MESH_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);

/// Captured connections (the mesh listener) were all going to `my-app`'s VIP.
struct ToVip;

impl OriginalDestination for ToVip {
    fn take(&self, _client: SocketAddr) -> Option<SocketAddr> {
        Some(MESH_VIP.into())
    }
}

/// A loopback endpoint answering 200 with its name; `hits` counts requests.
struct Endpoint {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn endpoint(name: &'static str) -> Endpoint {
    endpoint_with(name, None).await
}

/// As [`endpoint`], over TLS with `tls` when given.
async fn endpoint_with(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (hits, tls) = (counted.clone(), tls.clone());
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                hits.fetch_add(1, Ordering::Relaxed);
                let proto = req.headers().get("x-forwarded-proto").map(|v| v.to_str().unwrap_or("").to_owned());
                let hang = req.uri().path() == "/hang";
                async move {
                    if hang {
                        // Longer than any test waits.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    let mut response = Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                    if let Some(proto) = proto {
                        response.headers_mut().insert("x-seen-proto", proto.parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let http1 = hyper::server::conn::http1::Builder::new();
            tokio::spawn(async move {
                let _ = match tls {
                    None => http1.serve_connection(TokioIo::new(stream), service).await,
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else { return };
                        http1.serve_connection(TokioIo::new(stream), service).await
                    }
                };
            });
        }
    });
    Endpoint { addr, hits }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Certificates made for one test, written as PEM files in their own directory.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
}

impl Pki {
    fn new(test: &str) -> (Self, rcgen::Certificate, KeyPair) {
        let dir = std::env::temp_dir().join(format!("interceptor-gw-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "interceptor test CA");
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        (Self { dir, ca: ca.der().clone() }, ca, key)
    }

    /// A leaf for `names` signed by the CA, written as `<file>.crt` / `<file>.key`.
    fn leaf(&self, ca: &rcgen::Certificate, ca_key: &KeyPair, file: &str, names: &[&str], client: bool) -> PathBuf {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca, ca_key).unwrap();
        std::fs::write(self.dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        self.dir.join(file)
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

/// `my-app` (VIP 10.96.0.10:80) with endpoints v1 and v2, and `yaml` (Gateways, VirtualServices).
fn config(v1: SocketAddr, v2: SocketAddr, yaml: &str) -> Snapshot {
    let text = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: my-app}}
spec:
  hosts: [my-app.default.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints:
  - {{address: {}, ports: {{http: {}}}, labels: {{version: v1}}}}
  - {{address: {}, ports: {{http: {}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: my-app}}
spec:
  host: my-app
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
{yaml}",
        v1.ip(),
        v1.port(),
        v2.ip(),
        v2.port()
    );
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("gateway.yaml"), &text, "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}\n{text}");
    snapshot
}

fn settings(credentials: &Path) -> Settings {
    SettingsFile {
        redirect: Some("127.0.0.1:15001".parse().unwrap()),
        gateway_address: Some(LOOPBACK),
        credentials: Some(credentials.to_path_buf()),
        labels: Some([("istio".to_owned(), "ingressgateway".to_owned())].into()),
        ..Default::default()
    }
    .resolve()
    .unwrap()
}

/// Prepares the gateway servers of `table` with the settings' `credentials` directory (files).
fn prepare_files(table: &mut RouteTable, settings: &Settings) -> Vec<Diagnostic> {
    prepare(table, settings, &Credentials::files(&settings.credentials))
}

/// Compiles `snapshot` and prepares its gateway servers as the agent does.
fn table(snapshot: &Snapshot, settings: &Settings) -> RouteTable {
    let mut table = RouteTable::compile(snapshot).unwrap();
    let findings = prepare_files(&mut table, settings);
    assert!(findings.is_empty(), "{findings:?}");
    table
}

/// The agent's two listeners: captured (mesh) traffic and the gateways.
struct Harness {
    mesh: SocketAddr,
    routes: Arc<ArcSwap<RouteTable>>,
    gateways: GatewayListeners,
    registry: prometheus_client::registry::Registry,
}

async fn harness(table: RouteTable) -> Harness {
    harness_with(table, Limits::default()).await
}

async fn harness_with(table: RouteTable, limits: Limits) -> Harness {
    let mut registry = prometheus_client::registry::Registry::default();
    let routes = Arc::new(ArcSwap::from_pointee(table));
    let inputs = ProxyInputs {
        routes: routes.clone(),
        original_destinations: Arc::new(ToVip),
        namespace: "default".into(),
        upstream: upstream_client(None),
        metrics: Arc::new(ProxyMetrics::register(&mut registry)),
        limits,
        splices: None,
    };
    let proxy = Proxy::bind("127.0.0.1:0".parse().unwrap(), inputs.clone()).await.unwrap();
    let mesh = proxy.local_addr().unwrap();
    tokio::spawn(proxy.run(std::future::pending(), Duration::from_secs(1)));
    let workload = SourceWorkload { name: "ingress".into(), namespace: "istio-system".into() };
    let mut gateways = GatewayListeners::new(inputs, Some(LOOPBACK), Duration::from_secs(1), workload);
    gateways.reconcile(&routes.load_full()).await;
    Harness { mesh, routes, gateways, registry }
}

impl Harness {
    /// The first `istio_requests_total` line holding every one of `labels`, once there is one (a
    /// request is counted when its response body has ended, just after the client read it).
    async fn requests_line(&self, labels: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("istio_requests_total{") && labels.iter().all(|label| l.contains(label)));
            match line {
                Some(line) => return line.to_owned(),
                None if Instant::now() > deadline => panic!("no istio_requests_total line with {labels:?}:\n{text}"),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Swaps in `table` and follows it with the listeners, as a reload does.
    async fn reload(&mut self, table: RouteTable) {
        self.routes.store(Arc::new(table));
        self.gateways.reconcile(&self.routes.load_full()).await;
    }
}

/// A TLS client trusting `ca`, offering `alpn`, with a client certificate when given.
fn tls_client(ca: &CertificateDer<'static>, alpn: &[&[u8]], identity: Option<&Path>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(base) => {
            let chain =
                CertificateDer::pem_file_iter(base.with_extension("crt")).unwrap().map(Result::unwrap).collect();
            let key = PrivateKeyDer::from_pem_file(base.with_extension("key")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// What one HTTPS exchange gave: the certificate the server showed, ALPN, the answer.
#[derive(Debug)]
struct Exchange {
    certificate: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    status: StatusCode,
    body: String,
    headers: http::HeaderMap,
}

/// `GET https://<sni><path>` at `port`, over HTTP/2 when the server picks it by ALPN.
async fn https_get(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    sni: &str,
    path: &str,
) -> Result<Exchange, String> {
    let stream = TcpStream::connect((LOOPBACK, port)).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = connector.connect(name, stream).await.map_err(|e| format!("handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    let certificate = session.peer_certificates().and_then(|c| c.first()).cloned().ok_or("no certificate")?;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let request =
        Request::get(format!("https://{sni}{path}")).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(request).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = request;
        request.headers_mut().insert("host", sni.parse().map_err(|_| "host")?);
        *request.uri_mut() = path.parse().map_err(|_| "path")?;
        sender.send_request(request).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Exchange {
        certificate,
        alpn,
        status: parts.status,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers: parts.headers,
    })
}

/// `GET http://<host><path>` at `addr` over plain HTTP/1.1.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(StatusCode, http::HeaderMap, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::get(path).header("host", host).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned()))
}

/// The VirtualService of the tests: `/v2` to subset v2, everything else to v1.
fn virtual_service(gateways: &str, hosts: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: default}}
spec:
  hosts: {hosts}
  gateways: {gateways}
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: my-app.default.svc.cluster.local, subset: v2}}}}]
  - route: [{{destination: {{host: my-app.default.svc.cluster.local, subset: v1}}}}]
"
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_and_mutual_refuses_a_client_without_one() {
    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, ca, ca_key) = Pki::new("sni");
    let a = pki.leaf(&ca, &ca_key, "a", &["a.example.com"], false);
    let b = pki.leaf(&ca, &ca_key, "b", &["b.example.com"], false);
    let client = pki.leaf(&ca, &ca_key, "client", &["client.example.com"], true);
    let port = free_port();
    let gateway = format!(
        "apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https-a, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {a}.crt, privateKey: {a}.key}}
  - port: {{number: {port}, name: https-b, protocol: HTTPS}}
    hosts: [b.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {b}.crt, privateKey: {b}.key, caCertificates: {ca}}}
---
{vs}",
        a = a.display(),
        b = b.display(),
        ca = pki.path("ca.pem"),
        vs = virtual_service("[istio-system/edge]", "[a.example.com, b.example.com]"),
    );
    let settings = settings(&pki.dir);
    let h = harness(table(&config(v1.addr, v2.addr, &gateway), &settings)).await;
    let a_der = CertificateDer::from_pem_file(a.with_extension("crt")).unwrap();
    let b_der = CertificateDer::from_pem_file(b.with_extension("crt")).unwrap();

    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        let plain = tls_client(&pki.ca, &[alpn], None);
        let got = https_get(&plain, port, "a.example.com", "/").await.unwrap();
        assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "v1"), "{got:?}");
        assert_eq!(got.certificate, a_der, "SNI a.example.com gets a's certificate");
        assert_eq!(got.alpn.as_deref(), Some(alpn), "ALPN offers h2 and http/1.1");
        assert_eq!(got.headers.get("x-seen-proto").map(|v| v.to_str().unwrap()), Some("https"));
        let got = https_get(&plain, port, "a.example.com", "/v2").await.unwrap();
        assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "v2"));

        // b is MUTUAL: without a client certificate no request gets through.
        let refused = https_get(&plain, port, "b.example.com", "/").await;
        assert!(refused.is_err(), "a client without a certificate must be refused: {refused:?}");
        let with_cert = tls_client(&pki.ca, &[alpn], Some(&client));
        let got = https_get(&with_cert, port, "b.example.com", "/").await.unwrap();
        assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "v1"));
        assert_eq!(got.certificate, b_der, "SNI b.example.com gets b's certificate");
    }
    // An SNI no server admits: no certificate, the connection closes (Envoy: no filter chain).
    let plain = tls_client(&pki.ca, &[b"http/1.1"], None);
    assert!(https_get(&plain, port, "c.example.com", "/").await.is_err());
    assert_eq!(v1.hits.load(Ordering::Relaxed), 4);
    assert_eq!(v2.hits.load(Ordering::Relaxed), 2);
    // Istio's labels for a gateway: the gateway's own workload is the source.
    let counted = h
        .requests_line(&[
            "source_workload=\"ingress\"",
            "source_workload_namespace=\"istio-system\"",
            "destination_version=\"v1\"",
            "response_code=\"200\"",
        ])
        .await;
    assert!(counted.contains("reporter=\"source\""), "{counted}");
    assert!(counted.ends_with(" 4"), "4 requests to v1: {counted}");
    drop(h);
}

#[tokio::test]
async fn plain_http_servers_route_by_host_and_https_redirect_answers_301() {
    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, _, _) = Pki::new("plain");
    let (plain_port, redirect_port) = (free_port(), free_port());
    let gateway = format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  servers:
  - port: {{number: {plain_port}, name: http, protocol: HTTP}}
    hosts: [\"./*.example.com\"]
  - port: {{number: {redirect_port}, name: http-redirect, protocol: HTTP}}
    hosts: [\"*\"]
    tls: {{httpsRedirect: true}}
---
{vs}",
        vs = virtual_service("[edge]", "[app.example.com]"),
    );
    let h = harness(table(&config(v1.addr, v2.addr, &gateway), &settings(&pki.dir))).await;
    let plain = SocketAddr::new(LOOPBACK, plain_port);
    let (status, _, body) = http_get(plain, "app.example.com", "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    let (status, _, body) = http_get(plain, "APP.example.com:8080", "/v2/x").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "v2"), "host matched case-insensitively, port ignored");
    let (status, headers, _) = http_get(plain, "other.example.com", "/").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-interceptor-flags"], "NR");

    let redirect = SocketAddr::new(LOOPBACK, redirect_port);
    let (status, headers, _) = http_get(redirect, "app.example.com:80", "/some/path?q=1").await.unwrap();
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "https://app.example.com/some/path?q=1");
    assert_eq!(v1.hits.load(Ordering::Relaxed) + v2.hits.load(Ordering::Relaxed), 2);
    drop(h);
}

#[tokio::test]
async fn over_the_connection_cap_a_plain_gateway_connection_gets_503_om() {
    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, _, _) = Pki::new("cap");
    let (port, gateway) = http_gateway();
    let limits = Limits { max_connections: 1, ..Limits::default() };
    let _h = harness_with(table(&config(v1.addr, v2.addr, &gateway), &settings(&pki.dir)), limits).await;
    let addr = SocketAddr::new(LOOPBACK, port);
    let held = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(held)).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = || Request::get("/").header("host", "app.example.com").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(sender.send_request(request()).await.unwrap().status(), StatusCode::OK);

    let (status, headers, _) = http_get(addr, "app.example.com", "/").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "over the cap");
    assert_eq!(headers["x-interceptor-flags"], "OM");

    // The held connection goes: its place is free again.
    drop(sender);
    conn.await.unwrap().unwrap();
    let freed = async {
        loop {
            if let Ok((StatusCode::OK, _, _)) = http_get(addr, "app.example.com", "/").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), freed).await.expect("a place under the cap again");
}

#[tokio::test]
async fn curl_reaches_the_gateway_over_https_and_http2() {
    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, ca, ca_key) = Pki::new("curl");
    pki.leaf(&ca, &ca_key, "tls", &["my-app.example.com"], false);
    // credentialName: a directory with the Kubernetes TLS Secret's keys.
    let credential = pki.dir.join("my-app-cert");
    std::fs::create_dir_all(&credential).unwrap();
    std::fs::rename(pki.dir.join("tls.crt"), credential.join("tls.crt")).unwrap();
    std::fs::rename(pki.dir.join("tls.key"), credential.join("tls.key")).unwrap();
    let port = free_port();
    let gateway = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [\"*/my-app.example.com\"]
    tls: {{mode: SIMPLE, credentialName: my-app-cert, minProtocolVersion: TLSV1_3}}
---
{vs}",
        vs = virtual_service("[default/edge]", "[\"*.example.com\"]"),
    );
    let _h = harness(table(&config(v1.addr, v2.addr, &gateway), &settings(&pki.dir))).await;
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", flag, "--cacert", &pki.path("ca.pem")])
            .args(["--resolve", &format!("my-app.example.com:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_version} %{response_code}"])
            .arg(format!("https://my-app.example.com:{port}/v2"))
            .output()
            .await
            .expect("curl (Debian's curl package) runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl {flag}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout, format!("v2\n{version} 200"), "curl {flag}");
    }
    // TLS 1.2 is below the server's minimum: refused.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--tlsv1.2", "--tls-max", "1.2", "--cacert", &pki.path("ca.pem")])
        .args(["--resolve", &format!("my-app.example.com:{port}:127.0.0.1")])
        .arg(format!("https://my-app.example.com:{port}/"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "TLS 1.2 must be refused under minProtocolVersion TLSV1_3");
}

#[tokio::test]
async fn a_gateway_removed_on_reload_closes_its_listener_while_mesh_traffic_flows() {
    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, _, _) = Pki::new("reload");
    let (kept_port, removed_port) = (free_port(), free_port());
    let gateway = |name: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [\"*\"]
---
"
        )
    };
    let vs = virtual_service("[kept, removed, mesh]", "[my-app]");
    let settings = settings(&pki.dir);
    let both = format!("{}{}{vs}", gateway("kept", kept_port), gateway("removed", removed_port));
    let mut h = harness(table(&config(v1.addr, v2.addr, &both), &settings)).await;
    let (kept, removed) = (SocketAddr::new(LOOPBACK, kept_port), SocketAddr::new(LOOPBACK, removed_port));
    // At a gateway the short host is the FQDN Istio makes of it.
    let fqdn = "my-app.default.svc.cluster.local";
    for addr in [kept, removed] {
        let (status, _, body) = http_get(addr, fqdn, "/").await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
    }

    // Mesh traffic all along, each request on its own connection.
    let mesh = h.mesh;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = stop.clone();
    let traffic = tokio::spawn(async move {
        let (mut ok, mut failed) = (0usize, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !running.load(Ordering::Relaxed) && Instant::now() < deadline {
            match http_get(mesh, "my-app", "/").await {
                Ok((StatusCode::OK, _, _)) => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        (ok, failed)
    });
    // A gateway connection kept open across the reload: it drains, it is not cut.
    let held = TcpStream::connect(kept).await.unwrap();
    let (mut held_sender, held_conn) = hyper::client::conn::http1::handshake(TokioIo::new(held)).await.unwrap();
    tokio::spawn(held_conn);

    let only_kept = format!("{}{vs}", gateway("kept", kept_port));
    h.reload(table(&config(v1.addr, v2.addr, &only_kept), &settings)).await;
    assert_eq!(h.gateways.ports().into_iter().collect::<Vec<_>>(), vec![kept_port]);
    let closed = async {
        while TcpStream::connect(removed).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the removed gateway's port closes");
    let request = Request::get("/").header("host", fqdn).body(Empty::<Bytes>::new()).unwrap();
    let response = held_sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the kept gateway's open connection still serves");
    let (status, _, _) = http_get(kept, fqdn, "/v2").await.unwrap();
    assert_eq!(status, StatusCode::OK);

    // Let mesh traffic run past the reload, then stop it.
    let before = v1.hits.load(Ordering::Relaxed);
    let past = async {
        while v1.hits.load(Ordering::Relaxed) < before + 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), past).await.expect("mesh traffic keeps flowing");
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert!(failed.is_empty(), "{} mesh failures of {}: {failed:?}", failed.len(), ok + failed.len());
    assert!(ok >= 20, "{ok}");
}

#[tokio::test]
async fn a_server_whose_certificate_is_missing_is_an_error_naming_the_field() {
    let (pki, _, _) = Pki::new("missing");
    let gateway = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [\"*\"]
    tls: {mode: SIMPLE, serverCertificate: /nonexistent/tls.crt, privateKey: /nonexistent/tls.key}
";
    let snapshot = config("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), gateway);
    let mut table = RouteTable::compile(&snapshot).unwrap();
    let findings = prepare_files(&mut table, &settings(&pki.dir));
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!(
        (f.resource.as_str(), f.field.as_str()),
        ("Gateway default/edge", "spec.servers[0].tls.serverCertificate")
    );
    assert_eq!(f.line, 29, "{f}");
    assert!(f.message.contains("/nonexistent/tls.crt"), "{f}");
    // (Files: the agent refuses such a config.) The server keeps its place, without a TLS
    // config: its handshakes are refused rather than taken by another server's certificate.
    let servers = table.gateways().servers(8443);
    assert_eq!(servers.len(), 1);
    assert!(servers[0].tls_config.is_none());
}

/// A loopback TLS endpoint with its own certificate (`<base>.crt`/`.key`), answering every HTTP/1
/// request with `name`: what a `PASSTHROUGH` gateway must reach without terminating anything.
async fn tls_endpoint(name: &'static str, base: &Path) -> Endpoint {
    let chain = CertificateDer::pem_file_iter(base.with_extension("crt")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(base.with_extension("key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    endpoint_with(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
}

#[tokio::test]
async fn passthrough_routes_by_sni_to_tls_endpoints_without_terminating() {
    let (pki, ca, ca_key) = Pki::new("passthrough");
    let a = pki.leaf(&ca, &ca_key, "a", &["a.example.com", "split.example.com"], false);
    let b = pki.leaf(&ca, &ca_key, "b", &["b.example.com", "split.example.com"], false);
    let (v1, v2) = (tls_endpoint("backend-a", &a).await, tls_endpoint("backend-b", &b).await);
    let port = free_port();
    let to = |subset: &str, weight: u32| {
        format!("{{destination: {{host: my-app.default.svc.cluster.local, subset: {subset}}}, weight: {weight}}}")
    };
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: pass, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: [\"*.example.com\"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: sni, namespace: default}}
spec:
  hosts: [a.example.com, b.example.com, split.example.com, c.example.com]
  gateways: [istio-system/pass]
  tls:
  - match: [{{sniHosts: [a.example.com]}}]
    route: [{}]
  - match: [{{sniHosts: [b.example.com]}}]
    route: [{}]
  - match: [{{sniHosts: [split.example.com]}}]
    route: [{}, {}]
",
        to("v1", 100),
        to("v2", 100),
        to("v1", 50),
        to("v2", 50)
    );
    let settings = settings(&pki.dir);
    let table = table(&config(v1.addr, v2.addr, &yaml), &settings);
    let explained = table.describe();
    assert!(explained.contains("PASSTHROUGH TLS"), "{explained}");
    let _harness = harness(table).await;
    // The client trusts the CA and checks the endpoint's own name: the gateway holds no
    // certificate at all, so a completed handshake is the endpoint's.
    let client = tls_client(&pki.ca, &[b"http/1.1"], None);
    let read_leaf =
        |base: &Path| CertificateDer::pem_file_iter(base.with_extension("crt")).unwrap().next().unwrap().unwrap();
    let (leaf_a, leaf_b) = (read_leaf(&a), read_leaf(&b));

    let got = https_get(&client, port, "a.example.com", "/").await.unwrap();
    assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "backend-a"));
    assert_eq!(got.certificate, leaf_a, "backend A's own certificate");
    let got = https_get(&client, port, "B.example.com", "/").await.unwrap();
    assert_eq!((got.body.as_str(), got.certificate == leaf_b), ("backend-b", true));

    // 50/50 across the two endpoints, each showing its own certificate.
    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..200 {
        let got = https_get(&client, port, "split.example.com", "/").await.unwrap();
        match got.body.as_str() {
            "backend-a" if got.certificate == leaf_a => to_a += 1,
            "backend-b" if got.certificate == leaf_b => to_b += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!((60..=140).contains(&to_a) && to_a + to_b == 200, "a={to_a} b={to_b}");
    assert_eq!(v1.hits.load(Ordering::Relaxed) + v2.hits.load(Ordering::Relaxed), 202);

    // A name the server admits but no tls rule routes, and one no server admits: closed.
    for sni in ["c.example.com", "other.org"] {
        let refused = https_get(&client, port, sni, "/").await;
        assert!(refused.is_err(), "{sni}: {refused:?}");
    }
    // Garbage where a ClientHello belongs: closed, the listener keeps serving.
    let mut garbage = TcpStream::connect((LOOPBACK, port)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"\x16\x03\x01\x00\x05hello").await.unwrap();
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut garbage, &mut rest))
            .await;
    assert!(closed.is_ok(), "a malformed hello is closed at once");
    assert_eq!(https_get(&client, port, "a.example.com", "/").await.unwrap().body, "backend-a");
}

#[test]
fn passthrough_and_terminated_servers_share_a_port_but_plain_http_does_not() {
    let (pki, ca, ca_key) = Pki::new("mixed");
    let a = pki.leaf(&ca, &ca_key, "a", &["a.example.com"], false);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: mixed, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 9443, name: pass, protocol: TLS}}
    hosts: [\"p.example.com\"]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 9443, name: https, protocol: HTTPS}}
    hosts: [\"a.example.com\"]
    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}
  - port: {{number: 9443, name: http, protocol: HTTP}}
    hosts: [\"h.example.com\"]
  - port: {{number: 9444, name: auto, protocol: TLS}}
    hosts: [\"*.local\"]
    tls: {{mode: AUTO_PASSTHROUGH}}
",
        a.with_extension("crt").display(),
        a.with_extension("key").display()
    );
    let snapshot = config("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), &yaml);
    let mut table = RouteTable::compile(&snapshot).unwrap();
    assert!(prepare_files(&mut table, &settings(&pki.dir)).is_empty());
    let servers: Vec<String> = table.gateways().servers(9443).iter().map(|s| s.name.clone()).collect();
    assert_eq!(servers, ["pass", "https"]);
    assert!(table.gateways().servers(9444).is_empty());
    let warned =
        |field: &str, text: &str| table.warnings().iter().any(|d| d.field == field && d.message.contains(text));
    assert!(warned("spec.servers[2].port", "this server is ignored"), "{:?}", table.warnings());
    assert!(warned("spec.servers[3].tls.mode", "AUTO_PASSTHROUGH"), "{:?}", table.warnings());
}

#[tokio::test]
async fn captured_tls_is_routed_by_sni_with_the_mesh_tls_rules() {
    let (pki, ca, ca_key) = Pki::new("mesh-sni");
    let a = pki.leaf(&ca, &ca_key, "a", &["a.example.com", "my-app.default.svc.cluster.local"], false);
    let b = pki.leaf(&ca, &ca_key, "b", &["b.example.com", "my-app.default.svc.cluster.local"], false);
    let (v1, v2) = (tls_endpoint("backend-a", &a).await, tls_endpoint("backend-b", &b).await);
    let yaml = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sni, namespace: default}
spec:
  hosts: [my-app.default.svc.cluster.local, a.example.com, b.example.com]
  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: my-app.default.svc.cluster.local, subset: v1}}]
  - match: [{sniHosts: [b.example.com]}]
    route: [{destination: {host: my-app.default.svc.cluster.local, subset: v2}}]
";
    let table = RouteTable::compile(&config(v1.addr, v2.addr, yaml)).unwrap();
    let harness = harness(table).await;
    let client = tls_client(&pki.ca, &[b"http/1.1"], None);
    let port = harness.mesh.port();
    for (sni, backend) in
        [("a.example.com", "backend-a"), ("b.example.com", "backend-b"), ("a.example.com", "backend-a")]
    {
        let got = https_get(&client, port, sni, "/").await.unwrap();
        assert_eq!(got.body, backend, "{sni}");
    }
    // No tls rule for the service's own name: Istio's fall-through to the service, either endpoint.
    let got = https_get(&client, port, "my-app.default.svc.cluster.local", "/").await.unwrap();
    assert!(got.body.starts_with("backend-"), "{got:?}");
    assert_eq!(v1.hits.load(Ordering::Relaxed) + v2.hits.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn one_port_terminates_some_names_and_passes_others_through_until_reload_removes_it() {
    let (pki, ca, ca_key) = Pki::new("one-port");
    let gw = pki.leaf(&ca, &ca_key, "gw", &["a.example.com"], false);
    let p = pki.leaf(&ca, &ca_key, "p", &["p.example.com"], false);
    let (passed, plain) = (tls_endpoint("backend-p", &p).await, endpoint("plain-v2").await);
    let port = free_port();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shared, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: pass, protocol: TLS}}
    hosts: [p.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [a.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pass}}
spec:
  hosts: [p.example.com]
  gateways: [shared]
  tls:
  - match: [{{sniHosts: [p.example.com]}}]
    route: [{{destination: {{host: my-app.default.svc.cluster.local, subset: v1}}}}]
---
{}",
        gw.with_extension("crt").display(),
        gw.with_extension("key").display(),
        virtual_service("[shared]", "[a.example.com]").replace("subset: v1", "subset: v2"),
    );
    let settings = settings(&pki.dir);
    let mut harness = harness(table(&config(passed.addr, plain.addr, &yaml), &settings)).await;
    let client = tls_client(&pki.ca, &[b"http/1.1"], None);
    let read_leaf =
        |base: &Path| CertificateDer::pem_file_iter(base.with_extension("crt")).unwrap().next().unwrap().unwrap();

    let got = https_get(&client, port, "p.example.com", "/").await.unwrap();
    assert_eq!((got.body.as_str(), got.certificate == read_leaf(&p)), ("backend-p", true), "passed through");
    let got = https_get(&client, port, "a.example.com", "/").await.unwrap();
    assert_eq!((got.body.as_str(), got.certificate == read_leaf(&gw)), ("plain-v2", true), "terminated here");
    assert_eq!(got.headers.get("x-seen-proto").map(|v| v.as_bytes()), Some(&b"https"[..]), "HTTP seen by the gateway");

    // The Gateway goes on reload: its port closes.
    let without = config(passed.addr, plain.addr, "");
    harness.reload(table(&without, &settings)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect((LOOPBACK, port)).await.is_ok() {
        assert!(Instant::now() < deadline, "port {port} still open after the reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain TCP endpoint: greets with `<name>\n`, then echoes what it reads.
async fn tcp_endpoint(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if stream.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                }
            });
        }
    });
    addr
}

/// Reads the endpoint's greeting, sends `ping` and reads it back: the endpoint's name.
async fn greet_and_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(&mut stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    greeting.trim_end().to_owned()
}

#[tokio::test]
async fn tcp_servers_forward_by_tcp_rules_plain_and_after_ending_tls() {
    let (pki, ca, ca_key) = Pki::new("tcp");
    let leaf = pki.leaf(&ca, &ca_key, "db", &["db.example.com"], false);
    let (v1, v2) = (tcp_endpoint("backend-a").await, tcp_endpoint("backend-b").await);
    let (plain, tls, unrouted) = (free_port(), free_port(), free_port());
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: tcp, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {plain}, name: tcp, protocol: TCP}}
    hosts: [\"*\"]
  - port: {{number: {plain}, name: http, protocol: HTTP}}
    hosts: [\"*\"]
  - port: {{number: {tls}, name: tls, protocol: TLS}}
    hosts: [db.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {crt}, privateKey: {key}}}
  - port: {{number: {unrouted}, name: mongo, protocol: MONGO}}
    hosts: [\"*\"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: db, namespace: default}}
spec:
  hosts: [db.example.com]
  gateways: [istio-system/tcp]
  tcp:
  - match: [{{port: {tls}}}]
    route: [{{destination: {{host: my-app.default.svc.cluster.local, subset: v2}}}}]
  - match: [{{port: {plain}}}]
    route: [{{destination: {{host: my-app.default.svc.cluster.local, subset: v1}}}}]
",
        crt = leaf.with_extension("crt").display(),
        key = leaf.with_extension("key").display()
    );
    let settings = settings(&pki.dir);
    let snapshot = config(v1, v2, &yaml);
    let mut table = RouteTable::compile(&snapshot).unwrap();
    assert!(prepare_files(&mut table, &settings).is_empty());
    // Istio merges nothing onto an opaque TCP port: the HTTP server there is left out, warned.
    let warned = table
        .warnings()
        .iter()
        .any(|d| d.field == "spec.servers[1].port" && d.message.contains("this server is ignored"));
    assert!(warned, "{:?}", table.warnings());
    let described = table.describe();
    assert!(described.contains(&format!("port {tls} (Simple TLS, then TCP)")), "{described}");
    let at = |port: u16| interceptor::routing::L4View {
        port,
        destination: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
        source: "127.0.0.1:1".parse().unwrap(),
        sni: None,
        gateway: Some("istio-system/tcp"),
    };
    let explained = table.explain_tls("", &at(plain));
    assert!(explained.contains("server: istio-system/tcp#0 (TCP)"), "{explained}");
    assert!(explained.contains("✔ default/db#tcp-1"), "{explained}");
    assert!(table.explain_tls("", &at(unrouted)).contains("result: no rule matched: closed"));
    let mut harness = harness(table).await;

    // Plain TCP: the bytes go to v1 as they are.
    let stream = TcpStream::connect((LOOPBACK, plain)).await.unwrap();
    assert_eq!(greet_and_echo(stream).await, "backend-a");
    let mut kept = TcpStream::connect((LOOPBACK, plain)).await.unwrap();
    assert_eq!(greet_and_echo(&mut kept).await, "backend-a");

    // TLS ended at the gateway with the server's certificate; the endpoint speaks plain TCP.
    let client = tls_client(&pki.ca, &[], None);
    let stream = TcpStream::connect((LOOPBACK, tls)).await.unwrap();
    let session = client.connect(ServerName::try_from("db.example.com").unwrap(), stream).await.unwrap();
    let shown = session.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned().unwrap();
    assert_eq!(shown, CertificateDer::pem_file_iter(leaf.with_extension("crt")).unwrap().next().unwrap().unwrap());
    assert_eq!(greet_and_echo(session).await, "backend-b");

    // No tcp rule for the MONGO port: the connection is closed without a byte.
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect((LOOPBACK, unrouted)).await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty(), "{got:?}");

    // The Gateway removed: its listeners drain (1 s in the harness) and a TCP stream still open
    // then, which has no request boundary to stop at, is closed.
    let mut without = RouteTable::compile(&config(v1, v2, "")).unwrap();
    assert!(prepare_files(&mut without, &settings).is_empty());
    harness.reload(without).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), kept.read_to_end(&mut got)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    assert!(TcpStream::connect((LOOPBACK, plain)).await.is_err(), "the port is closed");
}

/// The value of the metric `name` (without labels) in the harness's metrics.
fn metric(h: &Harness, name: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &h.registry).unwrap();
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name}:\n{text}"))
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`, keeping what follows it in
/// `buf`: status, headers (lower-case names) and body.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> (u16, Vec<(String, String)>, String) {
    use tokio::io::AsyncReadExt;
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(len) = response.parse(buf).unwrap() {
            let headers: Vec<(String, String)> = response
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let length: usize = headers.iter().find(|(n, _)| n == "content-length").unwrap().1.parse().unwrap();
            let status = response.code.unwrap();
            while buf.len() < len + length {
                assert_ne!(stream.read_buf(buf).await.unwrap(), 0, "closed inside a response");
            }
            let body = String::from_utf8_lossy(&buf[len..len + length]).into_owned();
            buf.drain(..len + length);
            return (status, headers, body);
        }
        assert_ne!(stream.read_buf(buf).await.unwrap(), 0, "closed before a response head");
    }
}

#[tokio::test]
async fn https_requests_are_relayed_until_one_needs_hyper_which_then_serves_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, ca, ca_key) = Pki::new("relay");
    let (port, gateway) = https_gateway(&pki, &ca, &ca_key);
    let limits = Limits { header_read_timeout: Duration::from_millis(300), ..Limits::default() };
    let h = harness_with(table(&config(v1.addr, v2.addr, &gateway), &settings(&pki.dir)), limits).await;
    let connect = || https_connect(&pki, port);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: app.example.com\r\n\r\n");

    let mut tls = connect().await;
    let mut buf = Vec::new();
    // Relayed: a plain GET, then one whose head comes in two TLS records.
    tls.write_all(get("/a").as_bytes()).await.unwrap();
    let (status, headers, body) = read_response(&mut tls, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert!(headers.contains(&("x-seen-proto".into(), "https".into())), "{headers:?}");
    let split = get("/v2/split");
    tls.write_all(&split.as_bytes()[..20]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    tls.write_all(&split.as_bytes()[20..]).await.unwrap();
    assert_eq!(read_response(&mut tls, &mut buf).await.2, "v2");
    assert_eq!(metric(&h, "interceptor_relayed_requests_total"), 2);

    // Two pipelined in one record: not the relay's; hyper answers both, in order, and keeps the
    // connection, then a POST with a body and a GET.
    tls.write_all(format!("{}{}", get("/v2/one"), get("/two")).as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls, &mut buf).await.2, "v2");
    assert_eq!(read_response(&mut tls, &mut buf).await.2, "v1");
    tls.write_all(b"POST /v2 HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    assert_eq!(read_response(&mut tls, &mut buf).await.2, "v2");
    tls.write_all(get("/after").as_bytes()).await.unwrap();
    let (status, headers, body) = read_response(&mut tls, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert!(headers.contains(&("x-seen-proto".into(), "https".into())), "{headers:?}");
    assert_eq!(metric(&h, "interceptor_relayed_requests_total"), 2, "hyper keeps the connection it took");
    assert_eq!(v1.hits.load(Ordering::Relaxed) + v2.hits.load(Ordering::Relaxed), 6);
    // Relayed and not, requests are reported alike: the gateway as source, the service routed to.
    for version in ["destination_version=\"v1\"", "destination_version=\"v2\""] {
        let service = "destination_service=\"my-app.default.svc.cluster.local\"";
        let line = h.requests_line(&[service, "source_workload=\"ingress\"", version]).await;
        assert!(line.ends_with(" 3"), "{line}");
    }
    // The connection hyper took, left idle: closed without a word (close_notify, then the end)
    // at the header read timeout, as the relay closes one.
    assert_eq!(tls.read(&mut [0u8; 16]).await.unwrap(), 0, "closed without a 408");
    // Another that hyper takes: part of a head and then nothing is answered 408, then the close.
    let mut served = connect().await;
    served.write_all(b"POST /v2 HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n\r\nhello").await.unwrap();
    assert_eq!(read_response(&mut served, &mut buf).await.2, "v2");
    served.write_all(b"GET / HTTP/1.1\r\nHost: app").await.unwrap();
    assert_eq!(read_response(&mut served, &mut buf).await.0, 408);
    assert_eq!(served.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after the 408");

    // Part of a head and then nothing: 408 at the header read timeout, then the close.
    let mut slow = connect().await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app").await.unwrap();
    let (status, _, _) = read_response(&mut slow, &mut Vec::new()).await;
    assert_eq!(status, 408);
    assert_eq!(slow.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after the 408");
    // An idle connection is closed without a word (close_notify, then the end).
    let mut idle = connect().await;
    assert_eq!(idle.read(&mut [0u8; 16]).await.unwrap(), 0);
    drop(tls);
}

#[tokio::test]
async fn requests_the_capture_listener_refuses_are_refused_at_a_gateway_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, _, _) = Pki::new("refusals");
    let (port, gateway) = http_gateway();
    let _h = harness(table(&config(v1.addr, v2.addr, &gateway), &settings(&pki.dir))).await;
    let host = "Host: app.example.com\r\n";
    for (request, flag) in [
        (format!("GET / HTTP/1.1\r\n{host}Host: other.example.com\r\n\r\n"), Some("DPE")),
        ("GET / HTTP/1.1\r\n\r\n".to_owned(), None),
        (
            format!("POST / HTTP/1.1\r\n{host}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            Some("DPE"),
        ),
        // Behind a request the relay answered.
        (format!("GET / HTTP/1.1\r\n{host}\r\nGET / HTTP/1.1\r\n{host}{host}\r\n"), Some("DPE")),
    ] {
        let mut stream = TcpStream::connect((LOOPBACK, port)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut status = read_response(&mut stream, &mut buf).await;
        if request.matches("GET").count() == 2 {
            assert_eq!((status.0, status.2.as_str()), (200, "v1"));
            status = read_response(&mut stream, &mut buf).await;
        }
        let (status, headers, _) = status;
        assert_eq!(status, 400, "{request:?}");
        let flags = headers.iter().find(|(n, _)| n == "x-interceptor-flags").map(|(_, v)| v.as_str());
        assert_eq!(flags, flag, "{request:?}");
        assert!(headers.contains(&("connection".into(), "close".into())), "{request:?}: {headers:?}");
        assert_eq!(stream.read(&mut [0u8; 64]).await.unwrap(), 0, "{request:?}: closed after the 400");
    }
    assert_eq!(v1.hits.load(Ordering::Relaxed) + v2.hits.load(Ordering::Relaxed), 1, "only the valid request");
}

/// A plain HTTP gateway for any host on a fresh port, with the tests' VirtualService bound to it.
fn http_gateway() -> (u16, String) {
    let port = free_port();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: [\"*\"]
---
{vs}",
        vs = virtual_service("[edge]", "[app.example.com]"),
    );
    (port, yaml)
}

/// The HTTPS gateway of the relay tests: `app.example.com` on a fresh port, `/v2` to v2.
fn https_gateway(pki: &Pki, ca: &rcgen::Certificate, ca_key: &KeyPair) -> (u16, String) {
    pki.leaf(ca, ca_key, "app", &["app.example.com"], false);
    let port = free_port();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  servers:
  - port: {{number: {port}, name: https, protocol: HTTPS}}
    hosts: [\"app.example.com\"]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
---
{vs}",
        cert = pki.path("app.crt"),
        key = pki.path("app.key"),
        vs = virtual_service("[edge]", "[app.example.com]"),
    );
    (port, yaml)
}

/// An HTTP/1.1 TLS connection to the gateway at `port` for `app.example.com`.
async fn https_connect(pki: &Pki, port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tls_client(&pki.ca, &[b"http/1.1"], None);
    let stream = TcpStream::connect((LOOPBACK, port)).await.unwrap();
    connector.connect(ServerName::try_from("app.example.com").unwrap(), stream).await.unwrap()
}

#[tokio::test]
async fn a_client_closing_its_tls_mid_request_ends_the_relayed_request_as_dc() {
    use tokio::io::AsyncWriteExt;

    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, ca, ca_key) = Pki::new("close-notify");
    let (port, yaml) = https_gateway(&pki, &ca, &ca_key);
    let h = harness(table(&config(v1.addr, v2.addr, &yaml), &settings(&pki.dir))).await;
    let mut tls = https_connect(&pki, port).await;
    tls.write_all(b"GET /hang HTTP/1.1\r\nHost: app.example.com\r\n\r\n").await.unwrap();
    let hung = async {
        while v1.hits.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), hung).await.expect("the request reached the endpoint");
    // close_notify, then FIN: what curl, Go and Envoy send when they give up.
    tls.shutdown().await.unwrap();
    // The endpoint answers after 60 s: only the relay noticing the client gone ends it sooner.
    let line = h.requests_line(&["response_code=\"0\"", "response_flags=\"DC\""]).await;
    assert!(line.ends_with(" 1"), "{line}");
}

/// An endpoint that answers every connection's first request with a head without length and
/// `body`, then ends the connection: with a FIN, or with a reset when `reset`.
async fn until_close_endpoint(body: &'static str, reset: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}");
                let _ = stream.write_all(answer.as_bytes()).await;
                if reset {
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_body_that_ends_with_the_endpoints_connection_goes_on_in_chunks_and_a_cut_one_without_its_last() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (pki, ca, ca_key) = Pki::new("until-close");
    let (complete, cut) = (until_close_endpoint("whole", false).await, until_close_endpoint("part", true).await);
    let (port, yaml) = https_gateway(&pki, &ca, &ca_key);
    let _h = harness(table(&config(complete, cut, &yaml), &settings(&pki.dir))).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: app.example.com\r\n\r\n");

    // Whole: chunked, its last chunk sent, and the client's connection kept for the next one.
    let mut tls = https_connect(&pki, port).await;
    for _ in 0..2 {
        tls.write_all(get("/").as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            assert_ne!(tls.read_buf(&mut got).await.unwrap(), 0, "{}", String::from_utf8_lossy(&got));
        }
        let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(got.starts_with("http/1.1 200 ok\r\n"), "{got}");
        assert!(got.contains("\r\ntransfer-encoding: chunked\r\n") && !got.contains("connection: close"), "{got}");
        assert!(got.ends_with("\r\n\r\n5\r\nwhole\r\n0\r\n\r\n"), "{got}");
    }

    // Cut (the endpoint reset mid-body): no last chunk, and the connection ends without a
    // close_notify, so the client can tell.
    let mut tls = https_connect(&pki, port).await;
    tls.write_all(get("/v2").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let end = tls.read_to_end(&mut got).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && !got.ends_with("0\r\n\r\n"), "{got}");
    assert!(end.is_err(), "a cut body ended cleanly: {got}");
}

#[tokio::test]
async fn a_request_completed_after_the_drain_began_is_answered_before_the_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (v1, v2) = (endpoint("v1").await, endpoint("v2").await);
    let (pki, _, _) = Pki::new("drain");
    let (port, gateway) = http_gateway();
    let h = harness(table(&config(v1.addr, v2.addr, &gateway), &settings(&pki.dir))).await;
    let mut stream = TcpStream::connect((LOOPBACK, port)).await.unwrap();
    // A request with a body (not the relay's), its head cut short.
    stream.write_all(b"POST /v2 HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\n").await.unwrap();
    let started = async {
        while metric(&h, "interceptor_downstream_connections") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), started).await.expect("the connection is served");
    // The agent shuts down: the listener closes and its connections drain.
    let Harness { gateways, .. } = h;
    let shutdown = tokio::spawn(gateways.shutdown());
    let closed = async {
        while TcpStream::connect((LOOPBACK, port)).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the listener closed");
    stream.write_all(b"\r\nhello").await.unwrap();
    let mut buf = Vec::new();
    let (status, headers, body) = read_response(&mut stream, &mut buf).await;
    assert_eq!((status, body.as_str()), (200, "v2"));
    assert!(headers.contains(&("connection".into(), "close".into())), "{headers:?}");
    assert_eq!(stream.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after the answer");
    tokio::time::timeout(Duration::from_secs(5), shutdown).await.expect("drained").unwrap();
}
