//! End-to-end: real eBPF programs in the kernel, real sockets, real HTTP between namespaces.
//! Needs root; run through `cargo xtask test`, which builds the binaries and runs these serially.

use std::time::Duration;

use testbed::fixtures::{assert_share, load, load_to, node, split, Family, BETA, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::{read_stdout, run_agent_command, Agent, Mode, Node, PodSpec};

fn seed_example_one_splits_90_10(mode: Mode) {
    seed_example_one(mode, Family::V4);
}

fn seed_example_one_splits_90_10_over_ipv6(mode: Mode) {
    seed_example_one(mode, Family::V6);
}

fn seed_example_two_sends_beta_testers_to_v2_and_splits_the_rest(mode: Mode) {
    seed_example_two(mode, Family::V4);
}

fn seed_example_two_over_ipv6(mode: Mode) {
    seed_example_two(mode, Family::V6);
}

fn seed_example_one(mode: Mode, family: Family) {
    let node = node().unwrap();
    let service = family.service();
    let _agent = Agent::start_in(
        &node,
        &[("svc.yaml", &service), ("dr.yaml", SUBSETS), ("vs.yaml", &split(90, 10))],
        false,
        mode,
        "open",
    )
    .unwrap();
    let report = load_to(&node, family.vip(), 2000, &[]);
    assert_eq!((report.failures, report.status(200)), (0, 2000), "{report:?}");
    assert_eq!(report.count("v1") + report.count("v2"), 2000);
    assert_share(report.count("v2"), 2000, 0.1, "v2 share");
    // Captured by the kernel under the VIP of the family dialled, in the one 16-byte key form.
    let (stats, field) = match mode {
        Mode::Socket => ("SERVICE_STATS", "connections"),
        Mode::Packet => ("PACKET_STATS", "new_flows"),
    };
    let dump = node.bpftool_dump(stats).unwrap();
    let entries = dump.as_array().unwrap_or_else(|| panic!("entries in {dump:#}"));
    let vip: std::net::SocketAddr = family.vip().parse().unwrap();
    let key = match vip.ip() {
        std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(ip) => ip.octets(),
    };
    let keys: Vec<serde_json::Value> = entries.iter().map(|e| e["formatted"]["key"]["addr"].clone()).collect();
    assert_eq!(keys, [serde_json::json!(key)], "{dump:#}");
    assert!(pinned_sum(&dump, 80, field) >= 1, "{dump:#}");
}

fn seed_example_two(mode: Mode, family: Family) {
    let node = node().unwrap();
    let service = family.service();
    let _agent =
        Agent::start_in(&node, &[("svc.yaml", &service), ("dr.yaml", SUBSETS), ("vs.yaml", BETA)], false, mode, "open")
            .unwrap();
    let beta = load_to(&node, family.vip(), 100, &["-H", "User-Agent: Mozilla/5.0 beta-tester/2"]);
    assert_eq!(beta.count("v2"), 100, "{beta:?}");
    let rest = load_to(&node, family.vip(), 2000, &["-H", "User-Agent: Mozilla/5.0"]);
    assert_eq!(rest.status(200), 2000, "{rest:?}");
    assert_share(rest.count("v2"), 2000, 0.1, "v2 share without the header");
}

fn a_subset_without_a_destination_rule_answers_503_nc(mode: Mode) {
    let node = node().unwrap();
    let vs = split(50, 50).replace("subset: v2", "subset: v3");
    // No DestinationRule: the subsets do not exist, so nothing can be routed (Istio: 503 NC).
    let _agent = Agent::start_in(&node, &[("svc.yaml", SERVICE), ("vs.yaml", &vs)], false, mode, "open").unwrap();
    let report = load(&node, 50, &[]);
    assert_eq!(report.status(503), 50, "{report:?}");
}

#[test]
fn a_subset_its_destination_rule_lacks_is_refused_at_start_with_file_line_and_field() {
    let node = node().unwrap();
    let vs = split(90, 10).replace("subset: v2", "subset: v9");
    let err = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false)
        .err()
        .expect("the agent refuses the config");
    let text = format!("{err:#}");
    assert!(text.contains("vs.yaml:16"), "{text}");
    assert!(text.contains("spec.http[0].route[1].destination.subset"), "{text}");
    assert!(text.contains("\"v9\""), "{text}");
}

