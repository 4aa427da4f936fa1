//! Readiness of versions, their effective weights and signatures (spec 2.4). Pure: the
//! caller hands in a lookup over its in-memory stores.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Config, ResourceType};
use crate::routemap::Routemap;

/// Annotation on a version's first resource that overrides the version's weight.
pub const WEIGHT_ANNOTATION: &str = "iter8.tools/weight";

/// Weight of an available version that declares none.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The fields of a watched object the core reads, digested when the object is observed so a
/// store holds a few hundred bytes per object instead of its whole JSON: the generation, the
/// deletion state, the annotations the core reads, the spec as canonical JSON (for
/// signatures) and the status conditions (for readiness).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Whether `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `metadata.annotations` (the glue keeps only those the core reads).
    pub annotations: BTreeMap<String, String>,
    /// The canonical JSON of `spec` (`null` without one).
    spec: String,
    /// What readiness reads of `status`, or what is malformed in it.
    status: Result<Option<Status>, String>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            generation: None,
            deleting: false,
            annotations: BTreeMap::new(),
            spec: "null".to_string(),
            status: Ok(None),
        }
    }
}

/// The part of a `status` readiness reads: its conditions and `observedGeneration`.
#[derive(Clone, Debug, PartialEq)]
struct Status {
    conditions: Vec<Condition>,
    observed_generation: Option<i64>,
}

/// One entry of `status.conditions`.
#[derive(Clone, Debug, PartialEq)]
struct Condition {
    kind: String,
    status: String,
    observed_generation: Option<i64>,
}

impl Observed {
    /// An object with this metadata, no spec and no status.
    pub fn new(
        generation: Option<i64>,
        deleting: bool,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        Observed {
            generation,
            deleting,
            annotations,
            ..Observed::default()
        }
    }

    /// With this `spec`.
    pub fn with_spec(mut self, spec: &Value) -> Self {
        self.spec.clear();
        write_canonical(spec, &mut self.spec);
        self
    }

    /// With this `status`.
    pub fn with_status(mut self, status: &Value) -> Self {
        self.status = digest_status(status);
        self
    }
}

/// Reads the conditions of a `status`, checking their shape. `Ok(None)` is no status or no
/// conditions (not ready); `Err` names what is malformed.
fn digest_status(status: &Value) -> Result<Option<Status>, String> {
    let status = match status {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        _ => return Err("status is not an object".to_string()),
    };
    let entries = match status.get("conditions") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("status.conditions is not a list".to_string()),
    };
    let mut conditions = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(m) = entry else {
            return Err(format!("status.conditions[{i}] is not an object"));
        };
        let field = |name: &str| match m.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(format!("status.conditions[{i}].{name} is not a string")),
        };
        conditions.push(Condition {
            kind: field("type")?,
            status: field("status")?,
            observed_generation: generation_field(
                m.get("observedGeneration"),
                &format!("status.conditions[{i}].observedGeneration"),
            )?,
        });
    }
    let observed_generation = generation_field(
        status.get("observedGeneration"),
        "status.observedGeneration",
    )?;
    Ok(Some(Status {
        conditions,
        observed_generation,
    }))
}

/// The outcome of [`weigh`], one entry per version in routemap order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weighing {
    /// Whether each version is available.
    pub available: Vec<bool>,
    /// Effective weight of each version (the template's `.Weights`).
    pub weights: Vec<u32>,
    /// Stable hash of each version's resource specs; empty when a resource is missing.
    pub signatures: Vec<String>,
    /// Problems found in watched objects (malformed conditions, unparseable weight
    /// annotations), each naming the object. They make no version fail to render.
    pub problems: Vec<String>,
    /// Whether the analysis promoted the candidate (version 1) to take the primary's place
    /// (the template's `.Promoted`); never set by [`weigh`].
    pub promoted: bool,
}

