//! The seed tutorial ("Canary release of a KServe ML model") end to end: the controller chart
//! installed for real with Helm (namespace-scoped: its Role alone must suffice), the `iter8`
//! binary running with the chart's ServiceAccount token, and the tutorial's three
//! `helm upgrade --install wisdom charts/release -f -` steps with its values verbatim, KServe's
//! part played by writing InferenceService status as KServe does. The release namespace is the
//! test's, so the expected objects name it instead of `default`.

#![allow(clippy::unwrap_used)]

mod e2e;

use e2e::*;
use kube::Client;
use serde_json::Value;
use testenv::{ControlPlane, Helm};

/// Step 1 of the tutorial, verbatim (also a golden case of the release chart).
pub const STEP1: &str = include_str!("../../../testdata/charts/tutorial-step1/values.yaml");

/// Step 2 of the tutorial, verbatim (also a golden case of the release chart).
pub const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");

/// Step 3 of the tutorial, verbatim (also a golden case of the release chart).
pub const STEP3: &str = include_str!("../../../testdata/charts/tutorial-step3/values.yaml");

const ISVCS: &str = "inferenceservices.serving.kserve.io";

/// The VirtualService spec of spec section 4 for a step, in namespace `ns`.
fn expected_vs_spec(ns: &str, step: u8) -> Value {
    testenv::fixtures::tutorial_virtual_service_spec(ns, step).unwrap()
}

fn label<'a>(obj: &'a kube::api::DynamicObject, key: &str) -> Option<&'a str> {
    obj.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Plays the tutorial in `ns` against a running controller with Helm `version`, then
/// `helm delete wisdom`.
async fn play_tutorial(cp: &ControlPlane, version: Helm, iter8: &Iter8, client: &Client, ns: &str) {
    // Step 1: the primary.
    helm_release_with(cp, version, ns, "wisdom", STEP1);
    let isvc = get(client, &isvc_ar(), ns, "wisdom-0").await.unwrap();
    assert_eq!(label(&isvc, "iter8.tools/watch"), Some("true"));
    assert_eq!(label(&isvc, "app.kubernetes.io/version"), Some("v0"));
    let svc = get(client, &svc_ar(), ns, "wisdom").await.unwrap();
    assert_eq!(svc.data["spec"]["type"], "ExternalName");
    assert_eq!(
        svc.data["spec"]["externalName"],
        "knative-local-gateway.istio-system.svc.cluster.local"
    );
    kserve_not_ready(client, ns, "wisdom-0").await;
    kserve_ready(client, ns, "wisdom-0").await;
    let vs = wait_obj(
        client,
        &vs_ar(),
        ns,
        "wisdom",
        "the step-1 VirtualService",
        |vs| route_names(vs) == ["wisdom-0"],
    )
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, 1));
    assert_owned_by_routemap(client, &vs, ns, "wisdom-routemap").await;

    // Step 2: the candidate. Not ready yet: routing does not change.
    helm_release_with(cp, version, ns, "wisdom", STEP2);
    let primary = get(client, &isvc_ar(), ns, "wisdom-0").await.unwrap();
    assert_eq!(
        primary.metadata.generation,
        Some(1),
        "helm changed wisdom-0's spec"
    );
    kserve_not_ready(client, ns, "wisdom-1").await;
    iter8.settled(ISVCS, 2).await;
    let unchanged = get(client, &vs_ar(), ns, "wisdom").await.unwrap();
    assert_eq!(route_names(&unchanged), ["wisdom-0"]);
    assert_eq!(
        unchanged.metadata.resource_version, vs.metadata.resource_version,
        "routing changed before wisdom-1 was ready"
    );
    // Ready: requests with `traffic: test` go to wisdom-1, all others to wisdom-0.
    kserve_ready(client, ns, "wisdom-1").await;
    let vs = wait_obj(
        client,
        &vs_ar(),
        ns,
        "wisdom",
        "the candidate route",
        |vs| route_names(vs) == ["wisdom-1", "wisdom-0"],
    )
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, 2));
    assert_eq!(
        vs.data["spec"]["http"][0]["match"][0]["headers"]["traffic"]["exact"],
        "test"
    );

    // Step 3: promote. wisdom-0 takes the v1 labels (same model, so the same spec and KServe
    // keeps it Ready), wisdom-1 is deleted, routing returns to the step-1 form.
    helm_release_with(cp, version, ns, "wisdom", STEP3);
    wait_gone(client, ns, &[(isvc_ar(), "wisdom-1")]).await;
    let promoted = get(client, &isvc_ar(), ns, "wisdom-0").await.unwrap();
    assert_eq!(label(&promoted, "app.kubernetes.io/version"), Some("v1"));
    let vs = wait_obj(
        client,
        &vs_ar(),
        ns,
        "wisdom",
        "the step-3 VirtualService",
        |vs| route_names(vs) == ["wisdom-0"],
    )
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, 1));
    iter8.settled(ISVCS, 1).await;
    let vs = get(client, &vs_ar(), ns, "wisdom").await.unwrap();
    assert_eq!(vs.data["spec"], expected_vs_spec(ns, 1));

    // Cleanup: everything goes, routing included.
    helm_with(cp, version, ns, &["delete", "wisdom"], None);
    wait_release_gone(client, ns).await;
}

#[tokio::test]
async fn tutorial_with_namespace_scoped_controller_chart() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("e2e-tutorial").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;

    play_tutorial(cp, Helm::V4, &iter8, &client, &ns).await;

    assert!(iter8.metric("iter8_leader").await == 1.0);
    iter8.assert_clean_log();
}

/// The same with Helm 3, which Iter8 v1.1's users run: both charts installed, upgraded and
/// deleted by Helm 3 (`HELM3_VERSION`).
#[tokio::test]
async fn tutorial_with_helm3() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("e2e-tutorial-helm3").await.unwrap();
    let iter8 = install_controller_with(cp, Helm::V3, &ns, false, &[]).await;
    let releases = helm_with(cp, Helm::V3, &ns, &["list", "-o", "json"], None);
    assert!(releases.contains("\"name\":\"iter8\""), "{releases}");

    play_tutorial(cp, Helm::V3, &iter8, &client, &ns).await;

    iter8.assert_clean_log();
    // The controller chart goes too (its RBAC first: stop the controller before).
    drop(iter8);
    helm_with(cp, Helm::V3, &ns, &["delete", "iter8"], None);
    let releases = helm_with(cp, Helm::V3, &ns, &["list", "-q"], None);
    assert!(releases.trim().is_empty(), "{releases}");
}

/// The tutorial's own install (`--set clusterScoped=true --set logLevel=trace`): the controller
/// in one namespace, the application in another. A control plane of its own, so this
/// controller cannot see the other tests' namespaces.
#[tokio::test]
async fn tutorial_with_cluster_scoped_controller_chart() {
    let cp = ControlPlane::start(testenv::Options {
        controller_manager: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = cp.client().await.unwrap();
    let controller_ns = cp.namespace("e2e-iter8").await.unwrap();
    let app_ns = cp.namespace("e2e-tutorial").await.unwrap();
    let iter8 = install_controller(
        &cp,
        &controller_ns,
        true,
        &["image=kalantar/iter8:20231004-1030", "logLevel=trace"],
    )
    .await;

    play_tutorial(&cp, Helm::V4, &iter8, &client, &app_ns).await;

    iter8.assert_clean_log();
}
