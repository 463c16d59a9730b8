//! Property tests: any valid generated Converse (and Anthropic Messages) request survives
//! translation to the neutral request without losing a message or a content block, and every
//! block keeps its kind and text.

use batchd_formats::converse::{ConverseOptions, parse_converse};
use batchd_formats::native::{ModelFamily, NativeRequest, parse_native};
use batchd_formats::neutral::{ChatMessage, ContentPart, Role, ToolResultPart};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// A content block: its JSON in each format and the neutral part both must become.
#[derive(Debug, Clone)]
struct Block {
    converse: Value,
    anthropic: Value,
    part: ContentPart,
}

fn text_strategy() -> impl Strategy<Value = String> {
    // Not blank (both formats refuse blank text); any printable Unicode around it.
    "\\PC{0,12}[a-zA-Z0-9\u{3042}-\u{3093}]\\PC{0,12}"
}

fn base64_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "([A-Za-z0-9+/]{4}){1,6}",
        "([A-Za-z0-9+/]{4}){0,4}[A-Za-z0-9+/]{2}==",
        "([A-Za-z0-9+/]{4}){0,4}[A-Za-z0-9+/]{3}=",
    ]
}

fn input_strategy() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..4).prop_map(|m| {
        Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect::<Map<_, _>>(),
        )
    })
}

fn block_strategy() -> impl Strategy<Value = Block> {
    prop_oneof![
        text_strategy().prop_map(|t| Block {
            converse: json!({"text": t}),
            anthropic: json!({"type": "text", "text": t}),
            part: ContentPart::Text(t),
        }),
        (prop_oneof![Just("png"), Just("jpeg"), Just("gif"), Just("webp")], base64_strategy())
            .prop_map(|(format, data)| Block {
                converse: json!({"image": {"format": format, "source": {"bytes": data}}}),
                anthropic: json!({"type": "image", "source": {"type": "base64", "media_type": format!("image/{format}"), "data": data}}),
                part: ContentPart::Image {
                    format: format.to_owned(),
                    data_base64: data,
                },
            }),
        ("[a-zA-Z0-9_-]{1,30}", text_strategy()).prop_map(|(name, text)| Block {
            converse: json!({"document": {"name": name, "format": "txt", "source": {"text": text}}}),
            anthropic: json!({"type": "document", "title": name, "source": {"type": "text", "media_type": "text/plain", "data": text}}),
            part: ContentPart::Document {
                name,
                format: Some("txt".into()),
                text,
            },
        }),
        ("[a-zA-Z0-9_.:-]{1,64}", "[a-zA-Z0-9_-]{1,64}", input_strategy()).prop_map(
            |(id, name, input)| Block {
                converse: json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}),
                anthropic: json!({"type": "tool_use", "id": id, "name": name, "input": input}),
                part: ContentPart::ToolUse { id, name, input },
            }
        ),
        (
            "[a-zA-Z0-9_.:-]{1,64}",
            proptest::collection::vec(text_strategy(), 0..3),
            any::<bool>()
        )
            .prop_map(|(id, texts, is_error)| {
                let status = if is_error { "error" } else { "success" };
                let converse_content: Vec<Value> = texts.iter().map(|t| json!({"text": t})).collect();
                let anthropic_content: Vec<Value> = texts
                    .iter()
                    .map(|t| json!({"type": "text", "text": t}))
                    .collect();
                Block {
                    converse: json!({"toolResult": {"toolUseId": id, "content": converse_content, "status": status}}),
                    anthropic: json!({"type": "tool_result", "tool_use_id": id, "content": anthropic_content, "is_error": is_error}),
                    part: ContentPart::ToolResult {
                        tool_use_id: id,
                        content: texts.into_iter().map(ToolResultPart::Text).collect(),
                        is_error,
                    },
                }
            }),
        text_strategy().prop_map(|t| Block {
            converse: json!({"reasoningContent": {"reasoningText": {"text": t}}}),
            anthropic: json!({"type": "thinking", "thinking": t, "signature": "sig"}),
            part: ContentPart::Reasoning { text: t },
        }),
    ]
}

#[derive(Debug, Clone)]
struct Message {
    role: Role,
    blocks: Vec<Block>,
}

