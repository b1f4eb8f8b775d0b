//! End-to-end: the agent's admin server (readiness, config dump, Istio metrics, kernel counters),
//! the access log and `interceptor stats`, read from a real agent on a test node.

mod common;

use std::time::Duration;

use common::{load, node, split, SERVICE, SUBSETS, VIP};
use testbed::{run_agent_command, Agent, ADMIN};

/// The value of the first sample of `name` whose labels include every `key="value"` in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

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
