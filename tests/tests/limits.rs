//! End-to-end: bad and excessive traffic, written as raw bytes by a captured client through the
//! real capture path — oversized heads (431), slowloris (408 and close), smuggling attempts,
//! malformed chunk sizes and `Host` lines (400 and close), and a connection cap (503, then
//! recovery).

mod common;

use std::time::Duration;

use common::{load, node, sample, split, CLIENT, SERVICE, SUBSETS, VIP};
use testbed::{read_stdout, Agent, Node, RawReport, ADMIN, GATEWAY};

/// Starts the agent with a settings file holding `limits` (YAML lines under `limits:`).
fn agent_with_limits(node: &Node, limits: &str) -> Agent {
    let settings = std::env::temp_dir().join(format!("{}-settings.yaml", node.node_netns()));
    std::fs::write(&settings, format!("limits:\n{limits}")).unwrap();
    let redirect = format!("{GATEWAY}:15001");
    let agent = Agent::start_with(
        node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))],
        &["--listen", "0.0.0.0:15001", "--redirect", &redirect, "--settings", settings.to_str().unwrap()],
        false,
    );
    let _ = std::fs::remove_file(&settings);
    agent.unwrap()
}

fn raw(node: &Node, send: &str) -> RawReport {
    node.raw(CLIENT, &["--target", VIP, "--send", send, "--read-ms", "5000"]).unwrap()
}

fn status_lines(report: &RawReport) -> usize {
    report.response.matches("HTTP/1.1 ").count()
}

#[test]
fn oversized_heads_get_431_and_the_agent_keeps_serving() {
    let node = node().unwrap();
    let agent = agent_with_limits(&node, "  maxHeaderBytes: 16384\n  maxHeaders: 20\n");
    let big = format!("GET / HTTP/1.1\r\nHost: my-app\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let file = agent.config_dir().parent().unwrap().join("big.http");
    std::fs::write(&file, big).unwrap();
    let report = node.raw(CLIENT, &["--target", VIP, "--send-file", file.to_str().unwrap()]).unwrap();
    assert!(report.response.starts_with("HTTP/1.1 431 "), "{report:?}");
    assert!(report.closed, "{report:?}");

    let many: String = (0..30).map(|i| format!("X-H{i}: 1\\r\\n")).collect();
    let report = raw(&node, &format!("GET / HTTP/1.1\\r\\nHost: my-app\\r\\n{many}\\r\\n"));
    assert!(report.response.starts_with("HTTP/1.1 431 "), "{report:?}");

    // A head within the limits is served.
    let report = raw(&node, "GET / HTTP/1.1\\r\\nHost: my-app\\r\\nConnection: close\\r\\n\\r\\n");
    assert!(report.response.starts_with("HTTP/1.1 200 ") && report.response.ends_with("v1"), "{report:?}");
}

#[test]
fn a_slow_request_head_gets_408_and_the_connection_closes() {
    let node = node().unwrap();
    let _agent = agent_with_limits(&node, "  headerReadTimeout: 1s\n");
    // The head never ends (no blank line): slowloris.
    let report = raw(&node, "GET / HTTP/1.1\\r\\nHost: my-app\\r\\nX-Slow: 1\\r\\n");
    assert!(report.response.starts_with("HTTP/1.1 408 "), "{report:?}");
    assert!(report.closed, "{report:?}");
    assert!((900..4000).contains(&report.elapsed_ms), "{report:?}");
    // The same timeout is the idle timeout of a kept-alive connection between requests; that one
    // closes without a word, as Envoy's does (a 408 could cross the client's next request).
    let idle = raw(&node, "GET / HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n");
    assert!(idle.response.starts_with("HTTP/1.1 200 ") && idle.response.ends_with("\r\n\r\nv1"), "{idle:?}");
    assert!(idle.closed && (900..4000).contains(&idle.elapsed_ms), "{idle:?}");
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert!(text.contains("interceptor_downstream_connections_rejected_total{reason=\"header_timeout\"} 1"), "{text}");
    // A prompt client on the same agent is unaffected.
    assert_eq!(load(&node, 5, &[]).count("v1"), 5);
}

#[test]
fn a_stalled_request_body_gets_408_si() {
    let node = node().unwrap();
    let mut agent = agent_with_limits(&node, "  streamIdleTimeout: 1s\n");
    // Slowloris on the body: 3 of the 10 bytes promised, then nothing. Small bodies are read
    // whole before forwarding (to replay them on a retry), so nothing reaches an endpoint.
    let buffered = raw(&node, "POST / HTTP/1.1\\r\\nHost: my-app\\r\\nContent-Length: 10\\r\\n\\r\\nabc");
    assert!(buffered.response.starts_with("HTTP/1.1 408 "), "{buffered:?}");
    assert!(buffered.response.contains("x-interceptor-flags: SI"), "{buffered:?}");
    assert!((900..4000).contains(&buffered.elapsed_ms), "{buffered:?}");
    // A prompt client on the same agent is unaffected.
    assert_eq!(load(&node, 5, &[]).count("v1"), 5);
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.lines().any(|l| l.contains(" access: [") && l.contains("\" 408 SI ")), "{log}");
}

