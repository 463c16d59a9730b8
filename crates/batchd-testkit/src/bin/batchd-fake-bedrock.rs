//! `batchd-fake-bedrock`: the fake bedrock-runtime (SigV4-checking Converse and InvokeModel) as
//! a process, for scripts and the Python tests. Prints `listening on http://127.0.0.1:PORT` as
//! its first line once bound, serves until SIGTERM or ctrl-c. Sign requests with the access key
//! and secret printed on the next lines (or the ones given with `--access-key-id` and
//! `--secret-access-key`).

use std::net::SocketAddr;

use batchd_testkit::fake_bedrock::{FakeBedrock, FakeBedrockConfig};
use batchd_testkit::process;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "batchd-fake-bedrock",
    about = "A fake bedrock-runtime that checks SigV4 signatures (dev only)."
)]
struct Args {
    /// Port on 127.0.0.1; 0 lets the OS pick.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The access key id the fake accepts.
    #[arg(long)]
    access_key_id: Option<String>,
    /// Its secret.
    #[arg(long)]
    secret_access_key: Option<String>,
    /// Accept only signatures scoped to this region.
    #[arg(long)]
    region: Option<String>,
    /// Fraction of requests answered 429 ThrottlingException.
    #[arg(long, default_value_t = 0.0, value_parser = process::parse_rate)]
    throttle_rate: f64,
    /// The first n requests are throttled.
    #[arg(long, default_value_t = 0)]
    throttle_first_n: u64,
    /// Sent as `Retry-After` on throttled answers.
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// Every request fails with this error type (e.g. ValidationException).
    #[arg(long)]
    forced_error: Option<String>,
    /// A request whose body contains this marker fails with ValidationException.
    #[arg(long)]
    fail_when_prompt_contains: Option<String>,
    /// Latency of every successful answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::block_on(1, run(args))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let defaults = FakeBedrockConfig::default();
    let config = FakeBedrockConfig {
        access_key_id: args.access_key_id.unwrap_or(defaults.access_key_id),
        secret_access_key: args.secret_access_key.unwrap_or(defaults.secret_access_key),
        region: args.region,
        throttle_rate: args.throttle_rate,
        throttle_first_n: args.throttle_first_n,
        retry_after_secs: args.retry_after_secs,
        forced_error: args.forced_error,
        fail_when_prompt_contains: args.fail_when_prompt_contains,
        latency_ms: args.latency_ms,
    };
    let (key, secret) = (
        config.access_key_id.clone(),
        config.secret_access_key.clone(),
    );
    let server = FakeBedrock::bind(SocketAddr::from(([127, 0, 0, 1], args.port)), config).await?;
    process::announce(&[
        format!("listening on {}", server.url()),
        format!("AWS_ACCESS_KEY_ID={key}"),
        format!("AWS_SECRET_ACCESS_KEY={secret}"),
    ])?;
    process::wait_for_stop_signal().await?;
    server.shutdown().await;
    Ok(())
}
