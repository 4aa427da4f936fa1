//! Temporary: our engine alone at max rate (to be removed).
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args[1].clone();
    let workers: usize = args[2].parse()?;
    let qps: f64 = args.get(3).and_then(|q| q.parse().ok()).unwrap_or(0.0);
    let rt = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    let opts = iter8_load::http::HttpOptions {
        url,
        qps,
        connections: 4,
        duration: Some(std::time::Duration::from_secs(5)),
        ..Default::default()
    };
    let run = rt.block_on(iter8_load::http::run(&opts))?;
    let h = run.durations.export();
    println!(
        "qps {:.0} calls {} p50 {:.3} p99 {:.3} behind {}",
        run.actual_qps,
        run.requests,
        h.percentile(50.0) * 1e3,
        h.percentile(99.0) * 1e3,
        run.behind_schedule
    );
    Ok(())
}
