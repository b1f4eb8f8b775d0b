//! The standard test service: `my-app` with VIP 10.96.0.10:80, pods v1a/v1b (`version: v1`) and
//! v2 (`version: v2`) on port 8080, a client pod, the subsets v1 and v2, the seed's two
//! VirtualServices, and the statistics the tests judge splits with.

use anyhow::Result;

use crate::{Node, PodSpec};

/// The client pod's name.
pub const CLIENT: &str = "client";
/// The service VIP:port.
pub const VIP: &str = "10.96.0.10:80";
/// The service host.
pub const HOST: &str = "my-app.default.svc.cluster.local";
/// The service's IPv6 VIP:port: 10.96.0.10's twin (see `ipv6_twin`).
pub const VIP6: &str = "[fd00:10:96::10]:80";

/// The ServiceEntry: VIP, port 80 → 8080, three pods.
pub const SERVICE: &str = "\
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

/// [`SERVICE`] over IPv6: VIP fd00:10:96::10, the same three pods at their IPv6 addresses.
pub fn service_v6() -> String {
    SERVICE.replace("10.96.0.10", "fd00:10:96::10").replace("10.244.0.", "fd00:10:244::")
}

/// [`SERVICE`] dual-stack: a VIP per family (as a Service with two `clusterIPs`), the pods at
/// both of their addresses, so each family reaches them over its own.
pub fn service_dual_stack() -> String {
    let v6_endpoints = service_v6();
    let v6_endpoints = &v6_endpoints[v6_endpoints.find("  - address:").unwrap_or(v6_endpoints.len())..];
    format!("{}{v6_endpoints}", SERVICE.replace("  - 10.96.0.10\n", "  - 10.96.0.10\n  - fd00:10:96::10\n"))
}

/// The address family a test's client uses: the service definition and the VIP it dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// 10.96.0.10, pods at 10.244.0.x.
    V4,
    /// fd00:10:96::10, pods at fd00:10:244::x.
    V6,
}

impl Family {
    /// The my-app ServiceEntry of this family.
    pub fn service(self) -> String {
        match self {
            Family::V4 => SERVICE.to_owned(),
            Family::V6 => service_v6(),
        }
    }

    /// The VIP:port clients dial.
    pub fn vip(self) -> &'static str {
        match self {
            Family::V4 => VIP,
            Family::V6 => VIP6,
        }
    }
}

/// The DestinationRule with subsets v1 and v2.
pub const SUBSETS: &str = "\
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

/// The seed's first example with the given weights for v1 and v2.
pub fn split(v1: u32, v2: u32) -> String {
    virtual_service(&format!(
        "  - route:
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v1
      weight: {v1}
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v2
      weight: {v2}
"
    ))
}

/// The seed's second example, verbatim.
pub const BETA: &str = "\
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

/// A VirtualService for my-app with the given `http:` rules (indented as list items).
pub fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: my-app-vs\nspec:\n  hosts:\n  - my-app.default.svc.cluster.local\n  http:\n{http}"
    )
}

/// A VirtualService sending paths under `prefix` to v2, everything else to v1.
pub fn v2_under(prefix: &str) -> String {
    virtual_service(&format!(
        "  - match:
    - uri:
        prefix: {prefix}
    route:
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v2
  - route:
    - destination:
        host: my-app.default.svc.cluster.local
        subset: v1
"
    ))
}

/// A node with the client pod and the three my-app pods, not yet serving.
///
/// # Errors
/// The node cannot be built.
pub fn node_with_pods() -> Result<Node> {
    Node::create(&[
        PodSpec::new(CLIENT, [10, 244, 0, 10]),
        PodSpec::new("v1a", [10, 244, 0, 11]),
        PodSpec::new("v1b", [10, 244, 0, 12]),
        PodSpec::new("v2", [10, 244, 0, 13]),
    ])
}

/// A node whose my-app pods serve their version.
///
/// # Errors
/// The node cannot be built or a backend does not start.
pub fn node() -> Result<Node> {
    let mut node = node_with_pods()?;
    node.serve("v1a", "v1")?;
    node.serve("v1b", "v1")?;
    node.serve("v2", "v2")?;
    Ok(node)
}

/// Sends `n` requests from the client pod to the VIP with extra `pod load` arguments.
///
/// # Panics
/// The client cannot run (a broken test node, not a finding).
pub fn load(node: &Node, n: usize, extra: &[&str]) -> crate::LoadReport {
    load_to(node, VIP, n, extra)
}

/// Like [`load`], to `vip` (e.g. [`VIP6`]).
///
/// # Panics
/// As [`load`].
pub fn load_to(node: &Node, vip: &str, n: usize, extra: &[&str]) -> crate::LoadReport {
    let n = n.to_string();
    let mut args = vec!["--target", vip, "--host", HOST, "-n", &n];
    args.extend_from_slice(extra);
    node.load(CLIENT, &args).expect("pod load runs")
}

/// Asserts that `k` of `n` lies in the 99.99% normal interval of a binomial with share `p`.
/// 99.99%, not 99.9%: the suite checks about eight shares per run, so at 99.9% about one CI run in a
/// hundred failed by chance (seen once: 155 of 2,000 for a 10% share); a skewed split still fails.
pub fn assert_share(k: usize, n: usize, p: f64, what: &str) {
    let mean = n as f64 * p;
    let margin = 3.89 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!((k as f64 - mean).abs() <= margin, "{what}: {k} of {n}, expected {mean:.0} ± {margin:.0}");
}

/// The value of the first sample of `name` in Prometheus text whose labels include every
/// `key="value"` in `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The kernel program counter `name` (`interceptor_program_*_total`) of `program` (`sk_msg`,
/// `splice`, …) in Prometheus text.
pub fn program_sample(text: &str, name: &str, program: &str) -> Option<f64> {
    sample(text, name, &[&format!("program=\"{program}\"")])
}

/// The body `pod serve --body-bytes n` answers with: `name`, then numbered records (`.0000000`,
/// `.0000001`, …) up to `n` bytes, so a byte out of place anywhere shows.
pub fn numbered_body(name: &str, n: usize) -> Vec<u8> {
    let mut body = name.as_bytes().to_vec();
    let mut record = 0u32;
    while body.len() < n {
        body.extend_from_slice(format!(".{:07}", record % 10_000_000).as_bytes());
        record += 1;
    }
    body.truncate(n.max(name.len()));
    body
}
