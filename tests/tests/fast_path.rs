//! End-to-end: the sockmap fast path (`fastPath: true`) carries the same bytes as TCP — kept-alive
//! load, pipelined requests, a body larger than the per-turn budget (which then falls back to
//! TCP mid-stream) while a kept-alive connection carrying more than it over many turns stays on
//! the fast path, a client that resets mid-body — with pods and agent in the capture cgroup as
//! kubelet's pods are, so both legs (client ↔ proxy, proxy ↔ endpoint) are paired; and a pod
//! forging a client's connection in its own namespace gets none of the client's bytes; a socket
//! whose first send beat its peer's join leaves the sockhash.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    load_to, node_with_pods, numbered_body, sample, service_dual_stack, v2_under, CLIENT, HOST, SERVICE, SUBSETS, VIP,
    VIP6,
};
use testbed::{poll_until, read_stdout, wait_for_listener, Agent, Node, ADMIN, GATEWAY};

/// Larger than `FAST_PATH_BUDGET` (4 MiB): the endpoint's socket moves 4 MiB, then sends the rest
/// through TCP, mid-body.
const BIG: usize = 6 << 20;
/// Answers of the v1 endpoints at `/__large`, and how many of them one kept-alive connection
/// fetches: 10 MiB in all, more than the budget, but a quarter MiB per turn.
const TURN: usize = 256 << 10;
const TURNS: usize = 40;

