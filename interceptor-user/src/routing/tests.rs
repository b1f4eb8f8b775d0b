use std::path::Path;

use http::HeaderMap;

use super::*;
use crate::config::Severity;
use std::net::SocketAddr;

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
  resolution: STATIC
  endpoints: [{address: 10.244.0.11, labels: {version: v1}},
    {address: 10.244.0.13, labels: {version: v2}}]
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

/// The services above plus `extra`, compiled (other modules' tests use it too).
pub(crate) fn compile(extra: &str) -> Result<RouteTable, ConfigError> {
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
        assert_eq!(&*d.rule.unwrap().label, "default/vs#0");
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
    assert_eq!(&*d.rule.unwrap().label, DEFAULT_RULE);
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
    assert_eq!(table.service_at("10.96.0.10:80".parse().unwrap()).map(|s| &**s), Some(HOST));
    assert_eq!(table.service_for_authority("my-app:80", "default").map(|s| &*s.host), Some(HOST));
}

#[test]
fn a_rule_needs_exactly_one_action() {
    let err = compile(&vs("  - redirect: {uri: /x}\n    route:\n    - destination: {host: my-app}\n")).unwrap_err();
    assert!(err.diagnostics.iter().any(|d| d.field == "spec.http[0]" && d.severity == Severity::Error), "{err}");
    let err = compile(&vs("  - match:\n    - uri: {prefix: /a}\n")).unwrap_err();
    assert!(err.diagnostics.iter().any(|d| d.message.contains("needs one of")), "{err}");
}

