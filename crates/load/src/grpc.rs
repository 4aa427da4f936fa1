//! The gRPC load generator (what ghz did for Iter8 v1.1's `grpc` task): unary calls of any
//! method of a user's `.proto`, compiled at run time ([`protox`]), requests built from JSON
//! ([`prost_reflect`]) and sent through tonic with a codec of dynamic messages ([`DynamicCodec`]).
//!
//! Semantics kept from ghz v0.117.0 (the options' names are ghz's `runner.Config` JSON names,
//! see [`GrpcOptions::from_ghz_config`]):
//! - `concurrency` workers share `connections` HTTP/2 connections (worker `i` uses connection
//!   `i % connections`); `rps` is the total rate across the workers, 0 for no limit.
//! - `duration` (when set) takes precedence over `total`: the run stops issuing calls when it
//!   ends (endReason "timeout"), otherwise after `total` calls (endReason "normal").
//! - Calls are counted by status code name ("OK", "Unavailable", ... as grpc-go names them) and
//!   errors by message (`rpc error: code = <name> desc = <message>`).
//! - The histogram, fastest, slowest and latency distribution cover the OK calls; average and
//!   count cover every call.
//!
//! Unlike ghz, calls in flight when the duration ends are awaited rather than cancelled (ghz
//! closed the connections and counted them as errors), and no per-call details are kept.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use serde_json::Value;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::ghz;
use crate::slo::Measured;

/// ghz's defaults.
pub const DEFAULT_CONCURRENCY: usize = 50;
pub const DEFAULT_TOTAL: u64 = 200;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Iter8 v1.1 set ghz's dial timeout to 10 s.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The latency percentiles [`GrpcRun::measured`] reports (Fortio's list and ghz's).
pub const MEASURED_PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Why a load run could not start. Failed calls are not errors: they are counted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    /// An option is missing or out of range.
    #[error("invalid option {option}: {reason}")]
    Option { option: String, reason: String },
    /// A `.proto` (or protoset) that does not compile; `location` is `file:line:column`
    /// when known.
    #[error("{location}: {message}")]
    Proto { location: String, message: String },
    /// The call names no unary method of the compiled files.
    #[error("method {call:?}: {reason}; methods found: {}", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    Method {
        call: String,
        reason: String,
        found: Vec<String>,
    },
    /// Request data that does not fit the request message.
    #[error("data{}: does not match {message}: {reason}", index.map(|i| format!("[{i}]")).unwrap_or_default())]
    Data {
        index: Option<usize>,
        message: String,
        reason: String,
    },
    /// A file named by the options could not be read.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

fn invalid(option: &str, reason: impl Into<String>) -> LoadError {
    LoadError::Option {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// Options of a gRPC load run.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpcOptions {
    /// `host:port`.
    pub host: String,
    /// `package.Service.Method` or `package.Service/Method`.
    pub call: String,
    /// `.proto` files declaring the service (their folders are import paths too).
    pub proto_files: Vec<PathBuf>,
    pub import_paths: Vec<PathBuf>,
    /// A compiled `FileDescriptorSet` (ghz's `protoset`), instead of `proto_files`.
    pub protoset: Option<PathBuf>,
    /// The request as JSON (proto3 JSON mapping): an object, or an array of objects sent in
    /// turn.
    pub data: Value,
    /// Request metadata (headers).
    pub metadata: Vec<(String, String)>,
    pub concurrency: usize,
    pub connections: usize,
    /// Total calls per second across the workers; 0: as fast as they go.
    pub rps: f64,
    /// Number of calls (ignored when `duration` is set, as in ghz).
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    /// Deadline of each call; zero: none.
    pub timeout: Duration,
    /// Plaintext; TLS is not supported (Iter8 v1.1 always set `insecure`).
    pub insecure: bool,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            host: String::new(),
            call: String::new(),
            proto_files: Vec::new(),
            import_paths: Vec::new(),
            protoset: None,
            data: Value::Object(Default::default()),
            metadata: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            connections: 1,
            rps: 0.0,
            total: Some(DEFAULT_TOTAL),
            duration: None,
            timeout: DEFAULT_TIMEOUT,
            insecure: true,
        }
    }
}

