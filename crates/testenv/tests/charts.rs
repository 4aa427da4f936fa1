//! Golden tests of the Helm charts in `charts/`, run with the pinned Helm binary.
//!
//! Each folder `testdata/charts/<case>/` holds a `values.yaml` and either
//! - `expected.yaml`: the exact `helm template` output, or
//! - `expected-error.txt`: a substring the error of `helm template` must contain.
//!
//! Cases named `controller*` render `charts/controller` as release `iter8` in namespace
//! `iter8-system`; cases named `test-*` render the test chart `charts/iter8` as release
//! `wisdom-test` in `default`; all others render `charts/release` as release `wisdom` in namespace
//! `default` (the seed tutorial's names). `UPDATE_GOLDEN=1` rewrites the `expected.yaml` files
//! instead of comparing; read the diff before committing it, the files are the contract.
//!
//! Runs processes only (Helm, no cluster); no sleeps.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The pinned Helm binary; a missing one fails the test with the reason.
fn helm() -> PathBuf {
    match testenv::Tools::locate() {
        Ok(tools) => tools.helm,
        Err(e) => panic!("cannot run the chart tests: {e:#}"),
    }
}

/// One folder under `testdata/charts`.
struct Case {
    name: String,
    dir: PathBuf,
}

impl Case {
    fn chart(&self) -> &'static str {
        if self.name.starts_with("controller") {
            "charts/controller"
        } else if self.name.starts_with("test-") {
            "charts/iter8"
        } else {
            "charts/release"
        }
    }

    fn release_and_namespace(&self) -> (&'static str, &'static str) {
        if self.name.starts_with("controller") {
            ("iter8", "iter8-system")
        } else if self.name.starts_with("test-") {
            ("wisdom-test", "default")
        } else {
            ("wisdom", "default")
        }
    }

    /// `helm template` of this case's values.
    fn template(&self, helm: &Path) -> Result<Output> {
        let (release, namespace) = self.release_and_namespace();
        Command::new(helm)
            .current_dir(repo_root())
            .args(["template", release, self.chart(), "--namespace", namespace])
            .arg("--values")
            .arg(self.dir.join("values.yaml"))
            .output()
            .with_context(|| format!("failed to run {}", helm.display()))
    }
}

fn cases() -> Result<Vec<Case>> {
    let root = repo_root().join("testdata/charts");
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))? {
        let dir = entry?.path();
        if dir.join("values.yaml").is_file() {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            cases.push(Case { name, dir });
        }
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    if cases.is_empty() {
        bail!("no cases under {}", root.display());
    }
    Ok(cases)
}

/// Where two texts first differ, with a few lines of context, for a readable failure.
fn describe_mismatch(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let first = e
        .iter()
        .zip(a.iter())
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    let from = first.saturating_sub(3);
    let mut out = format!(
        "first difference at line {} (expected {} lines, got {}):\n",
        first + 1,
        e.len(),
        a.len()
    );
    for (label, lines) in [("expected", &e), ("actual", &a)] {
        out.push_str(&format!("--- {label}\n"));
        for (i, line) in lines.iter().enumerate().skip(from).take(8) {
            let marker = if i == first { ">" } else { " " };
            out.push_str(&format!("{marker}{:5} | {line}\n", i + 1));
        }
    }
    out
}

