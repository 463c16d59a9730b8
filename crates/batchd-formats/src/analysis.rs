//! Result analysis: reads one result of a job at a time, from either output dialect (a
//! Bedrock output line or a seed-API result object), and folds them into the job's statistics.
//! Pure code: the engine finds and reads the files.
//!
//! - [`result_file_kind`]: which files under `<output>/<jobId>/` hold results, and how.
//! - [`parse_bedrock_line`], [`parse_seed_result`], [`for_each_array_item`]: one result.
//! - [`stats`]: [`Tally`] → [`Analysis`] (counts, errors by code, percentiles, tokens, cost).
//! - [`render`]: the analysis as an aligned table; CSV rows for exports.

pub mod render;
pub mod stats;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use stats::{Analysis, AnalysisContext, Prices, Tally};

use crate::Defect;
use crate::record::{json_error_reason, raw_kind};

/// The output dialect of a result file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// `<input>.out` JSONL: `{"recordId", "modelInput", "modelOutput" | "error"}`.
    Bedrock,
    /// The seed job API's `{"id", "status", "output", "processing_time", ...}` objects.
    Seed,
}

/// How a result file holds its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One result per line (blank lines skipped).
    Lines,
    /// One JSON array of results.
    Array,
}

/// What the file called `name` (its last path segment) holds: Bedrock lines in every `*.out`
/// but the manifest, seed results in `*.jsonl` (lines) and `*.json` (an array). `None`: no
/// results (the manifest, upload parts, anything else).
pub fn result_file_kind(name: &str) -> Option<(Dialect, Layout)> {
    if name == "manifest.json.out" {
        None
    } else if name.ends_with(".out") {
        Some((Dialect::Bedrock, Layout::Lines))
    } else if name.ends_with(".jsonl") {
        Some((Dialect::Seed, Layout::Lines))
    } else if name.ends_with(".json") {
        Some((Dialect::Seed, Layout::Array))
    } else {
        None
    }
}

/// One record's result, whichever dialect it came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordResult {
    /// `recordId` or `id`.
    pub id: String,
    /// `None` for a success.
    pub error: Option<RecordError>,
    /// Seconds; `None` when the result does not say (Bedrock bodies other than Converse).
    pub processing_time: Option<f64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub attempts: Option<u64>,
    /// The record's input as JSON text, when the result carries it (Bedrock's `modelInput`).
    pub input: Option<String>,
    /// The model's text (a Bedrock body's text blocks, or the body as JSON when it has none).
    pub output: Option<String>,
    /// The seed result's `metadata`, as JSON text.
    pub metadata: Option<String>,
}

impl RecordResult {
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

/// Why a record failed: the code as text (Bedrock's numeric `errorCode` in decimal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub code: String,
    pub message: String,
}

/// How much of a result its reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Everything: the input and the output text too (exports, `batchd results`).
    Full,
    /// What the statistics read (error, processing time, tokens): a success body is not
    /// built, and no text is copied. For the output batchd itself just wrote.
    Stats,
}

/// A line's members; `B` is how the body is read (a `Value`, or only [`StatsBody`]'s part).
#[derive(Deserialize)]
struct BedrockLine<'a, B> {
    #[serde(rename = "recordId", borrow, default)]
    record_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    custom_id: Option<&'a RawValue>,
    #[serde(rename = "modelInput", borrow, default)]
    model_input: Option<&'a RawValue>,
    #[serde(rename = "modelOutput", default)]
    model_output: Option<B>,
    #[serde(default)]
    error: Option<Value>,
}

