//! A real Prometheus (`testenv::prometheus`): scraping the real data plane's model servers with
//! the labels analysis queries select on, the injected faults of an InferenceService's
//! annotations seen in MLServer's metrics, the documented PromQL, and Prometheus stopped and
//! started again.
//!
//! Needs Prometheus, istiod, Envoy and MLServer from `testenv/setup.sh`; without them the tests
//! fail, naming what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use testenv::dataplane::{self, DataPlane, Faults, DELAY_MS_ANNOTATION, ERROR_SHARE_ANNOTATION};
use testenv::fixtures::{inference_service, inference_service_object};
use testenv::prometheus::{self, Prometheus};
use testenv::ControlPlane;

const WAIT: Duration = Duration::from_secs(60);

/// The tutorial's input.json.
const INPUT: &str = r#"{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}"#;

fn setup() -> (&'static ControlPlane, &'static DataPlane) {
    let cp = testenv::shared().unwrap_or_else(|e| panic!("{e:#}"));
    let dp = dataplane::shared().unwrap_or_else(|e| panic!("{e:#}"));
    (cp, dp)
}

/// Creates InferenceService `ns/name` with `annotations`, as the release chart would (the
/// harness reads only its name, labels and annotations).
async fn create_isvc(cp: &ControlPlane, ns: &str, name: &str, annotations: &[(&str, &str)]) {
    let mut obj = inference_service_object("app", name, "gs://seldon-models/sklearn/iris");
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    obj["metadata"]["annotations"] = serde_json::to_value(annotations).unwrap();
    testenv::objects::apply(
        &cp.client().await.unwrap(),
        &inference_service(),
        Some(ns),
        &obj,
        "test",
    )
    .await
    .unwrap();
}

/// One keep-alive HTTP/1.1 connection sending V2 inference requests.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// POSTs the tutorial's input to `path` with `Host: host`; the status code.
    async fn infer(&mut self, host: &str, path: &str) -> Result<u16> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{INPUT}",
            INPUT.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("connection closed in the middle of an answer");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.context("an answer without Content-Length")?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(status)
    }
}

/// Sends `n` inference requests for InferenceService `ns/name` through knative-local-gateway
/// (as the tutorial's routes do); the status codes in order.
async fn infer_n(dp: &DataPlane, ns: &str, name: &str, n: usize) -> Vec<u16> {
    let host = format!("{name}-predictor.{ns}.svc.cluster.local");
    let path = format!("/v2/models/{name}/infer");
    let mut conn = Conn::open(dp.local_gateway()).await.unwrap();
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(conn.infer(&host, &path).await.unwrap());
    }
    codes
}

