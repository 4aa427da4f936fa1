//! The controller's lifecycle against a real API server **without** kube-controller-manager,
//! so no garbage collector removes what the controller must remove itself: cleanup on
//! delete, pruning, routing of routemaps deleted while no controller ran, retries of failed
//! deletes and Events, routemaps that become unusable keeping their routing, and standbys
//! that keep every store warm.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use iter8_k8s::Leadership;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

const ROUTEMAP: &str = "wisdom-routemap";

struct Env {
    client: Client,
    ns: String,
}

impl Env {
    async fn new(prefix: &str) -> Env {
        let cp = testenv::shared_without_gc().unwrap();
        let client = cp.client().await.unwrap();
        let ns = cp.namespace(prefix).await.unwrap();
        Env { client, ns }
    }

    /// wisdom-0 ready and the tutorial's one-version routemap.
    async fn step1(&self) -> ConfigMap {
        apply_isvc(&self.client, &self.ns, "wisdom-0", "gs://m").await;
        set_isvc_status(&self.client, &self.ns, "wisdom-0", true, 1).await;
        apply_routemap(
            &self.client,
            &self.ns,
            ROUTEMAP,
            json!({"strSpec": tutorial_str_spec(&self.ns, 1)}),
        )
        .await
    }

    /// A controller for this namespace that always leads.
    async fn controller(&self) -> Running {
        start_controller_as(
            self.client.clone(),
            &self.ns,
            config(),
            Leadership::always(),
        )
        .await
    }

    /// VirtualService `wisdom`, once it exists.
    async fn wisdom(&self) -> DynamicObject {
        wait_vs(
            &self.client,
            &self.ns,
            "wisdom",
            "the VirtualService",
            |_| true,
        )
        .await
    }

    async fn vs(&self, name: &str) -> Option<DynamicObject> {
        get_vs(&self.client, &self.ns, name).await
    }

    async fn wait_gone(&self, name: &str) {
        testenv::wait_for(
            &format!("VirtualService {name} to be deleted"),
            WAIT,
            || async { self.vs(name).await.is_none().then_some(()) },
        )
        .await
        .unwrap();
    }

    async fn warning(&self, needles: &[&str]) -> String {
        wait_warning(&self.client, &self.ns, ROUTEMAP, needles).await
    }

