//! Glue of the automated analysis (docs/analysis.md, crate `iter8_analysis`): the status
//! ConfigMap each analysed routemap's state lives in, the traffic a routemap's versions get
//! under its analysis, and what one pass of the leader's analysis loop works on. Pure; the
//! loop itself is in [`crate::controller`], its writes in [`crate::applier`].

use std::collections::BTreeMap;

use iter8_analysis::machine::{self, Facts};
use iter8_analysis::measure::{Subject, VersionRef};
use iter8_analysis::spec::{self, Analysis};
use iter8_core::availability::Weighing;
use iter8_core::routemap::Routemap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::keys::RoutemapKey;
use crate::state::routemap_owner_ref;

/// Label selecting the analysis status ConfigMaps.
pub const STATUS_KIND_LABEL: &str = "iter8.tools/kind=analysis-status";
/// The status ConfigMap's keys.
pub const PHASE_KEY: &str = "phase";
pub const MESSAGE_KEY: &str = "message";
pub const STATE_KEY: &str = "state";

/// The name of routemap `routemap`'s status ConfigMap.
pub fn status_name(routemap: &str) -> String {
    format!("{routemap}-analysis")
}

/// The application a routemap is for: its name without the `-routemap` suffix the release
/// chart gives it (the A/B/n service finds routemaps the same way).
pub fn application(routemap: &str) -> &str {
    routemap.strip_suffix("-routemap").unwrap_or(routemap)
}

/// A routemap's analysis block, checked: `None` without one (or with a single version: there
/// is nothing to judge), `Err` with what is wrong with it.
pub fn parse_block(rm: &Routemap) -> Option<Result<Analysis, String>> {
    let block = rm.analysis.as_ref()?;
    if rm.versions.len() < 2 {
        return None;
    }
    if rm.versions.len() > 2 {
        return Some(Err(format!(
            "analysis needs exactly two versions, the primary and one candidate; the routemap has {}",
            rm.versions.len()
        )));
    }
    Some(spec::parse(block))
}

/// A status ConfigMap as the controller reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusRecord {
    pub uid: String,
    pub resource_version: String,
    /// The stored state, or why it cannot be read (then it is written anew).
    pub state: Result<machine::State, String>,
}

/// Reads a status ConfigMap: the routemap it belongs to (its ConfigMap owner) and the state.
pub fn observe_status(cm: &ConfigMap) -> Option<(RoutemapKey, StatusRecord)> {
    let owner = routemap_owner_ref(cm.owner_references())?;
    let key = RoutemapKey {
        namespace: cm.namespace().unwrap_or_default(),
        name: owner.name.clone(),
    };
    let state = match cm.data.as_ref().and_then(|d| d.get(STATE_KEY)) {
        None => Err(format!("no {STATE_KEY} key")),
        Some(text) => serde_json::from_str(text).map_err(|e| e.to_string()),
    };
    Some((
        key,
        StatusRecord {
            uid: cm.uid().unwrap_or_default(),
            resource_version: cm.resource_version().unwrap_or_default(),
            state,
        },
    ))
}

/// The status ConfigMap holding `state`, owned by the routemap (name, uid).
pub fn status_object(key: &RoutemapKey, routemap_uid: &str, state: &machine::State) -> Value {
    let text = serde_json::to_string_pretty(state).unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": status_name(&key.name),
            "namespace": key.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "iter8",
                "iter8.tools/kind": "analysis-status",
            },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": key.name,
                "uid": routemap_uid,
            }],
        },
        "data": {
            PHASE_KEY: state.phase.as_str(),
            MESSAGE_KEY: state.message,
            STATE_KEY: text,
        },
    })
}

/// The stored state if it is about these versions (a state about others is stale: the
/// leader starts a new one).
pub fn current<'a>(
    stored: Option<&'a StatusRecord>,
    subject: &[String],
) -> Option<&'a machine::State> {
    stored
        .and_then(|s| s.state.as_ref().ok())
        .filter(|s| s.subject == subject)
}

/// Gives the versions the traffic the analysis decided: changes `weighing.weights` (the
/// templates' `.Weights` and Lookup's) and sets `weighing.promoted`. A broken analysis block,
/// or no decision yet about these versions, gives the candidates nothing: an unjudged
/// candidate gets no traffic.
pub fn steer(
    weighing: &mut Weighing,
    block: Option<&Result<Analysis, String>>,
    stored: Option<&StatusRecord>,
) {
    let Some(block) = block else {
        return;
    };
    let state = match block {
        Ok(analysis) => match current(stored, &weighing.signatures) {
            Some(state) => Some((analysis, state.clone())),
            None => Some((
                analysis,
                machine::State::new(
                    &Facts {
                        subject: weighing.signatures.clone(),
                        candidate_ready: false,
                        primary_ready: true,
                    },
                    jiff::Timestamp::UNIX_EPOCH,
                ),
            )),
        },
        Err(_) => None,
    };
    match state {
        Some((analysis, state)) => {
            let (weights, promoted) =
                machine::traffic(analysis, &state, &weighing.available, &weighing.weights);
            weighing.weights = weights;
            weighing.promoted = promoted;
        }
        None => {
            for w in weighing.weights.iter_mut().skip(1) {
                *w = 0;
            }
            if weighing.weights.iter().all(|w| *w == 0) {
                if let Some(first) = weighing.weights.first_mut() {
                    *first = 1;
                }
            }
            weighing.promoted = false;
        }
    }
}

