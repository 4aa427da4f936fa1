//! What `iter8 status` and `iter8 explain` read of an application, with namespace-scoped
//! reads only (get and list of ConfigMaps, of the versions' objects, of the routing objects,
//! and of events.k8s.io Events), so a namespace user's permissions suffice. API I/O; the
//! weighing it does in between is the controller's own, on plain values.
//!
//! An application is a routemap ConfigMap (label `iter8.tools/kind=routemap`); its name is
//! the routemap's without `-routemap`. The versions are weighed exactly as the controller
//! weighs them ([`iter8_core::availability::weigh`], then [`iter8_k8s::analysis::steer`] with
//! the analysis status ConfigMap `<routemap>-analysis`), the routing templates rendered with
//! those weights name the routing objects, and those are read live.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use iter8_core::availability::{weigh, Observed, Weighing};
use iter8_core::config::{Config, ResourceType};
use iter8_core::render::render;
use iter8_core::routemap::ResourceRef;
use iter8_k8s::analysis::{self as glue, StatusRecord};
use iter8_k8s::controller::ROUTEMAP_KIND_LABEL;
use iter8_k8s::keys::Gvr;
use iter8_k8s::state::{self, RoutemapRecord};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::render_cmd::KNOWN_KINDS;

/// Where to read: the kubeconfig flags shared by `status` and `explain` (as kubectl's).
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Namespace of the application (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config; in a pod, its
    /// ServiceAccount).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    /// Controller config file, for resource types and readiness conditions other than the
    /// built-in ones (as the controller chart's `config.yaml`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ClusterArgs {
    /// A client, the namespace to read and the controller config.
    pub async fn connect(&self) -> Result<(Client, String, Config)> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &options).await?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
            None => kube::Config::infer()
                .await
                .context("no Kubernetes configuration found (use --kubeconfig)")?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let controller_config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                Config::from_yaml(&text)
                    .with_context(|| format!("config file {}", path.display()))?
            }
            None => Config::default(),
        };
        Ok((Client::try_from(config)?, namespace, controller_config))
    }
}

/// One object read from the API.
#[derive(Clone, Debug)]
pub enum Fetched {
    Found(Box<DynamicObject>),
    Missing,
    /// The read failed (forbidden, the type is not served, ...), in words.
    Failed(String),
}

impl Fetched {
    pub fn found(&self) -> Option<&DynamicObject> {
        match self {
            Fetched::Found(o) => Some(o),
            _ => None,
        }
    }
}

/// A resource of a version, as read.
#[derive(Clone, Debug)]
pub struct Resource {
    pub reference: ResourceRef,
    /// Its configured type; `None`: the controller does not know the `gvrShort`.
    pub rtype: Option<ResourceType>,
    /// Its kind, from the object, else from the type's plural.
    pub kind: String,
    pub object: Fetched,
}

/// A routing object: what the controller would apply now, and what is live.
#[derive(Clone, Debug)]
pub struct Routing {
    pub template: String,
    pub gvr_short: String,
    pub kind: String,
    pub name: String,
    /// The object rendered with the current weights (`None`: the template renders nothing;
    /// `Err`: it fails).
    pub rendered: Result<Option<Value>, String>,
    pub live: Fetched,
}

/// The newest Event about a routemap.
#[derive(Clone, Debug, PartialEq)]
pub struct LastEvent {
    pub kind: String,
    pub reason: String,
    pub note: String,
    pub time: Option<jiff::Timestamp>,
}

/// Everything read about one application.
#[derive(Clone, Debug)]
pub struct App {
    pub namespace: String,
    /// The routemap ConfigMap's name.
    pub routemap: String,
    pub record: RoutemapRecord,
    /// Resources of each version, in routemap order.
    pub versions: Vec<Vec<Resource>>,
    /// The versions weighed as the controller weighs them; `None` while the routemap is held.
    pub weighing: Option<Weighing>,
    /// The analysis status ConfigMap, if any: its record and `phase`/`message` keys.
    pub analysis: Option<(StatusRecord, String, String)>,
    pub routing: Vec<Routing>,
    pub last_event: Option<LastEvent>,
}

