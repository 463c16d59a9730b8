//! Converse request validation and translation, rule by rule (spec A7): for each rule a
//! valid body and a broken one, checking the exact path and reason of each defect.

use batchd_formats::Defect;
use batchd_formats::converse::{ConverseOptions, MAX_DEFECTS, parse_converse};
use batchd_formats::neutral::{
    ChatRequest, ContentPart, JsonSchemaFormat, Role, ToolChoice, ToolResultPart,
};
use serde_json::{Value, json};

const PNG: &str = "iVBORw0KGgo=";

fn parse(body: &Value) -> Result<ChatRequest, Vec<Defect>> {
    parse_converse(&body.to_string(), &ConverseOptions::default())
}

fn ok(body: Value) -> ChatRequest {
    parse(&body).unwrap_or_else(|d| panic!("unexpected defects for {body}: {d:?}"))
}

fn defects(body: Value) -> Vec<Defect> {
    match parse(&body) {
        Ok(req) => panic!("expected defects for {body}, got {req:?}"),
        Err(d) => d,
    }
}

/// Exactly one defect, at `field`, with `reason`.
fn rejects(body: Value, field: &str, reason: &str) {
    assert_eq!(defects(body), vec![Defect::new(field, reason)]);
}

/// Exactly one defect, at `field` (reason not checked).
fn rejects_at(body: Value, field: &str) {
    let d = defects(body);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].field, field, "{d:?}");
}

/// A body with one user message holding `block`.
fn with_block(block: Value) -> Value {
    json!({"messages": [{"role": "user", "content": [block]}]})
}

/// A valid body plus top-level `key: value`.
fn with_member(key: &str, value: Value) -> Value {
    let mut body = with_block(json!({"text": "hi"}));
    body[key] = value;
    body
}

/// The single content part a body with one block translates to.
fn part(block: Value) -> Option<ContentPart> {
    let req = ok(with_block(block));
    req.messages[0].content.first().cloned()
}

const BLOCK: &str = "modelInput.messages[0].content[0]";

fn at(suffix: &str) -> String {
    format!("{BLOCK}{suffix}")
}

// ---- top level ----

#[test]
fn minimal_body() {
    let req = ok(with_block(json!({"text": "hi"})));
    assert_eq!(req.messages.len(), 1);
    assert_eq!(req.messages[0].role, Role::User);
    assert_eq!(
        req.messages[0].content,
        vec![ContentPart::Text("hi".into())]
    );
    assert_eq!(
        req,
        ChatRequest {
            messages: req.messages.clone(),
            ..ChatRequest::default()
        }
    );
}

#[test]
fn all_top_level_members_accepted() {
    let req = ok(json!({
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 10},
        "toolConfig": {"tools": [{"toolSpec": {"name": "t", "inputSchema": {"json": {}}}}]},
        "guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"},
        "additionalModelRequestFields": {"top_k": 5},
        "additionalModelResponseFieldPaths": ["/stop_sequence"],
        "promptVariables": {"x": {"text": "y"}},
        "requestMetadata": {"k": "v"},
        "performanceConfig": {"latency": "standard"},
        "serviceTier": {"type": "default"},
        "outputConfig": {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": "{}"}}}},
    }));
    assert_eq!(
        req.extra,
        Some(json!({"top_k": 5}).as_object().cloned().unwrap_or_default())
    );
}

#[test]
fn unknown_top_level_key() {
    rejects(
        with_member("temperature", json!(0.5)),
        "modelInput.temperature",
        "unknown field",
    );
}

#[test]
fn model_id_comes_from_the_job() {
    let d = defects(with_member("modelId", json!("anthropic.claude")));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, "modelInput.modelId");
    assert!(
        d[0].reason.contains("the model comes from the job"),
        "{}",
        d[0].reason
    );
}

#[test]
fn body_must_be_an_object() {
    rejects(
        json!([1]),
        "modelInput",
        "must be an object, found an array",
    );
    let d = parse_converse("{\"messages\": [", &ConverseOptions::default()).expect_err("bad");
    assert_eq!(d[0].field, "modelInput");
    assert!(d[0].reason.starts_with("invalid JSON: "));
}

#[test]
fn null_members_count_as_absent() {
    let req = ok(json!({
        "messages": [{"role": "user", "content": [{"text": "hi", "image": null}]}],
        "system": null,
        "inferenceConfig": {"maxTokens": null},
    }));
    assert_eq!(req.max_tokens, None);
    rejects(json!({"messages": null}), "modelInput.messages", "missing");
}

