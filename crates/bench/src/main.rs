//! `bench --apps N --candidates M`: our controller against the original Iter8 v1.1.2 controller,
//! side by side, on a real control plane. Prints Markdown. See the library docs and
//! BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use bench::{Kind, Settings};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark our controller against the original Iter8 v1.1.2 controller")]
struct Args {
    /// Number of applications (two InferenceServices and a routemap each).
    #[arg(long, default_value_t = 100)]
    apps: usize,
    /// Number of candidates made Ready one by one.
    #[arg(long, default_value_t = 50)]
    candidates: usize,
    /// Our iter8 binary (default: target/release/iter8 of this workspace).
    #[arg(long, env = "ITER8_BIN")]
    ours: Option<PathBuf>,
    /// The original controller (default: the cache of `testenv/setup.sh --with-original`).
    #[arg(long, env = "ITER8_ORIGINAL_BIN")]
    original: Option<PathBuf>,
    /// Give up waiting for convergence after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Skip the no-change restart phase.
    #[arg(long)]
    no_restart: bool,
    /// Lift the original's client-side throttle (client-go's 5 QPS default, burst 100 from
    /// Helm's settings) by setting HELM_QPS / HELM_BURST_LIMIT to this value.
    #[arg(long)]
    original_qps: Option<u32>,
    /// Run order: ours,original (alternating), or original,ours, or one of them.
    #[arg(long, default_value = "ours,original")]
    order: String,
    /// Benchmark the A/B/n service (Lookup, WriteMetric) instead of routing.
    #[arg(long)]
    abn: bool,
    /// Benchmark the load generators (HTTP against Fortio, gRPC against ghz) instead of
    /// routing.
    #[arg(long)]
    load: bool,
    /// Load: rounds per generator and scenario (medians reported).
    #[arg(long, default_value_t = 3)]
    load_rounds: usize,
    /// A/B/n: rounds per server (medians reported).
    #[arg(long, default_value_t = 3)]
    abn_rounds: usize,
    /// A/B/n: seconds of load per method and round.
    #[arg(long, default_value_t = 10)]
    abn_seconds: u64,
    /// A/B/n: concurrent client calls.
    #[arg(long, default_value_t = 8)]
    abn_concurrency: usize,
    /// A/B/n: distinct users the load cycles through.
    #[arg(long, default_value_t = 10000)]
    abn_users: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ours = args.ours.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/iter8")
    });
    if !ours.exists() {
        bail!(
            "our controller {} is missing; run `cargo build --release -p iter8` (or set ITER8_BIN)",
            ours.display()
        );
    }
    let original = match args.original {
        Some(p) => p,
        None => bench::original_binary()?,
    };
    // The controllers run in folders of their own: absolute paths.
    let ours = std::fs::canonicalize(&ours)?;
    let original = std::fs::canonicalize(&original)?;
    if args.load {
        let fortio = bench::load_http::fortio_binary()?;
        let ghz = bench::load_grpc::ghz_binary()?;
        println!("### Load generators: HTTP (ours vs Fortio), gRPC (ours vs ghz)\n");
        println!("Machine: {}\n", bench::machine());
        println!(
            "{}",
            bench::load_http::run(&ours, &fortio, args.load_rounds).await?
        );
        println!(
            "{}",
            bench::load_grpc::run(&ours, &ghz, args.load_rounds).await?
        );
        return Ok(());
    }
    if args.abn {
        let settings = bench::abn::AbnSettings {
            ours,
            original,
            client: testenv::tools::abn_go_client()?,
            rounds: args.abn_rounds,
            duration: Duration::from_secs(args.abn_seconds),
            concurrency: args.abn_concurrency,
            users: args.abn_users,
        };
        eprintln!("starting the control plane ...");
        let cp = testenv::ControlPlane::start(testenv::Options::default()).await?;
        let report = bench::abn::run(&cp, &settings).await?;
        println!(
            "### A/B/n service: {} concurrent calls, {} users, {} s per run, {} rounds\n",
            settings.concurrency,
            settings.users,
            settings.duration.as_secs(),
            settings.rounds
        );
        println!("Machine: {}\n", bench::machine());
        println!("{}", bench::abn::markdown(&report));
        return Ok(());
    }
    let mut order = Vec::new();
    for k in args.order.split(',') {
        order.push(match k.trim() {
            "ours" => Kind::Ours,
            "original" => Kind::Original,
            other => bail!("unknown controller {other:?} in --order"),
        });
    }
    let mut original_env = Vec::new();
    if let Some(q) = args.original_qps {
        original_env.push(("HELM_QPS".to_string(), q.to_string()));
        original_env.push(("HELM_BURST_LIMIT".to_string(), q.to_string()));
    }
    let settings = Settings {
        apps: args.apps,
        candidates: args.candidates.min(args.apps),
        ours,
        original,
        timeout: Duration::from_secs(args.timeout),
        restart: !args.no_restart,
        original_env,
        order,
    };
    eprintln!("starting the control plane ...");
    let cp = testenv::ControlPlane::start(testenv::Options::default()).await?;
    let reports = bench::run(&cp, &settings).await?;
    println!(
        "### {} apps, {} candidates{}\n",
        settings.apps,
        settings.candidates,
        args.original_qps
            .map(|q| format!(", original with HELM_QPS={q}"))
            .unwrap_or_default()
    );
    println!("Machine: {}\n", bench::machine());
    println!("{}", bench::markdown(&reports));
    println!(
        "Requests by verb and resource:\n\n{}",
        bench::breakdown(&reports)
    );
    Ok(())
}
