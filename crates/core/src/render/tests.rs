use super::*;
use crate::availability::{weigh, Observed};
use crate::config::Config;
use crate::routemap::{self, RoutingTemplate};
use serde_json::json;

const ROUTEMAP_STEP2: &str = include_str!("../../testdata/kserve-canary/routemap-step2.yaml");
const VS_STEP1: &str = include_str!("../../testdata/kserve-canary/virtualservice-step1.yaml");
const VS_STEP2: &str = include_str!("../../testdata/kserve-canary/virtualservice-step2.yaml");

fn yaml(s: &str) -> Value {
    serde_yaml::from_str(s).unwrap()
}

fn meta() -> RoutemapMeta {
    RoutemapMeta {
        name: "wisdom-routemap".into(),
        namespace: "default".into(),
        uid: "0b3c5a2e-uid".into(),
        labels: [("iter8.tools/kind".to_string(), "routemap".to_string())].into(),
        annotations: [("note".to_string(), "a+b<c>&'\"".to_string())].into(),
    }
}

fn weighing(weights: &[u32]) -> Weighing {
    Weighing {
        available: weights.iter().map(|w| *w > 0).collect(),
        weights: weights.to_vec(),
        signatures: weights.iter().map(|_| String::new()).collect(),
        problems: Vec::new(),
        promoted: false,
    }
}

/// A routemap with one version and the given templates (all of type vs).
fn with_templates(templates: &[(&str, &str)]) -> Routemap {
    let mut rm = routemap::parse(
        "versions: [{resources: [{gvrShort: isvc, name: a}]}]",
        "default",
        &Config::default(),
    )
    .unwrap();
    for (name, text) in templates {
        rm.routing_templates.insert(
            name.to_string(),
            RoutingTemplate {
                gvr_short: "vs".into(),
                template: text.to_string(),
            },
        );
    }
    rm
}

/// Renders a single template and returns its result.
fn one(template: &str, weights: &[u32]) -> Result<Option<Value>, RenderError> {
    let rm = with_templates(&[("t", template)]);
    let mut out = render(&meta(), &rm, &weighing(weights));
    assert_eq!(out.len(), 1);
    out.remove(0).result
}

fn step2_routemap() -> Routemap {
    routemap::parse(ROUTEMAP_STEP2, "default", &Config::default()).unwrap()
}

#[test]
fn tutorial_canary_virtualservice() {
    let rm = step2_routemap();
    for (weights, expected) in [
        (vec![1, 0], VS_STEP1),
        (vec![1, 1], VS_STEP2),
        (vec![50, 0], VS_STEP1),
        (vec![50, 50], VS_STEP2),
    ] {
        let out = render(&meta(), &rm, &weighing(&weights));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].template, "canary");
        assert_eq!(out[0].gvr_short, "vs");
        let obj = out[0].result.clone().unwrap().unwrap();
        assert_eq!(obj, yaml(expected), "weights {weights:?}");
        let checked = check_target(
            obj.clone(),
            "networking.istio.io/v1beta1",
            "VirtualService",
            "default",
        )
        .unwrap();
        assert_eq!(checked, obj);
    }
}

