//! Property tests ("fuzzing" on stable: `cargo fuzz` needs nightly) of the record-line
//! parser, the Converse translator and the native-body translators: any input, however
//! broken, yields a value or defects, never a panic or a hang. `PROPTEST_CASES=N` runs longer.
#![allow(clippy::unwrap_used)]

use batchd_formats::converse::{ConverseOptions, parse_converse};
use batchd_formats::native::{ModelFamily, parse_native};
use batchd_formats::record::parse_record_line;
use batchd_testkit::fuzz::{arb_json, config};
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
