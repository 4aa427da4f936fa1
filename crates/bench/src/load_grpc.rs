//! gRPC load generators side by side: ghz (what Iter8 v1.1 ran in-process) and ours, against
//! the same target: Fortio's gRPC ping service (`fgrpc.PingServer/Ping`) pinned to CPU 0, the
//! loaders pinned to CPU 1, one at a time; rounds alternate which goes first.
//!
//! Our side runs `iter8 load grpc` (a process, as ghz is) when our binary has it; otherwise
//! the library (`iter8_load::grpc`) is driven in this process, pinned to CPU 1 for the run,
//! on a one-worker runtime (ghz is given `--cpus 1`).
//!
//! Two scenarios, both with 50 workers on one connection (ghz's defaults):
//! - fixed rate: 1000 calls/s, 10 000 calls (10 s): is the achieved rate the requested one?
//! - max rate: no rate limit for 10 s: throughput, and latency under saturation.
//!
//! Both sides' figures come from the ghz report each writes (rps = count / total time;
//! latency percentiles over the OK calls).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use iter8_load::grpc::{self, GrpcOptions};
use serde_json::Value;
use testenv::process::free_port;

/// Fortio's `fgrpc/ping.proto` (unchanged from v1.63.5 to v1.68.2).
const PING_PROTO: &str = r#"syntax = "proto3";
package fgrpc;

message PingMessage {
  int64 seq      = 1;
  int64 ts       = 2;
  string payload = 3;
  int64 delayNanos = 4;
}

service PingServer {
  rpc Ping (PingMessage) returns (PingMessage) {}
}
"#;

const CALL: &str = "fgrpc.PingServer/Ping";
const DATA: &str = r#"{"payload":"iter8"}"#;
const CONCURRENCY: usize = 50;
const FIXED_RPS: f64 = 1000.0;
const FIXED_TOTAL: u64 = 10_000;
const MAX_RATE_FOR: Duration = Duration::from_secs(10);

/// The ghz binary built by `testenv/setup.sh --with-load-bench`.
pub fn ghz_binary() -> Result<PathBuf> {
    let v = testenv::tools::version("GHZ_VERSION");
    let path = testenv::tools::cache_dir().join(format!("ghz-{v}/bin/ghz"));
    if !path.is_file() {
        bail!(
            "ghz {v} is not built ({} is missing); run `testenv/setup.sh --with-load-bench`",
            path.display()
        );
    }
    Ok(path)
}

/// What one load run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Fixed,
    MaxRate,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Loader {
    Ghz,
    Ours,
}

/// Runs the comparison and returns it as Markdown. `ours` is our `iter8` binary, `ghz` the
/// ghz binary (see [`ghz_binary`]); the target is Fortio
/// ([`crate::load_http::fortio_binary`]).
pub async fn run(ours: &Path, ghz: &Path, rounds: usize) -> Result<String> {
    let rounds = rounds.max(1);
    let fortio = crate::load_http::fortio_binary()?;
    let dir = std::env::temp_dir().join(format!("bench-load-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let proto = dir.join("ping.proto");
    std::fs::write(&proto, PING_PROTO)?;
    let result = compare(ours, &fortio, ghz, rounds, &dir, &proto).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn compare(
    ours: &Path,
    fortio: &Path,
    ghz: &Path,
    rounds: usize,
    dir: &Path,
    proto: &Path,
) -> Result<String> {
    let target = Target::start(fortio, dir)?;
    target.wait_ready(proto).await?;
    let cli = has_load_cli(ours);
    eprintln!(
        "load-grpc: target {}; ours via {}",
        target.host,
        if cli {
            "iter8 load grpc"
        } else {
            "the library in-process (no `iter8 load grpc` yet)"
        }
    );
    let mut fixed: [Vec<Figures>; 2] = Default::default();
    let mut max: [Vec<Figures>; 2] = Default::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Loader::Ghz, Loader::Ours]
        } else {
            [Loader::Ours, Loader::Ghz]
        };
        for scenario in [Scenario::Fixed, Scenario::MaxRate] {
            for loader in order {
                let f = match loader {
                    Loader::Ghz => run_ghz(ghz, &target.host, proto, scenario)?,
                    Loader::Ours if cli => {
                        run_cli(ours, &target.host, proto, scenario, &dir.join("ours.json"))?
                    }
                    Loader::Ours => {
                        let _pinned = Pinned::to_cpu(1)?;
                        run_ours(&target.host, proto, scenario).await?
                    }
                };
                eprintln!("round {round} {scenario:?} {loader:?}: {f:?}");
                let slot = match scenario {
                    Scenario::Fixed => &mut fixed,
                    Scenario::MaxRate => &mut max,
                };
                slot[loader as usize].push(f);
            }
        }
    }
    let versions = format!(
        "ghz {}, ours {}, target Fortio {} (gRPC ping)",
        tool_version(ghz, &["--version"]),
        if cli {
            "`iter8 load grpc`"
        } else {
            "the iter8-load library in-process"
        },
        tool_version(fortio, &["version"])
    );
    Ok(markdown(&versions, rounds, &fixed, &max))
}