/// ghz options that change what a run means and that this generator does not implement:
/// refusing them beats silently measuring something else.
const UNSUPPORTED_GHZ: &[&str] = &[
    "binary",
    "binary-file",
    "cacert",
    "cert",
    "key",
    "cname",
    "skipTLS",
    "async",
    "load-start",
    "load-end",
    "load-step",
    "load-step-duration",
    "load-max-duration",
    "concurrency-start",
    "concurrency-end",
    "concurrency-step",
    "concurrency-step-duration",
    "concurrency-max-duration",
    "stream-interval",
    "stream-call-duration",
    "stream-call-count",
    "stream-dynamic-messages",
    "reflect-metadata",
    "skipFirst",
];

impl GrpcOptions {
    /// Options from ghz's `runner.Config` JSON names (what Iter8 v1.1's `grpc` task took):
    /// `host`, `call`, `proto`, `protoset`, `import-paths`, `data`, `data-file`, `metadata`,
    /// `metadata-file`, `total`, `concurrency`, `connections`, `rps`, `duration`, `timeout`
    /// (Go durations such as `"10s"`), `insecure`. Other keys (the task's own, such as
    /// `warmup` or `endpoints`) are left to the caller; ghz options that are not supported
    /// are refused.
    pub fn from_ghz_config(v: &Value) -> Result<GrpcOptions, LoadError> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("grpc", "the options must be an object"))?;
        let mut o = GrpcOptions::default();
        for (key, val) in obj {
            match key.as_str() {
                "host" => o.host = string(key, val)?,
                "call" => o.call = string(key, val)?,
                "proto" => o.proto_files = vec![PathBuf::from(string(key, val)?)],
                "protoset" => o.protoset = Some(PathBuf::from(string(key, val)?)),
                "import-paths" => {
                    o.import_paths = val
                        .as_array()
                        .ok_or_else(|| invalid(key, "must be a list of folders"))?
                        .iter()
                        .map(|p| string(key, p).map(PathBuf::from))
                        .collect::<Result<_, _>>()?
                }
                "data" => o.data = val.clone(),
                "data-file" => o.data = read_json(&string(key, val)?)?,
                "metadata" => o.metadata = metadata(key, val)?,
                "metadata-file" => o.metadata = metadata(key, &read_json(&string(key, val)?)?)?,
                "total" => o.total = Some(uint(key, val)?),
                "concurrency" => o.concurrency = uint(key, val)? as usize,
                "connections" => o.connections = uint(key, val)? as usize,
                "rps" => {
                    o.rps = val
                        .as_f64()
                        .ok_or_else(|| invalid(key, "must be a number"))?
                }
                "duration" => o.duration = Some(duration(key, val)?),
                "timeout" => o.timeout = duration(key, val)?,
                "insecure" => {
                    o.insecure = val
                        .as_bool()
                        .ok_or_else(|| invalid(key, "must be true or false"))?
                }
                "load-schedule" | "concurrency-schedule"
                    if val.as_str().is_some_and(|s| s != "const") =>
                {
                    return Err(invalid(key, "only \"const\" is supported"));
                }
                k if UNSUPPORTED_GHZ.contains(&k) => {
                    return Err(invalid(k, "this ghz option is not supported"))
                }
                _ => {}
            }
        }
        if o.duration == Some(Duration::ZERO) {
            o.duration = None;
        }
        Ok(o)
    }

    /// Checks the options, compiles the proto and builds the requests, without sending any.
    pub fn validate(&self) -> Result<(), LoadError> {
        self.prepare().map(|_| ())
    }

    fn prepare(&self) -> Result<Prepared, LoadError> {
        if self.host.is_empty() {
            return Err(invalid("host", "missing (host:port)"));
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.host))
            .map_err(|e| invalid("host", format!("{:?} is not host:port: {e}", self.host)))?
            .connect_timeout(DIAL_TIMEOUT)
            .tcp_nodelay(true);
        if !self.insecure {
            return Err(invalid(
                "insecure",
                "TLS is not supported; set insecure: true",
            ));
        }
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        if self.connections == 0 {
            return Err(invalid("connections", "must be at least 1"));
        }
        if self.connections > self.concurrency {
            return Err(invalid(
                "connections",
                format!(
                    "{} connections for {} workers: at most one per worker",
                    self.connections, self.concurrency
                ),
            ));
        }
        if !self.rps.is_finite() || self.rps < 0.0 {
            return Err(invalid(
                "rps",
                format!("{} is not a rate (0 for no limit)", self.rps),
            ));
        }
        let limit = match (self.duration, self.total) {
            (Some(d), _) if !d.is_zero() => Limit::Duration(d),
            (_, Some(n)) if n > 0 => Limit::Total(n),
            _ => {
                return Err(invalid(
                    "total",
                    "total and duration are both 0 or missing; set one of them",
                ))
            }
        };
        let pool = self.descriptors()?;
        let method = find_method(&pool, &self.call)?;
        let requests = requests(&method.input(), &self.data)?;
        let mut md = MetadataMap::new();
        for (k, v) in &self.metadata {
            if k.to_ascii_lowercase().ends_with("-bin") {
                return Err(invalid(
                    "metadata",
                    format!("{k:?}: binary metadata is not supported"),
                ));
            }
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| invalid("metadata", format!("{k:?} is not a header name")))?;
            let val = MetadataValue::try_from(v.as_str())
                .map_err(|_| invalid("metadata", format!("{k}: {v:?} is not a header value")))?;
            md.append(key, val);
        }
        let path = PathAndQuery::try_from(format!(
            "/{}/{}",
            method.parent_service().full_name(),
            method.name()
        ))
        .map_err(|e| invalid("call", e.to_string()))?;
        Ok(Prepared {
            path,
            output: method.output(),
            requests,
            metadata: md,
            endpoint,
            limit,
        })
    }

    fn descriptors(&self) -> Result<DescriptorPool, LoadError> {
        if let Some(set) = &self.protoset {
            if !self.proto_files.is_empty() {
                return Err(invalid("protoset", "set proto or protoset, not both"));
            }
            let bytes = std::fs::read(set).map_err(|e| LoadError::File {
                path: set.display().to_string(),
                reason: e.to_string(),
            })?;
            return DescriptorPool::decode(bytes.as_slice()).map_err(|e| LoadError::Proto {
                location: set.display().to_string(),
                message: e.to_string(),
            });
        }
        if self.proto_files.is_empty() {
            return Err(invalid(
                "proto",
                "missing: name the .proto declaring the service (server reflection is not supported)",
            ));
        }
        for f in &self.proto_files {
            std::fs::metadata(f).map_err(|e| LoadError::File {
                path: f.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        // As ghz: the import paths, then the folders of the files.
        let mut includes = self.import_paths.clone();
        for f in &self.proto_files {
            let dir = f
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            if !includes.contains(&dir) {
                includes.push(dir);
            }
        }
        let compile = || -> Result<DescriptorPool, protox::Error> {
            let mut c = protox::Compiler::new(&includes)?;
            c.include_imports(true);
            for f in &self.proto_files {
                c.open_file(f)?;
            }
            Ok(c.descriptor_pool())
        };
        compile().map_err(|e| proto_error(&e, &includes))
    }
}

fn string(key: &str, v: &Value) -> Result<String, LoadError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(key, "must be a string"))
}