#[test]
fn a_request_body_that_stalls_while_streaming_upstream_gets_408_si() {
    let mut node = common::node_with_pods().unwrap();
    // The endpoints answer 3 s after a request's head: the stall is seen before any answer.
    for pod in ["v1a", "v1b", "v2"] {
        node.serve_with(pod, "v1", &["--delay-ms", "3000"]).unwrap();
    }
    let _agent = agent_with_limits(&node, "  streamIdleTimeout: 1s\n");
    // A chunked body streams upstream as it comes; one chunk, then nothing.
    let send = "POST / HTTP/1.1\\r\\nHost: my-app\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n";
    let stalled = raw(&node, send);
    assert!(stalled.response.starts_with("HTTP/1.1 408 "), "{stalled:?}");
    assert!(stalled.response.contains("x-interceptor-flags: SI"), "{stalled:?}");
    assert!((900..2900).contains(&stalled.elapsed_ms), "cut at the idle time, not the answer's: {stalled:?}");
}

#[test]
fn smuggling_attempts_are_refused_or_cannot_smuggle() {
    let node = node().unwrap();
    let mut agent = agent_with_limits(&node, "  maxConnections: 100\n");
    // Two different lengths: which one is the body? Refused.
    let report =
        raw(&node, "POST / HTTP/1.1\\r\\nHost: my-app\\r\\nContent-Length: 4\\r\\nContent-Length: 40\\r\\n\\r\\nabcd");
    assert!(report.response.starts_with("HTTP/1.1 400 "), "{report:?}");
    assert!(report.closed, "{report:?}");
    // A transfer coding that is not chunked last: refused.
    let report = raw(&node, "POST / HTTP/1.1\\r\\nHost: my-app\\r\\nTransfer-Encoding: gzip\\r\\n\\r\\nabcd");
    assert!(report.response.starts_with("HTTP/1.1 400 "), "{report:?}");
    // Content-Length and chunked together (CL.TE or TE.CL, in either order): which one frames the
    // body? Refused with 400, as Envoy does; what follows would be a smuggled request if the other
    // framing were believed. It is never served: the proxy answers once and closes.
    for heads in
        ["Content-Length: 50\\r\\nTransfer-Encoding: chunked", "Transfer-Encoding: chunked\\r\\nContent-Length: 50"]
    {
        let report = raw(
            &node,
            &format!(
                "GET / HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n\
                 POST / HTTP/1.1\\r\\nHost: my-app\\r\\n{heads}\\r\\n\\r\\n\
                 0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n"
            ),
        );
        // The valid request before it is served; then 400 and the connection closes.
        assert_eq!(status_lines(&report), 2, "{report:?}");
        assert!(report.response.starts_with("HTTP/1.1 200 "), "{report:?}");
        assert!(report.response.contains("HTTP/1.1 400 "), "{report:?}");
        assert!(report.response.contains("x-interceptor-flags: DPE"), "{report:?}");
        assert!(report.closed, "{report:?}");
    }
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert!(
        text.contains("interceptor_downstream_connections_rejected_total{reason=\"ambiguous_length\"} 2"),
        "{text}"
    );
    // And counted as requests, as Envoy counts its protocol errors.
    let dpe = ["response_code=\"400\"", "response_flags=\"DPE\""];
    assert_eq!(sample(&text, "istio_requests_total", &dpe), Some(2.0), "{text}");
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("/smuggled"), "the smuggled request was served: {log}");
}

