//! End-to-end: live reload without loss — many config changes (weights flipped, a service added
//! and removed) while a client keeps sending requests through the real capture path — and what a
//! reload keeps: outlier ejections and connection-pool limits.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{load, node, node_with_pods, split, virtual_service, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::{poll_until, read_stdout, Agent, LoadReport, Node, ADMIN};

const RELOADS: usize = 100;
const OTHER_VIP: &str = "10.96.0.20:80";

/// Replaces `dir/name` in one step (write aside, then rename), as Kubernetes swaps ConfigMap
/// files, so the agent never reads a half-written file.
fn put(dir: &Path, name: &str, text: &str) {
    let aside = dir.parent().unwrap().join(format!(".{name}.tmp"));
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, dir.join(name)).unwrap();
}

/// `my-app`'s ServiceEntry renamed to `other`, on VIP 10.96.0.20.
fn other_service() -> String {
    SERVICE
        .replace("name: my-app", "name: other")
        .replace("- my-app.default", "- other.default")
        .replace("10.96.0.10", "10.96.0.20")
}

/// Replaces a config file and waits (bounded) until the agent applied it.
fn reload(agent: &mut Agent, name: &str, text: &str) {
    let applied = agent.log().matches("config applied").count();
    put(&agent.config_dir(), name, text);
    agent.wait_for_log_count("config applied", applied + 1, Duration::from_secs(10)).unwrap();
}

/// Requests the backend at `addr` served so far (its `/__count`).
fn served(node: &Node, addr: &str) -> usize {
    let count = node.load(CLIENT, &["--target", addr, "--host", "count", "-n", "1", "--path", "/__count"]).unwrap();
    count.last_body.parse().unwrap_or(0)
}

#[test]
fn an_ejected_endpoint_stays_ejected_across_reloads() {
    let mut node = node_with_pods().unwrap();
    node.serve_with("v1a", "v1a", &["--status", "500"]).unwrap();
    node.serve("v1b", "v1b").unwrap();
    node.serve("v2", "v2").unwrap();
    let dr = |pool: &str| {
        SUBSETS.replace(
            "  subsets:\n",
            &format!("  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    outlierDetection:\n      consecutive5xxErrors: 2\n      baseEjectionTime: 60s\n      maxEjectionPercent: 100\n{pool}  subsets:\n"),
        )
    };
    // A rule's body (after its first line) and the rule that is only that body.
    let to_v1 = "    retries: {attempts: 0}\n    route:\n    - destination: {host: my-app, subset: v1}\n";
    let catch_all = format!("  - {}", to_v1.trim_start());
    let vs = virtual_service(&catch_all);
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", &dr("")), ("vs.yaml", &vs)], false).unwrap();
    let first = load(&node, 20, &[]);
    assert_eq!((first.status(500), first.count("v1b")), (2, 18), "two 500s eject v1a: {first:?}");

    // A change that leaves the cluster alone: another service.
    reload(&mut agent, "other.yaml", &other_service());
    let after = load(&node, 20, &[]);
    assert_eq!(after.count("v1b"), 20, "after a service was added: {after:?}");

    // A change to the cluster's routes: a new rule in front (it marks its answers).
    let marked = format!(
        "  - match:\n    - uri: {{prefix: /new}}\n    headers: {{response: {{set: {{x-rule: new}}}}}}\n{to_v1}"
    );
    reload(&mut agent, "vs.yaml", &virtual_service(&format!("{marked}{catch_all}")));
    let after = load(&node, 20, &["--path", "/new"]);
    assert_eq!(after.count("v1b"), 20, "after a new route: {after:?}");
    assert_eq!(after.last_headers.get("x-rule").map(String::as_str), Some("new"), "the new route serves");

    // A change to the cluster's own policy (pool settings).
    reload(&mut agent, "dr.yaml", &dr("    connectionPool:\n      http: {http1MaxPendingRequests: 100}\n"));
    let after = load(&node, 20, &[]);
    assert_eq!(after.count("v1b"), 20, "after its policy changed: {after:?}");
    assert_eq!(served(&node, "10.244.0.11:8080"), 2, "the ejected endpoint got nothing after its two 500s");
}

