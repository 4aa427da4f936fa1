//! Wiring, one way through: watches feed the stores ([`crate::state`]) and queue the routemaps
//! whose inputs changed; a small pool of workers takes one routemap at a time and runs its
//! steps: load from the stores → plan ([`crate::plan`]: weigh, render, check) → apply the plan
//! through the [`Applier`], which alone writes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iter8_core::availability::Weighing;
use iter8_core::config::Config;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

use iter8_analysis::machine;
use iter8_analysis::measure::{self, Sources};

use crate::analysis::{self, Job, StatusRecord, STATUS_KIND_LABEL};
use crate::applier::{Applied, Applier, Deleted, ROUTING_LABEL};
use crate::error::Error;
use crate::keys::{Gvr, ObjectKey, RoutemapKey};
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::plan::{self, template_subject, Inputs, Note, Plan, Report};
use crate::queue::WorkQueue;
use crate::state::{
    AppObject, Hold, RoutemapRecord, RoutingObject, RoutingSeen, State, LEGACY_FINALIZER,
};
use crate::sync::{SyncTracker, WatchId, WatchState};
use crate::watch::{self, Change};

/// Label selecting the application objects the controller watches.
pub const WATCH_LABEL: &str = "iter8.tools/watch=true";
/// Label selecting routemap ConfigMaps.
pub const ROUTEMAP_KIND_LABEL: &str = "iter8.tools/kind=routemap";
/// Label carrying a routemap's format version.
pub const ROUTEMAP_VERSION_LABEL: &str = "iter8.tools/version";

/// Routemaps reconciled at the same time. Small: the work is API round trips, and one
/// routemap is never in two workers at once.
const WORKERS: usize = 4;

/// What the workers work on.
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
    /// Publish a Normal `Applied` Event for every routing object written. Off by default: a
    /// routing change then costs one request (the apply); Warnings, deletions and the
    /// analysis's Events are always published, and `iter8 status` shows the last change.
    pub routing_events: bool,
}

/// The controller's shared parts.
pub struct Controller {
    client: Client,
    config: Arc<Config>,
    options: Options,
    state: Mutex<State>,
    queue: WorkQueue<Work>,
    applier: Applier,
    sync: Arc<SyncTracker>,
    /// Backoff of work items whose last attempt failed transiently.
    retries: Mutex<HashMap<Work, Box<dyn Iterator<Item = Duration> + Send>>>,
    metrics: Arc<Metrics>,
    /// Where the analysis measures (set by the binary; without, evaluations are errors).
    analysis_sources: Mutex<Option<Sources>>,
    /// Wakes the analysis loop: an analysed routemap, its versions or its status changed.
    analysis_wake: Notify,
}

impl Controller {
    pub fn new(
        client: Client,
        config: Config,
        options: Options,
        leadership: Leadership,
    ) -> Arc<Controller> {
        let metrics = Arc::new(Metrics::default());
        let sync = Arc::new(SyncTracker::default());
        Arc::new(Controller {
            applier: Applier::new(
                client.clone(),
                leadership,
                options.instance.clone(),
                metrics.clone(),
                sync.clone(),
            ),
            client,
            config: Arc::new(config),
            options,
            state: Mutex::default(),
            queue: WorkQueue::default(),
            sync,
            retries: Mutex::default(),
            metrics,
            analysis_sources: Mutex::default(),
            analysis_wake: Notify::new(),
        })
    }

