//! Automated analysis end to end (issue 13), with the real data plane and real requests: the
//! tutorial's application released with an `analysis` block, each InferenceService served by
//! a real MLServer, requests through the ingress Envoy, a real Prometheus (built by
//! `testenv/setup.sh`) scraping the model servers, and the controller run as its chart's pod
//! would run it. The metrics are MLServer's own (`testenv::prometheus` lists them): the error
//! ratio of each version over the interval, with a sample-size guard on its request count.
//!
//! A faulty candidate is a real model server that fails a share of its inference requests
//! (`testenv.iter8.tools/error-share` on its InferenceService, see `testenv::dataplane`).
//!
//! The tests run one at a time (they share two cores, and their timing is what they judge),
//! each in its own namespace with its own controller. Nothing sleeps to wait for a decision:
//! every wait is for a condition with a deadline.

#![allow(clippy::unwrap_used)]

mod e2e;
mod infer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{cm_ar, helm, helm_release, install_controller, isvc_ar, vs_ar};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};
use testenv::dataplane::{self, DataPlane, ERROR_SHARE_ANNOTATION};
use testenv::prometheus::Prometheus;

use infer::{http_client, infer, traffic, HttpClient};

/// Step 2 of the tutorial (both versions deployed).
const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");
/// Concurrent clients of the steady load.
const CLIENTS: usize = 6;

/// One test at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The error ratio of a version over the interval, and its request count (MLServer's metrics).
const ERROR_RATIO: &str = r#"sum(increase(model_infer_request_failure_total{namespace="{{ namespace }}",isvc="{{ version.name }}"}[{{ interval }}])) / sum(increase(model_infer_request_duration_count{namespace="{{ namespace }}",isvc="{{ version.name }}"}[{{ interval }}]))"#;
const REQUESTS: &str = r#"sum(increase(model_infer_request_duration_count{namespace="{{ namespace }}",isvc="{{ version.name }}"}[{{ interval }}]))"#;

/// The tutorial's step 2 with `strategy` and an analysis block judging the error ratio.
fn values(strategy: &str, prometheus: &str, analysis: &str) -> String {
    let base = STEP2.replace("strategy: canary", &format!("strategy: {strategy}"));
    let indented: String = analysis.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "{base}\n  analysis:\n    provider: {{prometheus: {{address: \"{prometheus}\"}}}}\n    sampleSize:\n      query: '{REQUESTS}'\n      min: 5\n    metrics:\n    - name: error-ratio\n      query: '{ERROR_RATIO}'\n      thresholdRange: {{max: 0.05}}\n{indented}"
    )
}

/// One answer of the steady load.
#[derive(Clone, Debug)]
struct Answer {
    /// When the request was sent.
    sent: Instant,
    status: u16,
    version: Option<String>,
}

/// Requests sent through the ingress, as fast as `CLIENTS` clients get answers, until stopped.
struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One request of the load: its answer, or status 0 if none came.
async fn send(client: &HttpClient, ingress: SocketAddr, host: &str, test: bool) -> Answer {
    let sent = Instant::now();
    let answer = infer(client, ingress, host, traffic(test)).await;
    Answer {
        sent,
        status: answer.as_ref().map_or(0, |a| a.status),
        version: answer.ok().and_then(|a| a.app_version),
    }
}

impl Load {
    fn start(dp: &DataPlane, ns: &str, test: bool) -> Load {
        let client = http_client();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let host = format!("wisdom.{ns}");
        let ingress = dp.ingress();
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (client, answers, stopped, host) = (
                    client.clone(),
                    answers.clone(),
                    stopped.clone(),
                    host.clone(),
                );
                tokio::spawn(async move {
                    while !*stopped.borrow() {
                        let a = send(&client, ingress, &host, test).await;
                        answers.lock().unwrap().push(a);
                    }
                })
            })
            .collect();
        Load {
            answers,
            stop,
            tasks,
        }
    }

    fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<Answer> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.answers.lock().unwrap().clone()
    }
}