fn uint(key: &str, v: &Value) -> Result<u64, LoadError> {
    v.as_u64()
        .ok_or_else(|| invalid(key, format!("{v} is not a whole number of at least 0")))
}

fn duration(key: &str, v: &Value) -> Result<Duration, LoadError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(key, format!("{v} is not a duration such as \"10s\"")))?;
    parse_go_duration(s)
        .ok_or_else(|| invalid(key, format!("{s:?} is not a duration such as \"10s\"")))
}

fn read_json(path: &str) -> Result<Value, LoadError> {
    let file_err = |reason: String| LoadError::File {
        path: path.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file_err(e.to_string()))
}

fn metadata(key: &str, v: &Value) -> Result<Vec<(String, String)>, LoadError> {
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(key, "must be an object of strings"))?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), string(key, v)?)))
        .collect()
}

/// A Go duration (`time.ParseDuration`): `"1h2m3.5s"`, `"300ms"`, `"0"`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// A compile error as `file:line:column: message` (protox reports byte offsets).
fn proto_error(e: &protox::Error, includes: &[PathBuf]) -> LoadError {
    use miette::Diagnostic;
    let message = e.to_string();
    let file = e.file().unwrap_or("").to_string();
    let offset = e.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    let mut location = file.clone();
    if let Some(offset) = offset {
        let source = e
            .source_code()
            .and_then(|src| {
                src.read_span(&miette::SourceSpan::from((offset, 0)), 0, 0)
                    .ok()
                    .map(|c| (c.line() + 1, c.column() + 1))
            })
            .or_else(|| {
                // Some checks carry no source: find the file along the include paths.
                includes
                    .iter()
                    .find_map(|d| std::fs::read_to_string(d.join(&file)).ok())
                    .map(|text| line_column(&text, offset))
            });
        if let Some((line, column)) = source {
            location = format!("{file}:{line}:{column}");
        }
    }
    if location.is_empty() {
        location = "proto".to_string();
    }
    LoadError::Proto { location, message }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// `package.Service.Method` or `package.Service/Method` among the compiled services.
fn find_method(pool: &DescriptorPool, call: &str) -> Result<MethodDescriptor, LoadError> {
    let found: Vec<String> = pool
        .services()
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("{}.{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    let fail = |reason: &str| LoadError::Method {
        call: call.to_string(),
        reason: reason.to_string(),
        found: found.clone(),
    };
    if call.is_empty() {
        return Err(fail("missing (package.Service.Method)"));
    }
    let (service, method) = call
        .rsplit_once('/')
        .or_else(|| call.rsplit_once('.'))
        .ok_or_else(|| fail("not of the form package.Service.Method"))?;
    let service = pool
        .get_service_by_name(service)
        .ok_or_else(|| fail(&format!("no service {service:?}")))?;
    let method = service
        .methods()
        .find(|m| m.name() == method)
        .ok_or_else(|| {
            fail(&format!(
                "service {} has no method {method:?}",
                service.full_name()
            ))
        })?;
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(fail("streaming methods are not supported, only unary ones"));
    }
    Ok(method)
}

