//! `bench --apps N --candidates M`: the floor (the least a controller can do), our controller
//! and the original Iter8 v1.1.2 controller, side by side, on a real control plane. Prints
//! Markdown. See the library docs and BENCHMARKS.md. `bench floor` (hidden) is the floor
//! itself, which the benchmark starts as a process of its own.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use bench::{Kind, Settings};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "Benchmark our controller against the floor and the original Iter8 v1.1.2 controller",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
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
    /// Contenders, in run order: any of floor, ours, original, comma-separated.
    #[arg(long, visible_alias = "order", default_value = "floor,ours,original")]
    contenders: String,
    /// Routing: how many times each contender runs (interleaved); the table reports medians
    /// and spreads, and each ratio is the median of the ratios within each round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
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

#[derive(Subcommand)]
enum Cmd {
    /// The floor: watches InferenceServices and applies precomputed VirtualServices (run by
    /// the benchmark as a contender of its own).
    #[command(hide = true)]
    Floor {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        namespace: String,
    },
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(Cmd::Floor {
        kubeconfig,
        namespace,
    }) = args.command.take()
    {
        return bench::floor::main(&kubeconfig, &namespace);
    }
    tokio::runtime::Runtime::new()?.block_on(bench_main(args))
}

async fn bench_main(args: Args) -> Result<()> {
    let ours = args.ours.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/iter8")
    });
    if !ours.exists() {
        bail!(
            "our controller {} is missing; run `cargo build --release -p iter8` (or set ITER8_BIN)",
            ours.display()
        );
    }
    let order = bench::parse_contenders(&args.contenders)?;
    let needs_original = args.abn || (!args.load && order.contains(&Kind::Original));
    let original = match args.original {
        Some(p) => p,
        None if needs_original => bench::original_binary()?,
        // Not run: any path.
        None => PathBuf::from("iter8-original"),
    };
    // The controllers run in folders of their own: absolute paths.
    let ours = std::fs::canonicalize(&ours)?;
    let original = if needs_original {
        std::fs::canonicalize(&original)?
    } else {
        original
    };
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
    // The floor is this very binary's hidden subcommand.
    let floor = std::env::current_exe()?;
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
        floor,
        timeout: Duration::from_secs(args.timeout),
        restart: !args.no_restart,
        original_env,
        order,
        rounds: args.rounds,
    };
    eprintln!("starting the control plane ...");
    let cp = testenv::ControlPlane::start(testenv::Options::default()).await?;
    let reports = bench::run(&cp, &settings).await?;
    println!(
        "### {} apps, {} candidates{}{}\n",
        settings.apps,
        settings.candidates,
        if settings.rounds > 1 {
            format!(", {} rounds", settings.rounds)
        } else {
            String::new()
        },
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
