//! Route decision and compile time on large VirtualServices (issue targets: decision median
//! ≤ 150 ns on 1,000 mixed rules, compiling 10,000 rules ≤ 50 ms).

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use interceptor::config::Snapshot;
use interceptor::routing::{RequestView, RouteTable};

const SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: my-app}
spec:
  hosts: [my-app.default.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 10.244.0.11, labels: {version: v1}}
  - {address: 10.244.0.13, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: my-app}
spec:
  host: my-app
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

/// `n` rules cycling through prefix, regex (`/r<i>/` then `regex_tail`), header and method+exact
/// matches, then a catch-all.
fn virtual_service(n: usize, regex_tail: &str) -> String {
    let mut yaml = String::from(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: big}\nspec:\n  hosts: [my-app]\n  http:\n",
    );
    for i in 0..n {
        let block = match i % 4 {
            0 => format!("    - uri: {{prefix: /svc{i}/}}\n"),
            1 => format!("    - uri: {{regex: \"/r{i}/{regex_tail}\"}}\n"),
            2 => format!("    - headers:\n        x-tenant: {{exact: tenant-{i}}}\n"),
            _ => format!("    - method: {{exact: POST}}\n      uri: {{exact: /exact/{i}}}\n"),
        };
        let subset = if i % 2 == 0 { "v1" } else { "v2" };
        let _ = write!(yaml, "  - match:\n{block}    route:\n    - destination: {{host: my-app, subset: {subset}}}\n");
    }
    yaml.push_str("  - route:\n    - destination: {host: my-app, subset: v1}\n      weight: 90\n    - destination: {host: my-app, subset: v2}\n      weight: 10\n");
    yaml
}

/// An ASCII-only regex tail, and one with Unicode classes (`.`), as Istio's examples write them.
const ASCII_TAIL: &str = "[a-z]+/[0-9]+";
const DOT_TAIL: &str = ".*beta-tester.*";

fn parse(n: usize, regex_tail: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    let yaml = format!("{SERVICE}{}", virtual_service(n, regex_tail));
    snapshot.add_file(Path::new("bench.yaml"), &yaml, "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    snapshot
}

fn compile(n: usize) -> RouteTable {
    RouteTable::compile(&parse(n, ASCII_TAIL)).expect("the bench config compiles")
}

fn route_decision(c: &mut Criterion) {
    let table = compile(1000);
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", "Mozilla/5.0".parse().unwrap());
    headers.insert("x-tenant", "tenant-502".parse().unwrap());
    let host = "my-app.default.svc.cluster.local";
    let view = |path: &'static str, headers: &'static HeaderMap| RequestView {
        method: "GET",
        path,
        query: None,
        authority: "my-app",
        scheme: "http",
        headers,
        port: 80,
        source: None,
    };
    let headers: &'static HeaderMap = Box::leak(Box::new(headers));
    let empty: &'static HeaderMap = Box::leak(Box::new(HeaderMap::new()));
    let mut group = c.benchmark_group("route_1000_rules");
    let middle = view("/svc500/items", empty);
    group.bench_function("prefix_match_rule_500", |b| {
        b.iter(|| black_box(table.route(host, black_box(&middle)).rule.is_some()))
    });
    let header = view("/nothing", headers);
    group.bench_function("header_match_rule_502", |b| {
        b.iter(|| black_box(table.route(host, black_box(&header)).rule.is_some()))
    });
    let fallthrough = view("/unmatched/path", empty);
    group.bench_function("catch_all_after_1000", |b| {
        b.iter(|| black_box(table.route(host, black_box(&fallthrough)).rule.is_some()))
    });
    group.finish();
}

fn compile_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    let snapshot = parse(10_000, ASCII_TAIL);
    group.bench_function("10000_rules", |b| b.iter(|| black_box(RouteTable::compile(&snapshot).is_ok())));
    let dots = parse(10_000, DOT_TAIL);
    group.bench_function("10000_rules_dot_regexes", |b| b.iter(|| black_box(RouteTable::compile(&dots).is_ok())));
    group.bench_function("10000_rules_with_yaml_parsing", |b| b.iter(|| black_box(compile(10_000))));
    group.finish();
}

criterion_group!(benches, route_decision, compile_time);
criterion_main!(benches);
