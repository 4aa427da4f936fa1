//! A/B/n end to end: the controller chart installed with Helm, the `iter8` binary running as
//! its pod would, a blue-green release of two InferenceServices, and clients speaking to the
//! gRPC service: the real Go client of Iter8 v1.1 (its generated package, built from the
//! original module) and this project's own (tonic). Checks wire compatibility, the documented
//! assignment, crediting to the served version, bad input, the dashboard, persistence across a
//! restart, and two replicas sharing a real Redis.

#![allow(clippy::unwrap_used)]

mod e2e;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use e2e::*;
use iter8_abn::proto::abn_client::AbnClient;
use iter8_abn::proto::{Application, MetricValue};
use serde_json::Value;
use tonic::Code;

/// Blue-green with both versions weighted 50/50.
const BLUE_GREEN: &str = r#"
environment: kserve
application:
  metadata:
    labels:
      app.kubernetes.io/name: wisdom
  strategy: blue-green
  modelFormat: sklearn
  runtime: kserve-mlserver
  protocolVersion: v2
  versions:
  - metadata:
      labels:
        app.kubernetes.io/version: v0
    storageUri: gs://seldon-models/sklearn/mms/lr_model
    weight: 50
  - metadata:
      labels:
        app.kubernetes.io/version: v1
    storageUri: gs://seldon-models/sklearn/mms/lr_model
    weight: 50
"#;

const USERS: usize = 60;

/// The Go client built from Iter8 v1.1's module by testenv/setup.sh.
fn go_client() -> PathBuf {
    testenv::tools::abn_go_client().unwrap()
}

/// `abn-client` output: the parsed JSON line it printed and whether it succeeded.
fn go(address: &str, args: &[&str]) -> (bool, Value) {
    let out = Command::new(go_client())
        .args(["-address", address])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "abn-client printed {stdout:?} ({e}); stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), json)
}

async fn client(address: &str) -> AbnClient<tonic::transport::Channel> {
    AbnClient::connect(format!("http://{address}"))
        .await
        .unwrap()
}

fn app(name: &str, user: &str) -> Application {
    Application {
        name: name.to_string(),
        user: user.to_string(),
    }
}

fn metric(application: &str, user: &str, name: &str, value: &str) -> MetricValue {
    MetricValue {
        name: name.to_string(),
        value: value.to_string(),
        application: application.to_string(),
        user: user.to_string(),
        version_number: None,
        signature: String::new(),
    }
}

/// Installs the release and makes both versions ready; returns once the VirtualService routes
/// to both.
async fn release_ready(cp: &testenv::ControlPlane, client: &kube::Client, ns: &str) {
    helm_release(cp, ns, "wisdom", BLUE_GREEN);
    kserve_ready(client, ns, "wisdom-0").await;
    kserve_ready(client, ns, "wisdom-1").await;
    wait_obj(
        client,
        &vs_ar(),
        ns,
        "wisdom",
        "routes to both versions",
        |vs| {
            let names: Vec<&str> = vs.data["spec"]["http"]
                .as_array()
                .map(|h| h.iter().filter_map(|r| r["name"].as_str()).collect())
                .unwrap_or_default();
            names.contains(&"wisdom-0") && names.contains(&"wisdom-1")
        },
    )
    .await;
}

