//! The HTTP load generator: Iter8 v1.1's `http` task (`base/collect_http.go`, which ran
//! Fortio's `fhttp.RunHTTPTest` in-process) on tokio + hyper, with Fortio's semantics and
//! Fortio's result shape ([`HttpRun::fortio_json`]).
//!
//! Semantics, as Fortio 1.63 (`periodic/periodic.go`):
//!
//! - `connections` load tasks, each with one HTTP/1.1 keep-alive connection (re-opened after
//!   an error or when the server closes it). `qps` is the **total** across connections; each
//!   task paces itself to `qps / connections`. `qps = 0` sends as fast as possible.
//! - `num_requests` wins over `duration`; with neither, 100 requests (v1.1's default). A count
//!   is split across connections, the remainder going to the first. With a rate, a count below
//!   `2 × connections` lowers the connections to `count / 2` (Fortio), and a duration is
//!   turned into `⌊qps × duration⌋` calls spread over it, the last one at its end.
//! - Pacing is by absolute schedule from the start: call `i` of a task is due at
//!   `(i + i/(n-1)) / (qps/connections)` s. A task that falls behind sends the next call at
//!   once, without sleeping, until it has caught up (Fortio's catch-up; the number of calls
//!   sent late is [`HttpRun::behind_schedule`]). In a duration run a task that is behind stops
//!   at the end of the duration instead of finishing its calls.
//! - **Latency is measured as Fortio measures it: from the moment a call is actually sent**
//!   (connection set-up included when one is needed) until its response body has been read,
//!   not from the time the call was scheduled. A slow target therefore lowers the achieved
//!   rate (check [`HttpRun::actual_qps`] and `behind_schedule`) rather than inflating the
//!   latencies with queueing time the generator itself created.
//! - A duration run first sends one uncounted warm-up call per connection (Fortio's parallel
//!   warm-up, which also opens the connections); unless `allow_initial_errors`, an error there
//!   stops the run with [`LoadError::Warmup`], as v1.1 did. Count runs have no warm-up.
//! - A call is an error when its status code is in one of `error_ranges` (v1.1's default:
//!   400 and above; Fortio itself counted everything but 2xx and 418), or when it got no
//!   response: connection refused or reset, or no full response within `timeout`, all
//!   counted under code `-1` (Fortio's convention).
//! - `GET`, or `POST` when there is a payload or a content type (Fortio's rule).
//!
//! Latencies go into Fortio's fixed-bucket histogram (exactly as Fortio buckets them, for the
//! stored JSON and the dashboards) and into an HDR histogram in microseconds, which gives the
//! percentiles the objectives check ([`HttpRun::measured`]): those are measured values, while
//! the JSON's `Percentiles` stay Fortio's interpolation within its buckets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST, LOCATION, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

use crate::fortio::{self, HttpRunnerResults};
use crate::slo::Measured;

/// v1.1's defaults (`base/collect_http.go`).
pub const DEFAULT_QPS: f64 = 8.0;
pub const DEFAULT_CONNECTIONS: usize = 4;
pub const DEFAULT_NUM_REQUESTS: u64 = 100;
pub const DEFAULT_PERCENTILES: [f64; 6] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
/// Fortio's default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest payload [`fetch_payload`] accepts.
pub const MAX_PAYLOAD_BYTES: usize = 32 << 20;
/// A payload up to this size is echoed (base64) in the result's `Payload`, as Fortio does;
/// a larger one is left out (`null`) so stored results stay small.
pub const MAX_ECHOED_PAYLOAD: usize = 64 << 10;

const USER_AGENT_VALUE: &str = concat!("iter8-load/", env!("CARGO_PKG_VERSION"));
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;
/// HDR histogram bounds: 1 µs to 1 h, 3 significant digits.
const HDR_MAX_US: u64 = 3_600_000_000;

/// Why a load run could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load options: {0}")]
    Options(String),
    #[error("warm-up call to {url} failed: {detail} (a duration run stops when a connection's first call fails, as in Iter8 v1.1; set allowInitialErrors to count such errors instead)")]
    Warmup { url: String, detail: String },
    #[error("payload from {url}: {reason}")]
    Payload { url: String, reason: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("load run: {0}")]
    Internal(String),
}

fn bad(msg: impl Into<String>) -> LoadError {
    LoadError::Options(msg.into())
}

