//! End-to-end: `tls` VirtualService rules route captured TLS by SNI. The my-app pods serve HTTPS
//! themselves (Debian's `openssl s_server -WWW`, one certificate naming both hosts, made here) on
//! a `TLS` service port; curl in the captured client pod calls the service VIP with SNI
//! `a.example.com` or `b.example.com` and verifies the pod's certificate, so the agent only read
//! the ClientHello and passed the bytes through. The same pods behind a Gateway `PASSTHROUGH`
//! server: curl outside the mesh reaches them through the node's gateway port by SNI.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{certificates_for, gateway_agent, node_with_pods, serve_https, Scratch, CLIENT, SECURE};
use testbed::{Agent, Node, GATEWAY};

/// curl in the client pod, inside the captured cgroup: `https://<sni>/version` at the VIP, the
/// pod's certificate checked against the test CA. The body, or curl's error.
fn captured_https(node: &Node, dir: &Path, sni: &str) -> Result<String, String> {
    https(node, dir, sni, "10.96.0.20", 443, true)
}

/// curl in the client pod (in the captured cgroup or not): `https://<sni>:<port>/version` sent to
/// `address`, the pod's certificate checked against the test CA. The body, or curl's error.
fn https(node: &Node, dir: &Path, sni: &str, address: &str, port: u16, captured: bool) -> Result<String, String> {
    let (resolve, url, ca) = (
        format!("{sni}:{port}:{address}"),
        format!("https://{sni}:{port}/version"),
        dir.join("ca.pem").display().to_string(),
    );
    let args = ["-sS", "--max-time", "5", "--cacert", &ca, "--resolve", &resolve, &url];
    let out = node.command_in(&node.pod_netns(CLIENT), captured, Path::new("curl"), &args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn captured_tls_goes_to_the_subset_its_sni_names() {
    let dir = Scratch::new("sni-subsets");
    certificates_for(&dir, &["a.example.com", "b.example.com"]);
    let mut node = node_with_pods().unwrap();
    serve_https(&mut node, &dir, 8443);
    let mut agent = Agent::start(&node, &[("secure.yaml", SECURE)], false).unwrap();
    for _ in 0..10 {
        assert_eq!(captured_https(&node, &dir, "a.example.com").as_deref(), Ok("v1"), "{}", agent.log());
        assert_eq!(captured_https(&node, &dir, "b.example.com").as_deref(), Ok("v2"), "{}", agent.log());
    }
    // The access log names the SNI and the tls rule.
    agent.wait_for_log("sni=b.example.com rule=default/secure#tls-1", Duration::from_secs(5)).unwrap();
    drop(agent);
}

#[test]
fn a_passthrough_gateway_sends_tls_on_by_sni_without_terminating() {
    let dir = Scratch::new("sni-passthrough");
    certificates_for(&dir, &["a.example.com", "b.example.com", "c.example.com"]);
    let mut node = node_with_pods().unwrap();
    serve_https(&mut node, &dir, 8443);
    let port = 9443;
    let gateway = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: pass, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tls, protocol: TLS}}
    hosts: [\"*.example.com\"]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge}}
spec:
  hosts: [a.example.com, b.example.com]
  gateways: [pass]
  tls:
  - match: [{{sniHosts: [a.example.com]}}]
    route: [{{destination: {{host: secure.default.svc.cluster.local, subset: v1}}}}]
  - match: [{{sniHosts: [b.example.com]}}]
    route: [{{destination: {{host: secure.default.svc.cluster.local, subset: v2}}}}]
"
    );
    let credentials = dir.join("credentials");
    let mut agent = gateway_agent(&node, &[("secure.yaml", SECURE), ("gw.yaml", &gateway)], &credentials);
    agent.wait_for_log("gateway listener open", Duration::from_secs(10)).unwrap();
    let gateway_address = GATEWAY.to_string();
    let through = |sni| https(&node, &dir, sni, &gateway_address, port, false);
    for _ in 0..5 {
        assert_eq!(through("a.example.com").as_deref(), Ok("v1"), "{}", agent.log());
        assert_eq!(through("b.example.com").as_deref(), Ok("v2"), "{}", agent.log());
    }
    // A name the server admits but no tls rule routes: closed before any handshake.
    assert!(through("c.example.com").is_err());
    agent.wait_for_log("sni=c.example.com: NR", Duration::from_secs(5)).unwrap();
    drop(agent);
}