    /// Where the analysis takes its measurements from.
    pub fn set_analysis_sources(&self, sources: Sources) {
        *self
            .analysis_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sources);
        self.analysis_wake.notify_one();
    }

    /// The analysis of application `namespace/application` (its routemap `application` or
    /// `application-routemap`) as the JSON of `GET /analysisDashboard`, if it has one.
    pub fn analysis_dashboard(
        &self,
        namespace: &str,
        application: &str,
    ) -> Option<serde_json::Value> {
        let st = self.lock_state();
        [format!("{application}-routemap"), application.to_string()]
            .into_iter()
            .map(|name| RoutemapKey {
                namespace: namespace.to_string(),
                name,
            })
            .find_map(|key| {
                let record = st.routemap(&key)?;
                let Some(Ok(analysis)) = &record.analysis else {
                    return None;
                };
                let Some(Ok(weighing)) = st.weigh(&key, &self.config) else {
                    return None;
                };
                let state = analysis::current(st.status(&key), &weighing.signatures);
                Some(analysis::dashboard(&key, analysis, state, &weighing))
            })
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The versions of routemap `namespace/name` weighed from this replica's stores (every
    /// replica answers A/B/n lookups): `None` if there is no such routemap, `Err` with why it
    /// is held (invalid, or a version label not accepted).
    pub fn weigh(&self, namespace: &str, name: &str) -> Option<Result<Weighing, String>> {
        let key = RoutemapKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.lock_state().weigh(&key, &self.config)
    }

    /// Whether this replica may write.
    pub fn leadership(&self) -> &Leadership {
        self.applier.leadership()
    }

    /// Whether every store is complete (every watch has listed, or its type cannot be
    /// watched yet).
    pub fn synced(&self) -> bool {
        self.sync.is_synced()
    }

    /// The watches without a complete store, each with why (for `/readyz`).
    pub fn unsynced(&self) -> Vec<String> {
        self.sync.unsynced()
    }

    /// Every watch with its state, e.g. `routing virtualservices.networking.istio.io: Listed`.
    pub fn watches(&self) -> Vec<String> {
        self.sync.describe()
    }

    /// Why API requests are failing, if the last one did (for `/readyz`).
    pub fn api_failing(&self) -> Option<String> {
        self.sync.api_failing()
    }

    /// Watches whose type is not served or forbidden (complete and empty).
    pub fn unavailable(&self) -> Vec<String> {
        self.sync.unavailable()
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
    pub fn watched_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts: std::collections::BTreeMap<String, usize> = self
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

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        if self.config.cluster_scoped {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.options.namespace)
        }
    }

    fn dynamic_api(&self, gvr: &Gvr) -> Api<DynamicObject> {
        let ar = gvr.api_resource("");
        if self.config.cluster_scoped {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), &self.options.namespace, &ar)
        }
    }

    /// Starts every watch (application objects, routemaps and routing objects, also on a
    /// standby, so a takeover reconciles from a complete view at once) and the workers;
    /// returns when `shutdown` fires, after the work items in flight have finished.
    /// `shutdown` must be signalled with `notify_one` (or `notify_waiters` while this runs).
    pub async fn run(self: Arc<Self>, shutdown: Arc<Notify>) {
        let mut tasks = Vec::new();
        let object_types: BTreeSet<Gvr> =
            self.config.resource_types.values().map(Gvr::of).collect();
        for gvr in object_types {
            self.sync.register(WatchId::Objects(gvr.clone()));
            tasks.push(tokio::spawn(self.clone().watch_objects(gvr)));
        }
        self.sync.register(WatchId::Routemaps);
        tasks.push(tokio::spawn(self.clone().watch_routemaps()));
        let routing_types: BTreeSet<Gvr> = self
            .config
            .routing_types()
            .map(|(_, rt)| Gvr::of(rt))
            .collect();
        for gvr in routing_types {
            self.sync.register(WatchId::Routing(gvr.clone()));
            tasks.push(tokio::spawn(self.clone().watch_routing(gvr)));
        }
        self.sync.register(WatchId::AnalysisStatus);
        tasks.push(tokio::spawn(self.clone().watch_statuses()));
        tasks.push(tokio::spawn(self.clone().resync_loop()));
        tasks.push(tokio::spawn(self.clone().analysis_loop()));

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| tokio::spawn(self.clone().worker(stopped.clone())))
            .collect();
        shutdown.notified().await;
        let _ = stop.send(true);
        // Each worker finishes the item it holds (an apply in flight always completes).
        for w in workers {
            let _ = w.await;
        }
        for t in tasks {
            t.abort();
        }
    }

    async fn worker(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        loop {
            // Never decide from a partial view: until every store has listed (at start, and
            // again after a watch failed), a missing object may only be not listed yet, and
            // routing written from that view would drop ready versions.
            let item = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => return,
                item = async {
                    self.sync.wait_synced().await;
                    self.queue.pop().await
                } => item,
            };
            self.work(&item).await;
            self.queue.done(&item);
        }
    }

    /// Queues every routemap, every object stuck on the legacy finalizer, and the owners of
    /// routing objects whose routemap is gone (resync, or leadership just gained).
    pub fn enqueue_all(&self) {
        let (routemaps, stuck, orphans) = {
            let st = self.lock_state();
            (st.routemap_keys(), st.stuck_deletions(), st.orphan_owners())
        };
        for k in routemaps.into_iter().chain(orphans) {
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

    fn enqueue(&self, routemaps: impl IntoIterator<Item = RoutemapKey>) {
        let mut analysed = false;
        for r in routemaps {
            if !analysed {
                let st = self.lock_state();
                analysed = st.is_analysed(&r) || st.status(&r).is_some();
            }
            self.queue.push(Work::Routemap(r));
        }
        if analysed {
            self.analysis_wake.notify_one();
        }
    }

    // ---- watches: each feeds one store and queues what its change affects ----

    async fn watch_objects(self: Arc<Self>, gvr: Gvr) {
        let cfg = watcher::Config::default().labels(WATCH_LABEL);
        let me = self.clone();
        let (g, reduce_gvr) = (gvr.clone(), gvr.clone());
        watch::run(
            self.dynamic_api(&gvr),
            cfg,
            WatchId::Objects(gvr),
            self.sync.clone(),
            self.metrics.clone(),
            move |o: DynamicObject| AppObject::of(object_key(&reduce_gvr, &o), &o),
            move |change| me.objects_changed(&g, change),
        )
        .await;
    }

    fn objects_changed(&self, gvr: &Gvr, change: Change<AppObject>) {
        match change {
            Change::Relisted(objs) => {
                // Listed again after failing or being forbidden: routemaps held meanwhile
                // are reconciled even if what the store holds did not change.
                let recovered = matches!(
                    self.sync.state(&WatchId::Objects(gvr.clone())),
                    Some(WatchState::Failing(_) | WatchState::Forbidden(_))
                );
                let stuck = stuck_keys(&objs);
                let affected = self.lock_state().replace_type(gvr, objs);
                if recovered {
                    self.enqueue_all();
                }
                self.enqueue(affected);
                self.enqueue_stuck(stuck);
            }
            Change::Applied(o) => {
                let stuck = stuck_keys(std::slice::from_ref(&o));
                let affected = self.lock_state().upsert_object(o);
                self.enqueue(affected);
                self.enqueue_stuck(stuck);
            }
            Change::Deleted(o) => {
                let affected = self.lock_state().remove_object(&o.key);
                self.enqueue(affected);
            }
        }
    }

    fn enqueue_stuck(&self, keys: Vec<ObjectKey>) {
        for k in keys {
            self.queue.push(Work::Finalizer(k));
        }
    }

    async fn watch_routemaps(self: Arc<Self>) {
        let cfg = watcher::Config::default().labels(ROUTEMAP_KIND_LABEL);
        let me = self.clone();
        let config = self.config.clone();
        watch::run(
            self.api::<ConfigMap>(),
            cfg,
            WatchId::Routemaps,
            self.sync.clone(),
            self.metrics.clone(),
            move |cm: ConfigMap| (routemap_key(&cm), RoutemapRecord::read(&cm, &config)),
            move |change| me.routemaps_changed(change),
        )
        .await;
    }

    fn routemaps_changed(&self, change: Change<(RoutemapKey, RoutemapRecord)>) {
        match change {
            Change::Relisted(records) => {
                let fresh: HashSet<&RoutemapKey> = records.iter().map(|(k, _)| k).collect();
                let gone: Vec<RoutemapKey> = {
                    let mut st = self.lock_state();
                    let gone: Vec<RoutemapKey> = st
                        .routemap_keys()
                        .into_iter()
                        .filter(|k| !fresh.contains(k))
                        .collect();
                    for k in &gone {
                        st.remove_routemap(k);
                    }
                    gone
                };
                self.enqueue(gone);
                for (key, record) in records {
                    self.routemap_changed(key, record);
                }
            }
            Change::Applied((key, record)) => self.routemap_changed(key, record),
            // Deleted, or its `iter8.tools/kind` label removed: the reconcile tells them apart.
            Change::Deleted((key, _)) => {
                self.lock_state().remove_routemap(&key);
                self.enqueue([key]);
            }
        }
    }

    fn routemap_changed(&self, key: RoutemapKey, record: RoutemapRecord) {
        self.lock_state()
            .upsert_routemap(key.clone(), record, &self.config);
        self.enqueue([key]);
    }

    async fn watch_routing(self: Arc<Self>, gvr: Gvr) {
        let cfg = watcher::Config::default().labels(&format!("{ROUTING_LABEL}=true"));
        let me = self.clone();
        let (g, reduce_gvr) = (gvr.clone(), gvr.clone());
        watch::run(
            self.dynamic_api(&gvr),
            cfg,
            WatchId::Routing(gvr),
            self.sync.clone(),
            self.metrics.clone(),
            move |o: DynamicObject| RoutingSeen::of(object_key(&reduce_gvr, &o), &o),
            move |change| me.routing_changed(&g, change),
        )
        .await;
    }

    /// A routing object changed: its routemap checks for drift (or, if it is gone, cleans up).
    fn routing_changed(&self, gvr: &Gvr, change: Change<RoutingSeen>) {
        match change {
            Change::Relisted(objs) => {
                let owners: Vec<RoutemapKey> =
                    objs.iter().filter_map(RoutingSeen::owner_key).collect();
                self.lock_state().replace_routing(gvr, objs);
                self.enqueue(owners);
            }
            Change::Applied(o) => {
                let owner = o.owner_key();
                if self.lock_state().upsert_routing(o) {
                    self.enqueue(owner);
                }
            }
            Change::Deleted(o) => {
                self.lock_state().remove_routing(&o.key);
                self.enqueue(o.owner_key());
            }
        }
    }

    async fn watch_statuses(self: Arc<Self>) {
        let cfg = watcher::Config::default().labels(STATUS_KIND_LABEL);
        let me = self.clone();
        watch::run(
            self.api::<ConfigMap>(),
            cfg,
            WatchId::AnalysisStatus,
            self.sync.clone(),
            self.metrics.clone(),
            |cm: ConfigMap| analysis::observe_status(&cm),
            move |change| me.statuses_changed(change),
        )
        .await;
    }

    /// An analysis status changed: its routemap's traffic may have.
    fn statuses_changed(&self, change: Change<Option<(RoutemapKey, StatusRecord)>>) {
        let changed = match change {
            Change::Relisted(statuses) => self
                .lock_state()
                .replace_statuses(statuses.into_iter().flatten().collect()),
            Change::Applied(Some((key, record))) => {
                if self.lock_state().upsert_status(key.clone(), record) {
                    vec![key]
                } else {
                    vec![]
                }
            }
            Change::Deleted(Some((key, record))) => {
                self.lock_state().remove_status(&key, Some(&record.uid));
                vec![key]
            }
            Change::Applied(None) | Change::Deleted(None) => vec![],
        };
        self.enqueue(changed);
    }

    // ---- analysis: the leader measures, decides and stores the state; routing follows ----

    /// The leader's analysis loop: each pass brings every analysed routemap's state up to
    /// date (readiness, deadlines, due evaluations), stores what changed and sleeps until the
    /// next decision is due or something changes.
    async fn analysis_loop(self: Arc<Self>) {
        const IDLE: Duration = Duration::from_secs(30);
        loop {
            self.sync.wait_synced().await;
            let wake = if self.leadership().is_leader() {
                self.analysis_pass().await
            } else {
                // Leadership has no signal of its own; a standby looks again shortly.
                Some(Instant::now() + Duration::from_secs(1))
            };
            let until = wake
                .unwrap_or_else(|| Instant::now() + IDLE)
                .min(Instant::now() + IDLE);
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = self.analysis_wake.notified() => {}
            }
        }
    }

    /// One pass; returns when the next one is due.
    async fn analysis_pass(self: &Arc<Self>) -> Option<Instant> {
        let (jobs, stale) = self.lock_state().analysis_jobs(&self.config);
        for (key, uid) in stale {
            match self.applier.delete_status(&key, &uid).await {
                Ok(()) => self.lock_state().remove_status(&key, Some(&uid)),
                Err(e) => {
                    tracing::warn!(routemap = %key, error = %e, "failed to delete the analysis status; will retry")
                }
            }
        }
        let sources = self
            .analysis_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let steps = jobs
            .into_iter()
            .map(|job| self.analysis_step(job, sources.clone()));
        let wakes = futures::future::join_all(steps).await;
        let now = jiff::Timestamp::now();
        wakes.into_iter().flatten().min().map(|at| {
            let wait = now.duration_until(at).unsigned_abs();
            let wait = if at <= now { Duration::ZERO } else { wait };
            Instant::now() + wait
        })
    }

    /// One routemap's analysis: observe, evaluate if due, store and report what changed.
    /// Returns when it next needs a look.
    async fn analysis_step(
        self: &Arc<Self>,
        job: Job,
        sources: Option<Sources>,
    ) -> Option<jiff::Timestamp> {
        let Job {
            key,
            routemap_uid,
            analysis: a,
            facts,
            subject,
            stored,
        } = job;
        let current = stored.as_ref().and_then(|s| s.state.as_ref().ok());
        let (mut state, mut changes) =
            machine::observe(current, &a, &facts, jiff::Timestamp::now());
        let now = jiff::Timestamp::now();
        if state.due(now) {
            match state.phase {
                machine::Phase::Progressing => {
                    let verdict = match &sources {
                        Some(sources) => measure::evaluate(&a, &subject, sources).await,
                        None => measure::Verdict {
                            outcome: iter8_analysis::Outcome::Error,
                            reason: "the controller has no measurement sources".into(),
                            metrics: vec![],
                        },
                    };
                    self.metrics
                        .analysis_evaluations
                        .get_or_create(&vec![("outcome", verdict.outcome.to_string())])
                        .inc();
                    tracing::info!(routemap = %key, outcome = %verdict.outcome, reason = %verdict.reason, "analysis evaluation");
                    let (next, more) = machine::evaluated(
                        &state,
                        &a,
                        jiff::Timestamp::now(),
                        verdict.outcome,
                        verdict.reason,
                        verdict.metrics,
                    );
                    state = next;
                    changes.extend(more);
                }
                machine::Phase::AwaitingGate => {
                    let answer = match (&a.confirm_promotion, &sources) {
                        (Some(gate), Some(sources)) => {
                            let payload = hook_payload(&subject, &state, "confirm-promotion");
                            sources.http.post(&gate.url, &payload, gate.timeout).await
                        }
                        _ => Ok(()),
                    };
                    let (next, more) =
                        machine::gate_answered(&state, &a, jiff::Timestamp::now(), answer);
                    state = next;
                    changes.extend(more);
                }
                _ => {}
            }
        }
        let wake = state.wake_at(&a);
        if current != Some(&state) {
            let written = self
                .applier
                .write_status(&key, &routemap_uid, &state, stored.as_ref())
                .await;
            match written {
                Ok(record) => {
                    self.lock_state().upsert_status(key.clone(), record);
                    self.queue.push(Work::Routemap(key.clone()));
                }
                Err(Error::NotLeader) => return None,
                Err(e) => {
                    // Nothing was decided: the next pass starts again from what is stored.
                    tracing::warn!(routemap = %key, error = %e, "failed to store the analysis state; will retry");
                    self.metrics.error("analysis");
                    return Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1));
                }
            }
        }
        let weights = match self.lock_state().weigh(&key, &self.config) {
            Some(Ok(w)) => w.weights,
            _ => vec![],
        };
        let versions: Vec<(String, u32)> = subject
            .versions
            .iter()
            .zip(weights.iter().chain(std::iter::repeat(&0)))
            .map(|(v, w)| (v.name.clone(), *w))
            .collect();
        self.metrics
            .analysis(&subject.namespace, &subject.application, &state, &versions);
        for change in changes {
            tracing::info!(routemap = %key, reason = change.reason, "{}", change.text);
            let note = if change.warning {
                Note::warning(change.reason, "analysis", change.text.clone())
            } else {
                Note::normal(change.reason, change.text.clone())
            };
            self.publish(&key, &routemap_uid, vec![Report::about("analysis", note)])
                .await;
            if let (Some(hook), Some(sources)) = (&a.notify, &sources) {
                let mut payload = hook_payload(&subject, &state, change.reason);
                payload["message"] = serde_json::json!(change.text);
                let (http, url, timeout, key) = (
                    sources.http.clone(),
                    hook.url.clone(),
                    hook.timeout,
                    key.clone(),
                );
                tokio::spawn(async move {
                    if let Err(e) = http.post(&url, &payload, timeout).await {
                        tracing::warn!(routemap = %key, error = %e, "analysis notification failed");
                    }
                });
            }
        }
        wake
    }

    // ---- work ----

    async fn work(self: &Arc<Self>, item: &Work) {
        if !self.leadership().is_leader() {
            // Standbys keep their stores warm and write nothing; a new leader resyncs.
            self.schedule_retry(item, false);
            return;
        }
        let retry = match item {
            Work::Routemap(key) => {
                self.metrics.reconciles.inc();
                let started = Instant::now();
                let retry = self.reconcile(key).await;
                self.metrics
                    .reconcile_seconds
                    .observe(started.elapsed().as_secs_f64());
                retry
            }
            Work::Finalizer(key) => self.remove_legacy_finalizer(key).await,
        };
        self.schedule_retry(item, retry);
    }

    /// Retries a failed item with capped exponential backoff and jitter; a success resets it.
    fn schedule_retry(self: &Arc<Self>, item: &Work, retry: bool) {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        if !retry {
            retries.remove(item);
            return;
        }
        let delays = retries
            .entry(item.clone())
            .or_insert_with(|| Box::new(retry_backoff()));
        let delay = delays.next().unwrap_or(Duration::from_secs(60));
        drop(retries);
        let queue_item = item.clone();
        // The timer must not keep a stopped controller alive.
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(c) = me.upgrade() {
                c.queue.push(queue_item);
            }
        });
    }

    /// One routemap: load → plan → apply the plan → report. Returns whether to retry.
    async fn reconcile(&self, key: &RoutemapKey) -> bool {
        let record = self.lock_state().routemap(key);
        let Some(record) = record else {
            return self.cleanup(key).await;
        };
        let uid = record.meta.uid.clone();
        let rm = match &record.spec {
            Ok(rm) => rm,
            Err(hold) => {
                // Keep what was applied: a routemap that became unusable must not take its
                // application's routing down with it.
                let reason = match hold {
                    Hold::Invalid(_) => "InvalidRoutemap",
                    Hold::UnacceptedVersion { .. } => "RoutemapIgnored",
                };
                let note = Note::warning(reason, "routemap", hold.to_string());
                return self
                    .publish(key, &uid, vec![Report::about("routemap", note)])
                    .await;
            }
        };

        // A type it reads that RBAC forbids leaves a store that may be empty or stale: routing
        // written from it could drop ready versions. Keep what is live until it can be read.
        let forbidden: Vec<String> = rm
            .references(&key.namespace)
            .iter()
            .filter_map(|(short, _, _)| self.config.resource_types.get(short))
            .map(|rt| WatchId::Objects(Gvr::of(rt)))
            .filter_map(|id| match self.sync.state(&id) {
                Some(WatchState::Forbidden(why)) => Some(format!("{id}: {why}")),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !forbidden.is_empty() {
            let note = Note::warning(
                "ResourceProblem",
                "resource",
                format!(
                    "cannot watch {}; the routing already applied is kept until it can",
                    forbidden.join("; ")
                ),
            );
            return self
                .publish(key, &uid, vec![Report::about("resources", note)])
                .await;
        }

        // Load: the kinds of the routing types it uses, and what the stores hold.
        let mut kinds = HashMap::new();
        for gvr in plan::routing_types_used(rm, &self.config) {
            match self.applier.kind_of(&gvr).await {
                Ok(kind) => {
                    kinds.insert(gvr, kind);
                }
                // The plan reports it and asks for a retry.
                Err(Error::NotServed(_)) => {}
                Err(e) => {
                    tracing::warn!(routemap = %key, error = %e, "discovery failed; will retry");
                    return true;
                }
            }
        }
        let (objects, owned, status) = {
            let st = self.lock_state();
            (
                st.snapshot(rm, &key.namespace, &self.config),
                st.routing_owned_by(key),
                st.status(key).cloned(),
            )
        };
        // Rendering is CPU work on user input: off the async threads, so a slow routemap
        // holds one worker, not the watches or the other routemaps.
        let config = self.config.clone();
        let owner = key.clone();
        let planned = tokio::task::spawn_blocking(move || {
            let Ok(rm) = &record.spec else {
                return Plan::default();
            };
            plan::plan(&Inputs {
                key: &owner,
                meta: &record.meta,
                routemap: rm,
                config: &config,
                objects: &objects,
                owned: &owned,
                kinds: &kinds,
                analysis: record.analysis.as_ref(),
                status: status.as_ref(),
            })
        })
        .await;
        let plan = match planned {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!(routemap = %key, error = %e, "planning failed");
                return false;
            }
        };
        self.carry_out(key, &uid, plan).await
    }

    /// Applies and prunes what the plan says, then publishes its reports. Returns whether
    /// to retry.
    async fn carry_out(&self, key: &RoutemapKey, uid: &str, plan: Plan) -> bool {
        let Plan {
            weights,
            apply,
            prune,
            mut reports,
            mut retry,
        } = plan;
        let mut all_applied = true;
        // A claim lasts while the routemap renders the object.
        {
            let targets: Vec<&ObjectKey> = apply.iter().map(|d| &d.target).collect();
            self.lock_state().keep_claims(key, &targets);
        }
        for desired in &apply {
            let subject = template_subject(&desired.template);
            let target = &desired.target;
            // Written again: a later prune of it is news again.
            reports.push(Report::fine(prune_subject(target)));
            // Never take over an object another routemap (or anybody else) owns.
            let claimed = {
                let mut st = self.lock_state();
                st.claim(target, key).map(|()| st.routing(target))
            };
            let live = match claimed {
                Ok(live) => live,
                Err(why) => {
                    all_applied = false;
                    // Retried with backoff: the object may be released.
                    retry = true;
                    reports.push(Report::about(
                        subject,
                        Note::warning(
                            "RefusedObject",
                            "target",
                            format!(
                                "routing template {}: not taking over {} {}/{}: {why}",
                                desired.template, desired.kind, target.namespace, target.name
                            ),
                        ),
                    ));
                    continue;
                }
            };
            let started = Instant::now();
            match self.applier.apply(key, uid, desired, live.as_ref()).await {
                Ok(Applied::Unchanged) => reports.push(Report::fine(subject)),
                Ok(Applied::Written { object, created }) => {
                    self.lock_state()
                        .upsert_routing(RoutingSeen::of(target.clone(), &object));
                    let what = if created { "created" } else { "updated" };
                    tracing::info!(routemap = %key, object = %format!("{} {}/{}", desired.kind, target.namespace, target.name),
                        weights = ?weights, elapsed_ms = started.elapsed().as_millis() as u64, "{what} routing object");
                    reports.push(if self.options.routing_events {
                        Report::about(
                            subject,
                            Note::normal(
                                "Applied",
                                format!(
                                    "applied {} {}/{} (weights {weights:?})",
                                    desired.kind, target.namespace, target.name
                                ),
                            ),
                        )
                    } else {
                        Report::fine(subject)
                    });
                }
                Err(Error::NotLeader) => return false,
                Err(e) => {
                    all_applied = false;
                    let transient = e.is_transient();
                    // A taken object may be released: look again later.
                    retry |= transient || matches!(e, Error::Taken(_));
                    let (reason, category) = if transient {
                        ("ApplyFailed", "apply")
                    } else {
                        ("RefusedObject", "target")
                    };
                    reports.push(Report::about(
                        subject,
                        Note::warning(
                            reason,
                            category,
                            format!("routing template {}: {e}", desired.template),
                        ),
                    ));
                }
            }
        }
        // Pruned only once every rendered object is in place: a renamed template whose new
        // object the API server refused keeps the old one serving.
        let prune = if all_applied { prune } else { Vec::new() };
        for (target, seen) in &prune {
            let kind = if seen.kind.is_empty() {
                "object"
            } else {
                seen.kind.as_str()
            };
            match self.applier.delete(target, seen).await {
                Ok(Deleted::Deleted) => {
                    self.lock_state().remove_routing(target);
                    tracing::info!(routemap = %key, object = %target, "deleted routing object no template renders any more");
                    reports.push(Report::about(
                        prune_subject(target),
                        Note::normal(
                            "Deleted",
                            format!(
                                "deleted {kind} {}/{}: no routing template renders it any more",
                                target.namespace, target.name
                            ),
                        ),
                    ));
                }
                Ok(Deleted::NotOurs) => {}
                Err(Error::NotLeader) => return false,
                // Retried with backoff whatever the cause: cleanup must not depend on the
                // garbage collector.
                Err(e) => {
                    retry = true;
                    reports.push(Report::about(
                        prune_subject(target),
                        Note::warning("DeleteFailed", "delete", e.to_string()),
                    ));
                }
            }
        }
        self.publish(key, uid, reports).await || retry
    }

    /// Publishes the reports of one reconcile, in one place, after whatever failed to go out
    /// before. Returns whether to retry (a transient failure; any failed note stays in the
    /// outbox for the next reconcile).
    async fn publish(&self, key: &RoutemapKey, uid: &str, reports: Vec<Report>) -> bool {
        let mut results = vec![self.applier.flush_events(key, uid).await];
        for r in reports {
            results.push(
                self.applier
                    .report(key, uid, &r.subject, r.note.as_ref())
                    .await,
            );
        }
        let mut retry = false;
        for result in results {
            match result {
                Ok(()) | Err(Error::NotLeader) => {}
                Err(e) => {
                    self.metrics.error("event");
                    tracing::warn!(routemap = %key, error = %e, "failed to publish an Event");
                    retry |= e.is_transient();
                }
            }
        }
        retry
    }

    /// The routemap is not in the store: if its ConfigMap is really gone, delete the routing
    /// objects the controller wrote for it. Returns whether to retry.
    async fn cleanup(&self, key: &RoutemapKey) -> bool {
        let owned = self.lock_state().routing_owned_by(key);
        if owned.is_empty() {
            self.applier.forget(key);
            return false;
        }
        // The routemap watch only sees labelled ConfigMaps: one that lost its
        // `iter8.tools/kind` label looks deleted. Ask the API server before deleting.
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &key.namespace);
        let live = match api.get_opt(&key.name).await {
            Ok(cm) => cm,
            Err(e) => {
                let e = Error::api(format!("get routemap {key}"), e);
                tracing::warn!(routemap = %key, error = %e, "cannot tell whether the routemap is gone; will retry");
                return true;
            }
        };
        let (stale, kept): (Vec<_>, Vec<_>) = match &live {
            None => (owned, Vec::new()),
            // Not listed yet: the watch brings it.
            Some(cm) if is_routemap(cm) => return false,
            // Objects of an earlier ConfigMap of this name are stale; this one's are kept.
            Some(cm) => {
                let uid = cm.uid().unwrap_or_default();
                owned
                    .into_iter()
                    .partition(|(_, o)| o.owner.as_ref().is_none_or(|(_, u)| *u != uid))
            }
        };
        let mut retry = false;
        if let (Some(cm), false) = (&live, kept.is_empty()) {
            let note = Note::warning(
                "RoutemapIgnored",
                "routemap",
                format!(
                    "label iter8.tools/kind=routemap was removed; the routing objects already \
                     applied ({}) are kept and not reconciled until it is back",
                    describe_objects(&kept)
                ),
            );
            self.publish(
                key,
                &cm.uid().unwrap_or_default(),
                vec![Report::about("routemap", note)],
            )
            .await;
            // Outside the routemap watch, its deletion would go unseen: look again later.
            retry = true;
        }
        for (target, seen) in &stale {
            match self.applier.delete(target, seen).await {
                Ok(Deleted::Deleted) => {
                    self.lock_state().remove_routing(target);
                    tracing::info!(routemap = %key, object = %target, "deleted routing object of deleted routemap");
                }
                Ok(Deleted::NotOurs) => {}
                Err(Error::NotLeader) => return false,
                // Any failure is retried with backoff, a forbidden one too: cleanup must not
                // depend on the garbage collector.
                Err(e) => {
                    self.metrics.error("delete");
                    tracing::warn!(routemap = %key, object = %target, error = %e, "failed to delete routing object; will retry");
                    retry = true;
                }
            }
        }
        if !retry && live.is_none() {
            self.applier.forget(key);
        }
        retry
    }

    async fn remove_legacy_finalizer(&self, key: &ObjectKey) -> bool {
        let Some(stuck) = self.lock_state().stuck_deletion(key) else {
            return false;
        };
        match self
            .applier
            .remove_finalizer(
                key,
                &stuck.resource_version,
                &stuck.finalizers,
                LEGACY_FINALIZER,
            )
            .await
        {
            Ok(()) => {
                tracing::info!(object = %key, "removed legacy finalizer {LEGACY_FINALIZER}");
                false
            }
            Err(Error::NotLeader) => false,
            // A conflict means a newer version is coming through the watch, which queues it.
            Err(e) if e.failure() == Some(crate::error::ApiFailure::Conflict) => false,
            Err(e) => {
                tracing::warn!(object = %key, error = %e, "failed to remove legacy finalizer");
                e.is_transient()
            }
        }
    }
}

