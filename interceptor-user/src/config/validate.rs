//! Istio's validation of each resource on its own, field by field, before any compilation.
//!
//! The rules follow istio/istio `pkg/config/validation` (the admission webhook and
//! `istioctl validate`), with Istio's reasons for errors and warnings so a user's search finds
//! Istio's answer; the location is ours (file:line:field). Cross-resource checks (unknown hosts,
//! shadowed rules) stay with the route table compiler, like `istioctl analyze`.

mod destination_rule;
mod gateway;
mod rules;
mod service_entry;
mod virtual_service;
mod workload_entry;

use super::{Diagnostic, ObjectMeta, Resource, Severity, Source};

/// Annotation only AuthorizationPolicies may carry; Istio refuses it elsewhere.
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Annotation that makes Istio's webhook refuse an object (used to test the webhook).
const ALWAYS_REJECT_ANNOTATION: &str = "internal.istio.io/webhook-always-reject";

/// A resource kind Istio validates on its own.
pub trait Validate {
    /// Adds the findings about this spec (of the object `meta`) to `findings`.
    fn validate(&self, meta: &ObjectMeta, findings: &mut Findings<'_>);
}

/// Errors and warnings about one resource, each at a field path.
pub struct Findings<'a> {
    source: &'a Source,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Findings<'a> {
    fn new(source: &'a Source) -> Self {
        Self { source, diagnostics: Vec::new() }
    }

    /// Refuses the resource for `message` about `field`.
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(self.source.diagnostic(Severity::Error, field, message));
    }

    /// Warns about `field`; the resource is still used.
    pub fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(self.source.diagnostic(Severity::Warning, field, message));
    }

    /// An error when `result` is one.
    fn check<T>(&mut self, field: impl Into<String>, result: Result<T, String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }

    /// Errors found so far.
    fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }

    /// Every message as an error at `field`, made only when there are messages: most resources
    /// have none, and a cluster's endpoints are validated by the ten thousand at every reload.
    fn errors(&mut self, field: impl FnOnce() -> String, messages: Vec<String>) {
        if messages.is_empty() {
            return;
        }
        let field = field();
        for message in messages {
            self.error(field.as_str(), message);
        }
    }

    /// Fields Istio defines that the agent does not act on: a warning each, as compiling does
    /// for the older ones.
    fn not_supported(&mut self, field: impl Into<String>) {
        self.warning(field, "not supported yet; ignored");
    }
}

/// Istio's findings about `resource`: errors refuse it, warnings do not.
pub fn validate<T: Validate>(resource: &Resource<T>) -> Vec<Diagnostic> {
    let mut findings = Findings::new(&resource.source);
    let annotations = &resource.meta.annotations;
    if annotations.contains_key(DRY_RUN_ANNOTATION) {
        findings.error(
            format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
            format!(
                "{}/{} has unsupported annotation {DRY_RUN_ANNOTATION}, please remove the annotation",
                resource.meta.namespace, resource.meta.name
            ),
        );
    } else if annotations.contains_key(ALWAYS_REJECT_ANNOTATION) {
        findings.error(
            format!("metadata.annotations.{ALWAYS_REJECT_ANNOTATION}"),
            format!("{ALWAYS_REJECT_ANNOTATION:?} annotation found, rejecting"),
        );
    } else {
        resource.spec.validate(&resource.meta, &mut findings);
    }
    findings.diagnostics
}

#[cfg(test)]
mod tests;
