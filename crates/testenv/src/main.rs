//! `testenv up`: start a local control plane in the foreground for people, the demo and the
//! benchmarks; `testenv tools`: print where the pinned components are.

use std::path::PathBuf;

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
        } => {
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
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            println!("stopping");
            let _ = std::fs::remove_file(&kubeconfig);
        }
    }
    Ok(())
}
