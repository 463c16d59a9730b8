//! `batchd-fake`: the fake OpenAI-compatible server as a process, for benchmarks and scripts.
//! Prints `listening on http://127.0.0.1:PORT/v1` once bound, serves until SIGTERM or ctrl-c.

use batchd_testkit::{FakeConfig, FakeServer, process};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "batchd-fake",
    about = "A fake OpenAI-compatible model server (dev only)."
)]
struct Args {
    #[command(flatten)]
    listen: process::Listen,
    /// Worker threads; 1 leaves the other cores to the system under test.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    config: FakeConfig,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::block_on(args.threads, run(args))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let server = FakeServer::bind(args.listen.addr(), args.config).await?;
    process::announce(&[format!("listening on {}", server.base_url())])?;
    process::wait_for_stop_signal().await?;
    server.shutdown().await;
    Ok(())
}
