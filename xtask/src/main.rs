//! Project tasks: `setup` installs what a fresh machine lacks, `demo` runs the seed example on a
//! test node, `test` runs every check CI runs.

mod demo;
mod setup;

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "interceptor project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites (apt packages, Debian's BPF-capable rustc, bpf-linker, bpffs). Idempotent.
    Setup,
    /// Build the agent and the test pods.
    Build,
    /// Set up, build, and run the seed example on a test node: ends with `DEMO OK …` or `DEMO FAIL …`.
    Demo,
    /// Set up, build, then fmt, clippy, unit and end-to-end tests.
    Test,
}

fn main() {
    let result = match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => build(),
        Task::Demo => setup::run().and_then(|()| build()).and_then(|()| demo::run()),
        Task::Test => setup::run().and_then(|()| build()).and_then(|()| test()),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// Runs a command from the workspace root, failing with its command line if it fails.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn build() -> Result<()> {
    cargo(&["build", "-p", "interceptor-user", "-p", "interceptor-tests", "--bins"])
}

fn test() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // Unit tests first (fast), then the kernel-backed end-to-end tests one at a time.
    cargo(&["test", "--lib", "--bins", "-p", "interceptor-user", "-p", "interceptor-common"])?;
    cargo(&["test", "-p", "interceptor-tests", "--", "--test-threads=1"])
}
