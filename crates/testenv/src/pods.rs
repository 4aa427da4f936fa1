//! Model servers of simulated pods: one MLServer per pod, bound to the pod's IP, so the real
//! path Service → EndpointSlice → istiod (EDS) → Envoy carries traffic to it. The harness
//! plays the kubelet's part for the pods a simulator (kwok) runs on a fake node; the pod IPs
//! must be local addresses, which they are inside [`crate::netns::isolate`] (the pod CIDR
//! [`crate::netns::POD_CIDR`] is routed to `lo` there).
//!
//! - [`PodServer`]: one MLServer at `ip:port` serving a model (name, trained variant `v0` or
//!   `v1`, injected faults), with the MLServer runtime of the data plane
//!   (`testenv/dataplane/testenv_runtime.py`); [`PodServer::serve`] returns once the model
//!   answers its V2 ready endpoint.
//! - [`PodWatcher`]: watches the Pods bound to one node, starts a [`PodServer`] at each pod's
//!   `status.podIP` once it has one, sets [`MODEL_READY_ANNOTATION`] on the pod when its model
//!   answers (a kwok stage can wait for it to mark the pod Ready), and stops the server when
//!   the pod is deleted.
//!
//! Does process, network and API I/O. Every server is stopped when dropped (and by the
//! [`Process`] watchdog if the test process dies first).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dataplane::{DataPlaneTools, Faults, ModelServerPorts, RUNTIME, RUNTIME_MODULE};
use crate::http;
use crate::process::Process;

/// Pod annotation the [`PodWatcher`] sets to `"true"` once the pod's model answers.
pub const MODEL_READY_ANNOTATION: &str = "testenv.iter8.tools/model-ready";

/// The pod label KServe (Standard mode) puts on an InferenceService's predictor pods.
pub const ISVC_LABEL: &str = "serving.kserve.io/inferenceservice";

/// The pod annotation where KServe's pod mutator puts the InferenceService's `storageUri`.
pub const STORAGE_URI_ANNOTATION: &str = "internal.serving.kserve.io/storage-initializer-sourceuri";

/// A `storageUri` whose model fails to load: a pod with it ([`STORAGE_URI_ANNOTATION`]) gets
/// an MLServer that runs but whose model's `load` fails (the runtime's `fails_to_load`), so the
/// model never answers its ready endpoint and the pod never gets [`MODEL_READY_ANNOTATION`]
/// (kwok never marks it Ready). Any other `storageUri` serves the trained variant.
pub const FAILING_STORAGE_URI: &str = "gs://testenv-iter8-tools/model-that-fails-to-load";

/// How long a model server may take to answer its ready endpoint (about 2 s when idle; much
/// longer while several start at once on 2 cores).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What a pod's model server serves.
#[derive(Clone, Debug, PartialEq)]
pub struct PodModel {
    /// The model's name (KServe: the InferenceService's); the V2 paths are
    /// `/v2/models/<name>/...`.
    pub name: String,
    /// The trained variant: `v0` or `v1` (answered as `model_version`).
    pub variant: String,
    /// Errors and latency to inject.
    pub faults: Faults,
    /// The model fails to load (see [`FAILING_STORAGE_URI`]): MLServer runs, the model is
    /// never ready.
    pub fails_to_load: bool,
}

impl PodModel {
    /// Model `name` of trained variant `variant` (`v0` or `v1`), without faults.
    pub fn new(name: &str, variant: &str) -> PodModel {
        PodModel {
            name: name.to_string(),
            variant: variant.to_string(),
            faults: Faults::default(),
            fails_to_load: false,
        }
    }