/// The requests from the JSON data: one object, or several used in turn.
fn requests(
    input: &MessageDescriptor,
    data: &Value,
) -> Result<Vec<Arc<DynamicMessage>>, LoadError> {
    let bad = |index: Option<usize>, reason: String| LoadError::Data {
        index,
        message: input.full_name().to_string(),
        reason,
    };
    let one = |index: Option<usize>, v: &Value| {
        if !v.is_object() {
            return Err(bad(index, format!("{v} is not an object")));
        }
        // The path of the offending field ("inputs[0].datatype"): serde's message alone
        // does not name it for a wrong type.
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(v, &mut track);
        DynamicMessage::deserialize(input.clone(), de)
            .map(Arc::new)
            .map_err(|e| {
                let path = track.path().to_string();
                if path.is_empty() || path == "." {
                    bad(index, e.to_string())
                } else {
                    bad(index, format!("field {path}: {e}"))
                }
            })
    };
    match data {
        Value::Array(items) if items.is_empty() => {
            Err(bad(None, "an empty list: give at least one request".into()))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| one(Some(i), v))
            .collect(),
        Value::Null => Ok(vec![Arc::new(DynamicMessage::new(input.clone()))]),
        v => one(None, v).map(|m| vec![m]),
    }
}

/// When a run stops issuing calls.
#[derive(Clone, Copy, Debug)]
enum Limit {
    Total(u64),
    Duration(Duration),
}

