//! The `release` chart's Deployment environments end to end: `deployment-istio` (canary,
//! blue-green, mirror) and `deployment-gtw` (canary, blue-green), installed with the real Helm,
//! routed by the real `iter8` binary running with the namespace-scoped controller chart's
//! ServiceAccount token. Deployments become Available by the test writing their status as
//! kube-controller-manager's deployment controller does (none runs here). Each test has its
//! own namespace and controller; the release namespace is the test's.

#![allow(clippy::unwrap_used)]

mod e2e;

use e2e::*;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use testenv::routes::{backend_names, backends};

const DEPLOYS: &str = "deployments.apps";

/// A namespace with the controller chart installed and the controller running.
async fn setup(prefix: &str) -> (&'static testenv::ControlPlane, Client, String, Iter8) {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace(prefix).await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    (cp, client, ns, iter8)
}

/// `helm delete httpbin` removes the routing object, the routemap and every version resource.
async fn delete_and_check(
    cp: &testenv::ControlPlane,
    client: &Client,
    ns: &str,
    routing: kube::core::ApiResource,
    versions: &[&str],
) {
    helm(cp, ns, &["delete", "httpbin"], None);
    let mut gone = vec![
        (routing, "httpbin"),
        (cm_ar(), "httpbin-routemap"),
        (svc_ar(), "httpbin"),
    ];
    for v in versions {
        gone.push((deploy_ar(), v));
        gone.push((svc_ar(), v));
    }
    wait_gone(client, ns, &gone).await;
    // Only the controller chart's own Deployment is left.
    assert_eq!(names(client, &deploy_ar(), ns).await, ["iter8"]);
}

/// Destinations of the VirtualService's only route: (host, weight).
fn weighted_destinations(vs: &DynamicObject) -> Vec<(String, u64)> {
    let http = vs.data["spec"]["http"].as_array().unwrap();
    assert_eq!(http.len(), 1, "blue-green has one route: {http:?}");
    http[0]["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["destination"]["host"].as_str().unwrap().to_string(),
                d["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn deployment_istio_canary() {
    let (cp, client, ns, iter8) = setup("e2e-istio-canary").await;
    helm_release(
        cp,
        &ns,
        "httpbin",
        r#"environment: deployment-istio
application:
  metadata:
    name: httpbin
  strategy: canary
  versions:
  - image: kennethreitz/httpbin
    port: 80
  - image: kennethreitz/httpbin
    port: 80
"#,
    );
    let entry = get(&client, &svc_ar(), &ns, "httpbin").await.unwrap();
    assert_eq!(
        entry.data["spec"]["externalName"],
        "istio-ingressgateway.istio-system.svc.cluster.local"
    );
    deployment_progressing(&client, &ns, "httpbin-0").await;
    deployment_progressing(&client, &ns, "httpbin-1").await;
    deployment_available(&client, &ns, "httpbin-0").await;
    let vs = wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "httpbin",
        "the primary route",
        |vs| route_names(vs) == ["httpbin-0"],
    )
    .await;
    assert_owned_by_routemap(&client, &vs, &ns, "httpbin-routemap").await;
    assert_eq!(
        vs.data["spec"]["hosts"],
        json!([
            format!("httpbin.{ns}"),
            format!("httpbin.{ns}.svc"),
            format!("httpbin.{ns}.svc.cluster.local")
        ])
    );
    assert_eq!(
        vs.data["spec"]["http"][0]["route"][0]["destination"]["host"],
        format!("httpbin-0.{ns}.svc.cluster.local")
    );

    // httpbin-1 is still rolling out: nothing changes.
    iter8.settled(DEPLOYS, 2).await;
    let same = get(&client, &vs_ar(), &ns, "httpbin").await.unwrap();
    assert_eq!(same.metadata.resource_version, vs.metadata.resource_version);

    deployment_available(&client, &ns, "httpbin-1").await;
    let vs = wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "httpbin",
        "the candidate route",
        |vs| route_names(vs) == ["httpbin-1", "httpbin-0"],
    )
    .await;
    let candidate = &vs.data["spec"]["http"][0];
    assert_eq!(
        candidate["match"],
        json!([{"headers": {"traffic": {"exact": "test"}}}])
    );
    assert_eq!(
        candidate["route"][0]["destination"]["host"],
        format!("httpbin-1.{ns}.svc.cluster.local")
    );
    assert_eq!(
        candidate["route"][0]["headers"]["response"]["add"]["app-version"],
        "httpbin-1"
    );
    assert!(vs.data["spec"]["http"][1].get("match").is_none());

    delete_and_check(cp, &client, &ns, vs_ar(), &["httpbin-0", "httpbin-1"]).await;
    iter8.assert_clean_log();
}

