//! The tutorial's requests answered for real: the `iter8` controller writes the VirtualService,
//! a real istiod turns it into Envoy configuration, a real Envoy routes real HTTP requests and
//! real MLServer model servers answer them (see `testenv::dataplane`). Charts are installed
//! with the pinned `helm`, with the tutorial's values verbatim.
//!
//! Needs istiod, Envoy and MLServer from `testenv/setup.sh`; without them every test here
//! fails, naming what is missing.

#![allow(clippy::unwrap_used)]

mod infer;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use kube::api::{Api, DynamicObject};
use kube::Client;
use testenv::dataplane::{self, DataPlane};
use testenv::fixtures::{inference_service, virtual_service};
use testenv::metrics::Scrape;
use testenv::routes::route_names;
use testenv::{kserve, objects, workloads};

use infer::{http_client, infer, traffic, Answer, HttpClient};

const WAIT: Duration = Duration::from_secs(90);

/// Step 1 of the tutorial, verbatim (also a golden case of the release chart).
const STEP1: &str = include_str!("../../../testdata/charts/tutorial-step1/values.yaml");

/// Step 2 of the tutorial, verbatim (also a golden case of the release chart).
const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");

/// Step 3 of the tutorial, verbatim (also a golden case of the release chart).
const STEP3: &str = include_str!("../../../testdata/charts/tutorial-step3/values.yaml");

fn setup() -> (&'static testenv::ControlPlane, &'static DataPlane) {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let dp = dataplane::shared().unwrap_or_else(|e| panic!("{e:#}"));
    (cp, dp)
}

/// An `iter8 controller` process watching one namespace; killed when dropped.
struct Iter8 {
    child: Child,
    admin: u16,
}

