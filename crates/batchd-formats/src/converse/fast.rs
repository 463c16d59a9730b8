//! The quick read of the Converse bodies most batch records are: text-only messages, a text
//! system prompt and the four inference settings, straight into typed structs that borrow the
//! line (no `Value`, which is most of the full walk's cost). It accepts exactly what the full
//! walk accepts and builds the same request (a property test compares them); anything else
//! (another member, block or shape, or any defect) gives `None`, and the full walk reports.
//! A whole record line around such a body is read the same way, in one pass (validation's
//! `simple_record_line`, the run's `simple_record`); other lines go to the record reader.

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

/// A whole record line (`{"recordId", "modelInput"}`) with a body of the simple kind, read in
/// one pass. Other top-level members are ignored, as the record reader ignores them.
#[derive(Deserialize)]
struct Line<'a> {
    /// `null` counts as absent; an empty id is refused below.
    #[serde(default, borrow, rename = "recordId")]
    record_id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "modelInput")]
    model_input: Obj<Body<'a>>,
}

/// The request, when `model_input` is of the simple kind and valid; `None` otherwise.
pub(crate) fn simple_request(model_input: &str) -> Option<ChatRequest> {
    let Obj(body) = serde_json::from_str::<Obj<Body<'_>>>(model_input).ok()?;
    request_of(body)
}

/// When `line` is a valid record line whose modelInput is a valid body of the simple kind:
/// its record id (`None`: the line has none). `None` otherwise: a line the two-step read
/// (the record line, then its body) must judge.
pub(crate) fn simple_record_line(line: &str) -> Option<Option<Cow<'_, str>>> {
    let line = read_line(line)?;
    is_valid(&line.model_input.0).then_some(line.record_id)
}

/// [`simple_record_line`] for the run: also the modelInput's text and the request.
pub(crate) fn simple_record(line: &str) -> Option<(Option<Cow<'_, str>>, &str, ChatRequest)> {
    let parsed = read_line(line)?;
    let request = request_of(parsed.model_input.0)?;
    let text = crate::record::member_text(line, "modelInput")?;
    Some((parsed.record_id, text, request))
}

/// A record line with a simple body, parsed; not yet checked past its shape.
fn read_line(line: &str) -> Option<Line<'_>> {
    let Obj(line) = serde_json::from_str::<Obj<Line<'_>>>(line).ok()?;
    (line.record_id.as_deref() != Some("")).then_some(line)
}

/// Whether every value in a simple body is one the full walk accepts.
fn is_valid(body: &Body<'_>) -> bool {
    let message_ok = |Obj(m): &Obj<Message<'_>>| {
        matches!(&*m.role, "user" | "assistant")
            && !m.content.is_empty()
            && m.content.iter().all(|Obj(block)| !blank(&block.text))
    };
    let unit = |x: Option<f64>| x.is_none_or(|x| (0.0..=1.0).contains(&x));
    let config_ok = |Obj(c): &Obj<Inference<'_>>| {
        c.max_tokens != Some(0)
            && unit(c.temperature)
            && unit(c.top_p)
            && c.stop_sequences.as_ref().is_none_or(|stops| {
                stops.len() <= MAX_STOP_SEQUENCES && stops.iter().all(|s| !s.is_empty())
            })
    };
    !body.messages.is_empty()
        && body.messages.iter().all(message_ok)
        && body
            .system
            .iter()
            .flatten()
            .all(|Obj(b)| !b.text.is_empty())
        && body.inference_config.as_ref().is_none_or(config_ok)
}