/// Options of one HTTP load run (v1.1's `http` task inputs).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpOptions {
    /// `http://` or `https://`; without a scheme, `http://` is assumed (as Fortio).
    pub url: String,
    /// Total calls per second across connections; 0 = as fast as possible.
    pub qps: f64,
    pub connections: usize,
    /// Wins over `duration`; with neither, [`DEFAULT_NUM_REQUESTS`].
    pub num_requests: Option<u64>,
    pub duration: Option<Duration>,
    /// Sent as the body of a POST.
    pub payload: Option<Vec<u8>>,
    /// Makes the calls POSTs, as a payload does.
    pub content_type: Option<String>,
    /// Extra request headers; a `Host` or `User-Agent` here replaces ours.
    pub headers: Vec<(String, String)>,
    /// Per call: connection set-up, request and the whole response.
    pub timeout: Duration,
    /// Status codes that count as errors, inclusive; an open end is `None`.
    pub error_ranges: Vec<(Option<u16>, Option<u16>)>,
    /// Latency percentiles to report (0 < p < 100).
    pub percentiles: Vec<f64>,
    /// Count failed warm-up calls of a duration run instead of stopping the run.
    pub allow_initial_errors: bool,
    /// Fortio's `-r`: the unit of the latency buckets in seconds (default 1 ms). The buckets
    /// end at 100 000 units; a finer unit resolves sub-millisecond latencies.
    pub resolution: f64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            url: String::new(),
            qps: DEFAULT_QPS,
            connections: DEFAULT_CONNECTIONS,
            num_requests: None,
            duration: None,
            payload: None,
            content_type: None,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            error_ranges: vec![(Some(400), None)],
            percentiles: DEFAULT_PERCENTILES.to_vec(),
            allow_initial_errors: false,
            resolution: fortio::DURATION_RESOLUTION,
        }
    }
}

impl HttpOptions {
    /// Checks everything a run needs before any call is sent.
    pub fn validate(&self) -> Result<(), LoadError> {
        Target::parse(&self.url).map_err(LoadError::Options)?;
        if !self.qps.is_finite() || self.qps < 0.0 {
            return Err(bad(format!(
                "qps must be a finite number of at least 0 (0 = as fast as possible), got {}",
                self.qps
            )));
        }
        if self.connections == 0 {
            return Err(bad("connections must be at least 1"));
        }
        if self.num_requests == Some(0) {
            return Err(bad("numRequests must be at least 1"));
        }
        if self.num_requests.is_none() && self.duration == Some(Duration::ZERO) {
            return Err(bad("duration must be longer than 0"));
        }
        if !(self.resolution.is_finite() && self.resolution > 0.0) {
            return Err(bad(format!(
                "resolution must be a number of seconds above 0, got {}",
                self.resolution
            )));
        }
        if self.timeout.is_zero() {
            return Err(bad("timeout must be longer than 0"));
        }
        if let Some(ct) = &self.content_type {
            HeaderValue::from_str(ct)
                .map_err(|_| bad(format!("contentType {ct:?} is not a valid header value")))?;
        }
        for (k, v) in &self.headers {
            HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| bad(format!("header name {k:?} is not valid")))?;
            HeaderValue::from_str(v)
                .map_err(|_| bad(format!("header {k}: value {v:?} is not valid")))?;
        }
        for r in &self.error_ranges {
            match *r {
                (None, None) => {
                    return Err(bad("an error range needs a lower or an upper status code"))
                }
                (Some(l), Some(u)) if l > u => {
                    return Err(bad(format!("error range: lower {l} is above upper {u}")))
                }
                _ => {}
            }
        }
        if let Some(p) = self
            .percentiles
            .iter()
            .find(|p| !(p.is_finite() && **p > 0.0 && **p < 100.0))
        {
            return Err(bad(format!("percentile {p} must be above 0 and below 100")));
        }
        Ok(())
    }

    fn is_error(&self, code: i32) -> bool {
        code < 0
            || self.error_ranges.iter().any(|&(l, u)| {
                l.is_none_or(|l| code >= i32::from(l)) && u.is_none_or(|u| code <= i32::from(u))
            })
    }
}

/// Where calls go: parsed once.
#[derive(Clone, Debug)]
struct Target {
    url: String,
    https: bool,
    /// Without IPv6 brackets (for resolving and TLS).
    host: String,
    port: u16,
    /// `host[:port]` as written (the Host header).
    authority: String,
    path: Uri,
}

