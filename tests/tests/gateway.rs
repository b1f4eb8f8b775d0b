//! End-to-end: the agent as an ingress gateway on the test node. A client outside the mesh (the
//! client pod's namespace, not in the captured cgroup) calls the node's gateway port with curl
//! over HTTPS with SNI `my-app.example.com`, and a Gateway + VirtualService route it like the
//! seed (beta testers to v2, the rest 90/10); a Gateway removed on reload closes its port while
//! captured traffic flows without a failure; a certificate rotated on disk is served without a
//! restart; a Gateway from the Kubernetes API server (with the DaemonSet's RBAC) is served and
//! its deletion closes its port.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_share, certificates, gateway_agent, node, split, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::seed_cluster::{seed_plane, NODE};
use testbed::{poll_until, read_stdout, Agent, LoadReport, LoopbackBridge, Node, GATEWAY};

const HTTPS_PORT: u16 = 8443;
const HTTP_PORT: u16 = 8080;

/// curl in the client pod's namespace, outside the captured cgroup; stdout, or stderr on failure.
fn curl(node: &Node, args: &[&str]) -> Result<String, String> {
    let out = node
        .command_in(&node.pod_netns(CLIENT), false, Path::new("curl"), args)
        .output()
        .expect("curl (Debian's curl package) runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn gateway(name: &str, servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"
    )
}

/// The VirtualService `default/edge` for my-app.example.com, bound to `gateways`, routing all to `subset`.
fn edge(gateways: &str, subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: default}}
spec:
  hosts: [my-app.example.com]
  gateways: {gateways}
  http:
  - route: [{{destination: {{host: my-app.default.svc.cluster.local, subset: {subset}}}}}]
