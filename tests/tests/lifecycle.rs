//! End-to-end: the agent's lifecycle — SIGTERM stops capture first and drains in-flight responses
//! to the end; a restarted agent re-adopts the pinned counters, and replaces pins of an older layout.

mod common;

use std::time::Duration;

use common::{load, node, split, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::{read_stdout, run_agent_command, Agent, LoadReport, Node, PodSpec, ADMIN};

/// Size and duration of every v1 answer in the drain test: long enough to be cut if draining failed.
const BODY_BYTES: usize = 100 * 1024;
const BODY_MS: u64 = 1500;

#[test]
fn sigterm_during_load_cuts_no_response_mid_body() {
    let mut node = Node::create(&[
        PodSpec::new(CLIENT, [10, 244, 0, 10]),
        PodSpec::new("v1a", [10, 244, 0, 11]),
        PodSpec::new("v1b", [10, 244, 0, 12]),
        PodSpec::new("v2", [10, 244, 0, 13]),
    ])
    .unwrap();
    let slow = ["--body-bytes", &BODY_BYTES.to_string(), "--body-ms", &BODY_MS.to_string()].map(str::to_owned);
    let slow: Vec<&str> = slow.iter().map(String::as_str).collect();
    node.serve_with("v1a", "v1", &slow).unwrap();
    node.serve_with("v1b", "v1", &slow).unwrap();
    node.serve("v2", "v2").unwrap();
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], false)
            .unwrap();

    // Four clients, one slow request each, in flight when SIGTERM arrives.
    let mut clients: Vec<_> = (0..4)
        .map(|_| node.load_in_background(CLIENT, &["--target", VIP, "--host", HOST, "-n", "1"]).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    agent.terminate().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // Draining: not ready any more, and new connections are no longer captured (the VIP is
    // blackholed in the node, so an uncaptured connect fails).
    let (ready, _) = node.node_get(ADMIN, "/ready").unwrap();
    assert_eq!(ready, 503);
    let late = load(&node, 1, &[]);
    assert_eq!((late.failures, late.requests), (1, 1), "a new connection was captured while draining: {late:?}");

    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    let key = format!("v1 {BODY_BYTES} bytes");
    for client in &mut clients {
        let report: LoadReport = serde_json::from_str(&read_stdout(client).unwrap()).unwrap();
        assert_eq!((report.failures, report.count(&key)), (0, 1), "a response was cut: {report:?}\n{log}");
    }
    let off = log.find("ready=false").unwrap_or_else(|| panic!("{log}"));
    let stopped = log.find("stopped").unwrap_or_else(|| panic!("{log}"));
    assert!(off < stopped, "capture is turned off before the agent stops: {log}");
}

#[test]
fn a_restarted_agent_keeps_the_kernel_counters() {
    let node = node().unwrap();
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS)];
    let vs = split(100, 0);
    let files: Vec<(&str, &str)> = files.into_iter().chain([("vs.yaml", vs.as_str())]).collect();

    let mut first = Agent::start(&node, &files, false).unwrap();
    assert_eq!(load(&node, 5, &["--new-connections"]).count("v1"), 5);
    let (code, log) = first.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    drop(first);

    // Stopped: the capture maps are unpinned, the counters stay and still read.
    assert!(!node.bpffs().join("CAPTURE").exists());
    let bpffs = node.bpffs().to_str().unwrap().to_owned();
    let (code, out) = run_agent_command(&["stats", "--bpffs", &bpffs]).unwrap();
    assert_eq!(code, Some(0), "{out}");
    let row = out.lines().find(|l| l.starts_with("10.96.0.10:80")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(row.split_whitespace().nth(1), Some("5"), "{out}");

    let second = Agent::start(&node, &files, false).unwrap();
    assert!(second.log().contains("re-adopting pinned map"), "{}", second.log());
    assert_eq!(load(&node, 3, &["--new-connections"]).count("v1"), 3);
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert!(text.contains("interceptor_capture_connections_total{service=\"10.96.0.10:80\"} 8"), "{text}");
}

