//! The demo: the seed example (beta testers to v2, everyone else 90/10) on a test node, through
//! real eBPF capture, with the counts per version and the pinned counters at the end.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use testbed::seed_cluster::SeedCluster;
use testbed::{Agent, Mode, Node, PodSpec};

const VIP: &str = "10.96.0.10:80";
const HOST: &str = "my-app.default.svc.cluster.local";
const PLAIN: usize = 1000;
const BETA: usize = 100;

pub fn run(mode: &str, kubernetes: bool) -> Result<()> {
    let mode = match mode {
        "socket" => Mode::Socket,
        "packet" => Mode::Packet,
        other => anyhow::bail!("unknown mode `{other}` (socket | packet)"),
    };
    let outcome = if kubernetes { demo_kubernetes(mode) } else { demo(mode) };
    match outcome {
        Ok(line) => {
            println!("{line}");
            if line.starts_with("DEMO OK") {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Err(err) => {
            println!("DEMO FAIL {err:#}");
            std::process::exit(1)
        }
    }
}

fn demo(mode: Mode) -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let mesh = root.join("config/mesh");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&mesh).with_context(|| format!("reading {}", mesh.display()))? {
        let path = entry?.path();
        let name = path.file_name().context("file name")?.to_string_lossy().into_owned();
        files.push((name, std::fs::read_to_string(&path)?));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();

    println!("demo: creating the node (client pod, my-app v1 ×2, v2 ×1) …");
    let mut node = Node::create(&[
        PodSpec::new("client", [10, 244, 0, 10]),
        PodSpec::new("my-app-v1-a", [10, 244, 0, 11]),
        PodSpec::new("my-app-v1-b", [10, 244, 0, 12]),
        PodSpec::new("my-app-v2", [10, 244, 0, 13]),
    ])?;
    node.serve("my-app-v1-a", "v1")?;
    node.serve("my-app-v1-b", "v1")?;
    node.serve("my-app-v2", "v2")?;
    let settings = root.join("config/agent.yaml").display().to_string();
    let mut flags = vec!["--settings", settings.as_str()];
    flags.extend_from_slice(mode.flags());
    let mut agent = Agent::start_with(&node, &files, &flags, false)?;
    let line = traffic_and_verdict(&node, &mut agent, mode)?;
    drop(agent);
    drop(node);
    Ok(line)
}

/// The same job with the config from a real API server: Istio's CRDs and deploy/'s RBAC applied,
/// the seed's VirtualService and DestinationRule and a `my-app` Service applied with kubectl, the
/// pods as Pod objects whose status is written as a kubelet would, EndpointSlices made by the real
/// controller, and the agent running with the DaemonSet's service-account token.
fn demo_kubernetes(mode: Mode) -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let seed = std::fs::read_to_string(root.join("config/mesh/my-app.yaml"))?;
    // The Service replaces the file demo's ServiceEntry: only the routing objects are applied.
    let routing: Vec<&str> = seed
        .split("\n---\n")
        .filter(|doc| doc.contains("kind: VirtualService") || doc.contains("kind: DestinationRule"))
        .collect();
    println!("demo: starting etcd, kube-apiserver and kube-controller-manager on loopback, the node and its pods …");
    let mut cluster = SeedCluster::start(&routing, mode)?;
    cluster.wait_ready()?;
    println!("demo: the agent follows the API server with the interceptor service account's token");
    let line = traffic_and_verdict(&cluster.node, &mut cluster.agent, mode)?;
    let slices = cluster.plane.kubectl(&["get", "endpointslices", "-n", "default", "-o", "wide"])?;
    println!("demo: EndpointSlices made by the controller:\n{slices}");
    Ok(line)
}

/// Sends the plain and beta-tester requests, prints the counters and metrics, stops the agent and
/// judges the outcome.
fn traffic_and_verdict(node: &Node, agent: &mut Agent, mode: Mode) -> Result<String> {
    match mode {
        Mode::Socket => println!("demo: agent ready, capturing {VIP} in cgroup {}", node.cgroup().display()),
        Mode::Packet => println!("demo: agent ready, capturing {VIP} with XDP + TC on the pod veths (ic*)"),
    }

    let n = PLAIN.to_string();
    let plain = node.load("client", &["--target", VIP, "--host", HOST, "-n", &n])?;
    let n = BETA.to_string();
    let beta = node
        .load("client", &["--target", VIP, "--host", HOST, "-n", &n, "-H", "user-agent: Mozilla/5.0 (beta-tester)"])?;
    println!(
        "demo: {PLAIN} plain requests → v1={} v2={} other={:?}",
        plain.count("v1"),
        plain.count("v2"),
        plain.statuses
    );
    println!("demo: {BETA} beta-tester requests → v1={} v2={}", beta.count("v1"), beta.count("v2"));

    let maps: &[&str] = match mode {
        Mode::Socket => &["SERVICE_STATS", "PROGRAM_STATS"],
        Mode::Packet => &["PACKET_STATS", "IFACE_STATS", "PROGRAM_STATS"],
    };
    for map in maps {
        let path = node.bpffs().join(map);
        println!("demo: bpftool map dump pinned {}", path.display());
        let out = Command::new("bpftool").args(["map", "dump", "pinned"]).arg(&path).output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let (status, metrics) = node.node_get(testbed::ADMIN, "/stats/prometheus")?;
    println!(
        "demo: istio_requests_total from the agent's admin endpoint {}/stats/prometheus ({status}):",
        testbed::ADMIN
    );
    let scraped: Vec<&str> = metrics.lines().filter(|l| l.starts_with("istio_requests_total")).collect();
    for line in &scraped {
        println!("  {line}");
    }
    let (code, _) = agent.stop()?;

    // 99.9% interval of a binomial(1000, 0.1): 100 ± 31.
    let (v1, v2, beta_v2) = (plain.count("v1"), plain.count("v2"), beta.count("v2"));
    let line = if v1 + v2 != PLAIN {
        format!("DEMO FAIL only {} of {PLAIN} plain requests answered by my-app", v1 + v2)
    } else if !(69..=131).contains(&v2) {
        format!("DEMO FAIL v2 got {v2} of {PLAIN}, outside the 99.9% interval of a 10% split")
    } else if beta_v2 != BETA {
        format!("DEMO FAIL beta testers reached v2 {beta_v2} of {BETA} times")
    } else if scraped.is_empty() {
        "DEMO FAIL the agent's /stats/prometheus has no istio_requests_total".to_owned()
    } else if code != Some(0) {
        format!("DEMO FAIL agent exited with {code:?} on SIGTERM")
    } else {
        format!("DEMO OK v1={v1} v2={v2} beta_v2={beta_v2}/{BETA}")
    };
    Ok(line)
}
