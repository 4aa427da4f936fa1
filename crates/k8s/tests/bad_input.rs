//! Bad input against a real API server: broken routemaps, templates and watched objects.
//! Each test checks that the cause is reported as a Warning Event on the routemap and that
//! every other routemap of the same controller is still served. Each test has its own
//! namespace and controller; the control plane is shared.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use iter8_core::render::MAX_RENDERED_BYTES;
use iter8_core::routemap::MAX_TEMPLATE_BYTES;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use testenv::fixtures;

/// The routemap every test breaks.
const BAD: &str = "bad-routemap";
/// The routemap that must keep working next to it.
const GOOD: &str = "good-routemap";

/// A namespace with a controller serving the tutorial routemap [`GOOD`] (two versions,
/// candidate `wisdom-1` not ready yet, so its VirtualService `wisdom` has the primary route).
struct Env {
    client: Client,
    ns: String,
    c: Running,
}

impl Env {
    async fn new(prefix: &str) -> Env {
        Env::with_config(prefix, config()).await
    }

    async fn with_config(prefix: &str, config: iter8_core::config::Config) -> Env {
        let cp = testenv::shared().unwrap();
        let client = cp.client().await.unwrap();
        let ns = cp.namespace(prefix).await.unwrap();
        let c = start_controller(client.clone(), &ns, config).await;
        apply_isvc(&client, &ns, "wisdom-0", "gs://m").await;
        set_isvc_status(&client, &ns, "wisdom-0", true, 1).await;
        apply_isvc(&client, &ns, "wisdom-1", "gs://m").await;
        set_isvc_status(&client, &ns, "wisdom-1", false, 1).await;
        apply_routemap(
            &client,
            &ns,
            GOOD,
            json!({"strSpec": tutorial_str_spec(&ns, 2)}),
        )
        .await;
        wait_vs(
            &client,
            &ns,
            "wisdom",
            "the good routemap's VirtualService",
            |vs| route_names(vs) == ["wisdom-0"],
        )
        .await;
        Env { client, ns, c }
    }

    /// Applies routemap [`BAD`] with `data`.
    async fn apply_bad(&self, data: Value) {
        apply_routemap(&self.client, &self.ns, BAD, data).await;
    }

    /// Applies routemap [`BAD`] with `strSpec` `spec`.
    async fn apply_bad_spec(&self, spec: &str) {
        self.apply_bad(json!({ "strSpec": spec })).await;
    }

    /// Waits for a Warning Event on `routemap` whose "Reason: note" contains every needle.
    async fn warning(&self, routemap: &str, needles: &[&str]) -> String {
        wait_warning(&self.client, &self.ns, routemap, needles).await
    }

    /// A change after the bad routemap arrived is still applied to the good one: the
    /// candidate becomes ready and gets its route. The good routemap has no Warning.
    async fn good_still_served(&self) {
        set_isvc_status(&self.client, &self.ns, "wisdom-1", true, 1).await;
        let vs = wait_vs(
            &self.client,
            &self.ns,
            "wisdom",
            "the good routemap's candidate route",
            |vs| route_names(vs) == ["wisdom-1", "wisdom-0"],
        )
        .await;
        assert_eq!(vs.data["spec"], expected_vs_spec(&self.ns, 2));
        assert_eq!(
            warnings(&self.client, &self.ns, GOOD).await,
            Vec::<String>::new(),
            "the good routemap got warnings"
        );
    }

    /// After everything seen so far is reconciled: the VirtualService `name` does not exist.
    async fn assert_no_vs(&self, name: &str) {
        self.c.settled().await;
        assert!(
            get_vs(&self.client, &self.ns, name).await.is_none(),
            "VirtualService {name} was written"
        );
    }
}

/// A VirtualService template named `name` with route `v1` when version 1 has weight, then
/// route `v0`.
fn vs_template(name: &str, ns: &str) -> String {
    r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: NAME
  namespace: NS
spec:
  hosts: [NAME]
  http:
  {{- if gt (len .Weights) 1 }}{{- if gt (index .Weights 1) 0 }}
  - name: v1
    route: [{destination: {host: v1}}]
  {{- end }}{{- end }}
  - name: v0
    route: [{destination: {host: v0}}]
"#
    .replace("NAME", name)
    .replace("NS", ns)
}

