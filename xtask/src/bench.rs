//! `cargo xtask bench`: the interceptor against Envoy, HAProxy, nginx and a direct connection on
//! one test node, same backends and same job for all, contenders taking turns so machine noise
//! hits all of them alike. Writes `target/bench/report.{md,json}` and ends with a `BENCH …` line.

mod contenders;
mod load;
mod prereqs;
mod procstat;
mod profile;
mod report;

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use testbed::{Node, PodSpec};

use contenders::{Kind, Running, BACKENDS, CLIENT};

/// Host header of the seed service.
const HOST: &str = "my-app.default.svc.cluster.local";
/// Body size of every backend answer.
const RESPONSE_BYTES: usize = 1024;
/// Fixed rates, as fractions of the slowest proxy's peak.
const RATE_FRACTIONS: [f64; 3] = [0.25, 0.5, 0.75];

/// How long and how hard to measure.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub quick: bool,
    /// Turns each contender gets per phase (A B … A B …).
    pub rounds: usize,
    pub saturation_seconds: u64,
    pub rate_seconds: u64,
    /// Keep-alive connections at saturation.
    pub connections: u32,
    /// Keep-alive connections at fixed rates.
    pub rate_connections: u32,
    pub idle_connections: usize,
    /// Binaries built with `--release` (the quick CI run reuses the debug build).
    pub release: bool,
    /// perf-sample each proxy during its first saturation turn.
    pub profile: bool,
}

impl Plan {
    fn new(quick: bool, profile: bool) -> Self {
        if quick {
            Plan {
                quick,
                rounds: 1,
                saturation_seconds: 2,
                rate_seconds: 1,
                connections: 16,
                rate_connections: 8,
                idle_connections: 1000,
                // Profiling a debug build would show the wrong hot spots.
                release: profile,
                profile,
            }
        } else {
            Plan {
                quick,
                rounds: 3,
                saturation_seconds: 8,
                rate_seconds: 5,
                connections: 32,
                rate_connections: 16,
                idle_connections: 10_000,
                release: true,
                profile,
            }
        }
    }
}

/// Latency at one offered load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Fraction of the slowest proxy's peak (0 at saturation).
    pub fraction: f64,
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub samples: usize,
}

/// Everything measured for one contender.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub name: String,
    /// Saturation req/s of each turn.
    pub rps_turns: Vec<f64>,
    /// Requests answered at saturation (all turns).
    pub requests: u64,
    /// Proxy CPU seconds spent on them (none for direct).
    pub cpu_seconds: Option<f64>,
    /// Seconds of saturation load (all turns).
    pub load_seconds: f64,
    pub saturation: Latency,
    pub rates: Vec<Latency>,
    /// Peak RSS (VmHWM) after the saturation phase, KiB.
    pub rss_peak_kib: Option<u64>,
    /// RSS before the idle connections were opened, KiB.
    pub rss_before_idle_kib: Option<u64>,
    /// RSS while the idle connections are open, KiB.
    pub rss_idle_kib: Option<u64>,
    pub idle_open: usize,
}

impl Results {
    pub fn rps(&self) -> f64 {
        self.rps_turns.iter().sum::<f64>() / self.rps_turns.len().max(1) as f64
    }

    /// CPU seconds of the proxy per 1,000 requests.
    pub fn cpu_per_1k(&self) -> Option<f64> {
        self.cpu_seconds.map(|c| c * 1000.0 / self.requests.max(1) as f64)
    }

    /// Requests one fully used proxy core would answer per second.
    pub fn rps_per_core(&self) -> Option<f64> {
        self.cpu_per_1k().filter(|c| *c > 0.0).map(|c| 1000.0 / c)
    }
}

/// Runs the bench (`quick`: a few seconds per contender, for CI).
///
/// # Errors
/// The harness is broken: a tool cannot be installed, a contender does not start or does not do
/// the job (wrong routing, failed requests). Missing a performance target is not an error.
pub fn run(quick: bool, profile: bool) -> Result<()> {
    let root = crate::workspace_root();
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let tools = prereqs::ensure(&dir)?;
    let plan = Plan::new(quick, profile);
    if plan.release {
        crate::cargo(&["build", "--release", "-p", "interceptor-user", "-p", "interceptor-tests", "--bins"])?;
    } else {
        crate::cargo(&["build", "-p", "interceptor-user", "-p", "interceptor-tests", "--bins"])?;
    }
    let bin_dir = root.join("target").join(if plan.release { "release" } else { "debug" });
    for name in ["interceptor", "pod"] {
        // Read by testbed::workspace_binary; set before any thread starts. One set already wins,
        // so another build (say, main's) can be benched against the same peers.
        let var = format!("INTERCEPTOR_{}_BIN", name.to_ascii_uppercase());
        if std::env::var_os(&var).is_none() {
            std::env::set_var(var, bin_dir.join(name));
        }
    }
    procstat::raise_nofile_limit(plan.idle_connections as u64 + 1024)?;
    let results = measure(&plan, &tools, &root.join("config/mesh"), &dir)?;
    report::write(&plan, &results, &dir)
}

