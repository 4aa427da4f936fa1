//! The release chart's KServe **Standard mode** environments (formerly RawDeployment):
//! `kserve-standard` (Istio VirtualService) and `kserve-standard-gtw` (Gateway API HTTPRoute).
//!
//! - Offline, no cluster: the routing templates of every `testdata/charts/kserve-standard*`
//!   golden case rendered by the `iter8` binary's `render` command exactly as the controller
//!   renders them, with the InferenceServices' status as KServe writes it in Standard mode
//!   (`observedGeneration` the predictor Deployment's, here behind and ahead of the
//!   InferenceService's generation): every version counts as ready on its `Ready` condition
//!   alone, and every route reaches the version's predictor Service with `app-version`.
//! - End to end: the seed tutorial's three steps with `environment: kserve-standard` (the
//!   tutorial's values otherwise verbatim), installed with the real Helm, routed by the real
//!   `iter8` binary running with the namespace-scoped controller chart's ServiceAccount token;
//!   KServe's part played by writing Standard-mode status; then `helm delete` leaves nothing.

#![allow(clippy::unwrap_used)]

mod e2e;

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::*;
use serde_json::{json, Value};
use testenv::kserve::{self, StandardState};
use testenv::objects::Times;

/// The tutorial's step 1 in Standard mode (also a golden case of the release chart).
const STEP1: &str = include_str!("../../../testdata/charts/kserve-standard-step1/values.yaml");
/// The tutorial's step 2 in Standard mode (also a golden case).
const STEP2: &str = include_str!("../../../testdata/charts/kserve-standard-step2/values.yaml");
/// The tutorial's step 3 in Standard mode (also a golden case).
const STEP3: &str = include_str!("../../../testdata/charts/kserve-standard-step3/values.yaml");

const ISVCS: &str = "inferenceservices.serving.kserve.io";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The route of the tutorial's VirtualService in Standard mode that sends to version `name`:
/// the path rewritten to the version's model, straight to its predictor Service (port 80), no
/// Host header set, `app-version` added to the response.
fn route(ns: &str, name: &str) -> Value {
    json!({
        "name": name,
        "rewrite": {"uri": format!("/v2/models/{name}/infer")},
        "route": [{
            "destination": {
                "host": format!("{name}-predictor.{ns}.svc.cluster.local"),
                "port": {"number": 80},
            },
            "headers": {"response": {"add": {"app-version": name}}},
        }],
    })
}

/// The VirtualService spec of the tutorial in Standard mode: with `candidate`, `wisdom-1`'s
/// route behind header `traffic: test` before `wisdom-0`'s.
fn expected_vs_spec(ns: &str, candidate: bool) -> Value {
    let mut http = Vec::new();
    if candidate {
        let mut r = route(ns, "wisdom-1");
        r["match"] = json!([{"headers": {"traffic": {"exact": "test"}}}]);
        http.push(r);
    }
    http.push(route(ns, "wisdom-0"));
    json!({
        "gateways": ["mesh"],
        "hosts": [
            format!("wisdom.{ns}"),
            format!("wisdom.{ns}.svc"),
            format!("wisdom.{ns}.svc.cluster.local"),
        ],
        "http": http,
    })
}

/// What KServe writes in Standard mode for `name`, its predictor Deployment at
/// `deployment_generation`.
async fn standard(
    client: &kube::Client,
    ns: &str,
    name: &str,
    ready: bool,
    deployment_generation: i64,
) {
    kserve::report_standard(client, ns, name, ready, deployment_generation)
        .await
        .unwrap();
}

fn annotation<'a>(obj: &'a kube::api::DynamicObject, key: &str) -> Option<&'a str> {
    obj.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

