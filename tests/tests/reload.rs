//! End-to-end: live reload without loss — many config changes (weights flipped, a service added
//! and removed) while a client keeps sending requests through the real capture path.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{load, node, split, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::{read_stdout, Agent, LoadReport, ADMIN};

const RELOADS: usize = 50;
const OTHER_VIP: &str = "10.96.0.20:80";

/// Replaces `dir/name` in one step (write aside, then rename), as Kubernetes swaps ConfigMap
/// files, so the agent never reads a half-written file.
fn put(dir: &Path, name: &str, text: &str) {
    let aside = dir.parent().unwrap().join(format!(".{name}.tmp"));
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, dir.join(name)).unwrap();
}

#[test]
fn fifty_reloads_during_load_fail_no_request_and_each_new_split_serves() {
    let node = node().unwrap();
    let agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], false)
        .unwrap();
    let dir = agent.config_dir();
    let other = SERVICE
        .replace("name: my-app", "name: other")
        .replace("- my-app.default", "- other.default")
        .replace("10.96.0.10", "10.96.0.20");

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
            assert_eq!(vips, [serde_json::json!([10, 96, 0, 10])], "reload {i}: {capture:#}");
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
