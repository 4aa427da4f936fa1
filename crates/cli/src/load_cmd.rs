//! `iter8 load http|grpc`: one load run against a model version, printed as an Iter8 v1.1
//! `ExperimentResult` (Fortio's or ghz's shape per endpoint), with optional service-level
//! objectives; and the `http`/`grpc` tasks of `iter8 test run`, which take the same options
//! under Iter8 v1.1's names (`url`, `qps`, `numRequests`, ... ; `host`, `call`, `total`, ...).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use iter8_load::result::{ExperimentResult, Insights, ITER8_VERSION};
use iter8_load::slo;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    command: LoadCommand,
}

#[derive(clap::Subcommand)]
enum LoadCommand {
    /// HTTP load (Fortio's semantics: QPS over all connections; a count wins over a duration).
    Http(HttpArgs),
    /// gRPC load from a .proto and JSON data (ghz's semantics).
    Grpc(GrpcArgs),
}

#[derive(clap::Args)]
struct Common {
    /// Send this many requests (calls) first, not counted in the result: connections are
    /// open and caches warm when the measured run starts.
    #[arg(long)]
    warmup: Option<u64>,
    /// Objective `METRIC=LIMIT` (upper limits): error-rate, error-count, latency-mean,
    /// latency-pNN (ms). A run that misses one exits with status 1.
    #[arg(long = "slo", value_parser = parse_slo)]
    slos: Vec<(String, f64)>,
    /// Write the result here instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
struct HttpArgs {
    /// URL to send requests to.
    #[arg(long)]
    url: String,
    /// Requests per second over all connections, or `max` for as many as the target takes.
    #[arg(long, default_value = "8")]
    qps: String,
    /// Parallel connections.
    #[arg(long, short = 'c', default_value_t = 4)]
    connections: usize,
    /// Number of requests (wins over --duration); default 100 when neither is given.
    #[arg(long, short = 'n')]
    num_requests: Option<u64>,
    /// How long to send, e.g. 30s.
    #[arg(long)]
    duration: Option<String>,
    /// Body of each request (POST) from a file.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// Body of each request (POST) from a URL, fetched once before the run.
    #[arg(long)]
    payload_url: Option<String>,
    /// Body of each request (POST) as given.
    #[arg(long)]
    payload_str: Option<String>,
    /// Content-Type of the payload.
    #[arg(long)]
    content_type: Option<String>,
    /// Header `NAME: VALUE` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Unit of the latency buckets in seconds (Fortio's -r; default 0.001). Finer resolves
    /// sub-millisecond latencies.
    #[arg(long)]
    resolution: Option<f64>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct GrpcArgs {
    /// Server `host:port`.
    #[arg(long)]
    host: String,
    /// Method, `package.Service.Method` or `package.Service/Method`.
    #[arg(long)]
    call: String,
    /// The .proto file that defines the method.
    #[arg(long)]
    proto: PathBuf,
    /// Folders to resolve the proto's imports from (repeatable).
    #[arg(long = "import-path", short = 'I')]
    import_paths: Vec<PathBuf>,
    /// Request message as JSON (an object, or an array used round-robin).
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Request message as JSON, from a file.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Metadata `NAME: VALUE` (repeatable).
    #[arg(long = "metadata", short = 'M')]
    metadata: Vec<String>,
    /// Number of calls (default 200 when no --duration).
    #[arg(long, short = 'n')]
    total: Option<u64>,
    /// How long to call, e.g. 30s.
    #[arg(long)]
    duration: Option<String>,
    /// Calls per second over all workers; 0: no limit.
    #[arg(long, default_value_t = 0.0)]
    rps: f64,
    /// Concurrent workers.
    #[arg(long, short = 'c', default_value_t = 50)]
    concurrency: usize,
    /// Connections the workers share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    #[command(flatten)]
    common: Common,
}

/// `qps`: a number greater than 0, or `max` (sent on as 0, the generator's "no pacing").
/// A 0 or a negative rate is refused: it is more likely a mistake than a wish for max rate.
pub fn parse_qps(v: &Value) -> Result<f64> {
    let q = match v {
        Value::String(s) if s.trim().eq_ignore_ascii_case("max") => return Ok(0.0),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match q {
        Some(q) if q.is_finite() && q > 0.0 => Ok(q),
        _ => bail!(
            "qps {v} is not a rate: give a number of requests per second greater than 0, or max"
        ),
    }
}

fn parse_slo(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not METRIC=LIMIT"))?;
    let v: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: the limit is not a number"))?;
    Ok((k.trim().to_string(), v))
}

fn header_pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("{what} {h:?} is not `NAME: VALUE`"))
        })
        .collect()
}

