//! `iter8 status` against a real API server through the tutorial: the controller chart installed
//! with the real Helm and the controller binary running as its ServiceAccount, the tutorial's
//! three steps with its values verbatim, KServe's status written as KServe writes it, and the
//! real `iter8` binary asked at each step, as a ServiceAccount that has only a Role with reads
//! in the namespace (a namespace user's permissions). Also `-o json|yaml`, `--watch` (it prints
//! the change when the candidate becomes ready) and `kubectl iter8 status` through the real
//! kubectl's plugin mechanism.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod e2e;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use e2e::*;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use testenv::ControlPlane;

const STEP1: &str = include_str!("../../../testdata/charts/tutorial-step1/values.yaml");
const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");
const STEP3: &str = include_str!("../../../testdata/charts/tutorial-step3/values.yaml");

const ISVCS: &str = "inferenceservices.serving.kserve.io";

/// A ServiceAccount `reader` whose only permissions are reads in `ns`: what `iter8 status`
/// needs, and what a namespace's user has. Returns the path of a kubeconfig with its token.
async fn reader_kubeconfig(cp: &ControlPlane, ns: &str) -> PathBuf {
    let client = cp.client().await.unwrap();
    let read = json!(["get", "list", "watch"]);
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "iter8-status-reader", "namespace": ns},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": read},
            {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": read},
            {"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"], "verbs": read},
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": read},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": read},
        ],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "iter8-status-reader", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "iter8-status-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client, ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let kubeconfig = cp
        .service_account_kubeconfig(ns, "reader", Duration::from_secs(3600))
        .await
        .unwrap();
    let path = cp.dir().join(format!("reader-{ns}.kubeconfig"));
    std::fs::write(&path, kubeconfig).unwrap();
    path
}

