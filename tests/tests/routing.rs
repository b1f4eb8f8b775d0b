//! End-to-end: Istio rule actions (redirect, rewrite, headers, fault, retries, timeout, mirror,
//! outlier detection) through the real capture path. Needs root; run via `cargo xtask test`.

use std::time::{Duration, Instant};

use testbed::fixtures::{load, node, node_with_pods, virtual_service, CLIENT, SERVICE, SUBSETS};
use testbed::Agent;

fn start(node: &testbed::Node, http: &str) -> Agent {
    Agent::start(node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &virtual_service(http))], false)
        .unwrap()
}

#[test]
fn redirect_answers_with_location_and_keeps_the_query() {
    let node = node().unwrap();
    let _agent = start(
        &node,
        "  - match:\n    - uri: {prefix: /old}\n    redirect:\n      uri: /new\n      redirectCode: 308\n",
    );
    let r = load(&node, 3, &["--path", "/old/page?x=1"]);
    assert_eq!(r.status(308), 3, "{r:?}");
    assert_eq!(
        r.last_headers.get("location").map(String::as_str),
        Some("http://my-app.default.svc.cluster.local/new?x=1")
    );
}

#[test]
fn rewrite_replaces_the_matched_prefix_and_the_authority() {
    let node = node().unwrap();
    let _agent = start(
        &node,
        "  - match:\n    - uri: {prefix: /api/v1}\n    rewrite:\n      uri: /v2\n      authority: backend.internal\n    route:\n    - destination: {host: my-app, subset: v2}\n",
    );
    let r = load(&node, 2, &["--path", "/api/v1/users?id=7"]);
    assert_eq!(r.count("v2"), 2, "{r:?}");
    assert_eq!(r.last_headers.get("x-seen-path").map(String::as_str), Some("/v2/users?id=7"));
    assert_eq!(r.last_headers.get("x-seen-host").map(String::as_str), Some("backend.internal"));
}

#[test]
fn header_operations_apply_to_request_and_response() {
    let node = node().unwrap();
    let _agent = start(
        &node,
        "  - headers:\n      request:\n        set: {x-team: blue}\n        remove: [x-secret]\n      response:\n        add: {x-route: canary}\n    route:\n    - destination: {host: my-app, subset: v2}\n      headers:\n        request:\n          add: {x-dest: v2}\n",
    );
    let r = load(&node, 1, &["-H", "x-secret: 1", "-H", "x-team: red"]);
    let h = &r.last_headers;
    assert_eq!(h.get("x-req-x-team").map(String::as_str), Some("blue"), "{h:?}");
    assert_eq!(h.get("x-req-x-dest").map(String::as_str), Some("v2"), "{h:?}");
    assert!(!h.contains_key("x-req-x-secret"), "{h:?}");
    assert_eq!(h.get("x-route").map(String::as_str), Some("canary"), "{h:?}");
}

#[test]
fn fault_abort_and_delay() {
    let node = node().unwrap();
    let _agent = start(
        &node,
        "  - match:\n    - uri: {prefix: /abort}\n    fault:\n      abort:\n        httpStatus: 418\n        percentage: {value: 100}\n    route:\n    - destination: {host: my-app, subset: v1}\n  - fault:\n      delay:\n        fixedDelay: 300ms\n        percentage: {value: 100}\n    route:\n    - destination: {host: my-app, subset: v1}\n",
    );
    let aborted = load(&node, 10, &["--path", "/abort"]);
    assert_eq!(aborted.status(418), 10, "{aborted:?}");
    let delayed = load(&node, 3, &[]);
    assert_eq!(delayed.count("v1"), 3, "{delayed:?}");
    assert!(delayed.elapsed_ms >= 900, "3 requests delayed 300 ms each took {} ms", delayed.elapsed_ms);
}

#[test]
fn retries_move_to_another_endpoint_and_can_be_turned_off() {
    let mut node = node_with_pods().unwrap();
    node.serve_with("v1a", "v1a", &["--status", "503"]).unwrap();
    node.serve("v1b", "v1b").unwrap();
    node.serve("v2", "v2").unwrap();
    let route = "    route:\n    - destination: {host: my-app, subset: v1}\n";
    let agent = start(
        &node,
        &format!("  - match:\n    - uri: {{prefix: /noretry}}\n    retries: {{attempts: 0}}\n{route}  - retries:\n      attempts: 3\n      retryOn: 5xx\n{route}"),
    );
    let retried = load(&node, 60, &[]);
    assert_eq!(retried.count("v1b"), 60, "every request ends on the healthy endpoint: {retried:?}");
    let plain = load(&node, 60, &["--path", "/noretry"]);
    assert!(plain.status(503) > 5 && plain.count("v1b") > 5, "without retries both endpoints answer: {plain:?}");
    drop(agent);
    let failing =
        node.load(CLIENT, &["--target", "10.244.0.11:8080", "--host", "v1a", "-n", "1", "--path", "/__count"]).unwrap();
    let hits: usize = failing.last_body.parse().unwrap();
    assert!(hits >= 10 + plain.status(503), "the failing endpoint was tried, then retried away from: {hits}");
}