"
    )
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("interceptor-e2e-gw-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn curl_from_outside_the_mesh_is_routed_by_the_gateway_over_https() {
    let node = node().unwrap();
    let dir = scratch("https");
    certificates(&dir.join("my-app-cert"), "my-app.example.com");
    let gw = gateway(
        "public",
        &format!(
            "  - port: {{number: {HTTPS_PORT}, name: https, protocol: HTTPS}}
    hosts: [my-app.example.com]
    tls: {{mode: SIMPLE, credentialName: my-app-cert}}
  - port: {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
    hosts: [my-app.example.com]
    tls: {{httpsRedirect: true}}
"
        ),
    );
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: [my-app.example.com]
  gateways: [public]
  http:
  - match: [{headers: {user-agent: {regex: \".*beta-tester.*\"}}}]
    route: [{destination: {host: my-app.default.svc.cluster.local, subset: v2}}]
  - route:
    - {destination: {host: my-app.default.svc.cluster.local, subset: v1}, weight: 90}
    - {destination: {host: my-app.default.svc.cluster.local, subset: v2}, weight: 10}
";
    let mut agent =
        gateway_agent(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("gw.yaml", &gw), ("vs.yaml", vs)], &dir);
    let ca = dir.join("my-app-cert/ca.pem").display().to_string();
    let resolve = format!("my-app.example.com:{HTTPS_PORT}:{GATEWAY}");
    let url = format!("https://my-app.example.com:{HTTPS_PORT}/");
    let base = ["-sS", "--max-time", "10", "--cacert", &ca, "--resolve", &resolve];

    // One curl, many requests on one connection (HTTP/2 by ALPN), each body on its own line.
    let n = 200;
    let urls = vec![url.as_str(); n];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--http2", "-w", "\n"]);
    args.extend(urls.iter().copied());
    let bodies = curl(&node, &args).unwrap();
    let (v1, v2) = (bodies.lines().filter(|l| *l == "v1").count(), bodies.lines().filter(|l| *l == "v2").count());
    assert_eq!(v1 + v2, n, "{bodies}");
    assert_share(v2, n, 0.1, "v2 share through the gateway");

    let mut beta: Vec<&str> = base.to_vec();
    beta.extend(["--http1.1", "-A", "Mozilla beta-tester", "-w", "\n"]);
    let beta_urls = vec![url.as_str(); 20];
    beta.extend(beta_urls.iter().copied());
    let bodies = curl(&node, &beta).unwrap();
    assert_eq!(bodies.lines().filter(|l| *l == "v2").count(), 20, "beta testers go to v2: {bodies}");

    // Plain HTTP on the redirect server: 301 to https.
    let plain = format!("http://{GATEWAY}:{HTTP_PORT}/x?y=1");
    let redirect = curl(
        &node,
        &["-sS", "-o", "/dev/null", "-H", "host: my-app.example.com", "-w", "%{http_code} %{redirect_url}", &plain],
    )
    .unwrap();
    assert_eq!(redirect, "301 https://my-app.example.com/x?y=1");

    // The access log names the SNI.
    agent.wait_for_log("my-app.example.com default/edge#", Duration::from_secs(5)).unwrap();
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("default/edge#1")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(&format!("{GATEWAY}:{HTTPS_PORT} ")), "downstream local address: {line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gateway_removed_on_reload_closes_its_port_while_captured_traffic_flows() {
    let node = node().unwrap();
    let dir = scratch("reload");
    std::fs::create_dir_all(&dir).unwrap();
    let gw = gateway(
        "public",
        &format!("  - port: {{number: {HTTP_PORT}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n"),
    );
    let vs = &edge("[public, low]", "v1");
    let mut agent = gateway_agent(
        &node,
        &[
            ("svc.yaml", SERVICE),
            ("dr.yaml", SUBSETS),
            ("mesh.yaml", &split(50, 50)),
            ("gw.yaml", &gw),
            ("edge.yaml", vs),
        ],
        &dir,
    );
    let gateway_url = format!("http://{GATEWAY}:{HTTP_PORT}/");
    let via_gateway = || curl(&node, &["-sS", "--max-time", "5", "-H", "host: my-app.example.com", &gateway_url]);
    assert_eq!(via_gateway().unwrap(), "v1");

    let stop = dir.join("stop-load");
    let stop_arg = stop.display().to_string();
    let mut background = node
        .load_in_background(
            CLIENT,
            &[
                "--target",
                VIP,
                "--host",
                HOST,
                "-n",
                "1000000",
                "--pause-ms",
                "1",
                "--max-seconds",
                "60",
                "--stop-file",
                &stop_arg,
            ],
        )
        .unwrap();
    // Captured traffic is flowing before the reload.
    let before = agent.log().matches("outbound|80|").count();
    agent.wait_for_log_count("outbound|80|", before + 20, Duration::from_secs(10)).unwrap();

    let applied = agent.log().matches("config applied").count();
    std::fs::remove_file(agent.config_dir().join("gw.yaml")).unwrap();
    agent.wait_for_log_count("config applied", applied + 1, Duration::from_secs(10)).unwrap();
    poll_until("the gateway port to close", Duration::from_secs(5), || Ok(via_gateway().is_err())).unwrap();
    assert!(agent.log().contains("gateway listener closed"), "{}", agent.log());
    // Captured traffic goes on after it.
    let after = agent.log().matches("outbound|80|").count();
    agent.wait_for_log_count("outbound|80|", after + 20, Duration::from_secs(10)).unwrap();

    std::fs::write(&stop, "").unwrap();
    let during: LoadReport = serde_json::from_str(&read_stdout(&mut background).unwrap()).unwrap();
    assert_eq!(during.failures, 0, "{during:?}");
    assert_eq!(during.status(200), during.requests, "{during:?}");
    assert!(during.count("v1") > 0 && during.count("v2") > 0, "{during:?}");

    // A Gateway added later on port 80: the agent, its capabilities dropped since start-up, still
    // binds a port below 1024 (it keeps CAP_NET_BIND_SERVICE when it serves gateways).
    let low = gateway("low", "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n");
    let applied = agent.log().matches("config applied").count();
    std::fs::write(agent.config_dir().join("low.yaml"), low).unwrap();
    agent.wait_for_log_count("config applied", applied + 1, Duration::from_secs(10)).unwrap();
    let low_url = format!("http://{GATEWAY}:80/");
    let via_low = curl(&node, &["-sS", "--max-time", "5", "-H", "host: my-app.example.com", &low_url]);
    assert_eq!(via_low.as_deref(), Ok("v1"), "{}", agent.log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let node = node().unwrap();
    let dir = scratch("rotate");
    let credentials = dir.join("credentials");
    // Two certificates from two CAs; the credential is a link swapped in one step, as Kubernetes
    // swaps a mounted Secret's files.
    certificates(&credentials.join("first"), "my-app.example.com");
    certificates(&credentials.join("second"), "my-app.example.com");
    std::os::unix::fs::symlink("first", credentials.join("my-app-cert")).unwrap();
    let gw = gateway(
        "public",
        &format!(
            "  - port: {{number: {HTTPS_PORT}, name: https, protocol: HTTPS}}
    hosts: [my-app.example.com]
    tls: {{mode: SIMPLE, credentialName: my-app-cert}}
"
        ),
    );
    let vs = &edge("[public]", "v1");
    let mut agent = gateway_agent(
        &node,
        &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("gw.yaml", &gw), ("vs.yaml", vs)],
        &credentials,
    );
    let resolve = format!("my-app.example.com:{HTTPS_PORT}:{GATEWAY}");
    let url = format!("https://my-app.example.com:{HTTPS_PORT}/");
    let get = |ca: &str| {
        let ca = credentials.join(ca).join("ca.pem").display().to_string();
        curl(&node, &["-sS", "--max-time", "5", "--cacert", &ca, "--resolve", &resolve, &url])
    };
    assert_eq!(get("first").unwrap(), "v1");
    assert!(get("second").is_err(), "the second CA is not trusted for the first certificate");

    let applied = agent.log().matches("config applied").count();
    std::os::unix::fs::symlink("second", credentials.join("next")).unwrap();
    std::fs::rename(credentials.join("next"), credentials.join("my-app-cert")).unwrap();
    agent.wait_for_log_count("config applied", applied + 1, Duration::from_secs(10)).unwrap();
    poll_until("the rotated certificate to be served", Duration::from_secs(5), || Ok(get("second").is_ok()))
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", get("second"), agent.log()));
    assert_eq!(get("second").unwrap(), "v1");
    assert!(get("first").is_err(), "the old certificate is gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gateway_from_the_api_server_is_served_and_its_deletion_closes_its_port() {
    let gw = gateway(
        "public",
        &format!("  - port: {{number: {HTTP_PORT}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n"),
    );
    let vs = &edge("[public]", "v2");
    let node = node().unwrap();
    let plane = seed_plane(&[SUBSETS, &gw, vs]).unwrap();
    let bridge = LoopbackBridge::open(&node.node_netns(), plane.address()).unwrap();
    // The DaemonSet's service account: the ClusterRole must let it watch Gateways.
    let token = plane.create_token("interceptor-system", "interceptor").unwrap();
    let kubeconfig = plane.kubeconfig_for_token(&token, &bridge.url()).unwrap();
    let dir = scratch("kubernetes");
    std::fs::create_dir_all(&dir).unwrap();
    let settings = dir.join("agent.yaml");
    std::fs::write(&settings, format!("labels: {{istio: ingressgateway}}\ngatewayAddress: {GATEWAY}\n")).unwrap();
    let settings = settings.display().to_string();
    let flags = ["--node-name", NODE, "--mode", "socket", "--settings", &settings];
    let mut agent = Agent::start_kubernetes(&node, &kubeconfig, &flags).unwrap();
    agent.wait_for_log("agent ready", Duration::from_secs(60)).unwrap();

    let url = format!("http://{GATEWAY}:{HTTP_PORT}/");
    let via_gateway = || curl(&node, &["-sS", "--max-time", "5", "-H", "host: my-app.example.com", &url]);
    poll_until("the gateway to serve", Duration::from_secs(30), || Ok(via_gateway().is_ok_and(|b| b == "v2")))
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", via_gateway(), agent.log()));

    let applied = agent.log().matches("config applied").count();
    plane.kubectl(&["delete", "gateways.networking.istio.io", "public", "-n", "default"]).unwrap();
    agent.wait_for_log_count("config applied", applied + 1, Duration::from_secs(30)).unwrap();
    poll_until("the gateway port to close", Duration::from_secs(10), || Ok(via_gateway().is_err())).unwrap();
    assert!(!agent.log().contains("left out of the config"), "{}", agent.log());
    drop(agent);
    drop(bridge);
    let _ = std::fs::remove_dir_all(&dir);
}
