//! Record lines: parse one input JSONL line (`{"recordId", "modelInput"}`) without copying
//! its body, and write output lines (`modelOutput` or `error`) that echo `modelInput` byte
//! for byte (spec A3, A4).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::Defect;

/// One parsed input line, borrowing from it.
#[derive(Debug, Clone)]
pub struct RecordLine<'a> {
    /// None when the line has no recordId (the engine generates one).
    pub record_id: Option<String>,
    /// The modelInput object, untouched (so output can echo it byte for byte).
    pub model_input: &'a RawValue,
}

/// A record's modelInput as the JSON text it was read from, echoed byte for byte in its output
/// line. Made only from text a JSON parser has accepted (a `RawValue`, or a member of a line
/// already parsed whole).
#[derive(Debug, Clone, Copy)]
pub struct InputText<'a>(&'a str);

impl<'a> InputText<'a> {
    pub fn get(self) -> &'a str {
        self.0
    }

    /// The text of a line's member, found by [`member_text`] after the line was parsed.
    pub(crate) fn parsed(text: &'a str) -> Self {
        Self(text)
    }
}

impl<'a> From<&'a RawValue> for InputText<'a> {
    fn from(raw: &'a RawValue) -> Self {
        Self(raw.get())
    }
}

impl<'a> From<&'a Box<RawValue>> for InputText<'a> {
    fn from(raw: &'a Box<RawValue>) -> Self {
        Self(raw.get())
    }
}

/// The wire line. Both members are taken raw: their types are checked by hand so defects
/// can name the field and the JSON type found, and modelInput is never materialised.
#[derive(Deserialize)]
struct WireLine<'a> {
    #[serde(rename = "recordId", borrow, default, deserialize_with = "present")]
    record_id: Option<&'a RawValue>,
    #[serde(rename = "modelInput", borrow, default, deserialize_with = "present")]
    model_input: Option<&'a RawValue>,
}

/// Some(raw) for any member that is present, `null` included (serde's Option would turn
/// `null` into None, hiding `"modelInput": null` behind "missing").
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Parses one JSONL line. Unknown top-level keys are ignored (as Bedrock does).
pub fn parse_record_line(line: &str) -> Result<RecordLine<'_>, Defect> {
    // A UTF-8 byte order mark can only start line 1; it is not JSON, so skip it.
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    let trimmed = line.trim_ascii_start();
    if trimmed.trim_ascii_end().is_empty() {
        return Err(Defect::new("line", "blank line"));
    }
    expect_object_line(line)?;
    let wire: WireLine<'_> =
        serde_json::from_str(line).map_err(|e| Defect::new("line", json_error_reason(&e)))?;

    let record_id = match wire.record_id {
        None => None,
        Some(raw) => match raw.get().as_bytes().first() {
            Some(b'n') => None, // `"recordId": null` counts as absent
            Some(b'"') => {
                let id = string_value(raw.get())
                    .map_err(|e| Defect::new("recordId", json_error_reason(&e)))?;
                if id.is_empty() {
                    return Err(Defect::new("recordId", "must not be empty"));
                }
                Some(id)
            }
            _ => {
                let reason = format!("must be a string, found {}", raw_kind(raw.get()));
                return Err(Defect::new("recordId", reason));
            }
        },
    };
    let Some(model_input) = wire.model_input else {
        return Err(Defect::new("modelInput", "missing"));
    };
    if !model_input.get().starts_with('{') {
        let reason = format!("must be an object, found {}", raw_kind(model_input.get()));
        return Err(Defect::new("modelInput", reason));
    }
    Ok(RecordLine {
        record_id,
        model_input,
    })
}

/// The value of a JSON string token that serde_json has already validated (it came out of a
/// `RawValue`): without escapes it is the text between the quotes, copied once; otherwise
/// serde_json decodes the escapes.
fn string_value(raw: &str) -> Result<String, serde_json::Error> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.as_bytes().contains(&b'\\') => Ok(inner.to_owned()),
        _ => serde_json::from_str(raw),
    }
}

/// Appends `{"recordId":..,"modelInput":<raw>,"modelOutput":<output>}` + '\n' to buf.
pub fn write_success_line<'i>(
    buf: &mut Vec<u8>,
    record_id: &str,
    model_input: impl Into<InputText<'i>>,
    model_output: &serde_json::Value,
) {
    push_line_head(buf, record_id, model_input);
    buf.extend_from_slice(b",\"modelOutput\":");
    push_value(buf, model_output);
    buf.extend_from_slice(b"}\n");
}