/// What one run saw.
#[derive(Debug, PartialEq)]
struct Seen {
    /// Bodies of two pipelined requests on one connection, in order.
    pipelined: Vec<String>,
    /// Length of the big body and whether it is exactly what the endpoint sent.
    big: (usize, bool),
    /// The same for a client that reads nothing for a second, while a load runs beside it.
    slow_reader: (usize, bool),
    /// Answers of a kept-alive load run by version.
    load_v1: usize,
    /// The same for [`TURNS`] answers of [`TURN`] bytes on one connection.
    turns_v1: usize,
    /// A request after a client reset mid-body is answered.
    after_reset: bool,
    /// Answers of a kept-alive load run over IPv6 (the dual-stack service's other VIP).
    load_v6_v1: usize,
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn counters(node: &Node, name: &str) -> f64 {
    let (_, text) = node.node_get(ADMIN, "/stats/prometheus").unwrap();
    sample(&text, name, &["program=\"sk_msg\""]).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The `sk_msg` counters after one run.
struct Sends {
    moved: f64,
    through_tcp: f64,
    /// Through TCP while [`TURNS`] answers came on one connection.
    through_tcp_in_turns: f64,
}

fn run(fast_path: bool) -> (Seen, Sends) {
    let mut node = node_with_pods().unwrap();
    let (size, turn) = (BIG.to_string(), TURN.to_string());
    node.serve_captured("v1a", "v1", &["--large", &turn]).unwrap();
    node.serve_captured("v1b", "v1", &["--large", &turn]).unwrap();
    node.serve_captured("v2", "v2", &["--body-bytes", &size]).unwrap();
    let on = if fast_path { "true" } else { "false" };
    // `/big` goes to v2, which answers with BIG bytes; anything else to v1.
    let (rules, service) = (v2_under("/big"), service_dual_stack());
    let files = [("svc.yaml", service.as_str()), ("dr.yaml", SUBSETS), ("vs.yaml", rules.as_str())];
    let agent = Agent::start_adding(&node, &files, &["--fast-path", on], true).unwrap();

    let get = |path: &str, extra: &str| format!("GET {path} HTTP/1.1\\r\\nHost: {HOST}\\r\\n{extra}\\r\\n");
    let two = format!("{}{}", get("/", ""), get("/", "Connection: close\\r\\n"));
    let r = node.raw(CLIENT, &["--target", VIP, "--send", &two, "--read-ms", "5000"]).unwrap();
    let pipelined: Vec<String> =
        r.response.split("HTTP/1.1 ").skip(1).map(|answer| body(answer).trim_end().to_owned()).collect();

    let big_request = get("/big", "Connection: close\\r\\n");
    let r = node.raw(CLIENT, &["--target", VIP, "--send", &big_request, "--read-ms", "20000"]).unwrap();
    assert!(r.closed, "the big answer did not end: {} bytes", r.response.len());
    let got = body(&r.response);
    let big = (got.len(), got.as_bytes() == numbered_body("v2", BIG));

    let report = common::load(&node, 300, &[]);

    // A new connection whose first send beats the proxy's accepted socket to the pairing keeps to
    // TCP, as it must (seldom: the proxy's end joins as the client's handshake ACK arrives); so up
    // to three connections, the last one's figures kept.
    let turns = || {
        let before = counters(&node, "interceptor_program_bypassed_total");
        let report = common::load(&node, TURNS, &["--path", "/__large"]);
        (report.count("v1"), counters(&node, "interceptor_program_bypassed_total") - before)
    };
    let (mut turns_v1, mut through_tcp_in_turns) = turns();
    for _ in 1..3 {
        if through_tcp_in_turns == 0.0 {
            break;
        }
        (turns_v1, through_tcp_in_turns) = turns();
    }

    let beside = node.load_in_background(CLIENT, &["--target", VIP, "--host", HOST, "-n", "2000"]).unwrap();
    let r = node
        .raw(CLIENT, &["--target", VIP, "--send", &big_request, "--wait-ms", "1000", "--read-ms", "20000"])
        .unwrap();
    let got = body(&r.response);
    let slow_reader = (got.len(), got.as_bytes() == numbered_body("v2", BIG));
    let beside: testbed::LoadReport = serde_json::from_str(&testbed::read_stdout(&mut { beside }).unwrap()).unwrap();
    assert_eq!(beside.count("v1"), 2000, "{beside:?}");

    // The client stops reading 20 ms into the big body and exits: its socket resets.
    node.raw(CLIENT, &["--target", VIP, "--send", &get("/big", ""), "--read-ms", "20"]).unwrap();
    let after =
        node.raw(CLIENT, &["--target", VIP, "--send", &get("/", "Connection: close\\r\\n"), "--read-ms", "5000"]);
    let after_reset = after.is_ok_and(|r| r.response.starts_with("HTTP/1.1 200 OK\r\n") && body(&r.response) == "v1");

    let moved_v4 = counters(&node, "interceptor_program_captured_total");
    let v6 = load_to(&node, VIP6, 200, &[]);
    let moved = counters(&node, "interceptor_program_captured_total");
    // Every request and answer crosses two pairs: at least 4 moves each.
    assert!(!fast_path || moved - moved_v4 >= 4.0 * 200.0, "IPv6: only {} sends moved", moved - moved_v4);

    let seen = Seen {
        pipelined,
        big,
        slow_reader,
        load_v1: report.count("v1"),
        turns_v1,
        after_reset,
        load_v6_v1: v6.count("v1"),
    };
    let through_tcp = counters(&node, "interceptor_program_bypassed_total");
    drop(agent);
    (seen, Sends { moved, through_tcp, through_tcp_in_turns })
}

#[test]
fn the_fast_path_carries_the_same_bytes_as_tcp() {
    let (plain, sends) = run(false);
    assert_eq!(sends.moved, 0.0, "fast path off, yet sends were moved");
    assert_eq!(
        plain,
        Seen {
            pipelined: vec!["v1".into(), "v1".into()],
            big: (BIG, true),
            slow_reader: (BIG, true),
            load_v1: 300,
            turns_v1: TURNS,
            after_reset: true,
            load_v6_v1: 200,
        }
    );

    let (fast, sends) = run(true);
    assert_eq!(fast, plain, "the fast path changed what the client saw");
    // Every request and answer of the load runs crosses two pairs: at least 4 moves each.
    let moved = sends.moved;
    assert!(moved >= 4.0 * (300.0 + 2000.0 + TURNS as f64 + 200.0), "only {moved} sends moved");
    // The big bodies outgrew the endpoint socket's budget in one turn and went on through TCP …
    assert!(sends.through_tcp >= 1.0, "the budget never ran out ({} sends through TCP)", sends.through_tcp);
    // … but the kept-alive connection that carried more than the budget over many turns did not.
    assert_eq!(sends.through_tcp_in_turns, 0.0, "{TURNS} answers of {TURN} bytes fell back to TCP");
}

/// A pod with `NET_ADMIN` in its own namespace forges a client's 4-tuple there (the client's
/// address and the proxy's on its loopback, a listener posing as the proxy) before the client
/// connects from the same port: the client must still get its answer, the forger nothing of it.
#[test]
fn a_pod_forging_a_clients_connection_gets_none_of_its_bytes() {
    let mut node = node_with_pods().unwrap();
    for pod in ["v1a", "v1b", "v2"] {
        node.serve_captured(pod, pod, &[]).unwrap();
    }
    // Never to v2, the forger: with the proxy's and the client's addresses on its loopback, it
    // would answer the proxy's upstream connection to itself.
    let rules = v2_under("/to-v2");
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", rules.as_str())];
    let _agent = Agent::start_adding(&node, &files, &["--fast-path", "true"], true).unwrap();

    let (forger, client_ip, proxy) = ("v2", "10.244.0.10", format!("{GATEWAY}:15001"));
    for address in [client_ip.to_owned(), GATEWAY.to_string()] {
        node.exec_in_pod(forger, "ip", &["addr", "add", &format!("{address}/32"), "dev", "lo"]).unwrap();
    }
    let pod = testbed::workspace_binary("pod");
    let mut fake_proxy =
        node.command_in(&node.pod_netns(forger), false, &pod, &["echo", "--listen", &proxy, "--banner", "forged"]);
    fake_proxy.stdout(Stdio::null()).stderr(Stdio::null());
    node.spawn(fake_proxy).unwrap();
    wait_for_listener(&node.pod_netns(forger), &proxy, Duration::from_secs(5)).unwrap();

    // The forger's captured connect goes to "the proxy" on its own loopback: its socket holds
    // the key the client's socket will have.
    let source = format!("{client_ip}:40001");
    let forged = ["raw", "--target", VIP, "--bind", &source, "--read-ms", "4000"];
    let mut forged =
        node.command_in(&node.pod_netns(forger), true, &pod, &forged).stdout(Stdio::piped()).spawn().unwrap();
    let netns = node.pod_netns(forger);
    poll_until("the forged connection", Duration::from_secs(5), || {
        let out = Command::new("ip").args(["netns", "exec", &netns, "ss", "-Htn", "state", "established"]).output();
        Ok(out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&proxy)))
    })
    .unwrap();