struct Prepared {
    path: PathAndQuery,
    output: MessageDescriptor,
    requests: Vec<Arc<DynamicMessage>>,
    metadata: MetadataMap,
    endpoint: Endpoint,
    limit: Limit,
}

/// Hands out call numbers to the workers, paced to the total rate.
struct Schedule {
    next: AtomicU64,
    start: Instant,
    end: Option<Instant>,
    total: Option<u64>,
    /// Seconds between calls; 0: no pacing.
    interval: f64,
}

impl Schedule {
    /// The next call's number once it is due; `None` when the run is over. Call `i` is due
    /// at `start + i / rps`, so a late call does not delay the ones after it (as ghz's pacer).
    async fn next(&self) -> Option<u64> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.total.is_some_and(|n| i >= n) {
            return None;
        }
        if self.interval > 0.0 {
            let due = self.start + Duration::from_secs_f64(i as f64 * self.interval);
            if self.end.is_some_and(|end| due >= end) {
                return None;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        // A run that fell behind its rate still ends on time.
        if self.end.is_some_and(|end| Instant::now() >= end) {
            return None;
        }
        Some(i)
    }
}

/// What one worker counted.
struct Stats {
    count: u64,
    ok: u64,
    sum_ns: u128,
    all: Histogram<u64>,
    ok_hist: Histogram<u64>,
    fastest_ok: u64,
    slowest_ok: u64,
    status: HashMap<&'static str, u64>,
    errors: HashMap<String, u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            count: 0,
            ok: 0,
            sum_ns: 0,
            all: histogram(),
            ok_hist: histogram(),
            fastest_ok: u64::MAX,
            slowest_ok: 0,
            status: HashMap::new(),
            errors: HashMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, result: Result<(), Status>) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.count += 1;
        self.sum_ns += u128::from(ns);
        // `record` grows an auto-resizing histogram; `saturating_record` would clamp to its
        // current (initially tiny) range.
        let _ = self.all.record(ns);
        match result {
            Ok(()) => {
                self.ok += 1;
                let _ = self.ok_hist.record(ns);
                self.fastest_ok = self.fastest_ok.min(ns);
                self.slowest_ok = self.slowest_ok.max(ns);
                *self.status.entry(status_name(Code::Ok)).or_default() += 1;
            }
            Err(s) => {
                *self.status.entry(status_name(s.code())).or_default() += 1;
                *self.errors.entry(error_message(&s)).or_default() += 1;
            }
        }
    }

    fn merge(&mut self, o: Stats) {
        self.count += o.count;
        self.ok += o.ok;
        self.sum_ns += o.sum_ns;
        // Auto-resizing histograms of the same precision always add.
        let _ = self.all.add(&o.all);
        let _ = self.ok_hist.add(&o.ok_hist);
        self.fastest_ok = self.fastest_ok.min(o.fastest_ok);
        self.slowest_ok = self.slowest_ok.max(o.slowest_ok);
        for (k, v) in o.status {
            *self.status.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// Latencies in ns, 3 significant digits (1 µs at 1 ms), growing as needed.
fn histogram() -> Histogram<u64> {
    // 3 significant digits is in hdrhistogram's range (0..=5): this cannot fail.
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
}

/// grpc-go's name of a status code (what ghz counts by).
pub fn status_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// grpc-go's error text (`rpc error: code = Unavailable desc = ...`), with the causes tonic
/// keeps apart (e.g. "tcp connect error: Connection refused").
fn error_message(s: &Status) -> String {
    let mut desc = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !desc.contains(&text) {
            if !desc.is_empty() {
                desc.push_str(": ");
            }
            desc.push_str(&text);
        }
        source = e.source();
    }
    format!("rpc error: code = {} desc = {desc}", status_name(s.code()))
}

/// A tonic codec of [`DynamicMessage`]s: encodes `E` (a message, or a shared one) and
/// decodes messages of the given descriptor. It calls (or serves) any method of a proto
/// known only at run time.
pub struct DynamicCodec<E = DynamicMessage> {
    decodes: MessageDescriptor,
    _encodes: PhantomData<fn(E)>,
}

impl<E> DynamicCodec<E> {
    /// A codec that decodes messages of `decodes` (the response's type for a client, the
    /// request's for a server).
    pub fn new(decodes: MessageDescriptor) -> Self {
        DynamicCodec {
            decodes,
            _encodes: PhantomData,
        }
    }
}

impl<E> Clone for DynamicCodec<E> {
    fn clone(&self) -> Self {
        DynamicCodec::new(self.decodes.clone())
    }
}

impl<E: Borrow<DynamicMessage> + Send + 'static> Codec for DynamicCodec<E> {
    type Encode = E;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder<E>;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.decodes.clone())
    }
}