pub async fn run(args: LoadArgs) -> Result<()> {
    let (task, with, common) = match args.command {
        LoadCommand::Http(a) => {
            let mut with = json!({
                "url": a.url, "qps": a.qps.trim(), "connections": a.connections,
                "headers": header_pairs(&a.headers, "header")?,
            });
            if let Some(n) = a.num_requests {
                with["numRequests"] = json!(n);
            }
            if let Some(d) = a.duration {
                with["duration"] = json!(d);
            }
            if let Some(f) = a.payload_file {
                with["payloadFile"] = json!(f);
            }
            if let Some(u) = a.payload_url {
                with["payloadURL"] = json!(u);
            }
            if let Some(s) = a.payload_str {
                with["payloadStr"] = json!(s);
            }
            if let Some(t) = a.content_type {
                with["contentType"] = json!(t);
            }
            if let Some(r) = a.resolution {
                with["resolution"] = json!(r);
            }
            ("http", with, a.common)
        }
        LoadCommand::Grpc(a) => {
            let data = match (a.data, a.data_file) {
                (Some(d), _) => d,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading --data-file {}", f.display()))?,
                (None, None) => "{}".to_string(),
            };
            let data: Value = serde_json::from_str(&data).context("--data is not JSON")?;
            let mut with = json!({
                "host": a.host, "call": a.call, "proto": a.proto, "importPaths": a.import_paths,
                "data": data, "metadata": header_pairs(&a.metadata, "metadata")?,
                "rps": a.rps, "concurrency": a.concurrency, "connections": a.connections,
            });
            if let Some(n) = a.total {
                with["total"] = json!(n);
            }
            if let Some(d) = a.duration {
                with["duration"] = json!(d);
            }
            ("grpc", with, a.common)
        }
    };
    let mut with = with;
    with["slos"] = json!(common.slos.into_iter().collect::<BTreeMap<_, _>>());
    let mut result = ExperimentResult {
        start_time: jiff::Timestamp::now().to_string(),
        iter8_version: ITER8_VERSION.to_string(),
        ..Default::default()
    };
    if let Some(n) = common.warmup.filter(|&n| n > 0) {
        let mut warm = with.clone();
        warm["warmup"] = json!(true);
        warm["slos"] = json!({});
        if let Some(m) = warm.as_object_mut() {
            m.remove("duration");
        }
        warm[if task == "http" {
            "numRequests"
        } else {
            "total"
        }] = json!(n);
        task_run(task, &warm, &mut result).await?;
    }
    let held = task_run(task, &with, &mut result).await?;
    result.num_completed_tasks = 1;
    result.failure = !held;
    let text = serde_json::to_string_pretty(&result)?;
    match &common.output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None => println!("{text}"),
    }
    if !held {
        bail!("service-level objectives not met (see slos in the result)");
    }
    Ok(())
}

/// The `http` or `grpc` task of an experiment: runs every endpoint (the single one, or each
/// of `endpoints`, keyed by id), records the results in `result` (unless `warmup`), and
/// returns whether every objective held.
pub async fn task(name: &str, with: &Value, result: &mut ExperimentResult) -> Result<bool> {
    task_run(name, with, result).await
}

async fn task_run(name: &str, with: &Value, result: &mut ExperimentResult) -> Result<bool> {
    let warmup = with.get("warmup").and_then(Value::as_bool).unwrap_or(false);
    // Endpoints inherit the task's options and override them.
    let mut runs: Vec<(String, Value)> = Vec::new();
    match with.get("endpoints").and_then(Value::as_object) {
        Some(eps) if !eps.is_empty() => {
            for (id, ep) in eps {
                let mut merged = with.clone();
                if let (Some(m), Some(e)) = (merged.as_object_mut(), ep.as_object()) {
                    m.remove("endpoints");
                    for (k, v) in e {
                        m.insert(k.clone(), v.clone());
                    }
                }
                runs.push((id.clone(), merged));
            }
        }
        _ => {
            let key = match name {
                "http" => with.get("url"),
                _ => with.get("call"),
            }
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
            runs.push((key, with.clone()));
        }
    }
    let mut held = true;
    for (key, opts) in runs {
        let slos: BTreeMap<String, f64> = match opts.get("slos") {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).context("slos: want METRIC: LIMIT")?
            }
            _ => BTreeMap::new(),
        };
        slo::validate(&slos)?;
        let (json, measured) = match name {
            "http" => crate::load_exec::http(&opts, &slos).await,
            _ => crate::load_exec::grpc(&opts, &slos).await,
        }
        .with_context(|| format!("{name} endpoint {key}"))?;
        if warmup {
            continue;
        }
        let insights = result.insights.get_or_insert_with(|| Insights {
            num_versions: 1,
            ..Default::default()
        });
        let map = match name {
            "http" => insights.task_data.http.get_or_insert_with(BTreeMap::new),
            _ => insights.task_data.grpc.get_or_insert_with(BTreeMap::new),
        };
        map.insert(key.clone(), json);
        for o in slo::evaluate(&slos, &measured) {
            held &= o.held;
            let mut v = serde_json::to_value(&o)?;
            v["endpoint"] = json!(key);
            v["task"] = json!(name);
            result.slos.push(v);
        }
    }
    Ok(held)
}

/// Parses a Go duration option.
pub fn duration(v: Option<&str>) -> Result<Option<Duration>> {
    v.map(|d| iter8_core::config::parse_go_duration(d).map_err(anyhow::Error::msg))
        .transpose()
}

/// A plain HTTP/1.1 PUT of JSON; `(status, body)`.
pub async fn http_put(url: &str, body: Vec<u8>) -> Result<(u16, String)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: only http:// is supported for the controller's results");
    }
    let host = uri.host().context("URL without host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .context("connecting timed out")??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::put(uri.clone())
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .context("the controller did not answer within 30s")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
