//! Automated analysis against a real API server with the chart-run binary, where no data plane
//! is needed (the data plane's tests are `dataplane_analysis.rs`): the promotion gate and the
//! notifications over real HTTP, the readiness deadline and a new candidate restarting the
//! analysis, A/B/n business metrics written through the gRPC service deciding a promotion or
//! a rollback, and a broken analysis block written by hand (past the chart's checks). KServe's
//! part is played by writing InferenceService status as KServe does.

#![allow(clippy::unwrap_used)]

mod e2e;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use e2e::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use iter8_abn::proto::abn_client::AbnClient;
use iter8_abn::proto::{Application, MetricValue};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

/// Both versions of the tutorial's application, blue-green, with `analysis` (indented YAML).
fn values(strategy: &str, analysis: &str, candidate_uri: &str) -> String {
    let indented: String = analysis.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        r#"
environment: kserve
application:
  metadata:
    labels:
      app.kubernetes.io/name: wisdom
  strategy: {strategy}
  modelFormat: sklearn
  runtime: kserve-mlserver
  versions:
  - metadata:
      labels:
        app.kubernetes.io/version: v0
    storageUri: gs://seldon-models/sklearn/mms/lr_model
  - metadata:
      labels:
        app.kubernetes.io/version: v1
    storageUri: {candidate_uri}
  analysis:
{indented}"#
    )
}

const URI: &str = "gs://seldon-models/sklearn/mms/lr_model";

async fn state(client: &Client, ns: &str) -> Option<Value> {
    let cm = get(client, &cm_ar(), ns, "wisdom-routemap-analysis").await?;
    serde_json::from_str(cm.data["data"]["state"].as_str()?).ok()
}

async fn wait_state(client: &Client, ns: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let ok = &ok;
    let last = Arc::new(Mutex::new(Value::Null));
    let found = testenv::wait_for(what, WAIT, || {
        let last = last.clone();
        async move {
            let s = state(client, ns).await;
            *last.lock().unwrap() = s.clone().unwrap_or(Value::Null);
            s.filter(|s| ok(s))
        }
    })
    .await;
    found.unwrap_or_else(|e| panic!("{e:#}; last state: {:#}", last.lock().unwrap()))
}

fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("")
}

