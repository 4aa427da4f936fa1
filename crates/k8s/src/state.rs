//! In-memory stores fed by the watches, and the index from each object to the routemaps that
//! name it. Synchronous and free of I/O, so the index is tested with plain values.
//! Stores keep only what the controller reads (no managedFields, no unread metadata).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use iter8_core::availability::{weigh, Observed, Weighing, WEIGHT_ANNOTATION};
use iter8_core::config::Config;
use iter8_core::render::RoutemapMeta;
use iter8_core::routemap::{self, Routemap, RoutemapError, STR_SPEC_KEY};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::ResourceExt;
use serde_json::Value;

use iter8_analysis::spec::Analysis;

use crate::analysis::{self as glue, Job, StatusRecord};
use crate::controller::ROUTEMAP_VERSION_LABEL;
use crate::keys::{Gvr, ObjectKey, RoutemapKey};

/// The legacy finalizer the original controller put on every watched object.
pub const LEGACY_FINALIZER: &str = "iter8.tools/finalizer";
/// The field manager of every write.
pub const FIELD_MANAGER: &str = "iter8-controller";
/// Annotation with the hash of what the controller last applied, so a restart can tell an
/// unchanged routing object from a stale one without writing.
pub const APPLIED_HASH_ANNOTATION: &str = "iter8.tools/applied-hash";

/// A routemap as the controller knows it.
#[derive(Clone, Debug)]
pub struct RoutemapRecord {
    pub meta: RoutemapMeta,
    /// The parsed `strSpec`, or why the controller holds the routemap: it keeps the
    /// routing objects already applied and does not reconcile them until this changes.
    pub spec: Result<Routemap, Hold>,
    /// Its analysis block, checked (`None` without one, or with a single version).
    pub analysis: Option<Result<Analysis, String>>,
}

impl RoutemapRecord {
    /// A routemap ConfigMap as the controller reads it: held when its version label is not
    /// accepted or its `strSpec` is missing or invalid.
    pub fn read(cm: &ConfigMap, config: &Config) -> RoutemapRecord {
        let namespace = cm.namespace().unwrap_or_default();
        let version = cm.labels().get(ROUTEMAP_VERSION_LABEL).cloned();
        let accepted = &config.routemap_versions;
        let spec = if !version.as_ref().is_some_and(|v| accepted.contains(v)) {
            Err(Hold::UnacceptedVersion {
                found: version,
                accepted: accepted.clone(),
            })
        } else {
            match cm.data.as_ref().and_then(|d| d.get(STR_SPEC_KEY)) {
                None => Err(Hold::Invalid(RoutemapError::MissingSpec)),
                Some(s) => routemap::parse(s, &namespace, config).map_err(Hold::Invalid),
            }
        };
        let meta = RoutemapMeta {
            name: cm.name_any(),
            namespace,
            uid: cm.uid().unwrap_or_default(),
            labels: cm.labels().clone(),
            annotations: cm.annotations().clone(),
        };
        RoutemapRecord::new(meta, spec)
    }

    /// Reads a routemap's spec (and its analysis block, if it has one).
    pub fn new(meta: RoutemapMeta, spec: Result<Routemap, Hold>) -> RoutemapRecord {
        let analysis = spec.as_ref().ok().and_then(crate::analysis::parse_block);
        RoutemapRecord {
            meta,
            spec,
            analysis,
        }
    }
}

/// Why a known routemap is not reconciled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Its `strSpec` is missing or invalid.
    Invalid(RoutemapError),
    /// Its `iter8.tools/version` label is not one the config accepts.
    UnacceptedVersion {
        found: Option<String>,
        accepted: Vec<String>,
    },
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Invalid(e) => write!(f, "{e}"),
            Hold::UnacceptedVersion { found, accepted } => {
                match found {
                    Some(v) => write!(f, "label iter8.tools/version {v:?} is not accepted")?,
                    None => write!(f, "label iter8.tools/version is missing")?,
                }
                write!(
                    f,
                    " (accepted: {}); the routing objects already applied are kept and not reconciled",
                    accepted.join(", ")
                )
            }
        }
    }
}