/// The candidate's weight in the VirtualService (blue-green: its destination in the `split`
/// route; 0 when absent), or `None` while there is no VirtualService.
fn candidate_weight(vs: &DynamicObject) -> u32 {
    let routes = vs.data["spec"]["http"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let split = routes.iter().find(|r| r["name"] == "split");
    let Some(split) = split else {
        // No split: only one version is routed (the one with a route of its own).
        let names: Vec<&str> = routes.iter().filter_map(|r| r["name"].as_str()).collect();
        return if names.contains(&"wisdom-1") && !names.contains(&"wisdom-0") {
            100
        } else {
            0
        };
    };
    let dests = split["route"].as_array().cloned().unwrap_or_default();
    let total: u64 = dests
        .iter()
        .map(|d| d["weight"].as_u64().unwrap_or(100))
        .sum();
    let candidate: u64 = dests
        .iter()
        .filter(|d| d["headers"]["request"]["set"]["branch"] == "wisdom-1")
        .map(|d| d["weight"].as_u64().unwrap_or(100))
        .sum();
    (candidate * 100).checked_div(total).unwrap_or(0) as u32
}

/// Records the candidate's weight in the VirtualService over time (polled every 100 ms).
struct WeightLog {
    changes: Arc<Mutex<Vec<(Instant, u32)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WeightLog {
    fn start(kube: &kube::Client, ns: &str) -> WeightLog {
        let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), ns, &vs_ar());
        let changes = Arc::new(Mutex::new(Vec::<(Instant, u32)>::new()));
        let c = changes.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(Some(vs)) = api.get_opt("wisdom").await {
                    let w = candidate_weight(&vs);
                    let mut c = c.lock().unwrap();
                    if c.last().map(|(_, last)| *last) != Some(w) {
                        c.push((Instant::now(), w));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        WeightLog { changes, task }
    }

    fn changes(&self) -> Vec<(Instant, u32)> {
        self.changes.lock().unwrap().clone()
    }
}

impl Drop for WeightLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The analysis state the controller stored for `wisdom`.
async fn state(kube: &kube::Client, ns: &str) -> Option<Value> {
    let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), ns, &cm_ar());
    let cm = api.get_opt("wisdom-routemap-analysis").await.ok()??;
    serde_json::from_str(cm.data["data"]["state"].as_str()?).ok()
}

