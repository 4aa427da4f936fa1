//! HTTP load generation: ours (`iter8 load http`, crates/load) against Fortio's `load`, the
//! generator Iter8 v1.1 ran in-process, on the same target: a `fortio server` pinned to CPU 0,
//! the generators pinned to CPU 1, one at a time, alternating which goes first each round.
//!
//! Two scenarios: (a) a fixed rate (1000 qps over 4 connections for 10 s): the achieved rate
//! (both must be within 2% of the request) and the latency percentiles; (b) as fast as
//! possible (4 connections, 10 s): throughput. Both sides' percentiles are computed the same
//! way, by Fortio's interpolation within its buckets, from the `HTTPRunnerResults` each writes.
//! Medians over the rounds, with min–max.
//!
//! Our side runs the `iter8` binary when it has the `load http` command; otherwise the library
//! is driven in this process, pinned to CPU 1 for the run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use iter8_load::fortio::HttpRunnerResults;
use iter8_load::http::{self, HttpOptions};
use serde_json::Value;
use testenv::process::free_port;

const FIXED_QPS: f64 = 1000.0;
const CONNECTIONS: usize = 4;
const SECONDS: u64 = 10;
/// How close to the requested rate a fixed-rate run must come.
const QPS_TOLERANCE: f64 = 0.02;
/// Latency bucket unit (Fortio's `-r`) of both sides when ours can take it: 10 µs, since at
/// the default 1 ms every sub-millisecond call shares the first bucket.
const FINE_RESOLUTION: f64 = 0.00001;
const DEFAULT_RESOLUTION: f64 = 0.001;

