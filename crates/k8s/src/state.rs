//! In-memory stores fed by the watches, and the index from each object to the routemaps that
//! name it. Synchronous and free of I/O, so the index can be tested with plain values.
//! Stores keep only what the controller reads (no managedFields, no unread metadata).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use iter8_core::availability::Observed;
use iter8_core::config::Config;
use iter8_core::render::RoutemapMeta;
use iter8_core::routemap::Routemap;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::keys::{Gvr, ObjectKey, RoutemapKey};

/// The legacy finalizer the original controller put on every watched object.
pub const LEGACY_FINALIZER: &str = "iter8.tools/finalizer";

/// A routemap as the controller knows it.
#[derive(Clone, Debug)]
pub struct RoutemapRecord {
    pub meta: RoutemapMeta,
    /// The parsed `strSpec`, or why it could not be used.
    pub spec: Result<Routemap, String>,
}

/// An object that is being deleted and still carries the legacy finalizer.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckDeletion {
    pub resource_version: String,
    pub finalizers: Vec<String>,
}

/// Everything the watches have seen.
#[derive(Default)]
pub struct State {
    objects: HashMap<ObjectKey, Observed>,
    routemaps: BTreeMap<RoutemapKey, RoutemapRecord>,
    /// object -> routemaps that reference it.
    index: HashMap<ObjectKey, BTreeSet<RoutemapKey>>,
    /// routemap -> the objects it references (to undo its index entries).
    references: HashMap<RoutemapKey, Vec<ObjectKey>>,
    /// Live routing objects the controller wrote (trimmed), by their own key.
    routing: HashMap<ObjectKey, Value>,
    stuck: HashMap<ObjectKey, StuckDeletion>,
}

/// The fields of a watched object that readiness, weights and signatures read.
pub fn observe(obj: &DynamicObject) -> Observed {
    Observed {
        generation: obj.metadata.generation,
        deleting: obj.metadata.deletion_timestamp.is_some(),
        annotations: obj.metadata.annotations.clone().unwrap_or_default(),
        spec: obj.data.get("spec").cloned(),
        status: obj.data.get("status").cloned(),
    }
}

