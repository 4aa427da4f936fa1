//! The gRPC load generator against a KServe V2 `inference.GRPCInferenceService` served in the
//! test (ModelInfer through the same dynamic codec), and the ghz report shape against the one
//! Iter8 v1.1 stored (`metrics/server_test.go`'s `ghzResultJSON`).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use iter8_load::ghz;
use iter8_load::grpc::{self, DynamicCodec, GrpcOptions, LoadError};
use prost_reflect::{DynamicMessage, MethodDescriptor};
use serde_json::{json, Value};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn kserve_proto() -> PathBuf {
    fixtures().join("grpc_predict_v2.proto")
}

const MODEL_INFER: &str = "inference.GRPCInferenceService/ModelInfer";

/// A ModelInfer request for the iris model (4 features).
fn infer_request(model: &str) -> Value {
    json!({
        "model_name": model,
        "inputs": [{"name": "predict", "datatype": "FP32", "shape": [1, 4],
                    "contents": {"fp32_contents": [5.1, 3.5, 1.4, 0.2]}}]
    })
}

/// What the test server saw.
#[derive(Default)]
struct Seen {
    calls: AtomicU64,
    with_header: AtomicU64,
    /// Arrival of the first and the last call.
    span: Mutex<Option<(Instant, Instant)>>,
}

/// ModelInfer: OK, except `model_name` "unavailable" (Unavailable) and "slow" (answers after
/// 5 s, for deadlines).
#[derive(Clone)]
struct Inference {
    method: MethodDescriptor,
    seen: Arc<Seen>,
}

impl NamedService for Inference {
    const NAME: &'static str = "inference.GRPCInferenceService";
}

impl Service<http::Request<tonic::body::Body>> for Inference {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != format!("/{MODEL_INFER}") {
                return Ok(Status::unimplemented("not served here").into_http());
            }
            let codec = DynamicCodec::<DynamicMessage>::new(this.method.input());
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(Handler(this), req).await)
        })
    }
}

struct Handler(Inference);

impl Service<tonic::Request<DynamicMessage>> for Handler {
    type Response = tonic::Response<DynamicMessage>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<DynamicMessage>) -> Self::Future {
        let now = Instant::now();
        let seen = self.0.seen.clone();
        seen.calls.fetch_add(1, Ordering::SeqCst);
        if req.metadata().get("x-iter8-test").is_some() {
            seen.with_header.fetch_add(1, Ordering::SeqCst);
        }
        {
            let mut span = seen.span.lock().expect("lock");
            *span = Some(span.map_or((now, now), |(first, _)| (first, now)));
        }
        let model = req
            .get_ref()
            .get_field_by_name("model_name")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let output = self.0.method.output();
        Box::pin(async move {
            match model.as_str() {
                "unavailable" => return Err(Status::unavailable("model is not ready")),
                "slow" => tokio::time::sleep(Duration::from_secs(5)).await,
                _ => {}
            }
            let mut resp = DynamicMessage::new(output);
            resp.set_field_by_name("model_name", prost_reflect::Value::String(model));
            resp.set_field_by_name("model_version", prost_reflect::Value::String("v0".into()));
            Ok(tonic::Response::new(resp))
        })
    }
}

struct TestServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve() -> TestServer {
    let pool = protox::compile([kserve_proto()], [fixtures()]).expect("KServe proto");
    let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(pool).expect("pool");
    let method = pool
        .get_service_by_name("inference.GRPCInferenceService")
        .and_then(|s| s.methods().find(|m| m.name() == "ModelInfer"))
        .expect("ModelInfer");
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = Inference {
        method,
        seen: seen.clone(),
    };
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    TestServer {
        addr,
        seen,
        stop: Some(stop),
    }
}

