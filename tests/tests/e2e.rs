//! End-to-end: real eBPF programs in the kernel, real sockets, real HTTP between namespaces.
//! Needs root; run through `cargo xtask test`, which builds the binaries and runs these serially.

use std::time::Duration;

use anyhow::Result;
use testbed::{read_stdout, run_agent_command, Agent, Node, PodSpec};

const CLIENT: &str = "client";
const VIP: &str = "10.96.0.10:80";
const HOST: &str = "my-app.default.svc.cluster.local";

/// The service, its pods and its subsets, as config/mesh/my-app.yaml has them.
const SERVICE: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: my-app
spec:
  hosts:
  - my-app.default.svc.cluster.local
  addresses:
  - 10.96.0.10
  ports:
  - number: 80
    name: http
    protocol: HTTP
    targetPort: 8080
  resolution: STATIC
  endpoints:
  - address: 10.244.0.11
    labels: {version: v1}
  - address: 10.244.0.12
    labels: {version: v1}
  - address: 10.244.0.13
    labels: {version: v2}
";

const SUBSETS: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: my-app-dr
spec:
  host: my-app.default.svc.cluster.local
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: my-app-vs
spec:
  hosts:
  - my-app.default.svc.cluster.local
  http:
  - route:
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v1
      weight: {v1}
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v2
      weight: {v2}
"
    )
}

/// The seed's second example, verbatim.
const BETA: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: my-app-vs
spec:
  hosts:
  - my-app.default.svc.cluster.local
  http:
  - match:
    - headers:
        user-agent:
          regex: \".*beta-tester.*\"
    route:
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v2
  - route:
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v1
      weight: 90
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v2
      weight: 10
";

/// A node with a client pod and three my-app pods (two v1, one v2) serving.
fn node() -> Result<Node> {
    let mut node = Node::create(&[
        PodSpec::new(CLIENT, [10, 244, 0, 10]),
        PodSpec::new("v1a", [10, 244, 0, 11]),
        PodSpec::new("v1b", [10, 244, 0, 12]),
        PodSpec::new("v2", [10, 244, 0, 13]),
    ])?;
    node.serve("v1a", "v1")?;
    node.serve("v1b", "v1")?;
    node.serve("v2", "v2")?;
    Ok(node)
}

fn load(node: &Node, n: usize, extra: &[&str]) -> testbed::LoadReport {
    let n = n.to_string();
    let mut args = vec!["--target", VIP, "--host", HOST, "-n", &n];
    args.extend_from_slice(extra);
    node.load(CLIENT, &args).expect("pod load runs")
}

/// Asserts that `k` of `n` lies in the 99.9% normal interval of a binomial with share `p`.
fn assert_share(k: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let margin = 3.29 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!((k as f64 - mean).abs() <= margin, "{what}: {k} of {n}, expected {mean:.0} ± {margin:.0}");
}

#[test]
fn seed_example_one_splits_90_10() {
    let node = node().unwrap();
    let _agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(90, 10))], false)
            .unwrap();
    let report = load(&node, 2000, &[]);
    assert_eq!((report.failures, report.status(200)), (0, 2000), "{report:?}");
    assert_eq!(report.count("v1") + report.count("v2"), 2000);
    assert_share(report.count("v2"), 2000, 0.1, "v2 share");
}

#[test]
fn seed_example_two_sends_beta_testers_to_v2_and_splits_the_rest() {
    let node = node().unwrap();
    let _agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", BETA)], false).unwrap();
    let beta = load(&node, 100, &["-H", "User-Agent: Mozilla/5.0 beta-tester/2"]);
    assert_eq!(beta.count("v2"), 100, "{beta:?}");
    let rest = load(&node, 2000, &["-H", "User-Agent: Mozilla/5.0"]);
    assert_eq!(rest.status(200), 2000, "{rest:?}");
    assert_share(rest.count("v2"), 2000, 0.1, "v2 share without the header");
}

