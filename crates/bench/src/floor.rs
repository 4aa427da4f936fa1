//! The floor: the least a controller can do on the benchmark's work, as a baseline for ours
//! and the original (`bench floor --kubeconfig K --namespace NS`, a hidden subcommand, so that
//! it runs as its own OS process and its RSS, CPU and audit-log user are measured the same way).
//!
//! One watch on the namespace's InferenceServices labelled `iter8.tools/watch=true` (as the
//! benchmark creates them: `<app>-0`, the primary, and `<app>-1`, the candidate), and one
//! server-side apply (field manager `floor`, forced) of the application's VirtualService
//! whenever the route it should carry changes — nothing else: no routemaps, no templates, no
//! Events, no leases, no read before a write. At start, one list of the namespace's
//! VirtualServices tells which already carry the route they should (so that a restart with
//! nothing changed writes nothing), and nothing is applied before the watch's initial list is
//! complete (so that an application whose candidate is ready is never routed to its primary
//! alone because the candidate was not listed yet).
//!
//! The VirtualService is the one our controller writes for the tutorial's routemap, which the
//! benchmark creates for every application: its template reads only whether the candidate's weight is
//! positive, so there are two objects per application (weights `[1, 0]`: the primary route
//! only; `[1, 1]` or `[0, 1]`: the candidate's header route first, then the primary's). Both
//! are computed once at start from [`tutorial_virtual_service_spec`] (what the end-to-end
//! tutorial test checks our controller writes) with `wisdom` as the application's name; an
//! apply substitutes the name, so the floor's memory does not grow with precomputed objects.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use testenv::fixtures::{inference_service, tutorial_virtual_service_spec, virtual_service};
use tokio::sync::{mpsc, Semaphore};

/// The floor's field manager.
pub const FIELD_MANAGER: &str = "floor";

/// The label selector of watched objects (as the release chart labels them).
const WATCH_SELECTOR: &str = "iter8.tools/watch=true";

/// The application's name in the tutorial's objects.
const TUTORIAL_APP: &str = "wisdom";

/// Applies in flight at once (ours has four workers; the benchmark creates 8 apps at a time).
const MAX_IN_FLIGHT: usize = 16;

/// Wait before retrying a failed apply.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The two VirtualServices of an application, as JSON text naming it `wisdom`.
#[derive(Debug, Clone)]
pub struct Routes {
    primary: String,
    candidate: String,
}

impl Routes {
    /// The tutorial's VirtualServices in namespace `ns`.
    pub fn new(ns: &str) -> Result<Routes> {
        let object = |step: u8| -> Result<String> {
            let spec = tutorial_virtual_service_spec(ns, step)?;
            Ok(serde_json::to_string(&json!({
                "apiVersion": "networking.istio.io/v1beta1",
                "kind": "VirtualService",
                "metadata": {"name": TUTORIAL_APP, "namespace": ns},
                "spec": spec,
            }))?)
        };
        Ok(Routes {
            primary: object(1)?,
            candidate: object(2)?,
        })
    }

    /// Application `app`'s VirtualService: with the candidate's route or the primary's only.
    pub fn object(&self, app: &str, candidate: bool) -> Result<Value> {
        let text = if candidate {
            &self.candidate
        } else {
            &self.primary
        };
        Ok(serde_json::from_str(&text.replace(TUTORIAL_APP, app))?)
    }
}

/// Whether an InferenceService is ready: not being deleted, at least one `Ready` condition and
/// every one `True`, and `status.observedGeneration`, when given, caught up with
/// `metadata.generation`.
pub fn ready(obj: &DynamicObject) -> bool {
    if obj.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let status = &obj.data["status"];
    let fresh = match (
        status["observedGeneration"].as_i64(),
        obj.metadata.generation,
    ) {
        (Some(observed), Some(generation)) => observed >= generation,
        _ => true,
    };
    let mut ready = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == "Ready")
        .peekable();
    fresh && ready.peek().is_some() && ready.all(|c| c["status"] == "True")
}

