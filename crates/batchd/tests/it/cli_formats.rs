//! InvokeModel bodies: every family's file in `shared/data` runs end to end through
//! `batchd run` against the fake OpenAI-compatible server, and each output line has the
//! family's native response shape (keys and types).

use batchd_testkit::harness::{
    Config, Model, TestEnv, assert_counts, describe, manifest, read_jsonl, shared_data,
};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::test_env;

const ANTHROPIC: &str = crate::MODEL;
const TITAN_TEXT: &str = "amazon.titan-text-express-v1";
const TITAN_EMBED: &str = "amazon.titan-embed-text-v2:0";
const NOVA: &str = "amazon.nova-lite-v1:0";
const LLAMA: &str = "meta.llama3-8b-instruct-v1:0";
const MISTRAL: &str = "mistral.mistral-7b-instruct-v0:2";
/// A custom id whose family comes from `format` in its config entry.
const CUSTOM: &str = "my-team/claude-like";

/// A fake with default answers and an environment whose models all call it.
async fn fake_and_env() -> (FakeServer, TestEnv) {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let env = env_for(&fake);
    (fake, env)
}

/// Every family's id on the fake, plus `CUSTOM`.
fn env_for(fake: &FakeServer) -> TestEnv {
    let mut config = Config::new().backoff_ms(1, 20);
    for id in [ANTHROPIC, TITAN_TEXT, TITAN_EMBED, NOVA, LLAMA, MISTRAL] {
        config = config.model(
            Model::fake(id, fake)
                .max_concurrency(8)
                .set("embed_batch_size", 4),
        );
    }
    test_env(&config.model(Model::openai(CUSTOM, &fake.base_url()).set("format", "anthropic")))
}

/// Runs the shared data file `name` as InvokeModel records on `model`, checks order, echo and
/// success of every output line and the manifest's counts; returns each line's modelOutput.
async fn model_outputs(env: &TestEnv, name: &str, model: &str) -> Vec<Value> {
    let input = shared_data(name);
    let out = format!("out-{}", model.replace(['/', ':'], "_"));
    let (output, job_dir) = env
        .run(
            &[&input],
            model,
            &out,
            &["--invocation-type", "invoke-model", "--quiet"],
        )
        .await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let job_dir = job_dir.unwrap();
    let lines = read_jsonl(&job_dir.join(format!("{name}.out")));
    let records = read_jsonl(&input);
    assert_eq!(lines.len(), records.len());
    for (line, record) in lines.iter().zip(&records) {
        if let Some(id) = record.get("recordId") {
            assert_eq!(&line["recordId"], id);
        }
        assert_eq!(line["modelInput"], record["modelInput"]);
        assert!(line.get("error").is_none(), "{line}");
    }
    assert_counts(&manifest(&job_dir), records.len(), 0);
    lines.iter().map(|l| l["modelOutput"].clone()).collect()
}

fn is_uint(v: &Value) -> bool {
    v.as_u64().is_some()
}

fn is_text(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

#[tokio::test]
async fn anthropic_records_answer_in_the_messages_shape() {
    let (_fake, env) = fake_and_env().await;
    for model in [ANTHROPIC, CUSTOM] {
        for out in model_outputs(&env, "invoke-anthropic.jsonl", model).await {
            assert_eq!(out["type"], "message", "{out}");
            assert_eq!(out["role"], "assistant", "{out}");
            assert!(is_text(&out["id"]), "{out}");
            let content = out["content"].as_array().unwrap();
            assert_eq!(content[0]["type"], "text", "{out}");
            assert!(is_text(&content[0]["text"]), "{out}");
            assert!(
                ["end_turn", "max_tokens", "stop_sequence", "tool_use"]
                    .contains(&out["stop_reason"].as_str().unwrap()),
                "{out}"
            );
            assert!(is_uint(&out["usage"]["input_tokens"]), "{out}");
            assert!(is_uint(&out["usage"]["output_tokens"]), "{out}");
        }
    }
}

#[tokio::test]
async fn titan_text_records_answer_with_results() {
    let (_fake, env) = fake_and_env().await;
    for out in model_outputs(&env, "invoke-titan-text.jsonl", TITAN_TEXT).await {
        assert!(is_uint(&out["inputTextTokenCount"]), "{out}");
        let result = &out["results"][0];
        assert!(is_uint(&result["tokenCount"]), "{out}");
        assert!(is_text(&result["outputText"]), "{out}");
        assert!(is_text(&result["completionReason"]), "{out}");
    }
}

#[tokio::test]
async fn titan_embed_records_are_batched_and_answer_with_vectors() {
    // While one call is out, the next records queue: batching does not hang on timing.
    let fake = FakeServer::start(FakeConfig::latency(50, 0)).await.unwrap();
    let env = env_for(&fake);
    let records = read_jsonl(&shared_data("invoke-titan-embed.jsonl"));
    let outputs = model_outputs(&env, "invoke-titan-embed.jsonl", TITAN_EMBED).await;
    for (out, record) in outputs.iter().zip(&records) {
        assert!(is_uint(&out["inputTextTokenCount"]), "{out}");
        let vector = out["embedding"].as_array().unwrap();
        assert!(!vector.is_empty(), "{out}");
        assert!(
            vector
                .iter()
                .all(|x| x.as_f64().is_some_and(f64::is_finite))
        );
        if record["modelInput"]["normalize"] == Value::Bool(true) {
            let norm: f64 = vector.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-3, "not normalised: {norm}");
        }
    }
    let stats = fake.stats();
    assert!(
        stats.embeddings < records.len() as u64 || records.len() == 1,
        "{} records took {} embedding calls: no batching",
        records.len(),
        stats.embeddings
    );
}