/// The names of the VirtualService's routes and of the versions its split sends to.
async fn routed(client: &Client, ns: &str) -> (Vec<String>, Vec<String>) {
    let vs = get(client, &vs_ar(), ns, "wisdom").await.unwrap();
    let split: Vec<String> = vs.data["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "split")
        .flat_map(|r| r["route"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| {
            d["headers"]["request"]["set"]["branch"]
                .as_str()
                .map(String::from)
        })
        .collect();
    (route_names(&vs), split)
}

/// A local HTTP server standing in for an approver (`/gate`: refuses the first `refusals`
/// requests with 403) and a notification receiver (`/notify`: keeps every body).
struct Hooks {
    address: std::net::SocketAddr,
    gate_calls: Arc<Mutex<usize>>,
    notes: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hooks {
    async fn start(refusals: usize) -> Hooks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let gate_calls = Arc::new(Mutex::new(0usize));
        let notes = Arc::new(Mutex::new(Vec::new()));
        let (g, n) = (gate_calls.clone(), notes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (g, n) = (g.clone(), n.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (g, n) = (g.clone(), n.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let json: Value =
                                    serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let status = match path.as_str() {
                                    "/gate" => {
                                        let mut calls = g.lock().unwrap();
                                        *calls += 1;
                                        if *calls > refusals {
                                            200
                                        } else {
                                            403
                                        }
                                    }
                                    "/notify" => {
                                        n.lock().unwrap().push(json);
                                        202
                                    }
                                    _ => 404,
                                };
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from_static(b"noted")))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Hooks {
            address,
            gate_calls,
            notes,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promotion_gate_is_asked_until_it_approves_and_every_phase_change_is_notified() {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("analysis-gate").await.unwrap();
    let _iter8 = install_controller(cp, &ns, false, &[]).await;
    let hooks = Hooks::start(2).await;
    let a = hooks.address;
    let analysis = format!(
        "interval: 1s\nsteps: [50, 100]\ngates:\n  confirmPromotion: {{url: \"http://{a}/gate\"}}\nnotify: {{url: \"http://{a}/notify\"}}"
    );
    helm_release(cp, &ns, "wisdom", &values("blue-green", &analysis, URI));
    kserve_ready(&client, &ns, "wisdom-0").await;
    // The candidate is not ready: it gets nothing, whatever its declared weight.
    kserve_not_ready(&client, &ns, "wisdom-1").await;
    let waiting = wait_state(&client, &ns, "the analysis to wait", |s| {
        phase(s) == "Waiting"
    })
    .await;
    assert_eq!(waiting["evaluations"], 0);
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the primary routed",
        |vs| route_names(vs).contains(&"wisdom-0".to_string()),
    )
    .await;
    assert_eq!(routed(&client, &ns).await.1, ["wisdom-0"]);

    kserve_ready(&client, &ns, "wisdom-1").await;
    let done = wait_state(&client, &ns, "the promotion", |s| phase(s) == "Promoted").await;
    // No metrics: every evaluation passes; the gate refused twice, then approved.
    assert_eq!(done["evaluations"], 2, "{done:#}");
    assert_eq!(*hooks.gate_calls.lock().unwrap(), 3);
    assert!(
        done["message"].as_str().unwrap().contains("helm upgrade"),
        "{done:#}"
    );
    let vs = wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "all traffic to the candidate",
        |vs| !route_names(vs).contains(&"wisdom-0".to_string()),
    )
    .await;
    assert!(route_names(&vs).contains(&"wisdom-1".to_string()));
    assert_eq!(routed(&client, &ns).await.1, ["wisdom-1"]);
    let events: Vec<String> = testenv::wait_for("four notifications", WAIT, || async {
        let notes = hooks.notes.lock().unwrap().clone();
        (notes.len() >= 4).then(|| {
            notes
                .iter()
                .map(|n| n["event"].as_str().unwrap_or("").to_string())
                .collect()
        })
    })
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "AnalysisProgressing",
            "AnalysisStep",
            "AnalysisAwaitingGate",
            "AnalysisPromoted"
        ]
    );
    let last = hooks.notes.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last["namespace"], json!(ns));
    assert_eq!(last["application"], "wisdom");
    assert_eq!(last["phase"], "Promoted");
    assert_eq!(last["candidate"], "wisdom-1");
    let normal: Vec<String> = testenv::events::about(&client, &ns, "wisdom-routemap")
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reason in [
        "AnalysisProgressing",
        "AnalysisStep",
        "AnalysisAwaitingGate",
        "AnalysisPromoted",
    ] {
        assert!(
            normal.iter().any(|r| r == reason),
            "no {reason} Event in {normal:?}"
        );
    }
    // `iter8 status` shows the analysis as users see it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iter8"))
        .args(["status", "wisdom", "-n", &ns, "-o", "json", "--kubeconfig"])
        .arg(cp.kubeconfig_path())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let analysis = &report["applications"][0]["analysis"];
    assert_eq!(analysis["phase"], "Promoted", "{report:#}");
    assert_eq!(analysis["steps"], json!([50, 100]), "{report:#}");
    helm(cp, &ns, &["uninstall", "wisdom"], None);
    wait_gone(
        &client,
        &ns,
        &[(vs_ar(), "wisdom"), (cm_ar(), "wisdom-routemap-analysis")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_never_ready_is_rolled_back_at_the_deadline_and_a_new_one_starts_over() {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("analysis-deadline").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let analysis = "interval: 1s\nprogressDeadline: 2s\nsteps: [50]";
    helm_release(cp, &ns, "wisdom", &values("blue-green", analysis, URI));
    kserve_ready(&client, &ns, "wisdom-0").await;
    kserve_not_ready(&client, &ns, "wisdom-1").await;
    let rolled = wait_state(&client, &ns, "the rollback at the deadline", |s| {
        phase(s) == "RolledBack"
    })
    .await;
    assert!(
        rolled["message"]
            .as_str()
            .unwrap()
            .contains("progressDeadline 2s"),
        "{rolled:#}"
    );
    testenv::events::wait_warning(
        &client,
        &ns,
        "wisdom-routemap",
        &["AnalysisRolledBack", "not ready"],
        WAIT,
    )
    .await
    .unwrap();
    // Ready too late: latched, it gets nothing.
    kserve_ready(&client, &ns, "wisdom-1").await;
    iter8
        .settled("inferenceservices.serving.kserve.io", 2)
        .await;
    assert_eq!(phase(&state(&client, &ns).await.unwrap()), "RolledBack");
    assert_eq!(routed(&client, &ns).await.1, ["wisdom-0"]);

    // A new candidate (another model): the analysis starts again and promotes it.
    helm_release(
        cp,
        &ns,
        "wisdom",
        &values("blue-green", analysis, "gs://models/wisdom-v2"),
    );
    let fresh = wait_state(&client, &ns, "a new analysis", |s| {
        s["subject"] != rolled["subject"]
    })
    .await;
    assert_eq!(fresh["failures"], 0, "{fresh:#}");
    kserve_ready(&client, &ns, "wisdom-1").await;
    let done = wait_state(&client, &ns, "the new candidate's promotion", |s| {
        phase(s) == "Promoted"
    })
    .await;
    assert_eq!(done["evaluations"], 1, "{done:#}");
    assert!(testenv::events::about(&client, &ns, "wisdom-routemap")
        .await
        .iter()
        .any(|e| e.reason.as_deref() == Some("AnalysisRestarted")));
}

fn lookup(name: &str, user: &str) -> Application {
    Application {
        name: name.to_string(),
        user: user.to_string(),
    }
}

/// Users of each version (by Lookup) write `metric` values: `values[v]` for version v.
async fn write_business_metric(abn: &str, application: &str, values: [f64; 2]) {
    let mut client = AbnClient::connect(format!("http://{abn}")).await.unwrap();
    let mut written = [0; 2];
    for i in 0..200 {
        let user = format!("user-{i}");
        let v = client
            .lookup(lookup(application, &user))
            .await
            .unwrap()
            .into_inner()
            .version_number as usize;
        client
            .write_metric(MetricValue {
                name: "revenue".into(),
                value: values[v].to_string(),
                application: application.into(),
                user,
                version_number: None,
                signature: String::new(),
            })
            .await
            .unwrap();
        written[v] += 1;
    }
    assert!(
        written[0] >= 10 && written[1] >= 10,
        "both versions got users: {written:?}"
    );
}

async fn abn_decides(primary: f64, candidate: f64) -> Value {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("analysis-abn").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let analysis = "interval: 1s\nsteps: [50]\nmetrics:\n- name: revenue\n  source: abn\n  statistic: mean\n  minSamples: 10\n  relativeRange: {min: 1.0}";
    helm_release(cp, &ns, "wisdom", &values("blue-green", analysis, URI));
    kserve_ready(&client, &ns, "wisdom-0").await;
    kserve_ready(&client, &ns, "wisdom-1").await;
    // Until users write the metric, the evaluations are inconclusive and the candidate holds.
    let quiet = wait_state(&client, &ns, "an inconclusive evaluation", |s| {
        s["inconclusive"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_eq!(phase(&quiet), "Progressing");
    write_business_metric(
        &iter8.abn_address().await,
        &format!("{ns}/wisdom"),
        [primary, candidate],
    )
    .await;
    wait_state(&client, &ns, "a decision", |s| phase(s) != "Progressing").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_metric_from_the_abn_service_promotes_a_better_candidate() {
    let done = abn_decides(5.0, 8.0).await;
    assert_eq!(phase(&done), "Promoted", "{done:#}");
    let last = done["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["metrics"][0]["candidate"], 8.0, "{done:#}");
    assert_eq!(last["metrics"][0]["primary"], 5.0, "{done:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_business_metric_from_the_abn_service_rolls_a_worse_candidate_back() {
    let done = abn_decides(5.0, 3.0).await;
    assert_eq!(phase(&done), "RolledBack", "{done:#}");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .contains("0.600x the primary's"),
        "{done:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_analysis_block_gives_a_warning_and_no_traffic_to_the_candidate_until_fixed() {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("analysis-broken").await.unwrap();
    let _iter8 = install_controller(cp, &ns, false, &[]).await;
    helm_release(
        cp,
        &ns,
        "wisdom",
        &values("blue-green", "interval: 1h\nsteps: [50]", URI),
    );
    kserve_ready(&client, &ns, "wisdom-0").await;
    kserve_ready(&client, &ns, "wisdom-1").await;
    wait_state(&client, &ns, "the first step", |s| {
        phase(s) == "Progressing"
    })
    .await;
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the candidate at its first step",
        |vs| route_names(vs).contains(&"wisdom-1".to_string()),
    )
    .await;

    // Past the chart: the routemap edited by hand with steps that do not increase.
    let cms: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &cm_ar());
    let cm = cms.get("wisdom-routemap").await.unwrap();
    let spec = cm.data["data"]["strSpec"].as_str().unwrap();
    let mut rm: serde_yaml::Value = serde_yaml::from_str(spec).unwrap();
    rm["analysis"]["steps"] = serde_yaml::from_str("[50, 50]").unwrap();
    let patch =
        |rm: &serde_yaml::Value| json!({"data": {"strSpec": serde_yaml::to_string(rm).unwrap()}});
    cms.patch(
        "wisdom-routemap",
        &PatchParams::default(),
        &Patch::Merge(&patch(&rm)),
    )
    .await
    .unwrap();
    let w = testenv::events::wait_warning(
        &client,
        &ns,
        "wisdom-routemap",
        &[
            "InvalidAnalysis",
            "analysis.steps must be strictly increasing: 50 follows 50",
        ],
        WAIT,
    )
    .await
    .unwrap();
    eprintln!("{w}");
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the primary alone",
        |vs| route_names(vs).iter().all(|n| n != "wisdom-1"),
    )
    .await;
    // The state is kept while the block is broken: fixing it resumes where it was.
    assert_eq!(phase(&state(&client, &ns).await.unwrap()), "Progressing");
    rm["analysis"]["steps"] = serde_yaml::from_str("[50]").unwrap();
    cms.patch(
        "wisdom-routemap",
        &PatchParams::default(),
        &Patch::Merge(&patch(&rm)),
    )
    .await
    .unwrap();
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the candidate back at its step",
        |vs| route_names(vs).contains(&"wisdom-1".to_string()),
    )
    .await;
    assert_eq!(routed(&client, &ns).await.1, ["wisdom-0", "wisdom-1"]);
}
