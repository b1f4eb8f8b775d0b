//! `cargo xtask bench-cluster`: the agent following a synthetic cluster on a real API server —
//! Services with hand-written EndpointSlices and VirtualServices, written in growing steps — with
//! the time to ready, the apply time of one VirtualService change and the agent's RSS per step.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use testbed::seed_cluster::deploy_manifests;
use testbed::{Agent, ControlPlane, LoopbackBridge, Node};

/// The benchmark's namespace.
const NAMESPACE: &str = "bench";
/// Objects per `kubectl apply`.
const CHUNK: usize = 500;

/// The full size, reached in steps (fractions of it).
pub struct Size {
    pub services: usize,
    pub endpoints_per_service: usize,
    pub virtual_services: usize,
    /// VirtualService changes timed per step.
    pub changes: usize,
}

struct Step {
    services: usize,
    endpoints: usize,
    virtual_services: usize,
    ready: Duration,
    apply_ms: Vec<f64>,
    rss_mb: f64,
}

pub fn run(size: &Size, steps: &[f64]) -> Result<()> {
    // Release binaries: the figures are the agent's, not the debug build's.
    crate::cargo(&["build", "--release", "-p", "interceptor-user", "-p", "interceptor-tests", "--bins"])?;
    let bin_dir = crate::workspace_root().join("target/release");
    for name in ["interceptor", "pod"] {
        // Read by testbed::workspace_binary; set before any thread starts.
        std::env::set_var(format!("INTERCEPTOR_{}_BIN", name.to_ascii_uppercase()), bin_dir.join(name));
    }
    let node = Node::create(&[]).context("creating the test node")?;
    let plane = ControlPlane::start()?;
    plane.install_istio_crds()?;
    plane.apply(&deploy_manifests()?)?;
    plane.kubectl(&["create", "namespace", NAMESPACE])?;
    let bridge = LoopbackBridge::open(&node.node_netns(), plane.address())?;
    let token = plane.create_token("interceptor-system", "interceptor")?;
    let kubeconfig = plane.kubeconfig_for_token(&token, &bridge.url())?;

    let mut results = Vec::new();
    let (mut written_services, mut written_vs) = (0, 0);
    for fraction in steps {
        let services = ((size.services as f64 * fraction) as usize).max(1);
        let virtual_services = ((size.virtual_services as f64 * fraction) as usize).min(services);
        let start = Instant::now();
        write_objects(&plane, written_services..services, written_vs..virtual_services, size.endpoints_per_service)?;
        println!(
            "bench-cluster: wrote {} Services, {} EndpointSlices, {} VirtualServices in {:.1} s",
            services - written_services,
            services - written_services,
            virtual_services - written_vs,
            start.elapsed().as_secs_f64()
        );
        (written_services, written_vs) = (services, virtual_services);

        let start = Instant::now();
        let mut agent = Agent::start_kubernetes(&node, &kubeconfig, &[])?;
        agent.wait_for_log("agent ready", Duration::from_secs(120))?;
        let ready = start.elapsed();
        let rss_mb = rss_mb(agent.pid().context("agent pid")?)?;
        let mut apply_ms = Vec::new();
        for change in 0..size.changes {
            let before = agent.log().matches("config applied").count();
            plane.apply(&virtual_service(0, change + 1))?;
            agent.wait_for_log_count("config applied", before + 1, Duration::from_secs(30))?;
            apply_ms.push(last_after_ms(&agent.log()).context("`after_ms` in the agent log")?);
        }
        agent.stop()?;
        apply_ms.sort_by(f64::total_cmp);
        let step = Step {
            services,
            endpoints: services * size.endpoints_per_service,
            virtual_services,
            ready,
            apply_ms,
            rss_mb,
        };
        println!("{}", step.line());
        results.push(step);
    }
    drop(bridge);
    println!("\n| services | endpoints | VirtualServices | start to ready | VS change applied p50 / p99 | RSS |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for s in &results {
        println!(
            "| {} | {} | {} | {:.2} s | {:.0} / {:.0} ms | {:.0} MB |",
            s.services,
            s.endpoints,
            s.virtual_services,
            s.ready.as_secs_f64(),
            percentile(&s.apply_ms, 0.5),
            percentile(&s.apply_ms, 0.99),
            s.rss_mb
        );
    }
    Ok(())
}

impl Step {
    fn line(&self) -> String {
        format!(
            "CLUSTER services={} endpoints={} virtual_services={} ready_s={:.2} apply_p50_ms={:.1} apply_p99_ms={:.1} rss_mb={:.0}",
            self.services,
            self.endpoints,
            self.virtual_services,
            self.ready.as_secs_f64(),
            percentile(&self.apply_ms, 0.5),
            percentile(&self.apply_ms, 0.99),
            self.rss_mb
        )
    }
}

/// Services `services` (each with one EndpointSlice of `endpoints` addresses) and
/// VirtualServices `vs`, applied in chunks.
fn write_objects(
    plane: &ControlPlane,
    services: std::ops::Range<usize>,
    vs: std::ops::Range<usize>,
    endpoints: usize,
) -> Result<()> {
    let mut docs: Vec<String> = Vec::new();
    for i in services {
        docs.push(service(i));
        docs.push(endpoint_slice(i, endpoints));
    }
    docs.extend(vs.map(|i| virtual_service(i, 0)));
    for chunk in docs.chunks(CHUNK) {
        plane.apply(&chunk.join("\n---\n"))?;
    }
    Ok(())
}

fn service(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {NAMESPACE}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

/// A hand-written slice (no Pods: the endpointslice controller would need 50,000 of them); the
/// agent reads it like a controller-made one.
fn endpoint_slice(i: usize, endpoints: usize) -> String {
    let mut text = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-0\n  namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: svc-{i}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    for j in 0..endpoints {
        let n = i * endpoints + j;
        let _ = writeln!(text, "- addresses: [10.{}.{}.{}]", 128 + n / 65536, (n / 256) % 256, n % 256);
    }
    text
}

/// VirtualService `i` (for `svc-i`): a header rule and a default route; `version` changes the header.
fn virtual_service(i: usize, version: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{i}, namespace: {NAMESPACE}}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - match: [{{headers: {{x-canary: {{exact: \"v{version}\"}}}}}}]\n    route: [{{destination: {{host: svc-{i}}}}}]\n    timeout: 2s\n  - route: [{{destination: {{host: svc-{i}}}}}]\n"
    )
}

fn last_after_ms(log: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains("config applied"))?;
    let value = line.split("after_ms=").nth(1)?.split_whitespace().next()?;
    value.parse().ok()
}

fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kb / 1024.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_apply_time_from_the_agent_log() {
        let log = "x INFO config applied cause=\"kubernetes\" version=3 after_ms=41.5 added=0\n";
        assert_eq!(last_after_ms(log), Some(41.5));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