/// Property tests: the compiled table agrees with a direct reading of the config, and weighted
/// choice converges to the weights.
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::config::{HttpMatchRequest, StringMatch};

    fn string_match() -> impl Strategy<Value = StringMatch> {
        let lit = "/?[ab]{0,3}";
        prop_oneof![
            lit.prop_map(|s| StringMatch { exact: Some(s), ..Default::default() }),
            lit.prop_map(|s| StringMatch { prefix: Some(s), ..Default::default() }),
            prop_oneof![Just("/a.*"), Just("/(a|b)b?"), Just(".*b"), Just("[ab]+")]
                .prop_map(|r| StringMatch { regex: Some(r.to_owned()), ..Default::default() }),
        ]
    }

    /// Istio refuses an empty prefix in header matches (only `uri` may have one).
    fn header_match() -> impl Strategy<Value = StringMatch> {
        string_match().prop_filter("empty header prefix", |m| m.prefix.as_deref() != Some(""))
    }

    fn block() -> impl Strategy<Value = HttpMatchRequest> {
        (
            proptest::option::of(string_match()),
            proptest::option::of(prop_oneof![Just("GET"), Just("POST")]),
            proptest::option::of(prop_oneof![header_match(), Just(StringMatch::default())]),
            proptest::option::of(header_match()),
            any::<bool>(),
        )
            .prop_map(|(uri, method, header, without, ignore_case)| HttpMatchRequest {
                uri,
                method: method.map(|m| StringMatch { exact: Some(m.to_owned()), ..Default::default() }),
                headers: header.into_iter().map(|h| ("x-a".to_owned(), h)).collect(),
                without_headers: without.into_iter().map(|h| ("x-b".to_owned(), h)).collect(),
                ignore_uri_case: ignore_case,
                ..Default::default()
            })
    }

    fn rules() -> impl Strategy<Value = Vec<Vec<HttpMatchRequest>>> {
        proptest::collection::vec(proptest::collection::vec(block(), 0..3), 1..6)
    }

    fn request() -> impl Strategy<Value = (String, &'static str, Option<String>, Option<String>)> {
        (
            "/[aAbB]{0,4}",
            prop_oneof![Just("GET"), Just("POST")],
            proptest::option::of("/?[ab]{0,3}"),
            proptest::option::of("/?[ab]{0,3}"),
        )
    }

    /// Any weight a config may hold: negative, zero, small, Istio's int32 edge and beyond it.
    fn any_weight() -> impl Strategy<Value = Option<i64>> {
        proptest::option::of(prop_oneof![
            -5i64..=5,
            Just(i64::from(i32::MAX)),
            (i64::from(i32::MAX) - 3)..=(i64::from(i32::MAX) + 3),
            any::<i64>(),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// No weights make a request panic: the config is refused, or every pick (http and tcp)
        /// lands on one of the destinations.
        #[test]
        fn no_weights_make_a_pick_panic(weights in proptest::collection::vec(any_weight(), 1..5)) {
            let dest = |i: usize, w: &Option<i64>| {
                let subset = ["v1", "v2", "v3"][i % 3];
                let weight = w.map(|w| format!(", weight: {w}")).unwrap_or_default();
                format!("    - {{destination: {{host: my-app, subset: {subset}}}{weight}}}\n")
            };
            let dests: String = weights.iter().enumerate().map(|(i, w)| dest(i, w)).collect();
            let Ok(table) = compile(&vs(&format!("  - route:\n{dests}"))) else { return Ok(()) };
            let headers = HeaderMap::new();
            let Some(Action::Route(route)) = get(&table, &headers, "/").rule.map(|r| &r.action) else {
                panic!("a route")
            };
            let sum: f64 = route.probabilities().map(|(_, p)| p).sum();
            prop_assert!((sum - 1.0).abs() < 1e-9, "probabilities sum to {}", sum);
            for _ in 0..50 {
                let picked = route.pick() as *const WeightedTarget;
                prop_assert!(route.targets.iter().any(|t| std::ptr::eq(t, picked)));
            }
            let _ = table.explain(HOST, &RequestView { method: "GET", path: "/", query: None, authority: "my-app", scheme: "http", headers: &headers, port: 80, source: None }).to_string();
        }

        /// The weighted pick itself, for any `u64` weights a caller could build.
        #[test]
        fn weights_pick_within_range_for_any_u64(weights in proptest::collection::vec(any::<u64>(), 0..6)) {
            let targets = weights
                .iter()
                .map(|&weight| WeightedTarget { weight, target: Target::Missing { cluster: "c".into() }, headers: HeaderPolicy::default() })
                .collect();
            match Weights::new(targets) {
                None => prop_assert!(weights.iter().all(|w| *w == 0)),
                Some(w) => {
                    for _ in 0..20 {
                        prop_assert!(w.pick().weight > 0);
                    }
                }
            }
        }

        #[test]
        fn compiled_matching_agrees_with_the_naive_reading(rules in rules(), reqs in proptest::collection::vec(request(), 1..20)) {
            let spec = crate::fuzzing::virtual_service(&rules, "v1");
            let yaml = format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs}}\nspec:\n{}",
                serde_yaml::to_string(&serde_yaml::to_value(&spec).unwrap()).unwrap().lines().map(|l| format!("  {l}\n")).collect::<String>()
            );
            let table = compile(&yaml).unwrap();
            for (path, method, xa, xb) in reqs {
                let mut headers = HeaderMap::new();
                if let Some(v) = &xa { headers.insert("x-a", v.parse().unwrap()); }
                if let Some(v) = &xb { headers.insert("x-b", v.parse().unwrap()); }
                let req = RequestView { method, path: &path, query: None, authority: "my-app", scheme: "http", headers: &headers, port: 80, source: None };
                let got = table.route(HOST, &req).rule.map(|r| r.label.to_string());
                let header = |name: &str| match name { "x-a" => xa.clone(), "x-b" => xb.clone(), _ => None };
                let want = crate::fuzzing::naive_route(&rules, &path, method, &header).map(|i| format!("default/vs#{i}"));
                prop_assert_eq!(got, want, "path {} method {} x-a {:?} x-b {:?}", path, method, xa, xb);
            }
        }

        #[test]
        fn weighted_choice_converges(weights in proptest::collection::vec(1u32..50, 2..5)) {
            let dests: String = weights.iter().enumerate().map(|(i, w)| {
                let subset = ["v1", "v2", "v3"][i % 3];
                format!("    - destination: {{host: my-app, subset: {subset}}}\n      weight: {w}\n")
            }).collect();
            let table = compile(&vs(&format!("  - route:\n{dests}"))).unwrap();
            let n = 20_000u32;
            let mut counts: BTreeMap<usize, u32> = BTreeMap::new();
            let headers = HeaderMap::new();
            let Some(Action::Route(route)) = get(&table, &headers, "/").rule.map(|r| &r.action) else { panic!("a route") };
            for _ in 0..n {
                let picked = route.pick() as *const WeightedTarget;
                let index = route.targets.iter().position(|t| std::ptr::eq(t, picked)).unwrap();
                *counts.entry(index).or_default() += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, w) in weights.iter().enumerate() {
                let p = f64::from(*w) / f64::from(total);
                let expected = f64::from(n) * p;
                // 6σ: a run checks ~800 counts (200 cases × up to 4 destinations), so 4σ would fail
                // a correct picker now and then (p ≈ 6e-5 each); 6σ keeps that below 1e-6 a run
                // while a share off by more than ~1.5 percentage points still fails.
                let margin = 6.0 * (f64::from(n) * p * (1.0 - p)).sqrt() + 1.0;
                let got = f64::from(counts.get(&i).copied().unwrap_or(0));
                prop_assert!((got - expected).abs() <= margin, "destination {} got {} expected {:.0}±{:.0}", i, got, expected, margin);
            }
        }
    }
}

