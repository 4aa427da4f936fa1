//! `iter8 render`: what the controller would apply, offline.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn render(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .arg("render")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const ROUTEMAP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/render/routemap.yaml"
);
const OBJECTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/render/objects.yaml"
);

#[test]
fn prints_weights_and_only_ready_routes() {
    let (ok, out, err) = render(&["--routemap", ROUTEMAP, "-f", OBJECTS]);
    assert!(ok, "{err}");
    assert!(out.contains("# weights: [50, 0]"), "{out}");
    assert!(out.contains("# version 1: not available"), "{out}");
    let vs: serde_json::Value = serde_yaml::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(vs["kind"], "VirtualService");
    let names: Vec<&str> = vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["wisdom-0"]);
}

#[test]
fn a_ready_candidate_gets_its_header_route_first() {
    let dir = tempfile_dir();
    let ready = std::fs::read_to_string(OBJECTS)
        .unwrap()
        .replace("status: Unknown", "status: \"True\"");
    let objects = dir.join("objects.yaml");
    std::fs::write(&objects, ready).unwrap();
    let (ok, out, err) = render(&["--routemap", ROUTEMAP, "-f", objects.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("# weights: [50, 50]"), "{out}");
    let vs: serde_json::Value = serde_yaml::from_str(out.split("---\n").nth(1).unwrap()).unwrap();
    assert_eq!(vs["spec"]["http"][0]["name"], "wisdom-1");
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["headers"]["traffic"]["exact"],
        "test"
    );
}

#[test]
fn a_broken_template_fails_with_its_name() {
    let dir = tempfile_dir();
    let broken = std::fs::read_to_string(ROUTEMAP)
        .unwrap()
        .replace("{{- end }}", "{{- end }}{{ end }}");
    let routemap = dir.join("routemap.yaml");
    std::fs::write(&routemap, broken).unwrap();
    let (ok, _, err) = render(&["--routemap", routemap.to_str().unwrap(), "-f", OBJECTS]);
    assert!(!ok);
    assert!(err.contains("template canary"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "iter8-render-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
