//! The admin HTTP server: `/livez`, `/readyz` (every watch has listed), `/metrics`, the
//! A/B/n dashboard's data, `/abnDashboard`, and the performance tests' results: `PUT
//! /testResult` (from a test's Job) and their dashboards' data, `/httpDashboard` and
//! `/grpcDashboard` (the port Iter8 v1.1 calls its metrics port).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use iter8_abn::store::{Store, MAX_RESULT_BYTES};
use iter8_k8s::Controller;
use iter8_load::dashboard;
use iter8_load::result::ExperimentResult;
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
                    async move { Ok::<_, Infallible>(handle(req, &controller, &abn).await) }
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

async fn handle(
    req: Request<Incoming>,
    controller: &Controller,
    abn: &Abn,
) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/livez" | "/healthz" => (StatusCode::OK, "ok".to_string()),
        "/readyz" => readyz(controller),
        "/metrics" => (StatusCode::OK, metrics(controller, abn)),
        "/abnDashboard" => return abn_dashboard(&req, abn).await,
        "/analysisDashboard" => return analysis_dashboard(&req, controller),
        "/testResult" => return put_test_result(req, &abn.store).await,
        "/httpDashboard" => return test_dashboard(&req, &abn.store, Task::Http).await,
        "/grpcDashboard" => return test_dashboard(&req, &abn.store, Task::Grpc).await,
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    response(status, "text/plain; charset=utf-8", body.into())
}

/// The request's query parameters (the last of a repeated name wins).
fn query_params<B>(req: &Request<B>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
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

/// `GET /analysisDashboard?namespace=NS&application=APP`: the application's analysis state
/// (docs/analysis.md), 404 when it has none.
fn analysis_dashboard<B>(req: &Request<B>, controller: &Controller) -> Response<Full<Bytes>> {
    let text = |status, msg: String| response(status, "text/plain; charset=utf-8", msg.into());
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "expected GET".into());
    }
    let query = query_params(req);
    let param = |k: &str| query.get(k).filter(|v| !v.is_empty());
    let (Some(namespace), Some(application)) = (param("namespace"), param("application")) else {
        return text(
            StatusCode::BAD_REQUEST,
            "namespace and application are required".into(),
        );
    };
    match controller.analysis_dashboard(namespace, application) {
        Some(v) => response(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec_pretty(&v).unwrap_or_default().into(),
        ),
        None => text(
            StatusCode::NOT_FOUND,
            format!("application {namespace}/{application} has no analysis"),
        ),
    }
}

/// `GET /abnDashboard?namespace=NS&application=APP`: errors as Iter8 v1.1 (405, 400 with
/// "unknown application"), plus 503 when the store cannot answer.
async fn abn_dashboard<B>(req: &Request<B>, abn: &Abn) -> Response<Full<Bytes>> {
    let text = |status, msg: String| response(status, "text/plain; charset=utf-8", msg.into());
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "expected GET".into());
    }
    let query = query_params(req);
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

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", msg.into().into())
}

/// Largest `PUT /testResult` body read. A result keeps at most [`MAX_RESULT_BYTES`] once
/// ghz's per-call details (which Iter8 v1.1's jobs send) are dropped, so the body may be
/// bigger than what is stored.
const MAX_BODY_BYTES: usize = 16 << 20;
/// A body over [`MAX_BODY_BYTES`] is still read (and dropped) up to this size, so that its
/// client reads the 413 instead of a connection reset; a bigger announced body is refused at
/// once.
const DRAIN_BYTES: usize = 64 << 20;
/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which dashboard.
#[derive(Clone, Copy)]
enum Task {
    Http,
    Grpc,
}

/// `namespace` and `test` of a test-result request, each checked as a Kubernetes name (the
/// namespace a DNS-1123 label, the test, a Helm release name, a DNS-1123 subdomain); else the
/// 400's message (v1.1's when one is missing).
fn test_params<B>(req: &Request<B>) -> Result<(String, String), String> {
    let query = query_params(req);
    let param = |k: &str| query.get(k).filter(|v| !v.is_empty()).cloned();
    let Some(namespace) = param("namespace") else {
        return Err("no namespace specified".into());
    };
    let Some(test) = param("test") else {
        return Err("no test specified".into());
    };
    if let Err(why) = dns1123_label(&namespace) {
        return Err(format!("namespace {:?} {why}", shown(&namespace)));
    }
    if let Err(why) = iter8_core::render::dns1123_subdomain(&test) {
        return Err(format!("test {:?} {why}", shown(&test)));
    }
    Ok((namespace, test))
}

/// A namespace name: at most 63 lower-case letters, digits and '-', starting and ending with
/// a letter or digit.
fn dns1123_label(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err(format!(
            "is {} characters long, more than 63 (a namespace name)",
            name.len()
        ));
    }
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-')
    {
        Ok(())
    } else {
        Err(
            "is not a valid namespace name (lower-case letters, digits and '-', starting and \
             ending with a letter or digit)"
                .into(),
        )
    }
}

