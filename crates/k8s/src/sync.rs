//! Which watches have listed: a typed tracker that `/readyz` reads and that wakes the workers
//! the moment every store holds a complete view. No I/O.

use std::collections::BTreeMap;
use std::fmt;

use tokio::sync::watch;

use crate::keys::Gvr;

/// One watch of the controller.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WatchId {
    /// Application objects of a configured type.
    Objects(Gvr),
    /// Routemap ConfigMaps.
    Routemaps,
    /// Routing objects the controller wrote, of a routing type.
    Routing(Gvr),
    /// Analysis status ConfigMaps.
    AnalysisStatus,
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchId::Objects(g) => write!(f, "objects {g}"),
            WatchId::Routemaps => write!(f, "routemaps"),
            WatchId::Routing(g) => write!(f, "routing {g}"),
            WatchId::AnalysisStatus => write!(f, "analysis status"),
        }
    }
}

/// Where a watch stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// Not listed yet.
    Pending,
    /// Listed; the store is complete.
    Listed,
    /// The type is not served (CRD missing): no such object can exist, so the store counts as
    /// complete and empty; the watch keeps retrying.
    NotServed(String),
    /// RBAC forbids the watch: the store counts as complete so other routemaps are served,
    /// but it may be stale or empty, so routemaps that read it are held.
    Forbidden(String),
    /// The watch failed after listing; the store may be stale until it lists again.
    Failing(String),
}

impl WatchState {
    fn is_complete(&self) -> bool {
        matches!(
            self,
            WatchState::Listed | WatchState::NotServed(_) | WatchState::Forbidden(_)
        )
    }
}

/// The state of every watch; waiters wake on each change. Also whether API requests
/// (writes, lists) currently fail, for `/readyz`.
pub struct SyncTracker {
    tx: watch::Sender<BTreeMap<WatchId, WatchState>>,
    /// The last request that failed because the API server was unreachable or throttling,
    /// and when; cleared by any later answer.
    api_failure: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Default for SyncTracker {
    fn default() -> Self {
        SyncTracker {
            tx: watch::Sender::new(BTreeMap::new()),
            api_failure: std::sync::Mutex::default(),
        }
    }
}

impl SyncTracker {
    /// Adds a watch in state [`WatchState::Pending`].
    pub fn register(&self, id: WatchId) {
        self.set(id, WatchState::Pending);
    }

    /// Records a watch's state; wakes waiters only when it changed.
    pub fn set(&self, id: WatchId, state: WatchState) {
        self.tx.send_if_modified(|m| {
            if m.get(&id) == Some(&state) {
                return false;
            }
            m.insert(id, state);
            true
        });
    }

    /// The state of one watch.
    pub fn state(&self, id: &WatchId) -> Option<WatchState> {
        self.tx.borrow().get(id).cloned()
    }

    /// Every registered watch has a complete store (and at least one is registered).
    pub fn is_synced(&self) -> bool {
        synced(&self.tx.borrow())
    }

    /// The watches without a complete store, each with why, for `/readyz`.
    pub fn unsynced(&self) -> Vec<String> {
        self.tx
            .borrow()
            .iter()
            .filter(|(_, s)| !s.is_complete())
            .map(|(id, s)| match s {
                WatchState::Failing(why) => format!("{id}: {why}"),
                _ => format!("{id}: not listed yet"),
            })
            .collect()
    }

    /// An API request succeeded: the API server answers.
    pub fn api_ok(&self) {
        *self.lock_api() = None;
    }

    /// An API request failed in a way retrying can fix.
    pub fn api_failed(&self, why: String) {
        *self.lock_api() = Some((std::time::Instant::now(), why));
    }

    /// Why API requests are failing, if the last one did (with how long ago).
    pub fn api_failing(&self) -> Option<String> {
        self.lock_api()
            .as_ref()
            .map(|(at, why)| format!("{why} ({}s ago)", at.elapsed().as_secs()))
    }

    fn lock_api(&self) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, String)>> {
        self.api_failure.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every watch and its state, one line each.
    pub fn describe(&self) -> Vec<String> {
        self.tx
            .borrow()
            .iter()
            .map(|(id, s)| format!("{id}: {s:?}"))
            .collect()
    }

    /// Watches that are complete but empty because the type cannot be watched.
    pub fn unavailable(&self) -> Vec<String> {
        self.tx
            .borrow()
            .iter()
            .filter_map(|(id, s)| match s {
                WatchState::NotServed(why) | WatchState::Forbidden(why) => {
                    Some(format!("{id}: {why}"))
                }
                _ => None,
            })
            .collect()
    }

    /// Waits until every store is complete.
    pub async fn wait_synced(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(synced).await;
    }
}

fn synced(m: &BTreeMap<WatchId, WatchState>) -> bool {
    !m.is_empty() && m.values().all(WatchState::is_complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn gvr(r: &str) -> Gvr {
        Gvr {
            group: "g".into(),
            version: "v1".into(),
            resource: r.into(),
        }
    }

    #[test]
    fn synced_only_when_every_watch_is_complete() {
        let t = SyncTracker::default();
        assert!(!t.is_synced(), "nothing registered is not synced");
        t.register(WatchId::Routemaps);
        t.register(WatchId::Objects(gvr("as")));
        t.set(WatchId::Routemaps, WatchState::Listed);
        assert!(!t.is_synced());
        assert_eq!(t.unsynced(), ["objects as.g: not listed yet"]);
        t.set(
            WatchId::Objects(gvr("as")),
            WatchState::NotServed("not served".into()),
        );
        assert!(t.is_synced(), "an unavailable type does not hold the rest");
        t.set(
            WatchId::Routemaps,
            WatchState::Failing("connection refused".into()),
        );
        assert!(!t.is_synced());
        assert_eq!(t.unsynced(), ["routemaps: connection refused"]);
    }

    #[tokio::test]
    async fn waiters_wake_when_the_last_watch_lists() {
        let t = Arc::new(SyncTracker::default());
        t.register(WatchId::Routemaps);
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait_synced().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        t.set(WatchId::Routemaps, WatchState::Listed);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
