//! A private network namespace per test, so simulated pods have real, non-loopback pod IPs:
//! inside it `lo` is up and the pod CIDR [`POD_CIDR`] is routed `local` to `lo`, so every
//! pod IP can be bound and reached, and the API server accepts those addresses in
//! EndpointSlices (it refuses loopback ones). The host's (first) network namespace is never
//! changed.
//!
//! How: [`isolate`] re-executes the current test binary under `unshare --net`, for exactly the
//! calling test (`NAME --exact`), with [`ENV`] set to the id of the namespace it started in;
//! the outer run forwards the isolated run's output and fails unless that one test passed.
//! In the isolated process, [`isolate`] brings `lo` up, adds the route and returns `true`: the
//! test body runs there, and with it everything it starts (the shared control plane of
//! [`crate::shared`], the data plane of [`crate::dataplane::shared`], model servers): they
//! all listen on the namespace's own loopback, invisible to the host and to other tests.
//!
//! Costs: each isolated test starts its own control plane and data plane (about 20 s and
//! 500 MB before model servers). Isolated tests of one test binary therefore run one after
//! the other (a lock in the outer process); keep several checks in one test rather than many
//! small isolated tests. Does process and network-namespace I/O; needs root (CAP_SYS_ADMIN for
//! `unshare --net`), `unshare` (util-linux) and `ip` (iproute2).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The pod CIDR routed `local` inside the namespace (kwok's and the kind's default range).
/// The control plane's Service range (10.0.0.0/24) lies outside it.
pub const POD_CIDR: &str = "10.244.0.0/16";

/// Set in the isolated process: the id (`net:[inode]`) of the namespace the outer run started
/// in, so the isolated process can check it is somewhere else before it changes routes.
pub const ENV: &str = "TESTENV_NETNS_OUTER";

/// How long the isolated run may take, start-up of the control and data planes included.
/// `TESTENV_NETNS_TIMEOUT_S` overrides it.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Runs the calling test in a fresh network namespace. Call it first in the test, with the
/// test's name as libtest knows it (its path inside the test crate, e.g. `pods_answer` or
/// `module::pods_answer`):
///
/// ```no_run
/// #[tokio::test]
/// async fn pods_answer() {
///     if !testenv::netns::isolate("pods_answer") {
///         return; // ran, and passed, in its own network namespace
///     }
///     // Here: a private network namespace where 10.244.0.0/16 is local.
/// }
/// ```
///
/// Returns `true` in the isolated process (run the body), `false` in the outer one once the
/// isolated run passed; panics, with the isolated run's output, if it failed or timed out.
#[must_use]
pub fn isolate(test_name: &str) -> bool {
    match std::env::var(ENV) {
        Ok(outer) => {
            static READY: OnceLock<std::result::Result<(), String>> = OnceLock::new();
            if let Err(e) = READY.get_or_init(|| enter(&outer).map_err(|e| format!("{e:#}"))) {
                panic!("preparing the isolated network namespace failed: {e}");
            }
            true
        }
        Err(_) => {
            if let Err(e) = run_outside(test_name) {
                panic!("{e:#}");
            }
            false
        }
    }
}

/// Whether this process is an isolated one (started by [`isolate`]).
pub fn is_isolated() -> bool {
    std::env::var_os(ENV).is_some()
}

/// The id of this process's network namespace (`net:[4026531833]`).
fn namespace_id() -> Result<String> {
    Ok(std::fs::read_link("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .display()
        .to_string())
}

/// In the isolated process: checks it is not in the namespace the outer run started in, then
/// brings `lo` up and routes the pod CIDR to it.
fn enter(outer: &str) -> Result<()> {
    let here = namespace_id()?;
    if here == outer {
        bail!(
            "{ENV} is set but this process is still in network namespace {outer}: refusing to \
             change its routes (unset {ENV}; testenv::netns::isolate sets it itself)"
        );
    }
    ip(&["link", "set", "lo", "up"])?;
    // `replace`: idempotent, should the same process get here twice.
    ip(&["route", "replace", "local", POD_CIDR, "dev", "lo"])?;
    // The outer run holds our stdin open while it waits; if it dies (killed, or timed out and
    // gone), end this process too: the components' watchdogs then stop them.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        // Not eprintln!: with the outer run gone, stderr may be a broken pipe, and a panic
        // here would leave this process running.
        let _ = writeln!(
            std::io::stderr(),
            "testenv::netns: the outer test run is gone; exiting"
        );
        std::process::exit(101);
    });
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One line of the isolated run's output.
enum Line {
    Out(String),
    Err(String),
}

/// In the outer process: runs `test_name` of this binary in a new network namespace, forwards
/// its output (through `println!`, so libtest captures it as the test's own) and checks that
/// exactly this test ran and passed.
fn run_outside(test_name: &str) -> Result<()> {
    // libtest names each test's thread after the test: catch a wrong name before it runs
    // nothing (a filter that matches no test passes).
    if let Some(thread) = std::thread::current().name() {
        if thread != "main" && thread != test_name {
            bail!("testenv::netns::isolate({test_name:?}) called from test {thread:?}: pass the test's own name");
        }
    }
    // One isolated run at a time per test binary: each starts a control plane and a data
    // plane of its own.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);

    let exe = std::env::current_exe().context("finding the test binary")?;
    let outer = namespace_id()?;
    let timeout = std::env::var("TESTENV_NETNS_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(TIMEOUT);
    let mut child = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(&exe)
        .args([
            test_name,
            "--exact",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env(ENV, &outer)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the test under `unshare --net` (needs root and util-linux's unshare)")?;
    let (tx, rx) = mpsc::channel();
    let readers = [
        forward(child.stdout.take(), tx.clone(), Line::Out),
        forward(child.stderr.take(), tx, Line::Err),
    ];
    let deadline = Instant::now() + timeout;
    let mut summary = None;
    let mut exited = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Line::Out(line)) => {
                if line.starts_with("test result:") {
                    summary = Some(line.clone());
                }
                println!("[netns] {line}");
            }
            Ok(Line::Err(line)) => eprintln!("[netns] {line}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        match exited {
            None => {
                if let Some(s) = child.try_wait().context("waiting for the isolated run")? {
                    exited = Some((s, Instant::now()));
                } else if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("test {test_name} in its network namespace did not finish within {timeout:?}; killed");
                }
            }
            // Exited, but something it started still holds the pipes open: stop reading.
            Some((_, at)) if at.elapsed() > Duration::from_secs(5) => break,
            Some(_) => {}
        }
    }
    drop(readers);
    let status = match exited {
        Some((s, _)) => s,
        None => child.wait().context("waiting for the isolated run")?,
    };
    if !status.success() {
        bail!("test {test_name} failed in its network namespace ({status}); its output is above");
    }
    // libtest's last line; "test NAME ... ok" may be split by the test's own output.
    let passed = summary
        .as_deref()
        .is_some_and(|s| s.starts_with("test result: ok. 1 passed;"));
    if !passed {
        return Err(anyhow!(
            "test {test_name} did not run in its network namespace ({}): is {test_name:?} its exact name?",
            summary.as_deref().unwrap_or("no summary")
        ));
    }
    Ok(())
}

/// Sends each line of `pipe` to `tx` from a thread of its own.
fn forward<R: Read + Send + 'static>(
    pipe: Option<R>,
    tx: mpsc::Sender<Line>,
    wrap: fn(String) -> Line,
) -> Option<std::thread::JoinHandle<()>> {
    let pipe = pipe?;
    Some(std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(wrap(line)).is_err() {
                return;
            }
        }
    }))
}
