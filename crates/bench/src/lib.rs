//! Side-by-side benchmark of our routing controller, the original Iter8 v1.1.2 controller and
//! the [`floor`] (the least a controller can do on the same work) on one real control plane
//! (etcd + kube-apiserver from `testenv`).
//!
//! Each contender runs in turn, alone, in a fresh namespace of its own, as its own client-
//! certificate user (bound to cluster-admin) so the API server's audit log attributes every
//! request to it. Per run:
//!
//! 1. **bulk convergence**: `N` applications shaped like the tutorial (InferenceServices
//!    `<app>-0` Ready and `<app>-1` not Ready, the tutorial's canary routemap) are created;
//!    time until every VirtualService carries exactly the primary route.
//! 2. **readiness-to-route**: `M` candidates are marked Ready one at a time through the status
//!    subresource (as KServe writes it); time until a watch on VirtualServices sees the
//!    candidate route.
//! 3. **no-change restart**: the controller is restarted (as a new user) with nothing changed;
//!    its requests and writes until it goes quiet. For ours, counting starts only after its
//!    `/metrics` show it has reconciled every routemap up to the apply step ([`Reconciled`]),
//!    so "no writes" means it looked and found nothing to write.
//!
//! Resource use comes from `/proc/<pid>` (VmHWM, VmRSS, utime + stime); API cost from the
//! audit log.

pub mod abn;
pub mod floor;
pub mod load_grpc;
pub mod load_http;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use testenv::fixtures::{self, config_map, inference_service, virtual_service};
use testenv::process::free_port;
use testenv::routes::route_names;
use testenv::{kserve, objects, ControlPlane};

/// Which controller a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The [`floor`]: a watch and one apply per change of route, nothing else.
    Floor,
    Ours,
    Original,
}

impl Kind {
    /// Every contender, in the order of the table's columns.
    pub const ALL: [Kind; 3] = [Kind::Floor, Kind::Ours, Kind::Original];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Ours => "ours",
            Kind::Original => "original",
        }
    }

    /// The contender of `label` ([`Kind::label`]).
    pub fn parse(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.label() == label)
    }

    /// Resources the contender watches once it has started.
    fn watches(self) -> &'static [&'static str] {
        match self {
            Kind::Floor => &["inferenceservices"],
            Kind::Ours | Kind::Original => &["configmaps", "inferenceservices", "virtualservices"],
        }
    }
}

/// The contenders of a comma-separated list of labels (`floor,ours,original`), in its order.
pub fn parse_contenders(list: &str) -> Result<Vec<Kind>> {
    let mut out = Vec::new();
    for label in list.split(',').map(str::trim) {
        let kind = Kind::parse(label).ok_or_else(|| {
            anyhow!("unknown contender {label:?}: expected floor, ours or original")
        })?;
        if out.contains(&kind) {
            bail!("contender {label} given twice");
        }
        out.push(kind);
    }
    Ok(out)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Number of applications.
    pub apps: usize,
    /// Number of candidates made Ready one by one (at most `apps`).
    pub candidates: usize,
    /// Our `iter8` binary.
    pub ours: PathBuf,
    /// The original controller's binary (`iter8` of v1.1.2).
    pub original: PathBuf,
    /// The `bench` binary, whose hidden `floor` subcommand runs the [`floor`].
    pub floor: PathBuf,
    /// How long to wait for convergence before giving up.
    pub timeout: Duration,
    /// Measure the no-change restart.
    pub restart: bool,
    /// Extra environment for the original (e.g. HELM_QPS to lift its client-side throttle).
    pub original_env: Vec<(String, String)>,
    /// Contenders, in run order, e.g. [Floor, Ours, Original].
    pub order: Vec<Kind>,
    /// How many times the whole order runs; the table reports medians and spreads.
    pub rounds: usize,
}

/// Figures of one controller run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub kind: Option<Kind>,
    /// The contender's namespace.
    pub namespace: String,
    pub apps: usize,
    pub converged: usize,
    /// From the first create until the last VirtualService carried the primary route.
    pub convergence: Option<Duration>,
    /// From the first create until the benchmark had created every application.
    pub created: Option<Duration>,
    pub latencies: Vec<Duration>,
    pub candidates_routed: usize,
    pub peak_rss_kib: u64,
    pub steady_rss_kib: u64,
    pub cpu_converge_s: f64,
    pub cpu_total_s: f64,
    pub req_converge: Counts,
    pub req_readiness: Counts,
    pub readiness_window: Duration,
    pub restart: Option<RestartReport>,
}