impl Target {
    fn parse(raw: &str) -> Result<Target, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("no URL given".into());
        }
        let url = match raw.split_once("://") {
            None => format!("http://{raw}"),
            Some(("http" | "https", _)) => raw.to_string(),
            Some((other, _)) => {
                return Err(format!(
                    "URL {raw:?}: scheme {other:?} is not supported (use http or https)"
                ))
            }
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("URL {raw:?} does not parse: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        let authority = uri
            .authority()
            .ok_or_else(|| format!("URL {raw:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "URL {raw:?}: credentials in the URL are not supported; send an Authorization header"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("URL {raw:?} has no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path: Uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .parse()
            .map_err(|e| format!("URL {raw:?}: path does not parse: {e}"))?;
        Ok(Target {
            url,
            https,
            host: host.to_string(),
            port,
            authority: authority.as_str().to_string(),
            path,
        })
    }
}

/// The rustls client configuration: the system's roots, HTTP/1.1 only.
fn tls_connector() -> Result<TlsConnector, LoadError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate rustls cannot use is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none installed".into());
        return Err(LoadError::Tls(format!(
            "no usable root certificates on this system ({why})"
        )));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| LoadError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One open HTTP/1.1 connection; its driver task ends with it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Resolves, connects (TLS when https) and hands the connection to hyper.
async fn open(target: &Target, tls: Option<&TlsConnector>) -> Result<(Conn, SocketAddr), String> {
    let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", target.host))?;
    // Each address in turn, as Go's dialer does ("localhost" may be ::1 and 127.0.0.1).
    let mut failed = format!("{} resolves to no address", target.host);
    let mut connected = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                connected = Some((tcp, addr));
                break;
            }
            Err(e) => failed = format!("connecting to {addr}: {e}"),
        }
    }
    let (tcp, addr) = connected.ok_or(failed)?;
    // Go's default, which Fortio keeps: small requests go out at once.
    let _ = tcp.set_nodelay(true);
    let handshake_err = |e: hyper::Error| format!("HTTP handshake with {addr}: {e}");
    let conn = match tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("TLS server name {:?}: {e}", target.host))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(handshake_err)?;
            Conn {
                sender,
                driver: tokio::spawn(async move {
                    let _ = conn.await;
                }),
            }
        }
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(handshake_err)?;
            Conn {
                sender,
                driver: tokio::spawn(async move {
                    let _ = conn.await;
                }),
            }
        }
    };
    Ok((conn, addr))
}

