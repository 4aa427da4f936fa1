//! The pod network of the test data plane: simulated pods reached at their pod IPs through
//! the real path Service → EndpointSlice → istiod (EDS) → Envoy, with no WorkloadEntry.
//!
//! The test runs in a network namespace of its own (`testenv::netns::isolate`), where the pod
//! CIDR 10.244.0.0/16 is local: there it starts the control plane and the data plane, one
//! MLServer per pod bound to the pod's IP, writes EndpointSlices by hand (the API server
//! refuses loopback addresses in them, not pod IPs) and sends requests through the ingress
//! Envoy. One pod's server is started by hand (`PodServer`), the other's by the
//! `PodWatcher` from a Pod bound to a fake node, as a kubelet would for a kwok pod.
//!
//! Needs root, `unshare` and `ip`, and istiod, Envoy and MLServer from `testenv/setup.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use testenv::dataplane::{self, DataPlane};
use testenv::fixtures::{api_resource, service};
use testenv::pods::{kserve_ports, PodModel, PodServer, PodWatcher, MODEL_READY_ANNOTATION};
use testenv::{http, netns, objects};

const WAIT: Duration = Duration::from_secs(120);
const NODE: &str = "testenv-fake-node";
const POD0: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);

/// The tutorial's input.json.
const INPUT: &str = r#"{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}]}"#;

fn endpoint_slice() -> kube::core::ApiResource {
    api_resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
}

async fn apply(client: &Client, ar: &kube::core::ApiResource, ns: &str, obj: Value) {
    objects::apply(client, ar, Some(ns), &obj, "pod-network-test")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Service `ns/name` without a selector (port 80 `http` → 8080) and its EndpointSlice, written
/// by hand as the EndpointSlice controller would: one ready endpoint at `ip`, optionally
/// naming the Pod it stands for.
async fn service_with_endpoint(
    client: &Client,
    ns: &str,
    name: &str,
    ip: Ipv4Addr,
    ready: bool,
    pod: Option<&Pod>,
) {
    apply(
        client,
        &service(),
        ns,
        json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
    )
    .await;
    let mut endpoint = json!({
        "addresses": [ip.to_string()],
        "conditions": {"ready": ready, "serving": ready, "terminating": false},
        "nodeName": NODE});
    if let Some(p) = pod {
        endpoint["targetRef"] = json!({"kind": "Pod", "namespace": ns,
            "name": p.metadata.name, "uid": p.metadata.uid});
    }
    apply(
        client,
        &endpoint_slice(),
        ns,
        json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-by-hand"), "namespace": ns,
            "labels": {"kubernetes.io/service-name": name,
                       "endpointslice.kubernetes.io/managed-by": "pod-network-test"}},
        "addressType": "IPv4",
        "endpoints": [endpoint],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    )
    .await;
}

/// One request with `Connection: close`: the status and the body (`None` if nothing answers).
fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A request to send through the ingress.
struct Req {
    method: &'static str,
    host: String,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
}

impl Req {
    /// The tutorial's inference request for `model`, to `host`.
    fn infer(host: &str, model: &str, headers: &[(&'static str, &'static str)]) -> Req {
        Req {
            method: "POST",
            host: host.to_string(),
            path: format!("/v2/models/{model}/infer"),
            headers: headers.to_vec(),
            body: INPUT,
        }
    }

    fn send(&self, addr: SocketAddr) -> Option<(u16, String)> {
        request(
            addr,
            self.method,
            &self.host,
            &self.path,
            &self.headers,
            self.body,
        )
    }
}

