//! End-to-end: captured connections that do not speak HTTP (client-first bytes that are no HTTP
//! request, or a server-first protocol where the client waits) go through as plain TCP to an
//! endpoint of their service, while HTTP on the same node keeps being routed.

mod common;

use common::{echo_service, load, sample, split, v2_under, CLIENT, SERVICE, SUBSETS};
use testbed::{Agent, Node, PodSpec, ADMIN};

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
        &[
            ("svc.yaml", SERVICE),
            ("dr.yaml", SUBSETS),
            ("vs.yaml", &split(100, 0)),
            ("echo.yaml", &echo_service("TCP")),
        ],
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

#[test]
fn http2_and_grpc_are_routed_by_path_with_trailers_preserved() {
    let node = common::node().unwrap();
    let _agent = Agent::start(
        &node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &v2_under("/pkg.Greeter/"))],
        false,
    )
    .unwrap();
    // HTTP/2 with prior knowledge, plain requests: routed like HTTP/1 (and sent upstream as HTTP/1.1).
    let h2 = load(&node, 20, &["--h2", "--path", "/index.html"]);
    assert_eq!((h2.count("v1"), h2.failures), (20, 0), "{h2:?}");
    // gRPC calls on one HTTP/2 connection: routed by their path, trailers come through.
    let grpc = load(&node, 20, &["--grpc", "--path", "/pkg.Greeter/SayHello"]);
    assert_eq!((grpc.count("v2"), grpc.failures, grpc.connections), (20, 0, 1), "{grpc:?}");
    assert_eq!(grpc.grpc_status.get("0"), Some(&20), "{grpc:?}");
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let calls = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("request_protocol=\"grpc\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(calls.contains("destination_version=\"v2\"") && calls.ends_with(" 20"), "{calls}");
    // Counted once each, data frames only (the trailers are not body): twenty times "v2".
    let bytes = text
        .lines()
        .find(|l| l.starts_with("istio_response_bytes_sum{") && l.contains("request_protocol=\"grpc\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(bytes.ends_with(" 40.0"), "{bytes}");
    // The same client over HTTP/1.1 still works.
    assert_eq!(load(&node, 5, &[]).count("v1"), 5);
}

#[test]
fn an_http_upgrade_is_routed_then_tunnelled() {
    let node = common::node().unwrap();
    let vs = v2_under("/ws");
    let _agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false).unwrap();
    // The bytes after the head travel once both sides switched; v2 (chosen by the path) prefixes
    // its name and echoes them.
    let report = node
        .raw(
            CLIENT,
            &[
                "--target",
                common::VIP,
                "--send",
                "GET /ws/chat HTTP/1.1\\r\\nHost: my-app\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\\r\\nhello over the tunnel",
                "--read-ms",
                "1500",
            ],
        )
        .unwrap();
    assert!(report.response.starts_with("HTTP/1.1 101 "), "{report:?}");
    assert!(report.response.to_ascii_lowercase().contains("upgrade: websocket"), "{report:?}");
    assert!(report.response.ends_with("\r\n\r\nv2:hello over the tunnel"), "{report:?}");
    // Observed once, as switched (101), when the tunnel closed (the client left), with every byte
    // it carried, as Envoy records an upgraded stream.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let switched = ["response_code=\"101\""];
    let upgraded = sample(&text, "istio_requests_total", &["response_code=\"101\"", "response_flags=\"-\""]);
    assert_eq!(upgraded, Some(1.0), "{text}");
    let up = sample(&text, "istio_request_bytes_sum", &switched);
    assert_eq!(up, Some("hello over the tunnel".len() as f64), "{text}");
    let down = sample(&text, "istio_response_bytes_sum", &switched);
    assert_eq!(down, Some("v2:hello over the tunnel".len() as f64), "{text}");
}

