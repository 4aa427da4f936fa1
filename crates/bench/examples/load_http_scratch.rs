//! Temporary runner of bench::load_http (to be removed; main.rs wiring is the CLI owner's).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let ours = std::path::PathBuf::from(&args[1]);
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    let fortio = bench::load_http::fortio_binary()?;
    println!("{}", bench::load_http::run(&ours, &fortio, rounds).await?);
    Ok(())
}
