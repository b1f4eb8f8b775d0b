//! End-to-end: upstream connections are pooled and reused per endpoint, not opened per request.

mod common;

use common::{load, node, split, SERVICE, SUBSETS};
use testbed::Agent;

#[test]
fn upstream_connections_are_reused_across_requests() {
    let node = node().unwrap();
    // The agent runs inside the captured cgroup, so the connect hook sees (and counts, as events)
    // every upstream connect it makes, besides the client's own.
    let agent =
        Agent::start(&node, &[("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))], true).unwrap();
    let events = || -> u64 {
        let dump = node.bpftool_dump("PROGRAM_STATS").unwrap();
        dump[0]["formatted"]["values"]
            .as_array()
            .unwrap_or_else(|| panic!("per-CPU values in {dump:#}"))
            .iter()
            .map(|v| v["value"]["events"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = events();
    // 300 requests, one after another, from 3 client connections, over two v1 endpoints.
    for _ in 0..3 {
        assert_eq!(load(&node, 100, &[]).count("v1"), 100);
    }
    let connects = events() - before;
    // 3 client connects; upstream, one pooled connection per endpoint would be 2. Requests are
    // sequential, so anything near 300 would mean a connection per request.
    assert!((3..=3 + 4).contains(&connects), "{connects} connects for 300 requests\n{}", agent.log());
}
