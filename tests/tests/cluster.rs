//! The test control plane itself: a real API server with Istio CRDs, kubelet-less pods that the
//! real endpointslice controller publishes, a token kubeconfig, and the bridge from a namespace.
//! Needs root and the binaries `cargo xtask setup` builds.

use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testbed::ControlPlane;
use testbed::LoopbackBridge;

const SEED: &str = include_str!("../../config/mesh/my-app.yaml");

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: my-app
  namespace: default
spec:
  selector:
    app: my-app
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#;

/// The agent's ServiceAccount with read access to what it watches.
const READER: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: interceptor
  namespace: default
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: interceptor
rules:
- apiGroups: [networking.istio.io]
  resources: ["*"]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [services, pods, namespaces]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: interceptor
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: interceptor
subjects:
- kind: ServiceAccount
  name: interceptor
  namespace: default
"#;

/// A network namespace with its loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let netns = Netns(format!("icp-test-{:08x}", rand::random::<u32>()));
        ip(&["netns", "add", &netns.0]);
        ip(&["-n", &netns.0, "link", "set", "lo", "up"]);
        netns
    }

    /// `program args…` run inside the namespace.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, program]).args(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}: {status}");
}

/// The Istio documents of the seed example (VirtualService and DestinationRule; the
/// ServiceEntry stands in for a cluster and is left out), placed in `default`.
fn seed_istio_rules() -> String {
    SEED.split("\n---\n")
        .filter(|doc| doc.contains("kind: VirtualService") || doc.contains("kind: DestinationRule"))
        .map(|doc| doc.replacen("metadata:\n", "metadata:\n  namespace: default\n", 1))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// `(address, ready)` of every endpoint in the EndpointSlices of Service `default/my-app`, and
/// the ports they list.
fn my_app_endpoints(plane: &ControlPlane) -> (Vec<(String, bool)>, Vec<Value>) {
    let out = plane
        .kubectl(&["get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=my-app", "-o", "json"])
        .unwrap();
    let list: Value = serde_json::from_str(&out).unwrap();
    let mut endpoints = Vec::new();
    let mut ports = Vec::new();
    for slice in list["items"].as_array().unwrap() {
        ports.extend(slice["ports"].as_array().cloned().unwrap_or_default());
        for endpoint in slice["endpoints"].as_array().cloned().unwrap_or_default() {
            let ready = endpoint["conditions"]["ready"].as_bool().unwrap_or(false);
            for address in endpoint["addresses"].as_array().unwrap() {
                endpoints.push((address.as_str().unwrap().to_owned(), ready));
            }
        }
    }
    endpoints.sort();
    (endpoints, ports)
}

#[test]
fn real_control_plane_publishes_endpoints_of_kubelet_less_pods_and_serves_a_namespace_through_the_bridge() {
    let started = Instant::now();
    let mut plane = ControlPlane::start().unwrap();
    eprintln!("control plane ready in {:?} at {}", started.elapsed(), plane.server());

    plane.install_istio_crds().unwrap();
    plane.apply(&seed_istio_rules()).unwrap();
    let vs =
        plane.kubectl(&["get", "virtualservices.v1.networking.istio.io", "my-app-vs", "-n", "default", "-o", "json"]);
    let vs: Value = serde_json::from_str(&vs.unwrap()).unwrap();
    assert_eq!(vs["spec"]["http"][1]["route"][0]["weight"], 90, "read back as v1: {vs}");
    assert_eq!(
        plane.kubectl(&["get", "dr", "-n", "default", "-o", "name"]).unwrap().trim(),
        "destinationrule.networking.istio.io/my-app-dr"
    );

    plane.apply(SERVICE).unwrap();
    plane.create_node("node-a").unwrap();
    plane
        .create_ready_pod(
            "default",
            "my-app-v1",
            "node-a",
            &[("app", "my-app"), ("version", "v1")],
            Ipv4Addr::new(10, 244, 0, 11),
        )
        .unwrap();
    plane
        .create_ready_pod(
            "default",
            "my-app-v2",
            "node-a",
            &[("app", "my-app"), ("version", "v2")],
            Ipv4Addr::new(10, 244, 0, 13),
        )
        .unwrap();
    let expected = vec![("10.244.0.11".to_owned(), true), ("10.244.0.13".to_owned(), true)];
    let deadline = Instant::now() + Duration::from_secs(30);
    let (endpoints, ports) = loop {
        let (endpoints, ports) = my_app_endpoints(&plane);
        if endpoints == expected || Instant::now() > deadline {
            break (endpoints, ports);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(endpoints, expected);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!((ports[0]["name"].as_str(), ports[0]["port"].as_u64()), (Some("http"), Some(8080)));

    // The agent's view: its ServiceAccount's token, through a bridge from a namespace's loopback.
    eprintln!("endpoints published after {:?}", started.elapsed());
    plane.apply(READER).unwrap();
    let token = plane.create_token("default", "interceptor").unwrap();
    let netns = Netns::create();
    let bridge = LoopbackBridge::open(&netns.0, plane.address()).unwrap();
    assert!(TcpStream::connect(("127.0.0.1", bridge.port())).is_err(), "the bridge listens in the namespace only");
    let kubeconfig = plane.kubeconfig_for_token(&token, &bridge.url()).unwrap();
    let kubectl = |args: &[&str]| {
        let out = netns
            .command("/usr/bin/kubectl", &[&["--kubeconfig", kubeconfig.to_str().unwrap()], args].concat())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, body, stderr) = kubectl(&["get", "--raw", "/readyz"]);
    assert!(ok && body == "ok", "/readyz through the bridge (TLS verified against the CA): {body} {stderr}");
    let (ok, names, stderr) = kubectl(&["get", "virtualservices", "-A", "-o", "name"]);
    assert!(ok && names == "virtualservice.networking.istio.io/my-app-vs", "{names} {stderr}");
    let (ok, _, stderr) = kubectl(&["get", "secrets", "-n", "default"]);
    assert!(!ok && stderr.contains("forbidden"), "the token is the ServiceAccount's, not admin's: {stderr}");

    // API server downtime: the bridge stays, connections fail, then work again on restart.
    plane.stop_apiserver();
    let (ok, _, _) = kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"]);
    assert!(!ok, "API server stopped");
    plane.start_apiserver().unwrap();
    let (ok, body, stderr) = kubectl(&["get", "--raw", "/readyz"]);
    assert!(ok && body == "ok", "after restart: {body} {stderr}");
    drop(bridge);
    eprintln!("test done in {:?}", started.elapsed());
}