#[tokio::test]
async fn nova_records_answer_in_the_nova_shape() {
    let (_fake, env) = fake_and_env().await;
    for out in model_outputs(&env, "invoke-nova.jsonl", NOVA).await {
        let message = &out["output"]["message"];
        assert_eq!(message["role"], "assistant", "{out}");
        assert!(is_text(&message["content"][0]["text"]), "{out}");
        assert!(is_text(&out["stopReason"]), "{out}");
        for key in ["inputTokens", "outputTokens", "totalTokens"] {
            assert!(is_uint(&out["usage"][key]), "{key}: {out}");
        }
    }
}

#[tokio::test]
async fn llama_and_mistral_records_answer_in_their_shapes() {
    let (_fake, env) = fake_and_env().await;
    for out in model_outputs(&env, "invoke-llama.jsonl", LLAMA).await {
        assert!(is_text(&out["generation"]), "{out}");
        assert!(is_uint(&out["prompt_token_count"]), "{out}");
        assert!(is_uint(&out["generation_token_count"]), "{out}");
        assert!(is_text(&out["stop_reason"]), "{out}");
    }
    for out in model_outputs(&env, "invoke-mistral.jsonl", MISTRAL).await {
        let first = &out["outputs"][0];
        assert!(is_text(&first["text"]), "{out}");
        assert!(is_text(&first["stop_reason"]), "{out}");
    }
}

#[tokio::test]
async fn native_defects_fail_validation_with_file_line_and_field() {
    let (fake, env) = fake_and_env().await;
    let good = r#"{"recordId":"a","modelInput":{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}}"#;
    let no_version = r#"{"recordId":"b","modelInput":{"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}}"#;
    let no_max = r#"{"recordId":"c","modelInput":{"anthropic_version":"bedrock-2023-05-31","messages":[{"role":"user","content":"hi"}]}}"#;
    let file = env.path("claude.jsonl");
    std::fs::write(&file, format!("{good}\n{no_version}\n{no_max}\n")).unwrap();
    let out = env
        .batchd(&[
            "validate",
            &file.display().to_string(),
            "--invocation-type",
            "invoke-model",
            "--model-id",
            ANTHROPIC,
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("claude.jsonl:2: modelInput.anthropic_version:"),
        "{text}"
    );
    assert!(
        text.contains("claude.jsonl:3: modelInput.max_tokens:"),
        "{text}"
    );
    assert!(!text.contains("claude.jsonl:1:"), "{text}");

    let embed = env.path("embed.jsonl");
    std::fs::write(
        &embed,
        "{\"recordId\":\"e1\",\"modelInput\":{\"inputText\":\"hello\",\"dimensions\":300}}\n",
    )
    .unwrap();
    let out = env
        .batchd(&[
            "validate",
            &embed.display().to_string(),
            "--invocation-type",
            "invoke-model",
            "--format",
            "titan-embed",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("embed.jsonl:1: modelInput.dimensions:"),
        "{text}"
    );

    // A run fails before any record reaches the backend.
    let out = env
        .batchd(&[
            "run",
            &file.display().to_string(),
            "--model-id",
            ANTHROPIC,
            "--invocation-type",
            "invoke-model",
            "--out",
            &env.path("out").display().to_string(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(fake.stats().requests, 0);
}

#[tokio::test]
async fn invoke_model_without_a_known_format_is_refused_with_the_fix() {
    let (_fake, env) = fake_and_env().await;
    let out = env
        .batchd(&[
            "validate",
            &shared_data("invoke-anthropic.jsonl").display().to_string(),
            "--invocation-type",
            "invoke-model",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--format"), "{err}");
}