#[tokio::test]
async fn deployment_istio_blue_green_weights() {
    let (cp, client, ns, iter8) = setup("e2e-istio-bg").await;
    helm_release(
        cp,
        &ns,
        "httpbin",
        r#"environment: deployment-istio
application:
  metadata:
    name: httpbin
  strategy: blue-green
  port: 80
  versions:
  - image: kennethreitz/httpbin
    weight: 70
  - image: kennethreitz/httpbin
    weight: 30
"#,
    );
    let host = |v: &str| format!("{v}.{ns}.svc.cluster.local");
    deployment_available(&client, &ns, "httpbin-0").await;
    // Until blue is available both weigh 0, and then the primary gets weight 1.
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "httpbin",
        "blue only, weight 70",
        |vs| weighted_destinations(vs) == [(host("httpbin-0"), 70)],
    )
    .await;

    deployment_available(&client, &ns, "httpbin-1").await;
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "httpbin",
        "blue 70, green 30",
        |vs| weighted_destinations(vs) == [(host("httpbin-0"), 70), (host("httpbin-1"), 30)],
    )
    .await;

    // A user shifts traffic with the weight annotation on the version's first resource.
    let services = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &svc_ar());
    for (name, weight) in [("httpbin-0", "20"), ("httpbin-1", "80")] {
        services
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    &json!({"metadata": {"annotations": {"iter8.tools/weight": weight}}}),
                ),
            )
            .await
            .unwrap();
    }
    let vs = wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "httpbin",
        "the annotated weights",
        |vs| weighted_destinations(vs) == [(host("httpbin-0"), 20), (host("httpbin-1"), 80)],
    )
    .await;
    assert_owned_by_routemap(&client, &vs, &ns, "httpbin-routemap").await;

    // Green stops being available: all traffic back to blue.
    deployment_progressing(&client, &ns, "httpbin-1").await;
    wait_obj(&client, &vs_ar(), &ns, "httpbin", "blue only again", |vs| {
        weighted_destinations(vs) == [(host("httpbin-0"), 20)]
    })
    .await;

    delete_and_check(cp, &client, &ns, vs_ar(), &["httpbin-0", "httpbin-1"]).await;
    iter8.assert_clean_log();
}

#[tokio::test]
async fn deployment_istio_mirror() {
    let (cp, client, ns, iter8) = setup("e2e-istio-mirror").await;
    helm_release(
        cp,
        &ns,
        "httpbin",
        r#"environment: deployment-istio
application:
  metadata:
    name: httpbin
  strategy: mirror
  versions:
  - image: kennethreitz/httpbin
    port: 80
  - image: kennethreitz/httpbin
    port: 80
    weight: 25
"#,
    );
    deployment_available(&client, &ns, "httpbin-0").await;
    let vs = wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "httpbin",
        "the primary route",
        |vs| route_names(vs) == ["httpbin"],
    )
    .await;
    let route = &vs.data["spec"]["http"][0];
    assert_eq!(
        route["route"][0]["destination"]["host"],
        format!("httpbin-0.{ns}.svc.cluster.local")
    );
    assert!(
        route.get("mirror").is_none(),
        "mirror before the candidate is available: {route}"
    );

    deployment_available(&client, &ns, "httpbin-1").await;
    let vs = wait_obj(&client, &vs_ar(), &ns, "httpbin", "the mirror", |vs| {
        vs.data["spec"]["http"][0].get("mirror").is_some()
    })
    .await;
    let route = &vs.data["spec"]["http"][0];
    assert_eq!(
        route["mirror"]["host"],
        format!("httpbin-1.{ns}.svc.cluster.local")
    );
    assert_eq!(route["mirrorPercentage"]["value"].as_f64(), Some(25.0));
    assert_eq!(
        route["route"][0]["destination"]["host"],
        format!("httpbin-0.{ns}.svc.cluster.local"),
        "the primary still answers"
    );

    delete_and_check(cp, &client, &ns, vs_ar(), &["httpbin-0", "httpbin-1"]).await;
    iter8.assert_clean_log();
}

