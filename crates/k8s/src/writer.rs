//! The one writer: every apply, delete, finalizer removal and Event goes through here.
//! Field manager, no-op skipping, leadership and write counting live here and nowhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};

use crate::keys::{ObjectKey, RoutemapKey};
pub use crate::lease::Leadership;
use crate::metrics::Metrics;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "iter8-controller";

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("not the leader")]
    NotLeader,
    #[error("{0}")]
    Api(#[from] kube::Error),
}

/// Type, reason and note of the last Event published about one subject.
type LastEvent = (EventType, String, String);

/// The single writer.
pub struct Writer {
    client: Client,
    recorder: Recorder,
    leadership: Leadership,
    pub metrics: Arc<Metrics>,
    /// Last Event per (routemap, subject): identical Events are not repeated.
    last_events: Mutex<HashMap<(RoutemapKey, String), LastEvent>>,
}

impl Writer {
    pub fn new(
        client: Client,
        leadership: Leadership,
        instance: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Writer {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            leadership,
            metrics,
            last_events: Mutex::default(),
        }
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    fn check_leader(&self) -> Result<(), WriteError> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            self.metrics.not_leader.inc();
            Err(WriteError::NotLeader)
        }
    }

    /// Server-side applies `desired` (force, field manager `iter8-controller`).
    pub async fn apply(
        &self,
        key: &ObjectKey,
        kind: &str,
        desired: &Value,
    ) -> Result<DynamicObject, WriteError> {
        self.check_leader()?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &key.gvr.api_resource(kind),
        );
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&key.name, &pp, &Patch::Apply(desired)).await {
            Ok(obj) => {
                self.metrics.apply("applied");
                Ok(obj)
            }
            Err(e) => {
                self.metrics.apply("failed");
                Err(e.into())
            }
        }
    }

    /// Records that a write was skipped because nothing changed.
    pub fn skipped(&self) {
        self.metrics.apply("unchanged");
    }

    /// Deletes a routing object (already gone counts as done).
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), WriteError> {
        self.check_leader()?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &key.gvr.api_resource(""),
        );
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => {
                self.metrics.deletes.inc();
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the legacy finalizer from a deleting object, guarded by its resourceVersion so a
    /// concurrent change of the finalizer list is never overwritten.
    pub async fn remove_finalizer(
        &self,
        key: &ObjectKey,
        resource_version: &str,
        finalizers: &[String],
        legacy: &str,
    ) -> Result<(), WriteError> {
        self.check_leader()?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &key.gvr.api_resource(""),
        );
        let keep: Vec<&String> = finalizers.iter().filter(|f| *f != legacy).collect();
        let patch = json!({"metadata": {"finalizers": keep, "resourceVersion": resource_version}});
        match api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.metrics.finalizers_removed.inc();
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes an Event on the routemap unless the last one for `subject` said the same.
    pub async fn event(
        &self,
        routemap: &RoutemapKey,
        uid: &str,
        subject: &str,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        if !self.leadership.is_leader() {
            return;
        }
        let dedup_key = (routemap.clone(), subject.to_string());
        let value = (type_, reason.to_string(), note.clone());
        {
            let mut last = self.last_events.lock().unwrap_or_else(|e| e.into_inner());
            if last.get(&dedup_key) == Some(&value) {
                return;
            }
            last.insert(dedup_key, value);
        }
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            name: Some(routemap.name.clone()),
            namespace: Some(routemap.namespace.clone()),
            uid: Some(uid.to_string()),
            ..Default::default()
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            // Events carry at most 1 kB of note.
            note: Some(truncate(&note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        match self.recorder.publish(&ev, &reference).await {
            Ok(()) => {
                let t = match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                };
                self.metrics
                    .events
                    .get_or_create(&vec![("type", t.to_string())])
                    .inc();
            }
            Err(e) => tracing::warn!(routemap = %routemap, error = %e, "failed to publish event"),
        }
    }

    /// Forgets the Events of a deleted routemap.
    pub fn forget(&self, routemap: &RoutemapKey) {
        self.last_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, _), _| k != routemap);
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