impl RunReport {
    /// API requests (other than on Leases: leader election is time-, not work-driven) per
    /// readiness change routed.
    pub fn requests_per_readiness_change(&self) -> f64 {
        self.req_readiness.non_lease() as f64 / self.candidates_routed.max(1) as f64
    }

    /// From the benchmark's last create until the last VirtualService converged.
    pub fn after_last_create(&self) -> Option<Duration> {
        Some(self.convergence?.saturating_sub(self.created?))
    }
}

/// Figures of the no-change restart.
#[derive(Debug, Clone, Default)]
pub struct RestartReport {
    pub counts: Counts,
    pub quiet_after: Duration,
    pub capped: bool,
    pub peak_rss_kib: u64,
    pub cpu_s: f64,
    /// What the restarted controller says it did (ours only: the original has no such
    /// metrics).
    pub reconciled: Option<Reconciled>,
}

/// What our restarted controller's `/metrics` say it did, at the end of the restart phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciled {
    /// Reconciles finished.
    pub reconciles: f64,
    /// Routing object applies by result.
    pub applied: f64,
    pub unchanged: f64,
    pub failed: f64,
    /// Routing objects deleted.
    pub deletes: f64,
    /// Events published.
    pub events: f64,
}

impl Reconciled {
    fn of(m: &testenv::metrics::Scrape) -> Reconciled {
        Reconciled {
            reconciles: m.reconciles_finished(),
            applied: m.applies("applied"),
            unchanged: m.applies("unchanged"),
            failed: m.applies("failed"),
            deletes: m.get("iter8_deletes_total", None),
            events: m.get("iter8_events_total", None),
        }
    }
}

/// Waits until our controller on admin port `port` has finished at least `routemaps`
/// reconciles that got to the apply step and has nothing queued or in progress: with one
/// routing template per routemap, every routemap was looked at.
async fn wait_reconciled(port: u16, routemaps: usize, within: Duration) -> Result<()> {
    let n = routemaps as f64;
    testenv::wait_for(
        &format!("the restarted controller to reconcile all {routemaps} routemaps"),
        within,
        || async move {
            let m = testenv::metrics::scrape(port).ok()?;
            let applies = m.applies("applied") + m.applies("unchanged") + m.applies("failed");
            (m.reconciles_finished() >= n && applies >= n && m.is_idle()).then_some(())
        },
    )
    .await
}

/// Requests of one user in a stretch of the audit log.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub total: u64,
    /// create/update/patch/delete on virtualservices.
    pub vs_writes: u64,
    /// Writes on leases (ours: leader election renewals).
    pub lease_writes: u64,
    /// Events created.
    pub event_writes: u64,
    /// Every other write (finalizer updates, ...).
    pub other_writes: u64,
    /// By `verb resource`.
    pub by_kind: BTreeMap<String, u64>,
}

impl Counts {
    pub fn writes(&self) -> u64 {
        self.vs_writes + self.lease_writes + self.event_writes + self.other_writes
    }
    /// Requests other than lease traffic (leader election), which is time- not work-driven.
    pub fn non_lease(&self) -> u64 {
        self.total
            - self
                .by_kind
                .iter()
                .filter(|(k, _)| k.ends_with(" leases"))
                .map(|(_, v)| v)
                .sum::<u64>()
    }
}

/// The controller config both controllers get: the original chart's resource types table,
/// a resync long enough not to fire during a run.
const CONTROLLER_CONFIG: &str = r#"defaultResync: 1h
resourceTypes:
  svc: {Group: "", Version: v1, Resource: services}
  service: {Group: "", Version: v1, Resource: services}
  cm: {Group: "", Version: v1, Resource: configmaps}
  deploy: {Group: apps, Version: v1, Resource: deployments, conditions: [Available]}
  isvc: {Group: serving.kserve.io, Version: v1beta1, Resource: inferenceservices, conditions: [Ready]}
  vs: {Group: networking.istio.io, Version: v1beta1, Resource: virtualservices}
  httproute: {Group: gateway.networking.k8s.io, Version: v1, Resource: httproutes}
"#;

fn app_name(i: usize) -> String {
    format!("app{i}")
}

/// A running controller process; killed when dropped.
struct Proc {
    child: Child,
    admin_port: Option<u16>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn terminate(mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }
}

/// Peak and current RSS (KiB) of a process.
fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0.0;
    };
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get(14) + get(15)) / clock_ticks()
}

/// Reads the audit log from byte offsets.
struct Audit {
    path: PathBuf,
}

#[derive(Debug, Clone)]
struct AuditLine {
    user: String,
    verb: String,
    resource: String,
    subresource: String,
}

