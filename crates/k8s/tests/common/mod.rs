//! Helpers for controller tests against the real control plane: run a controller in-process,
//! write objects the way Helm, KServe and kube-controller-manager do, and wait for conditions.
//! What is not about the in-process controller is a thin wrapper over `testenv`'s shared
//! helpers ([`testenv::fixtures`], [`testenv::objects`], [`testenv::kserve`],
//! [`testenv::routes`]), which panics instead of returning errors.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use iter8_core::config::Config;
use iter8_k8s::{Controller, Leadership, Options};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::Client;
use serde_json::{json, Value};
use testenv::{fixtures, kserve, objects};
use tokio::sync::Notify;

/// KServe's InferenceService.
pub fn isvc_ar() -> ApiResource {
    fixtures::inference_service()
}

/// Istio's VirtualService, at the version the tutorial's templates write.
pub fn vs_ar() -> ApiResource {
    fixtures::virtual_service()
}

/// apps/v1 Deployment.
pub fn deploy_ar() -> ApiResource {
    fixtures::deployment()
}

/// Route names of a VirtualService, in order.
pub fn route_names(vs: &DynamicObject) -> Vec<String> {
    testenv::routes::route_names(vs)
}

/// How long any expected state may take to appear.
pub const WAIT: Duration = Duration::from_secs(30);

/// A controller running in this process; stops when dropped.
pub struct Running {
    pub controller: Arc<Controller>,
    shutdown: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.notify_one();
        self.task.abort();
    }
}

impl Running {
    /// Waits until the controller's metrics satisfy `f`.
    pub async fn wait_metric(&self, what: &str, f: impl Fn(&iter8_k8s::metrics::Metrics) -> bool) {
        let c = self.controller.clone();
        testenv::wait_for(what, WAIT, || {
            let ok = f(c.metrics());
            async move { ok.then_some(()) }
        })
        .await
        .unwrap();
    }

    /// Waits until the controller has listed everything and worked off its queue.
    pub async fn settled(&self) {
        let c = self.controller.clone();
        testenv::wait_for("the controller to settle", WAIT, || {
            let c = c.clone();
            async move { (c.synced() && c.is_idle()).then_some(()) }
        })
        .await
        .unwrap();
    }

    /// Positive evidence that the controller has taken in every change made so far to objects
    /// of type `ar` in `ns`, and finished the reconciles those changes caused. Watch events of
    /// one type arrive in order, and the controller queues the affected routemaps in the same
    /// step as it stores an object; so once its store counts `marker` (a new watched object of
    /// that type, created here, that no routemap reads), every earlier change of that type is
    /// stored and queued, and once the queue is idle, worked off. `watched`: how many objects
    /// of that type the store holds with the marker.
    pub async fn drain(
        &self,
        client: &Client,
        ns: &str,
        ar: &ApiResource,
        marker: &Value,
        watched: usize,
    ) {
        objects::apply(client, ar, Some(ns), marker, "test")
            .await
            .unwrap();
        let resource = if ar.group.is_empty() {
            ar.plural.clone()
        } else {
            format!("{}.{}", ar.plural, ar.group)
        };
        let c = self.controller.clone();
        testenv::wait_for(
            &format!("the controller's store to hold {watched} {resource}"),
            WAIT,
            || {
                let n = c.watched_counts().get(&resource).copied().unwrap_or(0);
                async move { (n == watched).then_some(()) }
            },
        )
        .await
        .unwrap();
        self.settled().await;
    }
}

/// A Deployment no routemap reads, for [`Running::drain`].
pub fn marker_deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"iter8.tools/watch": "true"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "marker"}]}}}
    })
}

/// An InferenceService no routemap reads, for [`Running::drain`].
pub fn marker_isvc(name: &str) -> Value {
    fixtures::inference_service_object("marker", name, "gs://marker")
}

/// Starts a controller watching `namespace` (or everything when cluster-scoped).
pub async fn start_controller(client: Client, namespace: &str, config: Config) -> Running {
    start_controller_as(client, namespace, config, Leadership::always()).await
}

