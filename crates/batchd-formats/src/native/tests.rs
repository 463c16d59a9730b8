//! Unit tests of the native families: body → neutral request (content asserted), a fake
//! answer → native response (keys and JSON types asserted), and defects with their paths.

use serde_json::{Value, json};

use super::*;
use crate::neutral::{StopReason, ToolChoice, ToolResultPart, Usage};

fn parse(family: ModelFamily, body: Value) -> Result<NativeRequest, Vec<Defect>> {
    parse_native(family, &body.to_string())
}

fn chat(family: ModelFamily, body: Value) -> ChatRequest {
    match parse(family, body) {
        Ok(NativeRequest::Chat(req)) => *req,
        other => panic!("expected a chat request, got {other:?}"),
    }
}

fn embed(body: Value) -> EmbedItem {
    match parse(ModelFamily::TitanEmbed, body) {
        Ok(NativeRequest::Embed(item)) => item,
        other => panic!("expected an embed item, got {other:?}"),
    }
}

fn defects(family: ModelFamily, body: Value) -> Vec<Defect> {
    match parse(family, body) {
        Err(defects) => defects,
        Ok(req) => panic!("expected defects, parsed {req:?}"),
    }
}

fn fields(family: ModelFamily, body: Value) -> Vec<String> {
    defects(family, body).into_iter().map(|d| d.field).collect()
}

fn text(t: &str) -> ContentPart {
    ContentPart::Text(t.to_owned())
}

/// The family's native response to `answer(content, stop_reason)` (latency plays no part in
/// any native shape).
fn rendered(family: ModelFamily, content: Vec<ContentPart>, stop_reason: StopReason) -> Value {
    render_chat(family, &answer(content, stop_reason), 0)
}

fn answer(content: Vec<ContentPart>, stop_reason: StopReason) -> ChatResponse {
    ChatResponse {
        content,
        stop_reason,
        stop_sequence: None,
        usage: Usage {
            input_tokens: 11,
            output_tokens: 7,
            cache_read_input_tokens: None,
        },
    }
}