/// A routemap strSpec with `versions` and templates `(name, gvrShort, text)`.
fn spec(versions: Value, templates: &[(&str, &str, String)]) -> String {
    let templates: serde_json::Map<String, Value> = templates
        .iter()
        .map(|(name, short, text)| {
            (
                name.to_string(),
                json!({"gvrShort": short, "template": text}),
            )
        })
        .collect();
    serde_yaml::to_string(&json!({"versions": versions, "routingTemplates": templates})).unwrap()
}

/// One version made of the InferenceService `name`.
fn isvc_version(name: &str) -> Value {
    json!({"resources": [{"gvrShort": "isvc", "name": name}]})
}

/// A sibling template that works, rendering VirtualService `bad-ok`: one failing template
/// does not stop the others of the same routemap.
fn ok_sibling(ns: &str) -> (&'static str, &'static str, String) {
    ("z-ok", "vs", vs_template("bad-ok", ns))
}

/// A routemap with the primary only and `templates` plus [`ok_sibling`]; waits for the
/// sibling's VirtualService after applying it.
async fn apply_bad_templates(env: &Env, templates: &[(&str, &str, String)]) {
    let mut all = templates.to_vec();
    all.push(ok_sibling(&env.ns));
    env.apply_bad_spec(&spec(json!([isvc_version("wisdom-0")]), &all))
        .await;
    wait_vs(
        &env.client,
        &env.ns,
        "bad-ok",
        "the working sibling template's VirtualService",
        |vs| route_names(vs) == ["v0"],
    )
    .await;
}

// 1
#[tokio::test]
async fn a_routemap_without_str_spec_is_reported() {
    let env = Env::new("bad-nospec").await;
    env.apply_bad(json!({"spec": "versions: []"})).await;
    env.warning(BAD, &["InvalidRoutemap", "no strSpec"]).await;
    env.good_still_served().await;
}

// 2
#[tokio::test]
async fn a_str_spec_that_is_not_yaml_is_reported() {
    let env = Env::new("bad-yaml").await;
    env.apply_bad_spec("versions: [\n  {resources: [{gvrShort: isvc, name: wisdom-0}\n")
        .await;
    env.warning(BAD, &["InvalidRoutemap", "invalid routemap strSpec"])
        .await;
    env.good_still_served().await;

    // YAML of the wrong shape is reported the same way.
    env.apply_bad_spec("just a sentence").await;
    env.warning(
        BAD,
        &[
            "InvalidRoutemap",
            "invalid routemap strSpec",
            "invalid type",
        ],
    )
    .await;
}

