//! The controller from its container image, in-cluster: the image is built with podman from
//! the `iter8` binary of this build (`FROM scratch`, nothing pulled), and run with runc as the
//! controller chart's Deployment would run it: the chart's args and env, its ConfigMap mounted
//! at the chart's path, its securityContext (user 65532, read-only root, no capabilities), and
//! nothing but a real token of the chart's ServiceAccount mounted where Kubernetes mounts it,
//! with `KUBERNETES_SERVICE_HOST`/`PORT` naming the API server: no kubeconfig, so the binary
//! takes the in-cluster configuration path (and must trust the API server's certificate for
//! 127.0.0.1 through the mounted `ca.crt`). The container then plays the tutorial, and stops
//! cleanly on `podman stop` (SIGTERM). Needs podman and runc (`make setup` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod e2e;

use std::path::PathBuf;
use std::time::Duration;

use e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::Api;
use kube::Client;
use serde_json::Value;
use testenv::container::{self, Container, RunSpec};
use testenv::ControlPlane;

const STEP1: &str = include_str!("../../../testdata/charts/tutorial-step1/values.yaml");
const STEP2: &str = include_str!("../../../testdata/charts/tutorial-step2/values.yaml");
const STEP3: &str = include_str!("../../../testdata/charts/tutorial-step3/values.yaml");

/// Waits until the controller's `/metrics` says it has nothing queued or in progress and
/// watches `count` InferenceServices: it has reacted to every change made so far.
async fn settled(admin_port: u16, count: usize) {
    testenv::wait_for("the controller to settle", WAIT, || async move {
        let scrape = tokio::task::spawn_blocking(move || testenv::metrics::scrape(admin_port))
            .await
            .ok()?
            .ok()?;
        let watched = scrape.get(
            "iter8_watched_objects",
            Some(("resource", "inferenceservices.serving.kserve.io")),
        );
        (watched == count as f64 && scrape.is_idle()).then_some(())
    })
    .await
    .unwrap();
}

/// Waits until VirtualService `wisdom` is what the tutorial's `step` makes it (step 3, the
/// promotion, returns to step 1's form).
async fn vs_is_step(client: &Client, ns: &str, step: u8, what: &str) -> kube::api::DynamicObject {
    let form = if step == 3 { 1 } else { step };
    let expected = testenv::fixtures::tutorial_virtual_service_spec(ns, form).unwrap();
    wait_obj(client, &vs_ar(), ns, "wisdom", what, |vs| {
        vs.data["spec"] == expected
    })
    .await
}

/// The tutorial's three steps, KServe's status written as KServe writes it.
async fn play_tutorial(cp: &ControlPlane, client: &Client, ns: &str, admin_port: u16) {
    helm_release(cp, ns, "wisdom", STEP1);
    kserve_not_ready(client, ns, "wisdom-0").await;
    kserve_ready(client, ns, "wisdom-0").await;
    let vs = vs_is_step(client, ns, 1, "the step-1 VirtualService").await;
    assert_eq!(route_names(&vs), ["wisdom-0"]);
    assert_owned_by_routemap(client, &vs, ns, "wisdom-routemap").await;

    // The candidate, not ready yet: routing does not change.
    helm_release(cp, ns, "wisdom", STEP2);
    kserve_not_ready(client, ns, "wisdom-1").await;
    settled(admin_port, 2).await;
    let unchanged = get(client, &vs_ar(), ns, "wisdom").await.unwrap();
    assert_eq!(
        unchanged.metadata.resource_version, vs.metadata.resource_version,
        "routing changed before wisdom-1 was ready"
    );
    kserve_ready(client, ns, "wisdom-1").await;
    let vs = vs_is_step(client, ns, 2, "the candidate route").await;
    assert_eq!(route_names(&vs), ["wisdom-1", "wisdom-0"]);

    // Promotion: wisdom-1 goes, routing returns to the step-1 form.
    helm_release(cp, ns, "wisdom", STEP3);
    wait_gone(client, ns, &[(isvc_ar(), "wisdom-1")]).await;
    let vs = vs_is_step(client, ns, 3, "the step-3 VirtualService").await;
    assert_eq!(route_names(&vs), ["wisdom-0"]);
    settled(admin_port, 1).await;
}