/// See [`DynamicCodec`].
pub struct DynamicEncoder<E>(PhantomData<fn(E)>);

impl<E: Borrow<DynamicMessage>> Encoder for DynamicEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.borrow()
            .encode(dst)
            .map_err(|e| Status::internal(format!("encoding the message: {e}")))
    }
}

/// See [`DynamicCodec`].
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| {
                Status::internal(format!(
                    "grpc: failed to unmarshal the received message: {e}"
                ))
            })
    }
}

/// Runs the load: validates the options, opens the connections, sends the calls and counts
/// their outcomes. Failed calls (an unreachable host included) are counted, not returned.
pub async fn run(opts: &GrpcOptions) -> Result<GrpcRun, LoadError> {
    let prepared = Arc::new(opts.prepare()?);
    // Connect before the clock starts (as ghz dials first); a host that cannot be reached
    // gets lazy channels, so each call fails and is counted as Unavailable.
    let endpoint = &prepared.endpoint;
    let channels: Vec<Channel> =
        futures::future::join_all((0..opts.connections).map(|_| async move {
            match endpoint.connect().await {
                Ok(c) => c,
                Err(_) => endpoint.connect_lazy(),
            }
        }))
        .await;
    let date = SystemTime::now();
    let start = Instant::now();
    let (end, total) = match prepared.limit {
        Limit::Duration(d) => (Some(start + d), None),
        Limit::Total(n) => (None, Some(n)),
    };
    let schedule = Arc::new(Schedule {
        next: AtomicU64::new(0),
        start,
        end,
        total,
        interval: if opts.rps > 0.0 { 1.0 / opts.rps } else { 0.0 },
    });
    let timeout = (!opts.timeout.is_zero()).then_some(opts.timeout);
    // A JoinSet: if the caller drops the run, the workers stop too.
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        let channel = channels[w % channels.len()].clone();
        workers.spawn(worker(channel, prepared.clone(), schedule.clone(), timeout));
    }
    let mut stats = Stats::new();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(s) => stats.merge(s),
            // A worker does not panic; if one did, its calls are lost rather than the run.
            Err(e) => tracing::error!("gRPC load worker failed: {e}"),
        }
    }
    Ok(GrpcRun {
        options: opts.clone(),
        date,
        elapsed: start.elapsed(),
        end_reason: match prepared.limit {
            Limit::Duration(_) => "timeout",
            Limit::Total(_) => "normal",
        },
        stats,
    })
}

async fn worker(
    channel: Channel,
    p: Arc<Prepared>,
    schedule: Arc<Schedule>,
    timeout: Option<Duration>,
) -> Stats {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let codec = DynamicCodec::<Arc<DynamicMessage>>::new(p.output.clone());
    let mut stats = Stats::new();
    while let Some(i) = schedule.next().await {
        let msg = p.requests[(i % p.requests.len() as u64) as usize].clone();
        let mut req = tonic::Request::new(msg);
        *req.metadata_mut() = p.metadata.clone();
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        let began = Instant::now();
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            grpc.unary(req, p.path.clone(), codec.clone())
                .await
                .map(|_| ())
        };
        let deadline = || Status::deadline_exceeded("context deadline exceeded");
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, call).await {
                // A server that honours grpc-timeout may answer first (tonic's says
                // Cancelled); past its deadline a grpc-go client reports DeadlineExceeded.
                Ok(Err(_)) if began.elapsed() >= t => Err(deadline()),
                Ok(r) => r,
                Err(_) => Err(deadline()),
            },
            None => call.await,
        };
        stats.record(began.elapsed(), result);
    }
    stats
}

