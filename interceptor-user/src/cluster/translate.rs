//! Kubernetes Services, their EndpointSlices and the labels of the pods behind them, read the way
//! Istio reads them: one ServiceEntry per Service, so the rest of the agent sees one model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{ObjectMeta, Resource, ServiceEntry, ServicePort, Source, WorkloadEntry};
use crate::endpoints::CLUSTER_DOMAIN;

/// The label the endpointslice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The API server's own Service, never captured.
pub const API_SERVER_SERVICE: (&str, &str) = ("default", "kubernetes");

/// Labels of every pod, by (namespace, name): subsets select endpoints by their pod's labels.
pub type PodLabels = HashMap<(String, String), BTreeMap<String, String>>;

/// One ServiceEntry per Service that has ClusterIP semantics (headless ones get no address, so
/// they are routable by host but never captured; ExternalName ones are skipped).
pub fn service_entries(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pods: &PodLabels,
) -> Vec<Resource<ServiceEntry>> {
    let mut slices_of: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue; // mirrored or hand-made slices without an owner Service
        };
        let namespace = slice.metadata.namespace.as_deref().unwrap_or_default();
        slices_of.entry((namespace, service.as_str())).or_default().push(slice);
    }
    services
        .iter()
        .filter_map(|service| {
            let namespace = service.metadata.namespace.as_deref()?;
            let name = service.metadata.name.as_deref()?;
            let slices = slices_of.get(&(namespace, name)).map(Vec::as_slice).unwrap_or_default();
            service_entry(service, namespace, name, slices, pods)
        })
        .collect()
}

fn service_entry(
    service: &Service,
    namespace: &str,
    name: &str,
    slices: &[&EndpointSlice],
    pods: &PodLabels,
) -> Option<Resource<ServiceEntry>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let addresses = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => Vec::new(),
    };
    // Headless (`None`): no VIP to capture. A dual-stack Service has one of each family: both.
    let mut addresses: Vec<String> =
        addresses.into_iter().filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()).collect();
    if (namespace, name) == API_SERVER_SERVICE {
        // The agent's own watches go to this address (in-cluster config): captured, they would
        // run through the agent's own proxy and stop with it.
        addresses.clear();
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| ServicePort {
            number: u32::try_from(p.port).unwrap_or(0),
            protocol: p.app_protocol.as_deref().map(app_protocol).unwrap_or_default(),
            name: p.name.clone().unwrap_or_default(),
            // A named target port differs per pod: each endpoint carries its own number.
            target_port: match &p.target_port {
                Some(IntOrString::Int(n)) => u32::try_from(*n).ok(),
                _ => None,
            },
        })
        .collect::<Vec<_>>();
    if ports.is_empty() {
        return None; // UDP or SCTP only: nothing the proxy carries
    }
    Some(Resource {
        meta: ObjectMeta { name: name.to_owned(), namespace: namespace.to_owned(), ..ObjectMeta::default() },
        spec: ServiceEntry {
            hosts: vec![format!("{name}.{namespace}.{CLUSTER_DOMAIN}")],
            addresses,
            ports,
            location: Some("MESH_INTERNAL".into()),
            resolution: Some("STATIC".into()),
            endpoints: endpoints(slices, namespace, pods),
            ..ServiceEntry::default()
        },
        source: Source::cluster(format!("Service {namespace}/{name}")),
    })
}

/// Ready endpoints of the IPv4 and IPv6 slices, one per address (duplicates across slices merged), each
/// with the slice's port numbers by Service port name and the labels of its pod.
fn endpoints(slices: &[&EndpointSlice], namespace: &str, pods: &PodLabels) -> Vec<WorkloadEntry> {
    let mut by_address: BTreeMap<String, WorkloadEntry> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue; // FQDN slices name hosts, not addresses
        }
        let ports: BTreeMap<String, u32> = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u32::try_from(p.port?).ok()?)))
            .collect();
        for endpoint in &slice.endpoints {
            // Kubernetes: an absent `ready` means ready.
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let labels = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let pod_namespace = r.namespace.as_deref().unwrap_or(namespace);
                    pods.get(&(pod_namespace.to_owned(), r.name.clone()?))
                })
                .cloned()
                .unwrap_or_default();
            for address in &endpoint.addresses {
                let entry = by_address.entry(address.clone()).or_insert_with(|| WorkloadEntry {
                    address: address.clone(),
                    labels: labels.clone(),
                    ..WorkloadEntry::default()
                });
                entry.ports.extend(ports.iter().map(|(k, v)| (k.clone(), *v)));
            }
        }
    }
    by_address.into_values().collect()
}

