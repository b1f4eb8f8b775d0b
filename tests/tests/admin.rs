//! End-to-end: the agent's admin server (readiness, config dump, Istio metrics, kernel counters),
//! the access log and `interceptor stats`, read from a real agent on a test node.

mod common;

use std::time::Duration;

use common::{load, node, node_with_pods, sample, split, CLIENT, SERVICE, SUBSETS, VIP};
use testbed::{run_agent_command, Agent, ADMIN};

#[test]
fn admin_serves_readiness_config_and_istio_metrics_with_kernel_counters() {
    let node = node().unwrap();
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], false)
            .unwrap();

    let (status, _) = node.node_get(ADMIN, "/ready").unwrap();
    assert_eq!(status, 200);
    let (status, dump) = node.node_get(ADMIN, "/config_dump").unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], 1, "{dump:#}");
    let kinds: Vec<_> = dump["resources"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["VirtualService", "DestinationRule", "ServiceEntry"], "{dump:#}");
    assert_eq!(dump["resources"][0]["spec"]["http"][0]["route"][0]["weight"], 100, "{dump:#}");

    // 30 requests on 3 connections, all to v1.
    for _ in 0..3 {
        let report = load(&node, 10, &[]);
        assert_eq!(report.count("v1"), 10, "{report:?}");
    }
    // One unroutable request: a path no rule matches gives 404 NR.
    let vs = split(100, 0).replace("  - route:\n", "  - match:\n    - uri:\n        prefix: /api\n    route:\n");
    std::fs::write(agent.config_dir().join("vs.yaml"), vs).unwrap();
    agent.wait_for_log("config applied", Duration::from_secs(10)).unwrap();
    assert_eq!(load(&node, 4, &["--path", "/web"]).status(404), 4);

    let (status, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    let ok = [
        "reporter=\"source\"",
        "destination_service=\"my-app.default.svc.cluster.local\"",
        "destination_version=\"v1\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
    ];
    assert_eq!(sample(&text, "istio_requests_total", &ok), Some(30.0), "{text}");
    assert_eq!(sample(&text, "istio_request_duration_milliseconds_count", &ok), Some(30.0), "{text}");
    // Every answer is the two bytes "v1".
    assert_eq!(sample(&text, "istio_response_bytes_sum", &ok), Some(60.0), "{text}");
    let nr = ["response_code=\"404\"", "response_flags=\"NR\""];
    assert_eq!(sample(&text, "istio_requests_total", &nr), Some(4.0), "{text}");
    // The kernel counted one connection per load run: 3 + 1.
    assert_eq!(
        sample(&text, "interceptor_capture_connections_total", &["service=\"10.96.0.10:80\""]),
        Some(4.0),
        "{text}"
    );
    assert!(sample(&text, "interceptor_program_captured_total", &["program=\"connect4\""]) >= Some(4.0), "{text}");
    assert_eq!(sample(&text, "interceptor_config_reloads_total", &["result=\"applied\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "interceptor_config_version", &[]), Some(2.0), "{text}");

    // A refused change is counted and leaves the dump at the running version.
    std::fs::write(agent.config_dir().join("vs.yaml"), split(0, 100).replace("weight: 100", "weight: -1")).unwrap();
    agent.wait_for_log("config change rejected", Duration::from_secs(10)).unwrap();
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert_eq!(sample(&text, "interceptor_config_reloads_total", &["result=\"rejected\""]), Some(1.0), "{text}");
    let (_, dump) = node.node_get(ADMIN, "/config_dump").unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&dump).unwrap()["version"], 2);

    // `interceptor stats` reads the same pinned counters.
    let (code, out) = run_agent_command(&["stats", "--bpffs", node.bpffs().to_str().unwrap()]).unwrap();
    assert_eq!(code, Some(0), "{out}");
    let row = out.lines().find(|l| l.starts_with("10.96.0.10:80")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row.split_whitespace().nth(1), Some("4"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("connect4")), "{out}");

    // The access log: Envoy's default format, one line per request, local replies with their flag.
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<_> = log.lines().filter(|l| l.contains(" access: [")).collect();
    assert_eq!(lines.len(), 34, "{log}");
    let nr_line = lines.iter().find(|l| l.contains("\"GET /web HTTP/1.1\" 404 NR ")).unwrap_or_else(|| panic!("{log}"));
    assert!(nr_line.contains("\"my-app.default.svc.cluster.local\" \"-\""), "{nr_line}");
    let ok_line = lines[0];
    assert!(ok_line.contains("\"GET / HTTP/1.1\" 200 - 0 2 "), "{ok_line}");
    assert!(ok_line.contains(&format!(" {VIP} 10.244.0.10:")), "{ok_line}");
    assert!(ok_line.contains("outbound|80|v1|my-app.default.svc.cluster.local"), "{ok_line}");
}

/// The client pod declared as a workload, so metrics can name it.
const CLIENT_ENTRY: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata:
  name: client-vm
spec:
  address: 10.244.0.10
  labels: {app: client}
";

#[test]
fn chunked_responses_count_their_real_bytes_and_time_to_the_last_byte() {
    const BYTES: usize = 5000;
    const BODY_MS: u64 = 320;
    let mut node = node_with_pods().unwrap();
    // No Content-Length: the body streams chunked, 16 pieces over BODY_MS.
    let chunked =
        ["--body-bytes", &BYTES.to_string(), "--body-ms", &BODY_MS.to_string(), "--chunked"].map(str::to_owned);
    let chunked: Vec<&str> = chunked.iter().map(String::as_str).collect();
    node.serve_with("v1a", "v1", &chunked).unwrap();
    node.serve_with("v1b", "v1", &chunked).unwrap();
    node.serve("v2", "v2").unwrap();
    let mut agent = Agent::start(
        &node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0)), ("client.yaml", CLIENT_ENTRY)],
        false,
    )
    .unwrap();

    let report = load(&node, 3, &[]);
    assert_eq!(report.count(&format!("v1 {BYTES} bytes")), 3, "{report:?}");
    // A client that leaves mid-body: what was sent is logged, with Envoy's DC flag.
    let left = node
        .raw(CLIENT, &["--target", VIP, "--send", "GET / HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n", "--read-ms", "100"])
        .unwrap();
    assert!(left.response.starts_with("HTTP/1.1 200"), "{}", left.response);
    std::thread::sleep(Duration::from_millis(BODY_MS + 200));

    let (status, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    let ok = [
        "source_workload=\"client-vm\"",
        "source_workload_namespace=\"default\"",
        "destination_version=\"v1\"",
        "response_code=\"200\"",
        "response_flags=\"-\"",
    ];
    assert_eq!(sample(&text, "istio_requests_total", &ok), Some(3.0), "{text}");
    assert_eq!(sample(&text, "istio_response_bytes_sum", &ok), Some(3.0 * BYTES as f64), "{text}");
    // Timed to the last byte, not to the headers (which leave before the first chunk).
    let took = sample(&text, "istio_request_duration_milliseconds_sum", &ok).unwrap_or_else(|| panic!("{text}"));
    assert!(took >= 3.0 * (BODY_MS as f64) * 0.9, "{took} ms for 3 requests\n{text}");
    let dc = ["source_workload=\"client-vm\"", "response_flags=\"DC\""];
    assert_eq!(sample(&text, "istio_requests_total", &dc), Some(1.0), "{text}");
    let partial = sample(&text, "istio_response_bytes_sum", &dc).unwrap_or_else(|| panic!("{text}"));
    assert!(partial < BYTES as f64, "{partial}\n{text}");

    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<_> = log.lines().filter(|l| l.contains(" access: [")).collect();
    assert_eq!(lines.len(), 4, "{log}");
    let full = lines.iter().filter(|l| l.contains(&format!("\" 200 - 0 {BYTES} "))).count();
    assert_eq!(full, 3, "{log}");
    assert!(lines.iter().any(|l| l.contains("\" 200 DC 0 ")), "{log}");
}

