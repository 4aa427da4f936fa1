//! `iter8 render`: what the controller would apply, offline.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn render(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .arg("render")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const ROUTEMAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/render/routemap.yaml"
);
const OBJECTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/render/objects.yaml"
);

#[test]
fn prints_weights_and_only_ready_routes() {
    let (ok, out, err) = render(&["--routemap", ROUTEMAP, "-f", OBJECTS]);
    assert!(ok, "{err}");
    assert!(out.contains("# weights: [50, 0]"), "{out}");
    assert!(out.contains("# version 1: not available"), "{out}");
    let vs: serde_json::Value = serde_yaml::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(vs["kind"], "VirtualService");
    let names: Vec<&str> = vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wisdom-0"]);
}

#[test]
fn a_ready_candidate_gets_its_header_route_first() {
    let dir = tempfile_dir();
    let ready = std::fs::read_to_string(OBJECTS)
        .unwrap()
        .replace("status: Unknown", "status: \"True\"");
    let objects = dir.join("objects.yaml");
    std::fs::write(&objects, ready).unwrap();
    let (ok, out, err) = render(&["--routemap", ROUTEMAP, "-f", objects.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("# weights: [50, 50]"), "{out}");
    let vs: serde_json::Value = serde_yaml::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(vs["spec"]["http"][0]["name"], "wisdom-1");
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["headers"]["traffic"]["exact"],
        "test"
    );
}

