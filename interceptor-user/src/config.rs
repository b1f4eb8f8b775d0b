//! Loads Istio resources from YAML files into a [`Snapshot`]; every problem names file, line and field.

mod gateway;
mod istio;
mod limits;
mod locate;
mod settings;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use gateway::{Gateway, GatewayPort, Server, ServerTlsSettings, TlsMode, TlsProtocolVersion};
pub use istio::*;
pub use limits::{Limits, LimitsFile};
pub use locate::{index_documents, DocumentLines, SyntaxError};
pub use settings::{
    find_pod_cgroup, CaptureMode, ConfigSource, FailurePolicy, Settings, SettingsFile, DEFAULT_ADMIN, DEFAULT_BPFFS,
    DEFAULT_CREDENTIALS, DEFAULT_NAMESPACE,
};

/// API groups/versions accepted verbatim for the networking kinds.
pub const NETWORKING_API_VERSIONS: &[&str] =
    &["networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.istio.io/v1"];

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The config is used, but something in it has no effect or looks wrong.
    Warning,
    /// The config is refused.
    Error,
}

/// One finding about the config, located as precisely as known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// File it is in, or [`CLUSTER_ORIGIN`] for objects from the Kubernetes API server.
    pub file: PathBuf,
    /// 1-based line; 0 when the whole file is meant.
    pub line: usize,
    /// `Kind namespace/name`, or a file-level description.
    pub resource: String,
    /// Field path inside the resource (`spec.http[0].route[1].weight`); empty for the resource.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Diagnostic {
    fn from_serde(file: &Path, line_offset: usize, resource: &str, err: &serde_yaml::Error) -> Self {
        let line = err.location().map_or(0, |at| at.line() + line_offset);
        // serde_yaml prefixes the field path and appends the position; keep just the message.
        let text = err.to_string();
        let (field, message) = match text.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => (path.to_owned(), rest.to_owned()),
            _ => (String::new(), text.clone()),
        };
        let message = match message.rfind(" at line ") {
            Some(cut) => message[..cut].to_owned(),
            None => message,
        };
        Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            line,
            resource: resource.into(),
            field,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        write!(f, ": {}", self.resource)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A refused config: every error found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The errors (and any warnings found alongside them).
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<_> = self.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
        write!(f, "config refused, {} error(s)", errors.len())?;
        for d in errors {
            write!(f, "\n  {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What [`Diagnostic::file`] and [`Source::file`] say for objects read from the Kubernetes API
/// server: they have no file, and `namespace/name` plus the field locate them.
pub const CLUSTER_ORIGIN: &str = "kubernetes";

/// Where a resource came from; turns field paths into lines.
#[derive(Clone, Debug)]
pub struct Source {
    /// File path, or [`CLUSTER_ORIGIN`].
    pub file: Arc<PathBuf>,
    /// `Kind namespace/name`.
    pub resource: String,
    /// Field lines in the file; `None` for objects from the API server.
    lines: Option<Arc<DocumentLines>>,
}

impl Source {
    /// An object read from the Kubernetes API server, named `Kind namespace/name`.
    pub fn cluster(resource: String) -> Self {
        Self { file: Arc::new(PathBuf::from(CLUSTER_ORIGIN)), resource, lines: None }
    }

    /// A diagnostic about `field` of this resource.
    pub fn diagnostic(&self, severity: Severity, field: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        let field = field.into();
        Diagnostic {
            severity,
            file: self.file.as_ref().clone(),
            line: self.lines.as_ref().map_or(0, |lines| lines.line_of(&field)),
            resource: self.resource.clone(),
            field,
            message: message.into(),
        }
    }
}

/// A parsed resource of kind `T`.
#[derive(Clone, Debug)]
pub struct Resource<T> {
    /// Name and namespace (namespace filled with the default when absent).
    pub meta: ObjectMeta,
    /// The `spec`.
    pub spec: T,
    /// Where it was written.
    pub source: Source,
}

/// Every resource found in a config directory, parsed but not yet cross-checked.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// VirtualServices in file order.
    pub virtual_services: Vec<Resource<VirtualService>>,
    /// DestinationRules in file order.
    pub destination_rules: Vec<Resource<DestinationRule>>,
    /// ServiceEntries in file order.
    pub service_entries: Vec<Resource<ServiceEntry>>,
    /// WorkloadEntries in file order.
    pub workload_entries: Vec<Resource<WorkloadEntry>>,
    /// Gateways in file order.
    pub gateways: Vec<Resource<Gateway>>,
    /// Findings that did not refuse the config.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document<T> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    metadata: serde_yaml::Value,
    spec: T,
    #[allow(dead_code)]
    #[serde(default)]
    status: Option<serde_yaml::Value>,
}

impl Snapshot {
    /// Loads every `*.yaml` / `*.yml` file under `dir` (recursively, in path order).
    ///
    /// # Errors
    /// All syntax and schema errors found, each with file, line and field.
    pub fn load_dir(dir: &Path, default_namespace: &str) -> Result<Self, ConfigError> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        collect_yaml_files(dir, &mut files, &mut errors);
        files.sort();
        let mut snapshot = Snapshot::default();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => snapshot.add_file(&file, &text, default_namespace, &mut errors),
                Err(err) => errors.push(file_error(&file, format!("cannot read: {err}"))),
            }
        }
        if errors.is_empty() {
            Ok(snapshot)
        } else {
            errors.extend(snapshot.warnings);
            Err(ConfigError { diagnostics: errors })
        }
    }

    /// Drops every resource whose `Kind namespace/name` is in `names`; returns how many went.
    pub fn remove_resources(&mut self, names: &std::collections::HashSet<&str>) -> usize {
        fn retain<T>(list: &mut Vec<Resource<T>>, names: &std::collections::HashSet<&str>) -> usize {
            let before = list.len();
            list.retain(|r| !names.contains(r.source.resource.as_str()));
            before - list.len()
        }
        retain(&mut self.virtual_services, names)
            + retain(&mut self.destination_rules, names)
            + retain(&mut self.service_entries, names)
            + retain(&mut self.workload_entries, names)
            + retain(&mut self.gateways, names)
    }

    /// Istio's validation of every resource, each on its own: errors refuse their resource,
    /// warnings do not. Both sources (files and the cluster) pass here before compiling.
    pub fn validate(&self) -> Vec<Diagnostic> {
        let mut findings = Vec::new();
        findings.extend(self.virtual_services.iter().flat_map(validate::validate));
        findings.extend(self.destination_rules.iter().flat_map(validate::validate));
        findings.extend(self.service_entries.iter().flat_map(validate::validate));
        findings.extend(self.workload_entries.iter().flat_map(validate::validate));
        findings.extend(self.gateways.iter().flat_map(validate::validate));
        findings
    }

    /// Loads a directory (as [`Snapshot::load_dir`]) or a single YAML file.
    ///
    /// # Errors
    /// All syntax and schema errors found, each with file, line and field.
    pub fn load_path(path: &Path, default_namespace: &str) -> Result<Self, ConfigError> {
        if path.is_dir() {
            return Self::load_dir(path, default_namespace);
        }
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(text) => snapshot.add_file(path, &text, default_namespace, &mut errors),
            Err(err) => errors.push(file_error(path, format!("cannot read: {err}"))),
        }
        if errors.is_empty() {
            Ok(snapshot)
        } else {
            errors.extend(snapshot.warnings);
            Err(ConfigError { diagnostics: errors })
        }
    }

    /// Parses one file's documents into this snapshot; errors go to `errors`.
    pub fn add_file(&mut self, file: &Path, text: &str, default_namespace: &str, errors: &mut Vec<Diagnostic>) {
        let documents = match index_documents(text) {
            Ok(documents) => documents,
            Err(err) => {
                errors.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.to_path_buf(),
                    line: err.line,
                    resource: "YAML".into(),
                    field: String::new(),
                    message: format!("column {}: {}", err.column, err.message),
                });
                return;
            }
        };
        let file_arc = Arc::new(file.to_path_buf());
        let ends: Vec<usize> = documents.iter().skip(1).map(|d| d.start).chain([text.len()]).collect();
        for (lines, end) in documents.into_iter().zip(ends) {
            let body = &text[lines.start..end];
            let offset = text[..lines.start].matches('\n').count();
            let meta: Option<TypeMeta> = match serde_yaml::from_str(body) {
                Ok(meta) => meta,
                Err(err) => {
                    errors.push(Diagnostic::from_serde(file, offset, "document", &err));
                    continue;
                }
            };
            let Some(mut meta) = meta else {
                continue; // an empty document
            };
            if meta.metadata.namespace.is_empty() {
                meta.metadata.namespace = default_namespace.to_owned();
            }
            let source = Source {
                file: file_arc.clone(),
                resource: format!("{} {}/{}", meta.kind, meta.metadata.namespace, meta.metadata.name),
                lines: Some(Arc::new(lines)),
            };
            self.add_document(body, offset, meta, source, errors);
        }
    }

    /// Parses one object read from the Kubernetes API server (`api_version`, `kind`, its
    /// namespace, name and `spec` as JSON) into this snapshot; errors go to `errors`, naming
    /// `Kind namespace/name` and the field.
    pub fn add_object(&mut self, object: &ClusterObject<'_>, errors: &mut Vec<Diagnostic>) {
        let mut metadata = ObjectMeta {
            name: object.name.to_owned(),
            namespace: object.namespace.to_owned(),
            ..ObjectMeta::default()
        };
        if let Some(created) = object.creation_timestamp {
            // Istio: of two VirtualServices for one host, the older wins.
            metadata.other.insert("creationTimestamp".into(), created.into());
        }
        let source = Source::cluster(format!("{} {}/{}", object.kind, object.namespace, object.name));
        // Straight from JSON when the object is well-formed: every reload reads every object.
        if NETWORKING_API_VERSIONS.contains(&object.api_version) && !object.name.is_empty() {
            let parsed = match object.kind {
                "VirtualService" => from_json(object.spec, &metadata, &source).map(|r| self.virtual_services.push(r)),
                "DestinationRule" => from_json(object.spec, &metadata, &source).map(|r| self.destination_rules.push(r)),
                "ServiceEntry" => from_json(object.spec, &metadata, &source).map(|r| self.service_entries.push(r)),
                "WorkloadEntry" => from_json(object.spec, &metadata, &source).map(|r| self.workload_entries.push(r)),
                "Gateway" => from_json(object.spec, &metadata, &source).map(|r| self.gateways.push(r)),
                _ => None,
            };
            if parsed.is_some() {
                return;
            }
        }
        // Otherwise through YAML text, so the API server's objects meet the same parser as files
        // do, and their errors carry the same field paths (`spec.http[0].route[0]`).
        let document = serde_json::json!({
            "apiVersion": object.api_version,
            "kind": object.kind,
            "metadata": {"name": object.name, "namespace": object.namespace},
            "spec": object.spec,
        });
        let body = match serde_yaml::to_string(&document) {
            Ok(body) => body,
            Err(err) => {
                errors.push(source.diagnostic(Severity::Error, "spec", format!("cannot be read: {err}")));
                return;
            }
        };
        let meta = TypeMeta { api_version: object.api_version.to_owned(), kind: object.kind.to_owned(), metadata };
        self.add_document(&body, 0, meta, source, errors);
    }

    fn add_document(
        &mut self,
        body: &str,
        offset: usize,
        meta: TypeMeta,
        source: Source,
        errors: &mut Vec<Diagnostic>,
    ) {
        let TypeMeta { api_version, kind, metadata } = meta;
        // The Kubernetes Gateway API has a `Gateway` kind too (gateway.networking.k8s.io): not ours.
        let istio_gateway = kind == "Gateway" && api_version.starts_with("networking.istio.io/");
        let known = matches!(kind.as_str(), "VirtualService" | "DestinationRule" | "ServiceEntry" | "WorkloadEntry")
            || istio_gateway;
        if !known {
            self.warnings.push(source.diagnostic(
                Severity::Warning,
                "kind",
                format!("kind {kind:?} ({api_version}) is not one the agent reads; skipped"),
            ));
            return;
        }
        if !NETWORKING_API_VERSIONS.contains(&api_version.as_str()) {
            errors.push(source.diagnostic(
                Severity::Error,
                "apiVersion",
                format!("{api_version:?} is not one of {}", NETWORKING_API_VERSIONS.join(", ")),
            ));
            return;
        }
        if metadata.name.is_empty() {
            errors.push(source.diagnostic(Severity::Error, "metadata.name", "a resource needs a name"));
            return;
        }
        let parsed = match kind.as_str() {
            "VirtualService" => parse(body, offset, metadata, source).map(|r| self.virtual_services.push(r)),
            "DestinationRule" => parse(body, offset, metadata, source).map(|r| self.destination_rules.push(r)),
            "ServiceEntry" => parse(body, offset, metadata, source).map(|r| self.service_entries.push(r)),
            "Gateway" => parse(body, offset, metadata, source).map(|r| self.gateways.push(r)),
            _ => parse(body, offset, metadata, source).map(|r| self.workload_entries.push(r)),
        };
        if let Err(err) = parsed {
            errors.push(err);
        }
    }
}

