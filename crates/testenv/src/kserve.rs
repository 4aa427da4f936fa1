//! InferenceService status as KServe writes it in Serverless (Knative) mode, exactly as
//! shared/spec/kserve-status.md shows it: Knative-style conditions sorted by type, `severity:
//! Info` on all but `Ready`, `PredictorReady` and `IngressReady`, and an `observedGeneration`
//! that is the Knative Service's, not the InferenceService's. [`status`] builds it (pure);
//! [`write`] and [`report`] write it through the status subresource (API I/O). The same for
//! Standard mode (formerly RawDeployment), whose `observedGeneration` is the predictor
//! Deployment's: [`standard_status`], [`write_standard`], [`report_standard`]. Tests, the
//! benchmark and the data-plane harness all write status through here.

use anyhow::Result;
use kube::Client;
use serde_json::{json, Value};

use crate::fixtures::inference_service;
use crate::objects::{self, Times};

/// Every top-level status field KServe writes in Serverless mode: a write of one state removes
/// what an earlier state set and this one does not have.
pub const FIELDS: &[&str] = &[
    "address",
    "clusterServingRuntimeName",
    "components",
    "conditions",
    "deploymentMode",
    "modelStatus",
    "observedGeneration",
    "url",
];

/// The spec's example times: KServe first reconciled the InferenceService at [`CREATED_AT`],
/// reported it not ready at [`NOT_READY_AT`] and ready at [`READY_AT`].
pub const CREATED_AT: &str = "2026-08-20T10:00:01Z";
/// See [`CREATED_AT`].
pub const NOT_READY_AT: &str = "2026-08-20T10:00:02Z";
/// See [`CREATED_AT`].
pub const READY_AT: &str = "2026-08-20T10:00:40Z";

/// Where an InferenceService is, as KServe (Serverless mode) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Just created: no revision is ready yet; `Ready` is `Unknown`.
    NotReady,
    /// Predictor revision `revision` is ready and takes all traffic; `Ready` is `True`.
    Ready {
        /// The ready revision, e.g. `wisdom-0-predictor-00001` (see [`revision`]).
        revision: String,
    },
    /// The spec changed and Knative has not created the new revision yet: `Ready`,
    /// `PredictorReady` and `PredictorConfigurationReady` are `Unknown` with reason
    /// `OutOfDate`; `revision` still takes all traffic and `observedGeneration` is the old one.
    OutOfDate {
        /// The revision still serving.
        revision: String,
    },
    /// Knative created revision `created`, which is starting: the same three conditions are
    /// `Unknown` with no reason, `latestCreatedRevision` is ahead of `latestReadyRevision`,
    /// traffic stays on `ready`, and `observedGeneration` is the new one.
    Rolling {
        /// The revision still serving.
        ready: String,
        /// The revision starting.
        created: String,
    },
}

/// Name of predictor revision `n` of InferenceService `name`, as Knative names it.
pub fn revision(name: &str, n: i64) -> String {
    format!("{name}-predictor-{n:05}")
}

/// One Knative-style condition; `severity: Info` on every type but the three KServe reports
/// at error severity.
fn condition(ty: &str, status: &str, reason: Option<&str>, at: &str) -> Value {
    let mut c = json!({"type": ty, "status": status, "lastTransitionTime": at});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if !matches!(ty, "Ready" | "PredictorReady" | "IngressReady") {
        c["severity"] = json!("Info");
    }
    c
}

/// The conditions, but `Stopped`, of an InferenceService a revision serves: all `True`; while a
/// rollout is in progress (`rollout` is `Some(reason)`), those that follow the latest created
/// revision are `Unknown` with `reason`.
fn serving(rollout: Option<Option<&str>>, at: &str) -> Vec<Value> {
    [
        "IngressReady",
        "LatestDeploymentReady",
        "PredictorConfigurationReady",
        "PredictorReady",
        "PredictorRouteReady",
        "Ready",
        "RoutesReady",
    ]
    .into_iter()
    .map(|ty| {
        let follows_latest = matches!(
            ty,
            "PredictorConfigurationReady" | "PredictorReady" | "Ready"
        );
        match rollout {
            Some(reason) if follows_latest => condition(ty, "Unknown", reason, at),
            _ => condition(ty, "True", None, at),
        }
    })
    .collect()
}

