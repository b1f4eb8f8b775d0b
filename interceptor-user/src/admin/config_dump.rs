//! `/config_dump`: the active config as JSON — the resources the running route table was compiled
//! from, its version and when it was applied, the agent's settings, the config's warnings and
//! the clusters' upstream TLS.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{ClusterObject, ConfigError, Diagnostic, Resource, Settings, Snapshot};
use crate::routing::RouteTable;

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
    /// The upstream TLS of every cluster that does not speak plaintext, by cluster name (mode,
    /// SNI, CA, names checked, client certificate; or why it refuses requests).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream_tls: BTreeMap<String, String>,
}

/// One resource as loaded.
#[derive(Clone, Debug, Serialize)]
pub struct DumpedResource {
    /// `VirtualService`, `DestinationRule`, `ServiceEntry`, `WorkloadEntry` or `Gateway`.
    pub kind: &'static str,
    /// `metadata.namespace` (the default filled in).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The file it came from, or `kubernetes`.
    pub file: String,
    /// `Kind namespace/name` as read (a Kubernetes Service is dumped as the ServiceEntry it
    /// reads as, named `Service namespace/name` here).
    pub resource: String,
    /// `metadata.creationTimestamp`, when known (of two VirtualServices for a host, the older wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// The `spec`, as parsed.
    pub spec: serde_json::Value,
}

/// The part of a dump that [`ConfigDump::read_snapshot`] needs.
#[derive(Deserialize)]
struct DumpForReading {
    resources: Vec<ResourceForReading>,
}

#[derive(Deserialize)]
struct ResourceForReading {
    kind: String,
    namespace: String,
    name: String,
    #[serde(default)]
    creation_timestamp: Option<String>,
    spec: serde_json::Value,
}

/// A config as applied, kept until `/config_dump` asks: rendering every resource as JSON on
/// every reload would cost as much as compiling it.
#[derive(Debug)]
pub struct AppliedConfig {
    /// As [`ConfigDump::version`].
    pub version: u64,
    /// When it was applied.
    pub applied_at: std::time::SystemTime,
    /// The agent's settings.
    pub settings: Settings,
    /// The resources the route table was compiled from.
    pub snapshot: Snapshot,
    /// As [`ConfigDump::upstream_tls`].
    pub upstream_tls: BTreeMap<String, String>,
}

impl AppliedConfig {
    /// `snapshot` applied as `version` now.
    pub fn now(version: u64, settings: &Settings, snapshot: Snapshot) -> Self {
        Self {
            version,
            applied_at: std::time::SystemTime::now(),
            settings: settings.clone(),
            snapshot,
            upstream_tls: BTreeMap::new(),
        }
    }

    /// With the upstream TLS of `table`'s clusters (those that do not speak plaintext).
    pub fn with_upstream_tls(mut self, table: &RouteTable) -> Self {
        self.upstream_tls = table
            .clusters()
            .iter()
            .filter(|c| !c.tls.is_plaintext())
            .map(|c| (c.name.to_string(), c.tls.to_string()))
            .collect();
        self
    }

    /// The dump `/config_dump` serves.
    pub fn dump(&self) -> ConfigDump {
        let snapshot = &self.snapshot;
        let mut resources = Vec::new();
        dump(&mut resources, "VirtualService", &snapshot.virtual_services);
        dump(&mut resources, "DestinationRule", &snapshot.destination_rules);
        dump(&mut resources, "ServiceEntry", &snapshot.service_entries);
        dump(&mut resources, "WorkloadEntry", &snapshot.workload_entries);
        dump(&mut resources, "Gateway", &snapshot.gateways);
        ConfigDump {
            version: self.version,
            applied_at: humantime::format_rfc3339_seconds(self.applied_at).to_string(),
            settings: self.settings.clone(),
            resources,
            warnings: snapshot.warnings.clone(),
            upstream_tls: self.upstream_tls.clone(),
        }
    }
}

impl ConfigDump {
    /// The resources of a `/config_dump` document, read back into a snapshot (for `routes` and
    /// `explain` against a running agent: the config it really serves, from files or a cluster).
    ///
    /// # Errors
    /// The text is not a config dump, or a resource in it does not parse.
    pub fn read_snapshot(json: &str) -> Result<Snapshot, ConfigError> {
        let dump: DumpForReading = serde_json::from_str(json).map_err(|err| ConfigError {
            diagnostics: vec![Diagnostic {
                severity: crate::config::Severity::Error,
                file: "/config_dump".into(),
                line: err.line(),
                resource: "config dump".into(),
                field: String::new(),
                message: err.to_string(),
            }],
        })?;
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        for r in &dump.resources {
            let object = ClusterObject {
                api_version: "networking.istio.io/v1",
                kind: &r.kind,
                namespace: &r.namespace,
                name: &r.name,
                creation_timestamp: r.creation_timestamp.as_deref(),
                spec: &r.spec,
            };
            snapshot.add_object(&object, &mut errors);
        }
        if errors.is_empty() {
            Ok(snapshot)
        } else {
            Err(ConfigError { diagnostics: errors })
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
            resource: r.source.resource.clone(),
            creation_timestamp: r.meta.other.get("creationTimestamp").and_then(|v| v.as_str()).map(str::to_owned),
            spec: serde_json::to_value(&r.spec).unwrap_or(serde_json::Value::Null),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_reads_back_into_the_same_routes() {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        let text = include_str!("../../../config/mesh/my-app.yaml");
        snapshot.add_file(std::path::Path::new("my-app.yaml"), text, "default", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let settings =
            crate::config::SettingsFile { redirect: Some("10.0.0.1:15001".parse().unwrap()), ..Default::default() }
                .resolve()
                .unwrap();
        let json = AppliedConfig::now(3, &settings, snapshot.clone()).dump().to_json();
        let read = ConfigDump::read_snapshot(&json).unwrap();
        let (before, after) = (RouteTable::compile(&snapshot).unwrap(), RouteTable::compile(&read).unwrap());
        assert_eq!(before.describe(), after.describe());
        assert!(ConfigDump::read_snapshot("not json").is_err());
    }

    #[test]
    fn the_dump_shows_each_cluster_upstream_tls() {
        let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  addresses: [10.96.0.30]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.30}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db.example.com
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
";
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        snapshot.add_file(std::path::Path::new("db.yaml"), text, "default", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let table = RouteTable::compile(&snapshot).unwrap();
        let settings =
            crate::config::SettingsFile { redirect: Some("10.0.0.1:15001".parse().unwrap()), ..Default::default() }
                .resolve()
                .unwrap();
        let dump = AppliedConfig::now(1, &settings, snapshot).with_upstream_tls(&table).dump();
        let tls = &dump.upstream_tls["outbound|80||db.example.com"];
        assert!(tls.starts_with("ISTIO_MUTUAL: refused"), "{tls}");
        assert!(dump.to_json().contains("\"upstream_tls\""));
    }
}
