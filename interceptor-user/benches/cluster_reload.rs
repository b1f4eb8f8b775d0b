//! One cluster reload off the data path at scale: the stores' objects read into a snapshot
//! (VirtualServices parsed, Services with their EndpointSlices translated) and compiled — the
//! work between a watch event and the swap (issue target: a change applied ≤ 100 ms p99 with
//! 5,000 Services, 50,000 endpoints and 2,000 VirtualServices).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use interceptor::cluster::{service_entries, PodLabels};
use interceptor::config::{ClusterObject, Snapshot};
use interceptor::routing::RouteTable;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};

/// What the reflector stores hold for a cluster of `n` Services (10 endpoints each) and `2n/5`
/// VirtualServices.
struct Stores {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    virtual_services: Vec<(String, Value)>,
}

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

fn stores(n: usize) -> Stores {
    let services = (0..n)
        .map(|i| {
            Arc::new(from(json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {"clusterIP": format!("10.96.{}.{}", i / 256, i % 256),
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            })))
        })
        .collect();
    let slices = (0..n)
        .map(|i| {
            let endpoints: Vec<Value> = (0..10)
                .map(|j| {
                    let e = i * 10 + j;
                    json!({"addresses": [format!("10.{}.{}.{}", 128 + e / 65536, (e / 256) % 256, e % 256)]})
                })
                .collect();
            Arc::new(from(json!({
                "metadata": {"name": format!("svc-{i}-0"), "namespace": "bench",
                             "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": endpoints,
            })))
        })
        .collect();
    let virtual_services = (0..n * 2 / 5)
        .map(|i| {
            let host = format!("svc-{i}");
            let spec = json!({"hosts": [host], "http": [
                {"match": [{"headers": {"x-canary": {"exact": "v1"}}}], "route": [{"destination": {"host": host}}], "timeout": "2s"},
                {"route": [{"destination": {"host": host}}]},
            ]});
            (format!("vs-{i}"), spec)
        })
        .collect();
    Stores { services, slices, virtual_services }
}

fn reload(stores: &Stores) -> RouteTable {
    let mut snapshot = Snapshot::default();
    let mut errors = Vec::new();
    for (name, spec) in &stores.virtual_services {
        let object = ClusterObject {
            api_version: "networking.istio.io/v1",
            kind: "VirtualService",
            namespace: "bench",
            name,
            creation_timestamp: None,
            spec,
        };
        snapshot.add_object(&object, &mut errors);
    }
    snapshot.service_entries.extend(service_entries(&stores.services, &stores.slices, &PodLabels::new()));
    RouteTable::compile_isolating(snapshot, &Default::default(), &interceptor::tls::Credentials::files("/nonexistent"))
        .expect("the synthetic cluster compiles")
        .0
}

fn cluster_reload(c: &mut Criterion) {
    let mut group = c.benchmark_group("cluster_reload");
    group.sample_size(10);
    for n in [500, 5000] {
        let stores = stores(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &stores, |b, s| b.iter(|| black_box(reload(s))));
    }
    group.finish();
}

criterion_group!(benches, cluster_reload);
criterion_main!(benches);
