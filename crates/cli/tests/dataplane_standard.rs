//! The tutorial's three steps in KServe **Standard mode**, everything real but the pods'
//! kubelet: the release chart (`environment: kserve-standard`) installed with the real Helm,
//! the real `iter8` binary running with the controller chart's ServiceAccount token, the real
//! KServe manager v0.20.0 making each InferenceService's predictor Deployment and Service and
//! writing its status, the real deployment, replicaset and endpointslice controllers and
//! kube-scheduler, kwok playing the fake Node's kubelet, one MLServer per simulated pod at its
//! pod IP (`testenv::pods::PodWatcher`), and requests through the real Envoy configured by the
//! real istiod from the VirtualService and the EndpointSlices. The test writes no status and no
//! workload object: a version is Ready when KServe says so, which it does once kwok marks the
//! pod Ready, which kwok does once the pod's model answers.
//!
//! In step 2 the candidate first comes with a model that fails to load (`storageUri`
//! [`testenv::pods::FAILING_STORAGE_URI`]: its MLServer runs, the model never answers ready, so
//! its pod never gets the model-ready annotation and kwok never marks it Ready): KServe reports
//! it not Ready (`MinimumReplicasUnavailable`), the controller sees it and settles, and
//! `traffic: test` requests keep going to wisdom-0. Then the tutorial's step-2 values fix the
//! `storageUri`: KServe rolls the Deployment, the new pod's model answers, and from there the
//! test goes on as the tutorial.
//!
//! Besides the answers at each step, it proves that the candidate gets no request before it is
//! Ready: the VirtualService first routes to wisdom-1 only after its pod carried the
//! model-ready annotation, kwok marked the pod Ready and KServe marked the InferenceService
//! Ready (in that order, by etcd's global resourceVersion order), and requests with `traffic:
//! test` sent while it was not Ready were all answered by wisdom-0.
//!
//! A second test plays blue-green (80/20) and mirror (30%) in Standard mode the same way: the
//! weighted route and the mirrored copies pass through the ingress gateway, whose per-version
//! routes rewrite the path to each version's model; it counts the answers per version and the
//! copies the candidate's model server answered (its MLServer metrics), and checks that the
//! primary answered each client request exactly once. A third splits 80/20 through a Gateway
//! API Gateway (`environment: kserve-standard-gtw`): `DataPlane::serve_gateway` plays Istio's
//! automated deployment (a Gateway, an Envoy with its label, the Service `<gateway>-istio`),
//! and the HTTPRoute's weighted rule sends each request back through that Service.
//!
//! Each test runs in a network namespace of its own (`testenv::netns::isolate`, pod IPs local there) with
//! its own control plane and data plane: about 2 GB resident at its peak (sum of RSS, two or
//! three MLServers included) and 26-38 s on 2 busy cores. Needs root,
//! `unshare` and `ip`, and from `testenv/setup.sh` the KServe manager, kwok, kube-scheduler,
//! istiod, Envoy and MLServer.
//!
//! The values are the golden Standard-mode tutorial steps (`testdata/charts/kserve-standard-
//! step{1,2,3}`) plus two lines: `serving.kserve.io/autoscalerClass: none` on every
//! InferenceService (there is no metrics-server, so no HPA) and `gateway:` the data plane's
//! ingress Gateway, so that the tutorial's requests "from outside the cluster" (to the ingress
//! with `Host: wisdom.<ns>`) are routed by the VirtualService (see charts/release/README.md,
//! "KServe Standard mode": the VirtualService applies in the mesh unless `gateway` is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod e2e;
mod infer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::*;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use testenv::dataplane::DataPlane;
use testenv::fixtures::{api_resource, deployment};
use testenv::kserve_manager::KServeManager;
use testenv::kwok::{self, Kwok};
use testenv::pods::{PodWatcher, FAILING_STORAGE_URI, ISVC_LABEL, MODEL_READY_ANNOTATION};
use testenv::{netns, ControlPlane, Options};

use infer::{http_client, infer, traffic, Answer, HttpClient};

/// The tutorial's step 1 in Standard mode (a golden case of the release chart).
const STEP1: &str = include_str!("../../../testdata/charts/kserve-standard-step1/values.yaml");
/// The tutorial's step 2 in Standard mode (a golden case).
const STEP2: &str = include_str!("../../../testdata/charts/kserve-standard-step2/values.yaml");
/// The tutorial's step 3 in Standard mode (a golden case).
const STEP3: &str = include_str!("../../../testdata/charts/kserve-standard-step3/values.yaml");

/// The Istio Gateway the data plane's ingress Envoy serves (`testenv::dataplane`).
const INGRESS_GATEWAY: &str = "knative-serving/knative-ingress-gateway";

/// Anything KServe, the workload controllers, kwok, MLServer, istiod and Envoy do together,
/// on 2 busy cores: generous, and never slept.
const WAIT: Duration = Duration::from_secs(180);