#[test]
fn an_upstream_that_breaks_off_mid_body_is_logged_with_uc() {
    let node = node().unwrap();
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], false)
            .unwrap();
    // The backend promises its 2-byte body (`v1`) and sends 1 byte of it.
    let report = node
        .raw(CLIENT, &["--target", VIP, "--send", "GET /__break HTTP/1.1\r\nHost: my-app\r\n\r\n", "--read-ms", "1000"])
        .unwrap();
    assert!(report.response.starts_with("HTTP/1.1 200 ") && report.response.ends_with("\r\n\r\nv"), "{report:?}");
    assert!(report.closed, "{report:?}");
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let broken = ["response_code=\"200\"", "response_flags=\"UC\""];
    assert_eq!(sample(&text, "istio_requests_total", &broken), Some(1.0), "{text}");
    assert_eq!(sample(&text, "istio_response_bytes_sum", &broken), Some(1.0), "{text}");
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.lines().any(|l| l.contains(" access: [") && l.contains("\" 200 UC 0 1 ")), "{log}");
}

#[test]
fn a_client_that_leaves_before_the_answer_is_logged_with_code_0_and_dc() {
    let node = node().unwrap();
    // Every answer waits 1 s (fault delay), so the client below is gone long before it.
    let vs = split(100, 0).replace(
        "  - route:\n",
        "  - fault:\n      delay:\n        fixedDelay: 1s\n        percentage: {value: 100}\n    route:\n",
    );
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false).unwrap();
    let left = node
        .raw(CLIENT, &["--target", VIP, "--send", "GET / HTTP/1.1\\r\\nHost: my-app\\r\\n\\r\\n", "--read-ms", "200"])
        .unwrap();
    assert_eq!(left.response, "", "{left:?}");
    // Observed when the proxy notices, not when the delay would have ended.
    std::thread::sleep(Duration::from_millis(400));
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let dc =
        ["destination_service=\"my-app.default.svc.cluster.local\"", "response_code=\"0\"", "response_flags=\"DI,DC\""];
    assert_eq!(sample(&text, "istio_requests_total", &dc), Some(1.0), "{text}");
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.lines().any(|l| l.contains(" access: [") && l.contains("\" 0 DI,DC 0 0 ")), "{log}");
}