/// An object that is being deleted and still carries the legacy finalizer.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckDeletion {
    pub resource_version: String,
    pub finalizers: Vec<String>,
}

/// A watched application object reduced to what the controller keeps of it.
#[derive(Clone, Debug, PartialEq)]
pub struct AppObject {
    pub key: ObjectKey,
    pub observed: Observed,
    /// Set while it is being deleted and still carries the legacy finalizer.
    pub stuck: Option<StuckDeletion>,
}

impl AppObject {
    /// Reduces watched object `key`.
    pub fn of(key: ObjectKey, obj: &DynamicObject) -> AppObject {
        let finalizers = obj.finalizers();
        let stuck = (obj.metadata.deletion_timestamp.is_some()
            && finalizers.iter().any(|f| f == LEGACY_FINALIZER))
        .then(|| StuckDeletion {
            resource_version: obj.resource_version().unwrap_or_default(),
            finalizers: finalizers.to_vec(),
        });
        AppObject {
            key,
            observed: observe(obj),
            stuck,
        }
    }
}

/// A routing object reduced by its watch (or from a write's response).
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingSeen {
    pub key: ObjectKey,
    /// Its resourceVersion, when it is an integer (etcd's are).
    pub version: Option<u64>,
    pub object: RoutingObject,
}

impl RoutingSeen {
    /// Reduces routing object `key`.
    pub fn of(key: ObjectKey, obj: &DynamicObject) -> RoutingSeen {
        RoutingSeen {
            key,
            version: obj.resource_version().and_then(|v| v.parse().ok()),
            object: RoutingObject::observe(obj),
        }
    }

    /// The routemap named by its ConfigMap ownerReference, in its namespace.
    pub fn owner_key(&self) -> Option<RoutemapKey> {
        self.object.owner.as_ref().map(|(name, _)| RoutemapKey {
            namespace: self.key.namespace.clone(),
            name: name.clone(),
        })
    }
}

/// A routing object as seen by its watch (every one carries our routing label).
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingObject {
    /// The object without noisy metadata, for the drift comparison: as JSON text, a tenth of
    /// the memory of a parsed value, parsed only when a routemap is reconciled.
    pub(crate) text: String,
    pub kind: String,
    /// Its `iter8.tools/applied-hash` annotation.
    pub applied_hash: Option<String>,
    pub uid: String,
    /// The routemap named by its ConfigMap ownerReference (name, uid), if any.
    pub owner: Option<(String, String)>,
    /// Whether the controller wrote it: our field manager, our hash annotation. Only such
    /// objects are ever deleted.
    pub ours: bool,
}

impl RoutingObject {
    /// Reduces a watched routing object to what the controller reads.
    pub fn observe(obj: &DynamicObject) -> RoutingObject {
        let owner = routemap_owner(obj).map(|r| (r.name.clone(), r.uid.clone()));
        let written = obj
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER));
        let applied_hash = obj.annotations().get(APPLIED_HASH_ANNOTATION).cloned();
        let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
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
        if let Some(o) = value.as_object_mut() {
            o.remove("status");
        }
        RoutingObject {
            text: value.to_string(),
            kind: obj
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default(),
            ours: written && applied_hash.is_some(),
            applied_hash,
            uid: obj.uid().unwrap_or_default(),
            owner,
        }
    }

    /// The object (without noisy metadata and status).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// Whether routemap `key` (with `uid`, when known) owns it and the controller wrote it.
    fn owned_by(&self, key: &RoutemapKey, obj: &ObjectKey) -> bool {
        self.ours
            && obj.namespace == key.namespace
            && self
                .owner
                .as_ref()
                .is_some_and(|(name, _)| name == &key.name)
    }
}

/// The ConfigMap ownerReference of a routing object: the routemap that owns it. The kind is
/// compared without case: Iter8 v1.1 wrote `kind: configmap`.
pub fn routemap_owner(obj: &DynamicObject) -> Option<&OwnerReference> {
    routemap_owner_ref(obj.owner_references())
}

