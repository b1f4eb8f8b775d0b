//! Test-node helpers for `cargo xtask bench`: sized backends and waiting for listeners of
//! processes the bench starts (proxies), without touching the test node's own code.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;

use crate::node::{wait_for_listener, Node};

/// Starts `pod serve` in pod `pod` (at `ip`) answering with `size`-byte bodies that start with
/// `name`, on port 8080, and waits until it listens.
///
/// # Errors
/// The process cannot start or does not listen within 5 s.
pub fn serve_sized(node: &mut Node, pod: &str, ip: Ipv4Addr, name: &str, size: usize) -> Result<u32> {
    let listen = format!("{ip}:8080");
    let size = size.to_string();
    let mut cmd = node.command_in(
        &node.pod_netns(pod),
        false,
        &crate::workspace_binary("pod"),
        &["serve", "--listen", &listen, "--name", name, "--size", &size],
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let pid = node.spawn(cmd)?;
    wait_for_listener(&node.pod_netns(pod), &listen, Duration::from_secs(5))?;
    Ok(pid)
}