    async fn patch_routemap(&self, patch: Value) {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .patch(ROUTEMAP, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    async fn delete_routemap(&self) {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .delete(ROUTEMAP, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// Two VirtualService templates, `wisdom` (the tutorial's) and `wisdom-extra`.
fn two_templates(ns: &str) -> String {
    let spec = tutorial_str_spec(ns, 1);
    let extra = "  extra:\n    gvrShort: vs\n    template: |\n      apiVersion: networking.istio.io/v1beta1\n      kind: VirtualService\n      metadata:\n        name: wisdom-extra\n      spec:\n        hosts: [\"extra.example.com\"]\n        http:\n        - route:\n          - destination:\n              host: wisdom-0\n";
    format!("{spec}{extra}")
}

#[tokio::test]
async fn an_unaccepted_version_label_keeps_the_routing_and_says_why() {
    let env = Env::new("version-label").await;
    let ctl = env.controller().await;
    env.step1().await;
    let before = env.wisdom().await;

    env.patch_routemap(json!({"metadata": {"labels": {"iter8.tools/version": "v9"}}}))
        .await;
    let w = env
        .warning(&["RoutemapIgnored", "\"v9\"", "accepted: v1.1"])
        .await;
    assert!(w.contains("kept"), "{w}");
    // The Warning proves the controller saw the change; the routing is untouched.
    let after = env.vs("wisdom").await.expect("the VirtualService is kept");
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(ctl.controller.metrics().deletes.get(), 0);

    // Accepted again: reconciled again.
    let reconciles = ctl.controller.metrics().reconciles.get();
    env.patch_routemap(json!({"metadata": {"labels": {"iter8.tools/version": "v1.1"}}}))
        .await;
    ctl.wait_metric("a reconcile after the fix", |m| {
        m.reconciles.get() > reconciles
    })
    .await;
    ctl.settled().await;
    assert!(env.vs("wisdom").await.is_some());
}

#[tokio::test]
async fn a_routemap_that_loses_its_kind_label_keeps_its_routing() {
    let env = Env::new("kind-label").await;
    let ctl = env.controller().await;
    env.step1().await;
    let before = env.wisdom().await;

    env.patch_routemap(json!({"metadata": {"labels": {"iter8.tools/kind": null}}}))
        .await;
    let w = env
        .warning(&[
            "RoutemapIgnored",
            "iter8.tools/kind=routemap",
            "VirtualService wisdom",
        ])
        .await;
    assert!(w.contains("kept"), "{w}");
    let after = env.vs("wisdom").await.expect("the VirtualService is kept");
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(ctl.controller.metrics().deletes.get(), 0);

    // Labelled again, then deleted: now its routing goes, by the controller's hand.
    env.patch_routemap(json!({"metadata": {"labels": {"iter8.tools/kind": "routemap"}}}))
        .await;
    ctl.settled().await;
    env.delete_routemap().await;
    env.wait_gone("wisdom").await;
    assert_eq!(ctl.controller.metrics().deletes.get(), 1);
}

#[tokio::test]
async fn an_invalid_str_spec_keeps_the_routing() {
    let env = Env::new("invalid-spec").await;
    let ctl = env.controller().await;
    env.step1().await;
    let before = env.wisdom().await;
    env.patch_routemap(json!({"data": {"strSpec": "versions: [unclosed"}}))
        .await;
    let w = env.warning(&["InvalidRoutemap", "strSpec"]).await;
    // Says its cause once.
    assert_eq!(w.matches("invalid routemap").count(), 1, "{w}");
    let after = env.vs("wisdom").await.expect("the VirtualService is kept");
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(ctl.controller.metrics().deletes.get(), 0);
}

#[tokio::test]
async fn deleting_a_routemap_deletes_its_routing_without_the_garbage_collector() {
    let env = Env::new("delete").await;
    let ctl = env.controller().await;
    env.step1().await;
    env.wisdom().await;
    env.delete_routemap().await;
    env.wait_gone("wisdom").await;
    assert_eq!(ctl.controller.metrics().deletes.get(), 1);
}

#[tokio::test]
async fn routing_objects_no_template_renders_any_more_are_deleted() {
    let env = Env::new("prune").await;
    let ctl = env.controller().await;
    env.step1().await;
    env.patch_routemap(json!({"data": {"strSpec": two_templates(&env.ns)}}))
        .await;
    wait_vs(
        &env.client,
        &env.ns,
        "wisdom-extra",
        "the second VirtualService",
        |_| true,
    )
    .await;
    let kept = env.vs("wisdom").await.unwrap();

    // The template is removed: its object goes, the other stays untouched.
    env.patch_routemap(json!({"data": {"strSpec": tutorial_str_spec(&env.ns, 1)}}))
        .await;
    env.wait_gone("wisdom-extra").await;
    assert_eq!(
        env.vs("wisdom").await.unwrap().resource_version(),
        kept.resource_version()
    );
    assert_eq!(ctl.controller.metrics().deletes.get(), 1);
    let deleted: Vec<String> = events(&env.client, &env.ns, ROUTEMAP)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Deleted"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(
        deleted,
        [format!(
            "deleted VirtualService {}/wisdom-extra: no routing template renders it any more",
            env.ns
        )]
    );

    // Strategy none: the release chart renders no routing template at all (its golden output
    // testdata/charts/kserve-none/expected.yaml).
    let versions_only = tutorial_str_spec(&env.ns, 1);
    let versions_only = &versions_only[..versions_only.find("routingTemplates:").unwrap()];
    env.patch_routemap(json!({"data": {"strSpec": versions_only}}))
        .await;
    env.wait_gone("wisdom").await;
    assert_eq!(ctl.controller.metrics().deletes.get(), 2);
}

#[tokio::test]
async fn routing_of_a_routemap_deleted_while_no_controller_ran_is_deleted_at_start() {
    let env = Env::new("orphan").await;
    let first = env.controller().await;
    env.step1().await;
    env.wisdom().await;
    first.settled().await;
    drop(first);

    env.delete_routemap().await;
    let second = env.controller().await;
    env.wait_gone("wisdom").await;
    assert_eq!(second.controller.metrics().deletes.get(), 1);
}

/// A VirtualService that looks like ours (label, ownerReference) but that someone else wrote.
async fn foreign_vs(env: &Env, name: &str, owner_uid: &str) {
    let obj = json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": env.ns,
            "labels": {"iter8.tools/routing": "true"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": ROUTEMAP, "uid": owner_uid}]},
        "spec": {"hosts": ["foreign.example.com"]},
    });
    Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.ns, &vs_ar())
        .patch(
            name,
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn objects_the_controller_did_not_write_are_never_deleted() {
    let env = Env::new("foreign").await;
    let ctl = env.controller().await;
    let cm = env.step1().await;
    let uid = cm.uid().unwrap();
    env.wisdom().await;
    foreign_vs(&env, "foreign", &uid).await;

    // Pruning (strategy none) deletes ours, not theirs.
    let versions_only = tutorial_str_spec(&env.ns, 1);
    let versions_only = &versions_only[..versions_only.find("routingTemplates:").unwrap()];
    env.patch_routemap(json!({"data": {"strSpec": versions_only}}))
        .await;
    env.wait_gone("wisdom").await;
    ctl.settled().await;
    assert!(env.vs("foreign").await.is_some(), "pruned a foreign object");

    // Neither does cleanup after the routemap is deleted, nor a restart's orphan sweep.
    env.patch_routemap(json!({"data": {"strSpec": tutorial_str_spec(&env.ns, 1)}}))
        .await;
    wait_vs(
        &env.client,
        &env.ns,
        "wisdom",
        "the VirtualService again",
        |_| true,
    )
    .await;
    env.delete_routemap().await;
    env.wait_gone("wisdom").await;
    ctl.settled().await;
    drop(ctl);
    let again = env.controller().await;
    again.controller.enqueue_all();
    again
        .wait_metric("the orphan sweep to run", |m| m.reconciles.get() >= 1)
        .await;
    again.settled().await;
    assert!(
        env.vs("foreign").await.is_some(),
        "deleted a foreign object"
    );
    assert_eq!(again.controller.metrics().deletes.get(), 0);
}

/// The rules a controller needs in `ns` (every configured type, routemaps, Events), with
/// `vs_verbs` for VirtualServices and `event_verbs` for Events.
fn rules(vs_verbs: &[&str], event_verbs: &[&str]) -> Vec<PolicyRule> {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let read = ["get", "list", "watch"];
    vec![
        rule(&[""], &["services", "configmaps"], &read),
        rule(&["apps"], &["deployments"], &read),
        rule(&["serving.kserve.io"], &["inferenceservices"], &read),
        rule(&["gateway.networking.k8s.io"], &["httproutes"], &read),
        rule(&["networking.istio.io"], &["serviceentries"], &read),
        rule(&["networking.istio.io"], &["virtualservices"], vs_verbs),
        rule(&["events.k8s.io"], &["events"], event_verbs),
    ]
}

/// Runs the controller as ServiceAccount `iter8` of the namespace, bound to Role `iter8`.
async fn as_service_account(env: &Env, rules: Vec<PolicyRule>) -> Client {
    let cp = testenv::shared_without_gc().unwrap();
    let kubeconfig = cp
        .service_account_kubeconfig(&env.ns, "iter8", Duration::from_secs(3600))
        .await
        .unwrap();
    set_role(env, rules).await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "iter8"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "iter8"},
        "subjects": [{"kind": "ServiceAccount", "name": "iter8", "namespace": env.ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    testenv::client_from_yaml(&kubeconfig).await.unwrap()
}

async fn set_role(env: &Env, rules: Vec<PolicyRule>) {
    let role = Role {
        metadata: kube::api::ObjectMeta {
            name: Some("iter8".into()),
            ..Default::default()
        },
        rules: Some(rules),
    };
    Api::<Role>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "iter8",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&role),
        )
        .await
        .unwrap();
}

const VS_WITHOUT_DELETE: [&str; 5] = ["get", "list", "watch", "create", "patch"];

#[tokio::test]
async fn a_failed_delete_is_retried_with_backoff() {
    let env = Env::new("delete-retry").await;
    let all = ["get", "list", "watch", "create", "patch", "delete"];
    let client = as_service_account(&env, rules(&VS_WITHOUT_DELETE, &["create", "patch"])).await;
    let ctl = start_controller_as(client, &env.ns, config(), Leadership::always()).await;
    env.step1().await;
    env.wisdom().await;

    env.delete_routemap().await;
    ctl.wait_metric("a forbidden delete", |m| m.errors_with("delete") >= 1)
        .await;
    assert!(env.vs("wisdom").await.is_some());
    set_role(&env, rules(&all, &["create", "patch"])).await;
    let granted = Instant::now();
    env.wait_gone("wisdom").await;
    println!("deleted {:?} after the grant", granted.elapsed());
    assert_eq!(ctl.controller.metrics().deletes.get(), 1);
}

#[tokio::test]
async fn a_failed_event_is_published_later() {
    let env = Env::new("event-retry").await;
    let client = as_service_account(&env, rules(&VS_WITHOUT_DELETE, &["get"])).await;
    let ctl = start_controller_as(client, &env.ns, config(), Leadership::always()).await;
    apply_isvc(&env.client, &env.ns, "wisdom-0", "gs://m").await;
    apply_routemap(
        &env.client,
        &env.ns,
        ROUTEMAP,
        json!({"strSpec": "versions: [unclosed"}),
    )
    .await;
    ctl.wait_metric("a forbidden Event", |m| m.errors_with("event") >= 1)
        .await;
    assert!(warnings(&env.client, &env.ns, ROUTEMAP).await.is_empty());
    set_role(&env, rules(&VS_WITHOUT_DELETE, &["create", "patch"])).await;
    // A forbidden publish is not retried by itself (that would repeat every minute in a
    // namespace being deleted); it is not remembered as sent either, so the routemap's next
    // reconcile publishes it. Here the next reconcile comes from an unrelated change.
    env.patch_routemap(json!({"metadata": {"annotations": {"touched": "yes"}}}))
        .await;
    env.warning(&["InvalidRoutemap"]).await;
}

#[tokio::test]
async fn news_that_failed_to_publish_goes_out_at_the_next_reconcile() {
    let env = Env::new("event-outbox").await;
    let client = as_service_account(&env, rules(&VS_WITHOUT_DELETE, &["get"])).await;
    let ctl = start_controller_as(client, &env.ns, config(), Leadership::always()).await;
    env.step1().await;
    env.wisdom().await;
    ctl.wait_metric("a forbidden Event", |m| m.errors_with("event") >= 1)
        .await;
    set_role(&env, rules(&VS_WITHOUT_DELETE, &["create", "patch"])).await;
    // Nothing changes for the routing (the reconcile finds it unchanged), yet the Applied
    // Event that could not be published goes out.
    env.patch_routemap(json!({"metadata": {"annotations": {"touched": "yes"}}}))
        .await;
    testenv::wait_for("the Applied Event", WAIT, || async {
        events(&env.client, &env.ns, ROUTEMAP)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Applied"))
    })
    .await
    .unwrap();
    assert_eq!(ctl.controller.metrics().applies_with("applied"), 1);
}

#[tokio::test]
async fn a_standby_keeps_every_store_warm_and_takes_over_without_writing() {
    let env = Env::new("standby").await;
    let leader = env.controller().await;
    env.step1().await;
    let vs = env.wisdom().await;
    leader.settled().await;

    let standby_lease = Leadership::standby();
    let standby =
        start_controller_as(env.client.clone(), &env.ns, config(), standby_lease.clone()).await;
    standby.settled().await;
    let routing_watch = "routing virtualservices.networking.istio.io: Listed";
    assert!(
        standby
            .controller
            .watches()
            .iter()
            .any(|w| w == routing_watch),
        "standby watches: {:?}",
        standby.controller.watches()
    );

    drop(leader);
    standby_lease.lead_until(Instant::now() + Duration::from_secs(3600));
    standby.controller.enqueue_all();
    // Evidence that it reconciled, before checking that it wrote nothing.
    standby
        .wait_metric("the new leader to reconcile", |m| {
            m.reconciles.get() >= 1 && m.applies_with("unchanged") >= 1
        })
        .await;
    standby.settled().await;
    assert_eq!(standby.controller.metrics().applies_with("applied"), 0);
    assert_eq!(
        env.vs("wisdom").await.unwrap().resource_version(),
        vs.resource_version()
    );
}

#[tokio::test]
async fn a_refused_apply_keeps_the_object_it_would_have_replaced() {
    let env = Env::new("refused-rename").await;
    let ctl = env.controller().await;
    env.step1().await;
    let before = env.wisdom().await;
    // The template now renders another object, which the API server refuses (hosts must be
    // a list): the old object must keep serving.
    let renamed = "routingTemplates:\n  renamed:\n    gvrShort: vs\n    template: |\n      apiVersion: networking.istio.io/v1beta1\n      kind: VirtualService\n      metadata:\n        name: wisdom-new\n      spec:\n        hosts: 5\n";
    let spec = tutorial_str_spec(&env.ns, 1);
    let spec = format!(
        "{}{renamed}",
        &spec[..spec.find("routingTemplates:").unwrap()]
    );
    env.patch_routemap(json!({"data": {"strSpec": spec}})).await;
    // (kube-apiserver answers a server-side apply that does not fit the schema with a 500,
    // so this is an ApplyFailed, retried with backoff, rather than a RefusedObject.)
    env.warning(&["routing template renamed", "wisdom-new", ".spec.hosts"])
        .await;
    ctl.settled().await;
    let after = env.vs("wisdom").await.expect("the old object is kept");
    assert_eq!(after.resource_version(), before.resource_version());
    assert!(env.vs("wisdom-new").await.is_none());
    assert_eq!(ctl.controller.metrics().deletes.get(), 0);
}

#[tokio::test]
async fn a_type_the_controller_may_not_read_holds_the_routemaps_that_read_it() {
    let env = Env::new("forbidden-type").await;
    let first = env.controller().await;
    env.step1().await;
    let before = env.wisdom().await;
    first.settled().await;
    drop(first);

    // Restarted without the right to read InferenceServices: their store is empty, and
    // routing written from it would drop wisdom-0.
    let without_isvc: Vec<PolicyRule> = rules(&VS_WITHOUT_DELETE, &["create", "patch"])
        .into_iter()
        .filter(|r| r.api_groups.as_deref() != Some(&["serving.kserve.io".to_string()]))
        .collect();
    let client = as_service_account(&env, without_isvc).await;
    let ctl = start_controller_as(client, &env.ns, config(), Leadership::always()).await;
    let w = env
        .warning(&[
            "ResourceProblem",
            "inferenceservices.serving.kserve.io",
            "kept",
        ])
        .await;
    assert!(w.contains("forbidden"), "{w}");
    ctl.settled().await;
    assert_eq!(
        env.vs("wisdom").await.unwrap().resource_version(),
        before.resource_version()
    );
    assert_eq!(ctl.controller.metrics().applies_with("applied"), 0);

    // Granted: the type is listed, the routemap reconciled, nothing needs writing.
    set_role(&env, rules(&VS_WITHOUT_DELETE, &["create", "patch"])).await;
    ctl.wait_metric("the routemap to be reconciled", |m| {
        m.applies_with("unchanged") >= 1
    })
    .await;
    assert_eq!(ctl.controller.metrics().applies_with("applied"), 0);
    assert_eq!(
        env.vs("wisdom").await.unwrap().resource_version(),
        before.resource_version()
    );
}

#[tokio::test]
async fn an_existing_object_the_controller_did_not_write_is_not_taken_over() {
    let env = Env::new("not-ours").await;
    let _ctl = env.controller().await;
    let theirs = json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "wisdom", "namespace": env.ns},
        "spec": {"hosts": ["theirs.example.com"]},
    });
    let before = Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.ns, &vs_ar())
        .patch(
            "wisdom",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    env.step1().await;
    let w = env
        .warning(&[
            "RefusedObject",
            "VirtualService",
            "not written by this controller",
        ])
        .await;
    assert!(w.contains("someone-else"), "names who has it: {w}");
    let after = env.vs("wisdom").await.unwrap();
    assert_eq!(after.resource_version(), before.resource_version());
    assert_eq!(after.data["spec"]["hosts"], json!(["theirs.example.com"]));
}

