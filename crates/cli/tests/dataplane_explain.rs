//! `iter8 explain` agrees with the real data plane: the controller (run as its chart's pod
//! would, `e2e::install_controller`) writes the VirtualService, a real istiod configures the
//! ingress and `knative-local-gateway` Envoys, and real MLServer model servers answer (see
//! `testenv::dataplane`). For the tutorial's step 2 (canary) each request's `app-version` is
//! the version `explain` predicts for its headers; for a blue-green 30/70 release, `explain`
//! gives the two versions with probabilities 0.3 and 0.7 (following the `split` route's hop
//! through the local gateway), 400 requests only ever come back from those versions, in shares
//! within 8 points of them, and `explain --user` names the version the controller's A/B/n
//! Lookup gives each user.
//!
//! Needs istiod, Envoy and MLServer from `testenv/setup.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod e2e;
mod infer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{helm_release, install_controller, route_names, vs_ar, wait_obj};
use iter8_abn::proto::abn_client::AbnClient;
use iter8_abn::proto::Application;
use kube::api::{Api, DynamicObject};
use serde_json::{json, Value};
use testenv::dataplane::{self, DataPlane};
use testenv::fixtures::inference_service;

use infer::{http_client, infer, HttpClient};

const WAIT: Duration = Duration::from_secs(90);

const STEP1: &str = include_str!("../../../testdata/charts/tutorial-step1/values.yaml");
const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");

/// The tutorial's step 2, released blue-green with weights 30 and 70.
fn blue_green_30_70() -> String {
    let mut weights = ["    weight: 30\n", "    weight: 70\n"].into_iter();
    let mut out = String::new();
    for line in STEP2
        .replace("strategy: canary", "strategy: blue-green")
        .lines()
    {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("storageUri:") {
            out.push_str(weights.next().unwrap());
        }
    }
    out
}

/// The tutorial's request through the ingress (`Host: wisdom.<ns>`, `headers`): the status
/// and `app-version` of the answer.
async fn answer(
    client: &HttpClient,
    ingress: SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Option<String>), String> {
    let a = infer(client, ingress, host, headers).await?;
    Ok((a.status, a.app_version))
}

