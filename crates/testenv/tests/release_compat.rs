//! The release chart against the original Iter8 v1.1.2 chart, side by side (issue 18).
//!
//! Every values file `testdata/compat/values/<case>.yaml` is rendered with the pinned Helm
//! (`helm template <release> <chart> -n <ns> -f <file>`) by the original chart (fetched by
//! `testenv/setup.sh` from the `github.com/iter8-tools/iter8` Go module) and by
//! `charts/release`. Both outputs are parsed into objects, normalized (see [`normalize`]),
//! paired by kind/namespace/name and compared field by field. Every difference must match an
//! entry of `testdata/compat/differences.yaml`; an unlisted difference fails the test, and so
//! does an entry that matches nothing (the list must stay true).
//!
//! Header comments of a values file set how it renders:
//! - `# compat: release=<name>` / `# compat: namespace=<ns>` (default `wisdom` / `default`);
//! - `# compat: original-fails <why>` — `helm template` of the original chart is known to fail
//!   for this case (the case then only checks that it still does; ours is covered by the
//!   golden tests of `charts.rs`).
//!
//! `COMPAT_VERBOSE=1` prints every difference with the entries it matched.
//!
//! Runs processes only (Helm, no cluster); no sleeps.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Pseudo object and path for a case one chart renders and the other rejects.
const RENDER: &str = "(helm template)";

/// One values file of the corpus.
struct Case {
    name: String,
    file: PathBuf,
    release: String,
    namespace: String,
    original_fails: bool,
}

fn cases() -> Result<Vec<Case>> {
    let dir = repo_root().join("testdata/compat/values");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let file = entry?.path();
        if file.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let name = file
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file)?;
        let mut case = Case {
            name,
            file,
            release: "wisdom".into(),
            namespace: "default".into(),
            original_fails: false,
        };
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            let Some(directive) = line.trim_start_matches('#').trim().strip_prefix("compat:")
            else {
                continue;
            };
            let directive = directive.trim();
            if directive.starts_with("original-fails") {
                case.original_fails = true;
                continue;
            }
            match directive.split_once('=') {
                Some(("release", v)) => case.release = v.trim().into(),
                Some(("namespace", v)) => case.namespace = v.trim().into(),
                _ => bail!("{}: unknown directive {line:?}", case.name),
            }
        }
        cases.push(case);
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    if cases.len() < 25 {
        bail!("only {} cases under {}", cases.len(), dir.display());
    }
    Ok(cases)
}

/// `helm template` of a case with a chart: the documents, or Helm's error.
fn template(helm: &Path, chart: &Path, case: &Case) -> Result<std::result::Result<String, String>> {
    let out = Command::new(helm)
        .current_dir(repo_root())
        .args(["template", &case.release])
        .arg(chart)
        .args(["--namespace", &case.namespace, "--values"])
        .arg(&case.file)
        .output()
        .with_context(|| format!("failed to run {}", helm.display()))?;
    if out.status.success() {
        Ok(Ok(
            String::from_utf8(out.stdout).context("helm output is not UTF-8")?
        ))
    } else {
        Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Removes what is not a user-visible difference, in place:
/// - labels Helm charts stamp with their own version (`helm.sh/chart`, and
///   `app.kubernetes.io/version` when it carries the chart's appVersion `v1.1`);
/// - a missing `metadata.namespace` is the release namespace (where Helm creates the object);
/// - YAML held in a string (a routemap's `data.strSpec`, any `*.yaml` key of a ConfigMap) is
///   parsed, so its comments, key order and quoting do not count;
/// - a routemap's routing templates (Go templates the controller fills with the versions'
///   weights) are replaced by what they render for a few weight vectors ([`render`]), parsed,
///   so template layout, `{{- }}` placement and comments do not count but every routed field
///   does;
/// - empty maps, lists and nulls are dropped (`labels: {}` and no labels render the same);
/// - comments, key order and document order go with the parse and the pairing by key.
fn normalize(obj: &mut Value, namespace: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove("helm.sh/chart");
            if labels.get("app.kubernetes.io/version") == Some(&Value::from("v1.1")) {
                labels.remove("app.kubernetes.io/version");
            }
        }
        if !meta.contains_key("namespace") {
            meta.insert("namespace".into(), Value::from(namespace));
        }
    }
    if obj["kind"] == "ConfigMap" {
        if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
            for (key, v) in data.iter_mut() {
                let Some(text) = v.as_str() else { continue };
                if key == "strSpec" || key.ends_with(".yaml") || key.ends_with(".yml") {
                    if let Ok(parsed) = serde_yaml::from_str::<Value>(text) {
                        *v = parsed;
                    }
                }
            }
        }
        if let Some(spec) = obj.pointer_mut("/data/strSpec") {
            render_routing_templates(spec);
        }
    }
    prune(obj);
}

