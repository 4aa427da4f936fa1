//! Keeps the benchmark working: a small run (5 apps, 3 candidates) of both controllers on a
//! real control plane. Asserts that both converged and routed every candidate, and that ours,
//! restarted with nothing changed, reconciled every routemap and wrote nothing; never a time
//! (CI machines vary too much).
//!
//! Needs our `iter8` binary (built by `cargo test --workspace` for the cli crate's tests, or
//! `cargo build -p iter8`) and the original controller (`testenv/setup.sh --with-original`,
//! which `make test` runs).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use bench::{Kind, Settings};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_controllers_converge_in_a_small_run() {
    let original = bench::original_binary()
        .unwrap_or_else(|e| panic!("{e:#} (make test does this in its setup step)"));
    let settings = Settings {
        apps: 5,
        candidates: 3,
        ours: ours(),
        original,
        timeout: Duration::from_secs(180),
        restart: true,
        original_env: Vec::new(),
        order: vec![Kind::Ours, Kind::Original],
    };
    let cp = testenv::ControlPlane::start(testenv::Options::default())
        .await
        .unwrap();
    let reports = bench::run(&cp, &settings).await.unwrap();
    eprintln!("{}", bench::markdown(&reports));
    for r in &reports {
        let label = r.kind.unwrap().label();
        assert_eq!(
            r.converged, 5,
            "{label}: not every VirtualService converged"
        );
        assert_eq!(
            r.candidates_routed, 3,
            "{label}: not every candidate was routed"
        );
        assert!(r.restart.is_some(), "{label}: restart phase missing");
    }

    // Our no-change restart: first the evidence that the restarted controller looked at every
    // routemap (its own metrics: reconciles finished, applies found unchanged), then no write
    // in the API server's audit log and none in its metrics.
    let ours = reports
        .iter()
        .find(|r| r.kind == Some(Kind::Ours))
        .and_then(|r| r.restart.as_ref())
        .expect("our restart phase");
    let did = ours
        .reconciled
        .as_ref()
        .expect("our restarted controller's metrics");
    assert!(did.reconciles >= 5.0, "ours, restarted: {did:?}");
    assert!(did.unchanged >= 5.0, "ours, restarted: {did:?}");
    assert_eq!(
        (did.applied, did.failed, did.deletes, did.events),
        (0.0, 0.0, 0.0, 0.0),
        "ours, restarted with nothing changed, wrote (applied, failed, deletes, events): {did:?}"
    );
    let c = &ours.counts;
    assert_eq!(
        (c.vs_writes, c.event_writes, c.other_writes),
        (0, 0, 0),
        "ours, restarted with nothing changed, wrote (VirtualServices, Events, other): {:?}",
        c.by_kind
    );
}
