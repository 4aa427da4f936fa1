//! `iter8 render`: offline, from a routemap file and object files (with their status), print
//! the weights and the routing objects the controller would apply. No cluster needed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use iter8_core::availability::{weigh, Observed};
use iter8_core::config::{Config, ResourceType};
use iter8_core::render::{check_target, render, RoutemapMeta};
use iter8_core::routemap;
use serde_json::Value;

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The routemap: a ConfigMap YAML file (as `kubectl get cm NAME -o yaml` prints it).
    #[arg(long)]
    routemap: PathBuf,
    /// Files with the version objects (InferenceServices, Deployments, ...), with their
    /// status; several YAML documents per file are fine. Missing objects count as not ready;
    /// an object of no configured resource type is ignored with a warning.
    #[arg(long = "objects", short = 'f')]
    objects: Vec<PathBuf>,
    /// Controller config file (defaults to the built-in resource types).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The objects of a YAML file: every non-empty document, with the items of `kind: List`
/// documents spliced in. Every error names the file.
fn documents(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let v: Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("{}: document {} is not valid YAML", path.display(), i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => docs
                .extend(
                    o.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                ),
            other => docs.push(other),
        }
    }
    Ok(docs)
}

/// Plural resource names of well-known kinds, as `(group, kind, plural)`. Offline there is
/// no discovery to ask; kinds not listed get [`guess_plural`].
pub(crate) const KNOWN_KINDS: &[(&str, &str, &str)] = &[
    ("", "ConfigMap", "configmaps"),
    ("", "Endpoints", "endpoints"),
    ("", "Pod", "pods"),
    ("", "Secret", "secrets"),
    ("", "Service", "services"),
    ("apps", "DaemonSet", "daemonsets"),
    ("apps", "Deployment", "deployments"),
    ("apps", "ReplicaSet", "replicasets"),
    ("apps", "StatefulSet", "statefulsets"),
    ("gateway.networking.k8s.io", "Gateway", "gateways"),
    ("gateway.networking.k8s.io", "GRPCRoute", "grpcroutes"),
    ("gateway.networking.k8s.io", "HTTPRoute", "httproutes"),
    ("gateway.networking.k8s.io", "TCPRoute", "tcproutes"),
    ("gateway.networking.k8s.io", "TLSRoute", "tlsroutes"),
    ("gateway.networking.k8s.io", "UDPRoute", "udproutes"),
    ("networking.istio.io", "DestinationRule", "destinationrules"),
    ("networking.istio.io", "Gateway", "gateways"),
    ("networking.istio.io", "ServiceEntry", "serviceentries"),
    ("networking.istio.io", "Sidecar", "sidecars"),
    ("networking.istio.io", "VirtualService", "virtualservices"),
    ("networking.istio.io", "WorkloadEntry", "workloadentries"),
    ("networking.k8s.io", "Ingress", "ingresses"),
    ("serving.knative.dev", "Configuration", "configurations"),
    ("serving.knative.dev", "Revision", "revisions"),
    ("serving.knative.dev", "Route", "routes"),
    ("serving.knative.dev", "Service", "services"),
    (
        "serving.kserve.io",
        "ClusterServingRuntime",
        "clusterservingruntimes",
    ),
    ("serving.kserve.io", "InferenceGraph", "inferencegraphs"),
    ("serving.kserve.io", "InferenceService", "inferenceservices"),
    ("serving.kserve.io", "ServingRuntime", "servingruntimes"),
];

/// The plural Kubernetes gives a CRD kind by default: lower case, then `y` -> `ies`,
/// `s`/`x`/`ch`/`sh` -> `+es`, else `+s`.
fn guess_plural(kind: &str) -> String {
    let singular = kind.to_lowercase();
    if let Some(stem) = singular.strip_suffix('y') {
        format!("{stem}ies")
    } else if ["s", "x", "ch", "sh"].iter().any(|e| singular.ends_with(e)) {
        format!("{singular}es")
    } else {
        format!("{singular}s")
    }
}

/// The plural resource name of `kind` in `group`: from [`KNOWN_KINDS`], else guessed.
/// `None` when the guess is a listed kind's plural: the API would reject the kind.
fn plural_of(group: &str, kind: &str) -> Option<String> {
    if let Some((_, _, plural)) = KNOWN_KINDS
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
    {
        return Some(plural.to_string());
    }
    let guess = guess_plural(kind);
    let taken = KNOWN_KINDS
        .iter()
        .any(|(g, _, p)| *g == group && *p == guess);
    (!taken).then_some(guess)
}

/// Whether objects of `kind` in `group` are of resource type `rt`.
fn is_of_type(group: &str, kind: &str, rt: &ResourceType) -> bool {
    rt.group == group
        && plural_of(group, kind).is_some_and(|p| p.eq_ignore_ascii_case(&rt.resource))
}

/// The kind a rendered object of type `rt` must have, for [`check_target`]: the object's own
/// kind when it is of that type, else the listed kind of the type, else a description.
fn expected_kind(rt: &ResourceType, found: &str) -> String {
    if !found.is_empty() && is_of_type(&rt.group, found, rt) {
        return found.to_string();
    }
    KNOWN_KINDS
        .iter()
        .find(|(g, _, p)| *g == rt.group && p.eq_ignore_ascii_case(&rt.resource))
        .map_or_else(
            || format!("the kind of {}", rt.resource),
            |(_, k, _)| k.to_string(),
        )
}

