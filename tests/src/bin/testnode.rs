//! Holds a test node — a pod serving in the capture cgroup, the agent's pin directory — until
//! the process is told to stop; prints what it made as one JSON line. The test of the teardown
//! on a signal stops it.

use anyhow::Result;
use testbed::{Node, PodSpec};

fn main() -> Result<()> {
    let mut node = Node::create(&[PodSpec::new("held", [10, 244, 0, 40])])?;
    std::fs::create_dir_all(node.bpffs())?;
    let pid = node.serve_captured("held", "held", &[])?;
    let made = serde_json::json!({
        "netns": [node.node_netns(), node.pod_netns("held")],
        "cgroup": node.cgroup(),
        "bpffs": node.bpffs(),
        "pid": pid,
    });
    println!("{made}");
    loop {
        std::thread::park();
    }
}
