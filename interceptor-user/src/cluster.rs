//! The Kubernetes API server as a config source: watches with reflector stores for the Istio
//! kinds, Services, EndpointSlices and pod labels, read into the same [`Snapshot`] files make,
//! and for the Secrets of the agent's own namespace, read as `credentialName` [`Credentials`].

mod events;
mod translate;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{ClusterObject, Diagnostic, Snapshot};
use crate::tls::credential::{check_entries, Entries};
use crate::tls::{Credentials, SecretSet};

pub use events::RejectionReporter;
pub use translate::{pod_workloads, service_entries, PodLabels, SERVICE_NAME_LABEL};

/// The Istio API group.
pub const ISTIO_GROUP: &str = "networking.istio.io";
/// The Istio kinds the agent reads.
pub const ISTIO_KINDS: &[&str] = &["VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry", "Gateway"];
/// Versions tried for each Istio kind, newest first: v1 where served, else v1beta1.
pub const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Secrets never read as credentials, left out of the watch as istiod leaves them out (Helm
/// releases and service-account tokens: the big ones).
const SECRETS_FIELD_SELECTOR: &str = "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";
/// Longest wait between two attempts to reach the API server at start-up.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Why the cluster source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig (or in-cluster service account) could not be read.
    #[error("Kubernetes client config: {0}")]
    Config(String),
}

/// The watched cluster. Cheap to clone; the watches run on the runtime until it stops.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    node_name: Option<String>,
    state: Arc<State>,
}

struct State {
    stores: OnceLock<Stores>,
    /// Why the source is not (or no longer) in sync with the API server; `None` when it is.
    problem: Mutex<Option<String>>,
    /// Every Secret of the agent's namespace as last seen, deleted ones included.
    secrets: Mutex<SecretMemory>,
}

/// Secrets as last seen usable: a deleted Secret's credential keeps serving, as at Istio's
/// gateways (istiod pushes nothing for a Secret that is gone and Envoy keeps the last one it had;
/// istio/istio#45432), until a Secret of that name appears again; a Secret updated into one
/// whose certificate or key does not parse keeps its last good version too (bad input leaves
/// the running state alone), with an error naming the key, until it is fixed.
#[derive(Default)]
struct SecretMemory {
    last: HashMap<String, Entries>,
    deleted: HashSet<String>,
    /// Secrets whose current version is broken while their last good one serves.
    held: HashSet<String>,
}

struct Stores {
    istio: Vec<IstioStore>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<PartialObjectMeta<Pod>>,
    /// This node's pods, whole (their IPs): the clients whose connections the agent captures.
    local_pods: Option<Store<Pod>>,
    /// The Secrets of the agent's namespace: `credentialName` credentials.
    secrets: Store<Secret>,
}

struct IstioStore {
    kind: &'static str,
    resource: ApiResource,
    store: Store<DynamicObject>,
}

