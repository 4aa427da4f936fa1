//! The control plane itself: server-side apply of real CRD objects, garbage collection by
//! owner references, RBAC in force, and clear failures for bad input.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use testenv::fixtures::{inference_service, virtual_service};

#[tokio::test]
async fn applies_crd_objects_and_collects_garbage() {
    let cp = testenv::shared().expect("control plane");
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("apply").await.unwrap();
    let pp = PatchParams::apply("testenv-test").force();

    let isvcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &inference_service());
    let isvc = json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "wisdom-0", "labels": {"iter8.tools/watch": "true"}},
        "spec": {"predictor": {"minReplicas": 1, "model": {"modelFormat": {"name": "sklearn"},
            "runtime": "kserve-mlserver", "storageUri": "gs://seldon-models/sklearn/mms/lr_model"}}}
    });
    isvcs
        .patch("wisdom-0", &pp, &Patch::Apply(&isvc))
        .await
        .unwrap();
    let back = isvcs.get("wisdom-0").await.unwrap();
    assert_eq!(
        back.data["spec"]["predictor"]["model"]["runtime"],
        "kserve-mlserver"
    );
    assert_eq!(back.metadata.generation, Some(1));

    // A VirtualService owned by a ConfigMap disappears when the ConfigMap is deleted.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "owner"}, "data": {"a": "b"}})).unwrap();
    let cm = cms.create(&PostParams::default(), &cm).await.unwrap();
    let uid = cm.metadata.uid.clone().unwrap();
    let vss: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &virtual_service());
    let vs = json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "wisdom", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]},
        "spec": {"hosts": ["wisdom.default"], "http": [{"route": [{"destination": {"host": "x"}}]}]}
    });
    vss.patch("wisdom", &pp, &Patch::Apply(&vs)).await.unwrap();
    let back = vss.get("wisdom").await.unwrap();
    assert_eq!(back.data["spec"]["hosts"][0], "wisdom.default");
    let managers = testenv::objects::field_managers(&back);
    assert!(
        managers.contains(&"testenv-test".to_string()),
        "{managers:?}"
    );

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    // The garbage collector re-reads discovery about every 30 s, so a fresh CRD can lag.
    testenv::wait_for(
        "the garbage collector to delete the VirtualService",
        Duration::from_secs(90),
        || async { vss.get_opt("wisdom").await.unwrap().is_none().then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn rbac_refuses_what_a_role_does_not_grant() {
    let cp = testenv::shared().expect("control plane");
    let admin = cp.client().await.unwrap();
    let ns = cp.namespace("rbac").await.unwrap();

    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "rules": [{"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"],
                   "verbs": ["get", "list", "watch"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "controller", "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let kubeconfig = cp
        .service_account_kubeconfig(&ns, "controller", Duration::from_secs(3600))
        .await
        .unwrap();
    let sa = testenv::client_from_yaml(&kubeconfig).await.unwrap();
    let vss: Api<DynamicObject> = Api::namespaced_with(sa, &ns, &virtual_service());

    // Granted: list works.
    vss.list(&Default::default())
        .await
        .expect("list is granted");
    // Not granted: patch is refused with 403.
    let vs = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                    "metadata": {"name": "x"}, "spec": {"hosts": ["x"]}});
    let err = vss
        .patch("x", &PatchParams::apply("sa").force(), &Patch::Apply(&vs))
        .await
        .expect_err("patch must be refused");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected a 403, got {other}"),
    }
    // A user with no binding at all cannot even list.
    let nobody = testenv::client_from_yaml(&cp.user_kubeconfig("nobody").unwrap())
        .await
        .unwrap();
    let err = Api::<DynamicObject>::namespaced_with(nobody, &ns, &virtual_service())
        .list(&Default::default())
        .await
        .expect_err("list must be refused");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
}
