//! Simulated nodes and pods for a [`ControlPlane`]: kwok (`KWOK_VERSION`) plays the kubelet of
//! one fake Node, and the real kube-scheduler binds pods to it. With the control plane's
//! workload controllers ([`crate::Options::workload_controllers`]) a Deployment then gets
//! real ReplicaSets, Pods, EndpointSlices and status, with nothing running.
//!
//! kwok runs with its own node stages and pod-complete and pod-delete (from the cache) but with
//! the repository's pod stages, `testenv/kwok/stages.yaml`: a bound pod becomes Running with an
//! IP from the node's pod CIDR and stays not Ready until it carries
//! [`MODEL_READY_ANNOTATION`]` = "true"` (the harness sets it once the pod's model answers,
//! see [`crate::pods`]; a test may set it with [`mark_model_ready`]).
//!
//! Does process and API I/O. Both processes stop when the [`Kwok`] is dropped; their logs are
//! `kwok.log` and `kube-scheduler.log` in the control plane's folder.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;

pub use crate::pods::MODEL_READY_ANNOTATION;
use crate::process::Process;
use crate::{tools, wait_for, ControlPlane};

/// The fake Node's name.
pub const NODE: &str = "kwok-node-0";

/// The annotation (`key=value`) kwok manages nodes by; the fake Node carries it.
pub const NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// The fake Node's pod CIDR: pod IPs come from here. Inside [`crate::netns::POD_CIDR`] (local
/// in an isolated test's network namespace) and off the control plane's Service range
/// (10.0.0.0/24, which is also kwok's default CIDR).
pub const NODE_POD_CIDR: &str = "10.244.0.0/24";

/// The pod stages of this repository (see the module docs), replacing kwok's `pod-ready`.
const STAGES: &str = "testenv/kwok/stages.yaml";

/// kwok's own stage files (copied into the cache by `testenv/setup.sh`) that run unchanged.
const KWOK_STAGES: &[&str] = &[
    "node-initialize.yaml",
    "node-heartbeat-with-lease.yaml",
    "pod-complete.yaml",
    "pod-delete.yaml",
];

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// kwok and kube-scheduler running against a control plane, with one fake Node, [`NODE`].
pub struct Kwok {
    scheduler: Process,
    kwok: Process,
}

impl Kwok {
    /// Starts kwok, creates the fake Node, waits until kwok reports it Ready and lifts the
    /// not-ready taint the API server gave it, then starts kube-scheduler.
    pub async fn start(cp: &ControlPlane) -> Result<Kwok> {
        let dir = tools::kwok_dir()?;
        let scheduler_bin = tools::kube_scheduler()?;
        // kwok also reads ~/.kwok/kwok.yaml when it exists: a HOME of its own keeps a
        // developer's kwok configuration out.
        let home = cp.dir().join("kwok-home");
        std::fs::create_dir_all(&home)?;
        let mut args = vec![
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            "--manage-all-nodes=false".into(),
            format!(
                "--manage-nodes-with-annotation-selector={}={}",
                NODE_ANNOTATION.0, NODE_ANNOTATION.1
            ),
            format!("--cidr={NODE_POD_CIDR}"),
        ];
        for stage in stage_files(&dir) {
            args.push(format!("--config={}", stage.display()));
        }
        let home = home.display().to_string();
        let mut kwok = Process::start_with_env(
            "kwok",
            &dir.join("bin/kwok"),
            &args,
            &[("HOME", home.as_str())],
            cp.dir(),
        )?;

        let client = cp.client().await?;
        let nodes: Api<Node> = Api::all(client);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": NODE,
                "annotations": {NODE_ANNOTATION.0: NODE_ANNOTATION.1},
                "labels": {
                    "kubernetes.io/hostname": NODE,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok"
                }
            },
            "spec": {"podCIDR": NODE_POD_CIDR, "podCIDRs": [NODE_POD_CIDR]}
        }))?;
        nodes
            .patch(
                NODE,
                &PatchParams::apply("testenv").force(),
                &Patch::Apply(&node),
            )
            .await
            .with_context(|| format!("creating the fake Node {NODE}"))?;
        let ready = wait_for("kwok to report the fake Node Ready", START_TIMEOUT, || {
            let nodes = nodes.clone();
            async move {
                let node = nodes.get(NODE).await.ok()?;
                let ready = node
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ready.then_some(())
            }
        })
        .await;
        if let Err(e) = ready {
            kwok.check_running()?;
            return Err(e.context(format!("kwok's log:\n{}", kwok.log_tail(25))));
        }
        // The API server's TaintNodesByCondition admission gives every new Node the
        // node.kubernetes.io/not-ready:NoSchedule taint; the node-lifecycle controller (not run
        // here) would lift it once the Node is Ready, as kwok just made it.
        let untaint = json!({"spec": {"taints": null}});
        nodes
            .patch(NODE, &PatchParams::default(), &Patch::Merge(&untaint))
            .await
            .with_context(|| format!("removing the not-ready taint of the fake Node {NODE}"))?;

        let scheduler = Process::start(
            "kube-scheduler",
            &scheduler_bin,
            &[
                format!("--kubeconfig={}", cp.kubeconfig_path().display()),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
            ],
            cp.dir(),
        )?;
        Ok(Kwok { scheduler, kwok })
    }

    /// Fails, with the end of its log, if kwok or kube-scheduler has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.kwok.check_running()?;
        self.scheduler.check_running()
    }

    /// The last lines of both logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "last lines of {}:\n{}\nlast lines of {}:\n{}",
            self.kwok.log_path().display(),
            self.kwok.log_tail(20),
            self.scheduler.log_path().display(),
            self.scheduler.log_tail(20)
        )
    }

    /// PIDs of kwok and kube-scheduler.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.kwok.pid(), self.scheduler.pid()]
    }
}

/// The stage files kwok runs with: kwok's own [`KWOK_STAGES`], then [`STAGES`].
fn stage_files(kwok_dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = KWOK_STAGES
        .iter()
        .map(|f| kwok_dir.join("stages").join(f))
        .collect();
    files.push(tools::repo_root().join(STAGES));
    files
}

/// Sets [`MODEL_READY_ANNOTATION`] to `"true"` on pod `namespace/name`: kwok then marks it
/// Ready (what the harness does once the pod's model answers).
pub async fn mark_model_ready(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"annotations": {MODEL_READY_ANNOTATION: "true"}}});
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating pod {namespace}/{name} as model-ready"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stage file gates readiness on the very annotation the harness sets.
    #[test]
    fn stages_gate_ready_on_the_harness_annotation() {
        let text = std::fs::read_to_string(tools::repo_root().join(STAGES)).unwrap_or_default();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_default())
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["pod-running", "pod-ready"]);
        assert_eq!(
            docs[1]["spec"]["selector"]["matchAnnotations"][MODEL_READY_ANNOTATION],
            "true"
        );
        assert!(docs[0]["spec"]["selector"]["matchAnnotations"].is_null());
    }
}
