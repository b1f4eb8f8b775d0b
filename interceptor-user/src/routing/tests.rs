use std::path::Path;

use http::HeaderMap;

use super::*;
use crate::config::Severity;
use crate::endpoints::PickContext;

/// The cluster a decision leads to, or the flag that ends it (test view of the proxy's steps).
fn outcome<'t>(d: &Decision<'t>) -> Result<&'t Arc<Cluster>, (ResponseFlag, String)> {
    let Some(rule) = d.rule else { return Err((ResponseFlag::NR, d.service.to_owned())) };
    match &rule.action {
        Action::Route(route) => match &route.pick().target {
            Target::Cluster(c) => Ok(c),
            Target::Missing { cluster } => Err((ResponseFlag::NC, cluster.to_string())),
        },
        _ => Err((ResponseFlag::NR, "not a route".into())),
    }
}

const SERVICES: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: my-app}
spec:
  hosts: [my-app.default.svc.cluster.local]
  addresses: [10.96.0.10]
  ports: [{number: 80, name: http, targetPort: 8080}]
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
  - {name: v3, labels: {version: v3}}
";

fn compile(extra: &str) -> Result<RouteTable, ConfigError> {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("mesh.yaml"), &format!("{SERVICES}---\n{extra}"), "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    RouteTable::compile(&snapshot)
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n  hosts: [my-app]\n  http:\n{http}"
    )
}

const HOST: &str = "my-app.default.svc.cluster.local";

fn get<'a>(table: &'a RouteTable, headers: &'a HeaderMap, path: &'a str) -> Decision<'a> {
    let req = RequestView {
        method: "GET",
        path,
        query: None,
        authority: "my-app",
        scheme: "http",
        headers,
        port: 80,
        source: None,
    };
    table.route(HOST, &req)
}

fn subset_of(d: &Decision<'_>) -> String {
    match outcome(d) {
        Ok(c) => c.subset.clone(),
        Err((flag, _)) => format!("{flag:?}"),
    }
}

#[test]
fn the_seed_split_converges_to_its_weights() {
    let table = compile(&vs(
        "  - route:\n    - destination: {host: my-app, subset: v1}\n      weight: 90\n    - destination: {host: my-app, subset: v2}\n      weight: 10\n",
    ))
    .unwrap();
    let headers = HeaderMap::new();
    let n = 20_000;
    let v2 = (0..n).filter(|_| subset_of(&get(&table, &headers, "/")) == "v2").count();
    // 99.9% binomial interval of p=0.1, n=20000: ±3.29·sqrt(n·p·(1-p)) ≈ ±140.
    assert!((1860..=2140).contains(&v2), "v2 got {v2} of {n}");
}

#[test]
fn first_matching_rule_wins_and_beta_testers_go_to_v2() {
    let table = compile(&vs(
        "  - match:\n    - headers:\n        user-agent:\n          regex: \".*beta-tester.*\"\n    route:\n    - destination: {host: my-app, subset: v2}\n  - route:\n    - destination: {host: my-app, subset: v1}\n",
    ))
    .unwrap();
    let mut headers = HeaderMap::new();
    assert_eq!(subset_of(&get(&table, &headers, "/")), "v1");
    headers.insert("user-agent", "curl beta-tester".parse().unwrap());
    for _ in 0..100 {
        let d = get(&table, &headers, "/");
        assert_eq!(subset_of(&d), "v2");
        assert_eq!(d.rule.unwrap().label, "default/vs#0");
    }
}

#[test]
fn no_matching_rule_is_404_nr() {
    let table = compile(&vs(
        "  - match:\n    - uri: {prefix: /api}\n    route:\n    - destination: {host: my-app, subset: v1}\n",
    ))
    .unwrap();
    let headers = HeaderMap::new();
    assert_eq!(subset_of(&get(&table, &headers, "/api/x")), "v1");
    let d = get(&table, &headers, "/web");
    assert_eq!(outcome(&d).unwrap_err().0, ResponseFlag::NR);
}