/// The JSON type names of an object's members, sorted by key.
fn shape(value: &Value) -> Vec<(String, &'static str)> {
    let map = value.as_object().expect("an object");
    let mut out: Vec<(String, &'static str)> = map
        .iter()
        .map(|(k, v)| {
            let kind = match v {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_u64() || n.is_i64() => "int",
                Value::Number(_) => "float",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            (k.clone(), kind)
        })
        .collect();
    out.sort();
    out
}

fn expect_shape(value: &Value, expected: &[(&str, &'static str)]) {
    let mut expected: Vec<(String, &'static str)> = expected
        .iter()
        .map(|(k, t)| ((*k).to_owned(), *t))
        .collect();
    expected.sort();
    assert_eq!(shape(value), expected, "{value}");
}

// ---- families ----------------------------------------------------------------------------

#[test]
fn family_from_model_ids() {
    for (id, family) in [
        (
            "anthropic.claude-3-haiku-20240307-v1:0",
            Some(ModelFamily::Anthropic),
        ),
        (
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            Some(ModelFamily::Anthropic),
        ),
        ("amazon.titan-text-express-v1", Some(ModelFamily::TitanText)),
        (
            "amazon.titan-embed-text-v2:0",
            Some(ModelFamily::TitanEmbed),
        ),
        ("amazon.nova-lite-v1:0", Some(ModelFamily::Nova)),
        ("meta.llama3-1-8b-instruct-v1:0", Some(ModelFamily::Llama)),
        (
            "mistral.mistral-7b-instruct-v0:2",
            Some(ModelFamily::Mistral),
        ),
        ("cohere.command-r-v1:0", None),
    ] {
        assert_eq!(ModelFamily::from_model_id(id), family, "{id}");
    }
    for family in ModelFamily::ALL {
        assert_eq!(ModelFamily::from_name(family.name()), Some(family));
    }
    assert!(ModelFamily::TitanEmbed.is_embedding());
    assert!(!ModelFamily::Nova.is_embedding());
}

#[test]
fn invalid_json_is_one_defect() {
    let d = parse_native(ModelFamily::Anthropic, "{").expect_err("invalid");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, "modelInput");
    assert!(d[0].reason.starts_with("invalid JSON"), "{}", d[0].reason);
    for family in ModelFamily::ALL {
        assert_eq!(fields(family, json!([1])), vec!["modelInput"]);
    }
}

// ---- Anthropic ---------------------------------------------------------------------------

fn anthropic(extra: Value) -> Value {
    let mut body = json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

#[test]
fn anthropic_full_request_translates() {
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(json!({
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
            "temperature": 0.5, "top_p": 0.9, "top_k": 40,
            "stop_sequences": ["END"],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain", "data": "Doc text"}},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Tokyo"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "failed", "is_error": true},
                ]},
            ],
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
        })),
    );
    assert_eq!(
        req.system,
        vec!["Be brief.".to_owned(), "Be kind.".to_owned()]
    );
    assert_eq!(req.max_tokens, Some(100));
    assert_eq!(req.temperature, Some(0.5));
    assert_eq!(req.top_p, Some(0.9));
    assert_eq!(req.top_k, Some(40));
    assert_eq!(req.stop_sequences, vec!["END".to_owned()]);
    assert_eq!(
        req.messages,
        vec![
            ChatMessage::user(vec![
                text("What is in this image?"),
                ContentPart::Image {
                    format: "png".into(),
                    data_base64: "iVBORw0KGgo=".into()
                },
                ContentPart::Document {
                    name: "notes".into(),
                    format: Some("txt".into()),
                    text: "Doc text".into()
                },
            ]),
            ChatMessage::assistant(vec![
                ContentPart::Reasoning { text: "hmm".into() },
                text("Let me check."),
                ContentPart::ToolUse {
                    id: "toolu_1".into(),
                    name: "get_weather".into(),
                    input: json!({"city": "Tokyo"})
                },
            ]),
            ChatMessage::user(vec![
                ContentPart::ToolResult {
                    tool_use_id: "toolu_1".into(),
                    content: vec![ToolResultPart::Text("Sunny".into())],
                    is_error: false
                },
                ContentPart::ToolResult {
                    tool_use_id: "toolu_2".into(),
                    content: vec![ToolResultPart::Text("failed".into())],
                    is_error: true
                },
            ]),
        ]
    );
    assert_eq!(req.tools.len(), 1);
    assert_eq!(req.tools[0].name, "get_weather");
    assert_eq!(req.tools[0].description.as_deref(), Some("Weather"));
    assert_eq!(req.tools[0].input_schema, json!({"type": "object"}));
    assert_eq!(
        req.tool_choice,
        Some(ToolChoice::Tool("get_weather".into()))
    );
}

#[test]
fn anthropic_tool_choices() {
    let tools = json!([{"name": "t", "input_schema": {"type": "object"}}]);
    for (choice, expected) in [
        (json!({"type": "auto"}), Some(ToolChoice::Auto)),
        (
            json!({"type": "any", "disable_parallel_tool_use": true}),
            Some(ToolChoice::Any),
        ),
    ] {
        let req = chat(
            ModelFamily::Anthropic,
            anthropic(json!({"tools": tools, "tool_choice": choice})),
        );
        assert_eq!(req.tool_choice, expected);
        assert_eq!(req.tools.len(), 1);
    }
    // `none` sends no tools at all.
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(json!({"tools": tools, "tool_choice": {"type": "none"}})),
    );
    assert!(req.tools.is_empty());
    assert_eq!(req.tool_choice, None);
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(json!({"tools": tools, "tool_choice": {"type": "tool", "name": "other"}}))
        ),
        vec!["modelInput.tool_choice.name"]
    );
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(json!({"tools": tools, "tool_choice": {"type": "sometimes"}}))
        ),
        vec!["modelInput.tool_choice.type"]
    );
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(json!({"tools": tools, "tool_choice": {"type": "tool"}}))
        ),
        vec!["modelInput.tool_choice.name"]
    );
}