#[test]
fn delegates_take_the_roots_conditions() {
    let root = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: root}\nspec:\n  hosts: [my-app]\n  http:\n  - match:\n    - uri: {prefix: /api}\n    delegate: {name: api}\n  - route:\n    - destination: {host: my-app, subset: v1}\n---\n";
    let delegate = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n  http:\n  - match:\n    - headers:\n        x-beta: {exact: \"1\"}\n    route:\n    - destination: {host: my-app, subset: v2}\n  - route:\n    - destination: {host: my-app, subset: v3}\n";
    let table = compile(&format!("{root}{delegate}")).unwrap();
    let mut headers = HeaderMap::new();
    assert_eq!(subset_of(&get(&table, &headers, "/web")), "v1", "outside the root's match");
    assert_eq!(subset_of(&get(&table, &headers, "/api/x")), "v3");
    headers.insert("x-beta", "1".parse().unwrap());
    let d = get(&table, &headers, "/api/x");
    assert_eq!(subset_of(&d), "v2");
    assert_eq!(&*d.rule.unwrap().label, "default/root#0→default/api#0");
    assert_eq!(subset_of(&get(&table, &headers, "/web")), "v1", "the delegate's rules need the root's /api");
}

#[test]
fn analysis_warns_about_shadowed_rules_and_losing_virtual_services() {
    let second = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: later}\nspec:\n  hosts: [my-app]\n  http:\n  - route:\n    - destination: {host: my-app, subset: v2}\n";
    let first = vs("  - route:\n    - destination: {host: my-app, subset: v1}\n  - match:\n    - uri: {prefix: /never}\n    route:\n    - destination: {host: my-app, subset: v2}\n");
    let table = compile(&format!("{first}{second}")).unwrap();
    let warnings: Vec<String> = table.warnings().iter().map(ToString::to_string).collect();
    assert!(warnings.iter().any(|w| w.contains("spec.http[1]") && w.contains("unreachable")), "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("VirtualService default/later")
                && w.contains("already routed by VirtualService default/vs")),
        "{warnings:#?}"
    );
    assert_eq!(subset_of(&get(&table, &HeaderMap::new(), "/")), "v1", "the older VirtualService wins");
}

#[test]
fn tcp_rules_match_port_and_fall_back_to_the_service() {
    let tcp = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db}\nspec:\n  hosts: [db]\n  addresses: [10.96.0.40]\n  ports: [{number: 5432, name: tcp-pg}]\n  resolution: STATIC\n  endpoints: [{address: 10.244.0.20}]\n";
    let table = compile(tcp).unwrap();
    let host = "db.default.svc.cluster.local";
    assert_eq!(table.protocol(host, 5432), crate::endpoints::Protocol::Tcp);
    let (rule, target) =
        table.route_tcp(host, 5432, "10.96.0.40:5432".parse().unwrap(), "10.244.0.10:1000".parse().unwrap()).unwrap();
    assert_eq!((rule, &**target.name()), (DEFAULT_RULE, "outbound|5432||db.default.svc.cluster.local"));

    // Rules that all miss (another port) leave the connection to the service too, as Istio's
    // sidecar appends the service's own filter chain after them.
    let missing = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db}\nspec:\n  hosts: [db]\n  tcp:\n  - match: [{port: 6432}]\n    route: [{destination: {host: other.example.com}}]\n";
    let table = compile(&format!("{tcp}{missing}")).unwrap();
    let (rule, target) =
        table.route_tcp(host, 5432, "10.96.0.40:5432".parse().unwrap(), "10.244.0.10:1000".parse().unwrap()).unwrap();
    assert_eq!((rule, &**target.name()), (DEFAULT_RULE, "outbound|5432||db.default.svc.cluster.local"));
}