fn measure(plan: &Plan, tools: &contenders::Tools, mesh: &Path, dir: &Path) -> Result<Vec<Results>> {
    let mut pods = vec![PodSpec::new(CLIENT.0, CLIENT.1)];
    pods.extend(BACKENDS.iter().map(|(pod, ip, _)| PodSpec::new(pod, *ip)));
    let mut node = Node::create(&pods)?;
    for (pod, ip, version) in BACKENDS {
        testbed::bench::serve_sized(&mut node, pod, ip.into(), version, RESPONSE_BYTES)?;
    }
    let run_dir = dir.join("run");
    let mut running = Vec::new();
    for kind in Kind::ALL {
        eprintln!("bench: starting {}", kind.name());
        running.push(contenders::start(&mut node, kind, tools, mesh, &run_dir)?);
    }
    let outcome = phases(plan, &node, &running, &run_dir);
    for r in running.iter().rev() {
        contenders::stop(&mut node, r);
    }
    drop(node);
    outcome
}

fn phases(plan: &Plan, node: &Node, running: &[Running], run_dir: &Path) -> Result<Vec<Results>> {
    let mut results: Vec<Results> =
        running.iter().map(|r| Results { name: r.kind.name().into(), ..Results::default() }).collect();
    let log = run_dir.join("h2load.tsv");
    let spec = |r: &Running, connections, seconds, rate| load::Spec {
        target: r.target,
        captured: r.captured,
        connections,
        duration: Duration::from_secs(seconds),
        rate_per_connection: rate,
        log: &log,
    };

    for r in running {
        check_job(node, r)?;
        // Warm-up: pools, allocators, page cache; not measured.
        load::run(node, CLIENT.0, &spec(r, plan.connections, 1, None))?;
    }

    let n = running.len();
    let mut saturation_samples: Vec<Vec<u64>> = vec![Vec::new(); n];
    for round in 0..plan.rounds {
        for turn in 0..n {
            let i = (turn + round) % n;
            let r = &running[i];
            let before = r.pid.map(procstat::usage).transpose()?;
            let recording = match r.pid {
                Some(pid) if plan.profile && round == 0 => {
                    Some(profile::start(pid, plan.saturation_seconds, run_dir, r.kind.name())?)
                }
                _ => None,
            };
            let outcome = load::run(node, CLIENT.0, &spec(r, plan.connections, plan.saturation_seconds, None))?;
            let after = r.pid.map(procstat::usage).transpose()?;
            if let Some(recording) = recording {
                eprintln!("bench: profile of {} in {}", r.kind.name(), recording.finish()?.display());
            }
            eprintln!("bench: round {round} {:<12} {:>9.0} req/s", r.kind.name(), outcome.rps);
            let res = &mut results[i];
            res.rps_turns.push(outcome.rps);
            res.requests += outcome.done;
            res.load_seconds += plan.saturation_seconds as f64;
            if let (Some(b), Some(a)) = (before, after) {
                *res.cpu_seconds.get_or_insert(0.0) += a.cpu_seconds - b.cpu_seconds;
                res.rss_peak_kib = Some(a.hwm_kib);
            }
            saturation_samples[i].extend(outcome.latencies_us);
        }
    }
    for (res, samples) in results.iter_mut().zip(saturation_samples) {
        res.saturation = latency(0.0, 0.0, res.rps(), samples);
    }

    let slowest =
        results.iter().zip(running).filter(|(_, r)| r.routes).map(|(res, _)| res.rps()).fold(f64::INFINITY, f64::min);
    if !slowest.is_finite() || slowest < 10.0 {
        bail!("the slowest proxy answered {slowest} req/s: too slow to measure latency at fixed rates");
    }
    for fraction in RATE_FRACTIONS {
        let offered = slowest * fraction;
        let per_connection = ((offered / f64::from(plan.rate_connections)).round() as u32).max(1);
        let mut samples: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut achieved = vec![0.0; n];
        for round in 0..plan.rounds {
            for turn in 0..n {
                let i = (turn + round) % n;
                let r = &running[i];
                let outcome = load::run(
                    node,
                    CLIENT.0,
                    &spec(r, plan.rate_connections, plan.rate_seconds, Some(per_connection)),
                )?;
                achieved[i] += outcome.rps / plan.rounds as f64;
                samples[i].extend(outcome.latencies_us);
            }
        }
        let offered = f64::from(per_connection * plan.rate_connections);
        eprintln!("bench: fixed rate {:.0}% of {slowest:.0} req/s = {offered:.0} req/s done", fraction * 100.0);
        for (i, s) in samples.into_iter().enumerate() {
            results[i].rates.push(latency(fraction, offered, achieved[i], s));
        }
    }

    for (res, r) in results.iter_mut().zip(running) {
        let Some(pid) = r.pid else { continue };
        idle(plan, node, r, pid, res)?;
    }
    Ok(results)
}

