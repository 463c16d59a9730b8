//! The batch-job API's items and results: an input item (a Bedrock record, a bare Converse
//! body, or a document such as `{"id", "content", "metadata"}`) becomes a Converse body; a
//! finished item becomes one result object (`id`, `status`, `output`, `processing_time`,
//! tokens, `attempts`, `error`, `metadata`).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::Defect;

/// One input item, ready for the Converse path.
#[derive(Debug)]
pub struct Item<'a> {
    /// `recordId` of a record, `id` of a document; `None`: the caller generates one.
    pub id: Option<String>,
    /// The item's `metadata`, echoed into its result.
    pub metadata: Option<&'a RawValue>,
    /// The Converse body to run.
    pub body: Cow<'a, str>,
    /// The item is a Bedrock record: `body` is its `modelInput`.
    pub from_record: bool,
}

type Members<'a> = BTreeMap<Cow<'a, str>, &'a RawValue>;

/// Reads one item. A document's text goes through `template` (see [`render_template`]).
pub fn parse_item<'a>(text: &'a str, template: Option<&str>) -> Result<Item<'a>, Defect> {
    let members: Members<'a> = serde_json::from_str(text).map_err(|e| {
        let what = if text.trim_start().starts_with('{') {
            format!("not valid JSON: {e}")
        } else {
            "must be a JSON object".to_owned()
        };
        Defect::new("item", what)
    })?;
    let metadata = members.get("metadata").copied();
    if let Some(model_input) = members.get("modelInput") {
        let id = match members.get("recordId") {
            Some(raw) => Some(
                serde_json::from_str::<String>(raw.get())
                    .map_err(|_| Defect::new("recordId", "must be a string"))?,
            ),
            None => None,
        };
        return Ok(Item {
            id,
            metadata,
            body: Cow::Borrowed(model_input.get()),
            from_record: true,
        });
    }
    if members.contains_key("messages") {
        return Ok(Item {
            id: None,
            metadata: None,
            body: Cow::Borrowed(text),
            from_record: false,
        });
    }
    let Some(content) = members.get("content") else {
        return Err(Defect::new(
            "item",
            "must be a Bedrock record (recordId, modelInput), a Converse body (messages) or \
             a document (content)",
        ));
    };
    let content: Cow<'a, str> = serde_json::from_str(content.get())
        .map_err(|_| Defect::new("content", "must be a string"))?;
    if content.trim().is_empty() {
        return Err(Defect::new("content", "must not be empty"));
    }
    let id = match members.get("id") {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::String(s)) => Some(s),
            Ok(Value::Number(n)) => Some(n.to_string()),
            _ => return Err(Defect::new("id", "must be a string or a number")),
        },
    };
    let prompt = match template {
        Some(template) => render_template(template, &members)?,
        None => content.into_owned(),
    };
    let body = json!({"messages": [{"role": "user", "content": [{"text": prompt}]}]});
    Ok(Item {
        id,
        metadata,
        body: Cow::Owned(body.to_string()),
        from_record: false,
    })
}

/// Checks a prompt template's syntax: `{field}` or `{a.b}` placeholders, `{{` and `}}` for
/// literal braces. The error says what is wrong and where.
pub fn check_template(template: &str) -> Result<(), String> {
    placeholders(template).map(|_| ())
}

/// A template cut into literal text and placeholder paths.
enum Piece<'t> {
    Text(Cow<'t, str>),
    Field(&'t str),
}

fn placeholders(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if rest[i..].starts_with("{{") {
            text.push('{');
            rest = &rest[i + 2..];
        } else if rest[i..].starts_with("}}") {
            text.push('}');
            rest = &rest[i + 2..];
        } else if rest[i..].starts_with('}') {
            return Err(format!(
                "unmatched '}}' at character {} (write '}}}}' for a literal brace)",
                template.len() - rest.len() + i
            ));
        } else {
            let end = after.find('}').ok_or_else(|| {
                format!(
                    "'{{' at character {} is never closed",
                    template.len() - rest.len() + i
                )
            })?;
            let field = &after[..end];
            let valid = !field.is_empty()
                && field.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                });
            if !valid {
                return Err(format!(
                    "{{{field}}} is not a field name (use {{content}} or {{metadata.type}})"
                ));
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(Cow::Owned(std::mem::take(&mut text))));
            }
            pieces.push(Piece::Field(field));
            rest = &after[end + 1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(Cow::Owned(text)));
    }
    Ok(pieces)
}

