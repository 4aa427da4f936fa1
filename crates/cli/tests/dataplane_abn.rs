//! A/B/n end to end with the real data plane (issue 12). The tutorial's application is
//! released blue-green with the release chart (wisdom-0 and wisdom-1, 50/50); each
//! InferenceService is served by a real MLServer (`testenv::dataplane`: wisdom-0 serves model
//! `v0`, wisdom-1 model `v1`, each under its InferenceService's name). The controller is the
//! `iter8` binary run as the controller chart's pod would run it (`e2e::install_controller`),
//! with its A/B/n server on a free loopback port and its embedded store in a folder of the
//! test. In front of the model servers runs the Python SDK sample (`samples/abn-frontend`):
//! for every request it asks `Lookup` which version the user (`X-User`) gets, forwards the real
//! V2 inference request straight to that version's MLServer, and writes a business metric
//! (`X-Metric-Value`) with `WriteMetric` before answering.
//!
//! What it proves, over 200 requests from 120 users (20 of them coming back 5 times each):
//! - every answer comes from the model of the version the frontend says Lookup chose
//!   (`x-abn-version`), and users are sticky: one user, one version, one model;
//! - both versions get users;
//! - `/abnDashboard` reports exactly what was sent: per version, the requests and the sum of
//!   their metric values (`SummaryOverTransactions`: Count, Mean·Count) and the distinct users
//!   (`SummaryOverUsers`: Count);
//! - the store survives a controller restart (killed, then started again with the same metrics
//!   folder): the dashboard is unchanged, and every user gets the same version and model again,
//!   with the new requests counted on top of the old ones.
//!
//! Needs istiod, Envoy, MLServer and the frontend's venv from `testenv/setup.sh`.

#![allow(clippy::unwrap_used)]

mod e2e;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{helm_release, http_get, install_controller, vs_ar, wait_obj, Iter8};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use kube::api::{Api, DynamicObject};
use serde_json::Value;
use testenv::dataplane::{self, DataPlane};
use testenv::fixtures::api_resource;
use testenv::process::Process;

const WAIT: Duration = Duration::from_secs(90);

/// The tutorial's input.json (iter8-tools/docs samples/kserve-serving/input.json).
const INPUT: &str = r#"{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}"#;

/// Step 2 of the tutorial (both versions deployed), verbatim but for the strategy.
const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");

/// The business metric the frontend writes.
const METRIC: &str = "revenue";
/// Requests of the first round; every other one is from one of `REGULARS` returning users.
const REQUESTS: usize = 200;
const REGULARS: usize = 20;

/// The tutorial's application as blue-green: the chart's default weights, 50/50.
fn blue_green() -> String {
    let values = STEP2.replace("strategy: canary", "strategy: blue-green");
    assert_ne!(
        values, STEP2,
        "the tutorial's step 2 names no canary strategy"
    );
    values
}

/// The Python SDK sample, listening on a free port; killed when dropped.
struct Frontend {
    process: Process,
    address: SocketAddr,
}

impl Drop for Frontend {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the frontend log {} ---\n{}",
                self.process.log_path().display(),
                self.process.log_tail(30)
            );
        }
    }
}

impl Frontend {
    /// Starts `abn-frontend` with one route per version and waits for its `listening on` line.
    async fn start(
        dir: &Path,
        name: &str,
        abn: &str,
        application: &str,
        routes: &[String],
    ) -> Frontend {
        let program = testenv::tools::abn_frontend().unwrap_or_else(|e| panic!("{e:#}"));
        let args: Vec<String> = [
            "--port",
            "0",
            "--abn-address",
            abn,
            "--application",
            application,
            "--routes",
            &routes.join(","),
            "--metric",
            METRIC,
        ]
        .map(String::from)
        .to_vec();
        let mut process = Process::start(name, &program, &args, dir).unwrap();
        let log = process.log_path().to_path_buf();
        let address = testenv::wait_for("the frontend's `listening on` line", WAIT, || {
            let exited = process.check_running().err();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                if let Some(e) = exited {
                    panic!("{e:#}");
                }
                text.lines()
                    .find_map(|l| l.strip_prefix("listening on "))
                    .and_then(|a| a.trim().parse().ok())
            }
        })
        .await
        .unwrap();
        Frontend { process, address }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// What a client of the frontend sees of one answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// `x-abn-version`: the version (route index) Lookup chose.
    version: Option<usize>,
    lookup: Option<String>,
    metric: Option<String>,
    body: Value,
}