#[test]
fn anthropic_required_members() {
    let d = defects(
        ModelFamily::Anthropic,
        json!({"max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(
        d,
        vec![Defect::new("modelInput.anthropic_version", "missing")]
    );
    let d = defects(
        ModelFamily::Anthropic,
        json!({"anthropic_version": "bedrock-2023-05-31", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(d, vec![Defect::new("modelInput.max_tokens", "missing")]);
    // Every problem at once.
    assert_eq!(
        fields(ModelFamily::Anthropic, json!({})),
        vec![
            "modelInput.anthropic_version",
            "modelInput.max_tokens",
            "modelInput.messages"
        ]
    );
    let d = defects(
        ModelFamily::Anthropic,
        anthropic(json!({"anthropic_version": "2023-06-01"})),
    );
    assert_eq!(d[0].field, "modelInput.anthropic_version");
    assert_eq!(
        d[0].reason,
        r#"must be "bedrock-2023-05-31", found "2023-06-01""#
    );
}

#[test]
fn anthropic_types_ranges_and_enums() {
    let d = defects(
        ModelFamily::Anthropic,
        anthropic(json!({
            "max_tokens": "100",
            "temperature": 1.5,
            "top_p": -0.1,
            "top_k": 2.5,
            "stop_sequences": "END",
            "system": 5,
            "model": "claude",
            "messages": [
                {"role": "robot", "content": "x"},
                {"role": "user", "content": [{"type": "video"}]},
                {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "data:xyz"}}]},
                {"role": "user", "content": [{"type": "text", "text": "  "}]},
                {"role": "user", "content": 7},
            ],
        })),
    );
    let got: Vec<(&str, &str)> = d
        .iter()
        .map(|d| (d.field.as_str(), d.reason.as_str()))
        .collect();
    let expect_field = |field: &str| {
        assert!(
            got.iter().any(|(f, _)| *f == field),
            "{field} not in {got:#?}"
        );
    };
    for field in [
        "modelInput.model",
        "modelInput.max_tokens",
        "modelInput.temperature",
        "modelInput.top_p",
        "modelInput.top_k",
        "modelInput.stop_sequences",
        "modelInput.system",
        "modelInput.messages[0].role",
        "modelInput.messages[1].content[0].type",
        "modelInput.messages[2].content[0].source.media_type",
        "modelInput.messages[2].content[0].source.data",
        "modelInput.messages[3].content[0].text",
        "modelInput.messages[4].content",
    ] {
        expect_field(field);
    }
    assert_eq!(got.len(), 13, "{got:#?}");
    assert!(got.contains(&(
        "modelInput.temperature",
        "must be between 0 and 1, found 1.5"
    )));
    assert!(got.contains(&(
        "modelInput.max_tokens",
        "must be an integer, found a string"
    )));
    assert!(got.contains(&("modelInput.model", "unknown field")));
}

#[test]
fn anthropic_message_rules() {
    // A final empty assistant turn is allowed (and dropped); an empty user turn is not.
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": ""},
        ]})),
    );
    assert_eq!(req.messages, vec![ChatMessage::user(vec![text("Hi")])]);
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(json!({"messages": [{"role": "user", "content": []}]}))
        ),
        vec!["modelInput.messages[0].content"]
    );
    assert_eq!(
        fields(ModelFamily::Anthropic, anthropic(json!({"messages": []}))),
        vec!["modelInput.messages"]
    );
    // Unknown members of a block, of a tool, server tools.
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "foo": 1}]}]})
            )
        ),
        vec!["modelInput.messages[0].content[0].foo"]
    );
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(json!({"tools": [{"type": "bash_20250124", "name": "bash"}]}))
        ),
        vec!["modelInput.tools[0].type"]
    );
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(json!({"tools": [{"name": "bad name", "input_schema": {}}, {"name": "ok"}]}))
        ),
        vec![
            "modelInput.tools[0].name",
            "modelInput.tools[1].input_schema"
        ]
    );
}