/// Waits until the stored state satisfies `ok`; returns it.
async fn wait_state(
    kube: &kube::Client,
    ns: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let last = Arc::new(Mutex::new(None));
    let l = last.clone();
    let ok = &ok;
    let found = testenv::wait_for(what, within, || {
        let l = l.clone();
        async move {
            let s = state(kube, ns).await;
            *l.lock().unwrap() = s.clone();
            s.filter(|s| ok(s))
        }
    })
    .await;
    found.unwrap_or_else(|e| {
        panic!(
            "{e:#}; last state: {:#}",
            last.lock().unwrap().clone().unwrap_or(Value::Null)
        )
    })
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// Releases the application and serves both versions; the candidate with `error_share`.
async fn release(
    cp: &testenv::ControlPlane,
    dp: &DataPlane,
    ns: &str,
    values: &str,
    error_share: Option<f64>,
) {
    helm_release(cp, ns, "wisdom", values);
    if let Some(share) = error_share {
        let kube = cp.client().await.unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(kube, ns, &isvc_ar());
        let patch =
            json!({"metadata": {"annotations": {ERROR_SHARE_ANNOTATION: share.to_string()}}});
        api.patch("wisdom-1", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    // The candidate is ready first: it must still get nothing until the primary is ready
    // too (it would be the only destination), and then only the first step's share.
    dp.serve_inference_service(ns, "wisdom-1").await.unwrap();
    dp.serve_inference_service(ns, "wisdom-0").await.unwrap();
}

async fn setup(
    prefix: &str,
) -> (
    &'static testenv::ControlPlane,
    &'static DataPlane,
    &'static Prometheus,
    kube::Client,
    String,
) {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let dp: &DataPlane = dataplane::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let prom = dp.prometheus().await.unwrap_or_else(|e| panic!("{e:#}"));
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace(prefix).await.unwrap();
    (cp, dp, prom, kube, ns)
}

async fn teardown(cp: &testenv::ControlPlane, dp: &DataPlane, ns: &str) {
    helm(cp, ns, &["uninstall", "wisdom"], None);
    dp.stop_inference_service(ns, "wisdom-0").await.unwrap();
    dp.stop_inference_service(ns, "wisdom-1").await.unwrap();
}

/// Share of `answers` sent within `[from, to)` that `wisdom-1` answered, and how many.
fn split(answers: &[Answer], from: Instant, to: Instant) -> (f64, usize) {
    let window: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent >= from && a.sent < to && a.status == 200)
        .collect();
    let candidate = window
        .iter()
        .filter(|a| a.version.as_deref() == Some("wisdom-1"))
        .count();
    (candidate as f64 / window.len().max(1) as f64, window.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_candidate_ramps_step_by_step_under_load_and_the_observed_split_follows() {
    let _serial = SERIAL.lock().await;
    let (cp, dp, prom, kube, ns) = setup("analysis-good").await;
    let _iter8 = install_controller(cp, &ns, false, &[]).await;
    let steps = [10u32, 25, 50, 100];
    let passes = 2;
    let interval = 4;
    let v = values(
        "blue-green",
        &prom.address(),
        &format!("interval: {interval}s\nsteps: [10, 25, 50, 100]\npassesPerStep: {passes}"),
    );
    let weights = WeightLog::start(&kube, &ns);
    release(cp, dp, &ns, &v, None).await;
    let load = Load::start(dp, &ns, false);
    let t0 = Instant::now();
    let expected = steps.len() as u64 * passes;
    let done = wait_state(
        &kube,
        &ns,
        Duration::from_secs(interval * (expected + 8) + 30),
        "the candidate to be promoted",
        |s| phase(s) == "Promoted" || phase(s) == "RolledBack",
    )
    .await;
    let took = t0.elapsed();
    // A little traffic at 100 % after the promotion.
    let at_full = Instant::now();
    testenv::wait_for(
        "answers after the promotion",
        Duration::from_secs(30),
        || {
            let n = load
                .answers()
                .iter()
                .filter(|a| a.sent > at_full + Duration::from_secs(1))
                .count();
            async move { (n >= 200).then_some(()) }
        },
    )
    .await
    .unwrap();
    let answers = load.stop().await;
    assert_eq!(phase(&done), "Promoted", "{done:#}");
    let history = done["history"].as_array().unwrap();
    let outcomes: Vec<&str> = history
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    eprintln!(
        "promoted after {took:?}, {} evaluations: {outcomes:?}",
        done["evaluations"]
    );
    // Every step, in order, each after `passes` passing evaluations: no step skipped; with
    // steady load nothing is inconclusive, so it takes exactly the expected evaluations.
    assert_eq!(done["evaluations"].as_u64(), Some(expected), "{done:#}");
    let judged: Vec<u64> = history
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(judged, vec![0, 0, 1, 1, 2, 2, 3, 3], "{done:#}");
    assert!(outcomes.iter().all(|o| *o == "Pass"), "{outcomes:?}");

    // The VirtualService went through every step in order, then to 100 %.
    let changes = weights.changes();
    let seen: Vec<u32> = changes.iter().map(|(_, w)| *w).collect();
    assert_eq!(
        seen,
        vec![0, 10, 25, 50, 100],
        "VirtualService weights over time"
    );
    // The split answers saw at each step (skipping a second after each change, for Envoy to
    // get the route) is the step's weight, within 5 points.
    let ends: Vec<Instant> = changes
        .iter()
        .skip(2)
        .map(|(t, _)| *t)
        .chain([Instant::now()])
        .collect();
    for ((start, w), end) in changes.iter().skip(1).zip(ends) {
        let (share, n) = split(
            &answers,
            *start + Duration::from_secs(1),
            end - Duration::from_millis(200),
        );
        eprintln!(
            "step {w}%: {:.1}% of {n} answers from the candidate",
            share * 100.0
        );
        assert!(
            n >= 200,
            "step {w}%: only {n} answers to judge the split by"
        );
        assert!(
            (share * 100.0 - f64::from(*w)).abs() <= 5.0,
            "step {w}%: the candidate answered {:.1}% of {n} requests",
            share * 100.0
        );
    }
    let errors = answers.iter().filter(|a| a.status != 200).count();
    assert_eq!(errors, 0, "failed requests during the ramp");
    teardown(cp, dp, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_rolled_back_within_the_failure_limit_and_stays_rolled_back() {
    let _serial = SERIAL.lock().await;
    let (cp, dp, prom, kube, ns) = setup("analysis-bad").await;
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let interval = 3;
    let v = values(
        "blue-green",
        &prom.address(),
        &format!("interval: {interval}s\nsteps: [20, 50, 100]\nfailureLimit: 2"),
    );
    let weights = WeightLog::start(&kube, &ns);
    release(cp, dp, &ns, &v, Some(0.5)).await;
    let load = Load::start(dp, &ns, false);
    let done = wait_state(
        &kube,
        &ns,
        Duration::from_secs(interval * 10 + 30),
        "the candidate to be rolled back",
        |s| phase(s) == "RolledBack" || phase(s) == "Promoted",
    )
    .await;
    assert_eq!(phase(&done), "RolledBack", "{done:#}");
    let outcomes: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    // Rolled back at the second failure, at the first step.
    assert_eq!(done["failures"].as_u64(), Some(2), "{done:#}");
    assert_eq!(done["step"].as_u64(), Some(0), "{done:#}");
    assert_eq!(
        outcomes.iter().filter(|o| **o == "Fail").count(),
        2,
        "{outcomes:?}"
    );
    // Routing is back on the primary alone; once Envoy has it, no client sees an error.
    let back = testenv::wait_for(
        "the VirtualService to route the primary alone",
        Duration::from_secs(30),
        || {
            let w = weights.changes();
            async move { w.last().filter(|(_, w)| *w == 0).map(|(t, _)| *t) }
        },
    )
    .await
    .unwrap();
    let after = back + Duration::from_secs(1);
    testenv::wait_for(
        "300 answers after the rollback",
        Duration::from_secs(60),
        || {
            let n = load.answers().iter().filter(|a| a.sent > after).count();
            async move { (n >= 300).then_some(()) }
        },
    )
    .await
    .unwrap();
    let answers = load.stop().await;
    let during: usize = answers
        .iter()
        .filter(|a| a.sent < back && a.status != 200)
        .count();
    let late: Vec<&Answer> = answers.iter().filter(|a| a.sent > after).collect();
    eprintln!(
        "{} errors before the rollback; after it {} answers, {} errors, {} from the candidate",
        during,
        late.len(),
        late.iter().filter(|a| a.status != 200).count(),
        late.iter()
            .filter(|a| a.version.as_deref() == Some("wisdom-1"))
            .count()
    );
    assert!(
        during > 0,
        "the faulty candidate answered errors before the rollback"
    );
    assert!(late
        .iter()
        .all(|a| a.status == 200 && a.version.as_deref() == Some("wisdom-0")));
    let warnings = testenv::events::wait_warning(
        &kube,
        &ns,
        "wisdom-routemap",
        &["AnalysisRolledBack", "failed 2 of 2"],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    eprintln!("{warnings}");

    // A restarted controller keeps it rolled back: it reads the state, decides nothing new,
    // and the routing does not flap back to the candidate.
    let stored = state(&kube, &ns).await.unwrap();
    drop(iter8);
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    testenv::wait_for(
        "the new controller to report the rolled-back analysis",
        Duration::from_secs(30),
        || async {
            let m = iter8.metrics().await;
            m.lines()
                .any(|l| {
                    l.starts_with("iter8_analysis_phase{")
                        && l.contains("phase=\"RolledBack\"")
                        && l.ends_with(" 1")
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Proof it has seen everything: both InferenceServices watched, every reconcile done.
    iter8
        .settled("inferenceservices.serving.kserve.io", 2)
        .await;
    assert_eq!(
        state(&kube, &ns).await.unwrap(),
        stored,
        "the state after the restart"
    );
    let seen: Vec<u32> = weights.changes().iter().map(|(_, w)| *w).collect();
    assert_eq!(
        seen,
        vec![0, 20, 0],
        "VirtualService weights over time: no flapping"
    );
    drop(iter8);
    teardown(cp, dp, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_the_analysis_holds_and_resumes_by_itself_when_load_starts() {
    let _serial = SERIAL.lock().await;
    let (cp, dp, prom, kube, ns) = setup("analysis-quiet").await;
    let _iter8 = install_controller(cp, &ns, false, &[]).await;
    let v = values(
        "blue-green",
        &prom.address(),
        "interval: 2s\nsteps: [30, 100]",
    );
    release(cp, dp, &ns, &v, None).await;
    // Quiet: several evaluations, all inconclusive, and the candidate keeps its first step.
    let quiet = wait_state(
        &kube,
        &ns,
        Duration::from_secs(60),
        "three quiet evaluations",
        |s| s["evaluations"].as_u64().unwrap_or(0) >= 3,
    )
    .await;
    assert_eq!(phase(&quiet), "Progressing", "{quiet:#}");
    assert_eq!(quiet["step"].as_u64(), Some(0), "{quiet:#}");
    let outcomes: Vec<&str> = quiet["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.iter().all(|o| *o == "Inconclusive"),
        "{outcomes:?}"
    );
    assert!(
        quiet["message"].as_str().unwrap().contains("holding"),
        "{quiet:#}"
    );
    // Load starts: the analysis goes on by itself.
    let load = Load::start(dp, &ns, false);
    let done = wait_state(
        &kube,
        &ns,
        Duration::from_secs(60),
        "the promotion once traffic flows",
        |s| phase(s) != "Progressing",
    )
    .await;
    load.stop().await;
    assert_eq!(phase(&done), "Promoted", "{done:#}");
    teardown(cp, dp, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_judged_on_its_header_traffic_then_promotion_sends_every_request_to_it() {
    let _serial = SERIAL.lock().await;
    let (cp, dp, prom, kube, ns) = setup("analysis-canary").await;
    let _iter8 = install_controller(cp, &ns, false, &[]).await;
    let v = values("canary", &prom.address(), "interval: 3s\npassesPerStep: 2");
    release(cp, dp, &ns, &v, None).await;
    // Only requests with the header reach the candidate while it is judged.
    let tests = Load::start(dp, &ns, true);
    let others = Load::start(dp, &ns, false);
    let done = wait_state(
        &kube,
        &ns,
        Duration::from_secs(90),
        "the canary to be promoted",
        |s| phase(s) == "Promoted" || phase(s) == "RolledBack",
    )
    .await;
    assert_eq!(phase(&done), "Promoted", "{done:#}");
    let promoted_at = Instant::now();
    let (tests, others) = (tests.stop().await, others.stop().await);
    let judged: Vec<&Answer> = others.iter().filter(|a| a.sent < promoted_at).collect();
    assert!(
        judged
            .iter()
            .all(|a| a.version.as_deref() == Some("wisdom-0")),
        "while judged, requests without the header stay on the primary"
    );
    assert!(tests
        .iter()
        .any(|a| a.version.as_deref() == Some("wisdom-1")));
    // After the promotion every request goes to the candidate, with or without the header.
    let client = http_client();
    let host = format!("wisdom.{ns}");
    testenv::wait_for(
        "requests without the header to reach the candidate",
        Duration::from_secs(30),
        || async {
            let a = send(&client, dp.ingress(), &host, false).await;
            (a.version.as_deref() == Some("wisdom-1")).then_some(())
        },
    )
    .await
    .unwrap();
    for test in [false, true] {
        for _ in 0..20 {
            let a = send(&client, dp.ingress(), &host, test).await;
            assert_eq!(
                (a.status, a.version.as_deref()),
                (200, Some("wisdom-1")),
                "traffic: test = {test}"
            );
        }
    }
    let vs = Api::<DynamicObject>::namespaced_with(kube.clone(), &ns, &vs_ar())
        .get("wisdom")
        .await
        .unwrap();
    assert!(
        !vs.data["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "wisdom-0"),
        "no route to the primary after the promotion: {:#}",
        vs.data["spec"]
    );
    let status = Api::<DynamicObject>::namespaced_with(kube.clone(), &ns, &cm_ar())
        .get("wisdom-routemap-analysis")
        .await
        .unwrap();
    assert!(
        status.data["data"]["message"]
            .as_str()
            .unwrap()
            .contains("helm upgrade"),
        "the status says which values change finishes the promotion: {:#}",
        status.data["data"]
    );
    teardown(cp, dp, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_outage_gives_errors_and_warnings_never_a_rollback_and_analysis_resumes() {
    let _serial = SERIAL.lock().await;
    let (cp, dp, prom, kube, ns) = setup("analysis-outage").await;
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let v = values(
        "blue-green",
        &prom.address(),
        "interval: 2s\nsteps: [20, 40, 100]\npassesPerStep: 2",
    );
    release(cp, dp, &ns, &v, None).await;
    let load = Load::start(dp, &ns, false);
    wait_state(
        &kube,
        &ns,
        Duration::from_secs(60),
        "the first passing evaluation",
        |s| {
            s["history"]
                .as_array()
                .is_some_and(|h| h.iter().any(|e| e["outcome"] == "Pass"))
        },
    )
    .await;
    prom.stop();
    let down = wait_state(
        &kube,
        &ns,
        Duration::from_secs(60),
        "three evaluations with errors",
        |s| s["errors"].as_u64().unwrap_or(0) >= 3,
    )
    .await;
    assert_eq!(
        phase(&down),
        "Progressing",
        "errors never roll back: {down:#}"
    );
    let w = testenv::events::wait_warning(
        &kube,
        &ns,
        "wisdom-routemap",
        &["AnalysisError", "Prometheus"],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    eprintln!("{w}");
    assert!(
        iter8
            .metric("iter8_analysis_evaluations_total{outcome=\"Error\"}")
            .await
            >= 3.0
    );
    prom.start_again().await.unwrap();
    let done = wait_state(
        &kube,
        &ns,
        Duration::from_secs(90),
        "the promotion after Prometheus is back",
        |s| phase(s) != "Progressing",
    )
    .await;
    load.stop().await;
    assert_eq!(phase(&done), "Promoted", "{done:#}");
    teardown(cp, dp, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_continues_from_the_stored_state_without_repeating_or_skipping_a_step() {
    let _serial = SERIAL.lock().await;
    let (cp, dp, prom, kube, ns) = setup("analysis-leader").await;
    // Two replicas: the second one's embedded store is locked by the first (A/B/n metrics are
    // not used here); both elect a leader with the chart's Lease.
    let a = install_controller(cp, &ns, false, &[]).await;
    let b = install_controller(cp, &ns, false, &[]).await;
    let v = values(
        "blue-green",
        &prom.address(),
        "interval: 3s\nsteps: [10, 20, 30, 40, 100]",
    );
    release(cp, dp, &ns, &v, None).await;
    let load = Load::start(dp, &ns, false);
    wait_state(
        &kube,
        &ns,
        Duration::from_secs(60),
        "the second step",
        |s| s["step"].as_u64() == Some(1),
    )
    .await;
    let (leader, standby) = if a.metric("iter8_leader").await == 1.0 {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(standby.metric("iter8_leader").await, 0.0);
    drop(leader);
    let done = wait_state(
        &kube,
        &ns,
        Duration::from_secs(120),
        "the promotion by the new leader",
        |s| phase(s) != "Progressing",
    )
    .await;
    load.stop().await;
    assert_eq!(phase(&done), "Promoted", "{done:#}");
    assert_eq!(standby.metric("iter8_leader").await, 1.0);
    let history = done["history"].as_array().unwrap();
    let numbers: Vec<u64> = history
        .iter()
        .map(|e| e["number"].as_u64().unwrap())
        .collect();
    let judged: Vec<u64> = history
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    // One evaluation per step, numbered without a gap or a repeat across the handover.
    assert_eq!(judged, vec![0, 1, 2, 3, 4], "{done:#}");
    assert_eq!(numbers, vec![1, 2, 3, 4, 5], "{done:#}");
    drop(standby);
    teardown(cp, dp, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analysis_dashboard_and_metrics_show_the_state() {
    let _serial = SERIAL.lock().await;
    let (cp, dp, prom, _kube, ns) = setup("analysis-dash").await;
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let v = values(
        "blue-green",
        &prom.address(),
        "interval: 1h\nsteps: [40, 100]",
    );
    release(cp, dp, &ns, &v, None).await;
    let path = format!("/analysisDashboard?namespace={ns}&application=wisdom");
    let d = testenv::wait_for(
        "the dashboard to show the first step",
        Duration::from_secs(30),
        || async {
            let (code, body) = e2e::http_get(&iter8.admin, &path).await?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["phase"] == "Progressing" && v["weights"] == json!([60, 40]))
                .then_some(v)
        },
    )
    .await
    .unwrap();
    assert_eq!(d["steps"], json!([40, 100]));
    assert_eq!(d["state"]["step"], json!(0));
    let labels = format!("namespace=\"{ns}\",application=\"wisdom\"");
    assert_eq!(
        iter8
            .metric(&format!(
                "iter8_analysis_phase{{{labels},phase=\"Progressing\"}}"
            ))
            .await,
        1.0
    );
    assert_eq!(
        iter8
            .metric(&format!(
                "iter8_analysis_weight{{{labels},version=\"wisdom-1\"}}"
            ))
            .await,
        40.0
    );
    let missing = e2e::http_get(
        &iter8.admin,
        &format!("/analysisDashboard?namespace={ns}&application=nope"),
    )
    .await;
    assert_eq!(missing.map(|(c, _)| c), Some(404));
    teardown(cp, dp, &ns).await;
}