fn str_map(v: &Value) -> std::collections::BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(args: RenderArgs) -> Result<()> {
    let mut out = String::new();
    let result = render_to(&args, &mut out);
    // Write once; a closed pipe (`| head`) is not an error worth a panic.
    let mut stdout = std::io::stdout().lock();
    match std::io::Write::write_all(&mut stdout, out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    result
}

/// Reads the controller config file, or takes the built-in one.
fn load_config(path: Option<&Path>) -> Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Config::from_yaml(&text)
        .with_context(|| format!("{}: invalid controller config", path.display()))
}

/// The objects of `paths`, keyed by (gvrShort, namespace, name) under every configured type
/// they are of. Objects default to namespace `namespace`.
fn load_objects(
    paths: &[PathBuf],
    config: &Config,
    namespace: &str,
) -> Result<HashMap<(String, String, String), Observed>> {
    let mut objects = HashMap::new();
    for path in paths {
        for (i, obj) in documents(path)?.into_iter().enumerate() {
            let at = || format!("{}: object {}", path.display(), i + 1);
            let kind = match obj["kind"].as_str() {
                Some(k) if !k.is_empty() => k,
                _ => bail!("{} has no kind", at()),
            };
            let name = match obj["metadata"]["name"].as_str() {
                Some(n) if !n.is_empty() => n,
                _ => bail!("{} ({kind}) has no metadata.name", at()),
            };
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or(namespace);
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
            let shorts: Vec<&String> = config
                .resource_types
                .iter()
                .filter(|(_, rt)| is_of_type(group, kind, rt))
                .map(|(short, _)| short)
                .collect();
            if shorts.is_empty() {
                let configured: Vec<&str> =
                    config.resource_types.keys().map(String::as_str).collect();
                let resource = plural_of(group, kind).unwrap_or_default();
                // Files from `kubectl get all` hold Pods and ReplicaSets too: say so, go on.
                eprintln!(
                    "warning: {}: {kind} {ns}/{name} (apiVersion {api_version:?}, resource \
                     {resource:?}) matches no configured resource type (configured: {}); ignored",
                    path.display(),
                    configured.join(", ")
                );
                continue;
            }
            let observed = Observed::new(
                obj["metadata"]["generation"].as_i64(),
                !obj["metadata"]["deletionTimestamp"].is_null(),
                str_map(&obj["metadata"]["annotations"]),
            )
            .with_spec(obj.get("spec").unwrap_or(&Value::Null))
            .with_status(obj.get("status").unwrap_or(&Value::Null));
            for short in shorts {
                objects.insert(
                    (short.clone(), ns.to_string(), name.to_string()),
                    observed.clone(),
                );
            }
        }
    }
    Ok(objects)
}

fn render_to(args: &RenderArgs, out: &mut String) -> Result<()> {
    use std::fmt::Write as _;
    let config = load_config(args.config.as_deref())?;
    let cms = documents(&args.routemap)?;
    let cm = match cms.as_slice() {
        [cm] if cm["kind"] == "ConfigMap" => cm,
        [other] => bail!(
            "{} must hold exactly one routemap ConfigMap, found kind {}",
            args.routemap.display(),
            other["kind"]
        ),
        _ => bail!(
            "{} must hold exactly one routemap ConfigMap, found {} objects",
            args.routemap.display(),
            cms.len()
        ),
    };
    let meta = &cm["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
    let rm_meta = RoutemapMeta {
        name: meta["name"].as_str().unwrap_or_default().to_string(),
        namespace: namespace.clone(),
        uid: meta["uid"].as_str().unwrap_or_default().to_string(),
        labels: str_map(&meta["labels"]),
        annotations: str_map(&meta["annotations"]),
    };
    let spec = cm["data"]["strSpec"]
        .as_str()
        .with_context(|| format!("{} has no data.strSpec", args.routemap.display()))?;
    let rm = routemap::parse(spec, &namespace, &config)
        .with_context(|| format!("{}: invalid routemap", args.routemap.display()))?;
    for w in rm.warnings(&config) {
        eprintln!("warning: {w}");
    }

    let objects = load_objects(&args.objects, &config, &namespace)?;
    let lookup = |s: &str, ns: &str, n: &str| {
        objects
            .get(&(s.to_string(), ns.to_string(), n.to_string()))
            .cloned()
    };
    let weighing = weigh(&rm, &namespace, &config, &lookup);
    let _ = writeln!(out, "# weights: {:?}", weighing.weights);
    for (i, available) in weighing.available.iter().enumerate() {
        let _ = writeln!(
            out,
            "# version {i}: {}",
            if *available {
                "available"
            } else {
                "not available"
            }
        );
    }
    for p in &weighing.problems {
        eprintln!("warning: {p}");
    }
    let mut failed = false;
    for r in render(&rm_meta, &rm, &weighing) {
        let obj = match r.result {
            Ok(Some(obj)) => obj,
            Ok(None) => {
                let _ = writeln!(out, "# template {}: renders nothing", r.template);
                continue;
            }
            Err(e) => {
                eprintln!("error: template {}: {e}", r.template);
                failed = true;
                continue;
            }
        };
        let checked = match config.resource_types.get(&r.gvr_short) {
            Some(rt) => {
                let expected = expected_kind(rt, obj["kind"].as_str().unwrap_or_default());
                check_target(obj, &rt.api_version(), &expected, &namespace)
                    .map_err(|e| e.to_string())
            }
            None => Err(format!("unknown gvrShort {:?}", r.gvr_short)),
        };
        match checked {
            Ok(obj) => {
                let _ = writeln!(out, "---\n# template {} ({})", r.template, r.gvr_short);
                let _ = write!(out, "{}", serde_yaml::to_string(&obj)?);
            }
            Err(e) => {
                eprintln!("error: template {}: {e}", r.template);
                failed = true;
            }
        }
    }
    if failed {
        bail!("some routing templates failed");
    }
    Ok(())
}
