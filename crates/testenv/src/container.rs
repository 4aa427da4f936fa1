//! The controller's container image and containers of it, for tests that run the `iter8`
//! binary the way a Kubernetes pod runs it: built with podman from a local binary with nothing
//! to pull (`testenv/containers/Containerfile`: `FROM scratch`, the binary and the libraries it
//! links; see `build-image.sh`), run with runc on the host network against the local control
//! plane, with a real ServiceAccount token, its CA and namespace mounted where Kubernetes mounts
//! them and `KUBERNETES_SERVICE_HOST`/`PORT` set: the in-cluster configuration path.
//!
//! podman reads `testenv/containers/containers.conf` (runc, cgroupfs, rlimits this machine
//! allows), selected with `CONTAINERS_CONF`. `testenv/setup.sh` installs podman and runc.
//! A [`Container`] is removed when dropped, and by a watchdog if the test process dies first.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec};
use kube::api::Api;

use crate::{tools, ControlPlane};

/// The tag the tests build the image under (`make image-local` uses `:local`).
pub const IMAGE: &str = "localhost/iter8-rs/iter8:test";

/// Where Kubernetes mounts a pod's ServiceAccount token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Longest time any one podman command may take before the test fails instead of hanging.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The containers.conf the tests use.
pub fn containers_conf() -> PathBuf {
    tools::repo_root().join("testenv/containers/containers.conf")
}

/// `podman` with the repository's containers.conf.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", containers_conf());
    cmd
}

/// Fails, naming `make setup`, unless podman and runc are installed.
pub fn check_podman() -> Result<()> {
    for tool in ["podman", "runc"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            bail!(
                "{tool} is not installed (or not on PATH): run `make setup` \
                 (testenv/setup.sh installs podman and runc from Debian's packages)"
            );
        }
    }
    Ok(())
}

/// Runs `cmd` to its end, at most `timeout`; its output, or an error with its stderr.
fn run(cmd: &mut Command, what: &str, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    // Both pipes are drained on threads of their own, so a chatty command cannot block.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what}: no answer after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Builds the image from `binary` (`testenv/containers/build-image.sh`), tagged [`IMAGE`];
/// returns its ID, which names exactly this build even if another run retags [`IMAGE`].
/// About 4 s for a debug binary, 2 s when the same binary was built before.
pub fn build_image(binary: &Path) -> Result<String> {
    check_podman()?;
    let script = tools::repo_root().join("testenv/containers/build-image.sh");
    let out = run(
        Command::new(&script)
            .arg(binary)
            .arg(IMAGE)
            .env("CONTAINERS_CONF", containers_conf()),
        &format!("building the image from {}", binary.display()),
        PODMAN_TIMEOUT,
    )?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if id.is_empty() {
        bail!("{} printed no image ID", script.display());
    }
    Ok(id)
}

/// A bind mount: host path, path in the container, read-only.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// How to run a container: what `podman run` is given. Always on the host network (the
/// control plane listens on 127.0.0.1), detached, with the image's entrypoint.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Image name or ID.
    pub image: String,
    /// Arguments after the entrypoint (a pod's `args`).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// `UID:GID`; the image's `USER` when `None`.
    pub user: Option<String>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `capabilities.drop: [ALL]`.
    pub drop_all_capabilities: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
}