    /// What a pod KServe created serves, by the rules of
    /// [`crate::dataplane::DataPlane::serve_inference_service`]: the model is named after the
    /// InferenceService (label [`ISVC_LABEL`], else the container's `MLSERVER_MODEL_NAME`,
    /// else the pod's name); label `app.kubernetes.io/version: v1` serves the second variant,
    /// anything else the first; faults from the annotations
    /// [`crate::dataplane::ERROR_SHARE_ANNOTATION`] and
    /// [`crate::dataplane::DELAY_MS_ANNOTATION`] (KServe copies the InferenceService's labels
    /// and annotations to its pods); failing to load if its [`STORAGE_URI_ANNOTATION`] is
    /// [`FAILING_STORAGE_URI`].
    pub fn of_pod(pod: &Pod) -> Result<PodModel> {
        let labels = pod.metadata.labels.as_ref();
        let from_env = || {
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.env
                    .as_ref()?
                    .iter()
                    .find(|e| e.name == "MLSERVER_MODEL_NAME")?
                    .value
                    .clone()
            })
        };
        let name = labels
            .and_then(|l| l.get(ISVC_LABEL).cloned())
            .or_else(from_env)
            .unwrap_or_else(|| pod.name_any());
        let variant = match labels.and_then(|l| l.get("app.kubernetes.io/version")) {
            Some(v) if v == "v1" => "v1",
            _ => "v0",
        };
        let faults = Faults::from_annotations(pod.metadata.annotations.as_ref())
            .with_context(|| format!("pod {}", pod_key(pod)))?;
        let fails_to_load = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(STORAGE_URI_ANNOTATION))
            .is_some_and(|uri| uri == FAILING_STORAGE_URI);
        Ok(PodModel {
            name,
            variant: variant.to_string(),
            faults,
            fails_to_load,
        })
    }
}

/// A pod's ports as KServe's `kserve-mlserver` runtime has them: V2 REST on `http` (8080 in
/// KServe), gRPC on 9000, metrics on 8082, all at the pod's IP.
pub fn kserve_ports(ip: Ipv4Addr, http: u16) -> ModelServerPorts {
    ModelServerPorts {
        ip,
        http,
        grpc: 9000,
        metrics: 8082,
    }
}

/// The HTTP port of a pod's model server: its first container's port named `http`, `http1`
/// or `h2c`, else its first container port, else 8080 (KServe's default).
pub fn http_port(pod: &Pod) -> u16 {
    let ports: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .collect();
    ports
        .iter()
        .find(|p| matches!(p.name.as_deref(), Some("http" | "http1" | "h2c")))
        .or(ports.first())
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080)
}

/// One running MLServer bound to a pod IP. Dropping it stops the server.
pub struct PodServer {
    // Field order is drop order: the process stops before its folder goes away.
    process: Process,
    ports: ModelServerPorts,
    model: PodModel,
    _dir: tempfile::TempDir,
}