#[tokio::test]
async fn two_routemaps_rendering_one_object_keep_a_stable_winner() {
    let env = Env::new("two-owners").await;
    let ctl = env.controller().await;
    env.step1().await;
    let first = env.wisdom().await;
    // A second routemap renders the same VirtualService.
    apply_routemap(
        &env.client,
        &env.ns,
        "copycat",
        json!({"strSpec": tutorial_str_spec(&env.ns, 1)}),
    )
    .await;
    let w = testenv::wait_for("a Warning on the second routemap", WAIT, || async {
        warnings(&env.client, &env.ns, "copycat")
            .await
            .into_iter()
            .find(|w| w.contains("RefusedObject"))
    })
    .await
    .unwrap();
    assert!(
        w.contains(&format!("belongs to routemap {}/{ROUTEMAP}", env.ns)),
        "names the owner: {w}"
    );
    let vs = env.vs("wisdom").await.unwrap();
    assert_eq!(vs.resource_version(), first.resource_version());
    assert_eq!(vs.owner_references()[0].name, ROUTEMAP);

    // Deleting the second routemap deletes nothing of the first's.
    let reconciles = ctl.controller.metrics().reconciles.get();
    Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .delete("copycat", &DeleteParams::default())
        .await
        .unwrap();
    ctl.wait_metric("the deletion to be reconciled", |m| {
        m.reconciles.get() > reconciles
    })
    .await;
    ctl.settled().await;
    assert!(env.vs("wisdom").await.is_some());
    assert_eq!(ctl.controller.metrics().deletes.get(), 0);
}