impl Cluster {
    /// A client for the API server, from `kubeconfig` or else the environment (in-cluster service
    /// account, `KUBECONFIG`, `~/.kube/config`). Nothing is contacted yet. With `node_name`, the
    /// pods of this node are followed too, so their clients are known by address.
    ///
    /// # Errors
    /// The config cannot be read or names no usable cluster.
    pub async fn connect(kubeconfig: Option<&Path>, node_name: Option<String>) -> Result<Self, ClusterError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|e| ClusterError::Config(e.to_string()))?,
        };
        let client = Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))?;
        let state = State {
            stores: OnceLock::new(),
            problem: Mutex::new(Some("not yet synced".into())),
            secrets: Mutex::default(),
        };
        Ok(Self { client, node_name, state: Arc::new(state) })
    }

    /// Starts following the cluster: finds the Istio kinds' served versions (retrying until the
    /// API server answers), starts one watch per kind, and sends on `changed` once every store
    /// holds its first full list, then after every change.
    pub fn start(&self, changed: mpsc::Sender<&'static str>) {
        let this = self.clone();
        tokio::spawn(async move { this.sync(changed).await });
    }

    async fn sync(self, changed: mpsc::Sender<&'static str>) {
        let mut delay = Duration::from_millis(250);
        let istio = loop {
            match istio_resources(&self.client).await {
                Ok(found) => break found,
                Err(err) => {
                    self.set_problem(Some(format!("cannot reach the Kubernetes API server: {err}")));
                    warn!(%err, retry_in = ?delay, "cannot reach the Kubernetes API server");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        };
        let istio = istio
            .into_iter()
            .map(|(kind, resource)| {
                let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
                let store = self.watch(kind, resource.clone(), watcher(api, watcher_config()), changed.clone());
                IstioStore { kind, resource, store }
            })
            .collect();
        let stores = Stores {
            istio,
            services: self.watch(
                "Service",
                (),
                watcher(Api::all(self.client.clone()), watcher_config()),
                changed.clone(),
            ),
            slices: self.watch(
                "EndpointSlice",
                (),
                watcher(Api::all(self.client.clone()), watcher_config()),
                changed.clone(),
            ),
            // Labels are all subsets need: metadata only, a fraction of a Pod's size.
            pods: self.watch(
                "Pod",
                (),
                watcher(Api::<PartialObjectMeta<Pod>>::all(self.client.clone()), watcher_config()),
                changed.clone(),
            ),
            local_pods: self.node_name.as_ref().map(|node| {
                let config = watcher_config().fields(&format!("spec.nodeName={node}"));
                self.watch("Pod", (), watcher(Api::<Pod>::all(self.client.clone()), config), changed.clone())
            }),
            // Only the agent's own namespace (a Role there grants it): Istio reads a gateway's
            // credentials from the gateway workload's namespace.
            secrets: self.watch(
                "Secret",
                (),
                watcher(
                    Api::<Secret>::default_namespaced(self.client.clone()),
                    watcher_config().fields(SECRETS_FIELD_SELECTOR),
                ),
                changed.clone(),
            ),
        };
        let mut waits: Vec<_> = stores.istio.iter().map(|s| wait_ready(s.store.clone()).boxed()).collect();
        if let Some(local) = &stores.local_pods {
            waits.push(wait_ready(local.clone()).boxed());
        }
        waits.push(wait_ready(stores.services.clone()).boxed());
        waits.push(wait_ready(stores.slices.clone()).boxed());
        waits.push(wait_ready(stores.pods.clone()).boxed());
        waits.push(wait_ready(stores.secrets.clone()).boxed());
        futures::future::join_all(waits).await;
        let _ = self.state.stores.set(stores);
        self.set_problem(None);
        info!("in sync with the Kubernetes API server");
        let _ = changed.send("kubernetes").await;
    }

    /// Starts one watch into a new store; every change (and every error) is reported.
    fn watch<K>(
        &self,
        kind: &'static str,
        dynamic_type: K::DynamicType,
        events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
        changed: mpsc::Sender<&'static str>,
    ) -> Store<K>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let writer = reflector::store::Writer::new(dynamic_type);
        let reader = writer.as_reader();
        // Server-side apply bookkeeping is most of a stored object and nothing reads it.
        let stream = events.default_backoff().modify(|o| o.managed_fields_mut().clear()).reflect(writer);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                        state.recovered(kind);
                        // A full channel already holds a wake-up: the reload reads the stores anew.
                        let _ = changed.try_send("kubernetes");
                    }
                    Ok(_) => {}
                    Err(err) => {
                        warn!(kind, %err, "watch failed; retrying with backoff, the last config keeps serving");
                        *lock(&state.problem) = Some(format!("watching {kind}: {err}"));
                    }
                }
            }
        });
        reader
    }

    /// Why the source is not in sync with the API server (before the first full list, or while a
    /// watch is failing); `None` when it is.
    pub fn problem(&self) -> Option<String> {
        lock(&self.state.problem).clone()
    }

    fn set_problem(&self, problem: Option<String>) {
        *lock(&self.state.problem) = problem;
    }

    /// The cluster as a snapshot, with the errors of objects that could not be parsed (each
    /// left out alone); `None` before the first full sync.
    pub fn snapshot(&self) -> Option<(Snapshot, Vec<Diagnostic>)> {
        let stores = self.state.stores.get()?;
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        for istio in &stores.istio {
            let api_version = istio.resource.api_version.as_str();
            let mut objects = istio.store.state();
            // Stable order (a store is a hash map), so reloads compile the same table.
            objects.sort_by_key(|o| (o.namespace(), o.name_any()));
            for object in objects {
                let spec = object.data.get("spec").unwrap_or(&serde_json::Value::Null);
                let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string());
                snapshot.add_object(
                    &ClusterObject {
                        api_version,
                        kind: istio.kind,
                        namespace: object.metadata.namespace.as_deref().unwrap_or_default(),
                        name: object.metadata.name.as_deref().unwrap_or_default(),
                        creation_timestamp: created.as_deref(),
                        spec,
                    },
                    &mut errors,
                );
            }
        }
        let pods: PodLabels = stores
            .pods
            .state()
            .iter()
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p.labels().clone().into_iter().collect()))
            .collect();
        let mut services = stores.services.state();
        services.sort_by_key(|s| (s.namespace(), s.name_any()));
        snapshot.service_entries.extend(service_entries(&services, &stores.slices.state(), &pods));
        if let Some(local) = &stores.local_pods {
            let mut local = local.state();
            local.sort_by_key(|p| (p.namespace(), p.name_any()));
            snapshot.workload_entries.extend(local.iter().flat_map(|p| pod_workloads(p)));
        }
        Some((snapshot, errors))
    }

    /// The `credentialName` credentials: the Secrets of the agent's namespace (that of its
    /// service account in a pod, else the kubeconfig context's), deleted ones as last seen.
    pub fn credentials(&self) -> Credentials {
        let namespace = self.client.default_namespace().to_owned();
        let current: HashMap<String, Entries> = match self.state.stores.get() {
            None => HashMap::new(),
            Some(stores) => stores
                .secrets
                .state()
                .iter()
                .map(|s| (s.name_any(), s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect()))
                .collect(),
        };
        let mut memory = lock(&self.state.secrets);
        let SecretMemory { last, deleted, held } = &mut *memory;
        for name in last.keys().filter(|n| !current.contains_key(*n)) {
            if deleted.insert(name.clone()) {
                warn!(secret = %format!("{namespace}/{name}"), "Secret deleted: credentials naming it keep serving its last certificate (as Istio's gateways do) until it is created again");
            }
        }
        deleted.retain(|n| !current.contains_key(n));
        held.retain(|n| current.contains_key(n));
        for (name, entries) in current {
            let origin = format!("Secret {namespace}/{name}");
            match (check_entries(&origin, &entries), last.contains_key(&name)) {
                (Err(err), true) => {
                    if held.insert(name.clone()) {
                        error!(%err, "Secret updated into one that does not parse: its last good version keeps serving until it is fixed");
                    }
                }
                // Never good: taken as it is, so whatever uses it says what is wrong.
                (Err(_), false) => {
                    last.insert(name, entries);
                }
                (Ok(()), _) => {
                    held.remove(&name);
                    last.insert(name, entries);
                }
            }
        }
        Credentials::Secrets(Arc::new(SecretSet { namespace, secrets: last.clone() }))
    }

    /// A reference to the object a diagnostic names (`Kind namespace/name`), for its Events.
    pub fn object_reference(&self, resource: &str) -> Option<ObjectReference> {
        let stores = self.state.stores.get()?;
        let (kind, path) = resource.split_once(' ')?;
        let (namespace, name) = path.split_once('/')?;
        if kind == "Service" {
            let service = stores.services.get(&reflector::ObjectRef::new(name).within(namespace))?;
            return Some(service.object_ref(&()));
        }
        let istio = stores.istio.iter().find(|s| s.kind == kind)?;
        let key = reflector::ObjectRef::new_with(name, istio.resource.clone()).within(namespace);
        Some(istio.store.get(&key)?.object_ref(&istio.resource))
    }

    /// A reporter of rejected objects as Events, from `reporting_instance` (the node name).
    pub fn rejection_reporter(&self, reporting_instance: Option<String>) -> RejectionReporter {
        RejectionReporter::new(self.clone(), self.client.clone(), reporting_instance)
    }
}