#[test]
fn anthropic_unsupported_sources_become_unsupported_parts() {
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            {"type": "redacted_thinking", "data": "abc"},
        ]}]})),
    );
    let kinds: Vec<&str> = req.messages[0]
        .content
        .iter()
        .map(|p| match p {
            ContentPart::Unsupported { kind } => kind.as_str(),
            _ => "supported",
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "image with url source",
            "document with base64 source",
            "redacted thinking"
        ]
    );
}

#[test]
fn anthropic_structured_output() {
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(json!({"output_format": {"type": "json_schema", "schema": {"type": "object"}}})),
    );
    assert_eq!(
        req.response_format.map(|f| f.schema),
        Some(json!({"type": "object"}))
    );
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(
            json!({"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}),
        ),
    );
    assert!(req.response_format.is_some());
    assert_eq!(
        fields(
            ModelFamily::Anthropic,
            anthropic(json!({"output_format": {"type": "json_object", "schema": "x"}}))
        ),
        vec![
            "modelInput.output_format.type",
            "modelInput.output_format.schema"
        ]
    );
}

#[test]
fn anthropic_response_shape() {
    let mut response = answer(
        vec![
            text("Let me check."),
            ContentPart::ToolUse {
                id: "call_1".into(),
                name: "get_weather".into(),
                input: json!({"city": "Tokyo"}),
            },
        ],
        StopReason::ToolUse,
    );
    response.usage.cache_read_input_tokens = Some(3);
    let out = render_chat(ModelFamily::Anthropic, &response, 5);
    expect_shape(
        &out,
        &[
            ("id", "string"),
            ("type", "string"),
            ("role", "string"),
            ("content", "array"),
            ("stop_reason", "string"),
            ("stop_sequence", "null"),
            ("usage", "object"),
        ],
    );
    assert!(out["id"].as_str().unwrap().starts_with("msg_bdrk_"));
    assert_eq!(out["type"], "message");
    assert_eq!(out["role"], "assistant");
    assert_eq!(out["stop_reason"], "tool_use");
    assert_eq!(
        out["content"],
        json!([
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Tokyo"}},
        ])
    );
    assert_eq!(
        out["usage"],
        json!({"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 3})
    );
    // Ids differ per answer.
    assert_ne!(
        render_chat(ModelFamily::Anthropic, &response, 5)["id"],
        out["id"]
    );

    let mut stopped = answer(vec![text("a")], StopReason::StopSequence);
    stopped.stop_sequence = Some("END".into());
    let out = render_chat(ModelFamily::Anthropic, &stopped, 0);
    assert_eq!(out["stop_reason"], "stop_sequence");
    assert_eq!(out["stop_sequence"], "END");
    for (reason, name) in [
        (StopReason::EndTurn, "end_turn"),
        (StopReason::MaxTokens, "max_tokens"),
        (StopReason::ContentFiltered, "refusal"),
    ] {
        let out = rendered(ModelFamily::Anthropic, vec![], reason);
        assert_eq!(out["stop_reason"], name);
        assert_eq!(out["stop_sequence"], Value::Null);
    }
}

// ---- Titan Text --------------------------------------------------------------------------

#[test]
fn titan_text_translates() {
    let req = chat(
        ModelFamily::TitanText,
        json!({"inputText": "User: Hello\nBot:", "textGenerationConfig": {"maxTokenCount": 64, "temperature": 0.7, "topP": 0.9, "stopSequences": ["|"]}}),
    );
    assert_eq!(req.messages, vec![ChatMessage::user(vec![text("Hello")])]);
    assert_eq!(req.max_tokens, Some(64));
    assert_eq!(req.temperature, Some(0.7));
    assert_eq!(req.top_p, Some(0.9));
    assert_eq!(req.stop_sequences, vec!["|".to_owned()]);
    // No convention: the text as it is.
    let req = chat(
        ModelFamily::TitanText,
        json!({"inputText": "Write a poem. "}),
    );
    assert_eq!(
        req.messages,
        vec![ChatMessage::user(vec![text("Write a poem. ")])]
    );
}

#[test]
fn titan_text_defects() {
    assert_eq!(
        fields(
            ModelFamily::TitanText,
            json!({"textGenerationConfig": {"maxTokenCount": 0, "temperature": "hot", "topK": 3}})
        ),
        vec![
            "modelInput.textGenerationConfig.topK",
            "modelInput.textGenerationConfig.temperature",
            "modelInput.textGenerationConfig.maxTokenCount",
            "modelInput.inputText",
        ]
    );
    assert_eq!(
        fields(ModelFamily::TitanText, json!({"inputText": "  "})),
        vec!["modelInput.inputText"]
    );
}

#[test]
fn titan_text_response_shape() {
    let out = rendered(
        ModelFamily::TitanText,
        vec![text("Hello "), text("there")],
        StopReason::MaxTokens,
    );
    expect_shape(
        &out,
        &[("inputTextTokenCount", "int"), ("results", "array")],
    );
    let result = &out["results"][0];
    expect_shape(
        result,
        &[
            ("tokenCount", "int"),
            ("outputText", "string"),
            ("completionReason", "string"),
        ],
    );
    assert_eq!(result["outputText"], "Hello there");
    assert_eq!(result["completionReason"], "LENGTH");
    assert_eq!(out["inputTextTokenCount"], 11);
    for (reason, name) in [
        (StopReason::EndTurn, "FINISH"),
        (StopReason::StopSequence, "STOP_CRITERIA_MET"),
        (StopReason::ContentFiltered, "CONTENT_FILTERED"),
    ] {
        let out = rendered(ModelFamily::TitanText, vec![], reason);
        assert_eq!(out["results"][0]["completionReason"], name);
    }
}

// ---- Titan Embeddings --------------------------------------------------------------------

#[test]
fn titan_embed_translates() {
    let item = embed(json!({"inputText": "hello"}));
    assert_eq!(
        item,
        EmbedItem {
            text: "hello".into(),
            dimensions: None,
            normalize: true,
            float: true,
            binary: false
        }
    );
    let item = embed(
        json!({"inputText": "hi", "dimensions": 512, "normalize": false, "embeddingTypes": ["binary"]}),
    );
    assert_eq!(item.dimensions, Some(512));
    assert!(!item.normalize);
    assert!(!item.float);
    assert!(item.binary);
    let item = embed(json!({"inputText": "hi", "embeddingTypes": ["float", "binary"]}));
    assert!(item.float && item.binary);
}

#[test]
fn titan_embed_defects() {
    let d = defects(
        ModelFamily::TitanEmbed,
        json!({"inputText": "x", "dimensions": 300}),
    );
    assert_eq!(
        d,
        vec![Defect::new(
            "modelInput.dimensions",
            "must be 256, 512 or 1024, found 300"
        )]
    );
    assert_eq!(
        fields(
            ModelFamily::TitanEmbed,
            json!({"dimensions": "256", "normalize": "yes", "embeddingTypes": ["int8"], "texts": []})
        ),
        vec![
            "modelInput.texts",
            "modelInput.dimensions",
            "modelInput.normalize",
            "modelInput.embeddingTypes[0]",
            "modelInput.inputText",
        ]
    );
    assert_eq!(
        fields(
            ModelFamily::TitanEmbed,
            json!({"inputText": "x", "embeddingTypes": []})
        ),
        vec!["modelInput.embeddingTypes"]
    );
}

#[test]
fn titan_embed_response_normalises_cuts_and_binarises() {
    let item = EmbedItem {
        text: "x".into(),
        dimensions: Some(2),
        normalize: true,
        float: true,
        binary: true,
    };
    let out = render_embed(ModelFamily::TitanEmbed, &item, &[3.0, -4.0, 100.0], 5);
    expect_shape(
        &out,
        &[
            ("embedding", "array"),
            ("inputTextTokenCount", "int"),
            ("embeddingsByType", "object"),
        ],
    );
    assert_eq!(out["embedding"], json!([0.6, -0.8]));
    assert_eq!(out["embeddingsByType"]["float"], json!([0.6, -0.8]));
    assert_eq!(out["embeddingsByType"]["binary"], json!([1, 0]));
    assert_eq!(out["inputTextTokenCount"], 5);

    // Default record: float only, shortest decimals, no normalising when asked not to.
    let item = EmbedItem {
        text: "x".into(),
        dimensions: None,
        normalize: false,
        float: true,
        binary: false,
    };
    let out = render_embed(ModelFamily::TitanEmbed, &item, &[0.1, 2.0, f32::NAN], 1);
    assert_eq!(
        out.to_string(),
        r#"{"embedding":[0.1,2.0,0],"embeddingsByType":{"float":[0.1,2.0,0]},"inputTextTokenCount":1}"#
    );

    // A zero vector stays zero; binary only leaves float out of embeddingsByType.
    let item = EmbedItem {
        text: "x".into(),
        dimensions: None,
        normalize: true,
        float: false,
        binary: true,
    };
    let out = render_embed(ModelFamily::TitanEmbed, &item, &[0.0, 0.0], 1);
    assert_eq!(out["embedding"], json!([0.0, 0.0]));
    assert_eq!(out["embeddingsByType"], json!({"binary": [0, 0]}));
}

// ---- Nova --------------------------------------------------------------------------------

#[test]
fn nova_translates_both_spellings() {
    let base = json!({
        "schemaVersion": "messages-v1",
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "Look"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"q": 1}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"json": {"a": 1}}]}}]},
        ],
        "toolConfig": {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {"type": "object"}}}}], "toolChoice": {"any": {}}},
    });
    for config in [
        json!({"maxTokens": 64, "topP": 0.9, "topK": 20, "temperature": 0.3, "stopSequences": ["x"]}),
        json!({"max_new_tokens": 64, "top_p": 0.9, "top_k": 20, "temperature": 0.3, "stopSequences": ["x"]}),
    ] {
        let mut body = base.clone();
        body["inferenceConfig"] = config;
        let req = chat(ModelFamily::Nova, body);
        assert_eq!(req.system, vec!["Be brief.".to_owned()]);
        assert_eq!(req.max_tokens, Some(64));
        assert_eq!(req.top_p, Some(0.9));
        assert_eq!(req.top_k, Some(20));
        assert_eq!(req.temperature, Some(0.3));
        assert_eq!(req.stop_sequences, vec!["x".to_owned()]);
        assert_eq!(req.messages.len(), 3);
        assert_eq!(
            req.messages[0].content[1],
            ContentPart::Image {
                format: "png".into(),
                data_base64: "iVBORw0KGgo=".into()
            }
        );
        assert!(matches!(
            req.messages[1].content[0],
            ContentPart::ToolUse { .. }
        ));
        assert!(matches!(
            req.messages[2].content[0],
            ContentPart::ToolResult { .. }
        ));
        assert_eq!(req.tools.len(), 1);
        assert_eq!(req.tool_choice, Some(ToolChoice::Any));
    }
}

