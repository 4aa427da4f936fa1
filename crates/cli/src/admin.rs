//! The admin HTTP server: `/livez`, `/readyz` (every watch has listed), `/metrics` and the
//! A/B/n dashboard's data, `/abnDashboard` (the port Iter8 v1.1 calls its metrics port).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use iter8_k8s::Controller;
use prometheus_client::encoding::text::encode;
use tonic::Code;

use crate::abn::Abn;
use tokio::task::JoinHandle;

/// Binds `address` and serves until the returned task is aborted.
pub async fn serve(
    address: &str,
    controller: Arc<Controller>,
    abn: Arc<Abn>,
) -> Result<JoinHandle<()>> {
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
            let abn = abn.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let controller = controller.clone();
                    let abn = abn.clone();
                    async move { Ok::<_, Infallible>(handle(&req, &controller, &abn).await) }
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

async fn handle<B>(req: &Request<B>, controller: &Controller, abn: &Abn) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/livez" | "/healthz" => (StatusCode::OK, "ok".to_string()),
        "/readyz" => readyz(controller),
        "/metrics" => (StatusCode::OK, metrics(controller, abn)),
        "/abnDashboard" => return abn_dashboard(req, abn).await,
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    response(status, "text/plain; charset=utf-8", body.into())
}

fn response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The controller's and the A/B/n service's metrics in one exposition (one `# EOF`).
fn metrics(controller: &Controller, abn: &Abn) -> String {
    let mut out = iter8_k8s::metrics::encode_text(controller.metrics(), controller);
    let mut more = String::new();
    if encode(&mut more, &abn.registry).is_ok() {
        if let Some(body) = out.strip_suffix("# EOF\n") {
            out = format!("{body}{more}");
        }
    }
    out
}

/// `GET /abnDashboard?namespace=NS&application=APP`: errors as Iter8 v1.1 (405, 400 with
/// "unknown application"), plus 503 when the store cannot answer.
async fn abn_dashboard<B>(req: &Request<B>, abn: &Abn) -> Response<Full<Bytes>> {
    let text = |status, msg: String| response(status, "text/plain; charset=utf-8", msg.into());
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "expected GET".into());
    }
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |k: &str| query.get(k).filter(|v| !v.is_empty());
    let Some(application) = param("application") else {
        return text(StatusCode::BAD_REQUEST, "no application specified".into());
    };
    let Some(namespace) = param("namespace") else {
        return text(StatusCode::BAD_REQUEST, "no namespace specified".into());
    };
    match abn.service.dashboard(namespace, application).await {
        Ok(body) => response(StatusCode::OK, "application/json", body.into()),
        Err(s) => {
            let status = match s.code() {
                Code::NotFound => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("unknown application {namespace}/{application}"),
                    )
                }
                Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            text(status, s.message().to_string())
        }
    }
}