/// The request a simple body asks for, when every value in it is valid.
fn request_of(body: Body<'_>) -> Option<ChatRequest> {
    if !is_valid(&body) {
        return None;
    }
    let text = |Obj(block): Obj<Text<'_>>| block.text.into_owned();
    let messages = body.messages.into_iter().map(|Obj(message)| ChatMessage {
        role: if message.role == "user" {
            Role::User
        } else {
            Role::Assistant
        },
        content: message
            .content
            .into_iter()
            .map(|block| ContentPart::Text(text(block)))
            .collect(),
    });
    let mut req = ChatRequest {
        messages: messages.collect(),
        system: body
            .system
            .unwrap_or_default()
            .into_iter()
            .map(text)
            .collect(),
        ..ChatRequest::default()
    };
    if let Some(Obj(config)) = body.inference_config {
        req.max_tokens = config.max_tokens;
        req.temperature = config.temperature;
        req.top_p = config.top_p;
        let stops = config.stop_sequences.unwrap_or_default();
        req.stop_sequences = stops.into_iter().map(Cow::into_owned).collect();
    }
    Some(req)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{simple_record_line, simple_request};
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
                json!("{\"a\": [1, \"}\\\\\"], \"modelInput\": {}} ]"),
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

    /// A record line around a generated body: its id, its modelInput and its other members
    /// each of a valid or an invalid kind now and then.
    fn line() -> impl Strategy<Value = String> {
        let id = mostly(
            vec![json!("r1"), json!("é \"q\" \\ id"), Value::Null],
            vec![json!(""), json!(5), json!(["r"]), json!({"id": "r"})],
        );
        (id, body(), 0..28u8).prop_map(|(id, body, shape)| {
            let mut line = serde_json::Map::new();
            if shape != 0 {
                line.insert("recordId".into(), id);
            }
            match shape {
                1 => {}
                2 => {
                    line.insert("modelInput".into(), Value::Null);
                }
                3 => {
                    line.insert("modelInput".into(), json!("text"));
                }
                _ => {
                    line.insert("modelInput".into(), body);
                }
            }
            match shape {
                4 => {
                    line.insert("metadata".into(), json!({"source": "x"}));
                }
                // Members before modelInput (keys sort) that hold its name and brackets.
                10 => {
                    line.insert("aNote".into(), json!("x \"}] \\\" {\"modelInput\": ["));
                }
                11 => {
                    line.insert("aNested".into(), json!({"modelInput": {"messages": "no"}}));
                }
                _ => {}
            }
            let text = Value::Object(line).to_string();
            let body = text.strip_prefix('{').unwrap_or(&text);
            match shape {
                5 => format!("{{\"recordId\":\"twice\",{body}"),
                6 => format!("[{text}]"),
                7 => format!("\u{feff}{text}"),
                8 => format!("{text} x"),
                9 => format!("  {text}  "),
                12 => serde_json::to_string_pretty(&serde_json::from_str::<Value>(&text).unwrap())
                    .unwrap(),
                13 => text.replace(':', " :\t").replace(',', " , "),
                14 => text.replace("\"modelInput\"", "\"model\\u0049nput\""),
                _ => text,
            }
        })
    }

    /// What the two-step read makes of a line: its id when the line and its body are valid.
    fn two_step(line: &str) -> Option<Option<String>> {
        let record = crate::record::parse_record_line(line).ok()?;
        crate::converse::parse_converse(record.model_input.get(), &ConverseOptions::default())
            .ok()?;
        Some(record.record_id)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The one-pass read of a line never accepts what the two-step read refuses, and
        /// finds the same record id.
        #[test]
        fn the_one_pass_line_read_agrees_with_the_two_steps(line in line()) {
            if let Some(id) = simple_record_line(&line) {
                let id = id.map(std::borrow::Cow::into_owned);
                prop_assert_eq!(two_step(&line), Some(id), "{}", line);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The run's one-pass read gives what the two steps give: the id, the modelInput's
        /// text byte for byte (it is echoed) and the request.
        #[test]
        fn the_runs_one_pass_read_agrees_with_the_two_steps(line in line()) {
            if let Some(quick) = crate::converse::simple_record(&line) {
                let record = crate::record::parse_record_line(&line);
                prop_assert!(record.is_ok(), "{}", line);
                let record = record.unwrap();
                let id = quick.record_id.map(std::borrow::Cow::into_owned);
                prop_assert_eq!(record.record_id, id, "{}", line);
                prop_assert_eq!(record.model_input.get(), quick.model_input.get(), "{}", line);
                let walked = crate::converse::parse_converse(
                    record.model_input.get(),
                    &ConverseOptions::default(),
                );
                prop_assert_eq!(walked, Ok(quick.request), "{}", line);
                prop_assert!(simple_record_line(&line).is_some(), "{}", line);
            }
        }

        /// The run's read leaves to the two steps only the lines the validation's one-pass
        /// read leaves, and those whose modelInput key is written with escapes.
        #[test]
        fn the_runs_one_pass_read_takes_every_simple_line(line in line()) {
            let escaped = line.contains("model\\u0049nput");
            let run = crate::converse::simple_record(&line).is_some();
            prop_assert_eq!(run, simple_record_line(&line).is_some() && !escaped, "{}", line);
        }
    }

    /// Most valid lines take the one-pass read; every one the two steps refuse is left to
    /// them.
    #[test]
    fn the_line_generator_reaches_both_reads() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = line();
        let (n, mut quick, mut run, mut valid) = (2000, 0, 0, 0);
        for _ in 0..n {
            let line = strategy.new_tree(&mut runner).unwrap().current();
            quick += usize::from(simple_record_line(&line).is_some());
            run += usize::from(crate::converse::simple_record(&line).is_some());
            valid += usize::from(two_step(&line).is_some());
        }
        println!(
            "{quick} of {n} generated lines take the one-pass read ({run} in the run), {valid} are valid"
        );
        assert!(
            quick > n / 20 && quick < valid,
            "{quick} quick, {valid} valid of {n}"
        );
        assert!(
            run > n / 20 && run < quick,
            "{run} run, {quick} quick of {n}"
        );
    }

    #[test]
    fn simple_record_lines_take_the_one_pass_read() {
        let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let id = |line: &str| simple_record_line(line).map(|id| id.map(|id| id.into_owned()));
        assert_eq!(
            id(&format!(
                r#"{{"recordId":"r\u00e9","modelInput":{body},"x":[1]}}"#
            )),
            Some(Some("ré".into()))
        );
        assert_eq!(id(&format!(r#"{{"modelInput":{body}}}"#)), Some(None));
        assert_eq!(
            id(&format!(r#"{{"recordId":null,"modelInput":{body}}}"#)),
            Some(None)
        );
        for line in [
            format!(r#"{{"recordId":"","modelInput":{body}}}"#),
            format!(r#"{{"recordId":7,"modelInput":{body}}}"#),
            format!(r#"{{"recordId":"a","recordId":"b","modelInput":{body}}}"#),
            format!(r#"{{"recordId":"a","modelInput":{body},"modelInput":{body}}}"#),
            format!(r#"["a",{body}]"#),
            r#"{"recordId":"a"}"#.to_owned(),
            r#"{"recordId":"a","modelInput":{"messages":[]}}"#.to_owned(),
        ] {
            assert_eq!(id(&line), None, "{line}");
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