/// `iter8 <args>` (the real binary) with this kubeconfig; its standard output. Panics with its
/// output if it fails.
fn iter8(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "iter8 {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `iter8 status wisdom -n NS` as plain text.
fn status(kubeconfig: &Path, ns: &str) -> String {
    iter8(kubeconfig, &["status", "wisdom", "-n", ns])
}

/// Asserts `text` has every line of `lines` (trimmed), in that order.
fn assert_lines(text: &str, lines: &[&str]) {
    let mut have = text.lines().map(str::trim);
    for want in lines {
        assert!(
            have.any(|l| l == *want),
            "missing (or out of order) line {want:?} in:\n{text}"
        );
    }
}

/// Runs `iter8 status --watch` and hands its output over line by line; killed when dropped.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(kubeconfig: &Path, ns: &str) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iter8"))
            .args(["status", "wisdom", "-n", ns, "--watch", "--kubeconfig"])
            .arg(kubeconfig)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    /// Reads printed states (each starts with a `--- <time>` line) until one has every line of
    /// `want`; fails after [`WAIT`]. Returns that state.
    fn until(&self, what: &str, want: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        let mut state = String::new();
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    panic!("--watch did not print {what} within {WAIT:?}; it printed:\n{seen}")
                }
            };
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("--- ") {
                state.clear();
                continue;
            }
            state.push_str(&line);
            state.push('\n');
            let lines: Vec<&str> = state.lines().map(str::trim).collect();
            if want.iter().all(|w| lines.contains(w)) {
                return state;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn status_through_the_tutorial_as_a_namespace_reader() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("status").await.unwrap();
    let controller = install_controller(cp, &ns, false, &["routingEvents=true"]).await;
    let reader = reader_kubeconfig(cp, &ns).await;

    // Before any release: no application.
    let none = iter8(&reader, &["status", "-n", &ns]);
    assert_eq!(
        none,
        format!(
            "no applications in namespace {ns} (no ConfigMap labelled iter8.tools/kind=routemap)\n"
        )
    );

    // Step 1: the primary, not ready yet, then ready.
    helm_release(cp, &ns, "wisdom", STEP1);
    kserve_not_ready(&client, &ns, "wisdom-0").await;
    controller.settled(ISVCS, 1).await;
    assert_lines(
        &status(&reader, &ns),
        &[
            &format!("application wisdom (namespace {ns}, routemap wisdom-routemap)"),
            "version 0 wisdom-0: not ready, weight 1",
            "isvc/wisdom-0: InferenceService wisdom-0: Ready is Unknown (reason: Predictor ingress not created)",
        ],
    );
    kserve_ready(&client, &ns, "wisdom-0").await;
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the step-1 VirtualService",
        |vs| route_names(vs) == ["wisdom-0"],
    )
    .await;
    controller.settled(ISVCS, 1).await;
    let step1 = status(&reader, &ns);
    assert_lines(
        &step1,
        &[
            "version 0 wisdom-0: ready, weight 1",
            "isvc/wisdom-0: ready",
            "reached by route wisdom-0 (every request)",
        ],
    );
    assert!(
        step1.lines().any(|l| l
            .trim()
            .starts_with("routing: VirtualService wisdom (template canary), last change ")
            && l.ends_with("by iter8-controller)")),
        "{step1}"
    );

    // Step 2: the candidate, not ready. Routing stays on wisdom-0, and status says why.
    helm_release(cp, &ns, "wisdom", STEP2);
    kserve_not_ready(&client, &ns, "wisdom-1").await;
    controller.settled(ISVCS, 2).await;
    let step2 = status(&reader, &ns);
    assert_lines(
        &step2,
        &[
            "version 0 wisdom-0: ready, weight 1",
            "isvc/wisdom-0: ready",
            "reached by route wisdom-0 (every request)",
            "version 1 wisdom-1: not ready, weight 0",
            "isvc/wisdom-1: InferenceService wisdom-1: Ready is Unknown (reason: Predictor ingress not created)",
            "no route reaches it: it is not ready",
        ],
    );
    assert!(
        !step2.contains("differs from what the controller would apply"),
        "{step2}"
    );

    // The same as a document.
    let doc: Value = serde_json::from_str(&iter8(
        &reader,
        &["status", "wisdom", "-n", &ns, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["namespace"], json!(ns));
    let app = &doc["applications"][0];
    assert_eq!(app["name"], "wisdom");
    assert_eq!(app["routemap"], "wisdom-routemap");
    assert_eq!(app["held"], Value::Null);
    let (v0, v1) = (&app["versions"][0], &app["versions"][1]);
    assert_eq!(
        (
            v0["name"].as_str(),
            v0["ready"].as_bool(),
            v0["weight"].as_u64()
        ),
        (Some("wisdom-0"), Some(true), Some(1))
    );
    assert_eq!(
        v0["routes"],
        json!([{"object": "VirtualService wisdom", "route": "route wisdom-0", "match": "every request", "share": 1.0}])
    );
    assert_eq!(
        (v1["ready"].as_bool(), v1["weight"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(
        v1["blockedBy"],
        json!([
            "InferenceService wisdom-1: Ready is Unknown (reason: Predictor ingress not created)"
        ])
    );
    assert_eq!(v1["objects"][0]["kind"], "InferenceService");
    assert_eq!(v1["routes"], json!([]));
    let routing = &app["routing"][0];
    assert_eq!(
        (routing["kind"].as_str(), routing["name"].as_str()),
        (Some("VirtualService"), Some("wisdom"))
    );
    assert_eq!(
        (routing["found"].as_bool(), routing["inSync"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(routing["lastChange"]["source"], "managedFields");
    assert!(routing["lastChange"]["time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(app["lastEvent"]["reason"], "Applied", "{app}");
    // YAML is the same document.
    let yaml: Value = serde_yaml::from_str(&iter8(
        &reader,
        &["status", "wisdom", "-n", &ns, "-o", "yaml"],
    ))
    .unwrap();
    assert_eq!(yaml["applications"][0]["versions"], app["versions"]);

    // --watch prints the change when the candidate becomes ready and the controller routes it.
    let watch = Watch::start(&reader, &ns);
    watch.until(
        "the not-ready candidate",
        &["version 1 wisdom-1: not ready, weight 0"],
    );
    kserve_ready(&client, &ns, "wisdom-1").await;
    let routed = watch.until(
        "the candidate ready and routed",
        &[
            "version 1 wisdom-1: ready, weight 1",
            "isvc/wisdom-1: ready",
            "reached by route wisdom-1 (headers traffic exact test)",
            "reached by route wisdom-0 (every request)",
        ],
    );
    drop(watch);
    assert!(!routed.contains("not ready"), "{routed}");
    wait_obj(
        &client,
        &vs_ar(),
        &ns,
        "wisdom",
        "the candidate route",
        |vs| route_names(vs) == ["wisdom-1", "wisdom-0"],
    )
    .await;

    // kubectl finds the binary as the plugin `kubectl-iter8` on PATH.
    let bin = cp.dir().join(format!("plugin-{ns}"));
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_iter8"), bin.join("kubectl-iter8")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&cp.tools().kubectl)
        .args(["iter8", "status", "wisdom", "-n", &ns, "--kubeconfig"])
        .arg(&reader)
        .env("PATH", &path)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl iter8 status: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Relative times may have moved on: compare without them.
    let strip = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.contains(" ago"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&stdout), strip(&status(&reader, &ns)));
    let help = Command::new(&cp.tools().kubectl)
        .args(["iter8", "status", "--help"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: kubectl iter8 status"),
        "{help:?}"
    );

    // Step 3: promotion; one version again.
    helm_release(cp, &ns, "wisdom", STEP3);
    wait_gone(&client, &ns, &[(isvc_ar(), "wisdom-1")]).await;
    controller.settled(ISVCS, 1).await;
    let step3 = status(&reader, &ns);
    assert_lines(
        &step3,
        &[
            "version 0 wisdom-0: ready, weight 1",
            "isvc/wisdom-0: ready",
            "reached by route wisdom-0 (every request)",
        ],
    );
    assert!(!step3.contains("wisdom-1"), "{step3}");
    // Every application of the namespace when none is named.
    assert_lines(
        &iter8(&reader, &["status", "-n", &ns]),
        &["version 0 wisdom-0: ready, weight 1"],
    );

    // The reader could not do more than read.
    let denied = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .args(["status", "wisdom", "-n", "default", "--kubeconfig"])
        .arg(&reader)
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{denied:?}"
    );
    controller.assert_clean_log();
}
