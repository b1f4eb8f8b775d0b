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
    /// The process's command name: the name of its executable, so its dso in perf.
    comm: String,
}

/// Starts sampling `pid` and its descendants (nginx's worker) for `seconds`.
///
/// # Errors
/// perf cannot start.
pub fn start(pid: u32, seconds: u64, dir: &Path, name: &str) -> Result<Recording> {
    let data = dir.join(format!("perf-{name}.data"));
    let pids: Vec<String> = super::procstat::tree(pid)?.iter().map(u32::to_string).collect();
    let child = Command::new("perf")
        // -g: kernel call chains unwind (ORC), so time can be charged to the syscall that caused it.
        .args(["record", "-e", "cpu-clock", "-F", "997", "-g", "-p", &pids.join(","), "-o"])
        .arg(&data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record (linux-perf)")?;
    let worker = pids.last().map_or(pid.to_string(), Clone::clone);
    let comm = std::fs::read_to_string(format!("/proc/{worker}/comm")).unwrap_or_default().trim().to_owned();
    Ok(Recording { child, data, report: dir.join(format!("profile-{name}.txt")), comm })
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
        // By library; by symbol overall; by symbol of the proxy's own code and libc (user space).
        for (sort, limit) in [("dso", "0.7"), ("dso,sym", "0.7"), ("sym", "0.3")] {
            let mut cmd = Command::new("perf");
            cmd.args(["report", "--stdio", "--no-children", "-g", "none", "--percent-limit", limit, "--sort", sort]);
            if sort == "sym" {
                cmd.arg("--dsos").arg(format!("{},libc.so.6", self.comm));
            }
            let out = cmd.arg("-i").arg(&self.data).output().context("running perf report")?;
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        // Inclusive time per system call: where the kernel share comes from.
        let out = Command::new("perf")
            .args(["report", "--stdio", "--children", "--sort", "sym", "-g", "none", "-i"])
            .arg(&self.data)
            .output()
            .context("running perf report")?;
        text.push_str("\n# Inclusive time per system call\n");
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("__x64_sys_")) {
            text.push_str(line.trim_end());
            text.push('\n');
        }
        // The data stays beside the report, for `perf report -i` beyond this summary.
        std::fs::write(&self.report, text)?;
        Ok(self.report)
    }
}
