//! Helpers of the end-to-end tests: the real charts installed with the real Helm into a real
//! control plane, and the real `iter8` binary run as a child process with the token of the
//! controller chart's ServiceAccount, the configuration the chart rendered and the arguments
//! of the chart's Deployment. Status is written as KServe and kube-controller-manager write it
//! (see shared/spec/kserve-status.md). Everything waits with deadlines; nothing sleeps.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};
use testenv::ControlPlane;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any expected state may take to appear.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub fn isvc_ar() -> ApiResource {
    ar(
        "serving.kserve.io",
        "v1beta1",
        "InferenceService",
        "inferenceservices",
    )
}
pub fn vs_ar() -> ApiResource {
    ar(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
        "virtualservices",
    )
}
pub fn httproute_ar() -> ApiResource {
    ar("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
}
pub fn deploy_ar() -> ApiResource {
    ar("apps", "v1", "Deployment", "deployments")
}
pub fn svc_ar() -> ApiResource {
    ar("", "v1", "Service", "services")
}
pub fn cm_ar() -> ApiResource {
    ar("", "v1", "ConfigMap", "configmaps")
}

/// Runs the pinned Helm against the control plane (admin), from the repository root, with
/// `stdin` piped in; panics with Helm's output if it fails. Never `--wait`: no pod runs here.
pub fn helm(cp: &ControlPlane, namespace: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new(&cp.tools().helm);
    cmd.current_dir(repo_root())
        .args(args)
        .arg("--namespace")
        .arg(namespace)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running helm");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "helm {} -n {namespace} failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `helm upgrade --install RELEASE charts/release -n NS -f -` with `values` on stdin, as the
/// tutorial does.
pub fn helm_release(cp: &ControlPlane, ns: &str, release: &str, values: &str) {
    helm(
        cp,
        ns,
        &["upgrade", "--install", release, "charts/release", "-f", "-"],
        Some(values),
    );
}

/// The `iter8` binary running as the controller chart's pod would, but on this machine:
/// the chart's container arguments and environment, the configuration from the chart's
/// ConfigMap, and a token of the chart's ServiceAccount. Killed when dropped; its log is
/// printed if the test is failing.
pub struct Iter8 {
    child: Child,
    pub admin: String,
    log: PathBuf,
}

impl Drop for Iter8 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of the controller log {} ---",
                self.log.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Installs the controller chart as release `iter8` in `ns` and starts the controller the
/// way the chart's Deployment would run it; returns once `/readyz` says it has listed
/// everything. `extra` are more `--set` values.
pub async fn install_controller(
    cp: &ControlPlane,
    ns: &str,
    cluster_scoped: bool,
    extra: &[&str],
) -> Iter8 {
    let mut args = vec![
        "upgrade".to_string(),
        "--install".into(),
        "iter8".into(),
        "charts/controller".into(),
        "--set".into(),
        format!("clusterScoped={cluster_scoped}"),
    ];
    for e in extra {
        args.push("--set".into());
        args.push((*e).into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(cp, ns, &args, None);

    let client = cp.client().await.unwrap();
    let dir = cp.dir().join(format!("iter8-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();

    // The configuration file the chart mounts into the pod.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("iter8")
        .await
        .unwrap();
    let config = cm.data.unwrap_or_default()["config.yaml"].clone();
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).unwrap();

    // A real token of the chart's ServiceAccount: the chart's RBAC is all the controller has.
    let kubeconfig = cp
        .service_account_kubeconfig(ns, "iter8", Duration::from_secs(3600))
        .await
        .unwrap();
    let kubeconfig_path = dir.join("iter8.kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig).unwrap();

    // The container of the chart's Deployment: its args and env, with the mounted config file
    // path and the pod's admin address mapped to this machine.
    let deploy = Api::<Deployment>::namespaced(client, ns)
        .get("iter8")
        .await
        .unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("iter8"));
    let container = &pod.containers[0];
    let mounted_config = "/config/config.yaml";
    let port = testenv::process::free_port().unwrap();
    let admin = format!("127.0.0.1:{port}");
    let map = |s: &str| -> String {
        if s == mounted_config {
            config_path.display().to_string()
        } else if s.starts_with("0.0.0.0:") {
            admin.clone()
        } else {
            s.to_string()
        }
    };
    let chart_args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|a| map(a))
        .collect();
    assert!(
        chart_args.iter().any(|a| a == &admin),
        "the chart's container args name no admin address: {chart_args:?}"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iter8"));
    cmd.args(&chart_args)
        .arg("--kubeconfig")
        .arg(&kubeconfig_path)
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1");
    for e in container.env.clone().unwrap_or_default() {
        let value = match (e.value, e.value_from.and_then(|v| v.field_ref)) {
            (Some(v), _) => map(&v),
            (None, Some(f)) if f.field_path == "metadata.name" => "iter8-6d4f8b7c9-x2x7q".into(),
            (None, Some(f)) if f.field_path == "metadata.namespace" => ns.to_string(),
            (v, f) => panic!("unexpected env {} = {v:?} / {f:?}", e.name),
        };
        cmd.env(&e.name, value);
    }
    let log = dir.join("controller.log");
    let out = std::fs::File::create(&log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = cmd.spawn().expect("starting the iter8 binary");
    let mut iter8 = Iter8 { child, admin, log };
    testenv::wait_for("the controller's /readyz", WAIT, || {
        let exited = iter8.child.try_wait().unwrap();
        let admin = iter8.admin.clone();
        async move {
            assert!(exited.is_none(), "the controller exited: {exited:?}");
            (http_get(&admin, "/readyz").await.map(|(code, _)| code) == Some(200)).then_some(())
        }
    })
    .await
    .unwrap();
    iter8
}

/// A plain HTTP/1.0 GET; `(status code, body)`.
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

impl Iter8 {
    /// The controller's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics").await.unwrap().1
    }

    /// One sample, by its exact name with labels; absent = 0.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == sample)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Waits until the controller watches `count` objects of `resource` (plural.group) and has
    /// no work queued or in progress: it has reacted to every change made so far.
    pub async fn settled(&self, resource: &str, count: usize) {
        let watched = format!("iter8_watched_objects{{resource=\"{resource}\"}}");
        testenv::wait_for(
            &format!("the controller to see {count} {resource} and settle"),
            WAIT,
            || async {
                let text = self.metrics().await;
                let get = |sample: &str| {
                    text.lines()
                        .filter_map(|l| l.rsplit_once(' '))
                        .find(|(name, _)| *name == sample)
                        .map(|(_, v)| v.parse::<f64>().unwrap())
                        .unwrap_or(0.0)
                };
                (get(&watched) == count as f64
                    && get("iter8_queue_depth") == 0.0
                    && get("iter8_reconciles_total")
                        == get("iter8_reconcile_duration_seconds_count"))
                .then_some(())
            },
        )
        .await
        .unwrap();
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The chart's RBAC sufficed and nothing went wrong: no error logged, no request forbidden.
    pub fn assert_clean_log(&self) {
        let log = self.log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" ERROR ") || l.to_lowercase().contains("forbidden"))
            .collect();
        assert!(
            bad.is_empty(),
            "the controller logged errors:\n{}",
            bad.join("\n")
        );
    }
}

/// The object, if present.
pub async fn get(client: &Client, ar: &ApiResource, ns: &str, name: &str) -> Option<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar)
        .get_opt(name)
        .await
        .unwrap()
}

/// Waits until object `name` exists and `check` accepts it; returns it.
pub async fn wait_obj(
    client: &Client,
    ar: &ApiResource,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&DynamicObject) -> bool,
) -> DynamicObject {
    testenv::wait_for(what, WAIT, || async {
        get(client, ar, ns, name).await.filter(|o| check(o))
    })
    .await
    .unwrap()
}

/// Waits until every named object is gone.
pub async fn wait_gone(client: &Client, ns: &str, objects: &[(ApiResource, &str)]) {
    for (ar, name) in objects {
        testenv::wait_for(
            &format!("{} {ns}/{name} to be deleted", ar.kind),
            WAIT,
            || async { get(client, ar, ns, name).await.is_none().then_some(()) },
        )
        .await
        .unwrap();
    }
}

/// Names of the objects of a type in `ns`.
pub async fn names(client: &Client, ar: &ApiResource, ns: &str) -> Vec<String> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect()
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

/// Replaces `status` through the status subresource (a merge patch replaces lists whole).
pub async fn set_status(client: &Client, ar: &ApiResource, ns: &str, name: &str, status: Value) {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .unwrap();
}

async fn generation(client: &Client, ar: &ApiResource, ns: &str, name: &str) -> i64 {
    get(client, ar, ns, name)
        .await
        .unwrap_or_else(|| panic!("{} {ns}/{name} does not exist", ar.kind))
        .metadata
        .generation
        .unwrap()
}

/// What KServe (Serverless mode) writes once the model is loaded and routed.
pub async fn kserve_ready(client: &Client, ns: &str, name: &str) {
    let g = generation(client, &isvc_ar(), ns, name).await;
    let t = "2026-08-20T10:00:40Z";
    let rev = format!("{name}-predictor-{g:05}");
    let status = json!({
        "address": {"url": format!("http://{name}.{ns}.svc.cluster.local")},
        "components": {"predictor": {
            "address": {"url": format!("http://{name}-predictor.{ns}.svc.cluster.local")},
            "latestCreatedRevision": rev, "latestReadyRevision": rev, "latestRolledoutRevision": rev,
            "traffic": [{"latestRevision": true, "percent": 100, "revisionName": rev}],
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
        "observedGeneration": g,
        "url": format!("http://{name}.{ns}.example.com")
    });
    set_status(client, &isvc_ar(), ns, name, status).await;
}

/// What KServe (Serverless mode) writes right after creating the InferenceService.
pub async fn kserve_not_ready(client: &Client, ns: &str, name: &str) {
    let g = generation(client, &isvc_ar(), ns, name).await;
    let t = "2026-08-20T10:00:02Z";
    let status = json!({
        "conditions": [
            {"type": "IngressReady", "status": "Unknown", "reason": "Predictor ingress not created", "lastTransitionTime": t},
            {"type": "PredictorReady", "status": "Unknown", "reason": "RevisionMissing",
             "message": format!("Configuration \"{name}-predictor\" is waiting for a Revision to become ready."), "lastTransitionTime": t},
            {"type": "Ready", "status": "Unknown", "reason": "Predictor ingress not created", "lastTransitionTime": t},
            {"type": "Stopped", "status": "False", "severity": "Info", "lastTransitionTime": t}],
        "deploymentMode": "Knative",
        "modelStatus": {"copies": {"failedCopies": 0}, "states": {"activeModelState": "", "targetModelState": "Pending"}, "transitionStatus": "InProgress"},
        "observedGeneration": g
    });
    set_status(client, &isvc_ar(), ns, name, status).await;
}

/// What kube-controller-manager's deployment controller writes once the pods are available.
pub async fn deployment_available(client: &Client, ns: &str, name: &str) {
    let g = generation(client, &deploy_ar(), ns, name).await;
    let status = json!({
        "availableReplicas": 1, "readyReplicas": 1, "replicas": 1, "updatedReplicas": 1,
        "observedGeneration": g,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.",
             "lastUpdateTime": "2026-08-20T10:00:30Z", "lastTransitionTime": "2026-08-20T10:00:30Z"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": format!("ReplicaSet \"{name}-5d9c7b6f4\" has successfully progressed."),
             "lastUpdateTime": "2026-08-20T10:00:30Z", "lastTransitionTime": "2026-08-20T10:00:01Z"}]
    });
    set_status(client, &deploy_ar(), ns, name, status).await;
}