#[tokio::test]
async fn deployment_gtw_canary() {
    let (cp, client, ns, iter8) = setup("e2e-gtw-canary").await;
    helm_release(
        cp,
        &ns,
        "httpbin",
        r#"environment: deployment-gtw
application:
  metadata:
    name: httpbin
  strategy: canary
  versions:
  - image: kennethreitz/httpbin
    port: 80
  - image: kennethreitz/httpbin
    port: 80
    matches:
    - headers:
      - name: traffic
        value: test
"#,
    );
    deployment_available(&client, &ns, "httpbin-0").await;
    let route = wait_obj(
        &client,
        &httproute_ar(),
        &ns,
        "httpbin",
        "the primary rule",
        |r| r.data["spec"]["rules"].as_array().map(Vec::len) == Some(1),
    )
    .await;
    assert_eq!(backend_names(&route), [vec!["httpbin-0"]]);
    assert_owned_by_routemap(&client, &route, &ns, "httpbin-routemap").await;
    let parent = &route.data["spec"]["parentRefs"][0];
    assert_eq!(
        (&parent["kind"], &parent["name"]),
        (&json!("Service"), &json!("httpbin"))
    );

    deployment_progressing(&client, &ns, "httpbin-1").await;
    iter8.settled(DEPLOYS, 2).await;
    let same = get(&client, &httproute_ar(), &ns, "httpbin").await.unwrap();
    assert_eq!(
        same.metadata.resource_version,
        route.metadata.resource_version
    );

    deployment_available(&client, &ns, "httpbin-1").await;
    let route = wait_obj(
        &client,
        &httproute_ar(),
        &ns,
        "httpbin",
        "the candidate rule",
        |r| r.data["spec"]["rules"].as_array().map(Vec::len) == Some(2),
    )
    .await;
    assert_eq!(
        backend_names(&route),
        [vec!["httpbin-1"], vec!["httpbin-0"]]
    );
    let rules = &route.data["spec"]["rules"];
    // The API server defaults a header match's type to Exact.
    let matches: Value = rules[0]["matches"].clone();
    assert_eq!(matches[0]["headers"][0]["name"], "traffic");
    assert_eq!(matches[0]["headers"][0]["value"], "test");
    assert_eq!(
        rules[0]["backendRefs"][0]["filters"][0]["responseHeaderModifier"]["add"][0]["value"],
        "httpbin-1"
    );

    delete_and_check(
        cp,
        &client,
        &ns,
        httproute_ar(),
        &["httpbin-0", "httpbin-1"],
    )
    .await;
    iter8.assert_clean_log();
}

#[tokio::test]
async fn deployment_gtw_blue_green_weights() {
    let (cp, client, ns, iter8) = setup("e2e-gtw-bg").await;
    helm_release(
        cp,
        &ns,
        "httpbin",
        r#"environment: deployment-gtw
application:
  metadata:
    name: httpbin
  strategy: blue-green
  port: 80
  versions:
  - image: kennethreitz/httpbin
    weight: 70
  - image: kennethreitz/httpbin
    weight: 30
"#,
    );
    deployment_available(&client, &ns, "httpbin-0").await;
    deployment_progressing(&client, &ns, "httpbin-1").await;
    wait_obj(
        &client,
        &httproute_ar(),
        &ns,
        "httpbin",
        "blue only, weight 70",
        |r| backends(r) == [vec![("httpbin-0".to_string(), 70)]],
    )
    .await;

    deployment_available(&client, &ns, "httpbin-1").await;
    let route = wait_obj(
        &client,
        &httproute_ar(),
        &ns,
        "httpbin",
        "blue 70, green 30",
        |r| {
            backends(r)
                == [vec![
                    ("httpbin-0".to_string(), 70),
                    ("httpbin-1".to_string(), 30),
                ]]
        },
    )
    .await;
    assert_owned_by_routemap(&client, &route, &ns, "httpbin-routemap").await;

    delete_and_check(
        cp,
        &client,
        &ns,
        httproute_ar(),
        &["httpbin-0", "httpbin-1"],
    )
    .await;
    iter8.assert_clean_log();
}
