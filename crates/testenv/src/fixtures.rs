//! What tests and benchmarks create and look at: the ApiResources of the kinds they touch, the
//! objects the release chart renders (InferenceService, routemap ConfigMap), the tutorial's
//! routemap and VirtualServices, and a schemaless CRD (`Widget`) for types the controller
//! learns about from its config. Pure, except [`install_widget_crd`], which writes a file and
//! installs the CRD.

use anyhow::{anyhow, Result};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::ControlPlane;

/// The routemap of step 2 of the tutorial (`wisdom`, two versions, canary) as the release
/// chart renders it in namespace `default`.
pub const TUTORIAL_ROUTEMAP: &str =
    include_str!("../../core/testdata/kserve-canary/routemap-step2.yaml");

/// An ApiResource from its group, version, kind and plural.
pub fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// KServe's InferenceService (serving.kserve.io/v1beta1).
pub fn inference_service() -> ApiResource {
    api_resource(
        "serving.kserve.io",
        "v1beta1",
        "InferenceService",
        "inferenceservices",
    )
}

/// Istio's VirtualService, at the version the release chart's templates write
/// (networking.istio.io/v1beta1).
pub fn virtual_service() -> ApiResource {
    api_resource(
        "networking.istio.io",
        "v1beta1",
        "VirtualService",
        "virtualservices",
    )
}

/// The Gateway API's HTTPRoute (gateway.networking.k8s.io/v1).
pub fn http_route() -> ApiResource {
    api_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
}

/// apps/v1 Deployment.
pub fn deployment() -> ApiResource {
    api_resource("apps", "v1", "Deployment", "deployments")
}

/// v1 Service.
pub fn service() -> ApiResource {
    api_resource("", "v1", "Service", "services")
}

/// v1 ConfigMap.
pub fn config_map() -> ApiResource {
    api_resource("", "v1", "ConfigMap", "configmaps")
}

/// InferenceService `name` of application `app` as the release chart renders it for the
/// `kserve` environment (watched by the controller, no status yet).
pub fn inference_service_object(app: &str, name: &str, storage_uri: &str) -> Value {
    json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/name": app, "iter8.tools/watch": "true"}},
        "spec": {"predictor": {"minReplicas": 1, "model": {"modelFormat": {"name": "sklearn"},
            "runtime": "kserve-mlserver", "storageUri": storage_uri}}}
    })
}

/// Routemap ConfigMap `name` with `data` (usually `{"strSpec": ...}`), labelled as the release
/// chart labels it.
pub fn routemap_object(name: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/managed-by": "iter8",
            "iter8.tools/kind": "routemap",
            "iter8.tools/version": "v1.1"}},
        "data": data,
    })
}

/// The tutorial's routemap `strSpec` for application `app` in namespace `ns`, with 1 version
/// (step 1: the candidate and its route left out) or 2 (step 2).
pub fn tutorial_routemap(app: &str, ns: &str, versions: usize) -> Result<String> {
    let mut spec = TUTORIAL_ROUTEMAP.to_string();
    if versions == 1 {
        cut(
            &mut spec,
            "- resources:\n  - gvrShort: isvc\n    name: wisdom-1",
            "routingTemplates:",
            false,
        )?;
        cut(
            &mut spec,
            "    {{- if gt (index .Weights 1) 0 }}",
            "    {{- end }}\n",
            true,
        )?;
    }
    Ok(spec.replace("wisdom", app).replace("default", ns))
}

/// Removes `text` from `start` up to `end`, and `end` itself if `with_end`.
fn cut(text: &mut String, start: &str, end: &str, with_end: bool) -> Result<()> {
    let missing = |what: &str| anyhow!("the tutorial routemap has no {what:?}");
    let from = text.find(start).ok_or_else(|| missing(start))?;
    let mut to = text.find(end).ok_or_else(|| missing(end))?;
    if with_end {
        to += end.len();
    }
    text.replace_range(from..to, "");
    Ok(())
}

/// The `spec` of the tutorial's VirtualService `wisdom` after `step` (1: the primary only;
/// 2: with the candidate's header route), in namespace `ns`.
pub fn tutorial_virtual_service_spec(ns: &str, step: u8) -> Result<Value> {
    let text = match step {
        1 => include_str!("../../core/testdata/kserve-canary/virtualservice-step1.yaml"),
        _ => include_str!("../../core/testdata/kserve-canary/virtualservice-step2.yaml"),
    };
    let v: Value = serde_yaml::from_str(&text.replace("default", ns))?;
    Ok(v["spec"].clone())
}

/// The CRD `widgets.<group>` (kind `Widget`, v1, namespaced) whose schema accepts anything,
/// status included, with a status subresource: a type whose CRD appears after the controller
/// starts, or whose status KServe's schema would refuse.
pub fn widget_crd(group: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{group}}}
spec:
  group: {group}
  names: {{plural: widgets, singular: widget, kind: Widget}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"#
    )
}

/// The ApiResource of [`widget_crd`]'s kind.
pub fn widget(group: &str) -> ApiResource {
    api_resource(group, "v1", "Widget", "widgets")
}

/// Widget `name` of `group`, watched by the controller.
pub fn widget_object(group: &str, name: &str) -> Value {
    json!({"apiVersion": format!("{group}/v1"), "kind": "Widget",
        "metadata": {"name": name, "labels": {"iter8.tools/watch": "true"}}, "spec": {"size": 1}})
}

/// Installs [`widget_crd`] for `group` into `cp` and waits until it is established.
pub async fn install_widget_crd(cp: &ControlPlane, group: &str) -> Result<ApiResource> {
    let file = cp.dir().join(format!("{group}.yaml"));
    std::fs::write(&file, widget_crd(group))?;
    cp.install_crds(&[file]).await?;
    Ok(widget(group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_routemap_for_one_version_has_neither_the_candidate_nor_its_route() -> Result<()> {
        let one = tutorial_routemap("wisdom", "ns1", 1)?;
        assert!(!one.contains("wisdom-1"), "{one}");
        assert!(!one.contains("{{- end }}"), "{one}");
        assert!(one.contains("name: wisdom-0\n    namespace: ns1"), "{one}");
        let two = tutorial_routemap("app7", "ns2", 2)?;
        assert!(two.contains("name: app7-1\n    namespace: ns2"), "{two}");
        assert!(!two.contains("wisdom") && !two.contains("default"), "{two}");
        Ok(())
    }

    #[test]
    fn the_tutorial_virtual_services_have_their_routes() -> Result<()> {
        let names = |v: &Value| -> Vec<String> {
            v["http"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect()
        };
        assert_eq!(
            names(&tutorial_virtual_service_spec("ns", 1)?),
            ["wisdom-0"]
        );
        assert_eq!(
            names(&tutorial_virtual_service_spec("ns", 2)?),
            ["wisdom-1", "wisdom-0"]
        );
        Ok(())
    }
}