/// A running pod of this node as workloads: one per IP (a dual-stack pod has one of each family,
/// and its client connections come from either), each with its labels and namespace, so rules
/// with `sourceLabels` / `sourceNamespace` know the clients the agent captures (and a
/// ServiceEntry's `workloadSelector` selects pods, as in Istio).
pub fn pod_workloads(pod: &Pod) -> Vec<Resource<WorkloadEntry>> {
    let (Some(namespace), Some(name), Some(status)) =
        (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref(), pod.status.as_ref())
    else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    // `podIPs` lists `podIP` first; older API servers set only `podIP`.
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut addresses: Vec<&str> = status.pod_ip.as_deref().into_iter().chain(listed).collect();
    addresses.retain(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    addresses.dedup();
    addresses
        .into_iter()
        .map(|address| Resource {
            meta: ObjectMeta { name: name.to_owned(), namespace: namespace.to_owned(), ..ObjectMeta::default() },
            spec: WorkloadEntry {
                address: address.to_owned(),
                labels: pod.metadata.labels.clone().unwrap_or_default().into_iter().collect(),
                ..WorkloadEntry::default()
            },
            source: Source::cluster(format!("Pod {namespace}/{name}")),
        })
        .collect()
}

/// Istio's reading of `appProtocol`: the Kubernetes-defined names, else the protocol by name.
fn app_protocol(value: &str) -> String {
    match value {
        "kubernetes.io/h2c" => "HTTP2".into(),
        "kubernetes.io/ws" => "HTTP".into(),
        "kubernetes.io/wss" => "HTTPS".into(),
        other => other.to_ascii_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Snapshot;
    use crate::endpoints::{Protocol, Registry};

    fn service(yaml: &str) -> Arc<Service> {
        Arc::new(serde_yaml::from_str(yaml).unwrap())
    }

    fn slice(yaml: &str) -> Arc<EndpointSlice> {
        Arc::new(serde_yaml::from_str(yaml).unwrap())
    }

    const MY_APP: &str = "
metadata: {name: my-app, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: metrics, port: 9090, targetPort: 9090, appProtocol: kubernetes.io/h2c}
  - {name: dns, port: 53, protocol: UDP}
";

    const MY_APP_SLICE: &str = "
metadata:
  name: my-app-abcde
  namespace: default
  labels: {kubernetes.io/service-name: my-app}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9090}]
endpoints:
- addresses: [10.244.0.11]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: my-app-v1-a, namespace: default}
- addresses: [10.244.0.13]
  targetRef: {kind: Pod, name: my-app-v2, namespace: default}