/// `spec` parsed from JSON, or `None` when it does not parse (the YAML path then says why).
fn from_json<T: DeserializeOwned>(spec: &serde_json::Value, meta: &ObjectMeta, source: &Source) -> Option<Resource<T>> {
    let spec = T::deserialize(spec).ok()?;
    Some(Resource { meta: meta.clone(), spec, source: source.clone() })
}

/// An Istio object as the API server holds it, before parsing.
#[derive(Clone, Copy, Debug)]
pub struct ClusterObject<'a> {
    /// `networking.istio.io/v1` …
    pub api_version: &'a str,
    /// `VirtualService` …
    pub kind: &'a str,
    /// `metadata.namespace`.
    pub namespace: &'a str,
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.creationTimestamp` (RFC 3339).
    pub creation_timestamp: Option<&'a str>,
    /// `spec`, as the API server returned it.
    pub spec: &'a serde_json::Value,
}

fn parse<T: DeserializeOwned>(
    body: &str,
    offset: usize,
    meta: ObjectMeta,
    source: Source,
) -> Result<Resource<T>, Diagnostic> {
    match serde_yaml::from_str::<Document<T>>(body) {
        Ok(doc) => Ok(Resource { meta, spec: doc.spec, source }),
        Err(err) => {
            let mut diagnostic = Diagnostic::from_serde(&source.file, offset, &source.resource, &err);
            if source.lines.is_none() {
                diagnostic.line = 0; // a line of the rendered text would mean nothing to anyone
            }
            Err(diagnostic)
        }
    }
}

fn file_error(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line: 0,
        resource: "file".into(),
        field: String::new(),
        message,
    }
}

fn collect_yaml_files(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<Diagnostic>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            errors.push(file_error(dir, format!("cannot read directory: {err}")));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Editors and Kubernetes ConfigMap mounts leave hidden files and `..data` links: skip them.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_yaml_files(&path, files, errors);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            files.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Snapshot, ConfigError> {
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        snapshot.add_file(Path::new("t.yaml"), text, "default", &mut errors);
        if errors.is_empty() {
            Ok(snapshot)
        } else {
            Err(ConfigError { diagnostics: errors })
        }
    }

    #[test]
    fn reads_the_seed_examples_verbatim() {
        let text = include_str!("../../config/mesh/my-app.yaml");
        let snapshot = load(text).unwrap();
        assert_eq!(snapshot.virtual_services.len(), 1);
        assert_eq!(snapshot.destination_rules.len(), 1);
        assert_eq!(snapshot.service_entries.len(), 1);
        let vs = &snapshot.virtual_services[0];
        assert_eq!(vs.meta.namespace, "default");
        assert_eq!(vs.spec.http.len(), 2);
        assert_eq!(vs.spec.http[0].matches[0].headers["user-agent"].regex.as_deref(), Some(".*beta-tester.*"));
    }

    #[test]
    fn a_typo_is_an_error_with_file_line_and_field() {
        let err = load(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: a\nspec:\n  hosts: [a]\n  http:\n  - route:\n    - destination:\n        host: a\n      wieght: 3\n",
        )
        .unwrap_err();
        let d = &err.diagnostics[0];
        assert_eq!((d.line, d.field.as_str()), (11, "spec.http[0].route[0]"), "{d}");
        assert!(d.message.contains("wieght"), "{d}");
        assert_eq!(d.resource, "VirtualService default/a");
    }

    #[test]
    fn lines_count_from_the_start_of_the_file_in_later_documents() {
        let err = load("kind: Unknown\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: 3\n  subsets: 7\n")
            .unwrap_err();
        assert_eq!(err.diagnostics[0].line, 8, "{}", err.diagnostics[0]);
    }

    #[test]
    fn unknown_kinds_are_skipped_with_a_warning() {
        let snapshot = load("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n").unwrap();
        assert_eq!(snapshot.warnings.len(), 1);
        assert!(snapshot.warnings[0].message.contains("Service"));
    }

    #[test]
    fn gateways_are_read_and_the_gateway_apis_are_skipped() {
        let snapshot = load(
            "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: g, namespace: edge}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*/a.example.com\"]\n    tls: {mode: MUTUAL, credentialName: a, minProtocolVersion: TLSV1_2}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: k}\nspec: {}\n",
        )
        .unwrap();
        assert_eq!(snapshot.gateways.len(), 1);
        let server = &snapshot.gateways[0].spec.servers[0];
        let tls = server.tls.as_ref().unwrap();
        assert_eq!((tls.mode, tls.min_protocol_version), (Some(TlsMode::Mutual), Some(TlsProtocolVersion::V1_2)));
        assert_eq!(snapshot.warnings.len(), 1, "the Gateway API's Gateway is skipped with a warning");
        let err = load("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a]\n    tls: {mode: SIMPEL}\n")
            .unwrap_err();
        assert_eq!(err.diagnostics[0].line, 8, "{}", err.diagnostics[0]);
        assert!(err.diagnostics[0].field.starts_with("spec.servers[0].tls"), "{}", err.diagnostics[0]);
    }

    #[test]
    fn an_unknown_api_version_is_an_error() {
        let err = load("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: s}\nspec: {}\n")
            .unwrap_err();
        assert_eq!(err.diagnostics[0].field, "apiVersion");
        assert_eq!(err.diagnostics[0].line, 1);
    }

    #[test]
    fn cluster_objects_meet_the_same_parser_and_are_named_by_namespace_and_name() {
        let spec =
            serde_json::json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}, "wieght": 3}]}]});
        let object = ClusterObject {
            api_version: "networking.istio.io/v1",
            kind: "VirtualService",
            namespace: "shop",
            name: "broken",
            creation_timestamp: Some("2026-01-01T00:00:00Z"),
            spec: &spec,
        };
        let mut snapshot = Snapshot::default();
        let mut errors = Vec::new();
        snapshot.add_object(&object, &mut errors);
        assert!(snapshot.virtual_services.is_empty());
        let d = &errors[0];
        assert_eq!(
            (d.file.to_str(), d.line, d.resource.as_str()),
            (Some(CLUSTER_ORIGIN), 0, "VirtualService shop/broken")
        );
        assert_eq!(d.field, "spec.http[0].route[0]", "{d}");
        assert!(d.message.contains("wieght"), "{d}");
        assert_eq!(d.to_string().split(": ").next(), Some("error"), "{d}");

        let good = serde_json::json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}]}]});
        snapshot.add_object(&ClusterObject { name: "good", spec: &good, ..object }, &mut errors);
        assert_eq!(snapshot.virtual_services.len(), 1);
        let vs = &snapshot.virtual_services[0];
        assert_eq!((vs.meta.namespace.as_str(), vs.meta.name.as_str()), ("shop", "good"));
        assert_eq!(vs.meta.other["creationTimestamp"].as_str(), Some("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn broken_yaml_names_its_line() {
        let err = load("kind: VirtualService\nspec:\n  hosts: [a\n").unwrap_err();
        assert!(err.diagnostics[0].line >= 3, "{}", err.diagnostics[0]);
    }
}
