//! Events on routemaps, owned by the [`crate::applier::Applier`] (nothing else writes). An
//! Event is published once per change of what is said about a subject; the same Event again
//! within a few minutes extends the existing object as a series. A failed publish is not
//! remembered as sent: it waits in an outbox and goes out at the routemap's next reconcile
//! (news such as `Applied` even when the reconcile itself has nothing new to say).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{ApiFailure, Error};
use crate::keys::RoutemapKey;
use crate::plan::{Note, Severity};

/// What makes two Events the same: routemap (and its uid) and the note.
type SeriesKey = (RoutemapKey, String, Note);

/// An Event object published recently; the same Event again extends it as a series.
#[derive(Clone)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// How long an Event object is extended before a new one is created (as client-go does).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Events carry at most 1 kB of note.
const MAX_NOTE: usize = 1000;

/// Publishes Events; remembers what was last said per (routemap, subject).
pub struct Recorder {
    client: Client,
    /// `reportingController` and `reportingInstance`.
    controller: String,
    instance: String,
    /// Unlike kube's `Recorder`, whose series key leaves out the note (so a second,
    /// different problem with the same reason would only bump the count of the first Event
    /// and never be shown), the note is part of the key.
    published: Mutex<HashMap<SeriesKey, Published>>,
    /// Last note per (routemap, subject): an identical one is not published again.
    last: Mutex<HashMap<(RoutemapKey, String), Note>>,
    /// Notes whose publish failed, per (routemap, subject), until sent or superseded.
    outbox: Mutex<HashMap<(RoutemapKey, String), Note>>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Recorder {
        Recorder {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            published: Mutex::default(),
            last: Mutex::default(),
            outbox: Mutex::default(),
        }
    }

    /// Whether `note` is news for the subject: it differs from the last one published and
    /// is not already waiting in the outbox (so it is logged and counted once).
    pub fn is_news(&self, routemap: &RoutemapKey, subject: &str, note: &Note) -> bool {
        let key = (routemap.clone(), subject.to_string());
        lock(&self.last).get(&key) != Some(note) && lock(&self.outbox).get(&key) != Some(note)
    }

    /// Publishes `note` about `subject` unless it was the last thing said about it; it
    /// supersedes whatever waits in the outbox for the subject. Returns whether an Event was
    /// written.
    pub async fn publish(
        &self,
        routemap: &RoutemapKey,
        uid: &str,
        subject: &str,
        note: &Note,
    ) -> Result<bool, Error> {
        let key = (routemap.clone(), subject.to_string());
        lock(&self.outbox).remove(&key);
        if lock(&self.last).get(&key) == Some(note) {
            return Ok(false);
        }
        if let Err(e) = self.write(routemap, uid, note).await {
            // Not remembered as sent: it goes out at the next attempt.
            lock(&self.outbox).insert(key, note.clone());
            return Err(e);
        }
        lock(&self.last).insert(key, note.clone());
        Ok(true)
    }

    /// Publishes what waits in the outbox for `routemap`. Returns how many were written.
    pub async fn flush(&self, routemap: &RoutemapKey, uid: &str) -> Result<usize, Error> {
        let due: Vec<(String, Note)> = lock(&self.outbox)
            .iter()
            .filter(|((k, _), _)| k == routemap)
            .map(|((_, subject), note)| (subject.clone(), note.clone()))
            .collect();
        let mut written = 0;
        for (subject, note) in due {
            written += usize::from(self.publish(routemap, uid, &subject, &note).await?);
        }
        Ok(written)
    }

    /// Forgets the last note about `subject`, which is fine now: the same note is
    /// published again if the problem comes back. A Warning waiting in the outbox no longer
    /// holds and is dropped; news (`Applied`, `Deleted`) still goes out.
    pub fn clear(&self, routemap: &RoutemapKey, subject: &str) {
        let key = (routemap.clone(), subject.to_string());
        lock(&self.last).remove(&key);
        let mut outbox = lock(&self.outbox);
        if outbox
            .get(&key)
            .is_some_and(|n| n.severity == Severity::Warning)
        {
            outbox.remove(&key);
        }
    }

    /// Forgets everything about a deleted routemap.
    pub fn forget(&self, routemap: &RoutemapKey) {
        lock(&self.last).retain(|(k, _), _| k != routemap);
        lock(&self.outbox).retain(|(k, _), _| k != routemap);
        lock(&self.published).retain(|(k, ..), _| k != routemap);
    }

    /// Creates an events.k8s.io/v1 Event on the routemap, or, when the same Event was
    /// created less than [`SERIES_TTL`] ago, extends that one as a series.
    async fn write(&self, routemap: &RoutemapKey, uid: &str, note: &Note) -> Result<(), Error> {
        let now = Timestamp::now();
        let key: SeriesKey = (routemap.clone(), uid.to_string(), note.clone());
        let prior = {
            let mut published = lock(&self.published);
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
                Err(e) if ApiFailure::of(&e) == ApiFailure::NotFound => {}
                Err(e) => return Err(Error::api(format!("update Event {}", p.name), e)),
            }
        }
        let type_ = match note.severity {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        };
        let name = event_name(&routemap.name, now);
        let event = K8sEvent {
            action: Some("Reconcile".into()),
            reason: Some(note.reason.to_string()),
            note: Some(truncate(&note.text, MAX_NOTE)),
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
                name: Some(name.clone()),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(type_.to_string()),
            ..Default::default()
        };
        let created = api
            .create(&PostParams::default(), &event)
            .await
            .map_err(|e| Error::api(format!("create Event {name}"), e))?;
        self.remember(key, created.metadata.name.unwrap_or(name), 1, now);
        Ok(())
    }

    fn remember(&self, key: SeriesKey, name: String, count: i32, last: Timestamp) {
        lock(&self.published).insert(key, Published { name, count, last });
    }
}

/// `<routemap>.<hex time>`, shortened with a hash when the routemap's name is so long that
/// the Event's name would pass the 253 characters Kubernetes allows.
fn event_name(routemap: &str, now: Timestamp) -> String {
    let suffix = format!("{:x}", now.as_nanosecond());
    let max_prefix = 253 - 1 - suffix.len();
    if routemap.len() <= max_prefix {
        return format!("{routemap}.{suffix}");
    }
    let digest = Sha256::digest(routemap.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let keep = max_prefix - hash.len() - 1;
    let head = routemap[..keep].trim_end_matches(['.', '-']);
    format!("{head}-{hash}.{suffix}")
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_stay_valid_for_the_longest_routemap_name() {
        let now = Timestamp::now();
        let short = event_name("wisdom-routemap", now);
        assert!(short.starts_with("wisdom-routemap."));
        let longest = "a".repeat(253);
        let name = event_name(&longest, now);
        assert!(name.len() <= 253, "{} characters", name.len());
        assert!(name.starts_with("aaaa"));
        assert_ne!(event_name(&"b".repeat(253), now), name);
    }

    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, MAX_NOTE);
        assert!(t.len() <= MAX_NOTE + 3);
        assert!(t.ends_with("..."));
    }
}