/// Fills `template` from a document's members: `{content}`, `{id}`, `{metadata.type}`.
/// Strings go in as they are, anything else as JSON. A missing field is a defect.
fn render_template(template: &str, members: &Members<'_>) -> Result<String, Defect> {
    let pieces = placeholders(template).map_err(|e| Defect::new("promptTemplate", e))?;
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(&text),
            Piece::Field(path) => {
                let mut parts = path.split('.');
                let head = parts.next().unwrap_or_default();
                let mut value: Option<Value> = members
                    .get(head)
                    .and_then(|raw| serde_json::from_str(raw.get()).ok());
                for part in parts {
                    value = value.and_then(|v| v.get(part).cloned());
                }
                match value {
                    Some(Value::String(s)) => out.push_str(&s),
                    Some(Value::Null) | None => {
                        return Err(Defect::new(
                            path,
                            format!("the prompt template uses {{{path}}}, which this item lacks"),
                        ));
                    }
                    Some(other) => out.push_str(&other.to_string()),
                }
            }
        }
    }
    Ok(out)
}

/// Every item of a JSON-array input object, as raw JSON in order.
pub fn split_array(text: &str) -> Result<Vec<&RawValue>, Defect> {
    serde_json::from_str(text).map_err(|e| {
        let reason = if text.trim_start().starts_with('[') {
            format!("not valid JSON: {e}")
        } else {
            "must be a JSON array of items (inputFormat JSON)".to_owned()
        };
        Defect::new("file", reason)
    })
}

/// How an item ended, for its result object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemStatus {
    Success,
    Error,
}

/// One item's result, borrowed from where it was made.
#[derive(Debug, Serialize)]
pub struct ItemResult<'a> {
    pub id: &'a str,
    pub status: &'static str,
    /// The model's text answer (`null` for an error).
    pub output: Option<&'a str>,
    /// Seconds from the first attempt's start to the end of the last.
    pub processing_time: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub attempts: u32,
    pub error: Option<ItemError<'a>>,
    pub metadata: Option<&'a RawValue>,
}

#[derive(Debug, Serialize)]
pub struct ItemError<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl ItemResult<'_> {
    pub const SUCCESS: &'static str = "SUCCESS";
    pub const ERROR: &'static str = "ERROR";

    /// Appends the result as one JSON object (no separator, no newline).
    pub fn write(&self, buf: &mut Vec<u8>) {
        // Cannot fail: writing to a Vec does no IO and every member serialises.
        let _ = serde_json::to_writer(&mut *buf, self);
    }
}

/// What the error log keeps of a result.
#[derive(serde::Deserialize)]
struct LoggedResult<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    status: Cow<'a, str>,
    #[serde(default)]
    attempts: u64,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

/// One line of a batch job's output as written (a result object, in a JSON array with or
/// without its trailing comma, or a JSONL line): `Ok(None)` for the array's brackets, blank
/// lines and successes; for an error, its error-log line
/// `{"file", "index", "id", "attempts", "error"}` with a newline.
pub fn error_log_line(file: &str, index: u64, line: &str) -> Result<Option<String>, Defect> {
    let text = line.trim().trim_end_matches(',');
    if matches!(text, "" | "[" | "]") {
        return Ok(None);
    }
    let result: LoggedResult<'_> = serde_json::from_str(text)
        .map_err(|e| Defect::new("result", format!("not a result object: {e}")))?;
    if result.status != ItemResult::ERROR {
        return Ok(None);
    }
    let error: Value = result
        .error
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or(Value::Null);
    let entry = json!({
        "file": file, "index": index, "id": result.id, "attempts": result.attempts, "error": error,
    });
    Ok(Some(format!("{entry}\n")))
}

/// Whether a line of a batch job's output holds a result (not a bracket or a blank line).
pub fn is_result_line(line: &str) -> bool {
    !matches!(line.trim().trim_end_matches(','), "" | "[" | "]")
}