/// Starts a controller with `leadership` (a standby with [`Leadership::standby`]); returns
/// once it has listed everything and worked off its queue.
pub async fn start_controller_as(
    client: Client,
    namespace: &str,
    config: Config,
    leadership: Leadership,
) -> Running {
    let controller = Controller::new(
        client,
        config,
        Options {
            namespace: namespace.to_string(),
            instance: Some("test".into()),
            routing_events: true,
        },
        leadership,
    );
    let shutdown = Arc::new(Notify::new());
    let task = tokio::spawn(controller.clone().run(shutdown.clone()));
    let running = Running {
        controller,
        shutdown,
        task,
    };
    running.settled().await;
    running
}

/// The tutorial's routemap (spec section 4), for `versions` versions, in `ns`.
pub fn tutorial_str_spec(ns: &str, versions: usize) -> String {
    fixtures::tutorial_routemap("wisdom", ns, versions).unwrap()
}

/// Applies a routemap ConfigMap labelled as the release chart labels it
/// ([`fixtures::routemap_object`]).
pub async fn apply_routemap(client: &Client, ns: &str, name: &str, data: Value) -> ConfigMap {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("helm").force(),
            &Patch::Apply(&fixtures::routemap_object(name, data)),
        )
        .await
        .unwrap()
}

/// Applies InferenceService `name` of application `wisdom` as the release chart renders it,
/// without the chart's version label ([`fixtures::inference_service_object`]); no status yet.
pub async fn apply_isvc(client: &Client, ns: &str, name: &str, storage: &str) -> DynamicObject {
    let obj = fixtures::inference_service_object("wisdom", name, storage);
    objects::apply(client, &isvc_ar(), Some(ns), &obj, "helm")
        .await
        .unwrap()
}

/// Writes an InferenceService's status through the status subresource, as KServe does
/// (Serverless mode; see shared/spec/kserve-status.md): just created (`ready` false) or ready.
/// `observed_generation` is the child's.
pub async fn set_isvc_status(
    client: &Client,
    ns: &str,
    name: &str,
    ready: bool,
    observed_generation: i64,
) {
    kserve::report(client, ns, name, ready, observed_generation)
        .await
        .unwrap();
}

/// Merges `status` into the object's status through the status subresource (lists, such as
/// `conditions`, are replaced whole).
pub async fn set_status(client: &Client, ns: &str, name: &str, ar: &ApiResource, status: Value) {
    objects::patch_status(client, ar, ns, name, &status)
        .await
        .unwrap();
}

/// The VirtualService, if present.
pub async fn get_vs(client: &Client, ns: &str, name: &str) -> Option<DynamicObject> {
    objects::get(client, &vs_ar(), ns, name).await.unwrap()
}

/// Waits until VirtualService `name` exists and `check` accepts it; returns it.
pub async fn wait_vs(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&DynamicObject) -> bool,
) -> DynamicObject {
    objects::wait(client, &vs_ar(), ns, name, what, WAIT, check)
        .await
        .unwrap()
}

/// The expected spec of the tutorial's VirtualService for a step, with `ns` for `default`.
pub fn expected_vs_spec(ns: &str, step: u8) -> Value {
    fixtures::tutorial_virtual_service_spec(ns, step).unwrap()
}

/// Warning Events about routemap `name` in `ns`, as "Reason: note".
pub async fn warnings(client: &Client, ns: &str, name: &str) -> Vec<String> {
    testenv::events::warnings(client, ns, name).await
}

/// Waits for a Warning Event on routemap `ns/routemap` whose "Reason: note" contains every
/// needle; returns it, or panics listing the Warnings there are.
pub async fn wait_warning(client: &Client, ns: &str, routemap: &str, needles: &[&str]) -> String {
    testenv::events::wait_warning(client, ns, routemap, needles, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// All Events about routemap `name` in `ns`.
pub async fn events(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    testenv::events::about(client, ns, name).await
}

/// A namespace-scoped config with the default resource types.
pub fn config() -> Config {
    Config::default()
}

/// A cluster-scoped config with the default resource types.
pub fn cluster_config() -> Config {
    Config {
        cluster_scoped: true,
        ..Config::default()
    }
}

/// Creates a ConfigMap with no routemap labels, returning its uid (for ownership checks).
pub async fn create_plain_cm(client: &Client, ns: &str, name: &str) -> String {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}
