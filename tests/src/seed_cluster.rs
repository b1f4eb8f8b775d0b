//! The seed's `my-app` as Kubernetes objects on a real control plane — a Service whose ClusterIP
//! is the fixtures' VIP, pods v1a/v1b (`version: v1`) and v2 on the test node — with an agent in
//! the node following the cluster with deploy/'s service account (used by tests and the demo).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cluster::poll_until;
use crate::fixtures::node;
use crate::{Agent, ControlPlane, LoopbackBridge, Mode, Node};

/// The test node's name in the cluster.
pub const NODE: &str = "node-a";
/// How long a change may take to reach the agent (bounded waits, not sleeps).
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// `my-app` as a Kubernetes Service: the fixtures' VIP as its ClusterIP, port 80 → 8080.
pub const MY_APP_SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: my-app, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: my-app}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";

/// deploy/: the agent's namespace, service account and ClusterRole, applied as a user would.
///
/// # Errors
/// deploy/ cannot be read.
pub fn deploy_manifests() -> Result<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut text = String::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        text.push_str(&std::fs::read_to_string(&file)?);
        text.push_str("\n---\n");
    }
    Ok(text)
}

/// A control plane with Istio's CRDs and deploy/ applied, the seed's Service and pods, the test
/// node with its pods serving, and an agent in the node following the cluster with the
/// DaemonSet's service-account token (through a loopback bridge into the node namespace).
pub struct SeedCluster {
    // Drop order: agent, bridge, node, control plane.
    /// The agent under test.
    pub agent: Agent,
    /// Its way to the API server (`None` while a test cuts it off).
    pub bridge: Option<LoopbackBridge>,
    /// The test node.
    pub node: Node,
    /// The control plane.
    pub plane: ControlPlane,
}

impl SeedCluster {
    /// Everything above, with `objects` (YAML) applied before the agent starts, capturing in `mode`.
    ///
    /// # Errors
    /// Any part fails to start.
    pub fn start(objects: &[&str], mode: Mode) -> Result<SeedCluster> {
        let node = node()?;
        let plane = seed_plane(objects)?;
        let bridge = LoopbackBridge::open(&node.node_netns(), plane.address())?;
        let agent = start_agent(&plane, &node, &bridge, mode)?;
        Ok(SeedCluster { agent, bridge: Some(bridge), node, plane })
    }

    /// Waits until the agent has applied the cluster's config.
    ///
    /// # Errors
    /// Not within the apply timeout.
    pub fn wait_ready(&mut self) -> Result<()> {
        self.agent.wait_for_log("agent ready", APPLY_TIMEOUT)
    }

    /// Applies `yaml` and waits for the agent to apply one more config than before.
    /// # Errors
    /// The apply fails or the agent does not apply a config in time.
    pub fn apply_and_wait(&mut self, yaml: &str) -> Result<()> {
        let before = self.agent.log().matches("config applied").count();
        self.plane.apply(yaml)?;
        self.agent.wait_for_log_count("config applied", before + 1, APPLY_TIMEOUT)
    }

    /// Polls until `check` holds (bounded).
    /// # Errors
    /// `check` fails or does not hold in time; the error carries the agent's log.
    pub fn eventually(&self, what: &str, check: impl FnMut(&Self) -> Result<bool>) -> Result<()> {
        self.eventually_within(what, APPLY_TIMEOUT, check)
    }

    /// As [`Self::eventually`], waiting up to `timeout`.
    ///
    /// # Errors
    /// `check` fails, or is not true in time (the agent's log attached).
    pub fn eventually_within(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        poll_until(what, timeout, || check(self)).with_context(|| format!("agent log:\n{}", self.agent.log()))
    }
}

/// The control plane part of [`SeedCluster`]: CRDs, deploy/, Node [`NODE`], the `my-app` Service
/// and its three ready pods (their EndpointSlices published), then `objects`.
///
/// # Errors
/// Any part fails.
pub fn seed_plane(objects: &[&str]) -> Result<ControlPlane> {
    let plane = ControlPlane::start()?;
    plane.install_istio_crds()?;
    plane.apply(&deploy_manifests()?)?;
    plane.create_node(NODE)?;
    plane.apply(MY_APP_SERVICE)?;
    for (pod, ip, version) in
        [("v1a", [10, 244, 0, 11], "v1"), ("v1b", [10, 244, 0, 12], "v1"), ("v2", [10, 244, 0, 13], "v2")]
    {
        plane.create_ready_pod("default", pod, NODE, &[("app", "my-app"), ("version", version)], ip.into())?;
    }
    for object in objects {
        plane.apply(object)?;
    }
    wait_for_endpoints(&plane, "my-app", 3)?;
    Ok(plane)
}

/// The agent with the `interceptor` ServiceAccount's token: only its ClusterRole's rights.
///
/// # Errors
/// The token cannot be made or the agent does not start.
pub fn start_agent(plane: &ControlPlane, node: &Node, bridge: &LoopbackBridge, mode: Mode) -> Result<Agent> {
    let token = plane.create_token("interceptor-system", "interceptor")?;
    let kubeconfig = plane.kubeconfig_for_token(&token, &bridge.url())?;
    let mut flags = vec!["--node-name", NODE];
    flags.extend_from_slice(mode.flags());
    Agent::start_kubernetes(node, &kubeconfig, &flags)
}

/// Waits until the controller-made EndpointSlices of `service` list `count` ready addresses.
///
/// # Errors
/// Not within the apply timeout.
pub fn wait_for_endpoints(plane: &ControlPlane, service: &str, count: usize) -> Result<()> {
    let selector = format!("kubernetes.io/service-name={service}");
    let mut last = String::new();
    poll_until(&format!("{count} ready endpoints of {service}"), APPLY_TIMEOUT, || {
        last = plane.kubectl(&["get", "endpointslices", "-n", "default", "-l", &selector, "-o", "json"])?;
        let slices: serde_json::Value = serde_json::from_str(&last)?;
        let ready = slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] != serde_json::Value::Bool(false))
            .count();
        Ok(ready == count)
    })
    .with_context(|| format!("last EndpointSlices: {last}"))
}