/// POSTs the tutorial's input to the frontend as `user`, with a metric value.
async fn infer(client: &HttpClient, frontend: SocketAddr, user: &str, value: f64) -> Answer {
    let req = hyper::Request::post(format!("http://{frontend}/infer"))
        .header("Content-Type", "application/json")
        .header("X-User", user)
        .header("X-Metric-Value", value.to_string())
        .body(Full::new(Bytes::from_static(INPUT.as_bytes())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .unwrap_or_else(|_| panic!("the frontend did not answer {user} within 30s"))
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (version, lookup, metric) = (
        header("x-abn-version").and_then(|v| v.parse().ok()),
        header("x-abn-lookup"),
        header("x-abn-metric"),
    );
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        version,
        lookup,
        metric,
        body,
    }
}

/// The V2 inference endpoint of the MLServer serving `revision` of InferenceService `model`:
/// its own address, as the harness registered it (the revision's WorkloadEntry, standing in
/// for the pod's endpoint).
async fn model_server_url(kube: &kube::Client, ns: &str, revision: &str, model: &str) -> String {
    let ar = api_resource(
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    );
    let entry = Api::<DynamicObject>::namespaced_with(kube.clone(), ns, &ar)
        .get(revision)
        .await
        .unwrap();
    let spec = &entry.data["spec"];
    let (ip, port) = (
        spec["address"].as_str().unwrap(),
        spec["ports"]["http"].as_u64().unwrap(),
    );
    format!("http://{ip}:{port}/v2/models/{model}/infer")
}

/// What the test sent, per version.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    sum: f64,
    users: BTreeSet<String>,
}

/// Everything sent so far: per version, and which version each user got.
#[derive(Debug, Default)]
struct Sent {
    versions: BTreeMap<usize, Tally>,
    served: BTreeMap<String, usize>,
}

impl Sent {
    /// Sends one request per `(user, value)` through the frontend; each must be answered by
    /// the model of the version Lookup chose, the same version as the user got before, with
    /// Lookup and WriteMetric both successful.
    async fn send(&mut self, client: &HttpClient, frontend: &Frontend, plan: &[(String, f64)]) {
        for (user, value) in plan {
            let a = infer(client, frontend.address, user, *value).await;
            assert_eq!(a.status, 200, "{user}: {a:?}");
            assert_eq!(a.lookup.as_deref(), Some("ok"), "{user}: {a:?}");
            assert_eq!(a.metric.as_deref(), Some("ok"), "{user}: {a:?}");
            let v = a
                .version
                .unwrap_or_else(|| panic!("{user}: no x-abn-version: {a:?}"));
            // wisdom-N serves model vN: the answer names the model that answered.
            assert_eq!(a.body["model_name"], format!("wisdom-{v}"), "{user}: {a:?}");
            assert_eq!(a.body["model_version"], format!("v{v}"), "{user}: {a:?}");
            if let Some(before) = self.served.insert(user.clone(), v) {
                assert_eq!(before, v, "{user} moved from version {before} to {v}");
            }
            let t = self.versions.entry(v).or_default();
            t.requests += 1;
            t.sum += value;
            t.users.insert(user.clone());
        }
    }
}

/// The first round: every other request from a returning user, values 0.25 to 6.25.
fn first_round() -> Vec<(String, f64)> {
    (0..REQUESTS)
        .map(|i| {
            let user = if i % 2 == 0 {
                format!("regular-{}", (i / 2) % REGULARS)
            } else {
                format!("visitor-{}", i / 2)
            };
            (user, (i % 7) as f64 + 0.25)
        })
        .collect()
}

