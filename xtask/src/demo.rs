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

pub fn run(mode: &str, kubernetes: bool, gateway: bool) -> Result<()> {
    let mode = match mode {
        "socket" => Mode::Socket,
        "packet" => Mode::Packet,
        other => anyhow::bail!("unknown mode `{other}` (socket | packet)"),
    };
    let outcome = match (kubernetes, gateway) {
        (true, true) => anyhow::bail!("--gateway runs with files; it does not combine with --kubernetes"),
        (true, false) => demo_kubernetes(mode),
        (false, true) => demo_gateway(mode),
        (false, false) => demo(mode),
    };
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

/// The YAML files of `dir` (config/mesh, config/gateway), name and text.
fn config_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().context("file name")?.to_string_lossy().into_owned();
        files.push((name, std::fs::read_to_string(&path)?));
    }
    Ok(files)
}

/// The demo node: the client pod and my-app's three pods, serving their version.
fn demo_node() -> Result<Node> {
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
    Ok(node)
}

fn demo(mode: Mode) -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let files = config_files(&root.join("config/mesh"))?;
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let node = demo_node()?;
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

/// The seed at an ingress gateway: the agent also serves config/gateway's Gateway on the node's
/// address (HTTPS on 8443 with a certificate made here, HTTP on 8080 redirecting), and a client
/// outside the mesh — the client pod's namespace, not in the captured cgroup — calls it with
/// curl and SNI `my-app.example.com`.
fn demo_gateway(mode: Mode) -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let mut files = config_files(&root.join("config/mesh"))?;
    files.extend(config_files(&root.join("config/gateway"))?);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let node = demo_node()?;

    let scratch = std::env::temp_dir().join(format!("interceptor-demo-gateway-{}", std::process::id()));
    let credential = scratch.join("credentials/my-app-cert");
    let ca = crate::certificate::issue(&credential, "my-app.example.com")?;
    println!("demo: certificate for my-app.example.com (made now, rcgen) in {}", credential.display());
    let settings = scratch.join("agent.yaml");
    let base = std::fs::read_to_string(root.join("config/agent.yaml"))?;
    let gateway = testbed::GATEWAY;
    std::fs::write(
        &settings,
        format!(
            "{base}\n# The demo's gateway: the node's address, the Gateway's selector, the certificate.\n\
             gatewayAddress: {gateway}\nlabels: {{istio: ingressgateway}}\ncredentials: {}\n",
            scratch.join("credentials").display()
        ),
    )?;
    let settings = settings.display().to_string();
    let mut flags = vec!["--settings", settings.as_str()];
    flags.extend_from_slice(mode.flags());
    let mut agent = Agent::start_with(&node, &files, &flags, false)?;
    println!("demo: agent ready; gateway listening on {gateway}:8443 (HTTPS) and {gateway}:8080 (redirect)");

    let curl = |extra: &[&str], n: usize| -> Result<Vec<String>> {
        let resolve = format!("my-app.example.com:8443:{gateway}");
        let ca = ca.display().to_string();
        let url = "https://my-app.example.com:8443/";
        let mut args = vec!["-sS", "--max-time", "60", "--cacert", &ca, "--resolve", &resolve, "-w", "\n"];
        args.extend_from_slice(extra);
        args.extend(std::iter::repeat_n(url, n));
        let out = node
            .command_in(&node.pod_netns("client"), false, Path::new("curl"), &args)
            .output()
            .context("running curl in the client's namespace")?;
        anyhow::ensure!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
    };
    let plain = curl(&["--http2"], PLAIN)?;
    let beta = curl(&["--http1.1", "-A", "Mozilla/5.0 (beta-tester)"], BETA)?;
    let count = |answers: &[String], name: &str| answers.iter().filter(|a| *a == name).count();
    let (v1, v2, beta_v2) = (count(&plain, "v1"), count(&plain, "v2"), count(&beta, "v2"));
    println!("demo: {PLAIN} HTTPS requests (HTTP/2) from outside the mesh → v1={v1} v2={v2}");
    println!("demo: {BETA} beta-tester HTTPS requests (HTTP/1.1) → v2={beta_v2}");
    let redirect = node
        .command_in(
            &node.pod_netns("client"),
            false,
            Path::new("curl"),
            &["-sS", "-o", "/dev/null", "-H", "host: my-app.example.com", "-w", "%{http_code} %{redirect_url}"],
        )
        .arg(format!("http://{gateway}:8080/"))
        .output()?;
    let redirect = String::from_utf8_lossy(&redirect.stdout).into_owned();
    println!("demo: plain HTTP on 8080 → {redirect}");
    let (status, metrics) = node.node_get(testbed::ADMIN, "/stats/prometheus")?;
    println!("demo: istio_requests_total from {}/stats/prometheus ({status}):", testbed::ADMIN);
    let scraped: Vec<&str> = metrics.lines().filter(|l| l.starts_with("istio_requests_total")).collect();
    for line in &scraped {
        println!("  {line}");
    }
    let sni_logged = agent.log().lines().any(|l| l.contains(" my-app.example.com default/my-app-edge#"));
    let (code, _) = agent.stop()?;
    drop(node);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(verdict(
        v1,
        v2,
        beta_v2,
        &[
            (!scraped.is_empty(), "the agent's /stats/prometheus has no istio_requests_total"),
            (redirect.starts_with("301 https://my-app.example.com/"), "plain HTTP was not redirected to https"),
            (sni_logged, "the access log does not name the SNI"),
            (code == Some(0), "the agent did not exit 0 on SIGTERM"),
        ],
    ))
}

/// `DEMO OK v1=<n> v2=<n> beta_v2=<k>/<m>` when the split and the beta routing hold and every
/// `checks` entry is true, else `DEMO FAIL` with the first reason.
fn verdict(v1: usize, v2: usize, beta_v2: usize, checks: &[(bool, &str)]) -> String {
    // 99.9% interval of a binomial(1000, 0.1): 100 ± 31.
    if v1 + v2 != PLAIN {
        return format!("DEMO FAIL only {} of {PLAIN} plain requests answered by my-app", v1 + v2);
    }
    if !(69..=131).contains(&v2) {
        return format!("DEMO FAIL v2 got {v2} of {PLAIN}, outside the 99.9% interval of a 10% split");
    }
    if beta_v2 != BETA {
        return format!("DEMO FAIL beta testers reached v2 {beta_v2} of {BETA} times");
    }
    if let Some((_, reason)) = checks.iter().find(|(ok, _)| !ok) {
        return format!("DEMO FAIL {reason}");
    }
    format!("DEMO OK v1={v1} v2={v2} beta_v2={beta_v2}/{BETA}")
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
    let (v1, v2, beta_v2) = (plain.count("v1"), plain.count("v2"), beta.count("v2"));
    Ok(verdict(
        v1,
        v2,
        beta_v2,
        &[
            (!scraped.is_empty(), "the agent's /stats/prometheus has no istio_requests_total"),
            (code == Some(0), "the agent exited otherwise than 0 on SIGTERM"),
        ],
    ))
}
