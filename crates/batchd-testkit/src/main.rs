//! `batchd-fake`: the fake OpenAI-compatible server as a process, for benchmarks and scripts.
//! Prints `listening on http://127.0.0.1:PORT/v1` once bound, serves until SIGTERM or ctrl-c.

use std::net::SocketAddr;

use batchd_testkit::{FakeConfig, FakeServer, process};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "batchd-fake",
    about = "A fake OpenAI-compatible model server (dev only)."
)]
struct Args {
    /// Port on 127.0.0.1; 0 lets the OS pick.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Worker threads; 1 leaves the other cores to the system under test.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Fixed latency of every successful answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Plus a uniform random 0..=jitter.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Fraction of requests answered 429 (likewise for the other rates).
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    rate_429: f64,
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    rate_500: f64,
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    rate_503: f64,
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    rate_400: f64,
    /// Sent as `Retry-After` on 429 answers.
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// The first n requests answer 503.
    #[arg(long, default_value_t = 0)]
    fail_first_n: u64,
    /// Fixed reply text instead of the echo.
    #[arg(long)]
    reply: Option<String>,
    /// Answer 400 to requests whose prompt contains this marker.
    #[arg(long)]
    fail_when_prompt_contains: Option<String>,
    /// Requests beyond this many in progress answer 429.
    #[arg(long)]
    capacity: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::block_on(args.threads, run(args))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = FakeConfig {
        latency_ms: args.latency_ms,
        latency_jitter_ms: args.latency_jitter_ms,
        rate_429: args.rate_429,
        rate_500: args.rate_500,
        rate_503: args.rate_503,
        rate_400: args.rate_400,
        retry_after_secs: args.retry_after_secs,
        fail_first_n: args.fail_first_n,
        reply: args.reply,
        fail_when_prompt_contains: args.fail_when_prompt_contains,
        capacity: args.capacity,
    };
    let server = FakeServer::bind(SocketAddr::from(([127, 0, 0, 1], args.port)), config).await?;
    process::announce(&[format!("listening on {}", server.base_url())])?;
    process::wait_for_stop_signal().await?;
    server.shutdown().await;
    Ok(())
}