/// At most 100 characters of a name, for messages.
fn shown(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

enum BodyError {
    /// More than [`MAX_BODY_BYTES`]: the size read (at least).
    TooBig(usize),
    Read(hyper::Error),
}

/// The body, at most [`MAX_BODY_BYTES`]; a bigger one is read on (and dropped) up to
/// [`DRAIN_BYTES`] before it is refused.
async fn read_body(mut body: Incoming) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= MAX_BODY_BYTES {
            buf.extend_from_slice(&data);
        } else if total > DRAIN_BYTES {
            return Err(BodyError::TooBig(total));
        } else if !buf.is_empty() {
            buf = Vec::new();
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(BodyError::TooBig(total));
    }
    Ok(buf)
}

/// `PUT /testResult?namespace=NS&test=NAME` with an `ExperimentResult`: stores it (replacing
/// the test's previous one) in the metrics store. As Iter8 v1.1: 405 "expected PUT", 400 for
/// a missing parameter or a body that is not an `ExperimentResult` (with the parser's
/// message), 200 with an empty body when stored. Added: 400 for a name that is not a
/// Kubernetes name or a result the dashboards cannot show (the message says why), 413 for a
/// body over 16 MiB or a result over 4 MiB without ghz's per-call details (which are
/// dropped: no dashboard reads them), 408 for a body that does not arrive, 503 when the store
/// cannot take it (unavailable or full) — v1.1 answered 500.
async fn put_test_result(req: Request<Incoming>, store: &Store) -> Response<Full<Bytes>> {
    if req.method() != Method::PUT {
        return text(StatusCode::METHOD_NOT_ALLOWED, "expected PUT");
    }
    let (namespace, test) = match test_params(&req) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let too_big = |size: &str| {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {size} bytes: a test result is read up to {MAX_BODY_BYTES} bytes ({} MiB)",
                MAX_BODY_BYTES >> 20
            ),
        )
    };
    let announced = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|n| *n > DRAIN_BYTES as u64) {
        return too_big(&n.to_string());
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body())).await {
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        }
        Ok(Err(BodyError::TooBig(n))) => {
            return too_big(&if n > DRAIN_BYTES {
                format!("more than {DRAIN_BYTES}")
            } else {
                n.to_string()
            })
        }
        Ok(Err(BodyError::Read(e))) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            )
        }
        Ok(Ok(body)) => body,
    };
    let mut result: ExperimentResult = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("cannot unmarshal body into ExperimentResult: {e}"),
            )
        }
    };
    if let Err(e) = dashboard::check(&result) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("test result refused, its dashboards could not show it: {e}"),
        );
    }
    let dropped = dashboard::drop_call_details(&mut result);
    let json = match serde_json::to_vec(&result) {
        Ok(j) => j,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the test result: {e}"),
            )
        }
    };
    if json.len() > MAX_RESULT_BYTES {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the test result is {} bytes (without per-call details); the controller keeps a result up to {MAX_RESULT_BYTES} bytes ({} MiB)",
                json.len(),
                MAX_RESULT_BYTES >> 20
            ),
        );
    }
    match store.put_result(&namespace, &test, &json).await {
        Ok(()) => {
            tracing::info!(%namespace, %test, bytes = json.len(), tasks = result.num_completed_tasks, dropped_call_details = dropped, "test result stored");
            // v1.1's answer: 200, empty.
            text(StatusCode::OK, "")
        }
        Err(e) => {
            tracing::warn!(%namespace, %test, error = %e, "test result not stored");
            text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// `GET /httpDashboard` or `/grpcDashboard` `?namespace=NS&test=NAME`: the stored result's
/// dashboard, JSON as Iter8 v1.1 writes it (see [`iter8_load::dashboard`]; a result without
/// insights yet has empty `Endpoints`). As v1.1: 405 "expected GET", 400 for a missing
/// parameter and for a test without a result. Added: 400 for a name that is not a Kubernetes
/// name, 503 when the store cannot answer, 500 for a stored result that cannot be read.
async fn test_dashboard<B>(req: &Request<B>, store: &Store, task: Task) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "expected GET");
    }
    let (namespace, test) = match test_params(req) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let stored = match store.result(&namespace, &test).await {
        Ok(Some(json)) => json,
        Ok(None) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("no test result for {namespace}/{test}"),
            )
        }
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let unreadable = |e: &dyn std::fmt::Display| {
        tracing::warn!(%namespace, %test, error = %e, "stored test result unreadable");
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the stored test result of {namespace}/{test} cannot be shown: {e}"),
        )
    };
    let result: ExperimentResult = match serde_json::from_slice(&stored) {
        Ok(r) => r,
        Err(e) => return unreadable(&e),
    };
    let built = match task {
        Task::Http => dashboard::http(&result),
        Task::Grpc => dashboard::grpc(&result),
    };
    match built {
        Ok(d) => response(StatusCode::OK, "application/json", d.to_json().into()),
        Err(e) => unreadable(&e),
    }
}