/// The ConfigMap among `refs` (see [`routemap_owner`]).
pub fn routemap_owner_ref(refs: &[OwnerReference]) -> Option<&OwnerReference> {
    refs.iter()
        .find(|r| r.kind.eq_ignore_ascii_case("ConfigMap") && r.api_version == "v1")
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
    /// Live routing objects, by their own key.
    routing: HashMap<ObjectKey, RoutingObject>,
    /// The newest resourceVersion seen of each routing object (from our own writes or the
    /// watch), so a late watch event cannot replace what a write just returned.
    routing_versions: HashMap<ObjectKey, u64>,
    /// Which routemap is writing each routing object, so two routemaps rendering the same
    /// object in concurrent workers cannot both take it: the first keeps it.
    claims: HashMap<ObjectKey, RoutemapKey>,
    stuck: HashMap<ObjectKey, StuckDeletion>,
    /// Analysis status ConfigMaps, by the routemap they belong to.
    statuses: HashMap<RoutemapKey, StatusRecord>,
}

/// The fields of a watched object that readiness, weights and signatures read (digested:
/// see [`Observed`]); of its annotations only the weight.
pub fn observe(obj: &DynamicObject) -> Observed {
    let weight = obj
        .annotations()
        .get_key_value(WEIGHT_ANNOTATION)
        .map(|(k, v)| (k.clone(), v.clone()));
    let mut observed = Observed::new(
        obj.metadata.generation,
        obj.metadata.deletion_timestamp.is_some(),
        weight.into_iter().collect(),
    );
    if let Some(spec) = obj.data.get("spec") {
        observed = observed.with_spec(spec);
    }
    if let Some(status) = obj.data.get("status") {
        observed = observed.with_status(status);
    }
    observed
}

/// The objects one routemap reads, by `(gvrShort, namespace, name)`.
pub type Snapshot = HashMap<(String, String, String), Observed>;

impl State {
    /// Records a watched object; returns the routemaps to reconcile if what they read changed.
    pub fn upsert_object(&mut self, obj: AppObject) -> Vec<RoutemapKey> {
        let AppObject {
            key,
            observed,
            stuck,
        } = obj;
        match stuck {
            Some(s) => self.stuck.insert(key.clone(), s),
            None => self.stuck.remove(&key),
        };
        if self.objects.get(&key) == Some(&observed) {
            return Vec::new();
        }
        let affected = self.routemaps_of(&key);
        self.objects.insert(key, observed);
        affected
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
    pub fn replace_type(&mut self, gvr: &Gvr, objs: Vec<AppObject>) -> Vec<RoutemapKey> {
        let fresh: BTreeSet<&ObjectKey> = objs.iter().map(|o| &o.key).collect();
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| &k.gvr == gvr && !fresh.contains(k))
            .cloned()
            .collect();
        let mut affected: BTreeSet<RoutemapKey> = BTreeSet::new();
        for k in gone {
            affected.extend(self.remove_object(&k));
        }
        for o in objs {
            affected.extend(self.upsert_object(o));
        }
        affected.into_iter().collect()
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
        self.claims.retain(|_, owner| owner != key);
        self.routemaps.remove(key)
    }

    /// Releases the claims of `routemap` on objects it no longer renders.
    pub fn keep_claims(&mut self, routemap: &RoutemapKey, targets: &[&ObjectKey]) {
        self.claims
            .retain(|k, owner| owner != routemap || targets.contains(&k));
    }

