//! A real Prometheus for tests: the `prometheus` binary `testenv/setup.sh` builds from the Go
//! module `github.com/prometheus/prometheus` (`PROMETHEUS_VERSION` in `testenv/versions.env`,
//! v0.316.0 = Prometheus 3.16.0, built with the tag `remove_all_sd` and no web UI), on
//! 127.0.0.1 with a free port, its data in a temporary folder, scraping the targets the
//! harness lists in a `file_sd_configs` file ([`ScrapeTargets`]; Prometheus notices a change
//! within about a second). It can be stopped and started again on the same port and data, for
//! tests of outages. The process dies with the test process (see [`Process`]).
//!
//! The shared data plane runs one on demand, scraping every model server and both Envoys:
//! [`crate::dataplane::DataPlane::prometheus`].
//!
//! # What the data plane's targets export (MLServer 1.7.1, checked by running it)
//!
//! Every target of a model server carries the labels `namespace`, `isvc` (the
//! InferenceService, the version's name in routing) and `revision` (its predictor revision,
//! one MLServer process each), plus `job="testenv"` and `instance`. MLServer's own labels are
//! `model` (= `isvc`) and `version` (`"None"`: clients name no model version in the path).
//! - `model_infer_request_success_total` (counter): inferences answered;
//! - `model_infer_request_failure_total` (counter): inferences that raised, whatever the
//!   status code (an injected fault, a model error, an unknown model); a request MLServer
//!   rejects before inference (422: a body that is not a V2 request) is in neither counter;
//! - `model_infer_request_duration_count` / `_sum` (a summary without quantiles): every
//!   inference, answered or failed, and the seconds they took;
//! - `rest_server_requests_total{method, path, status_code}` (counter, REST only, `path` the
//!   route template, e.g. `/v2/models/{model_name}/infer`) and
//!   `rest_server_request_duration_seconds_bucket{le, method, path, status_code}` (histogram,
//!   buckets 0.005 to 10 s);
//! - `grpc_server_handled_total{grpc_code, grpc_method, ...}` and
//!   `grpc_server_handling_seconds_bucket` for the gRPC port.
//!
//! The `model_infer_request_*` series of a model server exist with value 0 as soon as its model
//! is loaded (the harness's runtime `testenv/dataplane/testenv_runtime.py` creates them), so
//! `increase()` over a window counts the first requests too; the `rest_server_*` series
//! appear with the first request of their status code. Each revision is a new process, so a
//! counter without `increase()` counts since that revision started.
//!
//! PromQL that works (tests/prometheus.rs runs each), for InferenceService `X` in namespace
//! `NS` over a window `W` (e.g. `1m`):
//! - error ratio: `sum(increase(model_infer_request_failure_total{namespace="NS",isvc="X"}[W]))
//!   / sum(increase(model_infer_request_duration_count{namespace="NS",isvc="X"}[W]))`;
//! - request count: `sum(increase(model_infer_request_duration_count{namespace="NS",isvc="X"}[W]))`
//!   (extrapolated to the window's ends, so approximate; exact since the revision started:
//!   `sum(model_infer_request_duration_count{namespace="NS",isvc="X"})`);
//! - mean latency (seconds): `sum(rate(model_infer_request_duration_sum{namespace="NS",isvc="X"}[W]))
//!   / sum(rate(model_infer_request_duration_count{namespace="NS",isvc="X"}[W]))`;
//! - p99 latency (seconds, REST): `histogram_quantile(0.99, sum by (le)
//!   (rate(rest_server_request_duration_seconds_bucket{namespace="NS",isvc="X",path="/v2/models/{model_name}/infer"}[W])))`.
//!
//! The Envoys' targets (`/stats/prometheus` of their admin port, label `envoy` =
//! `istio-ingressgateway` or `knative-local-gateway`) export e.g.
//! `envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|80||<revision>.<NS>.svc.cluster.local"}`
//! and `envoy_cluster_upstream_rq{envoy_response_code="500", ...}`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::process::{free_port, remove_on_exit, Process};
use crate::tools::{cache_dir, version};

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds of one API call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// The cached `prometheus` binary, or an error naming how to build it.
pub fn binary() -> Result<PathBuf> {
    let path = cache_dir().join(format!(
        "prometheus-{}/bin/prometheus",
        version("PROMETHEUS_VERSION")
    ));
    if !path.is_file() {
        bail!(
            "missing prometheus: {}; run testenv/setup.sh to build it",
            path.display()
        );
    }
    Ok(path)
}