impl Audit {
    fn offset(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Requests (one per request: a watch counts when it starts, others when they complete)
    /// between `from` and `to` (byte offsets).
    fn lines(&self, from: u64, to: u64) -> Result<Vec<AuditLine>> {
        Ok(self.lines_upto(from, to)?.0)
    }

    /// Like [`Audit::lines`], also returning where the last complete line ends.
    fn lines_upto(&self, from: u64, to: u64) -> Result<(Vec<AuditLine>, u64)> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(from))?;
        let mut reader = std::io::BufReader::new(f);
        let mut pos = from;
        let mut out = Vec::new();
        let mut line = String::new();
        while pos < to {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            pos += n as u64;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let verb = v["verb"].as_str().unwrap_or_default().to_string();
            let stage = v["stage"].as_str().unwrap_or_default();
            let counted = if verb == "watch" {
                stage == "ResponseStarted"
            } else {
                stage == "ResponseComplete" || stage == "Panic"
            };
            if !counted {
                continue;
            }
            out.push(AuditLine {
                user: v["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                verb,
                // A request on no resource (discovery, /version) by its path.
                resource: v["objectRef"]["resource"]
                    .as_str()
                    .or_else(|| v["requestURI"].as_str()?.split('?').next())
                    .unwrap_or("-")
                    .to_string(),
                subresource: v["objectRef"]["subresource"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            });
        }
        Ok((out, pos))
    }

    fn counts(&self, user: &str, from: u64, to: u64) -> Result<Counts> {
        let mut c = Counts::default();
        for l in self.lines(from, to)?.into_iter().filter(|l| l.user == user) {
            c.total += 1;
            let res = if l.subresource.is_empty() {
                l.resource.clone()
            } else {
                format!("{}/{}", l.resource, l.subresource)
            };
            *c.by_kind.entry(format!("{} {}", l.verb, res)).or_default() += 1;
            if matches!(
                l.verb.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            ) {
                match l.resource.as_str() {
                    "virtualservices" => c.vs_writes += 1,
                    "leases" => c.lease_writes += 1,
                    "events" => c.event_writes += 1,
                    _ => c.other_writes += 1,
                }
            }
        }
        Ok(c)
    }

    /// Whether `user` has started watches on every one of `resources` since `from`.
    fn watching(&self, user: &str, from: u64, resources: &[&str]) -> bool {
        let Ok(lines) = self.lines(from, self.offset()) else {
            return false;
        };
        resources.iter().all(|r| {
            lines
                .iter()
                .any(|l| l.user == user && l.verb == "watch" && l.resource == *r)
        })
    }

    /// Waits until `user` has sent no request (other than on leases) for `quiet`, or `cap`
    /// passed since `started`. Returns (time of the last request after `started`, capped).
    async fn wait_quiet(
        &self,
        user: &str,
        from: u64,
        started: Instant,
        quiet: Duration,
        cap: Duration,
    ) -> Result<(Duration, bool)> {
        // Reads only what is new each time: re-parsing a large log would load the machine.
        let mut pos = from;
        let mut last_change = Instant::now();
        let mut last_activity = started;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (lines, end) = self.lines_upto(pos, self.offset())?;
            pos = end;
            let n = lines
                .iter()
                .filter(|l| l.user == user && l.resource != "leases")
                .count();
            if n > 0 {
                last_change = Instant::now();
                last_activity = Instant::now();
            }
            if last_change.elapsed() >= quiet {
                return Ok((last_activity - started, false));
            }
            if started.elapsed() >= cap {
                return Ok((started.elapsed(), true));
            }
        }
    }
}

/// Per-VS arrival times, filled by a watch.
#[derive(Default)]
struct Arrivals {
    /// First time each VS carried exactly the primary route.
    primary: HashMap<String, Instant>,
    /// First time each VS carried the candidate route.
    candidate: HashMap<String, Instant>,
}

fn spawn_vs_watch(client: Client, ns: &str) -> (Arc<Mutex<Arrivals>>, tokio::task::JoinHandle<()>) {
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &virtual_service());
    let a = arrivals.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            let now = Instant::now();
            let obj = match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => o,
                _ => continue,
            };
            let name = obj.name_any();
            let r = route_names(&obj);
            let mut g = a.lock().unwrap_or_else(|e| e.into_inner());
            if r == [format!("{name}-0")] {
                g.primary.entry(name).or_insert(now);
            } else if r == [format!("{name}-1"), format!("{name}-0")] {
                g.candidate.entry(name).or_insert(now);
            }
        }
    });
    (arrivals, task)
}

