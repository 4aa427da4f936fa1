//! The real KServe manager (`KSERVE_VERSION`, built by `testenv/setup.sh` from
//! `github.com/kserve/kserve/cmd/manager`) run against a [`ControlPlane`] in Standard mode
//! (formerly RawDeployment): for each InferenceService it creates a Deployment and a Service
//! `<name>-predictor` and writes the InferenceService's status from the Deployment's. With
//! [`crate::kwok`] and the control plane's workload controllers, the pods exist, and become
//! Ready only when the harness says their model answers.
//!
//! What it runs with, as KServe ships it (copied into the cache from its module) but adapted:
//! - the CRDs it watches or lists besides InferenceService (the `minimal` ones);
//! - ConfigMap `kserve/inferenceservice-config` ([`config_map`]): Standard as the default
//!   deployment mode, and no Ingress and no Istio VirtualService (routing is this project's);
//! - ClusterServingRuntime `kserve-mlserver` ([`serving_runtime`]): the image named after the
//!   MLServer version the data plane runs (nothing pulls it);
//! - a self-signed serving certificate for its webhook server, and its webhook configurations
//!   ([`webhook_configurations`]) pointing at it on 127.0.0.1: InferenceServices are defaulted
//!   and validated, and their pods mutated (storage-initializer), as in a cluster. They keep
//!   KServe's `failurePolicy: Fail`: a manager belongs with its control plane, which it must
//!   outlive no less than its webhook configurations do;
//! - no metrics or health endpoints, a free webhook port, no leader election.
//!
//! [`config_map`], [`serving_runtime`] and [`webhook_configurations`] are pure; the rest does
//! process, file and API I/O.
//! The manager stops when the [`KServeManager`] is dropped; its log is `kserve-manager.log` in
//! the control plane's folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{json, Value};

use crate::fixtures::api_resource;
use crate::process::{self, Process};
use crate::{tools, wait_for, ControlPlane};

/// The namespace KServe's manager runs "in" (`POD_NAMESPACE`): where its ConfigMap lives.
pub const NAMESPACE: &str = "kserve";

/// The name of KServe's ConfigMap.
pub const CONFIG_MAP: &str = "inferenceservice-config";

/// The ClusterServingRuntime the test InferenceServices name.
pub const RUNTIME: &str = "kserve-mlserver";

const START_TIMEOUT: Duration = Duration::from_secs(90);
const FIELD_MANAGER: &str = "testenv-kserve";

/// The real KServe manager, running.
pub struct KServeManager {
    process: Process,
    webhook_port: u16,
}

