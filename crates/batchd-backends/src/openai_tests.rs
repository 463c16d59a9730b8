//! Unit tests of the OpenAI backend's translation: request bodies, answers, errors, headers.
#![allow(clippy::unwrap_used)]

use batchd_formats::neutral::{JsonSchemaFormat, ToolSpec};
use serde_json::json;

use super::*;
use crate::http::{ERROR_BODY_EXCERPT, parse_http_date};
use std::time::{SystemTime, UNIX_EPOCH};

fn body_json(request: &ChatRequest) -> Value {
    serde_json::to_value(chat_body("m", request).unwrap()).unwrap()
}

fn text(t: &str) -> ContentPart {
    ContentPart::Text(t.to_owned())
}

#[test]
fn system_multi_turn_and_sampling_fields() {
    let request = ChatRequest {
        system: vec!["You are terse.".into(), "Answer in French.".into()],
        messages: vec![
            ChatMessage::user(vec![text("Hi")]),
            ChatMessage::assistant(vec![
                text("Salut"),
                ContentPart::Reasoning {
                    text: "hidden".into(),
                },
            ]),
            ChatMessage::user(vec![text("Part one"), text("part two")]),
        ],
        max_tokens: Some(64),
        temperature: Some(0.5),
        top_p: Some(0.9),
        top_k: Some(40),
        stop_sequences: vec!["END".into(), "STOP".into()],
        ..Default::default()
    };
    assert_eq!(
        body_json(&request),
        json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "You are terse.\n\nAnswer in French."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Salut"},
                {"role": "user", "content": "Part one\npart two"},
            ],
            "max_tokens": 64,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop": ["END", "STOP"],
        })
    );
}

#[test]
fn minimal_request_omits_unset_fields() {
    let request = ChatRequest {
        messages: vec![ChatMessage::user(vec![text("Hi")])],
        ..Default::default()
    };
    assert_eq!(
        body_json(&request),
        json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    );
}

#[test]
fn images_and_documents_make_a_content_array() {
    let request = ChatRequest {
        messages: vec![ChatMessage::user(vec![
            ContentPart::Document {
                name: "report".into(),
                format: Some("txt".into()),
                text: "numbers".into(),
            },
            ContentPart::Image {
                format: "png".into(),
                data_base64: "iVBORw0KGgo=".into(),
            },
            text("Describe it"),
        ])],
        ..Default::default()
    };
    assert_eq!(
        body_json(&request)["messages"][0]["content"],
        json!([
            {"type": "text", "text": "<document name=\"report\">\nnumbers\n</document>"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "text", "text": "Describe it"},
        ])
    );
}

#[test]
fn tools_tool_calls_and_tool_results() {
    let request = ChatRequest {
        messages: vec![
            ChatMessage::user(vec![text("Weather in Paris?")]),
            ChatMessage::assistant(vec![
                text("Let me check."),
                ContentPart::ToolUse {
                    id: "call_1".into(),
                    name: "weather".into(),
                    input: json!({"city": "Paris"}),
                },
            ]),
            ChatMessage::assistant(vec![ContentPart::ToolUse {
                id: "call_2".into(),
                name: "time".into(),
                input: json!({}),
            }]),
            ChatMessage::user(vec![
                ContentPart::ToolResult {
                    tool_use_id: "call_1".into(),
                    content: vec![
                        ToolResultPart::Text("sunny".into()),
                        ToolResultPart::Json(json!({"c": 21})),
                    ],
                    is_error: false,
                },
                ContentPart::ToolResult {
                    tool_use_id: "call_2".into(),
                    content: vec![ToolResultPart::Text("noon".into())],
                    is_error: false,
                },
                text("Thanks, and tomorrow?"),
            ]),
            // A turn that only carries tool results adds no user message.
            ChatMessage::user(vec![ContentPart::ToolResult {
                tool_use_id: "call_3".into(),
                content: vec![ToolResultPart::Json(json!([1, 2]))],
                is_error: true,
            }]),
        ],
        tools: vec![ToolSpec {
            name: "weather".into(),
            description: Some("Current weather".into()),
            input_schema: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }],
        tool_choice: Some(ToolChoice::Tool("weather".into())),
        ..Default::default()
    };
    let body = body_json(&request);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny\n{\"c\":21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            {"role": "user", "content": "Thanks, and tomorrow?"},
            {"role": "tool", "tool_call_id": "call_3", "content": "Error: [1,2]"},
        ])
    );
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {
            "name": "weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }}])
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "weather"}})
    );
}