/// A golden step's values with the two additions of this test (see the module docs).
fn values(golden: &str) -> String {
    let anchor = "      app.kubernetes.io/name: wisdom\n";
    assert!(
        golden.contains(anchor),
        "unexpected golden values:\n{golden}"
    );
    let mut v = golden.replacen(
        anchor,
        &format!("{anchor}    annotations:\n      serving.kserve.io/autoscalerClass: none\n"),
        1,
    );
    if !v.ends_with('\n') {
        v.push('\n');
    }
    v.push_str(&format!("gateway: {INGRESS_GATEWAY}\n"));
    v
}

/// Step 2's values with the candidate's (the second version's) `storageUri` replaced by one
/// whose model fails to load.
fn failing_candidate(values: &str) -> String {
    let good = "storageUri: \"gs://seldon-models/sklearn/mms/lr_model\"";
    let at = values.rfind(good).expect("the candidate's storageUri");
    assert!(
        values[..at].contains(good),
        "two versions expected:\n{values}"
    );
    format!(
        "{}storageUri: \"{FAILING_STORAGE_URI}\"{}",
        &values[..at],
        &values[at + good.len()..]
    )
}

/// The `inferenceservices.serving.kserve.io` the controller watches (its metrics' label).
const ISVCS: &str = "inferenceservices.serving.kserve.io";

fn pod_ar() -> ApiResource {
    api_resource("", "v1", "Pod", "pods")
}

fn condition_true(obj: &DynamicObject, type_: &str) -> bool {
    obj.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == type_ && c["status"] == "True")
        })
}

/// Condition `type_`'s status and reason.
fn condition<'a>(obj: &'a DynamicObject, type_: &str) -> Option<(&'a str, Option<&'a str>)> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| (c["status"].as_str().unwrap_or(""), c["reason"].as_str()))
}

fn annotation<'a>(obj: &'a DynamicObject, key: &str) -> Option<&'a str> {
    obj.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The object's resourceVersion as a number: in one etcd every write gets the next revision
/// of a single counter, so across objects and kinds a smaller one was written earlier. (Opaque
/// to clients in general; here the test owns the one etcd.)
fn revision(obj: &DynamicObject) -> u64 {
    obj.metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or_else(|| panic!("resourceVersion of {:?}", obj.metadata.name))
}

/// Every state the objects of one watch went through while it ran, in the order they came.
struct History {
    seen: Arc<Mutex<Vec<DynamicObject>>>,
    task: tokio::task::JoinHandle<()>,
}

