//! The real KServe manager (`KSERVE_VERSION`) in Standard mode, with pods simulated by kwok:
//! an InferenceService gets its Deployment and Service `<name>-predictor` from KServe, the real
//! kube-scheduler binds the Deployment's pod to kwok's fake Node, the real deployment,
//! replicaset and endpointslice controllers do their part, and KServe sets `Ready=True` only
//! once the pod is Ready, which kwok does only once the pod carries the model-ready annotation
//! (set here by the test; by the harness when the pod's model answers). A second
//! InferenceService whose pod never gets the annotation stays not Ready.
//!
//! The statuses KServe wrote are printed (`-- --nocapture`) and recorded in
//! docs/kserve-standard-status.md.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::Client;
use serde_json::{json, Value};
use testenv::fixtures::{deployment, inference_service, service};
use testenv::kserve_manager::{KServeManager, RUNTIME};
use testenv::kwok::{self, Kwok};
use testenv::{kserve, objects, wait_for, ControlPlane, Options};

/// Start-up of pods and controllers on 2 busy cores: generous, never slept.
const WAIT: Duration = Duration::from_secs(120);
const STORAGE_URI: &str = "gs://seldon-models/sklearn/mms/lr_model";
/// A new spec for wisdom-0: a rollout of its Deployment.
const STORAGE_URI_V2: &str = "gs://seldon-models/sklearn/mms/lr_model_v2";

/// The control plane with workload controllers, kwok + kube-scheduler, and KServe.
struct Env {
    kserve: KServeManager,
    kwok: Kwok,
    cp: ControlPlane,
}

impl Env {
    async fn start() -> Env {
        let cp = ControlPlane::start(Options {
            controller_manager: true,
            workload_controllers: true,
            ..Options::default()
        })
        .await
        .unwrap_or_else(|e| panic!("control plane: {e:#}"));
        let kwok = Kwok::start(&cp)
            .await
            .unwrap_or_else(|e| panic!("kwok: {e:#}"));
        let kserve = KServeManager::start(&cp)
            .await
            .unwrap_or_else(|e| panic!("KServe manager: {e:#}"));
        Env { kserve, kwok, cp }
    }

    /// Panics with `e`, the end of every component's log and what the namespace holds.
    async fn fail(&mut self, ns: &str, e: anyhow::Error) -> ! {
        let running = [self.kserve.check_running(), self.kwok.check_running()];
        let summary = match self.cp.client().await {
            Ok(client) => testenv::pods::namespace_summary(&client, ns).await,
            Err(e) => format!("no client: {e:#}"),
        };
        panic!(
            "{e:#}\n{running:?}\n{}\n{}\nlast lines of kube-controller-manager.log:\n{}\n{summary}",
            self.kserve.diagnostics(),
            self.kwok.diagnostics(),
            self.cp.controller_manager_log_tail(15),
        )
    }
}

fn isvc(name: &str, storage_uri: &str) -> Value {
    json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "annotations": {
            "serving.kserve.io/deploymentMode": "Standard",
            "serving.kserve.io/autoscalerClass": "none"}},
        "spec": {"predictor": {"minReplicas": 1, "model": {"modelFormat": {"name": "sklearn"},
            "runtime": RUNTIME, "storageUri": storage_uri}}}
    })
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn condition_status(obj: &Value, type_: &str) -> Option<String> {
    condition(obj, type_).and_then(|c| c["status"].as_str().map(str::to_string))
}

/// The pods of InferenceService `name` (KServe labels its pods with it).
async fn pods(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("serving.kserve.io/inferenceservice={name}"));
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits for the one pod of `name` to be bound to the fake Node, Running with an IP, and not
/// Ready; returns it.
async fn running_pod(client: &Client, ns: &str, name: &str) -> anyhow::Result<Pod> {
    wait_for(
        &format!("a Running, not Ready pod of {name} on the fake Node"),
        WAIT,
        || async {
            let pods = pods(client, ns, name).await;
            let [pod] = pods.as_slice() else { return None };
            let spec = pod.spec.as_ref()?;
            let status = pod.status.as_ref()?;
            (spec.node_name.as_deref() == Some(kwok::NODE)
                && status.phase.as_deref() == Some("Running")
                && status.pod_ip.is_some()
                && !pod_ready(pod))
            .then(|| pod.clone())
        },
    )
    .await
}

/// Waits until InferenceService `name` satisfies `check` (`what` names it); returns it as JSON.
async fn isvc_where(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let obj = objects::wait(
        client,
        &inference_service(),
        ns,
        name,
        &format!("KServe to report {name} {what}"),
        WAIT,
        |o| check(&o.data),
    )
    .await?;
    Ok(serde_json::to_value(obj)?)
}

/// KServe's verdict on a Deployment that has no available pod: `PredictorReady` False with
/// the Deployment's reason (so KServe has seen the Deployment's status, not only created it).
fn predictor_unavailable(isvc: &Value) -> bool {
    condition(isvc, "PredictorReady")
        .is_some_and(|c| c["status"] == "False" && c["reason"] == "MinimumReplicasUnavailable")
}