#[test]
fn tool_choice_modes() {
    let tool = ToolSpec {
        name: "t".into(),
        description: None,
        input_schema: json!({}),
    };
    for (choice, expected) in [
        (ToolChoice::Auto, json!("auto")),
        (ToolChoice::Any, json!("required")),
    ] {
        let request = ChatRequest {
            messages: vec![ChatMessage::user(vec![text("x")])],
            tools: vec![tool.clone()],
            tool_choice: Some(choice),
            ..Default::default()
        };
        let body = body_json(&request);
        assert_eq!(body["tool_choice"], expected);
        assert_eq!(
            body["tools"][0]["function"],
            json!({"name": "t", "parameters": {}})
        );
    }
    // Without tools, OpenAI would refuse a tool_choice: it is left out.
    let request = ChatRequest {
        messages: vec![ChatMessage::user(vec![text("x")])],
        tool_choice: Some(ToolChoice::Any),
        ..Default::default()
    };
    assert!(body_json(&request).get("tool_choice").is_none());
}

#[test]
fn response_format_and_extra_fields() {
    let mut extra = Map::new();
    extra.insert("repetition_penalty".into(), json!(1.1));
    extra.insert("max_tokens".into(), json!(1));
    extra.insert("top_k".into(), json!(5));
    let request = ChatRequest {
        messages: vec![ChatMessage::user(vec![text("x")])],
        max_tokens: Some(10),
        response_format: Some(JsonSchemaFormat {
            name: None,
            description: None,
            schema: json!({"type": "object"}),
        }),
        extra: Some(extra),
        ..Default::default()
    };
    let body = body_json(&request);
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}}})
    );
    assert_eq!(body["repetition_penalty"], json!(1.1));
    // Ours wins over an extra field; an extra field fills what we leave unset.
    assert_eq!(body["max_tokens"], json!(10));
    assert_eq!(body["top_k"], json!(5));
    let serialized =
        String::from_utf8(to_json(&chat_body("m", &request).unwrap()).unwrap()).unwrap();
    assert_eq!(serialized.matches("\"max_tokens\"").count(), 1);
}

#[test]
fn unsupported_parts_are_refused() {
    let request = ChatRequest {
        messages: vec![ChatMessage::user(vec![
            text("x"),
            ContentPart::Unsupported {
                kind: "video".into(),
            },
        ])],
        ..Default::default()
    };
    let Err(e) = chat_body("m", &request) else {
        panic!("video must be refused")
    };
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.message, "the openai backend cannot send video content");
    assert!(!e.is_retryable());
}

#[test]
fn tool_result_images_follow_in_a_user_message() {
    let request = ChatRequest {
        messages: vec![ChatMessage::user(vec![
            ContentPart::ToolResult {
                tool_use_id: "c".into(),
                content: vec![
                    ToolResultPart::Text("chart".into()),
                    ToolResultPart::Image {
                        format: "png".into(),
                        data_base64: "AAAA".into(),
                    },
                ],
                is_error: false,
            },
            ContentPart::ToolResult {
                tool_use_id: "d".into(),
                content: vec![],
                is_error: true,
            },
        ])],
        ..Default::default()
    };
    assert_eq!(
        body_json(&request)["messages"],
        json!([
            {"role": "tool", "tool_call_id": "c", "content": "chart"},
            {"role": "tool", "tool_call_id": "d", "content": "Error: "},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
        ])
    );
}

#[test]
fn document_names_are_escaped() {
    let request = ChatRequest {
        messages: vec![ChatMessage::user(vec![ContentPart::Document {
            name: "a \"b\" & c".into(),
            format: None,
            text: "body".into(),
        }])],
        ..Default::default()
    };
    assert_eq!(
        body_json(&request)["messages"][0]["content"],
        json!("<document name=\"a &quot;b&quot; &amp; c\">\nbody\n</document>")
    );
}