/// The scrape targets of a Prometheus, kept in a `file_sd_configs` file (JSON, one target
/// group per target), rewritten atomically on every change. Owned apart from the Prometheus
/// process, so a data plane can list its servers before any Prometheus runs.
#[derive(Debug)]
pub struct ScrapeTargets {
    file: PathBuf,
    targets: Mutex<BTreeMap<SocketAddr, BTreeMap<String, String>>>,
}

impl ScrapeTargets {
    /// A target file at `file` (written now, empty).
    pub fn new(file: PathBuf) -> Result<ScrapeTargets> {
        let targets = ScrapeTargets {
            file,
            targets: Mutex::new(BTreeMap::new()),
        };
        targets.write(&BTreeMap::new())?;
        Ok(targets)
    }

    /// The file Prometheus reads.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Adds (or replaces) the target `addr` with `labels`. Labels Prometheus reserves work
    /// too: `__metrics_path__` (default `/metrics`), `__scrape_interval__`, `__param_<name>`.
    pub fn add(&self, addr: SocketAddr, labels: BTreeMap<String, String>) -> Result<()> {
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        targets.insert(addr, labels);
        self.write(&targets)
    }

    /// Removes the target `addr` (Prometheus marks its series stale); no error if absent.
    pub fn remove(&self, addr: SocketAddr) -> Result<()> {
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        if targets.remove(&addr).is_some() {
            self.write(&targets)?;
        }
        Ok(())
    }

    /// The current targets.
    pub fn list(&self) -> BTreeMap<SocketAddr, BTreeMap<String, String>> {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn write(&self, targets: &BTreeMap<SocketAddr, BTreeMap<String, String>>) -> Result<()> {
        let groups: Vec<Value> = targets
            .iter()
            .map(|(addr, labels)| json!({"targets": [addr.to_string()], "labels": labels}))
            .collect();
        // Written aside and renamed: Prometheus never reads half a file.
        let tmp = self.file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&groups)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("renaming {} to {}", tmp.display(), self.file.display()))
    }
}

/// How to start a [`Prometheus`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Global `scrape_interval` (and `scrape_timeout`); default 1 s.
    pub scrape_interval: Duration,
    /// Targets kept by the caller (e.g. the data plane's); a new empty list when `None`.
    pub targets: Option<Arc<ScrapeTargets>>,
    /// Folder to create Prometheus's temporary folder in (config, data, log); the system's
    /// temporary folder when `None`.
    pub parent_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            scrape_interval: Duration::from_secs(1),
            targets: None,
            parent_dir: None,
        }
    }
}

/// A running (or stopped) Prometheus. Dropping it stops the process and removes its folder.
pub struct Prometheus {
    // Field order is drop order: the process stops before its folder goes away.
    process: Mutex<Option<Process>>,
    binary: PathBuf,
    args: Vec<String>,
    port: u16,
    /// How often it was started (each start logs to a file of its own).
    starts: std::sync::atomic::AtomicU32,
    targets: Arc<ScrapeTargets>,
    dir: tempfile::TempDir,
    /// Removes `dir` when the test process ends (a Prometheus in a static is never dropped).
    _cleanup: Option<std::process::Child>,
}