#[test]
fn every_defect_is_reported() {
    let d = defects(json!({
        "messages": [
            {"role": "robot", "content": []},
            {"role": "user", "content": [{"text": 1}, {"foo": {}}]},
        ],
        "inferenceConfig": {"temperature": 2, "topP": -1, "maxTokens": 0},
        "bogus": true,
    }));
    let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "modelInput.bogus",
            "modelInput.messages[0].role",
            "modelInput.messages[0].content",
            "modelInput.messages[1].content[0].text",
            "modelInput.messages[1].content[1]",
            "modelInput.inferenceConfig.maxTokens",
            "modelInput.inferenceConfig.temperature",
            "modelInput.inferenceConfig.topP",
        ]
    );
}

#[test]
fn defects_are_capped() {
    let blocks: Vec<Value> = (0..500).map(|i| json!({"text": i})).collect();
    let d = defects(json!({"messages": [{"role": "user", "content": blocks}]}));
    assert_eq!(d.len(), MAX_DEFECTS);
    assert_eq!(d[0].field, "modelInput.messages[0].content[0].text");
    let last = d.last().expect("last");
    assert_eq!(last.field, "modelInput");
    assert!(last.reason.contains("too many defects"), "{}", last.reason);
}

// ---- messages ----

#[test]
fn messages_required_non_empty_array() {
    rejects(json!({}), "modelInput.messages", "missing");
    rejects(
        json!({"messages": []}),
        "modelInput.messages",
        "must not be empty",
    );
    rejects(
        json!({"messages": {}}),
        "modelInput.messages",
        "must be an array, found an object",
    );
    rejects(
        json!({"messages": ["hi"]}),
        "modelInput.messages[0]",
        "must be an object, found a string",
    );
}

#[test]
fn message_role() {
    let req = ok(json!({"messages": [
        {"role": "user", "content": [{"text": "a"}]},
        {"role": "assistant", "content": [{"text": "b"}]},
    ]}));
    assert_eq!(req.messages[1].role, Role::Assistant);
    rejects(
        json!({"messages": [{"role": "robot", "content": [{"text": "x"}]}]}),
        "modelInput.messages[0].role",
        r#"must be "user" or "assistant", found "robot""#,
    );
    rejects(
        json!({"messages": [{"role": 1, "content": [{"text": "x"}]}]}),
        "modelInput.messages[0].role",
        "must be a string, found a number",
    );
    rejects(
        json!({"messages": [{"content": [{"text": "x"}]}]}),
        "modelInput.messages[0].role",
        "missing",
    );
}

#[test]
fn message_content() {
    rejects(
        json!({"messages": [{"role": "user", "content": []}]}),
        "modelInput.messages[0].content",
        "must not be empty",
    );
    rejects(
        json!({"messages": [{"role": "user"}]}),
        "modelInput.messages[0].content",
        "missing",
    );
    rejects(
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        "modelInput.messages[0].content",
        "must be an array, found a string",
    );
}

#[test]
fn message_unknown_key() {
    rejects(
        json!({"messages": [{"role": "user", "content": [{"text": "x"}], "name": "bob"}]}),
        "modelInput.messages[0].name",
        "unknown field",
    );
}

// ---- content blocks ----

#[test]
fn block_exactly_one_key() {
    rejects(
        with_block(json!({"text": "x", "image": {"format": "png", "source": {"bytes": PNG}}})),
        BLOCK,
        "must have exactly one key, found 2: image, text",
    );
    rejects(
        with_block(json!({})),
        BLOCK,
        "must have exactly one key, found 0",
    );
    rejects(
        with_block(json!("hi")),
        BLOCK,
        "must be an object, found a string",
    );
}

#[test]
fn block_unknown_type() {
    rejects(
        with_block(json!({"foo": {}})),
        BLOCK,
        r#"unknown content block type "foo""#,
    );
}

#[test]
fn text_block() {
    assert_eq!(
        part(json!({"text": "héllo"})),
        Some(ContentPart::Text("héllo".into()))
    );
    rejects(
        with_block(json!({"text": 5})),
        &at(".text"),
        "must be a string, found a number",
    );
    rejects(
        with_block(json!({"text": "  "})),
        &at(".text"),
        "must not be blank",
    );
}

