//! Property tests of what a routemap's author controls: the `strSpec` text, the routing
//! templates and the YAML they render. Whatever the input, parsing, weighing, rendering and
//! checking never panic and return (every step is bounded by construction; a hang would
//! stop the test). The bounded YAML decoding also agrees with plain `serde_yaml` on
//! everything within its limits.
//!
//! The case counts are small so that the whole file runs in a few seconds in a debug build;
//! raise `PROPTEST_CASES` to search longer, e.g. `PROPTEST_CASES=20000 cargo test -p
//! iter8-core --release --test fuzz`.

use std::collections::BTreeMap;

use iter8_core::availability::{weigh, Observed};
use iter8_core::config::Config;
use iter8_core::render::{check_target, decode_output, render, RoutemapMeta};
use iter8_core::routemap::{self, ResourceRef, Routemap, RoutingTemplate, Version};
use iter8_core::yaml::{from_str_bounded, Limits, YamlError};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Value};

/// Cases per property; `PROPTEST_CASES` overrides it.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        // Failures are printed with the shrunk input; no files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces of YAML, right and wrong, including anchors, aliases, tags and flow collections.
const YAML_PIECES: &[&str] = &[
    "versions:",
    "versions: []",
    "routingTemplates:",
    "resources:",
    "gvrShort: isvc",
    "gvrShort: vs",
    "gvrShort: ''",
    "name: wisdom-0",
    "name: ",
    "namespace: default",
    "namespace: other",
    "weight: 5",
    "weight: -1",
    "weight: 99999999999",
    "weight: ~",
    "template: |",
    "template: ",
    "  kind: VirtualService",
    "{{ .Name }}",
    "- ",
    "-",
    "  ",
    "    ",
    "\n",
    "\n",
    "\n",
    "\t",
    ": ",
    ":",
    "? ",
    ",",
    "[",
    "]",
    "{",
    "}",
    "'",
    "\"",
    "\\",
    "#",
    "|",
    ">-",
    "&a ",
    "&b ",
    "*a",
    "*b",
    "<<: *a",
    "!foo ",
    "!!str ",
    "!!int ",
    "!!binary ",
    "---",
    "...",
    "%YAML 1.2",
    "0x1F",
    "1e3",
    ".nan",
    "true",
    "null",
    "x",
    "é",
    "\u{feff}",
    "\r",
];

/// Random text made of YAML pieces.
fn yaml_ish() -> impl Strategy<Value = String> {
    vec(select(YAML_PIECES), 0..48).prop_map(|pieces| pieces.concat())
}

/// Random text made of anything.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,200}", "[\\[\\]{}:, \n&*a-]{0,200}"]
}

/// Template actions that mostly execute (some fail at run time: out of range, missing
/// functions, wrong types).
const EXPRS: &[&str] = &[
    ".Name",
    ".Namespace",
    ".UID",
    ".Weights",
    ".Labels",
    ".Labels.app",
    ".Missing",
    "$",
    "$.Name",
    ".",
    "index .Weights 0",
    "index .Weights 1",
    "index .Weights 7",
    "index .Versions 0",
    "(index .Versions 0).Signature",
    "(index .Versions 0).Weight",
    "(index (index .Versions 0).Resources 0).Name",
    "len .Versions",
    ".Weights | len",
    "printf \"%s-%d\" .Name 3",
    "printf \"%s%s\" .Name .Name",
    "printf \"%v\" .",
    "printf \"%0100d\" 1",
    "printf \"%*d\" 100000 1",
    "printf \"%q\" .Annotations",
    "print .Weights",
    "println .Versions",
    "html .Name",
    "js .Name",
    "urlquery .Name",
    "slice .Name 0 1",
    "slice .Name 5 1",
    "eq .Name \"x\"",
    "ne 1 2",
    "lt 1 2",
    "and .Name .UID",
    "or .Missing 1",
    "not true",
    "call .Name",
    "toYaml .Labels",
    "\"quoted\"",
    "'c'",
    "`raw`",
    "1.5",
    "nil",
    "-3",
    "$x := 1",
];

/// Conditions of `if` and `with`.
const CONDS: &[&str] = &[
    ".Name",
    ".Missing",
    "eq .Name \"wisdom\"",
    "gt (len .Versions) 1",
    "index .Weights 0",
    "and .Name .UID",
    "not .Labels",
    "$",
];