/// Waits until the ingress answers `req` with a status and (JSON) body for which `check`
/// holds; returns that body.
async fn wait_answer(
    dp: &DataPlane,
    what: &str,
    req: &Req,
    check: impl Fn(u16, &Value) -> bool,
) -> Value {
    let ingress = dp.ingress();
    let mut last = None;
    let found = testenv::wait_for(what, WAIT, || {
        let answer = req.send(ingress);
        let parsed = answer.as_ref().map(|(status, text)| {
            let v = serde_json::from_str::<Value>(text).unwrap_or(Value::String(text.clone()));
            (*status, v)
        });
        last = answer;
        let ok = parsed
            .filter(|(status, v)| check(*status, v))
            .map(|(_, v)| v);
        async move { ok }
    })
    .await;
    found.unwrap_or_else(|e| {
        panic!(
            "{e:#}; last answer: {last:?}\ningress routes: {}\n{}",
            dp.ingress_config_dump(),
            dp.diagnostics()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_reached_through_endpoint_slices() {
    if !netns::isolate("pods_are_reached_through_endpoint_slices") {
        return;
    }
    let started = Instant::now();
    // Pod IPs are local here, and only here.
    assert!(netns::is_isolated());
    std::net::TcpListener::bind((POD0, 0)).expect("the pod CIDR is local in the namespace");

    let cp = tokio::task::spawn_blocking(|| testenv::shared().map_err(|e| format!("{e:#}")))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let dp = tokio::task::spawn_blocking(|| dataplane::shared().map_err(|e| format!("{e:#}")))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("control plane and data plane up in {:?}", started.elapsed());
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("pods").await.unwrap();

    // Pod wisdom-1: bound to the fake node, its IP set as kwok would; the watcher serves it.
    let watcher = PodWatcher::start(client.clone(), NODE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wisdom-1-predictor-0", "namespace": ns,
            "labels": {"serving.kserve.io/inferenceservice": "wisdom-1",
                       "app.kubernetes.io/version": "v1"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "kserve-container",
            "image": "mlserver:never-pulled",
            "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]}]}}))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    pods.patch_status(
        "wisdom-1-predictor-0",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "podIP": POD1.to_string(),
            "podIPs": [{"ip": POD1.to_string()}]}}),
        ),
    )
    .await
    .unwrap();

    // Pod wisdom-0: its server started by hand, meanwhile.
    let server0 = PodServer::serve(kserve_ports(POD0, 8080), &PodModel::new("wisdom-0", "v0"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(server0.addr(), SocketAddr::from((POD0, 8080)));

    // The watcher annotates the pod once its model answers.
    let pod = testenv::wait_for(
        "the watcher to serve pod wisdom-1-predictor-0",
        WAIT,
        || {
            let pods = pods.clone();
            async move {
                let p = pods.get("wisdom-1-predictor-0").await.ok()?;
                let ready = p
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(MODEL_READY_ANNOTATION)?;
                (ready == "true").then_some(p)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(watcher.pods(), 1);
    let direct = http::get(
        SocketAddr::from((POD1, 8080)),
        "model",
        "/v2/models/wisdom-1/ready",
    );
    assert_eq!(direct.map(|r| r.status), Some(200));
    eprintln!("both pods' models answer after {:?}", started.elapsed());

    // Services with hand-written EndpointSlices at the pod IPs: the API server takes them.
    service_with_endpoint(&client, &ns, "wisdom-0-predictor", POD0, true, None).await;
    service_with_endpoint(&client, &ns, "wisdom-1-predictor", POD1, true, Some(&pod)).await;
    let host = format!("wisdom.{ns}");
    let vs = api_resource(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    );
    let to = |svc: &str| json!([{"destination": {"host": format!("{svc}.{ns}.svc.cluster.local"), "port": {"number": 80}}}]);
    apply(&client, &vs, &ns, json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "wisdom", "namespace": ns},
        "spec": {"gateways": ["knative-serving/knative-ingress-gateway"], "hosts": [host],
            "http": [
                {"match": [{"headers": {"traffic": {"exact": "test"}}}], "route": to("wisdom-1-predictor")},
                {"route": to("wisdom-0-predictor")}]}}))
    .await;

    // Through Envoy: inference answered by the model of each pod, at that pod's IP.
    let to0 = Req::infer(&host, "wisdom-0", &[]);
    let to1 = Req::infer(&host, "wisdom-1", &[("traffic", "test")]);
    let answer = wait_answer(
        dp,
        "wisdom-0's model to answer through the ingress",
        &to0,
        |s, v| s == 200 && v["model_name"] == "wisdom-0",
    )
    .await;
    assert_eq!(answer["model_version"], "v0", "{answer}");
    eprintln!(
        "routed through Envoy to the pod after {:?}",
        started.elapsed()
    );
    let answer = wait_answer(
        dp,
        "wisdom-1's model to answer through the ingress (traffic: test)",
        &to1,
        |s, v| s == 200 && v["model_name"] == "wisdom-1",
    )
    .await;
    assert_eq!(answer["model_version"], "v1", "{answer}");
    // Which server answered: MLServer's server name holds its address.
    for (headers, server) in [
        (&[][..], format!("wisdom-0@{POD0}:8080")),
        (&[("traffic", "test")][..], format!("wisdom-1@{POD1}:8080")),
    ] {
        let (status, body) = request(dp.ingress(), "GET", &host, "/v2", headers, "").unwrap();
        let meta: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!((status, &meta["name"]), (200, &json!(server)), "{body}");
    }
    assert_eq!(server0.server_name(), format!("wisdom-0@{POD0}:8080"));

    // The real EDS path: nothing but the EndpointSlices point at the pods. No WorkloadEntry or
    // ServiceEntry in the namespace, Services without selectors; and the endpoint's readiness
    // in the EndpointSlice decides whether Envoy routes to it.
    for (kind, plural) in [
        ("WorkloadEntry", "workloadentries"),
        ("ServiceEntry", "serviceentries"),
    ] {
        let ar = api_resource("networking.istio.io", "v1", kind, plural);
        let list = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(list.items.is_empty(), "{kind}s in {ns}: {:?}", list.items);
    }
    service_with_endpoint(&client, &ns, "wisdom-0-predictor", POD0, false, None).await;
    wait_answer(
        dp,
        "Envoy to stop routing to the unready endpoint",
        &to0,
        |s, _| s == 503,
    )
    .await;
    service_with_endpoint(&client, &ns, "wisdom-0-predictor", POD0, true, None).await;
    wait_answer(dp, "Envoy to route to the endpoint again", &to0, |s, v| {
        s == 200 && v["model_name"] == "wisdom-0"
    })
    .await;

    // Pod deleted: the watcher stops its server.
    pods.delete(
        "wisdom-1-predictor-0",
        &DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    testenv::wait_for("the watcher to stop pod wisdom-1's server", WAIT, || {
        let closed =
            TcpStream::connect_timeout(&SocketAddr::from((POD1, 8080)), Duration::from_millis(500))
                .is_err();
        let forgotten = watcher.pods() == 0;
        async move { (closed && forgotten).then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    watcher.stop().await;
    server0.stop();
    eprintln!("done after {:?}", started.elapsed());
}

/// A wrong test name would run no test in the namespace (and an empty run passes): refused
/// before anything starts.
#[test]
#[should_panic(expected = "pass the test's own name")]
fn isolate_refuses_another_tests_name() {
    let _ = netns::isolate("pods_are_reached_through_endpoint_slices");
}
