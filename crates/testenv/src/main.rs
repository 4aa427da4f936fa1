//! `testenv up`: start a local control plane in the foreground for people, the demo and the
//! benchmarks (with `--dataplane`, also istiod, Envoy and MLServer, standing in for KServe and
//! Knative); `testenv tools`: print where the pinned components are.

mod standin;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "A local Kubernetes control plane (etcd + kube-apiserver + controller-manager)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the control plane and keep it running until Ctrl-C or SIGTERM.
    Up {
        /// Where to write the admin kubeconfig.
        #[arg(long, default_value = "./kubeconfig")]
        kubeconfig: PathBuf,
        /// Port for kube-apiserver (a free one if not given).
        #[arg(long)]
        port: Option<u16>,
        /// Do not run kube-controller-manager (no garbage collection).
        #[arg(long)]
        no_controller_manager: bool,
        /// Do not install the CRDs of KServe, Istio and the Gateway API.
        #[arg(long)]
        skip_crds: bool,
        /// Also start the data plane (istiod, an ingress Envoy, a knative-local-gateway
        /// Envoy) and stand in for KServe + Knative: serve every InferenceService with a real
        /// MLServer and mark it Ready once the model answers. Writes the ingress address to
        /// `<kubeconfig>.ingress` (e.g. `http://127.0.0.1:PORT`).
        #[arg(long, conflicts_with = "skip_crds")]
        dataplane: bool,
    },
    /// Print where the pinned components are (fails naming what is missing).
    Tools,
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Tools => {
            let tools = testenv::Tools::locate()?;
            println!("{tools:#?}");
        }
        Command::Up {
            kubeconfig,
            port,
            no_controller_manager,
            skip_crds,
            dataplane,
        } => {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let started = std::time::Instant::now();
            let cp = testenv::ControlPlane::start(testenv::Options {
                controller_manager: !no_controller_manager,
                workload_controllers: false,
                apiserver_port: port,
                skip_crds,
            })
            .await?;
            std::fs::write(&kubeconfig, cp.kubeconfig())
                .with_context(|| format!("writing {}", kubeconfig.display()))?;
            println!(
                "control plane up at {} in {:.1}s; kubeconfig: {}; logs: {}",
                cp.server(),
                started.elapsed().as_secs_f64(),
                kubeconfig.display(),
                cp.dir().display()
            );
            println!("export KUBECONFIG={}", kubeconfig.display());
            let ingress_file = ingress_file(&kubeconfig);
            let mut running = None;
            if dataplane {
                // Interruptible: a signal during start-up drops the half-started data plane,
                // which stops its processes.
                let started = tokio::select! {
                    r = start_dataplane(&cp, &ingress_file) => Some(r),
                    _ = tokio::signal::ctrl_c() => None,
                    _ = term.recv() => None,
                };
                match started {
                    Some(Ok(r)) => running = Some(r),
                    Some(Err(e)) => {
                        let _ = std::fs::remove_file(&kubeconfig);
                        return Err(e);
                    }
                    None => {
                        println!("stopping");
                        let _ = std::fs::remove_file(&kubeconfig);
                        return Ok(());
                    }
                }
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            println!("stopping");
            let _ = std::fs::remove_file(&kubeconfig);
            if let Some((standin, dp)) = running {
                let _ = std::fs::remove_file(&ingress_file);
                standin.stop().await;
                // Model servers, Envoys and istiod stop (by PID) before the control plane.
                drop(dp);
            }
            drop(cp);
        }
    }
    Ok(())
}

/// Where `testenv up --dataplane` writes the ingress address: next to the kubeconfig.
fn ingress_file(kubeconfig: &Path) -> PathBuf {
    let mut name = kubeconfig.as_os_str().to_owned();
    name.push(".ingress");
    PathBuf::from(name)
}

/// Starts the data plane against `cp` and the KServe + Knative stand-in, then writes the
/// ingress address to `ingress_file`.
async fn start_dataplane(
    cp: &testenv::ControlPlane,
    ingress_file: &Path,
) -> Result<(standin::StandIn, Arc<testenv::dataplane::DataPlane>)> {
    let started = std::time::Instant::now();
    println!("starting the data plane (istiod, ingress Envoy, knative-local-gateway Envoy)");
    let dp = Arc::new(testenv::dataplane::DataPlane::start(cp).await?);
    let standin = standin::StandIn::start(cp.client().await?, dp.clone());
    let ingress = format!("http://{}", dp.ingress());
    println!(
        "data plane up in {:.1}s; logs: {}",
        started.elapsed().as_secs_f64(),
        dp.dir().display()
    );
    println!(
        "{} KServe and Knative are not running: this process stands in for them. For each \
         InferenceService (all namespaces) and each change of its spec it starts an MLServer \
         revision, routes the predictor to it, and writes Ready status once the model answers; \
         on deletion it stops the model server.",
        standin::TAG
    );
    println!("ingress: {ingress}");
    std::fs::write(ingress_file, format!("{ingress}\n"))
        .with_context(|| format!("writing {}", ingress_file.display()))?;
    println!("ingress address written to {}", ingress_file.display());
    Ok((standin, dp))
}
