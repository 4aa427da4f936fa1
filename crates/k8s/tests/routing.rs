//! The routing controller against a real API server: the tutorial's steps, readiness rules,
//! cleanup, drift, restarts and scope. Each test has its own namespace and controller.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use testenv::{fixtures, workloads};

#[tokio::test]
async fn tutorial_step1_renders_the_primary_route_owned_by_the_routemap() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("step1").await.unwrap();
    let _c = start_controller(client.clone(), &ns, config()).await;

    apply_isvc(
        &client,
        &ns,
        "wisdom-0",
        "gs://seldon-models/sklearn/mms/lr_model",
    )
    .await;
    let cm = apply_routemap(
        &client,
        &ns,
        "wisdom-routemap",
        json!({"strSpec": tutorial_str_spec(&ns, 1)}),
    )
    .await;
    // Not ready yet: the only version weighs 1 anyway (all-zero rule), so the primary route
    // is written right away, as the original does.
    set_isvc_status(&client, &ns, "wisdom-0", true, 1).await;

    let vs = wait_vs(&client, &ns, "wisdom", "the step-1 VirtualService", |vs| {
        route_names(vs) == ["wisdom-0"]
    })
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(&ns, 1));
    let owners = vs.owner_references();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "ConfigMap");
    assert_eq!(owners[0].api_version, "v1");
    assert_eq!(owners[0].name, "wisdom-routemap");
    assert_eq!(Some(&owners[0].uid), cm.metadata.uid.as_ref());
    assert_eq!(testenv::objects::field_managers(&vs), ["iter8-controller"]);
}

#[tokio::test]
async fn candidate_route_follows_readiness() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("step2").await.unwrap();
    let c = start_controller(client.clone(), &ns, config()).await;

    apply_isvc(&client, &ns, "wisdom-0", "gs://m").await;
    set_isvc_status(&client, &ns, "wisdom-0", true, 1).await;
    apply_routemap(
        &client,
        &ns,
        "wisdom-routemap",
        json!({"strSpec": tutorial_str_spec(&ns, 2)}),
    )
    .await;
    let before = wait_vs(&client, &ns, "wisdom", "the primary route", |vs| {
        route_names(vs) == ["wisdom-0"]
    })
    .await;
    c.drain(&client, &ns, &isvc_ar(), &marker_isvc("marker-0"), 2)
        .await;
    let reconciles = c.controller.metrics().reconciles.get();

    // The candidate exists but KServe has not made it ready: nothing changes, once the
    // controller has taken in its status and reconciled.
    apply_isvc(&client, &ns, "wisdom-1", "gs://m").await;
    set_isvc_status(&client, &ns, "wisdom-1", false, 1).await;
    c.drain(&client, &ns, &isvc_ar(), &marker_isvc("marker-1"), 4)
        .await;
    assert!(
        c.controller.metrics().reconciles.get() > reconciles,
        "the controller did not reconcile after wisdom-1 appeared"
    );
    let unchanged = get_vs(&client, &ns, "wisdom").await.unwrap();
    assert_eq!(
        unchanged.resource_version(),
        before.resource_version(),
        "not-ready candidate changed routing"
    );

    // Ready: the header route comes first.
    set_isvc_status(&client, &ns, "wisdom-1", true, 1).await;
    let vs = wait_vs(&client, &ns, "wisdom", "the candidate route", |vs| {
        route_names(vs) == ["wisdom-1", "wisdom-0"]
    })
    .await;
    assert_eq!(vs.data["spec"], expected_vs_spec(&ns, 2));

    // Not ready again: the route goes away.
    set_isvc_status(&client, &ns, "wisdom-1", false, 1).await;
    wait_vs(&client, &ns, "wisdom", "the candidate route to go", |vs| {
        route_names(vs) == ["wisdom-0"]
    })
    .await;
}

#[tokio::test]
async fn inference_service_generation_is_not_compared_but_deployment_generation_is() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("generation").await.unwrap();
    let c = start_controller(client.clone(), &ns, config()).await;

    // InferenceService: spec changed (generation 2) while KServe still reports the child's
    // observedGeneration 1 with Ready True: KServe's Ready already tracks the rollout, so the
    // version counts as ready.
    apply_isvc(&client, &ns, "wisdom-0", "gs://m").await;
    set_isvc_status(&client, &ns, "wisdom-0", true, 1).await;
    apply_isvc(&client, &ns, "wisdom-1", "gs://m").await;
    let isvc = apply_isvc(&client, &ns, "wisdom-1", "gs://m-v2").await;
    assert_eq!(isvc.metadata.generation, Some(2));
    set_isvc_status(&client, &ns, "wisdom-1", true, 1).await;
    apply_routemap(
        &client,
        &ns,
        "wisdom-routemap",
        json!({"strSpec": tutorial_str_spec(&ns, 2)}),
    )
    .await;
    wait_vs(&client, &ns, "wisdom", "the isvc candidate route", |vs| {
        route_names(vs) == ["wisdom-1", "wisdom-0"]
    })
    .await;

    // Deployment: Available True but observedGeneration older than generation is not ready.
    let deploy = |name: &str, image: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": {"iter8.tools/watch": "true"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}}
        })
    };
    let deploys = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &deploy_ar());
    let pp = PatchParams::apply("helm").force();
    for (name, image) in [("httpbin-0", "a"), ("httpbin-1", "a"), ("httpbin-1", "b")] {
        deploys
            .patch(name, &pp, &Patch::Apply(&deploy(name, image)))
            .await
            .unwrap();
    }
    // As kube-controller-manager writes it once the pods are available, having observed
    // generation `observed`.
    let available = |name: &'static str, observed: i64| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            workloads::write(&client, &ns, name, workloads::State::Available, observed)
                .await
                .unwrap()
        }
    };
    available("httpbin-0", 1).await;
    let template = format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: httpbin
  namespace: {ns}
