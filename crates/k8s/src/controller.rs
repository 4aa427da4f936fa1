//! Wiring: one watch per watched type, one for routemaps, one per routing type; the stores and
//! index they feed; and the reconcile loop, which reads only the stores and writes only
//! through the [`Writer`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use iter8_core::availability::{weigh, Observed};
use iter8_core::config::Config;
use iter8_core::render::{check_target, render, RoutemapMeta};
use iter8_core::routemap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersion;
use kube::runtime::events::EventType;
use kube::runtime::watcher::{self, watcher, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::keys::{Gvr, ObjectKey, RoutemapKey};
use crate::metrics::Metrics;
use crate::queue::WorkQueue;
use crate::state::{contains, RoutemapRecord, State, LEGACY_FINALIZER};
use crate::writer::{Leadership, WriteError, Writer};

/// Label selecting the application objects the controller watches.
pub const WATCH_LABEL: &str = "iter8.tools/watch=true";
/// Label selecting routemap ConfigMaps.
pub const ROUTEMAP_KIND_LABEL: &str = "iter8.tools/kind=routemap";
/// Label carrying a routemap's format version.
pub const ROUTEMAP_VERSION_LABEL: &str = "iter8.tools/version";
/// Label the controller puts on the routing objects it writes, so it can watch them for drift.
pub const ROUTING_LABEL: &str = "iter8.tools/routing";
/// Annotation with the hash of what the controller last applied, so a restart can tell an
/// unchanged routing object from a stale one without writing.
pub const APPLIED_HASH_ANNOTATION: &str = "iter8.tools/applied-hash";

/// What the reconcile loop works on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    Routemap(RoutemapKey),
    Finalizer(ObjectKey),
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The namespace to watch when not cluster-scoped.
    pub namespace: String,
    /// Identity in Events (the pod name).
    pub instance: Option<String>,
}

/// The controller's shared parts.
pub struct Controller {
    client: Client,
    config: Config,
    options: Options,
    state: Mutex<State>,
    queue: WorkQueue<Work>,
    writer: Writer,
    kinds: tokio::sync::Mutex<HashMap<Gvr, String>>,
    routing_watches: Mutex<HashSet<Gvr>>,
    /// Watches whose first list has completed (name -> synced).
    synced: Mutex<BTreeMap<String, bool>>,
    retries: Mutex<HashMap<RoutemapKey, u32>>,
    metrics: Arc<Metrics>,
}

impl Controller {
    pub fn new(
        client: Client,
        config: Config,
        options: Options,
        leadership: Leadership,
    ) -> Arc<Controller> {
        let metrics = Arc::new(Metrics::default());
        Arc::new(Controller {
            writer: Writer::new(
                client.clone(),
                leadership,
                options.instance.clone(),
                metrics.clone(),
            ),
            client,
            config,
            options,
            state: Mutex::default(),
            queue: WorkQueue::default(),
            kinds: tokio::sync::Mutex::default(),
            routing_watches: Mutex::default(),
            synced: Mutex::default(),
            retries: Mutex::default(),
            metrics,
        })
    }

    /// The metrics (shared with the writer).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The writer (for its leadership).
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Whether every watch has listed at least once.
    pub fn synced(&self) -> bool {
        let s = self.lock_synced();
        !s.is_empty() && s.values().all(|v| *v)
    }

    /// Watches that have not listed yet (or are failing), for /readyz.
    pub fn unsynced(&self) -> Vec<String> {
        self.lock_synced()
            .iter()
            .filter(|(_, v)| !**v)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Nothing queued and nothing being worked: everything seen so far is reconciled.
    pub fn is_idle(&self) -> bool {
        self.queue.is_idle()
    }

    /// Items waiting in the work queue.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Watched objects by type, every configured type included (zero when none).
    pub fn watched_counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = self
            .config
            .resource_types
            .values()
            .map(|rt| (Gvr::of(rt).to_string(), 0))
            .collect();
        counts.extend(self.lock_state().counts_by_type());
        counts
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_synced(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.synced.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn api(&self, gvr: &Gvr) -> Api<DynamicObject> {
        let ar = gvr.api_resource("");
        if self.config.cluster_scoped {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), &self.options.namespace, &ar)
        }
    }