/// Every RoleBinding and ClusterRoleBinding that grants ServiceAccount `ns/sa` anything (by
/// name or through the ServiceAccount groups) is one of Helm release `ns/release`'s objects,
/// or one of the defaults every cluster has (labelled `kubernetes.io/bootstrapping:
/// rbac-defaults`; for ServiceAccounts: OIDC discovery): the chart's RBAC is all it has.
async fn assert_only_chart_rbac(client: &Client, ns: &str, sa: &str, release: &str) {
    let grants_sa = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            (s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(ns))
                || (s.kind == "Group"
                    && (s.name == "system:serviceaccounts"
                        || s.name == format!("system:serviceaccounts:{ns}")))
        })
    };
    let from_release = |meta: &kube::api::ObjectMeta| {
        let labels = meta.labels.clone().unwrap_or_default();
        if labels
            .get("kubernetes.io/bootstrapping")
            .map(String::as_str)
            == Some("rbac-defaults")
        {
            return true;
        }
        let annotations = meta.annotations.clone().unwrap_or_default();
        annotations
            .get("meta.helm.sh/release-name")
            .map(String::as_str)
            == Some(release)
            && annotations
                .get("meta.helm.sh/release-namespace")
                .map(String::as_str)
                == Some(ns)
    };
    let mut bindings = Vec::new();
    for rb in Api::<RoleBinding>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
    {
        if grants_sa(&rb.subjects) {
            bindings.push((
                format!(
                    "RoleBinding {}/{}",
                    rb.metadata.namespace.clone().unwrap_or_default(),
                    rb.metadata.name.clone().unwrap_or_default()
                ),
                from_release(&rb.metadata),
            ));
        }
    }
    for crb in Api::<ClusterRoleBinding>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
    {
        if grants_sa(&crb.subjects) {
            bindings.push((
                format!(
                    "ClusterRoleBinding {}",
                    crb.metadata.name.clone().unwrap_or_default()
                ),
                from_release(&crb.metadata),
            ));
        }
    }
    assert!(!bindings.is_empty(), "nothing grants {ns}/{sa} anything");
    let foreign: Vec<_> = bindings.iter().filter(|(_, ours)| !ours).collect();
    assert!(
        foreign.is_empty(),
        "bindings not from the chart grant {ns}/{sa}: {foreign:?}"
    );
}

/// What the API server's audit log says of the requests user `username` made: `(how many,
/// how many patched a VirtualService, the ones refused with 401 or 403)`.
fn audited(cp: &ControlPlane, username: &str) -> (usize, usize, Vec<String>) {
    let log = std::fs::read_to_string(cp.dir().join("audit.log")).unwrap();
    let mut count = 0;
    let mut routing_writes = 0;
    let mut refused = Vec::new();
    for event in log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if event["user"]["username"] != username {
            continue;
        }
        count += 1;
        if event["verb"] == "patch" && event["objectRef"]["resource"] == "virtualservices" {
            routing_writes += 1;
        }
        let code = event["responseStatus"]["code"].as_i64().unwrap_or(0);
        if code == 401 || code == 403 {
            refused.push(format!(
                "{} {} -> {code}",
                event["verb"], event["requestURI"]
            ));
        }
    }
    (count, routing_writes, refused)
}

