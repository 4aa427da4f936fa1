use std::collections::HashMap;

use iter8_core::availability::Observed;
use iter8_core::config::Config;
use iter8_core::render::RoutemapMeta;
use iter8_core::routemap;
use serde_json::json;

use super::*;
use crate::state::RoutingObject;

const NS: &str = "default";

fn key() -> RoutemapKey {
    RoutemapKey {
        namespace: NS.into(),
        name: "wisdom-routemap".into(),
    }
}

fn meta() -> RoutemapMeta {
    RoutemapMeta {
        name: "wisdom-routemap".into(),
        namespace: NS.into(),
        uid: "rm-uid".into(),
        ..Default::default()
    }
}

fn vs_gvr() -> Gvr {
    Gvr {
        group: "networking.istio.io".into(),
        version: "v1beta1".into(),
        resource: "virtualservices".into(),
    }
}

fn vs_key(name: &str) -> ObjectKey {
    ObjectKey {
        gvr: vs_gvr(),
        namespace: NS.into(),
        name: name.into(),
    }
}

/// A VirtualService template named `name` writing VirtualService `object`; `extra` is
/// appended to the template (to make it fail, or render nothing).
fn template(name: &str, short: &str, body: &str) -> String {
    let body = body.replace('\n', "\n      ");
    format!("  {name}:\n    gvrShort: {short}\n    template: |\n      {body}\n")
}

fn vs_template(name: &str, object: &str) -> String {
    template(
        name,
        "vs",
        &format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: {object}\nspec:\n  http:\n  - route:\n    - destination: {{host: wisdom-0}}\n      weight: {{{{ index .Weights 0 }}}}"
        ),
    )
}

fn spec(templates: &[String]) -> String {
    format!(
        "versions:\n- resources: [{{gvrShort: isvc, name: wisdom-0}}]\n- resources: [{{gvrShort: isvc, name: wisdom-1}}]\nroutingTemplates:\n{}",
        templates.concat()
    )
}

fn ready() -> Observed {
    Observed::default().with_status(&json!({"conditions": [{"type": "Ready", "status": "True"}]}))
}

fn owned(name: &str) -> (ObjectKey, RoutingObject) {
    (
        vs_key(name),
        RoutingObject {
            text: json!({"kind": "VirtualService", "metadata": {"name": name}}).to_string(),
            kind: "VirtualService".into(),
            applied_hash: Some("h".into()),
            uid: format!("{name}-uid"),
            owner: Some(("wisdom-routemap".into(), "rm-uid".into())),
            ours: true,
        },
    )
}

struct Case {
    config: Config,
    kinds: HashMap<Gvr, String>,
    objects: Snapshot,
    owned: Vec<(ObjectKey, RoutingObject)>,
}

impl Case {
    fn new() -> Case {
        let mut objects = Snapshot::new();
        objects.insert(("isvc".into(), NS.into(), "wisdom-0".into()), ready());
        Case {
            config: Config::default(),
            kinds: HashMap::from([(vs_gvr(), "VirtualService".to_string())]),
            objects,
            owned: Vec::new(),
        }
    }

    fn plan(&self, templates: &[String]) -> Plan {
        let rm = routemap::parse(&spec(templates), NS, &self.config).expect("valid routemap");
        plan(&Inputs {
            key: &key(),
            meta: &meta(),
            routemap: &rm,
            config: &self.config,
            objects: &self.objects,
            owned: &self.owned,
            kinds: &self.kinds,
            analysis: None,
            status: None,
        })
    }
}

fn warnings(plan: &Plan) -> Vec<(String, &'static str, String)> {
    plan.reports
        .iter()
        .filter_map(|r| {
            let n = r.note.as_ref()?;
            (n.severity == Severity::Warning).then(|| (r.subject.clone(), n.reason, n.text.clone()))
        })
        .collect()
}

fn pruned(plan: &Plan) -> Vec<String> {
    plan.prune.iter().map(|(k, _)| k.name.clone()).collect()
}