/// [`write_success_line`] for any serialisable body, such as a struct that borrows the
/// response (no intermediate `Value` to build and drop).
pub fn write_success_line_with<'i, T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    record_id: &str,
    model_input: impl Into<InputText<'i>>,
    model_output: &T,
) {
    push_line_head(buf, record_id, model_input);
    buf.extend_from_slice(b",\"modelOutput\":");
    push_json(buf, model_output);
    buf.extend_from_slice(b"}\n");
}

/// Appends `{"recordId":..,"modelInput":<raw>,"error":{"errorCode":<int>,"errorMessage":".."}}`
/// + '\n' to buf.
pub fn write_error_line<'i>(
    buf: &mut Vec<u8>,
    record_id: &str,
    model_input: impl Into<InputText<'i>>,
    error_code: u16,
    error_message: &str,
) {
    push_line_head(buf, record_id, model_input);
    buf.extend_from_slice(b",\"error\":{\"errorCode\":");
    push_json(buf, &error_code);
    buf.extend_from_slice(b",\"errorMessage\":");
    push_json(buf, error_message);
    buf.extend_from_slice(b"}}\n");
}

/// `{"recordId":..,"modelInput":<raw>`, how every output line starts.
fn push_line_head<'i>(buf: &mut Vec<u8>, record_id: &str, model_input: impl Into<InputText<'i>>) {
    buf.extend_from_slice(b"{\"recordId\":");
    push_str(buf, record_id);
    buf.extend_from_slice(b",\"modelInput\":");
    push_raw(buf, model_input.into());
}

fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    // Cannot fail: writing to a Vec does no I/O, and strings and Values always serialize.
    let _ = serde_json::to_writer(&mut *buf, value);
}

/// A `Value` as compact JSON, byte for byte what `serde_json::to_writer` writes, without the
/// serializer's per-token `io::Write` calls (it was two thirds of writing a success line).
fn push_value(buf: &mut Vec<u8>, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Null => buf.extend_from_slice(b"null"),
        Value::Bool(true) => buf.extend_from_slice(b"true"),
        Value::Bool(false) => buf.extend_from_slice(b"false"),
        Value::Number(n) => push_json(buf, n),
        Value::String(s) => push_str(buf, s),
        Value::Array(items) => {
            buf.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_value(buf, item);
            }
            buf.push(b']');
        }
        Value::Object(map) => {
            buf.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_str(buf, key);
                buf.push(b':');
                push_value(buf, item);
            }
            buf.push(b'}');
        }
    }
}

/// A JSON string: copied between quotes when nothing needs escaping (serde_json escapes
/// exactly `"`, `\\` and control characters), else serde_json's escaping.
fn push_str(buf: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        buf.reserve(text.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(text.as_bytes());
        buf.push(b'"');
    } else {
        push_json(buf, text);
    }
}

/// Copies the raw JSON verbatim. A raw value parsed from one line holds no newline; one
/// built from pretty-printed JSON could, and would split the output line, so such
/// whitespace (never inside a string: JSON strings cannot hold raw newlines) becomes a space.
fn push_raw(buf: &mut Vec<u8>, raw: InputText<'_>) {
    let text = raw.get().as_bytes();
    // Word at a time: a byte-by-byte `any` was ~7 instructions per byte of modelInput, on
    // every output line.
    if has_newline(text) {
        buf.extend(
            text.iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
    } else {
        buf.extend_from_slice(text);
    }
}

// Eight bytes at a time (the classic "has a zero byte" test): exact, no false positives.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of the word is below n (n ≤ 128).
fn has_below(word: u64, n: u8) -> bool {
    word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS != 0
}

/// Whether any byte of the word equals b.
fn has_byte(word: u64, b: u8) -> bool {
    has_below(word ^ (ONES * u64::from(b)), 1)
}

/// Whether any byte satisfies `byte_test`, testing whole words with `word_test`.
fn any_byte(text: &[u8], word_test: impl Fn(u64) -> bool, byte_test: impl Fn(u8) -> bool) -> bool {
    let mut words = text.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if word_test(u64::from_le_bytes(word)) {
            return true;
        }
    }
    words.remainder().iter().any(|&b| byte_test(b))
}

