//! The HTTP load generator against a hyper server started in the test on 127.0.0.1, and its
//! result against the Fortio `HTTPRunnerResults` Iter8 v1.1 stored (`metrics/server_test.go`'s
//! `fortioResultJSON`, copied to `tests/fixtures/fortio.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use iter8_load::fortio::{self, HttpRunnerResults};
use iter8_load::http::{self, HttpOptions, LoadError};
use serde_json::Value;
use tokio::net::TcpListener;

/// What the test server saw.
#[derive(Default)]
struct Seen {
    /// Calls by path.
    calls: BTreeMap<String, u64>,
    /// Method, content type, `x-test` header and body length of the last call.
    last: Option<(String, String, String, usize)>,
}

type Shared = Arc<Mutex<Seen>>;

const PAYLOAD: &[u8] = b"the payload";

/// Answers by path: `/ok` 200, `/fail` 503, `/mixed` 200 and 503 in turn, `/notfound` 404,
/// `/slow?ms=N` 200 after N ms, `/close` 200 closing the connection, `/payload` bytes,
/// `/redirect` 302 to `/payload`, `/big` a body above the payload limit.
async fn handle(seen: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (ct, xt) = (header("content-type"), header("x-test"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let n = {
        let mut s = seen.lock().expect("lock");
        s.last = Some((method, ct, xt, body));
        let n = s.calls.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let reply = |code: u16, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = StatusCode::from_u16(code).expect("status");
        r
    };
    Ok(match path.as_str() {
        "/fail" => reply(503, Bytes::from_static(b"unavailable")),
        "/mixed" => reply(if n % 2 == 0 { 503 } else { 200 }, Bytes::new()),
        "/notfound" => reply(404, Bytes::new()),
        "/slow" => {
            let ms = query
                .strip_prefix("ms=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(200, Bytes::from_static(b"slow"))
        }
        "/close" => {
            let mut r = reply(200, Bytes::from_static(b"bye"));
            r.headers_mut()
                .insert("connection", "close".parse().expect("value"));
            r
        }
        "/payload" => reply(200, Bytes::from_static(PAYLOAD)),
        "/redirect" => {
            let mut r = reply(302, Bytes::new());
            r.headers_mut()
                .insert("location", "/payload".parse().expect("value"));
            r
        }
        "/big" => reply(200, Bytes::from(vec![b'x'; http::MAX_PAYLOAD_BYTES + 1])),
        _ => reply(200, Bytes::from_static(b"hello")),
    })
}

struct Server {
    addr: SocketAddr,
    seen: Shared,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Shared::default();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn calls(&self, path: &str) -> u64 {
        let s = self.seen.lock().expect("lock");
        s.calls.get(path).copied().unwrap_or(0)
    }

    fn last(&self) -> (String, String, String, usize) {
        let s = self.seen.lock().expect("lock");
        s.last.clone().expect("a call")
    }
}

fn options(url: String) -> HttpOptions {
    HttpOptions {
        url,
        ..HttpOptions::default()
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixtures().join("fortio.json")).expect("fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn codes(run: &http::HttpRun) -> Vec<(i32, u64)> {
    run.ret_codes.iter().map(|(k, v)| (*k, *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_are_sent() {
    let server = Server::start().await;
    // As fast as possible: 37 over 4 connections (10 + 9 + 9 + 9).
    let mut o = options(server.url("/ok"));
    o.qps = 0.0;
    o.num_requests = Some(37);
    let run = http::run(&o).await.expect("run");
    assert_eq!(server.calls("/ok"), 37, "the server's count");
    assert_eq!((run.requests, run.errors), (37, 0));
    assert_eq!(codes(&run), [(200, 37)]);
    assert_eq!(run.connections, 4);
    assert_eq!(run.sockets, [1, 1, 1, 1], "one kept-alive connection each");
    assert_eq!(run.durations.count(), 37);
    assert_eq!(server.last().0, "GET");

    // Paced: 20 calls at 100 qps take about 0.2 s (the last one is due at 20 / 100 s).
    let mut o = options(server.url("/paced"));
    o.qps = 100.0;
    o.num_requests = Some(20);
    let run = http::run(&o).await.expect("run");
    assert_eq!(server.calls("/paced"), 20);
    assert_eq!(run.requests, 20);
    let took = run.actual_duration.as_secs_f64();
    assert!((0.18..0.6).contains(&took), "took {took} s");

    // v1.1's defaults: neither count nor duration → 100 calls (at 8 qps that is 12.5 s, so
    // only the plan is checked here, by a count small enough to be quick).
    let mut o = options(server.url("/three"));
    o.num_requests = Some(3);
    o.qps = 0.0;
    let run = http::run(&o).await.expect("run");
    assert_eq!((server.calls("/three"), run.connections), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qps_is_paced_across_connections() {
    let server = Server::start().await;
    let mut o = options(server.url("/ok"));
    o.qps = 200.0;
    o.connections = 4;
    o.duration = Some(Duration::from_secs(2));
    let run = http::run(&o).await.expect("run");
    // A duration run warms each connection up with one uncounted call.
    let served = server.calls("/ok");
    assert_eq!(served, run.requests + 4, "counted calls + 4 warm-ups");
    let n = run.requests as f64;
    assert!((n - 400.0).abs() <= 8.0, "{n} calls for 200 qps × 2 s");
    let took = run.actual_duration.as_secs_f64();
    assert!((1.95..2.5).contains(&took), "took {took} s");
    assert!(
        (run.actual_qps - 200.0).abs() / 200.0 < 0.05,
        "actual qps {}",
        run.actual_qps
    );
    let j = run.fortio_results();
    assert_eq!(j.requested_qps, "200");
    assert_eq!(j.requested_duration, "2s");
    assert_eq!(j.exactly, 0);
    assert_eq!(j.num_threads, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_code() {
    let server = Server::start().await;
    let mut o = options(server.url("/mixed"));
    o.qps = 0.0;
    o.num_requests = Some(20);
    o.connections = 2;
    let run = http::run(&o).await.expect("run");
    assert_eq!(codes(&run), [(200, 10), (503, 10)]);
    assert_eq!(run.errors, 10);
    assert_eq!(run.error_durations.count(), 10);
    assert_eq!(
        run.durations.count(),
        20,
        "errors are in the overall histogram too"
    );
    assert_eq!(run.first_error.as_deref(), Some("status 503"));
    let j = run.fortio_results();
    assert_eq!(j.ret_codes["503"], 10);
    assert_eq!(j.errors_duration_histogram.count, 10);
    let m = run.measured();
    assert_eq!((m.requests, m.errors), (20, 10));

    // Only what the ranges name is an error: 404 is not in 500-599.
    let mut o = options(server.url("/notfound"));
    o.num_requests = Some(4);
    o.qps = 0.0;
    o.error_ranges = vec![(Some(500), Some(599))];
    let run = http::run(&o).await.expect("run");
    assert_eq!((codes(&run), run.errors), (vec![(404, 4)], 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_and_timeouts_count_as_minus_one() {
    let url = format!("http://127.0.0.1:{}/x", closed_port());
    let mut o = options(url.clone());
    o.qps = 0.0;
    o.num_requests = Some(8);
    let run = http::run(&o).await.expect("a run, not an error");
    assert_eq!(codes(&run), [(-1, 8)]);
    assert_eq!(run.errors, 8);
    assert_eq!(run.sockets.iter().sum::<u64>(), 0);
    let why = run.first_error.clone().unwrap_or_default();
    assert!(why.contains("refused"), "{why}");
    assert_eq!(run.fortio_results().ret_codes["-1"], 8);

    // A duration run stops when the warm-up fails (v1.1), unless initial errors are allowed.
    o.num_requests = None;
    o.qps = 50.0;
    o.duration = Some(Duration::from_millis(200));
    let err = http::run(&o).await.expect_err("warm-up fails");
    assert!(matches!(err, LoadError::Warmup { .. }), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    o.allow_initial_errors = true;
    let run = http::run(&o).await.expect("run");
    // 50 qps × 0.2 s = 10 calls, 2 per connection: Fortio drops the remainder of a
    // duration's calls.
    assert_eq!(codes(&run), [(-1, 8)]);

    // No full answer within the timeout: -1 too, and the connection is replaced.
    let server = Server::start().await;
    let mut o = options(server.url("/slow?ms=2000"));
    o.qps = 0.0;
    o.num_requests = Some(4);
    o.connections = 2;
    o.timeout = Duration::from_millis(100);
    let run = http::run(&o).await.expect("run");
    assert_eq!(codes(&run), [(-1, 4)]);
    assert!(run.actual_duration < Duration::from_secs(1));
    assert_eq!(run.sockets, [2, 2], "a new connection after each timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_closes_are_reopened() {
    let server = Server::start().await;
    let mut o = options(server.url("/close"));
    o.qps = 0.0;
    o.num_requests = Some(12);
    o.connections = 3;
    let run = http::run(&o).await.expect("run");
    assert_eq!(codes(&run), [(200, 12)]);
    assert_eq!(run.sockets.iter().sum::<u64>(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_fail_before_any_call() {
    let cases: Vec<(HttpOptions, &str)> = vec![
        (
            HttpOptions {
                qps: -5.0,
                ..options("http://127.0.0.1:1/".into())
            },
            "qps",
        ),
        (
            HttpOptions {
                qps: f64::NAN,
                ..options("http://127.0.0.1:1/".into())
            },
            "qps",
        ),
        (options(String::new()), "no URL"),
        (options("http://[bad/".into()), "does not parse"),
        (options("grpc://127.0.0.1:1/".into()), "scheme"),
        (
            HttpOptions {
                connections: 0,
                ..options("http://127.0.0.1:1/".into())
            },
            "connections",
        ),
    ];
    for (o, want) in cases {
        let err = http::run(&o).await.expect_err("invalid");
        assert!(matches!(err, LoadError::Options(_)), "{err}");
        assert!(err.to_string().contains(want), "{err} should name {want}");
    }
}

/// The top-level keys of the fixture's one result.
fn fixture_result() -> Value {
    fixture()
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .expect("one endpoint")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_has_fortios_shape() {
    let server = Server::start().await;
    let mut o = options(server.url("/slow?ms=5"));
    o.num_requests = Some(20);
    o.qps = 0.0;
    o.payload = Some(PAYLOAD.to_vec());
    o.content_type = Some("application/json".into());
    o.headers = vec![("X-Test".into(), "yes".into())];
    let run = http::run(&o).await.expect("run");
    assert_eq!(
        server.last(),
        (
            "POST".into(),
            "application/json".into(),
            "yes".into(),
            PAYLOAD.len()
        )
    );
    let v = run.fortio_json();
    // The same field names as the fixture, every one (no more, no fewer).
    assert_eq!(keys(&v), keys(&fixture_result()));
    let dh = &v["DurationHistogram"];
    let fixture = fixture_result();
    assert_eq!(keys(dh), keys(&fixture["DurationHistogram"]));
    assert_eq!(
        keys(&dh["Data"][0]),
        keys(&fixture["DurationHistogram"]["Data"][0])
    );
    // Read back by the reader that reads the fixture, and unchanged by a round trip.
    let r = HttpRunnerResults::from_value(&v).expect("our JSON reads as Fortio's");
    assert_eq!(r.to_value(), v);
    assert_eq!(r.run_type, "HTTP");
    assert_eq!(r.requested_qps, "max");
    assert_eq!(r.requested_duration, "exactly 20 calls");
    assert_eq!(r.exactly, 20);
    assert_eq!(r.ret_codes, BTreeMap::from([("200".to_string(), 20)]));
    assert_eq!(r.url, server.url("/slow?ms=5"));
    assert_eq!(r.content_type, "application/json");
    assert_eq!(
        r.payload.as_deref(),
        Some("dGhlIHBheWxvYWQ="),
        "base64, as Go"
    );
    assert_eq!(r.http_req_timeout, 3_000_000_000);
    assert_eq!(r.num_threads, 4);
    assert_eq!(r.socket_count, 4);
    assert!(r.start_time.ends_with('Z') && r.start_time.contains('T'));
    // Seconds; every call took at least the server's 5 ms.
    let h = &r.duration_histogram;
    assert_eq!(h.count, 20);
    assert!(h.min >= 0.005 && h.max < 1.0, "{h:?}");
    let data = h.data.as_deref().expect("buckets");
    assert_eq!(data.first().map(|b| b.start), Some(h.min));
    assert_eq!(data.last().map(|b| b.end), Some(h.max));
    assert_eq!(data.last().map(|b| b.percent), Some(100.0));
    assert_eq!(data.iter().map(|b| b.count).sum::<i64>(), 20);
    let edges = fortio::duration_edges();
    for b in &data[1..] {
        assert!(edges.contains(&b.start), "{} is not a Fortio edge", b.start);
    }
    let p: Vec<f64> = h
        .percentiles
        .as_deref()
        .expect("percentiles")
        .iter()
        .map(|p| p.percentile)
        .collect();
    assert_eq!(p, [50.0, 75.0, 90.0, 95.0, 99.0, 99.9]);
    assert_eq!(r.errors_duration_histogram.count, 0);
    assert_eq!(
        r.errors_duration_histogram.data, None,
        "null, as Go's nil slice"
    );
    // Response sizes: head + 4-byte body.
    let sizes = r.sizes.as_ref().expect("sizes");
    let heads = r.header_sizes.as_ref().expect("header sizes");
    assert_eq!(sizes.count, 20);
    assert!((sizes.avg - heads.avg - 4.0).abs() < 1e-9);

    // What the objectives read: ms, from the HDR histogram.
    let m = run.measured();
    assert_eq!((m.requests, m.errors), (20, 0));
    assert!(m.mean_ms >= 5.0, "{m:?}");
    assert_eq!(m.percentiles_ms.len(), 6);
    assert!(m.percentiles_ms.iter().all(|&(_, v)| v >= 5.0), "{m:?}");
}

/// Every JSON number as an f64, so `5` and `5.0` compare equal.
fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finer_resolution_gives_finer_buckets() {
    let server = Server::start().await;
    let mut o = options(server.url("/slow?ms=2"));
    o.qps = 0.0;
    o.num_requests = Some(10);
    o.resolution = 0.0001;
    let r = http::run(&o).await.expect("run").fortio_results();
    assert_eq!(r.resolution, 0.0001);
    let data = r.duration_histogram.data.expect("buckets");
    // 2 ms and a little: Fortio's edges times 0.1 ms (20 → 2 ms, 25 → 2.5 ms, ...).
    let edges: Vec<f64> = fortio::BUCKET_VALUES
        .iter()
        .map(|&v| 0.0001 * f64::from(v))
        .collect();
    for b in &data[1..] {
        assert!(edges.contains(&b.start), "{}", b.start);
    }
    assert!(data[0].end <= 0.01, "{data:?}");
}

#[test]
fn fixture_reads_with_the_same_reader() {
    let v = fixture();
    let result = fortio::read_result(&v).expect("v1.1's stored result reads");
    let r = &result["http://httpbin.default/get"];
    assert_eq!(r.duration_histogram.count, 100);
    assert_eq!(r.ret_codes["200"], 100);
    assert_eq!(r.requested_duration, "exactly 100 calls");
    // Nothing is lost: writing it back gives the fixture (Go writes 5 where we write 5.0).
    let back = serde_json::to_value(&result).expect("json");
    assert_eq!(numbers_as_f64(back), numbers_as_f64(v));
    // Our percentile interpolation gives Fortio's numbers from Fortio's buckets.
    let h = &r.duration_histogram;
    for p in h.percentiles.as_deref().expect("percentiles") {
        let ours = h.percentile(p.percentile);
        assert!(
            (ours - p.value).abs() < 1e-15,
            "p{}: ours {ours}, Fortio {}",
            p.percentile,
            p.value
        );
    }
    let c = r.connection_stats.as_ref().expect("connection stats");
    for p in c.percentiles.as_deref().expect("percentiles") {
        assert!((c.percentile(p.percentile) - p.value).abs() < 1e-15);
    }
}

/// Fortio's `histogramBucketValues`, read from its source in the Go module cache.
fn fortio_bucket_values() -> Option<Vec<i32>> {
    let home = std::env::var("GOMODCACHE")
        .ok()
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .map(|h| Path::new(&h).join("go/pkg/mod"))
        })?;
    let src = ["v1.63.5", "v1.68.2"].iter().find_map(|v| {
        std::fs::read_to_string(home.join(format!("fortio.org/fortio@{v}/stats/stats.go"))).ok()
    })?;
    let start = src.find("histogramBucketValues = []int32{")?;
    let body = &src[start..];
    let body = &body[body.find('{')? + 1..body.find('}')?];
    Some(
        body.lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .flat_map(|l| l.split(','))
            .filter_map(|t| t.trim().parse().ok())
            .collect(),
    )
}

#[test]
fn bucket_edges_are_fortios() {
    // The fixture's inner edges are Fortio's, and so ours.
    let edges = fortio::duration_edges();
    let v = fixture_result();
    let r = HttpRunnerResults::from_value(&v).expect("reads");
    let data = r.duration_histogram.data.expect("buckets");
    for b in &data[1..] {
        assert!(edges.contains(&b.start), "{}", b.start);
    }
    for b in &data[..data.len() - 1] {
        assert!(edges.contains(&b.end), "{}", b.end);
    }
    // And the whole table, when Fortio's source is at hand (the Go module cache).
    match fortio_bucket_values() {
        Some(values) => assert_eq!(values, fortio::BUCKET_VALUES),
        None => eprintln!("Fortio's source is not in the Go module cache: table not compared"),
    }
    // A histogram of the fixture's own latencies exports the fixture's buckets.
    let mut h = fortio::Histogram::durations();
    for b in &data {
        // Any value inside a bucket lands in it (the midpoint; the first/last at min/max).
        for _ in 0..b.count {
            h.record((b.start + b.end) / 2.0);
        }
    }
    let ours = h.export();
    let got: Vec<(f64, i64)> = ours.data.expect("data")[1..]
        .iter()
        .map(|b| (b.start, b.count))
        .collect();
    let want: Vec<(f64, i64)> = data[1..].iter().map(|b| (b.start, b.count)).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_fetched_with_limits() {
    let server = Server::start().await;
    let got = http::fetch_payload(&server.url("/payload"))
        .await
        .expect("fetch");
    assert_eq!(got, PAYLOAD);
    // "localhost" may resolve to ::1 first: the next address is tried.
    let local = format!("http://localhost:{}/payload", server.addr.port());
    assert_eq!(
        http::fetch_payload(&local).await.expect("localhost"),
        PAYLOAD
    );
    let got = http::fetch_payload(&server.url("/redirect"))
        .await
        .expect("redirect");
    assert_eq!(got, PAYLOAD);
    let err = http::fetch_payload(&server.url("/fail"))
        .await
        .expect_err("503");
    assert!(matches!(err, LoadError::Payload { .. }));
    assert!(err.to_string().contains("503"), "{err}");
    let err = http::fetch_payload(&server.url("/big"))
        .await
        .expect_err("too big");
    assert!(err.to_string().contains("limit"), "{err}");
    let refused = format!("http://127.0.0.1:{}/p", closed_port());
    let err = http::fetch_payload(&refused).await.expect_err("refused");
    assert!(err.to_string().contains("refused"), "{err}");
    let err = http::fetch_payload("file:///etc/passwd")
        .await
        .expect_err("scheme");
    assert!(err.to_string().contains("scheme"), "{err}");
}
