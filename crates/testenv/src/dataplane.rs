//! A real data plane on loopback, so tests send the tutorial's HTTP requests for real: istiod
//! (`pilot-discovery`) reading the routing objects from the local control plane, stock Envoys
//! configured by it over plaintext xDS, and MLServer model servers answering V2 inference
//! requests. No containers, no kubelet: the harness plays the parts of Kubernetes' kubelet, of
//! KServe and of Knative (net-istio) that tests need, and says so where it does.
//!
//! What runs (see `shared/design/dataplane.md` for why each setting is there):
//! - istiod with no CA, no webhooks, no leader election and a mesh config without telemetry or
//!   auto-mTLS, so that everything it sends is understood by a stock Envoy;
//! - an ingress Envoy selected by the Istio `Gateway` `knative-serving/knative-ingress-gateway`
//!   (tests send their requests to [`DataPlane::ingress`]);
//! - a second Envoy standing in for `knative-local-gateway` (Service + WorkloadEntry in
//!   `istio-system`, Gateway `knative-serving/knative-local-gateway`);
//! - on demand ([`DataPlane::serve_gateway`]), an Envoy per Gateway API `Gateway`, as Istio's
//!   automated deployment makes one (istiod's Gateway API support is on, its deployment
//!   controller off);
//! - per InferenceService revision, one MLServer whose model is named after the
//!   InferenceService (see [`DataPlane::serve_inference_service`]), which fails or slows down
//!   a share of its inference requests when the InferenceService's annotations
//!   [`ERROR_SHARE_ANNOTATION`] and [`DELAY_MS_ANNOTATION`] ask for it;
//! - on demand ([`DataPlane::prometheus`]), a real Prometheus scraping every model server and
//!   both Envoys (see [`crate::prometheus`] for what they export).
//!
//! Backends get loopback addresses other than 127.0.0.1 and are registered with a Service
//! plus an Istio `WorkloadEntry` (the API server refuses loopback addresses in EndpointSlices).
//! Every process is stopped by PID when the [`DataPlane`] is dropped, and by the
//! [`Process`] watchdog if the test process dies first.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::ApiResource;
use kube::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::fixtures::{api_resource, inference_service, service};
use crate::http;
use crate::kserve::{self, State};
use crate::objects::{self, Times};
use crate::process::{free_port, Process};
use crate::prometheus::{self, Prometheus, ScrapeTargets};
use crate::tools::{cache_dir, version};
use crate::ControlPlane;

/// Istio `--clusterID`, also claimed by the Envoys' bootstrap metadata.
const CLUSTER_ID: &str = "Kubernetes";
/// Field manager of everything the harness writes.
const MANAGER: &str = "testenv-dataplane";
/// Label selecting the ingress Envoy (Gateway `knative-serving/knative-ingress-gateway`).
pub const INGRESS_SELECTOR: (&str, &str) = ("istio", "ingressgateway");
/// Label selecting the `knative-local-gateway` Envoy.
pub const LOCAL_GATEWAY_SELECTOR: (&str, &str) = ("istio", "local-gateway");
/// Response header the Knative-side routes add, naming the revision that answered.
pub const REVISION_HEADER: &str = "x-testenv-revision";

const START_TIMEOUT: Duration = Duration::from_secs(120);

/// InferenceService annotation: the share (0 to 1) of inference requests its model server
/// answers with HTTP 500, e.g. `"0.5"`: every second request. Deterministic: of the first n
/// requests, floor(n * share) fail. Read when a revision starts.
pub const ERROR_SHARE_ANNOTATION: &str = "testenv.iter8.tools/error-share";
/// InferenceService annotation: milliseconds its model server waits before answering each
/// inference request, e.g. `"200"`. Read when a revision starts.
pub const DELAY_MS_ANNOTATION: &str = "testenv.iter8.tools/delay-ms";

/// The MLServer runtime every model server runs (MLServer's scikit-learn runtime plus fault
/// injection and metrics that exist from the start), written into each model's folder.
/// (`pub(crate)`: [`crate::pods`] serves simulated pods with it too.)
pub(crate) const RUNTIME: &str = include_str!("../../../testenv/dataplane/testenv_runtime.py");
/// Its module name, as model-settings.json's `implementation` names it.
pub(crate) const RUNTIME_MODULE: &str = "testenv_runtime";

/// What an InferenceService's annotations ask its model server to do wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Share of inference requests answered with HTTP 500.
    pub error_share: f64,
    /// Added latency of every inference request, in milliseconds.
    pub delay_ms: u64,
}

impl Faults {
    /// From the annotations [`ERROR_SHARE_ANNOTATION`] and [`DELAY_MS_ANNOTATION`].
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Result<Faults> {
        let mut faults = Faults::default();
        let Some(annotations) = annotations else {
            return Ok(faults);
        };
        if let Some(text) = annotations.get(ERROR_SHARE_ANNOTATION) {
            faults.error_share = text
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| (0.0..=1.0).contains(v))
                .ok_or_else(|| {
                    anyhow!(
                        "annotation {ERROR_SHARE_ANNOTATION}: {text:?} is not a number from 0 to 1"
                    )
                })?;
        }
        if let Some(text) = annotations.get(DELAY_MS_ANNOTATION) {
            faults.delay_ms = text.trim().parse().map_err(|_| {
                anyhow!("annotation {DELAY_MS_ANNOTATION}: {text:?} is not a whole number of milliseconds")
            })?;
        }
        Ok(faults)
    }
}

