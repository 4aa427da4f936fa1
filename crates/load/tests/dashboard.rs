//! The dashboards against Iter8 v1.1.2's own answers (tests/fixtures/original_dashboards:
//! the original's test fixtures and expected JSON, and the answers its code gave for more
//! cases; see the README there).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use iter8_load::dashboard::{self, DashboardError};
use iter8_load::result::ExperimentResult;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/original_dashboards")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(case: &str) -> Result<ExperimentResult, serde_json::Error> {
    serde_json::from_str(&read(&dir().join(format!("cases/{case}.result.json"))))
}

fn result(case: &str) -> ExperimentResult {
    parse(case).unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// What [`ExperimentResult`] does not read, where v1.1 read it as having no task data (none
/// any more: `"taskData": null` reads as no task data, as in v1.1).
const UNREADABLE: [&str; 0] = [];

/// Where v1.1 crashed: the case whose v1.1 answer ours must equal instead.
const CRASHED: [(&str, &str); 2] = [
    // F14: no `insights` (v1.1: nil dereference) answers as `"insights": {}`.
    ("no_insights", "empty_insights"),
    // An endpoint whose result is null answers as `{}`.
    ("null_endpoint", "empty_endpoint"),
];

/// Where v1.1 silently answered empty `Endpoints` for malformed task data: ours refuses.
const MALFORMED: [(&str, &str, &str, &str); 4] = [
    (
        "malformed_http",
        "http",
        "bad",
        "DurationHistogram is a string",
    ),
    (
        "malformed_http_count",
        "http",
        "bad",
        "DurationHistogram: Count is 5.5",
    ),
    ("malformed_grpc", "grpc", "bad", "count is -1"),
    (
        "malformed_ret_code",
        "http",
        "bad",
        "the return code is not an integer",
    ),
];

fn ours(kind: &str, r: &ExperimentResult) -> Result<dashboard::Dashboard, DashboardError> {
    match kind {
        "http" => dashboard::http(r),
        _ => dashboard::grpc(r),
    }
}

#[test]
fn the_originals_test_fixtures_give_the_originals_expected_json() {
    let d = dir();
    // The generated cases wrap the Go test's fixtures as its tests do.
    assert_eq!(
        read(&d.join("http_dashboard.json")),
        read(&d.join("cases/fortio.http.json"))
    );
    assert_eq!(
        read(&d.join("grpc_dashboard.json")),
        read(&d.join("cases/ghz.grpc.json"))
    );
    let fortio: Value = serde_json::from_str(&read(&d.join("fortio_result.json"))).unwrap();
    let ghz: Value = serde_json::from_str(&read(&d.join("ghz_result.json"))).unwrap();
    let wrapped = |task: &str, data: Value| -> ExperimentResult {
        serde_json::from_value(serde_json::json!({
            "name": "my-name",
            "namespace": "my-namespace",
            "numCompletedTasks": 5,
            "insights": {"taskData": {task: data}},
        }))
        .unwrap()
    };
    let http = dashboard::http(&wrapped("http", fortio)).unwrap();
    assert_eq!(
        http.to_json(),
        read(&d.join("http_dashboard.json")).trim_end()
    );
    let grpc = dashboard::grpc(&wrapped("grpc", ghz)).unwrap();
    assert_eq!(
        grpc.to_json(),
        read(&d.join("grpc_dashboard.json")).trim_end()
    );
    // The Value form is what a parser reads from the text.
    let parsed: Value = serde_json::from_str(&http.to_json()).unwrap();
    assert_eq!(http.to_value(), parsed);
}

#[test]
fn every_case_answers_as_the_original_or_as_documented() {
    let mut files: BTreeSet<String> = std::fs::read_dir(dir().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let cases: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_suffix(".result.json").map(str::to_owned))
        .collect();
    assert!(cases.len() >= 20, "{cases:?}");
    for case in &cases {
        files.remove(&format!("{case}.result.json"));
        if UNREADABLE.contains(&case.as_str()) {
            assert!(parse(case).is_err(), "{case} is read now: test it");
            for kind in ["http", "grpc"] {
                assert!(files.remove(&format!("{case}.{kind}.json")));
                let v1: Value =
                    serde_json::from_str(&read(&dir().join(format!("cases/{case}.{kind}.json"))))
                        .unwrap();
                assert_eq!(v1["Endpoints"], serde_json::json!({}), "{case}");
            }
            continue;
        }
        let r = result(case);
        if files.remove(&format!("{case}.v1.1-put.txt")) {
            // v1.1 refused the body at PUT (its time type): so does the check before storing.
            match dashboard::check(&r) {
                Err(DashboardError::StartTime { value, .. }) => assert_eq!(value, r.start_time),
                other => panic!("{case}: expected a startTime error, got {other:?}"),
            }
            continue;
        }
        let malformed = MALFORMED.iter().find(|m| m.0 == case);
        if malformed.is_some() {
            assert!(dashboard::check(&r).is_err(), "{case}");
        } else {
            dashboard::check(&r).unwrap_or_else(|e| panic!("{case}: {e}"));
        }
        for kind in ["http", "grpc"] {
            let file = |suffix: &str| format!("{case}.{kind}{suffix}");
            let got = ours(kind, &r);
            if files.remove(&file(".v1.1-panic.txt")) {
                // v1.1 crashed; ours answers what v1.1 answers for the substitute case.
                let (_, instead) = CRASHED
                    .iter()
                    .find(|c| c.0 == case)
                    .unwrap_or_else(|| panic!("{case}: v1.1 crashed and no substitute is listed"));
                let want = read(&dir().join(format!("cases/{instead}.{kind}.json")));
                let got = got.unwrap_or_else(|e| panic!("{case} {kind}: {e}"));
                assert_eq!(got.to_json(), want.trim_end(), "{case} {kind}");
                continue;
            }
            assert!(files.remove(&file(".json")), "{case}: no {kind} answer");
            let want = read(&dir().join(format!("cases/{}", file(".json"))));
            match malformed {
                Some((_, task, endpoint, why)) if *task == kind => {
                    let v1: Value = serde_json::from_str(&want).unwrap();
                    assert_eq!(
                        v1["Endpoints"],
                        serde_json::json!({}),
                        "{case}: v1.1 hid all"
                    );
                    match got {
                        Err(e @ DashboardError::Endpoint { .. }) => {
                            let msg = e.to_string();
                            assert!(msg.contains(&format!("{task}[\"{endpoint}\"]")), "{msg}");
                            assert!(msg.contains(why), "{case}: {msg}");
                        }
                        other => panic!("{case} {kind}: expected an endpoint error, got {other:?}"),
                    }
                }
                _ => {
                    let got = got.unwrap_or_else(|e| panic!("{case} {kind}: {e}"));
                    assert_eq!(got.to_json(), want.trim_end(), "{case} {kind}: bytes");
                    let want: Value = serde_json::from_str(&want).unwrap();
                    assert_eq!(got.to_value(), want, "{case} {kind}: value");
                }
            }
        }
    }
    assert!(files.is_empty(), "files no case used: {files:?}");
}

#[test]
fn no_insights_gives_the_experiment_part_and_no_endpoints() {
    let r = result("no_insights");
    assert!(r.insights.is_none());
    for d in [
        dashboard::http_dashboard(&r).unwrap(),
        dashboard::grpc_dashboard(&r).unwrap(),
    ] {
        assert_eq!(d["Endpoints"], serde_json::json!({}));
        assert_eq!(d["ExperimentResult"]["Completed tasks"], 1);
        assert_eq!(d["ExperimentResult"]["Iter8 version"], "v1.1");
        assert_eq!(d["ExperimentResult"]["Start time"], "01 Jan 01 00:00 UTC");
    }
}

#[test]
fn dropping_call_details_keeps_the_dashboards() {
    let mut r = result("ghz");
    let before = (
        dashboard::grpc(&r).unwrap(),
        serde_json::to_vec(&r).unwrap().len(),
    );
    assert_eq!(dashboard::drop_call_details(&mut r), 1);
    assert_eq!(dashboard::drop_call_details(&mut r), 0);
    let report = &r
        .insights
        .as_ref()
        .unwrap()
        .task_data
        .grpc
        .as_ref()
        .unwrap()["routeguide.RouteGuide.GetFeature"];
    assert!(report.get("details").is_none());
    assert!(report.get("histogram").is_some());
    assert_eq!(dashboard::grpc(&r).unwrap(), before.0);
    assert!(serde_json::to_vec(&r).unwrap().len() < before.1);
    // Nothing to drop without gRPC data.
    let mut r = result("no_insights");
    assert_eq!(dashboard::drop_call_details(&mut r), 0);
}
