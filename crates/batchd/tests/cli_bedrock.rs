//! Black-box tests of `batchd run` with a `backend = "bedrock"` model: the real binary signs
//! each record's call with SigV4 and the fake bedrock-runtime checks every signature and
//! answers Converse and InvokeModel (Anthropic) bodies.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Output;

use batchd_testkit::fake_bedrock::{
    ACCESS_KEY_ID, FakeBedrock, FakeBedrockConfig, SECRET_ACCESS_KEY,
};
use serde_json::Value;

const BATCHD: &str = env!("CARGO_BIN_EXE_batchd");
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

fn shared_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(name)
}

/// A temp dir with a config naming the fake as the bedrock endpoint of `MODEL`.
struct TestEnv {
    dir: tempfile::TempDir,
    secret: String,
}

impl TestEnv {
    fn new(fake: &FakeBedrock) -> Self {
        Self::with_secret(fake, SECRET_ACCESS_KEY)
    }

    fn with_secret(fake: &FakeBedrock, secret: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[engine]\nbackoff_base_ms = 1\nbackoff_max_ms = 20\n\n\
             [[models]]\nid = \"{MODEL}\"\nbackend = \"bedrock\"\nendpoint_url = \"{}\"\n\
             region = \"us-east-1\"\nmax_concurrency = 4\n",
            fake.url()
        );
        std::fs::write(dir.path().join("batchd.toml"), config).unwrap();
        Self {
            dir,
            secret: secret.to_owned(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `batchd run` over `input` into `<dir>/<out>` and returns the job's output folder.
    async fn run(&self, input: &Path, out: &str, extra: &[&str]) -> (Output, Option<PathBuf>) {
        let out_dir = self.path(out);
        let mut cmd = tokio::process::Command::new(BATCHD);
        cmd.arg("run")
            .arg(input)
            .args(["--model-id", MODEL, "--quiet", "--out"])
            .arg(&out_dir)
            .args(extra)
            .arg("--config")
            .arg(self.path("batchd.toml"))
            .arg("--data-dir")
            .arg(self.path("data"))
            // Only these credentials: nothing from the machine's own AWS setup.
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("HOME", self.dir.path())
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_CONFIG_FILE");
        let output = cmd.output().await.unwrap();
        let job_dir = std::fs::read_dir(&out_dir)
            .ok()
            .and_then(|mut entries| entries.next())
            .map(|e| e.unwrap().path());
        (output, job_dir)
    }
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn manifest(job_dir: &Path) -> Value {
    let text = std::fs::read_to_string(job_dir.join("manifest.json.out")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The text of the last user message of a Converse or Anthropic body, as the fake echoes it.
fn user_text(model_input: &Value) -> String {
    let messages = model_input["messages"].as_array().unwrap();
    let last = messages.iter().rev().find(|m| m["role"] == "user").unwrap();
    match &last["content"] {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        other => panic!("content {other}"),
    }
}

fn echo(text: &str, max_words: usize) -> String {
    let full = format!("echo: {text}");
    full.split_whitespace()
        .take(max_words)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converse_and_invoke_model_records_run_through_signed_bedrock_calls() {
    let fake = FakeBedrock::start(FakeBedrockConfig {
        region: Some("us-east-1".into()),
        ..FakeBedrockConfig::default()
    })
    .await
    .unwrap();
    let env = TestEnv::new(&fake);

    // Converse records.
    let input = shared_data("converse-basic.jsonl");
    let (out, job_dir) = env.run(&input, "out-converse", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job_dir = job_dir.unwrap();
    let inputs = read_lines(&input);
    let outputs = read_lines(&job_dir.join("converse-basic.jsonl.out"));
    assert_eq!(inputs.len(), outputs.len());
    let (mut tokens_in, mut tokens_out) = (0, 0);
    for (i, o) in inputs.iter().zip(&outputs) {
        assert_eq!(o["recordId"], i["recordId"]);
        assert_eq!(o["modelInput"], i["modelInput"]);
        assert!(o.get("error").is_none(), "{o}");
        let m = &o["modelOutput"];
        let max = i["modelInput"]["inferenceConfig"]["maxTokens"]
            .as_u64()
            .unwrap_or(u64::MAX);
        assert_eq!(
            m["output"]["message"]["content"][0]["text"],
            echo(&user_text(&i["modelInput"]), max as usize),
            "{o}"
        );
        tokens_in += m["usage"]["inputTokens"].as_u64().unwrap();
        tokens_out += m["usage"]["outputTokens"].as_u64().unwrap();
    }
    let m = manifest(&job_dir);
    assert_eq!(m["successRecordCount"], inputs.len());
    assert_eq!(m["errorRecordCount"], 0);
    assert_eq!(m["inputTokenCount"], tokens_in);
    assert_eq!(m["outputTokenCount"], tokens_out);
    let stats = fake.stats();
    assert_eq!(stats.converse, inputs.len() as u64, "{stats:?}");
    assert_eq!(stats.rejected_signatures, 0, "{stats:?}");

    // InvokeModel records in Anthropic's Messages format; token counts from the headers.
    fake.reset_stats();
    let input = shared_data("invoke-anthropic.jsonl");
    let (out, job_dir) = env
        .run(&input, "out-invoke", &["--invocation-type", "invoke-model"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job_dir = job_dir.unwrap();
    let inputs = read_lines(&input);
    let outputs = read_lines(&job_dir.join("invoke-anthropic.jsonl.out"));
    assert_eq!(inputs.len(), outputs.len());
    let (mut tokens_in, mut tokens_out) = (0, 0);
    for (i, o) in inputs.iter().zip(&outputs) {
        assert_eq!(o["recordId"], i["recordId"]);
        assert_eq!(o["modelInput"], i["modelInput"]);
        let m = &o["modelOutput"];
        assert_eq!(m["type"], "message", "{o}");
        assert_eq!(m["role"], "assistant");
        let max = i["modelInput"]["max_tokens"].as_u64().unwrap();
        assert_eq!(
            m["content"][0]["text"],
            echo(&user_text(&i["modelInput"]), max as usize),
            "{o}"
        );
        tokens_in += m["usage"]["input_tokens"].as_u64().unwrap();
        tokens_out += m["usage"]["output_tokens"].as_u64().unwrap();
    }
    let m = manifest(&job_dir);
    assert_eq!(m["successRecordCount"], inputs.len());
    assert_eq!(m["inputTokenCount"], tokens_in);
    assert_eq!(m["outputTokenCount"], tokens_out);
    let stats = fake.stats();
    assert_eq!(stats.invoke, inputs.len() as u64, "{stats:?}");
    assert_eq!(stats.rejected_signatures, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_records_are_retried_and_succeed() {
    let fake = FakeBedrock::start(FakeBedrockConfig {
        throttle_first_n: 3,
        ..FakeBedrockConfig::default()
    })
    .await
    .unwrap();
    let env = TestEnv::new(&fake);
    let input = shared_data("converse-basic.jsonl");
    let (out, job_dir) = env.run(&input, "out", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let m = manifest(&job_dir.unwrap());
    let records = read_lines(&input).len() as u64;
    assert_eq!(m["successRecordCount"], records, "{m}");
    let stats = fake.stats();
    assert_eq!(stats.throttled, 3, "{stats:?}");
    assert_eq!(stats.ok, records, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_gives_error_lines_without_retries() {
    let fake = FakeBedrock::start(FakeBedrockConfig::default())
        .await
        .unwrap();
    let env = TestEnv::with_secret(&fake, "not-the-secret");
    let input = shared_data("converse-basic.jsonl");
    let (out, job_dir) = env.run(&input, "out", &[]).await;
    let job_dir = job_dir.unwrap_or_else(|| panic!("{}", describe(&out)));
    let lines = read_lines(&job_dir.join("converse-basic.jsonl.out"));
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
