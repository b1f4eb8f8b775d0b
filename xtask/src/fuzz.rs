//! `cargo xtask fuzz`: builds the libFuzzer targets in `fuzz/` with cargo-fuzz and runs each for a bounded time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::setup::run_checked;

/// Executions of a full run: it ends there, or at its target's `secs` if the machine is slower.
const FULL_RUN: u64 = 10_000_000;

/// Each target, how long a full run may last (long enough for [`FULL_RUN`] executions at the rate
/// measured on two busy cores, see README), and the largest input it is given: the
/// byte targets feed their input in many reads, each re-reading what came before (as the proxy
/// does), so large inputs cost quadratically and smuggling needs only a few hundred bytes; the
/// route target's structure is bounded by the target itself, and its grown corpus reaches the same
/// edges cut to 1 KiB as at 4 KiB, at twice the rate.
pub const TARGETS: &[Target] = &[
    Target { name: "config", secs: 3000, max_len: 4096 },
    Target { name: "request_framing", secs: 1000, max_len: 1024 },
    Target { name: "response", secs: 480, max_len: 1024 },
    Target { name: "h2c", secs: 540, max_len: 2048 },
    Target { name: "route", secs: 9000, max_len: 1024 },
];

/// One fuzz target of `fuzz/`.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    pub secs: u64,
    pub max_len: usize,
}

/// A run whose input takes longer than this is a hang, hence a finding.
const HANG_SECS: u64 = 10;
/// Memory one input may take before it counts as a finding.
const RSS_LIMIT_MB: u64 = 2048;
/// The toolchain cargo-fuzz builds with. Stable works: without a sanitizer cargo-fuzz passes no
/// `-Z` flag, and the targets are safe Rust, where AddressSanitizer finds little.
const TOOLCHAIN: &str = "stable";

/// What one target's run came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub execs: u64,
    pub crashes: usize,
}

/// Builds every target, then runs `only` (or each target) for `secs` seconds — by default a full
/// run: [`FULL_RUN`] executions, bounded by the target's `secs` — one after the other; prints
/// `FUZZ target=<name> execs=<n> crashes=<k>` per target and fails when any crashed.
pub fn run(secs: Option<u64>, only: Option<&str>) -> Result<()> {
    let targets: Vec<Target> = match only {
        Some(name) => match TARGETS.iter().find(|t| t.name == name) {
            Some(target) => vec![*target],
            None => bail!("no fuzz target {name:?}; there are {}", names()),
        },
        None => TARGETS.to_vec(),
    };
    let cargo_fuzz = crate::setup::cargo_fuzz()?;
    build(&cargo_fuzz)?;
    let mut crashed = Vec::new();
    for target in targets {
        let outcome = match secs {
            Some(secs) => run_target(&target, secs, None)?,
            None => run_target(&target, target.secs, Some(FULL_RUN))?,
        };
        println!("FUZZ target={} execs={} crashes={}", target.name, outcome.execs, outcome.crashes);
        if outcome.crashes > 0 {
            crashed.push(target.name);
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {} (inputs in fuzz/artifacts/<target>/)", crashed.join(", "));
    }
    Ok(())
}

fn names() -> String {
    TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

fn fuzz_dir() -> PathBuf {
    crate::workspace_root().join("fuzz")
}

/// `cargo fuzz build` of every target, without a sanitizer, in the fuzz crate's dev profile (a
/// quarter of the cold build time of cargo-fuzz's release profile; see `fuzz/Cargo.toml`).
fn build(cargo_fuzz: &Path) -> Result<()> {
    let bin_dir = cargo_fuzz.parent().context("cargo-fuzz has a directory")?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", "fuzz", "build", "--dev", "--sanitizer", "none"])
        .current_dir(crate::workspace_root())
        .env("PATH", path)
        // The targets need no kernel programs: skip building the eBPF object.
        .env("AYA_BUILD_SKIP", "1")
        // The outer cargo's choices (toolchain, compiler, flags) must not leak in.
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR");
    run_checked(&mut cmd)
}

/// Runs one built target for `secs` seconds (or until `runs` executions) over a scratch copy of
/// its checked-in corpus (new inputs go to the scratch copy, seeds stay as they are); crash inputs
/// go to `fuzz/artifacts/<target>/`.
fn run_target(target: &Target, secs: u64, runs: Option<u64>) -> Result<Outcome> {
    let name = target.name;
    let fuzz = fuzz_dir();
    let binary = fuzz.join("target/x86_64-unknown-linux-gnu/debug").join(name);
    let work = fuzz.join("target/corpus").join(name);
    let seeds = fuzz.join("corpus").join(name);
    let artifacts = fuzz.join("artifacts").join(name);
    for dir in [&work, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let before = artifact_names(&artifacts)?;
    let mut artifact_prefix = artifacts.clone().into_os_string();
    artifact_prefix.push("/");
    let output = Command::new(&binary)
        .arg(format!("-max_total_time={secs}"))
        .args(runs.map(|runs| format!("-runs={runs}")))
        .arg(format!("-max_len={}", target.max_len))
        .arg(format!("-timeout={HANG_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .arg({
            let mut arg = std::ffi::OsString::from("-artifact_prefix=");
            arg.push(&artifact_prefix);
            arg
        })
        .arg(&work)
        .arg(&seeds)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let log = String::from_utf8_lossy(&output.stderr);
    let log_file = fuzz.join("target").join(format!("{name}.log"));
    fs::write(&log_file, log.as_bytes()).with_context(|| format!("writing {}", log_file.display()))?;
    let crashes = artifact_names(&artifacts)?.difference(&before).count();
    let execs = executions(&log).with_context(|| format!("no execution count in {}", log_file.display()))?;
    if crashes == 0 && !output.status.success() {
        bail!("{name} failed ({}) without a crash input; see {}", output.status, log_file.display());
    }
    Ok(Outcome { execs, crashes })
}

/// The inputs libFuzzer wrote to `dir` (crash-, timeout-, oom-, leak-…).
fn artifact_names(dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
}

/// Executions from libFuzzer's final stats (`stat::number_of_executed_units: N`), else from its
/// last status line (`#N …`).
fn executions(log: &str) -> Option<u64> {
    let stat = log.lines().find_map(|l| l.strip_prefix("stat::number_of_executed_units:")?.trim().parse().ok());
    stat.or_else(|| log.lines().rev().find_map(|l| l.strip_prefix('#')?.split_whitespace().next()?.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_come_from_the_final_stats_or_the_last_status_line() {
        let log = "#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb\n#524288\tpulse  cov: 12 exec/s: 9000\n\
                   Done 600000 runs in 61 second(s)\nstat::number_of_executed_units: 600000\nstat::average_exec_per_sec:     9836\n";
        assert_eq!(executions(log), Some(600_000));
        assert_eq!(
            executions("#2\tINITED\n#524288\tpulse  cov: 12\n==1== ERROR: libFuzzer: deadly signal\n"),
            Some(524_288)
        );
        assert_eq!(executions("nothing"), None);
    }
}