/// The data-plane components in the cache `testenv/setup.sh` fills.
#[derive(Debug, Clone)]
pub struct DataPlaneTools {
    pub istiod: PathBuf,
    pub envoy: PathBuf,
    pub mlserver: PathBuf,
    /// Folder with the trained model variants `v0/` and `v1/`.
    pub models: PathBuf,
}

/// The cache key of the Python side: a hash of the pinned requirements and the training
/// script, computed the same way as `testenv/setup.sh` does (`cat … | sha256sum | cut -c1-16`).
pub fn python_key() -> String {
    let mut h = Sha256::new();
    h.update(include_bytes!(
        "../../../testenv/dataplane/requirements.txt"
    ));
    h.update(include_bytes!("../../../testenv/dataplane/train_models.py"));
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..16].to_string()
}

impl DataPlaneTools {
    /// Finds the components, or fails naming the missing ones and how to build them.
    pub fn locate() -> Result<DataPlaneTools> {
        let cache = cache_dir();
        let py = cache.join(format!("dataplane-py-{}", python_key()));
        let tools = DataPlaneTools {
            istiod: cache.join(format!(
                "istiod-{}/bin/pilot-discovery",
                version("ISTIO_VERSION")
            )),
            envoy: py.join("bin/envoy"),
            mlserver: py.join("bin/mlserver"),
            models: py.join("models"),
        };
        let missing: Vec<String> = [
            &tools.istiod,
            &tools.envoy,
            &tools.mlserver,
            &tools.models.join("v0/model.joblib"),
            &tools.models.join("v1/model.joblib"),
        ]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
        if !missing.is_empty() {
            bail!(
                "missing data-plane components (istiod, Envoy, MLServer): {}; run testenv/setup.sh to build them",
                missing.join(", ")
            );
        }
        Ok(tools)
    }
}

/// A loopback address for a new backend: 127.0.0.2 and up, never 127.0.0.1 (the proxies').
pub fn next_ip() -> Result<Ipv4Addr> {
    static NEXT: AtomicU32 = AtomicU32::new(2);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    if n > 254 {
        bail!("out of loopback addresses 127.0.0.2-254");
    }
    Ok(Ipv4Addr::new(127, 0, 0, n as u8))
}

/// A running Envoy with its admin port.
struct Envoy {
    name: String,
    admin: u16,
    process: Process,
}

/// One model server: a KServe predictor revision.
struct ModelServer {
    revision: String,
    faults: Faults,
    variant: String,
    /// The InferenceService generation it serves (its Knative Service's generation).
    generation: i64,
    process: Process,
    ports: ModelServerPorts,
}

/// Where a model server listens: its own address (the simulated pod IP) and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelServerPorts {
    pub ip: Ipv4Addr,
    /// V2 REST.
    pub http: u16,
    /// V2 gRPC (`inference.GRPCInferenceService`).
    pub grpc: u16,
    /// Prometheus metrics (`/metrics`).
    pub metrics: u16,
}

/// The running data plane. Drop order is field order: Prometheus, model servers, Envoys, then
/// istiod.
pub struct DataPlane {
    /// Started by the first call of [`DataPlane::prometheus`].
    prometheus: tokio::sync::OnceCell<Prometheus>,
    /// Every model server's metrics port and both Envoys' admin ports, kept up to date
    /// whether or not Prometheus runs.
    scrape: Arc<ScrapeTargets>,
    models: Mutex<BTreeMap<(String, String), ModelServer>>,
    /// The Envoys of Gateway API Gateways ([`DataPlane::serve_gateway`]), by `ns/name`.
    gateways: std::sync::Mutex<BTreeMap<String, Envoy>>,
    envoys: Vec<std::sync::Mutex<Envoy>>,
    istiod: std::sync::Mutex<Process>,
    ingress: SocketAddr,
    local_gateway: SocketAddr,
    istiod_grpc: u16,
    istiod_http: u16,
    revisions: AtomicU32,
    kubeconfig: String,
    tools: DataPlaneTools,
    dir: tempfile::TempDir,
    /// Removes `dir` when the test process ends (the shared data plane is never dropped).
    cleanup: Option<std::process::Child>,
}

/// Istio's VirtualService at networking.istio.io/v1, the version the harness writes the
/// Knative-side routes with.
fn knative_virtual_service() -> ApiResource {
    api_resource(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    )
}

fn workload_entry() -> ApiResource {
    api_resource(
        "networking.istio.io",
        "v1",
        "WorkloadEntry",
        "workloadentries",
    )
}

fn gateway() -> ApiResource {
    api_resource("networking.istio.io", "v1", "Gateway", "gateways")
}

/// The Gateway API's Gateway (gateway.networking.k8s.io/v1).
pub fn gateway_api_gateway() -> ApiResource {
    api_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")
}

/// Label Istio's deployment controller puts on a Gateway API Gateway's pods, and their
/// Service selects.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Server-side applies `obj` (with apiVersion and kind) into its namespace, as the harness.
pub async fn apply(client: &Client, ar: &ApiResource, ns: Option<&str>, obj: &Value) -> Result<()> {
    objects::apply(client, ar, ns, obj, MANAGER).await?;
    Ok(())
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let ns = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).with_context(|| format!("creating namespace {name}")),
        }
    }
    Ok(())
}

