//! The quick read of the Converse bodies most batch records are: text-only messages, a text
//! system prompt and the four inference settings, straight into typed structs that borrow the
//! line (no `Value`, which is most of the full walk's cost). It accepts exactly what the full
//! walk accepts and builds the same request (a property test compares them); anything else
//! (another member, block or shape, or any defect) gives `None`, and the full walk reports.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::request::{MAX_STOP_SEQUENCES, blank};
use crate::neutral::{ChatMessage, ChatRequest, ContentPart, Role};

/// `T` from a JSON object only: a derived struct also takes an array of its members in
/// order, which the walk refuses.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectOnly(PhantomData))
            .map(Obj)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[serde(borrow)]
    messages: Vec<Obj<Message<'a>>>,
    #[serde(default, borrow)]
    system: Option<Vec<Obj<Text<'a>>>>,
    #[serde(default, borrow, rename = "inferenceConfig")]
    inference_config: Option<Obj<Inference<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message<'a> {
    /// A string (a derived enum would also take `{"user": null}`).
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: Vec<Obj<Text<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Text<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inference<'a> {
    #[serde(default, rename = "maxTokens")]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default, rename = "topP")]
    top_p: Option<f64>,
    #[serde(default, borrow, rename = "stopSequences")]
    stop_sequences: Option<Vec<Cow<'a, str>>>,
}

