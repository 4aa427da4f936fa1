//! `iter8 test run`: runs a performance test's tasks (what the `iter8` test chart's Job does)
//! and PUTs the result to the controller after each task, as Iter8 v1.1's `iter8 k run`.
//!
//! The experiment file is the one the chart renders (Iter8 v1.1's shape):
//!
//! ```yaml
//! spec:
//! - task: ready     # wait until an object exists and its conditions are True
//!   with: {name: wisdom-1, group: serving.kserve.io, version: v1beta1,
//!          resource: inferenceservices, conditions: [Ready], namespace: default, timeout: 60s}
//! - task: http      # or grpc: a load run (see crates/cli/src/load_cmd.rs for the options)
//!   with: {...}
//! ```
//!
//! Unlike v1.1, a failed PUT is an error (v1.1 ignored the status code), and objectives that
//! do not hold fail the test (exit code 1) after every task ran.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iter8_core::availability::object_ready;
use iter8_core::config::ResourceType;
use iter8_load::result::{ExperimentResult, ITER8_VERSION};
use kube::api::{Api, ApiResource, DynamicObject};
use serde::Deserialize;
use serde_json::Value;

use crate::load_cmd;

#[derive(clap::Args)]
pub struct TestArgs {
    #[command(subcommand)]
    command: TestCommand,
}

#[derive(clap::Subcommand)]
enum TestCommand {
    /// Run the tasks of an experiment file and report the result to the controller.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The experiment file (the chart mounts it at /experiment/experiment.yaml).
    #[arg(long, default_value = "/experiment/experiment.yaml")]
    experiment: PathBuf,
    /// Namespace of the test (the Helm release's).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Name of the test (the Helm release's).
    #[arg(long)]
    test: String,
    /// Revision of the Helm release.
    #[arg(long, default_value_t = 0)]
    revision: i64,
    /// Where the controller takes results (`PUT /testResult`); empty: print only.
    #[arg(long, env = "METRICS_SERVER_URL", default_value = "")]
    metrics_server_url: String,
    /// Kubeconfig (for the ready task); in a pod the ServiceAccount is used.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Experiment {
    #[serde(default)]
    spec: Vec<Task>,
}

#[derive(Deserialize)]
struct Task {
    task: Option<String>,
    run: Option<String>,
    #[serde(default)]
    with: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ready {
    name: String,
    #[serde(default)]
    group: String,
    version: String,
    resource: String,
    #[serde(default)]
    conditions: Vec<String>,
    namespace: Option<String>,
    timeout: Option<String>,
    check_generation: Option<bool>,
}

pub async fn run(args: TestArgs) -> Result<()> {
    match args.command {
        TestCommand::Run(a) => run_experiment(a).await,
    }
}

async fn run_experiment(args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.experiment)
        .with_context(|| format!("reading the experiment {}", args.experiment.display()))?;
    let experiment: Experiment = serde_yaml::from_str(&text)
        .with_context(|| format!("the experiment {}", args.experiment.display()))?;
    if experiment.spec.is_empty() {
        bail!("the experiment {} has no tasks", args.experiment.display());
    }
    let mut result = ExperimentResult {
        name: args.test.clone(),
        namespace: args.namespace.clone(),
        revision: args.revision,
        start_time: jiff::Timestamp::now().to_string(),
        iter8_version: ITER8_VERSION.to_string(),
        ..Default::default()
    };
    let reporter = Reporter::new(&args)?;
    let mut slos_failed = false;
    for (i, task) in experiment.spec.iter().enumerate() {
        let name = task
            .task
            .clone()
            .or_else(|| task.run.as_ref().map(|_| "run".to_string()))
            .unwrap_or_default();
        tracing::info!(task = %name, index = i, "task started");
        let outcome = match name.as_str() {
            "ready" => ready(&args, &task.with).await,
            "http" | "grpc" => load_cmd::task(&name, &task.with, &mut result).await.map(|held| {
                slos_failed |= !held;
            }),
            "run" => Err(anyhow::anyhow!(
                "`run` tasks (shell commands) are not supported; payloads and protos are fetched by the http and grpc tasks themselves"
            )),
            other => Err(anyhow::anyhow!(
                "unknown task {other:?} (use ready, http or grpc)"
            )),
        };
        if let Err(e) = outcome {
            result.failure = true;
            reporter.put(&result).await?;
            return Err(e.context(format!("task {} ({name})", i + 1)));
        }
        result.num_completed_tasks += 1;
        reporter.put(&result).await?;
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    if slos_failed {
        result.failure = true;
        reporter.put(&result).await?;
        bail!("service-level objectives not met (see slos in the result)");
    }
    Ok(())
}

/// Waits until the object exists, is not being deleted and its conditions are True.
async fn ready(args: &RunArgs, with: &Value) -> Result<()> {
    let r: Ready = serde_json::from_value(with.clone()).context("ready task options")?;
    let timeout = match &r.timeout {
        Some(t) => iter8_core::config::parse_go_duration(t).map_err(anyhow::Error::msg)?,
        None => Duration::from_secs(60),
    };
    let namespace = r
        .namespace
        .clone()
        .unwrap_or_else(|| args.namespace.clone());
    let mut rtype = ResourceType::new(&r.group, &r.version, &r.resource);
    rtype.conditions = r.conditions.clone();
    if let Some(g) = r.check_generation {
        rtype.check_generation = g;
    }
    let client = crate::client(args.kubeconfig.as_ref()).await?;
    let ar = ApiResource {
        group: r.group.clone(),
        version: r.version.clone(),
        api_version: if r.group.is_empty() {
            r.version.clone()
        } else {
            format!("{}/{}", r.group, r.version)
        },
        kind: String::new(),
        plural: r.resource.clone(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &ar);
    let deadline = Instant::now() + timeout;
    loop {
        let last;
        match api.get_opt(&r.name).await {
            Ok(Some(obj)) => {
                let observed = iter8_k8s::state::observe(&obj);
                match object_ready(&rtype, &observed) {
                    Ok(true) => {
                        tracing::info!(object = %r.name, "ready");
                        return Ok(());
                    }
                    Ok(false) => last = format!("conditions {:?} not all True", r.conditions),
                    Err(why) => last = why,
                }
            }
            Ok(None) => last = "not found".to_string(),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            bail!(
                "{} {namespace}/{} not ready within {timeout:?}: {last}",
                r.resource,
                r.name
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// PUTs results to the controller's `/testResult`.
struct Reporter {
    url: Option<String>,
}

impl Reporter {
    fn new(args: &RunArgs) -> Result<Reporter> {
        let base = args.metrics_server_url.trim_end_matches('/');
        if base.is_empty() {
            return Ok(Reporter { url: None });
        }
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("namespace", &args.namespace)
            .append_pair("test", &args.test)
            .finish();
        Ok(Reporter {
            url: Some(format!("{base}/testResult?{query}")),
        })
    }

    /// PUTs the result; a refused or failed PUT is retried a few times, then an error.
    async fn put(&self, result: &ExperimentResult) -> Result<()> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let body = serde_json::to_vec(result)?;
        let mut last = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            match load_cmd::http_put(url, body.clone()).await {
                Ok((status, _)) if (200..300).contains(&status) => return Ok(()),
                // A result the controller refuses will be refused again.
                Ok((status, text)) if (400..500).contains(&status) => {
                    bail!("the controller refused the result ({status}): {text}")
                }
                Ok((status, text)) => last = format!("{status}: {text}"),
                Err(e) => last = e.to_string(),
            }
        }
        bail!("could not report the result to {url}: {last}")
    }
}
