//! Golden tests of the Helm charts in `charts/`, run with both pinned Helm binaries: Helm 4
//! (`HELM_VERSION`) and Helm 3 (`HELM3_VERSION`, what Iter8 v1.1's users run). Every case must
//! give the same result with both.
//!
//! Each folder `testdata/charts/<case>/` holds a `values.yaml` and either
//! - `expected.yaml`: the exact `helm template` output of Helm 4; Helm 3's must be exactly
//!   [`as_helm3_prints`] of it (the same objects, byte for byte, but Helm 3 trims the trailing
//!   whitespace of every rendered document where Helm 4 keeps it: a blank line before each
//!   `---`; Helm's own formatting, not the chart's), or
//! - `expected-error.txt`: a substring the error of `helm template` must contain (with both;
//!   an `expected-error-helm3.txt` beside it would replace it for Helm 3, where Helm 3 words an
//!   error differently: no case needs one today).
//!
//! Cases named `controller*` render `charts/controller` as release `iter8` in namespace
//! `iter8-system`; cases named `test-*` render the test chart `charts/iter8` as release
//! `wisdom-test` in `default`; all others render `charts/release` as release `wisdom` in namespace
//! `default` (the seed tutorial's names). `UPDATE_GOLDEN=1` rewrites the `expected.yaml` files
//! from Helm 4's output instead of comparing (Helm 3's is still compared with it); read the diff
//! before committing it, the files are the contract.
//!
//! Runs processes only (Helm, no cluster); no sleeps.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use testenv::Helm;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Both pinned Helm binaries, Helm 4 first; a missing one fails the test with the reason.
fn helms() -> Vec<(Helm, PathBuf)> {
    Helm::ALL
        .iter()
        .map(|&h| match h.binary() {
            Ok(path) => (h, path),
            Err(e) => panic!("cannot run the chart tests with {h}: {e:#}"),
        })
        .collect()
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

/// Helm 4's `helm template` output as Helm 3 prints it. Helm 3 (`releaseutil.SplitManifests`)
/// trims every rendered document with `strings.TrimSpace` before printing it followed by one
/// newline; Helm 4 trims only leading whitespace, so a template ending in a newline leaves a
/// blank line before the next `---`. Whitespace-only lines before a `---` line and at the
/// end go; nothing else changes.
fn as_helm3_prints(helm4: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    let trim = |lines: &mut Vec<&str>| {
        while lines.last().is_some_and(|l| l.trim().is_empty()) {
            lines.pop();
        }
    };
    for line in helm4.lines() {
        if line == "---" {
            trim(&mut lines);
        }
        lines.push(line);
    }
    trim(&mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[test]
fn helm3_form_drops_only_the_blank_lines_ending_documents() {
    let helm4 = "---\n# Source: a.yaml\nkind: A\ndata:\n  x: |\n    y\n\n    z\n\n---\n# Source: b.yaml\nkind: B\n\n";
    let helm3 = "---\n# Source: a.yaml\nkind: A\ndata:\n  x: |\n    y\n\n    z\n---\n# Source: b.yaml\nkind: B\n";
    assert_eq!(as_helm3_prints(helm4), helm3);
    assert_eq!(as_helm3_prints(helm3), helm3);
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
    let helms = helms();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut checked = [0; 2];
    for case in cases()?
        .into_iter()
        .filter(|c| !c.dir.join("expected-error.txt").exists())
    {
        // Helm 4 first: with UPDATE_GOLDEN=1 it writes the file Helm 3 is then compared with.
        for (i, (version, helm)) in helms.iter().enumerate() {
            let out = case.template(helm)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                failures.push(format!(
                    "{} ({version}): helm template failed: {stderr}",
                    case.name
                ));
                continue;
            }
            let actual = String::from_utf8(out.stdout).context("helm output is not UTF-8")?;
            let expected_path = case.dir.join("expected.yaml");
            if update && *version == Helm::V4 {
                std::fs::write(&expected_path, &actual)
                    .with_context(|| format!("writing {}", expected_path.display()))?;
                continue;
            }
            let mut expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if *version == Helm::V3 {
                expected = as_helm3_prints(&expected);
            }
            checked[i] += 1;
            if expected != actual {
                failures.push(format!(
                    "{} ({version}): output differs from {} (UPDATE_GOLDEN=1 rewrites it from \
                     Helm 4's)\n{}",
                    case.name,
                    expected_path.display(),
                    describe_mismatch(&expected, &actual)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(update || checked[0] > 0, "no golden cases were checked");
    assert!(checked[1] > 0, "no golden cases were checked with Helm 3");
    Ok(())
}

#[test]
fn bad_values_fail_with_a_clear_message() -> Result<()> {
    let helms = helms();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases()? {
        let Ok(expected) = std::fs::read_to_string(case.dir.join("expected-error.txt")) else {
            continue;
        };
        for (version, helm) in &helms {
            // Helm 3's own wording, where it differs (see the module's documentation).
            let expected = match version {
                Helm::V3 => std::fs::read_to_string(case.dir.join("expected-error-helm3.txt"))
                    .unwrap_or_else(|_| expected.clone()),
                Helm::V4 => expected.clone(),
            };
            let expected = expected.trim();
            let out = case.template(helm)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            checked += 1;
            if out.status.success() {
                failures.push(format!(
                    "{} ({version}): helm template succeeded, expected an error",
                    case.name
                ));
            } else if !stderr.contains(expected) {
                failures.push(format!(
                    "{} ({version}): error does not contain {expected:?}:\n{stderr}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 0, "no bad-values cases were checked");
    Ok(())
}

#[test]
fn charts_pass_strict_lint() -> Result<()> {
    let helms = helms();
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
        for (version, helm) in &helms {
            let out = Command::new(helm)
                .current_dir(&root)
                .args(["lint", "--strict", chart, "--values", values])
                .output()
                .with_context(|| format!("failed to run {}", helm.display()))?;
            if !out.status.success() {
                failures.push(format!(
                    "helm lint --strict {chart} -f {values} failed ({version}):\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
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
    // What Helm renders is the same with both (charts_render_as_expected): Helm 4 suffices.
    let helm = Helm::V4.binary()?;
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