/// The status KServe writes for InferenceService `ns/name` in `state`; `observed_generation`
/// is the Knative Service's.
pub fn status(
    ns: &str,
    name: &str,
    state: &State,
    observed_generation: i64,
    times: &Times,
) -> Value {
    let (created, at) = (times.created.as_str(), times.changed.as_str());
    let not_created = Some("Predictor ingress not created");
    let mut conditions = match state {
        State::NotReady => {
            let mut predictor = condition("PredictorReady", "Unknown", Some("RevisionMissing"), at);
            predictor["message"] = json!(format!(
                "Configuration \"{name}-predictor\" is waiting for a Revision to become ready."
            ));
            vec![
                condition("IngressReady", "Unknown", not_created, created),
                predictor,
                condition("Ready", "Unknown", not_created, at),
            ]
        }
        State::Ready { .. } => serving(None, at),
        State::OutOfDate { .. } => serving(Some(Some("OutOfDate")), at),
        State::Rolling { .. } => serving(Some(None), at),
    };
    conditions.push(condition("Stopped", "False", None, created));
    conditions.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));

    // (ready revision, latest created revision), once a revision is ready.
    let revisions = match state {
        State::NotReady => None,
        State::Ready { revision } | State::OutOfDate { revision } => Some((revision, revision)),
        State::Rolling { ready, created } => Some((ready, created)),
    };
    let Some((ready, latest)) = revisions else {
        return json!({
            "conditions": conditions,
            "deploymentMode": "Knative",
            "modelStatus": {"copies": {"failedCopies": 0},
                "states": {"activeModelState": "", "targetModelState": "Pending"},
                "transitionStatus": "InProgress"},
            "observedGeneration": observed_generation,
        });
    };
    // The spec does not show modelStatus while a new revision starts; KServe reports the pods
    // of the latest created revision, which are not loaded yet.
    let model_status = if ready == latest {
        json!({"copies": {"failedCopies": 0, "totalCopies": 1},
            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
            "transitionStatus": "UpToDate"})
    } else {
        json!({"copies": {"failedCopies": 0},
            "states": {"activeModelState": "Loaded", "targetModelState": "Pending"},
            "transitionStatus": "InProgress"})
    };
    json!({
        "address": {"url": format!("http://{name}.{ns}.svc.cluster.local")},
        "components": {"predictor": {
            "address": {"url": format!("http://{name}-predictor.{ns}.svc.cluster.local")},
            "latestCreatedRevision": latest,
            "latestReadyRevision": ready,
            "latestRolledoutRevision": ready,
            "traffic": [{"latestRevision": true, "percent": 100, "revisionName": ready}],
            "url": format!("http://{name}-predictor.{ns}.example.com")}},
        "conditions": conditions,
        "deploymentMode": "Knative",
        "modelStatus": model_status,
        "observedGeneration": observed_generation,
        "url": format!("http://{name}.{ns}.example.com"),
    })
}

/// Writes [`status`] as InferenceService `ns/name`'s whole status, through the status
/// subresource, as KServe does.
pub async fn write(
    client: &Client,
    ns: &str,
    name: &str,
    state: &State,
    observed_generation: i64,
    times: &Times,
) -> Result<()> {
    let s = status(ns, name, state, observed_generation, times);
    objects::replace_status(client, &inference_service(), ns, name, &s, FIELDS).await
}

/// Writes what KServe reports for a just-created (`ready` false) or ready InferenceService
/// whose Knative Service is at `observed_generation` (ready: revision number
/// `observed_generation`), with the spec's example times.
pub async fn report(
    client: &Client,
    ns: &str,
    name: &str,
    ready: bool,
    observed_generation: i64,
) -> Result<()> {
    let (state, at) = if ready {
        let revision = revision(name, observed_generation);
        (State::Ready { revision }, READY_AT)
    } else {
        (State::NotReady, NOT_READY_AT)
    };
    let times = Times::fixed(CREATED_AT, at);
    write(client, ns, name, &state, observed_generation, &times).await
}

