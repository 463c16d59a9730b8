//! `batchd run` against a real OpenAI-compatible server: llama.cpp's `llama-server` serving the
//! SmolLM2-135M-Instruct GGUF, built and started by `scripts/model-server.sh`.
//!
//! `scripts/test.sh` starts the server and sets `BATCHD_REAL_SERVER_URL` (its `/v1` base URL).
//! Without that variable the test starts a server of its own through the script when
//! llama-server is already built (`start --no-install`; building it takes minutes), and stops it
//! at the end. With no server to be had it prints why and passes, unless `CI` is set: then it
//! fails. Traffic goes to 127.0.0.1 only.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use batchd_testkit::harness::{
    Config, Model, assert_counts, describe, first_entry, manifest, read_jsonl, repo_root,
};
use batchd_testkit::skip_unless_ci;
use serde_json::Value;

use crate::test_env;

/// The Bedrock model id the records are run as, and the alias llama-server serves.
const MODEL_ID: &str = "smollm2-135m-instruct";
const STOP_REASONS: [&str; 3] = ["end_turn", "max_tokens", "stop_sequence"];

/// A running llama-server: one that scripts/test.sh started, or one this test started (and
/// stops on drop, through the script, from its own run dir).
struct RealServer {
    base_url: String,
    own_run_dir: Option<tempfile::TempDir>,
}

impl RealServer {
    /// The server, or why there is none.
    fn get() -> Result<Self, String> {
        if let Ok(url) = std::env::var("BATCHD_REAL_SERVER_URL")
            && !url.is_empty()
        {
            assert!(
                url.starts_with("http://127.0.0.1:"),
                "BATCHD_REAL_SERVER_URL must be a loopback URL, got {url}"
            );
            return Ok(Self {
                base_url: url,
                own_run_dir: None,
            });
        }
        let run_dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let out = script(run_dir.path(), &["start", "--no-install"]);
        if !out.status.success() {
            return Err(format!(
                "BATCHD_REAL_SERVER_URL is unset and scripts/model-server.sh start --no-install \
                 failed ({:?}); run scripts/model-server.sh install, or scripts/test.sh\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let base_url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        eprintln!(
            "real_server: started llama-server at {base_url} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            base_url,
            own_run_dir: Some(run_dir),
        })
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.own_run_dir {
            let out = script(dir.path(), &["stop"]);
            if !out.status.success() {
                eprintln!(
                    "real_server: stopping llama-server failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// `bash scripts/model-server.sh ARGS` with its run state in `run_dir`.
fn script(run_dir: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/model-server.sh"))
        .args(args)
        .env("BATCHD_MODEL_SERVER_RUN", run_dir)
        .output()
        .unwrap()
}

/// Checks one output line against its input record: the echoed input, a non-empty assistant
/// text, a Bedrock stop reason, token counts from the server, and `maxTokens` respected.
fn assert_real_success(out: &Value, input: &Value) {
    assert!(out.get("error").is_none(), "{out}");
    assert_eq!(out["modelInput"], input["modelInput"], "{out}");
    if let Some(id) = input.get("recordId") {
        assert_eq!(&out["recordId"], id);
    } else {
        assert!(
            out["recordId"].as_str().is_some_and(|s| !s.is_empty()),
            "a generated recordId: {out}"
        );
    }
    let m = &out["modelOutput"];
    assert_eq!(m["output"]["message"]["role"], "assistant", "{out}");
    let text = m["output"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no assistant text: {out}"));
    assert!(!text.trim().is_empty(), "empty assistant text: {out}");
    let stop = m["stopReason"].as_str().unwrap();
    assert!(STOP_REASONS.contains(&stop), "stopReason {stop}: {out}");
    let usage = &m["usage"];
    let (i, o, t) = (
        usage["inputTokens"].as_u64().unwrap(),
        usage["outputTokens"].as_u64().unwrap(),
        usage["totalTokens"].as_u64().unwrap(),
    );
    assert!(i > 0 && o > 0, "usage {usage}");
    assert_eq!(t, i + o, "usage {usage}");
    let max = input["modelInput"]["inferenceConfig"]["maxTokens"]
        .as_u64()
        .unwrap();
    assert!(o <= max, "{o} output tokens for maxTokens {max}: {out}");
    if stop == "max_tokens" {
        assert_eq!(o, max, "max_tokens before maxTokens: {out}");
    }
    assert!(m["metrics"]["latencyMs"].is_u64(), "{out}");
}

#[test]
fn converse_records_run_through_llama_server() {
    let server = match RealServer::get() {
        Ok(server) => server,
        Err(why) => {
            skip_unless_ci(&why, "CI must start the server: scripts/test.sh does");
            return;
        }
    };
    let env = test_env(
        &Config::new().model(
            Model::openai(MODEL_ID, &server.base_url)
                .set("model", MODEL_ID)
                .max_concurrency(4),
        ),
    );
    // Seven Converse records: system prompts, a multi-turn conversation, stop sequences, topP,
    // temperatures, a record without a recordId, and one whose maxTokens (8) cuts it short.
    let input = repo_root().join("examples/converse-demo.jsonl");
    let out_dir = env.path("out");

    let started = Instant::now();
    let output = env
        .std_command(&[
            "run",
            input.to_str().unwrap(),
            "--model-id",
            MODEL_ID,
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", describe(&output));

    let job_dir = first_entry(&out_dir).unwrap();
    let inputs = read_jsonl(&input);
    let outputs = read_jsonl(&job_dir.join("converse-demo.jsonl.out"));
    assert_eq!(outputs.len(), inputs.len(), "one output line per record");
    for (out, input) in outputs.iter().zip(&inputs) {
        assert_real_success(out, input);
    }
    let manifest = manifest(&job_dir);
    let n = inputs.len();
    assert_counts(&manifest, n, 0);
    let output_tokens: u64 = outputs
        .iter()
        .map(|o| o["modelOutput"]["usage"]["outputTokens"].as_u64().unwrap())
        .sum();
    eprintln!(
        "real_server: {n} records, {output_tokens} output tokens in {:.1} s through {}",
        elapsed.as_secs_f64(),
        server.base_url
    );
}