async fn dashboard(iter8: &Iter8, ns: &str) -> Value {
    let (code, body) = http_get(
        &iter8.admin,
        &format!("/abnDashboard?namespace={ns}&application=wisdom"),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Transactions per version of `metric` on the dashboard.
fn counts(d: &Value, metric: &str) -> BTreeMap<u64, u64> {
    d[metric]["SummaryOverTransactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["Version"].as_u64().unwrap(), s["Count"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_go_client_gets_proportional_sticky_answers_and_metrics_are_credited_to_what_users_were_served(
) {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("abn").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    release_ready(cp, &client, &ns).await;
    let address = iter8.abn_address().await;
    let application = format!("{ns}/wisdom");
    let mut ours = client_for(&address).await;

    // The Go client of v1.1 and ours get the same answers; ours also learns the signatures,
    // from which the documented algorithm predicts every answer.
    let mut served = BTreeMap::new();
    let mut signatures = vec![String::new(); 2];
    for u in 0..USERS {
        let user = format!("user-{u}");
        let (ok, out) = go(&address, &["lookup", &application, &user]);
        assert!(ok, "{out}");
        let v = out["versionNumber"].as_u64().unwrap_or(0) as usize;
        let answer = ours
            .lookup(app(&application, &user))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.version_number as usize, v, "{user}");
        signatures[v] = answer.signature.clone();
        served.insert(user, v);
    }
    assert!(
        signatures.iter().all(|s| !s.is_empty()),
        "both versions served: {served:?}"
    );
    for (user, &v) in &served {
        assert_eq!(
            iter8_abn::assign::choose(user, &[50, 50], &signatures, 0),
            Some(v),
            "{user}: the answer is the documented algorithm's"
        );
    }

    // A metric per user through the Go client, credited to the version the user was served.
    for (i, user) in served.keys().enumerate() {
        let (ok, out) = go(
            &address,
            &["write", &application, user, "sales", &format!("{}", i + 1)],
        );
        assert!(ok, "{out}");
    }
    let mut want: BTreeMap<u64, u64> = BTreeMap::new();
    for &v in served.values() {
        *want.entry(v as u64).or_default() += 1;
    }
    let d = dashboard(&iter8, &ns).await;
    assert_eq!(counts(&d, "sales"), want, "{d}");
    let users: u64 = d["sales"]["SummaryOverUsers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Count"].as_u64().unwrap())
        .sum();
    assert_eq!(users, USERS as u64);

    // The candidate becomes unready: Lookup moves its users to the primary, but a metric
    // they write now is still credited to the candidate they were served before.
    // `moved` does no Lookup after the change (that would serve it the primary); another of
    // the candidate's users proves that the service saw the change.
    let mut candidates = served.iter().filter(|(_, &v)| v == 1).map(|(u, _)| u);
    let (moved, probe) = (candidates.next().unwrap(), candidates.next().unwrap());
    kserve_not_ready(&client, &ns, "wisdom-1").await;
    testenv::wait_for("the candidate's users to move", WAIT, || {
        let mut c = ours.clone();
        let req = app(&application, probe);
        async move { (c.lookup(req).await.ok()?.into_inner().version_number == 0).then_some(()) }
    })
    .await
    .unwrap();
    ours.write_metric(metric(&application, moved, "sales", "5"))
        .await
        .unwrap();
    let d = dashboard(&iter8, &ns).await;
    assert_eq!(counts(&d, "sales")[&1], want[&1] + 1, "{d}");
    kserve_ready(&client, &ns, "wisdom-1").await;

    // Bad input: a clear code each, from both clients.
    let (ok, out) = go(&address, &["lookup", &application, ""]);
    assert!(!ok);
    assert_eq!(out["code"], "InvalidArgument", "{out}");
    let (ok, out) = go(&address, &["lookup", &format!("{ns}/nothing"), "u"]);
    assert!(!ok);
    assert_eq!(out["code"], "NotFound", "{out}");
    let (ok, out) = go(&address, &["write", &application, "u", "sales", "lots"]);
    assert!(!ok);
    assert_eq!(out["code"], "InvalidArgument", "{out}");
    let code = |r: Result<tonic::Response<()>, tonic::Status>| r.err().map(|s| s.code());
    let big = "u".repeat(1 << 20);
    assert_eq!(
        ours.lookup(app(&application, &big))
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            ours.write_metric(metric(&application, "u", "a::b", "1"))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            ours.write_metric(metric(&application, "u", "sales", "NaN"))
                .await
        ),
        Some(Code::InvalidArgument)
    );
    let mut wrong = metric(&application, "u", "sales", "1");
    wrong.version_number = Some(7);
    assert_eq!(
        code(ours.write_metric(wrong).await),
        Some(Code::InvalidArgument)
    );
    // Nothing of the refused writes reached the store.
    let d = dashboard(&iter8, &ns).await;
    assert_eq!(counts(&d, "sales")[&1], want[&1] + 1, "{d}");
    assert_eq!(d.as_object().unwrap().len(), 1, "only `sales`: {d}");

    // A restart: the same answers (no per-process seed) and the store kept everything.
    drop(iter8);
    let iter8 = install_controller(cp, &ns, false, &[]).await;
    let address = iter8.abn_address().await;
    let mut ours = client_for(&address).await;
    for (user, &v) in &served {
        let answer = ours
            .lookup(app(&application, user))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.version_number as usize, v, "{user} after a restart");
    }
    let d = dashboard(&iter8, &ns).await;
    assert_eq!(counts(&d, "sales")[&1], want[&1] + 1, "{d}");

    helm(cp, &ns, &["delete", "wisdom"], None);
}

