//! CPU time and resident memory of a process and its descendants, read from /proc (nginx and
//! HAProxy may fork workers; the sum over the tree is what the proxy costs).

use anyhow::{Context, Result};

/// One reading of a process tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// utime + stime of every process in the tree, in seconds.
    pub cpu_seconds: f64,
    /// Sum of VmRSS, KiB.
    pub rss_kib: u64,
    /// Sum of VmHWM (peak RSS over each process's life), KiB.
    pub hwm_kib: u64,
    /// Time the tree's threads waited runnable for a CPU (schedstat's run_delay), in seconds;
    /// none where the kernel keeps no schedstats.
    pub run_delay_seconds: Option<f64>,
}

/// Reads `pid` and all its descendants.
///
/// # Errors
/// `pid` itself cannot be read (it exited).
pub fn usage(pid: u32) -> Result<Usage> {
    let ticks = clock_ticks();
    let mut total = Usage::default();
    for p in tree(pid)? {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some(fields) = parse_stat(&stat) else { continue };
        total.cpu_seconds += (fields.utime + fields.stime) as f64 / ticks;
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else { continue };
        total.rss_kib += status_kib(&status, "VmRSS:").unwrap_or(0);
        total.hwm_kib += status_kib(&status, "VmHWM:").unwrap_or(0);
        if let Some(ns) = run_delay_ns(p) {
            *total.run_delay_seconds.get_or_insert(0.0) += ns as f64 / 1e9;
        }
    }
    Ok(total)
}

/// Nanoseconds the threads of process `pid` waited runnable on a run queue (the second field
/// of each thread's schedstat); none where the kernel keeps no schedstats.
fn run_delay_ns(pid: u32) -> Option<u64> {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    threads
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .reduce(|a, b| a + b)
}

/// CPU seconds the whole machine has spent busy since boot (every CPU; /proc/stat's first line:
/// user, nice, system, irq and softirq): what the client, the backends, the proxy and the
/// kernel's softirqs took together.
///
/// # Errors
/// /proc/stat cannot be read or parsed.
pub fn node_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")).context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
    // user nice system (idle iowait) irq softirq; not steal, which the hypervisor took from the
    // machine, nor guest, which user already holds.
    let busy: u64 = ticks.iter().take(7).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Ok(busy as f64 / clock_ticks())
}

/// `pid` and its descendants (children found through the ppid field of every /proc entry).
pub fn tree(pid: u32) -> Result<Vec<u32>> {
    std::fs::metadata(format!("/proc/{pid}")).with_context(|| format!("process {pid} is gone"))?;
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(p) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(fields) = std::fs::read_to_string(format!("/proc/{p}/stat")).ok().as_deref().and_then(parse_stat) {
            parents.push((p, fields.ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    Ok(found)
}

struct StatFields {
    ppid: u32,
    utime: u64,
    stime: u64,
}

/// Fields of /proc/PID/stat; the command name may hold spaces and parentheses, so fields are
/// counted after the last `)`.
fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15); index 0 here is field 3.
    Some(StatFields {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Raises this process's soft open-file limit to its hard limit, so the proxies and the idle
/// client it starts (they inherit it) can hold `needed` sockets. The hard limit is not raised:
/// containers often lack CAP_SYS_RESOURCE.
///
/// # Errors
/// The hard limit is below `needed`, or setrlimit refuses.
pub fn raise_nofile_limit(needed: u64) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    if limit.rlim_max < needed {
        anyhow::bail!("the open-file hard limit {} is below the {needed} the bench needs", limit.rlim_max);
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let stat = "4242 (tokio (w) 1) S 17 4242 17 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        let f = parse_stat(stat).unwrap();
        assert_eq!((f.ppid, f.utime, f.stime), (17, 250, 75));
    }

    #[test]
    fn status_values_in_kib() {
        let status = "Name:\tenvoy\nVmHWM:\t   52344 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(40960));
        assert_eq!(status_kib(status, "VmHWM:"), Some(52344));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_this_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_kib > 0 && u.hwm_kib >= u.rss_kib);
        // This kernel keeps schedstats (the bench's run-queue figures need them).
        assert!(u.run_delay_seconds.is_some());
    }

    #[test]
    fn the_machine_counts_this_process_busy() {
        let before = node_busy_seconds().unwrap();
        // Spins until the machine has counted a busy tick: this thread alone makes one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while node_busy_seconds().unwrap() == before {
            assert!(std::time::Instant::now() < deadline, "no busy tick counted in 5 s of spinning");
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
    }
}
