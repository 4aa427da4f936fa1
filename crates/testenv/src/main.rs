//! `testenv up`: start a local control plane in the foreground for people, the demo and the
//! benchmarks (with `--dataplane`, also istiod, Envoy and MLServer, standing in for KServe and
//! Knative; with `--kserve-standard`, the real KServe manager in Standard mode with simulated
//! pods instead of the stand-in); `testenv tools`: print where the pinned components are.

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
        /// Instead of the stand-in: the real KServe manager in Standard mode, the workload
        /// controllers, kube-scheduler and kwok (simulated pods on a fake Node), one MLServer
        /// per pod at its pod IP, and the data plane (istiod, Envoy); InferenceServices get
        /// real Deployments, pods and status. Pod IPs (10.244.0.0/16) must be local: run it in
        /// a network namespace where they are (`DEMO_MODE=standard scripts/demo.sh` makes
        /// one). Writes the ingress address as `--dataplane` does.
        #[arg(long, conflicts_with_all = ["skip_crds", "no_controller_manager", "dataplane"])]
        kserve_standard: bool,
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
            kserve_standard,
        } => {
            if kserve_standard {
                check_pod_network()?;
            }
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let started = std::time::Instant::now();
            let cp = testenv::ControlPlane::start(testenv::Options {
                controller_manager: !no_controller_manager,
                workload_controllers: kserve_standard,
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
            if dataplane || kserve_standard {
                // Interruptible: a signal during start-up drops the half-started data plane,
                // which stops its processes.
                let start = async {
                    if kserve_standard {
                        start_standard(&cp, &ingress_file).await
                    } else {
                        start_dataplane(&cp, &ingress_file).await
                    }
                };
                let started = tokio::select! {
                    r = start => Some(r),
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
            if let Some(running) = running {
                let _ = std::fs::remove_file(&ingress_file);
                match running {
                    Running::StandIn(standin, dp) => {
                        standin.stop().await;
                        // Model servers, Envoys and istiod stop (by PID) before the control
                        // plane.
                        drop(dp);
                    }
                    Running::Standard(standard) => {
                        let Standard {
                            pods,
                            dp,
                            kserve,
                            kwok,
                        } = *standard;
                        pods.stop().await;
                        drop((dp, kserve, kwok));
                    }
                }
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

/// What runs besides the control plane.
enum Running {
    /// `--dataplane`: the data plane and the KServe + Knative stand-in.
    StandIn(standin::StandIn, Arc<testenv::dataplane::DataPlane>),
    /// `--kserve-standard`.
    Standard(Box<Standard>),
}

/// `--kserve-standard`: the real KServe manager, kwok, the pods' model servers and the data
/// plane.
struct Standard {
    pods: testenv::pods::PodWatcher,
    dp: testenv::dataplane::DataPlane,
    kserve: testenv::kserve_manager::KServeManager,
    kwok: testenv::kwok::Kwok,
}

/// Fails unless pod IPs are local addresses here (see `--kserve-standard`).
fn check_pod_network() -> Result<()> {
    let ip = std::net::Ipv4Addr::new(10, 244, 0, 1);
    std::net::TcpListener::bind((ip, 0))
        .map(drop)
        .with_context(|| {
            format!(
                "--kserve-standard: pod IP {ip} is not a local address in this network namespace; \
             run in one where {} is routed to lo (`ip route add local {} dev lo`, as \
             DEMO_MODE=standard scripts/demo.sh does under `unshare --net`)",
                testenv::netns::POD_CIDR,
                testenv::netns::POD_CIDR
            )
        })
}

/// Starts kwok + kube-scheduler, the real KServe manager (Standard mode) and the data plane
/// against `cp`, and serves every simulated pod's model at its pod IP; then writes the
/// ingress address to `ingress_file`.
async fn start_standard(cp: &testenv::ControlPlane, ingress_file: &Path) -> Result<Running> {
    let started = std::time::Instant::now();
    println!(
        "starting kwok + kube-scheduler, the KServe manager {} (Standard mode) and the data plane \
         (istiod, ingress Envoy)",
        testenv::tools::version("KSERVE_VERSION")
    );
    let (kwok, kserve, dp) = tokio::join!(
        testenv::kwok::Kwok::start(cp),
        testenv::kserve_manager::KServeManager::start(cp),
        testenv::dataplane::DataPlane::start(cp)
    );
    let (kwok, kserve, dp) = (kwok?, kserve?, dp?);
    let pods = testenv::pods::PodWatcher::start(cp.client().await?, testenv::kwok::NODE);
    let ingress = format!("http://{}", dp.ingress());
    println!(
        "KServe (Standard mode), kwok and the data plane up in {:.1}s; logs: {} and {}",
        started.elapsed().as_secs_f64(),
        cp.dir().display(),
        dp.dir().display()
    );
    println!(
        "[testenv pods] the pods kwok runs on Node {} get an MLServer at their pod IP, and the \
         annotation {} once the model answers (kwok marks a pod Ready only then)",
        testenv::kwok::NODE,
        testenv::pods::MODEL_READY_ANNOTATION
    );
    println!("ingress: {ingress}");
    std::fs::write(ingress_file, format!("{ingress}\n"))
        .with_context(|| format!("writing {}", ingress_file.display()))?;
    println!("ingress address written to {}", ingress_file.display());
    Ok(Running::Standard(Box::new(Standard {
        pods,
        dp,
        kserve,
        kwok,
    })))
}

/// Starts the data plane against `cp` and the KServe + Knative stand-in, then writes the
/// ingress address to `ingress_file`.
async fn start_dataplane(cp: &testenv::ControlPlane, ingress_file: &Path) -> Result<Running> {
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
    Ok(Running::StandIn(standin, dp))
}