/// What every connection task shares.
struct Shared {
    opts: HttpOptions,
    target: Target,
    tls: Option<TlsConnector>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Shared {
    fn new(opts: &HttpOptions) -> Result<Shared, LoadError> {
        let target = Target::parse(&opts.url).map_err(LoadError::Options)?;
        let tls = if target.https {
            Some(tls_connector()?)
        } else {
            None
        };
        let body = Bytes::from(opts.payload.clone().unwrap_or_default());
        let method = if !body.is_empty() || opts.content_type.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let mut headers = HeaderMap::new();
        let value =
            |v: &str| HeaderValue::from_str(v).map_err(|_| bad(format!("bad header value {v:?}")));
        headers.insert(HOST, value(&target.authority)?);
        headers.insert(USER_AGENT, value(USER_AGENT_VALUE)?);
        if let Some(ct) = &opts.content_type {
            headers.insert(CONTENT_TYPE, value(ct)?);
        }
        let mut replaced: Vec<HeaderName> = Vec::new();
        for (k, v) in &opts.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| bad(format!("header name {k:?} is not valid")))?;
            // The first user value replaces ours; later ones with the same name add to it.
            if replaced.contains(&name) {
                headers.append(name, value(v)?);
            } else {
                headers.insert(name.clone(), value(v)?);
                replaced.push(name);
            }
        }
        Ok(Shared {
            opts: opts.clone(),
            target,
            tls,
            method,
            headers,
            body,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.target.path.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// The size of a response's head as it came on the wire (status line, headers, blank line).
fn head_size(resp: &Response<Incoming>) -> u64 {
    let status = resp.status();
    let reason = status.canonical_reason().unwrap_or("");
    let mut n = "HTTP/1.1 200 ".len() + reason.len() + 2;
    for (k, v) in resp.headers() {
        n += k.as_str().len() + 2 + v.len() + 2;
    }
    (n + 2) as u64
}

/// Go's `Duration.Seconds()`.
fn secs(d: Duration) -> f64 {
    d.as_secs() as f64 + f64::from(d.subsec_nanos()) / 1e9
}

fn new_hdr() -> Result<hdrhistogram::Histogram<u64>, LoadError> {
    hdrhistogram::Histogram::new_with_bounds(1, HDR_MAX_US, 3)
        .map_err(|e| LoadError::Internal(format!("latency histogram: {e}")))
}

/// What one connection task measured; merged into the run's at the end.
struct Stats {
    durations: fortio::Histogram,
    error_durations: fortio::Histogram,
    latency_us: hdrhistogram::Histogram<u64>,
    ret_codes: BTreeMap<i32, u64>,
    errors: u64,
    sizes: fortio::Histogram,
    header_sizes: fortio::Histogram,
    connect_times: fortio::Histogram,
    sockets: u64,
    ip_counts: BTreeMap<String, u64>,
    behind_schedule: u64,
    first_error: Option<String>,
}

impl Stats {
    fn new(resolution: f64) -> Result<Stats, LoadError> {
        Ok(Stats {
            durations: fortio::Histogram::new(0.0, resolution),
            error_durations: fortio::Histogram::new(0.0, resolution),
            latency_us: new_hdr()?,
            ret_codes: BTreeMap::new(),
            errors: 0,
            // Fortio's size histograms: 100-byte and 5-byte buckets.
            sizes: fortio::Histogram::new(0.0, 100.0),
            header_sizes: fortio::Histogram::new(0.0, 5.0),
            connect_times: fortio::Histogram::new(0.0, resolution),
            sockets: 0,
            ip_counts: BTreeMap::new(),
            behind_schedule: 0,
            first_error: None,
        })
    }
}

/// A call's outcome: status code (-1 without a response), response and head sizes.
struct Outcome {
    code: i32,
    size: u64,
    head: u64,
    error: Option<String>,
}

/// One load "connection": a task that sends its calls one after the other.
struct Worker {
    shared: Arc<Shared>,
    conn: Option<Conn>,
    stats: Stats,
}

impl Worker {
    fn new(shared: Arc<Shared>) -> Result<Worker, LoadError> {
        let stats = Stats::new(shared.opts.resolution)?;
        Ok(Worker {
            shared,
            conn: None,
            stats,
        })
    }

    async fn connect(&mut self) -> Result<Conn, String> {
        let t0 = Instant::now();
        let (conn, addr) = open(&self.shared.target, self.shared.tls.as_ref()).await?;
        self.stats.connect_times.record(secs(t0.elapsed()));
        self.stats.sockets += 1;
        *self.stats.ip_counts.entry(addr.to_string()).or_default() += 1;
        Ok(conn)
    }

    /// Sends one request on the open connection (opening one if needed) and reads the whole
    /// response. A kept-alive connection the server closed meanwhile is retried once on a new
    /// one, as Fortio does for reused sockets.
    async fn exchange(&mut self) -> Result<(u16, u64, u64), String> {
        let mut reused = true;
        loop {
            let mut conn = match self.conn.take().filter(|c| !c.sender.is_closed()) {
                Some(c) => c,
                None => {
                    reused = false;
                    self.connect().await?
                }
            };
            let sent = match conn.sender.ready().await {
                Ok(()) => conn.sender.send_request(self.shared.request()).await,
                Err(e) => Err(e),
            };
            let resp = match sent {
                Ok(r) => r,
                Err(e)
                    if reused
                        && (e.is_canceled() || e.is_incomplete_message() || e.is_closed()) =>
                {
                    reused = false;
                    drop(conn);
                    continue;
                }
                Err(e) => return Err(format!("{e}")),
            };
            let code = resp.status().as_u16();
            let head = head_size(&resp);
            let mut body = resp.into_body();
            let mut size = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the response body: {e}"))?;
                if let Some(d) = frame.data_ref() {
                    size += d.len() as u64;
                }
            }
            self.conn = Some(conn);
            return Ok((code, head + size, head));
        }
    }

    async fn call(&mut self) -> Outcome {
        let timeout = self.shared.opts.timeout;
        match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(Ok((code, size, head))) => Outcome {
                code: i32::from(code),
                size,
                head,
                error: None,
            },
            Ok(Err(e)) => {
                self.conn = None;
                Outcome {
                    code: -1,
                    size: 0,
                    head: 0,
                    error: Some(e),
                }
            }
            Err(_) => {
                self.conn = None;
                Outcome {
                    code: -1,
                    size: 0,
                    head: 0,
                    error: Some(format!("no full response within {timeout:?}")),
                }
            }
        }
    }

    /// One uncounted call (duration runs): opens the connection; `Err` if it was an error.
    async fn warm_up(&mut self) -> Result<(), String> {
        let out = self.call().await;
        if !self.shared.opts.is_error(out.code) {
            return Ok(());
        }
        Err(out.error.unwrap_or_else(|| format!("status {}", out.code)))
    }

    async fn record_call(&mut self) {
        let t0 = Instant::now();
        let out = self.call().await;
        let took = t0.elapsed();
        let s = &mut self.stats;
        let latency = secs(took);
        s.durations.record(latency);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        s.latency_us.saturating_record(us.clamp(1, HDR_MAX_US));
        *s.ret_codes.entry(out.code).or_default() += 1;
        s.sizes.record(out.size as f64);
        s.header_sizes.record(out.head as f64);
        if self.shared.opts.is_error(out.code) {
            s.errors += 1;
            s.error_durations.record(latency);
            if s.first_error.is_none() {
                s.first_error = Some(out.error.unwrap_or_else(|| format!("status {}", out.code)));
            }
        }
    }

    /// Fortio's `runOne`: `calls` calls (`None`: until `end`), paced to `per_qps` (0: max).
    async fn run(
        mut self,
        start: Instant,
        calls: Option<u64>,
        per_qps: f64,
        end: Option<Instant>,
    ) -> Worker {
        let mut i: u64 = 0;
        loop {
            if let Some(end) = end {
                if Instant::now() > end {
                    // At max rate stop at the end; paced, stop there only when behind (and
                    // after at least 2 calls, unless the next is the last anyway).
                    if per_qps <= 0.0 || (i >= 2 && calls.is_none_or(|n| i + 1 != n)) {
                        break;
                    }
                }
            }
            self.record_call().await;
            i += 1;
            if calls.is_some_and(|n| i >= n) {
                break;
            }
            if per_qps > 0.0 {
                let n = calls.unwrap_or(u64::MAX);
                // Spreads n calls so that the last one is due at n / per_qps (Fortio).
                let target = (i as f64 + i as f64 / (n - 1) as f64) / per_qps;
                // A rate so low that the due time is beyond what an Instant holds: stop.
                let Some(due) = Duration::try_from_secs_f64(target)
                    .ok()
                    .and_then(|d| start.checked_add(d))
                else {
                    break;
                };
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                } else {
                    self.stats.behind_schedule += 1;
                }
            }
        }
        self.conn = None;
        self
    }
}