fn no_matching_rule_answers_404(mode: Mode) {
    let node = node().unwrap();
    let vs = split(100, 0).replace("  - route:\n", "  - match:\n    - uri:\n        prefix: /api\n    route:\n");
    let _agent =
        Agent::start_in(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false, mode, "open")
            .unwrap();
    assert_eq!(load(&node, 20, &["--path", "/api/users"]).count("v1"), 20);
    assert_eq!(load(&node, 20, &["--path", "/web"]).status(404), 20);
}

fn a_config_change_applies_live_without_a_failed_request(mode: Mode) {
    let node = node().unwrap();
    let mut agent = Agent::start_in(
        &node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))],
        false,
        mode,
        "open",
    )
    .unwrap();
    let n = "1500";
    let mut background = node
        .load_in_background(
            CLIENT,
            &["--target", VIP, "--host", HOST, "-n", n, "--pause-ms", "2", "--max-seconds", "60"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    // Flip the split and add a second service with a new VIP in the same change.
    let other = SERVICE
        .replace("name: my-app", "name: other")
        .replace("- my-app.default", "- other.default")
        .replace("10.96.0.10", "10.96.0.20");
    std::fs::write(agent.config_dir().join("other.yaml"), other).unwrap();
    std::fs::write(agent.config_dir().join("vs.yaml"), split(0, 100)).unwrap();
    agent.wait_for_log("config applied", Duration::from_secs(10)).unwrap();
    let during: testbed::LoadReport = serde_json::from_str(&read_stdout(&mut background).unwrap()).unwrap();
    assert_eq!(during.failures, 0, "{during:?}");
    assert_eq!(during.status(200), 1500, "{during:?}");
    assert!(during.count("v1") > 0 && during.count("v2") > 0, "the change landed mid-run: {during:?}");
    let after = load(&node, 200, &[]);
    assert_eq!(after.count("v2"), 200, "{after:?}");
    // The new VIP was written to the kernel capture map without a restart.
    let other = node.load(CLIENT, &["--target", "10.96.0.20:80", "--host", "other", "-n", "10"]).unwrap();
    assert_eq!(other.status(200), 10, "{other:?}");
    // A broken change is refused and the running config keeps serving.
    std::fs::write(agent.config_dir().join("vs.yaml"), split(0, 100).replace("weight: 100", "weight: -1")).unwrap();
    agent.wait_for_log("config change rejected", Duration::from_secs(10)).unwrap();
    assert!(agent.log().contains("vs.yaml:17"), "{}", agent.log());
    assert_eq!(load(&node, 50, &[]).count("v2"), 50);
}

fn a_dual_stack_service_answers_on_both_vips_by_the_same_rules(mode: Mode) {
    let node = node().unwrap();
    let service = testbed::fixtures::service_dual_stack();
    let _agent =
        Agent::start_in(&node, &[("svc.yaml", &service), ("dr.yaml", SUBSETS), ("vs.yaml", BETA)], false, mode, "open")
            .unwrap();
    for family in [Family::V4, Family::V6] {
        let beta = load_to(&node, family.vip(), 50, &["-H", "User-Agent: Mozilla/5.0 beta-tester/2"]);
        assert_eq!(beta.count("v2"), 50, "{family:?}: {beta:?}");
        let rest = load_to(&node, family.vip(), 1000, &["-H", "User-Agent: Mozilla/5.0"]);
        assert_eq!((rest.failures, rest.status(200)), (0, 1000), "{family:?}: {rest:?}");
        assert_share(rest.count("v2"), 1000, 0.1, &format!("{family:?}: v2 share without the header"));
    }
}

/// Access-log lines (Envoy format, log target `access`) in an agent log.
fn access_lines(log: &str) -> usize {
    log.matches(" access: [").count()
}

/// Sums every `field` number under the entries of a bpftool JSON dump whose key is `port`.
fn pinned_sum(dump: &serde_json::Value, port: u64, field: &str) -> u64 {
    fn sum(v: &serde_json::Value, field: &str) -> u64 {
        match v {
            serde_json::Value::Object(map) => {
                map.iter().map(|(k, v)| if k == field { v.as_u64().unwrap_or(0) } else { sum(v, field) }).sum()
            }
            serde_json::Value::Array(items) => items.iter().map(|v| sum(v, field)).sum(),
            _ => 0,
        }
    }
    dump.as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("formatted"))
        .filter(|f| f["key"]["port"].as_u64() == Some(port))
        .map(|f| sum(&f["values"], field))
        .sum()
}