impl History {
    /// Records the objects of `ar` in `ns` that `config` selects, from now on.
    fn record(client: &Client, ar: &ApiResource, ns: &str, config: watcher::Config) -> History {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
        let seen: Arc<Mutex<Vec<DynamicObject>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
            while let Ok(Some(event)) = stream.try_next().await {
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = event {
                    s.lock().unwrap().push(o);
                }
            }
        });
        History { seen, task }
    }

    /// The first recorded state for which `check` holds.
    fn first(&self, check: impl Fn(&DynamicObject) -> bool) -> Option<DynamicObject> {
        self.seen.lock().unwrap().iter().find(|o| check(o)).cloned()
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Everything the test starts; dropped in field order.
struct Env {
    pods: PodWatcher,
    dp: DataPlane,
    kserve: KServeManager,
    kwok: Kwok,
    cp: ControlPlane,
    http: HttpClient,
    ns: String,
    host: String,
}

impl Env {
    /// Panics with `what`, the end of every component's log and what the namespace holds.
    async fn fail(&self, what: &str) -> ! {
        let summary = match self.cp.client().await {
            Ok(client) => testenv::pods::namespace_summary(&client, &self.ns).await,
            Err(e) => format!("no client: {e:#}"),
        };
        panic!(
            "{what}\n{}\n{}\nlast lines of kube-controller-manager.log:\n{}\n{summary}\ningress routes: {}\n{}",
            self.kserve.diagnostics(),
            self.kwok.diagnostics(),
            self.cp.controller_manager_log_tail(15),
            self.dp.ingress_config_dump(),
            self.dp.diagnostics(),
        )
    }

    /// Fails the test, with diagnostics, on an error.
    async fn ok<T>(&self, r: anyhow::Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => self.fail(&format!("{e:#}")).await,
        }
    }

    /// Checks that KServe, kwok and the data plane still run, then stops the pods' servers.
    async fn stop(self) {
        let Env {
            pods,
            dp,
            mut kserve,
            mut kwok,
            ..
        } = self;
        kserve.check_running().unwrap();
        kwok.check_running().unwrap();
        dp.check_healthy().unwrap();
        pods.stop().await;
    }

    /// `helm delete wisdom`, then waits until nothing of the release is left: the routing
    /// object `wisdom` (of `routing`), the InferenceServices `isvcs` with the predictor
    /// Deployments and Services KServe made for them, the entry Service, the routemap, and
    /// every pod of the namespace.
    async fn delete_release(&self, client: &Client, routing: &ApiResource, isvcs: &[&str]) {
        helm(&self.cp, &self.ns, &["delete", "wisdom"], None);
        let predictors: Vec<String> = isvcs.iter().map(|i| format!("{i}-predictor")).collect();
        let mut objects = vec![
            (routing.clone(), "wisdom"),
            (svc_ar(), "wisdom"),
            (cm_ar(), "wisdom-routemap"),
        ];
        for (isvc, predictor) in isvcs.iter().zip(&predictors) {
            objects.push((isvc_ar(), isvc));
            objects.push((deployment(), predictor));
            objects.push((svc_ar(), predictor));
        }
        self.wait_gone(client, &objects).await;
        let ns = self.ns.as_str();
        assert!(names(client, &isvc_ar(), ns).await.is_empty());
        assert!(names(client, routing, ns).await.is_empty());
        assert!(!names(client, &cm_ar(), ns)
            .await
            .iter()
            .any(|n| n.starts_with("wisdom")));
        let r = testenv::wait_for("every pod of the release to go", WAIT, || async {
            names(client, &pod_ar(), ns).await.is_empty().then_some(())
        })
        .await;
        self.ok(r).await;
    }

    /// Waits until KServe reports each of the InferenceServices `names` Ready.
    async fn wait_ready(&self, client: &Client, names: &[&str]) {
        for name in names {
            let what = format!("KServe to report {name} Ready");
            self.wait_obj(client, &isvc_ar(), name, &what, |o| {
                condition_true(o, "Ready")
            })
            .await;
        }
    }

    /// Waits until object `name` of `ar` satisfies `check` (`what` names it); returns it.
    async fn wait_obj(
        &self,
        client: &Client,
        ar: &ApiResource,
        name: &str,
        what: &str,
        check: impl Fn(&DynamicObject) -> bool,
    ) -> DynamicObject {
        let r = testenv::objects::wait(client, ar, &self.ns, name, what, WAIT, check).await;
        self.ok(r).await
    }

    /// Waits until none of `objects` exists.
    async fn wait_gone(&self, client: &Client, objects: &[(ApiResource, &str)]) {
        for (ar, name) in objects {
            let r = testenv::wait_for(
                &format!("{} {}/{name} to be deleted", ar.kind, self.ns),
                WAIT,
                || async {
                    testenv::objects::get(client, ar, &self.ns, name)
                        .await
                        .ok()?
                        .is_none()
                        .then_some(())
                },
            )
            .await;
            self.ok(r).await;
        }
    }

    /// The tutorial's request through the ingress gateway (with `traffic: test` if `test`).
    async fn send(&self, test: bool) -> Result<Answer, String> {
        infer(&self.http, self.dp.ingress(), &self.host, traffic(test)).await
    }

    /// Sends the tutorial's request until an answer satisfies `ok`; returns it.
    async fn wait_answer(&self, test: bool, what: &str, ok: impl Fn(&Answer) -> bool) -> Answer {
        self.wait_answer_at(self.dp.ingress(), traffic(test), what, ok)
            .await
    }

    /// Sends the tutorial's request to `gateway` with `headers` until an answer satisfies
    /// `ok`; returns it.
    async fn wait_answer_at(
        &self,
        gateway: SocketAddr,
        headers: &[(&str, &str)],
        what: &str,
        ok: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let deadline = Instant::now() + WAIT;
        let mut last = Err("no request sent".to_string());
        while Instant::now() < deadline {
            last = infer(&self.http, gateway, &self.host, headers).await;
            if let Ok(a) = &last {
                if ok(a) {
                    return a.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.fail(&format!(
            "timed out after {WAIT:?} waiting for {what} at {gateway}; last answer {last:?}"
        ))
        .await
    }

    /// Sends `n` requests without a header to `gateway`, each of which must be a 200 whose
    /// `app-version` names the model that answered, wisdom-0 or wisdom-1; returns how many
    /// wisdom-1 answered.
    async fn split(&self, gateway: SocketAddr, n: usize) -> usize {
        let mut to_candidate = 0;
        for _ in 0..n {
            let a = infer(&self.http, gateway, &self.host, &[]).await;
            let version = a
                .as_ref()
                .ok()
                .filter(|a| a.status == 200 && a.model_name() == a.app_version.as_deref())
                .and_then(|a| a.app_version.clone());
            match version.as_deref() {
                Some("wisdom-0") => {}
                Some("wisdom-1") => to_candidate += 1,
                _ => self.fail(&format!("split through {gateway}: {a:?}")).await,
            }
        }
        to_candidate
    }

    /// Sends `n` requests (with `traffic: test` if `test`) and asserts each is a 200 from
    /// `version` (header `app-version`, and the model named after it) of trained variant
    /// `variant`.
    async fn assert_answers(&self, test: bool, n: usize, version: &str, variant: &str) {
        for _ in 0..n {
            let a = self.send(test).await;
            let good = a
                .as_ref()
                .is_ok_and(|a| a.is_from(version) && a.model_version() == Some(variant));
            if !good {
                self.fail(&format!(
                    "expected {version} ({variant}) to answer (traffic: test = {test}), got {a:?}"
                ))
                .await;
            }
        }
        if let Err(e) = self.dp.check_healthy() {
            self.fail(&format!("{e:#}")).await;
        }
    }
}

/// Starts everything a test needs (see the module docs) with a namespace named after
/// `ns_prefix` and our controller from its chart: the environment, the controller, a client.
async fn start(ns_prefix: &str) -> (Env, Iter8, Client) {
    let cp = ControlPlane::start(Options {
        controller_manager: true,
        workload_controllers: true,
        ..Options::default()
    })
    .await
    .unwrap_or_else(|e| panic!("control plane: {e:#}"));
    // Independent of one another: started together.
    let (kwok, kserve, dp) = tokio::join!(
        Kwok::start(&cp),
        KServeManager::start(&cp),
        DataPlane::start(&cp)
    );
    let kwok = kwok.unwrap_or_else(|e| panic!("kwok: {e:#}"));
    let kserve = kserve.unwrap_or_else(|e| panic!("KServe manager: {e:#}"));
    let dp = dp.unwrap_or_else(|e| panic!("data plane: {e:#}"));
    let client = cp.client().await.unwrap();
    let pods = PodWatcher::start(client.clone(), kwok::NODE);
    let ns = cp.namespace(ns_prefix).await.unwrap();
    // The controller runs out of cluster (as in every e2e test): its chart's Deployment gets
    // no pod, which kwok would otherwise run and the PodWatcher serve a model for.
    let iter8 = install_controller(&cp, &ns, false, &["replicas=0"]).await;
    let env = Env {
        pods,
        dp,
        kserve,
        kwok,
        cp,
        http: http_client(),
        host: format!("wisdom.{ns}"),
        ns: ns.clone(),
    };
    (env, iter8, client)
}

/// Steps 1-3 of the tutorial in Standard mode and `helm delete`, with the real KServe manager,
/// each step checked with the tutorial's requests through the ingress Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_in_standard_mode_with_the_real_kserve() {
    if !netns::isolate("tutorial_in_standard_mode_with_the_real_kserve") {
        return;
    }
    let started = Instant::now();
    let (env, iter8, client) = start("standard").await;
    let ns = env.ns.clone();
    let ns = ns.as_str();
    let (isvc, vs) = (isvc_ar(), vs_ar());
    eprintln!("everything up after {:?}", started.elapsed());

    // Step 1: KServe makes wisdom-0's predictor Deployment and Service (owned by the
    // InferenceService), its pod's model answers, KServe says Ready, the controller routes.
    helm_release(&env.cp, ns, "wisdom", &values(STEP1));
    for (ar, kind) in [(deployment(), "Deployment"), (svc_ar(), "Service")] {
        let obj = env
            .wait_obj(
                &client,
                &ar,
                "wisdom-0-predictor",
                &format!("KServe to create {kind} wisdom-0-predictor"),
                |_| true,
            )
            .await;
        let owners = obj.metadata.owner_references.unwrap_or_default();
        assert!(
            owners
                .iter()
                .any(|o| o.kind == "InferenceService" && o.name == "wisdom-0"),
            "{kind} wisdom-0-predictor owned by {owners:?}"
        );
    }
    env.wait_obj(
        &client,
        &isvc,
        "wisdom-0",
        "KServe to report wisdom-0 Ready",
        |o| condition_true(o, "Ready"),
    )
    .await;
    let step1_vs = env
        .wait_obj(&client, &vs, "wisdom", "the step-1 VirtualService", |o| {
            route_names(o) == ["wisdom-0"]
        })
        .await;
    env.wait_answer(false, "step 1: wisdom-0 answers", |a| {
        a.status == 200 && a.app_version.as_deref() == Some("wisdom-0")
    })
    .await;
    env.assert_answers(false, 10, "wisdom-0", "v0").await;
    env.assert_answers(true, 10, "wisdom-0", "v0").await;
    eprintln!("step 1 answered after {:?}", started.elapsed());

    // Step 2: the candidate. Record, from before the upgrade, every state of its pods, of its
    // InferenceService and of the VirtualService.
    let pod_history = History::record(
        &client,
        &pod_ar(),
        ns,
        watcher::Config::default().labels(&format!("{ISVC_LABEL}=wisdom-1")),
    );
    let isvc_history = History::record(
        &client,
        &isvc,
        ns,
        watcher::Config::default().fields("metadata.name=wisdom-1"),
    );
    let vs_history = History::record(
        &client,
        &vs,
        ns,
        watcher::Config::default().fields("metadata.name=wisdom"),
    );
    // First with a model that fails to load: KServe says not Ready, and stays so.
    let reconciles_before = iter8.metric("iter8_reconciles_total").await;
    helm_release(&env.cp, ns, "wisdom", &failing_candidate(&values(STEP2)));
    let failing = Instant::now();
    env.wait_obj(
        &client,
        &isvc,
        "wisdom-1",
        "KServe to report wisdom-1 not Ready (MinimumReplicasUnavailable)",
        |o| condition(o, "Ready") == Some(("False", Some("MinimumReplicasUnavailable"))),
    )
    .await;
    // Its pod runs (with an IP, so the PodWatcher runs its MLServer) and is not Ready.
    let r = testenv::wait_for("wisdom-1's pod to run", WAIT, || async {
        pod_history
            .first(|p| p.data["status"]["podIP"].is_string())
            .and_then(|p| p.metadata.name)
    })
    .await;
    let failing_pod = env.ok(r).await;
    // The controller has seen wisdom-1 and reacted: it watches both InferenceServices,
    // reconciled since the upgrade, and has nothing queued or in progress.
    iter8.settled(ISVCS, 2).await;
    let reconciles = iter8.metric("iter8_reconciles_total").await;
    assert!(
        reconciles > reconciles_before,
        "no reconcile after wisdom-1 appeared ({reconciles_before} before, {reconciles} after)"
    );
    // For a while (at least 20 requests and 3 s), `traffic: test` still goes to wisdom-0 and
    // wisdom-1 stays not Ready.
    let mut while_failing = 0;
    let counting = Instant::now();
    let deadline = counting + WAIT;
    while while_failing < 20 || counting.elapsed() < Duration::from_secs(3) {
        let a = env.send(true).await;
        let good = a.as_ref().is_ok_and(|a| a.is_from("wisdom-0"));
        if !good {
            env.fail(&format!(
                "while wisdom-1's model failed to load, a `traffic: test` request got {a:?}"
            ))
            .await;
        }
        let now = testenv::objects::get(&client, &isvc, ns, "wisdom-1")
            .await
            .unwrap();
        if now.as_ref().is_none_or(|o| condition_true(o, "Ready")) {
            env.fail(&format!("wisdom-1 with a failing model: {now:?}"))
                .await;
        }
        while_failing += 1;
        if Instant::now() > deadline {
            env.fail("timed out sending requests while wisdom-1's model failed to load")
                .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now_vs = testenv::objects::get(&client, &vs, ns, "wisdom")
        .await
        .unwrap()
        .expect("the VirtualService");
    assert_eq!(route_names(&now_vs), ["wisdom-0"]);
    eprintln!(
        "wisdom-1 with a failing model: not Ready, {while_failing} `traffic: test` requests \
         answered by wisdom-0 in {:?} ({:?} after that upgrade)",
        counting.elapsed(),
        failing.elapsed()
    );

    // Then the tutorial's step-2 values: KServe rolls wisdom-1's Deployment; the failing pod
    // serves nothing until the new one is Ready.
    helm_release(&env.cp, ns, "wisdom", &values(STEP2));
    let step2 = Instant::now();
    // Until KServe says wisdom-1 is Ready, requests with `traffic: test` go to wisdom-0. Each
    // answer counts only if wisdom-1 was still not Ready after it came.
    let mut before_ready = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let a = env.send(true).await;
        let now = testenv::objects::get(&client, &isvc, ns, "wisdom-1")
            .await
            .unwrap();
        if now.as_ref().is_some_and(|o| condition_true(o, "Ready")) {
            break;
        }
        let good = a.as_ref().is_ok_and(|a| a.is_from("wisdom-0"));
        if !good {
            env.fail(&format!(
                "while wisdom-1 was not Ready, a `traffic: test` request got {a:?}"
            ))
            .await;
        }
        before_ready += 1;
        if Instant::now() > deadline {
            env.fail(&format!(
                "timed out after {WAIT:?} waiting for KServe to report wisdom-1 Ready"
            ))
            .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "wisdom-1 Ready {:?} after the step-2 upgrade; {before_ready} `traffic: test` requests \
         before that, all answered by wisdom-0",
        step2.elapsed()
    );
    assert!(
        before_ready > 0,
        "no request was sent while wisdom-1 was not Ready"
    );
    let step2_vs = env
        .wait_obj(&client, &vs, "wisdom", "the candidate route", |o| {
            route_names(o) == ["wisdom-1", "wisdom-0"]
        })
        .await;
    assert_eq!(
        step2_vs.data["spec"]["gateways"],
        serde_json::json!([INGRESS_GATEWAY, "mesh"])
    );
    env.wait_answer(true, "step 2: wisdom-1 answers `traffic: test`", |a| {
        a.app_version.as_deref() == Some("wisdom-1")
    })
    .await;
    eprintln!(
        "wisdom-1 answers {:?} after the step-2 upgrade",
        step2.elapsed()
    );
    env.assert_answers(true, 10, "wisdom-1", "v1").await;
    env.assert_answers(false, 10, "wisdom-0", "v0").await;

    // The order of events, by resourceVersion: the pod's model answered (annotation), then
    // kwok marked the pod Ready, then KServe the InferenceService, and only then did the
    // VirtualService first route to wisdom-1; until then it was step 1's.
    let annotated = pod_history
        .first(|p| annotation(p, MODEL_READY_ANNOTATION) == Some("true"))
        .expect("wisdom-1's pod got the model-ready annotation");
    let pod_ready = pod_history
        .first(|p| condition_true(p, "Ready"))
        .expect("wisdom-1's pod became Ready");
    let isvc_ready = isvc_history
        .first(|o| condition_true(o, "Ready"))
        .expect("wisdom-1 became Ready");
    let routed = vs_history
        .first(|o| route_names(o).iter().any(|r| r == "wisdom-1"))
        .expect("the VirtualService routed to wisdom-1");
    let order = [
        ("model-ready annotation", revision(&annotated)),
        ("pod Ready", revision(&pod_ready)),
        ("InferenceService Ready", revision(&isvc_ready)),
        ("VirtualService routes to wisdom-1", revision(&routed)),
    ];
    eprintln!("step 2 in resourceVersion order: {order:?}");
    assert!(
        order.windows(2).all(|w| w[0].1 < w[1].1),
        "out of order: {order:?}"
    );
    let earlier_vs: Vec<Vec<String>> = vs_history
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|o| revision(o) < revision(&routed))
        .map(route_names)
        .collect();
    assert!(
        !earlier_vs.is_empty() && earlier_vs.iter().all(|r| r == &["wisdom-0"]),
        "VirtualService before it routed to wisdom-1: {earlier_vs:?}"
    );
    assert!(revision(&step1_vs) < revision(&isvc_ready));
    // The failing model's pod never got the model-ready annotation nor became Ready; the
    // annotated pod is the rollout's new one.
    let failing_states: Vec<DynamicObject> = pod_history
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.metadata.name.as_deref() == Some(failing_pod.as_str()))
        .cloned()
        .collect();
    assert!(
        !failing_states.is_empty()
            && failing_states.iter().all(|p| {
                annotation(p, MODEL_READY_ANNOTATION).is_none() && !condition_true(p, "Ready")
            }),
        "the failing model's pod {failing_pod}: {failing_states:?}"
    );
    assert_ne!(
        annotated.metadata.name.as_deref(),
        Some(failing_pod.as_str())
    );
    drop((pod_history, isvc_history, vs_history));

    // Step 3: promotion. wisdom-1 goes (KServe's finalizer, then the garbage collector takes
    // its Deployment and pod); wisdom-0 takes the candidate's labels, and KServe rolls its
    // Deployment: the new pod serves the promoted model (v1), the old one serves until then.
    helm_release(&env.cp, ns, "wisdom", &values(STEP3));
    let step3 = Instant::now();
    env.wait_gone(
        &client,
        &[
            (isvc.clone(), "wisdom-1"),
            (deployment(), "wisdom-1-predictor"),
            (svc_ar(), "wisdom-1-predictor"),
        ],
    )
    .await;
    env.wait_obj(&client, &vs, "wisdom", "the step-3 VirtualService", |o| {
        route_names(o) == ["wisdom-0"]
    })
    .await;
    for test in [false, true] {
        env.wait_answer(test, "step 3: the promoted model answers", |a| {
            a.app_version.as_deref() == Some("wisdom-0") && a.model_version() == Some("v1")
        })
        .await;
    }
    eprintln!(
        "the promoted model answers {:?} after the step-3 upgrade",
        step3.elapsed()
    );
    env.assert_answers(true, 10, "wisdom-0", "v1").await;
    env.assert_answers(false, 10, "wisdom-0", "v1").await;
    env.wait_obj(
        &client,
        &isvc,
        "wisdom-0",
        "KServe to report wisdom-0 Ready",
        |o| condition_true(o, "Ready"),
    )
    .await;

    // Cleanup: `helm delete` leaves nothing of the release, and KServe's objects go with it.
    env.delete_release(&client, &vs, &["wisdom-0"]).await;
    iter8.assert_clean_log();

    env.stop().await;
    eprintln!("done after {:?}", started.elapsed());
}

/// Blue-green in Standard mode (a golden case: wisdom-0 80, wisdom-1 20).
const BLUE_GREEN: &str =
    include_str!("../../../testdata/charts/kserve-standard-blue-green/values.yaml");
/// Mirror in Standard mode (a golden case: 30% of requests copied to wisdom-1).
const MIRROR: &str = include_str!("../../../testdata/charts/kserve-standard-mirror/values.yaml");

/// A golden case's values with `gateway` set to the data plane's ingress Gateway.
fn through_ingress(golden: &str) -> String {
    let line = "gateway: istio-system/ingress\n";
    assert!(golden.contains(line), "unexpected golden values:\n{golden}");
    golden.replacen(line, &format!("gateway: {INGRESS_GATEWAY}\n"), 1)
}

/// Inferences the model server of InferenceService `isvc`'s Ready pod answered (MLServer's
/// counter at the pod's metrics port), and the pod it read them from.
async fn inferences(client: &Client, ns: &str, isvc: &str) -> Option<(String, f64)> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{ISVC_LABEL}={isvc}")))
        .await
        .ok()?;
    let pod = pods.items.into_iter().find(|p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })?;
    let ip: std::net::Ipv4Addr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
    let ports = testenv::pods::kserve_ports(ip, testenv::pods::http_port(&pod));
    let addr = SocketAddr::from((ports.ip, ports.metrics));
    let text = tokio::task::spawn_blocking(move || {
        testenv::http::get(addr, &addr.to_string(), "/metrics").map(|r| r.body)
    })
    .await
    .ok()??;
    let scrape = testenv::metrics::parse(&text).ok()?;
    Some((
        pod.metadata.name.unwrap_or_default(),
        scrape.get("model_infer_request_success_total", Some(("model", isvc))),
    ))
}