#[test]
fn a_pool_limit_holds_while_the_old_and_the_new_config_serve_together() {
    let mut node = node_with_pods().unwrap();
    node.serve("v1a", "v1").unwrap();
    node.serve("v1b", "v1").unwrap();
    node.serve_with("v2", "v2", &["--delay-ms", "5000"]).unwrap();
    // One request at a time, one more may wait.
    let dr = SUBSETS.replace(
        "  subsets:\n",
        "  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n  subsets:\n",
    );
    let to_v2 =
        |extra: &str| virtual_service(&format!("  - route:\n    - destination: {{host: my-app, subset: v2}}\n{extra}"));
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", &dr), ("vs.yaml", &to_v2(""))], false).unwrap();
    let one = ["--target", VIP, "--host", HOST, "-n", "1"];
    // The old config admits one request, which holds the slot for 5 s.
    let mut old = node.load_in_background(CLIENT, &one).unwrap();
    poll_until("the old config's request at the backend", Duration::from_secs(10), || {
        Ok(served(&node, "10.244.0.13:8080") == 1)
    })
    .unwrap();

    // The new config (it marks its answers) gets three while the old one's is still running.
    reload(&mut agent, "vs.yaml", &to_v2("    headers: {response: {set: {x-config: new}}}\n"));
    let mut newer: Vec<_> = (0..3).map(|_| node.load_in_background(CLIENT, &one).unwrap()).collect();
    let reports: Vec<LoadReport> =
        newer.iter_mut().map(|child| serde_json::from_str(&read_stdout(child).unwrap()).unwrap()).collect();
    let overflowed = reports
        .iter()
        .filter(|r| r.status(503) == 1 && r.last_headers.get("x-interceptor-flags").map(String::as_str) == Some("UO"))
        .count();
    assert_eq!(overflowed, 2, "one slot, held by the old config, and one pending place: {reports:#?}");
    let waited: Vec<&LoadReport> = reports.iter().filter(|r| r.count("v2") == 1).collect();
    assert_eq!(waited.len(), 1, "{reports:#?}");
    assert_eq!(waited[0].last_headers.get("x-config").map(String::as_str), Some("new"), "{reports:#?}");
    assert!(waited[0].elapsed_ms >= 5000, "it waited for the old config's request: {reports:#?}");
    let old: LoadReport = serde_json::from_str(&read_stdout(&mut old).unwrap()).unwrap();
    assert_eq!(old.count("v2"), 1, "{old:?}");
    assert_eq!(served(&node, "10.244.0.13:8080"), 2, "the old config's request and the one that waited; none beyond");
}

#[test]
fn a_hundred_reloads_during_load_fail_no_request_and_each_new_split_serves() {
    let node = node().unwrap();
    let agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], false)
        .unwrap();
    let dir = agent.config_dir();
    let other = other_service();

    let stop = dir.parent().unwrap().join("stop-load");
    let stop_arg = stop.display().to_string();
    let mut background = node
        .load_in_background(
            CLIENT,
            &[
                "--target",
                VIP,
                "--host",
                HOST,
                "-n",
                "1000000",
                "--pause-ms",
                "1",
                "--max-seconds",
                "120",
                "--stop-file",
                &stop_arg,
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    for i in 1..=RELOADS {
        // Odd changes send everything to v2 and add `other`; even ones go back to v1 and remove it.
        let odd = i % 2 == 1;
        let expect = if odd { "v2" } else { "v1" };
        if odd {
            put(&dir, "other.yaml", &other);
        } else {
            std::fs::remove_file(dir.join("other.yaml")).unwrap();
        }
        put(&dir, "vs.yaml", &if odd { split(0, 100) } else { split(100, 0) });

        // The new split serves within a bounded time …
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = load(&node, 4, &[]);
            assert_eq!(probe.failures, 0, "reload {i}: {probe:?}");
            if probe.count(expect) == 4 {
                break;
            }
            assert!(Instant::now() < deadline, "reload {i}: {expect} not serving after 10 s: {probe:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // … and only it: the old split is gone for good.
        let after = load(&node, 10, &[]);
        assert_eq!(after.count(expect), 10, "reload {i}: {after:?}");
        // The capture set followed: `other` is captured while it exists, and its VIP leaves the
        // kernel map once it is removed (checked in the map: an uncaptured VIP is blackholed, and
        // the node's ICMP rate limit would make each probe wait for SYN retransmits).
        if odd {
            let o = node.load(CLIENT, &["--target", OTHER_VIP, "--host", "other", "-n", "2"]).unwrap();
            assert_eq!(o.status(200), 2, "reload {i}: other not captured: {o:?}");
        } else {
            let capture = node.bpftool_dump("CAPTURE").unwrap();
            let vips: Vec<_> =
                capture.as_array().unwrap().iter().map(|e| e["formatted"]["key"]["addr"].clone()).collect();
            // IPv4 keys are IPv4-mapped IPv6 (::ffff:10.96.0.10).
            let my_app = std::net::Ipv4Addr::new(10, 96, 0, 10).to_ipv6_mapped().octets();
            assert_eq!(vips, [serde_json::json!(my_app)], "reload {i}: {capture:#}");
        }
    }
    let took = started.elapsed();

    std::fs::write(&stop, "").unwrap();
    let during: LoadReport = serde_json::from_str(&read_stdout(&mut background).unwrap()).unwrap();
    let _ = std::fs::remove_file(&stop);
    eprintln!("{RELOADS} reloads in {took:?}; background load: {during:?}");
    assert_eq!(during.failures, 0, "{during:?}");
    assert_eq!(during.status(200), during.requests, "{during:?}");
    assert!(during.count("v1") > 0 && during.count("v2") > 0, "{during:?}");
    assert!(during.requests > 1000, "the load ran across the reloads: {during:?}");

    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    let applied = text
        .lines()
        .find(|l| l.starts_with("interceptor_config_reloads_total{result=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(applied >= RELOADS as u64, "{applied} reloads applied: {text}");
    assert!(text.contains("interceptor_config_reloads_total{result=\"rejected\"} 0"), "{text}");
}
