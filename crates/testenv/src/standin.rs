//! `testenv up --dataplane`: stands in for KServe and Knative on the local control plane.
//! Watches InferenceServices in every namespace and, for each new one and each spec change
//! (`metadata.generation`), asks the data-plane harness to serve it
//! ([`DataPlane::serve_inference_service`]: a new MLServer revision, the Knative-side route,
//! then Ready status once the model answers); when one is deleted, stops its model server and
//! removes its route ([`DataPlane::stop_inference_service`]).
//!
//! One worker task per InferenceService, so a slow model server start never holds up
//! another InferenceService, and changes to one are acted on in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use testenv::dataplane::DataPlane;
use testenv::fixtures::inference_service;

/// Prefix of every line the stand-in prints.
pub const TAG: &str = "[stand-in for KServe + Knative]";

/// What should run for one InferenceService: `None` once it is deleted.
type Desired = Option<(String, i64)>; // (uid, generation)

struct Worker {
    tx: watch::Sender<Desired>,
    task: JoinHandle<()>,
}

/// The running stand-in; [`StandIn::stop`] ends every task (and with them any model server
/// still starting) so the [`DataPlane`] can be dropped.
pub struct StandIn {
    watch: JoinHandle<()>,
    workers: Arc<std::sync::Mutex<BTreeMap<(String, String), Worker>>>,
}

impl StandIn {
    pub fn start(client: Client, dp: Arc<DataPlane>) -> StandIn {
        let workers: Arc<std::sync::Mutex<BTreeMap<(String, String), Worker>>> = Arc::default();
        let w = workers.clone();
        let watch = tokio::spawn(async move {
            let api: Api<DynamicObject> = Api::all_with(client, &inference_service());
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            // Keys listed since the last (re)start of the watch: whatever is not among them
            // when the list is done was deleted meanwhile.
            let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
            loop {
                let event = match stream.try_next().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return,
                    Err(e) => {
                        eprintln!("{TAG} watching InferenceServices: {e}");
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(o) => {
                        listed.insert(key(&o));
                        desire(&w, &dp, &o);
                    }
                    watcher::Event::InitDone => {
                        let gone: Vec<_> = lock(&w)
                            .keys()
                            .filter(|k| !listed.contains(*k))
                            .cloned()
                            .collect();
                        for k in gone {
                            deleted(&w, &k);
                        }
                    }
                    watcher::Event::Apply(o) => desire(&w, &dp, &o),
                    watcher::Event::Delete(o) => deleted(&w, &key(&o)),
                }
            }
        });
        StandIn { watch, workers }
    }

    /// Stops watching and aborts every worker: a model server still starting is dropped, and
    /// with it stopped.
    pub async fn stop(self) {
        self.watch.abort();
        let _ = self.watch.await;
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers.values() {
            w.task.abort();
        }
        for (_, w) in workers {
            let _ = w.task.await;
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key(o: &DynamicObject) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Records what `o` asks for, starting its worker if it has none.
fn desire(
    workers: &Arc<std::sync::Mutex<BTreeMap<(String, String), Worker>>>,
    dp: &Arc<DataPlane>,
    o: &DynamicObject,
) {
    let k = key(o);
    if o.metadata.deletion_timestamp.is_some() {
        deleted(workers, &k);
        return;
    }
    let want = Some((
        o.uid().unwrap_or_default(),
        o.metadata.generation.unwrap_or(1),
    ));
    let mut map = lock(workers);
    if let Some(w) = map.get(&k) {
        if !w.task.is_finished() {
            w.tx.send_if_modified(|d| {
                let changed = *d != want;
                *d = want.clone();
                changed
            });
            return;
        }
    }
    let (tx, rx) = watch::channel(want);
    let task = tokio::spawn(worker(dp.clone(), workers.clone(), k.clone(), rx));
    map.insert(k, Worker { tx, task });
}

fn deleted(
    workers: &Arc<std::sync::Mutex<BTreeMap<(String, String), Worker>>>,
    k: &(String, String),
) {
    if let Some(w) = lock(workers).get(k) {
        w.tx.send_replace(None);
    }
}

/// Serves InferenceService `k` at each generation it is asked for, in order; stops it and
/// removes itself once it is deleted.
async fn worker(
    dp: Arc<DataPlane>,
    workers: Arc<std::sync::Mutex<BTreeMap<(String, String), Worker>>>,
    k: (String, String),
    mut rx: watch::Receiver<Desired>,
) {
    let (ns, name) = (&k.0, &k.1);
    let mut served: Desired = None;
    let mut failures = 0u32;
    loop {
        let want = rx.borrow_and_update().clone();
        match &want {
            None => {
                if let Err(e) = dp.stop_inference_service(ns, name).await {
                    eprintln!("{TAG} {ns}/{name}: stopping: {e:#}");
                }
                served = None;
                println!("{TAG} InferenceService {ns}/{name} deleted: its model server is stopped");
                let mut map = lock(&workers);
                // Re-created meanwhile: the watch loop will start a new worker.
                if rx.has_changed().unwrap_or(false) {
                    drop(map);
                    continue;
                }
                map.remove(&k);
                return;
            }
            Some((_, generation)) if want != served => {
                println!(
                    "{TAG} InferenceService {ns}/{name} generation {generation}: starting a model server (MLServer)"
                );
                match dp.serve_inference_service(ns, name).await {
                    Ok(revision) => {
                        println!(
                            "{TAG} InferenceService {ns}/{name} generation {generation}: revision {revision} answers; status Ready"
                        );
                        served = want;
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        let wait = Duration::from_secs(2u64.saturating_pow(failures.min(5)));
                        eprintln!(
                            "{TAG} InferenceService {ns}/{name} generation {generation}: serving failed (retrying in {wait:?}): {e:#}"
                        );
                        // Retry later, sooner if the InferenceService changes.
                        let _ = tokio::time::timeout(wait, rx.changed()).await;
                    }
                }
                continue;
            }
            Some(_) => {}
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