#[test]
fn nova_defects() {
    assert_eq!(
        fields(
            ModelFamily::Nova,
            json!({
                "schemaVersion": "v2",
                "messages": [{"role": "user", "content": [{"text": "x"}]}],
                "inferenceConfig": {"maxTokens": 10, "max_new_tokens": 10, "topP": 2, "maxTokenCount": 5},
            })
        ),
        vec![
            "modelInput.schemaVersion",
            "modelInput.inferenceConfig.maxTokenCount",
            "modelInput.inferenceConfig.max_new_tokens",
            "modelInput.inferenceConfig.topP",
        ]
    );
    assert_eq!(
        fields(ModelFamily::Nova, json!({"system": [{"text": "x"}]})),
        vec!["modelInput.messages"]
    );
}

#[test]
fn nova_response_shape() {
    // A latency, to show it stays out of the native shape (only Converse reports one).
    let out = render_chat(
        ModelFamily::Nova,
        &answer(vec![text("Hi")], StopReason::EndTurn),
        9,
    );
    expect_shape(
        &out,
        &[
            ("output", "object"),
            ("stopReason", "string"),
            ("usage", "object"),
        ],
    );
    assert_eq!(
        out["output"],
        json!({"message": {"role": "assistant", "content": [{"text": "Hi"}]}})
    );
    assert_eq!(out["stopReason"], "end_turn");
    assert_eq!(
        out["usage"],
        json!({"inputTokens": 11, "outputTokens": 7, "totalTokens": 18})
    );
}