/// `range` heads; the body sees `.`, `$i` and `$w` as the head declares.
const RANGES: &[&str] = &[
    "range .Weights",
    "range $i, $w := .Weights",
    "range .Versions",
    "range $i, $v := .Versions",
    "range .Labels",
    "range $k, $v := .Annotations",
    "range 3",
    "range $i := 2",
    "range .Name",
];

/// Raw template pieces, mostly unbalanced: parse errors of every kind.
const TEMPLATE_PIECES: &[&str] = &[
    "{{",
    "}}",
    "{{-",
    "-}}",
    "{{/*",
    "*/}}",
    " range ",
    " if ",
    " else ",
    " else if ",
    " end ",
    " with ",
    " define \"t\" ",
    " template \"t\" ",
    " block \"b\" . ",
    " break ",
    " continue ",
    " printf ",
    "\"%s%s\"",
    " . ",
    " $x := ",
    " $x = ",
    " | ",
    "(",
    ")",
    "\"",
    "'",
    "`",
    "$",
    "$w",
    ".Weights",
    "index .Weights 0",
    "<script>",
    "<a href=\"",
    "\n",
    "kind: ",
];

/// Lines of YAML around the actions.
const YAML_LINES: &[&str] = &[
    "apiVersion: networking.istio.io/v1beta1\n",
    "kind: VirtualService\n",
    "metadata:\n",
    "  name: wisdom\n",
    "  name: ",
    "  namespace: ",
    "spec:\n",
    "  hosts: [wisdom.default]\n",
    "  http:\n",
    "  - route:\n",
    "    - destination:\n",
    "        host: ",
    "      weight: ",
    "\n",
    "- ",
    "  ",
    "a: &a [x, y, z]\n",
    "b: [*a, *a, *a]\n",
    "c: *a\n",
    "'",
    "\"",
    ": ",
    "#",
    "---\n",
    "!foo ",
    "[",
    "{",
    "]",
    "}",
];

/// Template text: well-formed actions and blocks around YAML, with raw pieces mixed in.
fn template_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => select(YAML_LINES).prop_map(String::from),
        4 => select(EXPRS).prop_map(|e| format!("{{{{ {e} }}}}")),
        1 => select(TEMPLATE_PIECES).prop_map(String::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        let body = vec(inner, 0..6).prop_map(|items| items.concat());
        prop_oneof![
            body.clone(),
            (select(CONDS), body.clone())
                .prop_map(|(c, b)| format!("{{{{ if {c} }}}}{b}{{{{ end }}}}")),
            (select(CONDS), body.clone(), body.clone())
                .prop_map(|(c, b, e)| format!("{{{{ if {c} }}}}{b}{{{{ else }}}}{e}{{{{ end }}}}")),
            (select(CONDS), body.clone())
                .prop_map(|(c, b)| format!("{{{{ with {c} }}}}{b}{{{{ end }}}}")),
            (select(RANGES), body.clone())
                .prop_map(|(r, b)| format!("{{{{ {r} }}}}{b}{{{{ end }}}}")),
            (select(RANGES), body.clone(), body)
                .prop_map(|(r, b, e)| format!("{{{{ {r} }}}}{b}{{{{ else }}}}{e}{{{{ end }}}}")),
        ]
    })
}

