//! `cargo xtask bench`: the interceptor against Envoy, HAProxy, nginx and a direct connection on
//! one test node, same backends and same job for all, contenders taking turns so machine noise
//! hits all of them alike — in front of the mesh, then as an HTTPS gateway. Writes
//! `target/bench/report.{md,json}` and ends with a `BENCH …` line.

mod contenders;
mod gateway;
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

use contenders::{Front, Job, Kind, Running, BACKENDS, CLIENT};
pub use gateway::GatewayResults;

/// Host header of the seed service.
const HOST: &str = "my-app.default.svc.cluster.local";
/// Body size of every backend answer.
const RESPONSE_BYTES: usize = 1024;
/// Body size of the large answers (throughput), and the path the backends answer them on.
const LARGE_BYTES: usize = 1024 * 1024;
const LARGE_PATH: &str = "/__large";
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
    /// Length of each gateway turn (keep-alive saturation, fixed rate, handshakes).
    pub gateway_seconds: u64,
}

/// A part of the bench, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Captured mesh traffic (plain HTTP): req/s, latency, idle memory.
    Mesh,
    /// HTTPS terminated at the gateway: req/s, latency, handshakes per second.
    Gateway,
    /// Captured mesh traffic with the sockmap fast path (`fastPath: true`): as `mesh`, against
    /// HAProxy and direct (the interceptor without it is the `mesh` phase's).
    FastPath,
    /// The same HTTP load to a TCP route (bytes relayed to a v1 backend): the fast path, which
    /// splices such a connection, against HAProxy in TCP mode, direct, and the agent without it.
    Tcp,
}

impl Plan {
    /// The TCP phase's: half the idle connections, because a relayed connection holds two
    /// descriptors in each proxy, and this machine's hard limit (20,000) would refuse the
    /// last of 10,000.
    pub fn for_tcp(&self) -> Self {
        Plan { idle_connections: self.idle_connections / 2, ..self.clone() }
    }

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
                gateway_seconds: 1,
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
                gateway_seconds: 5,
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
    /// CPU the whole machine spent per request (client, backends, proxy, kernel), µs: what bounds
    /// req/s once every core is busy.
    pub node_cpu_us_per_request: Option<f64>,
    /// Time the proxy waited runnable for a CPU per request, µs (none for direct).
    pub proxy_wait_us_per_request: Option<f64>,
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
    /// Throughput with [`LARGE_BYTES`] answers at saturation.
    pub large: Option<Throughput>,
}

/// Bytes per second of large answers at saturation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    /// MB (10^6 bytes) of answer bodies per second.
    pub mb_per_s: f64,
    pub megabytes: f64,
    /// Proxy CPU seconds spent on them (none for direct).
    pub cpu_seconds: Option<f64>,
}