/// `field` of `PROGRAM_STATS` slot `slot` (see `Program`), summed over CPUs.
fn program_counter(node: &Node, slot: usize, field: &str) -> u64 {
    let programs = node.bpftool_dump("PROGRAM_STATS").unwrap();
    programs[slot]["formatted"]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("per-CPU values in {programs:#}"))
        .iter()
        .map(|v| v["value"][field].as_u64().unwrap_or(0))
        .sum()
}

/// The pinned count of captured connections to port `port`: connections redirected (socket mode)
/// or flows opened (packet mode).
fn pinned_connections(node: &Node, mode: Mode, port: u64) -> u64 {
    match mode {
        Mode::Socket => pinned_sum(&node.bpftool_dump("SERVICE_STATS").unwrap(), port, "connections"),
        Mode::Packet => pinned_sum(&node.bpftool_dump("PACKET_STATS").unwrap(), port, "new_flows"),
    }
}

fn the_pinned_counter_equals_the_connections_made_and_other_traffic_is_untouched(mode: Mode) {
    let node = node().unwrap();
    let agent =
        Agent::start_in(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", BETA)], false, mode, "open")
            .unwrap();
    let report = load(&node, 37, &["--new-connections"]);
    assert_eq!((report.connections, report.status(200)), (37, 37), "{report:?}");
    assert_eq!(pinned_connections(&node, mode, 80), 37);
    if mode == Mode::Packet {
        // Every packet of those flows was rewritten, both ways, and counted per interface too.
        let packets = pinned_sum(&node.bpftool_dump("PACKET_STATS").unwrap(), 80, "packets");
        assert!(packets >= 37 * 6, "{packets} packets for 37 connections");
        let ifaces = node.bpftool_dump("IFACE_STATS").unwrap();
        assert!(ifaces.to_string().contains("\"new_flows\""), "{ifaces:#}");
    }

    // A pod address is not in the capture set: the connection goes straight to the pod.
    let requests_logged = access_lines(&agent.log());
    assert_eq!(requests_logged, 37, "one access-log line per request:\n{}", agent.log());
    let direct =
        node.load(CLIENT, &["--target", "10.244.0.13:8080", "--host", "v2", "-n", "5", "--new-connections"]).unwrap();
    assert_eq!(direct.count("v2"), 5, "{direct:?}");
    // A VIP nobody captures is left alone too: the node blackholes it, so it fails.
    let stray =
        node.load(CLIENT, &["--target", "10.96.0.99:80", "--host", "x", "-n", "3", "--new-connections"]).unwrap();
    assert_eq!(stray.failures, 3, "{stray:?}");
    assert_eq!(pinned_connections(&node, mode, 80), 37);
    assert_eq!(access_lines(&agent.log()), requests_logged, "the proxy saw uncaptured traffic");
}

fn the_proxy_inside_the_captured_cgroup_does_not_capture_itself(mode: Mode) {
    proxy_inside_the_captured_cgroup(mode, Family::V4);
}

fn the_proxy_inside_the_captured_cgroup_does_not_capture_itself_over_ipv6(mode: Mode) {
    proxy_inside_the_captured_cgroup(mode, Family::V6);
}

fn proxy_inside_the_captured_cgroup(mode: Mode, family: Family) {
    let node = node().unwrap();
    let service = family.service();
    // The v1 pods' own address is captured too, so the proxy's upstream connects would loop back
    // to it if its marked sockets were not skipped.
    let (vip, pod, upstream, hook) = match family {
        Family::V4 => ("10.96.0.10", "10.244.0.11", " \"10.244.0.1", 0),
        Family::V6 => ("fd00:10:96::10", "fd00:10:244::11", " \"[fd00:10:244::1", 4),
    };
    let looped = service
        .replace("name: my-app", "name: direct")
        .replace("- my-app.default", "- direct.default")
        .replace(&format!("  - {vip}\n"), &format!("  - {pod}\n"))
        .replace("number: 80", "number: 8080")
        .replace("    targetPort: 8080\n", "");
    let mut agent = Agent::start_in(
        &node,
        &[("svc.yaml", &service), ("direct.yaml", &looped), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))],
        true,
        mode,
        "open",
    )
    .unwrap();
    let report = load_to(&node, family.vip(), 100, &[]);
    assert_eq!((report.count("v1"), report.failures), (100, 0), "{report:?}");
    // Socket mode: the connect hook of the family (slot 0 connect4, 4 connect6) did see the
    // proxy's connects to the captured pod address, and let them be. (Packet mode never sees
    // them: XDP runs on packets coming from pods.)
    let bypassed = program_counter(&node, hook, "bypassed");
    assert_eq!(bypassed > 0, mode == Mode::Socket, "slot {hook} bypassed {bypassed}");
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    // The access log's "%UPSTREAM_HOST%" field: every request went to a v1 pod.
    assert_eq!(log.matches(upstream).count(), 100, "{log}");
}

