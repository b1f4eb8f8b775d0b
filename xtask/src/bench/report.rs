//! The bench report: markdown tables and JSON under `target/bench/`, ratios of the interceptor
//! against each proxy from the same run (mesh, then gateway), and the closing `BENCH …` line.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::gateway::RATE_FRACTION;
use super::{GatewayResults, Latency, Measured, Plan, Results};

/// Added latency below this (µs) counts as this much in ratios.
const ADDED_FLOOR_US: i64 = 50;

/// Writes `report.md` and `report.json` into `dir` for the phases that ran, prints the tables,
/// and prints the `BENCH` line last.
///
/// # Errors
/// The files cannot be written, or a contender is missing from the results.
pub fn write(plan: &Plan, measured: &Measured, dir: &Path) -> Result<()> {
    let mut markdown = String::new();
    let mut json = serde_json::Map::new();
    json.insert("plan".into(), json!(plan));
    let mut bench = Vec::new();
    if let Some(results) = measured.mesh.as_deref() {
        let get = |name: &str| find(results, name);
        let (direct, me, envoy) = (get("direct")?, get("interceptor")?, get("envoy")?);
        markdown.push_str(&mesh_markdown(plan, results, direct, me));
        let ratios: serde_json::Map<_, _> = results
            .iter()
            .filter(|r| r.name != "direct" && r.name != "interceptor")
            .map(|other| (other.name.clone(), json!(Ratios::of(me, other, direct))))
            .collect();
        json.insert("results".into(), json!(results));
        json.insert("interceptor_vs".into(), json!(ratios));
        let vs_envoy = Ratios::of(me, envoy, direct);
        bench.push(format!("rps_vs_envoy={}", fmt_ratio(vs_envoy.rps)));
        bench.push(format!("p99_added_vs_envoy={}", fmt_ratio(vs_envoy.p99_added_at_50)));
        bench.push(format!("rss_idle_vs_envoy={}", fmt_ratio(vs_envoy.rss_idle)));
    }
    if let Some(results) = measured.gateway.as_deref() {
        let get = |name: &str| {
            results.iter().find(|r| r.name == name).with_context(|| format!("no gateway results for {name}"))
        };
        let (direct, me) = (get("direct")?, get("interceptor")?);
        if !markdown.is_empty() {
            markdown.push('\n');
        }
        markdown.push_str(&gateway_markdown(plan, results, direct, me));
        let ratios: serde_json::Map<_, _> = results
            .iter()
            .filter(|r| r.name != "direct" && r.name != "interceptor")
            .map(|other| (other.name.clone(), json!(GatewayRatios::of(me, other, direct))))
            .collect();
        json.insert("gateway".into(), json!({ "results": results, "interceptor_vs": ratios }));
        for peer in ["envoy", "haproxy"] {
            let x = GatewayRatios::of(me, get(peer)?, direct);
            bench.push(format!("gw_rps_per_core_vs_{peer}={}", fmt_ratio(x.rps_per_core)));
            bench.push(format!("gw_p99_added_vs_{peer}={}", fmt_ratio(x.p99_added)));
            bench.push(format!("gw_handshakes_vs_{peer}={}", fmt_ratio(x.handshakes)));
        }
    }
    if let Some(results) = measured.fast_path.as_deref() {
        let off = measured.mesh.as_deref().and_then(|mesh| find(mesh, "interceptor").ok());
        let phase = FastPathPhase {
            key: "fast_path",
            prefix: "fp",
            heading: "Fast path: `fastPath: true`, agent and pods in the capture cgroup",
            off_from: "mesh phase",
            targets: true,
            per_core: true,
        };
        phase.write(plan, results, off, &mut markdown, &mut json, &mut bench)?;
    }
    if let Some((results, off)) = &measured.tcp {
        let phase = FastPathPhase {
            key: "tcp",
            prefix: "tcp",
            heading: "TCP route: the same load to a TCP port whose route relays the bytes to a v1 backend; the fast path splices it (HAProxy in `mode tcp`)",
            off_from: "its own turns",
            targets: false,
            per_core: false,
        };
        phase.write(&plan.for_tcp(), results, find(off, "interceptor").ok(), &mut markdown, &mut json, &mut bench)?;
    }
    std::fs::write(dir.join("report.md"), &markdown)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{markdown}");
    println!("bench: wrote {} and {}", dir.join("report.md").display(), dir.join("report.json").display());
    println!("BENCH {}", bench.join(" "));
    Ok(())
}