#[test]
fn a_rendered_object_is_planned_in_the_routemaps_namespace_with_its_weights() {
    let plan = Case::new().plan(&[vs_template("vs", "wisdom")]);
    assert_eq!(plan.weights, [1, 0]);
    assert_eq!(plan.apply.len(), 1);
    let d = &plan.apply[0];
    assert_eq!(
        (d.template.as_str(), d.kind.as_str()),
        ("vs", "VirtualService")
    );
    assert_eq!(d.target, vs_key("wisdom"));
    assert_eq!(d.object["metadata"]["namespace"], NS);
    assert_eq!(d.object["spec"]["http"][0]["route"][0]["weight"], 1);
    assert!(warnings(&plan).is_empty(), "{:?}", warnings(&plan));
    assert!(plan.prune.is_empty());
    assert!(!plan.retry);
}

#[test]
fn an_object_no_template_renders_any_more_is_pruned() {
    let mut case = Case::new();
    case.owned = vec![owned("wisdom"), owned("wisdom-old")];
    // Template renamed: it now writes `wisdom`; `wisdom-old` was written by its old name.
    let plan = case.plan(&[vs_template("renamed", "wisdom")]);
    assert_eq!(pruned(&plan), ["wisdom-old"]);
    // Template removed (strategy none renders no template at all).
    let plan = case.plan(&[]);
    assert_eq!(pruned(&plan), ["wisdom", "wisdom-old"]);
}

#[test]
fn a_template_that_renders_nothing_prunes_its_object() {
    let mut case = Case::new();
    case.owned = vec![owned("wisdom")];
    let plan = case.plan(&[template("vs", "vs", "{{- /* nothing */ -}}")]);
    assert!(plan.apply.is_empty());
    assert_eq!(pruned(&plan), ["wisdom"]);
}

#[test]
fn nothing_is_pruned_while_a_template_fails() {
    let mut case = Case::new();
    case.owned = vec![owned("wisdom"), owned("other")];
    let failing = template("broken", "vs", "{{ index .Weights 7 }}");
    let plan = case.plan(&[vs_template("vs", "wisdom"), failing]);
    assert_eq!(plan.apply.len(), 1, "the good template is still applied");
    assert!(plan.prune.is_empty(), "{:?}", pruned(&plan));
    let w = warnings(&plan);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (w[0].0.as_str(), w[0].1),
        ("template broken", "TemplateError")
    );
}

#[test]
fn a_template_may_write_only_routing_resources() {
    let case = Case::new();
    let hijack = template(
        "steal",
        "cm",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other-routemap\ndata: {}",
    );
    let plan = case.plan(&[hijack]);
    assert!(plan.apply.is_empty());
    let w = warnings(&plan);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].1, "RefusedObject");
    assert_eq!(
        w[0].2,
        "routing template steal: type \"cm\" (configmaps) is not a routing resource; routing \
         templates may write only virtualservices, httproutes, serviceentries"
    );
}

#[test]
fn a_refusal_says_its_cause_once() {
    let case = Case::new();
    let elsewhere = template(
        "vs",
        "vs",
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: bad\n  namespace: x\nspec: {}",
    );
    let plan = case.plan(&[elsewhere]);
    let w = warnings(&plan);
    assert_eq!(
        w[0].2,
        "routing template vs: VirtualService bad is in namespace \"x\", not the routemap's namespace \"default\""
    );
}

#[test]
fn a_type_that_is_not_served_yet_is_retried_and_prunes_nothing() {
    let mut case = Case::new();
    case.kinds.clear();
    case.owned = vec![owned("old")];
    let plan = case.plan(&[vs_template("vs", "wisdom")]);
    assert!(plan.retry);
    assert!(plan.apply.is_empty());
    assert!(plan.prune.is_empty());
    assert_eq!(warnings(&plan)[0].1, "ApplyFailed");
}

#[test]
fn two_templates_rendering_one_object_refuse_the_second() {
    let case = Case::new();
    let plan = case.plan(&[vs_template("a", "wisdom"), vs_template("b", "wisdom")]);
    assert_eq!(plan.apply.len(), 1);
    assert_eq!(plan.apply[0].template, "a");
    let w = warnings(&plan);
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].0, "template b");
    assert!(
        w[0].2.contains("rendered by template a already"),
        "{}",
        w[0].2
    );
}

#[test]
fn fine_subjects_are_reported_so_a_returning_problem_is_reported_again() {
    let plan = Case::new().plan(&[vs_template("vs", "wisdom")]);
    let fine: Vec<&str> = plan
        .reports
        .iter()
        .filter(|r| r.note.is_none())
        .map(|r| r.subject.as_str())
        .collect();
    assert_eq!(fine, ["routemap", "resources"]);
}