// ---- Llama -------------------------------------------------------------------------------

#[test]
fn llama_translates_templates() {
    let req = chat(
        ModelFamily::Llama,
        json!({
            "prompt": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "max_gen_len": 64, "temperature": 0.5, "top_p": 0.9,
        }),
    );
    assert_eq!(req.system, vec!["Be brief.".to_owned()]);
    assert_eq!(req.messages, vec![ChatMessage::user(vec![text("Hi")])]);
    assert_eq!(req.max_tokens, Some(64));
    assert_eq!(req.temperature, Some(0.5));
    assert_eq!(req.top_p, Some(0.9));

    let req = chat(
        ModelFamily::Llama,
        json!({"prompt": "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"}),
    );
    assert_eq!(req.system, vec!["Sys".to_owned()]);
    assert_eq!(
        req.messages,
        vec![
            ChatMessage::user(vec![text("Q1")]),
            ChatMessage::assistant(vec![text("A1")]),
            ChatMessage::user(vec![text("Q2")])
        ]
    );

    let req = chat(ModelFamily::Llama, json!({"prompt": "Tell me a joke."}));
    assert_eq!(
        req.messages,
        vec![ChatMessage::user(vec![text("Tell me a joke.")])]
    );
}

#[test]
fn llama_images_go_to_the_image_turn() {
    let req = chat(
        ModelFamily::Llama,
        json!({
            "prompt": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What is this?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "images": ["/9j/4AAQ"],
        }),
    );
    assert_eq!(
        req.messages,
        vec![ChatMessage::user(vec![
            ContentPart::Image {
                format: "jpeg".into(),
                data_base64: "/9j/4AAQ".into()
            },
            text("What is this?")
        ])]
    );
    assert_eq!(
        fields(
            ModelFamily::Llama,
            json!({"prompt": "x", "images": ["AAAA", 5]})
        ),
        vec!["modelInput.images[0]", "modelInput.images[1]"]
    );
}

