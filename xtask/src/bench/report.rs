//! The bench report: a markdown table and JSON under `target/bench/`, ratios of the interceptor
//! against each proxy from the same run, and the closing `BENCH …` line.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::{Latency, Plan, Results};

/// Added latency below this (µs) counts as this much in ratios.
const ADDED_FLOOR_US: i64 = 50;

/// Writes `report.md` and `report.json` into `dir`, prints the table, and prints the `BENCH` line last.
///
/// # Errors
/// The files cannot be written, or a contender is missing from the results.
pub fn write(plan: &Plan, results: &[Results], dir: &Path) -> Result<()> {
    let get = |name: &str| results.iter().find(|r| r.name == name).with_context(|| format!("no results for {name}"));
    let (direct, me, envoy) = (get("direct")?, get("interceptor")?, get("envoy")?);
    let markdown = markdown(plan, results, direct, me);
    let ratios: Vec<_> = results
        .iter()
        .filter(|r| r.name != "direct" && r.name != "interceptor")
        .map(|other| (other.name.clone(), Ratios::of(me, other, direct)))
        .collect();
    let json = json!({
        "plan": plan,
        "results": results,
        "interceptor_vs": ratios.iter().map(|(n, r)| (n.clone(), json!(r))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(dir.join("report.md"), &markdown)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{markdown}");
    println!("bench: wrote {} and {}", dir.join("report.md").display(), dir.join("report.json").display());
    let vs_envoy = Ratios::of(me, envoy, direct);
    println!(
        "BENCH rps_vs_envoy={} p99_added_vs_envoy={} rss_idle_vs_envoy={}",
        fmt_ratio(vs_envoy.rps),
        fmt_ratio(vs_envoy.p99_added_at_50),
        fmt_ratio(vs_envoy.rss_idle)
    );
    Ok(())
}

/// Interceptor ÷ another contender.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Ratios {
    rps: Option<f64>,
    rps_per_core: Option<f64>,
    p99_added_at_50: Option<f64>,
    rss_idle: Option<f64>,
}

impl Ratios {
    fn of(me: &Results, other: &Results, direct: &Results) -> Ratios {
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        // Below 50 µs the difference is noise on a shared machine; the floor keeps the ratio finite.
        let added = |r: &Results| added_p99(r, direct, 0.5).map(|us| us.max(ADDED_FLOOR_US) as f64);
        Ratios {
            rps: div(Some(me.rps()), Some(other.rps())),
            rps_per_core: div(me.rps_per_core(), other.rps_per_core()),
            p99_added_at_50: div(added(me), added(other)),
            rss_idle: div(me.rss_idle_kib.map(|k| k as f64), other.rss_idle_kib.map(|k| k as f64)),
        }
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "nan".into(), |r| format!("{r:.2}"))
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

fn markdown(plan: &Plan, results: &[Results], direct: &Results, me: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Bench ({}; {} turns per contender; saturation {} s × {} connections; fixed rates {} s × {} connections; {} binaries)\n",
        if plan.quick { "quick" } else { "full" },
        plan.rounds,
        plan.saturation_seconds,
        plan.connections,
        plan.rate_seconds,
        plan.rate_connections,
        if plan.release { "release" } else { "debug" },
    );
    let _ = writeln!(
        md,
        "| contender | req/s | req/s per proxy core | proxy CPU s / 1k req | p50 / p90 / p99 ms at saturation | p99 ms at 25% / 50% / 75% | added p99 ms at 50% | RSS peak MiB | RSS MiB with {} idle conns |",
        plan.idle_connections
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
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
            "| {} | {:.0} | {} | {} | {} / {} / {} | {} | {} | {} | {} |",
            r.name,
            r.rps(),
            r.rps_per_core().map_or_else(|| "–".into(), |v| format!("{v:.0}")),
            r.cpu_per_1k().map_or_else(|| "–".into(), |v| format!("{v:.3}")),
            ms(s.p50_us),
            ms(s.p90_us),
            ms(s.p99_us),
            p99s.join(" / "),
            added,
            mib(r.rss_peak_kib),
            mib(r.rss_idle_kib),
        );
    }
    if let Some(l) = at(direct, 0.5) {
        let _ = writeln!(md, "\nFixed rate at 50%: {:.0} req/s offered.", l.offered_rps);
    }
    let _ = writeln!(md, "\n### Interceptor ÷ each proxy (same run)\n");
    md.push_str("| vs | req/s | req/s per core | added p99 at 50% | RSS idle |\n|---|---:|---:|---:|---:|\n");
    for other in results.iter().filter(|r| r.name != "direct" && r.name != "interceptor") {
        let x = Ratios::of(me, other, direct);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            other.name,
            fmt_ratio(x.rps),
            fmt_ratio(x.rps_per_core),
            fmt_ratio(x.p99_added_at_50),
            fmt_ratio(x.rss_idle)
        );
    }
    let target = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
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
    }
}