/// Computes availability, weights and signatures of every version of `routemap`
/// (in namespace `routemap_ns`).
///
/// A version is available iff every one of its resources has a known `gvrShort`, is
/// returned by `lookup(gvr_short, namespace, name)`, is not being deleted, and satisfies
/// every condition of its type: each `status.conditions` entry of that type is `True` (and
/// fresh, see [`ResourceType::check_generation`]), and there is at least one. A version
/// without resources is available.
///
/// `weights[i]` is 0 for an unavailable version; else the `iter8.tools/weight` annotation of
/// its first resource when present and a plain u32 (digits only, as Go's
/// `strconv.ParseUint`: anything else, spaces included, is reported in `problems` and
/// ignored), else the version's declared weight, else 1. When every weight is 0,
/// `weights[0]` becomes 1 so that traffic always has somewhere to go.
///
/// `signatures[i]` is [`signature`] of the version's resource specs, or empty when one of
/// its resources cannot be looked up.
pub fn weigh(
    routemap: &Routemap,
    routemap_ns: &str,
    config: &Config,
    lookup: &dyn Fn(&str, &str, &str) -> Option<Observed>,
) -> Weighing {
    let mut out = Weighing::default();
    for version in &routemap.versions {
        let mut available = true;
        let mut objects = Vec::with_capacity(version.resources.len());
        for r in &version.resources {
            let ns = r.namespace_or(routemap_ns);
            let Some(rtype) = config.resource_types.get(&r.gvr_short) else {
                available = false;
                objects.push(None);
                continue;
            };
            let obj = lookup(&r.gvr_short, ns, &r.name);
            match &obj {
                None => available = false,
                Some(o) if o.deleting => available = false,
                Some(o) => match conditions_satisfied(rtype, o) {
                    Ok(true) => {}
                    Ok(false) => available = false,
                    Err(problem) => {
                        available = false;
                        out.problems
                            .push(format!("{} {ns}/{}: {problem}", r.gvr_short, r.name));
                    }
                },
            }
            objects.push(obj);
        }

        let weight = if available {
            let annotated = match (version.resources.first(), objects.first()) {
                (Some(r), Some(Some(o))) => match o.annotations.get(WEIGHT_ANNOTATION) {
                    None => None,
                    Some(text) => match parse_weight(text) {
                        Some(w) => Some(w),
                        None => {
                            out.problems.push(format!(
                                "{} {}/{}: annotation {WEIGHT_ANNOTATION} {text:?} is not a \
                                 non-negative 32-bit integer; using the version's weight",
                                r.gvr_short,
                                r.namespace_or(routemap_ns),
                                r.name
                            ));
                            None
                        }
                    },
                },
                _ => None,
            };
            annotated.or(version.weight).unwrap_or(DEFAULT_WEIGHT)
        } else {
            0
        };

        let signature = if objects.iter().all(Option::is_some) {
            let specs: Vec<&str> = objects
                .iter()
                .map(|o| o.as_ref().map_or("null", |o| o.spec.as_str()))
                .collect();
            canonical_signature(&specs)
        } else {
            String::new()
        };

        out.available.push(available);
        out.weights.push(weight);
        out.signatures.push(signature);
    }
    if out.weights.iter().all(|w| *w == 0) {
        if let Some(first) = out.weights.first_mut() {
            *first = DEFAULT_WEIGHT;
        }
    }
    out
}

/// Like Go's `strconv.ParseUint(s, 10, 32)`, which the original uses: decimal digits only,
/// no sign and no whitespace (`" 20"` is rejected, not trimmed).
fn parse_weight(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// An `observedGeneration`: absent (or null) is `None`; anything but an integer is a problem,
/// not "absent" (which would skip the generation check).
fn generation_field(v: Option<&Value>, path: &str) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{path} is not an integer: {v}")),
    }
}

/// Whether one object is ready by the rules of its type (not being deleted, every condition
/// satisfied): what a version's readiness requires of each of its resources. `Err` names
/// what is malformed.
pub fn object_ready(rtype: &ResourceType, obj: &Observed) -> Result<bool, String> {
    if obj.deleting {
        return Ok(false);
    }
    conditions_satisfied(rtype, obj)
}