/// How a run is split across connections (Fortio's `runQPSSetup` / `runMaxQPSSetup`).
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    /// Calls per connection task (`None`: until the duration ends).
    calls: Vec<Option<u64>>,
    exactly: Option<u64>,
    duration: Option<Duration>,
}

impl Plan {
    fn new(opts: &HttpOptions) -> Plan {
        let exactly = opts
            .num_requests
            .or(opts.duration.is_none().then_some(DEFAULT_NUM_REQUESTS));
        let duration = if exactly.is_some() {
            None
        } else {
            opts.duration
        };
        let mut threads = opts.connections.max(1) as u64;
        let calls = if opts.qps > 0.0 {
            let total = exactly.unwrap_or_else(|| {
                (opts.qps * duration.map(|d| d.as_secs_f64()).unwrap_or(0.0)) as u64
            });
            let mut split = total;
            if split < 2 {
                split = 2;
                threads = 1;
            }
            if 2 * threads > split {
                threads = split / 2;
            }
            let per = split / threads;
            let mut calls = vec![Some(per); threads as usize];
            if let Some(n) = exactly {
                calls[0] = Some(n - per * (threads - 1));
            }
            calls
        } else {
            match exactly {
                // Fortio would still send one call on a connection given none; we use fewer
                // connections instead, so the count is exact.
                Some(n) => {
                    threads = threads.min(n);
                    let per = n / threads;
                    let mut calls = vec![Some(per); threads as usize];
                    calls[0] = Some(per + n % threads);
                    calls
                }
                None => vec![None; threads as usize],
            }
        };
        Plan {
            calls,
            exactly,
            duration,
        }
    }
}