#[test]
fn image_block() {
    assert_eq!(
        part(json!({"image": {"format": "png", "source": {"bytes": PNG}}})),
        Some(ContentPart::Image {
            format: "png".into(),
            data_base64: PNG.into()
        })
    );
    assert_eq!(
        part(
            json!({"image": {"format": "jpeg", "source": {"s3Location": {"uri": "s3://b/k.jpg", "bucketOwner": "111122223333"}}}})
        ),
        Some(ContentPart::Unsupported {
            kind: "image with s3Location source".into()
        })
    );
    rejects(
        with_block(json!({"image": {"format": "bmp", "source": {"bytes": PNG}}})),
        &at(".image.format"),
        r#"must be one of "png", "jpeg", "gif", "webp", found "bmp""#,
    );
    rejects(
        with_block(json!({"image": {"source": {"bytes": PNG}}})),
        &at(".image.format"),
        "missing",
    );
    rejects(
        with_block(json!({"image": {"format": "png"}})),
        &at(".image.source"),
        "missing",
    );
    rejects(
        with_block(json!({"image": {"format": "png", "source": {"bytes": PNG}, "size": 3}})),
        &at(".image.size"),
        "unknown field",
    );
}

#[test]
fn image_source_exactly_one() {
    rejects(
        with_block(
            json!({"image": {"format": "png", "source": {"bytes": PNG, "s3Location": {"uri": "s3://b/k"}}}}),
        ),
        &at(".image.source"),
        "must have exactly one key, found 2: bytes, s3Location",
    );
    rejects(
        with_block(json!({"image": {"format": "png", "source": {"text": "x"}}})),
        &at(".image.source"),
        r#"unknown source type "text" (expected one of bytes, s3Location)"#,
    );
}

#[test]
fn base64_bytes() {
    for good in ["AAAA", "AA==", "AAA=", "ab+/Zz09"] {
        assert!(
            part(json!({"image": {"format": "gif", "source": {"bytes": good}}})).is_some(),
            "{good}"
        );
    }
    let path = at(".image.source.bytes");
    for (bad, reason) in [
        ("", "must not be empty"),
        (
            "AAA",
            "must be padded base64: length 3 is not a multiple of 4 or has too much padding",
        ),
        (
            "A===",
            "must be padded base64: length 4 is not a multiple of 4 or has too much padding",
        ),
        (
            "AA-_",
            "must be base64 (standard alphabet): invalid character '-' at position 2",
        ),
        (
            "AA=A",
            "must be base64 (standard alphabet): invalid character '=' at position 2",
        ),
        (
            "AA\nA",
            "must be base64 (standard alphabet): invalid character '\\n' at position 2",
        ),
        (
            "data:image/png;base64,AAAA",
            "must be base64 (standard alphabet): invalid character ':' at position 4",
        ),
    ] {
        rejects(
            with_block(json!({"image": {"format": "png", "source": {"bytes": bad}}})),
            &path,
            reason,
        );
    }
    rejects(
        with_block(json!({"image": {"format": "png", "source": {"bytes": [1, 2]}}})),
        &path,
        "must be a string, found an array",
    );
}

#[test]
fn s3_location() {
    rejects(
        with_block(
            json!({"image": {"format": "png", "source": {"s3Location": {"uri": "https://b/k"}}}}),
        ),
        &at(".image.source.s3Location.uri"),
        r#"must be an s3:// URI, found "https://b/k""#,
    );
    rejects(
        with_block(json!({"image": {"format": "png", "source": {"s3Location": {}}}})),
        &at(".image.source.s3Location.uri"),
        "missing",
    );
    rejects(
        with_block(
            json!({"image": {"format": "png", "source": {"s3Location": {"uri": "s3://b/k", "bucketOwner": 1}}}}),
        ),
        &at(".image.source.s3Location.bucketOwner"),
        "must be a string, found a number",
    );
}

#[test]
fn document_block() {
    assert_eq!(
        part(json!({"document": {"format": "txt", "name": "notes", "source": {"text": "body"}}})),
        Some(ContentPart::Document {
            name: "notes".into(),
            format: Some("txt".into()),
            text: "body".into()
        })
    );
    assert_eq!(
        part(
            json!({"document": {"name": "n", "source": {"content": [{"text": "a"}, {"text": "b"}]}, "context": "c", "citations": {"enabled": true}}})
        ),
        Some(ContentPart::Document {
            name: "n".into(),
            format: None,
            text: "a\nb".into()
        })
    );
    assert_eq!(
        part(json!({"document": {"format": "pdf", "name": "n", "source": {"bytes": "JVBERi0="}}})),
        Some(ContentPart::Unsupported {
            kind: "document with bytes source".into()
        })
    );
    assert_eq!(
        part(
            json!({"document": {"format": "pdf", "name": "n", "source": {"s3Location": {"uri": "s3://b/d.pdf"}}}})
        ),
        Some(ContentPart::Unsupported {
            kind: "document with s3Location source".into()
        })
    );
}

