//! What tests and benchmarks create and look at: the ApiResources of the kinds they touch, the
//! objects the release chart renders (InferenceService, routemap ConfigMap), the tutorial's
//! routemap and VirtualServices, and a schemaless CRD (`Widget`) for types the controller
//! learns about from its config. Pure, except [`install_widget_crd`], which writes a file and
//! installs the CRD.
//!
//! What is said to be "as the release chart renders it" is taken from, or tested against, the
//! golden `helm template` outputs in `testdata/charts/*/expected.yaml`, which
//! `crates/testenv/tests/charts.rs` renders with the pinned Helm and compares.

use anyhow::{anyhow, bail, Context, Result};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{json, Value};

use crate::ControlPlane;

/// `helm template wisdom charts/release --namespace default` with the tutorial's step-1
/// values: the golden file `testdata/charts/tutorial-step1/expected.yaml`.
pub const TUTORIAL_STEP1_CHART: &str =
    include_str!("../../../testdata/charts/tutorial-step1/expected.yaml");

/// Like [`TUTORIAL_STEP1_CHART`], with the step-2 values (the candidate `wisdom-1` added).
pub const TUTORIAL_STEP2_CHART: &str =
    include_str!("../../../testdata/charts/tutorial-step2/expected.yaml");

/// The documents of a multi-document YAML text such as `helm template` output.
pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let doc: Value = serde::Deserialize::deserialize(de)?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// The object of `kind` named `name` in rendered chart output.
pub fn chart_object(rendered: &str, kind: &str, name: &str) -> Result<Value> {
    documents(rendered)?
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .ok_or_else(|| anyhow!("the rendered chart has no {kind} {name}"))
}

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
/// `kserve` environment, except that it has no namespace (the caller's) and no
/// `app.kubernetes.io/version` label (the chart's label depends on the values); watched by the
/// controller, no status yet. A test below compares it with the chart's golden output.
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
/// chart labels it (a test below compares it with the chart's golden output); no namespace
/// (the caller's).
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

/// The tutorial's routemap `strSpec` as the release chart renders it for step 1 (`versions`
/// 1: the primary only) or step 2 (2: with the candidate and its route), taken from the
/// chart's golden output, with `app` for `wisdom` and `ns` for `default`.
pub fn tutorial_routemap(app: &str, ns: &str, versions: usize) -> Result<String> {
    let rendered = match versions {
        1 => TUTORIAL_STEP1_CHART,
        2 => TUTORIAL_STEP2_CHART,
        n => bail!("the tutorial has routemaps of 1 or 2 versions, not {n}"),
    };
    let cm = chart_object(rendered, "ConfigMap", "wisdom-routemap")?;
    let spec = cm["data"]["strSpec"]
        .as_str()
        .context("the chart's routemap has no strSpec")?;
    Ok(spec.replace("wisdom", app).replace("default", ns))
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
        assert!(two.contains("{{- if gt (index .Weights 1) 0 }}"), "{two}");
        assert!(!two.contains("wisdom") && !two.contains("default"), "{two}");
        Ok(())
    }

    /// The hand-written objects against what the chart renders (its golden output).
    #[test]
    fn the_inference_service_and_routemap_are_what_the_chart_renders() -> Result<()> {
        for (rendered, name, version) in [
            (TUTORIAL_STEP1_CHART, "wisdom-0", "v0"),
            (TUTORIAL_STEP2_CHART, "wisdom-0", "v0"),
            (TUTORIAL_STEP2_CHART, "wisdom-1", "v1"),
        ] {
            let chart = chart_object(rendered, "InferenceService", name)?;
            let mut ours =
                inference_service_object("wisdom", name, "gs://seldon-models/sklearn/mms/lr_model");
            ours["metadata"]["namespace"] = json!("default");
            ours["metadata"]["labels"]["app.kubernetes.io/version"] = json!(version);
            assert_eq!(ours, chart, "InferenceService {name}");
        }
        for rendered in [TUTORIAL_STEP1_CHART, TUTORIAL_STEP2_CHART] {
            let chart = chart_object(rendered, "ConfigMap", "wisdom-routemap")?;
            let mut ours = routemap_object("wisdom-routemap", chart["data"].clone());
            ours["metadata"]["namespace"] = json!("default");
            assert_eq!(ours, chart);
        }
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
