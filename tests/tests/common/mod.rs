//! Shared by the end-to-end test files: the standard service, node and load helpers, and test
//! certificates.
#![allow(unused_imports)]

pub use testbed::fixtures::*;

use std::path::Path;

use std::process::Stdio;
use std::time::Duration;

use testbed::{wait_for_listener, Agent, Node, GATEWAY};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// The echo service: a ServiceEntry on 10.96.0.30:9000 whose one endpoint is the `echo` pod
/// (10.244.0.14), its port declared with `protocol` (TCP, or HTTP for a port the proxy sniffs).
#[allow(dead_code)] // not every test file talks to the echo pod
pub fn echo_service(protocol: &str) -> String {
    let name = protocol.to_ascii_lowercase();
    format!(
        "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: echo
spec:
  hosts:
  - echo.default.svc.cluster.local
  addresses:
  - 10.96.0.30
  ports:
  - number: 9000
    name: {name}
    protocol: {protocol}
  resolution: STATIC
  endpoints:
  - address: 10.244.0.14
"
    )
}

/// A directory for one test's files (certificates, credentials) in the temp directory, made
/// empty when created and removed when dropped, also when the test fails.
#[allow(dead_code)] // not every test file writes files of its own
pub struct Scratch(std::path::PathBuf);

#[allow(dead_code)]
impl Scratch {
    /// `interceptor-e2e-<name>-<pid>`, empty.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("interceptor-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate for `name`, written as `ca.pem`, `tls.crt`, `tls.key` in `dir`.
#[allow(dead_code)] // not every test file makes certificates
pub fn certificates(dir: &Path, name: &str) {
    certificates_for(dir, &[name]);
}

/// As [`certificates`], the server certificate naming each of `names`.
#[allow(dead_code)] // not every test file makes certificates
pub fn certificates_for(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "interceptor e2e CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
}

/// The agent on the node with the gateway address and labels set, credentials under `credentials`.
#[allow(dead_code)] // not every test file runs a gateway
pub fn gateway_agent(node: &Node, files: &[(&str, &str)], credentials: &Path) -> Agent {
    let settings = credentials.join("agent.yaml");
    std::fs::create_dir_all(credentials).unwrap();
    std::fs::write(
        &settings,
        format!(
            "labels: {{istio: ingressgateway}}\ngatewayAddress: {GATEWAY}\ncredentials: {}\n",
            credentials.display()
        ),
    )
    .unwrap();
    let redirect = format!("{GATEWAY}:15001");
    let settings = settings.display().to_string();
    let flags = ["--listen", "0.0.0.0:15001", "--redirect", &redirect, "--settings", &settings];
    Agent::start_with(node, files, &flags, false).unwrap()
}

/// `secure`: VIP 10.96.0.20, a `TLS` port 443 → 8443 on the pods, subsets by version, and `tls`
/// rules: SNI `a.example.com` to v1, `b.example.com` to v2.
#[allow(dead_code)] // not every test file routes TLS
pub const SECURE: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure}
spec:
  hosts: [secure.default.svc.cluster.local]
  addresses: [10.96.0.20]
  ports: [{number: 443, name: tls, protocol: TLS, targetPort: 8443}]
  resolution: STATIC
  endpoints:
  - {address: 10.244.0.11, labels: {version: v1}}
  - {address: 10.244.0.12, labels: {version: v1}}
  - {address: 10.244.0.13, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure}
spec:
  host: secure.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure}
spec:
  hosts: [secure.default.svc.cluster.local, a.example.com, b.example.com]
  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v1}}]
  - match: [{sniHosts: [b.example.com]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v2}}]
";

/// The my-app pods: name, address, version.
#[allow(dead_code)] // not every test file serves HTTPS
pub const PODS: [(&str, &str, &str); 3] =
    [("v1a", "10.244.0.11", "v1"), ("v1b", "10.244.0.12", "v1"), ("v2", "10.244.0.13", "v2")];

/// Each my-app pod serves HTTPS on `port` with `openssl s_server -WWW` and the certificate
/// `certificates` wrote in `dir`: `GET /version` answers the file `version` of its own
/// directory, the pod's version, as HTTP/1.0 ending with the connection.
#[allow(dead_code)] // not every test file serves HTTPS
pub fn serve_https(node: &mut Node, dir: &Path, port: u16) {
    serve_https_in(node, dir, port, false);
}

/// As [`serve_https`], inside the capture cgroup (as kubelet's pods are): the fast path pairs
/// the pods' sockets.
#[allow(dead_code)] // not every test file serves HTTPS
pub fn serve_https_captured(node: &mut Node, dir: &Path, port: u16) {
    serve_https_in(node, dir, port, true);
}

fn serve_https_in(node: &mut Node, dir: &Path, port: u16, captured: bool) {
    let (crt, key) = (dir.join("tls.crt").display().to_string(), dir.join("tls.key").display().to_string());
    for (pod, ip, version) in PODS {
        let root = dir.join(pod);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("version"), version).unwrap();
        let listen = format!("{ip}:{port}");
        let args = ["s_server", "-quiet", "-accept", &listen, "-cert", &crt, "-key", &key, "-WWW"];
        let mut cmd = node.command_in(&node.pod_netns(pod), captured, Path::new("openssl"), &args);
        cmd.current_dir(&root).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        node.spawn(cmd).unwrap();
        wait_for_listener(&node.pod_netns(pod), &listen, Duration::from_secs(5)).unwrap();
    }
}
