//! Performance-test results end to end: the controller chart installed with Helm, the `iter8`
//! binary running as its pod would, and a test Job's requests: `PUT /testResult` with the
//! original's Fortio and ghz fixtures wrapped in `ExperimentResult`s, then Grafana's
//! `GET /httpDashboard` and `/grpcDashboard`, compared with what Iter8 v1.1.2 answers
//! (crates/load/tests/fixtures/original_dashboards). Also: a result without insights (v1.1
//! crashed), bad input, oversize bodies, the Grafana dashboards' JSONPaths against real
//! answers, and results surviving a controller restart (embedded store).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod e2e;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use e2e::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../load/tests/fixtures/original_dashboards")
}

fn fixture(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What v1.1.2 answers (a generated case file), without its final newline.
fn v1(name: &str) -> String {
    fixture(&format!("cases/{name}")).trim_end().to_string()
}

/// An HTTP answer: status, Content-Type, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn call<B>(address: &str, method: &str, path: &str, body: B) -> Answer
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let res = client
        .request(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn put(address: &str, ns: &str, test: &str, body: impl Into<Bytes>) -> Answer {
    call(
        address,
        "PUT",
        &format!("/testResult?namespace={ns}&test={test}"),
        Full::new(body.into()),
    )
    .await
}

async fn get(address: &str, dashboard: &str, ns: &str, test: &str) -> Answer {
    call(
        address,
        "GET",
        &format!("/{dashboard}Dashboard?namespace={ns}&test={test}"),
        Full::new(Bytes::new()),
    )
    .await
}

/// The dashboard's JSON text, checking the answer is a 200 of JSON.
async fn dashboard(address: &str, kind: &str, ns: &str, test: &str) -> String {
    let a = get(address, kind, ns, test).await;
    assert_eq!(a.status, 200, "{kind} {ns}/{test}: {a:?}");
    assert_eq!(a.content_type, "application/json", "{kind} {ns}/{test}");
    a.body
}

fn assert_status(a: &Answer, status: u16, contains: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    assert!(
        a.body.contains(contains),
        "{what}: {:?} does not contain {contains:?}",
        a.body
    );
}

/// A body sent in chunks (no Content-Length).
struct Chunks {
    left: usize,
    chunk: Bytes,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len());
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// Resolves a Grafana JSON API path (`$.A.B c[$endpoint].D[*]`) in `doc`: the value it
/// names, or why it names nothing.
fn resolve<'a>(doc: &'a Value, path: &str, endpoint: &str) -> Result<&'a Value, String> {
    let mut rest = path.strip_prefix('$').ok_or("no $")?;
    let mut at = doc;
    while !rest.is_empty() {
        let key;
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or("no ]")?;
            key = &r[..end];
            rest = &r[end + 1..];
            if key == "*" {
                if !at.is_array() && !at.is_null() {
                    return Err(format!("{path}: [*] on {at}"));
                }
                continue;
            }
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            key = &r[..end];
            rest = &r[end..];
        } else {
            return Err(format!("{path}: cannot read {rest:?}"));
        }
        let key = if key == "$endpoint" { endpoint } else { key };
        at = at
            .get(key)
            .ok_or_else(|| format!("{path}: no key {key:?} in {at}"))?;
    }
    Ok(at)
}