impl Prometheus {
    /// Starts Prometheus with `opts` and waits until `/-/ready` answers 200.
    pub async fn start(opts: Options) -> Result<Prometheus> {
        let binary = binary()?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("testenv-prometheus-");
        let dir = match &opts.parent_dir {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .context("creating Prometheus's temporary folder")?;
        let targets = match opts.targets {
            Some(t) => t,
            None => Arc::new(ScrapeTargets::new(dir.path().join("targets.json"))?),
        };
        let interval = format!("{}ms", opts.scrape_interval.as_millis().max(1));
        let config = dir.path().join("prometheus.yml");
        // JSON is YAML: the paths need no quoting rules of their own.
        let text = serde_json::to_string_pretty(&json!({
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": "1m"},
            "scrape_configs": [{
                "job_name": "testenv",
                "file_sd_configs": [{"files": [targets.file()], "refresh_interval": "5s"}]
            }]
        }))?;
        std::fs::write(&config, text)?;
        let port = free_port()?;
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-lifecycle".into(),
            "--storage.tsdb.retention.time=1d".into(),
            // Target changes reach the scrapers after this (hidden flag, default 5s).
            "--scrape.discovery-reload-interval=500ms".into(),
        ];
        let prometheus = Prometheus {
            process: Mutex::new(None),
            binary,
            args,
            port,
            starts: std::sync::atomic::AtomicU32::new(0),
            targets,
            _cleanup: remove_on_exit(dir.path()),
            dir,
        };
        prometheus.launch().await?;
        Ok(prometheus)
    }

