//! Project tasks: `setup` installs what a fresh machine lacks, `demo` runs the seed example on a
//! test node, `test` runs every check CI runs.

mod abuse;
mod bench;
mod certificate;
mod cluster_bench;
mod controlplane;
mod demo;
mod fuzz;
mod overhead;
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
    /// Install prerequisites (apt packages, Debian's BPF-capable rustc, bpf-linker, bpffs, the test
    /// control plane's Go binaries). Idempotent.
    Setup,
    /// Build the agent and the test pods.
    Build,
    /// Set up, build, and run the seed example on a test node: ends with `DEMO OK …` or `DEMO FAIL …`.
    Demo {
        /// Capture mode: `socket` (cgroup connect hooks) or `packet` (XDP + TC on pod veths).
        #[arg(long, default_value = "socket")]
        mode: String,
        /// Take the config from a real kube-apiserver (built by setup) instead of config/.
        #[arg(long)]
        kubernetes: bool,
        /// The seed at an ingress gateway: config/gateway served on the node's address over
        /// HTTPS, called by curl from outside the mesh.
        #[arg(long)]
        gateway: bool,
    },
    /// Set up, build, then fmt, clippy, unit and end-to-end tests, then the quick bench.
    Test,
    /// Set up, build, and send the catalogue of hostile HTTP/1 requests and HTTP/2 connections through the real capture
    /// path: one line per case (with Envoy's answer), then `ABUSE cases=<n> ok=<k>`.
    Abuse,
    /// Build the libFuzzer targets in `fuzz/` and run each (or one) for a bounded time: one line
    /// `FUZZ target=<name> execs=<n> crashes=<k>` per target; fails when any crashed.
    Fuzz {
        /// Seconds per target (default: each target's full run, ≥ 10 million executions).
        #[arg(long)]
        secs: Option<u64>,
        /// Only this target: config, request_framing, response, h2c or route.
        target: Option<String>,
    },
    /// Measure the kernel programs' run time (bpf_stats) and the connect() cost they add.
    Overhead,
    /// The agent on a synthetic cluster written to a real API server, in steps up to the full
    /// size: time to ready, VirtualService change applied (p50/p99), RSS.
    BenchCluster {
        #[arg(long, default_value_t = 5000)]
        services: usize,
        #[arg(long, default_value_t = 10)]
        endpoints_per_service: usize,
        #[arg(long, default_value_t = 2000)]
        virtual_services: usize,
        /// VirtualService changes timed per step.
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// Fractions of the full size, written one after the other.
        #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,1")]
        steps: Vec<f64>,
    },
    /// Benchmark against Envoy, HAProxy, nginx and a direct connection, in front of the mesh and as
    /// an HTTPS gateway (report in target/bench/).
    Bench {
        /// A few seconds per contender and 1,000 idle connections (what CI runs).
        #[arg(long)]
        quick: bool,
        /// Sample each proxy with perf during its first saturation turn (target/bench/run/profile-*.txt).
        #[arg(long)]
        profile: bool,
        /// Run these phases only (repeatable): `mesh` (captured plain HTTP), `gateway` (HTTPS
        /// termination), `fast-path` (captured plain HTTP over the sockmap fast path).
        #[arg(long, value_enum)]
        only: Vec<bench::Phase>,
    },
}

fn main() {
    let result = match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => build(),
        Task::Demo { mode, kubernetes, gateway } => {
            setup::run().and_then(|()| build()).and_then(|()| demo::run(&mode, kubernetes, gateway))
        }
        Task::Test => setup::run().and_then(|()| build()).and_then(|()| test()),
        Task::Abuse => setup::run().and_then(|()| build()).and_then(|()| abuse::run()),
        Task::Fuzz { secs, target } => fuzz::run(secs, target.as_deref()),
        Task::Overhead => setup::run().and_then(|()| build()).and_then(|()| overhead::run()),
        Task::BenchCluster { services, endpoints_per_service, virtual_services, changes, steps } => {
            let size = cluster_bench::Size { services, endpoints_per_service, virtual_services, changes };
            setup::run().and_then(|()| build()).and_then(|()| cluster_bench::run(&size, &steps))
        }
        Task::Bench { quick, profile, only } => setup::run().and_then(|()| bench::run(quick, profile, &only)),
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

/// Seconds each fuzz target runs in `cargo xtask test`.
const CI_FUZZ_SECS: u64 = 5;

fn build() -> Result<()> {
    cargo(&["build", "-p", "interceptor-user", "-p", "interceptor-tests", "--bins"])
}

fn test() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    // The fuzz crate is a workspace of its own (as cargo-fuzz wants): checked on its own.
    cargo(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // Unit tests first (fast), then the kernel-backed end-to-end tests one at a time.
    let mut total = TestCount::default();
    total += cargo_test(&["test", "-p", "interceptor-user", "-p", "interceptor-common", "-p", "xtask"])?;
    // Each fuzz target briefly, so that they keep building and their corpora keep passing.
    fuzz::run(Some(CI_FUZZ_SECS), None)
        .with_context(|| format!("brief fuzz runs (cargo xtask fuzz --secs {CI_FUZZ_SECS})"))?;
    total += cargo_test(&["test", "-p", "interceptor-tests", "--", "--test-threads=1"])?;
    // The quick bench keeps the harness from rotting: it fails only when the harness is broken
    // (a contender cannot start or does not do the job), never on a performance target.
    bench::run(true, false, &[]).context("quick bench (cargo xtask bench --quick)")?;
    // One closing line for the whole run (cargo prints one per test binary).
    println!("tests: {} passed, {} failed", total.passed, total.failed);
    if total.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[derive(Default)]
struct TestCount {
    passed: usize,
    failed: usize,
}

impl std::ops::AddAssign for TestCount {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// Runs `cargo test …`, echoing its output, and adds up its `test result:` lines.
fn cargo_test(args: &[&str]) -> Result<TestCount> {
    use std::io::{BufRead, BufReader};

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    let mut count = TestCount::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            count += parse_result(rest);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(count)
}

/// Reads `ok. 9 passed; 0 failed; …`.
fn parse_result(rest: &str) -> TestCount {
    let number_before = |word: &str| {
        rest.split(';')
            .find_map(|part| part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    TestCount { passed: number_before("passed"), failed: number_before("failed") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_test_result_lines() {
        let c = parse_result("ok. 48 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.04s");
        assert_eq!((c.passed, c.failed), (48, 0));
        let c = parse_result("FAILED. 7 passed; 2 failed; 0 ignored");
        assert_eq!((c.passed, c.failed), (7, 2));
    }
}
