//! The A/B/n service in the controller process: the store, the gRPC server and what the
//! admin server needs for `/abnDashboard`, the test results (`/testResult`, `/httpDashboard`,
//! `/grpcDashboard`, kept in the same store) and `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use iter8_abn::service::{AbnMetrics, AbnService, Applications};
use iter8_abn::store::{Store, StoreConfig};
use iter8_core::availability::Weighing;
use iter8_k8s::Controller;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

/// The controller as the A/B/n service sees it.
pub struct ControllerApps(pub Arc<Controller>);

impl Applications for ControllerApps {
    fn weigh(&self, namespace: &str, name: &str) -> Option<Result<Weighing, String>> {
        self.0.weigh(namespace, name)
    }

    fn synced(&self) -> bool {
        self.0.synced()
    }
}

pub type Service = AbnService<ControllerApps>;

/// The service, its metrics registry and the store (shared with the service).
pub struct Abn {
    pub service: Arc<Service>,
    pub registry: Registry,
    /// Also keeps the performance tests' results.
    pub store: Store,
}

/// Reads the store's settings (`metrics.yaml`, or the defaults with `dir`).
pub fn store_config(file: Option<&PathBuf>, dir: &Path) -> Result<StoreConfig> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading metrics config file {}", path.display()))?,
        None => String::new(),
    };
    iter8_abn::config::from_yaml(&text, dir).map_err(anyhow::Error::msg)
}

/// Opens the store (a store that cannot be opened leaves A/B/n metrics unavailable, not the
/// controller down) and builds the service.
pub async fn service(controller: Arc<Controller>, store: &StoreConfig, seed: u64) -> Abn {
    let store = match Store::open(store).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "A/B/n metrics store not opened: WriteMetric, /abnDashboard and test results will fail; Lookup still answers");
            Store::Broken(e.to_string())
        }
    };
    let mut registry = Registry::with_prefix("iter8");
    let metrics = Arc::new(AbnMetrics::registered(&mut registry));
    let service = Arc::new(AbnService::new(
        Arc::new(ControllerApps(controller)),
        store.clone(),
        seed,
        metrics,
    ));
    Abn {
        service,
        registry,
        store,
    }
}

/// Serves gRPC on `address` until the task is aborted.
pub async fn serve(address: &str, service: Arc<Service>) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the A/B/n gRPC server to {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "abn server listening");
    // No Nagle: a small response must not wait for the client's delayed ACK (40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .add_service(iter8_abn::proto::abn_server::AbnServer::from_arc(service));
    Ok(tokio::spawn(async move {
        if let Err(e) = server.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "A/B/n gRPC server stopped");
        }
    }))
}