/// Whether a JSON string needs escapes: `"`, `\\` or a control character.
fn needs_escape(text: &[u8]) -> bool {
    any_byte(
        text,
        |w| has_below(w, 0x20) || has_byte(w, b'"') || has_byte(w, b'\\'),
        |b| b < 0x20 || b == b'"' || b == b'\\',
    )
}

fn has_newline(text: &[u8]) -> bool {
    any_byte(
        text,
        |w| has_byte(w, b'\n') || has_byte(w, b'\r'),
        |b| b == b'\n' || b == b'\r',
    )
}

/// The text of the member `key` of the JSON object `line`, exactly the bytes a `RawValue`
/// of it would hold. `line` must be well-formed JSON (the caller has parsed it: this only
/// follows its structure). `None` when `key` is not a top-level member written without
/// escapes.
pub(crate) fn member_text<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        // A `}` here: no such member.
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let name_end = string_end(b, i)?;
        let name = b.get(i + 1..name_end - 1)?;
        i = skip_ws(b, name_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start)?;
        if name == key.as_bytes() {
            return line.get(start..end);
        }
        i = skip_ws(b, end);
        if b.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Past the closing quote of the string that opens at `start`.
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        match b.get(i)? {
            b'"' => return Some(i + 1),
            // An escape: skip the escaped byte (a quote or a backslash included).
            _ => i += 2,
        }
    }
}

/// Past the end of the value that starts at `start`.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        // A number, `true`, `false` or `null`.
        _ => {
            let rest = b.get(start..)?;
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(rest.len());
            Some(start + len)
        }
    }
}

/// The JSON type of raw, well-formed JSON text, from its first byte.
/// A line that is not a JSON object is a defect: a broken line or a well-formed non-object.
pub(crate) fn expect_object_line(line: &str) -> Result<(), Defect> {
    let trimmed = line.trim_ascii_start();
    if trimmed.starts_with('{') {
        return Ok(());
    }
    Err(match serde_json::from_str::<serde::de::IgnoredAny>(line) {
        Ok(_) => Defect::new(
            "line",
            format!("expected a JSON object, found {}", raw_kind(trimmed)),
        ),
        Err(e) => Defect::new("line", json_error_reason(&e)),
    })
}

pub(crate) fn raw_kind(raw: &str) -> &'static str {
    match raw.trim_ascii_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// `invalid JSON: <what> at column N` for syntax errors; serde's own words for shape errors
