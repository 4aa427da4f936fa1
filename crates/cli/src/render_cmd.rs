//! `iter8 render`: offline, from a routemap file and object files (with their status), print
//! the weights and the routing objects the controller would apply. No cluster needed.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use iter8_core::availability::{weigh, Observed};
use iter8_core::config::Config;
use iter8_core::render::{check_target, render, RoutemapMeta};
use iter8_core::routemap;
use serde_json::Value;

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The routemap: a ConfigMap YAML file (as `kubectl get cm NAME -o yaml` prints it).
    #[arg(long)]
    routemap: PathBuf,
    /// Files with the version objects (InferenceServices, Deployments, ...), with their
    /// status; several YAML documents per file are fine. Missing objects count as not ready.
    #[arg(long = "objects", short = 'f')]
    objects: Vec<PathBuf>,
    /// Controller config file (defaults to the built-in resource types).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn documents(path: &PathBuf) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("{} is not valid YAML", path.display()))?;
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

fn render_to(args: &RenderArgs, out: &mut String) -> Result<()> {
    use std::fmt::Write as _;
    let config = match &args.config {
        Some(p) => Config::from_yaml(&std::fs::read_to_string(p)?)?,
        None => Config::default(),
    };
    let cms = documents(&args.routemap)?;
    let [cm] = cms.as_slice() else {
        bail!(
            "{} must hold exactly one routemap ConfigMap",
            args.routemap.display()
        );
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
    let rm = routemap::parse(spec, &namespace, &config)?;
    for w in rm.warnings(&config) {
        eprintln!("warning: {w}");
    }

    // Objects by (apiVersion's group, plural-less kind match): resolve each reference by
    // comparing the object's group and name with the resource type's group.
    let mut objects: HashMap<(String, String, String), Observed> = HashMap::new();
    for path in &args.objects {
        for obj in documents(path)? {
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&namespace)
                .to_string();
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let kind = obj["kind"].as_str().unwrap_or_default().to_lowercase();
            let observed = Observed {
                generation: obj["metadata"]["generation"].as_i64(),
                deleting: !obj["metadata"]["deletionTimestamp"].is_null(),
                annotations: str_map(&obj["metadata"]["annotations"]),
                spec: obj.get("spec").cloned(),
                status: obj.get("status").cloned(),
            };
            for (short, rt) in &config.resource_types {
                // A kind names its resource type when the plural starts with the lower-case kind.
                if rt.group == group && rt.resource.to_lowercase().starts_with(&kind) {
                    objects.insert((short.clone(), ns.clone(), name.clone()), observed.clone());
                }
            }
        }
    }
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
                // Offline there is no discovery: accept the object's kind when the type's
                // plural names it (virtualservices <- VirtualService), as the API would.
                let kind = obj["kind"].as_str().unwrap_or_default().to_string();
                let expected = if rt.resource.to_lowercase().starts_with(&kind.to_lowercase())
                    && !kind.is_empty()
                {
                    kind
                } else {
                    format!("the kind of {}", rt.resource)
                };
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