#[test]
fn a_broken_template_fails_with_its_name() {
    let dir = tempfile_dir();
    let broken = std::fs::read_to_string(ROUTEMAP)
        .unwrap()
        .replace("{{- end }}", "{{- end }}{{ end }}");
    let routemap = dir.join("routemap.yaml");
    std::fs::write(&routemap, broken).unwrap();
    let (ok, _, err) = render(&["--routemap", routemap.to_str().unwrap(), "-f", OBJECTS]);
    assert!(!ok);
    assert!(err.contains("template canary"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "iter8-render-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to `name` in a fresh directory and returns the file's path.
fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A routemap ConfigMap in namespace default with the given `strSpec`.
fn routemap_with(str_spec: &str) -> String {
    let indented: String = str_spec.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wisdom-routemap\n  \
         namespace: default\ndata:\n  strSpec: |\n{indented}"
    )
}

/// Kind `ServiceEntry` has plural `serviceentries`, which does not start with the kind: the
/// kind is matched through the table of well-known kinds, for a version's resource and for
/// a routing template's target.
#[test]
fn a_service_entry_renders_and_counts_as_a_resource() {
    let dir = tempfile_dir();
    let routemap = write(
        &dir,
        "routemap.yaml",
        &routemap_with(
            "versions:
- resources:
  - {gvrShort: isvc, name: wisdom-0}
  - {gvrShort: se, name: wisdom-0-external}
  weight: 70
- resources:
  - {gvrShort: isvc, name: wisdom-1}
routingTemplates:
  entry:
    gvrShort: se
    template: |
      apiVersion: networking.istio.io/v1beta1
      kind: ServiceEntry
      metadata:
        name: wisdom
      spec:
        hosts: [wisdom.example.com]
        ports: [{number: 80, name: http, protocol: HTTP}]
        resolution: DNS
        endpoints:
        - address: wisdom-0.default.svc.cluster.local
          weight: {{ index .Weights 0 }}
",
        ),
    );
    let se = write(
        &dir,
        "se.yaml",
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: wisdom-0-external, namespace: default}
spec: {hosts: [wisdom-0.example.com]}
",
    );
    let (ok, out, err) = render(&["--routemap", &routemap, "-f", OBJECTS, "-f", &se]);
    assert!(ok, "{err}");
    assert!(out.contains("# weights: [70, 0]"), "{out}");
    assert!(out.contains("# version 0: available"), "{out}");
    assert!(out.contains("# template entry (se)"), "{out}");
    let entry: serde_json::Value =
        serde_yaml::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(entry["kind"], "ServiceEntry");
    assert_eq!(entry["metadata"]["namespace"], "default");
    assert_eq!(entry["spec"]["endpoints"][0]["weight"], 70);
}

/// Kinds not in the table get the plural Kubernetes gives CRDs by default.
#[test]
fn unlisted_kinds_get_the_default_crd_plural() {
    let dir = tempfile_dir();
    let config = write(
        &dir,
        "config.yaml",
        "resourceTypes:
  policy: {group: example.com, version: v1, resource: trafficpolicies}
  box: {group: example.com, version: v1, resource: mailboxes}
  patch: {group: example.com, version: v1, resource: patches}
  bus: {group: example.com, version: v1, resource: buses}
  model: {group: example.com, version: v1, resource: models}
",
    );
    let routemap = write(
        &dir,
        "routemap.yaml",
        &routemap_with(
            "versions:
- resources:
  - {gvrShort: box, name: a}
  - {gvrShort: patch, name: a}
  - {gvrShort: bus, name: a}
  - {gvrShort: model, name: a}
routingTemplates:
  policy:
    gvrShort: policy
    template: |
      apiVersion: example.com/v1
      kind: TrafficPolicy
      metadata: {name: wisdom}
      spec: {weight: {{ index .Weights 0 }}}
",
        ),
    );
    let objects = write(
        &dir,
        "objects.yaml",
        "apiVersion: example.com/v1\nkind: Mailbox\nmetadata: {name: a}\n---\n\
         apiVersion: example.com/v1\nkind: Patch\nmetadata: {name: a}\n---\n\
         apiVersion: example.com/v1\nkind: Bus\nmetadata: {name: a}\n---\n\
         apiVersion: example.com/v1\nkind: Model\nmetadata: {name: a}\n",
    );
    let (ok, out, err) = render(&["--config", &config, "--routemap", &routemap, "-f", &objects]);
    assert!(ok, "{err}");
    assert!(out.contains("# version 0: available"), "{out}");
    assert!(out.contains("kind: TrafficPolicy"), "{out}");
}

/// Every error about an input file names the file.
#[test]
fn file_errors_name_the_file() {
    let dir = tempfile_dir();
    let missing = dir.join("missing.yaml").to_str().unwrap().to_string();
    let bad_yaml = write(
        &dir,
        "bad-yaml.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [\n",
    );
    let two_cms = write(
        &dir,
        "two.yaml",
        &format!(
            "{}---\n{}",
            routemap_with("versions: [{resources: []}]"),
            routemap_with("versions: [{resources: []}]")
        ),
    );
    let not_a_cm = write(
        &dir,
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\ndata: {strSpec: \"versions: [{resources: []}]\"}\n",
    );
    let bad_routemap = write(&dir, "bad-routemap.yaml", &routemap_with("versions: []"));
    let bad_config = write(&dir, "bad-config.yaml", "defaultResync: soon\n");
    let no_kind = write(
        &dir,
        "no-kind.yaml",
        "apiVersion: v1\nmetadata: {name: a}\n",
    );
    let no_name = write(
        &dir,
        "no-name.yaml",
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {namespace: default}\n",
    );
    let pod = write(
        &dir,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: wisdom-0-abc, namespace: default}\n",
    );
    let cases: Vec<(&str, Vec<&str>, &str, &str)> = vec![
        (
            "missing routemap",
            vec!["--routemap", &missing, "-f", OBJECTS],
            &missing,
            "reading",
        ),
        (
            "missing objects",
            vec!["--routemap", ROUTEMAP, "-f", &missing],
            &missing,
            "reading",
        ),
        (
            "missing config",
            vec!["--config", &missing, "--routemap", ROUTEMAP],
            &missing,
            "reading",
        ),
        (
            "config that does not parse",
            vec!["--config", &bad_config, "--routemap", ROUTEMAP],
            &bad_config,
            "defaultResync",
        ),
        (
            "YAML error in the second document of an objects file",
            vec!["--routemap", ROUTEMAP, "-f", &bad_yaml],
            &bad_yaml,
            "document 2 is not valid YAML",
        ),
        (
            "YAML error in a routemap file",
            vec!["--routemap", &bad_yaml, "-f", OBJECTS],
            &bad_yaml,
            "document 2 is not valid YAML",
        ),
        (
            "two ConfigMaps in a routemap file",
            vec!["--routemap", &two_cms, "-f", OBJECTS],
            &two_cms,
            "must hold exactly one routemap ConfigMap",
        ),
        (
            "a Deployment in a routemap file",
            vec!["--routemap", &not_a_cm, "-f", OBJECTS],
            &not_a_cm,
            "must hold exactly one routemap ConfigMap",
        ),
        (
            "a routemap that does not parse",
            vec!["--routemap", &bad_routemap, "-f", OBJECTS],
            &bad_routemap,
            "invalid routemap",
        ),
        (
            "object without kind",
            vec!["--routemap", ROUTEMAP, "-f", OBJECTS, "-f", &no_kind],
            &no_kind,
            "has no kind",
        ),
        (
            "object without metadata.name",
            vec!["--routemap", ROUTEMAP, "-f", &no_name],
            &no_name,
            "has no metadata.name",
        ),
    ];
    for (what, args, path, detail) in cases {
        let (ok, out, err) = render(&args);
        assert!(!ok, "{what}: must fail; stdout: {out}");
        assert!(err.contains(path), "{what}: {err}");
        assert!(err.contains(detail), "{what}: {err}");
    }
    // An object of no configured type (a Pod from `kubectl get all`) is named and ignored.
    let (ok, out, err) = render(&["--routemap", ROUTEMAP, "-f", OBJECTS, "-f", &pod]);
    assert!(ok, "an extra Pod must not fail the run: {err}");
    assert!(
        err.contains(&pod) && err.contains("Pod default/wisdom-0-abc") && err.contains("ignored"),
        "{err}"
    );
    assert!(out.contains("VirtualService"), "{out}");
}
