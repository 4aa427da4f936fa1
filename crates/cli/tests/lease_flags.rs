//! `iter8 controller` refuses lease flags the election cannot work with, at start and before
//! connecting to anything. Runs the binary only (no cluster).

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

/// Runs `iter8 controller` with the given lease flags; `(exit success, stderr)`. The
/// kubeconfig does not exist, so a controller that got past the check fails differently.
fn controller(duration: &str, renew_every: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iter8"))
        .args(["controller", "--kubeconfig", "/nonexistent/kubeconfig"])
        .args([
            "--admin-address",
            "127.0.0.1:0",
            "--abn-address",
            "127.0.0.1:0",
        ])
        .args([
            "--lease-duration",
            duration,
            "--lease-renew-every",
            renew_every,
        ])
        .env_remove("KUBECONFIG")
        .env_remove("CONFIG_FILE")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn bad_lease_flags_fail_at_start_naming_both_flags() {
    let cases = [
        // (lease duration, renew every, what the message must say)
        ("5s", "10s", "shorter than --lease-duration"),
        ("5s", "5s", "shorter than --lease-duration"),
        ("15s", "0s", "greater than zero"),
        ("500ms", "100ms", "at least 1s"),
        ("0s", "0s", "at least 1s"),
    ];
    for (duration, renew_every, reason) in cases {
        let (ok, stderr) = controller(duration, renew_every);
        assert!(!ok, "{duration}/{renew_every} must fail:\n{stderr}");
        let flags = format!("--lease-duration {duration}, --lease-renew-every {renew_every}");
        assert!(
            stderr.contains("invalid lease flags") && stderr.contains(&flags),
            "{duration}/{renew_every}: message must name both flags and values:\n{stderr}"
        );
        assert!(
            stderr.contains(reason),
            "{duration}/{renew_every}:\n{stderr}"
        );
        assert!(
            !stderr.contains("kubeconfig"),
            "checked before connecting:\n{stderr}"
        );
    }
}

#[test]
fn good_lease_flags_pass_the_check() {
    // Past the check the controller reads its (missing) kubeconfig and fails on that.
    let (ok, stderr) = controller("4s", "1s");
    assert!(!ok);
    assert!(!stderr.contains("invalid lease flags"), "{stderr}");
    assert!(stderr.contains("kubeconfig"), "{stderr}");
}