/// The members of a success body that the statistics read; the rest (the text) is skipped
/// unbuilt. A member that is present is `Some`, even when `null`, as in a `Map`.
#[derive(Deserialize, Default)]
struct StatsBody {
    #[serde(default, deserialize_with = "present")]
    metrics: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    usage: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    prompt_token_count: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    generation_token_count: Option<Value>,
    #[serde(rename = "inputTextTokenCount", default, deserialize_with = "present")]
    input_text_token_count: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    results: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A response body's members by name, whether it was read whole or only in part.
trait Body {
    fn member(&self, key: &str) -> Option<&Value>;
}

impl Body for Map<String, Value> {
    fn member(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl Body for StatsBody {
    fn member(&self, key: &str) -> Option<&Value> {
        match key {
            "metrics" => self.metrics.as_ref(),
            "usage" => self.usage.as_ref(),
            "prompt_token_count" => self.prompt_token_count.as_ref(),
            "generation_token_count" => self.generation_token_count.as_ref(),
            "inputTextTokenCount" => self.input_text_token_count.as_ref(),
            "results" => self.results.as_ref(),
            _ => None,
        }
    }
}

/// Converse's `metrics.latencyMs`, in seconds.
fn body_latency(body: &impl Body) -> Option<f64> {
    body.member("metrics")
        .and_then(|m| m.get("latencyMs"))
        .and_then(Value::as_f64)
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| ms / 1000.0)
}

/// One line of a `.out` file (`record::write_success_line` / `write_error_line`). Processing
/// time is Converse's `modelOutput.metrics.latencyMs`; tokens come from the body's usage in
/// whichever family's shape it has.
/// An OpenAI batch's `.out` lines (`{custom_id, response, error}`) are read here too.
pub fn parse_bedrock_line(line: &str) -> Result<RecordResult, Defect> {
    parse_bedrock_line_with(line, Detail::Full)
}

/// [`parse_bedrock_line`], reading as much as `detail` asks.
pub fn parse_bedrock_line_with(line: &str, detail: Detail) -> Result<RecordResult, Defect> {
    crate::record::expect_object_line(line)?;
    if detail == Detail::Stats {
        // A body that is not an object is read whole below, for the same message.
        let wire: Result<BedrockLine<'_, StatsBody>, _> = serde_json::from_str(line);
        if let Ok(wire) = wire
            && wire.record_id.is_some()
        {
            let mut result = line_result(wire.record_id, wire.model_input, false)?;
            match (wire.model_output, wire.error) {
                (Some(body), None) => {
                    result.processing_time = body_latency(&body);
                    (result.input_tokens, result.output_tokens) = body_tokens(&body);
                    return Ok(result);
                }
                (None, Some(error)) => {
                    result.error = Some(bedrock_error(&error)?);
                    return Ok(result);
                }
                // Both or neither: the full read says which.
                _ => {}
            }
        }
    }
    let wire: BedrockLine<'_, Value> =
        serde_json::from_str(line).map_err(|e| Defect::new("line", json_error_reason(&e)))?;
    if wire.record_id.is_none() && wire.custom_id.is_some() {
        return parse_openai_line(line);
    }
    let mut result = line_result(wire.record_id, wire.model_input, detail == Detail::Full)?;
    match (wire.model_output, wire.error) {
        (Some(_), Some(_)) => {
            return Err(Defect::new(
                "error",
                "a result line has modelOutput or error, not both",
            ));
        }
        (None, None) => {
            return Err(Defect::new(
                "modelOutput",
                "missing (a result line has modelOutput or error)",
            ));
        }
        (None, Some(error)) => result.error = Some(bedrock_error(&error)?),
        (Some(Value::Object(body)), None) => {
            result.processing_time = body_latency(&body);
            (result.input_tokens, result.output_tokens) = body_tokens(&body);
            if detail == Detail::Full {
                result.output = Some(body_text(&body));
            }
        }
        (Some(other), None) => {
            return Err(wrong_type("modelOutput", "an object", &other));
        }
    }
    Ok(result)
}

/// A line's result with its id, its input checked (and kept when `keep_input`).
fn line_result(
    record_id: Option<&RawValue>,
    model_input: Option<&RawValue>,
    keep_input: bool,
) -> Result<RecordResult, Defect> {
    let id = match record_id {
        None => return Err(Defect::new("recordId", "missing")),
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| {
            Defect::new(
                "recordId",
                format!("must be a string, found {}", raw_kind(raw.get())),
            )
        })?,
    };
    let input = match model_input {
        Some(raw) if raw.get().starts_with('{') => raw.get(),
        Some(raw) => {
            let reason = format!("must be an object, found {}", raw_kind(raw.get()));
            return Err(Defect::new("modelInput", reason));
        }
        None => return Err(Defect::new("modelInput", "missing")),
    };
    Ok(RecordResult {
        id,
        input: keep_input.then(|| input.to_owned()),
        ..RecordResult::default()
    })
}

/// `{"errorCode": 400, "errorMessage": "..."}` (a string code is taken as it is).
fn bedrock_error(error: &Value) -> Result<RecordError, Defect> {
    let Value::Object(error) = error else {
        return Err(wrong_type("error", "an object", error));
    };
    let code = match error.get("errorCode") {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(wrong_type("error.errorCode", "a number", other)),
        None => return Err(Defect::new("error.errorCode", "missing")),
    };
    let message = required_string(error, "errorMessage", "error.errorMessage")?;
    Ok(RecordError { code, message })
}

/// Input and output tokens of a response body, in the shape of the family that wrote it:
/// Converse and Nova `usage.inputTokens`, Anthropic `usage.input_tokens`, Llama
/// `prompt_token_count`, Titan `inputTextTokenCount` (+ `results[].tokenCount`). Mistral's
/// body has none.
fn body_tokens(body: &impl Body) -> (Option<u64>, Option<u64>) {
    let count = |v: Option<&Value>| v.and_then(Value::as_u64);
    if let Some(usage) = body.member("usage").and_then(Value::as_object) {
        for (input, output) in [
            ("inputTokens", "outputTokens"),
            ("input_tokens", "output_tokens"),
        ] {
            if usage.contains_key(input) || usage.contains_key(output) {
                return (count(usage.get(input)), count(usage.get(output)));
            }
        }
    }
    if body.member("prompt_token_count").is_some() {
        return (
            count(body.member("prompt_token_count")),
            count(body.member("generation_token_count")),
        );
    }
    if let Some(input) = count(body.member("inputTextTokenCount")) {
        // An embedding has no `results`: no output tokens.
        let output = body
            .member("results")
            .and_then(Value::as_array)
            .map_or(0, |results| {
                results
                    .iter()
                    .filter_map(|r| r.get("tokenCount").and_then(Value::as_u64))
                    .sum()
            });
        return (Some(input), Some(output));
    }
    (None, None)
}

/// The text a response body carries: Converse/Nova `output.message.content[].text`,
/// Anthropic `content[].text`, Llama `generation`, Titan `results[].outputText`, Mistral
/// `outputs[].text`; any other body (an embedding) as compact JSON.
fn body_text(body: &Map<String, Value>) -> String {
    let texts = |blocks: Option<&Value>, key: &str| -> Option<String> {
        let blocks = blocks?.as_array()?;
        let parts: Vec<&str> = blocks
            .iter()
            .filter_map(|b| b.get(key).and_then(Value::as_str))
            .collect();
        Some(parts.concat())
    };
    let found = texts(
        body.get("output")
            .and_then(|o| o.get("message"))
            .and_then(|m| m.get("content")),
        "text",
    )
    .or_else(|| texts(body.get("content"), "text"))
    .or_else(|| {
        body.get("generation")
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
    .or_else(|| texts(body.get("results"), "outputText"))
    .or_else(|| texts(body.get("outputs"), "text"));
    found.unwrap_or_else(|| Value::Object(body.clone()).to_string())
}

/// One output or error line of an OpenAI batch (`{"id", "custom_id", "response":
/// {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}`): a 2xx
/// response is a success (its text from `choices[0].message.content`, tokens from `usage`);
/// any other response or an `error` is an error with that code.
pub fn parse_openai_line(text: &str) -> Result<RecordResult, Defect> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Defect::new("line", json_error_reason(&e)))?;
    let id = match value.get("custom_id") {
        Some(Value::String(id)) => id.clone(),
        _ => return Err(Defect::new("custom_id", "must be a string")),
    };
    let response = value.get("response").filter(|r| !r.is_null());
    let status = response
        .and_then(|r| r.get("status_code"))
        .and_then(Value::as_u64);
    let body = response.and_then(|r| r.get("body"));
    let usage = body.and_then(|b| b.get("usage"));
    let tokens = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
    let mut result = RecordResult {
        id,
        ..RecordResult::default()
    };
    match status {
        Some(code) if (200..300).contains(&code) => {
            result.input_tokens = tokens("prompt_tokens");
            result.output_tokens = tokens("completion_tokens").or(Some(0));
            result.output = body
                .and_then(|b| b.pointer("/choices/0/message/content"))
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Some(code) => {
            let error = body.and_then(|b| b.get("error"));
            let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
            result.error = Some(RecordError {
                code: code.to_string(),
                message: message.unwrap_or_default().to_owned(),
            });
        }
        None => {
            let error = value.get("error").filter(|e| !e.is_null());
            let field = |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_str);
            let (Some(code), message) = (field("code"), field("message")) else {
                return Err(Defect::new(
                    "response",
                    "a line needs a response or an error",
                ));
            };
            result.error = Some(RecordError {
                code: code.to_owned(),
                message: message.unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(result)
}

/// One seed-API result object (`{"id", "status": "SUCCESS" | "ERROR", "output",
/// "processing_time" (seconds), "input_tokens", "output_tokens", "attempts", "error": null |
/// {"code", "message"}, "metadata"}`), as JSON text. Unknown members are ignored.
pub fn parse_seed_result(text: &str) -> Result<RecordResult, Defect> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Defect::new("result", json_error_reason(&e)))?;
    let Value::Object(object) = value else {
        let reason = format!(
            "expected a result object, found {}",
            crate::converse::check::kind(&value)
        );
        return Err(Defect::new("result", reason));
    };
    let id = match object.get("id") {
        Some(Value::String(s)) => s.clone(),
        // A document's numeric id is echoed as a number.
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(wrong_type("id", "a string", other)),
        None => return Err(Defect::new("id", "missing")),
    };
    let success = match object.get("status") {
        Some(Value::String(s)) if s == "SUCCESS" => true,
        Some(Value::String(s)) if s == "ERROR" => false,
        Some(other) => {
            let reason = format!("must be \"SUCCESS\" or \"ERROR\", found {other}");
            return Err(Defect::new("status", reason));
        }
        None => return Err(Defect::new("status", "missing")),
    };
    let error = match object.get("error") {
        // A success's error member carries nothing the analysis counts.
        _ if success => None,
        None | Some(Value::Null) => {
            return Err(Defect::new(
                "error",
                "missing: an ERROR result has {\"code\", \"message\"}",
            ));
        }
        Some(Value::Object(e)) => Some(RecordError {
            code: required_string(e, "code", "error.code")?,
            message: required_string(e, "message", "error.message")?,
        }),
        Some(other) => return Err(wrong_type("error", "an object or null", other)),
    };
    let output = match object.get("output") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(wrong_type("output", "a string or null", other)),
    };
    let processing_time = match object.get("processing_time") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Some(t),
            _ => {
                let reason = format!("must be seconds (a number, 0 or more), found {v}");
                return Err(Defect::new("processing_time", reason));
            }
        },
    };
    Ok(RecordResult {
        id,
        error,
        processing_time,
        input_tokens: optional_count(&object, "input_tokens")?,
        output_tokens: optional_count(&object, "output_tokens")?,
        attempts: optional_count(&object, "attempts")?,
        input: None,
        output,
        metadata: object.get("metadata").map(Value::to_string),
    })
}

