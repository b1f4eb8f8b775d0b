//! `--profile`: perf samples (cpu-clock, a software event, so it works without hardware
//! counters) of a proxy during one saturation turn, reported flat by symbol and by library.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// A perf recording in progress.
pub struct Recording {
    child: Child,
    data: PathBuf,
    report: PathBuf,
}

/// Starts sampling `pid` for `seconds`.
///
/// # Errors
/// perf cannot start.
pub fn start(pid: u32, seconds: u64, dir: &Path, name: &str) -> Result<Recording> {
    let data = dir.join(format!("perf-{name}.data"));
    let child = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "997", "-p", &pid.to_string(), "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record (linux-perf)")?;
    Ok(Recording { child, data, report: dir.join(format!("profile-{name}.txt")) })
}

impl Recording {
    /// Waits for the recording and writes the report next to it; returns the report's path.
    ///
    /// # Errors
    /// perf fails.
    pub fn finish(mut self) -> Result<PathBuf> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        let mut text = String::new();
        for sort in ["dso", "dso,sym"] {
            let out = Command::new("perf")
                .args(["report", "--stdio", "--no-children", "--percent-limit", "0.7", "--sort", sort, "-i"])
                .arg(&self.data)
                .output()
                .context("running perf report")?;
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        std::fs::write(&self.report, text)?;
        let _ = std::fs::remove_file(&self.data);
        Ok(self.report)
    }
}