#[test]
fn document_rules() {
    let doc = |d: Value| with_block(json!({"document": d}));
    rejects(
        doc(json!({"format": "exe", "name": "n", "source": {"text": "t"}})),
        &at(".document.format"),
        r#"must be one of "pdf", "csv", "doc", "docx", "xls", "xlsx", "html", "txt", "md", found "exe""#,
    );
    rejects(
        doc(json!({"source": {"text": "t"}})),
        &at(".document.name"),
        "missing",
    );
    rejects(
        doc(json!({"name": "", "source": {"text": "t"}})),
        &at(".document.name"),
        "must be 1 to 200 characters long, found 0",
    );
    let long: String = "é".repeat(201);
    rejects(
        doc(json!({"name": long, "source": {"text": "t"}})),
        &at(".document.name"),
        "must be 1 to 200 characters long, found 201",
    );
    assert!(
        part(json!({"document": {"name": "é".repeat(200), "source": {"text": "t"}}})).is_some()
    );
    rejects(
        doc(json!({"name": "n"})),
        &at(".document.source"),
        "missing",
    );
    rejects(
        doc(json!({"name": "n", "source": {"content": [{"image": {}}]}})),
        &at(".document.source.content[0]"),
        r#"unknown block type "image" (expected text)"#,
    );
    rejects(
        doc(json!({"name": "n", "source": {"content": []}})),
        &at(".document.source.content"),
        "must not be empty",
    );
    rejects(
        doc(json!({"name": "n", "source": {"text": "t"}, "citations": {}})),
        &at(".document.citations.enabled"),
        "missing",
    );
    rejects(
        doc(json!({"name": "n", "source": {"text": "t"}, "pages": 2})),
        &at(".document.pages"),
        "unknown field",
    );
}

#[test]
fn video_block() {
    assert_eq!(
        part(
            json!({"video": {"format": "three_gp", "source": {"s3Location": {"uri": "s3://b/v.3gp"}}}})
        ),
        Some(ContentPart::Unsupported {
            kind: "video".into()
        })
    );
    rejects(
        with_block(json!({"video": {"format": "avi", "source": {"bytes": "AAAA"}}})),
        &at(".video.format"),
        r#"must be one of "mkv", "mov", "mp4", "webm", "flv", "mpeg", "mpg", "wmv", "three_gp", found "avi""#,
    );
    rejects(
        with_block(json!({"video": {"format": "mp4"}})),
        &at(".video.source"),
        "missing",
    );
}

#[test]
fn object_only_blocks() {
    for kind in ["audio", "guardContent", "citationsContent", "searchResult"] {
        assert_eq!(
            part(json!({kind: {"anything": 1}})),
            Some(ContentPart::Unsupported { kind: kind.into() })
        );
        rejects(
            with_block(json!({kind: "x"})),
            &at(&format!(".{kind}")),
            "must be an object, found a string",
        );
    }
}

#[test]
fn tool_use_block() {
    assert_eq!(
        part(
            json!({"toolUse": {"toolUseId": "tooluse_a.b:c-1", "name": "get_weather", "input": {"city": "Paris"}}})
        ),
        Some(ContentPart::ToolUse {
            id: "tooluse_a.b:c-1".into(),
            name: "get_weather".into(),
            input: json!({"city": "Paris"})
        })
    );
    rejects(
        with_block(json!({"toolUse": {"toolUseId": "id 1", "name": "n", "input": {}}})),
        &at(".toolUse.toolUseId"),
        r#"must match [a-zA-Z0-9_.:-]{1,64}, found "id 1""#,
    );
    rejects(
        with_block(json!({"toolUse": {"toolUseId": "a".repeat(65), "name": "n", "input": {}}})),
        &at(".toolUse.toolUseId"),
        &format!(
            "must match [a-zA-Z0-9_.:-]{{1,64}}, found \"{}\"…",
            "a".repeat(64)
        ),
    );
    rejects(
        with_block(json!({"toolUse": {"toolUseId": "t", "name": "get.weather", "input": {}}})),
        &at(".toolUse.name"),
        r#"must match [a-zA-Z0-9_-]{1,64}, found "get.weather""#,
    );
    rejects(
        with_block(json!({"toolUse": {"toolUseId": "t", "name": "n"}})),
        &at(".toolUse.input"),
        "missing",
    );
    let d = defects(with_block(json!({"toolUse": {"extra": 1}})));
    let fields: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            at(".toolUse.extra"),
            at(".toolUse.toolUseId"),
            at(".toolUse.name"),
            at(".toolUse.input")
        ]
    );
}

