//! A real OCI registry for tests: CNCF Distribution's `registry` (the Go module
//! `github.com/distribution/distribution/v3`, `cmd/registry`, `REGISTRY_VERSION` in
//! `testenv/versions.env`), built by `testenv/setup.sh`. It serves plain HTTP on 127.0.0.1 with
//! a free port, without authentication, its blobs in a temporary folder, configured by a file
//! written there; its log (access log included) is `registry.log` in that folder. Stopped on
//! drop; the process also dies with the test process (see [`Process`]).
//!
//! The charts are pushed with `helm push CHART.tgz oci://127.0.0.1:PORT/charts --plain-http`
//! ([`Registry::oci`] gives that URL) and installed from `oci://127.0.0.1:PORT/charts/NAME`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{free_port, Process};

/// How long the registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry.
pub struct Registry {
    // Field order is drop order: the process stops before its folder goes away.
    process: Process,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free port and waits until `GET /v2/` answers 200.
    pub fn start() -> Result<Registry> {
        let binary = crate::tools::registry()?;
        let dir = tempfile::Builder::new()
            .prefix("testenv-registry-")
            .tempdir()
            .context("creating the registry's temporary folder")?;
        let port = free_port()?;
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yaml(&dir.path().join("data"), port))
            .with_context(|| format!("writing {}", config.display()))?;
        let args = ["serve".to_string(), config.display().to_string()];
        // No trace exporter: by default it would send spans to an OTLP collector on localhost.
        let env = [("OTEL_TRACES_EXPORTER", "none")];
        let mut process = Process::start_with_env("registry", &binary, &args, &env, dir.path())?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            process.check_running()?;
            if crate::http::get_local(port, "/v2/").is_some_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the registry on 127.0.0.1:{port} does not answer GET /v2/ with 200 after \
                     {READY_TIMEOUT:?}; last lines of {}:\n{}",
                    process.log_path().display(),
                    process.log_tail(25)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Registry { process, port, dir })
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `oci://127.0.0.1:<port>/<path>`, e.g. `oci("charts")` to push to and
    /// `oci("charts/release")` to install from.
    pub fn oci(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.address())
    }

    /// The tags of repository `name` (e.g. `charts/release`), from `GET /v2/<name>/tags/list`.
    pub fn tags(&self, name: &str) -> Result<Vec<String>> {
        let path = format!("/v2/{name}/tags/list");
        let r = crate::http::get_local(self.port, &path)
            .with_context(|| format!("GET {path}: no answer"))?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body);
        }
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .with_context(|| format!("GET {path}: not JSON: {}", r.body))?;
        Ok(v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect())
    }

    /// Its folder (configuration, `data/`, `registry.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where its log goes.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        self.process.log_tail(n)
    }
}

/// The configuration: filesystem storage under `data`, plain HTTP on `127.0.0.1:port`, no
/// authentication, no debug server, text logs at level info.
fn config_yaml(data: &Path, port: u16) -> String {
    format!(
        "version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: testenv-registry-secret
",
        data = data.display()
    )
}
