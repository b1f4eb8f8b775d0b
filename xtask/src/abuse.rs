//! `cargo xtask abuse`: the catalogue of hostile HTTP/1 requests and HTTP/2 connections (`testbed::abuse`) through the
//! real capture path on a test node; one line per case, then `ABUSE cases=<n> ok=<k>`.

use anyhow::Result;
use testbed::fixtures::{node, split, SERVICE, SUBSETS};
use testbed::{abuse, Agent};

pub fn run() -> Result<()> {
    let node = node()?;
    let files = [("svc.yaml", SERVICE), ("dr.yaml", SUBSETS), ("vs.yaml", &split(100, 0))];
    let agent = Agent::start(&node, &files, false)?;
    let scratch = agent.config_dir().parent().map(std::path::Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let report = abuse::run(&node, &agent, &scratch)?;
    for v in &report.verdicts {
        let mark = if v.ok { "ok" } else { "FAIL" };
        let grown = v.rss_kib.saturating_sub(report.rss_before_kib);
        println!(
            "ABUSE {mark} {:?}: expected {:?}, got {:?}, memory +{grown} KiB; Envoy: {}",
            v.name, v.expect, v.got, v.envoy
        );
    }
    println!(
        "ABUSE memory rss_before_kib={} rss_after_kib={} (slack {}) alive={}",
        report.rss_before_kib,
        report.rss_after_kib,
        abuse::MEMORY_SLACK_KIB,
        report.alive
    );
    // A case counts as ok when answered as specified and the agent came through the whole
    // catalogue alive with its memory back near its baseline.
    let ok = if report.alive && report.memory_ok() { report.ok() } else { 0 };
    println!("ABUSE cases={} ok={ok}", report.verdicts.len());
    drop(agent);
    drop(node);
    if ok < report.verdicts.len() {
        std::process::exit(1);
    }
    Ok(())
}