#[test]
fn policy_errors_name_their_field() {
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bad}\nspec:\n  host: other\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      consistentHash: {useSourceIp: true}\n    connectionPool:\n      tcp: {maxConnections: -1, connectTimeout: soon}\n";
    let err = compile(dr).unwrap_err();
    let fields: Vec<&str> =
        err.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "spec.trafficPolicy.loadBalancer",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout"
        ]
    );
}

#[test]
fn a_cluster_config_leaves_out_a_broken_resource_alone() {
    let broken = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken}\nspec:\n  hosts: [other]\n  http:\n  - route:\n    - {destination: {host: my-app}, weight: -1}\n";
    let good = vs("  - route:\n    - destination: {host: my-app, subset: v2}\n");
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("mesh.yaml"), &format!("{SERVICES}---\n{good}---\n{broken}"), "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(RouteTable::compile(&snapshot).is_err(), "files refuse the whole change");

    let (table, applied, rejected) = RouteTable::compile_isolating(
        snapshot,
        &ClusterStates::default(),
        &crate::tls::Credentials::files("/nonexistent"),
    )
    .unwrap();
    assert!(!rejected.is_empty());
    assert!(rejected.iter().all(|d| d.resource == "VirtualService default/broken"), "{rejected:?}");
    assert_eq!(applied.virtual_services.len(), 1);
    let headers = HeaderMap::new();
    let cluster = outcome(&get(&table, &headers, "/")).unwrap();
    assert_eq!(cluster.name.as_ref(), format!("outbound|80|v2|{HOST}"));
}

#[test]
fn weights_are_istios_int32_and_huge_ones_cannot_break_the_pick() {
    let three = |w: &str| {
        vs(&format!(
            "  - route:\n    - {{destination: {{host: my-app, subset: v1}}, weight: {w}}}\n    - {{destination: {{host: my-app, subset: v2}}, weight: {w}}}\n    - {{destination: {{host: my-app, subset: v3}}, weight: {w}}}\n"
        ))
    };
    // Beyond int32: refused, as Istio refuses it (the u64 sum of three such weights wrapped to 0).
    let err = compile(&three("6148914691236517206")).unwrap_err();
    assert!(
        err.diagnostics.iter().any(|d| d.field == "spec.http[0].route[0].weight" && d.message.contains("int32")),
        "{err}"
    );
    // The largest int32 three times: exact thirds, and picking never panics.
    let table = compile(&three(&i32::MAX.to_string())).unwrap();
    let headers = HeaderMap::new();
    let decision = get(&table, &headers, "/");
    let Some(Action::Route(route)) = decision.rule.map(|r| &r.action) else { panic!("a route") };
    for (_, p) in route.probabilities() {
        assert!((p - 1.0 / 3.0).abs() < 1e-9, "{p}");
    }
    for _ in 0..100 {
        let _ = route.pick();
    }
}

/// Two tables over one [`ClusterStates`], as the agent compiles them on a reload.
fn compile_pair(before: &str, after: &str) -> (RouteTable, RouteTable, ClusterStates) {
    let states = ClusterStates::default();
    let parse = |extra: &str| {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        // The ServiceEntry alone: `extra` brings its own DestinationRule.
        let entry = SERVICES.split("---\n").next().unwrap_or_default();
        snapshot.add_file(Path::new("mesh.yaml"), &format!("{entry}---\n{extra}"), "default", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        snapshot
    };
    let old =
        RouteTable::compile_with(&parse(before), &states, &crate::tls::Credentials::files("/nonexistent")).unwrap();
    let new =
        RouteTable::compile_with(&parse(after), &states, &crate::tls::Credentials::files("/nonexistent")).unwrap();
    (old, new, states)
}

fn cluster<'t>(table: &'t RouteTable, name: &str) -> &'t Arc<Cluster> {
    table.clusters().iter().find(|c| &*c.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

const POLICY: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: my-app}\nspec:\n  host: my-app\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100}\n    connectionPool:\n      tcp: {maxConnections: MAX}\n      http: {http1MaxPendingRequests: 1}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