/// Runs the load and returns what it measured.
pub async fn run(opts: &HttpOptions) -> Result<HttpRun, LoadError> {
    opts.validate()?;
    let shared = Arc::new(Shared::new(opts)?);
    let plan = Plan::new(opts);
    let threads = plan.calls.len();
    let mut workers = Vec::with_capacity(threads);
    for _ in 0..threads {
        workers.push(Worker::new(shared.clone())?);
    }
    if plan.exactly.is_none() {
        let warmups = futures::future::join_all(workers.iter_mut().map(|w| w.warm_up())).await;
        if !opts.allow_initial_errors {
            if let Some(Err(detail)) = warmups.into_iter().find(|r| r.is_err()) {
                return Err(LoadError::Warmup {
                    url: shared.target.url.clone(),
                    detail,
                });
            }
        }
    }
    let start_time = SystemTime::now();
    let start = Instant::now();
    let end = plan.duration.map(|d| start + d);
    let per_qps = opts.qps / threads as f64;
    let mut tasks = tokio::task::JoinSet::new();
    for (w, calls) in workers.into_iter().zip(plan.calls.iter().copied()) {
        tasks.spawn(w.run(start, calls, per_qps, end));
    }
    let mut done = Vec::with_capacity(threads);
    while let Some(r) = tasks.join_next().await {
        done.push(r.map_err(|e| LoadError::Internal(format!("a connection task failed: {e}")))?);
    }
    let elapsed = start.elapsed();

    let mut total = Stats::new(opts.resolution)?;
    let mut sockets = Vec::with_capacity(threads);
    for w in done {
        let s = w.stats;
        total.durations.merge(&s.durations);
        total.error_durations.merge(&s.error_durations);
        total
            .latency_us
            .add(&s.latency_us)
            .map_err(|e| LoadError::Internal(format!("latency histogram: {e}")))?;
        for (k, v) in s.ret_codes {
            *total.ret_codes.entry(k).or_default() += v;
        }
        total.errors += s.errors;
        total.sizes.merge(&s.sizes);
        total.header_sizes.merge(&s.header_sizes);
        total.connect_times.merge(&s.connect_times);
        sockets.push(s.sockets);
        for (k, v) in s.ip_counts {
            *total.ip_counts.entry(k).or_default() += v;
        }
        total.behind_schedule += s.behind_schedule;
        total.first_error = total.first_error.or(s.first_error);
    }
    let requests = total.durations.count() as u64;
    Ok(HttpRun {
        url: shared.target.url.clone(),
        start_time,
        actual_duration: elapsed,
        actual_qps: requests as f64 / secs(elapsed).max(f64::MIN_POSITIVE),
        requested_qps: opts.qps,
        exactly: plan.exactly,
        requested_duration: plan.duration,
        connections: threads,
        requests,
        errors: total.errors,
        ret_codes: total.ret_codes,
        behind_schedule: total.behind_schedule,
        first_error: total.first_error,
        durations: total.durations,
        error_durations: total.error_durations,
        latency_us: total.latency_us,
        sizes: total.sizes,
        header_sizes: total.header_sizes,
        connect_times: total.connect_times,
        sockets,
        ip_counts: total.ip_counts,
        percentiles: opts.percentiles.clone(),
        resolution: opts.resolution,
        timeout: opts.timeout,
        content_type: opts.content_type.clone().unwrap_or_default(),
        payload: shared.body.clone(),
    })
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct HttpRun {
    /// The URL called (with `http://` added when it had no scheme).
    pub url: String,
    pub start_time: SystemTime,
    /// From the first call (after any warm-up) until the last response.
    pub actual_duration: Duration,
    pub actual_qps: f64,
    /// 0 = as fast as possible.
    pub requested_qps: f64,
    /// The requested count, or `None` for a duration run.
    pub exactly: Option<u64>,
    pub requested_duration: Option<Duration>,
    /// Connections used (fewer than asked when the count was too small to split).
    pub connections: usize,
    pub requests: u64,
    pub errors: u64,
    /// Calls by status code; -1: no response (refused, reset, timed out).
    pub ret_codes: BTreeMap<i32, u64>,
    /// Paced calls sent late because the previous ones took longer than the interval.
    pub behind_schedule: u64,
    /// The first error seen (its message, or its status), for the user.
    pub first_error: Option<String>,
    /// Latencies of every call, errors included, seconds (Fortio's buckets).
    pub durations: fortio::Histogram,
    /// Latencies of the calls that were errors.
    pub error_durations: fortio::Histogram,
    /// Latencies of every call in µs (exact percentiles).
    pub latency_us: hdrhistogram::Histogram<u64>,
    /// Response sizes (head + body) and head sizes, bytes.
    pub sizes: fortio::Histogram,
    pub header_sizes: fortio::Histogram,
    /// Connection set-up times, seconds.
    pub connect_times: fortio::Histogram,
    /// Connections opened, per connection task.
    pub sockets: Vec<u64>,
    /// Connections opened by remote address.
    pub ip_counts: BTreeMap<String, u64>,
    percentiles: Vec<f64>,
    resolution: f64,
    timeout: Duration,
    content_type: String,
    payload: Bytes,
}

impl HttpRun {
    /// A latency percentile in ms from the HDR histogram (`None` without calls).
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        (self.requests > 0).then(|| self.latency_us.value_at_quantile(p / 100.0) as f64 / 1000.0)
    }

    /// What the objectives read: every call counts, errors included (as Fortio's histogram).
    pub fn measured(&self) -> Measured {
        Measured {
            requests: self.requests,
            errors: self.errors,
            mean_ms: self.durations.counter.avg() * 1000.0,
            percentiles_ms: self
                .percentiles
                .iter()
                .filter_map(|&p| self.percentile_ms(p).map(|v| (p, v)))
                .collect(),
        }
    }

    /// The run as Fortio's `HTTPRunnerResults`.
    pub fn fortio_results(&self) -> HttpRunnerResults {
        let payload = (!self.payload.is_empty() && self.payload.len() <= MAX_ECHOED_PAYLOAD)
            .then(|| base64::engine::general_purpose::STANDARD.encode(&self.payload));
        HttpRunnerResults {
            run_type: "HTTP".into(),
            labels: String::new(),
            start_time: fortio::rfc3339_nano(self.start_time),
            requested_qps: if self.requested_qps > 0.0 {
                fortio::format_g9(self.requested_qps)
            } else {
                "max".into()
            },
            requested_duration: match (self.exactly, self.requested_duration) {
                (Some(n), _) => format!("exactly {n} calls"),
                (None, Some(d)) => fortio::format_go_duration(d),
                (None, None) => String::new(),
            },
            actual_qps: self.actual_qps,
            actual_duration: i64::try_from(self.actual_duration.as_nanos()).unwrap_or(i64::MAX),
            num_threads: self.connections as i64,
            version: concat!("iter8-", env!("CARGO_PKG_VERSION")).into(),
            duration_histogram: self.durations.export_with_percentiles(&self.percentiles),
            errors_duration_histogram: self
                .error_durations
                .export_with_percentiles(&self.percentiles),
            exactly: self.exactly.map(|n| n as i64).unwrap_or(0),
            id: fortio::run_id(self.start_time),
            ret_codes: self
                .ret_codes
                .iter()
                .map(|(k, v)| (k.to_string(), *v as i64))
                .collect(),
            ip_count_map: self
                .ip_counts
                .iter()
                .map(|(k, v)| (k.clone(), *v as i64))
                .collect(),
            url: self.url.clone(),
            num_connections: 1,
            http_req_timeout: i64::try_from(self.timeout.as_nanos()).unwrap_or(i64::MAX),
            content_type: self.content_type.clone(),
            payload,
            resolution: self.resolution,
            sizes: Some(self.sizes.export()),
            header_sizes: Some(self.header_sizes.export()),
            sockets: Some(self.sockets.iter().map(|&n| n as i64).collect()),
            socket_count: self.sockets.iter().sum::<u64>() as i64,
            connection_stats: Some(
                self.connect_times
                    .export_with_percentiles(&self.percentiles),
            ),
            ..HttpRunnerResults::default()
        }
    }

    /// The run in Fortio's `HTTPRunnerResults` JSON shape (what v1.1 stored per endpoint).
    pub fn fortio_json(&self) -> serde_json::Value {
        self.fortio_results().to_value()
    }
}

