//! `batchd-fake-bedrock`: the fake bedrock-runtime (SigV4-checking Converse and InvokeModel) as
//! a process, for scripts and the Python tests. Prints `listening on http://127.0.0.1:PORT` as
//! its first line once bound, serves until SIGTERM or ctrl-c. Sign requests with the access key
//! and secret printed on the next lines (or the ones given with `--access-key-id` and
//! `--secret-access-key`).

use batchd_testkit::fake_bedrock::{FakeBedrock, FakeBedrockConfig};
use batchd_testkit::process;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "batchd-fake-bedrock",
    about = "A fake bedrock-runtime that checks SigV4 signatures (dev only)."
)]
struct Args {
    #[command(flatten)]
    listen: process::Listen,
    #[command(flatten)]
    config: FakeBedrockConfig,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::block_on(1, run(args))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config;
    let (key, secret) = (
        config.access_key_id.clone(),
        config.secret_access_key.clone(),
    );
    let server = FakeBedrock::bind(args.listen.addr(), config).await?;
    process::announce(&[
        format!("listening on {}", server.url()),
        format!("AWS_ACCESS_KEY_ID={key}"),
        format!("AWS_SECRET_ACCESS_KEY={secret}"),
    ])?;
    process::wait_for_stop_signal().await?;
    server.shutdown().await;
    Ok(())
}