/// Blue-green and mirror in Standard mode with the real KServe, through the ingress Envoy:
/// the weighted route picks a version and passes through the ingress gateway, whose
/// per-version routes rewrite the path to that version's model; a mirrored copy passes through
/// the gateway the same way and reaches the candidate's model, while clients see only the
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_and_mirror_in_standard_mode_with_the_real_kserve() {
    if !netns::isolate("blue_green_and_mirror_in_standard_mode_with_the_real_kserve") {
        return;
    }
    let started = Instant::now();
    let (env, iter8, client) = start("split").await;
    let ns = env.ns.clone();
    let ns = ns.as_str();
    let vs = vs_ar();

    // Blue-green 80/20: both versions Ready (KServe says so), the weighted route "split".
    helm_release(&env.cp, ns, "wisdom", &through_ingress(BLUE_GREEN));
    env.wait_ready(&client, &["wisdom-0", "wisdom-1"]).await;
    env.wait_obj(&client, &vs, "wisdom", "the weighted VirtualService", |o| {
        route_names(o) == ["wisdom-0", "wisdom-1", "split"]
    })
    .await;
    for version in ["wisdom-0", "wisdom-1"] {
        env.wait_answer(false, &format!("{version} to answer"), |a| {
            a.status == 200 && a.app_version.as_deref() == Some(version)
        })
        .await;
    }
    let n = 300;
    let to_candidate = env.split(env.dp.ingress(), n).await;
    // 20% of 300 is 60 (standard deviation 6.9).
    eprintln!("blue-green 80/20: wisdom-1 answered {to_candidate} of {n}");
    assert!(
        (35..=85).contains(&to_candidate),
        "wisdom-1 answered {to_candidate} of {n} requests, want about 20%"
    );

    // Mirror 30%: clients see only wisdom-0; copies reach wisdom-1's model.
    let reconciles = iter8.metric("iter8_reconciles_total").await;
    helm_release(&env.cp, ns, "wisdom", &through_ingress(MIRROR));
    let mirror_vs = env
        .wait_obj(&client, &vs, "wisdom", "the mirror VirtualService", |o| {
            route_names(o) == ["wisdom-1", "wisdom"]
        })
        .await;
    assert_eq!(
        mirror_vs.data["spec"]["http"][1]["mirrorPercentage"]["value"],
        serde_json::json!(30),
        "{mirror_vs:?}"
    );
    assert!(iter8.metric("iter8_reconciles_total").await > reconciles);
    // Envoy has the mirror once a copy arrives.
    let r = testenv::wait_for("a mirrored copy to reach wisdom-1", WAIT, || async {
        let before = inferences(&client, ns, "wisdom-1").await?.1;
        for _ in 0..10 {
            let a = env.send(false).await;
            a.ok().filter(|a| a.status == 200)?;
        }
        let after = inferences(&client, ns, "wisdom-1").await?.1;
        (after > before).then_some(())
    })
    .await;
    env.ok(r).await;
    let (pod, before) = inferences(&client, ns, "wisdom-1")
        .await
        .expect("wisdom-1's counter");
    let (_, primary_before) = inferences(&client, ns, "wisdom-0")
        .await
        .expect("wisdom-0's counter");
    let n = 300_u32;
    for _ in 0..n {
        let a = env.send(false).await;
        let good = a.as_ref().is_ok_and(|a| a.is_from("wisdom-0"));
        if !good {
            env.fail(&format!(
                "mirror: clients must see only wisdom-0, got {a:?}"
            ))
            .await;
        }
    }
    // Copies are sent in the background: wait until most of the expected 90 (30% of 300,
    // standard deviation 7.9) have arrived; late ones can only add to the upper bound's side.
    let r = testenv::wait_for("the mirrored copies", WAIT, || async {
        let (now_pod, now) = inferences(&client, ns, "wisdom-1").await?;
        (now_pod == pod && now - before >= 60.0).then_some(())
    })
    .await;
    env.ok(r).await;
    let (now_pod, now) = inferences(&client, ns, "wisdom-1").await.expect("counter");
    let copies = now - before;
    eprintln!("mirror 30%: wisdom-1's model answered {copies} copies of {n} requests");
    assert_eq!(now_pod, pod, "wisdom-1's pod changed");
    // The primary answered each request once: no copy came back to it (a copy that missed the
    // candidate's route would be mirrored again by the primary's).
    let (_, primary) = inferences(&client, ns, "wisdom-0").await.expect("counter");
    assert_eq!(
        primary - primary_before,
        f64::from(n),
        "wisdom-0's inferences"
    );
    assert!(
        (60.0..=120.0).contains(&copies),
        "{copies} copies of {n} requests, want about 30%"
    );

    // `helm delete` leaves nothing of the release.
    env.delete_release(&client, &vs, &["wisdom-0", "wisdom-1"])
        .await;
    iter8.assert_clean_log();
    env.stop().await;
    eprintln!("done after {:?}", started.elapsed());
}

