//! Performance tests end to end (issue 14): the tutorial's step 2 (canary by header) with both
//! InferenceServices served by real MLServers behind istiod-configured Envoys, the controller
//! chart's binary storing results, and the `iter8` test chart installed with Helm whose Job is
//! run the way its pod would (its args, its mounted experiment, its ServiceAccount's token):
//!
//! - an HTTP test through the ingress with `traffic: test` reaches the candidate only: the
//!   candidate's MLServer counts exactly the test's requests (warm-up included), the primary's
//!   none; the stored result (`/httpDashboard`) counts the same requests, all 200; without the
//!   header, the primary's turn;
//! - a gRPC test (KServe v2 `ModelInfer`, the proto given by path) with one endpoint per
//!   version's model server: each server's own gRPC counter and `/grpcDashboard` agree;
//! - an objective that cannot hold fails the Job (exit status 1) and marks the result failed.
//!
//! gRPC goes to the version's model server, not through the ingress: the release chart's KServe
//! routing templates rewrite the request path to `/v2/models/<version>/infer` (as Iter8 v1.1's
//! do), which a gRPC method path cannot survive.

#![allow(clippy::unwrap_used)]

mod e2e;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{helm, helm_release, http_get, install_controller, vs_ar, wait_obj, Iter8};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{json, Value};
use testenv::dataplane::{self, DataPlane, ModelServerPorts};
use testenv::ControlPlane;

/// Step 2 of the tutorial, verbatim.
const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");

/// The tutorial's input.json.
const INPUT: &str = r#"{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}"#;

/// KServe's V2 gRPC protocol.
fn kserve_proto() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../load/tests/fixtures/grpc_predict_v2.proto")
}