fn latency(fraction: f64, offered: f64, achieved: f64, mut samples: Vec<u64>) -> Latency {
    samples.sort_unstable();
    let q = |p| load::quantile(&samples, p).unwrap_or(0);
    Latency {
        fraction,
        offered_rps: offered,
        achieved_rps: achieved,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        samples: samples.len(),
    }
}

/// Checks that a contender does the seed's job: 90/10 for plain requests, v2 for beta testers.
fn check_job(node: &Node, r: &Running) -> Result<()> {
    let target = r.target.to_string();
    let base = ["--target", target.as_str(), "--host", HOST];
    let plain = node.load(CLIENT.0, &[&base[..], &["-n", "400"]].concat())?;
    let answered = plain.count("v1") + plain.count("v2");
    if answered != 400 {
        bail!("{}: {answered} of 400 requests answered by a backend: {plain:?}", r.kind.name());
    }
    if !r.routes {
        return Ok(());
    }
    // 400 draws at 10%: 40 ± 6 (σ); 12..=80 is far outside chance.
    if !(12..=80).contains(&plain.count("v2")) {
        bail!("{}: v2 answered {} of 400 plain requests, not ~10%", r.kind.name(), plain.count("v2"));
    }
    let beta =
        node.load(CLIENT.0, &[&base[..], &["-n", "40", "-H", "user-agent: Mozilla/5.0 (beta-tester)"]].concat())?;
    if beta.count("v2") != 40 {
        bail!("{}: beta testers reached v2 {} of 40 times: {beta:?}", r.kind.name(), beta.count("v2"));
    }
    Ok(())
}

/// Opens `plan.idle_connections` idle keep-alive connections through the proxy and reads its RSS.
fn idle(plan: &Plan, node: &Node, r: &Running, pid: u32, res: &mut Results) -> Result<()> {
    res.rss_before_idle_kib = Some(procstat::usage(pid)?.rss_kib);
    let target = r.target.to_string();
    let conns = plan.idle_connections.to_string();
    let args = ["idle", "--target", &target, "--host", HOST, "--conns", &conns, "--hold-seconds", "150"];
    let mut child = node
        .command_in(&node.pod_netns(CLIENT.0), r.captured, &testbed::workspace_binary("pod"), &args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pod idle")?;
    let mut line = String::new();
    let read = child
        .stdout
        .take()
        .context("pod idle stdout")
        .and_then(|out| Ok(std::io::BufReader::new(out).read_line(&mut line)?));
    let measured = read.and_then(|_| {
        let report: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("pod idle printed {line:?}"))?;
        let open = report["open"].as_u64().unwrap_or(0) as usize;
        if open < plan.idle_connections {
            bail!("{}: only {open} of {} idle connections opened: {report}", r.kind.name(), plan.idle_connections);
        }
        // Let the proxy settle (buffers of the last requests released).
        std::thread::sleep(Duration::from_millis(500));
        Ok((open, procstat::usage(pid)?.rss_kib))
    });
    let _ = child.kill();
    let _ = child.wait();
    let (open, rss) = measured?;
    eprintln!("bench: {:<12} RSS {} KiB with {open} idle connections", r.kind.name(), rss);
    res.idle_open = open;
    res.rss_idle_kib = Some(rss);
    // The proxy closes its side before the next contender's turn.
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}