impl State {
    fn recovered(&self, kind: &str) {
        let mut problem = lock(&self.problem);
        // Called on every watch event: compare without building the message.
        let about_kind = |p: &str| {
            p.strip_prefix("watching ").and_then(|p| p.strip_prefix(kind)).is_some_and(|p| p.starts_with(':'))
        };
        if problem.as_deref().is_some_and(about_kind) {
            info!(kind, "watch resumed");
            *problem = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves a plain value: still usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lists from the API server's watch cache (`resourceVersion=0`): cheap for the API server and
/// etcd, the way kubelets and istiod list.
fn watcher_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

async fn wait_ready<K>(store: Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // Only fails when the writer is gone, i.e. the watch task ended: nothing more to wait for.
    let _ = store.wait_until_ready().await;
}

/// The served version of each Istio kind (v1, else v1beta1). A cluster without Istio's CRDs has
/// none: then only Services are followed, with a warning.
async fn istio_resources(client: &Client) -> Result<Vec<(&'static str, ApiResource)>, kube::Error> {
    let group = match kube::discovery::group(client, ISTIO_GROUP).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(err)) => {
            warn!(%err, "the cluster serves no {ISTIO_GROUP} API (Istio's CRDs are not installed): only Services are followed");
            return Ok(Vec::new());
        }
        Err(err) => return Err(err),
    };
    let mut served: HashMap<&str, Vec<ApiResource>> = HashMap::new();
    for version in ISTIO_VERSIONS {
        for (resource, _) in group.versioned_resources(version) {
            if let Some(kind) = ISTIO_KINDS.iter().find(|k| **k == resource.kind) {
                served.entry(kind).or_default().push(resource);
            }
        }
    }
    Ok(ISTIO_KINDS
        .iter()
        .filter_map(|kind| {
            let resource = served.remove(kind).and_then(|v| v.into_iter().next());
            if resource.is_none() {
                warn!(kind, "not served in {} by the API server; not followed", ISTIO_VERSIONS.join(" or "));
            }
            Some((*kind, resource?))
        })
        .collect())
}
