//! Objects the agent rejects, reported on the objects themselves as Kubernetes Events, so
//! `kubectl describe virtualservice …` says why a rule is not applied.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tracing::warn;

use super::{lock, Cluster};
use crate::config::Diagnostic;

/// The Events' reporting controller.
pub const REPORTING_CONTROLLER: &str = "interceptor";
/// The Events' reason.
pub const REJECTED_REASON: &str = "Rejected";
/// The Kubernetes limit on an Event's note.
const MAX_NOTE_BYTES: usize = 1024;

/// Publishes one Event per rejected object, again only when the reason changes.
#[derive(Clone)]
pub struct RejectionReporter {
    cluster: Cluster,
    recorder: Recorder,
    /// Resource → the note last published for it.
    published: Arc<Mutex<HashMap<String, String>>>,
}

impl RejectionReporter {
    pub(super) fn new(cluster: Cluster, client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: REPORTING_CONTROLLER.into(), instance };
        Self { cluster, recorder: Recorder::new(client, reporter), published: Arc::default() }
    }

    /// Reports the objects `rejected` names (errors are grouped per object); objects no longer
    /// rejected are forgotten, so one broken again is reported again.
    pub fn report(&self, rejected: &[Diagnostic]) {
        let mut notes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for d in rejected {
            let what = if d.field.is_empty() { d.message.clone() } else { format!("{}: {}", d.field, d.message) };
            notes.entry(d.resource.as_str()).or_default().push(what);
        }
        let mut published = lock(&self.published);
        published.retain(|resource, _| notes.contains_key(resource.as_str()));
        for (resource, reasons) in notes {
            let note = truncate(format!("rejected by the interceptor agent, not applied: {}", reasons.join("; ")));
            if published.get(resource) == Some(&note) {
                continue;
            }
            let Some(reference) = self.cluster.object_reference(resource) else {
                continue; // gone from the cluster meanwhile
            };
            published.insert(resource.to_owned(), note.clone());
            let recorder = self.recorder.clone();
            let resource = resource.to_owned();
            tokio::spawn(async move {
                let event = Event {
                    type_: EventType::Warning,
                    reason: REJECTED_REASON.into(),
                    note: Some(note),
                    action: "Validate".into(),
                    secondary: None,
                };
                if let Err(err) = recorder.publish(&event, &reference).await {
                    warn!(resource, %err, "cannot write the rejection Event");
                }
            });
        }
    }
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_the_kubernetes_limit_on_a_char_boundary() {
        let note = truncate("é".repeat(1000));
        assert!(note.len() <= MAX_NOTE_BYTES);
        assert!(note.ends_with("..."));
        assert_eq!(truncate("short".into()), "short");
    }
}