/// Installs the test chart as `release` with `values` and runs its Job's container here, as
/// the Job's pod would; returns its exit status and output.
async fn run_test_chart(
    cp: &ControlPlane,
    ns: &str,
    release: &str,
    values: &Value,
) -> (bool, String) {
    let values = serde_yaml::to_string(values).unwrap();
    helm(
        cp,
        ns,
        &["upgrade", "--install", release, "charts/iter8", "-f", "-"],
        Some(&values),
    );
    let client = cp.client().await.unwrap();
    let job = Api::<Job>::namespaced(client.clone(), ns)
        .get(&format!("{release}-1-job"))
        .await
        .unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let secret = Api::<Secret>::namespaced(client, ns)
        .get(release)
        .await
        .unwrap();
    let experiment = secret.data.unwrap()["experiment.yaml"].0.clone();
    let dir = cp.dir().join(format!("test-{ns}-{release}"));
    std::fs::create_dir_all(&dir).unwrap();
    let experiment_path = dir.join("experiment.yaml");
    std::fs::write(&experiment_path, experiment).unwrap();
    let kubeconfig = cp
        .service_account_kubeconfig(
            ns,
            pod.service_account_name.as_deref().unwrap(),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let kubeconfig_path = dir.join("sa.kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig).unwrap();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            if a == "/experiment/experiment.yaml" {
                experiment_path.display().to_string()
            } else {
                a
            }
        })
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iter8"));
    cmd.args(&args)
        .env("KUBECONFIG", &kubeconfig_path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for e in container.env.clone().unwrap_or_default() {
        cmd.env(&e.name, e.value.unwrap_or_default());
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A counter of the model server's Prometheus metrics, summed over the samples whose name is
/// `name` and whose labels contain every `label="value"` of `with`.
fn counter(ports: &ModelServerPorts, name: &str, with: &[&str]) -> f64 {
    let addr = std::net::SocketAddr::from((ports.ip, ports.metrics));
    let text = testenv::http::get(addr, &addr.to_string(), "/metrics")
        .map(|r| r.body)
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn dashboard(iter8: &Iter8, kind: &str, ns: &str, test: &str) -> Value {
    let (code, body) = http_get(
        &iter8.admin,
        &format!("/{kind}Dashboard?namespace={ns}&test={test}"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_tests_reach_the_candidate_and_their_stored_results_match_what_the_model_server_saw(
) {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let dp: &DataPlane = dataplane::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace("load").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    helm_release(cp, &ns, "wisdom", STEP2);
    let (r0, r1) = tokio::join!(
        dp.serve_inference_service(&ns, "wisdom-0"),
        dp.serve_inference_service(&ns, "wisdom-1"),
    );
    r0.unwrap();
    r1.unwrap();
    wait_obj(
        &kube,
        &vs_ar(),
        &ns,
        "wisdom",
        "the candidate's route",
        |vs| {
            testenv::routes::route_names(vs)
                .iter()
                .any(|n| n == "wisdom-1")
        },
    )
    .await;
    let primary = dp.model_server(&ns, "wisdom-0").await.unwrap();
    let candidate = dp.model_server(&ns, "wisdom-1").await.unwrap();
    // MLServer's REST metrics (starlette-exporter) count requests by path and status; each
    // model server serves one model, so its inference path is enough.
    let rest = |p: &ModelServerPorts, _model: &str| {
        counter(p, "rest_server_requests_total", &["/infer\"", "POST"])
    };
    let (primary_before, candidate_before) =
        (rest(&primary, "wisdom-0"), rest(&candidate, "wisdom-1"));

    // HTTP through the ingress, by the tutorial's header, after the candidate is ready.
    let metrics_server = format!("http://{}", iter8.admin);
    let (requests, warmup) = (40, 5);
    let http_values = json!({
        "metricsServerURL": metrics_server,
        "tasks": ["ready", "http"],
        "ready": {"isvc": "wisdom-1", "timeout": "60s"},
        "http": {
            "url": format!("http://{}/", dp.ingress()),
            "headers": {"Host": format!("wisdom.{ns}"), "traffic": "test"},
            "contentType": "application/json",
            "payloadStr": INPUT,
            "qps": 20, "numRequests": requests, "connections": 2,
            "warmupNumRequests": warmup,
            "slos": {"error-rate": 0, "latency-p99": 5000}
        }
    });
    let (ok, out) = run_test_chart(cp, &ns, "wisdom-test", &http_values).await;
    assert!(ok, "the HTTP test failed:\n{out}");
    let d = dashboard(&iter8, "http", &ns, "wisdom-test").await;
    let endpoints = d["Endpoints"].as_object().unwrap();
    assert_eq!(endpoints.len(), 1, "{d}");
    let e = endpoints.values().next().unwrap();
    assert_eq!(e["Return codes"], json!({"200": requests}), "{d}");
    assert_eq!(e["Statistics"]["Count"], json!(requests), "{d}");
    assert_eq!(d["ExperimentResult"]["Completed tasks"], json!(3), "{d}");
    assert_eq!(d["ExperimentResult"]["Failure"], json!(false), "{d}");
    // What the model servers saw: the candidate every request (warm-up too), the primary none.
    assert_eq!(
        rest(&candidate, "wisdom-1") - candidate_before,
        (requests + warmup) as f64,
        "the candidate's own count"
    );
    assert_eq!(
        rest(&primary, "wisdom-0") - primary_before,
        0.0,
        "the primary's own count"
    );

    // The same through the ingress without the header: the primary's turn.
    let (candidate_before, primary_before) =
        (rest(&candidate, "wisdom-1"), rest(&primary, "wisdom-0"));
    let mut primary_values = http_values.clone();
    primary_values["tasks"] = json!(["http"]);
    primary_values["http"]["headers"] = json!({"Host": format!("wisdom.{ns}")});
    primary_values["http"]
        .as_object_mut()
        .unwrap()
        .remove("warmupNumRequests");
    let (ok, out) = run_test_chart(cp, &ns, "wisdom-primary", &primary_values).await;
    assert!(ok, "the HTTP test of the primary failed:\n{out}");
    let d = dashboard(&iter8, "http", &ns, "wisdom-primary").await;
    let e = d["Endpoints"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(e["Return codes"], json!({"200": requests}), "{d}");
    assert_eq!(rest(&primary, "wisdom-0") - primary_before, requests as f64);
    assert_eq!(rest(&candidate, "wisdom-1") - candidate_before, 0.0);

    // gRPC (KServe v2 ModelInfer) of each version's model server, one endpoint each.
    let grpc_count =
        |p: &ModelServerPorts| counter(p, "grpc_server_handled_total", &["ModelInfer"]);
    let (grpc_before, grpc_primary_before) = (grpc_count(&candidate), grpc_count(&primary));
    let total = 30;
    let data = |model: &str| {
        json!({
            "model_name": model,
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 4],
                        "contents": {"fp32_contents": [6.8, 2.8, 4.8, 1.4]}}]
        })
    };
    let grpc_values = json!({
        "metricsServerURL": metrics_server,
        "tasks": ["grpc"],
        "grpc": {
            "call": "inference.GRPCInferenceService.ModelInfer",
            "proto": kserve_proto(),
            "total": total, "concurrency": 2, "rps": 20,
            "slos": {"error-count": 0},
            "endpoints": {
                "wisdom-0": {"host": format!("{}:{}", primary.ip, primary.grpc), "data": data("wisdom-0")},
                "wisdom-1": {"host": format!("{}:{}", candidate.ip, candidate.grpc), "data": data("wisdom-1")}
            }
        }
    });
    let (ok, out) = run_test_chart(cp, &ns, "wisdom-grpc", &grpc_values).await;
    assert!(ok, "the gRPC test failed:\n{out}");
    let d = dashboard(&iter8, "grpc", &ns, "wisdom-grpc").await;
    for version in ["wisdom-0", "wisdom-1"] {
        let e = &d["Endpoints"][version];
        assert_eq!(e["Status codes"], json!({"OK": total}), "{version}: {d}");
        assert_eq!(e["Statistics"]["Count"], json!(total), "{version}: {d}");
    }
    assert_eq!(
        grpc_count(&candidate) - grpc_before,
        total as f64,
        "the candidate's own gRPC count"
    );
    assert_eq!(
        grpc_count(&primary) - grpc_primary_before,
        total as f64,
        "the primary's own gRPC count"
    );

    // An objective that cannot hold fails the Job, and the stored result says so.
    let mut strict = http_values.clone();
    strict["tasks"] = json!(["http"]);
    strict["http"]
        .as_object_mut()
        .unwrap()
        .remove("warmupNumRequests");
    strict["http"]["numRequests"] = json!(5);
    strict["http"]["slos"] = json!({"latency-mean": 0});
    let (ok, out) = run_test_chart(cp, &ns, "wisdom-strict", &strict).await;
    assert!(!ok, "a test whose objective cannot hold passed:\n{out}");
    assert!(out.contains("objectives not met"), "{out}");
    let d = dashboard(&iter8, "http", &ns, "wisdom-strict").await;
    assert_eq!(d["ExperimentResult"]["Failure"], json!(true), "{d}");

    for r in [
        "wisdom-test",
        "wisdom-primary",
        "wisdom-grpc",
        "wisdom-strict",
    ] {
        helm(cp, &ns, &["delete", r], None);
    }
    dp.stop_inference_service(&ns, "wisdom-0").await.unwrap();
    dp.stop_inference_service(&ns, "wisdom-1").await.unwrap();
}