impl PodServer {
    /// Starts an MLServer serving `model` at `ports` (returns at once; see
    /// [`PodServer::wait_ready`]). Fails at once if `ports.ip` is not a local address here
    /// (outside [`crate::netns::isolate`], pod IPs are not).
    pub fn start(
        tools: &DataPlaneTools,
        ports: ModelServerPorts,
        model: &PodModel,
    ) -> Result<PodServer> {
        let ip = ports.ip;
        std::net::TcpListener::bind((ip, 0)).with_context(|| {
            format!(
                "pod IP {ip} is not a local address in this network namespace (run the test \
                 inside testenv::netns::isolate, where {} is local)",
                crate::netns::POD_CIDR
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("pod-{ip}-"))
            .tempdir()
            .context("creating a model server's temporary folder")?;
        let root = dir.path().join("repository");
        write_repository(tools, &root, ports, model)?;
        let process = Process::start(
            &format!("mlserver-{ip}-{}", ports.http),
            &tools.mlserver,
            &["start".to_string(), root.display().to_string()],
            dir.path(),
        )?;
        Ok(PodServer {
            process,
            ports,
            model: model.clone(),
            _dir: dir,
        })
    }

    /// Starts an MLServer serving `model` at `ports` and waits until the model answers (at
    /// most [`START_TIMEOUT`]).
    pub async fn serve(ports: ModelServerPorts, model: &PodModel) -> Result<PodServer> {
        let tools = DataPlaneTools::locate()?;
        let mut server = PodServer::start(&tools, ports, model)?;
        server.wait_ready(START_TIMEOUT).await?;
        Ok(server)
    }

    /// Waits until the model answers `GET /v2/models/<name>/ready` with 200; fails with the
    /// end of MLServer's log if it exits or takes longer than `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let path = format!("/v2/models/{}/ready", self.model.name);
        let addr = self.addr();
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            let ready = tokio::task::spawn_blocking({
                let path = path.clone();
                move || http::get(addr, "model", &path).is_some_and(|r| r.status == 200)
            })
            .await
            .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "MLServer at {addr} did not answer {path} within {timeout:?}; last lines of {}:\n{}",
                    self.process.log_path().display(),
                    self.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where its V2 REST API listens (the pod IP and HTTP port).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ports.ip, self.ports.http))
    }

    /// Its address and ports.
    pub fn ports(&self) -> ModelServerPorts {
        self.ports
    }

    /// What it serves.
    pub fn model(&self) -> &PodModel {
        &self.model
    }

    /// MLServer's `server_name`, which `GET /v2` answers as `name`: the model and where it
    /// listens, so a test can tell which pod answered a request that went through a proxy.
    pub fn server_name(&self) -> String {
        server_name(self.ports, &self.model)
    }

    /// Fails with the end of its log if MLServer has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// Stops MLServer (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(mut self) {
        self.process.stop(Duration::from_secs(5));
    }
}

fn server_name(ports: ModelServerPorts, model: &PodModel) -> String {
    format!("{}@{}:{}", model.name, ports.ip, ports.http)
}

/// Writes an MLServer model repository at `root`: `settings.json` (server: address, ports)
/// and `<model>/` with the trained variant, its settings and the harness's runtime.
fn write_repository(
    tools: &DataPlaneTools,
    root: &std::path::Path,
    ports: ModelServerPorts,
    model: &PodModel,
) -> Result<()> {
    let model_dir = root.join(&model.name);
    std::fs::create_dir_all(&model_dir)?;
    let src = tools.models.join(&model.variant);
    std::fs::copy(src.join("model.joblib"), model_dir.join("model.joblib")).with_context(|| {
        format!(
            "copying model variant {:?} from {}",
            model.variant,
            src.display()
        )
    })?;
    let mut settings: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("model-settings.json"))?)
            .context("the trained model's model-settings.json")?;
    settings["name"] = json!(model.name);
    settings["implementation"] = json!(format!("{RUNTIME_MODULE}.TestenvSKLearnModel"));
    settings["parameters"]["extra"] = json!({
        "error_share": model.faults.error_share,
        "delay_ms": model.faults.delay_ms,
        "fails_to_load": model.fails_to_load,
    });
    std::fs::write(
        model_dir.join("model-settings.json"),
        serde_json::to_vec_pretty(&settings)?,
    )?;
    std::fs::write(model_dir.join(format!("{RUNTIME_MODULE}.py")), RUNTIME)?;
    // parallel_workers 0: the default worker pool crash-loops with current uvloop.
    std::fs::write(
        root.join("settings.json"),
        serde_json::to_vec_pretty(&json!({
            "host": ports.ip.to_string(), "http_port": ports.http, "grpc_port": ports.grpc,
            "metrics_port": ports.metrics, "parallel_workers": 0, "debug": false,
            "server_name": server_name(ports, model)}))?,
    )?;
    Ok(())
}

/// Prefix of every line the [`PodWatcher`] prints.
const TAG: &str = "[testenv pods]";

/// What should run for one pod (by uid): `None` once it is deleted or has no IP.
type Desired = Option<(ModelServerPorts, PodModel)>;

