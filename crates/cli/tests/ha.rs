//! Running like a production controller, with real `iter8` processes against a real API
//! server: one lease holder writes and standbys never do; SIGTERM hands over at once; a killed
//! leader is replaced within the lease duration; an API server outage shows in /readyz and
//! the controller converges afterwards; /metrics parses and moves.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject};
use kube::{Client, ResourceExt};
use serde_json::json;
use testenv::fixtures::{self, config_map, inference_service, virtual_service};
use testenv::metrics::Scrape;
use testenv::routes::route_names;
use testenv::{kserve, objects};

const WAIT: Duration = Duration::from_secs(30);

/// An `iter8 controller` process; killed when dropped.
struct Iter8 {
    name: String,
    child: Child,
    admin: u16,
}

impl Drop for Iter8 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Iter8 {
    fn start(
        name: &str,
        kubeconfig: &Path,
        ns: &str,
        lease: (&str, &str),
        log_dir: &Path,
    ) -> Iter8 {
        Iter8::start_with(name, kubeconfig, ns, lease, log_dir, &[])
    }

    /// Like [`Iter8::start`], with more controller flags.
    fn start_with(
        name: &str,
        kubeconfig: &Path,
        ns: &str,
        lease: (&str, &str),
        log_dir: &Path,
        extra: &[&str],
    ) -> Iter8 {
        let admin = testenv::process::free_port().unwrap();
        let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_iter8"))
            .args(["controller", "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--namespace",
                ns,
                "--admin-address",
                &format!("127.0.0.1:{admin}"),
                "--abn-address",
                "127.0.0.1:0",
                "--metrics-dir",
            ])
            .arg(log_dir.join(format!("{name}-metrics")))
            .args(["--lease-duration", lease.0, "--lease-renew-every", lease.1])
            .args(extra)
            .env("POD_NAME", name)
            .env_remove("CONFIG_FILE")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Iter8 {
            name: name.into(),
            child,
            admin,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        testenv::http::get_local(self.admin, path).map(|r| (r.status, r.body))
    }

    /// `/metrics`, which must parse as Prometheus text (checked with `prometheus_parse`, a
    /// parser independent of the one the values are read with).
    fn metrics(&self) -> Scrape {
        let (status, body) = self.get("/metrics").expect("metrics endpoint answers");
        assert_eq!(status, 200);
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .expect("metrics parse");
        testenv::metrics::parse(&body).unwrap()
    }

    fn sigterm(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

async fn apply_isvc(client: &Client, ns: &str, name: &str) {
    let obj = fixtures::inference_service_object("wisdom", name, "gs://m");
    objects::apply(client, &inference_service(), Some(ns), &obj, "helm")
        .await
        .unwrap();
}

/// Writes the status KServe writes for a just-created or a ready InferenceService.
async fn set_ready(client: &Client, ns: &str, name: &str, ready: bool) {
    kserve::report(client, ns, name, ready, 1).await.unwrap();
}

async fn apply_routemap(client: &Client, ns: &str) {
    let spec = fixtures::tutorial_routemap("wisdom", ns, 2).unwrap();
    let cm = fixtures::routemap_object("wisdom-routemap", json!({ "strSpec": spec }));
    objects::apply(client, &config_map(), Some(ns), &cm, "helm")
        .await
        .unwrap();
}

async fn wait_routes(client: &Client, ns: &str, want: &[&str], within: Duration) -> DynamicObject {
    objects::wait(
        client,
        &virtual_service(),
        ns,
        "wisdom",
        &format!("routes {want:?}"),
        within,
        |vs| route_names(vs) == want,
    )
    .await
    .unwrap()
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("iter8-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn wait_holder(client: &Client, ns: &str, not: Option<&str>, within: Duration) -> String {
    testenv::wait_for("a lease holder", within, || async {
        holder(client, ns).await.filter(|h| Some(h.as_str()) != not)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn one_leader_writes_standby_never_does_and_sigterm_hands_over_at_once() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("ha").await.unwrap();
    let procs = [
        Iter8::start(
            "iter8-a",
            cp.kubeconfig_path(),
            &ns,
            ("15s", "2s"),
            cp.dir(),
        ),
        Iter8::start(
            "iter8-b",
            cp.kubeconfig_path(),
            &ns,
            ("15s", "2s"),
            cp.dir(),
        ),
    ];
    let leader_name = wait_holder(&client, &ns, None, WAIT).await;
    let (leader, standby) = if leader_name == procs[0].name {
        (&procs[0], &procs[1])
    } else {
        (&procs[1], &procs[0])
    };
    // Both become ready (stores synced) regardless of leadership.
    for p in &procs {
        testenv::wait_for("/readyz", WAIT, || async {
            (p.get("/readyz").map(|r| r.0) == Some(200)).then_some(())
        })
        .await
        .unwrap();
    }

    apply_isvc(&client, &ns, "wisdom-0").await;
    set_ready(&client, &ns, "wisdom-0", true).await;
    apply_isvc(&client, &ns, "wisdom-1").await;
    set_ready(&client, &ns, "wisdom-1", false).await;
    apply_routemap(&client, &ns).await;
    let vs = wait_routes(&client, &ns, &["wisdom-0"], WAIT).await;
    assert_eq!(testenv::objects::field_managers(&vs), ["iter8-controller"]);

    // Evidence for "the standby never writes": it has taken in the application's objects and
    // worked off its queue (as a standby, by dropping each item).
    testenv::wait_for(
        "the standby's stores to be warm and its queue idle",
        WAIT,
        || async {
            let sm = standby.metrics();
            (sm.get(
                "iter8_watched_objects",
                Some(("resource", "inferenceservices.serving.kserve.io")),
            ) >= 2.0
                && sm.is_idle())
            .then_some(())
        },
    )
    .await
    .unwrap();
    let (lm, sm) = (leader.metrics(), standby.metrics());
    assert_eq!(lm.get("iter8_leader", None), 1.0);
    assert_eq!(sm.get("iter8_leader", None), 0.0);
    assert!(lm.applies("applied") >= 1.0);
    assert!(lm.reconciles_started() >= 1.0);
    assert_eq!(sm.applies("applied"), 0.0, "the standby wrote");

    // SIGTERM: the leader finishes, releases the lease, exits 0; the standby takes over at once.
    let rv = vs.resource_version();
    // Read before the takeover: what the standby has done so far.
    let standby_before = standby.metrics();
    let t0 = Instant::now();
    leader.sigterm();
    let new = wait_holder(&client, &ns, Some(&leader.name), Duration::from_secs(2)).await;
    let took = t0.elapsed();
    assert_eq!(new, standby.name);
    eprintln!("standby took over {took:?} after SIGTERM");
    // The old leader exits cleanly.
    let pid = leader.child.id();
    testenv::wait_for("the old leader to exit", WAIT, || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    })
    .await
    .unwrap();
    // Evidence that the new leader reacted to the takeover: it reconciled the routemap from
    // its warm stores up to the apply step, and has nothing left in its queue.
    let done = |m: &Scrape| m.applies("applied") + m.applies("unchanged");
    testenv::wait_for("the new leader to reconcile the routemap", WAIT, || async {
        let m = standby.metrics();
        (m.reconciles_finished() > standby_before.reconciles_finished()
            && done(&m) > done(&standby_before)
            && m.is_idle())
        .then_some(())
    })
    .await
    .unwrap();
    let standby_after = standby.metrics();
    assert_eq!(
        standby_after.applies("applied"),
        standby_before.applies("applied"),
        "a takeover with nothing changed must not write"
    );
    assert!(standby_after.applies("unchanged") > standby_before.applies("unchanged"));
    assert_eq!(
        get_vs_rv(&client, &ns).await,
        rv,
        "a takeover with nothing changed must not write"
    );

    // The new leader routes the candidate when it becomes ready.
    let before = standby.metrics().reconciles_started();
    set_ready(&client, &ns, "wisdom-1", true).await;
    wait_routes(&client, &ns, &["wisdom-1", "wisdom-0"], WAIT).await;
    let after = standby.metrics();
    assert!(after.applies("applied") >= 1.0);
    assert!(after.reconciles_started() > before);
}

async fn get_vs_rv(client: &Client, ns: &str) -> Option<String> {
    objects::get(client, &virtual_service(), ns, "wisdom")
        .await
        .unwrap()
        .unwrap()
        .resource_version()
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_lease_duration() {
    let cp = testenv::shared().unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("ha-kill").await.unwrap();
    let mut procs = vec![
        Iter8::start("iter8-a", cp.kubeconfig_path(), &ns, ("4s", "1s"), cp.dir()),
        Iter8::start("iter8-b", cp.kubeconfig_path(), &ns, ("4s", "1s"), cp.dir()),
    ];
    let leader_name = wait_holder(&client, &ns, None, WAIT).await;
    apply_isvc(&client, &ns, "wisdom-0").await;
    set_ready(&client, &ns, "wisdom-0", true).await;
    apply_isvc(&client, &ns, "wisdom-1").await;
    set_ready(&client, &ns, "wisdom-1", false).await;
    apply_routemap(&client, &ns).await;
    wait_routes(&client, &ns, &["wisdom-0"], WAIT).await;

    // kill -9 the holder while the candidate becomes ready.
    let idx = procs.iter().position(|p| p.name == leader_name).unwrap();
    let mut dead = procs.remove(idx);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let t0 = Instant::now();
    set_ready(&client, &ns, "wisdom-1", true).await;
    // Lease duration (4 s) plus a few seconds.
    wait_routes(
        &client,
        &ns,
        &["wisdom-1", "wisdom-0"],
        Duration::from_secs(4 + 6),
    )
    .await;
    eprintln!("converged {:?} after the leader was killed", t0.elapsed());
    assert_eq!(
        holder(&client, &ns).await.as_deref(),
        Some(procs[0].name.as_str())
    );
}

#[tokio::test]
async fn an_api_server_outage_shows_in_readyz_and_the_controller_converges_after() {
    let mut cp = testenv::ControlPlane::start(testenv::Options::default())
        .await
        .unwrap();
    let client = cp.client().await.unwrap();
    let ns = cp.namespace("outage").await.unwrap();
    let p = Iter8::start("iter8-a", cp.kubeconfig_path(), &ns, ("4s", "1s"), cp.dir());
    wait_holder(&client, &ns, None, WAIT).await;
    apply_isvc(&client, &ns, "wisdom-0").await;
    set_ready(&client, &ns, "wisdom-0", true).await;
    apply_isvc(&client, &ns, "wisdom-1").await;
    set_ready(&client, &ns, "wisdom-1", false).await;
    apply_routemap(&client, &ns).await;
    wait_routes(&client, &ns, &["wisdom-0"], WAIT).await;
    testenv::wait_for("/readyz", WAIT, || async {
        (p.get("/readyz").map(|r| r.0) == Some(200)).then_some(())
    })
    .await
    .unwrap();

    cp.stop_apiserver();
    let body = testenv::wait_for(
        "/readyz to report the outage",
        Duration::from_secs(60),
        || async { p.get("/readyz").filter(|r| r.0 == 503).map(|r| r.1) },
    )
    .await
    .unwrap();
    assert!(
        body.contains("not synced") || body.contains("API requests failing"),
        "/readyz says why: {body}"
    );
    assert_eq!(
        p.get("/livez").map(|r| r.0),
        Some(200),
        "the controller must keep running"
    );

    cp.restart_apiserver().await.unwrap();
    // From here the API server answers: a routing change must be applied within seconds
    // (the watches relist at once or after a backoff of at most 4 s), not a minute.
    let back = Instant::now();
    let client = cp.client().await.unwrap();
    set_ready(&client, &ns, "wisdom-1", true).await;
    wait_routes(
        &client,
        &ns,
        &["wisdom-1", "wisdom-0"],
        Duration::from_secs(60),
    )
    .await;
    let resumed = back.elapsed();
    println!("API server ready -> routing change applied: {resumed:?}");
    assert!(
        resumed < Duration::from_secs(10),
        "resumed after {resumed:?}"
    );
    testenv::wait_for("/readyz to recover", WAIT, || async {
        (p.get("/readyz").map(|r| r.0) == Some(200)).then_some(())
    })
    .await
    .unwrap();
    let m = p.metrics();
    assert!(
        m.get("iter8_watch_restarts_total", None) >= 1.0,
        "watch restarts are counted"
    );
}

#[tokio::test]
async fn a_lease_that_cannot_be_written_is_retried_with_backoff_and_logged_once() {
    let cp = testenv::shared().unwrap();
    let ns = cp.namespace("lease-backoff").await.unwrap();
    let log_dir = cp.dir().join(format!("lease-backoff-{ns}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    // The Lease's namespace does not exist: every attempt fails with 404.
    let p = Iter8::start_with(
        "lease-backoff",
        cp.kubeconfig_path(),
        &ns,
        ("4s", "1s"),
        &log_dir,
        &["--lease-namespace", "no-such-namespace"],
    );
    let failures = "iter8_lease_update_failures_total";
    let started = Instant::now();
    testenv::wait_for("five failed lease updates", WAIT, || async {
        // Not `metrics()`: the admin server may not listen yet.
        let m = p
            .get("/metrics")
            .and_then(|(_, body)| testenv::metrics::parse(&body).ok())?;
        (m.get(failures, None) >= 5.0).then_some(())
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let text = std::fs::read_to_string(log_dir.join("lease-backoff.log")).unwrap();
    let logged = text.matches("lease update failed").count();
    // Backoff from 100 ms doubling (jitter only adds): five attempts need at least
    // 100 + 200 + 400 + 800 ms between them; without backoff they came in milliseconds.
    assert!(
        took >= Duration::from_millis(1500),
        "five attempts in {took:?}"
    );
    assert_eq!(logged, 1, "one log line for an unchanged error:\n{text}");
}
