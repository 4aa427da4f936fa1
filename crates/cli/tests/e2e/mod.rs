//! Helpers of the end-to-end tests: the real charts installed with the real Helm into a real
//! control plane, and the real `iter8` binary run as a child process with the token of the
//! controller chart's ServiceAccount, the configuration the chart rendered and the arguments
//! of the chart's Deployment. Status is written as KServe and kube-controller-manager write it
//! (see shared/spec/kserve-status.md). Everything waits with deadlines; nothing sleeps. Object,
//! status and route helpers are thin wrappers over `testenv`'s shared ones, which panic instead
//! of returning errors.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::Client;
use serde_json::Value;
use testenv::workloads::State;
use testenv::{fixtures, kserve, objects, workloads, ControlPlane, Helm};

/// How long any expected state may take to appear.
pub const WAIT: Duration = Duration::from_secs(60);

/// KServe's InferenceService.
pub fn isvc_ar() -> ApiResource {
    fixtures::inference_service()
}
/// Istio's VirtualService, at the version the release chart's templates write.
pub fn vs_ar() -> ApiResource {
    fixtures::virtual_service()
}
/// The Gateway API's HTTPRoute.
pub fn httproute_ar() -> ApiResource {
    fixtures::http_route()
}
/// apps/v1 Deployment.
pub fn deploy_ar() -> ApiResource {
    fixtures::deployment()
}
/// v1 Service.
pub fn svc_ar() -> ApiResource {
    fixtures::service()
}
/// v1 ConfigMap.
pub fn cm_ar() -> ApiResource {
    fixtures::config_map()
}

/// Runs the pinned Helm against the control plane (admin), from the repository root, with
/// `stdin` piped in; panics with Helm's output if it fails. Never `--wait`: no pod runs here.
pub fn helm(cp: &ControlPlane, namespace: &str, args: &[&str], stdin: Option<&str>) -> String {
    helm_with(cp, Helm::V4, namespace, args, stdin)
}

/// Like [`helm`], with the pinned Helm of major version `version` (Helm 3 or Helm 4).
pub fn helm_with(
    cp: &ControlPlane,
    version: Helm,
    namespace: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> String {
    cp.helm_with(version, namespace, args, stdin)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `helm upgrade --install RELEASE charts/release -n NS -f -` with `values` on stdin, as the
/// tutorial does.
pub fn helm_release(cp: &ControlPlane, ns: &str, release: &str, values: &str) {
    helm_release_with(cp, Helm::V4, ns, release, values);
}

/// Like [`helm_release`], with Helm 3 or Helm 4.
pub fn helm_release_with(cp: &ControlPlane, version: Helm, ns: &str, release: &str, values: &str) {
    helm_with(
        cp,
        version,
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
    install_controller_with(cp, Helm::V4, ns, cluster_scoped, extra).await
}

/// Like [`install_controller`], installing the chart with Helm 3 or Helm 4.
pub async fn install_controller_with(
    cp: &ControlPlane,
    version: Helm,
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
    helm_with(cp, version, ns, &args, None);

    let client = cp.client().await.unwrap();
    let dir = cp.dir().join(format!("iter8-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();

    // The configuration file the chart mounts into the pod.
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get("iter8")
        .await
        .unwrap();
    let config = cm.data.clone().unwrap_or_default()["config.yaml"].clone();
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    // The metrics store's settings, with its volume's path mapped to a folder of this run.
    let metrics_dir = dir.join("metrics");
    let metrics_config = cm
        .data
        .as_ref()
        .map(|d| d["metrics.yaml"].clone())
        .unwrap_or_default();
    let metrics_config =
        metrics_config.replace("dir: /metrics", &format!("dir: {}", metrics_dir.display()));
    let metrics_config_path = dir.join("metrics.yaml");
    std::fs::write(&metrics_config_path, metrics_config).unwrap();

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
    let mounted_metrics_config = "/config/metrics.yaml";
    let port = testenv::process::free_port().unwrap();
    let admin = format!("127.0.0.1:{port}");
    let map = |s: &str| -> String {
        if s == mounted_config {
            config_path.display().to_string()
        } else if s == mounted_metrics_config {
            metrics_config_path.display().to_string()
        } else {
            s.to_string()
        }
    };
    // Listen addresses: the admin server's on a known port, the others on any free one.
    let mut chart_args: Vec<String> = Vec::new();
    for a in container.args.clone().unwrap_or_default() {
        let address = if a.starts_with("0.0.0.0:") {
            chart_args.last().map(String::as_str)
        } else {
            None
        };
        chart_args.push(match address {
            Some("--admin-address") => admin.clone(),
            Some(_) => "127.0.0.1:0".to_string(),
            None => map(&a),
        });
    }
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
    // One log per start: a restart or a second replica does not overwrite the first's.
    let starts = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("controller"))
        })
        .count();
    // Each start is a new pod with a name of its own (two replicas must not share an identity
    // in the leader election).
    let pod_name = format!("iter8-6d4f8b7c9-x2x7{starts}");
    for e in container.env.clone().unwrap_or_default() {
        let value = match (e.value, e.value_from.and_then(|v| v.field_ref)) {
            (Some(v), _) => map(&v),
            (None, Some(f)) if f.field_path == "metadata.name" => pod_name.clone(),
            (None, Some(f)) if f.field_path == "metadata.namespace" => ns.to_string(),
            (v, f) => panic!("unexpected env {} = {v:?} / {f:?}", e.name),
        };
        cmd.env(&e.name, value);
    }
    let log = dir.join(format!("controller-{starts}.log"));
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

/// A plain HTTP GET of `path` from `address` (`host:port`); `(status code, body)`.
pub async fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let addr = address.parse().ok()?;
    let (host, path) = (address.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || testenv::http::get(addr, &host, &path))
        .await
        .ok()?
        .map(|r| (r.status, r.body))
}

/// The value of one sample of Prometheus text, by its exact name with labels; absent = 0.
fn sample(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == sample)
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0.0)
}

