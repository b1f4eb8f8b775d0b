//! Builds the kernel programs (`interceptor-ebpf`) for the BPF target and leaves the object at
//! `$OUT_DIR/interceptor`, which `src/bpf.rs` embeds.
//!
//! The eBPF crate is built with Debian's `rustc-web` (linked into rustup as `debian-web`): it ships
//! a prebuilt `core` for `bpfel-unknown-none`, so no nightly, rust-src or `-Z build-std` is needed
//! (see TOOLCHAIN.md). This does what `aya_build::build_ebpf` 0.2.0 does (same command, flags and
//! env), with one difference: the nested build uses one shared target directory,
//! `$CARGO_TARGET_DIR/bpf` (default `<workspace>/target/bpf`), instead of one under each `OUT_DIR`,
//! so `cargo build`, `clippy`, `test` and `--release` don't each rebuild the eBPF dependencies from
//! cold (about a minute each on two cores).
//!
//! Knobs:
//! - `INTERCEPTOR_EBPF_TOOLCHAIN`: rustup toolchain for the eBPF build (default `debian-web`).
//! - `AYA_BUILD_SKIP=1`: skip the eBPF build; an empty object is embedded and loading fails with
//!   `BpfError::MissingObject` (for machines that only check or test userspace code).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _};

const TOOLCHAIN_ENV: &str = "INTERCEPTOR_EBPF_TOOLCHAIN";
const DEFAULT_TOOLCHAIN: &str = "debian-web";
const SKIP_ENV: &str = "AYA_BUILD_SKIP";
const PACKAGE: &str = "interceptor-ebpf";
/// Name of the eBPF crate's binary, hence of the object file.
const OBJECT: &str = "interceptor";
/// aya-ebpf enables one unstable feature on the BPF target: allow it for that crate only. `1` would
/// also make aya-build-style tooling add `-Z build-std=core`, which needs rust-src.
const RUSTC_BOOTSTRAP: &str = "aya_ebpf";

fn main() -> anyhow::Result<()> {
    for var in [TOOLCHAIN_ENV, SKIP_ENV, "CARGO_TARGET_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(OBJECT);
    if env::var(SKIP_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning={SKIP_ENV} set: embedding an empty eBPF object");
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let workspace = manifest_dir.parent().context("crate dir has no parent")?;
    for dir in ["interceptor-ebpf", "interceptor-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());

    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from).join("bpf");
    let target = bpf_target()?;
    let toolchain = env::var(TOOLCHAIN_ENV).unwrap_or_else(|_| DEFAULT_TOOLCHAIN.to_owned());

    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--quiet", "--release", "--bins"])
        .args(["--package", PACKAGE, "--target", &target])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace)
        .env("RUSTC_BOOTSTRAP", RUSTC_BOOTSTRAP)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags()?)
        // The outer cargo's compiler and wrappers (clippy's, sccache) must not leak in.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS");
    let output = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    // `--quiet` leaves only compiler diagnostics; show them as build warnings.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning={line}");
    }
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}); see TOOLCHAIN.md: `rustup toolchain link {DEFAULT_TOOLCHAIN} /usr` \
             and bpf-linker on PATH",
            output.status
        );
    }

    let built = target_dir.join(&target).join("release").join(OBJECT);
    copy_if_changed(&built, &object)
}

/// `bpfel-unknown-none` or `bpfeb-unknown-none`, after the host's byte order.
fn bpf_target() -> anyhow::Result<String> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN")?;
    match endian.as_str() {
        "little" => Ok("bpfel-unknown-none".to_owned()),
        "big" => Ok("bpfeb-unknown-none".to_owned()),
        other => Err(anyhow!("unsupported endian {other}")),
    }
}

/// The flags aya-build passes: the architecture the programs will read kernel structs of, full
/// debug info, and BTF emission by bpf-linker (needed for BTF maps and `bpftool` field names).
fn rustflags() -> anyhow::Result<String> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") { "riscv64" } else { arch.as_str() };
    Ok([format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".to_owned(), "-Clink-arg=--btf".to_owned()]
        .join("\x1f"))
}

/// Copies the object, leaving `to` untouched when identical so the crate isn't rebuilt for nothing.
fn copy_if_changed(from: &Path, to: &Path) -> anyhow::Result<()> {
    let new = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if fs::read(to).is_ok_and(|old| old == new) {
        return Ok(());
    }
    fs::write(to, new).with_context(|| format!("writing {}", to.display()))
}
