//! `batchd run` with a `backend = "bedrock"` model: the real binary signs each record's call
//! with SigV4 and the fake bedrock-runtime checks every signature and answers Converse and
//! InvokeModel (Anthropic) bodies.

use std::path::{Path, PathBuf};
use std::process::Output;

use batchd_testkit::fake_bedrock::{
    ACCESS_KEY_ID, FakeBedrock, FakeBedrockConfig, SECRET_ACCESS_KEY, expected_reply,
};
use batchd_testkit::harness::{
    Config, Model, TestEnv, assert_counts, describe, manifest, read_jsonl, shared_data,
};
use serde_json::Value;

use crate::{MODEL, test_env};

/// A config naming the fake as the bedrock endpoint of `MODEL`, and only these credentials:
/// nothing from the machine's own AWS setup.
fn env_for(fake: &FakeBedrock, secret: &str) -> TestEnv {
    let env = test_env(
        &Config::new()
            .backoff_ms(1, 20)
            .model(Model::bedrock(MODEL, fake, "us-east-1").max_concurrency(4)),
    );
    let home = env.root().to_owned();
    env.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("HOME", home)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("AWS_CONFIG_FILE")
}

/// Runs `batchd run` over `input` into `<dir>/<out>` and returns the job's output folder.
async fn run(env: &TestEnv, input: &Path, out: &str, extra: &[&str]) -> (Output, Option<PathBuf>) {
    let mut args = vec!["--quiet"];
    args.extend_from_slice(extra);
    env.run(&[input], MODEL, out, &args).await
}

/// Runs `batchd run` over the shared `input` and checks every output line against its input
/// line with `check`, which returns the line's (input, output) tokens; the manifest must count
/// every line a success and sum those tokens. Returns the number of lines.
async fn run_and_check(
    env: &TestEnv,
    input: &str,
    extra: &[&str],
    check: impl Fn(&Value, &Value) -> (u64, u64),
) -> usize {
    let out = format!("out-{input}");
    let input_path = shared_data(input);
    let (out, job_dir) = run(env, &input_path, &out, extra).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job_dir = job_dir.unwrap();
    let inputs = read_jsonl(&input_path);
    let outputs = read_jsonl(&job_dir.join(format!("{input}.out")));
    assert_eq!(inputs.len(), outputs.len());
    let (mut tokens_in, mut tokens_out) = (0, 0);
    for (i, o) in inputs.iter().zip(&outputs) {
        assert_eq!(o["recordId"], i["recordId"]);
        assert_eq!(o["modelInput"], i["modelInput"]);
        let (t_in, t_out) = check(&i["modelInput"], o);
        tokens_in += t_in;
        tokens_out += t_out;
    }
    let m = manifest(&job_dir);
    assert_counts(&m, inputs.len(), 0);
    assert_eq!(m["inputTokenCount"], tokens_in);
    assert_eq!(m["outputTokenCount"], tokens_out);
    inputs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_and_invoke_model_records_run_through_signed_bedrock_calls() {
    let fake = FakeBedrock::start(FakeBedrockConfig {
        region: Some("us-east-1".into()),
        ..FakeBedrockConfig::default()
    })
    .await
    .unwrap();
    let env = env_for(&fake, SECRET_ACCESS_KEY);

    // Converse records.
    let records = run_and_check(&env, "converse-basic.jsonl", &[], |i, o| {
        assert!(o.get("error").is_none(), "{o}");
        let m = &o["modelOutput"];
        let max = i["inferenceConfig"]["maxTokens"].as_u64();
        let expected = expected_reply(&i["messages"], max).unwrap();
        assert_eq!(
            m["output"]["message"]["content"][0]["text"], expected,
            "{o}"
        );
        let usage = &m["usage"];
        (
            tokens(&usage["inputTokens"]),
            tokens(&usage["outputTokens"]),
        )
    })
    .await;
    let stats = fake.stats();
    assert_eq!(stats.converse, records as u64, "{stats:?}");
    assert_eq!(stats.rejected_signatures, 0, "{stats:?}");

    // InvokeModel records in Anthropic's Messages format; token counts from the headers.
    fake.reset_stats();
    let extra = ["--invocation-type", "invoke-model"];
    let records = run_and_check(&env, "invoke-anthropic.jsonl", &extra, |i, o| {
        let m = &o["modelOutput"];
        assert_eq!(m["type"], "message", "{o}");
        assert_eq!(m["role"], "assistant");
        let expected = expected_reply(&i["messages"], i["max_tokens"].as_u64()).unwrap();
        assert_eq!(m["content"][0]["text"], expected, "{o}");
        let usage = &m["usage"];
        (
            tokens(&usage["input_tokens"]),
            tokens(&usage["output_tokens"]),
        )
    })
    .await;
    let stats = fake.stats();
    assert_eq!(stats.invoke, records as u64, "{stats:?}");
    assert_eq!(stats.rejected_signatures, 0, "{stats:?}");
}

fn tokens(count: &Value) -> u64 {
    count.as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_records_are_retried_and_succeed() {
    let fake = FakeBedrock::start(FakeBedrockConfig {
        throttle_first_n: 3,
        ..FakeBedrockConfig::default()
    })
    .await
    .unwrap();
    let env = env_for(&fake, SECRET_ACCESS_KEY);
    let input = shared_data("converse-basic.jsonl");
    let (out, job_dir) = run(&env, &input, "out", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let m = manifest(&job_dir.unwrap());
    let records = read_jsonl(&input).len();
    assert_counts(&m, records, 0);
    let stats = fake.stats();
    assert_eq!(stats.throttled, 3, "{stats:?}");
    assert_eq!(stats.ok, records as u64, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_gives_error_lines_without_retries() {
    let fake = FakeBedrock::start(FakeBedrockConfig::default())
        .await
        .unwrap();
    let env = env_for(&fake, "not-the-secret");
    let input = shared_data("converse-basic.jsonl");
    let (out, job_dir) = run(&env, &input, "out", &[]).await;
    let job_dir = job_dir.unwrap_or_else(|| panic!("{}", describe(&out)));
    let lines = read_jsonl(&job_dir.join("converse-basic.jsonl.out"));
    for line in &lines {
        assert!(line.get("modelOutput").is_none(), "{line}");
        assert_eq!(line["error"]["errorCode"], 403, "{line}");
        let message = line["error"]["errorMessage"].as_str().unwrap();
        assert!(message.contains("InvalidSignatureException"), "{line}");
    }
    let stats = fake.stats();
    assert_eq!(stats.rejected_signatures, lines.len() as u64, "{stats:?}");
    assert_eq!(stats.requests, lines.len() as u64, "not retried: {stats:?}");
    assert_eq!(manifest(&job_dir)["errorRecordCount"], lines.len());
}