#[test]
fn llama_defects() {
    assert_eq!(
        fields(
            ModelFamily::Llama,
            json!({"max_gen_len": 0, "temperature": 3, "top_p": "x", "top_k": 5})
        ),
        vec![
            "modelInput.top_k",
            "modelInput.max_gen_len",
            "modelInput.temperature",
            "modelInput.top_p",
            "modelInput.prompt",
        ]
    );
    assert_eq!(
        defects(
            ModelFamily::Llama,
            json!({"prompt": "<|begin_of_text|><|start_header_id|>assistant<|end_header_id|>\n\n"})
        ),
        vec![Defect::new(
            "modelInput.prompt",
            "the chat template holds no user or assistant text"
        )]
    );
    assert_eq!(
        fields(ModelFamily::Llama, json!({"prompt": " "})),
        vec!["modelInput.prompt"]
    );
}

#[test]
fn llama_response_shape() {
    let out = rendered(
        ModelFamily::Llama,
        vec![text("Hello")],
        StopReason::MaxTokens,
    );
    expect_shape(
        &out,
        &[
            ("generation", "string"),
            ("prompt_token_count", "int"),
            ("generation_token_count", "int"),
            ("stop_reason", "string"),
        ],
    );
    assert_eq!(out["generation"], "Hello");
    assert_eq!(out["stop_reason"], "length");
    let out = rendered(ModelFamily::Llama, vec![], StopReason::EndTurn);
    assert_eq!(out["stop_reason"], "stop");
    assert_eq!(out["generation"], "");
}

// ---- Mistral -----------------------------------------------------------------------------