/// The contender `name` of a phase's results.
fn find<'a>(results: &'a [Results], name: &str) -> Result<&'a Results> {
    results.iter().find(|r| r.name == name).with_context(|| format!("no results for {name}"))
}

/// The ratio `a ÷ b` when both are known and `b` is positive.
fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// p99 added over direct at `fraction`, floored at [`ADDED_FLOOR_US`] for ratios.
fn added_for_ratio(r: &Results, direct: &Results, fraction: f64) -> Option<f64> {
    // Below 50 µs the difference is noise on a shared machine; the floor keeps the ratio finite.
    added_p99(r, direct, fraction).map(|us| us.max(ADDED_FLOOR_US) as f64)
}

/// Interceptor ÷ another contender.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Ratios {
    rps: Option<f64>,
    rps_per_core: Option<f64>,
    p99_added_at_50: Option<f64>,
    rss_idle: Option<f64>,
    /// MB/s with large answers, and per proxy core.
    large: Option<f64>,
    large_per_core: Option<f64>,
}

impl Ratios {
    fn of(me: &Results, other: &Results, direct: &Results) -> Ratios {
        let large = |r: &Results| r.large.as_ref().map(|l| l.mb_per_s);
        let large_per_core = |r: &Results| r.large.as_ref().and_then(super::Throughput::per_core);
        Ratios {
            rps: div(Some(me.rps()), Some(other.rps())),
            rps_per_core: div(me.rps_per_core(), other.rps_per_core()),
            p99_added_at_50: div(added_for_ratio(me, direct, 0.5), added_for_ratio(other, direct, 0.5)),
            rss_idle: div(me.rss_idle_kib.map(|k| k as f64), other.rss_idle_kib.map(|k| k as f64)),
            large: div(large(me), large(other)),
            large_per_core: div(large_per_core(me), large_per_core(other)),
        }
    }

    /// The ratio table's cells (p99 as given: across phases it is left out).
    fn cells(&self, p99: Option<f64>) -> [Option<f64>; 6] {
        [self.rps, self.rps_per_core, p99, self.rss_idle, self.large, self.large_per_core]
    }
}

/// The header of a ratio table of [`Ratios::cells`].
const RATIO_HEADER: &str = "| vs | req/s | req/s per core | added p99 at 50% | RSS idle | MB/s, large answers | MB/s per core |\n|---|---:|---:|---:|---:|---:|---:|\n";

/// Interceptor ÷ another gateway.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct GatewayRatios {
    /// Keep-alive req/s at saturation.
    rps: Option<f64>,
    rps_per_core: Option<f64>,
    /// p99 added over direct at the fixed rate.
    p99_added: Option<f64>,
    /// Handshakes per second (a new connection per request).
    handshakes: Option<f64>,
    handshakes_per_core: Option<f64>,
}

impl GatewayRatios {
    fn of(me: &GatewayResults, other: &GatewayResults, direct: &GatewayResults) -> GatewayRatios {
        let added = |g: &GatewayResults| added_for_ratio(&g.keep_alive, &direct.keep_alive, RATE_FRACTION);
        GatewayRatios {
            rps: div(Some(me.keep_alive.rps()), Some(other.keep_alive.rps())),
            rps_per_core: div(me.keep_alive.rps_per_core(), other.keep_alive.rps_per_core()),
            p99_added: div(added(me), added(other)),
            handshakes: div(Some(me.handshakes.rps()), Some(other.handshakes.rps())),
            handshakes_per_core: div(me.handshakes.rps_per_core(), other.handshakes.rps_per_core()),
        }
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "nan".into(), |r| format!("{r:.2}"))
}

/// A table row: `name`, then each ratio.
fn ratio_row(md: &mut String, name: &str, ratios: &[Option<f64>]) {
    let cells: Vec<String> = ratios.iter().map(|r| fmt_ratio(*r)).collect();
    let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
}

fn at(r: &Results, fraction: f64) -> Option<&Latency> {
    r.rates.iter().find(|l| (l.fraction - fraction).abs() < 1e-9)
}