impl RunSpec {
    /// How Kubernetes would run the first container of `pod` (a Deployment's template) as pod
    /// `pod_name` in `namespace`, on this machine: the image is `image`; the pod's
    /// ServiceAccount gets a real token (TokenRequest), mounted with the API server's CA and
    /// the namespace at [`SERVICE_ACCOUNT_DIR`], with `KUBERNETES_SERVICE_HOST`/`PORT` naming
    /// the API server; ConfigMap volumes become folders of their data, emptyDir and
    /// PersistentVolumeClaim volumes empty folders anyone may write (as `fsGroup` would allow);
    /// env values and the fieldRefs `metadata.name` and `metadata.namespace` are resolved; the
    /// security contexts' user, read-only root, dropped capabilities and no privilege
    /// escalation are kept. Args are verbatim: map listen addresses yourself (the host network
    /// is shared). Files go into `dir`.
    pub async fn from_pod(
        cp: &ControlPlane,
        namespace: &str,
        pod_name: &str,
        pod: &PodSpec,
        image: &str,
        dir: &Path,
    ) -> Result<RunSpec> {
        let container = pod
            .containers
            .first()
            .ok_or_else(|| anyhow!("the pod has no container"))?;
        let mut spec = RunSpec {
            image: image.to_string(),
            args: container.args.clone().unwrap_or_default(),
            ..RunSpec::default()
        };
        if container.command.is_some() {
            bail!("the container sets `command`: only `args` are passed to the image's entrypoint");
        }
        public_dir(dir)?;

        let sa = pod.service_account_name.as_deref().unwrap_or("default");
        let sa_dir = service_account_files(cp, namespace, sa, &dir.join("serviceaccount")).await?;
        spec.mount_service_account(cp, &sa_dir);

        let client = cp.client().await?;
        let volumes = pod.volumes.clone().unwrap_or_default();
        for vm in container.volume_mounts.clone().unwrap_or_default() {
            let volume = volumes
                .iter()
                .find(|v| v.name == vm.name)
                .ok_or_else(|| anyhow!("volumeMount {} names no volume of the pod", vm.name))?;
            let host = dir.join(format!("volume-{}", vm.name));
            public_dir(&host)?;
            if let Some(source) = &volume.config_map {
                let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                    .get(&source.name)
                    .await
                    .with_context(|| format!("reading ConfigMap {namespace}/{}", source.name))?;
                for (key, value) in cm.data.unwrap_or_default() {
                    public_file(&host.join(key), &value)?;
                }
            } else if volume.empty_dir.is_some() || volume.persistent_volume_claim.is_some() {
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777))?;
            } else {
                bail!(
                    "volume {} is of a kind this helper does not mount",
                    volume.name
                );
            }
            spec.mounts.push(Mount {
                host,
                container: vm.mount_path.clone(),
                read_only: vm.read_only.unwrap_or(false),
            });
        }

        for e in container.env.clone().unwrap_or_default() {
            let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
            let value = match (e.value.clone(), field.map(|f| f.field_path.as_str())) {
                (Some(v), _) => v,
                (None, Some("metadata.name")) => pod_name.to_string(),
                (None, Some("metadata.namespace")) => namespace.to_string(),
                (None, None) if e.value_from.is_none() => String::new(),
                _ => bail!(
                    "env {} comes from a source this helper does not resolve",
                    e.name
                ),
            };
            spec.env.push((e.name, value));
        }

        let pod_sc = pod.security_context.clone().unwrap_or_default();
        let sc = container.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(pod_sc.run_as_user);
        let gid = sc.run_as_group.or(pod_sc.run_as_group);
        spec.user = uid.map(|u| format!("{u}:{}", gid.unwrap_or(u)));
        spec.read_only_root = sc.read_only_root_filesystem.unwrap_or(false);
        spec.drop_all_capabilities = sc
            .capabilities
            .and_then(|c| c.drop)
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
        spec.no_new_privileges = sc.allow_privilege_escalation == Some(false);
        Ok(spec)
    }

    /// Mounts a folder written by [`service_account_files`] where Kubernetes mounts it and
    /// sets the variables the in-cluster configuration reads.
    pub fn mount_service_account(&mut self, cp: &ControlPlane, sa_dir: &Path) {
        self.mounts.push(Mount {
            host: sa_dir.to_path_buf(),
            container: SERVICE_ACCOUNT_DIR.to_string(),
            read_only: true,
        });
        self.env
            .push(("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()));
        self.env
            .push(("KUBERNETES_SERVICE_PORT".into(), cp.port().to_string()));
    }
}

/// Writes what Kubernetes mounts into a pod of ServiceAccount `namespace/name` into `dir`:
/// `token` (a real one, TokenRequest, valid an hour), `ca.crt` (the API server's CA) and
/// `namespace`, readable by any container user (folder 0755, files 0644).
pub async fn service_account_files(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    dir: &Path,
) -> Result<PathBuf> {
    let token = cp
        .service_account_token(namespace, name, Duration::from_secs(3600))
        .await?;
    public_dir(dir)?;
    public_file(&dir.join("token"), &token)?;
    public_file(&dir.join("ca.crt"), cp.ca_pem())?;
    public_file(&dir.join("namespace"), namespace)?;
    Ok(dir.to_path_buf())
}

fn public_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn public_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A running container (`podman run -d`). Dropping it removes it (and prints the end of its
/// log if the test is failing).
#[derive(Debug)]
pub struct Container {
    name: String,
    // Its stdin pipe stays open while we live; when it closes, the watchdog removes the
    // container (the test process died without dropping it).
    watchdog: Option<Child>,
}

impl Container {
    /// Starts a container of `spec`, named after `name` (made unique).
    pub fn run(name: &str, spec: &RunSpec) -> Result<Container> {
        check_podman()?;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{name}-{}-{n}", std::process::id());
        let watchdog = Command::new("sh")
            .args([
                "-c",
                "read _ignored; podman rm -f -t 0 \"$1\" >/dev/null 2>&1",
                "watchdog",
                &name,
            ])
            .env("CONTAINERS_CONF", containers_conf())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let container = Container { name, watchdog };

        let mut cmd = podman();
        cmd.args([
            "run",
            "--detach",
            "--name",
            &container.name,
            "--network",
            "host",
        ]);
        if let Some(user) = &spec.user {
            cmd.args(["--user", user]);
        }
        if spec.read_only_root {
            cmd.arg("--read-only");
        }
        if spec.drop_all_capabilities {
            cmd.args(["--cap-drop", "all"]);
        }
        if spec.no_new_privileges {
            cmd.args(["--security-opt", "no-new-privileges"]);
        }
        for m in &spec.mounts {
            let ro = if m.read_only { ",readonly" } else { "" };
            cmd.arg("--mount").arg(format!(
                "type=bind,source={},target={}{ro}",
                m.host.display(),
                m.container
            ));
        }
        for (k, v) in &spec.env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg(&spec.image).args(&spec.args);
        run(
            &mut cmd,
            &format!("podman run {}", container.name),
            PODMAN_TIMEOUT,
        )?;
        Ok(container)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn inspect(&self, format: &str) -> Result<String> {
        let out = run(
            podman().args(["inspect", "--format", format, &self.name]),
            &format!("podman inspect {}", self.name),
            PODMAN_TIMEOUT,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Whether its process is running.
    pub fn running(&self) -> Result<bool> {
        Ok(self.inspect("{{.State.Running}}")? == "true")
    }

    /// The host PID of its process (0 once it exited).
    pub fn pid(&self) -> Result<u32> {
        let pid = self.inspect("{{.State.Pid}}")?;
        pid.parse()
            .with_context(|| format!("podman inspect says PID {pid:?}"))
    }

    /// What it wrote to stdout and stderr so far (stdout first).
    pub fn logs(&self) -> Result<String> {
        let out = run(
            podman().args(["logs", &self.name]),
            &format!("podman logs {}", self.name),
            PODMAN_TIMEOUT,
        )?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Fails with the end of its log if it is not running.
    pub fn check_running(&self) -> Result<()> {
        if !self.running()? {
            bail!(
                "container {} exited (code {}); its log:\n{}",
                self.name,
                self.inspect("{{.State.ExitCode}}")?,
                tail(&self.logs()?, 40)
            );
        }
        Ok(())
    }

    /// `podman stop -t GRACE`: SIGTERM, then SIGKILL after `grace`; returns the exit code
    /// (137 if it had to be killed).
    pub fn stop(&self, grace: Duration) -> Result<i32> {
        let secs = grace.as_secs().max(1).to_string();
        run(
            podman().args(["stop", "--time", &secs, &self.name]),
            &format!("podman stop {}", self.name),
            grace + PODMAN_TIMEOUT,
        )?;
        let code = self.inspect("{{.State.ExitCode}}")?;
        code.parse()
            .with_context(|| format!("podman inspect says exit code {code:?}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.logs().unwrap_or_else(|e| format!("{e:#}"));
            eprintln!(
                "--- last lines of container {} ---\n{}",
                self.name,
                tail(&log, 40)
            );
        }
        let _ = run(
            podman().args(["rm", "--force", "--time", "0", &self.name]),
            "podman rm",
            PODMAN_TIMEOUT,
        );
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