impl KServeManager {
    /// Installs what the manager needs (CRDs, namespace, ConfigMap, serving runtime), starts it,
    /// waits until its InferenceService controller runs, and registers its webhooks.
    pub async fn start(cp: &ControlPlane) -> Result<KServeManager> {
        let dir = tools::kserve_dir()?;
        cp.install_crds(&yaml_files(&dir.join("crds"))?).await?;
        let client = cp.client().await?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();

        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
        Api::<Namespace>::all(client.clone())
            .patch(NAMESPACE, &pp, &Patch::Apply(&ns))
            .await
            .with_context(|| format!("creating namespace {NAMESPACE}"))?;

        let cm_yaml = read(&dir.join("config/inferenceservice.yaml"))?;
        let cm: ConfigMap = serde_json::from_value(config_map(&cm_yaml)?)?;
        Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
            .patch(CONFIG_MAP, &pp, &Patch::Apply(&cm))
            .await
            .with_context(|| format!("applying ConfigMap {NAMESPACE}/{CONFIG_MAP}"))?;

        let runtime_yaml = read(&dir.join("config/kserve-mlserver.yaml"))?;
        let runtime = serving_runtime(&runtime_yaml, tools::version("MLSERVER_VERSION"))?;
        let ar = api_resource(
            "serving.kserve.io",
            "v1alpha1",
            "ClusterServingRuntime",
            "clusterservingruntimes",
        );
        let runtime: DynamicObject = serde_json::from_value(runtime)?;
        Api::<DynamicObject>::all_with(client.clone(), &ar)
            .patch(RUNTIME, &pp, &Patch::Apply(&runtime))
            .await
            .with_context(|| format!("applying ClusterServingRuntime {RUNTIME}"))?;

        // controller-runtime's webhook server reads $TMPDIR/k8s-webhook-server/serving-certs.
        let tmp = cp.dir().join("kserve-manager-tmp");
        let cert_pem = write_serving_cert(&tmp.join("k8s-webhook-server/serving-certs"))?;
        let webhook_port = process::free_port()?;
        let kubeconfig = cp.kubeconfig_path().display().to_string();
        let tmp = tmp.display().to_string();
        let mut process = Process::start_with_env(
            "kserve-manager",
            &dir.join("bin/manager"),
            &[
                "--metrics-addr=0".into(),
                "--health-probe-addr=0".into(),
                format!("--webhook-port={webhook_port}"),
                "--leader-elect=false".into(),
            ],
            &[
                ("KUBECONFIG", kubeconfig.as_str()),
                ("POD_NAMESPACE", NAMESPACE),
                ("TMPDIR", tmp.as_str()),
            ],
            cp.dir(),
        )?;

        let log = process.log_path().to_path_buf();
        let started = wait_for(
            "KServe's InferenceService controller to start its workers",
            START_TIMEOUT,
            || {
                // Stops waiting early if the manager exited; checked right after.
                let exited = process.check_running().is_err();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let started = text
                    .lines()
                    .any(|l| l.contains("Starting workers") && l.contains("\"inferenceservice\""));
                async move { (started || exited).then_some(()) }
            },
        )
        .await;
        process.check_running()?;
        started
            .map_err(|e| e.context(format!("kserve-manager's log:\n{}", process.log_tail(25))))?;

        // Its webhook server listens by now (controller-runtime starts it before the
        // controllers); register the webhooks with it.
        let webhooks_yaml = read(&dir.join("config/webhooks.yaml"))?;
        for config in webhook_configurations(&webhooks_yaml, webhook_port, &cert_pem)? {
            let kind = config["kind"].as_str().unwrap_or_default().to_string();
            let name = config["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plural = format!("{}s", kind.to_lowercase());
            let ar = api_resource("admissionregistration.k8s.io", "v1", &kind, &plural);
            let obj: DynamicObject = serde_json::from_value(config)?;
            Api::<DynamicObject>::all_with(client.clone(), &ar)
                .patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .with_context(|| format!("applying {kind} {name}"))?;
        }
        Ok(KServeManager {
            process,
            webhook_port,
        })
    }

    /// Fails, with the end of its log, if the manager has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// The last lines of its log, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "last lines of {}:\n{}",
            self.process.log_path().display(),
            self.process.log_tail(30)
        )
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The port its webhook server listens on, on every address (controller-runtime's default).
    pub fn webhook_port(&self) -> u16 {
        self.webhook_port
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// KServe's ConfigMap (`config/configmap/inferenceservice.yaml` of its module, as YAML) made
/// fit for this environment, as JSON: Standard mode by default; no Ingress and no Istio
/// VirtualService, since routing to `<isvc>-predictor` is this project's. Every other setting is
/// KServe's (the storage initializer's quantities are parsed at start, so they stay).
pub fn config_map(module_yaml: &str) -> Result<Value> {
    let mut cm: Value = serde_yaml::from_str(module_yaml).context("KServe's ConfigMap YAML")?;
    let data = cm
        .get_mut("data")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| anyhow!("KServe's ConfigMap has no data"))?;
    let ingress = data
        .get("ingress")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("KServe's ConfigMap has no ingress"))?;
    let mut ingress: Value = serde_json::from_str(ingress).context("KServe's ingress config")?;
    let ingress_obj = ingress
        .as_object_mut()
        .ok_or_else(|| anyhow!("KServe's ingress config is not an object"))?;
    ingress_obj.insert("disableIngressCreation".into(), json!(true));
    ingress_obj.insert("disableIstioVirtualHost".into(), json!(true));
    data.insert(
        "ingress".into(),
        Value::String(serde_json::to_string_pretty(&ingress)?),
    );
    data.insert(
        "deploy".into(),
        Value::String(r#"{"defaultDeploymentMode": "Standard"}"#.into()),
    );
    if !data.contains_key("storageInitializer") {
        bail!("KServe's ConfigMap has no storageInitializer (the manager needs it)");
    }
    cm["metadata"]["namespace"] = json!(NAMESPACE);
    Ok(cm)
}

/// KServe's ClusterServingRuntime kserve-mlserver (`config/runtimes/kserve-mlserver.yaml`) as
/// JSON, with its image placeholder (`mlserver:replace`, filled in by KServe's kustomize) set
/// to `mlserver:<mlserver_version>`: nothing pulls it, pods are simulated.
pub fn serving_runtime(module_yaml: &str, mlserver_version: &str) -> Result<Value> {
    let mut rt: Value = serde_yaml::from_str(module_yaml).context("KServe's runtime YAML")?;
    let containers = rt["spec"]["containers"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("ClusterServingRuntime {RUNTIME} has no containers"))?;
    for c in containers {
        c["image"] = json!(format!("mlserver:{mlserver_version}"));
    }
    Ok(rt)
}

/// KServe's webhook configurations (`config/webhook/manifests.yaml` of its module, several
/// YAML documents) as JSON objects, each webhook pointed at the manager's webhook server at
/// `https://127.0.0.1:<port><path>` (in a cluster: a Service in front of the manager's pod),
/// trusting `ca_pem`, and speaking AdmissionReview v1. Rules, selectors and failure policies
/// are KServe's.
pub fn webhook_configurations(module_yaml: &str, port: u16, ca_pem: &str) -> Result<Vec<Value>> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut configs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(module_yaml) {
        let mut config: Value =
            serde::Deserialize::deserialize(doc).context("KServe's webhook configurations")?;
        if config.is_null() {
            continue;
        }
        if let Some(meta) = config["metadata"].as_object_mut() {
            meta.remove("creationTimestamp");
        }
        let webhooks = config["webhooks"]
            .as_array_mut()
            .ok_or_else(|| anyhow!("a webhook configuration of KServe's has no webhooks"))?;
        for webhook in webhooks {
            let path = webhook["clientConfig"]["service"]["path"]
                .as_str()
                .ok_or_else(|| anyhow!("a webhook of KServe's has no service path: {webhook}"))?
                .to_string();
            webhook["clientConfig"] =
                json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca});
            webhook["admissionReviewVersions"] = json!(["v1"]);
        }
        configs.push(config);
    }
    Ok(configs)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// A self-signed serving certificate for 127.0.0.1 and localhost, as `tls.crt` and `tls.key`;