#[test]
fn charts_render_as_expected() -> Result<()> {
    let helm = helm();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases()?
        .into_iter()
        .filter(|c| !c.dir.join("expected-error.txt").exists())
    {
        let out = case.template(&helm)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            failures.push(format!("{}: helm template failed: {stderr}", case.name));
            continue;
        }
        let actual = String::from_utf8(out.stdout).context("helm output is not UTF-8")?;
        let expected_path = case.dir.join("expected.yaml");
        if update {
            std::fs::write(&expected_path, &actual)
                .with_context(|| format!("writing {}", expected_path.display()))?;
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        checked += 1;
        if expected != actual {
            failures.push(format!(
                "{}: output differs from {} (UPDATE_GOLDEN=1 rewrites it)\n{}",
                case.name,
                expected_path.display(),
                describe_mismatch(&expected, &actual)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(update || checked > 0, "no golden cases were checked");
    Ok(())
}

#[test]
fn bad_values_fail_with_a_clear_message() -> Result<()> {
    let helm = helm();
    let mut failures = Vec::new();
    for case in cases()? {
        let Ok(expected) = std::fs::read_to_string(case.dir.join("expected-error.txt")) else {
            continue;
        };
        let expected = expected.trim();
        let out = case.template(&helm)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!(
                "{}: helm template succeeded, expected an error",
                case.name
            ));
        } else if !stderr.contains(expected) {
            failures.push(format!(
                "{}: error does not contain {expected:?}:\n{stderr}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn charts_pass_strict_lint() -> Result<()> {
    let helm = helm();
    let root = repo_root();
    let mut failures = Vec::new();
    for (chart, values) in [
        (
            "charts/release",
            "testdata/charts/tutorial-step2/values.yaml",
        ),
        (
            "charts/release",
            "testdata/charts/deployment-istio-canary/values.yaml",
        ),
        (
            "charts/release",
            "testdata/charts/deployment-gtw-blue-green/values.yaml",
        ),
        (
            "charts/controller",
            "testdata/charts/controller-cluster-scoped/values.yaml",
        ),
        (
            "charts/controller",
            "testdata/charts/controller-namespaced/values.yaml",
        ),
        (
            "charts/controller",
            "testdata/charts/controller-all-keys/values.yaml",
        ),
        ("charts/iter8", "testdata/charts/test-http/values.yaml"),
        ("charts/iter8", "testdata/charts/test-grpc/values.yaml"),
    ] {
        let out = Command::new(&helm)
            .current_dir(&root)
            .args(["lint", "--strict", chart, "--values", values])
            .output()
            .with_context(|| format!("failed to run {}", helm.display()))?;
        if !out.status.success() {
            failures.push(format!(
                "helm lint --strict {chart} -f {values} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The rendered documents of a `helm template` output.
fn documents(text: &str) -> Result<Vec<serde_json::Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let doc: serde_json::Value = serde::Deserialize::deserialize(de)?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The controller chart's config file carries every key the binary reads, and its RBAC
/// grants writes on exactly the configured types of `routingResources`, reads on every
/// configured type, and nothing the controller does not call (CRDs, core Events).
#[test]
fn controller_config_and_rbac_agree() -> Result<()> {
    let helm = helm();
    let mut checked = 0;
    for case in cases()?
        .into_iter()
        .filter(|c| c.name.starts_with("controller") && !c.dir.join("expected-error.txt").exists())
    {
        let out = case.template(&helm)?;
        assert!(
            out.status.success(),
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = documents(&String::from_utf8(out.stdout)?)?;
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .context("no ConfigMap")?;
        let config: serde_json::Value = serde_yaml::from_str(
            cm["data"]["config.yaml"]
                .as_str()
                .context("no config.yaml")?,
        )?;
        for key in [
            "resourceTypes",
            "defaultResync",
            "clusterScoped",
            "routemapVersions",
            "routingResources",
        ] {
            assert!(
                !config[key].is_null(),
                "{}: config.yaml lacks {key}:\n{config:#}",
                case.name
            );
        }
        let routing = strings(&config["routingResources"]);
        let types = config["resourceTypes"]
            .as_object()
            .cloned()
            .unwrap_or_default();

        let rules: Vec<&serde_json::Value> = docs
            .iter()
            .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
            .flat_map(|d| d["rules"].as_array().into_iter().flatten())
            .collect();
        let granted = |group: &str, resource: &str, verb: &str| {
            rules.iter().any(|r| {
                strings(&r["apiGroups"]).iter().any(|g| g == group)
                    && strings(&r["resources"]).iter().any(|x| x == resource)
                    && strings(&r["verbs"]).iter().any(|v| v == verb)
            })
        };
        for (short, t) in &types {
            let group = t["Group"].as_str().unwrap_or_default();
            let resource = t["Resource"].as_str().unwrap_or_default();
            for verb in ["list", "watch", "patch"] {
                assert!(
                    granted(group, resource, verb),
                    "{}: {short}: no {verb}",
                    case.name
                );
            }
            let writes = routing.iter().any(|r| r == resource);
            // ConfigMaps are read for routemaps and written for analysis states anyway.
            let verbs: &[&str] = if resource == "configmaps" {
                &[]
            } else {
                &["create", "get", "delete"]
            };
            for verb in verbs.iter().copied() {
                assert_eq!(
                    granted(group, resource, verb),
                    writes,
                    "{}: {short}: {verb} granted iff {resource} is in routingResources {routing:?}",
                    case.name
                );
            }
        }
        for r in &rules {
            let resources = strings(&r["resources"]);
            assert!(
                !resources.iter().any(|x| x == "customresourcedefinitions"),
                "{}: nothing reads CRDs: {r}",
                case.name
            );
            assert!(
                !(strings(&r["apiGroups"]).iter().any(|g| g.is_empty())
                    && resources.iter().any(|x| x == "events")),
                "{}: core Events are not used: {r}",
                case.name
            );
            assert!(
                !strings(&r["verbs"])
                    .iter()
                    .any(|v| v == "*" || v == "update")
                    || resources == ["leases"],
                "{}: only Leases are updated: {r}",
                case.name
            );
        }
        assert!(
            granted("events.k8s.io", "events", "create"),
            "{}",
            case.name
        );
        for verb in ["create", "patch", "delete"] {
            assert!(
                granted("", "configmaps", verb),
                "{}: analysis status ConfigMaps need {verb}",
                case.name
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} controller cases checked");
    Ok(())
}
