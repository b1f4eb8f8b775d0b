//! End-to-end: the fast path for plain HTTP/1.1 requests (no body, a forwarding rule) relays them
//! on raw connections with what the full path would send; anything else still goes through hyper.

mod common;

use common::{load, node, sample, split, CLIENT, SERVICE, SUBSETS, VIP};
use testbed::{Agent, Node, RawReport, ADMIN};

fn raw(node: &Node, send: &str) -> RawReport {
    // The connection stays open after a kept-alive answer: read for a second, not until a close.
    node.raw(CLIENT, &["--target", VIP, "--send", send, "--read-ms", "1000"]).unwrap()
}

fn relayed(node: &Node) -> f64 {
    let (status, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    sample(&text, "interceptor_relayed_requests_total", &[]).unwrap_or_else(|| panic!("no relay counter in\n{text}"))
}

#[test]
fn plain_requests_are_relayed_without_hop_by_hop_headers_and_bodies_go_through_hyper() {
    let node = node().unwrap();
    let agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], false)
        .unwrap();

    let r = raw(
        &node,
        "GET /x?y=1 HTTP/1.1\\r\\nHost: my-app.default.svc.cluster.local\\r\\nConnection: keep-alive, x-hop\\r\\nx-hop: 1\\r\\nKeep-Alive: timeout=5\\r\\nX-Forwarded-Proto: https\\r\\nx-kept: yes\\r\\n\\r\\n",
    );
    let answer = r.response.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200 ok\r\n"), "{answer}");
    assert!(!r.closed, "a kept-alive request's connection stays open: {answer}");
    for expected in ["x-served-by: v1", "x-seen-path: /x?y=1", "x-req-x-kept: yes", "x-req-x-forwarded-proto: http"] {
        assert!(answer.contains(expected), "{expected:?} missing from\n{answer}");
    }
    for dropped in ["x-req-x-hop", "x-req-keep-alive", "x-req-connection", "x-req-x-forwarded-proto: https"] {
        assert!(!answer.contains(dropped), "{dropped:?} reached the endpoint:\n{answer}");
    }
    assert_eq!(relayed(&node), 1.0);

    // Keep-alive connections from the load client: every request relayed, endpoints reused.
    for _ in 0..2 {
        assert_eq!(load(&node, 20, &[]).count("v1"), 20);
    }
    assert_eq!(relayed(&node), 41.0);

    // A request with a body is hyper's: answered all the same, not relayed.
    let r = raw(&node, "POST /form HTTP/1.1\\r\\nHost: my-app\\r\\nContent-Length: 5\\r\\n\\r\\nhello");
    assert!(r.response.starts_with("HTTP/1.1 200 OK\r\n"), "{}", r.response);
    assert!(r.response.contains("x-served-by: v1"), "{}", r.response);
    assert_eq!(relayed(&node), 41.0, "{}", agent.log());

    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let ok = ["destination_version=\"v1\"", "response_code=\"200\"", "response_flags=\"-\""];
    assert_eq!(sample(&text, "istio_requests_total", &ok), Some(42.0), "{text}");
}