/// Retry delays: 200 ms doubling to at most a minute, with jitter.
fn retry_backoff() -> impl Iterator<Item = Duration> + Send {
    crate::error::backoff(Duration::from_millis(200), Duration::from_secs(60))
}

/// The Event subject of pruning one object.
fn prune_subject(target: &ObjectKey) -> String {
    format!("prune {target}")
}

fn describe_objects(objs: &[(ObjectKey, RoutingObject)]) -> String {
    objs.iter()
        .map(|(k, o)| {
            format!(
                "{} {}",
                if o.kind.is_empty() {
                    "object"
                } else {
                    o.kind.as_str()
                },
                k.name
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_routemap(cm: &ConfigMap) -> bool {
    let (k, v) = ROUTEMAP_KIND_LABEL.split_once('=').unwrap_or_default();
    cm.labels().get(k).is_some_and(|l| l == v)
}

fn object_key(gvr: &Gvr, obj: &DynamicObject) -> ObjectKey {
    ObjectKey {
        gvr: gvr.clone(),
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

fn routemap_key(cm: &ConfigMap) -> RoutemapKey {
    RoutemapKey {
        namespace: cm.namespace().unwrap_or_default(),
        name: cm.name_any(),
    }
}

/// The keys of the objects held by the legacy finalizer while being deleted.
fn stuck_keys(objs: &[AppObject]) -> Vec<ObjectKey> {
    objs.iter()
        .filter(|o| o.stuck.is_some())
        .map(|o| o.key.clone())
        .collect()
}

/// What the promotion gate and notifications receive.
fn hook_payload(
    subject: &iter8_analysis::measure::Subject,
    state: &machine::State,
    event: &str,
) -> serde_json::Value {
    serde_json::json!({
        "namespace": subject.namespace,
        "application": subject.application,
        "event": event,
        "phase": state.phase.as_str(),
        "step": state.step,
        "candidate": subject.versions[1].name,
        "primary": subject.versions[0].name,
        "message": state.message,
    })
}