// 3
#[tokio::test]
async fn a_routemap_without_versions_is_reported_and_renders_nothing() {
    let env = Env::new("bad-noversions").await;
    env.apply_bad_spec(&spec(
        json!([]),
        &[("t", "vs", vs_template("bad", &env.ns))],
    ))
    .await;
    env.warning(BAD, &["InvalidRoutemap", "at least one version"])
        .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 4a
#[tokio::test]
async fn an_unknown_resource_type_in_a_version_makes_that_version_unavailable() {
    let env = Env::new("bad-gvr-version").await;
    let versions = json!([
        isvc_version("wisdom-0"),
        {"resources": [{"gvrShort": "nosuch", "name": "wisdom-1"}]},
    ]);
    env.apply_bad_spec(&spec(versions, &[("t", "vs", vs_template("bad", &env.ns))]))
        .await;
    env.warning(
        BAD,
        &[
            "RoutemapWarning",
            "version 1 resource wisdom-1",
            "unknown gvrShort \"nosuch\"",
        ],
    )
    .await;
    // Still served, without the unavailable version.
    wait_vs(
        &env.client,
        &env.ns,
        "bad",
        "the primary-only route",
        |vs| route_names(vs) == ["v0"],
    )
    .await;
    env.good_still_served().await;
    // wisdom-1 (as an isvc) is ready now; the unknown type still is not.
    env.c.settled().await;
    let vs = get_vs(&env.client, &env.ns, "bad").await.unwrap();
    assert_eq!(route_names(&vs), ["v0"]);
}

// 4b
#[tokio::test]
async fn an_unknown_resource_type_of_a_template_is_reported_and_not_applied() {
    let env = Env::new("bad-gvr-template").await;
    apply_bad_templates(&env, &[("t", "nosuch", vs_template("bad", &env.ns))]).await;
    env.warning(
        BAD,
        &[
            "RoutemapWarning",
            "routing template t",
            "unknown gvrShort \"nosuch\"",
        ],
    )
    .await;
    env.warning(
        BAD,
        &[
            "RefusedObject",
            "\"nosuch\" is not a configured resource type",
        ],
    )
    .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 5
#[tokio::test]
async fn a_template_that_does_not_parse_is_reported() {
    let env = Env::new("bad-parse").await;
    apply_bad_templates(
        &env,
        &[("t", "vs", "kind: {{ if .Weights }}unclosed".into())],
    )
    .await;
    env.warning(
        BAD,
        &["TemplateError", "routing template t", "does not parse"],
    )
    .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 6
#[tokio::test]
async fn a_template_that_fails_to_execute_is_reported() {
    let env = Env::new("bad-exec").await;
    let head =
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: bad\n";
    apply_bad_templates(
        &env,
        &[
            (
                "index",
                "vs",
                format!("{head}  labels: {{w: \"{{{{ index .Weights 5 }}}}\"}}\n"),
            ),
            (
                "func",
                "vs",
                format!("{head}  labels: {{w: \"{{{{ nosuchfunc 1 }}}}\"}}\n"),
            ),
        ],
    )
    .await;
    env.warning(
        BAD,
        &[
            "TemplateError",
            "routing template index",
            "failed to execute",
            "index out of range",
        ],
    )
    .await;
    env.warning(
        BAD,
        &["TemplateError", "routing template func", "nosuchfunc"],
    )
    .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 7
#[tokio::test]
async fn a_template_that_renders_invalid_yaml_is_reported() {
    let env = Env::new("bad-render-yaml").await;
    apply_bad_templates(
        &env,
        &[
            (
                "broken",
                "vs",
                "kind: VirtualService\nmetadata: [unclosed\n  name: bad\n".into(),
            ),
            ("list", "vs", "- kind: VirtualService\n- name: bad\n".into()),
        ],
    )
    .await;
    env.warning(
        BAD,
        &[
            "TemplateError",
            "routing template broken",
            "rendered invalid yaml",
        ],
    )
    .await;
    env.warning(
        BAD,
        &[
            "TemplateError",
            "routing template list",
            "not a yaml mapping",
        ],
    )
    .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 8
#[tokio::test]
async fn an_object_in_another_namespace_is_refused() {
    let env = Env::new("bad-foreign-ns").await;
    let other = testenv::shared()
        .unwrap()
        .namespace("bad-foreign-target")
        .await
        .unwrap();
    apply_bad_templates(&env, &[("t", "vs", vs_template("bad", &other))]).await;
    env.warning(
        BAD,
        &[
            "RefusedObject",
            "VirtualService bad is in namespace",
            &other,
        ],
    )
    .await;
    env.assert_no_vs("bad").await;
    assert!(
        get_vs(&env.client, &other, "bad").await.is_none(),
        "a routemap wrote into another namespace"
    );
    env.good_still_served().await;
}

// 9
#[tokio::test]
async fn an_object_of_another_kind_is_refused() {
    let env = Env::new("bad-kind").await;
    let secret =
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: stolen\nstringData: {token: x}\n";
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stolen-cm\ndata: {a: b}\n";
    apply_bad_templates(
        &env,
        &[
            ("secret-as-vs", "vs", secret.into()),
            ("cm-as-vs", "vs", cm.into()),
            // A type that is not a routing type: refused whatever it renders.
            ("secret-as-cm", "cm", secret.replace("stolen", "stolen-2")),
            (
                "gateway-as-vs",
                "vs",
                vs_template("bad", &env.ns).replace("kind: VirtualService", "kind: Gateway"),
            ),
        ],
    )
    .await;
    env.warning(
        BAD,
        &[
            "RefusedObject",
            "apiVersion \"v1\" is not the template type's \"networking.istio.io/v1beta1\"",
        ],
    )
    .await;
    env.warning(
        BAD,
        &[
            "RefusedObject",
            "routing template secret-as-cm: type \"cm\" (configmaps) is not a routing resource",
        ],
    )
    .await;
    env.warning(
        BAD,
        &[
            "RefusedObject",
            "kind \"Gateway\" is not the template type's \"VirtualService\"",
        ],
    )
    .await;
    // Each refusal is reported for its own template.
    let refused = warnings(&env.client, &env.ns, BAD)
        .await
        .into_iter()
        .filter(|w| w.starts_with("RefusedObject"))
        .count();
    assert_eq!(
        refused,
        4,
        "{:#?}",
        warnings(&env.client, &env.ns, BAD).await
    );
    env.c.settled().await;
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns);
    for name in ["stolen", "stolen-2"] {
        assert!(
            secrets.get_opt(name).await.unwrap().is_none(),
            "Secret {name} was written"
        );
    }
    assert!(
        cms.get_opt("stolen-cm").await.unwrap().is_none(),
        "ConfigMap was written"
    );
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 10a
#[tokio::test]
async fn the_api_server_refuses_a_routemap_over_one_mebibyte() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("bad-huge-cm").await.unwrap();
    let template = "x".repeat(2 * 1024 * 1024);
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": BAD, "namespace": ns, "labels": {
            "iter8.tools/kind": "routemap", "iter8.tools/version": "v1.1"}},
        "data": {"strSpec": spec(json!([isvc_version("wisdom-0")]), &[("t", "vs", template)])},
    });
    let err = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .patch(BAD, &PatchParams::apply("helm").force(), &Patch::Apply(&cm))
        .await
        .expect_err("the API server accepted a 2 MiB ConfigMap");
    let kube::Error::Api(status) = &err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("Too long") && status.message.contains("1048576"),
        "unclear refusal: {}",
        status.message
    );
}

