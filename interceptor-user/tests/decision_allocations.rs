//! The route decision allocates nothing once warm (the "no per-request allocation").

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use interceptor::config::Snapshot;
use interceptor::routing::{RequestView, RouteTable};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = "apiVersion: networking.istio.io/v1
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
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [my-app]
  http:
  - match:
    - headers:
        user-agent: {regex: \".*beta-tester.*\"}
    route:
    - destination: {host: my-app, subset: v2}
  - match:
    - uri: {prefix: /api}
      method: {exact: POST}
    - uri: {regex: \"/items/[0-9]+\"}
    - headers:
        x-tenant: {exact: blue}
    route:
    - destination: {host: my-app, subset: v2}
  - route:
    - destination: {host: my-app, subset: v1}
      weight: 90
    - destination: {host: my-app, subset: v2}
      weight: 10
";

#[test]
fn a_warm_route_decision_does_not_allocate() {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    snapshot.add_file(Path::new("t.yaml"), CONFIG, "default", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let table = RouteTable::compile(&snapshot).unwrap();
    let mut beta = HeaderMap::new();
    beta.insert("user-agent", "Mozilla beta-tester".parse().unwrap());
    beta.insert("x-tenant", "blue".parse().unwrap());
    let plain = HeaderMap::new();
    let host = "my-app.default.svc.cluster.local";
    let requests = [("/items/42", &plain), ("/api/x", &plain), ("/", &beta), ("/other", &plain)];
    let decide = || {
        let mut matched = 0;
        for (path, headers) in requests {
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
            matched += usize::from(table.route(host, &req).rule.is_some());
        }
        matched
    };
    assert_eq!(decide(), 4); // warm-up: lazy regexes, per-thread scratch
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        assert_eq!(decide(), 4);
    }
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed) - before, 0);
}