struct Worker {
    tx: watch::Sender<Desired>,
    task: JoinHandle<()>,
}

type Workers = Arc<std::sync::Mutex<BTreeMap<String, Worker>>>;

/// Plays the kubelet for the pods bound to one node: a model server per pod at its pod IP.
/// [`PodWatcher::stop`] (or dropping it) stops every server.
pub struct PodWatcher {
    watch: JoinHandle<()>,
    workers: Workers,
}

impl PodWatcher {
    /// Watches the Pods of every namespace with `spec.nodeName` = `node`. For each pod with a
    /// `status.podIP`, not being deleted and not finished: starts a [`PodServer`] at
    /// `podIP:`[`http_port`] serving [`PodModel::of_pod`], and sets [`MODEL_READY_ANNOTATION`]
    /// `"true"` on the pod once the model answers. A pod deleted (or whose IP changes) has its
    /// server stopped (or moved). A server that fails to start is retried with backoff.
    pub fn start(client: Client, node: &str) -> PodWatcher {
        let workers: Workers = Arc::default();
        let w = workers.clone();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let watch = tokio::spawn(async move {
            let api: Api<Pod> = Api::all(client.clone());
            let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
            // Pods listed since the last (re)start of the watch: any other was deleted.
            let mut listed: BTreeSet<String> = BTreeSet::new();
            loop {
                let event = match stream.try_next().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return,
                    Err(e) => {
                        eprintln!("{TAG} watching pods: {e}");
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(p) => {
                        listed.insert(p.uid().unwrap_or_default());
                        desire(&w, &client, &p);
                    }
                    watcher::Event::InitDone => {
                        let gone: Vec<String> = lock(&w)
                            .keys()
                            .filter(|k| !listed.contains(*k))
                            .cloned()
                            .collect();
                        for uid in gone {
                            send(&w, &uid, None);
                        }
                    }
                    watcher::Event::Apply(p) => desire(&w, &client, &p),
                    watcher::Event::Delete(p) => send(&w, &p.uid().unwrap_or_default(), None),
                }
            }
        });
        PodWatcher { watch, workers }
    }

    /// How many pods have a model server now (running, starting or retrying).
    pub fn pods(&self) -> usize {
        lock(&self.workers).len()
    }

    /// Stops watching and stops every model server.
    pub async fn stop(self) {
        self.watch.abort();
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers.values() {
            w.task.abort();
        }
        for (_, w) in workers {
            let _ = w.task.await;
        }
    }
}

impl Drop for PodWatcher {
    fn drop(&mut self) {
        // Aborted tasks drop their servers, which stops them.
        self.watch.abort();
        for w in lock(&self.workers).values() {
            w.task.abort();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// What pod `p` asks for now.
fn desired(p: &Pod) -> Result<Desired> {
    if p.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let status = p.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) else {
        return Ok(None);
    };
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| anyhow!("pod {}: podIP {ip:?} is not an IPv4 address", pod_key(p)))?;
    Ok(Some((kserve_ports(ip, http_port(p)), PodModel::of_pod(p)?)))
}

fn send(workers: &Workers, uid: &str, want: Desired) {
    if let Some(w) = lock(workers).get(uid) {
        update(&w.tx, want);
    }
}

fn update(tx: &watch::Sender<Desired>, want: Desired) {
    tx.send_if_modified(|d| {
        let changed = *d != want;
        *d = want;
        changed
    });
}

/// Records what pod `p` asks for, starting its worker if it needs one.
fn desire(workers: &Workers, client: &Client, p: &Pod) {
    let uid = p.uid().unwrap_or_default();
    let want = match desired(p) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{TAG} {e:#}");
            None
        }
    };
    // Under the lock: a worker removes itself under it too, so no update is lost between.
    let mut map = lock(workers);
    if let Some(w) = map.get(&uid) {
        if !w.task.is_finished() {
            update(&w.tx, want);
            return;
        }
    }
    if want.is_none() {
        return;
    }
    let (tx, rx) = watch::channel(want);
    let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
    let task = tokio::spawn(worker(
        api,
        workers.clone(),
        (pod_key(p), p.name_any(), uid.clone()),
        rx,
    ));
    map.insert(uid, Worker { tx, task });
}