#[test]
fn a_service_without_virtual_service_uses_all_its_endpoints() {
    let table = compile("").unwrap();
    let headers = HeaderMap::new();
    let d = get(&table, &headers, "/");
    assert_eq!(d.rule.unwrap().label, DEFAULT_RULE);
    assert_eq!(outcome(&d).unwrap().balancer.endpoints().len(), 2);
}

#[test]
fn a_subset_the_destination_rule_lacks_is_an_error_with_its_line() {
    let err = compile(&vs("  - route:\n    - destination: {host: my-app, subset: v9}\n")).unwrap_err();
    let d = err.diagnostics.iter().find(|d| d.severity == Severity::Error).unwrap();
    assert_eq!(d.field, "spec.http[0].route[0].destination.subset");
    assert_eq!(d.line, 29, "{d}");
    assert!(d.message.contains("v9") && d.message.contains("v1, v2, v3"), "{d}");
}

#[test]
fn a_subset_without_any_destination_rule_is_503_nc_at_run_time() {
    let other = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: other}\nspec:\n  hosts: [other]\n  ports: [{number: 80, name: http}]\n---\n";
    let table =
        compile(&format!("{other}{}", vs("  - route:\n    - destination: {host: other, subset: v1}\n"))).unwrap();
    assert!(table.warnings().iter().any(|w| w.field.ends_with("destination.subset")));
    let headers = HeaderMap::new();
    let d = get(&table, &headers, "/");
    let (flag, detail) = outcome(&d).unwrap_err();
    assert_eq!((flag, detail.as_str()), (ResponseFlag::NC, "outbound|80|v1|other.default.svc.cluster.local"));
}

#[test]
fn a_subset_without_endpoints_routes_to_an_empty_cluster() {
    let table = compile(&vs("  - route:\n    - destination: {host: my-app, subset: v3}\n")).unwrap();
    assert!(table.warnings().iter().any(|w| w.message.contains("no healthy upstream")));
    let headers = HeaderMap::new();
    let d = get(&table, &headers, "/");
    assert!(outcome(&d).unwrap().balancer.pick(PickContext::default()).is_none());
}

#[test]
fn negative_weights_and_bad_regexes_are_errors_with_fields() {
    let err = compile(&vs(
        "  - match:\n    - uri: {regex: \"(\"}\n    route:\n    - destination: {host: my-app, subset: v1}\n      weight: -5\n    - destination: {host: my-app, subset: v2}\n      weight: 10\n",
    ))
    .unwrap_err();
    let fields: Vec<&str> =
        err.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.field.as_str()).collect();
    assert_eq!(fields, vec!["spec.http[0].match[0].uri", "spec.http[0].route[0].weight"]);
}

#[test]
fn zero_weights_are_dropped_and_weights_are_relative() {
    let table = compile(&vs(
        "  - route:\n    - destination: {host: my-app, subset: v1}\n      weight: 0\n    - destination: {host: my-app, subset: v2}\n      weight: 3\n",
    ))
    .unwrap();
    for _ in 0..200 {
        assert_eq!(subset_of(&get(&table, &HeaderMap::new(), "/")), "v2");
    }
}

#[test]
fn the_capture_set_holds_each_vip_port() {
    let table = compile("").unwrap();
    let set = table.capture_set();
    assert_eq!(set.len(), 1);
    assert!(set.contains_key(&"10.96.0.10:80".parse().unwrap()));
    assert_eq!(table.service_at("10.96.0.10:80".parse().unwrap()), Some(HOST));
    assert_eq!(table.service_for_authority("my-app:80", "default").map(|s| s.host.as_str()), Some(HOST));
}

#[test]
fn a_rule_needs_exactly_one_action() {
    let err = compile(&vs("  - redirect: {uri: /x}\n    route:\n    - destination: {host: my-app}\n")).unwrap_err();
    assert!(err.diagnostics.iter().any(|d| d.field == "spec.http[0]" && d.severity == Severity::Error), "{err}");
    let err = compile(&vs("  - match:\n    - uri: {prefix: /a}\n")).unwrap_err();
    assert!(err.diagnostics.iter().any(|d| d.message.contains("needs one of")), "{err}");
}