/// The value of `promql` once it is there, failing with Prometheus's log otherwise.
async fn value(prom: &Prometheus, promql: &str) -> f64 {
    prom.wait_for_value(promql, WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", prom.log_tail(20)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_and_latency_seen_by_prometheus() {
    let (cp, dp) = setup();
    let ns = cp.namespace("prom").await.unwrap();
    create_isvc(cp, &ns, "healthy", &[]).await;
    create_isvc(
        cp,
        &ns,
        "faulty",
        &[
            (ERROR_SHARE_ANNOTATION, "0.5"),
            (DELAY_MS_ANNOTATION, "100"),
        ],
    )
    .await;
    create_isvc(cp, &ns, "bad", &[(ERROR_SHARE_ANNOTATION, "2")]).await;
    let started = Instant::now();
    let prom = dp.prometheus().await.unwrap();
    eprintln!("Prometheus ready in {:?}", started.elapsed());

    let err = dp.serve_inference_service(&ns, "bad").await.unwrap_err();
    assert!(
        format!("{err:#}").contains("is not a number from 0 to 1"),
        "{err:#}"
    );
    for name in ["healthy", "faulty"] {
        let started = Instant::now();
        dp.serve_inference_service(&ns, name).await.unwrap();
        eprintln!("{name} served (and scraped) in {:?}", started.elapsed());
    }
    assert_eq!(
        dp.served_faults(&ns, "faulty").await,
        Some(Faults {
            error_share: 0.5,
            delay_ms: 100
        })
    );
    let sel = |isvc: &str| format!("namespace=\"{ns}\",isvc=\"{isvc}\"");
    // Scraped before any request: the counters are there, at 0.
    for isvc in ["healthy", "faulty"] {
        for metric in [
            "model_infer_request_success_total",
            "model_infer_request_failure_total",
            "model_infer_request_duration_count",
        ] {
            let q = format!("{metric}{{{}}}", sel(isvc));
            assert_eq!(value(prom, &q).await, 0.0, "{q}");
        }
    }

    let healthy = infer_n(dp, &ns, "healthy", 40).await;
    let faulty = infer_n(dp, &ns, "faulty", 40).await;
    assert!(healthy.iter().all(|&c| c == 200), "{healthy:?}");
    // Deterministic: every second request fails, with 500 (not 503: Istio would retry it).
    let expected: Vec<u16> = (1..=40)
        .map(|n| if n % 2 == 0 { 500 } else { 200 })
        .collect();
    assert_eq!(faulty, expected);

    // Exact counts since each revision started, once Prometheus has scraped them.
    for (isvc, total, failed) in [("healthy", 40.0, 0.0), ("faulty", 40.0, 20.0)] {
        let q = format!("sum(model_infer_request_duration_count{{{}}})", sel(isvc));
        prom.wait_for_value(&q, WAIT, |v| v == total)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let q = format!("sum(model_infer_request_failure_total{{{}}})", sel(isvc));
        assert_eq!(value(prom, &q).await, failed, "{q}");
        let q = format!("sum(model_infer_request_success_total{{{}}})", sel(isvc));
        assert_eq!(value(prom, &q).await, total - failed, "{q}");
    }
    let q = format!(
        "sum(rest_server_requests_total{{{},path=\"/v2/models/{{model_name}}/infer\",status_code=\"500\"}})",
        sel("faulty")
    );
    assert_eq!(value(prom, &q).await, 20.0, "{q}");

    // (a) the error ratio over a window.
    let ratio = |isvc: &str| {
        format!(
            "sum(increase(model_infer_request_failure_total{{{s}}}[5m])) / sum(increase(model_infer_request_duration_count{{{s}}}[5m]))",
            s = sel(isvc)
        )
    };
    let r = value(prom, &ratio("faulty")).await;
    assert!((0.45..=0.55).contains(&r), "{} = {r}", ratio("faulty"));
    assert_eq!(value(prom, &ratio("healthy")).await, 0.0);
    // (b) the request count over a window (extrapolated to the window's ends).
    for isvc in ["healthy", "faulty"] {
        let q = format!(
            "sum(increase(model_infer_request_duration_count{{{}}}[5m]))",
            sel(isvc)
        );
        let n = value(prom, &q).await;
        assert!((38.0..=46.0).contains(&n), "{q} = {n}");
    }
    // (c) latency: every faulty request took at least 100 ms.
    let mean = |isvc: &str| {
        format!(
            "sum(rate(model_infer_request_duration_sum{{{s}}}[5m])) / sum(rate(model_infer_request_duration_count{{{s}}}[5m]))",
            s = sel(isvc)
        )
    };
    let (slow, fast) = (
        value(prom, &mean("faulty")).await,
        value(prom, &mean("healthy")).await,
    );
    assert!(
        slow >= 0.1 && fast < slow,
        "mean latency {slow} s vs {fast} s"
    );
    let p99 = |isvc: &str| {
        format!(
            "histogram_quantile(0.99, sum by (le) (rate(rest_server_request_duration_seconds_bucket{{{},path=\"/v2/models/{{model_name}}/infer\"}}[5m])))",
            sel(isvc)
        )
    };
    let p = value(prom, &p99("faulty")).await;
    assert!(p >= 0.1, "{} = {p}", p99("faulty"));
    eprintln!(
        "faulty: error ratio {r}, mean latency {slow:.3} s, p99 {p:.3} s; healthy: mean {fast:.4} s"
    );

    // The gateway's Envoy, scraped too: the 500s it passed on from the faulty revision.
    let up = prom.query(&format!("up{{{}}}", sel("faulty"))).unwrap();
    let revision = up["result"][0]["metric"]["revision"].as_str().unwrap();
    let q = format!(
        "sum(envoy_cluster_upstream_rq{{envoy=\"knative-local-gateway\",envoy_response_code=\"500\",envoy_cluster_name=\"outbound|80||{revision}.{ns}.svc.cluster.local\"}})"
    );
    prom.wait_for_value(&q, WAIT, |v| v == 20.0)
        .await
        .unwrap_or_else(|e| {
            let seen = prom.query(&format!(
                "{{envoy=\"knative-local-gateway\",envoy_cluster_name=~\".*{revision}.*\"}}"
            ));
            panic!("{e:#}; the gateway's series of {revision}: {seen:#?}")
        });

    for envoy in ["istio-ingressgateway", "knative-local-gateway"] {
        let series = value(
            prom,
            &format!("scrape_samples_scraped{{envoy=\"{envoy}\"}}"),
        )
        .await;
        let took = value(
            prom,
            &format!("scrape_duration_seconds{{envoy=\"{envoy}\"}}"),
        )
        .await;
        eprintln!("Envoy {envoy}: {series} series in {took:.4} s per scrape");
    }

    // A retired revision is no longer scraped: its series go stale.
    dp.stop_inference_service(&ns, "faulty").await.unwrap();
    let q = format!("up{{{}}}", sel("faulty"));
    testenv::wait_for(&format!("{q} to go stale"), WAIT, || async {
        prom.value(&q).ok()?.is_none().then_some(())
    })
    .await
    .unwrap();
    dp.stop_inference_service(&ns, "healthy").await.unwrap();
}

/// Stopped, a query fails saying so; started again, it answers with the data it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_started_again() {
    let prom = Prometheus::start(prometheus::Options::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(prom.address().starts_with("http://127.0.0.1:"));
    let own: SocketAddr = ([127, 0, 0, 1], prom.port()).into();
    prom.add_target(own, BTreeMap::from([("role".into(), "self".into())]))
        .unwrap();
    let info = prom
        .wait_for_series("prometheus_build_info{role=\"self\"}", WAIT)
        .await
        .unwrap();
    let metric = &info[0]["metric"];
    assert_eq!(metric["version"], "3.16.0", "{metric}");
    assert_eq!(metric["job"], "testenv");
    assert_eq!(metric["instance"], own.to_string().as_str());
    let samples = "count_over_time(up{role=\"self\"}[1h])";
    let before = prom
        .wait_for_value(samples, WAIT, |v| v >= 2.0)
        .await
        .unwrap();

    // A bad query: Prometheus's own message.
    let err = prom.query("sum(").unwrap_err();
    assert!(format!("{err:#}").contains("parse error"), "{err:#}");

    prom.stop();
    assert!(!prom.is_running());
    let err = prom.query("up").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("does not answer (stopped)") && msg.contains(&prom.address()),
        "{msg}"
    );
    assert!(prom.value("up").is_err());

    prom.start_again().await.unwrap();
    assert!(prom.is_running());
    // The same data: at least the samples from before the outage, and new ones.
    let after = prom
        .wait_for_value(samples, WAIT, |v| v > before)
        .await
        .unwrap();
    assert!(after > before);
    prom.remove_target(own).unwrap();
    assert!(prom.targets().list().is_empty());
}
