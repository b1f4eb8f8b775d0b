//! The running agent: loads config and capture, serves the proxy, applies config changes live,
//! and shuts down cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

mod metrics;

use crate::admin::{Admin, AdminState, AppliedConfig, KernelCollector};
use crate::bpf::{BpfError, Capture, CaptureCounters, CaptureKind, CaptureSettings};
use crate::cluster::{Cluster, RejectionReporter};
use crate::config::{CaptureMode, ConfigError, Diagnostic, FailurePolicy, Settings, Snapshot};
use crate::endpoints::ClusterStates;
use crate::proxy::gateway::GatewayListeners;
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::{upstream_client, Proxy, ProxyInputs};
use crate::routing::RouteTable;
use crate::tls::Credentials;

/// How long in-flight requests may take to finish after SIGTERM.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Quiet time after a file change before reloading, so an editor's burst of writes is one reload.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(150);
/// Quiet time after a cluster change: short, since watch events arrive whole (a `kubectl apply`
/// of many objects is still one burst) and a change should apply within 100 ms.
pub const CLUSTER_DEBOUNCE: Duration = Duration::from_millis(20);

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config was refused at start-up.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The proxy listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address asked for.
        addr: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// Loading, attaching or syncing the kernel programs failed.
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The capabilities not needed after start-up could not be dropped.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// Watching the config directory or installing signal handlers failed.
    #[error("cannot watch {what}: {source}")]
    Watch {
        /// What could not be watched.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where the agent's Istio resources come from.
#[derive(Clone)]
pub enum Resources {
    /// A directory of YAML files: a broken change is refused whole.
    Files(PathBuf),
    /// The Kubernetes API server: a broken object is left out alone (Istio's behaviour).
    Cluster(Cluster),
}

/// A config ready to apply.
struct Loaded {
    table: RouteTable,
    snapshot: Snapshot,
    /// Errors of the objects left out (cluster source only).
    rejected: Vec<Diagnostic>,
}

impl Resources {
    /// Reads and compiles the current resources, the clusters keeping their state from
    /// `states`, and reads the certificates of the gateway servers this agent serves; `None`
    /// while the cluster is not yet synced.
    fn load(&self, settings: &Settings, states: &ClusterStates) -> Result<Option<Loaded>, ConfigError> {
        match self {
            Resources::Files(dir) => {
                let snapshot = Snapshot::load_dir(dir, &settings.namespace)?;
                let credentials = Credentials::files(&settings.credentials);
                let mut table = RouteTable::compile_with(&snapshot, states, &credentials)?;
                let tls_errors = crate::proxy::gateway::prepare(&mut table, settings, &credentials);
                if !tls_errors.is_empty() {
                    return Err(ConfigError { diagnostics: tls_errors });
                }
                Ok(Some(Loaded { table, snapshot, rejected: Vec::new() }))
            }
            Resources::Cluster(cluster) => {
                let Some((snapshot, mut rejected)) = cluster.snapshot() else { return Ok(None) };
                // `credentialName`s are Secrets of the agent's namespace.
                let credentials = cluster.credentials();
                let (mut table, snapshot, left_out) = RouteTable::compile_isolating(snapshot, states, &credentials)?;
                rejected.extend(left_out);
                // A server whose certificates cannot be read refuses its handshakes alone.
                rejected.extend(crate::proxy::gateway::prepare(&mut table, settings, &credentials));
                Ok(Some(Loaded { table, snapshot, rejected }))
            }
        }
    }

    fn debounce(&self) -> Duration {
        match self {
            Resources::Files(_) => RELOAD_DEBOUNCE,
            Resources::Cluster(_) => CLUSTER_DEBOUNCE,
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
///
/// With files, a config that does not load stops the start; with the cluster, the agent starts
/// with nothing captured and becomes ready once the API server's objects are in.
///
/// # Errors
/// Start-up failures; once serving, errors (bad reloads, failed syncs) are logged and survived.
pub async fn run(settings: Settings, resources: Resources) -> Result<(), AgentError> {
    let (reload_tx, mut reload_rx) = mpsc::channel::<&'static str>(16);
    // Runtime state of clusters and endpoints (counts, ejections, pool limiters), which every
    // table takes over from the one before it.
    let states = Arc::new(ClusterStates::default());
    let first = match &resources {
        Resources::Files(_) => resources.load(&settings, &states)?,
        Resources::Cluster(_) => None,
    };
    let (table, snapshot) = match first {
        Some(Loaded { table, snapshot, .. }) => (table, snapshot),
        // Nothing captured until the cluster's objects are in: connections go where apps send them.
        None => {
            let credentials = Credentials::files(&settings.credentials);
            (RouteTable::compile_with(&Snapshot::default(), &states, &credentials)?, Snapshot::default())
        }
    };
    for warning in table.warnings() {
        warn!("{warning}");
    }
    let mut capture = Capture::load(&CaptureSettings {
        cgroup: settings.cgroup.clone(),
        bpffs: settings.bpffs.clone(),
        redirect: settings.redirect,
        redirect6: settings.redirect6,
        kind: match settings.mode {
            CaptureMode::Socket => CaptureKind::Socket,
            CaptureMode::Packet => CaptureKind::Packet { interfaces: settings.interfaces.clone() },
        },
        fail_closed: settings.failure_policy == FailurePolicy::Closed,
        fast_path: settings.fast_path,
    })?;
    let report = capture.sync_capture(&table.capture_set())?;
    info!(added = report.added, "capture set loaded");

    let mut registry = prometheus_client::registry::Registry::default();
    let proxy_metrics = Arc::new(ProxyMetrics::register(&mut registry));
    let config_metrics = metrics::ConfigMetrics::register(&mut registry);
    registry.register_collector(Box::new(KernelCollector::new(CaptureCounters::open(&settings.bpffs)?)));
    let admin_state = Arc::new(AdminState::new(registry));
    let mut version = 1u64;
    admin_state.set_config(AppliedConfig::now(version, &settings, snapshot).with_upstream_tls(&table));
    config_metrics.set_version(version);
    let mut reporter: Option<RejectionReporter> = None;
    if let Resources::Cluster(cluster) = &resources {
        let probe = cluster.clone();
        admin_state.set_not_ready_reason(Box::new(move || probe.problem()));
        reporter = Some(cluster.rejection_reporter(settings.node_name.clone()));
        cluster.start(reload_tx.clone());
    }
    let admin = Admin::bind(settings.admin, admin_state.clone())
        .await
        .map_err(|source| AgentError::Listen { addr: settings.admin, source })?;
    let admin_task = tokio::spawn(admin.run());

    let routes = Arc::new(ArcSwap::from_pointee(table));
    let inputs = ProxyInputs {
        routes: routes.clone(),
        original_destinations: Arc::new(capture.original_destinations()?),
        namespace: settings.namespace.clone().into(),
        // The mark keeps the connect hook off the proxy's own connections; packet mode has no
        // such hook, and not marking spares it CAP_NET_ADMIN (see `privileges`).
        upstream: upstream_client(match settings.mode {
            CaptureMode::Socket => Some(interceptor_common::capture::PROXY_SOCKET_MARK),
            CaptureMode::Packet => None,
        }),
        metrics: proxy_metrics,
        limits: settings.limits,
        splices: capture.splices(),
    };
    let listen = std::net::SocketAddr::V4(settings.listen);
    let upstream = inputs.upstream.clone();
    let workload = crate::proxy::metrics::SourceWorkload {
        name: settings.workload.name.as_str().into(),
        namespace: settings.workload.namespace.as_str().into(),
    };
    let mut gateways = GatewayListeners::new(inputs.clone(), settings.gateway_address, DRAIN_DEADLINE, workload);
    gateways.reconcile(&routes.load_full()).await;
    let mut proxy = Proxy::bind(listen, inputs).await.map_err(|source| AgentError::Listen { addr: listen, source })?;
    if let Some(listen6) = settings.listen6 {
        proxy.bind_v6(listen6).map_err(|source| AgentError::Listen { addr: listen6.into(), source })?;
    }
    // Loaded, attached, bound: from here on only what `needed_after_start` names. The runtime's
    // threads dropped the rest as they started (`on_thread_start`); this is the last one, and
    // threads started from here on (the file watcher's) inherit the lowered sets.
    drop_privileges(&settings)?;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = tokio::spawn(proxy.run(
        async {
            let _ = stop_rx.await;
        },
        DRAIN_DEADLINE,
    ));
    capture.set_ready(true)?;
    info!(admin = %settings.admin, %listen, listen6 = ?settings.listen6, redirect = %settings.redirect, redirect6 = ?settings.redirect6, mode = ?settings.mode, failure_policy = ?settings.failure_policy, source = ?settings.source, cgroup = %settings.cgroup.display(), bpffs = %settings.bpffs.display(), "agent started");
    match &resources {
        Resources::Files(_) => {
            admin_state.set_ready(true);
            info!(version, "agent ready");
        }
        Resources::Cluster(_) => {
            info!("waiting for the Kubernetes API server's objects; nothing is captured until then")
        }
    }

    let _watcher = match &resources {
        Resources::Files(dir) => Some(watch_dir(dir, reload_tx.clone())?),
        Resources::Cluster(_) => None,
    };
    // A rotated credential (`credentialName`) is a config change: the TLS of its gateway server
    // or upstream cluster is built again. (Files named by path are read again on any reload.)
    // From the API server, credentials are Secrets, whose watch wakes the reload itself.
    let credentials = match &resources {
        Resources::Files(_) => Some(settings.credentials.as_path()).filter(|dir| dir.is_dir()),
        Resources::Cluster(_) => None,
    };
    let _credentials_watcher = credentials.map(|dir| watch_dir(dir, reload_tx.clone())).transpose()?;
    let watch_err =
        |what: &str, source: std::io::Error| AgentError::Watch { what: what.into(), source: Box::new(source) };
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| watch_err("SIGHUP", e))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| watch_err("SIGTERM", e))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| watch_err("SIGINT", e))?;
    let mut rejected_before: Vec<Diagnostic> = Vec::new();

    loop {
        // When the change was seen: `config applied` reports the time from there (debounce,
        // load, compile, swap and kernel sync).
        let mut seen = std::time::Instant::now();
        let cause = tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => "SIGHUP",
            Some(cause) = reload_rx.recv() => {
                seen = std::time::Instant::now();
                // Let a burst of changes settle into one reload.
                tokio::time::sleep(resources.debounce()).await;
                while reload_rx.try_recv().is_ok() {}
                cause
            }
        };
        // Off the runtime's threads: compiling a large config takes long enough to stall requests
        // on a single-threaded runtime.
        let (source, load_settings, states) = (resources.clone(), settings.clone(), states.clone());
        let loading = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(move || source.load(&load_settings, &states)).await;
        let load_ms = loading.elapsed().as_secs_f64() * 1e3;
        let Ok(loaded) = loaded else {
            config_metrics.rejected();
            error!(cause, "config loading panicked; previous config keeps serving");
            continue;
        };
        match loaded {
            Ok(None) => continue, // the cluster is not synced yet
            Err(err) => {
                config_metrics.rejected();
                error!(cause, "config change rejected, previous config keeps serving: {err}");
            }
            Ok(Some(Loaded { table, snapshot, rejected })) => {
                for warning in table.warnings() {
                    warn!("{warning}");
                }
                for d in rejected.iter().filter(|d| !rejected_before.contains(d)) {
                    error!("left out of the config: {d}");
                }
                config_metrics.set_rejected_resources(&rejected);
                if let Some(reporter) = &reporter {
                    reporter.report(&rejected);
                }
                rejected_before = rejected;
                let desired = table.capture_set();
                // Routes first: a connection captured by a new entry must find its service.
                let old_table = routes.swap(Arc::new(table));
                // The new table serves: its pool thresholds apply (to old requests as well).
                routes.load().apply_limits();
                // Pools of TLS identities no cluster uses any more go (a changed certificate
                // makes a new identity, so connections made with the old one are not reused).
                let live: std::collections::HashSet<u64> =
                    routes.load().clusters().iter().filter_map(|c| c.tls.originate().map(|t| t.id)).collect();
                upstream.retain_tls(|id| live.contains(&id));
                gateways.reconcile(&routes.load_full()).await;
                version += 1;
                config_metrics.applied(version);
                let applied = AppliedConfig::now(version, &settings, snapshot).with_upstream_tls(&routes.load());
                let old_config = admin_state.set_config(applied);
                // Freeing a large config takes as long as building it: not on the runtime's threads.
                tokio::task::spawn_blocking(move || drop((old_table, old_config)));
                match capture.sync_capture(&desired) {
                    Ok(r) => info!(
                        cause,
                        version,
                        added = r.added,
                        changed = r.changed,
                        removed = r.removed,
                        after_ms = seen.elapsed().as_secs_f64() * 1e3,
                        load_ms,
                        "config applied"
                    ),
                    Err(err) => {
                        error!(cause, version, %err, "config applied to the proxy, but the kernel capture set failed to sync")
                    }
                }
                if !admin_state.is_ready() {
                    info!(version, "agent ready");
                    admin_state.set_ready(true);
                }
            }
        }
    }

    info!("shutting down: capture off, draining");
    admin_state.set_ready(false);
    if let Err(err) = capture.set_ready(false) {
        warn!(%err, "could not turn capture off before draining");
    }
    let _ = stop_tx.send(());
    let _ = tokio::join!(proxy_task, gateways.shutdown());
    drop(capture);
    admin_task.abort();
    info!("stopped");
    Ok(())
}

/// Lowers the calling thread's capabilities to what the agent needs after start-up (see
/// [`crate::privileges::needed_by`]) and logs what is kept.
///
/// # Errors
/// A capability set cannot be lowered.
fn drop_privileges(settings: &Settings) -> Result<(), AgentError> {
    let restricted = crate::privileges::restrict_thread(&crate::privileges::needed_by(settings))?;
    let kept: Vec<String> = restricted.kept.iter().map(ToString::to_string).collect();
    if restricted.bounding_lowered {
        info!(kept = ?kept, "capabilities dropped");
    } else {
        warn!(kept = ?kept, "capabilities dropped, but not from the bounding set (no CAP_SETPCAP)");
    }
    Ok(())
}

fn watch_dir(dir: &Path, tx: mpsc::Sender<&'static str>) -> Result<notify::RecommendedWatcher, AgentError> {
    let watch_err =
        |source: notify::Error| AgentError::Watch { what: dir.display().to_string(), source: Box::new(source) };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove() {
                let _ = tx.try_send("file change");
            }
        }
    })
    .map_err(watch_err)?;
    watcher.watch(dir, RecursiveMode::Recursive).map_err(watch_err)?;
    Ok(watcher)
}