/// The attacks of issue 11 on rendering: text that doubles, loops that multiply, widths,
/// output past the cap, recursion, and YAML that expands or nests past the decoder's limits.
const BOMBS: &[&str] = &[
    "{{ $s := \"ab\" }}{{ range 40 }}{{ $s = printf \"%s%s\" $s $s }}{{ end }}{{ $s }}",
    "{{ range 1000 }}{{ range 1000 }}x{{ end }}{{ end }}",
    "{{ printf \"%*d\" 1000000000 1 }}",
    "{{ range 100000 }}{{ printf \"%0500d\" 1 }}{{ end }}",
    "{{ define \"r\" }}{{ template \"r\" . }}{{ end }}{{ template \"r\" . }}",
    "a: &a [{{ range 1000 }}x,{{ end }}x]\nb: [{{ range 1000 }}*a,{{ end }}*a]\n",
    "s: &s {{ printf \"%0100000d\" 1 }}\nb: [{{ range 1000 }}*s,{{ end }}*s]\n",
    "l0: &l0 [a,a,a,a,a,a,a,a,a]\nl1: &l1 [*l0,*l0,*l0,*l0,*l0,*l0,*l0,*l0,*l0]\n\
     l2: &l2 [*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1,*l1]\nl3: &l3 [*l2,*l2,*l2,*l2,*l2,*l2,*l2,*l2,*l2]\n\
     l4: &l4 [*l3,*l3,*l3,*l3,*l3,*l3,*l3,*l3,*l3]\nl5: &l5 [*l4,*l4,*l4,*l4,*l4,*l4,*l4,*l4,*l4]\n\
     l6: [*l5,*l5,*l5,*l5,*l5,*l5,*l5,*l5,*l5]\n",
    "{{ range 60000 }}[{{ end }}",
    "{{ range 30000 }}- {{ end }}x",
    "{{ range 30 }}{{ end }}{{ range $i, $w := .Weights }}{{ range 99999 }}{{ end }}{{ end }}",
];

/// A resource reference, sometimes invalid (empty fields, foreign namespace).
fn resource() -> impl Strategy<Value = ResourceRef> {
    (
        select(&["isvc", "deploy", "svc", "cm", "unknown", ""][..]),
        select(&["wisdom-0", "wisdom-1", "gone", "weighted", ""][..]),
        select(&[None, Some(""), Some("default"), Some("other")][..]),
    )
        .prop_map(|(gvr, name, ns)| ResourceRef {
            gvr_short: gvr.to_string(),
            name: name.to_string(),
            namespace: ns.map(str::to_string),
        })
}

/// A routemap, valid or not, with random templates.
fn routemap_value() -> impl Strategy<Value = Routemap> {
    let version = (
        vec(resource(), 0..3),
        prop_oneof![
            Just(None),
            (0u32..200).prop_map(Some),
            any::<u32>().prop_map(Some)
        ],
    )
        .prop_map(|(resources, weight)| Version { resources, weight });
    let template = (
        select(&["vs", "httproute", "se", "cm", "bogus", ""][..]),
        prop_oneof![8 => template_text(), 1 => vec(select(TEMPLATE_PIECES), 0..24).prop_map(|p| p.concat())],
    )
        .prop_map(|(gvr, text)| RoutingTemplate {
            gvr_short: gvr.to_string(),
            template: text,
        });
    (vec(version, 0..4), vec(("[a-z]{1,3}", template), 0..4)).prop_map(|(versions, templates)| {
        Routemap {
            versions,
            routing_templates: templates.into_iter().collect(),
            analysis: None,
        }
    })
}

/// A serialized routemap with a few YAML pieces spliced in: near-valid `strSpec`s.
fn mutated_strspec() -> impl Strategy<Value = String> {
    (
        routemap_value(),
        vec((any::<prop::sample::Index>(), select(YAML_PIECES)), 0..4),
    )
        .prop_map(|(rm, splices)| {
            let mut text = serde_yaml::to_string(&rm).unwrap_or_default();
            for (at, piece) in splices {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                text.insert_str(i, piece);
            }
            text
        })
}

/// What the watched objects look like: `gone` is missing, `weighted` carries a weight
/// annotation, and deployments are never ready; everything else is ready.
fn lookup(gvr: &str, _ns: &str, name: &str) -> Option<Observed> {
    if name == "gone" {
        return None;
    }
    let condition = if gvr == "deploy" {
        "Available"
    } else {
        "Ready"
    };
    let status = if gvr == "deploy" { "False" } else { "True" };
    let mut annotations = BTreeMap::new();
    if name == "weighted" {
        annotations.insert("iter8.tools/weight".to_string(), "30".to_string());
    }
    Some(
        Observed::new(Some(1), false, annotations)
            .with_spec(&json!({"name": name}))
            .with_status(&json!({"conditions": [{"type": condition, "status": status}]})),
    )
}

fn meta() -> RoutemapMeta {
    RoutemapMeta {
        name: "wisdom-routemap".into(),
        namespace: "default".into(),
        uid: "uid-1".into(),
        labels: [("app".to_string(), "wisdom".to_string())].into(),
        annotations: [("note".to_string(), "a+b<c>&'\"".to_string())].into(),
    }
}