#[tokio::test]
async fn tutorial_in_kserve_standard_mode() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("e2e-standard").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let ns = ns.as_str();

    // Step 1: the primary, an InferenceService KServe deploys in Standard mode; the entry
    // Service leads to the Istio ingress gateway (there is no Knative gateway in this mode).
    helm_release(cp, ns, "wisdom", STEP1);
    let isvc = get(&client, &isvc_ar(), ns, "wisdom-0").await.unwrap();
    assert_eq!(
        annotation(&isvc, "serving.kserve.io/deploymentMode"),
        Some("Standard")
    );
    let svc = get(&client, &svc_ar(), ns, "wisdom").await.unwrap();
    assert_eq!(svc.data["spec"]["type"], "ExternalName");
    assert_eq!(
        svc.data["spec"]["externalName"],
        "istio-ingressgateway.istio-system.svc.cluster.local"
    );
    standard(&client, ns, "wisdom-0", false, 1).await;
    standard(&client, ns, "wisdom-0", true, 1).await;
    let vs = wait_obj(
        &client,
        &vs_ar(),
        ns,
        "wisdom",
        "the step-1 VirtualService",
        |vs| route_names(vs) == ["wisdom-0"],
    )
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, false));
    assert_owned_by_routemap(&client, &vs, ns, "wisdom-routemap").await;

    // Step 2: the candidate. Not ready yet: routing does not change.
    helm_release(cp, ns, "wisdom", STEP2);
    for name in ["wisdom-0", "wisdom-1"] {
        let isvc = get(&client, &isvc_ar(), ns, name).await.unwrap();
        assert_eq!(isvc.metadata.generation, Some(1), "{name}");
    }
    standard(&client, ns, "wisdom-1", false, 1).await;
    iter8.settled(ISVCS, 2).await;
    let unchanged = get(&client, &vs_ar(), ns, "wisdom").await.unwrap();
    assert_eq!(
        unchanged.metadata.resource_version, vs.metadata.resource_version,
        "routing changed before wisdom-1 was ready"
    );
    // Ready: requests with `traffic: test` go to wisdom-1, all others to wisdom-0. Its
    // Deployment was scaled once on the way (generation 2): KServe reports observedGeneration
    // 2 for an InferenceService at generation 1, and the version counts as ready all the same.
    standard(&client, ns, "wisdom-1", true, 2).await;
    let vs = wait_obj(
        &client,
        &vs_ar(),
        ns,
        "wisdom",
        "the candidate route",
        |vs| route_names(vs) == ["wisdom-1", "wisdom-0"],
    )
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, true));

    // Step 3: promote. wisdom-0 takes the v1 labels (same model: same spec, generation 1),
    // wisdom-1 goes, routing returns to the step-1 form. wisdom-0's Deployment meanwhile at
    // generation 3 changes nothing.
    helm_release(cp, ns, "wisdom", STEP3);
    wait_gone(&client, ns, &[(isvc_ar(), "wisdom-1")]).await;
    let promoted = get(&client, &isvc_ar(), ns, "wisdom-0").await.unwrap();
    assert_eq!(promoted.metadata.generation, Some(1));
    standard(&client, ns, "wisdom-0", true, 3).await;
    let vs = wait_obj(
        &client,
        &vs_ar(),
        ns,
        "wisdom",
        "the step-3 VirtualService",
        |vs| route_names(vs) == ["wisdom-0"],
    )
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, false));
    iter8.settled(ISVCS, 1).await;
    let vs = get(&client, &vs_ar(), ns, "wisdom").await.unwrap();
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, false));

    // Cleanup: everything goes, routing included.
    helm(cp, ns, &["delete", "wisdom"], None);
    wait_release_gone(&client, ns).await;
    assert!(names(&client, &httproute_ar(), ns).await.is_empty());
    assert!(!names(&client, &cm_ar(), ns)
        .await
        .iter()
        .any(|n| n.starts_with("wisdom")));

    iter8.assert_clean_log();
}

/// The golden cases of the Standard-mode environments that render a routing template.
fn standard_cases() -> Vec<(String, Vec<Value>)> {
    let root = repo_root().join("testdata/charts");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let expected = dir.join("expected.yaml");
        if !name.starts_with("kserve-standard") || !expected.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&expected).unwrap();
        cases.push((name, testenv::fixtures::documents(&text).unwrap()));
    }
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

