//! Black-box tests of the `batchd` binary, in one test binary: one link of the test
//! dependencies, not one per file. Each module is one area (they were
//! separate `tests/*.rs` binaries); new black-box tests go here as modules too. The test
//! environment (config, temp dir, `run`/`serve`, output readers) is `batchd_testkit::harness`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod adaptive;
mod batch_jobs;
mod cli_bedrock;
mod cli_formats;
mod cli_run;
mod cli_s3;
mod crash;
mod crash_run;
mod openai_files;
mod real_server;
mod results;

use batchd_testkit::harness::{Config, TestEnv};

/// The binary under test.
const BATCHD: &str = env!("CARGO_BIN_EXE_batchd");
/// The Bedrock model id most tests configure.
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// A test environment for the binary under test with `config` as its `batchd.toml`.
fn test_env(config: &Config) -> TestEnv {
    TestEnv::new(BATCHD, config)
}