    let request = format!("GET / HTTP/1.1\\r\\nHost: {HOST}\\r\\nConnection: close\\r\\n\\r\\n");
    let client =
        node.raw(CLIENT, &["--target", VIP, "--bind", &source, "--send", &request, "--read-ms", "5000"]).unwrap();
    assert!(client.response.starts_with("HTTP/1.1 200 OK\r\n"), "the client got {:?}", client.response);
    let forged: testbed::RawReport = serde_json::from_str(&read_stdout(&mut forged).unwrap()).unwrap();
    assert_eq!(forged.response, "forged", "the forger received the client's answer");
}

/// An upstream socket whose first send beats its peer's join — here every one: the endpoints
/// accept a connection only once its data came (`TCP_DEFER_ACCEPT`) — sends through TCP for good.
/// The endpoint's end does not join and the proxy's leaves the sockhash, so that neither sends
/// through the sockmap's send path, which hands each piece of a send to TCP on its own (Nagle's
/// algorithm then holds a piece up for a delayed ACK): `sk_msg` sees the first send of each
/// upstream connection and no other, while the client's leg moves as usual.
#[test]
fn an_upstream_socket_whose_first_send_beats_its_peer_leaves_the_fast_path() {
    const REQUESTS: usize = 20;
    let mut node = node_with_pods().unwrap();
    for pod in ["v1a", "v1b"] {
        node.serve_captured(pod, "v1", &["--defer-accept"]).unwrap();
    }
    node.serve_captured("v2", "v2", &[]).unwrap();
    let rules = v2_under("/to-v2");
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", rules.as_str())];
    let _agent = Agent::start_adding(&node, &files, &["--fast-path", "true"], true).unwrap();

    // The first load opens a kept-alive upstream connection to each v1 endpoint the balancer
    // picks, and each loses the race; the second load reuses them.
    let first = common::load(&node, REQUESTS, &[]);
    let before = counters(&node, "interceptor_program_bypassed_total");
    assert!(before >= 1.0, "no send went through TCP: TCP_DEFER_ACCEPT did not delay the endpoints' end");
    let second = common::load(&node, REQUESTS, &[]);
    let through_tcp = counters(&node, "interceptor_program_bypassed_total") - before;
    assert_eq!((first.count("v1"), second.count("v1")), (REQUESTS, REQUESTS), "{first:?} {second:?}");
    // Neither end of the pooled connections is in the sockhash; at most the second load's client
    // socket lost its own race (its first send, then it left too).
    assert!(through_tcp <= 1.0, "{through_tcp} sends went through TCP");
}