#[tokio::test]
async fn routing_objects_the_original_iter8_wrote_are_adopted() {
    let env = Env::new("migration").await;
    // The routemap first, as Iter8 v1.1 left it, and the VirtualService its controller wrote:
    // owned by the routemap with `kind: configmap` (lower case, as v1.1 wrote it), no routing
    // label, no hash annotation.
    let cm = env.step1().await;
    let original = json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "wisdom", "namespace": env.ns,
            "ownerReferences": [{"apiVersion": "v1", "kind": "configmap", "name": ROUTEMAP,
                                 "uid": cm.uid().unwrap()}]},
        "spec": {"hosts": ["old.example.com"]},
    });
    Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.ns, &vs_ar())
        .patch(
            "wisdom",
            &PatchParams::apply("iter8"),
            &Patch::Apply(&original),
        )
        .await
        .unwrap();
    let ctl = env.controller().await;
    let adopted = wait_vs(
        &env.client,
        &env.ns,
        "wisdom",
        "the VirtualService adopted",
        |vs| vs.labels().get("iter8.tools/routing").map(String::as_str) == Some("true"),
    )
    .await;
    assert_eq!(adopted.data["spec"], expected_vs_spec(&env.ns, 1));
    ctl.settled().await;
    let refused: Vec<String> = warnings(&env.client, &env.ns, ROUTEMAP)
        .await
        .into_iter()
        .filter(|w| w.starts_with("RefusedObject"))
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}