    /// Starts every watch and the reconcile loop; returns when `shutdown` fires, after the
    /// work item in flight has finished. `shutdown` must be signalled with `notify_one` (or
    /// `notify_waiters` while this runs).
    pub async fn run(self: Arc<Self>, shutdown: Arc<Notify>) {
        let mut tasks = Vec::new();
        let mut seen = HashSet::new();
        for rt in self.config.resource_types.values() {
            let gvr = Gvr::of(rt);
            if seen.insert(gvr.clone()) {
                self.lock_synced().insert(format!("objects {gvr}"), false);
                tasks.push(tokio::spawn(self.clone().watch_objects(gvr)));
            }
        }
        self.lock_synced().insert("routemaps".into(), false);
        tasks.push(tokio::spawn(self.clone().watch_routemaps()));
        tasks.push(tokio::spawn(self.clone().resync_loop()));

        // Between items, stop when asked; an item in flight (an apply) always finishes.
        loop {
            // Never decide from a partial view: until every store has listed (at start, and
            // again after a watch failed), a missing object may only be not listed yet, and
            // routing written from that view would drop ready versions.
            let item = tokio::select! {
                item = async {
                    while !self.synced() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    self.queue.pop().await
                } => item,
                _ = shutdown.notified() => break,
            };
            self.work(item).await;
            self.queue.done();
        }
        for t in tasks {
            t.abort();
        }
    }

    /// Queues every routemap (resync, or leadership just gained).
    pub fn enqueue_all(&self) {
        let (routemaps, stuck) = {
            let st = self.lock_state();
            (st.routemap_keys(), st.stuck_deletions())
        };
        for k in routemaps {
            self.queue.push(Work::Routemap(k));
        }
        for k in stuck {
            self.queue.push(Work::Finalizer(k));
        }
    }