impl Throughput {
    /// MB/s per proxy core.
    pub fn per_core(&self) -> Option<f64> {
        self.cpu_seconds.filter(|s| *s > 0.0).map(|s| self.megabytes / s)
    }
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

/// Runs the bench (`quick`: a few seconds per contender, for CI), every phase or the `only` ones.
///
/// # Errors
/// The harness is broken: a tool cannot be installed, a contender does not start or does not do
/// the job (wrong routing, failed requests). Missing a performance target is not an error.
pub fn run(quick: bool, profile: bool, only: &[Phase]) -> Result<()> {
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
    let measured = measure(&plan, &tools, &root.join("config/mesh"), &dir, only)?;
    report::write(&plan, &measured, &dir)
}

/// The results of the phases that ran.
pub struct Measured {
    pub mesh: Option<Vec<Results>>,
    pub gateway: Option<Vec<GatewayResults>>,
    pub fast_path: Option<Vec<Results>>,
    /// The TCP phase: direct, the fast path and HAProxy, then the agent without the fast path.
    pub tcp: Option<(Vec<Results>, Vec<Results>)>,
}

/// The node and its backends, then each selected phase with its own contenders (one interceptor
/// at a time: both would attach to the node's cgroup).
fn measure(plan: &Plan, tools: &contenders::Tools, mesh: &Path, dir: &Path, only: &[Phase]) -> Result<Measured> {
    let mut pods = vec![PodSpec::new(CLIENT.0, CLIENT.1)];
    pods.extend(BACKENDS.iter().map(|(pod, ip, _)| PodSpec::new(pod, *ip)));
    let mut node = Node::create(&pods)?;
    // In the capture cgroup, as kubelet's pods all are: the fast path pairs their sockets.
    let (size, large) = (RESPONSE_BYTES.to_string(), LARGE_BYTES.to_string());
    for (pod, _, version) in BACKENDS {
        node.serve_captured(pod, version, &["--size", &size, "--large", &large])?;
    }
    let run_dir = dir.join("run");
    let wanted = |phase| only.is_empty() || only.contains(&phase);
    let mesh_results = if wanted(Phase::Mesh) {
        let kinds = Kind::ALL;
        Some(with_contenders(&mut node, &kinds, Front::Mesh, tools, mesh, &run_dir, |node, running| {
            phases(plan, node, running, &run_dir)
        })?)
    } else {
        None
    };
    let gateway_results = if wanted(Phase::Gateway) {
        let certificate = gateway::certificate(&run_dir)?;
        let front = Front::Gateway(&certificate);
        Some(with_contenders(&mut node, &gateway::KINDS, front, tools, mesh, &run_dir, |node, running| {
            gateway::phases(plan, node, running, &certificate, &run_dir)
        })?)
    } else {
        None
    };
    let fast_path_results = if wanted(Phase::FastPath) {
        let kinds = [Kind::Direct, Kind::InterceptorFastPath, Kind::Haproxy];
        Some(with_contenders(&mut node, &kinds, Front::Mesh, tools, mesh, &run_dir, |node, running| {
            on_the_fast_path(node, false, || phases(plan, node, running, &run_dir))
        })?)
    } else {
        None
    };
    let tcp_results = if wanted(Phase::Tcp) {
        let plan = &plan.for_tcp();
        let spliced = [Kind::Direct, Kind::InterceptorFastPath, Kind::Haproxy];
        let spliced = with_contenders(&mut node, &spliced, Front::Tcp, tools, mesh, &run_dir, |node, running| {
            on_the_fast_path(node, true, || phases(plan, node, running, &run_dir))
        })?;
        let off =
            with_contenders(&mut node, &[Kind::Interceptor], Front::Tcp, tools, mesh, &run_dir, |node, running| {
                phases(plan, node, running, &run_dir)
            })?;
        Some((spliced, off))
    } else {
        None
    };
    drop(node);
    Ok(Measured { mesh: mesh_results, gateway: gateway_results, fast_path: fast_path_results, tcp: tcp_results })
}

/// Runs `measure` and prints how many sends the fast path moved meanwhile, how many of them past
/// the proxy (a spliced TCP route) and how many went through TCP (the kernel's `sk_msg` counters,
/// which earlier phases add to: the pinned counters are kept), so a report is never read as the
/// fast path's, or the splice's when `spliced`, when it did not take.
///
/// # Errors
/// `measure` fails, the agent's admin endpoint does not answer, or the fast path (the splice)
/// moved nothing.
fn on_the_fast_path<T>(node: &Node, spliced: bool, measure: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = FastPathUse::read(node)?;
    let measured = measure()?;
    let after = FastPathUse::read(node)?;
    let (moved, past, through_tcp) =
        (after.moved - before.moved, after.past - before.past, after.through_tcp - before.through_tcp);
    eprintln!("bench: the fast path moved {moved:.0} sends, {past:.0} of them past the proxy; {through_tcp:.0} went through TCP");
    if moved == 0.0 {
        bail!("the fast path moved nothing: its figures would be the plain path's");
    }
    if spliced && past == 0.0 {
        bail!("nothing moved past the proxy: its figures would be the relayed path's");
    }
    Ok(measured)
}

/// The agent's `sk_msg` and `splice` counters.
struct FastPathUse {
    moved: f64,
    past: f64,
    through_tcp: f64,
}

impl FastPathUse {
    fn read(node: &Node) -> Result<Self> {
        let (_, text) = node.node_get(testbed::ADMIN, "/stats/prometheus")?;
        let counter = |name, program| testbed::fixtures::program_sample(&text, name, program).unwrap_or(0.0);
        Ok(Self {
            moved: counter("interceptor_program_captured_total", "sk_msg"),
            past: counter("interceptor_program_captured_total", "splice"),
            through_tcp: counter("interceptor_program_bypassed_total", "sk_msg"),
        })
    }
}

/// Starts `kinds` fronting `front`, runs `measure` with them, and stops them (also on failure).
fn with_contenders<T>(
    node: &mut Node,
    kinds: &[Kind],
    front: Front<'_>,
    tools: &contenders::Tools,
    mesh: &Path,
    run_dir: &Path,
    measure: impl FnOnce(&Node, &[Running]) -> Result<T>,
) -> Result<T> {
    let mut running = Vec::new();
    let mut started = Ok(());
    for &kind in kinds {
        eprintln!("bench: starting {} ({front})", kind.name());
        match contenders::start(node, kind, front, tools, mesh, run_dir) {
            Ok(r) => running.push(r),
            Err(err) => {
                started = Err(err);
                break;
            }
        }
    }
    let outcome = started.and_then(|()| measure(node, &running));
    for r in running.iter().rev() {
        contenders::stop(node, r);
    }
    outcome
}

/// A load run of `r` from the client pod.
fn spec<'a>(r: &'a Running, log: &'a Path, connections: u32, seconds: u64, rate: Option<u32>) -> load::Spec<'a> {
    load::Spec {
        target: r.target,
        captured: r.captured,
        connections,
        duration: Duration::from_secs(seconds),
        requests: None,
        rate_per_connection: rate,
        sni: r.sni,
        new_connections: false,
        log,
        path: "/",
    }
}

/// What [`turns`] measured for one contender.
#[derive(Clone, Debug, Default)]
struct Turns {
    /// req/s of each turn.
    rps: Vec<f64>,
    requests: u64,
    /// Proxy CPU seconds over all turns (none for direct).
    cpu_seconds: Option<f64>,
    /// Peak RSS after the last turn, KiB.
    hwm_kib: Option<u64>,
    /// Busy CPU seconds of the whole machine over all turns.
    node_cpu_seconds: f64,
    /// Seconds the proxy waited runnable for a CPU over all turns (none for direct).
    proxy_wait_seconds: Option<f64>,
    latencies_us: Vec<u64>,
    /// The TLS of the last turn (HTTPS contenders).
    tls: Option<load::TlsInfo>,
}

impl Turns {
    fn mean_rps(&self) -> f64 {
        self.rps.iter().sum::<f64>() / self.rps.len().max(1) as f64
    }
}

/// `plan.rounds` load runs per contender, in rotation (A B C, B C A, …) so that machine noise
/// hits all alike; `profile`: perf-sample each proxy's first turn, its report named
/// `<contender><profile>`.
fn turns<'a>(
    plan: &Plan,
    node: &Node,
    running: &'a [Running],
    label: &str,
    profile: Option<&str>,
    spec: impl Fn(&'a Running) -> load::Spec<'a>,
) -> Result<Vec<Turns>> {
    let n = running.len();
    let mut out = vec![Turns::default(); n];
    for round in 0..plan.rounds {
        for turn in 0..n {
            let i = (turn + round) % n;
            let r = &running[i];
            let spec = spec(r);
            let before = r.pid.map(procstat::usage).transpose()?;
            let recording = match (r.pid, profile) {
                (Some(pid), Some(suffix)) if round == 0 => Some(profile::start(
                    pid,
                    spec.duration.as_secs(),
                    spec.log.parent().unwrap_or(Path::new(".")),
                    &format!("{}{suffix}", r.kind.name()),
                )?),
                _ => None,
            };
            let outcome = load::run(node, CLIENT.0, &spec)?;
            let after = r.pid.map(procstat::usage).transpose()?;
            if let Some(recording) = recording {
                eprintln!("bench: profile of {} in {}", r.kind.name(), recording.finish()?.display());
            }
            eprintln!("bench: {label} round {round} {:<12} {:>9.0} req/s", r.kind.name(), outcome.rps);
            let t = &mut out[i];
            t.rps.push(outcome.rps);
            t.requests += outcome.done;
            t.node_cpu_seconds += outcome.node_cpu_seconds;
            if let (Some(b), Some(a)) = (before, after) {
                *t.cpu_seconds.get_or_insert(0.0) += a.cpu_seconds - b.cpu_seconds;
                if let (Some(waited), Some(before)) = (a.run_delay_seconds, b.run_delay_seconds) {
                    *t.proxy_wait_seconds.get_or_insert(0.0) += waited - before;
                }
                t.hwm_kib = Some(a.hwm_kib);
            }
            t.latencies_us.extend(outcome.latencies_us);
            t.tls = outcome.tls;
        }
    }
    Ok(out)
}

impl Results {
    /// Saturation results of contender `name` from its turns of `seconds` each.
    fn saturated(name: &str, t: Turns, seconds: u64) -> Results {
        Results {
            name: name.into(),
            load_seconds: (seconds as usize * t.rps.len()) as f64,
            requests: t.requests,
            cpu_seconds: t.cpu_seconds,
            rss_peak_kib: t.hwm_kib,
            rps_turns: t.rps.clone(),
            saturation: latency(0.0, 0.0, t),
            ..Results::default()
        }
    }
}

/// The rate at `fraction` of `slowest` spread over `connections` (per connection, at least 1/s).
fn per_connection(slowest: f64, fraction: f64, connections: u32) -> u32 {
    ((slowest * fraction / f64::from(connections)).round() as u32).max(1)
}

/// The lowest saturation req/s among the proxies.
fn slowest(results: &[Results], running: &[Running]) -> Result<f64> {
    let proxies = results.iter().zip(running).filter(|(_, r)| r.job != Job::Direct);
    let slowest = proxies.map(|(res, _)| res.rps()).fold(f64::INFINITY, f64::min);
    if !slowest.is_finite() || slowest < 10.0 {
        bail!("the slowest proxy answered {slowest} req/s: too slow to measure latency at fixed rates");
    }
    Ok(slowest)
}

fn phases(plan: &Plan, node: &Node, running: &[Running], run_dir: &Path) -> Result<Vec<Results>> {
    let log = run_dir.join("h2load.tsv");
    for r in running {
        check_job(node, r, None)?;
        // Warm-up: pools, allocators, page cache; not measured.
        load::run(node, CLIENT.0, &spec(r, &log, plan.connections, 1, None))?;
    }

    let profile = plan.profile.then_some("");
    let saturated = turns(plan, node, running, "saturation", profile, |r| {
        spec(r, &log, plan.connections, plan.saturation_seconds, None)
    })?;
    let mut results: Vec<Results> = saturated
        .into_iter()
        .zip(running)
        .map(|(t, r)| Results::saturated(r.kind.name(), t, plan.saturation_seconds))
        .collect();

    let slowest = slowest(&results, running)?;
    for fraction in RATE_FRACTIONS {
        let rate = per_connection(slowest, fraction, plan.rate_connections);
        let rated = turns(plan, node, running, "fixed rate", None, |r| {
            spec(r, &log, plan.rate_connections, plan.rate_seconds, Some(rate))
        })?;
        let offered = f64::from(rate * plan.rate_connections);
        eprintln!("bench: fixed rate {:.0}% of {slowest:.0} req/s = {offered:.0} req/s done", fraction * 100.0);
        for (res, t) in results.iter_mut().zip(rated) {
            res.rates.push(latency(fraction, offered, t));
        }
    }

    let large = turns(plan, node, running, "large answers", None, |r| load::Spec {
        path: LARGE_PATH,
        ..spec(r, &log, plan.connections, plan.saturation_seconds, None)
    })?;
    for (res, t) in results.iter_mut().zip(large) {
        let (bytes, megabytes) = (LARGE_BYTES as f64 / 1e6, t.requests as f64 * LARGE_BYTES as f64 / 1e6);
        res.large = Some(Throughput { mb_per_s: t.mean_rps() * bytes, megabytes, cpu_seconds: t.cpu_seconds });
    }

    for (res, r) in results.iter_mut().zip(running) {
        let Some(pid) = r.pid else { continue };
        idle(plan, node, r, pid, res)?;
    }
    Ok(results)
}

/// The latency quantiles of `t`'s turns at `fraction` of the slowest peak (`offered` req/s), and
/// their machine CPU and proxy run-queue wait per request.
fn latency(fraction: f64, offered: f64, t: Turns) -> Latency {
    let achieved = t.mean_rps();
    let per_request = |seconds: f64| (t.requests > 0).then(|| seconds * 1e6 / t.requests as f64);
    let (node_cpu_us_per_request, proxy_wait_us_per_request) =
        (per_request(t.node_cpu_seconds), t.proxy_wait_seconds.and_then(per_request));
    let mut samples = t.latencies_us;
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
        node_cpu_us_per_request,
        proxy_wait_us_per_request,
    }
}

