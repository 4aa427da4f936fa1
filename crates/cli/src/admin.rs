//! The admin HTTP server: `/livez`, `/readyz` (every watch has listed) and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use iter8_k8s::Controller;
use tokio::task::JoinHandle;

/// Binds `address` and serves until the returned task is aborted.
pub async fn serve(address: &str, controller: Arc<Controller>) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the admin server to {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "admin server listening");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let controller = controller.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let controller = controller.clone();
                    async move { Ok::<_, Infallible>(handle(&req, &controller)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

/// 200 once every store is complete and API requests succeed; the body names the watches
/// that are not complete, the last failing request (and, for information, the types that
/// cannot be watched yet).
fn readyz(controller: &Controller) -> (StatusCode, String) {
    let mut body = String::new();
    let unsynced = controller.unsynced();
    let failing = controller.api_failing();
    let status = if controller.synced() && failing.is_none() {
        body.push_str("ok\n");
        StatusCode::OK
    } else {
        if !unsynced.is_empty() {
            body.push_str("not synced:\n");
            for w in &unsynced {
                body.push_str(&format!("  {w}\n"));
            }
        }
        if let Some(why) = failing {
            body.push_str(&format!("API requests failing: {why}\n"));
        }
        StatusCode::SERVICE_UNAVAILABLE
    };
    let unavailable = controller.unavailable();
    if !unavailable.is_empty() {
        body.push_str("not watched (type not served or forbidden; retried):\n");
        for w in &unavailable {
            body.push_str(&format!("  {w}\n"));
        }
    }
    (status, body)
}

fn handle<B>(req: &Request<B>, controller: &Controller) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/livez" | "/healthz" => (StatusCode::OK, "ok".to_string()),
        "/readyz" => readyz(controller),
        "/metrics" => (
            StatusCode::OK,
            iter8_k8s::metrics::encode_text(controller.metrics(), controller),
        ),
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
