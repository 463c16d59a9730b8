//! The InvokeModel example files in the shared data folder (beside the repo) parse without
//! defects line by line, and each family's first record goes the whole way: record body →
//! neutral request (content asserted) → fake answer → native response (keys and types).

use batchd_formats::native::{
    EmbedItem, ModelFamily, NativeRequest, parse_native, render_chat, render_embed,
};
use batchd_formats::neutral::{ChatRequest, ChatResponse, ContentPart, Role, StopReason, Usage};
use batchd_formats::record::parse_record_line;
use serde_json::{Value, json};

fn read(name: &str) -> String {
    let path = format!("{}/../../../shared/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

const FILES: [(&str, ModelFamily, usize); 6] = [
    ("invoke-anthropic.jsonl", ModelFamily::Anthropic, 10),
    ("invoke-titan-text.jsonl", ModelFamily::TitanText, 5),
    ("invoke-titan-embed.jsonl", ModelFamily::TitanEmbed, 10),
    ("invoke-nova.jsonl", ModelFamily::Nova, 5),
    ("invoke-llama.jsonl", ModelFamily::Llama, 5),
    ("invoke-mistral.jsonl", ModelFamily::Mistral, 5),
];

/// Every record of a file, translated; panics naming the line of any defect.
fn parse_file(name: &str, family: ModelFamily) -> Vec<(String, NativeRequest)> {
    read(name)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let record =
                parse_record_line(line).unwrap_or_else(|d| panic!("{name} line {}: {d}", i + 1));
            let request = parse_native(family, record.model_input.get())
                .unwrap_or_else(|d| panic!("{name} line {}: {d:?}", i + 1));
            (record.record_id.unwrap_or_default(), request)
        })
        .collect()
}

fn first_chat(name: &str, family: ModelFamily) -> ChatRequest {
    match parse_file(name, family).into_iter().next() {
        Some((_, NativeRequest::Chat(req))) => *req,
        other => panic!("{name}: expected a chat request, got {other:?}"),
    }
}

/// The first record of a chat file: every one of them asks the same question in one user
/// turn, with at most 64 tokens.
fn first_question(name: &str, family: ModelFamily) -> ChatRequest {
    let req = first_chat(name, family);
    assert_eq!(
        single_user_text(&req),
        "AWS Lambda について説明してください",
        "{name}"
    );
    assert_eq!(req.max_tokens, Some(64), "{name}");
    req
}

/// The family's native response to a fake answer of `text` (12 tokens in, 5 out).
fn render(family: ModelFamily, text: &str, stop_reason: StopReason) -> Value {
    render_chat(family, &answer(text, stop_reason), 30)
}

fn answer(text: &str, stop_reason: StopReason) -> ChatResponse {
    ChatResponse {
        content: vec![ContentPart::Text(text.to_owned())],
        stop_reason,
        stop_sequence: None,
        usage: Usage {
            input_tokens: 12,
            output_tokens: 5,
            cache_read_input_tokens: None,
        },
    }
}