/// Whether `obj` satisfies every condition of its type: every entry of each configured
/// type is `True` and fresh (as the original, which fails at the first entry that is not),
/// and at least one entry exists. `Err` names what is malformed (and the object is then not
/// ready).
fn conditions_satisfied(rtype: &ResourceType, obj: &Observed) -> Result<bool, String> {
    if rtype.conditions.is_empty() {
        return Ok(true);
    }
    let status = match &obj.status {
        Err(problem) => return Err(problem.clone()),
        Ok(None) => return Ok(false),
        Ok(Some(status)) => status,
    };
    let fresh = |c: &Condition| {
        if !rtype.check_generation {
            return true;
        }
        match (
            obj.generation,
            c.observed_generation.or(status.observed_generation),
        ) {
            (Some(generation), Some(observed)) => observed >= generation,
            _ => true,
        }
    };
    Ok(rtype.conditions.iter().all(|wanted| {
        let mut of_type = status
            .conditions
            .iter()
            .filter(|c| c.kind.eq_ignore_ascii_case(wanted))
            .peekable();
        of_type.peek().is_some()
            && of_type.all(|c| c.status.eq_ignore_ascii_case("true") && fresh(c))
    }))
}

/// Stable signature of a version: lower-case hex of the first 8 bytes of the SHA-256 of
/// the canonical JSON (object keys sorted, no whitespace) of the list of the resources'
/// specs in order, a missing spec being `null`. Depends only on the specs, so it is the same
/// in every process and after restarts.
pub fn signature(specs: &[Option<&Value>]) -> String {
    let canonical: Vec<String> = specs
        .iter()
        .map(|spec| {
            let mut out = String::new();
            write_canonical(spec.unwrap_or(&Value::Null), &mut out);
            out
        })
        .collect();
    let refs: Vec<&str> = canonical.iter().map(String::as_str).collect();
    canonical_signature(&refs)
}