/// The request, when `model_input` is of the simple kind and valid; `None` otherwise.
pub(crate) fn simple_request(model_input: &str) -> Option<ChatRequest> {
    let Obj(body) = serde_json::from_str::<Obj<Body<'_>>>(model_input).ok()?;
    if body.messages.is_empty() {
        return None;
    }
    let mut req = ChatRequest {
        messages: Vec::with_capacity(body.messages.len()),
        ..ChatRequest::default()
    };
    for Obj(message) in body.messages {
        if message.content.is_empty() {
            return None;
        }
        let mut content = Vec::with_capacity(message.content.len());
        for Obj(block) in message.content {
            if blank(&block.text) {
                return None;
            }
            content.push(ContentPart::Text(block.text.into_owned()));
        }
        let role = match &*message.role {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => return None,
        };
        req.messages.push(ChatMessage { role, content });
    }
    for Obj(block) in body.system.unwrap_or_default() {
        if block.text.is_empty() {
            return None;
        }
        req.system.push(block.text.into_owned());
    }
    if let Some(Obj(config)) = body.inference_config {
        let unit = |x: Option<f64>| x.is_none_or(|x| (0.0..=1.0).contains(&x));
        if config.max_tokens == Some(0) || !unit(config.temperature) || !unit(config.top_p) {
            return None;
        }
        req.max_tokens = config.max_tokens;
        req.temperature = config.temperature;
        req.top_p = config.top_p;
        let stops = config.stop_sequences.unwrap_or_default();
        if stops.len() > MAX_STOP_SEQUENCES || stops.iter().any(|s| s.is_empty()) {
            return None;
        }
        req.stop_sequences = stops.into_iter().map(Cow::into_owned).collect();
    }
    Some(req)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::simple_request;
    use crate::converse::{ConverseOptions, walk_converse};

    /// Mostly one of `valid`, now and then one of `edge` (wrong types, values out of range,
    /// blanks): most bodies are valid and compared, enough are not.
    fn mostly(valid: Vec<Value>, edge: Vec<Value>) -> impl Strategy<Value = Value> {
        prop_oneof![
            12 => proptest::sample::select(valid),
            1 => proptest::sample::select(edge),
        ]
    }

    fn text() -> impl Strategy<Value = Value> {
        mostly(
            vec![
                json!("hi"),
                json!("Summarise record 7 in one short sentence, please."),
                json!("é \"quoted\" \\ back\nslash"),
                json!(" padded "),
            ],
            vec![
                json!(""),
                json!("   "),
                json!("\u{a0}"),
                json!(5),
                Value::Null,
            ],
        )
    }

    fn block() -> impl Strategy<Value = Value> {
        prop_oneof![
            30 => text().prop_map(|t| json!({"text": t})),
            1 => Just(json!({"cachePoint": {"type": "default"}})),
            1 => Just(json!({"text": "a", "extra": 1})),
            1 => Just(json!({})),
            1 => Just(json!(["hi"])),
        ]
    }

    fn message() -> impl Strategy<Value = Value> {
        (
            mostly(
                vec![json!("user"), json!("assistant")],
                vec![json!("system"), Value::Null, json!({"user": null})],
            ),
            prop::collection::vec(block(), 1..3),
            0..40u8,
        )
            .prop_map(|(role, content, shape)| match shape {
                0 => json!({"role": role}),
                1 => json!({"role": role, "content": content, "name": "x"}),
                2 => json!({"role": role, "content": []}),
                3 => json!([role, content]),
                _ => json!({"role": role, "content": content}),
            })
    }

    fn inference() -> impl Strategy<Value = Value> {
        let max_tokens = mostly(
            vec![json!(1), json!(32), json!(4_294_967_295u64), Value::Null],
            vec![
                json!(0),
                json!(4_294_967_296u64),
                json!(-1),
                json!(1.5),
                json!("3"),
            ],
        );
        let unit = || {
            mostly(
                vec![json!(0), json!(0.2), json!(1), json!(0.7), Value::Null],
                vec![json!(1.0001), json!(-0.1), json!(1e300), json!("0.5")],
            )
        };
        let stops = mostly(
            vec![json!([]), json!(["END"]), json!(["a", "b"]), Value::Null],
            vec![json!(["a", ""]), json!([1]), json!("END")],
        );
        (max_tokens, unit(), unit(), stops, 0..40u8).prop_map(|(m, t, p, s, mask)| {
            let mut config = serde_json::Map::new();
            for (bit, key, value) in [
                (1, "maxTokens", m),
                (2, "temperature", t),
                (4, "topP", p),
                (8, "stopSequences", s),
            ] {
                if mask & bit != 0 {
                    config.insert(key.into(), value);
                }
            }
            match mask {
                32 => {
                    config.insert("topK".into(), json!(5));
                }
                33 => return json!([32, 0.5]),
                _ => {}
            }
            Value::Object(config)
        })
    }

    fn body() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(message(), 0..4),
            prop::option::of(prop::collection::vec(block(), 0..3)),
            prop::option::of(inference()),
            0..30u8,
        )
            .prop_map(|(messages, system, inference, extra)| {
                let mut body = serde_json::Map::new();
                body.insert("messages".into(), Value::Array(messages));
                if let Some(system) = system {
                    body.insert("system".into(), Value::Array(system));
                }
                if let Some(inference) = inference {
                    body.insert("inferenceConfig".into(), inference);
                }
                match extra {
                    0 => {
                        body.insert("toolConfig".into(), json!({"tools": []}));
                    }
                    1 => {
                        body.insert("modelId".into(), json!("m"));
                    }
                    2 => {
                        body.insert("system".into(), Value::Null);
                    }
                    3 => {
                        body.insert("inferenceConfig".into(), Value::Null);
                    }
                    4 => {
                        body.insert("messages".into(), json!({"role": "user"}));
                    }
                    5 => return Value::Array(vec![Value::Object(body)]),
                    _ => {}
                }
                Value::Object(body)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The quick read never accepts what the walk refuses, and builds what it builds.
        #[test]
        fn the_quick_read_agrees_with_the_walk(body in body()) {
            let text = body.to_string();
            if let Some(quick) = simple_request(&text) {
                let walked = walk_converse(&text, &ConverseOptions::default());
                prop_assert_eq!(walked, Ok(quick), "{}", text);
            }
        }
    }

    /// The generated bodies exercise both sides of the property: many take the quick read
    /// (and so are compared), many do not.
    #[test]
    fn the_generator_reaches_both_reads() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = body();
        let n = 2000;
        let quick = (0..n)
            .filter(|_| {
                let body = strategy.new_tree(&mut runner).unwrap().current();
                simple_request(&body.to_string()).is_some()
            })
            .count();
        println!("{quick} of {n} generated bodies take the quick read");
        assert!(quick > n / 20 && quick < n - n / 20, "{quick} of {n}");
    }

    #[test]
    fn simple_valid_bodies_take_the_quick_read() {
        for body in [
            json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
            json!({
                "system": [{"text": "Be brief."}],
                "messages": [
                    {"role": "user", "content": [{"text": "hi"}, {"text": "there"}]},
                    {"role": "assistant", "content": [{"text": "Hello."}]},
                    {"role": "user", "content": [{"text": "é \"q\" \\n"}]},
                ],
                "inferenceConfig": {"maxTokens": 32, "temperature": 0.2, "topP": 1, "stopSequences": ["END"]},
            }),
            json!({"messages": [{"role": "user", "content": [{"text": "x"}]}], "system": null, "inferenceConfig": null}),
        ] {
            let text = body.to_string();
            let quick = simple_request(&text);
            assert!(quick.is_some(), "{text}");
            assert_eq!(
                walk_converse(&text, &ConverseOptions::default()).ok(),
                quick
            );
        }
        // Anything the walk refuses, or a block it alone knows, is left to it.
        for body in [
            json!({"messages": []}),
            json!({"messages": [{"role": "user", "content": [{"text": " "}]}]}),
            json!({"messages": [{"role": "user", "content": [{"text": "x"}]}], "inferenceConfig": {"maxTokens": 0}}),
            json!({"messages": [{"role": "user", "content": [{"text": "x"}, {"cachePoint": {"type": "default"}}]}]}),
            json!({"messages": [{"role": "user", "content": [{"text": "x"}]}], "toolConfig": {"tools": []}}),
        ] {
            assert!(simple_request(&body.to_string()).is_none(), "{body}");
        }
        // A member given twice is the walk's too (a Value keeps the last).
        let twice = r#"{"messages":[{"role":"user","content":[{"text":"a"}]}],"messages":[{"role":"user","content":[{"text":"b"}]}]}"#;
        assert!(simple_request(twice).is_none());
    }
}
