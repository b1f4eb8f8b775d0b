//! End-to-end: captured connections that do not speak HTTP (client-first bytes that are no HTTP
//! request, or a server-first protocol where the client waits) go through as plain TCP to an
//! endpoint of their service, while HTTP on the same node keeps being routed.

mod common;

use common::{load, split, CLIENT, SERVICE, SUBSETS};
use testbed::{Agent, Node, PodSpec, ADMIN};

const ECHO: &str = "\
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
    name: tcp
    protocol: TCP
  resolution: STATIC
  endpoints:
  - address: 10.244.0.14
";

#[test]
fn non_http_connections_are_forwarded_as_tcp_to_their_service() {
    let mut node = Node::create(&[
        PodSpec::new(CLIENT, [10, 244, 0, 10]),
        PodSpec::new("v1a", [10, 244, 0, 11]),
        PodSpec::new("v1b", [10, 244, 0, 12]),
        PodSpec::new("v2", [10, 244, 0, 13]),
        PodSpec::new("echo", [10, 244, 0, 14]),
    ])
    .unwrap();
    node.serve("v1a", "v1").unwrap();
    node.serve("v1b", "v1").unwrap();
    node.serve("v2", "v2").unwrap();
    node.serve_tcp_echo("echo", 9000, "hello from echo\n").unwrap();
    let _agent = Agent::start(
        &node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0)), ("echo.yaml", ECHO)],
        false,
    )
    .unwrap();

    // Client speaks first, and not HTTP.
    let talk = node.raw(CLIENT, &["--target", "10.96.0.30:9000", "--send", "SSH-2.0-test\\r\\n", "--read-ms", "1500"]);
    let talk = talk.unwrap();
    assert_eq!(talk.response, "hello from echo\nSSH-2.0-test\r\n", "{talk:?}");
    // Server speaks first: the client says nothing and gets the banner after the sniff timeout.
    let wait = node.raw(CLIENT, &["--target", "10.96.0.30:9000", "--read-ms", "1500"]).unwrap();
    assert_eq!(wait.response, "hello from echo\n", "{wait:?}");
    // HTTP on the same node is still routed by its rules.
    assert_eq!(load(&node, 10, &[]).count("v1"), 10);

    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let opened = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{") && l.contains("echo.default.svc.cluster.local"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(opened.ends_with(" 2"), "{opened}");
}