/// The Fortio binary built by `testenv/setup.sh --with-load-bench`.
pub fn fortio_binary() -> Result<PathBuf> {
    let v = testenv::tools::version("FORTIO_VERSION");
    let path = testenv::tools::cache_dir().join(format!("fortio-{v}/bin/fortio"));
    if !path.is_file() {
        bail!(
            "Fortio {v} is not built ({} is missing); run `testenv/setup.sh --with-load-bench`",
            path.display()
        );
    }
    Ok(path)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Gen {
    Fortio,
    Ours,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    Fixed,
    Max,
}

impl Scenario {
    fn qps(self) -> f64 {
        match self {
            Scenario::Fixed => FIXED_QPS,
            Scenario::Max => 0.0,
        }
    }
}

/// Reads one figure.
type Metric = fn(&Figures) -> f64;

/// What one run gave.
#[derive(Clone, Debug, Default)]
struct Figures {
    qps: f64,
    calls: i64,
    errors: i64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn of(r: &HttpRunnerResults) -> Figures {
        let h = &r.duration_histogram;
        Figures {
            qps: r.actual_qps,
            calls: h.count,
            errors: r.errors_duration_histogram.count,
            p50_ms: h.percentile(50.0) * 1000.0,
            p90_ms: h.percentile(90.0) * 1000.0,
            p99_ms: h.percentile(99.0) * 1000.0,
        }
    }
}

/// The target: `fortio server` on CPU 0; killed when dropped.
struct Target {
    child: Child,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target {
    fn start(fortio: &Path, port: u16, dir: &Path) -> Result<Target> {
        let log = std::fs::File::create(dir.join("fortio-server.log"))?;
        let child = Command::new("taskset")
            .args(["-c", "0"])
            .arg(fortio)
            .args(["server", "-loglevel", "warning", "-http-port"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-grpc-port", "disabled", "-redirect-port", "disabled"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting fortio server")?;
        Ok(Target { child })
    }

    async fn wait_answering(&mut self, url: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("fortio server exited early with {status}");
            }
            match http::fetch_payload(url).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("fortio server does not answer {url} within 30 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Whether our binary has `iter8 load http`, and whether that takes `--resolution`.
fn load_cli(ours: &Path) -> Option<bool> {
    let out = Command::new(ours)
        .args(["load", "http", "--help"])
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).contains("--resolution"))
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn fortio_run(
    fortio: &Path,
    url: &str,
    s: Scenario,
    resolution: f64,
    out: &Path,
) -> Result<HttpRunnerResults> {
    run_checked(
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(fortio)
            .args(["load", "-loglevel", "warning", "-qps"])
            .arg(s.qps().to_string())
            .args(["-c", &CONNECTIONS.to_string(), "-t", &format!("{SECONDS}s")])
            .args(["-p", "50,90,99", "-r", &resolution.to_string(), "-json"])
            .arg(out)
            .arg(url),
        "fortio load",
    )?;
    HttpRunnerResults::from_value(&read_json(out)?).context("Fortio's JSON")
}

fn cli_run(
    ours: &Path,
    url: &str,
    s: Scenario,
    resolution: f64,
    out: &Path,
) -> Result<HttpRunnerResults> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"])
        .arg(ours)
        .args(["load", "http", "--url", url, "--qps"])
        .arg(match s {
            Scenario::Max => "max".to_string(),
            Scenario::Fixed => s.qps().to_string(),
        })
        .args(["--connections", &CONNECTIONS.to_string()])
        .args(["--duration", &format!("{SECONDS}s"), "--output"])
        .arg(out);
    if resolution != DEFAULT_RESOLUTION {
        cmd.args(["--resolution", &resolution.to_string()]);
    }
    run_checked(&mut cmd, "iter8 load http")?;
    let result = read_json(out)?;
    let endpoint = result
        .pointer("/insights/taskData/http")
        .and_then(Value::as_object)
        .and_then(|m| m.values().next())
        .ok_or_else(|| anyhow!("{} has no insights.taskData.http result", out.display()))?;
    HttpRunnerResults::from_value(endpoint).context("our Fortio-shaped JSON")
}

/// Pins the calling thread (and the threads it starts afterwards) to `cpus`.
fn pin_this_thread(cpus: &str) -> Result<()> {
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .ok_or_else(|| anyhow!("no thread id in {}", link.display()))?
        .to_string();
    run_checked(
        Command::new("taskset").args(["-p", "-c", cpus, &tid]),
        "taskset",
    )
}

/// Our engine in this process (when the binary lacks `load http`): on a thread of its own
/// pinned to CPU 1, with a one-worker runtime, as `iter8` started under `taskset -c 1` has.
async fn library_run(url: &str, s: Scenario, resolution: f64) -> Result<HttpRunnerResults> {
    let opts = HttpOptions {
        url: url.to_string(),
        qps: s.qps(),
        connections: CONNECTIONS,
        duration: Some(Duration::from_secs(SECONDS)),
        resolution,
        ..HttpOptions::default()
    };
    let thread = std::thread::spawn(move || -> Result<HttpRunnerResults> {
        pin_this_thread("1")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(rt.block_on(http::run(&opts))?.fortio_results())
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow!("the load thread panicked"))?
}

fn median_range(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

fn cell(v: &[f64], decimals: usize) -> String {
    let (m, lo, hi) = median_range(v);
    if v.len() == 1 {
        format!("{m:.decimals$}")
    } else {
        format!("{m:.decimals$} ({lo:.decimals$}–{hi:.decimals$})")
    }
}

fn ratio(ours: &[f64], fortio: &[f64]) -> String {
    let (o, _, _) = median_range(ours);
    let (f, _, _) = median_range(fortio);
    if f == 0.0 || !f.is_finite() || !o.is_finite() {
        return "—".into();
    }
    format!("{:.2}x", o / f)
}

/// Runs the comparison and returns it as a Markdown table. `ours` is our `iter8` binary,
/// `fortio` the `fortio` binary (see [`fortio_binary`]).
pub async fn run(ours: &Path, fortio: &Path, rounds: usize) -> Result<String> {
    let rounds = rounds.max(1);
    let dir = std::env::temp_dir().join(format!("bench-load-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}/echo");
    let mut target = Target::start(fortio, port, &dir)?;
    target.wait_answering(&url).await?;
    let caps = load_cli(ours);
    let cli = caps.is_some();
    // Both sides bucket latencies alike: finely unless our CLI cannot be told to.
    let resolution = if caps == Some(false) {
        DEFAULT_RESOLUTION
    } else {
        FINE_RESOLUTION
    };
    eprintln!(
        "load-http: target {url}; ours via {}; latency buckets of {} µs",
        if cli {
            "iter8 load http"
        } else {
            "the library in-process (no `iter8 load http` yet)"
        },
        resolution * 1e6
    );

    let mut fortio_version = String::new();
    // [scenario][gen] → figures per round.
    let mut figures: Vec<[Vec<Figures>; 2]> = vec![Default::default(), Default::default()];
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Gen::Fortio, Gen::Ours]
        } else {
            [Gen::Ours, Gen::Fortio]
        };
        for (si, s) in [Scenario::Fixed, Scenario::Max].into_iter().enumerate() {
            for g in order {
                let out = dir.join(format!("{g:?}-{s:?}-{round}.json").to_lowercase());
                let r = match g {
                    Gen::Fortio => fortio_run(fortio, &url, s, resolution, &out)?,
                    Gen::Ours if cli => cli_run(ours, &url, s, resolution, &out)?,
                    Gen::Ours => library_run(&url, s, resolution).await?,
                };
                if g == Gen::Fortio {
                    fortio_version = r.version.clone();
                }
                let f = Figures::of(&r);
                eprintln!(
                    "load-http: round {round} {s:?} {g:?}: {:.1} qps, {} calls, {} errors, p50 {:.3} ms, p99 {:.3} ms",
                    f.qps, f.calls, f.errors, f.p50_ms, f.p99_ms
                );
                figures[si][g as usize].push(f);
            }
        }
    }
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);

    let col = |si: usize, g: Gen, f: Metric| -> Vec<f64> {
        figures[si][g as usize].iter().map(f).collect()
    };
    let mut s = format!(
        "| scenario | metric | Fortio {fortio_version} | ours | ours ÷ Fortio |\n|---|---|---:|---:|---:|\n"
    );
    let mut row = |scenario: &str, metric: &str, f: Vec<f64>, o: Vec<f64>, decimals: usize| {
        s.push_str(&format!(
            "| {scenario} | {metric} | {} | {} | {} |\n",
            cell(&f, decimals),
            cell(&o, decimals),
            ratio(&o, &f)
        ));
    };
    let fixed = format!("{FIXED_QPS} qps, {CONNECTIONS} connections, {SECONDS} s");
    let max = format!("max rate, {CONNECTIONS} connections, {SECONDS} s");
    let metrics: [(&str, Metric, usize); 4] = [
        ("p50 latency (ms)", |f| f.p50_ms, 3),
        ("p90 latency (ms)", |f| f.p90_ms, 3),
        ("p99 latency (ms)", |f| f.p99_ms, 3),
        ("errors", |f| f.errors as f64, 0),
    ];
    row(
        &fixed,
        "achieved QPS",
        col(0, Gen::Fortio, |f| f.qps),
        col(0, Gen::Ours, |f| f.qps),
        1,
    );
    for (name, f, d) in metrics {
        row(
            &fixed,
            name,
            col(0, Gen::Fortio, f),
            col(0, Gen::Ours, f),
            d,
        );
    }
    row(
        &max,
        "throughput (QPS)",
        col(1, Gen::Fortio, |f| f.qps),
        col(1, Gen::Ours, |f| f.qps),
        0,
    );
    for (name, f, d) in metrics {
        row(&max, name, col(1, Gen::Fortio, f), col(1, Gen::Ours, f), d);
    }
    let within = |g: Gen| {
        figures[0][g as usize]
            .iter()
            .all(|f| (f.qps - FIXED_QPS).abs() <= QPS_TOLERANCE * FIXED_QPS)
    };
    s.push_str(&format!(
        "\nFixed rate within {:.0}% of {FIXED_QPS} qps in every round: Fortio {}, ours {}. \
         Medians over {rounds} round(s) (min–max); target `fortio server` on CPU 0, generators on CPU 1; \
         percentiles by Fortio's interpolation within its buckets ({} µs) on both sides; \
         ours {}.\n",
        QPS_TOLERANCE * 100.0,
        if within(Gen::Fortio) { "yes" } else { "NO" },
        if within(Gen::Ours) { "yes" } else { "NO" },
        resolution * 1e6,
        if cli {
            "through `iter8 load http`"
        } else {
            "through the library in the benchmark process (a one-worker runtime on CPU 1)"
        },
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median_range(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_range(&[4.0, 1.0]), (2.5, 1.0, 4.0));
        assert_eq!(cell(&[1.0, 2.0, 3.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(cell(&[1.0], 1), "1.0");
        assert_eq!(ratio(&[2.0], &[1.0]), "2.00x");
    }
}
