//! End-to-end: the agent as an ingress gateway on the test node. A client outside the mesh (the
//! client pod's namespace, not in the captured cgroup) calls the node's gateway port with curl
//! over HTTPS with SNI `my-app.example.com`, and a Gateway + VirtualService route it like the
//! seed (beta testers to v2, the rest 90/10); a Gateway removed on reload closes its port while
//! captured traffic flows without a failure; a certificate rotated on disk is served without a
//! restart; a Gateway from the Kubernetes API server (with the DaemonSet's RBAC) is served and
//! its deletion closes its port; its credentials from Kubernetes Secrets are served, rotated,
//! awaited while missing (that server alone refusing handshakes) and kept when deleted.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_share, certificates, gateway_agent, node, split, Scratch, CLIENT, HOST, SERVICE, SUBSETS, VIP};
use testbed::cluster::AGENT_NAMESPACE;
use testbed::seed_cluster::{seed_plane, NODE};
use testbed::{poll_until, read_stdout, Agent, ControlPlane, LoadReport, LoopbackBridge, Node, GATEWAY};

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

/// A Gateway server on the HTTPS port: SIMPLE TLS for `host` with `credential` (port name `name`).
fn https_server(name: &str, host: &str, credential: &str) -> String {
    format!(
        "  - port: {{number: {HTTPS_PORT}, name: {name}, protocol: HTTPS}}
    hosts: [{host}]
    tls: {{mode: SIMPLE, credentialName: {credential}}}
"
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

#[test]
fn curl_from_outside_the_mesh_is_routed_by_the_gateway_over_https() {
    let node = node().unwrap();
    let dir = Scratch::new("gw-https");
    certificates(&dir.join("my-app-cert"), "my-app.example.com");
    let redirect = format!(
        "  - port: {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
    hosts: [my-app.example.com]
    tls: {{httpsRedirect: true}}
"
    );
    let gw = gateway("public", &(https_server("https", "my-app.example.com", "my-app-cert") + &redirect));
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
}

#[test]
fn a_gateway_removed_on_reload_closes_its_port_while_captured_traffic_flows() {
    let node = node().unwrap();
    let dir = Scratch::new("gw-reload");
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
}

#[test]
fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let node = node().unwrap();
    let dir = Scratch::new("gw-rotate");
    let credentials = dir.join("credentials");
    // Two certificates from two CAs; the credential is a link swapped in one step, as Kubernetes
    // swaps a mounted Secret's files.
    certificates(&credentials.join("first"), "my-app.example.com");
    certificates(&credentials.join("second"), "my-app.example.com");
    std::os::unix::fs::symlink("first", credentials.join("my-app-cert")).unwrap();
    let gw = gateway("public", &https_server("https", "my-app.example.com", "my-app-cert"));
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
}

/// An agent following `plane` with the DaemonSet's service account, serving gateways on the
/// node's address (settings written in `dir`), ready; and its bridge to the API server.
fn kubernetes_gateway_agent(node: &Node, plane: &ControlPlane, dir: &Path) -> (Agent, LoopbackBridge) {
    let bridge = LoopbackBridge::open(&node.node_netns(), plane.address()).unwrap();
    let token = plane.create_token(AGENT_NAMESPACE, "interceptor").unwrap();
    let kubeconfig = plane.kubeconfig_for_token(&token, &bridge.url()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let settings = dir.join("agent.yaml");
    std::fs::write(&settings, format!("labels: {{istio: ingressgateway}}\ngatewayAddress: {GATEWAY}\n")).unwrap();
    let settings = settings.display().to_string();
    let flags = ["--node-name", NODE, "--mode", "socket", "--settings", &settings];
    let mut agent = Agent::start_kubernetes(node, &kubeconfig, &flags).unwrap();
    agent.wait_for_log("agent ready", Duration::from_secs(60)).unwrap();
    (agent, bridge)
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
    let dir = Scratch::new("gw-kubernetes");
    // The DaemonSet's service account: the ClusterRole must let it watch Gateways.
    let (mut agent, bridge) = kubernetes_gateway_agent(&node, &plane, &dir);

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
}

/// Secret `name` of the agent's namespace holding `dir`'s certificate and key (written by
/// [`certificates`]) under `cert_key` and `key_key`: `tls.crt`/`tls.key` for a `kubernetes.io/tls`
/// Secret, `cert`/`key` for Istio's generic form.
fn secret(name: &str, kind: &str, dir: &Path, (cert_key, key_key): (&str, &str)) -> String {
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": AGENT_NAMESPACE},
        "type": kind,
        "stringData": {cert_key: read("tls.crt"), key_key: read("tls.key")},
    })
    .to_string()
}