/// [`signature`] of specs already in canonical JSON.
fn canonical_signature(specs: &[&str]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"[");
    for (i, spec) in specs.iter().enumerate() {
        if i > 0 {
            hasher.update(b",");
        }
        hasher.update(spec.as_bytes());
    }
    hasher.update(b"]");
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(16);
    for byte in &digest[..8] {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Canonical JSON: sorted keys whatever the map implementation (serde_json may be built
/// with `preserve_order` by another crate in the workspace).
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(item) = map.get(key) {
                    write_canonical(item, out);
                }
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routemap;
    use serde_json::json;
    use std::collections::HashMap;

    /// A fake store: (gvrShort, namespace, name) -> object.
    type Store = HashMap<(String, String, String), Observed>;

    fn run(spec: &str, config: &Config, store: &Store) -> Weighing {
        let rm = routemap::parse(spec, "default", config).unwrap();
        let lookup = |g: &str, ns: &str, n: &str| {
            store
                .get(&(g.to_string(), ns.to_string(), n.to_string()))
                .cloned()
        };
        weigh(&rm, "default", config, &lookup)
    }

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    // Real status shapes from kserve-status.md and the deployment controller.
    const ISVC_READY: &str = r#"
address: {url: http://wisdom-0.default.svc.cluster.local}
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
    const ISVC_CREATED: &str = r#"
conditions:
- {type: IngressReady, status: Unknown, reason: Predictor ingress not created, lastTransitionTime: "2026-08-20T10:00:01Z"}
- {type: PredictorReady, status: Unknown, reason: RevisionMissing, lastTransitionTime: "2026-08-20T10:00:02Z"}
- {type: Ready, status: Unknown, reason: Predictor ingress not created, lastTransitionTime: "2026-08-20T10:00:02Z"}
- {type: Stopped, status: "False", severity: Info, lastTransitionTime: "2026-08-20T10:00:01Z"}
deploymentMode: Knative
observedGeneration: 1
"#;
    const ISVC_RAW_NOT_READY: &str = r#"
conditions:
- {type: IngressReady, status: "False", reason: Predictor ingress not created}
- {type: PredictorReady, status: "True"}
- {type: Ready, status: "False", reason: Predictor ingress not created}
- {type: Stopped, status: "False", severity: Info}
deploymentMode: Standard
observedGeneration: 1
"#;
    const DEPLOY_READY: &str = r#"
availableReplicas: 1
conditions:
- {type: Available, status: "True", reason: MinimumReplicasAvailable, message: Deployment has minimum availability.}
- {type: Progressing, status: "True", reason: NewReplicaSetAvailable, message: ReplicaSet "httpbin-0-5d9c7b6f4" has successfully progressed.}
observedGeneration: 1
readyReplicas: 1
replicas: 1
updatedReplicas: 1
"#;
    const DEPLOY_CREATED: &str = r#"
conditions:
- {type: Available, status: "False", reason: MinimumReplicasUnavailable}
- {type: Progressing, status: "True", reason: ReplicaSetUpdated}
observedGeneration: 1
unavailableReplicas: 1
"#;

    fn obj(generation: i64, status: &str) -> Observed {
        Observed {
            generation: Some(generation),
            ..Observed::default()
        }
        .with_spec(&json!({"replicas": 1}))
        .with_status(&yaml(status))
    }

    fn one(gvr: &str, name: &str, o: Option<Observed>) -> Store {
        let mut s = Store::new();
        if let Some(o) = o {
            s.insert((gvr.into(), "default".into(), name.into()), o);
        }
        s
    }

    fn spec1(gvr: &str) -> String {
        format!("versions: [{{resources: [{{gvrShort: {gvr}, name: a}}]}}]")
    }

    /// Availability of a one-resource version for a table of objects.
    #[test]
    fn readiness_rules() {
        let with_status = |gen: i64, status: Value| {
            Observed {
                generation: Some(gen),
                ..Observed::default()
            }
            .with_status(&status)
        };
        let cases: Vec<(&str, &str, Option<Observed>, bool)> = vec![
            ("missing isvc", "isvc", None, false),
            ("ready isvc", "isvc", Some(obj(1, ISVC_READY)), true),
            (
                "deleting isvc",
                "isvc",
                Some(Observed {
                    deleting: true,
                    ..obj(1, ISVC_READY)
                }),
                false,
            ),
            (
                "isvc just created: Ready Unknown",
                "isvc",
                Some(obj(1, ISVC_CREATED)),
                false,
            ),
            (
                "raw isvc: Ready False",
                "isvc",
                Some(obj(1, ISVC_RAW_NOT_READY)),
                false,
            ),
            (
                "no status",
                "isvc",
                Some(Observed {
                    generation: Some(1),
                    ..Observed::default()
                }),
                false,
            ),
            (
                "no conditions",
                "isvc",
                Some(with_status(1, json!({"observedGeneration": 1}))),
                false,
            ),
            (
                "condition missing",
                "isvc",
                Some(with_status(
                    1,
                    json!({"conditions": [{"type": "PredictorReady", "status": "True"}]}),
                )),
                false,
            ),
            (
                "status lower case true",
                "isvc",
                Some(with_status(
                    1,
                    json!({"conditions": [{"type": "Ready", "status": "true"}]}),
                )),
                true,
            ),
            (
                "type case-insensitive",
                "isvc",
                Some(with_status(
                    1,
                    json!({"conditions": [{"type": "READY", "status": "True"}]}),
                )),
                true,
            ),
            // The original fails at the first entry of a wanted type that is not True.
            (
                "duplicated type: False then True",
                "isvc",
                Some(with_status(
                    1,
                    json!({"conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "Ready", "status": "True"}]}),
                )),
                false,
            ),
            (
                "duplicated type: True then Unknown",
                "isvc",
                Some(with_status(
                    1,
                    json!({"conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "ready", "status": "Unknown"}]}),
                )),
                false,
            ),
            (
                "duplicated type: all True",
                "isvc",
                Some(with_status(
                    1,
                    json!({"conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "Ready", "status": "true"}]}),
                )),
                true,
            ),
            (
                "duplicated type: all True, one observed at an older generation",
                "deploy",
                Some(with_status(
                    2,
                    json!({"conditions": [
                    {"type": "Available", "status": "True", "observedGeneration": 2},
                    {"type": "Available", "status": "True", "observedGeneration": 1}]}),
                )),
                false,
            ),
            (
                "duplicated type: other types' entries do not count",
                "deploy",
                Some(with_status(
                    2,
                    json!({"observedGeneration": 2, "conditions": [
                    {"type": "Available", "status": "True"},
                    {"type": "Progressing", "status": "False"},
                    {"type": "Available", "status": "True"}]}),
                )),
                true,
            ),
            // KServe copies observedGeneration from a child: below generation yet Ready.
            (
                "isvc generation check off",
                "isvc",
                Some(obj(3, ISVC_READY)),
                true,
            ),
            ("deploy ready", "deploy", Some(obj(1, DEPLOY_READY)), true),
            (
                "deploy just created",
                "deploy",
                Some(obj(1, DEPLOY_CREATED)),
                false,
            ),
            (
                "deploy observedGeneration older",
                "deploy",
                Some(obj(2, DEPLOY_READY)),
                false,
            ),
            (
                "deploy observedGeneration newer",
                "deploy",
                Some(obj(0, DEPLOY_READY)),
                true,
            ),
            (
                "deploy without metadata.generation",
                "deploy",
                Some(Observed {
                    generation: None,
                    ..obj(0, DEPLOY_READY)
                }),
                true,
            ),
            (
                "deploy without any observedGeneration",
                "deploy",
                Some(with_status(
                    5,
                    json!({"conditions": [{"type": "Available", "status": "True"}]}),
                )),
                true,
            ),
            (
                "condition observedGeneration wins over an older status one",
                "deploy",
                Some(with_status(
                    2,
                    json!({"observedGeneration": 1, "conditions": [
                    {"type": "Available", "status": "True", "observedGeneration": 2}]}),
                )),
                true,
            ),
            (
                "condition observedGeneration wins over a newer status one",
                "deploy",
                Some(with_status(
                    2,
                    json!({"observedGeneration": 2, "conditions": [
                    {"type": "Available", "status": "True", "observedGeneration": 1}]}),
                )),
                false,
            ),
            (
                "type without conditions only needs to exist",
                "svc",
                Some(Observed::default()),
                true,
            ),
            ("unknown gvrShort", "nope", Some(Observed::default()), false),
        ];
        let config = Config::default();
        for (what, gvr, o, want) in cases {
            let w = run(&spec1(gvr), &config, &one(gvr, "a", o));
            assert_eq!(w.available, [want], "{what}");
            assert!(w.problems.is_empty(), "{what}: {:?}", w.problems);
        }
    }

    #[test]
    fn generation_check_can_be_turned_on_for_isvc() {
        let yaml_config = "resourceTypes:\n  isvc: {group: serving.kserve.io, version: v1beta1, \
                           resource: inferenceservices, conditions: [Ready], checkGeneration: true}";
        let config = Config::from_yaml(yaml_config).unwrap();
        let w = run(
            &spec1("isvc"),
            &config,
            &one("isvc", "a", Some(obj(2, ISVC_READY))),
        );
        assert_eq!(w.available, [false]);
    }

    #[test]
    fn malformed_conditions_are_problems() {
        let cases = [
            (
                json!({"conditions": {"type": "Ready"}}),
                "isvc default/a: status.conditions is not a list",
            ),
            (
                json!({"conditions": ["Ready"]}),
                "isvc default/a: status.conditions[0] is not an object",
            ),
            (
                json!({"conditions": [{"type": "Ready", "status": "True"}, {"type": 1, "status": "True"}]}),
                "isvc default/a: status.conditions[1].type is not a string",
            ),
            (
                json!({"conditions": [{"type": "Ready", "status": true}]}),
                "isvc default/a: status.conditions[0].status is not a string",
            ),
            (json!("ready"), "isvc default/a: status is not an object"),
            (
                json!({"observedGeneration": "2", "conditions": [{"type": "Ready", "status": "True"}]}),
                "isvc default/a: status.observedGeneration is not an integer: \"2\"",
            ),
            (
                json!({"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 1.5}]}),
                "isvc default/a: status.conditions[0].observedGeneration is not an integer: 1.5",
            ),
        ];
        for (status, want) in cases {
            let o = Observed::default().with_status(&status);
            let w = run(
                &spec1("isvc"),
                &Config::default(),
                &one("isvc", "a", Some(o)),
            );
            assert_eq!(w.available, [false], "{status}");
            assert_eq!(w.problems, [want]);
            assert_eq!(w.weights, [1], "all-zero rule still applies");
        }
    }

    const TWO: &str = "versions:\n\
        - resources: [{gvrShort: deploy, name: a}, {gvrShort: svc, name: a}]\n  weight: 30\n\
        - resources: [{gvrShort: deploy, name: b}, {gvrShort: svc, name: b}]\n";

    fn two_store(a_ready: bool, b_ready: bool, b_annotation: Option<&str>) -> Store {
        let mut s = Store::new();
        let deploy = |ready: bool| obj(1, if ready { DEPLOY_READY } else { DEPLOY_CREATED });
        let mut b = deploy(b_ready);
        if let Some(a) = b_annotation {
            b.annotations.insert(WEIGHT_ANNOTATION.into(), a.into());
        }
        s.insert(
            ("deploy".into(), "default".into(), "a".into()),
            deploy(a_ready),
        );
        s.insert(("deploy".into(), "default".into(), "b".into()), b);
        for n in ["a", "b"] {
            s.insert(
                ("svc".into(), "default".into(), n.into()),
                Observed::default(),
            );
        }
        s
    }

    #[test]
    fn weights() {
        let config = Config::default();
        // (what, primary ready, candidate ready, candidate's annotation, weights, available,
        // problems)
        type Case = (
            &'static str,
            bool,
            bool,
            Option<&'static str>,
            Vec<u32>,
            Vec<bool>,
            Vec<String>,
        );
        let bad = |value: &str| {
            vec![format!(
                "deploy default/b: annotation iter8.tools/weight {value:?} is not a non-negative \
                 32-bit integer; using the version's weight"
            )]
        };
        let cases: Vec<Case> = vec![
            (
                "both ready: declared, default 1",
                true,
                true,
                None,
                vec![30, 1],
                vec![true, true],
                vec![],
            ),
            (
                "annotation overrides",
                true,
                true,
                Some("70"),
                vec![30, 70],
                vec![true, true],
                vec![],
            ),
            (
                "annotation zero",
                true,
                true,
                Some("0"),
                vec![30, 0],
                vec![true, true],
                vec![],
            ),
            // Go's strconv.ParseUint takes no spaces: the original ignores such a value.
            (
                "annotation with spaces",
                true,
                true,
                Some(" 5 "),
                vec![30, 1],
                vec![true, true],
                bad(" 5 "),
            ),
            (
                "annotation with a leading space",
                true,
                true,
                Some(" 20"),
                vec![30, 1],
                vec![true, true],
                bad(" 20"),
            ),
            (
                "annotation with a trailing space",
                true,
                true,
                Some("20 "),
                vec![30, 1],
                vec![true, true],
                bad("20 "),
            ),
            (
                "candidate not ready",
                true,
                false,
                Some("70"),
                vec![30, 0],
                vec![true, false],
                vec![],
            ),
            (
                "primary not ready",
                false,
                true,
                None,
                vec![0, 1],
                vec![false, true],
                vec![],
            ),
            (
                "none ready: primary gets 1",
                false,
                false,
                None,
                vec![1, 0],
                vec![false, false],
                vec![],
            ),
            (
                "all zero by annotation",
                false,
                true,
                Some("0"),
                vec![1, 0],
                vec![false, true],
                vec![],
            ),
        ];
        for (what, a, b, ann, weights, available, problems) in cases {
            let w = run(TWO, &config, &two_store(a, b, ann));
            assert_eq!(w.weights, weights, "{what}");
            assert_eq!(w.available, available, "{what}");
            assert_eq!(w.problems, problems, "{what}");
        }
    }

    #[test]
    fn annotation_on_second_resource_is_ignored() {
        let mut store = two_store(true, true, None);
        if let Some(svc) = store.get_mut(&("svc".into(), "default".into(), "b".into())) {
            svc.annotations.insert(WEIGHT_ANNOTATION.into(), "9".into());
        }
        let w = run(TWO, &Config::default(), &store);
        assert_eq!(w.weights, [30, 1]);
    }

    #[test]
    fn bad_weight_annotation_falls_back() {
        for bad in [
            "-1",
            "+5",
            "abc",
            "4294967296",
            "",
            " ",
            "\t7",
            "7\n",
            "1_000",
        ] {
            let w = run(TWO, &Config::default(), &two_store(true, true, Some(bad)));
            assert_eq!(w.weights, [30, 1], "{bad:?}");
            assert_eq!(
                w.problems,
                [format!(
                    "deploy default/b: annotation iter8.tools/weight {bad:?} is not a non-negative \
                     32-bit integer; using the version's weight"
                )]
            );
        }
    }

    #[test]
    fn signatures() {
        let w = run(TWO, &Config::default(), &two_store(true, false, None));
        // deploy spec {"replicas":1} then a svc without spec.
        let expected = signature(&[Some(&json!({"replicas": 1})), None]);
        assert_eq!(w.signatures, [expected.clone(), expected]);
        assert_eq!(w.signatures[0].len(), 16);

        let mut store = two_store(true, true, None);
        store.remove(&("svc".into(), "default".into(), "b".into()));
        let w = run(TWO, &Config::default(), &store);
        assert_eq!(w.signatures[1], "", "missing resource");
        assert_ne!(w.signatures[0], "");
    }

    #[test]
    fn signature_is_pinned_and_ignores_key_order() {
        let a: Value = serde_json::from_str(
            r#"{"predictor":{"minReplicas":1,"model":{"modelFormat":{"name":"sklearn"},"runtime":"kserve-mlserver","storageUri":"gs://seldon-models/sklearn/mms/lr_model"}}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"predictor":{"model":{"storageUri":"gs://seldon-models/sklearn/mms/lr_model","runtime":"kserve-mlserver","modelFormat":{"name":"sklearn"}},"minReplicas":1}}"#,
        )
        .unwrap();
        // Pinned: changing the algorithm re-buckets A/B/n users, so it must be deliberate.
        let pinned = signature(&[Some(&a)]);
        assert_eq!(pinned, PINNED_SIGNATURE);
        assert_eq!(signature(&[Some(&b)]), pinned);
        let mut canonical = String::new();
        write_canonical(&b, &mut canonical);
        assert_eq!(
            canonical,
            r#"{"predictor":{"minReplicas":1,"model":{"modelFormat":{"name":"sklearn"},"runtime":"kserve-mlserver","storageUri":"gs://seldon-models/sklearn/mms/lr_model"}}}"#
        );
        assert_ne!(signature(&[Some(&a), None]), pinned);
        assert_ne!(signature(&[None, Some(&a)]), signature(&[Some(&a), None]));
    }

    const PINNED_SIGNATURE: &str = "04fa2ec37f17e94e";
}