#[test]
fn tool_result_block() {
    assert_eq!(
        part(
            json!({"toolResult": {"toolUseId": "t1", "status": "error", "content": [
                {"json": {"temp": 21}}, {"text": "sunny"}, {"image": {"format": "webp", "source": {"bytes": "AAAA"}}},
            ]}})
        ),
        Some(ContentPart::ToolResult {
            tool_use_id: "t1".into(),
            content: vec![
                ToolResultPart::Json(json!({"temp": 21})),
                ToolResultPart::Text("sunny".into()),
                ToolResultPart::Image {
                    format: "webp".into(),
                    data_base64: "AAAA".into()
                },
            ],
            is_error: true,
        })
    );
    assert_eq!(
        part(json!({"toolResult": {"toolUseId": "t1", "content": []}})),
        Some(ContentPart::ToolResult {
            tool_use_id: "t1".into(),
            content: vec![],
            is_error: false
        })
    );
    // A text document is text; a part the neutral form cannot carry makes the whole block
    // Unsupported, not dropped.
    assert_eq!(
        part(json!({"toolResult": {"toolUseId": "t1", "content": [
            {"text": "a"}, {"document": {"name": "d", "source": {"text": "t"}}},
        ]}})),
        Some(ContentPart::ToolResult {
            tool_use_id: "t1".into(),
            content: vec![
                ToolResultPart::Text("a".into()),
                ToolResultPart::Text("t".into())
            ],
            is_error: false
        })
    );
    assert_eq!(
        part(json!({"toolResult": {"toolUseId": "t1", "content": [
            {"text": "a"}, {"document": {"name": "d", "format": "pdf", "source": {"bytes": "JVBERi0="}}},
        ]}})),
        Some(ContentPart::Unsupported {
            kind: "toolResult with document with bytes source content".into()
        })
    );
    rejects(
        with_block(json!({"toolResult": {"toolUseId": "t1", "content": [{"audio": {}}]}})),
        &at(".toolResult.content[0]"),
        r#"unknown tool result block type "audio" (expected json, text, image, document, video or searchResult)"#,
    );
    rejects(
        with_block(json!({"toolResult": {"toolUseId": "t1", "content": [], "status": "ok"}})),
        &at(".toolResult.status"),
        r#"must be "success" or "error", found "ok""#,
    );
    rejects(
        with_block(json!({"toolResult": {"toolUseId": "t1"}})),
        &at(".toolResult.content"),
        "missing",
    );
    rejects(
        with_block(json!({"toolResult": {"content": []}})),
        &at(".toolResult.toolUseId"),
        "missing",
    );
    rejects(
        with_block(
            json!({"toolResult": {"toolUseId": "t1", "content": [{"text": "a", "json": {}}]}}),
        ),
        &at(".toolResult.content[0]"),
        "must have exactly one key, found 2: json, text",
    );
}

#[test]
fn cache_point_block() {
    let req = ok(json!({"messages": [{"role": "user", "content": [
        {"text": "a"}, {"cachePoint": {"type": "default", "ttl": "1h"}},
    ]}]}));
    assert_eq!(req.messages[0].content, vec![ContentPart::Text("a".into())]);
    rejects(
        with_block(json!({"cachePoint": {"type": "ephemeral"}})),
        &at(".cachePoint.type"),
        r#"must be "default", found "ephemeral""#,
    );
    rejects(
        with_block(json!({"cachePoint": {}})),
        &at(".cachePoint.type"),
        "missing",
    );
    rejects(
        with_block(json!({"cachePoint": {"type": "default", "ttl": "2h"}})),
        &at(".cachePoint.ttl"),
        r#"must be "5m" or "1h", found "2h""#,
    );
}