/// A member name and a check of its JSON type.
type Member = (&'static str, fn(&Value) -> bool);

/// Asserts `value` is an object with exactly these members of these JSON types.
fn assert_shape(value: &Value, expected: &[Member]) {
    let map = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
    want.sort_unstable();
    assert_eq!(keys, want, "{value}");
    for (key, is_type) in expected {
        assert!(is_type(&map[*key]), "{key} has the wrong type in {value}");
    }
}

fn single_user_text(req: &ChatRequest) -> &str {
    assert_eq!(req.messages.len(), 1, "{req:?}");
    assert_eq!(req.messages[0].role, Role::User);
    match req.messages[0].content.as_slice() {
        [ContentPart::Text(text)] => text,
        other => panic!("expected one text part, got {other:?}"),
    }
}

#[test]
fn every_invoke_file_parses_cleanly() {
    for (name, family, count) in FILES {
        let records = parse_file(name, family);
        assert_eq!(records.len(), count, "{name}");
        for (id, request) in &records {
            assert!(!id.is_empty(), "{name}: a record without id");
            assert_eq!(
                matches!(request, NativeRequest::Embed(_)),
                family.is_embedding(),
                "{name} {id}"
            );
        }
    }
}

#[test]
fn anthropic_record_round_trip() {
    let req = first_question("invoke-anthropic.jsonl", ModelFamily::Anthropic);
    assert_eq!(req.system, vec!["Be brief.".to_owned()]);
    assert_eq!(req.temperature, Some(0.5));

    let out = render(
        ModelFamily::Anthropic,
        "Lambda runs code.",
        StopReason::EndTurn,
    );
    assert_shape(
        &out,
        &[
            ("id", Value::is_string),
            ("type", Value::is_string),
            ("role", Value::is_string),
            ("content", Value::is_array),
            ("stop_reason", Value::is_string),
            ("stop_sequence", Value::is_null),
            ("usage", Value::is_object),
        ],
    );
    assert_shape(
        &out["content"][0],
        &[("type", Value::is_string), ("text", Value::is_string)],
    );
    assert_shape(
        &out["usage"],
        &[
            ("input_tokens", Value::is_u64),
            ("output_tokens", Value::is_u64),
        ],
    );
    assert_eq!(out["content"][0]["text"], "Lambda runs code.");
    assert_eq!(out["stop_reason"], "end_turn");
}

#[test]
fn titan_text_record_round_trip() {
    // "User: …\nBot:" becomes the user turn alone.
    let req = first_question("invoke-titan-text.jsonl", ModelFamily::TitanText);
    assert_eq!(req.temperature, Some(0.7));
    assert_eq!(req.top_p, Some(0.9));
    assert!(req.stop_sequences.is_empty());

    let out = render(ModelFamily::TitanText, "Serverless.", StopReason::EndTurn);
    assert_shape(
        &out,
        &[
            ("inputTextTokenCount", Value::is_u64),
            ("results", Value::is_array),
        ],
    );
    assert_shape(
        &out["results"][0],
        &[
            ("tokenCount", Value::is_u64),
            ("outputText", Value::is_string),
            ("completionReason", Value::is_string),
        ],
    );
    assert_eq!(out["results"][0]["completionReason"], "FINISH");
}

#[test]
fn titan_embed_record_round_trip() {
    let records = parse_file("invoke-titan-embed.jsonl", ModelFamily::TitanEmbed);
    let Some((id, NativeRequest::Embed(item))) = records.into_iter().next() else {
        panic!("expected an embed record");
    };
    assert_eq!(id, "e1");
    assert_eq!(
        item,
        EmbedItem {
            text: "AWS Lambda について説明してください".into(),
            dimensions: Some(256),
            normalize: true,
            float: true,
            binary: false,
        }
    );
    // A backend that ignores dimensions answers 384 values; the record asked for 256.
    let vector: Vec<f32> = (0..384).map(|i| (i as f32 - 100.0) / 50.0).collect();
    let out = render_embed(ModelFamily::TitanEmbed, &item, &vector, 9);
    assert_shape(
        &out,
        &[
            ("embedding", Value::is_array),
            ("inputTextTokenCount", Value::is_u64),
            ("embeddingsByType", Value::is_object),
        ],
    );
    let embedding = out["embedding"].as_array().unwrap();
    assert_eq!(embedding.len(), 256);
    assert!(embedding.iter().all(Value::is_f64));
    let norm: f64 = embedding
        .iter()
        .map(|v| v.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    assert_eq!(out["embeddingsByType"]["float"], out["embedding"]);
    assert!(out["embeddingsByType"].get("binary").is_none());
}

#[test]
fn nova_record_round_trip() {
    let req = first_question("invoke-nova.jsonl", ModelFamily::Nova);
    assert_eq!(req.system, vec!["Be brief.".to_owned()]);
    assert_eq!(req.temperature, Some(0.7));

    let out = render(ModelFamily::Nova, "Hi", StopReason::MaxTokens);
    assert_shape(
        &out,
        &[
            ("output", Value::is_object),
            ("stopReason", Value::is_string),
            ("usage", Value::is_object),
        ],
    );
    assert_shape(&out["output"], &[("message", Value::is_object)]);
    assert_shape(
        &out["output"]["message"],
        &[("role", Value::is_string), ("content", Value::is_array)],
    );
    assert_shape(
        &out["usage"],
        &[
            ("inputTokens", Value::is_u64),
            ("outputTokens", Value::is_u64),
            ("totalTokens", Value::is_u64),
        ],
    );
    assert_eq!(out["stopReason"], "max_tokens");
    assert_eq!(out["output"]["message"]["content"], json!([{"text": "Hi"}]));
}

#[test]
fn llama_record_round_trip() {
    let req = first_question("invoke-llama.jsonl", ModelFamily::Llama);
    assert!(req.system.is_empty());
    assert_eq!(req.temperature, Some(0.5));
    assert_eq!(req.top_p, Some(0.9));

    let out = render(ModelFamily::Llama, "Hi", StopReason::EndTurn);
    assert_shape(
        &out,
        &[
            ("generation", Value::is_string),
            ("prompt_token_count", Value::is_u64),
            ("generation_token_count", Value::is_u64),
            ("stop_reason", Value::is_string),
        ],
    );
    assert_eq!(out["stop_reason"], "stop");
    assert_eq!(out["prompt_token_count"], 12);
    assert_eq!(out["generation_token_count"], 5);
}

#[test]
fn mistral_record_round_trip() {
    let req = first_question("invoke-mistral.jsonl", ModelFamily::Mistral);
    assert!(req.system.is_empty());
    assert_eq!(req.temperature, Some(0.5));

    let out = render(ModelFamily::Mistral, "Hi", StopReason::MaxTokens);
    assert_shape(&out, &[("outputs", Value::is_array)]);
    assert_shape(
        &out["outputs"][0],
        &[
            ("text", Value::is_string),
            ("stop_reason", Value::is_string),
        ],
    );
    assert_eq!(out["outputs"][0]["stop_reason"], "length");
}

#[test]
fn converse_files_are_not_native_bodies() {
    // A Converse body sent to an Anthropic model misses the Messages API's required members.
    let text = read("converse-basic.jsonl");
    let line = text.lines().next().unwrap();
    let record = parse_record_line(line).unwrap();
    let defects = parse_native(ModelFamily::Anthropic, record.model_input.get()).unwrap_err();
    let fields: Vec<&str> = defects.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "modelInput.inferenceConfig",
            "modelInput.anthropic_version",
            "modelInput.max_tokens",
            "modelInput.messages[0].content[0].type",
        ]
    );
}
