//! A real Kubernetes control plane for tests, the demo and the benchmarks: etcd and
//! kube-apiserver (RBAC on) on free loopback ports with temporary data and certificates,
//! optionally kube-controller-manager with the garbage collector, and the CRDs of KServe,
//! Istio and the Gateway API. Everything stops when the [`ControlPlane`] is dropped.
//!
//! Binaries come from the cache `testenv/setup.sh` fills; see [`tools`].
//!
//! With [`Options::workload_controllers`], [`kwok`] (simulated pods on a fake Node, scheduled
//! by the real kube-scheduler) and [`kserve_manager`] (the real KServe manager in Standard
//! mode), an InferenceService gets its real Deployment, pods, Service and status.
//!
//! The helpers every test and the benchmark share live here too, once: [`fixtures`] (kinds,
//! objects, CRDs), [`objects`] (apply, get, wait, status writes), [`kserve`] and
//! [`workloads`] (status as KServe and kube-controller-manager write it), [`routes`] (what a
//! routing object routes to), [`http`] (a small GET client), [`metrics`] (what an
//! out-of-process controller's `/metrics` says) and [`container`] (the controller's image,
//! built with podman and run as its chart's pod would run it, in-cluster configuration).

pub mod container;
pub mod dataplane;
pub mod events;
pub mod fixtures;
pub mod http;
pub mod kserve;
pub mod kserve_manager;
pub mod kwok;
pub mod metrics;
pub mod netns;
pub mod objects;
pub mod pki;
pub mod pods;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod registry;
pub mod routes;
pub mod tools;
pub mod workloads;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use process::Process;
pub use prometheus::Prometheus;
pub use registry::Registry;
pub use tools::{Helm, Tools};

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also run kube-controller-manager with the garbage collector and namespace controller.
    pub controller_manager: bool,
    /// With the controller-manager, also run the deployment, replicaset and endpointslice
    /// controllers: what Deployments need to get pods and Services endpoints (pods then run
    /// on kwok's fake Node, see [`kwok`]). Off in tests that write Deployment status
    /// themselves: with no kubelet, the real deployment controller would overwrite it.
    pub workload_controllers: bool,
    /// Port for kube-apiserver; a free one when `None`.
    pub apiserver_port: Option<u16>,
    /// Skip installing the CRDs.
    pub skip_crds: bool,
}

/// A running etcd + kube-apiserver (+ kube-controller-manager).
pub struct ControlPlane {
    // Field order is drop order: processes stop before their data folder goes away.
    controller_manager: Option<Process>,
    apiserver: Process,
    etcd: Process,
    pki: pki::Pki,
    admin_kubeconfig: String,
    kubeconfig_path: PathBuf,
    port: u16,
    etcd_port: u16,
    etcd_data: PathBuf,
    tools: Tools,
    dir: tempfile::TempDir,
    /// Removes `dir` when the test process ends (the shared control plane is never dropped).
    _cleanup: Option<std::process::Child>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl ControlPlane {
    /// Starts a control plane and waits until it serves and the CRDs are established.
    pub async fn start(opts: Options) -> Result<ControlPlane> {
        let tools = Tools::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("testenv-")
            .tempdir()
            .context("creating the control plane's temporary folder")?;
        let pki = pki::Pki::write(dir.path())?;

        let etcd_port = process::free_port()?;
        let etcd_data = dir.path().join("etcd");
        // Installing the CRDs makes the API server build handlers and OpenAPI for 22 large
        // schemas, tens of seconds on 2 cores. Start instead from a copy of etcd's data as it
        // was once the CRDs were installed, cached per version set.
        let snapshot = (!opts.skip_crds).then(|| crd_snapshot_dir(&tools));
        let from_snapshot = match &snapshot {
            Some(snap) if snap.join(".complete").exists() => {
                copy_dir(snap, &etcd_data).context("copying the cached etcd data")?;
                true
            }
            _ => false,
        };
        let etcd = start_etcd(&tools, etcd_port, &etcd_data, dir.path())?;

        let port = match opts.apiserver_port {
            Some(p) => {
                process::ensure_free(p, "kube-apiserver")?;
                p
            }
            None => process::free_port()?,
        };
        let apiserver = start_apiserver(&tools, &pki, port, etcd_port, dir.path())?;
        let admin = pki.client_cert("testenv-admin", Some("system:masters"))?;
        let admin_kubeconfig = kubeconfig_yaml(
            port,
            &pki.serving_ca_pem,
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&admin.cert_pem),
                b64(&admin.key_pem)
            ),
        );
        let kubeconfig_path = dir.path().join("admin.kubeconfig");
        std::fs::write(&kubeconfig_path, &admin_kubeconfig)?;

