//! Bad input to the control plane gives a clear error naming the cause, and leaves no
//! process running. Each test starts its own control plane.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = testenv::ControlPlane::start(testenv::Options {
        apiserver_port: Some(port),
        skip_crds: true,
        ..Default::default()
    })
    .await
    .err()
    .expect("start must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("already in use"),
        "{msg}"
    );
}

#[tokio::test]
async fn broken_crd_file_is_named_and_nothing_is_left_running() {
    let cp = testenv::ControlPlane::start(testenv::Options {
        skip_crds: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let pids = cp.pids();
    assert!(pids.iter().all(|p| alive(*p)));

    let bad = cp.dir().join("bad-crd.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: things.example.com}\nspec: {group: example.com, names: {plural: things, kind: Thing}, scope: Namespaced, versions: []}\n",
    )
    .unwrap();
    let err = cp
        .install_crds(std::slice::from_ref(&bad))
        .await
        .expect_err("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("things.example.com") && msg.contains("bad-crd.yaml"),
        "{msg}"
    );

    let not_yaml: PathBuf = cp.dir().join("not-yaml.yaml");
    std::fs::write(&not_yaml, "kind: [unclosed").unwrap();
    let err = cp.install_crds(&[not_yaml]).await.expect_err("must fail");
    assert!(format!("{err:#}").contains("not valid YAML"), "{err:#}");

    drop(cp);
    for pid in pids {
        assert!(!alive(pid), "process {pid} still running after drop");
    }
}

#[tokio::test]
async fn missing_binary_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kube-apiserver");
    let err = testenv::Process::start("kube-apiserver", &missing, &[], dir.path())
        .expect_err("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no-such-kube-apiserver") && msg.contains("testenv/setup.sh"),
        "{msg}"
    );

    // A binary that exists but is broken: the failure carries its output.
    let broken = dir.path().join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'flag provided but not defined' >&2\nexit 3\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", broken.to_str().unwrap()])
        .status()
        .unwrap();
    let mut p = testenv::Process::start("broken", &broken, &[], dir.path()).unwrap();
    let err = testenv::wait_for(
        "the broken binary to exit",
        std::time::Duration::from_secs(10),
        || {
            let r = p.check_running();
            async move { r.err() }
        },
    )
    .await
    .unwrap();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("broken exited") && msg.contains("flag provided but not defined"),
        "{msg}"
    );
}
