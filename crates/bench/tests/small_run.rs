//! Keeps the benchmark working: a small run (5 apps, 5 candidates) of the floor, our controller
//! and the original on a real control plane. Asserts that every contender converged and routed
//! every candidate, that the floor wrote the same VirtualServices as ours, and, for ours: that a
//! readiness change costs at most [`MAX_REQUESTS_PER_READINESS_CHANGE`] API requests, and that,
//! restarted with nothing changed, it reconciled every routemap and wrote nothing. Never a time
//! (CI machines vary too much).
//!
//! Needs our `iter8` binary (built by `cargo test --workspace` for the cli crate's tests, or
//! `cargo build -p iter8`) and the original controller (`testenv/setup.sh --with-original`,
//! which `make test` runs); the floor is this package's `bench` binary, which cargo builds
//! for this test.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use bench::{Kind, Settings};
use kube::api::{Api, DynamicObject, ListParams};
use kube::ResourceExt;

/// Most API requests (other than on Leases) our controller may send per readiness change, on
/// average over the readiness phase: the one VirtualService apply, and a little room.
const MAX_REQUESTS_PER_READINESS_CHANGE: f64 = 1.1;

/// Applications, and candidates made ready one by one (all of them).
const APPS: usize = 5;

/// Our `iter8` binary next to this test's target folder (target/<profile>/iter8).
fn ours() -> PathBuf {
    if let Some(p) = std::env::var_os("ITER8_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/small_run-<hash>
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("iter8");
    assert!(
        path.exists(),
        "our controller {} is missing: run `cargo build -p iter8` (cargo test --workspace builds it) or set ITER8_BIN",
        path.display()
    );
    path
}

/// The specs of the VirtualServices in `ns` by name, with `ns` written as `NS`.
async fn virtual_services(
    client: &kube::Client,
    ns: &str,
) -> std::collections::BTreeMap<String, String> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &testenv::fixtures::virtual_service());
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|vs| (vs.name_any(), vs.data["spec"].to_string().replace(ns, "NS")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contender_converges_in_a_small_run() {
    let original = bench::original_binary()
        .unwrap_or_else(|e| panic!("{e:#} (make test does this in its setup step)"));
    let settings = Settings {
        apps: APPS,
        candidates: APPS,
        ours: ours(),
        original,
        floor: PathBuf::from(env!("CARGO_BIN_EXE_bench")),
        timeout: Duration::from_secs(180),
        restart: true,
        original_env: Vec::new(),
        order: vec![Kind::Floor, Kind::Ours, Kind::Original],
        rounds: 1,
    };
    let cp = testenv::ControlPlane::start(testenv::Options::default())
        .await
        .unwrap();
    let reports = bench::run(&cp, &settings).await.unwrap();
    eprintln!("{}", bench::markdown(&reports));
    eprintln!("{}", bench::breakdown(&reports));
    for r in &reports {
        let label = r.kind.unwrap().label();
        assert_eq!(
            r.converged, APPS,
            "{label}: not every VirtualService converged"
        );
        assert_eq!(
            r.candidates_routed, APPS,
            "{label}: not every candidate was routed"
        );
        assert!(r.restart.is_some(), "{label}: restart phase missing");
    }
    let report = |k: Kind| reports.iter().find(|r| r.kind == Some(k)).unwrap();

    // The floor does the same work: it ends with the very VirtualServices ours wrote.
    let client = cp.client().await.unwrap();
    let floor_vss = virtual_services(&client, &report(Kind::Floor).namespace).await;
    let our_vss = virtual_services(&client, &report(Kind::Ours).namespace).await;
    assert_eq!(floor_vss.len(), APPS, "{floor_vss:#?}");
    assert_eq!(
        floor_vss, our_vss,
        "the floor's VirtualServices are not ours"
    );

    // Ours: one request per readiness change (the apply), a little room.
    let ours = report(Kind::Ours);
    let per_change = ours.requests_per_readiness_change();
    eprintln!(
        "ours: {per_change:.2} API requests per readiness change (excl. lease; {:?})",
        ours.req_readiness.by_kind
    );
    assert!(
        per_change <= MAX_REQUESTS_PER_READINESS_CHANGE,
        "ours: {per_change:.2} API requests per readiness change (excl. lease), more than \
         {MAX_REQUESTS_PER_READINESS_CHANGE}: {:?}",
        ours.req_readiness.by_kind
    );

    // Our no-change restart: first the evidence that the restarted controller looked at every
    // routemap (its own metrics: reconciles finished, applies found unchanged), then no write
    // in the API server's audit log and none in its metrics.
    let restart = ours.restart.as_ref().expect("our restart phase");
    let did = restart
        .reconciled
        .as_ref()
        .expect("our restarted controller's metrics");
    assert!(did.reconciles >= APPS as f64, "ours, restarted: {did:?}");
    assert!(did.unchanged >= APPS as f64, "ours, restarted: {did:?}");
    assert_eq!(
        (did.applied, did.failed, did.deletes, did.events),
        (0.0, 0.0, 0.0, 0.0),
        "ours, restarted with nothing changed, wrote (applied, failed, deletes, events): {did:?}"
    );
    let c = &restart.counts;
    assert_eq!(
        (c.vs_writes, c.event_writes, c.other_writes),
        (0, 0, 0),
        "ours, restarted with nothing changed, wrote (VirtualServices, Events, other): {:?}",
        c.by_kind
    );
}
