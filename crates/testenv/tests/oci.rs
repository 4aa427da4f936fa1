//! The charts as users get them: `helm package`d, pushed to a real OCI registry (CNCF
//! Distribution, built by `testenv/setup.sh`, on 127.0.0.1 without TLS or authentication) and
//! installed from `oci://127.0.0.1:PORT/charts/<chart> --version <version> --plain-http` into
//! the shared control plane. Once with Helm 4 and once with Helm 3, each with a registry of its
//! own, each checking that
//! - `helm package` makes `<chart>-<version>.tgz` of all three charts (release, controller,
//!   iter8) and `helm push` puts it in the registry under the chart's version;
//! - `helm show chart` from the registry gives the chart's name, version and appVersion, and
//!   `helm template` from the registry renders exactly what the chart folder renders;
//! - the controller chart (with its Grafana dashboards, files the package must carry) and the
//!   tutorial's step 1 installed from the registry make the same objects (routemap ConfigMap,
//!   InferenceService, the controller's ConfigMap, RBAC and Deployment, ...) as the same
//!   installs from the chart folders in another namespace, and Helm records the same chart.
//!
//! Runs Helm, the registry and a control plane; waits only for the registry to be ready.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use kube::api::{Api, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::Value;
use testenv::{fixtures, ControlPlane, Helm, Registry};

/// The charts users install, by folder under `charts/`.
const CHARTS: [&str; 3] = ["release", "controller", "iter8"];