/// The outcome of a gRPC load run.
pub struct GrpcRun {
    options: GrpcOptions,
    date: SystemTime,
    elapsed: Duration,
    end_reason: &'static str,
    stats: Stats,
}

impl GrpcRun {
    /// Calls made.
    pub fn count(&self) -> u64 {
        self.stats.count
    }

    /// Calls that ended with status OK.
    pub fn ok(&self) -> u64 {
        self.stats.ok
    }

    /// Calls that did not end with OK.
    pub fn errors(&self) -> u64 {
        self.stats.count - self.stats.ok
    }

    /// Wall time from the first call to the last answer.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Calls per second over the run.
    pub fn rps(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.stats.count as f64 / s
        } else {
            0.0
        }
    }

    /// Calls by status code name ("OK", "Unavailable", ...).
    pub fn status_codes(&self) -> BTreeMap<String, u64> {
        self.stats
            .status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// Failed calls by error message.
    pub fn error_messages(&self) -> BTreeMap<String, u64> {
        self.stats.errors.clone().into_iter().collect()
    }

    /// Latency percentile `p` (0..=100) of every call, errors included, in ms.
    pub fn latency_ms(&self, p: f64) -> Option<f64> {
        (self.stats.count > 0).then(|| quantile_ns(&self.stats.all, p) as f64 / 1e6)
    }

    /// Latency percentile `p` (0..=100) of the OK calls, in ms.
    pub fn ok_latency_ms(&self, p: f64) -> Option<f64> {
        (self.stats.ok > 0).then(|| quantile_ns(&self.stats.ok_hist, p) as f64 / 1e6)
    }

    /// What the service-level objectives read: every call counts, errors included (as the
    /// HTTP side), with [`MEASURED_PERCENTILES`].
    pub fn measured(&self) -> Measured {
        self.measured_with(&[])
    }

    /// As [`GrpcRun::measured`], with more percentiles (e.g. `slo::percentiles_needed`).
    pub fn measured_with(&self, extra: &[f64]) -> Measured {
        let mut ps: Vec<f64> = MEASURED_PERCENTILES.to_vec();
        for &p in extra {
            if p > 0.0 && p < 100.0 && !ps.iter().any(|q| (q - p).abs() < 1e-9) {
                ps.push(p);
            }
        }
        ps.sort_by(f64::total_cmp);
        let c = self.stats.count;
        Measured {
            requests: c,
            errors: self.errors(),
            mean_ms: if c == 0 {
                0.0
            } else {
                self.stats.sum_ns as f64 / c as f64 / 1e6
            },
            percentiles_ms: if c == 0 {
                Vec::new()
            } else {
                ps.iter()
                    .map(|&p| (p, quantile_ns(&self.stats.all, p) as f64 / 1e6))
                    .collect()
            },
        }
    }

    /// The run as ghz's `runner.Report`.
    pub fn report(&self) -> ghz::Report {
        let s = &self.stats;
        let o = &self.options;
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let options = ghz::Options {
            call: o.call.clone(),
            host: o.host.clone(),
            proto: o
                .proto_files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
            protoset: o
                .protoset
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            import_paths: o
                .import_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            insecure: o.insecure,
            rps: (o.rps > 0.0).then(|| rps_number(o.rps)),
            load_schedule: "const".into(),
            concurrency: o.concurrency as i64,
            concurrency_schedule: "const".into(),
            concurrency_start: 1,
            total: match self.end_reason {
                "normal" => o.total.map_or(0, |n| n as i64),
                _ => 0,
            },
            connections: o.connections as i64,
            duration: o.duration.map_or(0, ns),
            timeout: ns(o.timeout),
            dial_timeout: ns(DIAL_TIMEOUT),
            data: Some(o.data.clone()),
            metadata: (!o.metadata.is_empty()).then(|| o.metadata.iter().cloned().collect()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
            ..Default::default()
        };
        let mut report = ghz::Report {
            end_reason: self.end_reason.into(),
            date: ghz::rfc3339(self.date),
            options,
            count: s.count,
            total: ns(self.elapsed),
            error_distribution: Some(s.errors.clone().into_iter().collect()),
            status_code_distribution: Some(self.status_codes()),
            ..Default::default()
        };
        if s.count > 0 {
            report.average = (s.sum_ns / u128::from(s.count)).min(i64::MAX as u128) as i64;
            report.rps = self.rps();
        }
        if s.ok > 0 {
            let (fastest, slowest) = (s.fastest_ok, s.slowest_ok);
            report.fastest = fastest as i64;
            report.slowest = slowest as i64;
            report.latency_distribution = Some(
                ghz::LATENCY_PERCENTAGES
                    .iter()
                    .map(|&p| ghz::LatencyDistribution {
                        percentage: p,
                        latency: quantile_ns(&s.ok_hist, f64::from(p)).clamp(fastest, slowest)
                            as i64,
                    })
                    .collect(),
            );
            // Each recorded value at the middle of its bucket, except the extremes' buckets:
            // at the exact extremes, which ghz's first and last marks are.
            let h = &s.ok_hist;
            let values = h.iter_recorded().map(|v| {
                let at = v.value_iterated_to();
                let ns = if h.equivalent(at, fastest) {
                    fastest
                } else if h.equivalent(at, slowest) {
                    slowest
                } else {
                    h.median_equivalent(at).clamp(fastest, slowest)
                };
                (ns as f64 / 1e9, v.count_at_value())
            });
            report.histogram = Some(ghz::histogram(
                values,
                fastest as f64 / 1e9,
                slowest as f64 / 1e9,
            ));
        }
        report
    }

    /// The run as ghz's `runner.Report` JSON (what Iter8 v1.1 stored), without per-call
    /// details.
    pub fn ghz_json(&self) -> Value {
        self.report().to_value()
    }
}

fn quantile_ns(h: &Histogram<u64>, p: f64) -> u64 {
    h.value_at_quantile((p / 100.0).clamp(0.0, 1.0))
}

/// ghz writes an integer rate; a fractional one stays fractional.
fn rps_number(rps: f64) -> serde_json::Number {
    if rps.fract() == 0.0 && rps <= u64::MAX as f64 {
        serde_json::Number::from(rps as u64)
    } else {
        serde_json::Number::from_f64(rps).unwrap_or_else(|| serde_json::Number::from(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("5x"), None);
    }

    #[test]
    fn line_and_column_of_an_offset() {
        assert_eq!(line_column("ab\ncd\nef", 4), (2, 2));
        assert_eq!(line_column("ab", 0), (1, 1));
    }

    #[test]
    fn status_names_are_grpc_gos() {
        assert_eq!(status_name(Code::Cancelled), "Canceled");
        assert_eq!(status_name(Code::Unavailable), "Unavailable");
        let msg = error_message(&Status::unavailable("down"));
        assert_eq!(msg, "rpc error: code = Unavailable desc = down");
    }

    #[test]
    fn ghz_config_names() {
        let o = GrpcOptions::from_ghz_config(&serde_json::json!({
            "host": "a:1", "call": "p.S.M", "proto": "/x/y.proto", "import-paths": ["/x"],
            "total": 10, "concurrency": 2, "connections": 1, "rps": 5, "duration": "2s",
            "timeout": "500ms", "metadata": {"k": "v"}, "data": {"a": 1}, "warmup": false
        }))
        .expect("options");
        assert_eq!(o.duration, Some(Duration::from_secs(2)));
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.metadata, [("k".to_string(), "v".to_string())]);
        assert_eq!(o.proto_files, [PathBuf::from("/x/y.proto")]);
        let e = GrpcOptions::from_ghz_config(&serde_json::json!({"binary": true}));
        assert!(matches!(e, Err(LoadError::Option { .. })));
        let e = GrpcOptions::from_ghz_config(&serde_json::json!({"duration": 10}));
        assert!(e.is_err(), "a bare number is not a Go duration");
    }
}