#[test]
fn reasoning_block() {
    assert_eq!(
        part(json!({"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "sig"}}})),
        Some(ContentPart::Reasoning { text: "hmm".into() })
    );
    assert_eq!(
        part(json!({"reasoningContent": {"redactedContent": "AAAA"}})),
        Some(ContentPart::Unsupported {
            kind: "redacted reasoning".into()
        })
    );
    rejects(
        with_block(
            json!({"reasoningContent": {"reasoningText": {"text": "a"}, "redactedContent": "AAAA"}}),
        ),
        &at(".reasoningContent"),
        "must have exactly one key, found 2: reasoningText, redactedContent",
    );
    rejects(
        with_block(json!({"reasoningContent": {"reasoningText": {}}})),
        &at(".reasoningContent.reasoningText.text"),
        "missing",
    );
    rejects(
        with_block(json!({"reasoningContent": {"redactedContent": "!!"}})),
        &at(".reasoningContent.redactedContent"),
        "must be base64 (standard alphabet): invalid character '!' at position 0",
    );
}

// ---- system ----

#[test]
fn system_blocks() {
    let req = ok(with_member(
        "system",
        json!([
            {"text": "one"}, {"cachePoint": {"type": "default"}}, {"text": "two"},
            {"guardContent": {"text": {"text": "guarded"}}},
        ]),
    ));
    assert_eq!(
        req.system,
        vec!["one".to_owned(), "two".to_owned(), "guarded".to_owned()]
    );
    rejects(
        with_member("system", json!([{"text": ""}])),
        "modelInput.system[0].text",
        "must not be empty",
    );
    rejects(
        with_member("system", json!({"text": "x"})),
        "modelInput.system",
        "must be an array, found an object",
    );
    rejects(
        with_member("system", json!([{"image": {}}])),
        "modelInput.system[0]",
        r#"unknown system block type "image" (expected text, guardContent or cachePoint)"#,
    );
    rejects(
        with_member(
            "system",
            json!([{"text": "a", "cachePoint": {"type": "default"}}]),
        ),
        "modelInput.system[0]",
        "must have exactly one key, found 2: cachePoint, text",
    );
}

// ---- inferenceConfig ----

#[test]
fn inference_config_translates() {
    let req = ok(with_member(
        "inferenceConfig",
        json!({
            "maxTokens": 4096, "temperature": 1, "topP": 0.25, "stopSequences": ["END", "\n"],
        }),
    ));
    assert_eq!(req.max_tokens, Some(4096));
    assert_eq!(req.temperature, Some(1.0));
    assert_eq!(req.top_p, Some(0.25));
    assert_eq!(req.stop_sequences, vec!["END".to_owned(), "\n".to_owned()]);
}

#[test]
fn inference_config_rules() {
    let ic = |v: Value| with_member("inferenceConfig", v);
    let p = |k: &str| format!("modelInput.inferenceConfig.{k}");
    rejects(
        ic(json!({"temperature": 7})),
        &p("temperature"),
        "must be between 0 and 1, found 7",
    );
    rejects(
        ic(json!({"temperature": -0.5})),
        &p("temperature"),
        "must be between 0 and 1, found -0.5",
    );
    rejects(
        ic(json!({"temperature": "0.5"})),
        &p("temperature"),
        "must be a number, found a string",
    );
    rejects(
        ic(json!({"topP": 1.5})),
        &p("topP"),
        "must be between 0 and 1, found 1.5",
    );
    rejects(
        ic(json!({"maxTokens": 0})),
        &p("maxTokens"),
        "must be at least 1, found 0",
    );
    rejects(
        ic(json!({"maxTokens": -3})),
        &p("maxTokens"),
        "must be at least 1, found -3",
    );
    rejects(
        ic(json!({"maxTokens": 1.5})),
        &p("maxTokens"),
        "must be an integer, found 1.5",
    );
    rejects(
        ic(json!({"maxTokens": 5_000_000_000u64})),
        &p("maxTokens"),
        "must be at most 4294967295, found 5000000000",
    );
    rejects(
        ic(json!({"maxTokens": "10"})),
        &p("maxTokens"),
        "must be an integer, found a string",
    );
    rejects(
        ic(json!({"stopSequences": [""]})),
        "modelInput.inferenceConfig.stopSequences[0]",
        "must not be empty",
    );
    rejects(
        ic(json!({"stopSequences": "END"})),
        &p("stopSequences"),
        "must be an array, found a string",
    );
    let many: Vec<&str> = vec!["x"; 2501];
    rejects(
        ic(json!({"stopSequences": many})),
        &p("stopSequences"),
        "must have at most 2500 items, found 2501",
    );
    assert_eq!(
        ok(ic(json!({"stopSequences": vec!["x"; 2500]})))
            .stop_sequences
            .len(),
        2500
    );
    rejects(ic(json!({"topK": 5})), &p("topK"), "unknown field");
    rejects(
        ic(json!([])),
        "modelInput.inferenceConfig",
        "must be an object, found an array",
    );
}

// ---- toolConfig ----

fn tool(name: &str) -> Value {
    json!({"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object"}}}})
}