    /// Claims routing object `target` for `routemap`, unless another routemap owns or claims
    /// it; returns that routemap, or why the object is not to be touched.
    pub fn claim(&mut self, target: &ObjectKey, routemap: &RoutemapKey) -> Result<(), String> {
        if let Some(live) = self.routing.get(target) {
            match &live.owner {
                Some((name, _)) if live.ours && name == &routemap.name => {}
                Some((name, _)) if live.ours => {
                    return Err(format!(
                        "it belongs to routemap {}/{name}",
                        target.namespace
                    ))
                }
                _ => return Err("it was not written by this controller".to_string()),
            }
        }
        match self.claims.get(target) {
            Some(other) if other != routemap && self.routemaps.contains_key(other) => {
                Err(format!("routemap {other} renders it already"))
            }
            _ => {
                self.claims.insert(target.clone(), routemap.clone());
                Ok(())
            }
        }
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

    /// Weighs routemap `key` from the stores as they are (for the A/B/n service, which
    /// every replica runs): `None` if unknown, `Err` with why it is held.
    pub fn weigh(&self, key: &RoutemapKey, config: &Config) -> Option<Result<Weighing, String>> {
        let record = self.routemaps.get(key)?;
        let rm = match &record.spec {
            Ok(rm) => rm,
            Err(hold) => return Some(Err(hold.to_string())),
        };
        let lookup = |short: &str, ns: &str, name: &str| {
            let rt = config.resource_types.get(short)?;
            self.objects
                .get(&ObjectKey {
                    gvr: Gvr::of(rt),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
                .cloned()
        };
        let mut weighing = weigh(rm, &key.namespace, config, &lookup);
        glue::steer(
            &mut weighing,
            record.analysis.as_ref(),
            self.statuses.get(key),
        );
        Some(Ok(weighing))
    }

    /// Whether routemap `key` has an analysis block.
    pub fn is_analysed(&self, key: &RoutemapKey) -> bool {
        self.routemaps
            .get(key)
            .is_some_and(|r| r.analysis.is_some())
    }

    /// Records an analysis status ConfigMap; returns whether it changed.
    pub fn upsert_status(&mut self, key: RoutemapKey, record: StatusRecord) -> bool {
        if self.statuses.get(&key) == Some(&record) {
            return false;
        }
        self.statuses.insert(key, record);
        true
    }

    /// Forgets an analysis status ConfigMap (only that incarnation, by uid, when given).
    pub fn remove_status(&mut self, key: &RoutemapKey, uid: Option<&str>) {
        if uid.is_none_or(|u| self.statuses.get(key).is_some_and(|s| s.uid == u)) {
            self.statuses.remove(key);
        }
    }

    /// Replaces every analysis status (after a relist); returns the routemaps whose status
    /// changed.
    pub fn replace_statuses(
        &mut self,
        fresh: Vec<(RoutemapKey, StatusRecord)>,
    ) -> Vec<RoutemapKey> {
        let fresh: HashMap<RoutemapKey, StatusRecord> = fresh.into_iter().collect();
        let mut changed: Vec<RoutemapKey> = self
            .statuses
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        changed.extend(
            fresh
                .iter()
                .filter(|(k, v)| self.statuses.get(*k) != Some(*v))
                .map(|(k, _)| k.clone()),
        );
        self.statuses = fresh;
        changed
    }

    /// The analysis status of routemap `key`, if there is one.
    pub fn status(&self, key: &RoutemapKey) -> Option<&StatusRecord> {
        self.statuses.get(key)
    }

    /// The work of one pass of the analysis loop: every routemap with a valid analysis block
    /// and two versions, and the status ConfigMaps no analysis needs any more.
    pub fn analysis_jobs(&self, config: &Config) -> (Vec<Job>, Vec<(RoutemapKey, String)>) {
        let mut jobs = Vec::new();
        for (key, record) in &self.routemaps {
            let (Ok(rm), Some(Ok(analysis))) = (&record.spec, &record.analysis) else {
                continue;
            };
            let Some(Ok(weighing)) = self.weigh(key, config) else {
                continue;
            };
            jobs.push(Job {
                key: key.clone(),
                routemap_uid: record.meta.uid.clone(),
                analysis: analysis.clone(),
                facts: iter8_analysis::Facts {
                    subject: weighing.signatures.clone(),
                    candidate_ready: weighing.available.get(1).copied().unwrap_or(false),
                    primary_ready: weighing.available.first().copied().unwrap_or(false),
                },
                subject: glue::subject(key, rm, &weighing),
                stored: self.statuses.get(key).cloned(),
            });
        }
        // A status whose routemap is gone, has no analysis or a broken spec: delete it (a
        // broken spec keeps its status, so that fixing it resumes where it was).
        let stale = self
            .statuses
            .iter()
            .filter(|(k, _)| match self.routemaps.get(*k) {
                None => true,
                Some(r) => r.spec.is_ok() && r.analysis.is_none(),
            })
            .map(|(k, s)| (k.clone(), s.uid.clone()))
            .collect();
        (jobs, stale)
    }

    /// Every known routemap.
    pub fn routemap_keys(&self) -> Vec<RoutemapKey> {
        self.routemaps.keys().cloned().collect()
    }

    /// The objects `routemap` reads, for weighing without holding the lock.
    pub fn snapshot(&self, routemap: &Routemap, namespace: &str, config: &Config) -> Snapshot {
        routemap
            .references(namespace)
            .into_iter()
            .filter_map(|(short, ns, name)| {
                let rt = config.resource_types.get(&short)?;
                let obj = self.objects.get(&ObjectKey {
                    gvr: Gvr::of(rt),
                    namespace: ns.clone(),
                    name: name.clone(),
                })?;
                Some(((short, ns, name), obj.clone()))
            })
            .collect()
    }

    /// How many objects of each type are watched.
    pub fn counts_by_type(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for k in self.objects.keys() {
            *counts.entry(k.gvr.to_string()).or_default() += 1;
        }
        counts
    }

    /// Records a live routing object; returns whether what the controller reads changed.
    pub fn upsert_routing(&mut self, seen: RoutingSeen) -> bool {
        let RoutingSeen {
            key,
            version,
            object,
        } = seen;
        // resourceVersions are opaque, but etcd's are increasing integers; when both parse, an
        // older one is a late event about a state already superseded.
        if let Some(version) = version {
            if self
                .routing_versions
                .get(&key)
                .is_some_and(|newest| version < *newest)
            {
                return false;
            }
            self.routing_versions.insert(key.clone(), version);
        }
        if self.routing.get(&key) == Some(&object) {
            return false;
        }
        self.routing.insert(key, object);
        true
    }

    /// Forgets a routing object.
    pub fn remove_routing(&mut self, key: &ObjectKey) {
        self.routing.remove(key);
        self.routing_versions.remove(key);
        self.claims.remove(key);
    }

    /// Replaces every routing object of one type (after a watch (re)list).
    pub fn replace_routing(&mut self, gvr: &Gvr, objs: Vec<RoutingSeen>) {
        self.routing.retain(|k, _| &k.gvr != gvr);
        self.routing_versions.retain(|k, _| &k.gvr != gvr);
        for o in objs {
            self.upsert_routing(o);
        }
    }

    /// The live routing object, if seen.
    pub fn routing(&self, key: &ObjectKey) -> Option<RoutingObject> {
        self.routing.get(key).cloned()
    }

    /// Routing objects the controller wrote for routemap `owner` (by the name in their
    /// ownerReference, in its namespace), sorted.
    pub fn routing_owned_by(&self, owner: &RoutemapKey) -> Vec<(ObjectKey, RoutingObject)> {
        let mut owned: Vec<(ObjectKey, RoutingObject)> = self
            .routing
            .iter()
            .filter(|(k, v)| v.owned_by(owner, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        owned.sort_by(|a, b| a.0.cmp(&b.0));
        owned
    }

    /// Routemaps that own routing objects the controller wrote but that the routemap store
    /// does not hold: deleted while no controller ran, or no longer labelled as routemaps.
    pub fn orphan_owners(&self) -> Vec<RoutemapKey> {
        let owners: BTreeSet<RoutemapKey> = self
            .routing
            .iter()
            .filter(|(_, v)| v.ours)
            .filter_map(|(k, v)| {
                let (name, _) = v.owner.as_ref()?;
                Some(RoutemapKey {
                    namespace: k.namespace.clone(),
                    name: name.clone(),
                })
            })
            .filter(|r| !self.routemaps.contains_key(r))
            .collect();
        owners.into_iter().collect()
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
mod tests;
