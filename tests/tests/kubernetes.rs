//! End-to-end with a real control plane: the agent follows kube-apiserver (Istio objects,
//! Services, EndpointSlices made by the real controller, pod labels) with the rights of deploy/'s
//! ClusterRole, and routes real traffic between the test node's namespaces through ClusterIPs.

use std::time::Duration;

use testbed::fixtures::{assert_share, load, load_to, sample, split, BETA, CLIENT, HOST, SUBSETS, VIP, VIP6};
use testbed::seed_cluster::{SeedCluster, MY_APP_SERVICE, NODE};
use testbed::{read_stdout, Agent, LoopbackBridge, Mode, Node, PodSpec, ADMIN};

/// `n` requests from the client to the VIP, 2 ms apart, in the background (its report on stdout).
fn steady_load(node: &Node, n: &str) -> std::process::Child {
    let args = ["--target", VIP, "--host", HOST, "-n", n, "--pause-ms", "2", "--max-seconds", "60"];
    node.load_in_background(CLIENT, &args).unwrap()
}

fn admin_get(node: &Node, path: &str) -> (u16, String) {
    node.node_get(ADMIN, path).unwrap_or((0, String::new()))
}

#[test]
fn the_seed_examples_route_through_a_cluster_ip_with_the_service_accounts_rights() {
    let mut cluster = SeedCluster::start(&[SUBSETS, &split(90, 10)], Mode::Socket).unwrap();
    cluster.wait_ready().unwrap();
    let report = load(&cluster.node, 2000, &[]);
    assert_eq!((report.failures, report.status(200)), (0, 2000), "{report:?}");
    assert_share(report.count("v2"), 2000, 0.1, "v2 share");

    // The seed's second example replaces the first (same name): beta testers to v2.
    cluster.apply_and_wait(BETA).unwrap();
    let beta = load(&cluster.node, 100, &["-H", "User-Agent: Mozilla/5.0 beta-tester/2"]);
    assert_eq!(beta.count("v2"), 100, "{beta:?}");
    let rest = load(&cluster.node, 2000, &["-H", "User-Agent: Mozilla/5.0"]);
    assert_eq!(rest.status(200), 2000, "{rest:?}");
    assert_share(rest.count("v2"), 2000, 0.1, "v2 share without the header");

    // "Why did it go there?" answered from what the running agent holds (kubectl exec's view).
    let interceptor = testbed::workspace_binary("interceptor");
    let args = ["explain", "--admin", ADMIN, "--host", "my-app", "-H", "user-agent: beta-tester"];
    let out = cluster.node.command_in(&cluster.node.node_netns(), false, &interceptor, &args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let (_, dump) = admin_get(&cluster.node, "/config_dump");
    assert!(text.contains("default/my-app-vs#0 (match[0]): MATCHED"), "{text}\n{dump}");
    assert!(text.contains("outbound|80|v2|my-app.default.svc.cluster.local"), "{text}");
    let (_, dump) = admin_get(&cluster.node, "/config_dump");
    assert!(dump.contains("\"resource\": \"Service default/my-app\""), "{dump}");
}

#[test]
fn a_dual_stack_service_routes_both_cluster_ips_by_the_same_rules() {
    let mut cluster = SeedCluster::start(&[SUBSETS, BETA], Mode::Socket).unwrap();
    cluster.wait_ready().unwrap();
    // The seed's Service made dual-stack in place: a ClusterIP per family; the controller then
    // publishes an IPv6 EndpointSlice beside the IPv4 one (the pods have an address of each).
    let dual = MY_APP_SERVICE.replace(
        "  clusterIP: 10.96.0.10\n",
        "  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, \"fd00:10:96::10\"]\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n",
    );
    cluster.plane.apply(&dual).unwrap();
    testbed::seed_cluster::wait_for_endpoints(&cluster.plane, "my-app", 6).unwrap();
    cluster.eventually("the IPv6 ClusterIP answers", |c| Ok(load_to(&c.node, VIP6, 5, &[]).status(200) == 5)).unwrap();
    for vip in [VIP, VIP6] {
        let beta = load_to(&cluster.node, vip, 50, &["-H", "User-Agent: Mozilla/5.0 beta-tester/2"]);
        assert_eq!(beta.count("v2"), 50, "{vip}: {beta:?}");
        let rest = load_to(&cluster.node, vip, 1000, &["-H", "User-Agent: Mozilla/5.0"]);
        assert_eq!((rest.failures, rest.status(200)), (0, 1000), "{vip}: {rest:?}");
        assert_share(rest.count("v2"), 1000, 0.1, &format!("{vip}: v2 share without the header"));
    }
    // Both families' endpoints serve the IPv6 VIP's traffic as well: the access log names
    // upstream hosts of both (the pick is over the subset's endpoints, whatever their family).
    let log = cluster.agent.log();
    assert!(log.contains("\"[fd00:10:244::1"), "no IPv6 upstream in the access log:\n{log}");
}

#[test]
fn weights_labels_pods_and_services_follow_the_cluster_live() {
    let mut cluster = SeedCluster::start(&[SUBSETS, &split(100, 0)], Mode::Socket).unwrap();
    cluster.wait_ready().unwrap();

    // New weights under load: the new split, no failed request.
    let mut background = steady_load(&cluster.node, "1500");
    std::thread::sleep(Duration::from_millis(500));
    cluster.apply_and_wait(&split(0, 100)).unwrap();
    let during: testbed::LoadReport = serde_json::from_str(&read_stdout(&mut background).unwrap()).unwrap();
    assert_eq!((during.failures, during.status(200)), (0, 1500), "{during:?}");
    assert!(during.count("v1") > 0 && during.count("v2") > 0, "the change landed mid-run: {during:?}");
    assert_eq!(load(&cluster.node, 100, &[]).count("v2"), 100);

    // A pod relabelled v1 → v2 moves between subsets (v1b answers as "v1": its body is its name).
    cluster.apply_and_wait(&split(100, 0)).unwrap();
    cluster.plane.kubectl(&["label", "pod", "v1a", "-n", "default", "version=v2", "--overwrite"]).unwrap();
    cluster.plane.kubectl(&["label", "pod", "v1b", "-n", "default", "version=v2", "--overwrite"]).unwrap();
    cluster.eventually("v1 subset empty after relabelling", |c| Ok(load(&c.node, 20, &[]).status(503) == 20)).unwrap();

    // A new ready pod gets traffic; a deleted one gets none.
    cluster.node.add_pod(PodSpec::new("v3", [10, 244, 0, 14])).unwrap();
    cluster.node.serve("v3", "v3").unwrap();
    cluster
        .plane
        .create_ready_pod("default", "v3", NODE, &[("app", "my-app"), ("version", "v1")], [10, 244, 0, 14].into())
        .unwrap();
    cluster.eventually("the new pod serves v1", |c| Ok(load(&c.node, 20, &[]).count("v3") == 20)).unwrap();
    cluster.plane.kubectl(&["delete", "pod", "v3", "-n", "default", "--wait=false"]).unwrap();
    cluster.eventually("the deleted pod gets nothing", |c| Ok(load(&c.node, 20, &[]).status(503) == 20)).unwrap();

    // A Service added is captured; removed, it is released from the kernel map.
    let other = MY_APP_SERVICE.replace("name: my-app", "name: other").replace("10.96.0.10", "10.96.0.20");
    cluster.apply_and_wait(&other).unwrap();
    let reached = |c: &SeedCluster| {
        let report = c.node.load(CLIENT, &["--target", "10.96.0.20:80", "--host", "other", "-n", "10"])?;
        Ok(report.status(200) == 10)
    };
    cluster.eventually("the new Service is captured", reached).unwrap();
    cluster.plane.kubectl(&["delete", "service", "other", "-n", "default"]).unwrap();
    // Uncaptured, a VIP leads nowhere in the test node (its range is unreachable there).
    cluster
        .eventually("the removed Service is released", |c| {
            let report = c.node.load(CLIENT, &["--target", "10.96.0.20:80", "--host", "other", "-n", "3"])?;
            Ok(report.failures == 3)
        })
        .unwrap();
}

#[test]
fn a_broken_virtual_service_is_rejected_alone_with_an_event() {
    let broken = split(50, 50)
        .replace("name: my-app-vs", "name: broken")
        .replace("- my-app.default.svc.cluster.local\n  http", "- other.default.svc.cluster.local\n  http")
        .replace("weight: 50", "weight: -1");
    let mut cluster = SeedCluster::start(&[SUBSETS, &split(0, 100), &broken], Mode::Socket).unwrap();
    cluster.wait_ready().unwrap();
    assert_eq!(load(&cluster.node, 50, &[]).count("v2"), 50, "the good VirtualService applies");
    let log = cluster.agent.log();
    assert!(log.contains("VirtualService default/broken: spec.http[0].route[0].weight"), "{log}");
    cluster
        .eventually("a Rejected event on default/broken", |c| {
            let events = c.plane.kubectl(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"])?;
            let events: serde_json::Value = serde_json::from_str(&events)?;
            Ok(events["items"].as_array().into_iter().flatten().any(|e| {
                e["reason"] == "Rejected"
                    && e["regarding"]["name"] == "broken"
                    && e["regarding"]["kind"] == "VirtualService"
                    && e["note"].as_str().is_some_and(|n| n.contains("spec.http[0].route[0].weight"))
            }))
        })
        .unwrap();
    let (_, metrics) = admin_get(&cluster.node, "/stats/prometheus");
    assert_eq!(sample(&metrics, "interceptor_config_rejected_resources", &[]), Some(1.0), "{metrics}");

    // Fixed: applied, and no longer counted.
    cluster.apply_and_wait(&broken.replace("weight: -1", "weight: 50")).unwrap();
    let (_, metrics) = admin_get(&cluster.node, "/stats/prometheus");
    assert_eq!(sample(&metrics, "interceptor_config_rejected_resources", &[]), Some(0.0), "{metrics}");
}

#[test]
fn without_the_api_server_nothing_is_captured_and_the_last_config_keeps_serving() {
    let mut cluster = SeedCluster::start(&[SUBSETS, &split(100, 0)], Mode::Socket).unwrap();
    cluster.wait_ready().unwrap();

    // The API server goes away during load: traffic keeps flowing on the last config.
    let mut background = steady_load(&cluster.node, "1000");
    cluster.plane.stop_apiserver();
    let during: testbed::LoadReport = serde_json::from_str(&read_stdout(&mut background).unwrap()).unwrap();
    assert_eq!((during.failures, during.count("v1")), (0, 1000), "{during:?}");
    assert_eq!(admin_get(&cluster.node, "/ready").0, 200, "the data path is fine: still ready");
    cluster.plane.start_apiserver().unwrap();

    // A change made while the agent cannot reach the API server is applied when it can again.
    let port = cluster.bridge.take().map(|b| b.port()).unwrap();
    cluster.plane.apply(&split(0, 100)).unwrap();
    assert_eq!(load(&cluster.node, 20, &[]).count("v1"), 20, "the agent has not seen the change yet");
    cluster.bridge = Some(LoopbackBridge::open_on(&cluster.node.node_netns(), port, cluster.plane.address()).unwrap());
    // The watches retried with kube-runtime's backoff all the while (up to 30 s between tries).
    let picked_up = |c: &SeedCluster| Ok(load(&c.node, 20, &[]).count("v2") == 20);
    cluster.eventually_within("the change is picked up", Duration::from_secs(45), picked_up).unwrap();

    // An agent started while the API server is unreachable captures nothing and says why.
    cluster.agent.stop().unwrap();
    let token = cluster.plane.create_token("interceptor-system", "interceptor").unwrap();
    let nowhere = cluster.plane.kubeconfig_for_token(&token, "https://127.0.0.1:1").unwrap();
    cluster.agent = Agent::start_kubernetes(&cluster.node, &nowhere, &[]).unwrap();
    cluster
        .eventually("/ready says why", |c| {
            let (status, body) = admin_get(&c.node, "/ready");
            Ok(status == 503 && body.contains("cannot reach the Kubernetes API server"))
        })
        .unwrap();
    let report = load(&cluster.node, 5, &[]);
    assert_eq!(report.failures, 5, "not captured: the VIP leads nowhere: {report:?}");
}

/// Access-log lines in an agent log.
fn access_lines(log: &str) -> usize {
    log.matches(" access: [").count()
}

#[test]
fn two_nodes_capture_their_own_pods_and_route_to_endpoints_on_either() {
    // Two "nodes" on one pod network: each agent captures its own cgroup, listens on its own port.
    let mut node = testbed::fixtures::node().unwrap();
    node.add_pod(PodSpec::new("client-b", [10, 244, 0, 15])).unwrap();
    node.add_pod(PodSpec::new("v2b", [10, 244, 0, 14])).unwrap();
    node.serve("v2b", "v2b").unwrap();
    let (cgroup_a, cgroup_b) = (node.add_cgroup("node-a").unwrap(), node.add_cgroup("node-b").unwrap());
    let plane = testbed::seed_cluster::seed_plane(&[SUBSETS, &split(50, 50)]).unwrap();
    plane.create_node("node-b").unwrap();
    plane
        .create_ready_pod("default", "v2b", "node-b", &[("app", "my-app"), ("version", "v2")], [10, 244, 0, 14].into())
        .unwrap();
    testbed::seed_cluster::wait_for_endpoints(&plane, "my-app", 4).unwrap();
    let bridge = LoopbackBridge::open(&node.node_netns(), plane.address()).unwrap();
    let token = plane.create_token("interceptor-system", "interceptor").unwrap();
    let kubeconfig = plane.kubeconfig_for_token(&token, &bridge.url()).unwrap();
    let agent = |name: &str, cgroup: &std::path::Path, port: u16, admin: &str| {
        let (listen, redirect) = (format!("0.0.0.0:{port}"), format!("{}:{port}", testbed::GATEWAY));
        let bpffs = node.bpffs().join(name);
        let flags = ["--node-name", name, "--listen", &listen, "--redirect", &redirect, "--admin", admin];
        let mut agent = Agent::start_kubernetes_in(&node, cgroup, &bpffs, &kubeconfig, &flags).unwrap();
        agent.wait_for_log("agent ready", Duration::from_secs(20)).unwrap();
        agent
    };
    let (agent_a, agent_b) =
        (agent("node-a", &cgroup_a, 15001, ADMIN), agent("node-b", &cgroup_b, 15002, "127.0.0.1:15010"));

    for (client, cgroup, mine, other) in
        [(CLIENT, &cgroup_a, &agent_a, &agent_b), ("client-b", &cgroup_b, &agent_b, &agent_a)]
    {
        let (mine_before, other_before) = (access_lines(&mine.log()), access_lines(&other.log()));
        let report = node.load_in(client, cgroup, &["--target", VIP, "--host", HOST, "-n", "400"]).unwrap();
        assert_eq!((report.failures, report.status(200)), (0, 400), "{client}: {report:?}");
        // Endpoints on both nodes: v1a, v1b, v2 on node-a; v2b on node-b.
        assert!(report.count("v1") > 0 && report.count("v2b") > 0, "{client}: {report:?}");
        // A request is logged once its response has ended, which may be just after the client read it.
        let logged = || Ok(access_lines(&mine.log()) >= mine_before + 400);
        testbed::poll_until("every request logged", Duration::from_secs(10), logged).unwrap();
        assert_eq!(access_lines(&mine.log()) - mine_before, 400, "{client} is captured by its node's agent");
        assert_eq!(access_lines(&other.log()), other_before, "{client} is not captured by the other node's agent");
    }
}

#[test]
fn source_labels_match_the_pods_of_this_node() {
    let by_source = testbed::fixtures::virtual_service(
        "  - match:
    - sourceLabels: {app: beta-client}
    route:
    - destination: {host: my-app.default.svc.cluster.local, subset: v2}
  - route:
    - destination: {host: my-app.default.svc.cluster.local, subset: v1}
",
    );
    let mut cluster = SeedCluster::start(&[SUBSETS, &by_source], Mode::Socket).unwrap();
    cluster.wait_ready().unwrap();
    assert_eq!(load(&cluster.node, 20, &[]).count("v1"), 20, "an unknown client is no beta client");

    // The client pod as a Pod of this node: the agent learns its labels from its address.
    let client = [10, 244, 0, 10].into();
    cluster.plane.create_ready_pod("default", "client", NODE, &[("app", "beta-client")], client).unwrap();
    cluster.eventually("the client is known by its labels", |c| Ok(load(&c.node, 20, &[]).count("v2") == 20)).unwrap();
    let (_, metrics) = admin_get(&cluster.node, "/stats/prometheus");
    assert!(
        sample(&metrics, "istio_requests_total", &["source_workload=\"client\"", "destination_version=\"v2\""])
            .is_some(),
        "{metrics}"
    );
}
