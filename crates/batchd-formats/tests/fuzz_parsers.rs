//! Property tests ("fuzzing" on stable: `cargo fuzz` needs nightly) of the record-line
//! parser, the Converse translator and the native-body translators: any input, however
//! broken, yields a value or defects, never a panic or a hang. `PROPTEST_CASES=N` runs longer.
#![allow(clippy::unwrap_used)]

use batchd_formats::converse::{ConverseOptions, parse_converse};
use batchd_formats::native::{ModelFamily, parse_native};
use batchd_formats::record::parse_record_line;
use proptest::prelude::*;
use serde_json::{Value, json};

const KEYS: &[&str] = &[
    "recordId",
    "modelInput",
    "messages",
    "role",
    "content",
    "text",
    "image",
    "format",
    "source",
    "bytes",
    "s3Location",
    "uri",
    "document",
    "name",
    "video",
    "system",
    "inferenceConfig",
    "maxTokens",
    "temperature",
    "topP",
    "stopSequences",
    "toolConfig",
    "tools",
    "toolSpec",
    "description",
    "inputSchema",
    "json",
    "toolChoice",
    "auto",
    "any",
    "tool",
    "toolUse",
    "toolUseId",
    "input",
    "toolResult",
    "status",
    "guardContent",
    "cachePoint",
    "type",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "anthropic_version",
    "max_tokens",
    "top_k",
    "top_p",
    "stop_sequences",
    "prompt",
    "inputText",
    "textGenerationConfig",
    "maxTokenCount",
    "embeddingConfig",
    "dimensions",
    "normalize",
    "max_gen_len",
    "schemaVersion",
    "inferenceConfig",
    "media_type",
    "data",
    "tool_use",
    "tool_result",
    "tool_choice",
    "embeddingTypes",
    "texts",
    "input_type",
    "taskType",
    "singleEmbeddingParams",
    "embeddingPurpose",
    "embeddingDimension",
];

const WORDS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "png",
    "jpeg",
    "gif",
    "webp",
    "pdf",
    "txt",
    "mp4",
    "base64",
    "text",
    "image",
    "tool_use",
    "tool_result",
    "auto",
    "any",
    "tool",
    "success",
    "error",
    "bedrock-2023-05-31",
    "default",
    "",
    "\u{0}",
    "é",
    "😀",
];

/// Any JSON value, with object keys mostly from `keys` so that the walks go deep.
fn arb_json(keys: &'static [&'static str], words: &'static [&'static str]) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(words).prop_map(|w| json!(w)),
        ".{0,40}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        4 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => "[a-zA-Z_]{0,12}",
    ];
    leaf.prop_recursive(6, 96, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Cases per property: a few seconds in CI; `PROPTEST_CASES=100000` for a long run by hand.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Failures print their minimal case; no regression files inside the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A plausible Converse body: the right skeleton with random leaves and subtrees.
fn arb_converse() -> impl Strategy<Value = Value> {
    let any_json = || arb_json(KEYS, WORDS);
    (any_json(), any_json(), any_json(), any_json()).prop_map(|(content, system, config, tools)| {
        json!({
            "messages": [{"role": "user", "content": [content]}, {"role": "assistant", "content": "x"}],
            "system": system,
            "inferenceConfig": config,
            "toolConfig": tools,
        })
    })
}

fn families() -> impl Strategy<Value = ModelFamily> {
    prop::sample::select(ModelFamily::ALL.to_vec())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn record_lines_never_panic(line in ".{0,300}") {
        let _ = parse_record_line(&line);
    }

    #[test]
    fn record_lines_of_json_never_panic(id in arb_json(KEYS, WORDS), input in arb_json(KEYS, WORDS), cut in 0usize..400) {
        let line = json!({"recordId": id, "modelInput": input}).to_string();
        if let Ok(record) = parse_record_line(&line) {
            // modelInput comes back as the very bytes it was.
            prop_assert_eq!(record.model_input.get(), input.to_string());
        }
        let mut end = cut.min(line.len());
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let _ = parse_record_line(&line[..end]);
    }

    #[test]
    fn converse_bodies_never_panic(body in arb_json(KEYS, WORDS), allow in any::<bool>()) {
        let opts = ConverseOptions { allow_tool_config: allow };
        let _ = parse_converse(&body.to_string(), &opts);
    }

    #[test]
    fn converse_like_bodies_never_panic(body in arb_converse(), allow in any::<bool>()) {
        let opts = ConverseOptions { allow_tool_config: allow };
        if let Err(defects) = parse_converse(&body.to_string(), &opts) {
            prop_assert!(!defects.is_empty());
        }
    }

    #[test]
    fn converse_text_never_panics(text in ".{0,200}") {
        let _ = parse_converse(&text, &ConverseOptions::default());
    }

    #[test]
    fn native_bodies_never_panic(family in families(), body in arb_json(KEYS, WORDS)) {
        if let Err(defects) = parse_native(family, &body.to_string()) {
            prop_assert!(!defects.is_empty());
        }
    }

    #[test]
    fn native_text_never_panics(family in families(), text in ".{0,200}") {
        let _ = parse_native(family, &text);
    }
}
