//! Helpers for controller tests against the real control plane: run a controller in-process,
//! write objects the way Helm, KServe and kube-controller-manager do, and wait for conditions.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use iter8_core::config::Config;
use iter8_k8s::{Controller, Leadership, Options};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::Notify;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn isvc_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService"),
        "inferenceservices",
    )
}

pub fn vs_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1beta1", "VirtualService"),
        "virtualservices",
    )
}

pub fn deploy_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apps", "v1", "Deployment"),
        "deployments",
    )
}

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
}

/// Starts a controller watching `namespace` (or everything when cluster-scoped).
pub async fn start_controller(client: Client, namespace: &str, config: Config) -> Running {
    let controller = Controller::new(
        client,
        config,
        Options {
            namespace: namespace.to_string(),
            instance: Some("test".into()),
        },
        Leadership::always(),
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
    let full = include_str!("../../../core/testdata/kserve-canary/routemap-step2.yaml");
    let mut spec = full.replace("default", ns);
    if versions == 1 {
        // Drop the second version and the candidate block of the template.
        let start = spec
            .find("- resources:\n  - gvrShort: isvc\n    name: wisdom-1")
            .unwrap();
        let end = spec.find("routingTemplates:").unwrap();
        spec.replace_range(start..end, "");
        let start = spec.find("    {{- if gt (index .Weights 1) 0 }}").unwrap();
        let end = spec.find("    {{- end }}\n").unwrap() + "    {{- end }}\n".len();
        spec.replace_range(start..end, "");
    }
    spec
}

/// Applies a routemap ConfigMap as the release chart would.
pub async fn apply_routemap(client: &Client, ns: &str, name: &str, data: Value) -> ConfigMap {
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {
            "app.kubernetes.io/managed-by": "iter8",
            "iter8.tools/kind": "routemap",
            "iter8.tools/version": "v1.1"}},
        "data": data,
    });
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("helm").force(),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap()
}

/// Applies an InferenceService as the release chart renders it (no status yet).
pub async fn apply_isvc(client: &Client, ns: &str, name: &str, storage: &str) -> DynamicObject {
    let obj = json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": ns, "labels": {
            "app.kubernetes.io/name": "wisdom", "iter8.tools/watch": "true"}},
        "spec": {"predictor": {"minReplicas": 1, "model": {"modelFormat": {"name": "sklearn"},
            "runtime": "kserve-mlserver", "storageUri": storage}}}
    });
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &isvc_ar())
        .patch(
            name,
            &PatchParams::apply("helm").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap()
}

/// Writes an InferenceService's status through the status subresource, as KServe does
/// (Serverless mode; see shared/spec/kserve-status.md). `observed_generation` is the child's.
pub async fn set_isvc_status(
    client: &Client,
    ns: &str,
    name: &str,
    ready: bool,
    observed_generation: i64,
) {
    let t = "2026-08-20T10:00:40Z";
    let status = if ready {
        json!({
            "address": {"url": format!("http://{name}.{ns}.svc.cluster.local")},
            "components": {"predictor": {
                "address": {"url": format!("http://{name}-predictor.{ns}.svc.cluster.local")},
                "latestCreatedRevision": format!("{name}-predictor-00001"),
                "latestReadyRevision": format!("{name}-predictor-00001"),
                "latestRolledoutRevision": format!("{name}-predictor-00001"),
                "traffic": [{"latestRevision": true, "percent": 100, "revisionName": format!("{name}-predictor-00001")}],
                "url": format!("http://{name}-predictor.{ns}.example.com")}},
            "conditions": [
                {"type": "IngressReady", "status": "True", "lastTransitionTime": t},
                {"type": "LatestDeploymentReady", "status": "True", "severity": "Info", "lastTransitionTime": t},
                {"type": "PredictorConfigurationReady", "status": "True", "severity": "Info", "lastTransitionTime": t},
                {"type": "PredictorReady", "status": "True", "lastTransitionTime": t},
                {"type": "PredictorRouteReady", "status": "True", "severity": "Info", "lastTransitionTime": t},
                {"type": "Ready", "status": "True", "lastTransitionTime": t},
                {"type": "RoutesReady", "status": "True", "severity": "Info", "lastTransitionTime": t},
                {"type": "Stopped", "status": "False", "severity": "Info", "lastTransitionTime": t}],
            "deploymentMode": "Knative",
            "modelStatus": {"copies": {"failedCopies": 0, "totalCopies": 1},
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}, "transitionStatus": "UpToDate"},
            "observedGeneration": observed_generation,
            "url": format!("http://{name}.{ns}.example.com")
        })
    } else {
        json!({
            "conditions": [
                {"type": "IngressReady", "status": "Unknown", "reason": "Predictor ingress not created", "lastTransitionTime": t},
                {"type": "PredictorReady", "status": "Unknown", "reason": "RevisionMissing",
                 "message": format!("Configuration \"{name}-predictor\" is waiting for a Revision to become ready."), "lastTransitionTime": t},
                {"type": "Ready", "status": "Unknown", "reason": "Predictor ingress not created", "lastTransitionTime": t},
                {"type": "Stopped", "status": "False", "severity": "Info", "lastTransitionTime": t}],
            "deploymentMode": "Knative",
            "modelStatus": {"copies": {"failedCopies": 0}, "states": {"activeModelState": "", "targetModelState": "Pending"}, "transitionStatus": "InProgress"},
            "observedGeneration": observed_generation
        })
    };
    set_status(client, ns, name, &isvc_ar(), status).await;
}

/// Replaces `status` through the status subresource.
pub async fn set_status(client: &Client, ns: &str, name: &str, ar: &ApiResource, status: Value) {
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar);
    // Merge patch of the whole status, replacing conditions (lists are replaced in merge patches).
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap();
}

/// The VirtualService, if present.
pub async fn get_vs(client: &Client, ns: &str, name: &str) -> Option<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &vs_ar())
        .get_opt(name)
        .await
        .unwrap()
}

/// Waits until VirtualService `name` exists and `check` accepts it; returns it.
pub async fn wait_vs(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&DynamicObject) -> bool,
) -> DynamicObject {
    testenv::wait_for(what, WAIT, || async {
        get_vs(client, ns, name).await.filter(|vs| check(vs))
    })
    .await
    .unwrap()
}

/// Route names of a VirtualService, in order.
pub fn route_names(vs: &DynamicObject) -> Vec<String> {
    vs.data["spec"]["http"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The expected spec of the tutorial's VirtualService for a step, with `ns` for `default`.
pub fn expected_vs_spec(ns: &str, step: u8) -> Value {
    let text = match step {
        1 => include_str!("../../../core/testdata/kserve-canary/virtualservice-step1.yaml"),
        _ => include_str!("../../../core/testdata/kserve-canary/virtualservice-step2.yaml"),
    };
    let v: Value = serde_yaml::from_str(&text.replace("default", ns)).unwrap();
    v["spec"].clone()
}

/// Warning Events about routemap `name` in `ns`, as "Reason: note".
pub async fn warnings(client: &Client, ns: &str, name: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// All Events about routemap `name` in `ns`.
pub async fn events(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

/// A namespace-scoped config with the default resource types.
pub fn config() -> Config {
    Config::default()
}

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