/// Everything after parsing: weigh, render every template, check every object.
fn weigh_render_check(routemap: &Routemap, config: &Config) {
    let weighing = weigh(routemap, "default", config, &lookup);
    assert_eq!(weighing.weights.len(), routemap.versions.len());
    let rendered = render(&meta(), routemap, &weighing);
    assert_eq!(rendered.len(), routemap.routing_templates.len());
    for r in rendered {
        match r.result {
            Ok(Some(obj)) => {
                assert!(obj.is_object(), "{obj}");
                let _ = check_target(
                    obj,
                    "networking.istio.io/v1beta1",
                    "VirtualService",
                    "default",
                );
            }
            Ok(None) => {}
            Err(e) => {
                assert!(!e.category().is_empty());
                assert!(e.to_string().contains(&r.template), "{e}");
            }
        }
    }
    let _ = routemap.warnings(config);
    let _ = routemap.references("default");
}

/// `routemap::parse`, then the rest when it parses.
fn parse_and_render(text: &str) {
    let config = Config::default();
    if let Ok(rm) = routemap::parse(text, "default", &config) {
        assert!(!rm.versions.is_empty());
        weigh_render_check(&rm, &config);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn yaml_ish_strspecs_never_panic(text in prop_oneof![yaml_ish(), mutated_strspec()]) {
        parse_and_render(&text);
    }

    #[test]
    fn any_strspec_never_panics(text in any_text()) {
        parse_and_render(&text);
    }

    /// Structured routemaps go through YAML and back unchanged when valid, then render.
    #[test]
    fn structured_routemaps_render(rm in routemap_value()) {
        let text = serde_yaml::to_string(&rm).expect("a routemap serializes");
        let config = Config::default();
        match routemap::parse(&text, "default", &config) {
            Ok(parsed) => {
                let mut want = rm.clone();
                for r in want.versions.iter_mut().flat_map(|v| v.resources.iter_mut()) {
                    if r.namespace.as_deref() == Some("") {
                        r.namespace = None;
                    }
                }
                prop_assert_eq!(&parsed, &want);
                weigh_render_check(&parsed, &config);
            }
            Err(e) => {
                // Only the validation rules refuse a routemap we serialized ourselves.
                prop_assert!(!e.to_string().starts_with("invalid routemap"), "{}", e);
            }
        }
        // The same templates against a routemap that is sure to parse.
        let mut valid = rm;
        valid.versions = vec![Version::default()];
        for t in valid.routing_templates.values_mut() {
            t.gvr_short = "vs".into();
        }
        weigh_render_check(&valid, &config);
    }

    /// Rendered output is decoded like plain serde_yaml decodes it, within the limits.
    #[test]
    fn bounded_yaml_agrees_with_serde_yaml(text in prop_oneof![yaml_ish(), template_text(), any_text()]) {
        let ours = from_str_bounded(&text, Limits::DEFAULT);
        if !matches!(ours, Err(YamlError::Limit { .. })) {
            let today = serde_yaml::from_str::<Value>(&text).map_err(|e| e.to_string());
            prop_assert_eq!(ours.map_err(|e| e.to_string()), today);
        }
        let _ = decode_output("t", &text);
    }
}

proptest! {
    // Each case does up to the full budget of work before it fails: fewer of them.
    #![proptest_config(ProptestConfig { cases: (config().cases / 8).max(1), ..config() })]

    /// Known attacks, mixed with random template text, end in errors or small objects.
    #[test]
    fn rendering_bombs_are_bounded(
        bombs in vec(select(BOMBS), 1..3),
        text in template_text(),
        before in any::<bool>(),
    ) {
        let bombs = bombs.concat();
        let template = if before { format!("{bombs}{text}") } else { format!("{text}{bombs}") };
        let mut rm = Routemap {
            versions: vec![Version::default(), Version::default()],
            routing_templates: BTreeMap::new(),
            analysis: None,
        };
        rm.routing_templates.insert(
            "t".to_string(),
            RoutingTemplate { gvr_short: "vs".to_string(), template },
        );
        weigh_render_check(&rm, &Config::default());
    }
}