// 10b
#[tokio::test]
async fn a_template_over_the_size_limit_is_reported() {
    let env = Env::new("bad-big-template").await;
    let mut template = vs_template("bad", &env.ns);
    template.push_str(&format!("# {}\n", "x".repeat(600 * 1024)));
    env.apply_bad_spec(&spec(
        json!([isvc_version("wisdom-0")]),
        &[("big", "vs", template)],
    ))
    .await;
    env.warning(
        BAD,
        &[
            "InvalidRoutemap",
            "routing template big",
            &format!("more than the limit of {MAX_TEMPLATE_BYTES} bytes"),
        ],
    )
    .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 10c
#[tokio::test]
async fn a_template_whose_output_is_over_the_render_limit_is_reported() {
    let env = Env::new("bad-big-output").await;
    // 8 versions, three nested ranges: 512 iterations of 4 KiB = 2 MiB of output from a
    // template of a few KiB.
    let versions = Value::Array((0..8).map(|_| isvc_version("wisdom-0")).collect());
    let line = format!("# {}\n", "y".repeat(4094));
    let template = format!(
        "{}{{{{- range .Weights }}}}{{{{- range $.Weights }}}}{{{{- range $.Weights }}}}\n{line}{{{{- end }}}}{{{{- end }}}}{{{{- end }}}}\n",
        vs_template("bad", &env.ns)
    );
    let mut all = vec![("huge", "vs", template)];
    all.push(ok_sibling(&env.ns));
    env.apply_bad_spec(&spec(versions, &all)).await;
    env.warning(
        BAD,
        &[
            "TemplateError",
            "routing template huge",
            &format!("rendered more than {MAX_RENDERED_BYTES} bytes"),
        ],
    )
    .await;
    wait_vs(
        &env.client,
        &env.ns,
        "bad-ok",
        "the sibling's VirtualService",
        |_| true,
    )
    .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;
}

// 11
#[tokio::test]
async fn malformed_status_conditions_are_reported_and_make_the_version_unavailable() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();

    // KServe's CRD schema already refuses such statuses, so a schemaless type stands in.
    {
        let ns = cp.namespace("bad-isvc-status").await.unwrap();
        apply_isvc(&client, &ns, "wisdom-0", "gs://m").await;
        let isvcs = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &isvc_ar());
        for status in [
            json!({"conditions": "oops"}),
            json!({"conditions": [{"status": "True"}]}),
        ] {
            let res = isvcs
                .patch_status(
                    "wisdom-0",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"status": status})),
                )
                .await;
            assert!(
                res.is_err(),
                "the InferenceService schema accepted status {status}"
            );
        }
    }

    let group = format!("badinput{}.example.com", std::process::id());
    let ar = fixtures::install_widget_crd(cp, &group).await.unwrap();
    let mut config = config();
    config.resource_types.insert(
        "widget".into(),
        iter8_core::config::ResourceType::new(&group, "v1", "widgets").with_conditions(&["Ready"]),
    );
    let env = Env::with_config("bad-conditions", config).await;
    let widgets = Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.ns, &ar);
    widgets
        .patch(
            "w1",
            &PatchParams::apply("t").force(),
            &Patch::Apply(&fixtures::widget_object(&group, "w1")),
        )
        .await
        .unwrap();
    set_status(
        &env.client,
        &env.ns,
        "w1",
        &ar,
        json!({"conditions": "oops"}),
    )
    .await;

    let versions = json!([
        isvc_version("wisdom-0"),
        {"resources": [{"gvrShort": "widget", "name": "w1"}]},
    ]);
    env.apply_bad_spec(&spec(versions, &[("t", "vs", vs_template("bad", &env.ns))]))
        .await;
    let w1 = format!("widget {}/w1", env.ns);
    env.warning(
        BAD,
        &["ResourceProblem", &w1, "status.conditions is not a list"],
    )
    .await;
    wait_vs(
        &env.client,
        &env.ns,
        "bad",
        "the primary-only route",
        |vs| route_names(vs) == ["v0"],
    )
    .await;

    // Entries without a type.
    set_status(
        &env.client,
        &env.ns,
        "w1",
        &ar,
        json!({"conditions": [{"status": "True"}, {"type": "Ready", "status": "True"}]}),
    )
    .await;
    env.warning(
        BAD,
        &[
            "ResourceProblem",
            &w1,
            "status.conditions[0].type is not a string",
        ],
    )
    .await;
    env.c.settled().await;
    let vs = get_vs(&env.client, &env.ns, "bad").await.unwrap();
    assert_eq!(
        route_names(&vs),
        ["v0"],
        "a malformed status counted as ready"
    );

    env.good_still_served().await;

    // Once well-formed, the version is available.
    set_status(
        &env.client,
        &env.ns,
        "w1",
        &ar,
        json!({"conditions": [{"type": "Ready", "status": "True"}]}),
    )
    .await;
    wait_vs(&env.client, &env.ns, "bad", "the candidate route", |vs| {
        route_names(vs) == ["v1", "v0"]
    })
    .await;
}