/// The real status with what legitimately differs from the stand-in's masked: condition times
/// (kept only as present or not) and the pod-template hash in the ReplicaSet name.
fn comparable(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conditions) = s["conditions"].as_array_mut() {
        for c in conditions {
            if c.get("lastTransitionTime").is_some() {
                c["lastTransitionTime"] = json!("<time>");
            }
            if let Some(m) = c["message"].as_str() {
                if let Some(rest) = m.strip_prefix("ReplicaSet \"") {
                    let (rs, tail) = rest.split_once('"').unwrap_or((rest, ""));
                    let name = rs.rsplit_once('-').map_or(rs, |(n, _)| n);
                    c["message"] = json!(format!("ReplicaSet \"{name}-<hash>\"{tail}"));
                }
            }
        }
    }
    s
}

/// Where two JSON values differ, as `path: real != stand-in` lines.
fn differences(path: &str, real: &Value, stand_in: &Value, out: &mut Vec<String>) {
    match (real, stand_in) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                differences(&format!("{path}.{k}"), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if real != stand_in => out.push(format!("{path}: {real} != {stand_in}")),
        _ => {}
    }
}

/// Asserts that the stand-in (`testenv::kserve::standard_status`) writes what the real KServe
/// wrote in `isvc` (in state `state`), field by field but for [`comparable`]'s masks.
fn assert_stand_in_matches(isvc: &Value, state: kserve::StandardState) {
    let ns = isvc["metadata"]["namespace"].as_str().unwrap();
    let name = isvc["metadata"]["name"].as_str().unwrap();
    let real = &isvc["status"];
    let generation = real["observedGeneration"]
        .as_i64()
        .unwrap_or_else(|| panic!("{real:#}"));
    let times = testenv::objects::Times::fixed("<time>", "<time>");
    let stand_in = kserve::standard_status(ns, name, state, generation, &times);
    let mut out = Vec::new();
    differences(
        "status",
        &comparable(real),
        &comparable(&stand_in),
        &mut out,
    );
    assert!(
        out.is_empty(),
        "the stand-in differs from the real KServe ({name}):\n{}\nreal: {real:#}",
        out.join("\n")
    );
}

