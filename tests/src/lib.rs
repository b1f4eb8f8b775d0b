//! The test node on one machine: a `node` network namespace with no route out, pod namespaces
//! joined to it by veth pairs, a child cgroup for captured pods, a private bpffs directory, and the
//! processes running there. Everything is removed on drop, also when a test fails.

pub mod abuse;
mod agent;
pub mod cluster;
pub mod fixtures;
mod interrupt;
mod node;
pub mod seed_cluster;

pub use agent::{read_stdout, run_agent_command, Agent, Mode, ADMIN};
pub use cluster::{controlplane_bin_dir, poll_until, ControlPlane, LoopbackBridge};
pub use node::{
    ipv6_twin, tear_down, wait_for_listener, H2Frame, LoadReport, Node, PodSpec, RawReport, GATEWAY, GATEWAY6,
    POD_PREFIX6, SERVICE_PREFIX6,
};

/// The binary of the workspace target directory named `name` (built by `cargo xtask`), next to
/// the running test or xtask executable.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let var = format!("INTERCEPTOR_{}_BIN", name.to_ascii_uppercase());
    if let Some(path) = std::env::var_os(&var) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the running executable has a path");
    let mut dir = exe.parent().expect("executables live in a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