/// p99 at `fraction` of the slowest peak minus the direct connection's p99 at the same rate, µs.
fn added_p99(r: &Results, direct: &Results, fraction: f64) -> Option<i64> {
    Some(at(r, fraction)?.p99_us as i64 - at(direct, fraction)?.p99_us as i64)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// Met, not met, or not measured.
fn target(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

fn per_core(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.0}"))
}

fn mesh_markdown(plan: &Plan, results: &[Results], direct: &Results, me: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Bench ({})\n", setup(plan));
    contender_table(&mut md, plan, results, direct);
    let _ = writeln!(md, "\n### Interceptor ÷ each proxy (same run)\n");
    md.push_str(RATIO_HEADER);
    for other in results.iter().filter(|r| r.name != "direct" && r.name != "interceptor") {
        let x = Ratios::of(me, other, direct);
        ratio_row(&mut md, &other.name, &x.cells(x.p99_added_at_50));
    }
    let envoy = results.iter().find(|r| r.name == "envoy");
    let haproxy = results.iter().find(|r| r.name == "haproxy");
    if let (Some(envoy), Some(haproxy)) = (envoy, haproxy) {
        let e = Ratios::of(me, envoy, direct);
        let h = Ratios::of(me, haproxy, direct);
        let _ = writeln!(md, "\n### Targets\n");
        let _ = writeln!(md, "- req/s per proxy core ≥ 1.5× Envoy: {}", target(e.rps_per_core.map(|x| x >= 1.5)));
        let _ = writeln!(md, "- added p99 at 50% load ≤ 0.5× Envoy: {}", target(e.p99_added_at_50.map(|x| x <= 0.5)));
        let _ = writeln!(md, "- RSS with idle connections ≤ 0.5× Envoy: {}", target(e.rss_idle.map(|x| x <= 0.5)));
        let _ = writeln!(md, "- req/s ≥ 1.0× HAProxy: {}", target(h.rps.map(|x| x >= 1.0)));
    }
    md
}

/// The plan as the headings print it.
fn setup(plan: &Plan) -> String {
    format!(
        "{}; {} turns per contender; saturation {} s × {} connections; fixed rates {} s × {} connections; {} binaries",
        if plan.quick { "quick" } else { "full" },
        plan.rounds,
        plan.saturation_seconds,
        plan.connections,
        plan.rate_seconds,
        plan.rate_connections,
        if plan.release { "release" } else { "debug" },
    )
}

/// One row per contender: req/s, CPU, latency, memory.
fn contender_table(md: &mut String, plan: &Plan, results: &[Results], direct: &Results) {
    let _ = writeln!(
        md,
        "| contender | req/s | req/s per proxy core | proxy CPU s / 1k req | p50 / p90 / p99 ms at saturation | p99 ms at 25% / 50% / 75% | added p99 ms at 50% | RSS peak MiB | RSS MiB with {} idle conns | MB/s, {} KiB answers | MB/s per proxy core |",
        plan.idle_connections,
        super::LARGE_BYTES / 1024,
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let s = &r.saturation;
        let p99s: Vec<String> = r.rates.iter().map(|l| ms(l.p99_us)).collect();
        let added = if r.name == "direct" {
            "–".into()
        } else {
            added_p99(r, direct, 0.5).map_or_else(|| "–".into(), |us| format!("{:.2}", us as f64 / 1000.0))
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} / {} / {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.rps(),
            per_core(r.rps_per_core()),
            r.cpu_per_1k().map_or_else(|| "–".into(), |v| format!("{v:.3}")),
            ms(s.p50_us),
            ms(s.p90_us),
            ms(s.p99_us),
            p99s.join(" / "),
            added,
            mib(r.rss_peak_kib),
            mib(r.rss_idle_kib),
            r.large.as_ref().map_or_else(|| "–".into(), |l| format!("{:.0}", l.mb_per_s)),
            per_core(r.large.as_ref().and_then(super::Throughput::per_core)),
        );
    }
    if let Some(l) = at(direct, 0.5) {
        let _ = writeln!(md, "\nFixed rate at 50%: {:.0} req/s offered.", l.offered_rps);
    }
    per_request_table(md, results, 0.5);
}

/// Per request, at saturation and at `fraction`: the whole machine's CPU (client, backends,
/// proxy, kernel: with every core busy it bounds req/s), and the time the proxy waited runnable
/// for a CPU (a share of its latency that is the scheduler's, not its own work).
fn per_request_table<'a>(md: &mut String, results: impl IntoIterator<Item = &'a Results>, fraction: f64) {
    let pct = fraction * 100.0;
    let _ = writeln!(
        md,
        "\n| per request, µs | node CPU at saturation | node CPU at {pct:.0}% | proxy's run-queue wait at saturation | at {pct:.0}% |\n|---|---:|---:|---:|---:|"
    );
    let us = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.1}"));
    for r in results {
        let rated = at(r, fraction);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r.name,
            us(r.saturation.node_cpu_us_per_request),
            us(rated.and_then(|l| l.node_cpu_us_per_request)),
            us(r.saturation.proxy_wait_us_per_request),
            us(rated.and_then(|l| l.proxy_wait_us_per_request)),
        );
    }
}