/// The application and version (0: primary, 1: candidate) of InferenceService `<app>-<i>`.
fn version_of(name: &str) -> Option<(&str, usize)> {
    match name.rsplit_once('-')? {
        (app, "0") if !app.is_empty() => Some((app, 0)),
        (app, "1") if !app.is_empty() => Some((app, 1)),
        _ => None,
    }
}

/// What the floor knows of one application.
#[derive(Debug, Default)]
struct App {
    /// Readiness of the primary and the candidate; `None` while not seen (or deleted).
    ready: [Option<bool>; 2],
    /// The route last applied: whether it had the candidate's.
    applied: Option<bool>,
    /// An apply is in flight.
    in_flight: bool,
}

impl App {
    /// The route the VirtualService should carry, once a version exists: the candidate's
    /// when its weight is positive, i.e. when it is ready (with both unready, the primary
    /// gets weight 1 and the candidate 0).
    fn desired(&self) -> Option<bool> {
        if self.ready.iter().all(Option::is_none) {
            return None;
        }
        Some(self.ready[1] == Some(true))
    }
}

/// An apply's outcome: (application, with the candidate's route, succeeded).
type Done = (String, bool, bool);

/// What the floor knows: each application's versions and route, and whether the watch is
/// listing. Its methods return the applies to start: (application, with the candidate's
/// route).
#[derive(Debug, Default)]
struct State {
    apps: HashMap<String, App>,
    /// The watch is (re)listing: apply nothing before its list is complete.
    listing: bool,
}

impl State {
    /// Records that application `app`'s VirtualService carries the route of `candidate`.
    fn found(&mut self, app: &str, candidate: bool) {
        self.apps.entry(app.to_string()).or_default().applied = Some(candidate);
    }

    /// Records what the watch said of InferenceService `name` (`None`: deleted).
    fn observe(&mut self, name: &str, ready: Option<bool>) -> Vec<(String, bool)> {
        let Some((app, i)) = version_of(name) else {
            return Vec::new();
        };
        let state = self.apps.entry(app.to_string()).or_default();
        if state.ready[i] == ready {
            return Vec::new();
        }
        state.ready[i] = ready;
        self.sync(app).into_iter().collect()
    }

    /// The watch starts (again) from a list: forget what it said so far.
    fn relist(&mut self) {
        self.listing = true;
        for state in self.apps.values_mut() {
            state.ready = [None, None];
        }
    }

    /// The watch's list is complete: apply what changed.
    fn listed(&mut self) -> Vec<(String, bool)> {
        self.listing = false;
        let apps: Vec<String> = self.apps.keys().cloned().collect();
        apps.iter().filter_map(|app| self.sync(app)).collect()
    }

    /// Records an apply's outcome; applies again if the wanted route changed meanwhile (or
    /// the apply failed).
    fn finished(&mut self, (app, candidate, ok): Done) -> Vec<(String, bool)> {
        let Some(state) = self.apps.get_mut(&app) else {
            return Vec::new();
        };
        state.in_flight = false;
        if ok {
            state.applied = Some(candidate);
        }
        self.sync(&app).into_iter().collect()
    }

    /// The apply to start for `app`, if its VirtualService should carry another route than
    /// the one last applied, none is in flight and the watch is not listing.
    fn sync(&mut self, app: &str) -> Option<(String, bool)> {
        if self.listing {
            return None;
        }
        let state = self.apps.get_mut(app)?;
        let candidate = state.desired()?;
        if state.in_flight || state.applied == Some(candidate) {
            return None;
        }
        state.in_flight = true;
        Some((app.to_string(), candidate))
    }
}

/// Starts applies, at most [`MAX_IN_FLIGHT`] at once; each reports its [`Done`].
#[derive(Clone)]
struct Applier {
    vss: Api<DynamicObject>,
    routes: Arc<Routes>,
    limit: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Done>,
}