spec:
  hosts: [httpbin]
  http:
  {{{{- if gt (index .Weights 1) 0 }}}}
  - name: httpbin-1
    route: [{{destination: {{host: httpbin-1}}}}]
  {{{{- end }}}}
  - name: httpbin-0
    route: [{{destination: {{host: httpbin-0}}}}]
"#
    );
    let spec = json!({
        "versions": [
            {"resources": [{"gvrShort": "deploy", "name": "httpbin-0"}]},
            {"resources": [{"gvrShort": "deploy", "name": "httpbin-1"}]}],
        "routingTemplates": {"canary": {"gvrShort": "vs", "template": template}}
    });
    apply_routemap(
        &client,
        &ns,
        "httpbin-routemap",
        json!({"strSpec": serde_yaml::to_string(&spec).unwrap()}),
    )
    .await;
    // httpbin-1 has no status yet: the primary only.
    let before = wait_vs(
        &client,
        &ns,
        "httpbin",
        "the primary-only httpbin route",
        |vs| route_names(vs) == ["httpbin-0"],
    )
    .await;
    // Every Deployment change so far is taken in and worked off (httpbin-0, httpbin-1 and the
    // marker): what the controller does from here on is its reaction to the next change.
    c.drain(
        &client,
        &ns,
        &deploy_ar(),
        &marker_deployment("marker-0"),
        3,
    )
    .await;
    let metrics = c.controller.metrics();
    let reconciles = metrics.reconciles.get();
    let (applied, unchanged) = (
        metrics.applies_with("applied"),
        metrics.applies_with("unchanged"),
    );

    // Available True, but observed generation 1 while the Deployment is at generation 2.
    available("httpbin-1", 1).await;
    // Evidence that the controller took that status in and reconciled because of it: the
    // store holds a marker created after the status write, the queue is idle, and the
    // reconcile counter and an apply step moved.
    c.drain(
        &client,
        &ns,
        &deploy_ar(),
        &marker_deployment("marker-1"),
        4,
    )
    .await;
    assert!(
        metrics.reconciles.get() > reconciles,
        "the controller did not reconcile after httpbin-1's status changed"
    );
    assert!(
        metrics.applies_with("applied") + metrics.applies_with("unchanged") > applied + unchanged,
        "the reconcile after httpbin-1's status changed did not reach its apply step"
    );
    // ... and wrote nothing.
    let vs = get_vs(&client, &ns, "httpbin").await.unwrap();
    assert_eq!(
        route_names(&vs),
        ["httpbin-0"],
        "a Deployment whose observedGeneration is older must not count as ready"
    );
    assert_eq!(vs.resource_version(), before.resource_version());
    assert_eq!(metrics.applies_with("applied"), applied);

    available("httpbin-1", 2).await;
    wait_vs(
        &client,
        &ns,
        "httpbin",
        "the httpbin candidate route",
        |vs| route_names(vs) == ["httpbin-1", "httpbin-0"],
    )
    .await;
}

