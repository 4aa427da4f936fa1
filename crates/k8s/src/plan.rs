//! The pure steps of one routemap's reconcile: weigh its versions, render its templates and
//! plan what to write: routing objects to apply, routing objects to prune and Events to
//! report. The [`Plan`] is a plain value; [`crate::applier`] carries it out. No I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use iter8_core::availability::weigh;
use iter8_core::config::Config;
use iter8_core::render::{check_target, render, RenderError, RoutemapMeta};
use iter8_core::routemap::Routemap;
use serde_json::Value;

use iter8_analysis::spec::Analysis;

use crate::analysis::{steer, StatusRecord};
use crate::keys::{Gvr, ObjectKey, RoutemapKey};
use crate::state::{RoutingObject, Snapshot};

/// Whether an Event is news or a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Normal,
    Warning,
}

/// An Event to publish on the routemap.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Note {
    pub severity: Severity,
    pub reason: &'static str,
    /// Says its cause once; the Event is on the routemap, so it does not name it.
    pub text: String,
    /// Category for the error metric (Warnings only).
    pub category: Option<&'static str>,
}

impl Note {
    pub fn warning(reason: &'static str, category: &'static str, text: String) -> Note {
        Note {
            severity: Severity::Warning,
            reason,
            text,
            category: Some(category),
        }
    }

    pub fn normal(reason: &'static str, text: String) -> Note {
        Note {
            severity: Severity::Normal,
            reason,
            text,
            category: None,
        }
    }
}

/// What to say about one subject of a routemap (the routemap itself, its resources, one
/// template): a note, or `None` when the subject is fine (so a problem that comes back is
/// reported again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub subject: String,
    pub note: Option<Note>,
}

impl Report {
    pub fn about(subject: impl Into<String>, note: Note) -> Report {
        Report {
            subject: subject.into(),
            note: Some(note),
        }
    }

    pub fn fine(subject: impl Into<String>) -> Report {
        Report {
            subject: subject.into(),
            note: None,
        }
    }
}

/// A rendered routing object that passed every check, before ownership is stamped on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The template that rendered it.
    pub template: String,
    pub target: ObjectKey,
    pub kind: String,
    pub object: Value,
}

/// What one reconcile writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The versions' effective weights (for logs and Events).
    pub weights: Vec<u32>,
    pub apply: Vec<Desired>,
    /// Routing objects this routemap owns that no template renders any more.
    pub prune: Vec<(ObjectKey, RoutingObject)>,
    pub reports: Vec<Report>,
    /// Something may succeed later without a change (a type not served yet): retry.
    pub retry: bool,
}

/// The subject of a template's Events.
pub fn template_subject(template: &str) -> String {
    format!("template {template}")
}

/// What a reconcile reads, all from the stores.
pub struct Inputs<'a> {
    pub key: &'a RoutemapKey,
    pub meta: &'a RoutemapMeta,
    pub routemap: &'a Routemap,
    pub config: &'a Config,
    /// The objects the routemap's versions name.
    pub objects: &'a Snapshot,
    /// Live routing objects the controller wrote for this routemap.
    pub owned: &'a [(ObjectKey, RoutingObject)],
    /// Kinds of the routing types, from discovery; a type missing here is not served yet.
    pub kinds: &'a HashMap<Gvr, String>,
    /// The routemap's analysis block, checked, if it has one.
    pub analysis: Option<&'a Result<Analysis, String>>,
    /// The analysis state stored for it.
    pub status: Option<&'a StatusRecord>,
}