#[test]
fn validate_reports_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("interceptor-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("svc.yaml"), SERVICE).unwrap();
    std::fs::write(dir.join("vs.yaml"), BETA.replace(".*beta-tester.*", "(beta")).unwrap();
    let (code, out) = run_agent_command(&["validate", dir.to_str().unwrap()]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("vs.yaml:11: VirtualService default/my-app-vs: spec.http[0].match[0].headers.user-agent"),
        "{out}"
    );
}

/// A service whose VIP is a real pod address (v2's): through the proxy it is answered by the v1
/// pods, directly by v2 — so the body tells whether a connection was captured.
const DIRECT: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: direct
spec:
  hosts:
  - direct.default.svc.cluster.local
  addresses:
  - 10.244.0.13
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 10.244.0.11
  - address: 10.244.0.12
";

/// [`DIRECT`] in `family`, and the address its clients dial (v2's, port 8080).
fn direct(family: Family) -> (String, &'static str) {
    match family {
        Family::V4 => (DIRECT.to_owned(), "10.244.0.13:8080"),
        Family::V6 => (DIRECT.replace("10.244.0.", "fd00:10:244::"), "[fd00:10:244::13]:8080"),
    }
}

fn load_direct(node: &Node, target: &str, n: usize) -> testbed::LoadReport {
    let n = n.to_string();
    let args = ["--target", target, "--host", "direct", "-n", &n, "--new-connections"];
    node.load(CLIENT, &args).expect("pod load runs")
}

fn kill_the_proxy(mode: Mode, policy: &str, family: Family) {
    let node = node().unwrap();
    let (service, target) = direct(family);
    let files = [("direct.yaml", service.as_str())];
    let mut agent = Agent::start_in(&node, &files, false, mode, policy).unwrap();
    let captured = load_direct(&node, target, 20);
    assert_eq!(captured.count("v1"), 20, "captured before the kill: {captured:?}");

    // Traffic is flowing when the proxy dies.
    let mut background = node
        .load_in_background(
            CLIENT,
            &[
                "--target",
                target,
                "--host",
                "direct",
                "-n",
                "100000",
                "--new-connections",
                "--pause-ms",
                "5",
                "--max-seconds",
                "3",
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    agent.kill_hard().unwrap();
    let killed = std::time::Instant::now();
    if policy == "open" {
        // For the record: how soon the first new connection goes direct.
        while killed.elapsed() < Duration::from_secs(2) && load_direct(&node, target, 1).count("v2") == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let first = killed.elapsed();
        eprintln!("{mode:?} {family:?}: first direct answer {first:?} after the kill");
        assert!(first < Duration::from_secs(1), "fail open took {first:?}");
    }
    std::thread::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed()));
    let after = load_direct(&node, target, 20);
    let during: testbed::LoadReport = serde_json::from_str(&read_stdout(&mut background).unwrap()).unwrap();
    assert!(during.count("v1") > 0, "{during:?}");
    if policy == "open" {
        // New connections reach the original destination (the v2 pod) within a second.
        assert_eq!(after.count("v2"), 20, "fail open, 1 s after the kill: {after:?}");
    } else {
        assert_eq!(after.failures, 20, "fail closed: {after:?}");
        let first = after.first_failure.clone().unwrap_or_default();
        assert!(first.contains("refused"), "{first}");
    }
    drop(agent);
    // SIGKILL ran no code: the pinned counters hold every connection captured before it.
    let counted = pinned_connections(&node, mode, 8080);
    assert!(counted >= 20 + during.count("v1") as u64, "{counted} pinned, {during:?}");

    // A new agent takes over the stale pins and capture resumes; the counters go on from there.
    let agent = Agent::start_in(&node, &files, false, mode, policy).unwrap();
    assert!(agent.log().contains("re-adopting pinned map"), "{}", agent.log());
    let resumed = load_direct(&node, target, 20);
    assert_eq!(resumed.count("v1"), 20, "captured after the restart: {resumed:?}");
    assert_eq!(pinned_connections(&node, mode, 8080), counted + 20);
}