#[test]
fn reasoning_in_answers_comes_first() {
    for key in ["reasoning_content", "reasoning"] {
        let response = parse(json!({
            "choices": [{"message": {"role": "assistant", "content": "42", key: "think"},
                         "finish_reason": "stop"}],
        }))
        .unwrap();
        assert_eq!(
            response.content,
            vec![
                ContentPart::Reasoning {
                    text: "think".into()
                },
                text("42")
            ]
        );
    }
    // Both spellings at once (some servers) are not a protocol error.
    let response = parse(json!({
        "choices": [{"message": {"role": "assistant", "content": "42",
                                 "reasoning_content": "a", "reasoning": "a"},
                     "finish_reason": "stop"}],
    }))
    .unwrap();
    assert_eq!(response.content.len(), 2);
}

#[test]
fn every_neutral_field_reaches_the_wire() {
    let request = ChatRequest {
        system: vec!["s1".into(), "s2".into()],
        messages: vec![ChatMessage::user(vec![text("x")])],
        max_tokens: Some(5),
        temperature: Some(0.25),
        top_p: Some(0.5),
        top_k: Some(7),
        stop_sequences: vec!["END".into()],
        tools: vec![ToolSpec {
            name: "t".into(),
            description: None,
            input_schema: json!({"type": "object"}),
        }],
        tool_choice: Some(ToolChoice::Auto),
        response_format: Some(JsonSchemaFormat {
            name: Some("out".into()),
            description: Some("the answer".into()),
            schema: json!({"type": "object"}),
        }),
        extra: None,
    };
    let body = body_json(&request);
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "max_tokens",
            "messages",
            "model",
            "response_format",
            "stop",
            "temperature",
            "tool_choice",
            "tools",
            "top_k",
            "top_p"
        ]
    );
    assert_eq!(body["stop"], json!(["END"]));
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "out", "description": "the answer", "schema": {"type": "object"}}})
    );
    assert_eq!(body["messages"][0]["role"], "system");
}

fn parse(answer: Value) -> Result<ChatResponse, BackendError> {
    chat_response(serde_json::from_value(answer).unwrap())
}

fn answer(finish_reason: Value, extra_choice: Value) -> Value {
    let mut choice = json!({
        "index": 0,
        "message": {"role": "assistant", "content": "Hello"},
        "finish_reason": finish_reason,
    });
    if let (Some(choice), Some(extra)) = (choice.as_object_mut(), extra_choice.as_object()) {
        choice.extend(extra.clone());
    }
    json!({"id": "x", "choices": [choice], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
}

#[test]
fn every_finish_reason_maps() {
    for (finish_reason, expected) in [
        (json!("stop"), StopReason::EndTurn),
        (json!("length"), StopReason::MaxTokens),
        (json!("tool_calls"), StopReason::ToolUse),
        (json!("function_call"), StopReason::ToolUse),
        (json!("content_filter"), StopReason::ContentFiltered),
        (json!("something_new"), StopReason::EndTurn),
        (Value::Null, StopReason::EndTurn),
    ] {
        let response = parse(answer(finish_reason.clone(), json!({}))).unwrap();
        assert_eq!(response.stop_reason, expected, "{finish_reason}");
        assert_eq!(response.stop_sequence, None);
        assert_eq!(response.content, vec![text("Hello")]);
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 7,
                output_tokens: 3,
                cache_read_input_tokens: None
            }
        );
    }
    // A missing finish_reason too.
    let mut missing = answer(json!("stop"), json!({}));
    missing["choices"][0]
        .as_object_mut()
        .unwrap()
        .remove("finish_reason");
    assert_eq!(parse(missing).unwrap().stop_reason, StopReason::EndTurn);
}

#[test]
fn vllm_stop_reason_string_is_a_stop_sequence() {
    let response = parse(answer(json!("stop"), json!({"stop_reason": "END"}))).unwrap();
    assert_eq!(response.stop_reason, StopReason::StopSequence);
    assert_eq!(response.stop_sequence.as_deref(), Some("END"));
    // A stop token id is an ordinary end of turn.
    let response = parse(answer(json!("stop"), json!({"stop_reason": 128009}))).unwrap();
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    assert_eq!(response.stop_sequence, None);
}