#[test]
fn a_reload_keeps_ejections_counts_cursors_and_pool_slots() {
    let policy = POLICY.replace("MAX", "1");
    let (old, new, _states) = compile_pair(
        &policy,
        &format!("{policy}---\n{}", vs("  - route:\n    - destination: {host: my-app, subset: v2}\n")),
    );
    let name = format!("outbound|80||{HOST}");
    let (before, after) = (cluster(&old, &name), cluster(&new, &name));
    let ejected: SocketAddr = "10.244.0.11:8080".parse().unwrap();
    before.balancer.record(ejected, crate::endpoints::Outcome::Status(500));
    let index = after.balancer.endpoints().iter().position(|e| *e == ejected).unwrap();
    assert!(after.balancer.is_ejected(index), "ejected on the old table, ejected on the new");
    for _ in 0..4 {
        assert_ne!(after.balancer.pick(PickContext::default()).unwrap().0, ejected);
    }
    let held = futures::FutureExt::now_or_never(before.limits.acquire()).unwrap().unwrap();
    let waiting = futures::FutureExt::now_or_never(after.limits.acquire());
    assert!(waiting.is_none(), "the new table's request waits for the old one's slot (pending 1)");
    drop(held);
    assert!(Arc::ptr_eq(&before.mirror_slots, &after.mirror_slots));
}

#[test]
fn a_round_robin_cursor_and_in_flight_counts_carry_over() {
    let policy = POLICY.replace("MAX", "10").replace("consecutive5xxErrors: 1", "consecutive5xxErrors: 5");
    let (old, new, _states) = compile_pair(&policy, &policy.replace("maxConnections: 10", "maxConnections: 20"));
    let name = format!("outbound|80||{HOST}");
    let (first, _in_flight) = cluster(&old, &name).balancer.pick(PickContext::default()).unwrap();
    let (second, _) = cluster(&new, &name).balancer.pick(PickContext::default()).unwrap();
    assert_ne!(first, second, "round robin goes on where the old table stopped");
    let least =
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: my-app}\nspec:\n  host: my-app\n";
    let (old, new, _states) =
        compile_pair(least, &format!("{least}  trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: 5}}}}}}\n"));
    let (busy, _held) = cluster(&old, &name).balancer.pick(PickContext::default()).unwrap();
    for _ in 0..20 {
        assert_ne!(cluster(&new, &name).balancer.pick(PickContext::default()).unwrap().0, busy);
    }
}

#[test]
fn changed_pool_settings_apply_when_the_new_table_serves() {
    let (old, new, _states) = compile_pair(&POLICY.replace("MAX", "1"), &POLICY.replace("MAX", "2"));
    let name = format!("outbound|80||{HOST}");
    let admits = |table: &RouteTable| {
        futures::FutureExt::now_or_never(cluster(table, &name).limits.acquire()).and_then(Result::ok)
    };
    let _held = admits(&old).unwrap();
    let queued = futures::FutureExt::now_or_never(cluster(&new, &name).limits.acquire());
    assert!(queued.is_none(), "still the old threshold: the new table does not serve yet");
    new.apply_limits();
    let _second = admits(&new).unwrap();
    assert!(admits(&old).is_none() && admits(&new).is_none(), "two held: full for both tables");
}

#[test]
fn state_of_clusters_no_table_uses_is_pruned_after_a_compile() {
    let subsets = SERVICES.split("---\n").nth(1).unwrap_or_default();
    let v1 = format!("{subsets}---\n{}", vs("  - route:\n    - destination: {host: my-app, subset: v1}\n"));
    let v2 = format!("{subsets}---\n{}", vs("  - route:\n    - destination: {host: my-app, subset: v2}\n"));
    let (old, new, states) = compile_pair(&v1, &v2);
    let v1_cluster = format!("outbound|80|v1|{HOST}");
    // A request on the old table holds its cluster.
    let request = cluster(&old, &v1_cluster).clone();
    assert!(new.clusters().iter().all(|c| *c.name != *v1_cluster));
    let before = states.len();
    drop(old);
    let mut snapshot = Snapshot::default();
    snapshot.add_file(Path::new("mesh.yaml"), &format!("{SERVICES}---\n{v2}"), "default", &mut Vec::new());
    let third = RouteTable::compile_with(&snapshot, &states, &crate::tls::Credentials::files("/nonexistent")).unwrap();
    assert_eq!(states.len(), before, "a request still running on the old table keeps its cluster's state");
    drop(request);
    let _fourth =
        RouteTable::compile_with(&snapshot, &states, &crate::tls::Credentials::files("/nonexistent")).unwrap();
    assert_eq!(states.len(), before - 1, "then it goes");
    drop((new, third));
}