/// The user agent of the seed's beta testers.
const BETA_AGENT: &str = "Mozilla/5.0 (beta-tester)";

/// Answers to `n` requests by backend version (v1, v2) and a description for errors; the beta
/// tester's user agent when `beta`.
type Ask<'a> = dyn Fn(usize, bool) -> Result<(usize, usize, String)> + 'a;

/// Checks that a contender does the seed's job: 90/10 for plain requests, v2 for beta testers.
/// Plain HTTP contenders are asked by `pod load`; HTTPS ones by [`gateway::ask`].
fn check_job(node: &Node, r: &Running, ask: Option<&Ask<'_>>) -> Result<()> {
    let target = r.target.to_string();
    let plain_ask = |n: usize, beta: bool| -> Result<(usize, usize, String)> {
        let n = n.to_string();
        let mut args = vec!["--target", target.as_str(), "--host", HOST, "-n", &n];
        let agent = format!("user-agent: {BETA_AGENT}");
        if beta {
            args.extend(["-H", &agent]);
        }
        let report = node.load(CLIENT.0, &args)?;
        Ok((report.count("v1"), report.count("v2"), format!("{report:?}")))
    };
    let ask = ask.unwrap_or(&plain_ask);
    let (v1, v2, plain) = ask(400, false)?;
    if v1 + v2 != 400 {
        bail!("{}: {} of 400 requests answered by a backend: {plain}", r.kind.name(), v1 + v2);
    }
    match r.job {
        Job::Direct => return Ok(()),
        Job::TcpToV1 if v1 != 400 => bail!("{}: v2 answered {v2} of 400 requests on a route to v1", r.kind.name()),
        Job::TcpToV1 => return Ok(()),
        Job::Seed => {}
    }
    // 400 draws at 10%: 40 ± 6 (σ); 12..=80 is far outside chance.
    if !(12..=80).contains(&v2) {
        bail!("{}: v2 answered {v2} of 400 plain requests, not ~10%", r.kind.name());
    }
    let (_, v2, beta) = ask(40, true)?;
    if v2 != 40 {
        bail!("{}: beta testers reached v2 {v2} of 40 times: {beta}", r.kind.name());
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