fn messages_strategy() -> impl Strategy<Value = Vec<Message>> {
    let message = (
        prop_oneof![Just(Role::User), Just(Role::Assistant)],
        proptest::collection::vec(block_strategy(), 1..5),
    )
        .prop_map(|(role, blocks)| Message { role, blocks });
    proptest::collection::vec(message, 1..7)
}

fn expected(messages: &[Message]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.blocks.iter().map(|b| b.part.clone()).collect(),
        })
        .collect()
}

fn text_of(part: &ContentPart) -> Option<&str> {
    match part {
        ContentPart::Text(t) | ContentPart::Reasoning { text: t } => Some(t),
        ContentPart::Document { text, .. } => Some(text),
        _ => None,
    }
}

/// Counts messages and blocks per message and compares texts, then the whole translation.
fn assert_survives(got: &[ChatMessage], want: &[ChatMessage]) {
    assert_eq!(got.len(), want.len(), "message count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.role, w.role, "message {i} role");
        assert_eq!(g.content.len(), w.content.len(), "message {i} block count");
        for (j, (gp, wp)) in g.content.iter().zip(&w.content).enumerate() {
            assert_eq!(text_of(gp), text_of(wp), "message {i} block {j} text");
        }
    }
    assert_eq!(got, want);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn converse_requests_survive_translation(
        messages in messages_strategy(),
        system in proptest::collection::vec(text_strategy(), 0..3),
        max_tokens in proptest::option::of(1u32..100_000),
    ) {
        let mut body = json!({
            "messages": messages
                .iter()
                .map(|m| json!({
                    "role": m.role.as_str(),
                    "content": m.blocks.iter().map(|b| b.converse.clone()).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
        });
        if !system.is_empty() {
            body["system"] = system.iter().map(|t| json!({"text": t})).collect();
        }
        if let Some(max) = max_tokens {
            body["inferenceConfig"] = json!({"maxTokens": max});
        }
        let req = parse_converse(&body.to_string(), &ConverseOptions::default())
            .unwrap_or_else(|d| panic!("valid body refused: {d:?}\n{body}"));
        assert_survives(&req.messages, &expected(&messages));
        prop_assert_eq!(req.system, system);
        prop_assert_eq!(req.max_tokens, max_tokens);
    }

    #[test]
    fn anthropic_requests_survive_translation(
        messages in messages_strategy(),
        max_tokens in 1u32..100_000,
    ) {
        let body = json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": messages
                .iter()
                .map(|m| json!({
                    "role": m.role.as_str(),
                    "content": m.blocks.iter().map(|b| b.anthropic.clone()).collect::<Vec<_>>(),
                }))
                .collect::<Vec<_>>(),
        });
        let parsed = parse_native(ModelFamily::Anthropic, &body.to_string())
            .unwrap_or_else(|d| panic!("valid body refused: {d:?}\n{body}"));
        let NativeRequest::Chat(req) = parsed else {
            panic!("not a chat request");
        };
        assert_survives(&req.messages, &expected(&messages));
        prop_assert_eq!(req.max_tokens, Some(max_tokens));
    }

    /// Defects never panic and always carry a `modelInput` path, whatever the JSON.
    #[test]
    fn arbitrary_bodies_never_panic(body in arbitrary_json(3)) {
        let text = body.to_string();
        for family in ModelFamily::ALL {
            if let Err(defects) = parse_native(family, &text) {
                prop_assert!(!defects.is_empty());
                for d in defects {
                    prop_assert!(d.field.starts_with("modelInput"), "{}", d.field);
                }
            }
        }
    }
}

fn arbitrary_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-2.0f64..2.0).prop_map(Value::from),
        prop_oneof![
            Just("messages".to_owned()),
            Just("user".to_owned()),
            Just("text".to_owned()),
            "\\PC{0,6}"
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, 32, 4, |inner| {
        let key = prop_oneof![
            Just("messages".to_owned()),
            Just("role".to_owned()),
            Just("content".to_owned()),
            Just("type".to_owned()),
            Just("text".to_owned()),
            Just("prompt".to_owned()),
            Just("inputText".to_owned()),
            Just("max_tokens".to_owned()),
            Just("anthropic_version".to_owned()),
            "[a-z]{1,5}"
        ];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key, inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