fn killing_the_proxy_fails_open(mode: Mode) {
    kill_the_proxy(mode, "open", Family::V4);
}

fn killing_the_proxy_fails_closed(mode: Mode) {
    kill_the_proxy(mode, "closed", Family::V4);
}

fn killing_the_proxy_fails_open_over_ipv6(mode: Mode) {
    kill_the_proxy(mode, "open", Family::V6);
}

fn killing_the_proxy_fails_closed_over_ipv6(mode: Mode) {
    kill_the_proxy(mode, "closed", Family::V6);
}

/// Data-path tests run once per capture mode: `socket_mode::<name>` and `packet_mode::<name>`.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod socket_mode {
            $( #[test] fn $name() { super::$name(testbed::Mode::Socket) } )*
        }
        mod packet_mode {
            $( #[test] fn $name() { super::$name(testbed::Mode::Packet) } )*
        }
    };
}

in_both_modes!(
    seed_example_one_splits_90_10,
    seed_example_two_sends_beta_testers_to_v2_and_splits_the_rest,
    seed_example_one_splits_90_10_over_ipv6,
    seed_example_two_over_ipv6,
    a_dual_stack_service_answers_on_both_vips_by_the_same_rules,
    a_subset_without_a_destination_rule_answers_503_nc,
    no_matching_rule_answers_404,
    a_config_change_applies_live_without_a_failed_request,
    the_pinned_counter_equals_the_connections_made_and_other_traffic_is_untouched,
    the_proxy_inside_the_captured_cgroup_does_not_capture_itself,
    the_proxy_inside_the_captured_cgroup_does_not_capture_itself_over_ipv6,
    killing_the_proxy_fails_open,
    killing_the_proxy_fails_closed,
    killing_the_proxy_fails_open_over_ipv6,
    killing_the_proxy_fails_closed_over_ipv6,
);

#[test]
fn socket_mode_captures_a_dual_stack_socket_dialling_the_ipv4_vip_in_connect6() {
    let node = node().unwrap();
    let _agent = Agent::start_in(
        &node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(0, 100))],
        false,
        Mode::Socket,
        "open",
    )
    .unwrap();
    // An AF_INET6 socket connecting to ::ffff:10.96.0.10 runs connect6 only (never connect4): it
    // must find the IPv4 VIP and reach the proxy's IPv4 address, mapped.
    let report = load_to(&node, "[::ffff:10.96.0.10]:80", 20, &["--new-connections"]);
    assert_eq!((report.count("v2"), report.failures), (20, 0), "{report:?}");
    let captured = |slot| program_counter(&node, slot, "captured");
    // Slots: 0 connect4, 1 sockops, 4 connect6.
    assert_eq!((captured(0), captured(4)), (0, 20), "connect4 and connect6 captured");
    assert_eq!(captured(1), 20, "sockops handed over every connection");
}

