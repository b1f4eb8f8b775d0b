//! End-to-end: least privilege — once started, the agent keeps only the capabilities it still
//! uses, in every thread, and keeps working with them (config reloads, interfaces that come
//! later); it starts with no more than the DaemonSet grants; its pins are its own; its admin
//! server listens on loopback only.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{load, node, split, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::{Agent, Mode, Node, PodSpec};

/// `CAP_NET_ADMIN`'s bit in `/proc/<pid>/status` masks.
const CAP_NET_ADMIN: u64 = 1 << 12;

/// The capability masks and `NoNewPrivs` of every thread of process `pid`, by thread id.
fn thread_privileges(pid: u32) -> BTreeMap<String, BTreeMap<String, u64>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut threads = BTreeMap::new();
    for task in tasks.flatten() {
        // A thread may end between listing and reading.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let fields = status
            .lines()
            .filter_map(|line| line.split_once(":\t"))
            .filter(|(key, _)| key.starts_with("Cap") || *key == "NoNewPrivs")
            .map(|(key, value)| (key.to_owned(), u64::from_str_radix(value.trim(), 16).unwrap()))
            .collect();
        threads.insert(task.file_name().to_string_lossy().into_owned(), fields);
    }
    threads
}

/// Asserts that every thread of `agent` has exactly `kept` as its effective, permitted and
/// bounding sets, nothing inheritable or ambient, and `no_new_privs`.
fn assert_keeps_only(agent: &Agent, kept: u64) {
    let threads = thread_privileges(agent.pid().unwrap());
    assert!(threads.len() > 1, "the runtime's threads are there too: {threads:?}");
    let expected: BTreeMap<String, u64> =
        [("CapInh", 0), ("CapPrm", kept), ("CapEff", kept), ("CapBnd", kept), ("CapAmb", 0), ("NoNewPrivs", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    for (tid, fields) in &threads {
        assert_eq!(fields, &expected, "thread {tid}:\n{}", agent.log());
    }
}

/// Asserts that the pin directory and everything in it is reachable by its owner only.
fn assert_pins_are_private(node: &Node) {
    for dir in [node.bpffs().to_path_buf(), node.bpffs().join("links")] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for pin in std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.file_type().unwrap().is_file()) {
            let mode = pin.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", pin.path().display());
        }
    }
}

/// The TCP listeners of the node namespace, as `ss` prints their local addresses.
fn node_listeners(node: &Node) -> Vec<String> {
    let out =
        std::process::Command::new("ip").args(["netns", "exec", &node.node_netns(), "ss", "-Htln"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect()
}

/// The service `other` at VIP 10.96.0.20:80, on the same pods.
fn other_service() -> String {
    SERVICE
        .replace("name: my-app", "name: other")
        .replace("- my-app.default", "- other.default")
        .replace("10.96.0.10", "10.96.0.20")
}

#[test]
fn socket_mode_keeps_only_net_admin_in_every_thread_and_works_on() {
    let node = node().unwrap();
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))];
    let mut agent = Agent::start_in(&node, &files, false, Mode::Socket, "open").unwrap();
    assert!(agent.log().contains("capabilities dropped kept=[\"CAP_NET_ADMIN\"]"), "{}", agent.log());
    assert_keeps_only(&agent, CAP_NET_ADMIN);
    // Upstream sockets still carry the mark (CAP_NET_ADMIN): served, and not captured again.
    assert_eq!(load(&node, 20, &["--new-connections"]).count("v1"), 20);

    // A reload that changes capture: a new VIP goes into the kernel map through the open map.
    std::fs::write(agent.config_dir().join("other.yaml"), other_service()).unwrap();
    agent.wait_for_log("config applied", Duration::from_secs(10)).unwrap();
    let other = node.load(CLIENT, &["--target", "10.96.0.20:80", "--host", "other", "-n", "10"]).unwrap();
    assert_eq!(other.status(200), 10, "{other:?}");
    // Threads started since (the reload's) inherited the lowered sets.
    assert_keeps_only(&agent, CAP_NET_ADMIN);

    assert_pins_are_private(&node);
    let admin: Vec<String> = node_listeners(&node).into_iter().filter(|l| l.ends_with(":15000")).collect();
    assert_eq!(admin, ["127.0.0.1:15000"], "the admin server listens on loopback only");

    // Stopping needs no privilege either: everything detached and the capture pins removed.
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(!node.bpffs().join("CAPTURE").exists() && !node.bpffs().join("links").exists(), "{log}");
}

#[test]
fn packet_mode_keeps_no_capability_and_still_attaches_to_new_interfaces() {
    let mut node = node().unwrap();
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(0, 100))];
    let mut agent = Agent::start_in(&node, &files, false, Mode::Packet, "open").unwrap();
    assert_keeps_only(&agent, 0);
    assert_eq!(load(&node, 20, &["--new-connections"]).count("v2"), 20);
    assert_pins_are_private(&node);

    // A pod that appears now: XDP and TC attached and pinned without any capability.
    let late_if = node.add_pod(PodSpec::new("late", [10, 244, 0, 20])).unwrap();
    agent.wait_for_log(&format!("interface={late_if}"), Duration::from_secs(5)).unwrap();
    assert!(node.bpffs().join("links").join(format!("xdp_{late_if}")).exists(), "{}", agent.log());
    let report = node.load("late", &["--target", VIP, "--host", HOST, "-n", "20", "--new-connections"]).unwrap();
    assert_eq!(report.count("v2"), 20, "{report:?}\n{}", agent.log());
    // And a reload that changes capture.
    std::fs::write(agent.config_dir().join("other.yaml"), other_service()).unwrap();
    agent.wait_for_log("config applied", Duration::from_secs(10)).unwrap();
    let other = node.load(CLIENT, &["--target", "10.96.0.20:80", "--host", "other", "-n", "10"]).unwrap();
    assert_eq!(other.status(200), 10, "{other:?}");
    assert_keeps_only(&agent, 0);
    assert_pins_are_private(&node);

    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert!(!node.bpffs().join("links").exists(), "link pins left behind: {log}");
}

/// The capabilities `deploy/interceptor.yaml` adds to the agent's container (its one
/// `add: [...]` line).
fn daemonset_capabilities() -> Vec<String> {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/interceptor.yaml")).unwrap();
    let line = manifest.lines().map(str::trim).find_map(|l| l.strip_prefix("add: [")).unwrap();
    line.trim_end_matches(']').split(',').map(|c| c.trim().to_owned()).collect()
}

#[test]
fn the_daemonsets_capabilities_are_enough_to_start_in_both_modes() {
    let granted = daemonset_capabilities();
    assert!(!granted.is_empty() && !granted.iter().any(|c| c == "SYS_ADMIN"), "{granted:?}");
    let granted: Vec<&str> = granted.iter().map(String::as_str).collect();
    let node = node().unwrap();
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))];
    for (mode, kept) in [(Mode::Socket, CAP_NET_ADMIN), (Mode::Packet, 0)] {
        let mut agent = Agent::start_confined(&node, &files, mode, &granted).unwrap();
        assert_keeps_only(&agent, kept);
        assert_eq!(load(&node, 10, &["--new-connections"]).count("v1"), 10, "{mode:?}:\n{}", agent.log());
        let (code, log) = agent.stop().unwrap();
        assert_eq!(code, Some(0), "{mode:?}: {log}");
    }
}