/// Downloads a payload (v1.1's `payloadURL`, which its chart fetched with curl): a GET,
/// redirects followed (up to 5), only a 2xx answer accepted, at most [`MAX_PAYLOAD_BYTES`],
/// within 30 s.
pub async fn fetch_payload(url: &str) -> Result<Vec<u8>, LoadError> {
    let fail = |reason: String| LoadError::Payload {
        url: url.to_string(),
        reason,
    };
    match tokio::time::timeout(FETCH_TIMEOUT, fetch(url)).await {
        Ok(r) => r.map_err(fail),
        Err(_) => Err(fail(format!("no full answer within {FETCH_TIMEOUT:?}"))),
    }
}

async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let mut current = url.to_string();
    let mut tls: Option<TlsConnector> = None;
    for _ in 0..=MAX_REDIRECTS {
        let target = Target::parse(&current)?;
        if target.https && tls.is_none() {
            tls = Some(tls_connector().map_err(|e| e.to_string())?);
        }
        let (mut conn, _) = open(&target, tls.as_ref().filter(|_| target.https)).await?;
        let req = Request::get(target.path.clone())
            .header(HOST, target.authority.as_str())
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {current}: {e}"))?;
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("{current} answered {status} without a Location"))?;
            current = if loc.contains("://") {
                loc.to_string()
            } else if loc.starts_with('/') {
                let scheme = if target.https { "https" } else { "http" };
                format!("{scheme}://{}{loc}", target.authority)
            } else {
                return Err(format!(
                    "{current} redirects to {loc:?}, which is not a URL or an absolute path"
                ));
            };
            continue;
        }
        if !status.is_success() {
            return Err(format!("{current} answered {status}"));
        }
        let too_big = || format!("larger than the limit of {} MiB", MAX_PAYLOAD_BYTES >> 20);
        let declared = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_PAYLOAD_BYTES as u64) {
            return Err(too_big());
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
            if let Some(d) = frame.data_ref() {
                if out.len() + d.len() > MAX_PAYLOAD_BYTES {
                    return Err(too_big());
                }
                out.extend_from_slice(d);
            }
        }
        return Ok(out);
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(f: impl FnOnce(&mut HttpOptions)) -> HttpOptions {
        let mut o = HttpOptions {
            url: "http://127.0.0.1:1/x".into(),
            ..HttpOptions::default()
        };
        f(&mut o);
        o
    }

    #[test]
    fn defaults_are_v1_1s() {
        let o = HttpOptions::default();
        assert_eq!(o.qps, 8.0);
        assert_eq!(o.connections, 4);
        assert_eq!(o.timeout, Duration::from_secs(3));
        assert_eq!(o.error_ranges, [(Some(400), None)]);
        assert_eq!(o.percentiles, [50.0, 75.0, 90.0, 95.0, 99.0, 99.9]);
        let p = Plan::new(&opts(|_| {}));
        assert_eq!(
            p.exactly,
            Some(100),
            "neither count nor duration: 100 calls"
        );
        assert_eq!(p.calls, vec![Some(25); 4]);
    }

    #[test]
    fn plans_split_like_fortio() {
        // A count wins over a duration; the remainder goes to the first connection.
        let p = Plan::new(&opts(|o| {
            o.num_requests = Some(10);
            o.duration = Some(Duration::from_secs(5));
        }));
        assert_eq!((p.exactly, p.duration), (Some(10), None));
        assert_eq!(p.calls, [Some(4), Some(2), Some(2), Some(2)].to_vec());
        // Too few calls for the connections: fewer connections.
        let p = Plan::new(&opts(|o| o.num_requests = Some(5)));
        assert_eq!(p.calls, [Some(3), Some(2)].to_vec());
        let p = Plan::new(&opts(|o| o.num_requests = Some(1)));
        assert_eq!(p.calls, [Some(1)].to_vec());
        // A paced duration: floor(qps × duration) calls, split evenly.
        let p = Plan::new(&opts(|o| {
            o.qps = 200.0;
            o.duration = Some(Duration::from_secs(2));
        }));
        assert_eq!(p.calls, vec![Some(100); 4]);
        // Max rate: a count split exactly, a duration open-ended.
        let p = Plan::new(&opts(|o| {
            o.qps = 0.0;
            o.num_requests = Some(3);
        }));
        assert_eq!(p.calls, [Some(1); 3].to_vec());
        let p = Plan::new(&opts(|o| {
            o.qps = 0.0;
            o.duration = Some(Duration::from_secs(1));
        }));
        assert_eq!(p.calls, vec![None; 4]);
    }

    #[test]
    fn bad_options_are_named() {
        let err = |o: HttpOptions| o.validate().expect_err("must fail").to_string();
        assert!(err(opts(|o| o.qps = -1.0)).contains("qps"));
        assert!(err(opts(|o| o.qps = f64::NAN)).contains("qps"));
        assert!(err(opts(|o| o.url = String::new())).contains("no URL"));
        assert!(err(opts(|o| o.url = "ftp://h/x".into())).contains("scheme \"ftp\""));
        assert!(err(opts(|o| o.url = "http://exa mple/".into())).contains("does not parse"));
        assert!(err(opts(|o| o.connections = 0)).contains("connections"));
        assert!(err(opts(|o| o.num_requests = Some(0))).contains("numRequests"));
        assert!(err(opts(|o| o.timeout = Duration::ZERO)).contains("timeout"));
        assert!(err(opts(|o| o.resolution = 0.0)).contains("resolution"));
        assert!(err(opts(|o| o.percentiles = vec![100.0])).contains("percentile"));
        assert!(err(opts(|o| o.error_ranges = vec![(None, None)])).contains("error range"));
        assert!(err(opts(|o| o.error_ranges = vec![(Some(500), Some(400))])).contains("above"));
        assert!(
            err(opts(|o| o.headers = vec![("bad name".into(), "v".into())])).contains("header")
        );
        assert!(opts(|o| o.url = "localhost:8080/x".into())
            .validate()
            .is_ok());
        assert!(opts(|o| o.url = "https://[::1]:8443/x?y=1".into())
            .validate()
            .is_ok());
    }

    #[test]
    fn error_ranges_classify_codes() {
        let o = opts(|o| o.error_ranges = vec![(Some(400), Some(499)), (None, Some(199))]);
        assert!(o.is_error(-1), "no response is always an error");
        assert!(o.is_error(404));
        assert!(o.is_error(100));
        assert!(!o.is_error(200));
        assert!(!o.is_error(503));
        let t = Target::parse("https://[::1]:8443/x?y=1").expect("parses");
        assert_eq!((t.host.as_str(), t.port), ("::1", 8443));
        assert_eq!(t.path.to_string(), "/x?y=1");
        assert_eq!(t.authority, "[::1]:8443");
    }
}
