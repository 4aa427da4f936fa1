//! The one applier: every write the controller makes goes through here (server-side apply of
//! routing objects, pruning and cleanup deletes, legacy finalizer removal, Events). It owns
//! kind resolution, ownership stamping, the no-op and drift comparison, leadership checks and
//! write metrics. It reads nothing but discovery and what the caller hands in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::GroupVersion;
use kube::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::analysis::StatusRecord;
use crate::error::{ApiFailure, Error};
use crate::events::Recorder;
use crate::keys::{Gvr, ObjectKey, RoutemapKey};
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::plan::{Desired, Note, Severity};
use crate::state::{contains, RoutingObject, APPLIED_HASH_ANNOTATION, FIELD_MANAGER};

/// Label the controller puts on the routing objects it writes, so it can watch them.
pub const ROUTING_LABEL: &str = "iter8.tools/routing";

/// What a delete did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// Deleted, or already gone.
    Deleted,
    /// Left alone: not written by the controller, or replaced since it was seen.
    NotOurs,
}

/// What an apply did.
#[derive(Debug)]
pub enum Applied {
    /// The live object already says everything desired: no request was made.
    Unchanged,
    /// Written; `created` when there was no live object.
    Written {
        object: Box<DynamicObject>,
        created: bool,
    },
}

/// The single writer.
pub struct Applier {
    client: Client,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    /// Where request failures are reported for `/readyz`.
    health: Arc<crate::sync::SyncTracker>,
    events: Recorder,
    kinds: Mutex<HashMap<Gvr, String>>,
}

