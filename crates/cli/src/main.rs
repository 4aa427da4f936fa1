//! The `iter8` binary: `iter8 controller` runs the routing controller; `iter8 render` shows
//! offline what it would apply for a routemap and a set of objects.

mod abn;
mod admin;
mod explain;
mod load_cmd;
mod load_exec;
mod observe;
mod render_cmd;
mod routes;
mod status;
mod test_cmd;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use iter8_core::config::Config;
use iter8_k8s::{Controller, Leadership, LeaseConfig, Options};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(
    name = "iter8",
    version,
    about = "Safe, declarative rollouts of ML models and apps on Kubernetes"
)]
struct Cli {
    /// Log level (trace, debug, info, warn, error) or a tracing filter.
    #[arg(long, global = true, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the routing controller.
    #[command(alias = "controllers")]
    Controller(Box<ControllerArgs>),
    /// Print the routing objects the controller would apply, without a cluster.
    Render(render_cmd::RenderArgs),
    /// Send HTTP or gRPC load to a model version and print the result (Iter8 v1.1's shape).
    Load(load_cmd::LoadArgs),
    /// Run a performance test (what the `iter8` test chart's Job runs).
    Test(test_cmd::TestArgs),
    /// Show each application's versions: readiness, weights, the routes that reach them.
    Status(status::StatusArgs),
    /// Say which version answers a request with these headers (or this A/B/n user), and why.
    Explain(explain::ExplainArgs),
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Controller config file (resourceTypes, defaultResync, clusterScoped).
    #[arg(long, env = "CONFIG_FILE")]
    config: Option<PathBuf>,
    /// Namespace watched when not cluster-scoped (the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// This replica's name (the pod's name), used in Events and as lease identity.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Kubeconfig file; in a pod the ServiceAccount is used.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, default_value = "0.0.0.0:8080")]
    admin_address: String,
    /// Publish a Normal Event on the routemap for every routing object written (off: a routing
    /// change costs one request; Warnings, deletions and analysis Events are always published).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    routing_events: bool,
    /// Elect a leader with a Lease so several replicas can run; only the leader writes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "iter8-controller")]
    lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// How long a lease stays valid without renewal, e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How often the leader renews the lease, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lease_renew_every: Duration,
    /// Address of the A/B/n gRPC server (Lookup, WriteMetric).
    #[arg(long, default_value = "0.0.0.0:50051")]
    abn_address: String,
    /// Seed of the A/B/n assignment hash; replicas and SDKs that compute assignments must
    /// share it. Changing it reshuffles every user.
    #[arg(long, default_value_t = 0)]
    abn_seed: u64,
    /// Metrics store settings (`metrics.yaml`: implementation embedded|badgerdb|redis, ttl, ...).
    #[arg(long, env = "METRICS_CONFIG_FILE")]
    metrics_config: Option<PathBuf>,
    /// Directory of the embedded metrics store when the settings name none.
    #[arg(long, default_value = "/metrics")]
    metrics_dir: PathBuf,
    /// Longest time to finish the work in flight after SIGTERM before exiting anyway.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    iter8_core::config::parse_go_duration(s)
}

fn init_logging(level: &str, format: LogFormat) -> Result<()> {
    // A bare level applies to our crates; libraries (kube, hyper, rustls) stay at warn so that
    // `trace` shows the controller's decisions, not every TLS record. A full filter
    // (with `=` or `,`) is used as given.
    let level = level.trim().to_lowercase();
    let level = if level == "warning" {
        "warn".to_string()
    } else {
        level
    };
    let directives = if level.contains('=') || level.contains(',') {
        level.clone()
    } else {
        format!("warn,iter8={level},iter8_k8s={level},iter8_core={level},iter8_abn={level},iter8_analysis={level}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).map_err(|e| {
        anyhow::anyhow!(
            "invalid --log-level {level:?} (use trace, debug, info, warn or error): {e}"
        )
    })?;
    // Colour only for a person at a terminal: `kubectl logs` and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = parse_args();
    init_logging(&cli.log_level, cli.log_format)?;
    match cli.command {
        Command::Controller(args) => run_controller(*args).await,
        Command::Render(args) => render_cmd::run(args),
        Command::Load(args) => load_cmd::run(args).await,
        Command::Test(args) => test_cmd::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Explain(args) => explain::run(args).await,
    }
}

/// The arguments; invoked as `kubectl-iter8` (kubectl runs plugins by that name), usage and
/// errors say `kubectl iter8`.
fn parse_args() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let plugin = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == "kubectl-iter8");
    if !plugin {
        return Cli::parse();
    }
    let matches = Cli::command().bin_name("kubectl iter8").get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

