//! Metrics of the agent's config handling: applied and rejected reloads, the active version.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Reload counters, the config version and the objects left out of it.
#[derive(Debug, Clone)]
pub struct ConfigMetrics {
    reloads: Family<ReloadLabels, Counter>,
    version: Gauge,
    rejected_resources: Gauge,
}

impl ConfigMetrics {
    /// Registers `interceptor_config_reloads_total{result}`, `interceptor_config_version` and
    /// `interceptor_config_rejected_resources`.
    pub fn register(registry: &mut Registry) -> Self {
        let this = Self { reloads: Family::default(), version: Gauge::default(), rejected_resources: Gauge::default() };
        registry.register(
            "interceptor_config_reloads",
            "Config changes seen, by result (applied, rejected)",
            this.reloads.clone(),
        );
        registry.register("interceptor_config_version", "Version of the active config", this.version.clone());
        registry.register(
            "interceptor_config_rejected_resources",
            "Kubernetes objects left out of the active config because they failed validation",
            this.rejected_resources.clone(),
        );
        // Both series exist from the start, so a rate() over them works before the first change.
        for result in ["applied", "rejected"] {
            let _ = this.reloads.get_or_create(&ReloadLabels { result });
        }
        this
    }

    /// A change was applied as `version`.
    pub fn applied(&self, version: u64) {
        self.reloads.get_or_create(&ReloadLabels { result: "applied" }).inc();
        self.set_version(version);
    }

    /// A change was refused; the previous config keeps serving.
    pub fn rejected(&self) {
        self.reloads.get_or_create(&ReloadLabels { result: "rejected" }).inc();
    }

    /// The objects `rejected` names (several errors of one object count once).
    pub fn set_rejected_resources(&self, rejected: &[crate::config::Diagnostic]) {
        let objects: std::collections::HashSet<&str> = rejected.iter().map(|d| d.resource.as_str()).collect();
        self.rejected_resources.set(i64::try_from(objects.len()).unwrap_or(i64::MAX));
    }

    /// The version serving now.
    pub fn set_version(&self, version: u64) {
        self.version.set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}