/// `text` without ANSI colour sequences (`ESC [ ... m`): the chart sets no `NO_COLOR`, so the
/// controller colours its log as it would in a pod.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn controller_image_runs_in_cluster_with_the_chart_service_account() {
    let started = std::time::Instant::now();
    container::check_podman().unwrap_or_else(|e| panic!("{e:#}"));
    // The image builds (about 4 s) while the control plane starts.
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_iter8"));
    let build = tokio::task::spawn_blocking(move || container::build_image(&binary));
    let cp = testenv::shared().unwrap();
    let image = build
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("building the controller image: {e:#}"));
    eprintln!(
        "image {image} built, control plane up: {:?}",
        started.elapsed()
    );

    let client = cp.client().await.unwrap();
    let ns = cp.namespace("container").await.unwrap();
    helm(
        cp,
        &ns,
        &["upgrade", "--install", "iter8", "charts/controller"],
        None,
    );

    // The pod the chart's Deployment describes, run on this machine.
    let deploy = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("iter8")
        .await
        .unwrap();
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("iter8"));
    let dir = cp.dir().join(format!("container-{ns}"));
    let mut spec = RunSpec::from_pod(cp, &ns, "iter8-7c9f5d8b6-k2m4x", &pod, &image, &dir)
        .await
        .unwrap();
    // The host network is shared: the admin server on a free port, the A/B/n server anywhere.
    let admin_port = testenv::process::free_port().unwrap();
    let mut previous = String::new();
    for arg in &mut spec.args {
        if arg.starts_with("0.0.0.0:") {
            *arg = match previous.as_str() {
                "--admin-address" => format!("127.0.0.1:{admin_port}"),
                _ => "127.0.0.1:0".to_string(),
            };
        }
        previous = arg.clone();
    }
    assert!(
        spec.args.contains(&format!("127.0.0.1:{admin_port}")),
        "the chart's args name no admin address: {:?}",
        spec.args
    );
    // What the chart asks for, kept: it must work with it.
    assert_eq!(spec.user.as_deref(), Some("65532:65532"));
    assert!(spec.read_only_root && spec.drop_all_capabilities && spec.no_new_privileges);
    let mounts: Vec<&str> = spec.mounts.iter().map(|m| m.container.as_str()).collect();
    assert!(
        mounts.contains(&container::SERVICE_ACCOUNT_DIR) && mounts.contains(&"/config"),
        "{mounts:?}"
    );

    let iter8 = Container::run("iter8-controller", &spec).unwrap();
    testenv::wait_for("the containerised controller's /readyz", WAIT, || {
        let running = iter8.check_running();
        async move {
            running.unwrap_or_else(|e| panic!("{e:#}"));
            let address = format!("127.0.0.1:{admin_port}");
            (http_get(&address, "/readyz").await.map(|(code, _)| code) == Some(200)).then_some(())
        }
    })
    .await
    .unwrap();
    eprintln!("controller ready in its container: {:?}", started.elapsed());

    // It runs as the chart's non-root user, and took the in-cluster configuration.
    let status = std::fs::read_to_string(format!("/proc/{}/status", iter8.pid().unwrap())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|id| id == "65532"),
        "the controller's process: {uid}"
    );
    let log = plain(&iter8.logs().unwrap());
    let config_line = log
        .lines()
        .find(|l| l.contains("Kubernetes configuration"))
        .unwrap_or_else(|| panic!("no configuration source logged:\n{log}"));
    assert!(
        config_line.contains("source=in-cluster")
            && config_line.contains(&format!("server=https://127.0.0.1:{}/", cp.port())),
        "{config_line}"
    );

    play_tutorial(cp, &client, &ns, admin_port).await;
    eprintln!("tutorial converged: {:?}", started.elapsed());

    // The chart's ServiceAccount token was its only credential, and the chart's RBAC sufficed:
    // the API server saw that ServiceAccount's requests, none refused.
    let username = format!("system:serviceaccount:{ns}:iter8");
    let (count, routing_writes, refused) = audited(cp, &username);
    assert!(count > 0, "the API server saw no request as {username}");
    assert!(
        routing_writes >= 3,
        "{username} patched VirtualServices {routing_writes} times (one per routing change)"
    );
    assert!(
        refused.is_empty(),
        "requests refused:\n{}",
        refused.join("\n")
    );
    assert_only_chart_rbac(&client, &ns, "iter8", "iter8").await;

    // SIGTERM (podman stop): it finishes its work and exits 0 well before SIGKILL.
    let code = iter8.stop(Duration::from_secs(15)).unwrap();
    let log = plain(&iter8.logs().unwrap());
    assert_eq!(code, 0, "exit code after podman stop; log:\n{log}");
    assert!(
        log.contains("shutting down") && log.contains("stopped"),
        "{log}"
    );
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        bad.is_empty(),
        "the controller logged errors:\n{}",
        bad.join("\n")
    );
    eprintln!("done: {:?}", started.elapsed());
}