/// `field` is there but of another JSON type than `expected`.
fn wrong_type(field: &str, expected: &str, found: &Value) -> Defect {
    let found = crate::converse::check::kind(found);
    Defect::new(field, format!("must be {expected}, found {found}"))
}

fn required_string(object: &Map<String, Value>, key: &str, path: &str) -> Result<String, Defect> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(wrong_type(path, "a string", other)),
        None => Err(Defect::new(path, "missing")),
    }
}

fn optional_count(object: &Map<String, Value>, key: &str) -> Result<Option<u64>, Defect> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            Defect::new(key, format!("must be a whole number, 0 or more, found {v}"))
        }),
    }
}

/// Why a JSON array file could not be walked: the file is no array (`index` None), or the
/// item at `index` is broken or refused by the callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayDefect {
    pub index: Option<usize>,
    pub defect: Defect,
}

/// Calls `f(index, item_json)` for each item of the JSON array `text`, in order, holding one
/// item at a time (items are borrowed from `text`, never collected). Stops at `f`'s first
/// error.
pub fn for_each_array_item(
    text: &str,
    mut f: impl FnMut(usize, &str) -> Result<(), Defect>,
) -> Result<(), ArrayDefect> {
    use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};

    struct Items<'f, F> {
        f: &'f mut F,
        failed: &'f mut Option<ArrayDefect>,
    }
    impl<'de, F: FnMut(usize, &str) -> Result<(), Defect>> Visitor<'de> for Items<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of results")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0;
            loop {
                let item = match seq.next_element::<&'de RawValue>() {
                    Ok(Some(item)) => item,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        *self.failed = Some(ArrayDefect {
                            index: Some(index),
                            defect: Defect::new("item", json_error_reason_text(&e.to_string())),
                        });
                        return Err(e);
                    }
                };
                if let Err(defect) = (self.f)(index, item.get()) {
                    *self.failed = Some(ArrayDefect {
                        index: Some(index),
                        defect,
                    });
                    return Err(A::Error::custom("item refused"));
                }
                index += 1;
            }
        }
    }

    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_ascii_start();
    if !trimmed.starts_with('[') {
        let found = if trimmed.is_empty() {
            "nothing".to_owned()
        } else {
            match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => raw_kind(trimmed).to_owned(),
                Err(e) => json_error_reason(&e),
            }
        };
        return Err(ArrayDefect {
            index: None,
            defect: Defect::new("file", format!("expected a JSON array, found {found}")),
        });
    }
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let walked = de.deserialize_seq(Items {
        f: &mut f,
        failed: &mut failed,
    });
    if let Some(defect) = failed {
        return Err(defect);
    }
    let whole = walked.and_then(|()| de.end());
    whole.map_err(|e| ArrayDefect {
        index: None,
        defect: Defect::new("file", json_error_reason(&e)),
    })
}

/// [`json_error_reason`] for an error already turned into text (a seq element's error).
fn json_error_reason_text(text: &str) -> String {
    let what = text.rsplit_once(" at line ").map_or(text, |(what, _)| what);
    format!("invalid JSON: {what}")
}

#[cfg(test)]
mod tests;