/// Per Event object about `routemap`: reason and note -> series count (1 when no series).
async fn event_counts(env: &Env, routemap: &str) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    for e in events(&env.client, &env.ns, routemap).await {
        let name = format!(
            "{} {}: {}",
            e.metadata.name.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            e.note.unwrap_or_default()
        );
        let count = e.series.map_or(1, |s| s.count);
        out.insert(name, count);
    }
    out
}

// 12
#[tokio::test]
async fn warnings_are_not_repeated_at_resync() {
    let env = Env::new("bad-repeat").await;
    // Invalid routemap.
    env.apply_bad_spec("versions: []").await;
    // A served routemap with a routemap warning, a template error, a refused object and a
    // resource problem.
    // wisdom-2 is ready but its weight annotation is not a number: a resource problem.
    apply_isvc(&env.client, &env.ns, "wisdom-2", "gs://m").await;
    set_isvc_status(&env.client, &env.ns, "wisdom-2", true, 1).await;
    Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.ns, &isvc_ar())
        .patch(
            "wisdom-2",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"iter8.tools/weight": "-3"}}})),
        )
        .await
        .unwrap();
    let versions = json!([
        isvc_version("wisdom-0"),
        {"resources": [{"gvrShort": "nosuch", "name": "x"}]},
        isvc_version("wisdom-2"),
    ]);
    apply_routemap(
        &env.client,
        &env.ns,
        "bad-2",
        json!({"strSpec": spec(versions, &[
            ("exec", "vs", "{{ index .Weights 9 }}".into()),
            ("refused", "vs", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n".into()),
        ])}),
    )
    .await;
    env.warning(BAD, &["InvalidRoutemap"]).await;
    env.warning("bad-2", &["RoutemapWarning", "unknown gvrShort"])
        .await;
    env.warning("bad-2", &["TemplateError", "routing template exec"])
        .await;
    env.warning("bad-2", &["RefusedObject", "apiVersion"]).await;
    env.warning("bad-2", &["ResourceProblem", "iter8.tools/weight"])
        .await;
    env.c.settled().await;

    let before = (
        event_counts(&env, BAD).await,
        event_counts(&env, "bad-2").await,
    );
    for _ in 0..5 {
        env.c.controller.enqueue_all();
        env.c.settled().await;
    }
    // A watched object changes in a way that changes nothing for the routemaps (the store
    // keeps no such annotation, so nothing is even reconciled).
    let isvcs = iter8_k8s::sync::WatchId::Objects(iter8_k8s::keys::Gvr::of(
        &iter8_core::config::Config::default().resource_types["isvc"],
    ));
    let watched = || {
        env.c
            .controller
            .metrics()
            .watch_events
            .get_or_create(&vec![("watch", isvcs.to_string())])
            .get()
    };
    let delivered = watched();
    Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.ns, &isvc_ar())
        .patch(
            "wisdom-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"unrelated": "1"}}})),
        )
        .await
        .unwrap();
    testenv::wait_for("the controller to see the annotation", WAIT, || async {
        (watched() > delivered).then_some(())
    })
    .await
    .unwrap();
    for _ in 0..3 {
        env.c.controller.enqueue_all();
        env.c.settled().await;
    }
    let after = (
        event_counts(&env, BAD).await,
        event_counts(&env, "bad-2").await,
    );
    assert_eq!(before, after, "Events were repeated");
    env.good_still_served().await;
}

