//! `iter8 load http|grpc` refuses bad input with a message naming it, before or instead of a
//! measurement, and never panics. (The generators' behaviour is tested in crates/load; the
//! test chart's Job end to end in dataplane_load.rs.)

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// `iter8 load ARGS`: (exit success, stderr).
fn load(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .arg("load")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stderr)
}

fn proto() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../load/tests/fixtures/grpc_predict_v2.proto")
        .display()
        .to_string()
}

/// A loopback port where nothing listens: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn bad_http_input_is_named() {
    let url = format!("http://127.0.0.1:{}/", closed_port());
    for (args, want) in [
        (
            vec!["--url", url.as_str(), "--qps", "0"],
            "qps \"0\" is not a rate",
        ),
        (
            vec!["--url", url.as_str(), "--qps=-5"],
            "qps \"-5\" is not a rate",
        ),
        (vec!["--url", url.as_str(), "-n", "3"], "no request reached"),
        (vec!["--url", "ftp://example/", "-n", "1"], "ftp"),
        (
            vec!["--url", url.as_str(), "-n", "0"],
            "numRequests must be at least 1",
        ),
        (
            vec!["--url", url.as_str(), "--duration", "0s"],
            "duration must be longer than 0",
        ),
        (
            vec!["--url", url.as_str(), "--slo", "latency-max=3"],
            "unknown SLO metric \"latency-max\"",
        ),
    ] {
        let (ok, err) = load(&[&["http"], args.as_slice()].concat());
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: want {want:?} in\n{err}");
    }
}

#[test]
fn bad_grpc_input_is_named() {
    let host = format!("127.0.0.1:{}", closed_port());
    let bad = std::env::temp_dir().join(format!("bad-{}.proto", std::process::id()));
    std::fs::write(&bad, "syntax = \"proto3\";\nmessage X { int32 a = 1 \n}\n").unwrap();
    let bad = bad.display().to_string();
    let proto = proto();
    let call = "inference.GRPCInferenceService.ModelInfer";
    let data = r#"{"model_name":"m"}"#;
    for (args, want) in [
        (
            vec![
                "--host",
                host.as_str(),
                "--call",
                call,
                "--proto",
                bad.as_str(),
            ],
            ":3:1:",
        ),
        (
            vec![
                "--host",
                host.as_str(),
                "--call",
                "inference.GRPCInferenceService.Nope",
                "--proto",
                proto.as_str(),
            ],
            "ModelInfer",
        ),
        (
            vec![
                "--host",
                host.as_str(),
                "--call",
                call,
                "--proto",
                proto.as_str(),
                "--data",
                r#"{"model_nam":"m"}"#,
            ],
            "model_nam",
        ),
        (
            vec![
                "--host",
                host.as_str(),
                "--call",
                call,
                "--proto",
                proto.as_str(),
                "--data",
                data,
                "-n",
                "2",
            ],
            "no call reached",
        ),
        (
            vec![
                "--host",
                host.as_str(),
                "--call",
                call,
                "--proto",
                proto.as_str(),
                "-n",
                "0",
            ],
            "total and duration are both 0 or missing",
        ),
        (
            vec![
                "--host",
                host.as_str(),
                "--call",
                call,
                "--proto",
                "/nonexistent.proto",
            ],
            "nonexistent.proto",
        ),
    ] {
        let (ok, err) = load(&[&["grpc"], args.as_slice()].concat());
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: want {want:?} in\n{err}");
    }
}

/// A tiny HTTP server on loopback that answers every request 200 and counts them.
fn counting_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    // One request: its head up to the blank line (GETs have no body).
                    let mut line = String::new();
                    let mut saw_request = false;
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        saw_request = true;
                        if line == "\r\n" {
                            break;
                        }
                        line.clear();
                    }
                    if !saw_request {
                        return;
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, count)
}

#[test]
fn warm_up_requests_are_sent_but_not_counted() {
    let (url, served) = counting_server();
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .args([
            "load", "http", "--url", &url, "-n", "5", "--warmup", "3", "--qps", "max",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &result["insights"]["taskData"]["http"][&url];
    assert_eq!(run["RetCodes"], serde_json::json!({"200": 5}), "{result}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 8);
}