- addresses: [10.244.0.14]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: my-app-v2-starting, namespace: default}
";

    fn pods() -> PodLabels {
        let labels = |v: &str| BTreeMap::from([("app".into(), "my-app".into()), ("version".into(), v.into())]);
        PodLabels::from([
            (("default".into(), "my-app-v1-a".into()), labels("v1")),
            (("default".into(), "my-app-v2".into()), labels("v2")),
            (("default".into(), "my-app-v2-starting".into()), labels("v2")),
        ])
    }

    #[test]
    fn a_service_is_its_cluster_ip_ports_and_ready_endpoints_with_pod_labels() {
        let entries = service_entries(&[service(MY_APP)], &[slice(MY_APP_SLICE)], &pods());
        assert_eq!(entries.len(), 1);
        let se = &entries[0];
        assert_eq!(se.source.resource, "Service default/my-app");
        assert_eq!(se.spec.hosts, ["my-app.default.svc.cluster.local"]);
        assert_eq!(se.spec.addresses, ["10.96.0.10"]);
        // UDP is not proxied; appProtocol wins over the name.
        let ports: Vec<_> = se.spec.ports.iter().map(|p| (p.number, p.name.as_str(), p.protocol.as_str())).collect();
        assert_eq!(ports, [(80, "http", ""), (9090, "metrics", "HTTP2")]);
        let addresses: Vec<_> = se.spec.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, ["10.244.0.11", "10.244.0.13"], "not-ready endpoints are left out");
        assert_eq!(se.spec.endpoints[1].labels["version"], "v2");
        assert_eq!(se.spec.endpoints[0].ports["http"], 8080, "named target ports resolve per endpoint");

        // Through the same registry as files: subsets by labels, the named port on the endpoint.
        let snapshot = Snapshot { service_entries: entries, ..Snapshot::default() };
        let mut diagnostics = Vec::new();
        let registry = Registry::build(&snapshot, &mut diagnostics);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let svc = registry.service("my-app.default.svc.cluster.local").unwrap();
        let http = svc.port(80).unwrap();
        assert_eq!(http.protocol, Protocol::Http);
        let v2 = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        assert_eq!(svc.endpoint_addrs(http, &v2), ["10.244.0.13:8080".parse().unwrap()]);
    }

    #[test]
    fn headless_services_are_not_captured_and_external_names_are_skipped() {
        let headless = service(
            "metadata: {name: db, namespace: data}\nspec: {clusterIP: None, ports: [{name: tcp-db, port: 5432}]}\n",
        );
        let external =
            service("metadata: {name: ext, namespace: data}\nspec: {type: ExternalName, externalName: example.com}\n");
        let entries = service_entries(&[headless, external], &[], &PodLabels::new());
        assert_eq!(entries.len(), 1);
        assert!(entries[0].spec.addresses.is_empty());
        assert_eq!(entries[0].spec.hosts, ["db.data.svc.cluster.local"]);
    }

    #[test]
    fn running_pods_are_workloads_by_ip_with_their_labels() {
        let pod = |phase: &str, ip: &str| -> Pod {
            serde_yaml::from_str(&format!(
                "metadata: {{name: client, namespace: shop, labels: {{app: web}}}}\nstatus: {{phase: {phase}, podIP: \"{ip}\"}}\n"
            ))
            .unwrap()
        };
        let workloads = pod_workloads(&pod("Running", "10.244.0.10"));
        let workload = &workloads[0];
        assert_eq!((workload.spec.address.as_str(), workload.meta.namespace.as_str()), ("10.244.0.10", "shop"));
        assert_eq!(workload.spec.labels["app"], "web");
        assert_eq!(workload.source.resource, "Pod shop/client");
        assert!(pod_workloads(&pod("Succeeded", "10.244.0.10")).is_empty());
        assert_eq!(pod_workloads(&pod("Running", "fd00::1"))[0].spec.address, "fd00::1");
        assert!(pod_workloads(&pod("Running", "not-an-ip")).is_empty());
        let dual: Pod = serde_yaml::from_str(
            "metadata: {name: client, namespace: shop}\nstatus: {phase: Running, podIP: 10.244.0.10, podIPs: [{ip: 10.244.0.10}, {ip: \"fd00:10:244::10\"}]}\n",
        )
        .unwrap();
        let addresses: Vec<_> = pod_workloads(&dual).into_iter().map(|w| w.spec.address).collect();
        assert_eq!(addresses, ["10.244.0.10", "fd00:10:244::10"]);
    }

    #[test]
    fn the_api_servers_own_service_is_never_captured() {
        let api = service(
            "metadata: {name: kubernetes, namespace: default}\nspec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443}]}\n",
        );
        let entries = service_entries(&[api], &[], &PodLabels::new());
        assert!(entries[0].spec.addresses.is_empty());
        assert_eq!(entries[0].spec.hosts, ["kubernetes.default.svc.cluster.local"]);
    }

    #[test]
    fn a_dual_stack_service_is_both_cluster_ips_with_the_endpoints_of_both_slices() {
        let dual = MY_APP.replace("clusterIPs: [10.96.0.10]", "clusterIPs: [10.96.0.10, \"fd00:10:96::10\"]");
        let v6 = MY_APP_SLICE
            .replace("my-app-abcde", "my-app-fghij")
            .replace("addressType: IPv4", "addressType: IPv6")
            .replace("10.244.0.", "\"fd00:10:244::")
            .replace("]\n  ", "\"]\n  ");
        let entries = service_entries(&[service(&dual)], &[slice(MY_APP_SLICE), slice(&v6)], &pods());
        let se = &entries[0];
        assert_eq!(se.spec.addresses, ["10.96.0.10", "fd00:10:96::10"]);
        let addresses: Vec<_> = se.spec.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, ["10.244.0.11", "10.244.0.13", "fd00:10:244::11", "fd00:10:244::13"]);
        assert_eq!(se.spec.endpoints[3].labels["version"], "v2", "IPv6 endpoints carry their pod's labels");

        let snapshot = Snapshot { service_entries: entries, ..Snapshot::default() };
        let mut diagnostics = Vec::new();
        let registry = Registry::build(&snapshot, &mut diagnostics);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let svc = registry.service("my-app.default.svc.cluster.local").unwrap();
        assert_eq!(svc.vips, ["10.96.0.10".parse::<std::net::IpAddr>().unwrap(), "fd00:10:96::10".parse().unwrap()]);
    }

    #[test]
    fn slices_of_other_services_namespaces_and_address_types_are_ignored() {
        let other_ns = MY_APP_SLICE.replace("namespace: default\n  labels", "namespace: prod\n  labels");
        let fqdn = MY_APP_SLICE.replace("addressType: IPv4", "addressType: FQDN");
        let entries = service_entries(&[service(MY_APP)], &[slice(&other_ns), slice(&fqdn)], &pods());
        assert!(entries[0].spec.endpoints.is_empty());
    }
}