/// Sends requests until one is answered 200 by `version` (Envoy gets new routes from istiod a
/// moment after the VirtualService changes).
async fn wait_answer(
    dp: &DataPlane,
    http: &HttpClient,
    host: &str,
    headers: &[(&str, &str)],
    version: &str,
) {
    let deadline = Instant::now() + WAIT;
    let mut last = Err("no request sent".to_string());
    while Instant::now() < deadline {
        last = answer(http, dp.ingress(), host, headers).await;
        if last == Ok((200, Some(version.to_string()))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no answer from {version} with headers {headers:?} within {WAIT:?}; last {last:?}{}",
        dp.diagnostics()
    );
}

/// `iter8 explain wisdom -n NS <args> -o json`, parsed.
fn explain(kubeconfig: &Path, ns: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .args(["explain", "wisdom", "-n", ns, "-o", "json", "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iter8 explain {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The same as text, for the log.
fn explain_text(kubeconfig: &Path, ns: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .args(["explain", "wisdom", "-n", ns, "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_isvc(kube: &kube::Client, ns: &str, name: &str) {
    let api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), ns, &inference_service());
    testenv::wait_for(&format!("InferenceService {ns}/{name}"), WAIT, || async {
        api.get_opt(name).await.ok()?.map(|_| ())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_predicts_what_envoy_answers_for_canary_and_blue_green() {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let dp = dataplane::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let kube = cp.client().await.unwrap();
    let ns = cp.namespace("explain").await.unwrap();
    let controller = install_controller(cp, &ns, false, &[]).await;
    let kubeconfig = cp.kubeconfig_path();
    let http = http_client();
    let host = format!("wisdom.{ns}");

    // The tutorial's step 2 (canary), both versions served and ready.
    helm_release(cp, &ns, "wisdom", STEP1);
    wait_isvc(&kube, &ns, "wisdom-0").await;
    dp.serve_inference_service(&ns, "wisdom-0").await.unwrap();
    helm_release(cp, &ns, "wisdom", STEP2);
    wait_isvc(&kube, &ns, "wisdom-1").await;
    dp.serve_inference_service(&ns, "wisdom-1").await.unwrap();
    wait_obj(
        &kube,
        &vs_ar(),
        &ns,
        "wisdom",
        "the candidate route",
        |vs| route_names(vs) == ["wisdom-1", "wisdom-0"],
    )
    .await;

    let test = [("traffic", "test")];
    let with = explain(kubeconfig, &ns, &["-H", "traffic: test"]);
    assert_eq!(with["versions"], json!({"wisdom-1": 1.0}), "{with:#}");
    assert_eq!(with["routing"][0]["decidedBy"]["label"], "route wisdom-1");
    assert_eq!(
        with["routing"][0]["decidedBy"]["match"],
        "headers traffic exact test"
    );
    let without = explain(kubeconfig, &ns, &[]);
    assert_eq!(without["versions"], json!({"wisdom-0": 1.0}), "{without:#}");
    assert_eq!(
        without["routing"][0]["decidedBy"]["label"],
        "route wisdom-0"
    );
    assert_eq!(
        without["routing"][0]["skipped"],
        json!([{"rule": "route wisdom-1", "why": "header traffic is absent (wants exact test)"}])
    );
    eprintln!(
        "{}",
        explain_text(kubeconfig, &ns, &["-H", "traffic: test"])
    );
    wait_answer(dp, &http, &host, &test, "wisdom-1").await;
    for (headers, predicted) in [(&test[..], &with), (&[][..], &without)] {
        let predicted: Vec<&String> = predicted["versions"].as_object().unwrap().keys().collect();
        for _ in 0..20 {
            let (status, version) = answer(&http, dp.ingress(), &host, headers).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(
                vec![version.as_ref().unwrap()],
                predicted,
                "headers {headers:?}"
            );
        }
    }

    // Blue-green 30/70: the split route sends each request back through the local gateway with
    // a `branch` header, which per-version routes match.
    helm_release(cp, &ns, "wisdom", &blue_green_30_70());
    wait_obj(&kube, &vs_ar(), &ns, "wisdom", "the 30/70 split", |vs| {
        route_names(vs) == ["wisdom-0", "wisdom-1", "split"]
            && vs.data["spec"]["http"][2]["route"][1]["weight"] == 70
    })
    .await;
    let split = explain(kubeconfig, &ns, &[]);
    assert_eq!(
        split["versions"],
        json!({"wisdom-0": 0.3, "wisdom-1": 0.7}),
        "{split:#}"
    );
    assert_eq!(split["routing"][0]["decidedBy"]["label"], "route split");
    assert_eq!(
        split["routing"][0]["paths"][1]["via"][1],
        "route wisdom-1 (headers branch exact wisdom-1)"
    );
    eprintln!("{}", explain_text(kubeconfig, &ns, &[]));
    // Without a header only the new routes reach wisdom-1: both Envoys have them.
    wait_answer(dp, &http, &host, &[], "wisdom-1").await;
    let mut counts = BTreeMap::<String, u32>::new();
    for _ in 0..400 {
        let (status, version) = answer(&http, dp.ingress(), &host, &[]).await.unwrap();
        assert_eq!(status, 200);
        *counts.entry(version.unwrap_or_default()).or_default() += 1;
    }
    eprintln!("blue-green 30/70 over 400 requests through Envoy: {counts:?}");
    let predicted = split["versions"].as_object().unwrap();
    for (version, n) in &counts {
        let p = predicted
            .get(version)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{version} answered, explain predicted {predicted:?}"));
        let share = f64::from(*n) / 400.0;
        assert!(
            (share - p).abs() <= 0.08,
            "{version} answered {:.1}% of 400 requests; explain predicted {:.0}% (± 8 points): {counts:?}",
            share * 100.0,
            p * 100.0
        );
    }
    assert_eq!(counts.len(), 2, "{counts:?}");

    // `--user`: the version the controller's Lookup gives each user.
    let mut abn = AbnClient::connect(format!("http://{}", controller.abn_address().await))
        .await
        .unwrap();
    for u in 0..12 {
        let user = format!("user-{u}");
        let predicted = explain(kubeconfig, &ns, &["--user", &user]);
        let answer = abn
            .lookup(Application {
                name: format!("{ns}/wisdom"),
                user: user.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            predicted["abn"]["version"],
            json!(answer.version_number),
            "{user}: {predicted:#}"
        );
        assert_eq!(predicted["abn"]["weights"], json!([30, 70]));
    }
    controller.assert_clean_log();
}