    async fn launch(&self) -> Result<()> {
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = match n {
            0 => "prometheus".to_string(),
            n => format!("prometheus-{}", n + 1),
        };
        let mut process = Process::start(&name, &self.binary, &self.args, self.dir.path())?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            process.check_running()?;
            if get(self.port, "/-/ready").is_ok_and(|(status, _)| status == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "Prometheus on 127.0.0.1:{} not ready after {READY_TIMEOUT:?}; last lines of {}:\n{}",
                    self.port,
                    process.log_path().display(),
                    process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        *self.process.lock().unwrap_or_else(PoisonError::into_inner) = Some(process);
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its folder (config, `data/`, `prometheus.log`; `prometheus-N.log` after a restart).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The targets it scrapes.
    pub fn targets(&self) -> &ScrapeTargets {
        &self.targets
    }

    /// Scrapes `addr` (at `/metrics` unless `labels` has `__metrics_path__`) with `labels` on
    /// every series.
    pub fn add_target(&self, addr: SocketAddr, labels: BTreeMap<String, String>) -> Result<()> {
        self.targets.add(addr, labels)
    }

    /// Stops scraping `addr`.
    pub fn remove_target(&self, addr: SocketAddr) -> Result<()> {
        self.targets.remove(addr)
    }

    /// Whether the process runs (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Stops Prometheus (SIGTERM, so it closes its data cleanly). Its port and data stay for
    /// [`Prometheus::start_again`].
    pub fn stop(&self) {
        let process = self
            .process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut p) = process {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Starts Prometheus again on the same port with the same data and waits until it is ready.
    pub async fn start_again(&self) -> Result<()> {
        self.stop();
        self.launch().await
    }

    /// The last lines of the running process's log (empty when stopped).
    pub fn log_tail(&self, n: usize) -> String {
        self.process
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    /// Runs an instant query (`/api/v1/query`) now; returns the answer's `data`
    /// (`{"resultType": ..., "result": ...}`). Fails with Prometheus's error for a bad query,
    /// and says so when Prometheus does not answer (stopped or gone).
    pub fn query(&self, promql: &str) -> Result<Value> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        self.api(&path)
            .with_context(|| format!("Prometheus query {promql}"))
    }

    /// The value of a query whose answer is a scalar or a vector of at most one sample:
    /// `None` for an empty vector (no such series), NaN as `f64::NAN`.
    pub fn value(&self, promql: &str) -> Result<Option<f64>> {
        let data = self.query(promql)?;
        single_value(&data).with_context(|| format!("Prometheus query {promql} answered {data}"))
    }

    /// Waits until `promql` returns a non-empty vector and returns its samples.
    pub async fn wait_for_series(&self, promql: &str, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.query(promql) {
                Ok(data) => match data["result"].as_array() {
                    Some(samples) if !samples.is_empty() => return Ok(samples.clone()),
                    _ => format!("answered {data}"),
                },
                Err(e) => format!("failed: {e:#}"),
            };
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for series of {promql}; last it {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the single value of `promql` (see [`Prometheus::value`]) satisfies `ok`
    /// and returns it.
    pub async fn wait_for_value(
        &self,
        promql: &str,
        timeout: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.value(promql) {
                Ok(Some(v)) if ok(v) => return Ok(v),
                Ok(v) => format!("answered {v:?}"),
                Err(e) => format!("failed: {e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for a value of {promql}; last it {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The active targets as `/api/v1/targets` lists them.
    pub fn active_targets(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until Prometheus has scraped `addr` successfully at least once since it was
    /// listed (`up` is 1), so that its series exist from then on.
    pub async fn wait_until_scraped(&self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let promql = format!("up{{instance=\"{addr}\"}} == 1");
        self.wait_for_series(&promql, timeout).await.map(drop)
    }

    /// GET `path` of the HTTP API; the answer's `data` if its status is `success`.
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = get(self.port, path).map_err(|e| {
            let state = if self.is_running() {
                "running"
            } else {
                "stopped"
            };
            anyhow!(
                "Prometheus at {} does not answer ({state}): {e}",
                self.address()
            )
        })?;
        let answer: Value = serde_json::from_str(&body).with_context(|| {
            format!("Prometheus answered HTTP {status} with a body that is not JSON: {body}")
        })?;
        if status != 200 || answer["status"] != "success" {
            bail!(
                "Prometheus answered HTTP {status}: {} ({})",
                answer["error"].as_str().unwrap_or(&body),
                answer["errorType"].as_str().unwrap_or("no error type")
            );
        }
        Ok(answer["data"].clone())
    }
}

/// The value of a scalar or of a vector with at most one sample.
fn single_value(data: &Value) -> Result<Option<f64>> {
    let number = |pair: &Value| -> Result<f64> {
        let text = pair[1]
            .as_str()
            .ok_or_else(|| anyhow!("a sample without a value"))?;
        text.parse()
            .map_err(|_| anyhow!("a sample value {text:?} that is not a number"))
    };
    match data["resultType"].as_str() {
        Some("scalar") => number(&data["result"]).map(Some),
        Some("vector") => {
            let samples = data["result"]
                .as_array()
                .ok_or_else(|| anyhow!("a vector without result"))?;
            match samples.as_slice() {
                [] => Ok(None),
                [one] => number(&one["value"]).map(Some),
                _ => bail!("{} samples where one was expected", samples.len()),
            }
        }
        other => bail!("a result of type {other:?} where a scalar or a vector was expected"),
    }
}

/// GET `path` from 127.0.0.1:`port` over HTTP/1.0 (so Go answers unchunked and closes);
/// the status and body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query parameter's value (everything but RFC 3986's unreserved bytes).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode(r#"sum(up{job="a b"})[1m]"#),
            "sum%28up%7Bjob%3D%22a%20b%22%7D%29%5B1m%5D"
        );
    }

    #[test]
    fn reads_single_values() {
        let v = |text: &str| single_value(&serde_json::from_str(text).unwrap_or(Value::Null));
        assert_eq!(
            v(r#"{"resultType":"scalar","result":[1,"0.5"]}"#).ok(),
            Some(Some(0.5))
        );
        assert_eq!(v(r#"{"resultType":"vector","result":[]}"#).ok(), Some(None));
        assert_eq!(
            v(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"40"]}]}"#).ok(),
            Some(Some(40.0))
        );
        assert!(
            v(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}"#)
                .is_ok_and(|x| x.is_some_and(f64::is_nan))
        );
        assert!(
            v(r#"{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}"#).is_err()
        );
        assert!(v(r#"{"resultType":"matrix","result":[]}"#).is_err());
    }
}