impl Applier {
    fn start(&self, applies: Vec<(String, bool)>) {
        for (app, candidate) in applies {
            let this = self.clone();
            tokio::spawn(async move {
                let ok = match this.apply(&app, candidate).await {
                    Ok(()) => true,
                    Err(e) => {
                        eprintln!("floor: applying VirtualService {app}: {e:#}");
                        tokio::time::sleep(RETRY_AFTER).await;
                        false
                    }
                };
                let _ = this.done.send((app, candidate, ok));
            });
        }
    }

    async fn apply(&self, app: &str, candidate: bool) -> Result<()> {
        let object = self.routes.object(app, candidate)?;
        let _permit = self.limit.acquire().await?;
        self.vss
            .patch(
                app,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await?;
        Ok(())
    }
}

/// Runs the floor in namespace `ns` with the credentials of `kubeconfig`, until killed.
pub async fn run(kubeconfig: &Path, ns: &str) -> Result<()> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let (done, mut finished) = mpsc::unbounded_channel();
    let applier = Applier {
        vss: Api::namespaced_with(client.clone(), ns, &virtual_service()),
        routes: Arc::new(Routes::new(ns)?),
        limit: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        done,
    };
    let mut state = State {
        listing: true,
        ..State::default()
    };
    match applier.vss.list(&ListParams::default()).await {
        Ok(list) => {
            for vs in &list.items {
                let app = vs.name_any();
                for candidate in [false, true] {
                    if applier.routes.object(&app, candidate)?["spec"] == vs.data["spec"] {
                        state.found(&app, candidate);
                    }
                }
            }
        }
        Err(e) => eprintln!("floor: listing VirtualServices (applying every one): {e}"),
    }
    let isvcs: Api<DynamicObject> = Api::namespaced_with(client, ns, &inference_service());
    let mut events = watcher(isvcs, watcher::Config::default().labels(WATCH_SELECTOR))
        .default_backoff()
        .boxed();
    loop {
        let applies = tokio::select! {
            event = events.next() => match event {
                None => bail!("the InferenceService watch ended"),
                Some(Err(e)) => {
                    eprintln!("floor: watching InferenceServices: {e}");
                    Vec::new()
                }
                Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => {
                    state.observe(&o.name_any(), Some(ready(&o)))
                }
                Some(Ok(watcher::Event::Delete(o))) => state.observe(&o.name_any(), None),
                Some(Ok(watcher::Event::Init)) => {
                    state.relist();
                    Vec::new()
                }
                Some(Ok(watcher::Event::InitDone)) => state.listed(),
            },
            Some(outcome) = finished.recv() => state.finished(outcome),
        };
        applier.start(applies);
    }
}

