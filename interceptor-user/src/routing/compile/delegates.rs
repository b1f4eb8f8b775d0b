//! Delegation: a root VirtualService rule that hands its matching requests to the rules of a
//! delegate VirtualService (one level deep), its conditions narrowing theirs.

use super::Compiler;
use crate::config::{self, HttpRoute, Resource, Severity, VirtualService};
use crate::routing::{MatchBlock, Rule};

/// (namespace, name) of every VirtualService some rule delegates to.
pub(super) fn delegate_targets(all: &[Resource<VirtualService>]) -> Vec<(String, String)> {
    all.iter()
        .flat_map(|vs| {
            vs.spec.http.iter().filter_map(move |r| {
                r.delegate.as_ref().map(|d| {
                    let ns = if d.namespace.is_empty() { vs.meta.namespace.clone() } else { d.namespace.clone() };
                    (ns, d.name.clone())
                })
            })
        })
        .collect()
}

impl Compiler<'_> {
    /// The rules of the VirtualService that rule `root` of `vs` (at `at`) delegates to, each
    /// narrowed by the root's `root_matches`.
    pub(super) fn delegate(
        &mut self,
        root: &HttpRoute,
        delegate: &config::Delegate,
        root_matches: Vec<MatchBlock>,
        root_label: &str,
        vs: &Resource<VirtualService>,
        at: &str,
    ) -> Vec<Rule> {
        let (namespace, src) = (vs.meta.namespace.as_str(), &vs.source);
        if !root.route.is_empty() || root.redirect.is_some() || root.direct_response.is_some() {
            self.diags.push(src.diagnostic(
                Severity::Error,
                format!("{at}.delegate"),
                "a delegating rule may only have match conditions",
            ));
            return Vec::new();
        }
        let ns = if delegate.namespace.is_empty() { namespace } else { &delegate.namespace };
        let snapshot = self.snapshot;
        let Some(target) =
            snapshot.virtual_services.iter().find(|v| v.meta.namespace == ns && v.meta.name == delegate.name)
        else {
            // Istio accepts a delegation it cannot follow, and ignores it.
            self.diags.push(src.diagnostic(
                Severity::Warning,
                format!("{at}.delegate"),
                format!("no VirtualService {ns}/{} to delegate to; this rule routes nothing", delegate.name),
            ));
            return Vec::new();
        };
        if !target.spec.hosts.is_empty() {
            self.diags.push(target.source.diagnostic(
                Severity::Warning,
                "spec.hosts",
                format!("a delegate (of {root_label}) must not set hosts; the delegation is ignored"),
            ));
            return Vec::new();
        }
        let mut out = Vec::new();
        for (j, http) in target.spec.http.iter().enumerate() {
            let dat = format!("spec.http[{j}]");
            if http.delegate.is_some() {
                self.diags.push(target.source.diagnostic(
                    Severity::Error,
                    format!("{dat}.delegate"),
                    "delegation is only one level deep",
                ));
                continue;
            }
            let Some(delegate_matches) = self.matches(http, &target.meta.namespace, &target.source, &dat) else {
                continue;
            };
            // The root's conditions narrow every delegate rule (Istio merges them).
            let matches = match (root_matches.is_empty(), delegate_matches.is_empty()) {
                (true, _) => delegate_matches,
                (false, true) => root_matches.clone(),
                (false, false) => root_matches
                    .iter()
                    .flat_map(|r| delegate_matches.iter().map(move |d| MatchBlock::merge(r, d)))
                    .collect(),
            };
            let label = format!(
                "{root_label}→{}/{}#{}",
                target.meta.namespace,
                target.meta.name,
                if http.name.is_empty() { j.to_string() } else { http.name.clone() }
            );
            if let Some(rule) = self.rule(http, matches, label, target, &dat) {
                out.push(rule);
            }
        }
        out
    }
}