#[test]
fn tool_config_translates() {
    let req = ok(with_member(
        "toolConfig",
        json!({
            "tools": [
                {"toolSpec": {"name": "a", "description": "first", "inputSchema": {"json": {"type": "object"}}, "strict": true}},
                {"systemTool": {"name": "web_search"}},
                {"cachePoint": {"type": "default"}},
                tool("b"),
            ],
            "toolChoice": {"tool": {"name": "b"}},
        }),
    ));
    let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(req.tools[0].description.as_deref(), Some("first"));
    assert_eq!(req.tools[0].input_schema, json!({"type": "object"}));
    assert_eq!(req.tool_choice, Some(ToolChoice::Tool("b".into())));
    let any = ok(with_member(
        "toolConfig",
        json!({"tools": [tool("a")], "toolChoice": {"any": {}}}),
    ));
    assert_eq!(any.tool_choice, Some(ToolChoice::Any));
    let system_choice = ok(with_member(
        "toolConfig",
        json!({
            "tools": [{"systemTool": {"name": "web_search"}}], "toolChoice": {"tool": {"name": "web_search"}},
        }),
    ));
    assert!(system_choice.tools.is_empty());
}

#[test]
fn tool_config_disabled() {
    let body = with_member("toolConfig", json!({"tools": [tool("a")]}));
    let d = parse_converse(
        &body.to_string(),
        &ConverseOptions {
            allow_tool_config: false,
        },
    )
    .expect_err("rejected");
    assert_eq!(
        d,
        vec![Defect::new(
            "modelInput.toolConfig",
            "not accepted for this model (toolConfig is disabled in its config)"
        )]
    );
}

#[test]
fn tool_config_rules() {
    let tc = |v: Value| with_member("toolConfig", v);
    rejects(tc(json!({})), "modelInput.toolConfig.tools", "missing");
    rejects(
        tc(json!({"tools": []})),
        "modelInput.toolConfig.tools",
        "must not be empty",
    );
    rejects(
        tc(json!({"tools": [tool("bad name")]})),
        "modelInput.toolConfig.tools[0].toolSpec.name",
        r#"must match [a-zA-Z0-9_-]{1,64}, found "bad name""#,
    );
    rejects(
        tc(json!({"tools": [tool("a"), tool("a")]})),
        "modelInput.toolConfig.tools[1].toolSpec.name",
        r#"duplicate tool name "a""#,
    );
    rejects(
        tc(json!({"tools": [{"toolSpec": {"name": "a"}}]})),
        "modelInput.toolConfig.tools[0].toolSpec.inputSchema",
        "missing",
    );
    rejects(
        tc(json!({"tools": [{"toolSpec": {"name": "a", "inputSchema": {"json": "{}"}}}]})),
        "modelInput.toolConfig.tools[0].toolSpec.inputSchema.json",
        "must be an object, found a string",
    );
    rejects(
        tc(json!({"tools": [{"toolSpec": {"name": "a", "inputSchema": {"yaml": {}}}}]})),
        "modelInput.toolConfig.tools[0].toolSpec.inputSchema",
        r#"unknown schema type "yaml" (expected json)"#,
    );
    rejects(
        tc(
            json!({"tools": [{"toolSpec": {"name": "a", "inputSchema": {"json": {}}, "strict": "yes"}}]}),
        ),
        "modelInput.toolConfig.tools[0].toolSpec.strict",
        "must be a boolean, found a string",
    );
    rejects(
        tc(json!({"tools": [{"function": {}}]})),
        "modelInput.toolConfig.tools[0]",
        r#"unknown tool type "function" (expected toolSpec, systemTool or cachePoint)"#,
    );
    rejects(
        tc(json!({"tools": [{"systemTool": {}}]})),
        "modelInput.toolConfig.tools[0].systemTool.name",
        "missing",
    );
    rejects(
        tc(json!({"tools": [tool("a")], "toolChoice": {"tool": {"name": "b"}}})),
        "modelInput.toolConfig.toolChoice.tool.name",
        r#"names no tool in toolConfig.tools, found "b""#,
    );
    rejects(
        tc(json!({"tools": [tool("a")], "toolChoice": {"auto": {}, "any": {}}})),
        "modelInput.toolConfig.toolChoice",
        "must have exactly one key, found 2: any, auto",
    );
    rejects(
        tc(json!({"tools": [tool("a")], "toolChoice": {"none": {}}})),
        "modelInput.toolConfig.toolChoice",
        r#"unknown tool choice "none" (expected auto, any or tool)"#,
    );
    rejects(
        tc(json!({"tools": [tool("a")], "toolChoice": {"auto": true}})),
        "modelInput.toolConfig.toolChoice.auto",
        "must be an object, found a boolean",
    );
    rejects(
        tc(json!({"tools": [tool("a")], "extra": 1})),
        "modelInput.toolConfig.extra",
        "unknown field",
    );
}

