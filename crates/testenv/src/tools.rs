//! Where the pinned components live in the cache that `testenv/setup.sh` fills.
//! Reads `testenv/versions.env` at compile time, so the script and this crate cannot disagree.
//! Does file-system reads only.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const VERSIONS: &str = include_str!("../../../testenv/versions.env");

/// A pinned version from `testenv/versions.env`.
pub fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("testenv/versions.env has no {key}"))
}

/// The repository's root folder (this crate is `crates/testenv` in it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cache folder: `$ITER8RS_CACHE`, else `~/.cache/iter8rs`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ITER8RS_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/iter8rs")
}

/// The original Iter8 release chart (`charts/release` of `github.com/iter8-tools/iter8` at
/// `ITER8_ORIGINAL_VERSION`), which `testenv/setup.sh` copies out of the Go module cache.
/// Not part of [`Tools::locate`]: only the chart compatibility test needs it.
pub fn original_release_chart() -> Result<PathBuf> {
    let dir = cache_dir().join(format!(
        "iter8-release-chart-{}/release",
        version("ITER8_ORIGINAL_VERSION")
    ));
    if !dir.join("Chart.yaml").is_file() {
        bail!(
            "missing the original Iter8 release chart: {}; run testenv/setup.sh to fetch it",
            dir.display()
        );
    }
    Ok(dir)
}

/// First 16 hex digits of the SHA-256 of the files' bytes in order: the cache keys
/// `testenv/setup.sh` computes with `cat FILES | sha256sum | cut -c1-16`.
fn content_key(files: &[&str]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for f in files {
        let path = repo_root().join(f);
        h.update(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..16].to_string())
}

fn cached_file(component: &str, path: PathBuf) -> Result<PathBuf> {
    if !path.is_file() {
        bail!(
            "missing {component}: {}; run testenv/setup.sh to build it",
            path.display()
        );
    }
    Ok(path)
}

/// `abn-client`, the A/B/n client built on Iter8 v1.1's generated Go package
/// (testenv/tools/iter8-original/abnclient).
pub fn abn_go_client() -> Result<PathBuf> {
    let key = content_key(&[
        "testenv/tools/iter8-original/abnclient/main.go",
        "testenv/tools/iter8-original/go.mod",
        "testenv/tools/iter8-original/go.sum",
    ])?;
    cached_file(
        "abn-go-client",
        cache_dir().join(format!(
            "abn-go-client-{}-{key}/bin/abn-client",
            version("ITER8_ORIGINAL_VERSION")
        )),
    )
}

/// `abn-frontend`, the Python SDK sample of samples/abn-frontend with its venv.
pub fn abn_frontend() -> Result<PathBuf> {
    let key = content_key(&[
        "samples/abn-frontend/requirements.txt",
        "samples/abn-frontend/frontend.py",
        "crates/abn/proto/abn.proto",
    ])?;
    cached_file(
        "abn-py",
        cache_dir().join(format!("abn-py-{key}/bin/abn-frontend")),
    )
}

/// A major version of Helm: the charts are tested with Helm 4 ([`Tools::helm`], `HELM_VERSION`)
/// and Helm 3 (`HELM3_VERSION`), which Iter8 v1.1's users run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helm {
    V4,
    V3,
}

impl Helm {
    /// Both, Helm 4 first.
    pub const ALL: [Helm; 2] = [Helm::V4, Helm::V3];

    /// The pinned version, e.g. `v3.22.0`.
    pub fn version(self) -> &'static str {
        match self {
            Helm::V4 => version("HELM_VERSION"),
            Helm::V3 => version("HELM3_VERSION"),
        }
    }

    /// The cached binary, or an error naming how to build it.
    pub fn binary(self) -> Result<PathBuf> {
        // The component of testenv/setup.sh, which names its cache folder.
        let component = match self {
            Helm::V4 => "helm",
            Helm::V3 => "helm3",
        };
        cached_file(
            component,
            cache_dir().join(format!("{component}-{}/bin/helm", self.version())),
        )
    }
}

impl std::fmt::Display for Helm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Helm {}", self.version())
    }
}

/// The OCI registry (CNCF Distribution's `registry`, `REGISTRY_VERSION`); see [`crate::registry`].
pub fn registry() -> Result<PathBuf> {
    cached_file(
        "registry",
        cache_dir().join(format!(
            "registry-{}/bin/registry",
            version("REGISTRY_VERSION")
        )),
    )
}

/// kube-scheduler (`KUBERNETES_VERSION`), which binds pods to kwok's fake Node; see
/// [`crate::kwok`]. A component of its own in the cache (`kube-scheduler-VERSION`).
pub fn kube_scheduler() -> Result<PathBuf> {
    cached_file(
        "kube-scheduler",
        cache_dir().join(format!(
            "kube-scheduler-{}/bin/kube-scheduler",
            version("KUBERNETES_VERSION")
        )),
    )
}

/// The folder of kwok (`KWOK_VERSION`): `bin/kwok` and, in `stages/`, the stage files kwokctl
/// runs it with by default; see [`crate::kwok`].
pub fn kwok_dir() -> Result<PathBuf> {
    let dir = cache_dir().join(format!("kwok-{}", version("KWOK_VERSION")));
    cached_file("kwok", dir.join("bin/kwok"))?;
    Ok(dir)
}

/// The folder of the real KServe manager (`KSERVE_VERSION`): `bin/manager`, the CRDs it needs
/// besides InferenceService in `crds/`, and in `config/` its ConfigMap and the
/// ClusterServingRuntime kserve-mlserver as KServe ships them; see [`crate::kserve_manager`].
pub fn kserve_dir() -> Result<PathBuf> {
    let dir = cache_dir().join(format!("kserve-{}", version("KSERVE_VERSION")));
    cached_file("kserve", dir.join("bin/manager"))?;
    Ok(dir)
}

/// Paths of every component the control plane needs, checked to exist.
#[derive(Debug, Clone)]
pub struct Tools {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
    pub helm: PathBuf,
    /// Folder holding the CRD YAML files of KServe, Istio and the Gateway API.
    pub crds: PathBuf,
}

impl Tools {
    /// Finds the cached components, or names the missing ones and how to build them.
    pub fn locate() -> Result<Tools> {
        let cache = cache_dir();
        let kube = cache.join(format!("kubernetes-{}", version("KUBERNETES_VERSION")));
        let crds = cache.join(format!(
            "crds-kserve-{}-istio-{}-gwapi-{}",
            version("KSERVE_VERSION"),
            version("ISTIO_API_VERSION"),
            version("GATEWAY_API_VERSION")
        ));
        let tools = Tools {
            kube_apiserver: kube.join("bin/kube-apiserver"),
            kube_controller_manager: kube.join("bin/kube-controller-manager"),
            kubectl: kube.join("bin/kubectl"),
            etcd: cache.join(format!("etcd-{}/bin/etcd", version("ETCD_VERSION"))),
            helm: cache.join(format!("helm-{}/bin/helm", version("HELM_VERSION"))),
            crds,
        };
        let missing: Vec<String> = [
            &tools.kube_apiserver,
            &tools.kube_controller_manager,
            &tools.kubectl,
            &tools.etcd,
            &tools.helm,
            &tools.crds,
        ]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
        if !missing.is_empty() {
            bail!(
                "missing control-plane components: {}; run testenv/setup.sh to build them",
                missing.join(", ")
            );
        }
        Ok(tools)
    }

    /// Every CRD file, in a fixed order.
    pub fn crd_files(&self) -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.crds)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        Ok(files)
    }
}