/// A routing object reduced to what drift detection compares.
pub fn trim_routing(obj: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for noisy in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            meta.remove(noisy);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

impl State {
    /// Records a watched object; returns the routemaps to reconcile if what they read changed.
    pub fn upsert_object(&mut self, key: ObjectKey, obj: &DynamicObject) -> Vec<RoutemapKey> {
        let observed = observe(obj);
        self.track_finalizer(&key, obj);
        if self.objects.get(&key) == Some(&observed) {
            return Vec::new();
        }
        self.objects.insert(key.clone(), observed);
        self.routemaps_of(&key)
    }

    /// Forgets a watched object; returns the routemaps to reconcile.
    pub fn remove_object(&mut self, key: &ObjectKey) -> Vec<RoutemapKey> {
        self.stuck.remove(key);
        if self.objects.remove(key).is_none() {
            return Vec::new();
        }
        self.routemaps_of(key)
    }

    /// Replaces every object of one type (after a watch (re)list); returns affected routemaps.
    pub fn replace_type(
        &mut self,
        gvr: &Gvr,
        objs: &[(ObjectKey, DynamicObject)],
    ) -> Vec<RoutemapKey> {
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| &k.gvr == gvr && !objs.iter().any(|(o, _)| o == *k))
            .cloned()
            .collect();
        let mut affected: BTreeSet<RoutemapKey> = BTreeSet::new();
        for k in gone {
            affected.extend(self.remove_object(&k));
        }
        for (k, o) in objs {
            affected.extend(self.upsert_object(k.clone(), o));
        }
        affected.into_iter().collect()
    }

    fn track_finalizer(&mut self, key: &ObjectKey, obj: &DynamicObject) {
        let finalizers = obj.metadata.finalizers.clone().unwrap_or_default();
        if obj.metadata.deletion_timestamp.is_some()
            && finalizers.iter().any(|f| f == LEGACY_FINALIZER)
        {
            self.stuck.insert(
                key.clone(),
                StuckDeletion {
                    resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
                    finalizers,
                },
            );
        } else {
            self.stuck.remove(key);
        }
    }

    /// A deleting object still held by the legacy finalizer, if `key` is one.
    pub fn stuck_deletion(&self, key: &ObjectKey) -> Option<StuckDeletion> {
        self.stuck.get(key).cloned()
    }

    /// Every object held by the legacy finalizer.
    pub fn stuck_deletions(&self) -> Vec<ObjectKey> {
        self.stuck.keys().cloned().collect()
    }

    fn routemaps_of(&self, key: &ObjectKey) -> Vec<RoutemapKey> {
        self.index
            .get(key)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records a routemap and re-indexes what it references.
    pub fn upsert_routemap(&mut self, key: RoutemapKey, record: RoutemapRecord, config: &Config) {
        self.unindex(&key);
        let refs: Vec<ObjectKey> = match &record.spec {
            Ok(rm) => rm
                .references(&key.namespace)
                .into_iter()
                .filter_map(|(short, namespace, name)| {
                    let rt = config.resource_types.get(&short)?;
                    Some(ObjectKey {
                        gvr: Gvr::of(rt),
                        namespace,
                        name,
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for r in &refs {
            self.index.entry(r.clone()).or_default().insert(key.clone());
        }
        self.references.insert(key.clone(), refs);
        self.routemaps.insert(key, record);
    }

    /// Forgets a routemap.
    pub fn remove_routemap(&mut self, key: &RoutemapKey) -> Option<RoutemapRecord> {
        self.unindex(key);
        self.routemaps.remove(key)
    }

    fn unindex(&mut self, key: &RoutemapKey) {
        for r in self.references.remove(key).unwrap_or_default() {
            if let Some(set) = self.index.get_mut(&r) {
                set.remove(key);
                if set.is_empty() {
                    self.index.remove(&r);
                }
            }
        }
    }

    /// The routemap, if known.
    pub fn routemap(&self, key: &RoutemapKey) -> Option<RoutemapRecord> {
        self.routemaps.get(key).cloned()
    }

    /// Every known routemap.
    pub fn routemap_keys(&self) -> Vec<RoutemapKey> {
        self.routemaps.keys().cloned().collect()
    }

    /// A watched object, if present.
    pub fn object(&self, key: &ObjectKey) -> Option<Observed> {
        self.objects.get(key).cloned()
    }

    /// How many objects of each type are watched.
    pub fn counts_by_type(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for k in self.objects.keys() {
            *counts.entry(k.gvr.to_string()).or_default() += 1;
        }
        counts
    }

    /// Records a live routing object.
    pub fn upsert_routing(&mut self, key: ObjectKey, obj: &DynamicObject) {
        self.routing.insert(key, trim_routing(obj));
    }

    /// Forgets a routing object.
    pub fn remove_routing(&mut self, key: &ObjectKey) {
        self.routing.remove(key);
    }

    /// Replaces every routing object of one type (after a watch (re)list).
    pub fn replace_routing(&mut self, gvr: &Gvr, objs: &[(ObjectKey, DynamicObject)]) {
        self.routing.retain(|k, _| &k.gvr != gvr);
        for (k, o) in objs {
            self.upsert_routing(k.clone(), o);
        }
    }

    /// The live routing object, if seen.
    pub fn routing(&self, key: &ObjectKey) -> Option<Value> {
        self.routing.get(key).cloned()
    }

    /// Routing objects owned by routemap `owner` (by ownerReference name and namespace).
    pub fn routing_owned_by(&self, owner: &RoutemapKey) -> Vec<ObjectKey> {
        let mut owned: Vec<ObjectKey> = self
            .routing
            .iter()
            .filter(|(k, v)| {
                k.namespace == owner.namespace
                    && v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| {
                            refs.iter().any(|r| {
                                r["kind"] == "ConfigMap" && r["name"] == owner.name.as_str()
                            })
                        })
            })
            .map(|(k, _)| k.clone())
            .collect();
        owned.sort();
        owned
    }
}

/// Whether `live` already holds everything `desired` says: every field of a desired map is in
/// the live map with the same value (the API server may add defaults), lists match item by item.
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d
            .iter()
            .all(|(k, dv)| l.get(k).is_some_and(|lv| contains(lv, dv)) || dv.is_null()),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        _ => live == desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contains_allows_server_defaults_but_not_changes() {
        let desired = json!({"spec": {"http": [{"route": [{"destination": {"host": "a"}}]}]}});
        let live = json!({"spec": {"http": [{"route": [{"destination": {"host": "a"}, "weight": 100}]}]}, "status": {}});
        assert!(contains(&live, &desired));
        let edited = json!({"spec": {"http": [{"route": [{"destination": {"host": "b"}}]}]}});
        assert!(!contains(&edited, &desired));
        let extra_route =
            json!({"spec": {"http": [{"route": [{"destination": {"host": "a"}}]}, {"route": []}]}});
        assert!(!contains(&extra_route, &desired));
    }
}