/// Blue-green in Standard mode through a Gateway API HTTPRoute (a golden case: wisdom-0 80,
/// wisdom-1 20, `gateway: wisdom-gateway`).
const GTW_BLUE_GREEN: &str =
    include_str!("../../../testdata/charts/kserve-standard-gtw-blue-green/values.yaml");
/// The Gateway API Gateway of [`GTW_BLUE_GREEN`], in the test's namespace.
const GTW: &str = "wisdom-gateway";

/// The HTTPRoute's rules, each as its `branch` match value, or `split` for the rule without
/// matches.
fn rule_branches(route: &DynamicObject) -> Vec<String> {
    route.data["spec"]["rules"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    r["matches"][0]["headers"][0]["value"]
                        .as_str()
                        .unwrap_or("split")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Blue-green in Standard mode with the real KServe through a Gateway API Gateway (environment
/// `kserve-standard-gtw`): istiod turns our controller's HTTPRoute into the Gateway's Envoy's
/// routes; the weighted rule marks each request with `branch: <version>` and sends it back
/// through the Gateway's Service (`<gateway>-istio`, as Istio's automated deployment names it),
/// where the version's own rule rewrites the path to its model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_through_a_gateway_api_route_in_standard_mode_with_the_real_kserve() {
    if !netns::isolate(
        "blue_green_through_a_gateway_api_route_in_standard_mode_with_the_real_kserve",
    ) {
        return;
    }
    let started = Instant::now();
    let (env, iter8, client) = start("gtw").await;
    let ns = env.ns.clone();
    let ns = ns.as_str();
    let route = httproute_ar();
    // The Gateway and its Envoy (Service wisdom-gateway-istio), as Istio would deploy them.
    let r = env.dp.serve_gateway(ns, GTW).await;
    let gw = env.ok(r).await;
    eprintln!("everything up after {:?}", started.elapsed());

    // Both versions Ready (KServe says so); the controller writes the weighted HTTPRoute.
    assert!(GTW_BLUE_GREEN.contains(&format!("gateway: {GTW}\n")));
    helm_release(&env.cp, ns, "wisdom", GTW_BLUE_GREEN);
    env.wait_ready(&client, &["wisdom-0", "wisdom-1"]).await;
    let written = env
        .wait_obj(&client, &route, "wisdom", "the weighted HTTPRoute", |o| {
            rule_branches(o) == ["wisdom-0", "wisdom-1", "split"]
        })
        .await;
    let split = &written.data["spec"]["rules"][2]["backendRefs"];
    let weights: Vec<(&str, &str, i64)> = split
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap(),
                b["filters"][0]["requestHeaderModifier"]["set"][0]["value"]
                    .as_str()
                    .unwrap(),
                b["weight"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        [
            ("wisdom-gateway-istio", "wisdom-0", 80),
            ("wisdom-gateway-istio", "wisdom-1", 20)
        ],
        "{written:?}"
    );

    // Both versions answer through the Gateway.
    for version in ["wisdom-0", "wisdom-1"] {
        let what = format!("{version} to answer through Gateway {ns}/{GTW}");
        env.wait_answer_at(gw, &[], &what, |a| {
            a.status == 200 && a.app_version.as_deref() == Some(version)
        })
        .await;
    }
    eprintln!("both versions answer after {:?}", started.elapsed());
    // Istio accepted the route on the Gateway with every reference and filter resolved (a
    // backendRef filter it does not support would make ResolvedRefs False), and the Gateway's
    // Envoy splits by weight to the Gateway's own Service.
    let parent_ok = |o: &DynamicObject| {
        o.data["status"]["parents"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["parentRef"]["name"] == GTW
                    && ["Accepted", "ResolvedRefs"].iter().all(|t| {
                        p["conditions"].as_array().is_some_and(|cs| {
                            cs.iter().any(|c| c["type"] == *t && c["status"] == "True")
                        })
                    })
            })
        })
    };
    env.wait_obj(
        &client,
        &route,
        "wisdom",
        "Istio to accept the HTTPRoute on the Gateway",
        parent_ok,
    )
    .await;
    let dump = env.dp.gateway_config_dump(ns, GTW);
    let back = format!("outbound|80||wisdom-gateway-istio.{ns}.svc.cluster.local");
    assert!(
        dump.contains("weighted_clusters") && dump.contains(&back),
        "the Gateway's routes split to {back}: {dump}"
    );

    // 80/20, each answer from the model of the version that says it answered.
    let n = 300;
    let to_candidate = env.split(gw, n).await;
    // 20% of 300 is 60 (standard deviation 6.9).
    eprintln!("blue-green 80/20 through the Gateway: wisdom-1 answered {to_candidate} of {n}");
    assert!(
        (35..=85).contains(&to_candidate),
        "wisdom-1 answered {to_candidate} of {n} requests, want about 20%"
    );
    if let Err(e) = env.dp.check_healthy() {
        env.fail(&format!("{e:#}")).await;
    }

    // `helm delete` leaves nothing of the release (the Gateway is not the release's).
    env.delete_release(&client, &route, &["wisdom-0", "wisdom-1"])
        .await;
    iter8.assert_clean_log();
    env.stop().await;
    eprintln!("done after {:?}", started.elapsed());
}