/// (such as a duplicate `recordId`).
pub(crate) fn json_error_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(what, _)| what);
    match e.classify() {
        serde_json::error::Category::Data => what.to_owned(),
        _ if e.line() > 1 => {
            format!(
                "invalid JSON: {what} at line {} column {}",
                e.line(),
                e.column()
            )
        }
        _ => format!("invalid JSON: {what} at column {}", e.column()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn defect(line: &str) -> Defect {
        match parse_record_line(line) {
            Ok(r) => panic!("expected a defect for {line:?}, got {r:?}"),
            Err(d) => d,
        }
    }

    /// The line's defect is the whole line's, and its reason starts with `prefix`.
    fn assert_line_defect(line: &str, prefix: &str) {
        let d = defect(line);
        assert_eq!(d.field, "line");
        assert!(d.reason.starts_with(prefix), "{d}");
    }

    fn parsed(line: &str) -> RecordLine<'_> {
        match parse_record_line(line) {
            Ok(r) => r,
            Err(d) => panic!("unexpected defect for {line:?}: {d}"),
        }
    }

    #[test]
    fn parses_and_borrows_model_input_verbatim() {
        let line = r#"{"recordId": "CALL0000001", "extra": [1, {"a": 2}], "modelInput": {"messages" : [ ] , "x":"\u00e9"}}"#;
        let r = parsed(line);
        assert_eq!(r.record_id.as_deref(), Some("CALL0000001"));
        assert_eq!(r.model_input.get(), r#"{"messages" : [ ] , "x":"\u00e9"}"#);
        // Borrowed from the line, not copied.
        let start = r.model_input.get().as_ptr() as usize;
        let range = line.as_ptr() as usize..line.as_ptr() as usize + line.len();
        assert!(range.contains(&start));
    }

    #[test]
    fn record_id_escapes_are_decoded() {
        let r = parsed(r#"{"recordId": "a\"b\u00e9", "modelInput": {}}"#);
        assert_eq!(r.record_id.as_deref(), Some("a\"bé"));
    }

    #[test]
    fn record_id_without_escapes_is_copied_as_is() {
        for id in ["a", "rec-00000001", "ü 🦀 /'", " "] {
            let line = format!(r#"{{"recordId": "{id}", "modelInput": {{}}}}"#);
            assert_eq!(parsed(&line).record_id.as_deref(), Some(id));
        }
        // A raw control character inside the id is still a line defect (serde's check).
        assert_line_defect(
            "{\"recordId\": \"a\u{1}b\", \"modelInput\": {}}",
            "invalid JSON: control character",
        );
    }

    #[test]
    fn missing_or_null_record_id_is_none() {
        assert_eq!(parsed(r#"{"modelInput": {}}"#).record_id, None);
        assert_eq!(
            parsed(r#"{"recordId": null, "modelInput": {}}"#).record_id,
            None
        );
    }

    #[test]
    fn tolerates_crlf_and_bom() {
        let r = parsed("\u{feff}{\"recordId\":\"a\",\"modelInput\":{}}\r");
        assert_eq!(r.record_id.as_deref(), Some("a"));
        assert_eq!(r.model_input.get(), "{}");
    }

    #[test]
    fn invalid_json_names_column() {
        let d = defect(r#"{"recordId": "trunc", "modelInput": {"messages": ["#);
        assert_eq!(d.field, "line");
        assert_eq!(
            d.reason,
            "invalid JSON: EOF while parsing a list at column 50"
        );
        assert_line_defect(
            r#"{"recordId": "x", "modelInput": {}} trailing"#,
            "invalid JSON: trailing characters at column",
        );
        assert_line_defect("[1, 2", "invalid JSON: EOF while parsing a list");
        let d = defect("nope");
        assert!(d.reason.starts_with("invalid JSON: "), "{d}");
    }

    #[test]
    fn non_object_lines_name_the_type() {
        for (line, kind) in [
            (r#"["not", "an", "object"]"#, "an array"),
            (r#""text""#, "a string"),
            ("42", "a number"),
            ("-1.5", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            let d = defect(line);
            assert_eq!(
                d,
                Defect::new("line", format!("expected a JSON object, found {kind}"))
            );
        }
    }

    #[test]
    fn blank_line_is_a_defect() {
        assert_eq!(defect(""), Defect::new("line", "blank line"));
        assert_eq!(defect("  \t\r"), Defect::new("line", "blank line"));
    }

    /// Each line's one defect is `(field, reason)`.
    fn assert_defects(cases: &[(&str, &str, &str)]) {
        for &(line, field, reason) in cases {
            assert_eq!(defect(line), Defect::new(field, reason), "{line}");
        }
    }

    #[test]
    fn model_input_missing_or_wrong_type() {
        assert_defects(&[
            (r#"{"recordId": "a"}"#, "modelInput", "missing"),
            (
                r#"{"recordId": "a", "modelInput": "hi"}"#,
                "modelInput",
                "must be an object, found a string",
            ),
            (
                r#"{"recordId": "a", "modelInput": null}"#,
                "modelInput",
                "must be an object, found null",
            ),
            (
                r#"{"recordId": "a", "modelInput": [1]}"#,
                "modelInput",
                "must be an object, found an array",
            ),
        ]);
    }

    #[test]
    fn record_id_wrong_type_or_empty() {
        assert_defects(&[
            (
                r#"{"recordId": 12345, "modelInput": {}}"#,
                "recordId",
                "must be a string, found a number",
            ),
            (
                r#"{"recordId": ["a"], "modelInput": {}}"#,
                "recordId",
                "must be a string, found an array",
            ),
            (
                r#"{"recordId": "", "modelInput": {}}"#,
                "recordId",
                "must not be empty",
            ),
        ]);
    }

    #[test]
    fn duplicate_top_level_key_is_a_line_defect() {
        let d = defect(r#"{"recordId": "a", "recordId": "b", "modelInput": {}}"#);
        assert_eq!(d, Defect::new("line", "duplicate field `recordId`"));
    }

    fn parse_output(buf: &[u8]) -> Value {
        let text = std::str::from_utf8(buf).expect("utf-8");
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1, "exactly one line: {text:?}");
        serde_json::from_str(text).expect("valid JSON line")
    }

    /// The text of modelInput inside an output line, found by re-parsing it raw.
    fn echoed_input(buf: &[u8]) -> String {
        let text = std::str::from_utf8(buf).expect("utf-8");
        let line = parse_record_line(text.trim_end()).expect("output line parses as a record");
        line.model_input.get().to_owned()
    }

    #[test]
    fn success_line_round_trip() {
        let input_line = r#"{"recordId":"x","modelInput":{"messages" : [{"role":"user","content":[{"text":"h\u00e9\n\"q\""}]}], "n": 1.50}}"#;
        let input = parsed(input_line).model_input;
        let id = "id \"quoted\"\nnew line é 🦀 \u{1}";
        let output = json!({"output": {"message": {"role": "assistant", "content": [{"text": "ok\n\"x\""}]}}});
        let mut buf = b"previous\n".to_vec();
        let start = buf.len();
        write_success_line(&mut buf, id, input, &output);
        let line = buf.get(start..).expect("appended");
        let v = parse_output(line);
        let obj = v.as_object().expect("object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 3);
        assert_eq!(v["recordId"], json!(id));
        assert_eq!(v["modelOutput"], output);
        assert_eq!(echoed_input(line), input.get());
        assert!(buf.starts_with(b"previous\n"));
    }

    #[test]
    fn error_line_round_trip() {
        let input = parsed(r#"{"modelInput": {"a": "b\u2028"}}"#).model_input;
        let message = "bad \"request\"\n\tline two ✓ \u{7f}";
        let mut buf = Vec::new();
        write_error_line(&mut buf, "ü-1", input, 400, message);
        let v = parse_output(&buf);
        assert_eq!(v.as_object().map(|o| o.len()), Some(3));
        assert_eq!(v["recordId"], json!("ü-1"));
        assert_eq!(
            v["error"],
            json!({"errorCode": 400, "errorMessage": message})
        );
        assert!(v["error"]["errorCode"].is_u64());
        assert_eq!(echoed_input(&buf), input.get());
    }

    #[test]
    fn values_are_written_exactly_as_serde_json_writes_them() {
        let values = [
            json!(null),
            json!({"a": [1, -2, 3.5, 1e300, true, false, null], "b": {}, "c": []}),
            json!({"output": {"message": {"role": "assistant", "content": [{"text": "plain"}]}}}),
            json!({"k\"ey": "quote \" back\\slash", "ctl": "\u{0}\u{1f}\n\t\r", "del": "\u{7f}"}),
            json!({"uni": "é 🦀 \u{2028} </script>", "n": u64::MAX, "m": i64::MIN}),
        ];
        for value in values {
            let mut ours = Vec::new();
            push_value(&mut ours, &value);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&value).unwrap()
            );
        }
        let input = parsed(r#"{"modelInput": {"x": 1}}"#).model_input;
        let body = json!({"stopReason": "end_turn", "usage": {"inputTokens": 3}});
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_success_line(&mut a, "id\"1", input, &body);
        write_success_line_with(&mut b, "id\"1", input, &body);
        assert_eq!(a, b);
    }

    #[test]
    fn word_tests_find_every_byte_at_every_position() {
        for len in 0..20 {
            assert!(!needs_escape(&vec![b'a'; len]));
            assert!(!has_newline(&vec![0xffu8; len]));
            for at in 0..len {
                for b in [b'"', b'\\', 0, 0x1f, b'\n'] {
                    let mut text = vec![b' '; len];
                    text[at] = b;
                    assert!(needs_escape(&text), "{b} at {at} of {len}");
                }
                for b in [b'\n', b'\r'] {
                    let mut text = vec![0x80u8; len];
                    text[at] = b;
                    assert!(has_newline(&text), "{b} at {at} of {len}");
                }
                for b in [0x20u8, 0x7f, 0x80, 0xff, b'/', b'#'] {
                    let mut text = vec![b'x'; len];
                    text[at] = b;
                    assert!(!needs_escape(&text), "{b} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn multi_line_raw_input_stays_on_one_line() {
        let raw = RawValue::from_string("{\n  \"a\": 1\r\n}".to_owned()).expect("raw");
        let mut buf = Vec::new();
        write_error_line(&mut buf, "r", &raw, 500, "boom");
        let v = parse_output(&buf);
        assert_eq!(v["modelInput"], json!({"a": 1}));
    }
}