/// A phase of the fast path against HAProxy (same phase) and against the interceptor without it
/// (`off`, measured in other turns of the same run, when they ran).
struct FastPathPhase {
    /// Its key in `report.json`.
    key: &'static str,
    /// Prefix of its figures on the `BENCH` line.
    prefix: &'static str,
    heading: &'static str,
    /// Where the interceptor without the fast path was measured.
    off_from: &'static str,
    /// Whether issue 17's targets (req/s and added p99 against HAProxy) apply.
    targets: bool,
    /// Whether its per-core figures mean anything (a spliced connection's proxy spends next to no
    /// CPU on it).
    per_core: bool,
}

impl FastPathPhase {
    fn write(
        &self,
        plan: &Plan,
        results: &[Results],
        off: Option<&Results>,
        markdown: &mut String,
        json: &mut serde_json::Map<String, serde_json::Value>,
        bench: &mut Vec<String>,
    ) -> Result<()> {
        let (direct, fast, haproxy) =
            (find(results, "direct")?, find(results, "interceptor-fastpath")?, find(results, "haproxy")?);
        if !markdown.is_empty() {
            markdown.push('\n');
        }
        markdown.push_str(&self.markdown(plan, results, direct, fast, off));
        let vs_haproxy = Ratios::of(fast, haproxy, direct);
        let vs_off = off.map(|off| Ratios::of(fast, off, direct));
        json.insert(
            self.key.into(),
            json!({ "results": results, "off": off, "vs_haproxy": vs_haproxy, "vs_off": vs_off }),
        );
        let p = self.prefix;
        bench.push(format!("{p}_rps_vs_haproxy={}", fmt_ratio(vs_haproxy.rps)));
        if self.per_core {
            bench.push(format!("{p}_rps_per_core_vs_haproxy={}", fmt_ratio(vs_haproxy.rps_per_core)));
        }
        bench.push(format!("{p}_p99_added_vs_haproxy={}", fmt_ratio(vs_haproxy.p99_added_at_50)));
        bench.push(format!("{p}_rps_vs_off={}", fmt_ratio(vs_off.and_then(|x| x.rps))));
        if self.per_core {
            bench.push(format!("{p}_rps_per_core_vs_off={}", fmt_ratio(vs_off.and_then(|x| x.rps_per_core))));
        }
        bench.push(format!("{p}_large_vs_haproxy={}", fmt_ratio(vs_haproxy.large)));
        bench.push(format!("{p}_large_vs_off={}", fmt_ratio(vs_off.and_then(|x| x.large))));
        Ok(())
    }

    /// Its contenders, the fast path ÷ each, and the targets where they apply.
    fn markdown(
        &self,
        plan: &Plan,
        results: &[Results],
        direct: &Results,
        fast: &Results,
        off: Option<&Results>,
    ) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## {} ({})\n", self.heading, setup(plan));
        contender_table(&mut md, plan, results, direct);
        let _ =
            writeln!(md, "\n### Fast path ÷ each (HAProxy: same phase; interceptor without it: {})\n", self.off_from);
        md.push_str(RATIO_HEADER);
        for other in results.iter().filter(|r| r.name == "haproxy").chain(off) {
            let x = Ratios::of(fast, other, direct);
            // Fixed rates are fractions of each phase's slowest contender: across phases the p99s
            // were taken at different offered rates, so only the same phase's ratio is shown.
            let p99 = if other.name == "haproxy" { x.p99_added_at_50 } else { None };
            ratio_row(&mut md, &other.name, &x.cells(p99));
        }
        let haproxy = results.iter().find(|r| r.name == "haproxy");
        if let (true, Some(haproxy)) = (self.targets, haproxy) {
            let h = Ratios::of(fast, haproxy, direct);
            let _ = writeln!(md, "\n### Targets\n");
            let _ = writeln!(md, "- req/s ≥ 1.3× HAProxy: {}", target(h.rps.map(|x| x >= 1.3)));
            let _ =
                writeln!(md, "- added p99 at 50% load ≤ 0.7× HAProxy: {}", target(h.p99_added_at_50.map(|x| x <= 0.7)));
        }
        md
    }
}