#[test]
fn credentials_from_kubernetes_secrets_are_served_rotated_and_awaited_without_a_restart() {
    let dir = Scratch::new("gw-secrets");
    for set in ["first", "second", "late"] {
        let host = if set == "late" { "late.example.com" } else { "my-app.example.com" };
        certificates(&dir.join(set), host);
    }
    // One port, two servers told apart by SNI: one whose Secret exists, one whose Secret does not yet.
    let servers = https_server("https", "my-app.example.com", "my-app-cert")
        + &https_server("https-late", "late.example.com", "kubernetes://late-cert");
    let gw = gateway("public", &servers);
    let vs =
        edge("[public]", "v2").replace("hosts: [my-app.example.com]", "hosts: [my-app.example.com, late.example.com]");
    let tls_secret = |set: &str| secret("my-app-cert", "kubernetes.io/tls", &dir.join(set), ("tls.crt", "tls.key"));
    let node = node().unwrap();
    let plane = seed_plane(&[SUBSETS, &gw, &vs, &tls_secret("first")]).unwrap();
    // The DaemonSet's service account: its Role must let it watch the Secrets of its namespace.
    let (mut agent, bridge) = kubernetes_gateway_agent(&node, &plane, &dir);

    // curl with SNI `host`, trusting the CA of certificate set `ca`.
    let get = |host: &str, ca: &str| {
        let ca = dir.join(ca).join("ca.pem").display().to_string();
        let resolve = format!("{host}:{HTTPS_PORT}:{GATEWAY}");
        let url = format!("https://{host}:{HTTPS_PORT}/");
        curl(&node, &["-sS", "--max-time", "5", "--cacert", &ca, "--resolve", &resolve, &url])
    };
    let wait = |what: &str, check: &dyn Fn() -> bool| {
        poll_until(what, Duration::from_secs(30), || Ok(check())).unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    };
    wait("the Secret's certificate to be served", &|| get("my-app.example.com", "first").is_ok_and(|b| b == "v2"));

    // The server whose Secret is missing refuses its handshakes; the other one serves on.
    let refused = get("late.example.com", "late").unwrap_err();
    assert!(!refused.is_empty(), "curl says why");
    assert_eq!(get("my-app.example.com", "first").as_deref(), Ok("v2"));
    let log = agent.log();
    assert!(log.contains("spec.servers[1].tls.credentialName: Secret interceptor-system/late-cert not found"), "{log}");
    wait("a Rejected event on the Gateway naming the Secret", &|| {
        let Ok(events) = plane.kubectl(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"]) else {
            return false;
        };
        let events: serde_json::Value = serde_json::from_str(&events).unwrap_or_default();
        events["items"].as_array().into_iter().flatten().any(|e| {
            e["reason"] == "Rejected"
                && e["regarding"]["kind"] == "Gateway"
                && e["regarding"]["name"] == "public"
                && e["note"].as_str().is_some_and(|n| n.contains("Secret interceptor-system/late-cert not found"))
        })
    });

    // Created with PEM that does not parse: still refused, the key named.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("tls.crt"), "not a certificate").unwrap();
    std::fs::copy(dir.join("late/tls.key"), broken.join("tls.key")).unwrap();
    plane.apply(&secret("late-cert", "Opaque", &broken, ("cert", "key"))).unwrap();
    wait("the broken Secret's error", &|| {
        agent.log().contains("Secret interceptor-system/late-cert key cert: no PEM certificate in it")
    });
    assert!(get("late.example.com", "late").is_err(), "a broken Secret is not served");

    // Fixed (Istio's generic form): served, without a restart.
    plane.apply(&secret("late-cert", "Opaque", &dir.join("late"), ("cert", "key"))).unwrap();
    wait("the late Secret to be served", &|| get("late.example.com", "late").is_ok_and(|b| b == "v2"));

    // Rotated: the new certificate is served, the old one no longer.
    plane.apply(&tls_secret("second")).unwrap();
    wait("the rotated certificate to be served", &|| get("my-app.example.com", "second").is_ok_and(|b| b == "v2"));
    assert!(get("my-app.example.com", "first").is_err(), "the old certificate is gone");

    // Updated into one that does not parse: the last good version serves on, the key named.
    plane.apply(&secret("my-app-cert", "kubernetes.io/tls", &broken, ("tls.crt", "tls.key"))).unwrap();
    wait("the held Secret's error", &|| {
        let log = agent.log();
        log.contains("last good version keeps serving")
            && log.contains("Secret interceptor-system/my-app-cert key tls.crt: no PEM certificate in it")
    });
    assert_eq!(get("my-app.example.com", "second").as_deref(), Ok("v2"), "{}", agent.log());

    // Deleted: served on from its last version, as Istio's gateways do, with a warning.
    let applied = agent.log().matches("config applied").count();
    plane.kubectl(&["delete", "secret", "late-cert", "-n", AGENT_NAMESPACE]).unwrap();
    agent.wait_for_log("Secret deleted", Duration::from_secs(30)).unwrap();
    agent.wait_for_log_count("config applied", applied + 1, Duration::from_secs(30)).unwrap();
    assert_eq!(get("late.example.com", "late").as_deref(), Ok("v2"), "{}", agent.log());
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    drop(agent);
    drop(bridge);
}