#[test]
fn tool_calls_usage_details_and_empty_content() {
    let response = parse(json!({
        "choices": [{"message": {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
            {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "not json"}},
            {"type": "function", "function": {"name": "h", "arguments": ""}},
        ]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}},
    }))
    .unwrap();
    assert_eq!(
        response.content,
        vec![
            ContentPart::ToolUse {
                id: "call_a".into(),
                name: "f".into(),
                input: json!({"x": 1})
            },
            ContentPart::ToolUse {
                id: "call_b".into(),
                name: "g".into(),
                input: json!("not json"),
            },
            ContentPart::ToolUse {
                id: "call_2".into(),
                name: "h".into(),
                input: json!({})
            },
        ]
    );
    // OpenAI answers "stop" when a named tool_choice forced the call.
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    assert_eq!(response.usage.cache_read_input_tokens, Some(8));
}

#[test]
fn missing_usage_is_zero_and_no_choices_is_a_protocol_error() {
    let response =
        parse(json!({"choices": [{"message": {"content": null}, "finish_reason": "stop"}]}))
            .unwrap();
    assert!(response.content.is_empty());
    assert_eq!(response.usage, Usage::default());

    for body in [json!({"choices": []}), json!({"object": "chat.completion"})] {
        let e = parse(body).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol);
        assert!(!e.is_retryable());
    }
}

#[test]
fn embeddings_are_ordered_by_index_and_counted() {
    let answer: EmbeddingsWire = serde_json::from_value(json!({
        "data": [{"index": 1, "embedding": [0.0, 1.0]}, {"index": 0, "embedding": [1.0, 0.0]}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }))
    .unwrap();
    let response = embed_response(answer, 2).unwrap();
    assert_eq!(response.embeddings, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    assert_eq!(response.input_tokens, 4);

    for (data, n) in [
        (json!([{"index": 0, "embedding": [1.0]}]), 2),
        (
            json!([{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]),
            2,
        ),
        (json!([{"index": 5, "embedding": [1.0]}]), 1),
    ] {
        let answer: EmbeddingsWire = serde_json::from_value(json!({"data": data})).unwrap();
        assert_eq!(
            embed_response(answer, n).unwrap_err().kind,
            ErrorKind::Protocol
        );
    }
}

#[test]
fn error_messages_come_from_the_body() {
    let status = reqwest::StatusCode::BAD_REQUEST;
    let openai =
        br#"{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}"#;
    assert_eq!(error_message(status, openai), "max_tokens is too large");
    assert_eq!(
        error_message(status, br#"{"error":"model not found"}"#),
        "model not found"
    );
    assert_eq!(
        error_message(status, br#"{"object":"error","message":"bad"}"#),
        "bad"
    );
    assert_eq!(error_message(status, b"  plain text  "), "plain text");
    assert_eq!(error_message(status, b""), "HTTP 400 Bad Request");
    let long = "é".repeat(600);
    let excerpt = error_message(status, long.as_bytes());
    assert!(excerpt.len() <= ERROR_BODY_EXCERPT && excerpt.len() >= ERROR_BODY_EXCERPT - 1);
}

#[test]
fn retry_after_forms() {
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    };
    assert_eq!(
        retry_after(&headers(&[("retry-after", "7")])),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        retry_after(&headers(&[("retry-after", "1.5")])),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        retry_after(&headers(&[("retry-after", "7"), ("retry-after-ms", "250")])),
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        retry_after(&headers(&[(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT"
        )])),
        Some(Duration::ZERO)
    );
    assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
    assert_eq!(retry_after(&headers(&[("retry-after-ms", "-5")])), None);
    assert_eq!(retry_after(&HeaderMap::new()), None);

    let in_a_minute = SystemTime::now() + Duration::from_secs(60);
    let secs = in_a_minute.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let date = format_http_date(secs);
    let delay = retry_after(&headers(&[("retry-after", &date)])).unwrap();
    assert!(
        delay > Duration::from_secs(55) && delay <= Duration::from_secs(60),
        "{date} {delay:?}"
    );
}

#[test]
fn http_dates_parse() {
    let at = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
    assert_eq!(
        at.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        784_111_777
    );
    let leap = parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT").unwrap();
    assert_eq!(
        leap.duration_since(UNIX_EPOCH).unwrap().as_secs(),
        1_709_164_800
    );
    assert!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC").is_none());
    assert!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
    assert!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT").is_none());
}

/// Test-only inverse of `parse_http_date`.
fn format_http_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "Mon, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
