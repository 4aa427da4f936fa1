//! Deployment status as kube-controller-manager's deployment controller writes it, as
//! shared/spec/kserve-status.md shows it: `Available` and `Progressing` conditions, the replica
//! counts, and an `observedGeneration` that is the Deployment's own and moves at the *start* of
//! a rollout. For control planes without the workload controllers (no kubelet would ever make a
//! pod ready). [`status`] builds it (pure); [`write`] and [`observe`] write it through the
//! status subresource (API I/O).

use anyhow::Result;
use kube::Client;
use serde_json::{json, Value};

use crate::fixtures::deployment;
use crate::objects::{self, Times};

/// Every top-level status field the deployment controller writes: a write of one state removes
/// what an earlier state set and this one does not have.
pub const FIELDS: &[&str] = &[
    "availableReplicas",
    "collisionCount",
    "conditions",
    "observedGeneration",
    "readyReplicas",
    "replicas",
    "terminatingReplicas",
    "unavailableReplicas",
    "updatedReplicas",
];

/// Example times: the Deployment was created at [`CREATED_AT`] and became available at
/// [`AVAILABLE_AT`].
pub const CREATED_AT: &str = "2026-08-20T10:00:01Z";
/// See [`CREATED_AT`].
pub const AVAILABLE_AT: &str = "2026-08-20T10:00:30Z";

/// Pod-template hash of the first ReplicaSet (names only; nothing compares them).
const FIRST_HASH: &str = "5d9c7b6f4";
/// Pod-template hash of the ReplicaSet a rollout creates.
const NEXT_HASH: &str = "7f8d9c6b5";

/// Where a one-replica Deployment is, as the deployment controller reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Just created: its first ReplicaSet's pod is not available yet (`Available: False`,
    /// `MinimumReplicasUnavailable`; `Progressing: True`, `ReplicaSetUpdated`).
    Progressing,
    /// Its pod is available (`Available: True`, `MinimumReplicasAvailable`; `Progressing:
    /// True`, `NewReplicaSetAvailable`).
    Available,
    /// A rollout after a spec change: the new ReplicaSet's pod starts while the old one still
    /// serves, so `Available` stays `True` (`Progressing: True`, `ReplicaSetUpdated`).
    Rolling,
}

/// One Deployment condition (they carry `lastUpdateTime` too).
fn condition(ty: &str, status: &str, reason: &str, message: &str, times: (&str, &str)) -> Value {
    json!({"type": ty, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": times.0, "lastTransitionTime": times.1})
}

/// The status the deployment controller writes for one-replica Deployment `name` in `state`,
/// having observed generation `observed_generation`.
pub fn status(name: &str, state: State, observed_generation: i64, times: &Times) -> Value {
    let (created, at) = (times.created.as_str(), times.changed.as_str());
    let progressing = |hash: &str, since: &str| {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{name}-{hash}\" is progressing."),
            (at, since),
        )
    };
    let available = |since: &str| {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            (at, since),
        )
    };
    match state {
        State::Progressing => json!({
            "conditions": [
                condition("Available", "False", "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.", (at, at)),
                progressing(FIRST_HASH, at)],
            "observedGeneration": observed_generation,
            "replicas": 1,
            "unavailableReplicas": 1,
            "updatedReplicas": 1,
        }),
        State::Available => json!({
            "availableReplicas": 1,
            "conditions": [
                available(at),
                condition("Progressing", "True", "NewReplicaSetAvailable",
                    &format!("ReplicaSet \"{name}-{FIRST_HASH}\" has successfully progressed."),
                    (at, created))],
            "observedGeneration": observed_generation,
            "readyReplicas": 1,
            "replicas": 1,
            "updatedReplicas": 1,
        }),
        State::Rolling => json!({
            "availableReplicas": 1,
            "conditions": [available(created), progressing(NEXT_HASH, created)],
            "observedGeneration": observed_generation,
            "readyReplicas": 1,
            "replicas": 2,
            "unavailableReplicas": 1,
            "updatedReplicas": 1,
        }),
    }
}

/// Writes [`status`] as Deployment `ns/name`'s whole status, through the status subresource,
/// with example times.
pub async fn write(
    client: &Client,
    ns: &str,
    name: &str,
    state: State,
    observed_generation: i64,
) -> Result<()> {
    let times = Times::fixed(
        CREATED_AT,
        match state {
            State::Progressing => CREATED_AT,
            State::Available | State::Rolling => AVAILABLE_AT,
        },
    );
    let s = status(name, state, observed_generation, &times);
    objects::replace_status(client, &deployment(), ns, name, &s, FIELDS).await
}

/// Writes `state` for Deployment `ns/name` having observed its current generation, as the
/// deployment controller does once it acts on a spec.
pub async fn observe(client: &Client, ns: &str, name: &str, state: State) -> Result<()> {
    let generation = objects::generation(client, &deployment(), ns, name).await?;
    write(client, ns, name, state, generation).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::condition_summary as condition_statuses;

    /// The spec's "Ready" example, with the times the deployment controller adds.
    const AVAILABLE: &str = r#"
  availableReplicas: 1
  conditions:
  - {type: Available, status: "True", reason: MinimumReplicasAvailable, message: Deployment has minimum availability., lastUpdateTime: "2026-08-20T10:00:30Z", lastTransitionTime: "2026-08-20T10:00:30Z"}
  - {type: Progressing, status: "True", reason: NewReplicaSetAvailable, message: ReplicaSet "httpbin-0-5d9c7b6f4" has successfully progressed., lastUpdateTime: "2026-08-20T10:00:30Z", lastTransitionTime: "2026-08-20T10:00:01Z"}
  observedGeneration: 1
  readyReplicas: 1
  replicas: 1
  updatedReplicas: 1
"#;

    #[test]
    fn available_is_the_spec_example() {
        let expected: Value = serde_yaml::from_str(AVAILABLE).unwrap_or_else(|e| panic!("{e}"));
        let times = Times::fixed(CREATED_AT, AVAILABLE_AT);
        assert_eq!(status("httpbin-0", State::Available, 1, &times), expected);
    }

    #[test]
    fn just_created_is_unavailable_and_a_rollout_stays_available() {
        let times = Times::fixed(CREATED_AT, AVAILABLE_AT);
        let created = status("httpbin-0", State::Progressing, 1, &times);
        assert_eq!(
            condition_statuses(&created),
            [
                (
                    "Available".to_string(),
                    "False".to_string(),
                    "MinimumReplicasUnavailable".to_string()
                ),
                (
                    "Progressing".to_string(),
                    "True".to_string(),
                    "ReplicaSetUpdated".to_string()
                )
            ]
        );
        assert_eq!(created["unavailableReplicas"], 1);
        assert_eq!(created["observedGeneration"], 1);

        let rolling = status("httpbin-0", State::Rolling, 2, &times);
        assert_eq!(
            condition_statuses(&rolling),
            [
                (
                    "Available".to_string(),
                    "True".to_string(),
                    "MinimumReplicasAvailable".to_string()
                ),
                (
                    "Progressing".to_string(),
                    "True".to_string(),
                    "ReplicaSetUpdated".to_string()
                )
            ]
        );
        assert_eq!(rolling["observedGeneration"], 2);
    }
}