#[test]
fn packet_mode_forgets_a_flow_once_both_sides_closed_it_in_both_families() {
    let node = node().unwrap();
    let service = testbed::fixtures::service_dual_stack();
    let files = [("svc.yaml", service.as_str()), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))];
    let _agent = Agent::start_in(&node, &files, false, Mode::Packet, "open").unwrap();
    let flows = || node.bpftool_dump("CONNTRACK").map(|d| d.as_array().map_or(0, Vec::len));

    for family in [Family::V4, Family::V6] {
        let vip = family.vip();
        // The client closes first: a connection per request, dropped after its answer.
        let r = load_to(&node, vip, 10, &["--new-connections"]);
        assert_eq!(r.status(200), 10, "{family:?}: {r:?}");
        // The proxy closes first: `Connection: close`.
        let send = "GET / HTTP/1.1\r\nHost: my-app\r\nConnection: close\r\n\r\n";
        let raw = node.raw(CLIENT, &["--target", vip, "--send", send]).unwrap();
        assert!(raw.response.starts_with("HTTP/1.1 200 ") && raw.closed, "{family:?}: {raw:?}");
        // Each entry goes with the last ACK of its flow, not at LRU eviction.
        testbed::poll_until("every closed flow to leave CONNTRACK", Duration::from_secs(2), || Ok(flows()? == 0))
            .unwrap_or_else(|e| panic!("{family:?}: {e}: {:#}", node.bpftool_dump("CONNTRACK").unwrap()));

        // A flow still open keeps its entry.
        let mut idle = node
            .raw_in_background(
                CLIENT,
                &["--target", vip, "--send", "GET / HTTP/1.1\r\nHost: my-app\r\n\r\n", "--read-ms", "1500"],
            )
            .unwrap();
        testbed::poll_until("the open flow's entry", Duration::from_secs(2), || Ok(flows()? == 1)).unwrap();
        let report = read_stdout(&mut idle).unwrap();
        assert!(report.contains("HTTP/1.1 200"), "{family:?}: {report}");
        testbed::poll_until("the idle flow's close", Duration::from_secs(2), || Ok(flows()? == 0)).unwrap();
    }
}

#[test]
fn packet_mode_checksums_hold_with_veth_offload_on_and_off_in_both_families() {
    let node = node().unwrap();
    let service = testbed::fixtures::service_dual_stack();
    let _agent = Agent::start_in(
        &node,
        &[("svc.yaml", &service), ("dr.yaml", SUBSETS), ("vs.yaml", &split(50, 50))],
        false,
        Mode::Packet,
        "open",
    )
    .unwrap();
    // Offload on (veth default): the pod hands over partial checksums. IPv6 has no header
    // checksum, but its TCP checksum covers the 16-byte addresses of the pseudo header.
    for family in [Family::V4, Family::V6] {
        let on = load_to(&node, family.vip(), 100, &["--new-connections"]);
        assert_eq!(on.status(200), 100, "{family:?}: {on:?}");
    }
    // Offload off: the pod computes full checksums, and the rewritten packets must still verify.
    for pod in [CLIENT, "v1a", "v1b", "v2"] {
        node.exec_in_pod(pod, "ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
    }
    for family in [Family::V4, Family::V6] {
        let off = load_to(&node, family.vip(), 100, &["--new-connections"]);
        assert_eq!(off.status(200), 100, "{family:?}: {off:?}");
    }
}

#[test]
fn packet_mode_follows_pods_as_they_come_and_go() {
    let mut node = node().unwrap();
    let mut agent = Agent::start_in(
        &node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(0, 100))],
        false,
        Mode::Packet,
        "open",
    )
    .unwrap();
    // A pod that appears after the agent started is captured too.
    let late_if = node.add_pod(PodSpec::new("late", [10, 244, 0, 20])).unwrap();
    agent.wait_for_log(&format!("interface={late_if}"), Duration::from_secs(5)).unwrap();
    let pin = node.bpffs().join("links").join(format!("xdp_{late_if}"));
    assert!(pin.exists(), "{}", agent.log());
    let report = node.load("late", &["--target", VIP, "--host", HOST, "-n", "20", "--new-connections"]).unwrap();
    assert_eq!(report.count("v2"), 20, "{report:?}");
    // A pod that goes away is detached: its link pins are removed.
    node.remove_pod_netns("late").unwrap();
    agent.wait_for_log("interface gone: detached", Duration::from_secs(5)).unwrap();
    assert!(!pin.exists(), "{}", agent.log());
    // The others keep working.
    assert_eq!(load(&node, 20, &["--new-connections"]).count("v2"), 20);
    // A clean stop detaches everything: no XDP program is left on the node's interfaces.
    let node_links = || {
        let out = std::process::Command::new("ip").args(["-d", "-n", &node.node_netns(), "link", "show"]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    assert!(node_links().contains("prog/xdp"), "{}", node_links());
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    let links = node_links();
    assert!(links.contains("ic0-") && !links.contains("prog/xdp"), "{links}");
    assert!(!node.bpffs().join("links").exists(), "link pins left behind");
}