/// The weight vectors routing templates are rendered with, for `n` versions: every version
/// ready with distinct weights, only the primary, and every version but the primary.
fn weight_vectors(n: usize) -> Vec<Vec<u64>> {
    let distinct: Vec<u64> = (0..n).map(|i| 10 * (n - i) as u64).collect();
    let primary: Vec<u64> = (0..n).map(|i| if i == 0 { 100 } else { 0 }).collect();
    let others: Vec<u64> = (0..n).map(|i| if i == 0 { 0 } else { 50 }).collect();
    vec![distinct, primary, others]
}

fn render_routing_templates(spec: &mut Value) {
    let n = spec["versions"].as_array().map_or(0, Vec::len);
    let Some(templates) = spec
        .get_mut("routingTemplates")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for t in templates.values_mut() {
        let Some(text) = t["template"].as_str().map(str::to_string) else {
            continue;
        };
        let mut rendered = serde_json::Map::new();
        for weights in weight_vectors(n) {
            let key = format!(
                "weights={}",
                weights
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let value = match render(&text, &weights) {
                Some(out) => serde_yaml::from_str::<Value>(&out)
                    .unwrap_or_else(|e| Value::from(format!("(invalid YAML: {e})\n{out}"))),
                None => Value::from(format!("(template not understood)\n{text}")),
            };
            rendered.insert(key, value);
        }
        if let Some(t) = t.as_object_mut() {
            t.remove("template");
            t.insert("rendered".into(), Value::Object(rendered));
        }
    }
}

/// Fills a routing template the way the controller does, for the forms both charts use:
/// whole-line `{{- if gt (index .Weights N) 0 }}` / `{{- end }}` and inline
/// `{{ index .Weights N }}`. `None` for anything else.
fn render(template: &str, weights: &[u64]) -> Option<String> {
    let weight = |s: &str| -> Option<u64> {
        let n: usize = s
            .trim()
            .strip_prefix("index .Weights ")?
            .trim()
            .parse()
            .ok()?;
        weights.get(n).copied()
    };
    let mut out = String::new();
    let mut stack: Vec<bool> = Vec::new();
    for line in template.lines() {
        let t = line.trim();
        if let Some(cond) = t
            .strip_prefix("{{- if gt (")
            .and_then(|r| r.strip_suffix(") 0 }}"))
        {
            stack.push(weight(cond)? > 0);
            continue;
        }
        if t == "{{- end }}" {
            stack.pop()?;
            continue;
        }
        if stack.iter().any(|on| !on) {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find("}}")? + i;
            out.push_str(&weight(&rest[i + 2..end])?.to_string());
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    stack.is_empty().then_some(out)
}

fn prune(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.values_mut().for_each(prune);
            map.retain(|_, x| !is_empty(x));
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The objects of a `helm template` output, keyed `Kind/namespace/name`.
fn objects(text: &str, namespace: &str) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let mut doc = Value::deserialize(de)?;
        if doc.is_null() {
            continue;
        }
        normalize(&mut doc, namespace);
        let key = format!(
            "{}/{}/{}",
            doc["kind"].as_str().unwrap_or("?"),
            doc["metadata"]["namespace"].as_str().unwrap_or(""),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        if out.insert(key.clone(), doc).is_some() {
            bail!("two objects {key}");
        }
    }
    Ok(out)
}

/// One field that differs.
#[derive(Debug, Clone)]
struct Difference {
    case: String,
    /// `Kind/namespace/name`.
    object: String,
    /// `.a.b[0].c`; empty for the whole object.
    path: String,
    original: String,
    ours: String,
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
    }
}

fn diff(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<(String, String, String)>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    format!("{path}.{k}")
                } else {
                    format!("{path}[{k:?}]")
                };
                diff(&sub, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                diff(&format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        _ if a == b => {}
        _ => out.push((path.to_string(), show(a), show(b))),
    }
}

/// An entry of `testdata/compat/differences.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    /// `Kind/namespace/name` glob (`*` matches anything), or `(helm template)`.
    object: String,
    /// JSON path glob, as reported (`.spec.http[*].route`); empty or `*` for anything.
    path: String,
    /// Globs on the values as reported (JSON, or `(absent)` / `(present)`); default `*`.
    #[serde(default)]
    original: Option<String>,
    #[serde(default)]
    ours: Option<String>,
    /// `all`, or the case names it applies to (each must show it).
    cases: Cases,
    /// `fix`, `v1.1 behaviour kept` or `v1.1 behaviour changed`.
    status: String,
    /// Set while the chart is being brought back to v1.1 here (e.g. `issue-18-item-3`).
    #[serde(default)]
    pending: Option<String>,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Cases {
    All(String),
    Some(Vec<String>),
}

impl Entry {
    fn applies_to(&self, case: &str) -> bool {
        match &self.cases {
            Cases::All(all) => all == "all",
            Cases::Some(list) => list.iter().any(|c| c == case),
        }
    }

    fn matches(&self, d: &Difference) -> bool {
        self.applies_to(&d.case)
            && glob(&self.object, &d.object)
            && glob(&self.path, &d.path)
            && glob(self.original.as_deref().unwrap_or("*"), &d.original)
            && glob(self.ours.as_deref().unwrap_or("*"), &d.ours)
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

fn entries() -> Result<Vec<Entry>> {
    let path = repo_root().join("testdata/compat/differences.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<Entry> =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut ids = BTreeSet::new();
    for e in &entries {
        if !ids.insert(e.id.as_str()) {
            bail!("{}: id {} listed twice", path.display(), e.id);
        }
        let status_ok =
            ["fix", "v1.1 behaviour kept", "v1.1 behaviour changed"].contains(&e.status.as_str());
        if !status_ok || e.reason.trim().is_empty() {
            bail!(
                "{}: {}: status must be fix / v1.1 behaviour kept / v1.1 behaviour changed, and a reason is required",
                path.display(),
                e.id
            );
        }
        if let Some(p) = &e.pending {
            if !p.starts_with("issue-") {
                bail!(
                    "{}: {}: pending must name an issue item, got {p:?}",
                    path.display(),
                    e.id
                );
            }
        }
    }
    Ok(entries)
}

/// Every difference of one case (empty when the original fails as its header says).
fn compare(
    helm: &Path,
    original: &Path,
    ours: &Path,
    case: &Case,
    problems: &mut Vec<String>,
) -> Result<Vec<Difference>> {
    let theirs = template(helm, original, case)?;
    let mine = template(helm, ours, case)?;
    let mut out = Vec::new();
    let mut push = |object: &str, path: &str, original: String, ours: String| {
        out.push(Difference {
            case: case.name.clone(),
            object: object.to_string(),
            path: path.to_string(),
            original,
            ours,
        })
    };
    match (&theirs, case.original_fails) {
        (Err(_), true) => return Ok(out),
        (Ok(_), true) => {
            problems.push(format!(
                "{}: marked `# compat: original-fails` but the original chart renders it",
                case.name
            ));
            return Ok(out);
        }
        (Err(e), false) => {
            problems.push(format!(
                "{}: helm template of the original chart fails (mark the case `# compat: original-fails` if that is expected):\n{e}",
                case.name
            ));
            return Ok(out);
        }
        (Ok(_), false) => {}
    }
    let theirs = theirs.unwrap_or_default();
    let mine = match mine {
        Ok(text) => text,
        Err(e) => {
            let first = e
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("Use --debug"))
                .collect::<Vec<_>>()
                .join(" ");
            push(RENDER, RENDER, "renders".into(), format!("fails: {first}"));
            return Ok(out);
        }
    };
    let a = objects(&theirs, &case.namespace)
        .with_context(|| format!("{}: original output", case.name))?;
    let b =
        objects(&mine, &case.namespace).with_context(|| format!("{}: our output", case.name))?;
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) => {
                let mut fields = Vec::new();
                diff("", Some(x), Some(y), &mut fields);
                for (path, o, m) in fields {
                    push(key, &path, o, m);
                }
            }
            (x, y) => push(
                key,
                "",
                if x.is_some() {
                    "(present)".into()
                } else {
                    "(absent)".into()
                },
                if y.is_some() {
                    "(present)".into()
                } else {
                    "(absent)".into()
                },
            ),
        }
    }
    Ok(out)
}

#[test]
fn release_chart_matches_v1_1_except_documented_differences() -> Result<()> {
    let helm = match testenv::Tools::locate() {
        Ok(tools) => tools.helm,
        Err(e) => panic!("cannot run the compatibility test: {e:#}"),
    };
    let original = match testenv::tools::original_release_chart() {
        Ok(dir) => dir,
        Err(e) => panic!("cannot run the compatibility test: {e:#}"),
    };
    let ours = repo_root().join("charts/release");
    let entries = entries()?;
    let cases = cases()?;
    let mut problems = Vec::new();
    let mut used: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut unlisted = Vec::new();
    let verbose = std::env::var_os("COMPAT_VERBOSE").is_some_and(|v| v == "1");
    for case in &cases {
        for d in compare(&helm, &original, &ours, case, &mut problems)? {
            let hits: Vec<&Entry> = entries.iter().filter(|e| e.matches(&d)).collect();
            if verbose {
                let ids: Vec<&str> = hits.iter().map(|e| e.id.as_str()).collect();
                eprintln!(
                    "{} {} {} [{}]\n    original: {}\n    ours:     {}",
                    d.case,
                    d.object,
                    d.path,
                    ids.join(", "),
                    d.original,
                    d.ours
                );
            }
            for e in &hits {
                used.entry(&e.id).or_default().insert(d.case.clone());
            }
            if hits.is_empty() {
                unlisted.push(d);
            }
        }
    }
    if !unlisted.is_empty() {
        let mut report = format!(
            "{} difference(s) from the original v1.1.2 chart are not in testdata/compat/differences.yaml:\n",
            unlisted.len()
        );
        for d in &unlisted {
            report.push_str(&format!(
                "  case {}: {} {}\n      original: {}\n      ours:     {}\n",
                d.case,
                d.object,
                if d.path.is_empty() {
                    "(whole object)"
                } else {
                    &d.path
                },
                d.original,
                d.ours
            ));
        }
        problems.push(report);
    }
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for e in &entries {
        let seen = used.get(e.id.as_str());
        match &e.cases {
            Cases::All(all) if all != "all" => problems.push(format!(
                "{}: cases must be `all` or a list, got {all:?}",
                e.id
            )),
            Cases::All(_) if seen.is_none() => problems.push(format!(
                "{}: listed difference matches nothing in any case (remove it, or fix its pattern)",
                e.id
            )),
            Cases::All(_) => {}
            Cases::Some(list) => {
                for c in list {
                    if !names.contains(c.as_str()) {
                        problems.push(format!("{}: names case {c}, which does not exist", e.id));
                    } else if !seen.is_some_and(|s| s.contains(c)) {
                        problems.push(format!(
                            "{}: listed for case {c}, but that case shows no such difference",
                            e.id
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn routing_templates_render_like_the_controller() {
    let t = "a:\n{{- if gt (index .Weights 1) 0 }}\n- w: {{ index .Weights 1 }}\n{{- end }}\n- p: {{ index .Weights 0 }}\n";
    assert_eq!(render(t, &[70, 30]).unwrap(), "a:\n- w: 30\n- p: 70\n");
    assert_eq!(render(t, &[100, 0]).unwrap(), "a:\n- p: 100\n");
    assert!(render("{{ .Other }}", &[1]).is_none());
}

#[test]
fn glob_matches_as_documented() {
    assert!(glob("HTTPRoute/*", "HTTPRoute/default/httpbin"));
    assert!(glob(
        ".spec.http[*].route[*].weight",
        ".spec.http[0].route[1].weight"
    ));
    assert!(!glob(
        ".spec.http[*].weight",
        ".spec.http[0].route[1].mirror"
    ));
    assert!(glob("*", ""));
    assert!(glob("", ""));
    assert!(!glob("", ".a"));
    assert!(!glob("a*a", "a"));
}

/// The chart README's "Differences from Iter8 v1.1" and `differences.yaml` are one list: every
/// entry is named by an item's `[diff: ...]` marker, and every marker names an entry.
#[test]
fn the_readme_lists_the_same_differences() -> Result<()> {
    let readme = std::fs::read_to_string(repo_root().join("charts/release/README.md"))?;
    let start = readme
        .find("## Differences from Iter8 v1.1")
        .context("the README has no differences section")?;
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut in_readme = std::collections::BTreeSet::new();
    let mut rest = section;
    while let Some(i) = rest.find("[diff: ") {
        let after = &rest[i + "[diff: ".len()..];
        let end = after.find(']').context("an unclosed [diff: marker")?;
        let marker = after[..end].replace('\n', " ");
        if !marker.starts_with("none") {
            for id in marker.split(',') {
                in_readme.insert(id.trim().trim_matches('`').to_string());
            }
        }
        rest = &after[end..];
    }
    let in_yaml: std::collections::BTreeSet<String> =
        entries()?.into_iter().map(|e| e.id).collect();
    let only_readme: Vec<&String> = in_readme.difference(&in_yaml).collect();
    let only_yaml: Vec<&String> = in_yaml.difference(&in_readme).collect();
    assert!(
        only_readme.is_empty() && only_yaml.is_empty(),
        "README markers without an entry: {only_readme:?}; entries the README does not name: {only_yaml:?}"
    );
    Ok(())
}