/// Step 1 of the tutorial, verbatim.
const STEP1: &str = include_str!("../../../testdata/charts/tutorial-step1/values.yaml");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `charts/<chart>/Chart.yaml`.
fn chart_yaml(chart: &str) -> Result<Value> {
    let path = repo_root().join(format!("charts/{chart}/Chart.yaml"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_yaml::from_str(&text)?)
}

fn chart_version(chart: &str) -> Result<String> {
    chart_yaml(chart)?["version"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("charts/{chart}/Chart.yaml has no version"))
}

/// Helm without a cluster, from the repository's root, its configuration, cache and data in
/// `home` (no login, no repositories: nothing of the machine's own Helm set-up is used).
struct LocalHelm {
    version: Helm,
    binary: PathBuf,
    home: PathBuf,
}

impl LocalHelm {
    fn output(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(&self.binary)
            .current_dir(repo_root())
            .args(args)
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .output()
            .with_context(|| format!("running {}", self.binary.display()))
    }

    /// Standard output and standard error (`helm push` reports on the latter).
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("helm {} failed ({}):\n{text}", args.join(" "), self.version);
        }
        Ok(text)
    }

    /// Standard output only.
    fn stdout(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "helm {} failed ({}):\n{}",
                args.join(" "),
                self.version,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// Packages and pushes every chart; checks the registry holds each under its version.
fn package_and_push(helm: &LocalHelm, registry: &Registry, dir: &Path) -> Result<()> {
    let dest = dir.display().to_string();
    for chart in CHARTS {
        let version = chart_version(chart)?;
        let out = helm.run(&[
            "package",
            &format!("charts/{chart}"),
            "--destination",
            &dest,
        ])?;
        let tgz = dir.join(format!("{chart}-{version}.tgz"));
        assert!(
            tgz.is_file(),
            "{}: helm package made no {}:\n{out}",
            helm.version,
            tgz.display()
        );
        let out = helm.run(&[
            "push",
            &tgz.display().to_string(),
            &registry.oci("charts"),
            "--plain-http",
        ])?;
        let pushed = format!("{}/charts/{chart}:{version}", registry.address());
        assert!(
            out.contains(&format!("Pushed: {pushed}")) && out.contains("Digest: sha256:"),
            "{}: helm push did not report {pushed}:\n{out}",
            helm.version
        );
        let tags = registry.tags(&format!("charts/{chart}"))?;
        assert_eq!(
            tags,
            std::slice::from_ref(&version),
            "{}: tags of charts/{chart}",
            helm.version
        );
    }
    Ok(())
}

/// `helm show chart` and `helm template` from the registry agree with the chart folders.
fn pulled_charts_match_folders(helm: &LocalHelm, registry: &Registry) -> Result<()> {
    for (chart, release, ns, values) in [
        ("release", "wisdom", "default", "tutorial-step1"),
        ("controller", "iter8", "iter8-system", "controller-all-keys"),
        ("iter8", "wisdom-test", "default", "test-http"),
    ] {
        let version = chart_version(chart)?;
        let oci = registry.oci(&format!("charts/{chart}"));
        let shown: Value = serde_yaml::from_str(&helm.stdout(&[
            "show",
            "chart",
            &oci,
            "--version",
            &version,
            "--plain-http",
        ])?)?;
        let local = chart_yaml(chart)?;
        for key in ["apiVersion", "name", "version", "appVersion", "description"] {
            assert_eq!(
                shown[key], local[key],
                "{}: {key} of {oci} --version {version}",
                helm.version
            );
        }
        let values = format!("testdata/charts/{values}/values.yaml");
        let from_registry = helm.stdout(&[
            "template",
            release,
            &oci,
            "--version",
            &version,
            "--plain-http",
            "--namespace",
            ns,
            "--values",
            &values,
        ])?;
        let from_folder = helm.stdout(&[
            "template",
            release,
            &format!("charts/{chart}"),
            "--namespace",
            ns,
            "--values",
            &values,
        ])?;
        assert!(
            from_registry == from_folder,
            "{}: helm template of {oci} differs from charts/{chart} with {values}",
            helm.version
        );
    }
    Ok(())
}

/// Installs the controller chart (release `iter8`, with its Grafana dashboards) and the
/// tutorial's step 1 (release `wisdom`) into `ns`, from `source(chart)` with `extra` flags.
fn install(
    cp: &ControlPlane,
    helm: Helm,
    ns: &str,
    source: &dyn Fn(&str) -> String,
    extra: &[&str],
) -> Result<()> {
    let controller = source("controller");
    let mut args = vec![
        "install",
        "iter8",
        &controller,
        "--set",
        "grafana.dashboards=true",
    ];
    args.extend(extra);
    cp.helm_with(helm, ns, &args, None)?;
    let release = source("release");
    let mut args = vec!["upgrade", "--install", "wisdom", &release, "-f", "-"];
    args.extend(extra);
    cp.helm_with(helm, ns, &args, Some(STEP1))?;
    Ok(())
}

/// `(apiVersion, kind, name)` of every object of release `release` in `ns`, from its manifest.
fn release_objects(
    cp: &ControlPlane,
    helm: Helm,
    ns: &str,
    release: &str,
) -> Result<BTreeSet<(String, String, String)>> {
    let manifest = cp.helm_with(helm, ns, &["get", "manifest", release], None)?;
    fixtures::documents(&manifest)?
        .iter()
        .map(|d| {
            let field = |k: &str| -> Result<String> {
                d.pointer(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .with_context(|| format!("no {k} in {d}"))
            };
            Ok((
                field("/apiVersion")?,
                field("/kind")?,
                field("/metadata/name")?,
            ))
        })
        .collect()
}

/// An object as installed, without what the API server or controllers add or allocate
/// (identity, times, status, a Service's cluster IP) and with its namespace's name replaced
/// by `NAMESPACE`.
async fn installed(
    client: &Client,
    (api_version, kind, name): &(String, String, String),
    ns: &str,
) -> Result<Value> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {api_version} {kind}"))?;
    let obj = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .get(name)
        .await
        .with_context(|| format!("getting {kind} {ns}/{name}"))?;
    let mut v = serde_json::to_value(&obj)?;
    let map = v.as_object_mut().context("not an object")?;
    map.remove("status");
    let meta = map
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .context("no metadata")?;
    for key in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ] {
        meta.remove(key);
    }
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("deployment.kubernetes.io/revision");
    }
    // Addresses the API server allocates to a Service.
    if let Some(spec) = map.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    Ok(serde_json::from_str(
        &serde_json::to_string(&v)?.replace(ns, "NAMESPACE"),
    )?)
}

/// `(name, chart, app_version, status)` of the releases in `ns`.
fn releases(cp: &ControlPlane, helm: Helm, ns: &str) -> Result<Vec<[String; 4]>> {
    let list: Value =
        serde_json::from_str(&cp.helm_with(helm, ns, &["list", "-o", "json"], None)?)?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            ["name", "chart", "app_version", "status"]
                .map(|k| r[k].as_str().unwrap_or_default().to_string())
        })
        .collect())
}