#[test]
fn a_route_timeout_answers_504_ut() {
    let mut node = node_with_pods().unwrap();
    node.serve_with("v2", "v2", &["--delay-ms", "1500"]).unwrap();
    let _agent = start(&node, "  - timeout: 200ms\n    route:\n    - destination: {host: my-app, subset: v2}\n");
    let started = Instant::now();
    let r = load(&node, 2, &[]);
    assert_eq!(r.status(504), 2, "{r:?}");
    assert_eq!(r.last_headers.get("x-interceptor-flags").map(String::as_str), Some("UT"));
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[test]
fn mirrored_copies_reach_the_mirror_without_changing_the_answer() {
    let node = node().unwrap();
    let _agent = start(&node, "  - route:\n    - destination: {host: my-app, subset: v1}\n    mirror: {host: my-app, subset: v2}\n    mirrorPercentage: {value: 100}\n");
    let r = load(&node, 20, &[]);
    assert_eq!(r.count("v1"), 20, "{r:?}");
    // The mirror is fire-and-forget: wait (bounded) for the copies to land on v2.
    let mut mirrored = 0;
    for _ in 0..50 {
        let count = node
            .load(CLIENT, &["--target", "10.244.0.13:8080", "--host", "v2", "-n", "1", "--path", "/__count"])
            .unwrap();
        mirrored = count.last_body.parse().unwrap_or(0);
        if mirrored >= 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mirrored, 20);
}

#[test]
fn a_mirror_that_never_answers_costs_a_bounded_number_of_copies_and_nothing_else() {
    let mut node = node_with_pods().unwrap();
    node.serve("v1a", "v1").unwrap();
    node.serve("v1b", "v1").unwrap();
    node.serve_with("v2", "v2", &["--delay-ms", "60000"]).unwrap();
    let _agent = start(&node, "  - route:\n    - destination: {host: my-app, subset: v1}\n    mirror: {host: my-app, subset: v2}\n    mirrorPercentage: {value: 100}\n");
    let started = Instant::now();
    let r = load(&node, 100, &[]);
    assert_eq!((r.failures, r.count("v1")), (0, 100), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the mirrored traffic waited: {:?}", started.elapsed());
    // 64 copies hang on v2; the other 36 are dropped and counted, not queued.
    let (_, metrics) = node.node_get(testbed::ADMIN, "/stats/prometheus").unwrap();
    let dropped =
        testbed::fixtures::sample(&metrics, "interceptor_mirror_requests_dropped_total", &["reason=\"overflow\""]);
    assert_eq!(dropped, Some(36.0), "{metrics}");
}

#[test]
fn outlier_detection_ejects_the_failing_endpoint() {
    let mut node = node_with_pods().unwrap();
    node.serve_with("v1a", "v1a", &["--status", "500"]).unwrap();
    node.serve("v1b", "v1b").unwrap();
    node.serve("v2", "v2").unwrap();
    let dr = SUBSETS.replace(
        "  subsets:\n",
        "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n  subsets:\n",
    );
    let vs = virtual_service("  - retries: {attempts: 0}\n    route:\n    - destination: {host: my-app, subset: v1}\n");
    let _agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", &dr), ("vs.yaml", &vs)], false).unwrap();
    let r = load(&node, 100, &[]);
    assert_eq!(r.status(500), 2, "two 500s eject v1a, then only v1b answers: {r:?}");
    assert_eq!(r.count("v1b"), 98, "{r:?}");
}

#[test]
fn tcp_routes_forward_non_http_ports_by_weight() {
    let node = node().unwrap();
    let tcp_service = SERVICE
        .replace("name: my-app\n", "name: tcp-app\n")
        .replace("- my-app.default", "- tcp-app.default")
        .replace("10.96.0.10", "10.96.0.30")
        .replace("number: 80\n    name: http\n    protocol: HTTP", "number: 9000\n    name: db\n    protocol: TCP");
    let dr =
        SUBSETS.replace("name: my-app-dr", "name: tcp-app-dr").replace("host: my-app.default", "host: tcp-app.default");
    let vs = "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: tcp-app\nspec:\n  hosts: [tcp-app]\n  tcp:\n  - match:\n    - port: 9000\n    route:\n    - destination: {host: tcp-app, subset: v2}\n";
    let mut agent =
        Agent::start(&node, &[("svc.yaml", &tcp_service), ("dr.yaml", &dr), ("vs.yaml", vs)], false).unwrap();
    // The bytes happen to be HTTP; the proxy does not parse them on a TCP port.
    let r = node
        .load(CLIENT, &["--target", "10.96.0.30:9000", "--host", "tcp-app", "-n", "10", "--new-connections"])
        .unwrap();
    assert_eq!(r.count("v2"), 10, "{r:?}");
    let (_, log) = agent.stop().unwrap();
    assert_eq!(log.matches("[tcp] tcp-app").count(), 10, "{log}");
    assert!(log.contains("default/tcp-app#tcp-0"), "{log}");
}