/// returns the certificate's PEM (the API server trusts it as the webhooks' CA).
fn write_serving_cert(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = rcgen::KeyPair::generate()?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert = params.self_signed(&key)?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE_CM: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: inferenceservice-config
  namespace: kserve
data:
  storageInitializer: |-
    {"image": "kserve/storage-initializer:latest", "memoryRequest": "100Mi"}
  ingress: |-
    {
        "ingressGateway" : "knative-serving/knative-ingress-gateway",
        "ingressDomain"  : "example.com",
        "disableIstioVirtualHost": false,
        "disableIngressCreation": false
    }
  deploy: |-
    {
      "defaultDeploymentMode": "Serverless"
    }
"#;

    #[test]
    fn config_map_sets_standard_mode_and_no_ingress() {
        let cm = config_map(MODULE_CM).unwrap_or_default();
        let deploy: Value =
            serde_json::from_str(cm["data"]["deploy"].as_str().unwrap_or("")).unwrap_or_default();
        assert_eq!(deploy, json!({"defaultDeploymentMode": "Standard"}));
        let ingress: Value =
            serde_json::from_str(cm["data"]["ingress"].as_str().unwrap_or("")).unwrap_or_default();
        assert_eq!(
            ingress,
            json!({
                "ingressGateway": "knative-serving/knative-ingress-gateway",
                "ingressDomain": "example.com",
                "disableIstioVirtualHost": true,
                "disableIngressCreation": true
            })
        );
        assert!(cm["data"]["storageInitializer"]
            .as_str()
            .is_some_and(|s| s.contains("100Mi")));
        assert_eq!(cm["metadata"]["namespace"], NAMESPACE);
    }

    #[test]
    fn webhooks_point_at_the_local_manager() {
        let yaml = r#"
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  creationTimestamp: null
  name: inferenceservice.serving.kserve.io
webhooks:
  - clientConfig:
      service:
        name: $(webhookServiceName)
        namespace: $(kserveNamespace)
        path: /mutate-pods
    failurePolicy: Fail
    name: inferenceservice.kserve-webhook-server.pod-mutator
    admissionReviewVersions: ["v1beta1"]
"#;
        let configs = webhook_configurations(yaml, 9443, "PEM").unwrap_or_default();
        assert_eq!(configs.len(), 1);
        assert_eq!(
            configs[0]["metadata"],
            json!({"name": "inferenceservice.serving.kserve.io"})
        );
        let webhook = &configs[0]["webhooks"][0];
        assert_eq!(
            webhook["clientConfig"],
            json!({"url": "https://127.0.0.1:9443/mutate-pods", "caBundle": "UEVN"})
        );
        assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(webhook["failurePolicy"], "Fail");
    }

    #[test]
    fn serving_runtime_names_the_mlserver_image() {
        let yaml = "kind: ClusterServingRuntime\nspec:\n  containers:\n  - name: kserve-container\n    image: mlserver:replace\n";
        let rt = serving_runtime(yaml, "1.7.1").unwrap_or_default();
        assert_eq!(rt["spec"]["containers"][0]["image"], "mlserver:1.7.1");
    }
}