fn options(addr: SocketAddr) -> GrpcOptions {
    GrpcOptions {
        host: addr.to_string(),
        call: MODEL_INFER.into(),
        proto_files: vec![kserve_proto()],
        data: infer_request("iris"),
        concurrency: 8,
        ..GrpcOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_exactly_total_calls_by_status_code() {
    let server = serve().await;
    let opts = GrpcOptions {
        data: json!([infer_request("iris"), infer_request("unavailable")]),
        metadata: vec![("X-Iter8-Test".into(), "yes".into())],
        total: Some(101),
        connections: 2,
        ..options(server.addr)
    };
    let run = grpc::run(&opts).await.expect("run");
    assert_eq!(run.count(), 101);
    assert_eq!(server.seen.calls.load(Ordering::SeqCst), 101);
    assert_eq!(
        server.seen.with_header.load(Ordering::SeqCst),
        101,
        "metadata sent"
    );
    let codes = run.status_codes();
    assert_eq!(codes.get("OK"), Some(&51), "{codes:?}");
    assert_eq!(codes.get("Unavailable"), Some(&50), "{codes:?}");
    assert_eq!(
        run.error_messages().into_iter().collect::<Vec<_>>(),
        [(
            "rpc error: code = Unavailable desc = model is not ready".to_string(),
            50
        )]
    );
    let r = run.report();
    assert_eq!(r.end_reason, "normal");
    assert_eq!(r.options.total, 101);
    let hist: u64 = r
        .histogram
        .as_ref()
        .expect("histogram")
        .iter()
        .map(|b| b.count)
        .sum();
    assert_eq!(hist, 51, "the histogram covers the OK calls");
    let m = run.measured();
    assert_eq!((m.requests, m.errors), (101, 50));
    assert!(m.mean_ms > 0.0 && m.percentiles_ms.iter().any(|&(p, _)| p == 99.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rps_is_the_total_rate_across_workers() {
    let server = serve().await;
    let rps = 200.0;
    let opts = GrpcOptions {
        rps,
        total: Some(400),
        concurrency: 10,
        connections: 2,
        ..options(server.addr)
    };
    let run = grpc::run(&opts).await.expect("run");
    assert_eq!(run.count(), 400);
    let (first, last) = server.seen.span.lock().expect("lock").expect("calls seen");
    // The server's own clock: 399 intervals between the first and the last arrival.
    let served = 399.0 / (last - first).as_secs_f64();
    assert!(
        (served - rps).abs() / rps < 0.02,
        "server saw {served:.1} calls/s, want {rps}"
    );
    assert!(
        (run.rps() - rps).abs() / rps < 0.02,
        "client: {:.1}",
        run.rps()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_takes_precedence_and_stops_on_schedule() {
    let server = serve().await;
    // 1 s at 50 calls/s: the calls due before the end, whatever total says (as ghz).
    let opts = GrpcOptions {
        rps: 50.0,
        duration: Some(Duration::from_secs(1)),
        total: Some(5),
        ..options(server.addr)
    };
    let run = grpc::run(&opts).await.expect("run");
    assert_eq!(run.count(), 50);
    assert_eq!(server.seen.calls.load(Ordering::SeqCst), 50);
    let r = run.report();
    assert_eq!(r.end_reason, "timeout");
    assert_eq!(r.options.duration, 1_000_000_000);
    assert_eq!(r.options.total, 0, "total did not apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_count_as_deadline_exceeded() {
    let server = serve().await;
    let opts = GrpcOptions {
        data: infer_request("slow"),
        total: Some(4),
        concurrency: 4,
        timeout: Duration::from_millis(200),
        ..options(server.addr)
    };
    let run = grpc::run(&opts).await.expect("run");
    assert_eq!(
        run.status_codes().into_iter().collect::<Vec<_>>(),
        [("DeadlineExceeded".to_string(), 4)]
    );
    assert!(
        run.elapsed() < Duration::from_secs(4),
        "{:?}",
        run.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_behind_its_rate_still_ends_on_time() {
    let server = serve().await;
    // 100 calls/s asked, 2 workers whose calls each take the 300 ms timeout: far behind.
    let opts = GrpcOptions {
        data: infer_request("slow"),
        rps: 100.0,
        duration: Some(Duration::from_secs(1)),
        concurrency: 2,
        timeout: Duration::from_millis(300),
        ..options(server.addr)
    };
    let run = grpc::run(&opts).await.expect("run");
    assert!(
        run.elapsed() < Duration::from_millis(1500),
        "{:?}",
        run.elapsed()
    );
    assert!((2..=8).contains(&run.count()), "{}", run.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protoset_works_as_the_proto() {
    use prost::Message;
    let server = serve().await;
    let set = protox::compile([kserve_proto()], [fixtures()]).expect("KServe proto");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-load-kserve.protoset");
    std::fs::write(&path, set.encode_to_vec()).expect("write");
    let opts = GrpcOptions {
        proto_files: vec![],
        protoset: Some(path),
        total: Some(10),
        ..options(server.addr)
    };
    let run = grpc::run(&opts).await.expect("run");
    assert_eq!(run.ok(), 10, "{:?}", run.error_messages());
    assert!(!run.report().options.protoset.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_host_counts_unavailable() {
    // A port that was just free: nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    };
    let opts = GrpcOptions {
        total: Some(20),
        concurrency: 4,
        ..options(addr)
    };
    let run = grpc::run(&opts).await.expect("a run, not an error");
    assert_eq!(run.count(), 20);
    assert_eq!(
        run.status_codes().into_iter().collect::<Vec<_>>(),
        [("Unavailable".to_string(), 20)]
    );
    let msgs = run.error_messages();
    assert!(
        msgs.keys()
            .all(|m| m.starts_with("rpc error: code = Unavailable desc = ")),
        "{msgs:?}"
    );
    let v = run.ghz_json();
    ghz::Report::from_value(&v).expect("ghz shape");
    // No OK call: ghz leaves the OK-only parts empty.
    assert_eq!(v["histogram"], Value::Null);
    assert_eq!(v["latencyDistribution"], Value::Null);
    assert_eq!(v["statusCodeDistribution"], json!({"Unavailable": 20}));
}

/// Expects `Err(e)` and returns its message.
fn fails(opts: &GrpcOptions) -> (LoadError, String) {
    let e = opts.validate().expect_err("invalid options");
    let msg = e.to_string();
    eprintln!("{msg}");
    (e, msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_are_clear_errors() {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let good = options(addr);
    good.validate().expect("valid");

    // A proto that does not parse: file, line and column.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-load-broken");
    std::fs::create_dir_all(&dir).expect("dir");
    let broken = dir.join("broken.proto");
    std::fs::write(
        &broken,
        "syntax = \"proto3\";\npackage p;\nmessage M { int32 x = }\n",
    )
    .expect("write");
    let (e, msg) = fails(&GrpcOptions {
        proto_files: vec![broken.clone()],
        ..good.clone()
    });
    assert!(matches!(e, LoadError::Proto { .. }), "{e:?}");
    assert!(msg.starts_with("broken.proto:3:"), "{msg}");
    // A type that is not declared: a check error, with its place too.
    let unknown = dir.join("unknown.proto");
    std::fs::write(
        &unknown,
        "syntax = \"proto3\";\npackage p;\nmessage M {\n  Missing x = 1;\n}\n",
    )
    .expect("write");
    let (e, msg) = fails(&GrpcOptions {
        proto_files: vec![unknown],
        ..good.clone()
    });
    assert!(matches!(e, LoadError::Proto { .. }), "{e:?}");
    assert!(msg.starts_with("unknown.proto:4:"), "{msg}");
    assert!(msg.contains("Missing"), "{msg}");

    // A method that does not exist: the ones that do are listed.
    let (e, msg) = fails(&GrpcOptions {
        call: "inference.GRPCInferenceService.ModelInference".into(),
        ..good.clone()
    });
    assert!(matches!(e, LoadError::Method { .. }), "{e:?}");
    assert!(msg.contains("ModelInference"), "{msg}");
    assert!(
        msg.contains("inference.GRPCInferenceService.ModelInfer,"),
        "{msg}"
    );
    let (_, msg) = fails(&GrpcOptions {
        call: "helloworld.Greeter/SayHello".into(),
        ..good.clone()
    });
    assert!(msg.contains("no service \"helloworld.Greeter\""), "{msg}");

    // Data that does not fit the request message: the field is named.
    let (e, msg) = fails(&GrpcOptions {
        data: json!([infer_request("iris"), {"modle_name": "iris"}]),
        ..good.clone()
    });
    assert!(matches!(e, LoadError::Data { index: Some(1), .. }), "{e:?}");
    assert!(msg.contains("modle_name"), "{msg}");
    assert!(msg.contains("inference.ModelInferRequest"), "{msg}");
    let (_, msg) = fails(&GrpcOptions {
        data: json!({"model_name": 7}),
        ..good.clone()
    });
    assert!(msg.contains("data: does not match"), "{msg}");
    assert!(msg.contains("field model_name"), "{msg}");
    let (_, msg) = fails(&GrpcOptions {
        data: json!({"model_name": "iris", "inputs": [{"name": "x", "shape": ["one"]}]}),
        ..good.clone()
    });
    assert!(msg.contains("inputs[0].shape[0]"), "{msg}");
    let (_, msg) = fails(&GrpcOptions {
        data: json!("iris"),
        ..good.clone()
    });
    assert!(msg.contains("not an object"), "{msg}");

    // Options out of range.
    let option = |o: GrpcOptions, name: &str| {
        let (e, msg) = fails(&o);
        match e {
            LoadError::Option { option, .. } => assert_eq!(option, name, "{msg}"),
            other => panic!("{name}: {other:?}"),
        }
        msg
    };
    let msg = option(
        GrpcOptions {
            rps: -5.0,
            ..good.clone()
        },
        "rps",
    );
    assert!(msg.contains("-5"), "{msg}");
    let msg = option(
        GrpcOptions {
            total: None,
            duration: None,
            ..good.clone()
        },
        "total",
    );
    assert!(msg.contains("total and duration"), "{msg}");
    option(
        GrpcOptions {
            total: Some(0),
            duration: Some(Duration::ZERO),
            ..good.clone()
        },
        "total",
    );
    option(
        GrpcOptions {
            concurrency: 0,
            ..good.clone()
        },
        "concurrency",
    );
    option(
        GrpcOptions {
            connections: 9,
            ..good.clone()
        },
        "connections",
    );
    option(
        GrpcOptions {
            host: String::new(),
            ..good.clone()
        },
        "host",
    );
    option(
        GrpcOptions {
            proto_files: vec![],
            ..good.clone()
        },
        "proto",
    );
    option(
        GrpcOptions {
            insecure: false,
            ..good.clone()
        },
        "insecure",
    );
    option(
        GrpcOptions {
            metadata: vec![("bad header".into(), "x".into())],
            ..good.clone()
        },
        "metadata",
    );
    let msg = option(
        GrpcOptions {
            metadata: vec![("trace-bin".into(), "AAEC".into())],
            ..good.clone()
        },
        "metadata",
    );
    assert!(msg.contains("binary metadata"), "{msg}");
    // run() refuses them the same way, before sending anything.
    let e = grpc::run(&GrpcOptions {
        rps: -1.0,
        ..good.clone()
    })
    .await
    .err()
    .expect("an error");
    assert!(matches!(e, LoadError::Option { .. }), "{e:?}");
    // A proto file that is not there.
    let (_, msg) = fails(&GrpcOptions {
        proto_files: vec![dir.join("nope.proto")],
        ..good
    });
    assert!(msg.contains("nope.proto"), "{msg}");
}

/// The fields ghz's `runner.Report` has (`runner/reporter.go`).
const GHZ_FIELDS: [&str; 16] = [
    "name",
    "endReason",
    "date",
    "options",
    "count",
    "total",
    "average",
    "fastest",
    "slowest",
    "rps",
    "errorDistribution",
    "statusCodeDistribution",
    "latencyDistribution",
    "histogram",
    "details",
    "tags",
];

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_has_ghz_shape() {
    let server = serve().await;
    let opts = GrpcOptions {
        total: Some(300),
        ..options(server.addr)
    };
    let run = grpc::run(&opts).await.expect("run");
    let v = run.ghz_json();
    // The same reader as for the stored v1.1 result: unknown fields are refused.
    let r = ghz::Report::from_value(&v).expect("ghz shape");
    let names: BTreeSet<String> = GHZ_FIELDS.iter().map(|s| s.to_string()).collect();
    let ours = keys(&v);
    assert!(ours.is_subset(&names), "{ours:?}");
    for always in [
        "date",
        "endReason",
        "options",
        "count",
        "total",
        "average",
        "fastest",
        "slowest",
        "rps",
        "errorDistribution",
        "statusCodeDistribution",
        "latencyDistribution",
        "histogram",
    ] {
        assert!(ours.contains(always), "{always} missing: {ours:?}");
    }
    assert!(!ours.contains("details"), "no per-call details");
    // Date: RFC 3339, whole seconds, UTC.
    let date = v["date"].as_str().expect("date");
    assert_eq!(date.len(), 20, "{date}");
    assert!(date.ends_with('Z') && date.as_bytes()[10] == b'T', "{date}");
    assert_eq!(r.count, 300);
    assert_eq!(v["statusCodeDistribution"], json!({"OK": 300}));
    assert_eq!(v["errorDistribution"], json!({}));
    // Options under ghz's names.
    let o = &v["options"];
    assert_eq!(o["call"], MODEL_INFER);
    assert_eq!(o["host"], server.addr.to_string());
    assert_eq!(o["total"], 300);
    assert_eq!(o["concurrency"], 8);
    assert_eq!(o["connections"], 1);
    assert_eq!(o["insecure"], true);
    assert_eq!(o["timeout"], 20_000_000_000u64);
    assert_eq!(o["data"], infer_request("iris"));
    // Latencies: ns, ordered; the histogram: 11 marks fastest → slowest, seconds.
    assert!(r.fastest > 0 && r.fastest <= r.average.max(r.fastest) && r.fastest <= r.slowest);
    let lat = r.latency_distribution.as_ref().expect("latencies");
    let pcts: Vec<u32> = lat.iter().map(|l| l.percentage).collect();
    assert_eq!(pcts, ghz::LATENCY_PERCENTAGES);
    assert!(
        lat.windows(2).all(|w| w[0].latency <= w[1].latency),
        "{lat:?}"
    );
    assert!(lat
        .iter()
        .all(|l| l.latency >= r.fastest && l.latency <= r.slowest));
    let h = r.histogram.as_ref().expect("histogram");
    assert_eq!(h.len(), 11);
    assert!((h[0].mark - r.fastest as f64 / 1e9).abs() < 1e-12);
    assert!((h[10].mark - r.slowest as f64 / 1e9).abs() < 1e-12);
    assert!(h.windows(2).all(|w| w[0].mark <= w[1].mark));
    assert_eq!(h.iter().map(|b| b.count).sum::<u64>(), 300);
    let freq: f64 = h.iter().map(|b| b.frequency).sum();
    assert!((freq - 1.0).abs() < 1e-9, "{freq}");
    assert!(
        h[0].count >= 1 && h[10].count >= 1,
        "the extremes are counted: {h:?}"
    );
    assert!(r.rps > 0.0 && r.total > 0);
}

#[test]
fn original_ghz_fixture_parses_with_the_same_reader() {
    let text = std::fs::read_to_string(fixtures().join("ghz.json")).expect("fixture");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let result = ghz::read_result(&v).expect("v1.1's stored ghz result");
    let r = &result["routeguide.RouteGuide.GetFeature"];
    assert_eq!(r.count, 200);
    assert_eq!(r.end_reason, "normal");
    assert_eq!(r.date, "2023-07-17T12:23:56Z");
    assert_eq!(r.options.dial_timeout, 10_000_000_000);
    assert_eq!(
        r.status_code_distribution.as_ref().expect("codes")["Unavailable"],
        200
    );
    assert_eq!(r.details.as_ref().map(Vec::len), Some(8));
    // ghz's marks are what ghz::histogram_marks computes.
    let h = r.histogram.as_ref().expect("histogram");
    let marks = ghz::histogram_marks(r.fastest as f64 / 1e9, r.slowest as f64 / 1e9);
    for (b, m) in h.iter().zip(marks) {
        assert!((b.mark - m).abs() < 1e-12, "{} vs {m}", b.mark);
    }
    // Written back: same fields, without the per-call details.
    let back = r.to_value();
    let mut want = keys(&v["routeguide.RouteGuide.GetFeature"]);
    want.remove("details");
    assert_eq!(keys(&back), want);
    assert_eq!(
        keys(&back["options"]),
        keys(&v["routeguide.RouteGuide.GetFeature"]["options"])
    );
    // Something ghz does not write is refused.
    let mut odd = v["routeguide.RouteGuide.GetFeature"].clone();
    odd["latencies"] = json!([]);
    assert!(ghz::Report::from_value(&odd).is_err());
}

/// A real model server: MLServer (the data plane's venv) serving the iris model over gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_model_infer() {
    let tools = match testenv::dataplane::DataPlaneTools::locate() {
        Ok(t) => t,
        Err(e) => panic!("cannot run the MLServer test: {e:#}"),
    };
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("grpc-load-mlserver-{}", std::process::id()));
    let model = root.join("iris");
    std::fs::create_dir_all(&model).expect("dir");
    let src = tools.models.join("v0");
    std::fs::copy(src.join("model.joblib"), model.join("model.joblib")).expect("model");
    let settings = std::fs::read_to_string(src.join("model-settings.json"))
        .expect("settings")
        .replace("MODEL_NAME", "iris");
    std::fs::write(model.join("model-settings.json"), settings).expect("write");
    let ports = (
        testenv::process::free_port().expect("port"),
        testenv::process::free_port().expect("port"),
        testenv::process::free_port().expect("port"),
    );
    // As the data plane starts it (parallel_workers 0: the worker pool crash-loops).
    std::fs::write(
        root.join("settings.json"),
        serde_json::to_vec(&json!({
            "host": "127.0.0.1", "http_port": ports.0, "grpc_port": ports.1,
            "metrics_port": ports.2, "parallel_workers": 0, "debug": false
        }))
        .expect("json"),
    )
    .expect("write");
    let mut server = testenv::process::Process::start(
        "mlserver",
        &tools.mlserver,
        &["start".to_string(), root.display().to_string()],
        &root,
    )
    .expect("MLServer");
    let host = format!("127.0.0.1:{}", ports.1);
    // Ready when ModelReady answers OK (MLServer loads the model after it listens).
    let ready = GrpcOptions {
        host: host.clone(),
        call: "inference.GRPCInferenceService.ModelReady".into(),
        proto_files: vec![kserve_proto()],
        data: json!({"name": "iris"}),
        total: Some(1),
        concurrency: 1,
        timeout: Duration::from_secs(2),
        ..GrpcOptions::default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = grpc::run(&ready).await.expect("run");
        if r.ok() == 1 {
            break;
        }
        if let Err(e) = server.check_running() {
            panic!("MLServer exited: {e:#}\n{}", server.log_tail(30));
        }
        assert!(
            Instant::now() < deadline,
            "MLServer not ready: {:?}\n{}",
            r.error_messages(),
            server.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let opts = GrpcOptions {
        host,
        call: "inference.GRPCInferenceService.ModelInfer".into(),
        proto_files: vec![kserve_proto()],
        data: infer_request("iris"),
        total: Some(100),
        concurrency: 4,
        ..GrpcOptions::default()
    };
    let run = grpc::run(&opts).await.expect("run");
    assert_eq!(
        run.status_codes().into_iter().collect::<Vec<_>>(),
        [("OK".to_string(), 100)],
        "{:?}",
        run.error_messages()
    );
    ghz::Report::from_value(&run.ghz_json()).expect("ghz shape");
    server.stop(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&root);
}