/// Runs the model server pod `key` asks for, following its changes in order; once the pod
/// asks for none (deleted, finished, no IP), stops it and removes itself.
async fn worker(
    api: Api<Pod>,
    workers: Workers,
    (key, name, uid): (String, String, String),
    mut rx: watch::Receiver<Desired>,
) {
    let mut running: Option<PodServer> = None;
    let mut failures = 0u32;
    loop {
        let want = rx.borrow_and_update().clone();
        let current = running.as_ref().map(|s| (s.ports, s.model.clone()));
        // Asked for none: stop (if running) and go, also after a start that never finished.
        if want != current || want.is_none() {
            if let Some(old) = running.take() {
                println!(
                    "{TAG} pod {key}: stopping its model server at {}",
                    old.addr()
                );
                // Blocks up to 5 s (SIGTERM, then SIGKILL).
                let _ = tokio::task::spawn_blocking(move || old.stop()).await;
            }
            match want {
                None => {
                    let mut map = lock(&workers);
                    // Asked for a server again meanwhile: go on.
                    if rx.has_changed().unwrap_or(false) {
                        continue;
                    }
                    map.remove(&uid);
                    return;
                }
                Some((ports, model)) => match tokio::select! {
                    r = start_and_annotate(&api, &name, &uid, ports, &model) => r,
                    // The pod changed (deleted, new IP or model) while its model was starting
                    // (or never answering: a model that fails to load): drop that server
                    // (which stops it) and follow the change.
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        println!(
                            "{TAG} pod {key}: changed before its model answered; stopping its \
                             model server at {}:{}",
                            ports.ip, ports.http
                        );
                        continue;
                    }
                } {
                    Ok(server) => {
                        println!(
                            "{TAG} pod {key}: model {} ({}) answers at {}; annotated {MODEL_READY_ANNOTATION}",
                            model.name,
                            model.variant,
                            server.addr()
                        );
                        running = Some(server);
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        let wait = Duration::from_secs(2u64.saturating_pow(failures.min(5)));
                        eprintln!("{TAG} pod {key}: serving failed (retrying in {wait:?}): {e:#}");
                        // Retry later, sooner if the pod changes.
                        let _ = tokio::time::timeout(wait, rx.changed()).await;
                        continue;
                    }
                },
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn start_and_annotate(
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    ports: ModelServerPorts,
    model: &PodModel,
) -> Result<PodServer> {
    let server = PodServer::serve(ports, model).await?;
    // The uid makes the patch fail on a new pod of the same name.
    let patch = json!({"metadata": {"uid": uid, "annotations": {MODEL_READY_ANNOTATION: "true"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating pod {name} with {MODEL_READY_ANNOTATION}"))?;
    Ok(server)
}

/// The pods of namespace `ns` (phase, node, IP, model-ready annotation, conditions) and its
/// Events, one per line: what a failing test that runs pods on kwok prints.
pub async fn namespace_summary(client: &Client, ns: &str) -> String {
    let mut out = String::new();
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for pod in pods {
        let model_ready = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MODEL_READY_ANNOTATION).cloned());
        let status = pod.status.unwrap_or_default();
        let conditions: Vec<String> = status
            .conditions
            .unwrap_or_default()
            .iter()
            .map(|c| format!("{}={}", c.type_, c.status))
            .collect();
        out.push_str(&format!(
            "pod {}: phase {:?} node {:?} ip {:?} model-ready {model_ready:?} conditions {conditions:?}\n",
            pod.metadata.name.unwrap_or_default(),
            status.phase,
            pod.spec.and_then(|s| s.node_name),
            status.pod_ip,
        ));
    }
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for ev in events {
        out.push_str(&format!(
            "event {} {}: {} {}\n",
            ev.involved_object.kind.unwrap_or_default(),
            ev.involved_object.name.unwrap_or_default(),
            ev.reason.unwrap_or_default(),
            ev.message.unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A predictor pod as KServe (Standard mode) creates it for InferenceService `wisdom-1`:
    /// the InferenceService's labels and annotations copied, the runtime's env and ports.
    #[test]
    fn a_kserve_pod_serves_its_inference_service() {
        let p = pod(json!({
            "metadata": {"name": "wisdom-1-predictor-5d9f-abcde", "namespace": "default",
                "labels": {ISVC_LABEL: "wisdom-1", "app.kubernetes.io/version": "v1",
                           "component": "predictor"},
                "annotations": {crate::dataplane::ERROR_SHARE_ANNOTATION: "0.5"}},
            "spec": {"containers": [{"name": "kserve-container", "image": "x",
                "env": [{"name": "MLSERVER_MODEL_NAME", "value": "other"}],
                "ports": [{"name": "metrics", "containerPort": 8082},
                          {"name": "h2c", "containerPort": 9000}]}]}}));
        let model = PodModel::of_pod(&p).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(model.name, "wisdom-1");
        assert_eq!(model.variant, "v1");
        assert_eq!(model.faults.error_share, 0.5);
        assert!(!model.fails_to_load);
        assert_eq!(http_port(&p), 9000);
        let mut failing = p.clone();
        failing
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(STORAGE_URI_ANNOTATION.into(), FAILING_STORAGE_URI.into());
        assert!(PodModel::of_pod(&failing).is_ok_and(|m| m.fails_to_load));
    }

    #[test]
    fn fallbacks_model_name_variant_and_port() {
        let p = pod(json!({
            "metadata": {"name": "bare", "labels": {"app.kubernetes.io/version": "v7"}},
            "spec": {"containers": [{"name": "c", "image": "x",
                "env": [{"name": "MLSERVER_MODEL_NAME", "value": "from-env"}]}]}}));
        let model = PodModel::of_pod(&p).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            (model.name.as_str(), model.variant.as_str()),
            ("from-env", "v0")
        );
        assert_eq!(http_port(&p), 8080);
        let p = pod(json!({"metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 7000}]}]}}));
        assert_eq!(
            PodModel::of_pod(&p).map(|m| m.name).ok().as_deref(),
            Some("bare")
        );
        assert_eq!(http_port(&p), 7000);
    }

    /// What a pod asks for: a server only with an IP, alive and not being deleted.
    #[test]
    fn only_running_pods_with_an_ip_get_a_server() {
        let base = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {ISVC_LABEL: "m"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let with = |status: Value, deleting: bool| {
            let mut v = base.clone();
            v["status"] = status;
            if deleting {
                v["metadata"]["deletionTimestamp"] = json!("2026-11-30T12:00:00Z");
            }
            desired(&pod(v)).map_err(|e| format!("{e:#}"))
        };
        let ip = Ipv4Addr::new(10, 244, 0, 7);
        let want = Some((kserve_ports(ip, 8080), PodModel::new("m", "v0")));
        assert_eq!(with(json!({"phase": "Pending"}), false), Ok(None));
        assert_eq!(
            with(json!({"phase": "Running", "podIP": "10.244.0.7"}), false),
            Ok(want)
        );
        assert_eq!(
            with(json!({"phase": "Running", "podIP": "10.244.0.7"}), true),
            Ok(None)
        );
        assert_eq!(
            with(json!({"phase": "Succeeded", "podIP": "10.244.0.7"}), false),
            Ok(None)
        );
        assert!(with(json!({"phase": "Running", "podIP": "fd00::7"}), false).is_err());
    }
}