fn gateway_markdown(plan: &Plan, results: &[GatewayResults], direct: &GatewayResults, me: &GatewayResults) -> String {
    let mut md = String::new();
    let tls =
        me.tls.as_ref().map_or_else(String::new, |t| format!("{} {}, {}, ", t.protocol, t.cipher, t.key_exchange));
    let _ = writeln!(
        md,
        "## Gateway: HTTPS terminated ({tls}ECDSA P-256 certificate; h2load HTTP/1.1 from outside the mesh; {} turns of {} s; {} connections at saturation, {} at the fixed rate)\n",
        plan.rounds, plan.gateway_seconds, plan.connections, plan.rate_connections,
    );
    let _ = writeln!(
        md,
        "| contender | keep-alive req/s | req/s per proxy core | p50 / p90 / p99 ms at saturation | p99 ms at {pct:.0}% | added p99 ms at {pct:.0}% | handshakes/s | handshakes per proxy core |",
        pct = RATE_FRACTION * 100.0
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for g in results {
        let (k, h) = (&g.keep_alive, &g.handshakes);
        let is_direct = g.name == "direct";
        let dash = || "–".to_owned();
        let s = &k.saturation;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            if is_direct { "direct (plain HTTP, baseline)" } else { g.name.as_str() },
            if is_direct { dash() } else { format!("{:.0}", k.rps()) },
            per_core(k.rps_per_core()),
            if is_direct { dash() } else { format!("{} / {} / {}", ms(s.p50_us), ms(s.p90_us), ms(s.p99_us)) },
            at(k, RATE_FRACTION).map_or_else(dash, |l| ms(l.p99_us)),
            if is_direct {
                dash()
            } else {
                added_p99(k, &direct.keep_alive, RATE_FRACTION)
                    .map_or_else(dash, |us| format!("{:.2}", us as f64 / 1000.0))
            },
            if is_direct { dash() } else { format!("{:.0}", h.rps()) },
            per_core(h.rps_per_core()),
        );
    }
    if let Some(l) = at(&direct.keep_alive, RATE_FRACTION) {
        let _ = writeln!(md, "\nFixed rate: {:.0} req/s offered.", l.offered_rps);
    }
    per_request_table(&mut md, results.iter().map(|g| &g.keep_alive), RATE_FRACTION);
    let _ = writeln!(md, "\n### Interceptor ÷ each gateway (same run)\n");
    md.push_str("| vs | req/s | req/s per core | added p99 | handshakes/s | handshakes per core |\n|---|---:|---:|---:|---:|---:|\n");
    for other in results.iter().filter(|r| r.name != "direct" && r.name != "interceptor") {
        let x = GatewayRatios::of(me, other, direct);
        let ratios = [x.rps, x.rps_per_core, x.p99_added, x.handshakes, x.handshakes_per_core];
        ratio_row(&mut md, &other.name, &ratios);
    }
    let envoy = results.iter().find(|r| r.name == "envoy");
    let haproxy = results.iter().find(|r| r.name == "haproxy");
    if let (Some(envoy), Some(haproxy)) = (envoy, haproxy) {
        let (e, h) = (GatewayRatios::of(me, envoy, direct), GatewayRatios::of(me, haproxy, direct));
        let _ = writeln!(md, "\n### Gateway targets (ahead of Envoy, at HAProxy's level or better)\n");
        let above = |x: Option<f64>, floor: f64| target(x.map(|x| x > floor));
        let at_least = |x: Option<f64>| target(x.map(|x| x >= 1.0));
        let at_most = |x: Option<f64>, ceiling: f64| target(x.map(|x| x <= ceiling));
        let _ = writeln!(md, "- req/s per proxy core > 1.0× Envoy: {}", above(e.rps_per_core, 1.0));
        let _ = writeln!(md, "- req/s per proxy core ≥ 1.0× HAProxy: {}", at_least(h.rps_per_core));
        let _ = writeln!(md, "- added p99 < 1.0× Envoy: {}", target(e.p99_added.map(|x| x < 1.0)));
        let _ = writeln!(md, "- added p99 ≤ 1.0× HAProxy: {}", at_most(h.p99_added, 1.0));
        let _ = writeln!(md, "- handshakes/s > 1.0× Envoy: {}", above(e.handshakes, 1.0));
        let _ = writeln!(md, "- handshakes/s ≥ 1.0× HAProxy: {}", at_least(h.handshakes));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contender(name: &str, rps: f64, p99_at_50: u64, rss_idle: Option<u64>) -> Results {
        Results {
            name: name.into(),
            rps_turns: vec![rps, rps],
            requests: 2000,
            cpu_seconds: Some(1.0),
            rates: vec![Latency { fraction: 0.5, p99_us: p99_at_50, ..Latency::default() }],
            rss_idle_kib: rss_idle,
            ..Results::default()
        }
    }

    #[test]
    fn the_per_request_table_shows_both_loads_and_dashes_what_was_not_measured() {
        let mut me = contender("interceptor", 3000.0, 300, None);
        me.saturation.node_cpu_us_per_request = Some(24.31);
        me.saturation.proxy_wait_us_per_request = Some(2.5);
        me.rates[0].node_cpu_us_per_request = Some(27.2);
        me.rates[0].proxy_wait_us_per_request = Some(4.56);
        let mut direct = contender("direct", 4000.0, 100, None);
        direct.rates[0].node_cpu_us_per_request = Some(9.8);
        let mut md = String::new();
        per_request_table(&mut md, [&direct, &me], 0.5);
        assert!(md.contains("| direct | – | 9.8 | – | – |"), "{md}");
        assert!(md.contains("| interceptor | 24.3 | 27.2 | 2.5 | 4.6 |"), "{md}");
    }

    #[test]
    fn ratios_subtract_the_direct_latency() {
        let direct = contender("direct", 4000.0, 100, None);
        let me = contender("interceptor", 3000.0, 300, Some(10_240));
        let envoy = contender("envoy", 2000.0, 500, Some(40_960));
        let r = Ratios::of(&me, &envoy, &direct);
        assert_eq!(r.rps, Some(1.5));
        assert_eq!(r.p99_added_at_50, Some(0.5));
        assert_eq!(r.rss_idle, Some(0.25));
        assert_eq!(r.rps_per_core, Some(1.0));
        assert_eq!(fmt_ratio(Ratios::of(&me, &direct, &direct).rss_idle), "nan");
        assert_eq!((r.large, r.large_per_core), (None, None), "not measured");
        let large = |mb_per_s: f64, cpu: f64| {
            Some(super::super::Throughput { mb_per_s, megabytes: mb_per_s * 8.0, cpu_seconds: Some(cpu) })
        };
        let me = Results { large: large(900.0, 4.0), ..me };
        let envoy = Results { large: large(600.0, 8.0), ..envoy };
        let r = Ratios::of(&me, &envoy, &direct);
        assert_eq!((r.large, r.large_per_core), (Some(1.5), Some(3.0)));
    }

    #[test]
    fn gateway_ratios_read_keep_alive_and_handshakes() {
        let gateway = |name: &str, rps: f64, p99: u64, handshakes: f64| GatewayResults {
            name: name.into(),
            keep_alive: Results {
                rates: vec![Latency { fraction: RATE_FRACTION, p99_us: p99, ..Latency::default() }],
                ..contender(name, rps, 0, None)
            },
            handshakes: contender(name, handshakes, 0, None),
            tls: None,
        };
        let direct = gateway("direct", 0.0, 100, 0.0);
        let me = gateway("interceptor", 3000.0, 400, 900.0);
        let envoy = gateway("envoy", 2000.0, 700, 600.0);
        let r = GatewayRatios::of(&me, &envoy, &direct);
        assert_eq!((r.rps, r.rps_per_core, r.p99_added), (Some(1.5), Some(1.0), Some(0.5)));
        assert_eq!((r.handshakes, r.handshakes_per_core), (Some(1.5), Some(1.0)));
        let md = gateway_markdown(&Plan::new(true, false), &[direct.clone(), me.clone(), envoy.clone()], &direct, &me);
        assert!(md.contains("| envoy | 1.50 | 1.00 | 0.50 | 1.50 | 1.00 |"), "{md}");
    }
}
