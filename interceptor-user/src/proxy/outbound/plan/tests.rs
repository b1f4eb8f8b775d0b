//! Requests → plans, table-driven: what the proxy decides, before any I/O.

use http::{HeaderMap, Method};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;

/// A service whose subset hashes (with the services `routing`'s tests define), and the rules.
const CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: sticky}
spec:
  hosts: [sticky.default.svc.cluster.local]
  addresses: [10.96.0.20]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.21}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sticky}
spec:
  host: sticky
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: my-app}
spec:
  hosts: [my-app]
  http:
  - match: [{uri: {prefix: /direct}}]
    directResponse: {status: 418, body: {string: teapot}}
  - match: [{uri: {prefix: /redirect}}]
    redirect: {uri: /new, authority: elsewhere}
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 100}}}
    route: [{destination: {host: my-app, subset: v1}}]
  - match: [{uri: {prefix: /cors}}]
    corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET]}
    route: [{destination: {host: my-app, subset: v1}}]
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: my-app, subset: v1}}]
  - match: [{uri: {prefix: /split}}]
    route:
    - {destination: {host: my-app, subset: v1}, weight: 50}
    - {destination: {host: my-app, subset: v2}, weight: 50}
  - match: [{uri: {prefix: /mirror}}]
    route: [{destination: {host: my-app, subset: v1}}]
    mirror: {host: my-app, subset: v2}
  - match: [{uri: {prefix: /headers}}]
    headers: {request: {set: {x-a: '1'}}}
    route: [{destination: {host: my-app, subset: v1}}]
  - match: [{uri: {prefix: /sticky}}]
    route: [{destination: {host: sticky}}]
  - match: [{uri: {prefix: /timeout}}]
    timeout: 1s
    route: [{destination: {host: my-app, subset: v1}}]
  - match: [{uri: {prefix: /plain}}]
    route: [{destination: {host: my-app, subset: v1}}]
";

const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 80);

fn table() -> RouteTable {
    crate::routing::tests::compile(CONFIG).unwrap()
}

/// `method path` with `headers`, from a pod, to `authority` (captured on its way to the VIP when `captured`).
fn request<'r>(
    method: &'r Method,
    authority: &'r str,
    path: &'r str,
    headers: &'r HeaderMap,
    captured: bool,
) -> PlanRequest<'r> {
    PlanRequest {
        method,
        authority,
        path_and_query: path,
        headers,
        client: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5)),
        original: captured.then_some(VIP),
        namespace: "default",
        gateway: None,
    }
}

/// A plan in short: whether the relay may take it, then `forward <cluster>` or `reply <status> <flag>`.
fn summary(table: &RouteTable, method: &Method, path: &str, headers: &HeaderMap, seed: u64) -> String {
    let req = request(method, "my-app", path, headers, true);
    let routed = route(table, &req);
    let relay = if routed.relayable() { "relay" } else { "hyper" };
    let plan = plan(routed, &req, &mut StdRng::seed_from_u64(seed));
    match plan.outcome {
        Outcome::Forward(f) => {
            let cluster = if f.cluster.subset.is_empty() { &f.cluster.host } else { &f.cluster.subset };
            let mut s = format!("{relay} forward {cluster}");
            if let Some(p) = f.path_and_query {
                s.push_str(&format!(" {p}"));
            }
            for m in f.mirrors {
                s.push_str(&format!(" mirror {}", m.subset));
            }
            s
        }
        Outcome::Reply(r) => {
            let flag = r.flag.map_or("-", |f| f.as_str());
            let location = r.headers.get("location").map(|l| format!(" {}", l.to_str().unwrap())).unwrap_or_default();
            format!("{relay} reply {} {flag}{location}", r.status.as_u16())
        }
    }
}

#[test]
fn requests_become_plans() {
    let table = table();
    let none = HeaderMap::new();
    let get = Method::GET;
    for (path, expected) in [
        ("/plain", "relay forward v1"),
        ("/direct", "hyper reply 418 -"),
        ("/redirect?a=1", "hyper reply 301 - http://elsewhere/new?a=1"),
        ("/abort", "hyper reply 500 FI"),
        ("/cors", "hyper forward v1"),
        ("/old/x?q=1", "hyper forward v1 /new/x?q=1"),
        ("/mirror", "hyper forward v1 mirror v2"),
        ("/headers", "hyper forward v1"),
        ("/sticky", "hyper forward sticky.default.svc.cluster.local"),
        ("/timeout", "hyper forward v1"),
        ("/nothing", "hyper reply 404 NR"),
    ] {
        assert_eq!(summary(&table, &get, path, &none, 1), expected, "{path}");
    }
}

#[test]
fn the_weighted_pick_follows_the_draws() {
    let table = table();
    let none = HeaderMap::new();
    let picks: Vec<String> = (0..64).map(|seed| summary(&table, &Method::GET, "/split", &none, seed)).collect();
    // Same draws, same plan; both destinations drawn over a few seeds; the route relayable throughout.
    assert_eq!(picks, (0..64).map(|seed| summary(&table, &Method::GET, "/split", &none, seed)).collect::<Vec<_>>());
    assert!(picks.iter().any(|p| p == "relay forward v1"));
    assert!(picks.iter().any(|p| p == "relay forward v2"));
    assert!(picks.iter().all(|p| p.starts_with("relay forward ")));
}

#[test]
fn cors_preflights_are_answered_and_allowed_origins_marked() {
    let table = table();
    let mut preflight = HeaderMap::new();
    preflight.insert("origin", "https://a.example".parse().unwrap());
    preflight.insert("access-control-request-method", "GET".parse().unwrap());
    assert_eq!(summary(&table, &Method::OPTIONS, "/cors", &preflight, 1), "hyper reply 200 -");
    let req = request(&Method::GET, "my-app", "/cors", &preflight, true);
    let plan = decide(&table, &req, &mut StdRng::seed_from_u64(1));
    assert_eq!(plan.cors.map(|(_, origin)| origin), Some("https://a.example".parse().unwrap()));
    assert!(plan.response_headers.is_some());
}

#[test]
fn unknown_services_are_no_route() {
    let table = table();
    let none = HeaderMap::new();
    let req = request(&Method::GET, "unknown", "/", &none, false);
    let routed = route(&table, &req);
    assert!(!routed.relayable());
    let plan = plan(routed, &req, &mut StdRng::seed_from_u64(1));
    assert!(plan.service.is_none());
    assert!(matches!(plan.outcome, Outcome::Reply(LocalReply { flag: Some(ResponseFlag::NR), .. })));
}