#[test]
fn pins_of_the_ipv4_only_layout_are_replaced_with_a_warning_not_a_failed_start() {
    let node = node().unwrap();
    // What an agent from before IPv6 left: counters keyed by 8-byte IPv4 addresses, and a
    // capture map of the same old layout.
    std::fs::create_dir_all(node.bpffs()).unwrap();
    for (name, kind, value) in [("SERVICE_STATS", "percpu_hash", "8"), ("CAPTURE", "hash", "4")] {
        let pin = node.bpffs().join(name);
        let out = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&pin)
            .args(["type", kind, "key", "8", "value", value, "entries", "16384", "name", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "bpftool map create {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS)];
    let vs = split(100, 0);
    let files: Vec<(&str, &str)> = files.into_iter().chain([("vs.yaml", vs.as_str())]).collect();
    let agent = Agent::start(&node, &files, false).unwrap();
    let log = agent.log();
    assert_eq!(log.matches("pinned map of another layout").count(), 2, "{log}");
    assert!(log.contains("found=key 8 B, value 8 B, 16384 entries"), "{log}");
    assert!(log.contains("expected=key 20 B, value 8 B, 16384 entries"), "{log}");
    // The fresh maps serve and count.
    assert_eq!(load(&node, 4, &["--new-connections"]).count("v1"), 4);
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    assert!(text.contains("interceptor_capture_connections_total{service=\"10.96.0.10:80\"} 4"), "{text}");
}

/// A `testnode` process and what it said it made. Should the test fail, dropping it kills the
/// process and removes what it made, so a failed test leaves nothing behind either.
struct Held {
    process: std::process::Child,
    /// The pod process it started.
    pod: u64,
    netns: Vec<String>,
    cgroup: std::path::PathBuf,
    bpffs: std::path::PathBuf,
}

impl Held {
    /// Starts `testnode` and reads what it made.
    fn start() -> Held {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        let process =
            Command::new(env!("CARGO_BIN_EXE_testnode")).stdout(Stdio::piped()).spawn().expect("testnode runs");
        let mut held =
            Held { process, pod: 0, netns: Vec::new(), cgroup: Default::default(), bpffs: Default::default() };
        let mut line = String::new();
        std::io::BufReader::new(held.process.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let made: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let text = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
        held.pod = made["pid"].as_u64().unwrap();
        held.netns = made["netns"].as_array().unwrap().iter().map(text).collect();
        (held.cgroup, held.bpffs) = (text(&made["cgroup"]).into(), text(&made["bpffs"]).into());
        held
    }

    /// Waits (60 s at most) for the process to exit.
    fn wait(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        testbed::poll_until("testnode to exit", Duration::from_secs(60), || {
            status = self.process.try_wait()?;
            Ok(status.is_some())
        })
        .unwrap();
        status.unwrap()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
        if std::thread::panicking() {
            testbed::tear_down(&self.netns, &self.cgroup, &self.bpffs);
        }
    }
}

#[test]
fn a_test_node_is_torn_down_when_its_process_is_told_to_stop() {
    use std::process::Command;

    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut held = Held::start();
        let listed = || String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
        assert!(held.netns.iter().all(|ns| listed().contains(ns)), "made: {:?}", held.netns);

        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(libc::pid_t::try_from(held.process.id()).unwrap(), signal) };
        let status = held.wait();
        assert_eq!(status.code(), Some(128 + signal), "exits as the signal would have ({signal})");
        let listed = listed();
        for ns in &held.netns {
            assert!(!listed.contains(ns.as_str()), "{ns} left after signal {signal}");
        }
        assert!(!held.cgroup.exists(), "{} left", held.cgroup.display());
        assert!(!held.bpffs.exists(), "{} left", held.bpffs.display());
        // Gone, or a zombie until whoever inherited it reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", held.pod)).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        assert!(matches!(state, None | Some('Z')), "the pod's process {} outlived its node: {stat}", held.pod);
    }
}