/// Creates InferenceService `name` of application `app` and writes the status KServe writes
/// for it, not ready or ready.
async fn apply_isvc(client: &Client, ns: &str, app: &str, name: &str, ready: bool) -> Result<()> {
    let obj = fixtures::inference_service_object(app, name, "gs://m");
    objects::apply(client, &inference_service(), Some(ns), &obj, "helm").await?;
    set_ready(client, ns, name, ready).await
}

/// Writes the status KServe writes (Serverless mode) for a just-created or a ready
/// InferenceService, through the status subresource.
async fn set_ready(client: &Client, ns: &str, name: &str, ready: bool) -> Result<()> {
    kserve::report(client, ns, name, ready, 1).await
}

async fn create_app(client: &Client, ns: &str, app: &str) -> Result<()> {
    apply_isvc(client, ns, app, &format!("{app}-0"), true).await?;
    apply_isvc(client, ns, app, &format!("{app}-1"), false).await?;
    let spec = fixtures::tutorial_routemap(app, ns, 2)?;
    let cm = fixtures::routemap_object(&format!("{app}-routemap"), json!({ "strSpec": spec }));
    objects::apply(client, &config_map(), Some(ns), &cm, "helm").await?;
    Ok(())
}

/// A kubeconfig file for `user`, bound to cluster-admin.
async fn user_kubeconfig(cp: &ControlPlane, client: &Client, user: &str) -> Result<PathBuf> {
    let crb: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("bench-{user}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &crb)
        .await
        .with_context(|| format!("binding {user} to cluster-admin"))?;
    let path = cp.dir().join(format!("{user}.kubeconfig"));
    std::fs::write(&path, cp.user_kubeconfig(user)?)?;
    Ok(path)
}

fn start_controller(
    cp: &ControlPlane,
    settings: &Settings,
    kind: Kind,
    ns: &str,
    kubeconfig: &Path,
    tag: &str,
) -> Result<Proc> {
    let dir = cp.dir().join(format!("{}-{tag}", kind.label()));
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("controller.log"))?;
    if kind == Kind::Floor {
        let mut cmd = Command::new(&settings.floor);
        cmd.args(["floor", "--namespace", ns, "--kubeconfig"])
            .arg(kubeconfig)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} floor", settings.floor.display()))?;
        return Ok(Proc {
            child,
            admin_port: None,
        });
    }
    let config = dir.join("config.yaml");
    std::fs::write(&config, CONTROLLER_CONFIG)?;
    let mut cmd;
    let mut admin_port = None;
    match kind {
        Kind::Ours => {
            let port = free_port()?;
            admin_port = Some(port);
            cmd = Command::new(&settings.ours);
            cmd.args([
                "controller",
                "--admin-address",
                &format!("127.0.0.1:{port}"),
                "--abn-address",
                "127.0.0.1:0",
                "--metrics-dir",
            ])
            .arg(dir.join("metrics"))
            .env("LOG_LEVEL", "warn");
        }
        Kind::Floor => unreachable!("started above"),
        Kind::Original => {
            // As its chart runs it: the A/B/n gRPC service and the metrics HTTP service (with
            // BadgerDB storage) start alongside the controllers; free ports and a private dir.
            let abn = dir.join("abn.yaml");
            std::fs::write(&abn, format!("port: {}\n", free_port()?))?;
            let metrics = dir.join("metrics.yaml");
            let badger = dir.join("metrics");
            std::fs::write(
                &metrics,
                format!(
                    "port: {}\nimplementation: badgerdb\nbadgerdb:\n  dir: {}\n",
                    free_port()?,
                    badger.display()
                ),
            )?;
            cmd = Command::new(&settings.original);
            cmd.args(["controllers", "-l", "warning"])
                .env("ABN_CONFIG_FILE", &abn)
                .env("METRICS_CONFIG_FILE", &metrics)
                .env("METRICS_DIR", &badger);
            for (k, v) in &settings.original_env {
                cmd.env(k, v);
            }
        }
    }
    cmd.env("POD_NAME", "iter8-0")
        .env("POD_NAMESPACE", ns)
        .env("CONFIG_FILE", &config)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    Ok(Proc { child, admin_port })
}

