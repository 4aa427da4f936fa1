//! Options of the `http` and `grpc` tasks (Iter8 v1.1's names) turned into a load run of
//! crates/load; returns the endpoint's result in Fortio's or ghz's shape and what the
//! objectives read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use iter8_load::grpc::{self, GrpcOptions};
use iter8_load::http::{self, HttpOptions};
use iter8_load::slo::{self, Measured};
use serde::Deserialize;
use serde_json::Value;

use crate::load_cmd::duration;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpTask {
    url: String,
    qps: Option<Value>,
    num_requests: Option<u64>,
    duration: Option<String>,
    connections: Option<usize>,
    payload_str: Option<String>,
    payload_file: Option<PathBuf>,
    #[serde(rename = "payloadURL")]
    payload_url: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    error_ranges: Vec<ErrorRange>,
    #[serde(default)]
    percentiles: Vec<f64>,
    timeout: Option<String>,
    resolution: Option<f64>,
    #[serde(default)]
    allow_initial_errors: bool,
    #[serde(default)]
    warmup: bool,
    #[serde(default)]
    slos: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorRange {
    lower: Option<u16>,
    upper: Option<u16>,
}

/// One HTTP endpoint's run.
pub async fn http(with: &Value, slos: &BTreeMap<String, f64>) -> Result<(Value, Measured)> {
    let t: HttpTask = serde_json::from_value(with.clone()).context("http task options")?;
    let mut opts = HttpOptions {
        url: t.url.clone(),
        ..Default::default()
    };
    if let Some(q) = &t.qps {
        opts.qps = crate::load_cmd::parse_qps(q)?;
    }
    if let Some(c) = t.connections {
        opts.connections = c;
    }
    opts.num_requests = t.num_requests;
    opts.duration = duration(t.duration.as_deref())?;
    if let Some(d) = duration(t.timeout.as_deref())? {
        opts.timeout = d;
    }
    // As v1.1: a file wins over a string; a URL is fetched once.
    opts.payload = match (&t.payload_file, &t.payload_url, &t.payload_str) {
        (Some(f), _, _) => {
            Some(std::fs::read(f).with_context(|| format!("reading payloadFile {}", f.display()))?)
        }
        (None, Some(u), _) => Some(http::fetch_payload(u).await?),
        (None, None, Some(s)) => Some(s.clone().into_bytes()),
        _ => None,
    };
    opts.content_type = t.content_type.clone();
    opts.headers = t.headers.clone().into_iter().collect();
    if !t.error_ranges.is_empty() {
        opts.error_ranges = t.error_ranges.iter().map(|r| (r.lower, r.upper)).collect();
    }
    if !t.percentiles.is_empty() {
        opts.percentiles = t.percentiles.clone();
    }
    for p in slo::percentiles_needed(slos) {
        if !opts.percentiles.iter().any(|q| (q - p).abs() < 1e-9) {
            opts.percentiles.push(p);
        }
    }
    opts.allow_initial_errors = t.allow_initial_errors;
    if let Some(r) = t.resolution {
        opts.resolution = r;
    }
    let _ = (t.warmup, &t.slos);
    opts.validate()?;
    let run = http::run(&opts).await?;
    // Nothing answered at all (every call a socket error, Fortio's -1): the target is
    // unreachable, which is an error, not a measurement.
    if run.requests > 0 && run.ret_codes.keys().all(|&c| c == -1) {
        bail!(
            "no request reached {}: {}",
            opts.url,
            run.first_error
                .clone()
                .unwrap_or_else(|| "no answer".to_string())
        );
    }
    Ok((run.fortio_json(), run.measured()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcTask {
    host: String,
    call: String,
    proto: Option<PathBuf>,
    #[serde(rename = "protoURL")]
    proto_url: Option<String>,
    #[serde(default)]
    import_paths: Vec<PathBuf>,
    #[serde(default)]
    data: Value,
    #[serde(rename = "dataURL")]
    data_url: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    total: Option<u64>,
    duration: Option<String>,
    rps: Option<f64>,
    concurrency: Option<usize>,
    connections: Option<usize>,
    timeout: Option<String>,
    #[serde(default)]
    warmup: bool,
    #[serde(default)]
    slos: Value,
}

/// One gRPC endpoint's run.
pub async fn grpc(with: &Value, _slos: &BTreeMap<String, f64>) -> Result<(Value, Measured)> {
    let t: GrpcTask = serde_json::from_value(with.clone()).context("grpc task options")?;
    let dir = std::env::temp_dir().join(format!("iter8-grpc-{}", std::process::id()));
    let proto = match (&t.proto, &t.proto_url) {
        (Some(p), _) => p.clone(),
        (None, Some(u)) => {
            let text = http::fetch_payload(u).await?;
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("service.proto");
            std::fs::write(&path, text)?;
            path
        }
        (None, None) => bail!("grpc: set proto (a file) or protoURL"),
    };
    let data = match &t.data_url {
        Some(u) => serde_json::from_slice(&http::fetch_payload(u).await?)
            .with_context(|| format!("dataURL {u} is not JSON"))?,
        None if t.data.is_null() => Value::Object(Default::default()),
        None => t.data.clone(),
    };
    let mut import_paths = t.import_paths.clone();
    if let Some(parent) = proto.parent() {
        import_paths.push(parent.to_path_buf());
    }
    let mut opts = GrpcOptions {
        host: t.host.clone(),
        call: t.call.clone(),
        proto_files: vec![proto],
        import_paths,
        data,
        metadata: t.metadata.clone().into_iter().collect(),
        ..Default::default()
    };
    if t.total.is_some() {
        opts.total = t.total;
    }
    opts.duration = duration(t.duration.as_deref())?;
    if let Some(r) = t.rps {
        opts.rps = r;
    }
    if let Some(c) = t.concurrency {
        opts.concurrency = c;
    }
    if let Some(c) = t.connections {
        opts.connections = c;
    }
    if let Some(d) = duration(t.timeout.as_deref())? {
        opts.timeout = d;
    }
    let _ = (t.warmup, &t.slos, Duration::ZERO);
    opts.validate()?;
    let run = grpc::run(&opts).await?;
    // Every call Unavailable: the server is unreachable, an error rather than a measurement.
    let codes = run.status_codes();
    if run.count() > 0 && codes.keys().all(|c| c == "Unavailable") {
        let why = run.error_messages().into_keys().next().unwrap_or_default();
        bail!("no call reached {}: {why}", opts.host);
    }
    Ok((run.ghz_json(), run.measured()))
}
