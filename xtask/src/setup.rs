//! Installs what building and loading the kernel programs needs; every step checks first, so a
//! second run does nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages: rustc-web ships LLVM 22 and (with the -bpf package) a prebuilt `core` for
/// bpfel-unknown-none; llvm-22-dev is what bpf-linker links against.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "curl",
    // The packet-mode tests turn veth checksum offload off inside a pod.
    "ethtool",
];
/// The rustup name under which Debian's compiler is linked (build.rs uses it).
const TOOLCHAIN: &str = "debian-web";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, for `cargo xtask fuzz` (and the brief fuzz runs of `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run() -> Result<()> {
    apt_packages()?;
    toolchain()?;
    bpf_linker()?;
    bpffs()?;
    cargo_fuzz()?;
    crate::controlplane::setup()?;
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs `cmd`, failing with its command line when it fails.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn apt_packages() -> Result<()> {
    apt_install("setup", APT_PACKAGES)
}

/// Whether Debian package `package` is installed.
pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs those of `packages` that are missing (`apt-get update` first); `who` prefixes the note.
pub fn apt_install(who: &str, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("{who}: installing {}", missing.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn toolchain() -> Result<()> {
    let listed = Command::new("rustup").args(["toolchain", "list"]).output().context("running rustup")?;
    if String::from_utf8_lossy(&listed.stdout).lines().any(|l| l.starts_with(TOOLCHAIN)) {
        return Ok(());
    }
    eprintln!("setup: linking Debian's rustc as the `{TOOLCHAIN}` toolchain");
    run_checked(Command::new("rustup").args(["toolchain", "link", TOOLCHAIN, "/usr"]))
}

fn bpf_linker() -> Result<()> {
    let out = Command::new("bpf-linker").arg("--version").output();
    if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes)");
    let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
    run_checked(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path),
    )
}

/// cargo-fuzz from crates.io, installed once per machine and version into
/// `/var/cache/interceptor/cargo-fuzz-<version>/bin` (installed beside it and renamed into place,
/// so an interrupted install never looks complete); returns the binary.
pub fn cargo_fuzz() -> Result<PathBuf> {
    let root = Path::new(testbed::cluster::CACHE_ROOT).join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let binary = root.join("bin").join("cargo-fuzz");
    if binary.is_file() {
        return Ok(binary);
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}", root.display());
    let partial = root.with_file_name(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    let installed = run_checked(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked", "--root"])
            .arg(&partial)
            // Whatever toolchain runs xtask; the outer cargo's own choices must not leak in.
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS"),
    );
    if let Err(e) = installed {
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    let _ = fs::remove_dir_all(&root);
    fs::rename(&partial, &root).with_context(|| format!("moving {} to {}", partial.display(), root.display()))?;
    Ok(binary)
}

fn bpffs() -> Result<()> {
    if succeeds(Command::new("mountpoint").args(["-q", "/sys/fs/bpf"])) {
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        bail!("/sys/fs/bpf does not exist: is this a Linux host with BPF?");
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    run_checked(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