#[test]
fn pipelined_requests_are_answered_in_order_and_an_unread_body_is_never_parsed() {
    let node = common::node().unwrap();
    // Paths outside /api get a local 404, which never reads the request body.
    let vs = split(100, 0).replace("  - route:\n", "  - match:\n    - uri:\n        prefix: /api\n    route:\n");
    let _agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false).unwrap();
    let raw = |send: &str| node.raw(CLIENT, &["--target", common::VIP, "--send", send, "--read-ms", "1000"]).unwrap();

    // Three requests in one write: three answers, in order, and the connection stays open.
    let report = raw("GET /api/a HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n\
         GET /api/b HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n\
         GET /api/c HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n");
    let paths: Vec<&str> = report.response.lines().filter_map(|l| l.strip_prefix("x-seen-path: ")).collect();
    assert_eq!(paths, ["/api/a", "/api/b", "/api/c"], "{report:?}");
    assert_eq!(report.response.matches("HTTP/1.1 200 ").count(), 3, "{report:?}");
    assert!(!report.response.to_ascii_lowercase().contains("connection: close"), "{report:?}");
    assert!(!report.closed, "{report:?}");

    // HTTP/1.0, even asking for keep-alive: answered, then closed (hyper ends a 1.0 body of
    // unknown length by closing, so the proxy never keeps one).
    let report = raw("GET /api/ten HTTP/1.0\\r\\nHost: my-app\\r\\nConnection: keep-alive\\r\\n\\r\\n");
    assert!(report.response.starts_with("HTTP/1.0 200 ") && report.response.ends_with("v1"), "{report:?}");
    assert!(report.closed && report.elapsed_ms < 900, "{report:?}");

    // A body the proxy answers without reading, shaped like a request: never served as one.
    let report = raw("POST /web HTTP/1.1\\r\\nHost: my-app\\r\\nContent-Length: 44\\r\\n\\r\\n\
         GET /api/smuggled HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n\
         GET /api/after HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n");
    assert!(report.response.starts_with("HTTP/1.1 404 "), "{report:?}");
    assert!(!report.response.contains("/api/smuggled"), "{report:?}");
    // Either the request after the body is served, or the connection closes: nothing else.
    assert!(report.response.contains("x-seen-path: /api/after") || report.closed, "{report:?}");
}

/// curl's h2c: `--http2` on an `http://` URL asks to upgrade the first request, then reuses the
/// HTTP/2 connection for the next URL.
fn curl(node: &Node, args: &[&str]) -> (String, String) {
    let mut full = vec!["--http2", "-sv", "--max-time", "10"];
    full.extend_from_slice(args);
    let out = node
        .command_in(&node.pod_netns(CLIENT), true, std::path::Path::new("curl"), &full)
        .output()
        .expect("curl runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "curl failed: {stdout}\n{stderr}");
    (stdout, stderr.into_owned())
}

#[test]
fn an_h2c_upgrade_is_served_as_http2_and_routed() {
    let node = common::node().unwrap();
    let vs = v2_under("/h2c");
    let _agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false).unwrap();
    // The upgrade request is answered on stream 1 (v2, by its path), the second URL on the same
    // connection (no new connect) by the rules too (v1).
    let each = " [%{http_version} %{http_code} connects:%{num_connects}]\\n";
    let (stdout, stderr) = curl(&node, &["-w", each, "http://10.96.0.10/h2c/first", "http://10.96.0.10/second"]);
    assert_eq!(stdout, "v2 [2 200 connects:1]\nv1 [2 200 connects:0]\n", "{stderr}");
    assert!(stderr.contains("< HTTP/1.1 101 Switching Protocols"), "{stderr}");
    assert_eq!(stderr.matches("< HTTP/2 200").count(), 2, "{stderr}");
    // An upgrade request with a body is served as HTTP/1.1 (the body would have to be replayed as
    // HTTP/2 DATA), still routed.
    let (stdout, stderr) = curl(&node, &["-w", each, "--data", "payload", "http://10.96.0.10/h2c/post"]);
    assert_eq!(stdout, "v2 [1.1 200 connects:1]\n", "{stderr}");
    assert!(stderr.contains("Upgrade: h2c") && !stderr.contains("< HTTP/1.1 101"), "{stderr}");
}