/// Whether our binary has `iter8 load grpc`.
fn has_load_cli(ours: &Path) -> bool {
    Command::new(ours)
        .args(["load", "grpc", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Pins this process (all its threads) to one CPU; restores the previous mask on drop.
struct Pinned {
    previous: String,
}

impl Pinned {
    fn to_cpu(cpu: usize) -> Result<Pinned> {
        let pid = std::process::id().to_string();
        let out = Command::new("taskset").args(["-p", &pid]).output()?;
        // "pid 123's current affinity mask: 3"
        let previous = String::from_utf8_lossy(&out.stdout)
            .rsplit(':')
            .next()
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .context("cannot read this process's CPU affinity (taskset -p)")?;
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu.to_string(), &pid])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("taskset could not pin this process to CPU {cpu}");
        }
        Ok(Pinned { previous })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        let _ = Command::new("taskset")
            .args(["-a", "-p", &self.previous, &pid])
            .stdout(Stdio::null())
            .status();
    }
}

/// `fortio server` with only its gRPC ping server, pinned to CPU 0.
struct Target {
    child: Child,
    host: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    fn start(fortio: &Path, dir: &Path) -> Result<Target> {
        let host = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.join("fortio.log"))?;
        let child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(fortio)
            .args(["server", "-grpc-port", &host])
            .args(["-http-port", &format!("127.0.0.1:{}", free_port()?)])
            .args(["-redirect-port", "disabled", "-tcp-port", "disabled"])
            .args(["-udp-port", "disabled", "-loglevel", "Warning"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", fortio.display()))?;
        Ok(Target { child, host })
    }

    /// Until a ping answers OK.
    async fn wait_ready(&self, proto: &Path) -> Result<()> {
        let opts = GrpcOptions {
            total: Some(1),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            ..options(&self.host, proto)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = grpc::run(&opts).await?;
            if r.ok() == 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "fortio's gRPC server did not answer: {:?}",
                    r.error_messages()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn options(host: &str, proto: &Path) -> GrpcOptions {
    GrpcOptions {
        host: host.to_string(),
        call: CALL.into(),
        proto_files: vec![proto.to_path_buf()],
        data: serde_json::from_str(DATA).unwrap_or_default(),
        concurrency: CONCURRENCY,
        connections: 1,
        ..GrpcOptions::default()
    }
}

async fn run_ours(host: &str, proto: &Path, scenario: Scenario) -> Result<Figures> {
    let opts = match scenario {
        Scenario::Fixed => GrpcOptions {
            rps: FIXED_RPS,
            total: Some(FIXED_TOTAL),
            ..options(host, proto)
        },
        Scenario::MaxRate => GrpcOptions {
            duration: Some(MAX_RATE_FOR),
            ..options(host, proto)
        },
    };
    // One scheduler thread, as ghz runs with GOMAXPROCS=1.
    let run = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        anyhow::Ok(rt.block_on(grpc::run(&opts))?)
    })
    .await??;
    let p = |q: f64| run.ok_latency_ms(q).unwrap_or(f64::NAN);
    Ok(Figures {
        rps: run.rps(),
        p50_ms: p(50.0),
        p90_ms: p(90.0),
        p99_ms: p(99.0),
        errors: run.errors(),
    })
}

/// The scenario's load options as command-line flags (ghz and `iter8 load grpc` share them).
fn scenario_flags(scenario: Scenario) -> Vec<String> {
    match scenario {
        Scenario::Fixed => vec![
            "--rps".into(),
            FIXED_RPS.to_string(),
            "-n".into(),
            FIXED_TOTAL.to_string(),
        ],
        Scenario::MaxRate => vec!["--duration".into(), format!("{}s", MAX_RATE_FOR.as_secs())],
    }
}

fn run_ghz(ghz: &Path, host: &str, proto: &Path, scenario: Scenario) -> Result<Figures> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"])
        .arg(ghz)
        .args(["--insecure", "--proto"]);
    cmd.arg(proto)
        .args(["--call", CALL, "-d", DATA])
        .args(["-c", &CONCURRENCY.to_string(), "--connections", "1"])
        .args(["--cpus", "1", "-O", "json"])
        .args(scenario_flags(scenario));
    if scenario == Scenario::MaxRate {
        // Calls in flight at the end complete, as ours do (ghz's default cancels them and
        // counts them as errors).
        cmd.args(["--duration-stop", "wait"]);
    }
    let out = checked(cmd.arg(host), "ghz")?;
    let report: Value = serde_json::from_slice(&out).context("ghz's JSON report")?;
    ghz_figures(&report)
}

fn run_cli(
    ours: &Path,
    host: &str,
    proto: &Path,
    scenario: Scenario,
    out: &Path,
) -> Result<Figures> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"])
        .arg(ours)
        .args(["load", "grpc", "--host", host, "--call", CALL, "--proto"])
        .arg(proto)
        .args(["--data", DATA, "-c", &CONCURRENCY.to_string()])
        .args(["--connections", "1", "--output"])
        .arg(out)
        .args(scenario_flags(scenario));
    checked(&mut cmd, "iter8 load grpc")?;
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    let result: Value = serde_json::from_str(&text).context("our result's JSON")?;
    let report = result
        .pointer("/insights/taskData/grpc")
        .and_then(|g| g.as_object())
        .and_then(|g| g.values().next())
        .context("our result has no insights.taskData.grpc entry")?;
    ghz_figures(report)
}