    async fn resync_loop(self: Arc<Self>) {
        let period = self.config.default_resync.max(Duration::from_secs(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            self.enqueue_all();
        }
    }

    fn key_of(&self, gvr: &Gvr, obj: &DynamicObject) -> ObjectKey {
        ObjectKey {
            gvr: gvr.clone(),
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        }
    }

    fn enqueue(&self, routemaps: Vec<RoutemapKey>) {
        for r in routemaps {
            self.queue.push(Work::Routemap(r));
        }
    }

    async fn watch_objects(self: Arc<Self>, gvr: Gvr) {
        let name = format!("objects {gvr}");
        let cfg = watcher::Config::default().labels(WATCH_LABEL);
        let mut stream = watcher(self.api(&gvr), cfg).default_backoff().boxed();
        let mut buffer: Vec<(ObjectKey, DynamicObject)> = Vec::new();
        let mut missing_logged = false;
        loop {
            match stream.try_next().await {
                Ok(Some(ev)) => match ev {
                    WatchEvent::Init => buffer.clear(),
                    WatchEvent::InitApply(o) => buffer.push((self.key_of(&gvr, &o), o)),
                    WatchEvent::InitDone => {
                        let objs = std::mem::take(&mut buffer);
                        let affected = self.lock_state().replace_type(&gvr, &objs);
                        self.enqueue(affected);
                        self.enqueue_stuck(&objs);
                        self.lock_synced().insert(name.clone(), true);
                        if missing_logged {
                            tracing::info!(resource = %gvr, "resource type is now served; watching it");
                            missing_logged = false;
                        }
                    }
                    WatchEvent::Apply(o) => {
                        let key = self.key_of(&gvr, &o);
                        let affected = self.lock_state().upsert_object(key, &o);
                        self.enqueue(affected);
                        self.enqueue_stuck(&[(self.key_of(&gvr, &o), o)]);
                    }
                    WatchEvent::Delete(o) => {
                        let key = self.key_of(&gvr, &o);
                        let affected = self.lock_state().remove_object(&key);
                        self.enqueue(affected);
                    }
                },
                Ok(None) => return,
                Err(e) => {
                    self.metrics.watch_restarts.inc();
                    if is_not_found(&e) {
                        // The CRD is not installed (yet). Count the type as synced-empty so
                        // readiness does not wait for it; the backoff keeps retrying and the
                        // watch starts as soon as the CRD appears.
                        if !missing_logged {
                            tracing::warn!(resource = %gvr, error = %e, "cannot watch resource type (CRD missing or access forbidden); will watch it once possible");
                            missing_logged = true;
                        }
                        self.lock_synced().insert(name.clone(), true);
                    } else {
                        tracing::warn!(resource = %gvr, error = %e, "watch failed; retrying");
                        // Stale until the watch has listed again.
                        self.lock_synced().insert(name.clone(), false);
                    }
                }
            }
        }
    }

    fn enqueue_stuck(&self, objs: &[(ObjectKey, DynamicObject)]) {
        for (k, o) in objs {
            if o.metadata.deletion_timestamp.is_some()
                && o.finalizers().iter().any(|f| f == LEGACY_FINALIZER)
            {
                self.queue.push(Work::Finalizer(k.clone()));
            }
        }
    }

    async fn watch_routemaps(self: Arc<Self>) {
        let api: Api<ConfigMap> = if self.config.cluster_scoped {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.options.namespace)
        };
        let cfg = watcher::Config::default().labels(ROUTEMAP_KIND_LABEL);
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        let mut buffer: Vec<ConfigMap> = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(ev)) => match ev {
                    WatchEvent::Init => buffer.clear(),
                    WatchEvent::InitApply(cm) => buffer.push(cm),
                    WatchEvent::InitDone => {
                        let cms = std::mem::take(&mut buffer);
                        let fresh: HashSet<RoutemapKey> = cms.iter().map(routemap_key).collect();
                        let gone: Vec<RoutemapKey> = self
                            .lock_state()
                            .routemap_keys()
                            .into_iter()
                            .filter(|k| !fresh.contains(k))
                            .collect();
                        for k in gone {
                            self.lock_state().remove_routemap(&k);
                            self.queue.push(Work::Routemap(k));
                        }
                        for cm in cms {
                            self.routemap_changed(&cm);
                        }
                        self.lock_synced().insert("routemaps".into(), true);
                    }
                    WatchEvent::Apply(cm) => self.routemap_changed(&cm),
                    WatchEvent::Delete(cm) => {
                        let key = routemap_key(&cm);
                        self.lock_state().remove_routemap(&key);
                        self.queue.push(Work::Routemap(key));
                    }
                },
                Ok(None) => return,
                Err(e) => {
                    self.metrics.watch_restarts.inc();
                    tracing::warn!(error = %e, "routemap watch failed; retrying");
                    self.lock_synced().insert("routemaps".into(), false);
                }
            }
        }
    }

    fn routemap_changed(&self, cm: &ConfigMap) {
        let key = routemap_key(cm);
        let version = cm
            .labels()
            .get(ROUTEMAP_VERSION_LABEL)
            .cloned()
            .unwrap_or_default();
        if !self.config.routemap_versions.iter().any(|v| v == &version) {
            tracing::warn!(routemap = %key, version = %version, accepted = ?self.config.routemap_versions,
                "ignoring routemap: its iter8.tools/version label is not an accepted version");
            let had = self.lock_state().remove_routemap(&key).is_some();
            if had {
                self.queue.push(Work::Routemap(key));
            }
            return;
        }
        let spec = match cm.data.as_ref().and_then(|d| d.get("strSpec")) {
            None => Err("routemap has no strSpec".to_string()),
            Some(s) => routemap::parse(s, &key.namespace, &self.config).map_err(|e| e.to_string()),
        };
        let meta = RoutemapMeta {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            uid: cm.uid().unwrap_or_default(),
            labels: cm.labels().clone(),
            annotations: cm.annotations().clone(),
        };
        let record = RoutemapRecord { meta, spec };
        self.lock_state()
            .upsert_routemap(key.clone(), record, &self.config);
        self.queue.push(Work::Routemap(key));
    }

    /// Makes sure routing objects of `gvr` are watched (for drift and for restarts).
    fn ensure_routing_watch(self: &Arc<Self>, gvr: &Gvr) {
        let mut watches = self
            .routing_watches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if watches.insert(gvr.clone()) {
            self.lock_synced().insert(format!("routing {gvr}"), false);
            tokio::spawn(self.clone().watch_routing(gvr.clone()));
        }
    }

    /// Waits (bounded) until the routing objects of `gvr` have been listed, so the first
    /// reconcile after a start compares with the live objects instead of writing blindly.
    async fn routing_listed(&self, gvr: &Gvr) {
        let name = format!("routing {gvr}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.lock_synced().get(&name) == Some(&false) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn watch_routing(self: Arc<Self>, gvr: Gvr) {
        let cfg = watcher::Config::default().labels(&format!("{ROUTING_LABEL}=true"));
        let mut stream = watcher(self.api(&gvr), cfg).default_backoff().boxed();
        let mut buffer = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(ev)) => match ev {
                    WatchEvent::Init => buffer.clear(),
                    WatchEvent::InitApply(o) => buffer.push((self.key_of(&gvr, &o), o)),
                    WatchEvent::InitDone => {
                        let objs = std::mem::take(&mut buffer);
                        self.lock_state().replace_routing(&gvr, &objs);
                        self.enqueue_owners(objs.iter().map(|(_, o)| o));
                        self.lock_synced().insert(format!("routing {gvr}"), true);
                    }
                    WatchEvent::Apply(o) => {
                        let key = self.key_of(&gvr, &o);
                        let changed = {
                            let mut st = self.lock_state();
                            let before = st.routing(&key);
                            st.upsert_routing(key.clone(), &o);
                            before != st.routing(&key)
                        };
                        if changed {
                            self.enqueue_owners(std::iter::once(&o));
                        }
                    }
                    WatchEvent::Delete(o) => {
                        let key = self.key_of(&gvr, &o);
                        self.lock_state().remove_routing(&key);
                        self.enqueue_owners(std::iter::once(&o));
                    }
                },
                Ok(None) => return,
                Err(e) => {
                    self.metrics.watch_restarts.inc();
                    tracing::warn!(resource = %gvr, error = %e, "routing object watch failed; retrying");
                    let listed = is_not_found(&e);
                    self.lock_synced().insert(format!("routing {gvr}"), listed);
                }
            }
        }
    }

    /// A routing object changed: its routemap checks for drift.
    fn enqueue_owners<'a>(&self, objs: impl Iterator<Item = &'a DynamicObject>) {
        for o in objs {
            for r in o.owner_references() {
                if r.kind == "ConfigMap" {
                    self.queue.push(Work::Routemap(RoutemapKey {
                        namespace: o.namespace().unwrap_or_default(),
                        name: r.name.clone(),
                    }));
                }
            }
        }
    }

    async fn work(self: &Arc<Self>, item: Work) {
        if !self.writer.leadership().is_leader() {
            // Standbys keep their stores warm and write nothing; a new leader resyncs.
            return;
        }
        self.metrics.reconciles.inc();
        let started = Instant::now();
        match item {
            Work::Routemap(key) => {
                self.reconcile(&key).await;
                self.metrics
                    .reconcile_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Work::Finalizer(key) => {
                let stuck = self.lock_state().stuck_deletion(&key);
                if let Some(s) = stuck {
                    match self
                        .writer
                        .remove_finalizer(
                            &key,
                            &s.resource_version,
                            &s.finalizers,
                            LEGACY_FINALIZER,
                        )
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(object = %key, "removed legacy finalizer {LEGACY_FINALIZER}")
                        }
                        // A conflict means a newer version is coming through the watch.
                        Err(e) => {
                            tracing::warn!(object = %key, error = %e, "failed to remove legacy finalizer")
                        }
                    }
                }
            }
        }
    }

    /// Brings the routing objects of one routemap in line with its versions' readiness.
    async fn reconcile(self: &Arc<Self>, key: &RoutemapKey) {
        let record = self.lock_state().routemap(key);
        let Some(record) = record else {
            self.cleanup(key).await;
            return;
        };
        let uid = record.meta.uid.clone();
        let rm = match &record.spec {
            Ok(rm) => rm,
            Err(msg) => {
                tracing::warn!(routemap = %key, error = %msg, "invalid routemap");
                self.metrics.error("routemap");
                self.writer
                    .event(
                        key,
                        &uid,
                        "routemap",
                        EventType::Warning,
                        "InvalidRoutemap",
                        format!("invalid routemap {key}: {msg}"),
                    )
                    .await;
                return;
            }
        };
        let warnings = rm.warnings(&self.config);
        if !warnings.is_empty() {
            self.writer
                .event(
                    key,
                    &uid,
                    "routemap",
                    EventType::Warning,
                    "RoutemapWarning",
                    warnings.join("; "),
                )
                .await;
        } else {
            self.writer.clear(key, "routemap");
        }

        // Snapshot just the objects this routemap reads, then weigh and render without the lock.
        let snapshot: HashMap<(String, String, String), Observed> = {
            let st = self.lock_state();
            rm.references(&key.namespace)
                .into_iter()
                .filter_map(|(short, ns, name)| {
                    let rt = self.config.resource_types.get(&short)?;
                    let obj = st.object(&ObjectKey {
                        gvr: Gvr::of(rt),
                        namespace: ns.clone(),
                        name: name.clone(),
                    })?;
                    Some(((short, ns, name), obj))
                })
                .collect()
        };
        let lookup = |short: &str, ns: &str, name: &str| {
            snapshot
                .get(&(short.to_string(), ns.to_string(), name.to_string()))
                .cloned()
        };
        let weighing = weigh(rm, &key.namespace, &self.config, &lookup);
        if !weighing.problems.is_empty() {
            self.writer
                .event(
                    key,
                    &uid,
                    "resources",
                    EventType::Warning,
                    "ResourceProblem",
                    weighing.problems.join("; "),
                )
                .await;
        } else {
            self.writer.clear(key, "resources");
        }
        let mut retry = false;
        for rendered in render(&record.meta, rm, &weighing) {
            let subject = format!("template {}", rendered.template);
            let obj = match rendered.result {
                Ok(Some(obj)) => obj,
                Ok(None) => {
                    self.writer.clear(key, &subject);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(routemap = %key, template = %rendered.template, error = %e, "routing template failed");
                    self.metrics.error(e.category());
                    self.writer
                        .event(
                            key,
                            &uid,
                            &subject,
                            EventType::Warning,
                            "TemplateError",
                            format!(
                                "routing template {} of routemap {key}: {e}",
                                rendered.template
                            ),
                        )
                        .await;
                    continue;
                }
            };
            match self
                .apply_one(key, &uid, &rendered.gvr_short, obj, &weighing.weights)
                .await
            {
                Ok(Some(note)) => {
                    self.writer
                        .event(key, &uid, &subject, EventType::Normal, "Applied", note)
                        .await;
                }
                Ok(None) => self.writer.clear(key, &subject),
                Err(ApplyFailure::User(msg)) => {
                    tracing::warn!(routemap = %key, template = %rendered.template, error = %msg, "refused routing object");
                    self.metrics.error("target");
                    self.writer
                        .event(
                            key,
                            &uid,
                            &subject,
                            EventType::Warning,
                            "RefusedObject",
                            format!("routing template {}: {msg}", rendered.template),
                        )
                        .await;
                }
                Err(ApplyFailure::Transient(msg)) => {
                    tracing::warn!(routemap = %key, template = %rendered.template, error = %msg, "apply failed; will retry");
                    self.metrics.error("apply");
                    self.writer
                        .event(key, &uid, &subject, EventType::Warning, "ApplyFailed", msg)
                        .await;
                    retry = true;
                }
            }
        }
        self.schedule_retry(key, retry);
    }

    fn schedule_retry(self: &Arc<Self>, key: &RoutemapKey, retry: bool) {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        if !retry {
            retries.remove(key);
            return;
        }
        let n = retries.entry(key.clone()).or_insert(0);
        *n = (*n + 1).min(10);
        let delay = Duration::from_millis(200u64 << *n).min(Duration::from_secs(60));
        let me = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.queue.push(Work::Routemap(key));
        });
    }

    /// Checks and applies one rendered object. `Ok(Some(note))` when it wrote.
    async fn apply_one(
        self: &Arc<Self>,
        key: &RoutemapKey,
        uid: &str,
        gvr_short: &str,
        obj: Value,
        weights: &[u32],
    ) -> Result<Option<String>, ApplyFailure> {
        let rt = self.config.resource_types.get(gvr_short).ok_or_else(|| {
            ApplyFailure::User(format!(
                "routing template type {gvr_short:?} is not a configured resource type"
            ))
        })?;
        let gvr = Gvr::of(rt);
        let kind = self.kind_of(&gvr).await.map_err(ApplyFailure::Transient)?;
        let obj = check_target(obj, &gvr.api_version(), &kind, &key.namespace).map_err(|e| {
            ApplyFailure::User(format!("refused object rendered by routemap {key}: {e}"))
        })?;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let target = ObjectKey {
            gvr: gvr.clone(),
            namespace: key.namespace.clone(),
            name,
        };
        let desired = with_ownership(obj, key, uid);
        self.ensure_routing_watch(&gvr);
        self.routing_listed(&gvr).await;

        let live = self.lock_state().routing(&target);
        if let Some(live) = &live {
            if live["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
                == desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
                && contains(live, &desired)
            {
                self.writer.skipped();
                return Ok(None);
            }
        }
        let started = Instant::now();
        match self.writer.apply(&target, &kind, &desired).await {
            Ok(applied) => {
                self.lock_state().upsert_routing(target.clone(), &applied);
                let what = if live.is_some() { "updated" } else { "created" };
                tracing::info!(routemap = %key, object = %format!("{kind} {}/{}", target.namespace, target.name),
                    weights = ?weights, elapsed_ms = started.elapsed().as_millis() as u64, "{what} routing object");
                Ok(Some(format!(
                    "applied {kind} {}/{} (weights {weights:?})",
                    target.namespace, target.name
                )))
            }
            Err(WriteError::NotLeader) => Ok(None),
            Err(WriteError::Api(kube::Error::Api(s)))
                if (400..500).contains(&s.code) && s.code != 409 && s.code != 429 =>
            {
                Err(ApplyFailure::User(format!(
                    "failed to apply {kind} {}/{} from routemap {key}: {}",
                    target.namespace, target.name, s.message
                )))
            }
            Err(e) => Err(ApplyFailure::Transient(format!(
                "failed to apply {kind} {}/{} from routemap {key}: {e}",
                target.namespace, target.name
            ))),
        }
    }

    /// The routemap is gone: remove the routing objects it owned.
    async fn cleanup(&self, key: &RoutemapKey) {
        let owned = self.lock_state().routing_owned_by(key);
        for obj in owned {
            match self.writer.delete(&obj).await {
                Ok(()) => {
                    self.lock_state().remove_routing(&obj);
                    tracing::info!(routemap = %key, object = %obj, "deleted routing object of deleted routemap");
                }
                Err(e) => {
                    tracing::warn!(routemap = %key, object = %obj, error = %e, "failed to delete routing object")
                }
            }
        }
        self.writer.forget(key);
    }

    /// The kind of a resource type, from discovery (cached).
    async fn kind_of(&self, gvr: &Gvr) -> Result<String, String> {
        let mut kinds = self.kinds.lock().await;
        if let Some(k) = kinds.get(gvr) {
            return Ok(k.clone());
        }
        let gv = GroupVersion::gv(&gvr.group, &gvr.version);
        let group = kube::discovery::pinned_group(&self.client, &gv)
            .await
            .map_err(|e| format!("discovery of {} failed: {e}", gvr.api_version()))?;
        let kind = group
            .versioned_resources(&gvr.version)
            .into_iter()
            .find(|(ar, _)| ar.plural == gvr.resource)
            .map(|(ar, _)| ar.kind)
            .ok_or_else(|| format!("the API server does not serve {gvr}"))?;
        kinds.insert(gvr.clone(), kind.clone());
        Ok(kind)
    }
}

enum ApplyFailure {
    /// The routemap asked for something wrong: an Event, no retry until it changes.
    User(String),
    /// The API failed: retry with backoff.
    Transient(String),
}

fn routemap_key(cm: &ConfigMap) -> RoutemapKey {
    RoutemapKey {
        namespace: cm.namespace().unwrap_or_default(),
        name: cm.name_any(),
    }
}

/// A watch that cannot work until the cluster changes: the type is not served (CRD missing)
/// or RBAC forbids it. Such a type counts as listed-empty, so it does not hold up the rest.
fn is_not_found(e: &watcher::Error) -> bool {
    let text = format!("{e:?}");
    ["404", "NotFound", "403", "Forbidden"]
        .iter()
        .any(|s| text.contains(s))
}

/// The desired routing object: owned by the routemap (so garbage collection removes it with
/// the routemap), labelled for our drift watch, and stamped with the hash of its content.
fn with_ownership(mut obj: Value, key: &RoutemapKey, uid: &str) -> Value {
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