const SECURE: &str = "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure}
spec:
  hosts: [secure.default.svc.cluster.local]
  addresses: [10.96.0.50]
  ports: [{number: 443, name: tls}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.21, labels: {version: v1}}, {address: 10.244.0.22, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: secure}
spec:
  host: secure.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

/// The rule and cluster a TLS connection to `secure` on `port` naming `sni` gets.
fn tls_to(table: &RouteTable, port: u16, sni: Option<&str>) -> String {
    let (vip, client) = (format!("10.96.0.50:{port}").parse().unwrap(), "10.244.0.10:1000".parse().unwrap());
    match table.route_tls("secure.default.svc.cluster.local", port, vip, client, sni) {
        Some((rule, target)) => format!("{rule} {}", target.name()),
        None => "NR".into(),
    }
}

fn secure_vs(rules: &str) -> String {
    format!(
        "{SECURE}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: secure}}\nspec:\n  hosts: [secure.default.svc.cluster.local, a.example.com, \"*.b.example.com\"]\n{rules}"
    )
}

#[test]
fn tls_rules_match_sni_exactly_or_by_wildcard_in_order() {
    let table = compile(&secure_vs(
        "  tls:
  - match: [{sniHosts: [a.example.com], port: 8443}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v2}}]
  - match: [{sniHosts: [a.example.com]}, {sniHosts: [\"*.b.example.com\"], port: 443}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v1}}]
  - match: [{sniHosts: [\"*.b.example.com\"]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v2}}]
",
    ))
    .unwrap();
    let v1 = "outbound|443|v1|secure.default.svc.cluster.local";
    assert_eq!(tls_to(&table, 443, Some("a.example.com")), format!("default/secure#tls-1 {v1}"));
    assert_eq!(tls_to(&table, 443, Some("A.EXAMPLE.com")), format!("default/secure#tls-1 {v1}"), "case-insensitive");
    assert_eq!(tls_to(&table, 443, Some("x.y.b.example.com")), format!("default/secure#tls-1 {v1}"));
    // The port narrows the first rule away from 443 and the second's wildcard block to 443.
    assert_eq!(
        tls_to(&table, 8443, Some("x.b.example.com")),
        "default/secure#tls-2 outbound|443|v2|secure.default.svc.cluster.local"
    );
    // No tls rule and no tcp rule: the service itself, as Istio's default TCP filter chain.
    assert_eq!(tls_to(&table, 443, Some("b.example.com")), "default outbound|443||secure.default.svc.cluster.local");
    assert_eq!(tls_to(&table, 443, None), "default outbound|443||secure.default.svc.cluster.local");
    assert!(table.has_tls_rules("secure.default.svc.cluster.local"));
    assert!(!table.warnings().iter().any(|d| d.field == "spec.tls"), "{:?}", table.warnings());
    let described = table.describe();
    assert!(described.contains("default/secure#tls-0 (tls)"), "{described}");
}

#[test]
fn tls_without_a_match_falls_through_to_tcp_rules() {
    let table = compile(&secure_vs(
        "  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v1}}]
  tcp:
  - route:
    - {destination: {host: secure.default.svc.cluster.local, subset: v2}, weight: 100}
",
    ))
    .unwrap();
    assert!(tls_to(&table, 443, Some("a.example.com")).ends_with("|v1|secure.default.svc.cluster.local"));
    assert_eq!(
        tls_to(&table, 443, Some("other.example.com")),
        "default/secure#tcp-0 outbound|443|v2|secure.default.svc.cluster.local"
    );
    // Plain TCP never meets the tls rules.
    let (vip, client) = ("10.96.0.50:443".parse().unwrap(), "10.244.0.10:1000".parse().unwrap());
    let (rule, _) = table.route_tcp("secure.default.svc.cluster.local", 443, vip, client).unwrap();
    assert_eq!(rule, "default/secure#tcp-0");
}

#[test]
fn tls_sni_hosts_outside_the_virtual_service_hosts_are_refused() {
    let err = compile(&secure_vs(
        "  tls:
  - match: [{sniHosts: [c.example.com]}]
    route: [{destination: {host: secure.default.svc.cluster.local}}]
",
    ))
    .unwrap_err();
    assert!(
        err.diagnostics.iter().any(|d| d.field == "spec.tls[0].match[0].sniHosts[0]" && d.severity == Severity::Error),
        "{err:?}"
    );
}

#[test]
fn tls_weights_split_across_subsets() {
    let table = compile(&secure_vs(
        "  tls:
  - match: [{sniHosts: [a.example.com]}]
    route:
    - {destination: {host: secure.default.svc.cluster.local, subset: v1}, weight: 75}
    - {destination: {host: secure.default.svc.cluster.local, subset: v2}, weight: 25}
",
    ))
    .unwrap();
    let mut v1 = 0;
    for _ in 0..4000 {
        if tls_to(&table, 443, Some("a.example.com")).contains("|v1|") {
            v1 += 1;
        }
    }
    assert!((2700..3300).contains(&v1), "{v1} of 4000 to v1");
}

#[test]
fn explain_shows_the_tls_decision_for_an_sni() {
    let table = compile(&secure_vs(
        "  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v1}}]
  - match: [{sniHosts: [\"*.b.example.com\"]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v2}}]
",
    ))
    .unwrap();
    let at = |sni| L4View {
        port: 443,
        destination: "10.96.0.50:443".parse().unwrap(),
        source: "10.244.0.10:1000".parse().unwrap(),
        sni: Some(sni),
        gateway: None,
    };
    let text = table.explain_tls("secure.default.svc.cluster.local", &at("x.b.example.com"));
    assert!(text.contains("✘ default/secure#tls-0: no match"), "{text}");
    assert!(text.contains("✔ default/secure#tls-1: MATCHED"), "{text}");
    assert!(text.contains("100.00%  outbound|443|v2|secure.default.svc.cluster.local"), "{text}");
    assert!(text.contains("10.244.0.22:443"), "{text}");
    let text = table.explain_tls("secure.default.svc.cluster.local", &at("c.example.com"));
    assert!(
        text.contains("result: default (no tls or tcp rule matched") && text.contains("outbound|443||secure"),
        "{text}"
    );
}

#[test]
fn passthrough_servers_route_by_the_most_specific_virtual_host_then_rule_order() {
    let gateway = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: pass, namespace: istio-system}
spec:
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [\"*.example.com\"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wide, creationTimestamp: \"2026-01-01T00:00:00Z\"}
spec:
  hosts: [\"*.example.com\"]
  gateways: [istio-system/pass]
  tls:
  - match: [{sniHosts: [\"*.example.com\"], gateways: [mesh]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v1}}]
  - match: [{sniHosts: [\"*.example.com\"], port: 443}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: exact, creationTimestamp: \"2026-02-01T00:00:00Z\"}
spec:
  hosts: [a.example.com]
  gateways: [istio-system/pass]
  tls:
  - match: [{sniHosts: [a.example.com]}]
    route: [{destination: {host: secure.default.svc.cluster.local, subset: v2}}]
";
    let table = compile(&format!("{SECURE}{gateway}")).unwrap();
    let server = ServerId { gateway: "istio-system/pass".into(), index: 0 };
    let at = |sni, port| L4View {
        port,
        destination: "127.0.0.1:443".parse().unwrap(),
        source: "192.0.2.1:1000".parse().unwrap(),
        sni: Some(sni),
        gateway: None,
    };
    let routed = |sni, port| table.route_passthrough(&server, &at(sni, port)).map(|(rule, _)| rule.to_owned());
    // The exact virtual host beats the older wildcard one, as Envoy's server names do.
    assert_eq!(routed("a.example.com", 443).as_deref(), Some("default/exact#tls-0"));
    // The mesh-only block never applies at the gateway; the second rule does.
    assert_eq!(routed("z.example.com", 443).as_deref(), Some("default/wide#tls-1"));
    assert_eq!(routed("z.example.org", 443), None);
    assert_eq!(routed("z.example.com", 8443), None, "no server on 8443");
    let text = table.explain_tls("", &L4View { gateway: Some("istio-system/pass"), ..at("z.example.com", 443) });
    assert!(text.contains("server: istio-system/pass#0 (PASSTHROUGH)"), "{text}");
    assert!(text.contains("✘ default/wide#tls-0") && text.contains("✔ default/wide#tls-1"), "{text}");
}
