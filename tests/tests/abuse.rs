//! End-to-end: the catalogue of hostile HTTP/1 requests and HTTP/2 connections (`testbed::abuse`, also `cargo xtask
//! abuse`) through the real capture path: each answered as specified, and the agent alive with
//! its memory back near its baseline afterwards.

mod common;

use common::{node, split, SERVICE, SUBSETS};
use testbed::{abuse, Agent};

#[test]
fn every_hostile_request_is_answered_as_specified() {
    let node = node().unwrap();
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))];
    let agent = Agent::start(&node, &files, false).unwrap();
    let scratch = agent.config_dir().parent().unwrap().to_path_buf();
    let report = abuse::run(&node, &agent, &scratch).unwrap();
    let failed: Vec<_> = report.verdicts.iter().filter(|v| !v.ok).collect();
    assert!(failed.is_empty(), "{failed:#?}\n{}", agent.log());
    assert!(report.alive && report.memory_ok(), "{report:?}");
}