impl App {
    /// The application's name: the routemap's without `-routemap`.
    pub fn name(&self) -> &str {
        glue::application(&self.routemap)
    }

    /// Each version's resource names, for mapping destinations.
    pub fn version_names(&self) -> crate::routes::Versions {
        crate::routes::Versions {
            resources: self
                .versions
                .iter()
                .map(|v| v.iter().map(|r| r.reference.name.clone()).collect())
                .collect(),
        }
    }

    /// The API types whose changes can change what is shown (for `--watch`).
    pub fn watched_types(&self) -> Vec<(Gvr, String)> {
        let mut out: Vec<(Gvr, String)> = Vec::new();
        for r in self.versions.iter().flatten() {
            if let Some(rt) = &r.rtype {
                out.push((Gvr::of(rt), r.kind.clone()));
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

/// The kind of objects of type `rt`: a well-known kind, else the plural itself.
fn kind_of(rt: &ResourceType) -> String {
    KNOWN_KINDS
        .iter()
        .find(|(g, _, p)| *g == rt.group && p.eq_ignore_ascii_case(&rt.resource))
        .map_or_else(|| rt.resource.clone(), |(_, k, _)| k.to_string())
}

fn api_of(client: &Client, ns: &str, rt: &ResourceType) -> Api<DynamicObject> {
    let ar = Gvr::of(rt).api_resource(&kind_of(rt));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// One read, with a 404 told apart from failures.
async fn fetch(api: &Api<DynamicObject>, name: &str) -> Fetched {
    match api.get_opt(name).await {
        Ok(Some(o)) => Fetched::Found(Box::new(o)),
        Ok(None) => Fetched::Missing,
        Err(kube::Error::Api(s)) if s.code == 403 => Fetched::Failed(format!(
            "cannot be read: forbidden ({})",
            s.message.split(':').next().unwrap_or_default()
        )),
        Err(e) => Fetched::Failed(format!("cannot be read: {e}")),
    }
}

/// The routemap ConfigMaps of namespace `ns`, by name.
pub async fn routemaps(client: &Client, ns: &str) -> Result<Vec<ConfigMap>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut cms = api
        .list(&ListParams::default().labels(ROUTEMAP_KIND_LABEL))
        .await
        .with_context(|| format!("listing the routemaps of namespace {ns}"))?
        .items;
    cms.sort_by_key(|cm| cm.name_any());
    Ok(cms)
}

/// The routemap of application `app` in `ns`: the ConfigMap `app-routemap`, else `app` (as the
/// A/B/n service looks it up), if it carries the routemap label.
pub async fn routemap(client: &Client, ns: &str, app: &str) -> Result<ConfigMap> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let (kind_key, kind_value) = ROUTEMAP_KIND_LABEL
        .split_once('=')
        .unwrap_or((ROUTEMAP_KIND_LABEL, ""));
    for name in [format!("{app}-routemap"), app.to_string()] {
        let found = api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading ConfigMap {ns}/{name}"))?;
        if let Some(cm) = found {
            if cm.labels().get(kind_key).map(String::as_str) == Some(kind_value) {
                return Ok(cm);
            }
        }
    }
    bail!(
        "no application {app} in namespace {ns}: no ConfigMap {app}-routemap or {app} labelled {ROUTEMAP_KIND_LABEL}"
    )
}

/// The versions weighed as the controller weighs them, from the objects read.
pub fn weigh_versions(
    record: &RoutemapRecord,
    versions: &[Vec<Resource>],
    analysis: Option<&StatusRecord>,
    config: &Config,
) -> Option<Weighing> {
    let rm = record.spec.as_ref().ok()?;
    let mut objects: HashMap<(String, String, String), Observed> = HashMap::new();
    for r in versions.iter().flatten() {
        if let Some(o) = r.object.found() {
            objects.insert(
                (
                    r.reference.gvr_short.clone(),
                    r.reference.namespace_or(&record.meta.namespace).to_string(),
                    r.reference.name.clone(),
                ),
                state::observe(o),
            );
        }
    }
    let lookup = |short: &str, ns: &str, name: &str| {
        objects
            .get(&(short.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    };
    let mut weighing = weigh(rm, &record.meta.namespace, config, &lookup);
    glue::steer(&mut weighing, record.analysis.as_ref(), analysis);
    Some(weighing)
}

/// Reads application `cm` (a routemap ConfigMap) and everything it names.
pub async fn app(client: &Client, cm: &ConfigMap, config: &Config) -> Result<App> {
    let namespace = cm.namespace().unwrap_or_default();
    let record = RoutemapRecord::read(cm, config);

    let mut versions = Vec::new();
    if let Ok(rm) = &record.spec {
        for v in &rm.versions {
            let mut resources = Vec::new();
            for r in &v.resources {
                let rtype = config.resource_types.get(&r.gvr_short).cloned();
                let (kind, object) = match &rtype {
                    Some(rt) => {
                        let ns = r.namespace_or(&namespace);
                        let object = fetch(&api_of(client, ns, rt), &r.name).await;
                        let kind = object
                            .found()
                            .and_then(|o| o.types.as_ref())
                            .map_or_else(|| kind_of(rt), |t| t.kind.clone());
                        (kind, object)
                    }
                    None => (
                        r.gvr_short.clone(),
                        Fetched::Failed(format!(
                            "unknown resource type {:?}: not in the controller's config",
                            r.gvr_short
                        )),
                    ),
                };
                resources.push(Resource {
                    reference: r.clone(),
                    rtype,
                    kind,
                    object,
                });
            }
            versions.push(resources);
        }
    }

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let analysis = match configmaps.get_opt(&glue::status_name(&cm.name_any())).await {
        Ok(Some(status)) => glue::observe_status(&status).map(|(_, rec)| {
            let data = status.data.clone().unwrap_or_default();
            let key = |k: &str| data.get(k).cloned().unwrap_or_default();
            (rec, key(glue::PHASE_KEY), key(glue::MESSAGE_KEY))
        }),
        Ok(None) => None,
        Err(e) => bail!(
            "reading the analysis status of routemap {namespace}/{}: {e}",
            cm.name_any()
        ),
    };

    let weighing = weigh_versions(&record, &versions, analysis.as_ref().map(|a| &a.0), config);

    let mut routing = Vec::new();
    if let (Ok(rm), Some(weighing)) = (&record.spec, &weighing) {
        for rendered in render(&record.meta, rm, weighing) {
            let rtype = config.resource_types.get(&rendered.gvr_short);
            let object = rendered.result.map_err(|e| e.to_string());
            let (kind, name) = match &object {
                Ok(Some(o)) => (
                    o.get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    o.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
                _ => (rtype.map(kind_of).unwrap_or_default(), String::new()),
            };
            let live = match (rtype, &object) {
                (Some(rt), Ok(Some(o))) => {
                    let ns = o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(&namespace);
                    fetch(&api_of(client, ns, rt), &name).await
                }
                (None, _) => Fetched::Failed(format!(
                    "unknown resource type {:?}: not in the controller's config",
                    rendered.gvr_short
                )),
                _ => Fetched::Missing,
            };
            routing.push(Routing {
                template: rendered.template,
                gvr_short: rendered.gvr_short,
                kind,
                name,
                rendered: object,
                live,
            });
        }
    }

    let last_event = last_event(client, &namespace, &cm.name_any()).await;
    Ok(App {
        namespace,
        routemap: cm.name_any(),
        record,
        versions,
        weighing,
        analysis,
        routing,
        last_event,
    })
}

/// The newest events.k8s.io Event about routemap `name`; `None` if there is none or Events
/// cannot be read.
async fn last_event(client: &Client, ns: &str, name: &str) -> Option<LastEvent> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let events = api.list(&ListParams::default()).await.ok()?.items;
    events
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("ConfigMap") && r.name.as_deref() == Some(name)
            })
        })
        .map(|e| {
            let time = e
                .series
                .as_ref()
                .map(|s| s.last_observed_time.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            LastEvent {
                kind: e.type_.unwrap_or_default(),
                reason: e.reason.unwrap_or_default(),
                note: e.note.unwrap_or_default(),
                time,
            }
        })
        .max_by_key(|e| e.time)
}