/// Where an InferenceService is, as KServe reports it in Standard mode (formerly
/// RawDeployment): a Deployment and a Service `<name>-predictor`, no Knative, no revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandardState {
    /// The predictor's Deployment is not available yet: `Ready` is `False` (not `Unknown`, as
    /// in Serverless mode).
    NotReady,
    /// The predictor's Deployment is available: `IngressReady`, `PredictorReady` and `Ready`
    /// are `True`. KServe 0.20 keeps this through a rolling update of the Deployment.
    Ready,
}

/// The status the real KServe v0.20 manager writes in Standard mode for InferenceService
/// `ns/name` in `state`, with ingress creation disabled (routing is this project's), as
/// recorded field by field in docs/kserve-standard-status.md: `IngressReady` True from the
/// start, `PredictorReady` and `Ready` following the predictor Deployment's availability (with
/// its reason and message), the predictor Service's address and the external `url` from the
/// first write, `components.predictor.url` once ready, and `observedGeneration` copied from
/// the predictor's **Deployment** (`deployment_generation`), not the InferenceService's.
pub fn standard_status(
    ns: &str,
    name: &str,
    state: StandardState,
    deployment_generation: i64,
    times: &Times,
) -> Value {
    let (created, at) = (times.created.as_str(), times.changed.as_str());
    let with_message = |mut c: Value, message: &str| {
        c["message"] = json!(message);
        c
    };
    let (predictor, ready, model_status, component) = match state {
        StandardState::NotReady => {
            let why = Some("MinimumReplicasUnavailable");
            let message = "Deployment does not have minimum availability.";
            (
                with_message(condition("PredictorReady", "False", why, created), message),
                with_message(condition("Ready", "False", why, created), message),
                json!({"copies": {"failedCopies": 0}, "states": {"activeModelState": "", "targetModelState": "Pending"}, "transitionStatus": "InProgress"}),
                json!({}),
            )
        }
        StandardState::Ready => (
            with_message(
                condition("PredictorReady", "True", Some("NewReplicaSetAvailable"), at),
                &format!("ReplicaSet \"{name}-predictor-{REPLICA_SET_HASH}\" has successfully progressed."),
            ),
            condition("Ready", "True", None, at),
            json!({"copies": {"failedCopies": 0, "totalCopies": 1}, "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}, "transitionStatus": "UpToDate"}),
            json!({"url": format!("http://{name}-predictor-{ns}.example.com")}),
        ),
    };
    json!({
        "address": {"url": standard_address(ns, name)},
        "clusterServingRuntimeName": "kserve-mlserver",
        "components": {"predictor": component},
        "conditions": [
            condition("IngressReady", "True", None, created),
            predictor,
            ready,
            condition("Stopped", "False", None, created),
        ],
        "deploymentMode": "Standard",
        "modelStatus": model_status,
        "observedGeneration": deployment_generation,
        "url": format!("http://{name}-{ns}.example.com"),
    })
}

/// The pod-template hash in the ReplicaSet name the stand-in's `PredictorReady` message names.
const REPLICA_SET_HASH: &str = "7d4cb79f74";

/// The address KServe reports for a Standard-mode InferenceService: its predictor Service's
/// cluster-local name (port 80, which the Service maps to the model server's 8080).
pub fn standard_address(ns: &str, name: &str) -> String {
    format!("http://{name}-predictor.{ns}.svc.cluster.local")
}

/// Writes [`standard_status`] as InferenceService `ns/name`'s whole status, through the status
/// subresource, as KServe does (removing what a Serverless-mode status had and this has not).
pub async fn write_standard(
    client: &Client,
    ns: &str,
    name: &str,
    state: StandardState,
    deployment_generation: i64,
    times: &Times,
) -> Result<()> {
    let s = standard_status(ns, name, state, deployment_generation, times);
    objects::replace_status(client, &inference_service(), ns, name, &s, FIELDS).await
}

/// Writes what KServe reports in Standard mode for an InferenceService whose predictor
/// Deployment is at `deployment_generation` and not yet (`ready` false) or now available, with
/// the spec's example times.
pub async fn report_standard(
    client: &Client,
    ns: &str,
    name: &str,
    ready: bool,
    deployment_generation: i64,
) -> Result<()> {
    let (state, at) = if ready {
        (StandardState::Ready, READY_AT)
    } else {
        (StandardState::NotReady, NOT_READY_AT)
    };
    let times = Times::fixed(CREATED_AT, at);
    write_standard(client, ns, name, state, deployment_generation, &times).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::condition_summary as conditions;

    /// The spec's examples, verbatim (shared/spec/kserve-status.md).
    const NOT_READY: &str = r#"
  conditions:
  - {type: IngressReady, status: Unknown, reason: Predictor ingress not created, lastTransitionTime: "2026-08-20T10:00:01Z"}
  - {type: PredictorReady, status: Unknown, reason: RevisionMissing, message: 'Configuration "wisdom-0-predictor" is waiting for a Revision to become ready.', lastTransitionTime: "2026-08-20T10:00:02Z"}
  - {type: Ready, status: Unknown, reason: Predictor ingress not created, lastTransitionTime: "2026-08-20T10:00:02Z"}
  - {type: Stopped, status: "False", severity: Info, lastTransitionTime: "2026-08-20T10:00:01Z"}
  deploymentMode: Knative
  modelStatus: {copies: {failedCopies: 0}, states: {activeModelState: "", targetModelState: Pending}, transitionStatus: InProgress}
  observedGeneration: 1
"#;

    const READY: &str = r#"
  address: {url: http://wisdom-0.default.svc.cluster.local}
  components:
    predictor:
      address: {url: http://wisdom-0-predictor.default.svc.cluster.local}
      latestCreatedRevision: wisdom-0-predictor-00001
      latestReadyRevision: wisdom-0-predictor-00001
      latestRolledoutRevision: wisdom-0-predictor-00001
      traffic: [{latestRevision: true, percent: 100, revisionName: wisdom-0-predictor-00001}]
      url: http://wisdom-0-predictor.default.example.com
  conditions:
  - {type: IngressReady, status: "True", lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: LatestDeploymentReady, status: "True", severity: Info, lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: PredictorConfigurationReady, status: "True", severity: Info, lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: PredictorReady, status: "True", lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: PredictorRouteReady, status: "True", severity: Info, lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: Ready, status: "True", lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: RoutesReady, status: "True", severity: Info, lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: Stopped, status: "False", severity: Info, lastTransitionTime: "2026-08-20T10:00:01Z"}
  deploymentMode: Knative
  modelStatus: {copies: {failedCopies: 0, totalCopies: 1}, states: {activeModelState: Loaded, targetModelState: Loaded}, transitionStatus: UpToDate}
  observedGeneration: 1
  url: http://wisdom-0.default.example.com
"#;

    /// Standard mode as the real KServe v0.20 writes it with ingress creation disabled
    /// (docs/kserve-standard-status.md, steps 1 and 2).
    const STANDARD_NOT_READY: &str = r#"
  address: {url: http://wisdom-0-predictor.default.svc.cluster.local}
  clusterServingRuntimeName: kserve-mlserver
  components: {predictor: {}}
  conditions:
  - {type: IngressReady, status: "True", lastTransitionTime: "2026-08-20T10:00:01Z"}
  - {type: PredictorReady, status: "False", reason: MinimumReplicasUnavailable, message: "Deployment does not have minimum availability.", lastTransitionTime: "2026-08-20T10:00:01Z"}
  - {type: Ready, status: "False", reason: MinimumReplicasUnavailable, message: "Deployment does not have minimum availability.", lastTransitionTime: "2026-08-20T10:00:01Z"}
  - {type: Stopped, status: "False", severity: Info, lastTransitionTime: "2026-08-20T10:00:01Z"}
  deploymentMode: Standard
  modelStatus: {copies: {failedCopies: 0}, states: {activeModelState: "", targetModelState: Pending}, transitionStatus: InProgress}
  observedGeneration: 1
  url: http://wisdom-0-default.example.com
"#;

    const STANDARD_READY: &str = r#"
  address: {url: http://wisdom-0-predictor.default.svc.cluster.local}
  clusterServingRuntimeName: kserve-mlserver
  components: {predictor: {url: http://wisdom-0-predictor-default.example.com}}
  conditions:
  - {type: IngressReady, status: "True", lastTransitionTime: "2026-08-20T10:00:01Z"}
  - {type: PredictorReady, status: "True", reason: NewReplicaSetAvailable, message: "ReplicaSet \"wisdom-0-predictor-7d4cb79f74\" has successfully progressed.", lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: Ready, status: "True", lastTransitionTime: "2026-08-20T10:00:40Z"}
  - {type: Stopped, status: "False", severity: Info, lastTransitionTime: "2026-08-20T10:00:01Z"}
  deploymentMode: Standard
  modelStatus: {copies: {failedCopies: 0, totalCopies: 1}, states: {activeModelState: Loaded, targetModelState: Loaded}, transitionStatus: UpToDate}
  observedGeneration: 3
  url: http://wisdom-0-default.example.com
"#;

    #[test]
    fn standard_mode_is_what_the_real_kserve_writes() {
        let not_ready = standard_status(
            "default",
            "wisdom-0",
            StandardState::NotReady,
            1,
            &Times::fixed(CREATED_AT, NOT_READY_AT),
        );
        assert_eq!(not_ready, yaml(STANDARD_NOT_READY));
        // observedGeneration is the Deployment's (3 here), whatever the InferenceService's is.
        let ready = standard_status(
            "default",
            "wisdom-0",
            StandardState::Ready,
            3,
            &Times::fixed(CREATED_AT, READY_AT),
        );
        assert_eq!(ready, yaml(STANDARD_READY));
        for s in [&not_ready, &ready] {
            assert!(
                s["components"]["predictor"].get("traffic").is_none(),
                "no revisions in Standard mode"
            );
            let extra: Vec<&String> = s
                .as_object()
                .unwrap_or_else(|| panic!("an object"))
                .keys()
                .filter(|k| !FIELDS.contains(&k.as_str()))
                .collect();
            assert!(
                extra.is_empty(),
                "{extra:?} would not be removed by a later write"
            );
        }
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn not_ready_and_ready_are_the_spec_examples() {
        assert_eq!(
            status(
                "default",
                "wisdom-0",
                &State::NotReady,
                1,
                &Times::fixed(CREATED_AT, NOT_READY_AT)
            ),
            yaml(NOT_READY)
        );
        let ready = State::Ready {
            revision: revision("wisdom-0", 1),
        };
        assert_eq!(
            status(
                "default",
                "wisdom-0",
                &ready,
                1,
                &Times::fixed(CREATED_AT, READY_AT)
            ),
            yaml(READY)
        );
    }

    #[test]
    fn a_rollout_goes_out_of_date_then_starts_the_new_revision_on_the_old_traffic() {
        let times = Times::fixed(CREATED_AT, READY_AT);
        let (old, new) = (revision("wisdom-0", 1), revision("wisdom-0", 2));
        let out_of_date = status(
            "ns",
            "wisdom-0",
            &State::OutOfDate {
                revision: old.clone(),
            },
            1,
            &times,
        );
        let rolling = status(
            "ns",
            "wisdom-0",
            &State::Rolling {
                ready: old.clone(),
                created: new.clone(),
            },
            2,
            &times,
        );
        let unknown = |reason: &str| {
            [
                ("IngressReady", "True", ""),
                ("LatestDeploymentReady", "True", ""),
                ("PredictorConfigurationReady", "Unknown", reason),
                ("PredictorReady", "Unknown", reason),
                ("PredictorRouteReady", "True", ""),
                ("Ready", "Unknown", reason),
                ("RoutesReady", "True", ""),
                ("Stopped", "False", ""),
            ]
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .to_vec()
        };
        assert_eq!(conditions(&out_of_date), unknown("OutOfDate"));
        assert_eq!(conditions(&rolling), unknown(""));
        assert_eq!(out_of_date["observedGeneration"], 1);
        assert_eq!(rolling["observedGeneration"], 2);
        let predictor = &rolling["components"]["predictor"];
        assert_eq!(predictor["latestCreatedRevision"], json!(new));
        assert_eq!(predictor["latestReadyRevision"], json!(old));
        assert_eq!(predictor["traffic"][0]["revisionName"], json!(old));
        assert_eq!(
            out_of_date["components"]["predictor"]["latestCreatedRevision"],
            json!(old)
        );
    }
}