/// Every JSONPath of the chart's Grafana dashboard `kind` names something in `doc`, for every
/// endpoint of it.
fn grafana_paths_resolve(kind: &str, doc: &Value) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../charts/controller/grafana/{kind}.json"));
    let grafana: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut paths = Vec::new();
    for panel in grafana["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for field in target["fields"].as_array().unwrap() {
                paths.push(field["jsonPath"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(paths.len() >= 6, "{paths:?}");
    let variable = &grafana["templating"]["list"][1];
    assert_eq!(variable["name"], "endpoint");
    assert_eq!(variable["definition"], "$keys($.Endpoints)");
    let endpoints: Vec<&String> = doc["Endpoints"].as_object().unwrap().keys().collect();
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        for path in &paths {
            resolve(doc, path, endpoint).unwrap_or_else(|e| panic!("{kind}.json: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_stored_and_their_dashboards_answer_as_v1_1() {
    let cp = testenv::shared().unwrap();
    let ns = cp.namespace("results").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let admin = iter8.admin.clone();

    // The original's Fortio and ghz fixtures, wrapped as its tests wrap them: PUT answers
    // 200 with an empty body, as v1.1.
    for (test, case) in [("fortio", "fortio"), ("ghz", "ghz"), ("full", "full")] {
        let a = put(
            &admin,
            &ns,
            test,
            fixture(&format!("cases/{case}.result.json")),
        )
        .await;
        assert_eq!((a.status, a.body.as_str()), (200, ""), "PUT {test}");
    }
    let http = dashboard(&admin, "http", &ns, "fortio").await;
    assert_eq!(http, fixture("http_dashboard.json").trim_end());
    let grpc = dashboard(&admin, "grpc", &ns, "ghz").await;
    assert_eq!(grpc, fixture("grpc_dashboard.json").trim_end());
    for (test, kind) in [
        ("fortio", "grpc"),
        ("ghz", "http"),
        ("full", "http"),
        ("full", "grpc"),
    ] {
        assert_eq!(
            dashboard(&admin, kind, &ns, test).await,
            v1(&format!("{test}.{kind}.json")),
            "{kind} of {test}"
        );
    }
    // The chart's Grafana dashboards read keys that are there.
    for kind in ["http", "grpc"] {
        let doc: Value = serde_json::from_str(&dashboard(&admin, kind, &ns, "full").await).unwrap();
        grafana_paths_resolve(kind, &doc);
    }

    // A result PUT before any load task ran has no insights: v1.1's handlers crashed (the
    // connection dropped). Here both dashboards answer, with no endpoints yet.
    let a = put(
        &admin,
        &ns,
        "early",
        fixture("cases/no_insights.result.json"),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    for kind in ["http", "grpc"] {
        assert_eq!(
            dashboard(&admin, kind, &ns, "early").await,
            v1(&format!("empty_insights.{kind}.json"))
        );
    }

    // ghz's per-call details (v1.1's jobs send one per call) are dropped before storing: a
    // result with 6 MiB of them is accepted, and its dashboard is the same.
    let mut big: Value = serde_json::from_str(&fixture("cases/ghz.result.json")).unwrap();
    let detail = serde_json::json!({
        "timestamp": "2023-07-17T12:23:56.012345678Z",
        "latency": 12345678,
        "error": "rpc error: code = Unavailable desc = connection refused",
        "status": "Unavailable"
    });
    let report = &mut big["insights"]["taskData"]["grpc"]["routeguide.RouteGuide.GetFeature"];
    report["details"] = Value::Array(vec![detail; 50_000]);
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() > 6 << 20, "{}", body.len());
    let a = put(&admin, &ns, "details", body).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        dashboard(&admin, "grpc", &ns, "details").await,
        fixture("grpc_dashboard.json").trim_end()
    );

    // Bad requests, each with v1.1's status code (or a clear one where v1.1 had none), and
    // none changes what is stored.
    let wrong_method = [
        ("GET", "/testResult", "expected PUT"),
        ("POST", "/testResult", "expected PUT"),
        ("POST", "/httpDashboard", "expected GET"),
        ("PUT", "/grpcDashboard", "expected GET"),
    ];
    for (method, path, msg) in wrong_method {
        let path = format!("{path}?namespace={ns}&test=fortio");
        let a = call(&admin, method, &path, Full::new(Bytes::new())).await;
        assert_status(&a, 405, msg, &format!("{method} {path}"));
    }
    for path in ["/testResult", "/httpDashboard", "/grpcDashboard"] {
        let method = if path == "/testResult" { "PUT" } else { "GET" };
        for (query, msg) in [
            ("", "no namespace specified"),
            ("?test=fortio", "no namespace specified"),
            (&*format!("?namespace={ns}"), "no test specified"),
            (&*format!("?namespace={ns}&test="), "no test specified"),
            (
                "?namespace=Not_A_Namespace&test=t",
                "not a valid namespace name",
            ),
            (
                &*format!("?namespace={ns}&test=a%2Fb"),
                "is not a valid name",
            ),
            (
                &*format!("?namespace={}&test=t", "n".repeat(64)),
                "more than 63",
            ),
        ] {
            let a = call(
                &admin,
                method,
                &format!("{path}{query}"),
                Full::new(Bytes::from(fixture("cases/fortio.result.json"))),
            )
            .await;
            assert_status(&a, 400, msg, &format!("{method} {path}{query}"));
        }
    }
    let a = get(&admin, "http", &ns, "never-put").await;
    assert_status(
        &a,
        400,
        &format!("no test result for {ns}/never-put"),
        "missing",
    );

    let bodies: [(&str, String, &str); 6] = [
        (
            "garbage",
            "not json".into(),
            "cannot unmarshal body into ExperimentResult: expected ident at line 1 column 2",
        ),
        (
            "wrong type",
            r#"{"numCompletedTasks": "five"}"#.into(),
            "invalid type: string \"five\", expected i64",
        ),
        ("empty", String::new(), "EOF while parsing"),
        (
            "malformed task data",
            fixture("cases/malformed_http.result.json"),
            "insights.taskData.http[\"bad\"]: DurationHistogram is a string",
        ),
        (
            "bad start time",
            fixture("cases/bad_day.result.json"),
            "startTime \"2023-02-29T14:00:40Z\" is not an RFC 3339 time",
        ),
        (
            "null",
            "null".into(),
            "cannot unmarshal body into ExperimentResult",
        ),
    ];
    for (what, body, msg) in bodies {
        let a = put(&admin, &ns, "fortio", body).await;
        assert_status(&a, 400, msg, what);
    }
    // Over 16 MiB, with a Content-Length and in chunks: 413, and the client reads it.
    let over = vec![b' '; (16 << 20) + 1];
    let a = put(&admin, &ns, "fortio", over).await;
    assert_status(&a, 413, "read up to 16777216 bytes", "Content-Length body");
    let chunked = Chunks {
        left: (16 << 20) + 1,
        chunk: Bytes::from(vec![b' '; 64 << 10]),
    };
    let path = format!("/testResult?namespace={ns}&test=fortio");
    let a = call(&admin, "PUT", &path, chunked).await;
    assert_status(&a, 413, "read up to 16777216 bytes", "chunked body");
    // An announced body far over the limit is refused before it is sent.
    let mut stream = tokio::net::TcpStream::connect(&admin).await.unwrap();
    stream
        .write_all(
            format!("PUT {path} HTTP/1.1\r\nhost: {admin}\r\ncontent-length: 1000000000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A valid result over 4 MiB once read (not in per-call details): 413.
    let mut large: Value = serde_json::from_str(&fixture("cases/fortio.result.json")).unwrap();
    large["insights"]["taskData"]["http"]["http://httpbin.default/get"]["Labels"] =
        Value::String("x".repeat(5 << 20));
    let a = put(&admin, &ns, "fortio", serde_json::to_vec(&large).unwrap()).await;
    assert_status(
        &a,
        413,
        "keeps a result up to 4194304 bytes",
        "large result",
    );
    // Nothing refused replaced the stored result.
    assert_eq!(dashboard(&admin, "http", &ns, "fortio").await, http);

    // A later PUT replaces the result (a test PUTs after every task).
    let mut later: Value = serde_json::from_str(&fixture("cases/fortio.result.json")).unwrap();
    later["numCompletedTasks"] = 6.into();
    later["failure"] = true.into();
    let a = put(&admin, &ns, "fortio", serde_json::to_vec(&later).unwrap()).await;
    assert_eq!(a.status, 200, "{a:?}");
    let replaced: Value =
        serde_json::from_str(&dashboard(&admin, "http", &ns, "fortio").await).unwrap();
    assert_eq!(replaced["ExperimentResult"]["Completed tasks"], 6);
    assert_eq!(replaced["ExperimentResult"]["Failure"], true);

    // A restart: the embedded store kept every result.
    drop(iter8);
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let admin = iter8.admin.clone();
    assert_eq!(
        serde_json::from_str::<Value>(&dashboard(&admin, "http", &ns, "fortio").await).unwrap(),
        replaced
    );
    assert_eq!(
        dashboard(&admin, "grpc", &ns, "ghz").await,
        fixture("grpc_dashboard.json").trim_end()
    );
    assert_eq!(
        dashboard(&admin, "grpc", &ns, "full").await,
        v1("full.grpc.json")
    );
    iter8.assert_clean_log();
}