async fn dashboard(iter8: &Iter8, ns: &str) -> Value {
    let path = format!("/abnDashboard?namespace={ns}&application=wisdom");
    let (code, body) = http_get(&iter8.admin, &path).await.unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The summary of `version` in `summaries` (a `SummaryOver…` list).
fn summary(summaries: &Value, version: usize) -> &Value {
    summaries
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Version"].as_u64() == Some(version as u64))
        .unwrap_or_else(|| panic!("no summary of version {version} in {summaries}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The dashboard shows, per version, what was sent; returns it.
async fn assert_dashboard(iter8: &Iter8, ns: &str, sent: &Sent) -> Value {
    let d = dashboard(iter8, ns).await;
    assert_eq!(
        d.as_object().map(|o| o.len()),
        Some(1),
        "only {METRIC}: {d}"
    );
    let m = &d[METRIC];
    for v in 0..2 {
        let want = sent.versions.get(&v).unwrap();
        let txn = summary(&m["SummaryOverTransactions"], v);
        let users = summary(&m["SummaryOverUsers"], v);
        let count = |s: &Value| s["Count"].as_u64().unwrap();
        let total = |s: &Value| s["Mean"].as_f64().unwrap() * count(s) as f64;
        assert_eq!(count(txn), want.requests, "version {v} transactions: {d}");
        assert!(
            close(total(txn), want.sum),
            "version {v}: sum {} sent, dashboard {txn}",
            want.sum
        );
        assert_eq!(
            count(users),
            want.users.len() as u64,
            "version {v} users: {d}"
        );
        // Users' totals add up to the same sum.
        assert!(
            close(total(users), want.sum),
            "version {v}: sum {} sent, dashboard {users}",
            want.sum
        );
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_frontend_routes_real_requests_by_lookup_and_the_dashboard_counts_them_across_a_restart(
) {
    let t0 = Instant::now();
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let dp: &DataPlane = dataplane::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace("abn-dataplane").await.unwrap();
    let application = format!("{ns}/wisdom");
    let iter8 = install_controller(cp, &ns, false, &[]).await;

    // The release, both InferenceServices served by their MLServers, and the controller
    // routing to both (so Lookup, which weighs from the same stores, sees both ready).
    helm_release(cp, &ns, "wisdom", &blue_green());
    let (r0, r1) = tokio::join!(
        dp.serve_inference_service(&ns, "wisdom-0"),
        dp.serve_inference_service(&ns, "wisdom-1"),
    );
    let (r0, r1) = (r0.unwrap(), r1.unwrap());
    wait_obj(
        &kube,
        &vs_ar(),
        &ns,
        "wisdom",
        "routes to both versions",
        |vs| {
            let names = testenv::routes::route_names(vs);
            names.iter().any(|n| n == "wisdom-0") && names.iter().any(|n| n == "wisdom-1")
        },
    )
    .await;
    let routes = [
        model_server_url(&kube, &ns, &r0, "wisdom-0").await,
        model_server_url(&kube, &ns, &r1, "wisdom-1").await,
    ];
    eprintln!(
        "data plane and release ready after {:?}; routes {routes:?}",
        t0.elapsed()
    );

    let http: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let abn = iter8.abn_address().await;
    let frontend = Frontend::start(
        dp.dir(),
        &format!("abn-frontend-{ns}-0"),
        &abn,
        &application,
        &routes,
    )
    .await;

    let mut sent = Sent::default();
    let t = Instant::now();
    sent.send(&http, &frontend, &first_round()).await;
    eprintln!(
        "{REQUESTS} requests through the frontend in {:?}",
        t.elapsed()
    );
    let users = |v: usize| sent.versions.get(&v).map_or(0, |t| t.users.len());
    assert!(
        users(0) > 0 && users(1) > 0,
        "both versions get users: {:?}",
        sent.versions
    );
    assert_eq!(sent.served.len(), REGULARS + REQUESTS / 2);
    eprintln!(
        "per version (requests, users, sum): {:?}",
        sent.versions
            .iter()
            .map(|(v, t)| (v, t.requests, t.users.len(), t.sum))
            .collect::<Vec<_>>()
    );
    let before = assert_dashboard(&iter8, &ns, &sent).await;

    // Restart: killed, then started again on the same metrics folder (and a new A/B/n port,
    // so the frontend is started again too).
    drop(frontend);
    drop(iter8);
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let after = dashboard(&iter8, &ns).await;
    assert_eq!(after, before, "the dashboard after a restart");
    let abn = iter8.abn_address().await;
    let frontend = Frontend::start(
        dp.dir(),
        &format!("abn-frontend-{ns}-1"),
        &abn,
        &application,
        &routes,
    )
    .await;
    // Every user once more: same version, same model, counted on top.
    let again: Vec<(String, f64)> = sent.served.keys().map(|u| (u.clone(), 1.5)).collect();
    sent.send(&http, &frontend, &again).await;
    assert_dashboard(&iter8, &ns, &sent).await;

    dp.check_healthy().unwrap();
    drop(frontend);
    dp.stop_inference_service(&ns, "wisdom-0").await.unwrap();
    dp.stop_inference_service(&ns, "wisdom-1").await.unwrap();
    eprintln!("done in {:?}", t0.elapsed());
}