#[test]
fn a_subset_without_a_destination_rule_answers_503_nc() {
    let node = node().unwrap();
    let vs = split(50, 50).replace("subset: v2", "subset: v3");
    // No DestinationRule: the subsets do not exist, so nothing can be routed (Istio: 503 NC).
    let _agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("vs.yaml", &vs)], false).unwrap();
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

#[test]
fn no_matching_rule_answers_404() {
    let node = node().unwrap();
    let vs = split(100, 0).replace("  - route:\n", "  - match:\n    - uri:\n        prefix: /api\n    route:\n");
    let _agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &vs)], false).unwrap();
    assert_eq!(load(&node, 20, &["--path", "/api/users"]).count("v1"), 20);
    assert_eq!(load(&node, 20, &["--path", "/web"]).status(404), 20);
}

#[test]
fn a_config_change_applies_live_without_a_failed_request() {
    let node = node().unwrap();
    let mut agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], false)
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

/// Access-log lines (Envoy format, log target `access`) in an agent log.
fn access_lines(log: &str) -> usize {
    log.matches(" access: [").count()
}

/// Sums every `connections` number under the entries of a bpftool JSON dump whose key is `port`.
fn pinned_connections(dump: &serde_json::Value, port: u64) -> u64 {
    fn sum(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::Object(map) => {
                map.iter().map(|(k, v)| if k == "connections" { v.as_u64().unwrap_or(0) } else { sum(v) }).sum()
            }
            serde_json::Value::Array(items) => items.iter().map(sum).sum(),
            _ => 0,
        }
    }
    dump.as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("formatted"))
        .filter(|f| f["key"]["port"].as_u64() == Some(port))
        .map(|f| sum(&f["values"]))
        .sum()
}

#[test]
fn the_pinned_counter_equals_the_connections_made_and_other_traffic_is_untouched() {
    let node = node().unwrap();
    let agent = Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", BETA)], false).unwrap();
    let report = load(&node, 37, &["--new-connections"]);
    assert_eq!((report.connections, report.status(200)), (37, 37), "{report:?}");
    let dump = node.bpftool_dump("SERVICE_STATS").unwrap();
    assert_eq!(pinned_connections(&dump, 80), 37, "{dump:#}");

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
    assert_eq!(pinned_connections(&node.bpftool_dump("SERVICE_STATS").unwrap(), 80), 37);
    assert_eq!(access_lines(&agent.log()), requests_logged, "the proxy saw uncaptured traffic");
}

#[test]
fn the_proxy_inside_the_captured_cgroup_does_not_capture_itself() {
    let node = node().unwrap();
    // The v1 pods' own address is captured too, so the proxy's upstream connects would loop back
    // to it if its marked sockets were not skipped.
    let looped = SERVICE
        .replace("name: my-app", "name: direct")
        .replace("- my-app.default", "- direct.default")
        .replace("  - 10.96.0.10\n", "  - 10.244.0.11\n")
        .replace("number: 80", "number: 8080")
        .replace("    targetPort: 8080\n", "");
    let mut agent = Agent::start(
        &node,
        &[("svc.yaml", SERVICE), ("direct.yaml", &looped), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))],
        true,
    )
    .unwrap();
    let report = load(&node, 100, &[]);
    assert_eq!((report.count("v1"), report.failures), (100, 0), "{report:?}");
    // The connect hook did see the proxy's connects to the captured pod address, and let them be.
    let programs = node.bpftool_dump("PROGRAM_STATS").unwrap();
    let bypassed: u64 = programs[0]["formatted"]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("per-CPU values in {programs:#}"))
        .iter()
        .map(|v| v["value"]["bypassed"].as_u64().unwrap_or(0))
        .sum();
    assert!(bypassed > 0, "{programs:#}");
    let (code, log) = agent.stop().unwrap();
    assert_eq!(code, Some(0), "{log}");
    // The access log's "%UPSTREAM_HOST%" field: every request went to a v1 pod.
    assert_eq!(log.matches(" \"10.244.0.1").count(), 100, "{log}");
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