#[test]
fn malformed_chunk_sizes_and_host_lines_get_400_and_never_reach_an_endpoint() {
    let node = node().unwrap();
    let mut agent = agent_with_limits(&node, "  maxConnections: 100\n");
    let chunked = |size: &str| {
        format!("POST / HTTP/1.1\\r\\nHost: my-app\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n{size}\\r\\nhello\\r\\n0\\r\\n\\r\\n")
    };
    // As Envoy: 400 DPE for a body its codec cannot read, 400 without a flag for a missing Host.
    // Two Host lines Envoy joins and routes; RFC 9112 asks for a 400, a protocol error (DPE).
    for (send, why, flagged) in [
        (chunked("-5"), "a negative chunk size", true),
        (chunked("10000000000000000"), "a chunk size past 64 bits", true),
        ("GET / HTTP/1.1\\r\\nHost: my-app\\r\\nHost: other\\r\\n\\r\\n".to_owned(), "two Host lines", true),
        ("GET / HTTP/1.1\\r\\n\\r\\n".to_owned(), "HTTP/1.1 without Host", false),
    ] {
        let report = raw(&node, &send);
        assert!(report.response.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{why}: {report:?}");
        assert_eq!(report.response.contains("x-interceptor-flags: DPE"), flagged, "{why}: {report:?}");
        assert!(report.closed, "{why}: {report:?}");
        assert_eq!(status_lines(&report), 1, "{why}: {report:?}");
    }
    // HTTP/1.0 needs no Host: it is routed by the address the client connected to.
    let report = raw(&node, "GET / HTTP/1.0\\r\\n\\r\\n");
    assert!(report.response.contains(" 200 OK\r\n") && report.response.ends_with("v1"), "{report:?}");

    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let rejected = "interceptor_downstream_connections_rejected_total";
    for (reason, count) in [("malformed_body", 2.0), ("duplicate_host", 1.0), ("missing_host", 1.0)] {
        assert_eq!(sample(&text, rejected, &[&format!("reason=\"{reason}\"")]), Some(count), "{reason}: {text}");
    }
    let dpe = ["response_code=\"400\"", "response_flags=\"DPE\""];
    assert_eq!(sample(&text, "istio_requests_total", &dpe), Some(3.0), "{text}");
    let unflagged = ["response_code=\"400\"", "response_flags=\"-\""];
    assert_eq!(sample(&text, "istio_requests_total", &unflagged), Some(1.0), "{text}");
    // Only the HTTP/1.0 request reached an endpoint.
    assert_eq!(sample(&text, "istio_requests_total", &["response_code=\"200\""]), Some(1.0), "{text}");
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log.matches(" HTTP/1.1\" 400 DPE ").count(), 3, "each refusal is in the access log: {log}");
    assert_eq!(log.matches(" HTTP/1.1\" 400 - ").count(), 1, "each refusal is in the access log: {log}");
}

#[test]
fn connections_over_the_cap_get_503_and_the_proxy_recovers() {
    let node = node().unwrap();
    let _agent = agent_with_limits(&node, "  maxConnections: 3\n");
    // Three idle connections hold every slot for 3 s.
    let mut holders: Vec<_> =
        (0..3).map(|_| node.raw_in_background(CLIENT, &["--target", VIP, "--read-ms", "3000"]).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(700));
    let report = raw(&node, "GET / HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n");
    assert!(report.response.starts_with("HTTP/1.1 503 "), "{report:?}");
    assert!(report.response.contains("x-interceptor-flags: OM"), "{report:?}");
    assert!(report.closed, "{report:?}");
    for holder in &mut holders {
        let held: RawReport = serde_json::from_str(&read_stdout(holder).unwrap()).unwrap();
        assert_eq!((held.response.as_str(), held.closed), ("", false), "{held:?}");
    }
    // The slots come back once the holders leave: nothing leaks.
    std::thread::sleep(Duration::from_millis(300));
    let after = load(&node, 20, &["--new-connections"]);
    assert_eq!(after.count("v1"), 20, "{after:?}");
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert!(text.contains("interceptor_downstream_connections_rejected_total{reason=\"overload\"} 1"), "{text}");
    assert!(text.contains("interceptor_downstream_connections 0"), "{text}");
}