impl Drop for Iter8 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Iter8 {
    fn start(kubeconfig: &Path, ns: &str, log_dir: &Path) -> Iter8 {
        let admin = testenv::process::free_port().unwrap();
        let log = std::fs::File::create(log_dir.join(format!("iter8-{ns}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_iter8"))
            .args(["controller", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--namespace", ns])
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .args(["--abn-address", "127.0.0.1:0", "--metrics-dir"])
            .arg(log_dir.join(format!("iter8-{ns}-metrics")))
            .env("POD_NAME", format!("iter8-{ns}"))
            .env_remove("CONFIG_FILE")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Iter8 { child, admin }
    }

    /// Its `/metrics`.
    fn metrics(&self) -> Scrape {
        testenv::metrics::scrape(self.admin).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits for evidence that the controller has reacted to what changed since `since` (its
    /// metrics then): it finished a reconcile that got to the apply step, has nothing queued
    /// or in progress, and `also` holds.
    async fn wait_reconciled(&self, what: &str, since: &Scrape, also: impl Fn(&Scrape) -> bool) {
        let done = |m: &Scrape| m.applies("applied") + m.applies("unchanged");
        testenv::wait_for(
            &format!("the controller to reconcile {what}"),
            WAIT,
            || async {
                let m = self.metrics();
                (m.reconciles_finished() > since.reconciles_finished()
                    && done(&m) > done(since)
                    && m.is_idle()
                    && also(&m))
                .then_some(())
            },
        )
        .await
        .unwrap();
    }
}

/// `helm upgrade --install RELEASE charts/release -n NS -f -` with `values` on stdin.
fn helm_upgrade(cp: &testenv::ControlPlane, ns: &str, release: &str, values: &str) {
    let args = ["upgrade", "--install", release, "charts/release", "-f", "-"];
    cp.helm(ns, &args, Some(values))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Sends requests until one satisfies `ok`; fails with the last answer and the data plane's
/// logs after `within`.
async fn wait_answer(
    dp: &DataPlane,
    client: &HttpClient,
    host: &str,
    test: bool,
    within: Duration,
    what: &str,
    ok: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = Instant::now() + within;
    let mut last = Err("no request sent".to_string());
    while Instant::now() < deadline {
        last = infer(client, dp.ingress(), host, traffic(test)).await;
        if let Ok(a) = &last {
            if ok(a) {
                return a.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dp.check_healthy().unwrap();
    panic!(
        "timed out after {within:?} waiting for {what}; last answer {last:?}; ingress routes: {}{}",
        dp.ingress_config_dump(),
        dp.diagnostics()
    );
}

/// Sends `n` requests and asserts each is a 200 from `version` serving model `model`.
async fn assert_answers(
    dp: &DataPlane,
    client: &HttpClient,
    host: &str,
    test: bool,
    n: usize,
    version: &str,
    model: &str,
) {
    for _ in 0..n {
        let a = infer(client, dp.ingress(), host, traffic(test))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "answer {a:?}");
        assert_eq!(
            a.app_version.as_deref(),
            Some(version),
            "answer {a:?} (traffic: test = {test})"
        );
        assert_eq!(a.model_name(), Some(version), "answer {a:?}");
        assert_eq!(a.model_version(), Some(model), "answer {a:?}");
    }
    dp.check_healthy().unwrap();
}

async fn vs_routes(client: &Client, ns: &str, name: &str) -> Vec<String> {
    objects::get(client, &virtual_service(), ns, name)
        .await
        .unwrap()
        .map(|vs| route_names(&vs))
        .unwrap_or_default()
}

async fn wait_isvc(client: &Client, ns: &str, name: &str, exists: bool) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &inference_service());
    testenv::wait_for(
        &format!("InferenceService {ns}/{name} exists = {exists}"),
        WAIT,
        || async { (api.get_opt(name).await.ok()?.is_some() == exists).then_some(()) },
    )
    .await
    .unwrap();
}

/// Stands in for KServe tearing down a deleted InferenceService, after the ingress Envoy no
/// longer routes to it (as a pod's termination grace period outlasts the route update).
async fn retire_when_unrouted(dp: &DataPlane, ns: &str, name: &str) {
    let needle = format!("{name}-predictor.{ns}.svc.cluster.local");
    testenv::wait_for(
        &format!("the ingress Envoy to stop routing to {name}"),
        WAIT,
        || async { (!dp.ingress_config_dump().contains(&needle)).then_some(()) },
    )
    .await
    .unwrap();
    dp.stop_inference_service(ns, name).await.unwrap();
}

/// Steps 1-3 of the tutorial, each checked with real requests through the ingress Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_steps_answered_by_real_model_servers() {
    let (cp, dp) = setup();
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace("tutorial").await.unwrap();
    let iter8 = Iter8::start(cp.kubeconfig_path(), &ns, dp.dir());
    let http = http_client();
    let host = format!("wisdom.{ns}");

    // Step 1: one version; with and without `traffic: test` wisdom-0 answers.
    helm_upgrade(cp, &ns, "wisdom", STEP1);
    wait_isvc(&kube, &ns, "wisdom-0", true).await;
    dp.serve_inference_service(&ns, "wisdom-0").await.unwrap();
    wait_answer(
        dp,
        &http,
        &host,
        false,
        WAIT,
        "step 1: wisdom-0 answers",
        |a| a.status == 200,
    )
    .await;
    assert_answers(dp, &http, &host, false, 10, "wisdom-0", "v0").await;
    assert_answers(dp, &http, &host, true, 10, "wisdom-0", "v0").await;

    // Step 2: the candidate is deployed; until it is ready everything stays on wisdom-0.
    let step1_vs = objects::get(&kube, &virtual_service(), &ns, "wisdom")
        .await
        .unwrap()
        .expect("the step-1 VirtualService");
    let step1 = iter8.metrics();
    helm_upgrade(cp, &ns, "wisdom", STEP2);
    wait_isvc(&kube, &ns, "wisdom-1", true).await;
    // Evidence that the controller has taken step 2 in: its store holds wisdom-1, and it
    // finished a reconcile since the upgrade (what the upgrade changes for the controller is
    // the routemap, and wisdom-1, which only the new routemap reads).
    let isvcs = |m: &Scrape| {
        m.get(
            "iter8_watched_objects",
            Some(("resource", "inferenceservices.serving.kserve.io")),
        )
    };
    iter8
        .wait_reconciled("the step-2 routemap", &step1, |m| isvcs(m) >= 2.0)
        .await;
    // KServe's first status for the candidate, not ready; evidence that the controller
    // reconciled after it, from a store that has all of step 2.
    let seen = iter8.metrics();
    kserve::report(&kube, &ns, "wisdom-1", false, 1)
        .await
        .unwrap();
    iter8
        .wait_reconciled("wisdom-1's not-ready status", &seen, |_| true)
        .await;
    // ... and wrote nothing.
    assert_eq!(
        iter8.metrics().applies("applied"),
        step1.applies("applied"),
        "routing was written before wisdom-1 was ready"
    );
    let vs = objects::get(&kube, &virtual_service(), &ns, "wisdom")
        .await
        .unwrap()
        .expect("the VirtualService");
    assert_eq!(route_names(&vs), ["wisdom-0"]);
    assert_eq!(
        vs.metadata.resource_version, step1_vs.metadata.resource_version,
        "routing was written before wisdom-1 was ready"
    );
    assert_answers(dp, &http, &host, true, 10, "wisdom-0", "v0").await;
    dp.serve_inference_service(&ns, "wisdom-1").await.unwrap();
    let ready = Instant::now();
    wait_answer(
        dp,
        &http,
        &host,
        true,
        WAIT,
        "step 2: wisdom-1 answers `traffic: test`",
        |a| a.app_version.as_deref() == Some("wisdom-1"),
    )
    .await;
    eprintln!(
        "candidate ready -> first request it answered: {:?} (controller + istiod push)",
        ready.elapsed()
    );
    assert_answers(dp, &http, &host, true, 10, "wisdom-1", "v1").await;
    assert_answers(dp, &http, &host, false, 10, "wisdom-0", "v0").await;

    // Step 3: promote; wisdom-0 now has the candidate's spec and is answered by the promoted
    // model, wisdom-1 goes away.
    helm_upgrade(cp, &ns, "wisdom", STEP3);
    wait_isvc(&kube, &ns, "wisdom-1", false).await;
    dp.serve_inference_service(&ns, "wisdom-0").await.unwrap();
    assert_eq!(
        dp.served_variant(&ns, "wisdom-0").await.as_deref(),
        Some("v1")
    );
    retire_when_unrouted(dp, &ns, "wisdom-1").await;
    wait_answer(
        dp,
        &http,
        &host,
        true,
        WAIT,
        "step 3: the promoted model answers",
        |a| a.app_version.as_deref() == Some("wisdom-0") && a.model_version() == Some("v1"),
    )
    .await;
    assert_answers(dp, &http, &host, true, 10, "wisdom-0", "v1").await;
    assert_answers(dp, &http, &host, false, 10, "wisdom-0", "v1").await;
    assert_eq!(vs_routes(&kube, &ns, "wisdom").await, ["wisdom-0"]);
}

/// One continuous load (~50 requests/s, bounded) through a whole rollout: candidate deployed,
/// ready, promoted. No request fails and none reaches a version before it is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_load_through_a_rollout_never_fails() {
    let (cp, dp) = setup();
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace("load").await.unwrap();
    let _iter8 = Iter8::start(cp.kubeconfig_path(), &ns, dp.dir());
    let http = http_client();
    let host = format!("wisdom.{ns}");
    helm_upgrade(cp, &ns, "wisdom", STEP1);
    wait_isvc(&kube, &ns, "wisdom-0", true).await;
    dp.serve_inference_service(&ns, "wisdom-0").await.unwrap();
    wait_answer(dp, &http, &host, true, WAIT, "wisdom-0 answers", |a| {
        a.status == 200
    })
    .await;

    // The load: every 20 ms one request, alternating `traffic: test`; at most 9,000 (3 min).
    let t0 = Instant::now();
    let stop = Arc::new(AtomicU64::new(0));
    let sent_count = Arc::new(AtomicU64::new(0));
    let load = {
        let (http, host, stop, sent_count) =
            (http.clone(), host.clone(), stop.clone(), sent_count.clone());
        let ingress = dp.ingress();
        tokio::spawn(async move {
            let mut log = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..9_000u32 {
                if stop.load(Ordering::Relaxed) > 0 {
                    break;
                }
                tick.tick().await;
                let sent = t0.elapsed();
                let test = i % 2 == 0;
                let a = infer(&http, ingress, &host, traffic(test)).await;
                log.push((sent, test, a));
                sent_count.fetch_add(1, Ordering::Relaxed);
            }
            log
        })
    };

    helm_upgrade(cp, &ns, "wisdom", STEP2);
    wait_isvc(&kube, &ns, "wisdom-1", true).await;
    dp.serve_inference_service(&ns, "wisdom-1").await.unwrap();
    let candidate_ready = t0.elapsed();
    wait_answer(dp, &http, &host, true, WAIT, "wisdom-1 answers", |a| {
        a.app_version.as_deref() == Some("wisdom-1")
    })
    .await;
    helm_upgrade(cp, &ns, "wisdom", STEP3);
    wait_isvc(&kube, &ns, "wisdom-1", false).await;
    dp.serve_inference_service(&ns, "wisdom-0").await.unwrap();
    let promoted_ready = t0.elapsed();
    retire_when_unrouted(dp, &ns, "wisdom-1").await;
    wait_answer(
        dp,
        &http,
        &host,
        true,
        WAIT,
        "the promoted model answers",
        |a| a.model_version() == Some("v1"),
    )
    .await;
    // Keep the load on the promoted model for another 100 requests.
    let promoted_at = sent_count.load(Ordering::Relaxed);
    testenv::wait_for("100 requests after the promotion", WAIT, || {
        let n = sent_count.load(Ordering::Relaxed);
        async move { (n >= promoted_at + 100).then_some(()) }
    })
    .await
    .unwrap();
    stop.store(1, Ordering::Relaxed);
    let log = load.await.unwrap();

    let secs = log.last().map(|l| l.0.as_secs_f64()).unwrap_or(1.0);
    eprintln!(
        "{} requests in {secs:.1}s ({:.0}/s); candidate ready at {candidate_ready:?}, promoted model ready at {promoted_ready:?}",
        log.len(),
        log.len() as f64 / secs
    );
    assert!(log.len() > 200, "too few requests: {}", log.len());
    let mut first_candidate = None;
    for (sent, test, a) in &log {
        let a = a
            .as_ref()
            .unwrap_or_else(|e| panic!("request sent at {sent:?} failed: {e}"));
        assert_eq!(a.status, 200, "request sent at {sent:?}: {a:?}");
        let v = a.app_version.as_deref().unwrap_or("none");
        match v {
            // The promoted model (v1) may answer a little before its status says Ready: like
            // Knative, the harness routes to a revision once it answers, then writes Ready.
            "wisdom-0" => assert_eq!(a.model_name(), Some("wisdom-0"), "{a:?}"),
            "wisdom-1" => {
                assert!(
                    *test,
                    "a request without `traffic: test` reached wisdom-1: {a:?}"
                );
                assert!(
                    *sent >= candidate_ready,
                    "a request sent at {sent:?} reached wisdom-1, ready only at {candidate_ready:?}"
                );
                first_candidate.get_or_insert(*sent);
            }
            other => panic!("request sent at {sent:?} answered by {other}: {a:?}"),
        }
    }
    // The promoted model answers only once its revision is ready (the old one serves until then).
    let first_v1 = log
        .iter()
        .filter(|(_, _, a)| a.as_ref().unwrap().app_version.as_deref() == Some("wisdom-0"))
        .find(|(_, _, a)| a.as_ref().unwrap().model_version() == Some("v1"))
        .map(|l| l.0)
        .expect("the promoted model answered");
    eprintln!(
        "first load request answered by wisdom-1 sent at {first_candidate:?}; first by wisdom-0 with the promoted model at {first_v1:?}"
    );
    dp.check_healthy().unwrap();
}

/// A tiny HTTP backend standing in for a Deployment's pod: answers 200 and counts requests
/// (and those whose Host ends in `-shadow`, Envoy's mark on mirrored copies).
struct Backend {
    hits: Arc<AtomicU64>,
    shadow_hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn backend(ip: Ipv4Addr, port: u16, name: &'static str) -> Backend {
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .unwrap_or_else(|e| panic!("binding {ip}:{port}: {e}"));
    let hits = Arc::new(AtomicU64::new(0));
    let shadow_hits = Arc::new(AtomicU64::new(0));
    let (h, s) = (hits.clone(), shadow_hits.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (h, s) = (h.clone(), s.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        h.fetch_add(1, Ordering::Relaxed);
                        if host.split(':').next().unwrap_or("").ends_with("-shadow") {
                            s.fetch_add(1, Ordering::Relaxed);
                        }
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(format!("{{\"backend\": \"{name}\"}}")),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        hits,
        shadow_hits,
        task,
    }
}

/// Stands in for kubelet + the deployment controller: a backend for Deployment `ns/name` at a
/// loopback address (port 80, the chart's Service targetPort), registered by a WorkloadEntry
/// with the pod labels, then the Deployment's status written Available as
/// kube-controller-manager writes it.
async fn run_deployment(kube: &Client, ns: &str, name: &'static str) -> Backend {
    let ip = dataplane::next_ip().unwrap();
    let b = backend(ip, 80, name).await;
    let labels = BTreeMap::from([("app".to_string(), name.to_string())]);
    dataplane::register_workload(kube, ns, name, &labels, ip, None)
        .await
        .unwrap();
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(kube.clone(), ns);
    let d = testenv::wait_for(&format!("Deployment {name}"), WAIT, || async {
        deploys.get_opt(name).await.ok().flatten()
    })
    .await
    .unwrap();
    let generation = d.metadata.generation.unwrap_or(1);
    workloads::write(kube, ns, name, workloads::State::Available, generation)
        .await
        .unwrap();
    b
}

async fn simple(
    client: &HttpClient,
    ingress: SocketAddr,
    host: &str,
) -> Result<(u16, Option<String>), String> {
    let req = hyper::Request::get(format!("http://{ingress}/get"))
        .header("Host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let v = resp
        .headers()
        .get("app-version")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok((status, v))
}

fn deployment_values(strategy: &str) -> String {
    format!(
        "environment: deployment-istio
gateway: knative-serving/knative-ingress-gateway
application:
  metadata:
    labels:
      app.kubernetes.io/name: httpbin
  versions:
  - image: kennethreitz/httpbin
    weight: 30
  - image: kennethreitz/httpbin
    weight: 70
  strategy: {strategy}
"
    )
}

/// deployment-istio blue-green 30/70: over 1,000 requests the split is within 5 points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_splits_real_traffic_30_70() {
    let (cp, dp) = setup();
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace("bluegreen").await.unwrap();
    let _iter8 = Iter8::start(cp.kubeconfig_path(), &ns, dp.dir());
    let http = http_client();
    let host = format!("httpbin.{ns}");
    helm_upgrade(cp, &ns, "httpbin", &deployment_values("blue-green"));
    let b0 = run_deployment(&kube, &ns, "httpbin-0").await;
    let b1 = run_deployment(&kube, &ns, "httpbin-1").await;
    let deadline = Instant::now() + WAIT;
    loop {
        // Until both versions are routed (the controller, then istiod's push).
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            if let Ok((200, Some(v))) = simple(&http, dp.ingress(), &host).await {
                seen.insert(v);
            }
        }
        if seen.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both versions never answered; {}",
            dp.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = (
        b0.hits.load(Ordering::Relaxed),
        b1.hits.load(Ordering::Relaxed),
    );
    let mut counts = BTreeMap::<String, u32>::new();
    for _ in 0..1_000 {
        let (status, v) = simple(&http, dp.ingress(), &host).await.unwrap();
        assert_eq!(status, 200);
        *counts.entry(v.unwrap_or_default()).or_default() += 1;
    }
    let share0 = f64::from(counts.get("httpbin-0").copied().unwrap_or(0)) / 10.0;
    eprintln!("blue-green 30/70 over 1,000 requests: {counts:?}");
    assert!(
        (share0 - 30.0).abs() <= 5.0,
        "httpbin-0 got {share0}% of 1,000, want 30 ± 5: {counts:?}"
    );
    assert_eq!(counts.values().sum::<u32>(), 1_000);
    // The header tells the truth: the backends saw the same split.
    let hits0 = b0.hits.load(Ordering::Relaxed) - before.0;
    let hits1 = b1.hits.load(Ordering::Relaxed) - before.1;
    assert_eq!(hits0 + hits1, 1_000);
    assert_eq!(
        u64::from(counts.get("httpbin-0").copied().unwrap_or(0)),
        hits0
    );
    dp.check_healthy().unwrap();
}

/// deployment-istio mirror: the client sees only the primary; the candidate receives
/// mirrored copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_reach_the_candidate_and_clients_see_only_the_primary() {
    let (cp, dp) = setup();
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace("mirror").await.unwrap();
    let _iter8 = Iter8::start(cp.kubeconfig_path(), &ns, dp.dir());
    let http = http_client();
    let host = format!("httpbin.{ns}");
    helm_upgrade(cp, &ns, "httpbin", &deployment_values("mirror"));
    let b0 = run_deployment(&kube, &ns, "httpbin-0").await;
    let b1 = run_deployment(&kube, &ns, "httpbin-1").await;
    // Wait until copies arrive (the candidate is ready, the mirror routed).
    let deadline = Instant::now() + WAIT;
    while b1.hits.load(Ordering::Relaxed) == 0 {
        let _ = simple(&http, dp.ingress(), &host).await;
        assert!(
            Instant::now() < deadline,
            "no mirrored copy arrived; routes {}",
            dp.ingress_config_dump()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = (
        b0.hits.load(Ordering::Relaxed),
        b1.hits.load(Ordering::Relaxed),
        b1.shadow_hits.load(Ordering::Relaxed),
    );
    for _ in 0..200 {
        let (status, v) = simple(&http, dp.ingress(), &host).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            v.as_deref(),
            Some("httpbin-0"),
            "clients must see only the primary"
        );
    }
    // Mirrored copies are sent in the background: wait until about 70% of them have arrived.
    testenv::wait_for("the mirrored copies", WAIT, || {
        let copies = b1.hits.load(Ordering::Relaxed) - before.1;
        async move { (copies >= 100).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; candidate got {} copies of 200",
            b1.hits.load(Ordering::Relaxed) - before.1
        )
    });
    let primary = b0.hits.load(Ordering::Relaxed) - before.0;
    // Every request the candidate gets is a copy: no client ever saw it answer. (Istio sets
    // disable_shadow_host_suffix_append, so copies keep their Host; counted for the log.)
    let copies = b1.hits.load(Ordering::Relaxed) - before.1;
    let suffixed = b1.shadow_hits.load(Ordering::Relaxed) - before.2;
    eprintln!(
        "mirror: primary {primary}, candidate copies {copies} of 200 (mirrorPercentage 70), {suffixed} with a -shadow Host"
    );
    assert_eq!(primary, 200);
    assert!(
        (100..=180).contains(&copies),
        "mirrored copies {copies} of 200, want about 70%"
    );
    dp.check_healthy().unwrap();
}