impl Applier {
    pub fn new(
        client: Client,
        leadership: Leadership,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        health: Arc<crate::sync::SyncTracker>,
    ) -> Applier {
        let instance = instance.unwrap_or_else(|| FIELD_MANAGER.into());
        Applier {
            events: Recorder::new(client.clone(), FIELD_MANAGER, &instance),
            client,
            leadership,
            metrics,
            health,
            kinds: Mutex::default(),
        }
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    fn check_leader(&self) -> Result<(), Error> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            self.metrics.not_leader.inc();
            Err(Error::NotLeader)
        }
    }

    /// The kind of a resource type, from discovery (cached once found).
    pub async fn kind_of(&self, gvr: &Gvr) -> Result<String, Error> {
        if let Some(k) = lock(&self.kinds).get(gvr) {
            return Ok(k.clone());
        }
        let gv = GroupVersion::gv(&gvr.group, &gvr.version);
        let group = match kube::discovery::pinned_group(&self.client, &gv).await {
            Ok(g) => g,
            Err(e) if ApiFailure::of(&e) == ApiFailure::NotFound => {
                return Err(Error::NotServed(gvr.clone()))
            }
            Err(e) => return Err(Error::api(format!("discover {}", gvr.api_version()), e)),
        };
        let kind = group
            .versioned_resources(&gvr.version)
            .into_iter()
            .find(|(ar, _)| ar.plural == gvr.resource)
            .map(|(ar, _)| ar.kind)
            .ok_or_else(|| Error::NotServed(gvr.clone()))?;
        lock(&self.kinds).insert(gvr.clone(), kind.clone());
        Ok(kind)
    }

    /// Records how a request that was made went, for `/readyz`: an unreachable or throttling
    /// API server fails it; any other answer shows the API server is there (a 500 can be a
    /// user's object it could not convert).
    fn observe<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match &result {
            Ok(_) | Err(Error::Api { .. }) => {}
            Err(_) => return result,
        }
        match &result {
            Err(
                e @ Error::Api {
                    failure: ApiFailure::Transport | ApiFailure::TooManyRequests,
                    ..
                },
            ) => self.health.api_failed(e.to_string()),
            _ => self.health.api_ok(),
        }
        result
    }

    /// Server-side applies a planned object (force, field manager `iter8-controller`), owned
    /// by the routemap, labelled for the routing watch and stamped with the hash of its
    /// content; makes no request when `live` already holds it.
    pub async fn apply(
        &self,
        routemap: &RoutemapKey,
        uid: &str,
        desired: &Desired,
        live: Option<&RoutingObject>,
    ) -> Result<Applied, Error> {
        match self.apply_once(routemap, uid, desired, live).await {
            // No request was made.
            Ok(Applied::Unchanged) => Ok(Applied::Unchanged),
            result => self.observe(result),
        }
    }

    async fn apply_once(
        &self,
        routemap: &RoutemapKey,
        uid: &str,
        desired: &Desired,
        live: Option<&RoutingObject>,
    ) -> Result<Applied, Error> {
        let object = with_ownership(desired.object.clone(), routemap, uid);
        if let Some(live) = live {
            if live.applied_hash.as_deref()
                == object["metadata"]["annotations"][APPLIED_HASH_ANNOTATION].as_str()
                && contains(&live.value(), &object)
            {
                self.metrics.apply("unchanged");
                return Ok(Applied::Unchanged);
            }
        }
        self.check_leader()?;
        let target = &desired.target;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &target.namespace,
            &target.gvr.api_resource(&desired.kind),
        );
        // Not seen by the routing watch: it may still exist without our label. A forced apply
        // would take it over; refuse instead, unless this routemap owns it (an object the
        // original Iter8 controller wrote for it, say).
        if live.is_none() {
            match api.get_opt(&target.name).await {
                Ok(None) => {}
                Ok(Some(existing))
                    if crate::state::routemap_owner(&existing)
                        .is_some_and(|r| r.name == routemap.name && r.uid == uid) => {}
                Ok(Some(existing)) => {
                    return Err(Error::Taken(format!(
                        "{} {}/{} exists and was not written by this controller ({}); not taking it over",
                        desired.kind,
                        target.namespace,
                        target.name,
                        describe_owner(&existing)
                    )))
                }
                Err(e) => {
                    return Err(Error::api(
                        format!("get {} {}/{}", desired.kind, target.namespace, target.name),
                        e,
                    ))
                }
            }
        }
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&target.name, &pp, &Patch::Apply(&object)).await {
            Ok(obj) => {
                self.metrics.apply("applied");
                Ok(Applied::Written {
                    object: Box::new(obj),
                    created: live.is_none(),
                })
            }
            // The type is gone (CRD removed): forget its kind, retry as not served.
            Err(e) if ApiFailure::of(&e) == ApiFailure::NotFound => {
                self.metrics.apply("failed");
                lock(&self.kinds).remove(&target.gvr);
                Err(Error::NotServed(target.gvr.clone()))
            }
            Err(e) => {
                self.metrics.apply("failed");
                Err(Error::api(
                    format!(
                        "apply {} {}/{}",
                        desired.kind, target.namespace, target.name
                    ),
                    e,
                ))
            }
        }
    }

    /// Deletes a routing object the controller wrote, and only that incarnation of it (a uid
    /// precondition). Already gone counts as deleted.
    pub async fn delete(&self, key: &ObjectKey, seen: &RoutingObject) -> Result<Deleted, Error> {
        if !seen.ours {
            return Ok(Deleted::NotOurs);
        }
        let result = self.delete_once(key, seen).await;
        self.observe(result)
    }

    async fn delete_once(&self, key: &ObjectKey, seen: &RoutingObject) -> Result<Deleted, Error> {
        if !seen.ours {
            // The stores only offer our objects; this guards the rule where it matters.
            return Ok(Deleted::NotOurs);
        }
        self.check_leader()?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &key.gvr.api_resource(""),
        );
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(seen.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&key.name, &dp).await {
            Ok(_) => {
                self.metrics.deletes.inc();
                Ok(Deleted::Deleted)
            }
            Err(e) => match ApiFailure::of(&e) {
                ApiFailure::NotFound => Ok(Deleted::Deleted),
                // The uid differs: someone replaced the object; it is not ours to delete, and
                // the watch brings the new one.
                ApiFailure::Conflict => Ok(Deleted::NotOurs),
                _ => Err(Error::api(format!("delete {key}"), e)),
            },
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
    ) -> Result<(), Error> {
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
            Err(e) if ApiFailure::of(&e) == ApiFailure::NotFound => Ok(()),
            Err(e) => Err(Error::api(
                format!("remove finalizer {legacy} from {key}"),
                e,
            )),
        }
    }

    /// Writes routemap `key`'s analysis status ConfigMap (server-side apply). With `stored`
    /// (the status as last seen), the write is conditional on its resourceVersion, so a stale
    /// leader can never overwrite a newer decision; without, it refuses to take over a
    /// ConfigMap of that name it did not write. Returns the status as written.
    pub async fn write_status(
        &self,
        key: &RoutemapKey,
        routemap_uid: &str,
        state: &iter8_analysis::State,
        stored: Option<&StatusRecord>,
    ) -> Result<StatusRecord, Error> {
        self.check_leader()?;
        let result = self
            .write_status_once(key, routemap_uid, state, stored)
            .await;
        self.observe(result)
    }

    async fn write_status_once(
        &self,
        key: &RoutemapKey,
        routemap_uid: &str,
        state: &iter8_analysis::State,
        stored: Option<&StatusRecord>,
    ) -> Result<StatusRecord, Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        let name = crate::analysis::status_name(&key.name);
        let mut object = crate::analysis::status_object(key, routemap_uid, state);
        match stored {
            Some(s) => object["metadata"]["resourceVersion"] = json!(s.resource_version),
            None => match api.get_opt(&name).await {
                Ok(None) => {}
                Ok(Some(existing))
                    if crate::analysis::observe_status(&existing)
                        .is_some_and(|(k, _)| &k == key) => {}
                Ok(Some(_)) => {
                    return Err(Error::Taken(format!(
                        "ConfigMap {}/{name} exists and is not this routemap's analysis status; \
                         not taking it over",
                        key.namespace
                    )))
                }
                Err(e) => {
                    return Err(Error::api(
                        format!("get ConfigMap {}/{name}", key.namespace),
                        e,
                    ))
                }
            },
        }
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&name, &pp, &Patch::Apply(&object)).await {
            Ok(cm) => {
                self.metrics.apply("applied");
                crate::analysis::observe_status(&cm)
                    .map(|(_, rec)| rec)
                    .ok_or_else(|| {
                        Error::Taken(format!("ConfigMap {}/{name} lost its owner", key.namespace))
                    })
            }
            Err(e) => {
                self.metrics.apply("failed");
                Err(Error::api(
                    format!("apply ConfigMap {}/{name}", key.namespace),
                    e,
                ))
            }
        }
    }

    /// Deletes routemap `key`'s analysis status ConfigMap, that incarnation only (uid).
    pub async fn delete_status(&self, key: &RoutemapKey, uid: &str) -> Result<(), Error> {
        self.check_leader()?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        let name = crate::analysis::status_name(&key.name);
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        let result = match api.delete(&name, &dp).await {
            Ok(_) => {
                self.metrics.deletes.inc();
                Ok(())
            }
            Err(e) => match ApiFailure::of(&e) {
                ApiFailure::NotFound | ApiFailure::Conflict => Ok(()),
                _ => Err(Error::api(
                    format!("delete ConfigMap {}/{name}", key.namespace),
                    e,
                )),
            },
        };
        self.observe(result)
    }

    /// Reports about one subject of a routemap: publishes the note as an Event when it is
    /// news, or forgets the last one when the subject is fine. Counts the error metric and
    /// logs each new Warning once.
    pub async fn report(
        &self,
        routemap: &RoutemapKey,
        uid: &str,
        subject: &str,
        note: Option<&Note>,
    ) -> Result<(), Error> {
        let Some(note) = note else {
            self.events.clear(routemap, subject);
            return Ok(());
        };
        if self.events.is_news(routemap, subject, note) && note.severity == Severity::Warning {
            if let Some(category) = note.category {
                self.metrics.error(category);
            }
            tracing::warn!(routemap = %routemap, reason = note.reason, "{}", note.text);
        }
        self.check_leader()?;
        let published = match self.events.publish(routemap, uid, subject, note).await {
            // Not news: no request was made.
            Ok(false) => Ok(false),
            result => self.observe(result),
        };
        if published? {
            self.count_event(note.severity, 1);
        }
        Ok(())
    }

    /// Publishes the Events of `routemap` that failed before.
    pub async fn flush_events(&self, routemap: &RoutemapKey, uid: &str) -> Result<(), Error> {
        self.check_leader()?;
        let written = self.observe(self.events.flush(routemap, uid).await)?;
        // The outbox mixes types; what matters for the metric is that writes happened.
        self.count_event(Severity::Normal, written);
        Ok(())
    }

    fn count_event(&self, severity: Severity, n: usize) {
        if n == 0 {
            return;
        }
        let t = match severity {
            Severity::Normal => "Normal",
            Severity::Warning => "Warning",
        };
        self.metrics
            .events
            .get_or_create(&vec![("type", t.to_string())])
            .inc_by(n as u64);
    }

    /// Forgets the Events of a deleted routemap.
    pub fn forget(&self, routemap: &RoutemapKey) {
        self.events.forget(routemap);
    }
}

/// The desired routing object: owned by the routemap (so garbage collection removes it with
/// the routemap), labelled for our routing watch, and stamped with the hash of its content.
pub fn with_ownership(mut obj: Value, key: &RoutemapKey, uid: &str) -> Value {
    let hash = {
        let canonical = serde_json::to_string(&obj).unwrap_or_default();
        let digest = Sha256::digest(canonical.as_bytes());
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let meta = &mut obj["metadata"];
    meta["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "ConfigMap", "name": key.name, "uid": uid,
    }]);
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][ROUTING_LABEL] = json!("true");
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][APPLIED_HASH_ANNOTATION] = json!(hash);
    obj
}

/// Who an existing object belongs to, in words: its owners, else its field managers.
pub fn describe_owner(obj: &DynamicObject) -> String {
    use kube::ResourceExt;
    let owners: Vec<String> = obj
        .owner_references()
        .iter()
        .map(|r| format!("{} {}", r.kind, r.name))
        .collect();
    if !owners.is_empty() {
        return format!("owned by {}", owners.join(", "));
    }
    let managers: Vec<String> = obj
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    if managers.is_empty() {
        "no owner".to_string()
    } else {
        format!("managed by {}", managers.join(", "))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