/// Weighs, renders and plans. Pruning happens only when every template rendered an
/// acceptable object or nothing: a failing template keeps whatever it applied before.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let Inputs {
        key,
        meta,
        routemap,
        config,
        objects,
        owned,
        kinds,
        analysis,
        status,
    } = inputs;
    let mut plan = Plan::default();

    let warnings = routemap.warnings(config);
    plan.reports.push(if warnings.is_empty() {
        Report::fine("routemap")
    } else {
        Report::about(
            "routemap",
            Note::warning("RoutemapWarning", "routemap", warnings.join("; ")),
        )
    });

    let lookup = |short: &str, ns: &str, name: &str| {
        objects
            .get(&(short.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    };
    let mut weighing = weigh(routemap, &key.namespace, config, &lookup);
    steer(&mut weighing, *analysis, *status);
    match analysis {
        Some(Err(why)) => plan.reports.push(Report::about(
            "analysis block",
            Note::warning(
                "InvalidAnalysis",
                "analysis",
                format!("{why}; the candidate gets no traffic until the analysis block is fixed"),
            ),
        )),
        Some(Ok(_)) => plan.reports.push(Report::fine("analysis block")),
        None => {}
    }
    plan.reports.push(if weighing.problems.is_empty() {
        Report::fine("resources")
    } else {
        Report::about(
            "resources",
            Note::warning("ResourceProblem", "resource", weighing.problems.join("; ")),
        )
    });
    plan.weights = weighing.weights.clone();

    let mut complete = true;
    let mut rendered_by: BTreeMap<ObjectKey, String> = BTreeMap::new();
    for rendered in render(meta, routemap, &weighing) {
        let subject = template_subject(&rendered.template);
        let outcome = match rendered.result {
            Err(e) => Err(Refusal::Render(e)),
            Ok(None) => Ok(None),
            Ok(Some(obj)) => target(
                &rendered.template,
                &rendered.gvr_short,
                obj,
                &key.namespace,
                config,
                kinds,
            )
            .map(Some),
        };
        match outcome {
            Ok(None) => plan.reports.push(Report::fine(subject)),
            Ok(Some(desired)) => {
                if let Some(first) = rendered_by.get(&desired.target) {
                    complete = false;
                    plan.reports.push(Report::about(
                        subject,
                        Note::warning(
                            "RefusedObject",
                            "target",
                            format!(
                                "routing template {}: {} {} is rendered by template {first} already",
                                desired.template, desired.kind, desired.target.name
                            ),
                        ),
                    ));
                    continue;
                }
                rendered_by.insert(desired.target.clone(), desired.template.clone());
                plan.apply.push(desired);
            }
            Err(Refusal::Render(e)) => {
                complete = false;
                let reason = match e {
                    RenderError::Target(_) => "RefusedObject",
                    _ => "TemplateError",
                };
                let text = match &e {
                    RenderError::Target(why) => {
                        format!("routing template {}: {why}", rendered.template)
                    }
                    other => other.to_string(),
                };
                plan.reports.push(Report::about(
                    subject,
                    Note::warning(reason, e.category(), text),
                ));
            }
            Err(Refusal::NotServed(gvr)) => {
                complete = false;
                plan.retry = true;
                plan.reports.push(Report::about(
                    subject,
                    Note::warning(
                        "ApplyFailed",
                        "not_served",
                        format!(
                            "routing template {}: the API server does not serve {gvr} (yet)",
                            rendered.template
                        ),
                    ),
                ));
            }
        }
    }
    if complete {
        plan.prune = owned
            .iter()
            .filter(|(k, _)| !rendered_by.contains_key(k))
            .cloned()
            .collect();
    }
    plan
}

enum Refusal {
    Render(RenderError),
    NotServed(Gvr),
}

impl From<RenderError> for Refusal {
    fn from(e: RenderError) -> Self {
        Refusal::Render(e)
    }
}

/// Checks one rendered object: its template's type is a routing type of the config, the
/// object is of that type and in the routemap's namespace.
fn target(
    template: &str,
    gvr_short: &str,
    obj: Value,
    namespace: &str,
    config: &Config,
    kinds: &HashMap<Gvr, String>,
) -> Result<Desired, Refusal> {
    let refuse = |why: String| Refusal::Render(RenderError::Target(why));
    let Some(rt) = config.resource_types.get(gvr_short) else {
        return Err(refuse(format!(
            "gvrShort {gvr_short:?} is not a configured resource type"
        )));
    };
    if !config.is_routing(rt) {
        return Err(refuse(format!(
            "type {gvr_short:?} ({}) is not a routing resource; routing templates may write only {}",
            rt.resource,
            config.routing_resources.join(", ")
        )));
    }
    let gvr = Gvr::of(rt);
    let Some(kind) = kinds.get(&gvr) else {
        return Err(Refusal::NotServed(gvr));
    };
    let object = check_target(obj, &gvr.api_version(), kind, namespace)?;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(Desired {
        template: template.to_string(),
        target: ObjectKey {
            gvr,
            namespace: namespace.to_string(),
            name,
        },
        kind: kind.clone(),
        object,
    })
}

/// The routing types a routemap's templates use, so their kinds can be resolved first.
pub fn routing_types_used(routemap: &Routemap, config: &Config) -> BTreeSet<Gvr> {
    routemap
        .routing_templates
        .values()
        .filter_map(|t| config.resource_types.get(&t.gvr_short))
        .filter(|rt| config.is_routing(rt))
        .map(Gvr::of)
        .collect()
}

#[cfg(test)]
mod tests;
