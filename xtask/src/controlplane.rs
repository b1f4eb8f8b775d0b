//! Builds the tests' Kubernetes control plane (kube-apiserver, kube-controller-manager, etcd) from
//! the Go module in `xtask/controlplane/` into a machine-wide cache, once per module version.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use testbed::cluster::{controlplane_bin_dir, CONTROLPLANE_BINARIES, KUBERNETES_VERSION};

use crate::setup::run_checked;

/// Builds the binaries unless [`controlplane_bin_dir`] already holds them. Go's module and build
/// caches stay at their defaults (`~/go/pkg/mod`, `~/.cache/go-build`) so a rebuild is quick.
pub fn setup() -> Result<()> {
    let bin = controlplane_bin_dir();
    if CONTROLPLANE_BINARIES.iter().all(|name| bin.join(name).is_file()) {
        return Ok(());
    }
    let go = go_binary()?;
    eprintln!(
        "setup: building kube-apiserver, kube-controller-manager {KUBERNETES_VERSION} and etcd into {} (cold: several minutes)",
        bin.display()
    );
    // Built beside the cache directory and renamed into place, so an interrupted build never
    // leaves a directory that looks complete.
    let partial = bin.with_file_name(format!("bin.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let built = go_build(&go, &partial);
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&partial);
        return Err(e);
    }
    let _ = fs::remove_dir_all(&bin);
    fs::rename(&partial, &bin).with_context(|| format!("moving {} to {}", partial.display(), bin.display()))
}

/// `go build -trimpath` of the three mains into `out`, stamped with the Kubernetes version
/// (otherwise `/version` reports v0.0.0-master).
fn go_build(go: &Path, out: &Path) -> Result<()> {
    let (major, minor) = kubernetes_major_minor()?;
    let version = "k8s.io/component-base/version";
    let ldflags = format!(
        "-s -w -X {version}.gitVersion={KUBERNETES_VERSION} -X {version}.gitMajor={major} -X {version}.gitMinor={minor} -X {version}.gitTreeState=clean"
    );
    let mut out_dir = out.as_os_str().to_owned();
    out_dir.push("/");
    let mut cmd = Command::new(go);
    cmd.args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(out_dir)
        .args(CONTROLPLANE_BINARIES.map(|name| format!("./cmd/{name}")))
        .current_dir(module_dir())
        // Pure Go: no C toolchain needed, and the binaries do not depend on the host's libc.
        .env("CGO_ENABLED", "0")
        // The module's `go` line is what this toolchain must satisfy; never download another.
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly -buildvcs=false");
    run_checked(&mut cmd)
}

/// `("1", "37")` from `v1.37.2`.
fn kubernetes_major_minor() -> Result<(&'static str, &'static str)> {
    let mut parts = KUBERNETES_VERSION.trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => bail!("unexpected Kubernetes version {KUBERNETES_VERSION}"),
    }
}

fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane")
}

/// Go from its official tarball (`/usr/local/go`) or from PATH; Debian 12's golang is too old.
fn go_binary() -> Result<PathBuf> {
    let official = Path::new("/usr/local/go/bin/go");
    if official.is_file() {
        return Ok(official.to_path_buf());
    }
    let on_path = Command::new("go").arg("version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return Ok(PathBuf::from("go"));
    }
    bail!("Go 1.26 or newer is needed to build the test control plane (not found at /usr/local/go/bin/go or on PATH)")
}