/// `bench floor`: [`run`] on the runtime ours runs on (tokio's multi-threaded one, a worker
/// per CPU), so that latencies differ by the work done, not by the scheduler; a
/// single-threaded runtime saves about 0.5 MiB of RSS and was no faster.
pub fn main(kubeconfig: &Path, ns: &str) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(kubeconfig, ns))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use testenv::kserve;
    use testenv::objects::Times;

    fn isvc(ns: &str, name: &str, state: Option<&kserve::State>, generation: i64) -> DynamicObject {
        let mut o = json!({
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "namespace": ns, "generation": generation},
        });
        if let Some(s) = state {
            let times = Times::fixed(kserve::CREATED_AT, kserve::READY_AT);
            o["status"] = kserve::status(ns, name, s, 1, &times);
        }
        serde_json::from_value(o).unwrap()
    }

    #[test]
    fn ready_reads_kserves_statuses() {
        let revision = kserve::revision("a-0", 1);
        let r = kserve::State::Ready {
            revision: revision.clone(),
        };
        assert!(ready(&isvc("ns", "a-0", Some(&r), 1)));
        assert!(!ready(&isvc("ns", "a-0", None, 1)));
        assert!(!ready(&isvc(
            "ns",
            "a-0",
            Some(&kserve::State::NotReady),
            1
        )));
        let out_of_date = kserve::State::OutOfDate { revision };
        assert!(!ready(&isvc("ns", "a-0", Some(&out_of_date), 1)));
        // observedGeneration behind the spec: not fresh.
        assert!(!ready(&isvc("ns", "a-0", Some(&r), 2)));
    }

    #[test]
    fn routes_are_the_tutorials_virtual_services_with_the_apps_name() {
        let routes = Routes::new("bench-ns").unwrap();
        let names = |v: &Value| -> Vec<String> {
            v["spec"]["http"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect()
        };
        let primary = routes.object("app7", false).unwrap();
        let candidate = routes.object("app7", true).unwrap();
        assert_eq!(primary["metadata"]["name"], "app7");
        assert_eq!(primary["metadata"]["namespace"], "bench-ns");
        assert_eq!(names(&primary), ["app7-0"]);
        assert_eq!(names(&candidate), ["app7-1", "app7-0"]);
        assert_eq!(candidate["spec"]["hosts"][0], "app7.bench-ns");
        assert!(!candidate.to_string().contains("wisdom"));
        assert!(!candidate.to_string().contains("default"));
    }

    #[test]
    fn versions_are_named_app_dash_index() {
        assert_eq!(version_of("app3-0"), Some(("app3", 0)));
        assert_eq!(version_of("my-app-1"), Some(("my-app", 1)));
        assert_eq!(version_of("app3-2"), None);
        assert_eq!(version_of("-0"), None);
        assert_eq!(version_of("app3"), None);
    }

    #[test]
    fn the_wanted_route_follows_the_candidates_readiness() {
        let mut a = App::default();
        assert_eq!(a.desired(), None);
        a.ready = [Some(false), None];
        assert_eq!(a.desired(), Some(false));
        a.ready = [Some(true), Some(false)];
        assert_eq!(a.desired(), Some(false));
        a.ready = [Some(true), Some(true)];
        assert_eq!(a.desired(), Some(true));
        // An unready primary leaves the candidate its positive weight.
        a.ready = [Some(false), Some(true)];
        assert_eq!(a.desired(), Some(true));
    }

    #[test]
    fn the_state_applies_once_per_change_of_route_and_never_from_a_partial_list() {
        let mut s = State {
            listing: true,
            ..State::default()
        };
        // Restarted: app1's VirtualService already routes its ready candidate.
        s.found("app1", true);
        s.relist();
        assert!(s.observe("app1-0", Some(true)).is_empty(), "listing");
        assert!(s.observe("app1-1", Some(true)).is_empty(), "listing");
        assert!(s.observe("app2-0", Some(true)).is_empty(), "listing");
        assert_eq!(s.listed(), [("app2".to_string(), false)]);
        // In flight: no second apply until it is done.
        assert!(s.observe("app2-1", Some(false)).is_empty());
        assert!(s.observe("app2-1", Some(true)).is_empty());
        assert_eq!(
            s.finished(("app2".into(), false, true)),
            [("app2".to_string(), true)]
        );
        // A failed apply is retried; a successful one is not repeated.
        assert_eq!(
            s.finished(("app2".into(), true, false)),
            [("app2".to_string(), true)]
        );
        assert!(s.finished(("app2".into(), true, true)).is_empty());
        assert!(s.observe("app2-1", Some(true)).is_empty(), "no change");
        assert!(s.observe("app2-0", Some(false)).is_empty(), "same route");
        assert_eq!(
            s.observe("app1-1", Some(false)),
            [("app1".to_string(), false)]
        );
        // Deleted versions: nothing to apply once both are gone.
        assert!(s.finished(("app1".into(), false, true)).is_empty());
        assert!(s.observe("app1-1", None).is_empty());
        assert!(s.observe("app1-0", None).is_empty());
    }
}