        let mut cp = ControlPlane {
            controller_manager: None,
            apiserver,
            etcd,
            pki,
            admin_kubeconfig,
            kubeconfig_path,
            port,
            etcd_port,
            etcd_data,
            tools,
            _cleanup: process::remove_on_exit(dir.path()),
            dir,
        };
        cp.wait_ready().await?;
        if !opts.skip_crds {
            // From a snapshot the CRDs are there: only wait until each is established.
            let files = cp.tools.crd_files()?;
            cp.ensure_crds(&files, !from_snapshot).await?;
            if let (Some(snap), false) = (&snapshot, from_snapshot) {
                cp.save_snapshot(snap).await?;
            }
        }
        if opts.controller_manager {
            cp.start_controller_manager(opts.workload_controllers)?;
        }
        Ok(cp)
    }

    /// Stops etcd cleanly, keeps a copy of its data in the cache, and starts it again.
    async fn save_snapshot(&mut self, snap: &Path) -> Result<()> {
        self.apiserver.stop(Duration::from_secs(10));
        self.etcd.stop(Duration::from_secs(10));
        let tmp = snap.with_extension(format!("tmp.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        copy_dir(&self.etcd_data, &tmp).context("saving the etcd data to the cache")?;
        std::fs::write(tmp.join(".complete"), "")?;
        // Another process may have saved one meanwhile; either copy is as good.
        if std::fs::rename(&tmp, snap).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        self.etcd = start_etcd(
            &self.tools,
            self.etcd_port,
            &self.etcd_data,
            self.dir.path(),
        )?;
        self.apiserver = start_apiserver(
            &self.tools,
            &self.pki,
            self.port,
            self.etcd_port,
            self.dir.path(),
        )?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.etcd.check_running()?;
            self.apiserver.check_running()?;
            let req = http_get("/readyz")?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => break,
                _ if Instant::now() > deadline => bail!(
                    "kube-apiserver on 127.0.0.1:{} not ready after {:?}; last lines of {}:\n{}",
                    self.port,
                    READY_TIMEOUT,
                    self.apiserver.log_path().display(),
                    self.apiserver.log_tail(25)
                ),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // RBAC bootstrap roles (cluster-admin, system:*) are created shortly after readyz on
        // some versions; wait for the default namespace's ServiceAccount-free basics instead.
        let ns: Api<Namespace> = Api::all(client);
        while ns.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!("namespace default never appeared");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn start_controller_manager(&mut self, workload_controllers: bool) -> Result<()> {
        let mut controllers = "garbage-collector-controller,namespace-controller".to_string();
        if workload_controllers {
            controllers
                .push_str(",deployment-controller,replicaset-controller,endpointslice-controller");
        }
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig_path.display()),
            format!("--controllers={controllers}"),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=false".into(),
            "--secure-port=0".into(),
        ];
        self.controller_manager = Some(Process::start(
            "kube-controller-manager",
            &self.tools.kube_controller_manager,
            &args,
            self.dir.path(),
        )?);
        Ok(())
    }

    /// Installs CRD files with server-side apply and waits until each is established.
    pub async fn install_crds(&self, files: &[PathBuf]) -> Result<()> {
        self.ensure_crds(files, true).await
    }

    /// Applies (if `apply`) the CRDs in `files` and waits until each is established.
    async fn ensure_crds(&self, files: &[PathBuf], apply: bool) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let mut crds = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading CRD file {}", file.display()))?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value: serde_json::Value = serde::Deserialize::deserialize(doc)
                    .with_context(|| format!("CRD file {} is not valid YAML", file.display()))?;
                if value.is_null() {
                    continue;
                }
                let crd: CustomResourceDefinition = serde_json::from_value(value)
                    .with_context(|| format!("CRD file {} holds a non-CRD", file.display()))?;
                crds.push((file.clone(), crd));
            }
        }
        // Applied and awaited concurrently: the API server builds each CRD's handlers and
        // OpenAPI on its own, so this takes as long as the slowest, not the sum.
        let install = crds.iter().map(|(file, crd)| {
            let api = api.clone();
            async move {
                let name = crd.metadata.name.clone().unwrap_or_default();
                if apply {
                    let pp = PatchParams::apply("testenv").force();
                    api.patch(&name, &pp, &Patch::Apply(crd))
                        .await
                        .with_context(|| {
                            format!("applying CRD {name} from {} failed", file.display())
                        })?;
                }
                let deadline = Instant::now() + READY_TIMEOUT;
                loop {
                    let crd = api.get(&name).await.with_context(|| {
                        format!("CRD {name} from {} is not installed", file.display())
                    })?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if established {
                        return Ok::<(), anyhow::Error>(());
                    }
                    if Instant::now() > deadline {
                        bail!("CRD {name} not established after {READY_TIMEOUT:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        futures::future::try_join_all(install).await?;
        Ok(())
    }

    /// An admin client (group system:masters).
    pub async fn client(&self) -> Result<Client> {
        client_from_yaml(&self.admin_kubeconfig).await
    }

    /// The admin kubeconfig as YAML.
    pub fn kubeconfig(&self) -> &str {
        &self.admin_kubeconfig
    }

    /// Path of a file holding the admin kubeconfig (lives as long as the control plane).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Runs the pinned Helm as admin against this control plane, in `namespace`, from the
    /// repository's root (so `charts/release` names the chart), with `stdin` piped in; returns
    /// what it printed, or fails with all of it. Never pass `--wait`: no pod runs here.
    pub fn helm(&self, namespace: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        self.helm_with(Helm::V4, namespace, args, stdin)
    }

    /// Like [`ControlPlane::helm`], with Helm 3 (`HELM3_VERSION`).
    pub fn helm3(&self, namespace: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        self.helm_with(Helm::V3, namespace, args, stdin)
    }

    /// Like [`ControlPlane::helm`], with the pinned Helm of major version `helm`.
    pub fn helm_with(
        &self,
        helm: Helm,
        namespace: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String> {
        let binary = match helm {
            Helm::V4 => self.tools.helm.clone(),
            Helm::V3 => helm.binary()?,
        };
        let mut child = Command::new(&binary)
            .current_dir(tools::repo_root())
            .args(args)
            .arg("--namespace")
            .arg(namespace)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", binary.display()))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .context("writing helm's standard input")?;
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "helm {} -n {namespace} failed ({helm}):\n{stdout}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The pinned tools this control plane runs with (helm, kubectl, ...).
    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// A temporary folder that lives as long as the control plane.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines of kube-controller-manager's log ("" when it does not run), for a
    /// failing test's message.
    pub fn controller_manager_log_tail(&self, n: usize) -> String {
        self.controller_manager
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    /// PIDs of the running components, for tests that check nothing is left behind.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.etcd.pid(), self.apiserver.pid()];
        pids.extend(self.controller_manager.as_ref().map(Process::pid));
        pids
    }

    /// A kubeconfig authenticating with a client certificate as `user` (no groups beyond
    /// system:authenticated): for RBAC tests.
    pub fn user_kubeconfig(&self, user: &str) -> Result<String> {
        let cert = self.pki.client_cert(user, None)?;
        Ok(kubeconfig_yaml(
            self.port,
            &self.pki.serving_ca_pem,
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&cert.cert_pem),
                b64(&cert.key_pem)
            ),
        ))
    }

    /// A kubeconfig with a real token of ServiceAccount `namespace/name` (created if missing),
    /// obtained through the TokenRequest API, valid for `ttl`.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String> {
        let token = self.service_account_token(namespace, name, ttl).await?;
        Ok(kubeconfig_yaml(
            self.port,
            &self.pki.serving_ca_pem,
            &format!("token: {token}"),
        ))
    }

    /// The PEM of the CA that signed the API server's serving certificate (valid for
    /// 127.0.0.1): what a pod finds in its ServiceAccount's `ca.crt`.
    pub fn ca_pem(&self) -> &str {
        &self.pki.serving_ca_pem
    }

    /// The API server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A real token of ServiceAccount `namespace/name` (created if missing), obtained through
    /// the TokenRequest API, valid for `ttl`: what Kubernetes mounts into a pod.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String> {
        let client = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        if sas.get_opt(name).await?.is_none() {
            let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": namespace}
            }))?;
            sas.create(&PostParams::default(), &sa).await?;
        }
        let req = k8s_openapi::api::authentication::v1::TokenRequest {
            spec: k8s_openapi::api::authentication::v1::TokenRequestSpec {
                expiration_seconds: Some(ttl.as_secs() as i64),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?
            .status
            .ok_or_else(|| anyhow!("TokenRequest for {namespace}/{name} returned no status"))?
            .token;
        Ok(token)
    }

    /// Creates a namespace with a unique name starting with `prefix`.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(self.client().await?)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Stops kube-apiserver (etcd keeps its data), for outage tests.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop(Duration::from_secs(10));
    }

    /// Starts kube-apiserver again on the same port and waits until it is ready.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.apiserver.stop(Duration::from_secs(10));
        self.apiserver = start_apiserver(
            &self.tools,
            &self.pki,
            self.port,
            self.etcd_port,
            self.dir.path(),
        )?;
        self.wait_ready().await
    }

    /// Where etcd keeps its data.
    pub fn etcd_data_dir(&self) -> &Path {
        &self.etcd_data
    }
}