/// What one pass of the analysis loop needs about one routemap.
#[derive(Clone, Debug)]
pub struct Job {
    pub key: RoutemapKey,
    pub routemap_uid: String,
    pub analysis: Analysis,
    pub facts: Facts,
    pub subject: Subject,
    pub stored: Option<StatusRecord>,
}

/// The subject of an evaluation: the application and its two versions.
pub fn subject(key: &RoutemapKey, rm: &Routemap, weighing: &Weighing) -> Subject {
    let version = |i: usize| VersionRef {
        name: rm
            .versions
            .get(i)
            .and_then(|v| v.resources.first())
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        signature: weighing.signatures.get(i).cloned().unwrap_or_default(),
    };
    Subject {
        namespace: key.namespace.clone(),
        application: application(&key.name).to_string(),
        versions: [version(0), version(1)],
    }
}

/// The JSON of `GET /analysisDashboard`: the state with the traffic it gives now.
pub fn dashboard(
    key: &RoutemapKey,
    analysis: &Analysis,
    state: Option<&machine::State>,
    weighing: &Weighing,
) -> Value {
    let mut out = BTreeMap::new();
    out.insert("namespace", json!(key.namespace));
    out.insert("application", json!(application(&key.name)));
    out.insert("strategy", json!(analysis.strategy));
    out.insert("steps", json!(analysis.steps));
    out.insert("weights", json!(weighing.weights));
    out.insert("promoted", json!(weighing.promoted));
    out.insert(
        "interval",
        json!(iter8_analysis::duration::display(analysis.interval)),
    );
    match state {
        Some(s) => {
            out.insert("phase", json!(s.phase.as_str()));
            out.insert("state", serde_json::to_value(s).unwrap_or(Value::Null));
        }
        None => {
            out.insert("phase", json!(machine::Phase::Waiting.as_str()));
        }
    }
    json!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighing(available: [bool; 2], weights: [u32; 2]) -> Weighing {
        Weighing {
            available: available.to_vec(),
            weights: weights.to_vec(),
            signatures: vec!["p".into(), "c".into()],
            problems: vec![],
            promoted: false,
        }
    }

    fn analysis(text: &str) -> Analysis {
        spec::parse(&serde_yaml::from_str(text).expect("yaml")).expect("valid")
    }

    fn record(state: machine::State) -> StatusRecord {
        StatusRecord {
            uid: "u".into(),
            resource_version: "1".into(),
            state: Ok(state),
        }
    }

    #[test]
    fn without_a_decision_about_these_versions_the_candidate_gets_nothing() {
        let a = Ok(analysis("strategy: blue-green\nsteps: [10, 100]"));
        let mut w = weighing([true, true], [1, 1]);
        steer(&mut w, Some(&a), None);
        assert_eq!(w.weights, vec![100, 0]);

        let facts = Facts {
            subject: vec!["p".into(), "c".into()],
            candidate_ready: true,
            primary_ready: true,
        };
        let now = jiff::Timestamp::UNIX_EPOCH;
        let (state, _) = machine::observe(None, a.as_ref().expect("ok"), &facts, now);
        let mut w = weighing([true, true], [1, 1]);
        steer(&mut w, Some(&a), Some(&record(state.clone())));
        assert_eq!(w.weights, vec![90, 10]);

        // A state about another candidate is stale.
        let mut other = state;
        other.subject = vec!["p".into(), "old".into()];
        let mut w = weighing([true, true], [1, 1]);
        steer(&mut w, Some(&a), Some(&record(other)));
        assert_eq!(w.weights, vec![100, 0]);
    }

    #[test]
    fn a_broken_block_keeps_traffic_on_the_primary_and_no_block_changes_nothing() {
        let mut w = weighing([true, true], [3, 7]);
        steer(&mut w, Some(&Err("bad".into())), None);
        assert_eq!(w.weights, vec![3, 0]);
        let mut w = weighing([false, true], [0, 7]);
        steer(&mut w, Some(&Err("bad".into())), None);
        assert_eq!(w.weights, vec![1, 0]);
        let mut w = weighing([true, true], [3, 7]);
        steer(&mut w, None, None);
        assert_eq!(w.weights, vec![3, 7]);
    }

    #[test]
    fn the_status_configmap_round_trips() {
        let facts = Facts {
            subject: vec!["p".into(), "c".into()],
            candidate_ready: false,
            primary_ready: true,
        };
        let a = analysis("strategy: canary");
        let (state, _) = machine::observe(None, &a, &facts, jiff::Timestamp::UNIX_EPOCH);
        let key = RoutemapKey {
            namespace: "ns".into(),
            name: "wisdom-routemap".into(),
        };
        let obj = status_object(&key, "uid-1", &state);
        assert_eq!(obj["metadata"]["name"], "wisdom-routemap-analysis");
        assert_eq!(obj["data"]["phase"], "Waiting");
        let cm: ConfigMap = serde_json::from_value(obj).expect("configmap");
        let (k, rec) = observe_status(&cm).expect("owned by the routemap");
        assert_eq!(k, key);
        assert_eq!(rec.state, Ok(state));
        assert_eq!(application(&key.name), "wisdom");
    }
}
