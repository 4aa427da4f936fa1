//! The one writer: every apply, delete, finalizer removal and Event goes through here.
//! Field manager, no-op skipping, leadership and write counting live here and nowhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
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

/// What makes two Events the same: routemap (and its uid), type, reason and note.
type SeriesKey = (RoutemapKey, String, &'static str, String, String);

/// An Event object published recently; the same Event again extends it as a series.
#[derive(Clone)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// How long an Event object is extended before a new one is created (as client-go does).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// The single writer.
pub struct Writer {
    client: Client,
    /// `reportingController` and `reportingInstance` of Events.
    controller: String,
    instance: String,
    /// Recent Event objects by what they say. Unlike kube's `Recorder`, whose series key
    /// leaves out the note (so a second, different problem with the same reason would only
    /// bump the count of the first Event and never be shown), the note is part of the key.
    published: Mutex<HashMap<SeriesKey, Published>>,
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
        Writer {
            controller: FIELD_MANAGER.into(),
            instance: instance.unwrap_or_else(|| FIELD_MANAGER.into()),
            published: Mutex::default(),
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
        let t = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        // Events carry at most 1 kB of note.
        let note = truncate(&note, 1000);
        match self.publish(routemap, uid, t, reason, note).await {
            Ok(()) => {
                self.metrics
                    .events
                    .get_or_create(&vec![("type", t.to_string())])
                    .inc();
            }
            Err(e) => tracing::warn!(routemap = %routemap, error = %e, "failed to publish event"),
        }
    }

    /// Creates an events.k8s.io/v1 Event on the routemap, or, when the same Event (same
    /// type, reason and note) was created less than [`SERIES_TTL`] ago, extends that one
    /// as a series.
    async fn publish(
        &self,
        routemap: &RoutemapKey,
        uid: &str,
        type_: &'static str,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key: SeriesKey = (
            routemap.clone(),
            uid.to_string(),
            type_,
            reason.to_string(),
            note.clone(),
        );
        let prior = {
            let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
            published.retain(|_, p| p.last + SERIES_TTL > now);
            published.get(&key).cloned()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &routemap.namespace);
        if let Some(p) = prior {
            let count = p.count + 1;
            let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            match api
                .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.remember(key, p.name, count, now);
                    return Ok(());
                }
                // Expired or deleted: create a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = K8sEvent {
            action: Some("Reconcile".into()),
            reason: Some(reason.to_string()),
            note: Some(note),
            event_time: Some(MicroTime(now)),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("ConfigMap".into()),
                name: Some(routemap.name.clone()),
                namespace: Some(routemap.namespace.clone()),
                uid: Some(uid.to_string()),
                ..Default::default()
            }),
            metadata: ObjectMeta {
                namespace: Some(routemap.namespace.clone()),
                name: Some(format!("{}.{:x}", routemap.name, now.as_nanosecond())),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(type_.to_string()),
            ..Default::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        self.remember(key, created.metadata.name.unwrap_or_default(), 1, now);
        Ok(())
    }

    fn remember(&self, key: SeriesKey, name: String, count: i32, last: Timestamp) {
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Published { name, count, last });
    }

    /// Forgets the last Event about `subject`, which is fine now: the same Event is
    /// published again if the problem comes back.
    pub fn clear(&self, routemap: &RoutemapKey, subject: &str) {
        self.last_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(routemap.clone(), subject.to_string()));
    }

    /// Forgets the Events of a deleted routemap.
    pub fn forget(&self, routemap: &RoutemapKey) {
        self.last_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, _), _| k != routemap);
        self.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(k, ..), _| k != routemap);
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