/// One control plane shared by every test of a test binary, started on first use, with the
/// garbage collector but no workload controllers (tests write status, as KServe would).
/// Each call gets the same processes; use [`ControlPlane::namespace`] for isolation.
/// The processes end with the test binary (see [`process`]'s watchdog).
pub fn shared() -> Result<&'static ControlPlane> {
    static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
    shared_in(&SHARED, true)
}

/// Like [`shared`], but without kube-controller-manager: no garbage collector removes what
/// the controller under test should remove itself.
pub fn shared_without_gc() -> Result<&'static ControlPlane> {
    static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
    shared_in(&SHARED, false)
}

fn shared_in(
    cell: &'static OnceLock<std::result::Result<ControlPlane, String>>,
    controller_manager: bool,
) -> Result<&'static ControlPlane> {
    cell.get_or_init(|| {
        // Start on a runtime of our own: tests each have theirs, and they come and go.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(ControlPlane::start(Options {
                controller_manager,
                ..Options::default()
            }))
            .map_err(|e| format!("{e:#}"))
        })
        .join()
        .unwrap_or_else(|_| Err("control plane start-up panicked".into()))
    })
    .as_ref()
    .map_err(|e| anyhow!("starting the shared control plane failed: {e}"))
}

/// Where the etcd data with the CRDs installed is cached, keyed by every version it depends on.
fn crd_snapshot_dir(tools: &Tools) -> PathBuf {
    let crds = tools
        .crds
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tools::cache_dir().join(format!(
        // Bump the leading number when what start() writes into etcd changes.
        "etcd-data-1-{}-{}-{crds}",
        tools::version("KUBERNETES_VERSION"),
        tools::version("ETCD_VERSION")
    ))
}