async fn charts_install_from_the_registry(version: Helm) -> Result<()> {
    let binary = version.binary()?;
    let work = tempfile::Builder::new().prefix("oci-charts-").tempdir()?;
    let helm = LocalHelm {
        version,
        binary,
        home: work.path().join("helm"),
    };
    let registry = Registry::start()?;
    let packages = work.path().join("packages");
    std::fs::create_dir_all(&packages)?;
    package_and_push(&helm, &registry, &packages)
        .with_context(|| format!("registry log {}", registry.log_path().display()))?;
    pulled_charts_match_folders(&helm, &registry)?;

    let cp = testenv::shared()?;
    let client = cp.client().await?;
    let tag = match version {
        Helm::V4 => "helm4",
        Helm::V3 => "helm3",
    };
    let from_registry = cp.namespace(&format!("oci-registry-{tag}")).await?;
    let from_folder = cp.namespace(&format!("oci-folder-{tag}")).await?;
    let chart_version = chart_version("release")?;
    assert_eq!(chart_version, self::chart_version("controller")?);
    install(
        cp,
        version,
        &from_registry,
        &|chart| registry.oci(&format!("charts/{chart}")),
        &["--version", &chart_version, "--plain-http"],
    )?;
    install(
        cp,
        version,
        &from_folder,
        &|chart| format!("charts/{chart}"),
        &[],
    )?;

    // Helm recorded the same charts.
    let listed = releases(cp, version, &from_registry)?;
    assert_eq!(listed, releases(cp, version, &from_folder)?);
    assert_eq!(
        listed,
        [
            ["iter8", "controller", "v1.1", "deployed"],
            ["wisdom", "release", "v1.1", "deployed"],
        ]
        .map(|[n, c, a, s]| [
            n.to_string(),
            format!("{c}-{chart_version}"),
            a.to_string(),
            s.to_string()
        ])
    );

    // The same objects, and the same in every field that the install decided.
    for release in ["iter8", "wisdom"] {
        let objects = release_objects(cp, version, &from_registry, release)?;
        assert_eq!(
            objects,
            release_objects(cp, version, &from_folder, release)?,
            "{version}: objects of release {release}"
        );
        for obj in &objects {
            let a = installed(&client, obj, &from_registry).await?;
            let b = installed(&client, obj, &from_folder).await?;
            assert_eq!(
                a, b,
                "{version}: {obj:?} from the registry and from the folder"
            );
        }
        let kinds: BTreeSet<(&str, &str)> = objects
            .iter()
            .map(|(_, k, n)| (k.as_str(), n.as_str()))
            .collect();
        let expected: &[(&str, &str)] = if release == "wisdom" {
            &[
                ("ConfigMap", "wisdom-routemap"),
                ("InferenceService", "wisdom-0"),
                ("Service", "wisdom"),
            ]
        } else {
            &[
                ("ConfigMap", "iter8"),
                ("ConfigMap", "iter8-grafana-dashboards"),
                ("Deployment", "iter8"),
            ]
        };
        for e in expected {
            assert!(
                kinds.contains(e),
                "{version}: release {release} lacks {e:?}: {kinds:?}"
            );
        }
    }
    // The routemap and the InferenceService are the tutorial's: as the golden output of step 1
    // (rendered in namespace `default`) has them.
    let golden =
        std::fs::read_to_string(repo_root().join("testdata/charts/tutorial-step1/expected.yaml"))?;
    let as_in_default = |v: &Value| -> Result<Value> {
        Ok(serde_json::from_str(
            &serde_json::to_string(v)?.replace("NAMESPACE", "default"),
        )?)
    };
    let routemap = installed(
        &client,
        &("v1".into(), "ConfigMap".into(), "wisdom-routemap".into()),
        &from_registry,
    )
    .await?;
    assert_eq!(
        routemap["metadata"]["labels"]["iter8.tools/kind"],
        "routemap"
    );
    let expected = fixtures::chart_object(&golden, "ConfigMap", "wisdom-routemap")?;
    assert_eq!(
        as_in_default(&routemap["data"])?,
        expected["data"],
        "{version}"
    );
    let isvc = installed(
        &client,
        &(
            "serving.kserve.io/v1beta1".into(),
            "InferenceService".into(),
            "wisdom-0".into(),
        ),
        &from_registry,
    )
    .await?;
    assert_eq!(isvc["metadata"]["labels"]["iter8.tools/watch"], "true");
    let expected = fixtures::chart_object(&golden, "InferenceService", "wisdom-0")?;
    assert_eq!(as_in_default(&isvc["spec"])?, expected["spec"], "{version}");
    // The package carries the chart's files: the three dashboards of charts/controller/grafana.
    let dashboards = installed(
        &client,
        &(
            "v1".into(),
            "ConfigMap".into(),
            "iter8-grafana-dashboards".into(),
        ),
        &from_registry,
    )
    .await?;
    let keys: Vec<&String> = dashboards["data"]
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        ["iter8-abn.json", "iter8-grpc.json", "iter8-http.json"],
        "{version}"
    );

    for ns in [&from_registry, &from_folder] {
        cp.helm_with(version, ns, &["uninstall", "wisdom", "iter8"], None)?;
        assert!(releases(cp, version, ns)?.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn charts_install_from_an_oci_registry_with_helm4() -> Result<()> {
    charts_install_from_the_registry(Helm::V4).await
}

#[tokio::test]
async fn charts_install_from_an_oci_registry_with_helm3() -> Result<()> {
    charts_install_from_the_registry(Helm::V3).await
}