// ---- outputConfig ----

fn output_config(schema: Value) -> Value {
    with_member(
        "outputConfig",
        json!({"textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}}),
    )
}

#[test]
fn output_config_translates() {
    let req = ok(output_config(
        json!({"schema": "{\"type\":\"object\"}", "name": "answer", "description": "the answer"}),
    ));
    assert_eq!(
        req.response_format,
        Some(JsonSchemaFormat {
            name: Some("answer".into()),
            description: Some("the answer".into()),
            schema: json!({"type": "object"})
        })
    );
    assert_eq!(
        ok(with_member("outputConfig", json!({}))).response_format,
        None
    );
}

#[test]
fn output_config_rules() {
    let schema_path = "modelInput.outputConfig.textFormat.structure.jsonSchema.schema";
    let d = defects(output_config(json!({"schema": "{not json"})));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].field, schema_path);
    assert!(
        d[0].reason
            .starts_with("must be a string holding a JSON schema: invalid JSON: "),
        "{}",
        d[0].reason
    );
    rejects(
        output_config(json!({"schema": {"type": "object"}})),
        schema_path,
        "must be a string, found an object",
    );
    rejects(
        output_config(json!({"schema": "[1]"})),
        schema_path,
        "must be a JSON object (a JSON schema) in a string, found an array",
    );
    rejects(output_config(json!({})), schema_path, "missing");
    rejects(
        with_member(
            "outputConfig",
            json!({"textFormat": {"type": "json_object", "structure": {"jsonSchema": {"schema": "{}"}}}}),
        ),
        "modelInput.outputConfig.textFormat.type",
        r#"must be "json_schema", found "json_object""#,
    );
    rejects(
        with_member(
            "outputConfig",
            json!({"textFormat": {"type": "json_schema"}}),
        ),
        "modelInput.outputConfig.textFormat.structure",
        "missing",
    );
    rejects(
        with_member("outputConfig", json!({"format": {}})),
        "modelInput.outputConfig.format",
        "unknown field",
    );
}

// ---- pass-through members ----

#[test]
fn additional_fields_and_type_only_members() {
    rejects(
        with_member("additionalModelRequestFields", json!([1])),
        "modelInput.additionalModelRequestFields",
        "must be an object, found an array",
    );
    for key in [
        "guardrailConfig",
        "promptVariables",
        "requestMetadata",
        "performanceConfig",
        "serviceTier",
    ] {
        assert!(parse(&with_member(key, json!({}))).is_ok(), "{key}");
        rejects(
            with_member(key, json!("x")),
            &format!("modelInput.{key}"),
            "must be an object, found a string",
        );
    }
    rejects(
        with_member("additionalModelResponseFieldPaths", json!("/x")),
        "modelInput.additionalModelResponseFieldPaths",
        "must be an array, found a string",
    );
    rejects_at(
        with_member("additionalModelResponseFieldPaths", json!(vec!["/x"; 11])),
        "modelInput.additionalModelResponseFieldPaths",
    );
}

#[test]
fn no_panic_on_odd_input() {
    for text in [
        "",
        "null",
        "1",
        "\"s\"",
        "{}",
        "[]",
        "{\"messages\":[[]]}",
        "{\"messages\":[{\"content\":[[]]}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"toolResult\":{\"content\":[[],null,{}]}}]}]}",
        "{\"toolConfig\":{\"tools\":[{},[],null,{\"toolSpec\":null}],\"toolChoice\":[]}}",
        "{\"outputConfig\":{\"textFormat\":{\"structure\":{\"jsonSchema\":{\"schema\":\"\\u0000\"}}}}}",
    ] {
        assert!(
            parse_converse(text, &ConverseOptions::default()).is_err(),
            "{text}"
        );
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_converse(&deep, &ConverseOptions::default()).is_err());
}

#[test]
fn response_field_paths_are_limited_and_each_checked() {
    let mut paths = vec![json!("/x"); 10];
    paths.push(json!(""));
    let body = json!({
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
        "additionalModelResponseFieldPaths": paths,
    });
    let at = "modelInput.additionalModelResponseFieldPaths";
    assert_eq!(
        defects(body),
        vec![
            Defect::new(at, "must have at most 10 items, found 11"),
            Defect::new(format!("{at}[10]"), "must not be empty"),
        ]
    );
}