/// Copies a folder tree (etcd's data: a few files, no links).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != ".complete" {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn start_etcd(tools: &Tools, port: u16, data: &Path, log_dir: &Path) -> Result<Process> {
    let peer = process::free_port()?;
    let args = vec![
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls=http://127.0.0.1:{port}"),
        format!("--advertise-client-urls=http://127.0.0.1:{port}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
        "--quota-backend-bytes=8589934592".into(),
    ];
    Process::start("etcd", &tools.etcd, &args, log_dir)
}

fn start_apiserver(
    tools: &Tools,
    pki: &pki::Pki,
    port: u16,
    etcd_port: u16,
    dir: &Path,
) -> Result<Process> {
    let args = vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        format!("--cert-dir={}", dir.join("apiserver-certs").display()),
        format!("--tls-cert-file={}", pki.serving_cert.display()),
        format!("--tls-private-key-file={}", pki.serving_key.display()),
        format!("--secure-port={port}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        "--endpoint-reconciler-type=none".into(),
        format!("--client-ca-file={}", pki.client_ca.display()),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-issuer=https://127.0.0.1:{port}/"),
        format!("--service-account-key-file={}", pki.sa_public_key.display()),
        format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--allow-privileged=true".into(),
        "--disable-admission-plugins=ServiceAccount".into(),
        // The audit log lets benchmarks count each user's requests.
        format!("--audit-log-path={}", dir.join("audit.log").display()),
        format!("--audit-policy-file={}", write_audit_policy(dir)?.display()),
        // Never rotated: the benchmarks count requests between byte offsets of this file, and
        // 0 does not mean "unlimited" (the log writer's default, 100 MB, applies): at N = 2000
        // the file was rotated mid-phase and a phase's count read 0.
        "--audit-log-maxsize=1000000".into(),
    ];
    Process::start("kube-apiserver", &tools.kube_apiserver, &args, dir)
}

fn write_audit_policy(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("audit-policy.yaml");
    std::fs::write(
        &path,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
    )?;
    Ok(path)
}

fn http_get(path: &str) -> Result<::http::Request<Vec<u8>>> {
    Ok(::http::Request::get(path).body(Vec::new())?)
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn kubeconfig_yaml(port: u16, ca_pem: &str, user: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority-data: {ca}
users:
- name: testenv
  user:
    {user}
contexts:
- name: testenv
  context: {{cluster: testenv, user: testenv, namespace: default}}
current-context: testenv
",
        ca = b64(ca_pem)
    )
}

/// A client from a kubeconfig's YAML text.
pub async fn client_from_yaml(yaml: &str) -> Result<Client> {
    let kc = Kubeconfig::from_yaml(yaml)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
/// Tests wait for conditions with this, never with a fixed sleep.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