fn show(what: &str, v: &Value) {
    println!("{what}: {}", serde_json::to_string_pretty(v).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_mode_is_ready_only_once_the_pod_is() {
    let mut env = Env::start().await;
    let client = env.cp.client().await.unwrap();
    let ns = env.cp.namespace("kserve-standard").await.unwrap();
    let ar = inference_service();
    for name in ["wisdom-0", "wisdom-1"] {
        objects::apply(
            &client,
            &ar,
            Some(&ns),
            &isvc(name, STORAGE_URI),
            "testenv-test",
        )
        .await
        .unwrap();
    }

    // KServe creates the Deployment and Service wisdom-0-predictor.
    let dep = objects::wait(
        &client,
        &deployment(),
        &ns,
        "wisdom-0-predictor",
        "KServe to create Deployment wisdom-0-predictor",
        WAIT,
        |_| true,
    )
    .await;
    let dep = match dep {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    let svc = objects::wait(
        &client,
        &service(),
        &ns,
        "wisdom-0-predictor",
        "KServe to create Service wisdom-0-predictor",
        WAIT,
        |_| true,
    )
    .await;
    let svc = match svc {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    show("Deployment wisdom-0-predictor spec", &dep.data["spec"]);
    show("Service wisdom-0-predictor spec", &svc.data["spec"]);

    // Its pod runs on the fake Node but is not Ready: neither is the InferenceService, once
    // KServe has seen the Deployment's status.
    let pod = match running_pod(&client, &ns, "wisdom-0").await {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    show(
        "wisdom-0's pod (after KServe's pod mutator) spec",
        &serde_json::to_value(&pod.spec).unwrap(),
    );
    show(
        "wisdom-0's pod status, Running but not Ready",
        &serde_json::to_value(&pod.status).unwrap(),
    );
    let not_ready = isvc_where(
        &client,
        &ns,
        "wisdom-0",
        "PredictorReady=False (MinimumReplicasUnavailable)",
        predictor_unavailable,
    )
    .await;
    let not_ready = match not_ready {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    assert_eq!(
        condition_status(&not_ready, "Ready").as_deref(),
        Some("False"),
        "{not_ready:#}"
    );
    show(
        "wisdom-0 status, its pod Running but not Ready",
        &not_ready["status"],
    );
    assert_stand_in_matches(&not_ready, kserve::StandardState::NotReady);

    // The model answers (here: the test says so); kwok marks the pod Ready, the Deployment
    // becomes Available, and KServe reports the InferenceService Ready.
    let pod_name = pod.metadata.name.clone().unwrap();
    kwok::mark_model_ready(&client, &ns, &pod_name)
        .await
        .unwrap();
    let ready = isvc_where(&client, &ns, "wisdom-0", "Ready=True", |o| {
        condition_status(o, "Ready").as_deref() == Some("True")
    })
    .await;
    let ready = match ready {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    show("wisdom-0 status, its pod Ready", &ready["status"]);
    assert_stand_in_matches(&ready, kserve::StandardState::Ready);
    show(
        "wisdom-0 annotations and spec (after KServe's defaulter)",
        &json!({"annotations": ready["metadata"]["annotations"], "spec": ready["spec"]}),
    );
    let status = &ready["status"];
    assert_eq!(
        condition_status(&ready, "PredictorReady").as_deref(),
        Some("True")
    );
    assert_eq!(status["deploymentMode"], "Standard", "{status:#}");
    assert_eq!(
        status["address"]["url"],
        format!("http://wisdom-0-predictor.{ns}.svc.cluster.local"),
        "{status:#}"
    );
    assert_eq!(status["observedGeneration"], 1, "{status:#}");

    // The Service's EndpointSlice, written by the real endpointslice controller, has the pod
    // ready at its IP.
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels("kubernetes.io/service-name=wisdom-0-predictor");
    let endpoint = wait_for("a ready endpoint of wisdom-0-predictor", WAIT, || async {
        let slices = slices.list(&lp).await.ok()?;
        slices.items.into_iter().find(|s| {
            s.endpoints.iter().any(|e| {
                e.addresses.contains(&pod_ip)
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
            })
        })
    })
    .await;
    match endpoint {
        Ok(slice) => show(
            "EndpointSlice of wisdom-0-predictor (endpoints and ports)",
            &json!({"endpoints": slice.endpoints, "ports": slice.ports}),
        ),
        Err(e) => env.fail(&ns, e).await,
    }

    // wisdom-1's pod never gets the annotation: Running, never Ready, and KServe keeps the
    // InferenceService not Ready (checked after wisdom-0 went all the way to Ready).
    if let Err(e) = running_pod(&client, &ns, "wisdom-1").await {
        env.fail(&ns, e).await
    }
    let never = isvc_where(
        &client,
        &ns,
        "wisdom-1",
        "PredictorReady=False (MinimumReplicasUnavailable)",
        predictor_unavailable,
    )
    .await;
    let never = match never {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    assert_eq!(
        condition_status(&never, "Ready").as_deref(),
        Some("False"),
        "{never:#}"
    );
    let dep1 = objects::get(&client, &deployment(), &ns, "wisdom-1-predictor")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        condition_status(&dep1.data, "Available").as_deref(),
        Some("False"),
        "{:#}",
        dep1.data["status"]
    );
    show("wisdom-1 status, its pod never Ready", &never["status"]);
    assert_stand_in_matches(&never, kserve::StandardState::NotReady);

    // A new spec rolls the Deployment: a second pod starts, not Ready; the first keeps
    // serving, and KServe keeps wisdom-0 Ready, its observedGeneration now the Deployment's 2.
    objects::apply(
        &client,
        &ar,
        Some(&ns),
        &isvc("wisdom-0", STORAGE_URI_V2),
        "testenv-test",
    )
    .await
    .unwrap();
    let new_pod = wait_for(
        "a second, Running, not Ready pod of wisdom-0",
        WAIT,
        || async {
            pods(&client, &ns, "wisdom-0").await.into_iter().find(|p| {
                p.metadata.name.as_deref() != Some(pod_name.as_str())
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    && !pod_ready(p)
            })
        },
    )
    .await;
    let new_pod = match new_pod {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    let rolling = isvc_where(&client, &ns, "wisdom-0", "observedGeneration 2", |o| {
        o["status"]["observedGeneration"] == 2
    })
    .await;
    let rolling = match rolling {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    show(
        "wisdom-0 status, rolling out (new pod not Ready)",
        &rolling["status"],
    );
    assert_eq!(
        condition_status(&rolling, "Ready").as_deref(),
        Some("True"),
        "{rolling:#}"
    );

    // The new pod's model answers: the rollout completes, the old pod goes.
    let new_name = new_pod.metadata.name.clone().unwrap();
    kwok::mark_model_ready(&client, &ns, &new_name)
        .await
        .unwrap();
    let gone = wait_for("the old pod of wisdom-0 to go", WAIT, || async {
        let pods = pods(&client, &ns, "wisdom-0").await;
        let names: Vec<_> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        (names == [new_name.clone()]).then_some(())
    })
    .await;
    if let Err(e) = gone {
        env.fail(&ns, e).await
    }
    let rolled = isvc_where(&client, &ns, "wisdom-0", "the rollout complete", |o| {
        condition(o, "PredictorReady").is_some_and(|c| c["reason"] == "NewReplicaSetAvailable")
            && o["status"]["observedGeneration"] == 2
            && condition_status(o, "Ready").as_deref() == Some("True")
    })
    .await;
    let rolled = match rolled {
        Ok(v) => v,
        Err(e) => env.fail(&ns, e).await,
    };
    show("wisdom-0 status, rolled out", &rolled["status"]);
    assert_stand_in_matches(&rolled, kserve::StandardState::Ready);

    env.kserve.check_running().unwrap();
    env.kwok.check_running().unwrap();
}