/// Runs `cmd`; its standard output, or an error with the end of its standard error.
fn checked(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(10).collect();
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(out.stdout)
}

/// The figures of a ghz JSON report.
fn ghz_figures(r: &Value) -> Result<Figures> {
    let pct = |p: u64| -> f64 {
        r["latencyDistribution"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["percentage"].as_u64() == Some(p)))
            .and_then(|e| e["latency"].as_f64())
            .map_or(f64::NAN, |ns| ns / 1e6)
    };
    let count = r["count"].as_u64().context("ghz report without count")?;
    let ok = r["statusCodeDistribution"]["OK"].as_u64().unwrap_or(0);
    Ok(Figures {
        rps: r["rps"].as_f64().context("ghz report without rps")?,
        p50_ms: pct(50),
        p90_ms: pct(90),
        p99_ms: pct(99),
        errors: count - ok.min(count),
    })
}

fn tool_version(bin: &Path, args: &[&str]) -> String {
    // ghz (kingpin) prints its version on standard error.
    Command::new(bin)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if out.is_empty() {
                String::from_utf8_lossy(&o.stderr).trim().to_string()
            } else {
                out
            }
        })
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Median with the spread, e.g. `999.9 (999.8–1000.0)`.
fn spread(xs: &[f64], digits: usize) -> String {
    let mut xs: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if xs.is_empty() {
        return "–".into();
    }
    xs.sort_by(f64::total_cmp);
    let (med, lo, hi) = (xs[xs.len() / 2], xs[0], xs[xs.len() - 1]);
    format!("{med:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

fn markdown(
    versions: &str,
    rounds: usize,
    fixed: &[Vec<Figures>; 2],
    max: &[Vec<Figures>; 2],
) -> String {
    let mut out = format!(
        "### gRPC load generators: ghz vs ours\n\n{versions}; target pinned to CPU 0, loaders to \
         CPU 1; {CONCURRENCY} workers on 1 connection; medians of {rounds} rounds (min–max). \
         Latencies over the OK calls.\n\n\
         | scenario | loader | calls/s | off target | p50 ms | p90 ms | p99 ms | errors |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let rows = [
        (
            format!("{FIXED_RPS} calls/s, {FIXED_TOTAL} calls"),
            fixed,
            Some(FIXED_RPS),
        ),
        (format!("max rate, {} s", MAX_RATE_FOR.as_secs()), max, None),
    ];
    for (name, runs, target) in rows {
        for (loader, label) in [(Loader::Ghz, "ghz"), (Loader::Ours, "ours")] {
            let fs = &runs[loader as usize];
            let pick = |f: fn(&Figures) -> f64| fs.iter().map(f).collect::<Vec<f64>>();
            let off = target.map_or("".to_string(), |t| {
                spread(
                    &pick(|f| f.rps)
                        .iter()
                        .map(|r| (r - t) / t * 100.0)
                        .collect::<Vec<_>>(),
                    2,
                ) + " %"
            });
            let errors: u64 = fs.iter().map(|f| f.errors).sum();
            out.push_str(&format!(
                "| {} | {label} | {} | {off} | {} | {} | {} | {errors} |\n",
                if loader == Loader::Ghz {
                    name.as_str()
                } else {
                    ""
                },
                spread(&pick(|f| f.rps), 1),
                spread(&pick(|f| f.p50_ms), 3),
                spread(&pick(|f| f.p90_ms), 3),
                spread(&pick(|f| f.p99_ms), 3),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghz_report_figures() {
        let r = serde_json::json!({
            "count": 10, "rps": 99.5,
            "statusCodeDistribution": {"OK": 8, "Unavailable": 2},
            "latencyDistribution": [{"percentage": 50, "latency": 1_500_000},
                                    {"percentage": 90, "latency": 2_000_000},
                                    {"percentage": 99, "latency": 3_000_000}]
        });
        let f = ghz_figures(&r).expect("figures");
        assert_eq!(f.errors, 2);
        assert!((f.p50_ms - 1.5).abs() < 1e-9 && (f.p99_ms - 3.0).abs() < 1e-9);
        assert_eq!(spread(&[3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
    }
}