// 12b
#[tokio::test]
async fn a_problem_that_comes_back_after_a_fix_is_reported_again() {
    let env = Env::new("bad-again").await;
    let broken = "versions: []";
    env.apply_bad_spec(broken).await;
    env.warning(BAD, &["InvalidRoutemap"]).await;
    env.c.settled().await;
    let reported = |counts: &BTreeMap<String, i32>| -> i32 {
        counts
            .iter()
            .filter(|(k, _)| k.contains("InvalidRoutemap"))
            .map(|(_, v)| v)
            .sum()
    };
    let first = reported(&event_counts(&env, BAD).await);
    assert_eq!(first, 1);

    // Fixed, then broken again the same way: reported again (a new Event or a series).
    env.apply_bad_spec(&spec(json!([isvc_version("wisdom-0")]), &[]))
        .await;
    env.c.settled().await;
    env.apply_bad_spec(broken).await;
    testenv::wait_for("the returning problem to be reported", WAIT, || async {
        (reported(&event_counts(&env, BAD).await) > first).then_some(())
    })
    .await
    .unwrap();
}

// 13
#[tokio::test]
async fn a_routemap_with_an_unaccepted_version_label_is_ignored() {
    let env = Env::new("bad-version-label").await;
    let cm = |version: &str| {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": BAD, "namespace": env.ns, "labels": {
                "iter8.tools/kind": "routemap", "iter8.tools/version": version}},
            "data": {"strSpec": spec(json!([isvc_version("wisdom-0")]), &[("t", "vs", vs_template("bad", &env.ns))])},
        })
    };
    let cms = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns);
    let pp = PatchParams::apply("helm").force();
    cms.patch(BAD, &pp, &Patch::Apply(&cm("v9"))).await.unwrap();
    // A routemap applied after it is served, so the ignored one has been seen (one watch
    // delivers both in order).
    apply_routemap(
        &env.client,
        &env.ns,
        "marker",
        json!({"strSpec": spec(json!([isvc_version("wisdom-0")]), &[("t", "vs", vs_template("marker", &env.ns))])}),
    )
    .await;
    wait_vs(
        &env.client,
        &env.ns,
        "marker",
        "the marker routemap's VirtualService",
        |_| true,
    )
    .await;
    env.assert_no_vs("bad").await;
    env.good_still_served().await;

    // With an accepted version it is served.
    cms.patch(BAD, &pp, &Patch::Apply(&cm("v1.1")))
        .await
        .unwrap();
    wait_vs(
        &env.client,
        &env.ns,
        "bad",
        "the relabelled routemap's VirtualService",
        |_| true,
    )
    .await;
}
