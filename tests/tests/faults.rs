//! End-to-end: failing neighbours under load — a backend killed mid-load, upstreams that trickle
//! past the route's deadline — through the real capture path. Needs root; run via `cargo xtask test`.

use std::time::{Duration, Instant};

use testbed::fixtures::{load, node_with_pods, sample, virtual_service, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::{read_stdout, Agent, LoadReport, ADMIN};

/// Requests the backend at `addr` served so far (its `/__count`), asked directly.
fn served(node: &testbed::Node, addr: &str) -> usize {
    let r = node.load(CLIENT, &["--target", addr, "--host", "count", "-n", "1", "--path", "/__count"]).unwrap();
    r.last_body.parse().unwrap_or_else(|_| panic!("{r:?}"))
}

/// The agent's resident memory in KiB (`VmRSS`).
fn rss_kib(agent: &Agent) -> u64 {
    let pid = agent.pid().expect("the agent runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_else(|| panic!("{status}"));
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn a_backend_killed_mid_load_fails_at_most_one_request_in_a_thousand_and_is_ejected_at_once() {
    const REQUESTS: usize = 3000;
    let mut node = node_with_pods().unwrap();
    let victim = node.serve("v1a", "v1a").unwrap();
    node.serve("v1b", "v1b").unwrap();
    node.serve("v2", "v2").unwrap();
    let dr = SUBSETS.replace(
        "  subsets:\n",
        "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection:\n      consecutive5xxErrors: 3\n      interval: 1s\n      baseEjectionTime: 60s\n      maxEjectionPercent: 50\n  subsets:\n",
    );
    let vs = virtual_service(
        "  - retries:\n      attempts: 3\n      retryOn: connect-failure,reset,503\n    route:\n    - destination: {host: my-app, subset: v1}\n",
    );
    let mut agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", &dr), ("vs.yaml", &vs)], false).unwrap();

    let n = REQUESTS.to_string();
    let args = ["--target", VIP, "--host", HOST, "-n", &n, "--pause-ms", "1", "--max-seconds", "60"];
    let mut background = node.load_in_background(CLIENT, &args).unwrap();
    // Kill v1a once it has its share of a few hundred requests, in the middle of the load.
    let deadline = Instant::now() + Duration::from_secs(20);
    while served(&node, "10.244.0.11:8080") < 300 {
        assert!(Instant::now() < deadline, "the load never reached v1a");
    }
    node.kill(victim);
    let killed = Instant::now();
    // Connection failures count as 5xx for outlier detection (Istio's default): three in a row
    // eject v1a without waiting for the next interval.
    agent.wait_for_log("outlier detection ejected endpoint", Duration::from_secs(1)).unwrap();
    let ejected_after = killed.elapsed();
    assert!(agent.log().contains("10.244.0.11:8080"), "{}", agent.log());

    let report: LoadReport = serde_json::from_str(&read_stdout(&mut background).unwrap()).unwrap();
    eprintln!("v1a ejected {ejected_after:?} after the kill; load: {report:?}");
    assert_eq!(report.requests, REQUESTS, "{report:?}");
    let failed = report.requests - report.status(200);
    assert!(failed * 1000 <= REQUESTS, "{failed} of {REQUESTS} failed: {report:?}");
    assert!(report.count("v1a") >= 300 && report.count("v1b") >= REQUESTS / 2, "{report:?}");
}

#[test]
fn a_route_timeout_cuts_a_trickling_body_and_memory_returns_to_its_level() {
    let mut node = node_with_pods().unwrap();
    // 64 bytes in 16 pieces over 3.2 s: a piece every 200 ms, the head at once.
    node.serve_with("v1a", "v1", &["--body-bytes", "64", "--body-ms", "3200", "--chunked"]).unwrap();
    node.serve_with("v1b", "v1", &["--body-bytes", "64", "--body-ms", "3200", "--chunked"]).unwrap();
    node.serve("v2", "v2").unwrap();
    let vs = virtual_service(
        "  - match:\n    - uri: {prefix: /patient}\n    route:\n    - destination: {host: my-app, subset: v1}\n  - timeout: 500ms\n    route:\n    - destination: {host: my-app, subset: v1}\n",
    );
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false).unwrap();

    // Without a timeout the trickle is whole, however slow.
    let patient = load(&node, 1, &["--path", "/patient"]);
    assert_eq!((patient.status(200), patient.last_body.len()), (1, 64), "{patient:?}");

    // With one, the head and what came before the deadline go out, then the stream is cut: the
    // client sees a broken body, never a short one passed off as whole (Envoy's route timeout
    // spans the response body too).
    let started = Instant::now();
    let cut = node
        .raw(CLIENT, &["--target", VIP, "--send", "GET / HTTP/1.1\r\nHost: my-app\r\n\r\n", "--read-ms", "3000"])
        .unwrap();
    let took = started.elapsed();
    assert!(cut.response.starts_with("HTTP/1.1 200 "), "{cut:?}");
    assert!(cut.closed && !cut.response.ends_with("0\r\n\r\n"), "cut off, without the last chunk: {cut:?}");
    assert!(took < Duration::from_millis(2500), "cut at the deadline, not at the body's end: {took:?}");
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let timed_out = ["response_code=\"200\"", "response_flags=\"UT\""];
    assert_eq!(sample(&text, "istio_requests_total", &timed_out), Some(1.0), "{text}");

    // Many of them leave nothing behind: memory back near where it was once they are done.
    let before = rss_kib(&agent);
    let many = load(&node, 20, &[]);
    assert_eq!(many.requests, 20, "{many:?}");
    assert_eq!(
        sample(&node.node_get(ADMIN, "/stats/prometheus").unwrap().1, "istio_requests_total", &timed_out),
        Some(21.0)
    );
    let after = rss_kib(&agent);
    eprintln!("agent RSS {before} KiB before 20 cut responses, {after} KiB after");
    assert!(after < before + 4096, "RSS grew from {before} to {after} KiB");
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.lines().any(|l| l.contains(" access: [") && l.contains("\" 200 UT ")), "{log}");
}