/// The tutorial end to end through `weigh`: wisdom-1 just created, then Ready.
#[test]
fn tutorial_canary_with_real_statuses() {
    let rm = step2_routemap();
    let config = Config::default();
    let ready = yaml(
        "conditions:\n\
         - {type: IngressReady, status: \"True\"}\n\
         - {type: PredictorReady, status: \"True\"}\n\
         - {type: Ready, status: \"True\"}\n\
         - {type: Stopped, status: \"False\", severity: Info}\n\
         observedGeneration: 1\n",
    );
    let created = yaml(
        "conditions:\n\
         - {type: IngressReady, status: Unknown, reason: Predictor ingress not created}\n\
         - {type: PredictorReady, status: Unknown, reason: RevisionMissing}\n\
         - {type: Ready, status: Unknown, reason: Predictor ingress not created}\n\
         - {type: Stopped, status: \"False\", severity: Info}\n\
         observedGeneration: 1\n",
    );
    let isvc = |status: &Value| {
        Observed::new(Some(1), false, Default::default())
            .with_spec(&json!({"predictor": {"minReplicas": 1}}))
            .with_status(status)
    };
    for (candidate_status, expected) in [(&created, VS_STEP1), (&ready, VS_STEP2)] {
        let lookup = |gvr: &str, ns: &str, name: &str| {
            assert_eq!((gvr, ns), ("isvc", "default"));
            match name {
                "wisdom-0" => Some(isvc(&ready)),
                "wisdom-1" => Some(isvc(candidate_status)),
                _ => None,
            }
        };
        let w = weigh(&rm, "default", &config, &lookup);
        let out = render(&meta(), &rm, &w);
        assert_eq!(
            out[0].result,
            Ok(Some(yaml(expected))),
            "weights {:?}",
            w.weights
        );
    }
}

#[test]
fn html_escaping_is_go_like() {
    // Go's html/template escapes + < > & ' " in text; NUL becomes U+FFFD.
    let got = one("x: \"{{ .Annotations.note }}\"", &[1])
        .unwrap()
        .unwrap();
    assert_eq!(got, json!({"x": "a&#43;b&lt;c&gt;&amp;&#39;&#34;"}));
    // Names, numbers and hosts pass unchanged.
    let got = one(
        "x: {{ .Name }}.{{ .Namespace }}.svc.cluster.local\nw: {{ index .Weights 0 }}",
        &[7],
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        got,
        json!({"x": "wisdom-routemap.default.svc.cluster.local", "w": 7})
    );
}

#[test]
fn missing_keys_render_empty() {
    let got = one(
        "a: \"[{{ .Labels.nope }}]\"\nb: \"[{{ .Nope }}]\"\nc: \"[{{ .Nope.Deeper }}]\"\nd: \"[{{ (index .Versions 0).Weight }}]\"",
        &[1],
    )
    .unwrap()
    .unwrap();
    assert_eq!(got, json!({"a": "[]", "b": "[]", "c": "[]", "d": "[]"}));
}

#[test]
fn template_data() {
    let mut rm = routemap::parse(
        "versions:\n\
         - resources: [{gvrShort: deploy, name: a}, {gvrShort: svc, name: a, namespace: default}]\n  weight: 30\n\
         - resources: [{gvrShort: deploy, name: b}]\n",
        "default",
        &Config::default(),
    )
    .unwrap();
    rm.routing_templates.insert(
        "t".into(),
        RoutingTemplate {
            gvr_short: "vs".into(),
            template: "meta: '{{ .Name }} {{ .Namespace }} {{ .UID }} {{ index .Labels \"iter8.tools/kind\" }}'\n\
                       versions: '{{ range $i, $v := .Versions }}{{ $i }}:{{ range .Resources }}{{ .GVRShort }}/{{ .Namespace }}/{{ .Name }},{{ end }}w={{ .Weight }},s={{ .Signature }};{{ end }}'\n\
                       weights: '{{ range .Weights }}{{ . }} {{ end }}{{ len .Weights }}'\n\
                       ready: '{{ if gt (index .Weights 1) 0 }}yes{{ else }}no{{ end }}'\n"
                .into(),
        },
    );
    let w = Weighing {
        available: vec![true, false],
        weights: vec![30, 0],
        signatures: vec!["0123456789abcdef".into(), String::new()],
        problems: vec![],
        promoted: false,
    };
    let out = render(&meta(), &rm, &w);
    assert_eq!(
        out[0].result,
        Ok(Some(json!({
            "meta": "wisdom-routemap default 0b3c5a2e-uid routemap",
            "versions": "0:deploy/default/a,svc/default/a,w=30,s=0123456789abcdef;1:deploy/default/b,w=,s=;",
            "weights": "30 0 2",
            "ready": "no",
        })))
    );
}