/// Waits until the contender has started its watches ([`Kind::watches`]), and for ours until
/// /readyz answers 200.
async fn wait_started(
    audit: &Audit,
    kind: Kind,
    user: &str,
    from: u64,
    proc_: &mut Proc,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc_.child.try_wait()? {
            bail!("controller exited early with {status}");
        }
        let ready = proc_.admin_port.is_none_or(|p| {
            testenv::http::get_local(p, "/readyz").is_some_and(|r| r.status == 200)
        });
        if ready && audit.watching(user, from, kind.watches()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("controller {user} did not start watching within 60s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Gives the audit log a moment to catch up with responses already received.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Runs one controller through the three phases.
pub async fn run_one(
    cp: &ControlPlane,
    settings: &Settings,
    kind: Kind,
    round: usize,
) -> Result<RunReport> {
    let client = cp.client().await?;
    let audit = Audit {
        path: cp.dir().join("audit.log"),
    };
    let ns = cp.namespace(&format!("bench-{}", kind.label())).await?;
    let user = format!("bench-{}-{round}", kind.label());
    let kubeconfig = user_kubeconfig(cp, &client, &user).await?;
    let mut report = RunReport {
        kind: Some(kind),
        namespace: ns.clone(),
        apps: settings.apps,
        ..RunReport::default()
    };

    let (arrivals, watch_task) = spawn_vs_watch(client.clone(), &ns);
    let off_start = audit.offset();
    let mut proc_ = start_controller(cp, settings, kind, &ns, &kubeconfig, &format!("{round}"))?;
    wait_started(&audit, kind, &user, off_start, &mut proc_).await?;
    let pid = proc_.pid();
    let cpu0 = cpu_seconds(pid);

    // (a) bulk convergence.
    settle().await;
    let off_converge = audit.offset();
    let t0 = Instant::now();
    let apps: Vec<String> = (0..settings.apps).map(app_name).collect();
    futures::stream::iter(apps.iter())
        .map(|app| create_app(&client, &ns, app))
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let created = t0.elapsed();
    report.created = Some(created);
    let deadline = t0 + settings.timeout;
    loop {
        let done = arrivals.lock().map(|g| g.primary.len()).unwrap_or(0);
        if done >= settings.apps {
            let last = arrivals
                .lock()
                .ok()
                .and_then(|g| g.primary.values().max().copied())
                .unwrap_or_else(Instant::now);
            report.convergence = Some(last - t0);
            report.converged = done;
            break;
        }
        if Instant::now() > deadline {
            report.converged = done;
            eprintln!(
                "{}: only {done}/{} VirtualServices converged within {:?}",
                kind.label(),
                settings.apps,
                settings.timeout
            );
            break;
        }
        if let Some(status) = proc_.child.try_wait()? {
            bail!(
                "{} controller exited with {status} during convergence",
                kind.label()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{}: created {} apps in {created:?}; converged {}/{} in {:?}",
        kind.label(),
        settings.apps,
        report.converged,
        settings.apps,
        report.convergence
    );
    // Let the tail of the work (events, finalizers) finish before counting.
    let (_, _) = audit
        .wait_quiet(
            &user,
            off_converge,
            Instant::now(),
            Duration::from_secs(3),
            settings.timeout,
        )
        .await?;
    settle().await;
    let off_ready = audit.offset();
    report.req_converge = audit.counts(&user, off_converge, off_ready)?;
    report.cpu_converge_s = cpu_seconds(pid) - cpu0;

    // (b) readiness-to-route, one candidate at a time.
    let t_ready = Instant::now();
    for app in apps.iter().take(settings.candidates) {
        let t = Instant::now();
        set_ready(&client, &ns, &format!("{app}-1"), true).await?;
        let deadline = t + settings.timeout.min(Duration::from_secs(300));
        loop {
            let got = arrivals
                .lock()
                .ok()
                .and_then(|g| g.candidate.get(app).copied());
            if let Some(at) = got {
                report.latencies.push(at.saturating_duration_since(t));
                report.candidates_routed += 1;
                break;
            }
            if Instant::now() > deadline {
                eprintln!("{}: candidate {app} not routed in time", kind.label());
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    audit
        .wait_quiet(
            &user,
            off_ready,
            Instant::now(),
            Duration::from_secs(3),
            Duration::from_secs(300),
        )
        .await?;
    settle().await;
    let off_after = audit.offset();
    report.readiness_window = t_ready.elapsed();
    report.req_readiness = audit.counts(&user, off_ready, off_after)?;
    let (peak, steady) = rss(pid);
    report.peak_rss_kib = peak;
    report.steady_rss_kib = steady;
    report.cpu_total_s = cpu_seconds(pid) - cpu0;

    // (c) no-change restart, as a new user so the audit log separates it.
    if settings.restart {
        proc_.terminate()?;
        let user2 = format!("{user}-restart");
        let kc2 = user_kubeconfig(cp, &client, &user2).await?;
        settle().await;
        let off = audit.offset();
        let started = Instant::now();
        let mut p2 = start_controller(cp, settings, kind, &ns, &kc2, &format!("{round}-restart"))?;
        wait_started(&audit, kind, &user2, off, &mut p2).await?;
        if let Some(port) = p2.admin_port {
            wait_reconciled(port, settings.apps, settings.timeout).await?;
        }
        let (quiet_after, capped) = audit
            .wait_quiet(
                &user2,
                off,
                started,
                Duration::from_secs(5),
                settings.timeout,
            )
            .await?;
        settle().await;
        let counts = audit.counts(&user2, off, audit.offset())?;
        let (peak, _) = rss(p2.pid());
        let reconciled = match p2.admin_port {
            Some(port) => Some(Reconciled::of(&testenv::metrics::scrape(port)?)),
            None => None,
        };
        report.restart = Some(RestartReport {
            counts,
            quiet_after,
            capped,
            peak_rss_kib: peak,
            cpu_s: cpu_seconds(p2.pid()),
            reconciled,
        });
        p2.terminate()?;
    } else {
        proc_.terminate()?;
    }
    watch_task.abort();
    Ok(report)
}

/// Runs every contender in `settings.order`, each on a fresh namespace, `settings.rounds`
/// times over (interleaved, so a noisy stretch of the machine hits every contender alike).
pub async fn run(cp: &ControlPlane, settings: &Settings) -> Result<Vec<RunReport>> {
    let mut out = Vec::new();
    for round in 0..settings.rounds.max(1) {
        for (i, kind) in settings.order.iter().enumerate() {
            let run = round * settings.order.len() + i;
            eprintln!("round {}: {} ...", round + 1, kind.label());
            out.push(run_one(cp, settings, *kind, run).await?);
        }
    }
    Ok(out)
}

/// The median of `values` (the lower middle one for an even count) and its index; NaNs
/// ignored.
fn median(values: &[f64]) -> Option<(usize, f64)> {
    let mut idx: Vec<usize> = (0..values.len()).filter(|i| !values[*i].is_nan()).collect();
    idx.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let i = *idx.get(idx.len().checked_sub(1)? / 2)?;
    Some((i, values[i]))
}

/// "min–max" of the numbers among `values`.
fn spread(values: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let nums: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    let min = nums.iter().copied().fold(f64::INFINITY, f64::min);
    let max = nums.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if nums.is_empty() {
        String::new()
    } else {
        format!("{}–{}", fmt(min), fmt(max))
    }
}

fn pct(v: &[Duration], p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort();
    let idx = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[idx.clamp(1, s.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "—".into())
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "—".into())
}

/// `a ÷ b`: how many times `b`'s figure `a`'s is; empty when either is not a number.
fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() {
        String::new()
    } else if a == 0.0 && b == 0.0 {
        "=".into()
    } else if b == 0.0 {
        "∞".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The ratio columns of the table: (numerator, denominator, heading).
const RATIOS: [(Kind, Kind, &str); 2] = [
    (Kind::Ours, Kind::Floor, "ours ÷ floor"),
    (Kind::Original, Kind::Ours, "original ÷ ours"),
];

/// A figure of one contender: its text, and the number ratios are taken of (NaN: none).
type Cell = (String, f64);

/// The Markdown table comparing the contenders: a column per contender that ran (floor,
/// ours, original), then "ours ÷ floor" and "original ÷ ours" where both ran. With several
/// rounds, each figure is the median round's, with the spread (lowest–highest) of the
/// numbers, and each ratio is the median of the ratios taken within each round.
pub fn markdown(reports: &[RunReport]) -> String {
    // rounds[c][r]: contender c's run in round r.
    let kinds: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|k| reports.iter().any(|r| r.kind == Some(*k)))
        .collect();
    let rounds: Vec<Vec<&RunReport>> = kinds
        .iter()
        .map(|k| reports.iter().filter(|r| r.kind == Some(*k)).collect())
        .collect();
    let Some(first) = reports.first() else {
        return "no run\n".into();
    };
    let ratios: Vec<_> = RATIOS
        .into_iter()
        .filter(|(a, b, _)| kinds.contains(a) && kinds.contains(b))
        .collect();
    // rows: (name, cells[c][r]).
    let mut rows: Vec<(String, Vec<Vec<Cell>>)> = Vec::new();
    let mut row = |name: String, cell: &dyn Fn(&RunReport) -> Cell| {
        let cells = rounds
            .iter()
            .map(|runs| runs.iter().map(|r| cell(r)).collect())
            .collect();
        rows.push((name, cells));
    };
    let secs_of = |x: Option<Duration>| x.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    let routed = reports
        .iter()
        .map(|r| r.candidates_routed)
        .max()
        .unwrap_or(0);
    let per_change = |r: &RunReport, n: u64| n as f64 / r.candidates_routed.max(1) as f64;

    row(format!("bulk convergence, {} apps", first.apps), &|r| {
        (
            format!("{} ({}/{})", secs(r.convergence), r.converged, r.apps),
            secs_of(r.convergence),
        )
    });
    row(
        "… of which the benchmark creating the apps".into(),
        &|r| (secs(r.created), f64::NAN),
    );
    row("… convergence after the last create".into(), &|r| {
        (ms(r.after_last_create()), secs_of(r.after_last_create()))
    });
    for (label, p) in [("p50", 50.0), ("p95", 95.0), ("p99", 99.0)] {
        row(
            format!("readiness→route {label} ({routed} candidates)"),
            &|r| {
                let v = pct(&r.latencies, p);
                (ms(v), secs_of(v))
            },
        );
    }
    row("peak RSS (VmHWM)".into(), &|r| {
        (mib(r.peak_rss_kib), r.peak_rss_kib as f64)
    });
    row("steady RSS (VmRSS after readiness phase)".into(), &|r| {
        (mib(r.steady_rss_kib), r.steady_rss_kib as f64)
    });
    row("CPU during bulk convergence".into(), &|r| {
        (format!("{:.2} s", r.cpu_converge_s), r.cpu_converge_s)
    });
    row("CPU total (convergence + readiness)".into(), &|r| {
        (format!("{:.2} s", r.cpu_total_s), r.cpu_total_s)
    });
    row("API requests, bulk convergence (per app)".into(), &|r| {
        let n = r.req_converge.total;
        (
            format!("{n} ({:.1})", n as f64 / r.apps.max(1) as f64),
            n as f64,
        )
    });
    row(
        "API requests per readiness change (excl. lease)".into(),
        &|r| {
            let v = r.requests_per_readiness_change();
            (format!("{v:.2}"), v)
        },
    );
    row(
        "API requests per readiness change (all, incl. lease renewals)".into(),
        &|r| {
            let v = per_change(r, r.req_readiness.total);
            (format!("{v:.2}"), v)
        },
    );
    row("VS writes per readiness change".into(), &|r| {
        let v = per_change(r, r.req_readiness.vs_writes);
        (format!("{v:.2}"), v)
    });
    row(
        "other writes per readiness change (events / finalizers / leases)".into(),
        &|r| {
            let c = &r.req_readiness;
            (
                format!(
                    "{:.2} ({} ev, {} other, {} lease)",
                    per_change(r, c.writes() - c.vs_writes),
                    c.event_writes,
                    c.other_writes,
                    c.lease_writes
                ),
                f64::NAN,
            )
        },
    );
    if reports.iter().any(|r| r.restart.is_some()) {
        let none = || ("—".to_string(), f64::NAN);
        row(
            "no-change restart: API requests (excl. lease)".into(),
            &|r| {
                r.restart.as_ref().map_or_else(none, |x| {
                    let n = x.counts.non_lease();
                    (n.to_string(), n as f64)
                })
            },
        );
        row(
            "no-change restart: writes (VS / events / other, excl. lease)".into(),
            &|r| {
                r.restart.as_ref().map_or_else(none, |x| {
                    let c = &x.counts;
                    (
                        format!("{} / {} / {}", c.vs_writes, c.event_writes, c.other_writes),
                        f64::NAN,
                    )
                })
            },
        );
        row("no-change restart: busy for".into(), &|r| {
            r.restart.as_ref().map_or_else(none, |x| {
                let capped = if x.capped { " (capped)" } else { "" };
                let s = x.quiet_after.as_secs_f64();
                (format!("{s:.1} s{capped}"), s)
            })
        });
    }

    let heading = |k: Kind| match k {
        Kind::Original => "original v1.1.2",
        k => k.label(),
    };
    let n_rounds = rounds.iter().map(Vec::len).max().unwrap_or(0);
    let mut s = String::new();
    if n_rounds > 1 {
        s.push_str(&format!(
            "Median of {n_rounds} rounds (lowest–highest); ratios: median of each round's ratio.\n\n"
        ));
    }
    s.push_str("| metric |");
    for k in &kinds {
        s.push_str(&format!(" {} |", heading(*k)));
    }
    for (_, _, h) in &ratios {
        s.push_str(&format!(" {h} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(kinds.len() + ratios.len()));
    s.push('\n');
    let index = |k: Kind| kinds.iter().position(|x| *x == k);
    for (name, cells) in rows {
        s.push_str(&format!("| {name} |"));
        for per_round in &cells {
            let values: Vec<f64> = per_round.iter().map(|(_, v)| *v).collect();
            let text = match median(&values) {
                Some((i, median)) if per_round.len() > 1 => {
                    // The spread relative to the median, so it reads the same in any unit.
                    let rel = spread(&values, |v| {
                        if median == 0.0 {
                            format!("{v:.2}")
                        } else {
                            format!("{:.2}", v / median)
                        }
                    });
                    let unit = if median == 0.0 { "" } else { "×" };
                    format!("{} ({rel}{unit})", per_round[i].0)
                }
                _ => per_round
                    .first()
                    .map(|(t, _)| t.clone())
                    .unwrap_or_default(),
            };
            s.push_str(&format!(" {text} |"));
        }
        for (a, b, _) in &ratios {
            let of = |k: Kind| index(k).map(|i| &cells[i]);
            let per_round: Vec<f64> = match (of(*a), of(*b)) {
                (Some(xa), Some(xb)) => xa
                    .iter()
                    .zip(xb)
                    .map(|((_, va), (_, vb))| {
                        if *va == 0.0 && *vb == 0.0 {
                            1.0
                        } else {
                            va / vb
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let text = if per_round.len() > 1 {
                match median(&per_round) {
                    Some((_, m)) => {
                        format!("{m:.2}x ({})", spread(&per_round, |v| format!("{v:.2}")))
                    }
                    None => String::new(),
                }
            } else {
                match (of(*a), of(*b)) {
                    (Some(xa), Some(xb)) => ratio(xa[0].1, xb[0].1),
                    _ => String::new(),
                }
            };
            s.push_str(&format!(" {text} |"));
        }
        s.push('\n');
    }
    s
}

/// Request breakdown by verb and resource, per controller and phase.
pub fn breakdown(reports: &[RunReport]) -> String {
    let mut s = String::new();
    for r in reports {
        let label = r.kind.map(Kind::label).unwrap_or("?");
        let mut phases = vec![
            ("bulk convergence", &r.req_converge),
            ("readiness changes", &r.req_readiness),
        ];
        if let Some(rs) = &r.restart {
            phases.push(("no-change restart", &rs.counts));
        }
        for (phase, c) in phases {
            let parts: Vec<String> = c.by_kind.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            s.push_str(&format!("- {label}, {phase}: {}\n", parts.join(", ")));
        }
    }
    s
}

/// Locates the original controller binary built by `testenv/setup.sh --with-original`.
pub fn original_binary() -> Result<PathBuf> {
    let v = testenv::tools::version("ITER8_ORIGINAL_VERSION");
    let path = testenv::tools::cache_dir().join(format!("iter8-original-{v}/bin/iter8"));
    if !path.exists() {
        return Err(anyhow!(
            "the original Iter8 {v} controller is not built ({} is missing); run `testenv/setup.sh --with-original`",
            path.display()
        ));
    }
    Ok(path)
}

/// Machine facts for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpus} CPUs ({model}), {mem} RAM")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: Kind, rss_mib: u64) -> RunReport {
        RunReport {
            kind: Some(kind),
            peak_rss_kib: rss_mib * 1024,
            ..RunReport::default()
        }
    }

    #[test]
    fn rounds_give_the_median_with_its_spread_and_the_median_of_each_rounds_ratio() {
        let reports = [
            run(Kind::Floor, 10),
            run(Kind::Ours, 20),
            run(Kind::Floor, 20),
            run(Kind::Ours, 30),
            run(Kind::Floor, 40),
            run(Kind::Ours, 44),
        ];
        let table = markdown(&reports);
        let line = table
            .lines()
            .find(|l| l.starts_with("| peak RSS"))
            .expect("a peak RSS row");
        // Floor: median 20 (0.5–2.0 of it); ours: median 30; ratios 2.0, 1.5, 1.1 → 1.5.
        assert_eq!(
            line,
            "| peak RSS (VmHWM) | 20.0 MiB (0.50–2.00×) | 30.0 MiB (0.67–1.47×) | 1.50x (1.10–2.00) |"
        );
        assert!(table.starts_with("Median of 3 rounds"), "{table}");
    }

    #[test]
    fn one_round_reads_as_before() {
        let table = markdown(&[run(Kind::Floor, 10), run(Kind::Ours, 20)]);
        assert!(
            table.contains("| peak RSS (VmHWM) | 10.0 MiB | 20.0 MiB | 2.00x |"),
            "{table}"
        );
    }
}