/// `iter8 render` of `routemap` with `objects`: (weights line, rendered routing objects).
fn render(dir: &Path, routemap: &Value, objects: &[Value]) -> (String, Vec<Value>) {
    let rm = dir.join("routemap.yaml");
    std::fs::write(&rm, serde_yaml::to_string(routemap).unwrap()).unwrap();
    let obj = dir.join("objects.yaml");
    let docs: Vec<String> = objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect();
    std::fs::write(&obj, docs.join("---\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .arg("render")
        .arg("--routemap")
        .arg(&rm)
        .arg("-f")
        .arg(&obj)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let weights = stdout
        .lines()
        .find(|l| l.starts_with("# weights: "))
        .unwrap()
        .to_string();
    let rendered = testenv::fixtures::documents(&stdout)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect();
    (weights, rendered)
}

/// Every destination of a rendered routing object: (host or Service name, `app-version`).
fn destinations(obj: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in obj["spec"]["http"].as_array().into_iter().flatten() {
        for d in r["route"].as_array().into_iter().flatten() {
            let version = &d["headers"]["response"]["add"]["app-version"];
            out.push((
                d["destination"]["host"].as_str().unwrap().to_string(),
                version.as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    for r in obj["spec"]["rules"].as_array().into_iter().flatten() {
        for b in r["backendRefs"].as_array().into_iter().flatten() {
            let version = b["filters"][0]["responseHeaderModifier"]["add"][0]["value"]
                .as_str()
                .unwrap_or_default();
            out.push((b["name"].as_str().unwrap().to_string(), version.to_string()));
        }
    }
    out
}

#[test]
fn standard_routing_templates_render_like_the_controller() {
    let dir = std::env::temp_dir().join(format!("iter8-standard-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = standard_cases();
    assert!(cases.len() >= 8, "only {} cases", cases.len());
    let mut routed = 0;
    for (case, docs) in &cases {
        let routemap = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
        let isvcs: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "InferenceService")
            .collect();
        for isvc in &isvcs {
            let mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
                .as_str()
                .unwrap_or_default();
            assert!(
                mode == "Standard" || mode == "RawDeployment",
                "{case}: deploymentMode {mode:?}"
            );
        }
        let has_template = routemap["data"]["strSpec"]
            .as_str()
            .unwrap()
            .contains("routingTemplates:");
        // Each version ready as KServe reports it in Standard mode, the InferenceService at
        // generation 2 and its Deployment's observedGeneration 1 (behind) or 5 (ahead); and
        // the same with the last version not ready.
        // (With one version, an unready primary still gets weight 1: nothing to check.)
        for last_ready in [true, false] {
            if !last_ready && isvcs.len() < 2 {
                continue;
            }
            let objects: Vec<Value> = isvcs
                .iter()
                .enumerate()
                .map(|(i, isvc)| {
                    let (ns, name) = (
                        isvc["metadata"]["namespace"].as_str().unwrap(),
                        isvc["metadata"]["name"].as_str().unwrap(),
                    );
                    let ready = last_ready || i + 1 < isvcs.len();
                    let state = if ready {
                        StandardState::Ready
                    } else {
                        StandardState::NotReady
                    };
                    let observed = if i % 2 == 0 { 1 } else { 5 };
                    let times = Times::fixed(kserve::CREATED_AT, kserve::READY_AT);
                    let mut obj = (*isvc).clone();
                    obj["metadata"]["generation"] = json!(2);
                    obj["status"] = kserve::standard_status(ns, name, state, observed, &times);
                    obj
                })
                .collect();
            let (weights, rendered) = render(&dir, routemap, &objects);
            let available: Vec<bool> = (0..isvcs.len())
                .map(|i| last_ready || i + 1 < isvcs.len())
                .collect();
            let zeros = weights.matches(" 0").count();
            assert_eq!(
                zeros,
                available.iter().filter(|a| !**a).count(),
                "{case}: {weights} for availability {available:?}"
            );
            if !has_template {
                assert!(rendered.is_empty(), "{case}: {rendered:?}");
                continue;
            }
            assert_eq!(rendered.len(), 1, "{case}: {rendered:?}");
            let obj = &rendered[0];
            let dests = destinations(obj);
            assert!(!dests.is_empty(), "{case}: no destination in {obj}");
            for (i, isvc) in isvcs.iter().enumerate() {
                let name = isvc["metadata"]["name"].as_str().unwrap();
                let reached = dests.iter().any(|(_, v)| v == name);
                assert_eq!(
                    reached, available[i],
                    "{case} (last ready: {last_ready}): {name} reached: {dests:?}"
                );
            }
            for (host, version) in &dests {
                // Straight to the predictor Service, or (blue-green) through the Istio
                // ingress gateway (kserve-standard) or the Gateway's Service
                // (kserve-standard-gtw), whose per-version routes then reach the predictors.
                assert!(
                    host.starts_with(&format!("{version}-predictor"))
                        || host == "istio-ingressgateway.istio-system.svc.cluster.local"
                        || ["wisdom-gateway-istio", "wisdom-gateway-proxy"]
                            .contains(&host.as_str()),
                    "{case}: destination {host} for version {version:?}"
                );
                assert!(!host.contains("knative"), "{case}: {host}");
            }
            routed += 1;
        }
    }
    assert!(routed >= 10, "only {routed} renders checked");
    let _ = std::fs::remove_dir_all(&dir);
}