pub(crate) async fn client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client> {
    let (config, source) = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
            (config, format!("kubeconfig {}", path.display()))
        }
        None => {
            // A kubeconfig (~/.kube/config) if there is one, else the pod's ServiceAccount:
            // only the latter reads its token from the file Kubernetes mounts.
            let config = kube::Config::infer()
                .await
                .context("no Kubernetes configuration found")?;
            let in_cluster = config.auth_info.token_file.as_deref()
                == Some("/var/run/secrets/kubernetes.io/serviceaccount/token");
            let source = if in_cluster {
                "in-cluster (ServiceAccount token)"
            } else {
                "kubeconfig ~/.kube/config"
            };
            (config, source.to_string())
        }
    };
    tracing::info!(%source, server = %config.cluster_url, "Kubernetes configuration");
    Ok(kube::Client::try_from(config)?)
}

/// Refuses lease flags the election cannot work with: the Lease stores whole seconds (as a
/// 32-bit number), and a leader that renews less often than the lease lasts loses it.
fn check_lease_flags(duration: Duration, renew_every: Duration) -> Result<()> {
    // Whole seconds as `15s` (Debug would say `0ns` for zero), else Debug's `1.5s`, `500ms`.
    let show = |d: Duration| match d.subsec_nanos() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{d:?}"),
    };
    let flags = format!(
        "--lease-duration {}, --lease-renew-every {}",
        show(duration),
        show(renew_every)
    );
    if duration < Duration::from_secs(1) || duration.as_secs() > i32::MAX as u64 {
        anyhow::bail!("invalid lease flags ({flags}): --lease-duration must be at least 1s (the Lease stores whole seconds) and at most {}s", i32::MAX);
    }
    if renew_every.is_zero() || renew_every >= duration {
        anyhow::bail!("invalid lease flags ({flags}): --lease-renew-every must be greater than zero and shorter than --lease-duration");
    }
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> Result<()> {
    check_lease_flags(args.lease_duration, args.lease_renew_every)?;
    let config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            Config::from_yaml(&text).with_context(|| format!("config file {}", path.display()))?
        }
        None => Config::default(),
    };
    if config.add_finalizer {
        tracing::warn!("addFinalizer is not supported and is ignored: deletions never wait for this controller");
    }
    let store_config = abn::store_config(args.metrics_config.as_ref(), &args.metrics_dir)?;
    let client = client(args.kubeconfig.as_ref()).await?;
    tracing::info!(
        cluster_scoped = config.cluster_scoped,
        namespace = %args.namespace,
        types = ?config.resource_types.keys().collect::<Vec<_>>(),
        "starting controller"
    );
    let leadership = if args.leader_elect {
        Leadership::standby()
    } else {
        Leadership::always()
    };
    let controller = Controller::new(
        client.clone(),
        config,
        Options {
            namespace: args.namespace.clone(),
            instance: args.pod_name.clone(),
            routing_events: args.routing_events,
        },
        leadership.clone(),
    );
    let abn = abn::service(controller.clone(), &store_config, args.abn_seed).await;
    match iter8_analysis::http::Http::new() {
        Ok(http) => controller.set_analysis_sources(iter8_analysis::measure::Sources {
            http,
            abn: Some(abn.store.clone()),
        }),
        Err(e) => {
            tracing::error!(error = %e, "analysis cannot measure: its evaluations will be errors")
        }
    }
    let abn_server = abn::serve(&args.abn_address, abn.service.clone()).await?;
    let admin = admin::serve(&args.admin_address, controller.clone(), Arc::new(abn)).await?;
    let stop_controller = Arc::new(Notify::new());
    let run = tokio::spawn(controller.clone().run(stop_controller.clone()));

    let stop_election = Arc::new(Notify::new());
    let election = if args.leader_elect {
        let identity = args.pod_name.clone().unwrap_or_else(default_identity);
        let cfg = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone()),
            identity,
            duration: args.lease_duration,
            renew_every: args.lease_renew_every,
        };
        tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "leader election on");
        let gained = Arc::new(Notify::new());
        // A new leader reconciles everything: a standby dropped its work items.
        let c = controller.clone();
        let g = gained.clone();
        tokio::spawn(async move {
            loop {
                g.notified().await;
                c.enqueue_all();
            }
        });
        Some(tokio::spawn(iter8_k8s::lease::run(
            client,
            cfg,
            leadership,
            gained,
            stop_election.clone(),
            controller.metrics().clone(),
        )))
    } else {
        None
    };

    wait_for_signal().await?;
    tracing::info!("shutting down: finishing the work in flight");
    stop_controller.notify_one();
    if tokio::time::timeout(args.shutdown_timeout, run)
        .await
        .is_err()
    {
        tracing::warn!("work in flight did not finish in time");
    }
    if let Some(election) = election {
        stop_election.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    admin.abort();
    abn_server.abort();
    tracing::info!("stopped");
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