impl DataPlane {
    /// Starts istiod and both gateways against `cp`, and waits until both Envoys have their
    /// configuration from istiod.
    pub async fn start(cp: &ControlPlane) -> Result<DataPlane> {
        let tools = DataPlaneTools::locate()?;
        let mut dir = tempfile::Builder::new()
            .prefix("dataplane-")
            .tempdir()
            .context("creating the data plane's temporary folder")?;
        // Logs stay behind if start-up fails, so the error's log paths can be read.
        dir.disable_cleanup(true);
        let client = cp.client().await?;
        for ns in ["istio-system", "knative-serving"] {
            ensure_namespace(&client, ns).await?;
        }

        // istiod. Settings from shared/design/dataplane.md: nothing that only Istio's own
        // proxy build understands, no CA, plaintext xDS on loopback.
        let grpc = free_port()?;
        let http = free_port()?;
        let monitoring = free_port()?;
        let ctrlz = free_port()?;
        let mesh = dir.path().join("mesh.yaml");
        std::fs::write(
            &mesh,
            format!(
                "# No defaultProviders (no stats filter), no auto mTLS, no tracing: a stock Envoy must\n\
                 # understand everything istiod sends.\n\
                 enableAutoMtls: false\nenableTracing: false\nrootNamespace: istio-system\n\
                 defaultConfig:\n  discoveryAddress: 127.0.0.1:{grpc}\n"
            ),
        )?;
        let args: Vec<String> = vec![
            "discovery".into(),
            format!("--kubeconfig={}", cp.kubeconfig_path().display()),
            format!("--meshConfig={}", mesh.display()),
            format!(
                "--networksConfig={}",
                dir.path().join("meshNetworks.yaml").display()
            ),
            format!("--clusterID={CLUSTER_ID}"),
            format!("--grpcAddr=127.0.0.1:{grpc}"),
            format!("--httpAddr=127.0.0.1:{http}"),
            format!("--monitoringAddr=127.0.0.1:{monitoring}"),
            "--httpsAddr=".into(),
            "--secureGRPCAddr=".into(),
            "--ctrlz_address=127.0.0.1".into(),
            format!("--ctrlz_port={ctrlz}"),
            "--domain=cluster.local".into(),
            "--log_output_level=default:info".into(),
        ];
        let env = [
            ("POD_NAMESPACE", "istio-system"),
            ("POD_NAME", "istiod-testenv"),
            ("REVISION", "default"),
            ("PILOT_ENABLE_METADATA_EXCHANGE", "false"),
            ("PILOT_ENABLE_ALPN_FILTER", "false"),
            ("ENABLE_CA_SERVER", "false"),
            ("PILOT_CERT_PROVIDER", "none"),
            ("ENABLE_LEADER_ELECTION", "false"),
            ("VALIDATION_WEBHOOK_CONFIG_NAME", ""),
            ("INJECTION_WEBHOOK_CONFIG_NAME", ""),
            ("XDS_AUTH", "false"),
            // Gateway API on (HTTPRoutes of Gateways, [`DataPlane::serve_gateway`]); its
            // deployment controller off: the harness plays it, with an Envoy per Gateway.
            ("PILOT_ENABLE_GATEWAY_API", "true"),
            ("PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER", "false"),
            ("KUBECONFIG", ""),
        ];
        let mut istiod = Process::start_with_env("istiod", &tools.istiod, &args, &env, dir.path())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            istiod.check_running()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], http));
            if http::get(addr, "istiod", "/ready").is_some_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "istiod not ready after {START_TIMEOUT:?}; last lines of {}:\n{}",
                    istiod.log_path().display(),
                    istiod.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The gateways, as a KServe quick install has them (Knative's net-istio Gateways).
        let ingress_port = free_port()?;
        let local_port = free_port()?;
        let local_ip = next_ip()?;
        for (name, (k, v), port) in [
            ("knative-ingress-gateway", INGRESS_SELECTOR, ingress_port),
            ("knative-local-gateway", LOCAL_GATEWAY_SELECTOR, local_port),
        ] {
            apply(&client, &gateway(), Some("knative-serving"), &json!({
                "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": name, "namespace": "knative-serving"},
                "spec": {"selector": {k: v}, "servers": [{
                    "port": {"number": port, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}))
            .await?;
        }
        // knative-local-gateway.istio-system: the Service the tutorial's routes send to.
        register_backend(
            &client,
            "istio-system",
            "knative-local-gateway",
            &BTreeMap::from([(
                LOCAL_GATEWAY_SELECTOR.0.to_string(),
                LOCAL_GATEWAY_SELECTOR.1.to_string(),
            )]),
            local_port,
            local_ip,
            local_port,
        )
        .await?;

        // istio-ingressgateway.istio-system:80, as in a cluster: KServe Standard mode's weighted
        // and mirrored routes pass through it (charts/release, environment kserve-standard).
        register_backend(
            &client,
            "istio-system",
            "istio-ingressgateway",
            &BTreeMap::from([(
                INGRESS_SELECTOR.0.to_string(),
                INGRESS_SELECTOR.1.to_string(),
            )]),
            80,
            Ipv4Addr::LOCALHOST,
            ingress_port,
        )
        .await?;
        let scrape = Arc::new(ScrapeTargets::new(dir.path().join("scrape-targets.json"))?);
        let mut dp = DataPlane {
            prometheus: tokio::sync::OnceCell::new(),
            scrape,
            models: Mutex::new(BTreeMap::new()),
            gateways: std::sync::Mutex::new(BTreeMap::new()),
            envoys: Vec::new(),
            istiod: std::sync::Mutex::new(istiod),
            ingress: SocketAddr::from(([127, 0, 0, 1], ingress_port)),
            local_gateway: SocketAddr::from((local_ip, local_port)),
            istiod_grpc: grpc,
            istiod_http: http,
            revisions: AtomicU32::new(0),
            kubeconfig: cp.kubeconfig().to_string(),
            tools,
            dir,
            cleanup: None,
        };
        let ingress = dp.start_envoy(
            "istio-ingressgateway",
            "istio-system",
            Ipv4Addr::LOCALHOST,
            INGRESS_SELECTOR,
            grpc,
        )?;
        dp.envoys.push(std::sync::Mutex::new(ingress));
        let local = dp.start_envoy(
            "knative-local-gateway",
            "istio-system",
            local_ip,
            LOCAL_GATEWAY_SELECTOR,
            grpc,
        )?;
        dp.envoys.push(std::sync::Mutex::new(local));
        for i in 0..dp.envoys.len() {
            dp.wait_envoy_live(i).await?;
        }
        // Both listeners exist once istiod has seen the Gateways.
        for addr in [dp.ingress, dp.local_gateway] {
            crate::wait_for(
                &format!("an Envoy listener on {addr}"),
                START_TIMEOUT,
                || async move {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                        .ok()
                        .map(drop)
                },
            )
            .await
            .map_err(|e| anyhow!("{e}; {}", dp.diagnostics()))?;
        }
        dp.check_healthy()?;
        // Envoy's own metrics, from its admin port; only the stats that were used (thousands
        // of clusters' unused ones otherwise, every scrape).
        for e in &dp.envoys {
            let e = e.lock().map_err(|_| anyhow!("poisoned"))?;
            let labels = BTreeMap::from(
                [
                    ("envoy", e.name.as_str()),
                    ("__metrics_path__", "/stats/prometheus"),
                    ("__param_usedonly", "true"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            dp.scrape
                .add(SocketAddr::from(([127, 0, 0, 1], e.admin)), labels)?;
        }
        dp.dir.disable_cleanup(false);
        dp.cleanup = crate::process::remove_on_exit(dp.dir.path());
        Ok(dp)
    }

    fn start_envoy(
        &self,
        name: &str,
        ns: &str,
        ip: Ipv4Addr,
        (label, value): (&str, &str),
        grpc: u16,
    ) -> Result<Envoy> {
        let admin = free_port()?;
        // A hand-written bootstrap in place of istio-agent's: the node identity and metadata
        // istiod reads (ISTIO_VERSION, CLUSTER_ID, NAMESPACE, INSTANCE_IPS and the LABELS a
        // Gateway selector matches) and ADS over plaintext gRPC to istiod.
        let bootstrap = json!({
            "node": {
                "id": format!("router~{ip}~{name}.{ns}~{ns}.svc.cluster.local"),
                "cluster": format!("{name}.{ns}"),
                "metadata": {
                    "ISTIO_VERSION": version("ISTIO_BUILD_VERSION"),
                    "CLUSTER_ID": CLUSTER_ID,
                    "NAMESPACE": ns,
                    "INSTANCE_IPS": ip.to_string(),
                    "NAME": name,
                    "WORKLOAD_NAME": name,
                    "LABELS": {label: value},
                    "SERVICE_ACCOUNT": "default",
                }
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            // istiod names a cluster's stats `cluster.<name>;.<stat>` (alt_stat_name ends with
            // Istio's delimiter `;`), HTTP connection managers' likewise: Envoy's default tags
            // would cut the names at their first dot and leave the rest (the namespace) in the
            // metric names of /stats/prometheus. Istio's own bootstrap's regexes for those two
            // (the label names stay Envoy's: `envoy_cluster_name`, ...), Envoy's for the rest.
            "stats_config": {
                "use_all_default_tags": false,
                "stats_tags": [
                    {"tag_name": "envoy.cluster_name", "regex": "^cluster(\\.(.+);)"},
                    {"tag_name": "envoy.http_conn_manager_prefix",
                     "regex": "^http\\.(((?:[_.[:digit:]\\w]*|[_\\[\\]aAbBcCdDeEfF[:digit:]\\w\\:]*));\\.)"},
                    {"tag_name": "envoy.response_code"},
                    {"tag_name": "envoy.response_code_class"},
                    {"tag_name": "envoy.listener_address"},
                    {"tag_name": "envoy.virtual_host"},
                    {"tag_name": "envoy.virtual_cluster"},
                    {"tag_name": "envoy.worker_id"}
                ]
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"}
            },
            "static_resources": {"clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": grpc}}}
                }]}]}
            }]}
        });
        // The gateways of istio-system keep their plain names (log and bootstrap files).
        let id = if ns == "istio-system" {
            name.to_string()
        } else {
            format!("{name}.{ns}")
        };
        let file = self.dir.path().join(format!("{id}-bootstrap.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&bootstrap)?)?;
        let args: Vec<String> = vec![
            "-c".into(),
            file.display().to_string(),
            "--disable-hot-restart".into(),
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "warning".into(),
            "--drain-time-s".into(),
            "1".into(),
        ];
        let process = Process::start(&id, &self.tools.envoy, &args, self.dir.path())?;
        Ok(Envoy {
            name: id,
            admin,
            process,
        })
    }

    async fn wait_envoy_live(&self, i: usize) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (name, admin) = {
                let mut e = self.envoys[i].lock().map_err(|_| anyhow!("poisoned"))?;
                e.process.check_running()?;
                (e.name.clone(), e.admin)
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], admin));
            if http::get(addr, "admin", "/ready")
                .is_some_and(|r| r.status == 200 && r.body.trim() == "LIVE")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy {name} not LIVE after {START_TIMEOUT:?} (istiod never delivered its config); {}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where tests send their requests: the ingress Envoy's listener.
    pub fn ingress(&self) -> SocketAddr {
        self.ingress
    }

    /// The `knative-local-gateway` Envoy's listener.
    pub fn local_gateway(&self) -> SocketAddr {
        self.local_gateway
    }

    /// A folder that lives as long as the data plane (logs of every process are there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Fails if a process has exited or an Envoy rejected an xDS update (`update_rejected`
    /// counters in its admin `/stats`): a newer istiod emitting something this Envoy does not
    /// understand must fail loudly, not route stale config.
    pub fn check_healthy(&self) -> Result<()> {
        self.istiod
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .check_running()?;
        for e in &self.envoys {
            check_envoy(&mut *e.lock().map_err(|_| anyhow!("poisoned"))?)?;
        }
        for e in self
            .gateways
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .values_mut()
        {
            check_envoy(e)?;
        }
        Ok(())
    }

    /// The ends of the logs of istiod and the Envoys, plus istiod's view of the proxies.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Ok(p) = self.istiod.lock() {
            out.push_str(&format!(
                "\n--- istiod ({}):\n{}",
                p.log_path().display(),
                p.log_tail(40)
            ));
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.istiod_http));
        if let Some(r) = http::get(addr, "istiod", "/debug/syncz") {
            out.push_str(&format!("\n--- istiod /debug/syncz:\n{}", r.body));
        }
        let tail = |e: &Envoy| {
            format!(
                "\n--- {} ({}):\n{}",
                e.name,
                e.process.log_path().display(),
                e.process.log_tail(20)
            )
        };
        for e in &self.envoys {
            if let Ok(e) = e.lock() {
                out.push_str(&tail(&e));
            }
        }
        if let Ok(gateways) = self.gateways.lock() {
            for e in gateways.values() {
                out.push_str(&tail(e));
            }
        }
        out
    }

    /// The data plane's Prometheus, started on the first call (a few seconds; it costs
    /// nothing to tests that never call this): it scrapes every model server every second,
    /// with the labels `namespace`, `isvc` and `revision` (see [`crate::prometheus`] for the
    /// metrics and queries), and both Envoys' `/stats/prometheus` (label `envoy`). While it
    /// runs, [`DataPlane::serve_inference_service`] routes to a new revision only once
    /// Prometheus has scraped it, so its counters start from 0 in Prometheus.
    pub async fn prometheus(&self) -> Result<&Prometheus> {
        self.prometheus
            .get_or_try_init(|| {
                Prometheus::start(prometheus::Options {
                    targets: Some(self.scrape.clone()),
                    parent_dir: Some(self.dir.path().to_path_buf()),
                    ..prometheus::Options::default()
                })
            })
            .await
    }

    /// The current configuration dump of the ingress Envoy (for failure messages).
    pub fn ingress_config_dump(&self) -> String {
        let Ok(e) = self.envoys[0].lock() else {
            return String::new();
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], e.admin));
        http::get(addr, "admin", "/config_dump?resource=dynamic_route_configs")
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// The current route configuration of the Envoy of Gateway API Gateway `ns/gateway`
    /// ([`DataPlane::serve_gateway`]; for failure messages).
    pub fn gateway_config_dump(&self, ns: &str, gateway: &str) -> String {
        let admin = match self.gateways.lock() {
            Ok(g) => g.get(&format!("{ns}/{gateway}")).map(|e| e.admin),
            Err(_) => None,
        };
        admin
            .and_then(|admin| {
                let addr = SocketAddr::from(([127, 0, 0, 1], admin));
                http::get(addr, "admin", "/config_dump?resource=dynamic_route_configs")
            })
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// Plays Istio's gateway deployment controller (off in istiod here) for a Gateway API
    /// Gateway: writes Gateway `ns/gateway` (class `istio`, no addresses, so Istio binds it
    /// to the Service of its automated deployment, `<gateway>-istio`; one HTTP listener on
    /// port 80 for routes of its namespace) and makes that deployment: an Envoy in `ns` with
    /// the label `gateway.networking.k8s.io/gateway-name: <gateway>` at a loopback address of
    /// its own, registered as Service `ns/<gateway>-istio` port 80 (named `http`; Istio's
    /// Services are `LoadBalancer`, this one needs no more than a cluster IP). Returns where
    /// that Envoy listens once it serves the listener (its routes may come a moment later).
    pub async fn serve_gateway(&self, ns: &str, gateway: &str) -> Result<SocketAddr> {
        let client = self.client().await?;
        let name = format!("{gateway}-istio");
        let ip = next_ip()?;
        let port = free_port()?;
        let labels = BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), gateway.to_string())]);
        register_backend(&client, ns, &name, &labels, 80, ip, port).await?;
        apply(
            &client,
            &gateway_api_gateway(),
            Some(ns),
            &json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": gateway, "namespace": ns},
            "spec": {"gatewayClassName": "istio", "listeners": [{
                "name": "http", "port": 80, "protocol": "HTTP",
                "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}),
        )
        .await?;
        let mut envoy = self.start_envoy(
            &name,
            ns,
            ip,
            (GATEWAY_NAME_LABEL, gateway),
            self.istiod_grpc,
        )?;
        let deadline = Instant::now() + START_TIMEOUT;
        let admin = SocketAddr::from(([127, 0, 0, 1], envoy.admin));
        while !http::get(admin, "admin", "/ready")
            .is_some_and(|r| r.status == 200 && r.body.trim() == "LIVE")
        {
            envoy.process.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "Envoy {} not LIVE after {START_TIMEOUT:?}; {}",
                    envoy.name,
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let addr = SocketAddr::from((ip, port));
        let r = crate::wait_for(
            &format!("the listener of Gateway {ns}/{gateway} on {addr}"),
            START_TIMEOUT,
            || async move {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(drop)
            },
        )
        .await;
        if let Err(e) = r {
            bail!(
                "{e}; last lines of {}:\n{}\n{}",
                envoy.process.log_path().display(),
                envoy.process.log_tail(20),
                self.diagnostics()
            );
        }
        check_envoy(&mut envoy)?;
        self.gateways
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(format!("{ns}/{gateway}"), envoy);
        Ok(addr)
    }

    async fn client(&self) -> Result<Client> {
        crate::client_from_yaml(&self.kubeconfig).await
    }

    /// Stands in for KServe + Knative serving InferenceService `ns/name` as it is now:
    /// starts a new predictor revision (an MLServer whose model is named `name`, the model
    /// variant chosen by the label `app.kubernetes.io/version`: `v1` serves the second model,
    /// anything else the first), registers it (Service + WorkloadEntry `<name>-predictor-NNNNN`),
    /// waits until it answers `/v2/models/<name>/ready`, moves the Knative-side route to it
    /// and waits until `knative-local-gateway` routes there, then writes the InferenceService
    /// status Ready, as KServe does (Serverless mode, see [`kserve`]). A previous revision
    /// keeps serving until then, and is stopped afterwards. Until its first revision is ready
    /// an InferenceService is `Ready: Unknown` ([`State::NotReady`]); a previously served one
    /// goes `Ready: Unknown` with reason OutOfDate ([`State::OutOfDate`]) and, once the new
    /// revision exists, without a reason ([`State::Rolling`]), as KServe writes it.
    ///
    /// Returns the revision's name.
    pub async fn serve_inference_service(&self, ns: &str, name: &str) -> Result<String> {
        let client = self.client().await?;
        let isvcs: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &inference_service());
        let isvc = isvcs
            .get(name)
            .await
            .with_context(|| format!("reading InferenceService {ns}/{name}"))?;
        let variant = match isvc
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/version"))
            .map(String::as_str)
        {
            Some("v1") => "v1",
            _ => "v0",
        };
        let faults = Faults::from_annotations(isvc.metadata.annotations.as_ref())
            .with_context(|| format!("InferenceService {ns}/{name}"))?;
        let generation = isvc.metadata.generation.unwrap_or(1);
        let created = isvc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(objects::now);
        // The Knative Service's generation is the one KServe reports; here it follows the
        // InferenceService's generation the harness serves.
        let report = |state: State, observed: i64| {
            let (client, created) = (client.clone(), created.clone());
            async move {
                kserve::write(
                    &client,
                    ns,
                    name,
                    &state,
                    observed,
                    &Times::now_since(&created),
                )
                .await
            }
        };
        let key = (ns.to_string(), name.to_string());
        // Not held while the server starts: other InferenceServices may start meanwhile.
        let previous = self.models.lock().await.remove(&key);
        match &previous {
            Some(old) => {
                let state = State::OutOfDate {
                    revision: old.revision.clone(),
                };
                report(state, old.generation).await?;
            }
            None => report(State::NotReady, generation).await?,
        }

        let n = self.revisions.fetch_add(1, Ordering::Relaxed) + 1;
        let revision = kserve::revision(name, i64::from(n));
        let ip = next_ip()?;
        // Everything up to a routed, answering revision; on failure what was registered for
        // the new revision is removed and a previous revision keeps serving (as in Knative,
        // a failed revision does not take traffic from the last ready one).
        let mut scraped = None;
        let started: Result<ModelServer> = async {
        let (mut server, port) =
            self.start_model_server(ns, name, &revision, variant, generation, ip, faults)?;
        // Scraped from the start: its metrics port answers once MLServer runs.
        let metrics = SocketAddr::from((ip, server.ports.metrics));
        self.scrape.add(metrics, BTreeMap::from([
            ("namespace".to_string(), ns.to_string()),
            ("isvc".to_string(), name.to_string()),
            ("revision".to_string(), revision.clone()),
        ]))?;
        scraped = Some(metrics);
        if let Some(old) = &previous {
            let state = State::Rolling {
                ready: old.revision.clone(),
                created: revision.clone(),
            };
            report(state, generation).await?;
        }
        register_backend(
            &client,
            ns,
            &revision,
            &BTreeMap::from([("serving.knative.dev/revision".to_string(), revision.clone())]),
            80,
            ip,
            port,
        )
        .await?;
        // Readiness from the real server.
        let direct = SocketAddr::from((ip, port));
        let ready_path = format!("/v2/models/{name}/ready");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            server.process.check_running()?;
            if http::get(direct, "model", &ready_path).is_some_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "MLServer {revision} did not answer {ready_path} within {START_TIMEOUT:?}; last lines of {}:\n{}",
                    server.process.log_path().display(),
                    server.process.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // With Prometheus running, no traffic before it has the counters at 0: `increase()`
        // then counts every request the revision gets. (A test may have stopped it: then
        // there is nothing to wait for.)
        if let Some(prometheus) = self.prometheus.get() {
            let scraped = format!("up{{instance=\"{metrics}\"}} == 1");
            crate::wait_for(
                &format!("Prometheus to scrape MLServer {revision} ({scraped})"),
                START_TIMEOUT,
                || {
                    let scraped = scraped.as_str();
                    async move {
                        let seen = prometheus.value(scraped).ok().flatten().is_some();
                        (seen || !prometheus.is_running()).then_some(())
                    }
                },
            )
            .await
            .map_err(|e| anyhow!("{e}; last lines of Prometheus's log:\n{}", prometheus.log_tail(20)))?;
        }

        // What Knative's net-istio writes for the predictor's Knative Service (here: only the
        // cluster-local part, bound to knative-local-gateway): the predictor host goes to the
        // ready revision. The response header names the revision, so the harness can see when
        // the gateway routes to it (Knative's prober checks a hash header the same way).
        let predictor = format!("{name}-predictor");
        apply(&client, &knative_virtual_service(), Some(ns), &json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": format!("{predictor}-ingress"), "namespace": ns,
                "labels": {"networking.internal.knative.dev/ingress": predictor,
                           "app.kubernetes.io/managed-by": "testenv-standing-in-for-net-istio"}},
            "spec": {
                "gateways": ["knative-serving/knative-local-gateway"],
                "hosts": [format!("{predictor}.{ns}"), format!("{predictor}.{ns}.svc"),
                          format!("{predictor}.{ns}.svc.cluster.local")],
                "http": [{"route": [{
                    "destination": {"host": format!("{revision}.{ns}.svc.cluster.local"), "port": {"number": 80}},
                    "headers": {"response": {"set": {REVISION_HEADER: revision}}}}]}]}}))
        .await?;
        let host = format!("{predictor}.{ns}.svc.cluster.local");
        let gw = self.local_gateway;
        crate::wait_for(
            &format!("knative-local-gateway to route {host} to {revision}"),
            START_TIMEOUT,
            || {
                let (host, path, revision) = (host.clone(), ready_path.clone(), revision.clone());
                async move {
                    http::get(gw, &host, &path).filter(|r| {
                        r.status == 200 && r.headers.get(REVISION_HEADER) == Some(&revision)
                    })
                }
            },
        )
        .await
        .map_err(|e| anyhow!("{e}; {}", self.diagnostics()))?;
        self.check_healthy()?;
        Ok(server)
        }
        .await;
        let server = match started {
            Ok(server) => server,
            Err(e) => {
                if let Some(metrics) = scraped {
                    let _ = self.scrape.remove(metrics);
                }
                let _ = unregister_backend(&client, ns, &revision).await;
                if let Some(old) = previous {
                    self.models.lock().await.entry(key).or_insert(old);
                }
                return Err(e);
            }
        };

        let ready = State::Ready {
            revision: revision.clone(),
        };
        report(ready, generation).await?;
        if let Some(old) = previous {
            self.retire(&client, ns, old).await;
        }
        self.models.lock().await.insert(key, server);
        Ok(revision)
    }

    /// Stands in for KServe when InferenceService `ns/name` was deleted: stops its model
    /// server and removes what was registered for it.
    pub async fn stop_inference_service(&self, ns: &str, name: &str) -> Result<()> {
        let client = self.client().await?;
        let old = self
            .models
            .lock()
            .await
            .remove(&(ns.to_string(), name.to_string()));
        if let Some(old) = old {
            self.retire(&client, ns, old).await;
        }
        let vss: Api<DynamicObject> = Api::namespaced_with(client, ns, &knative_virtual_service());
        let _ = vss
            .delete(
                &format!("{name}-predictor-ingress"),
                &DeleteParams::default(),
            )
            .await;
        Ok(())
    }

    /// The model server of InferenceService `ns/name`, if one serves it.
    pub async fn model_server(&self, ns: &str, name: &str) -> Option<ModelServerPorts> {
        self.models
            .lock()
            .await
            .get(&(ns.to_string(), name.to_string()))
            .map(|m| m.ports)
    }

    /// The model variant (`v0`, `v1`) InferenceService `ns/name` is served with, if any.
    pub async fn served_variant(&self, ns: &str, name: &str) -> Option<String> {
        self.models
            .lock()
            .await
            .get(&(ns.to_string(), name.to_string()))
            .map(|m| m.variant.clone())
    }

    /// The faults InferenceService `ns/name`'s model server injects, if one serves it.
    pub async fn served_faults(&self, ns: &str, name: &str) -> Option<Faults> {
        self.models
            .lock()
            .await
            .get(&(ns.to_string(), name.to_string()))
            .map(|m| m.faults)
    }

    async fn retire(&self, client: &Client, ns: &str, mut old: ModelServer) {
        let _ = self
            .scrape
            .remove(SocketAddr::from((old.ports.ip, old.ports.metrics)));
        old.process.stop(Duration::from_secs(5));
        let _ = unregister_backend(client, ns, &old.revision).await;
    }

    #[allow(clippy::too_many_arguments)]
    fn start_model_server(
        &self,
        ns: &str,
        name: &str,
        revision: &str,
        variant: &str,
        generation: i64,
        ip: Ipv4Addr,
        faults: Faults,
    ) -> Result<(ModelServer, u16)> {
        let root = self.dir.path().join(format!("{ns}-{revision}"));
        let model_dir = root.join(name);
        std::fs::create_dir_all(&model_dir)?;
        let src = self.tools.models.join(variant);
        std::fs::copy(src.join("model.joblib"), model_dir.join("model.joblib"))?;
        // The trained variant's settings, served by the harness's runtime (next to the model,
        // where MLServer looks for a custom runtime's module) with the faults to inject.
        let mut settings: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("model-settings.json"))?)
                .context("the trained model's model-settings.json")?;
        settings["name"] = json!(name);
        settings["implementation"] = json!(format!("{RUNTIME_MODULE}.TestenvSKLearnModel"));
        settings["parameters"]["extra"] =
            json!({"error_share": faults.error_share, "delay_ms": faults.delay_ms});
        std::fs::write(
            model_dir.join("model-settings.json"),
            serde_json::to_vec_pretty(&settings)?,
        )?;
        std::fs::write(model_dir.join(format!("{RUNTIME_MODULE}.py")), RUNTIME)?;
        let (http, grpc, metrics) = (free_port()?, free_port()?, free_port()?);
        // parallel_workers 0: the default worker pool crash-loops with current uvloop.
        std::fs::write(
            root.join("settings.json"),
            serde_json::to_vec_pretty(&json!({
                "host": ip.to_string(), "http_port": http, "grpc_port": grpc,
                "metrics_port": metrics, "parallel_workers": 0, "debug": false,
                "server_name": revision}))?,
        )?;
        let process = Process::start(
            &format!("mlserver-{ns}-{revision}"),
            &self.tools.mlserver,
            &["start".to_string(), root.display().to_string()],
            self.dir.path(),
        )?;
        Ok((
            ModelServer {
                revision: revision.to_string(),
                faults,
                variant: variant.to_string(),
                generation,
                process,
                ports: ModelServerPorts {
                    ip,
                    http,
                    grpc,
                    metrics,
                },
            },
            http,
        ))
    }
}