async fn client_for(address: &str) -> AbnClient<tonic::transport::Channel> {
    client(address).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_give_the_same_answers_and_one_dashboard() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("abn-redis").await.unwrap();
    let mut redis = testenv::redis::RedisServer::start().unwrap();
    let redis_set = format!("metrics.redis.address={}", redis.address());
    let values = [
        "replicas=2",
        "metrics.implementation=redis",
        redis_set.as_str(),
    ];
    let first = install_controller(cp, &ns, false, &values).await;
    let second = install_controller(cp, &ns, false, &values).await;
    release_ready(cp, &client, &ns).await;
    let application = format!("{ns}/wisdom");
    let mut a = client_for(&first.abn_address().await).await;
    let mut b = client_for(&second.abn_address().await).await;

    for u in 0..USERS {
        let user = format!("user-{u}");
        let x = a
            .lookup(app(&application, &user))
            .await
            .unwrap()
            .into_inner();
        let y = b
            .lookup(app(&application, &user))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(x.version_number, y.version_number, "{user}");
        // Alternate replicas: both write into the one store.
        let c = if u % 2 == 0 { &mut a } else { &mut b };
        c.write_metric(metric(&application, &user, "sales", "2"))
            .await
            .unwrap();
    }
    let d1 = dashboard(&first, &ns).await;
    let d2 = dashboard(&second, &ns).await;
    assert_eq!(d1, d2);
    assert_eq!(
        counts(&d1, "sales").values().sum::<u64>(),
        USERS as u64,
        "{d1}"
    );

    // Redis down: WriteMetric says UNAVAILABLE (never OK), Lookup still routes.
    redis.stop();
    assert_eq!(
        a.write_metric(metric(&application, "user-1", "sales", "1"))
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::Unavailable)
    );
    assert!(a.lookup(app(&application, "user-1")).await.is_ok());
    redis.restart().unwrap();
    testenv::wait_for("writes to succeed once Redis is back", WAIT, || {
        let mut c = a.clone();
        let m = metric(&application, "user-1", "sales", "1");
        async move { c.write_metric(m).await.ok().map(|_| ()) }
    })
    .await
    .unwrap();

    helm(cp, &ns, &["delete", "wisdom"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_new_users_clearly_while_lookup_keeps_answering() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("abn-full").await.unwrap();
    let iter8 = install_controller(cp, &ns, false, &["metrics.maxUsers=2"]).await;
    release_ready(cp, &client, &ns).await;
    let application = format!("{ns}/wisdom");
    let mut c = client_for(&iter8.abn_address().await).await;

    for user in ["a", "b"] {
        c.lookup(app(&application, user)).await.unwrap();
        c.write_metric(metric(&application, user, "sales", "1"))
            .await
            .unwrap();
    }
    // A third user is still routed, but its metric cannot be kept: RESOURCE_EXHAUSTED, and
    // nothing of it is written.
    assert!(c.lookup(app(&application, "c")).await.is_ok());
    let refused = c
        .write_metric(metric(&application, "c", "sales", "1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("full"), "{refused:?}");
    // The users already known keep working.
    c.write_metric(metric(&application, "a", "sales", "1"))
        .await
        .unwrap();
    let d = dashboard(&iter8, &ns).await;
    assert_eq!(counts(&d, "sales").values().sum::<u64>(), 3, "{d}");
    assert_eq!(
        iter8
            .metric("iter8_abn_requests_total{method=\"WriteMetric\",code=\"ResourceExhausted\"}")
            .await,
        1.0
    );
    helm(cp, &ns, &["delete", "wisdom"], None);
}