#[test]
fn templates_render_in_name_order_and_independently() {
    let rm = with_templates(&[
        ("zeta", "kind: Z"),
        ("alpha", "{{ if }}"),
        ("mid", "kind: M\nn: {{ index .Weights 3 }}"),
        ("beta", "kind: B"),
    ]);
    let out = render(&meta(), &rm, &weighing(&[1]));
    let names: Vec<&str> = out.iter().map(|r| r.template.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "mid", "zeta"]);
    let alpha = out[0].result.clone().unwrap_err();
    assert_eq!(alpha.category(), "template_parse");
    assert!(
        alpha
            .to_string()
            .starts_with("routing template alpha does not parse: "),
        "{alpha}"
    );
    assert_eq!(out[1].result, Ok(Some(json!({"kind": "B"}))));
    let mid = out[2].result.clone().unwrap_err();
    assert_eq!(mid.category(), "template_execute");
    assert_eq!(
        mid.to_string(),
        "routing template mid failed to execute: index out of range: 3"
    );
    assert_eq!(out[3].result, Ok(Some(json!({"kind": "Z"}))));
}

#[test]
fn empty_output_is_nothing_to_apply() {
    let cases = [
        "",
        "  \n\t\n",
        "{{ if gt (index .Weights 0) 5 }}kind: X{{ end }}",
        "# only a comment\n",
        "---\n",
    ];
    for t in cases {
        assert_eq!(one(t, &[1]), Ok(None), "{t:?}");
    }
}

#[test]
fn bad_yaml_is_an_error() {
    let cases = [
        (
            "a: [",
            "rendered_yaml",
            "routing template t rendered invalid yaml: ",
        ),
        (
            "- a\n- b",
            "rendered_yaml",
            "routing template t rendered a list, not a yaml mapping",
        ),
        (
            "just text",
            "rendered_yaml",
            "routing template t rendered a string, not a yaml mapping",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "rendered_yaml",
            "routing template t rendered invalid yaml: ",
        ),
    ];
    for (t, category, prefix) in cases {
        let err = one(t, &[1]).unwrap_err();
        assert_eq!(err.category(), category, "{t:?}");
        assert!(err.to_string().starts_with(prefix), "{t:?}: {err}");
    }
}

#[test]
fn left_trim_comment_keeps_following_newline() {
    // Go keeps the newline after `{{- /* c */}}`; gotmpl alone would glue the lines.
    let got = one("a: 1\n{{- /* the b key */}}\nb: 2\n", &[1]).unwrap();
    assert_eq!(got, Some(json!({"a": 1, "b": 2})));
}

#[test]
fn output_and_loops_are_bounded() {
    let big = format!("{{{{ range 60 }}}}{}{{{{ end }}}}", "x".repeat(20_000));
    let err = one(&big, &[1]).unwrap_err();
    assert_eq!(
        err,
        RenderError::TooLarge {
            template: "t".into(),
            limit: MAX_RENDERED_BYTES
        }
    );
    assert_eq!(err.category(), "template_execute");
    let err = one("{{ range 1000000 }}{{ end }}", &[1]).unwrap_err();
    assert_eq!(err.category(), "template_execute");
}

#[test]
fn unbalanced_blocks_are_parse_errors() {
    // gotmpl would stop at the stray `{{end}}` or the end of text and render the part before.
    for (t, want) in [
        (
            "a: 1\n{{ if gt (index .Weights 0) 0 }}\nb: 2\n",
            "line 2: unexpected EOF: {{if}} has no {{end}}",
        ),
        ("a: 1\n{{ end }}\nb: 2\n", "line 2: unexpected {{end}}"),
    ] {
        let err = one(t, &[1]).unwrap_err();
        assert_eq!(
            err,
            RenderError::Parse {
                template: "t".into(),
                message: want.into()
            }
        );
        assert_eq!(err.category(), "template_parse");
    }
}

#[test]
fn unknown_function_is_a_parse_error() {
    let err = one("{{ toYaml .Labels }}", &[1]).unwrap_err();
    assert_eq!(err.category(), "template_parse", "{err}");
}