/// Fails if the Envoy has exited or rejected an xDS update (see [`DataPlane::check_healthy`]).
fn check_envoy(e: &mut Envoy) -> Result<()> {
    e.process.check_running()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], e.admin));
    let stats = http::get(addr, "admin", "/stats?filter=update_rejected")
        .ok_or_else(|| anyhow!("Envoy {} admin /stats does not answer", e.name))?
        .body;
    let rejected: Vec<&str> = stats
        .lines()
        .filter(|l| l.contains("update_rejected") && !l.trim_end().ends_with(": 0"))
        .collect();
    if !rejected.is_empty() {
        bail!(
            "Envoy {} rejected configuration from istiod: {}; last lines of {}:\n{}",
            e.name,
            rejected.join(", "),
            e.process.log_path().display(),
            e.process.log_tail(20)
        );
    }
    Ok(())
}

/// Registers a backend listening on `ip:target_port` as Service `ns/name` (port `port`,
/// named `http`, selecting `labels`) plus a WorkloadEntry with those labels: istiod then
/// sends Envoy the endpoint `ip:target_port`. Stands in for a Pod and its EndpointSlice.
pub async fn register_backend(
    client: &Client,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
    ip: Ipv4Addr,
    target_port: u16,
) -> Result<()> {
    apply(client, &service(), Some(ns), &json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": port, "targetPort": target_port}]}}))
    .await?;
    register_workload(client, ns, name, labels, ip, Some(("http", target_port))).await
}

/// A WorkloadEntry `ns/name` at `ip` with `labels`, so Services selecting those labels get
/// the endpoint `ip` (port: the named port's number if given, else the Service's targetPort).
pub async fn register_workload(
    client: &Client,
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    ip: Ipv4Addr,
    port: Option<(&str, u16)>,
) -> Result<()> {
    let mut spec = json!({"address": ip.to_string(), "labels": labels});
    if let Some((pname, p)) = port {
        spec["ports"] = json!({pname: p});
    }
    apply(
        client,
        &workload_entry(),
        Some(ns),
        &json!({
        "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .await
}

async fn unregister_backend(client: &Client, ns: &str, name: &str) -> Result<()> {
    let dp = DeleteParams::default();
    let _ = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &workload_entry())
        .delete(name, &dp)
        .await;
    let _ = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), ns)
        .delete(name, &dp)
        .await;
    Ok(())
}

/// One data plane shared by every test of a test binary, on the shared control plane
/// ([`crate::shared`]), started on first use. Its processes end with the test binary.
pub fn shared() -> Result<&'static DataPlane> {
    static SHARED: OnceLock<std::result::Result<DataPlane, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            std::thread::spawn(|| {
                let cp = crate::shared().map_err(|e| format!("{e:#}"))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(DataPlane::start(cp))
                    .map_err(|e| format!("{e:#}"))
            })
            .join()
            .unwrap_or_else(|_| Err("data plane start-up panicked".into()))
        })
        .as_ref()
        .map_err(|e| anyhow!("starting the shared data plane (istiod, Envoy) failed: {e}"))
}
