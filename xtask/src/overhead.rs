//! `cargo xtask overhead`: the cost of the kernel programs, measured rather than asserted.
//!
//! Turns `kernel.bpf_stats_enabled` on for the run (restoring the previous value), and prints for
//! each program its run time per invocation (`bpftool prog show`: run_time_ns / run_cnt), plus the
//! wall time of the same client load with and without programs attached, as a ratio.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use testbed::{Agent, Mode, Node, PodSpec};

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
  - address: 10.244.0.13
";

const CONNECTIONS: usize = 2000;
const ROUNDS: usize = 5;

/// Restores `kernel.bpf_stats_enabled` on drop.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<Self> {
        let old = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?.trim().to_owned();
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        Ok(Self(old))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// One load of `CONNECTIONS` new connections (one request each) from `pod` to `target`, in the
/// capture cgroup or not: (wall time per request, mean connect() time), in ns.
fn load(node: &Node, pod: &str, in_cgroup: bool, target: &str) -> (f64, f64) {
    let n = CONNECTIONS.to_string();
    let args = ["load", "--target", target, "--host", "x", "-n", &n, "--new-connections"];
    let mut cmd = node.command_in(&node.pod_netns(pod), in_cgroup, &testbed::workspace_binary("pod"), &args);
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let took = start.elapsed();
    let report: testbed::LoadReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.status(200), CONNECTIONS, "{report:?}");
    (took.as_nanos() as f64 / CONNECTIONS as f64, report.connect_ns as f64 / CONNECTIONS as f64)
}

/// Interleaves `ROUNDS` loads of `with` and `without` (so machine noise hits both alike) and keeps
/// the best round of each: ((wall, connect) with, (wall, connect) without).
fn compare(mut with: impl FnMut() -> (f64, f64), mut without: impl FnMut() -> (f64, f64)) -> [(f64, f64); 2] {
    let mut best = [(f64::MAX, f64::MAX); 2];
    for _ in 0..ROUNDS {
        for (i, sample) in [with(), without()].into_iter().enumerate() {
            best[i] = (best[i].0.min(sample.0), best[i].1.min(sample.1));
        }
    }
    best
}

/// (run_time_ns, run_cnt) of the program behind a pinned link.
fn prog_stats(node: &Node, link: &str) -> Result<(u64, u64)> {
    let path = node.bpffs().join("links").join(link);
    let out = Command::new("bpftool").args(["-j", "link", "show", "pinned"]).arg(&path).output()?;
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{path:?}"))?;
    let id = link["prog_id"].as_u64().context("prog_id")?.to_string();
    let out = Command::new("bpftool").args(["-j", "prog", "show", "id", &id]).output()?;
    let prog: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((prog["run_time_ns"].as_u64().unwrap_or(0), prog["run_cnt"].as_u64().unwrap_or(0)))
}

/// ns per run of `link`'s program since `before`, and the number of runs.
fn per_run(node: &Node, link: &str, before: (u64, u64)) -> (f64, u64) {
    let (ns, cnt) = prog_stats(node, link).unwrap();
    let (ns, cnt) = (ns - before.0, cnt - before.1);
    assert!(cnt > 0, "{link} never ran");
    (ns as f64 / cnt as f64, cnt)
}

fn print(what: &str, [with, without]: [(f64, f64); 2]) {
    println!(
        "{what}: per request {:.0} ns with programs vs {:.0} ns without (ratio {:.3}); connect() {:.0} ns vs {:.0} ns (ratio {:.3})",
        with.0,
        without.0,
        with.0 / without.0,
        with.1,
        without.1,
        with.1 / without.1
    );
}

pub fn run() -> Result<()> {
    let _stats = BpfStats::enable().unwrap();
    let mut node = Node::create(&[
        PodSpec::new("client", [10, 244, 0, 10]),
        PodSpec::new("v2", [10, 244, 0, 13]),
        PodSpec::new("client2", [10, 244, 0, 14]),
    ])
    .unwrap();
    node.serve("v2", "v2").unwrap();
    let direct = "10.244.0.13:8080";
    let vip = "10.96.0.10:80";
    let files = [("svc.yaml", SERVICE)];

    // Socket mode: connect4 + sockops run on every connect of the cgroup, captured or not. The same
    // client outside the cgroup is the run without programs.
    let agent = Agent::start_in(&node, &files, false, Mode::Socket, "open").unwrap();
    let (c0, s0) = (prog_stats(&node, "connect4").unwrap(), prog_stats(&node, "sockops_handover").unwrap());
    let best = compare(|| load(&node, "client", true, direct), || load(&node, "client", false, direct));
    let (connect_ns, connects) = per_run(&node, "connect4", c0);
    let (sockops_ns, sockops_runs) = per_run(&node, "sockops_handover", s0);
    print("socket mode, uncaptured destination", best);
    println!(
        "  connect4 {connect_ns:.0} ns/run over {connects} runs, sockops {sockops_ns:.0} ns/run over {sockops_runs}"
    );
    let (c0, s0) = (prog_stats(&node, "connect4").unwrap(), prog_stats(&node, "sockops_handover").unwrap());
    let (wall, connect) = load(&node, "client", true, vip);
    let (connect_ns, _) = per_run(&node, "connect4", c0);
    let (sockops_ns, _) = per_run(&node, "sockops_handover", s0);
    println!(
        "socket mode, captured (through the proxy): {wall:.0} ns/request, connect() {connect:.0} ns; connect4 {connect_ns:.0} ns/run, sockops {sockops_ns:.0} ns/run"
    );
    drop(agent);

    // Packet mode on the first client's interface only: `client2` (another veth, same backend)
    // is the run without programs.
    let agent = Agent::start_with(
        &node,
        &files,
        &["--listen", "0.0.0.0:15001", "--redirect", "10.244.0.1:15001", "--mode", "packet", "--interfaces", "ic0-*"],
        false,
    )
    .unwrap();
    let links: Vec<String> = std::fs::read_dir(node.bpffs().join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let xdp_link = links.iter().find(|l| l.starts_with("xdp_ic0-")).unwrap().clone();
    let tc_link = links.iter().find(|l| l.starts_with("tc_ic0-")).unwrap().clone();
    assert_eq!(links.len(), 2, "{links:?}");
    let (x0, t0) = (prog_stats(&node, &xdp_link).unwrap(), prog_stats(&node, &tc_link).unwrap());
    let best = compare(|| load(&node, "client", false, direct), || load(&node, "client2", false, direct));
    let (xdp_ns, xdp_runs) = per_run(&node, &xdp_link, x0);
    let (tc_ns, tc_runs) = per_run(&node, &tc_link, t0);
    print("packet mode, uncaptured destination", best);
    println!("  xdp {xdp_ns:.0} ns/packet over {xdp_runs}, tc {tc_ns:.0} ns/packet over {tc_runs}");
    let (x0, t0) = (prog_stats(&node, &xdp_link).unwrap(), prog_stats(&node, &tc_link).unwrap());
    let (wall, connect) = load(&node, "client", false, vip);
    let (xdp_ns, xdp_runs) = per_run(&node, &xdp_link, x0);
    let (tc_ns, tc_runs) = per_run(&node, &tc_link, t0);
    println!(
        "packet mode, captured (through the proxy): {wall:.0} ns/request, connect() {connect:.0} ns; xdp {xdp_ns:.0} ns/packet over {xdp_runs}, tc {tc_ns:.0} ns/packet over {tc_runs}"
    );
    drop(agent);
    Ok(())
}