/// What the deployment controller writes right after creating a Deployment's first ReplicaSet.
pub async fn deployment_progressing(client: &Client, ns: &str, name: &str) {
    let g = generation(client, &deploy_ar(), ns, name).await;
    let status = json!({
        "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1,
        "observedGeneration": g,
        "conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "Deployment does not have minimum availability.",
             "lastUpdateTime": "2026-08-20T10:00:01Z", "lastTransitionTime": "2026-08-20T10:00:01Z"},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
             "message": format!("ReplicaSet \"{name}-5d9c7b6f4\" is progressing."),
             "lastUpdateTime": "2026-08-20T10:00:01Z", "lastTransitionTime": "2026-08-20T10:00:01Z"}]
    });
    set_status(client, &deploy_ar(), ns, name, status).await;
}

/// The single ownerReference of a routing object must be its routemap ConfigMap.
pub async fn assert_owned_by_routemap(
    client: &Client,
    obj: &DynamicObject,
    ns: &str,
    routemap: &str,
) {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(routemap)
        .await
        .unwrap();
    let owners = obj.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "owners: {owners:?}");
    assert_eq!(owners[0].api_version, "v1");
    assert_eq!(owners[0].kind, "ConfigMap");
    assert_eq!(owners[0].name, routemap);
    assert_eq!(Some(&owners[0].uid), cm.metadata.uid.as_ref());
}