#[test]
fn check_target_guards() {
    let vs = |ns: Option<&str>| {
        let mut v = json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": {"name": "wisdom"},
            "spec": {}
        });
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = json!(ns);
        }
        v
    };
    let api = "networking.istio.io/v1beta1";
    for ns in [None, Some("default"), Some("")] {
        let got = check_target(vs(ns), api, "VirtualService", "default").unwrap();
        assert_eq!(got["metadata"]["namespace"], "default");
        assert_eq!(got["spec"], json!({}));
    }
    let refusals = [
        (
            vs(Some("kube-system")),
            "refusing rendered object: VirtualService wisdom is in namespace \"kube-system\", \
             not the routemap's namespace \"default\"",
        ),
        (
            json!({"apiVersion": api, "kind": "Secret", "metadata": {"name": "x"}}),
            "refusing rendered object: Secret x: kind \"Secret\" is not the template type's \"VirtualService\"",
        ),
        (
            json!({"apiVersion": "v1", "kind": "VirtualService", "metadata": {"name": "x"}}),
            "refusing rendered object: VirtualService x: apiVersion \"v1\" is not the template type's \
             \"networking.istio.io/v1beta1\"",
        ),
        (
            json!({"kind": "VirtualService", "metadata": {"name": "x"}}),
            "refusing rendered object: VirtualService x: apiVersion \"\" is not the template type's \
             \"networking.istio.io/v1beta1\"",
        ),
        (
            json!({"apiVersion": api, "kind": "VirtualService", "metadata": {"name": ""}}),
            "refusing rendered object: VirtualService has no metadata.name",
        ),
        (
            json!({"apiVersion": api, "kind": "VirtualService"}),
            "refusing rendered object: VirtualService has no metadata",
        ),
        (
            json!({"apiVersion": api, "kind": "VirtualService", "metadata": {"name": "x", "namespace": 3}}),
            "refusing rendered object: VirtualService x is in namespace \"3\", not the routemap's \
             namespace \"default\"",
        ),
        (
            json!({"apiVersion": "v1", "metadata": {}}),
            "refusing rendered object: object: apiVersion \"v1\" is not the template type's \
             \"networking.istio.io/v1beta1\"",
        ),
        (json!(["a"]), "refusing rendered object: it is not an object"),
        (
            json!({"apiVersion": api, "kind": "VirtualService", "metadata": {"name": "../../secrets/x"}}),
            "refusing rendered object: VirtualService name \"../../secrets/x\" is not a valid name \
             (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)",
        ),
        (
            json!({"apiVersion": api, "kind": "VirtualService", "metadata": {"name": "a?watch=1"}}),
            "refusing rendered object: VirtualService name \"a?watch=1\" is not a valid name \
             (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)",
        ),
        (
            json!({"apiVersion": api, "kind": "VirtualService", "metadata": {"name": "a".repeat(254)}}),
            &format!(
                "refusing rendered object: VirtualService name \"{}...\" is 254 characters long, \
                 more than 253",
                "a".repeat(60)
            ),
        ),
    ];
    for (obj, want) in refusals {
        let err = check_target(obj, api, "VirtualService", "default").unwrap_err();
        assert_eq!(err.to_string(), want);
        assert_eq!(err.category(), "target");
    }
}

#[test]
fn promoted_tells_templates_the_candidate_took_the_primarys_place() {
    let rm = with_templates(&[(
        "t",
        "apiVersion: v1\nkind: VirtualService\nmetadata:\n  name: vs\nspec:\n  default: {{ if .Promoted }}candidate{{ else }}primary{{ end }}\n",
    )]);
    let mut w = weighing(&[1]);
    let default_route = |w: &Weighing| {
        render(&meta(), &rm, w)[0]
            .result
            .clone()
            .map(|o| o.map(|o| o["spec"]["default"].clone()))
    };
    assert_eq!(default_route(&w), Ok(Some(json!("primary"))));
    w.promoted = true;
    assert_eq!(default_route(&w), Ok(Some(json!("candidate"))));
}
