//! End-to-end: upstream TLS on the test node. The my-app pods serve HTTPS (Debian's `openssl
//! s_server`, certificates made here); with a DestinationRule `tls: SIMPLE` the agent originates
//! TLS to them, so a captured plain-HTTP client (curl in the client pod) gets their answers; with
//! `ISTIO_MUTUAL` it answers 503 `UF` itself.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{certificates, node_with_pods, serve_https, Scratch, CLIENT, HOST, SERVICE};
use testbed::{Agent, Node};

/// `my-app`'s DestinationRule with subsets and `tls` as the service's TLS settings.
fn destination_rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: my-app-dr}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {tls}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"
    )
}

/// curl in the client pod, inside the captured cgroup: status and body of `GET http://VIP/version`.
fn captured_get(node: &Node) -> (String, String) {
    let args = ["-sS", "--max-time", "5", "-w", "\n%{http_code}", "http://10.96.0.10/version"];
    let out = node.command_in(&node.pod_netns(CLIENT), true, Path::new("curl"), &args).output().unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

#[test]
fn a_captured_plain_request_reaches_https_pods_over_originated_tls() {
    let dir = Scratch::new("utls-simple");
    certificates(&dir, HOST);
    let mut node = node_with_pods().unwrap();
    serve_https(&mut node, &dir, 8080);
    let dr = destination_rule(&format!("{{mode: SIMPLE, caCertificates: {}}}", dir.join("ca.pem").display()));
    let agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", &dr)], false).unwrap();
    let mut versions = Vec::new();
    for _ in 0..20 {
        let (status, body) = captured_get(&node);
        assert_eq!(status, "200", "{body}\n{}", agent.log());
        versions.push(body);
    }
    assert!(versions.iter().all(|v| v == "v1" || v == "v2"), "{versions:?}");
    assert!(versions.iter().any(|v| v == "v1"), "{versions:?}");
    drop(agent);
}

#[test]
fn istio_mutual_is_answered_503_uf_by_the_agent() {
    let dir = Scratch::new("utls-istio");
    certificates(&dir, HOST);
    let mut node = node_with_pods().unwrap();
    serve_https(&mut node, &dir, 8080);
    let dr = destination_rule("{mode: ISTIO_MUTUAL}");
    let mut agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", &dr)], false).unwrap();
    let (status, body) = captured_get(&node);
    assert_eq!(status, "503", "{body}");
    assert!(body.contains("ISTIO_MUTUAL") && body.contains("outbound|80||my-app.default.svc.cluster.local"), "{body}");
    agent.wait_for_log(" UF ", Duration::from_secs(5)).unwrap();
    drop(agent);
}
