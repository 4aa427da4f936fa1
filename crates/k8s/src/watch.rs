//! The one list-watch loop every store is fed by (application objects, routemaps, routing
//! objects): it buffers a (re)list into one [`Change::Relisted`], reports each watch's state to
//! the [`SyncTracker`], and after any error starts over with a fresh list (at once after a
//! 410, after a backoff with jitter otherwise), so a store is never left stale.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::watcher::{self, watcher, Event};
use kube::Resource;
use serde::de::DeserializeOwned;

use crate::error::{describe_watch, ApiFailure};
use crate::metrics::Metrics;
use crate::sync::{SyncTracker, WatchId, WatchState};

/// What a store learns from its watch.
#[derive(Debug)]
pub enum Change<K> {
    /// A complete list: everything else of this watch is gone.
    Relisted(Vec<K>),
    /// An object was created or changed.
    Applied(K),
    /// An object was deleted, or no longer matches the watch's label selector.
    Deleted(K),
}

/// Backoff between failed watch attempts: 250 ms doubling to at most 4 s, with jitter, so a
/// watch lists again within seconds of the API server coming back.
pub fn backoff() -> impl Iterator<Item = Duration> {
    crate::error::backoff(Duration::from_millis(250), Duration::from_secs(4))
}

/// Counts a change a watch delivered.
fn seen(metrics: &Metrics, id: &WatchId) {
    metrics
        .watch_events
        .get_or_create(&vec![("watch", id.to_string())])
        .inc();
}

/// Runs a watch forever, handing every change to `apply`. Each object is first reduced to
/// what its store keeps (`reduce`), so a (re)list buffers the reduced values, never every
/// full object at once.
pub async fn run<K, R, F>(
    api: Api<K>,
    config: watcher::Config,
    id: WatchId,
    sync: Arc<SyncTracker>,
    metrics: Arc<Metrics>,
    reduce: impl Fn(K) -> R + Send,
    mut apply: F,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Clone,
    F: FnMut(Change<R>) + Send,
{
    let start = || watcher(api.clone(), config.clone()).boxed();
    let mut stream = start();
    let mut buffer: Vec<R> = Vec::new();
    let mut delays = backoff();
    let mut last_error: Option<String> = None;
    let mut gone_before = false;
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => match event {
                Event::Init => buffer.clear(),
                Event::InitApply(o) => buffer.push(reduce(o)),
                Event::InitDone => {
                    apply(Change::Relisted(std::mem::take(&mut buffer)));
                    sync.set(id.clone(), WatchState::Listed);
                    sync.api_ok();
                    delays = backoff();
                    gone_before = false;
                    if last_error.take().is_some() {
                        tracing::info!(watch = %id, "watch listed again");
                    }
                }
                Event::Apply(o) => {
                    seen(&metrics, &id);
                    apply(Change::Applied(reduce(o)))
                }
                Event::Delete(o) => {
                    seen(&metrics, &id);
                    apply(Change::Deleted(reduce(o)))
                }
            },
            // The watcher stream never ends; if it did, there is nothing left to watch.
            Ok(None) => return,
            Err(e) => {
                metrics.watch_restarts.inc();
                let failure = ApiFailure::of_watch(&e);
                let why = describe_watch(&e);
                if failure == ApiFailure::Gone && !gone_before {
                    // The resource version expired: relist at once, nothing to wait for (a
                    // second 410 in a row backs off like any error).
                    tracing::debug!(watch = %id, error = %why, "resource version expired; relisting");
                    gone_before = true;
                    buffer.clear();
                    stream = start();
                    continue;
                }
                let state = match failure {
                    // The type is not served (CRD missing) or RBAC forbids it: count it as
                    // complete so it does not hold up the rest, keeping what the store has;
                    // routemaps that read a forbidden type are held (see the controller).
                    // Keep retrying, so it is watched as soon as it can be.
                    ApiFailure::NotFound => WatchState::NotServed(why.clone()),
                    ApiFailure::Forbidden => WatchState::Forbidden(why.clone()),
                    _ => {
                        sync.api_failed(format!("watch {id}: {why}"));
                        WatchState::Failing(why.clone())
                    }
                };
                // A changed error is logged once, not at every attempt.
                if last_error.as_deref() != Some(why.as_str()) {
                    tracing::warn!(watch = %id, error = %why, "watch failed; retrying with backoff");
                    last_error = Some(why);
                }
                sync.set(id.clone(), state);
                let delay = delays.next().unwrap_or(Duration::from_secs(4));
                tokio::time::sleep(delay).await;
                // kube's watcher would resume from its last resource version and never say
                // InitDone again; a fresh list makes the store complete again.
                buffer.clear();
                stream = start();
            }
        }
    }
}