#[test]
fn mistral_translates() {
    let req = chat(
        ModelFamily::Mistral,
        json!({"prompt": "<s>[INST] Hi [/INST] Hello</s>[INST] Bye [/INST]", "max_tokens": 32, "temperature": 0.2, "top_p": 0.8, "top_k": 50, "stop": ["\n\n"]}),
    );
    assert_eq!(
        req.messages,
        vec![
            ChatMessage::user(vec![text("Hi")]),
            ChatMessage::assistant(vec![text("Hello")]),
            ChatMessage::user(vec![text("Bye")])
        ]
    );
    assert_eq!(req.max_tokens, Some(32));
    assert_eq!(req.temperature, Some(0.2));
    assert_eq!(req.top_p, Some(0.8));
    assert_eq!(req.top_k, Some(50));
    assert_eq!(req.stop_sequences, vec!["\n\n".to_owned()]);
}

#[test]
fn mistral_defects() {
    assert_eq!(
        fields(
            ModelFamily::Mistral,
            json!({"prompt": "x", "stop": vec!["a"; 11], "top_k": -1, "messages": []})
        ),
        vec!["modelInput.messages", "modelInput.top_k", "modelInput.stop"]
    );
}

/// The string lists of every dialect: each item must be a non-empty string, and a list over
/// its limit (Mistral's `stop`) is reported once while its items are still checked.
#[test]
fn string_lists_report_each_bad_item_and_an_overlong_list() {
    let bad = json!(["a", "", 5]);
    let item_defects = |at: &str| {
        vec![
            Defect::new(format!("{at}[1]"), "must not be empty"),
            Defect::new(format!("{at}[2]"), "must be a string, found a number"),
        ]
    };
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let anthropic = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
        "messages": msgs, "stop_sequences": bad, "anthropic_beta": bad});
    let mut expected = item_defects("modelInput.anthropic_beta");
    expected.extend(item_defects("modelInput.stop_sequences"));
    assert_eq!(defects(ModelFamily::Anthropic, anthropic), expected);
    let nova = json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
        "inferenceConfig": {"stopSequences": bad}});
    assert_eq!(
        defects(ModelFamily::Nova, nova),
        item_defects("modelInput.inferenceConfig.stopSequences")
    );
    let titan = json!({"inputText": "Hi", "textGenerationConfig": {"stopSequences": bad}});
    assert_eq!(
        defects(ModelFamily::TitanText, titan),
        item_defects("modelInput.textGenerationConfig.stopSequences")
    );
    let mut stop = vec![json!("a"); 10];
    stop.push(json!(""));
    let mut expected = vec![Defect::new(
        "modelInput.stop",
        "must have at most 10 items, found 11",
    )];
    expected.push(Defect::new("modelInput.stop[10]", "must not be empty"));
    assert_eq!(
        defects(ModelFamily::Mistral, json!({"prompt": "x", "stop": stop})),
        expected
    );
}

#[test]
fn mistral_response_shape() {
    let out = rendered(
        ModelFamily::Mistral,
        vec![text("Hi")],
        StopReason::StopSequence,
    );
    expect_shape(&out, &[("outputs", "array")]);
    expect_shape(
        &out["outputs"][0],
        &[("text", "string"), ("stop_reason", "string")],
    );
    assert_eq!(out["outputs"][0]["text"], "Hi");
    assert_eq!(out["outputs"][0]["stop_reason"], "stop");
    let out = rendered(ModelFamily::Mistral, vec![], StopReason::MaxTokens);
    assert_eq!(out["outputs"][0]["stop_reason"], "length");
}

#[test]
fn null_members_count_as_absent() {
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(json!({"temperature": null, "system": null})),
    );
    assert_eq!(req.temperature, None);
    let item = embed(json!({"inputText": "x", "dimensions": null}));
    assert_eq!(item.dimensions, None);
}

#[test]
fn anthropic_tool_result_documents() {
    let req = chat(
        ModelFamily::Anthropic,
        anthropic(json!({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "rows"}},
            ]},
            {"type": "tool_result", "tool_use_id": "t2", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            ]},
        ]}]})),
    );
    assert_eq!(
        req.messages[0].content,
        vec![
            ContentPart::ToolResult {
                tool_use_id: "t1".into(),
                content: vec![ToolResultPart::Text("rows".into())],
                is_error: false
            },
            ContentPart::Unsupported {
                kind: "tool_result with document content".into()
            },
        ]
    );
}