impl Iter8 {
    /// The address the A/B/n gRPC server listens on (from its log line).
    pub async fn abn_address(&self) -> String {
        let log = self.log.clone();
        testenv::wait_for("the A/B/n server's address", WAIT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                text.lines()
                    .find(|l| l.contains("abn server listening"))
                    .and_then(|l| l.split("address=").nth(1))
                    .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
            }
        })
        .await
        .unwrap()
    }

    /// The controller's Prometheus metrics.
    pub async fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics").await.unwrap().1
    }

    /// One sample, by its exact name with labels; absent = 0.
    pub async fn metric(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name)
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
                let get = |name: &str| sample(&text, name);
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

    /// The controller process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the controller is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Whether the controller process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
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
    objects::get(client, ar, ns, name).await.unwrap()
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
    objects::wait(client, ar, ns, name, what, WAIT, check)
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

/// Waits until `helm delete` of the tutorial's release `wisdom` took everything with it:
/// routing, versions, the entry Service and the routemap.
pub async fn wait_release_gone(client: &Client, ns: &str) {
    wait_gone(
        client,
        ns,
        &[
            (vs_ar(), "wisdom"),
            (isvc_ar(), "wisdom-0"),
            (svc_ar(), "wisdom"),
            (cm_ar(), "wisdom-routemap"),
        ],
    )
    .await;
    assert!(names(client, &isvc_ar(), ns).await.is_empty());
    assert!(names(client, &vs_ar(), ns).await.is_empty());
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
    testenv::routes::route_names(vs)
}

/// Merges `status` into the object's status through the status subresource (a merge patch
/// replaces lists whole).
pub async fn set_status(client: &Client, ar: &ApiResource, ns: &str, name: &str, status: Value) {
    objects::patch_status(client, ar, ns, name, &status)
        .await
        .unwrap();
}

/// What KServe (Serverless mode) writes once the model is loaded and routed, its Knative
/// Service at the InferenceService's generation.
pub async fn kserve_ready(client: &Client, ns: &str, name: &str) {
    let g = objects::generation(client, &isvc_ar(), ns, name)
        .await
        .unwrap();
    kserve::report(client, ns, name, true, g).await.unwrap();
}

/// What KServe (Serverless mode) writes right after creating the InferenceService.
pub async fn kserve_not_ready(client: &Client, ns: &str, name: &str) {
    let g = objects::generation(client, &isvc_ar(), ns, name)
        .await
        .unwrap();
    kserve::report(client, ns, name, false, g).await.unwrap();
}

/// What kube-controller-manager's deployment controller writes once the pods are available.
pub async fn deployment_available(client: &Client, ns: &str, name: &str) {
    workloads::observe(client, ns, name, State::Available)
        .await
        .unwrap();
}

/// What the deployment controller writes right after creating a Deployment's first ReplicaSet.
pub async fn deployment_progressing(client: &Client, ns: &str, name: &str) {
    workloads::observe(client, ns, name, State::Progressing)
        .await
        .unwrap();
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
