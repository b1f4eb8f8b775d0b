//! `/config_dump`: the active config as JSON — the resources the running route table was compiled
//! from, its version and when it was applied, the agent's settings and the config's warnings.

use serde::Serialize;

use crate::config::{Diagnostic, Resource, Settings, Snapshot};

/// The document `/config_dump` serves.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigDump {
    /// Starts at 1 and grows by one with every applied change; rejected changes leave it.
    pub version: u64,
    /// When this version was applied (RFC 3339, UTC).
    pub applied_at: String,
    /// The agent's resolved settings.
    pub settings: Settings,
    /// Every resource, in file order per kind.
    pub resources: Vec<DumpedResource>,
    /// Findings that did not refuse the config.
    pub warnings: Vec<Diagnostic>,
}

/// One resource as loaded.
#[derive(Clone, Debug, Serialize)]
pub struct DumpedResource {
    /// `VirtualService`, `DestinationRule`, `ServiceEntry` or `WorkloadEntry`.
    pub kind: &'static str,
    /// `metadata.namespace` (the default filled in).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// The `spec`, as parsed.
    pub spec: serde_json::Value,
}

impl ConfigDump {
    /// The dump of `snapshot` applied as `version` now.
    pub fn new(version: u64, settings: &Settings, snapshot: &Snapshot) -> Self {
        let mut resources = Vec::new();
        dump(&mut resources, "VirtualService", &snapshot.virtual_services);
        dump(&mut resources, "DestinationRule", &snapshot.destination_rules);
        dump(&mut resources, "ServiceEntry", &snapshot.service_entries);
        dump(&mut resources, "WorkloadEntry", &snapshot.workload_entries);
        Self {
            version,
            applied_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            settings: settings.clone(),
            resources,
            warnings: snapshot.warnings.clone(),
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Every field is a plain value or a serde_json::Value: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|err| format!("{{\"error\": \"{err}\"}}"))
    }
}

fn dump<T: Serialize>(out: &mut Vec<DumpedResource>, kind: &'static str, resources: &[Resource<T>]) {
    for r in resources {
        out.push(DumpedResource {
            kind,
            namespace: r.meta.namespace.clone(),
            name: r.meta.name.clone(),
            file: r.source.file.display().to_string(),
            spec: serde_json::to_value(&r.spec).unwrap_or(serde_json::Value::Null),
        });
    }
}
