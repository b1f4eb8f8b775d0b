//! Cost of the kernel programs, measured rather than asserted: run with
//! `cargo test -p interceptor-tests --test overhead -- --ignored --nocapture`.
//!
//! Turns `kernel.bpf_stats_enabled` on for the run (restoring the previous value), and prints for
//! each program its run time per invocation (`bpftool prog show`: run_time_ns / run_cnt), plus the
//! wall time of the same client load with and without programs attached, as a ratio.

use std::process::Command;
use std::time::{Duration, Instant};

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

const CONNECTIONS: usize = 3000;
const ROUNDS: usize = 3;

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

/// Best-of-`ROUNDS` wall time of `CONNECTIONS` new connections (one request each) to `target`.
fn timed_load(node: &Node, target: &str) -> Duration {
    let n = CONNECTIONS.to_string();
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            let report =
                node.load("client", &["--target", target, "--host", "x", "-n", &n, "--new-connections"]).unwrap();
            let took = start.elapsed();
            assert_eq!(report.status(200), CONNECTIONS, "{report:?}");
            took
        })
        .min()
        .unwrap()
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

fn per_run(node: &Node, link: &str, before: (u64, u64)) -> (f64, u64) {
    let (ns, cnt) = prog_stats(node, link).unwrap();
    let (ns, cnt) = (ns - before.0, cnt - before.1);
    assert!(cnt > 0, "{link} never ran");
    (ns as f64 / cnt as f64, cnt)
}

#[test]
#[ignore = "measurement; run by hand with --ignored --nocapture"]
fn program_overhead() {
    let _stats = BpfStats::enable().unwrap();
    let mut node =
        Node::create(&[PodSpec::new("client", [10, 244, 0, 10]), PodSpec::new("v2", [10, 244, 0, 13])]).unwrap();
    node.serve("v2", "v2").unwrap();
    let direct = "10.244.0.13:8080";
    let vip = "10.96.0.10:80";
    let files = [("svc.yaml", SERVICE)];

    let bare = timed_load(&node, direct);
    println!("no programs: {CONNECTIONS} connections direct: {bare:?}");

    // Socket mode: connect4 + sockops run on every connect of the cgroup, captured or not.
    let agent = Agent::start_in(&node, &files, false, Mode::Socket, "open").unwrap();
    let (c0, s0) = (prog_stats(&node, "connect4").unwrap(), prog_stats(&node, "sockops_handover").unwrap());
    let hooked = timed_load(&node, direct);
    let (connect_ns, connects) = per_run(&node, "connect4", c0);
    let (sockops_ns, sockops_runs) = per_run(&node, "sockops_handover", s0);
    println!(
        "socket mode, uncaptured: {hooked:?} (ratio {:.3}); connect4 {connect_ns:.0} ns/run over {connects}, sockops {sockops_ns:.0} ns/run over {sockops_runs}",
        hooked.as_secs_f64() / bare.as_secs_f64()
    );
    let (c0, s0) = (prog_stats(&node, "connect4").unwrap(), prog_stats(&node, "sockops_handover").unwrap());
    let captured = timed_load(&node, vip);
    let (connect_ns, _) = per_run(&node, "connect4", c0);
    let (sockops_ns, _) = per_run(&node, "sockops_handover", s0);
    println!("socket mode, captured (through the proxy): {captured:?}; connect4 {connect_ns:.0} ns/run, sockops {sockops_ns:.0} ns/run");
    drop(agent);

    let bare2 = timed_load(&node, direct);
    println!("no programs again: {bare2:?}");

    let agent = Agent::start_in(&node, &files, false, Mode::Packet, "open").unwrap();
    let (xdp_link, tc_link) = {
        let links: Vec<String> = std::fs::read_dir(node.bpffs().join("links"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        // The client's interface is ic0-<suffix>.
        let xdp = links.iter().find(|l| l.starts_with("xdp_ic0-")).unwrap().clone();
        let tc = links.iter().find(|l| l.starts_with("tc_ic0-")).unwrap().clone();
        (xdp, tc)
    };
    let (x0, t0) = (prog_stats(&node, &xdp_link).unwrap(), prog_stats(&node, &tc_link).unwrap());
    let passed = timed_load(&node, direct);
    let (xdp_ns, xdp_runs) = per_run(&node, &xdp_link, x0);
    let (tc_ns, tc_runs) = per_run(&node, &tc_link, t0);
    println!(
        "packet mode, uncaptured: {passed:?} (ratio {:.3}); xdp {xdp_ns:.0} ns/packet over {xdp_runs}, tc {tc_ns:.0} ns/packet over {tc_runs}",
        passed.as_secs_f64() / bare2.as_secs_f64()
    );
    let (x0, t0) = (prog_stats(&node, &xdp_link).unwrap(), prog_stats(&node, &tc_link).unwrap());
    let captured = timed_load(&node, vip);
    let (xdp_ns, xdp_runs) = per_run(&node, &xdp_link, x0);
    let (tc_ns, tc_runs) = per_run(&node, &tc_link, t0);
    println!(
        "packet mode, captured (through the proxy): {captured:?}; xdp {xdp_ns:.0} ns/packet over {xdp_runs}, tc {tc_ns:.0} ns/packet over {tc_runs}"
    );
    drop(agent);
}