/// The text of a Converse response body (its text parts, joined), as a result's `output`.
pub fn converse_text(body: &Value) -> Option<String> {
    let content = body.pointer("/output/message/content")?.as_array()?;
    let texts: Vec<&str> = content
        .iter()
        .filter_map(|part| part.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.concat())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn converse(body: &str) -> Value {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn a_document_becomes_one_user_message_through_the_template() {
        let doc = r#"{"id":"doc1","content":"First doc.","metadata":{"type":"report","date":"2024-01-01"}}"#;
        let item = parse_item(doc, None).unwrap();
        assert_eq!(item.id.as_deref(), Some("doc1"));
        assert_eq!(
            item.metadata.unwrap().get(),
            r#"{"type":"report","date":"2024-01-01"}"#
        );
        assert_eq!(
            converse(&item.body),
            json!({"messages":[{"role":"user","content":[{"text":"First doc."}]}]})
        );
        let item = parse_item(
            doc,
            Some("Summarise this {metadata.type} ({id}): {content} {{ok}}"),
        )
        .unwrap();
        assert_eq!(
            converse(&item.body)["messages"][0]["content"][0]["text"],
            "Summarise this report (doc1): First doc. {ok}"
        );
    }

    #[test]
    fn records_and_converse_bodies_pass_through() {
        let record = r#"{"recordId":"r1","modelInput":{"messages":[]},"metadata":[1]}"#;
        let item = parse_item(record, Some("{content}")).unwrap();
        assert_eq!(item.id.as_deref(), Some("r1"));
        assert_eq!(item.body, r#"{"messages":[]}"#);
        assert_eq!(item.metadata.unwrap().get(), "[1]");
        let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let item = parse_item(body, None).unwrap();
        assert_eq!((item.id, &*item.body), (None, body));
        let numbered = parse_item(r#"{"id":7,"content":"x"}"#, None).unwrap();
        assert_eq!(numbered.id.as_deref(), Some("7"));
    }

    #[test]
    fn bad_items_name_the_field() {
        let cases = [
            ("[1]", "item: must be a JSON object"),
            (r#"{"text":"x"}"#, "item: must be a Bedrock record"),
            (r#"{"content":5}"#, "content: must be a string"),
            (r#"{"content":"  "}"#, "content: must not be empty"),
            (
                r#"{"id":[1],"content":"x"}"#,
                "id: must be a string or a number",
            ),
            (
                r#"{"recordId":1,"modelInput":{}}"#,
                "recordId: must be a string",
            ),
            (r#"{"content": "x""#, "item: not valid JSON"),
        ];
        for (text, expected) in cases {
            let defect = parse_item(text, None).unwrap_err().to_string();
            assert!(defect.starts_with(expected), "{text}: {defect}");
        }
        let missing = parse_item(r#"{"content":"x"}"#, Some("{metadata.type}: {content}"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            missing,
            "metadata.type: the prompt template uses {metadata.type}, which this item lacks"
        );
    }

    #[test]
    fn template_syntax_errors_say_where() {
        assert!(check_template("{content} and {metadata.type} {{x}}").is_ok());
        assert_eq!(
            check_template("Hi {content").unwrap_err(),
            "'{' at character 3 is never closed"
        );
        assert!(
            check_template("a } b")
                .unwrap_err()
                .starts_with("unmatched '}'")
        );
        assert!(
            check_template("{a b}")
                .unwrap_err()
                .contains("not a field name")
        );
        assert!(check_template("{}").is_err());
    }

    #[test]
    fn arrays_split_into_raw_items() {
        let items = split_array(r#"[{"a":1}, {"content":"x"} ]"#).unwrap();
        let raw: Vec<&str> = items.iter().map(|i| i.get()).collect();
        assert_eq!(raw, [r#"{"a":1}"#, r#"{"content":"x"}"#]);
        assert!(split_array("{}").unwrap_err().reason.contains("JSON array"));
        assert!(
            split_array("[1,")
                .unwrap_err()
                .reason
                .contains("not valid JSON")
        );
    }

    #[test]
    fn error_log_lines_come_from_error_results_only() {
        let error = r#"{"id":"d1","status":"ERROR","output":null,"attempts":2,"error":{"code":"X","message":"m"}},"#;
        let line = error_log_line("a.json", 3, error).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"file":"a.json","index":3,"id":"d1","attempts":2,"error":{"code":"X","message":"m"}})
        );
        let ok = r#"{"id":"d0","status":"SUCCESS","output":"x","attempts":1,"error":null}"#;
        assert_eq!(error_log_line("a.json", 0, ok).unwrap(), None);
        for bracket in ["[", "]", "  ", ""] {
            assert_eq!(error_log_line("a.json", 0, bracket).unwrap(), None);
            assert!(!is_result_line(bracket));
        }
        assert!(error_log_line("a.json", 0, "{oops").is_err());
    }

    #[test]
    fn results_serialise_with_every_member() {
        let metadata = RawValue::from_string(r#"{"type":"report"}"#.into()).unwrap();
        let mut buf = Vec::new();
        ItemResult {
            id: "doc1",
            status: ItemResult::ERROR,
            output: None,
            processing_time: 0.25,
            input_tokens: 0,
            output_tokens: 0,
            attempts: 3,
            error: Some(ItemError {
                code: "ThrottlingException",
                message: "slow down",
            }),
            metadata: Some(&metadata),
        }
        .write(&mut buf);
        let value: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            value,
            json!({"id":"doc1","status":"ERROR","output":null,"processing_time":0.25,
                   "input_tokens":0,"output_tokens":0,"attempts":3,
                   "error":{"code":"ThrottlingException","message":"slow down"},
                   "metadata":{"type":"report"}})
        );
        let response = json!({"output":{"message":{"role":"assistant","content":[{"text":"a"},{"text":"b"}]}}});
        assert_eq!(converse_text(&response).as_deref(), Some("ab"));
        assert_eq!(converse_text(&json!({})), None);
    }
}