#[tokio::test]
async fn deleting_the_routemap_removes_the_routing_and_legacy_finalizers_do_not_hang_deletes() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("cleanup").await.unwrap();
    let _c = start_controller(client.clone(), &ns, config()).await;

    apply_isvc(&client, &ns, "wisdom-0", "gs://m").await;
    set_isvc_status(&client, &ns, "wisdom-0", true, 1).await;
    apply_routemap(
        &client,
        &ns,
        "wisdom-routemap",
        json!({"strSpec": tutorial_str_spec(&ns, 1)}),
    )
    .await;
    wait_vs(&client, &ns, "wisdom", "the VirtualService", |_| true).await;

    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .delete("wisdom-routemap", &DeleteParams::default())
        .await
        .unwrap();
    testenv::wait_for("the VirtualService to be deleted", WAIT, || async {
        get_vs(&client, &ns, "wisdom").await.is_none().then_some(())
    })
    .await
    .unwrap();

    // An InferenceService left with the original controller's finalizer still deletes.
    let isvcs = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &isvc_ar());
    isvcs
        .patch(
            "wisdom-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": ["iter8.tools/finalizer"]}})),
        )
        .await
        .unwrap();
    isvcs
        .delete("wisdom-0", &DeleteParams::default())
        .await
        .unwrap();
    testenv::wait_for("the InferenceService to be gone", WAIT, || async {
        isvcs
            .get_opt("wisdom-0")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn manual_edits_are_undone_and_a_restart_writes_nothing() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("drift").await.unwrap();
    let c = start_controller(client.clone(), &ns, config()).await;

    apply_isvc(&client, &ns, "wisdom-0", "gs://m").await;
    set_isvc_status(&client, &ns, "wisdom-0", true, 1).await;
    apply_routemap(
        &client,
        &ns,
        "wisdom-routemap",
        json!({"strSpec": tutorial_str_spec(&ns, 1)}),
    )
    .await;
    wait_vs(&client, &ns, "wisdom", "the VirtualService", |_| true).await;

    // Someone edits the routing by hand: the controller puts it back.
    let vss = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &vs_ar());
    vss.patch(
        "wisdom",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"hosts": ["evil.example.com"]}})),
    )
    .await
    .unwrap();
    let restored = wait_vs(&client, &ns, "wisdom", "the edit to be undone", |vs| {
        vs.data["spec"] == expected_vs_spec(&ns, 1)
    })
    .await;
    c.settled().await;
    let applied = c.controller.metrics().applies_with("applied");
    drop(c);

    // A new controller with nothing changed performs no write.
    let c2 = start_controller(client.clone(), &ns, config()).await;
    c2.controller.enqueue_all();
    c2.settled().await;
    let after = get_vs(&client, &ns, "wisdom").await.unwrap();
    assert_eq!(
        after.resource_version(),
        restored.resource_version(),
        "restart rewrote the VirtualService"
    );
    assert_eq!(c2.controller.metrics().applies_with("applied"), 0);
    assert!(c2.controller.metrics().applies_with("unchanged") >= 1);
    assert!(applied >= 2, "first controller applied {applied} times");
}

#[tokio::test]
async fn namespace_scope_ignores_other_namespaces_and_cluster_scope_serves_all() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let mine = cp.namespace("scope-a").await.unwrap();
    let other = cp.namespace("scope-b").await.unwrap();
    for ns in [&mine, &other] {
        apply_isvc(&client, ns, "wisdom-0", "gs://m").await;
        set_isvc_status(&client, ns, "wisdom-0", true, 1).await;
        apply_routemap(
            &client,
            ns,
            "wisdom-routemap",
            json!({"strSpec": tutorial_str_spec(ns, 1)}),
        )
        .await;
    }
    let scoped = start_controller(client.clone(), &mine, config()).await;
    wait_vs(
        &client,
        &mine,
        "wisdom",
        "the VirtualService in the watched namespace",
        |_| true,
    )
    .await;
    scoped.settled().await;
    assert!(
        get_vs(&client, &other, "wisdom").await.is_none(),
        "a namespace-scoped controller wrote outside its namespace"
    );
    drop(scoped);

    let _cluster = start_controller(client.clone(), "unused", cluster_config()).await;
    wait_vs(
        &client,
        &other,
        "wisdom",
        "the VirtualService in the other namespace",
        |_| true,
    )
    .await;
}

#[tokio::test]
async fn a_type_whose_crd_appears_later_is_watched_without_a_restart() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("late-crd").await.unwrap();
    let group = format!("late{}.example.com", std::process::id());
    let mut config = config();
    config.resource_types.insert(
        "widget".into(),
        iter8_core::config::ResourceType::new(&group, "v1", "widgets").with_conditions(&["Ready"]),
    );
    let c = start_controller(client.clone(), &ns, config).await;
    assert!(
        c.controller.synced(),
        "a missing CRD must not block readiness"
    );

    let ar = fixtures::install_widget_crd(cp, &group).await.unwrap();
    let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
    for name in ["w0", "w1"] {
        widgets
            .patch(
                name,
                &PatchParams::apply("t").force(),
                &Patch::Apply(&fixtures::widget_object(&group, name)),
            )
            .await
            .unwrap();
    }
    let ready = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    set_status(&client, &ns, "w0", &ar, ready.clone()).await;
    set_status(&client, &ns, "w1", &ar, ready).await;
    let template = format!("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: widgets\n  namespace: {ns}\nspec:\n  hosts: [w]\n  http:\n  {{{{- if gt (index .Weights 1) 0 }}}}\n  - name: w1\n    route: [{{destination: {{host: w1}}}}]\n  {{{{- end }}}}\n  - name: w0\n    route: [{{destination: {{host: w0}}}}]\n");
    let spec = json!({"versions": [{"resources": [{"gvrShort": "widget", "name": "w0"}]}, {"resources": [{"gvrShort": "widget", "name": "w1"}]}],
        "routingTemplates": {"t": {"gvrShort": "vs", "template": template}}});
    apply_routemap(
        &client,
        &ns,
        "widgets-routemap",
        json!({"strSpec": serde_yaml::to_string(&spec).unwrap()}),
    )
    .await;
    // The watch backs off while the CRD is missing; allow for its retry interval.
    testenv::wait_for(
        "the late type's candidate route",
        std::time::Duration::from_secs(60),
        || async {
            get_vs(&client, &ns, "widgets")
                .await
                .filter(|vs| route_names(vs) == ["w1", "w0"])
        },
    )
    .await
    .unwrap();
}
