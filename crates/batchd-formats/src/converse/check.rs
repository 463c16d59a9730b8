//! Path-tracking checks over a parsed JSON body: each check records a [`Defect`] with the
//! field's full path and carries on, so one pass reports every problem in a record.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::Defect;

/// A field path kept as a linked list on the stack; turned into text only when a defect
/// needs it, so valid records never pay for path strings.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root(&'a str),
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl<'a> Path<'a> {
    pub(crate) fn key(&'a self, key: &'a str) -> Path<'a> {
        Path::Key(self, key)
    }

    pub(crate) fn index(&'a self, index: usize) -> Path<'a> {
        Path::Index(self, index)
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(48);
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match self {
            Path::Root(name) => out.push_str(name),
            Path::Key(parent, key) => {
                parent.render_into(out);
                out.push('.');
                out.push_str(key);
            }
            Path::Index(parent, index) => {
                parent.render_into(out);
                let _ = write!(out, "[{index}]");
            }
        }
    }
}

/// The JSON type of a value, with its article, for reasons like `found an array`.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A user-supplied string for a reason: quoted, escaped, and cut short so a huge value
/// cannot blow up the error line.
pub(crate) fn quoted(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    match s.char_indices().nth(MAX_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", s.get(..cut).unwrap_or_default()),
    }
}

/// A member's value; `null` counts as absent (AWS JSON protocols treat a null member as unset).
pub(crate) fn member<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// A record's modelInput (raw JSON text) parsed; invalid JSON is the record's one defect.
pub(crate) fn parse_model_input(model_input: &str) -> Result<Value, Vec<Defect>> {
    serde_json::from_str(model_input)
        .map_err(|e| vec![Defect::new("modelInput", format!("invalid JSON: {e}"))])
}

/// Collects defects for one record, up to a limit so a pathological record (say a million
/// broken blocks) yields a readable error rather than megabytes of it.
pub(crate) struct Checker {
    defects: Vec<Defect>,
    limit: usize,
}

impl Checker {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            defects: Vec::new(),
            limit: limit.max(1),
        }
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.defects.is_empty()
    }

    /// The walk's result when no defect was recorded, else every defect.
    pub(crate) fn finish<T>(self, result: Option<T>) -> Result<T, Vec<Defect>> {
        match result {
            Some(result) if self.is_clean() => Ok(result),
            // Walks return None only after recording a defect; the fallback keeps that
            // promise from being load-bearing.
            _ if self.is_clean() => Err(vec![Defect::new("modelInput", "cannot be translated")]),
            _ => Err(self.defects),
        }
    }

    pub(crate) fn defect(&mut self, path: &Path<'_>, reason: impl Into<String>) {
        let len = self.defects.len();
        if len + 1 < self.limit {
            self.defects.push(Defect::new(path.render(), reason));
        } else if len + 1 == self.limit {
            // The last slot says that more was cut, naming the record root.
            let mut root = path;
            while let Path::Key(parent, _) | Path::Index(parent, _) = root {
                root = parent;
            }
            let limit = self.limit;
            self.defects.push(Defect::new(
                root.render(),
                format!("too many defects; only the first {} are listed", limit - 1),
            ));
        }
    }

    /// Records `must be <expected>, found <kind>`.
    pub(crate) fn wrong_type(&mut self, path: &Path<'_>, expected: &str, value: &Value) {
        self.defect(path, format!("must be {expected}, found {}", kind(value)));
    }

    /// The value as the JSON type `as_type` picks out, else a `wrong_type` defect.
    fn typed<'v, T>(
        &mut self,
        path: &Path<'_>,
        value: &'v Value,
        expected: &str,
        as_type: fn(&'v Value) -> Option<T>,
    ) -> Option<T> {
        let typed = as_type(value);
        if typed.is_none() {
            self.wrong_type(path, expected, value);
        }
        typed
    }

    pub(crate) fn object<'v>(
        &mut self,
        path: &Path<'_>,
        value: &'v Value,
    ) -> Option<&'v Map<String, Value>> {
        self.typed(path, value, "an object", Value::as_object)
    }

    pub(crate) fn array<'v>(&mut self, path: &Path<'_>, value: &'v Value) -> Option<&'v [Value]> {
        self.typed(path, value, "an array", Value::as_array)
            .map(Vec::as_slice)
    }

    /// An array with at least one item.
    pub(crate) fn non_empty_array<'v>(
        &mut self,
        path: &Path<'_>,
        value: &'v Value,
    ) -> Option<&'v [Value]> {
        let items = self.array(path, value)?;
        if items.is_empty() {
            self.defect(path, "must not be empty");
            return None;
        }
        Some(items)
    }

    /// Records `must have at most <max> items, found <len>` when `len` is over `max`.
    pub(crate) fn at_most(&mut self, path: &Path<'_>, len: usize, max: usize) -> bool {
        if len > max {
            self.defect(path, format!("must have at most {max} items, found {len}"));
        }
        len <= max
    }

    /// An array of at most `max` non-empty strings; every bad item is recorded (a list too
    /// long is recorded and its items still checked).
    pub(crate) fn non_empty_strings(
        &mut self,
        path: &Path<'_>,
        value: &Value,
        max: usize,
    ) -> Vec<String> {
        let Some(items) = self.array(path, value) else {
            return Vec::new();
        };
        self.at_most(path, items.len(), max);
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                self.non_empty_string(&path.index(i), item)
                    .map(str::to_owned)
            })
            .collect()
    }

    pub(crate) fn string<'v>(&mut self, path: &Path<'_>, value: &'v Value) -> Option<&'v str> {
        self.typed(path, value, "a string", Value::as_str)
    }

    pub(crate) fn non_empty_string<'v>(
        &mut self,
        path: &Path<'_>,
        value: &'v Value,
    ) -> Option<&'v str> {
        let s = self.string(path, value)?;
        if s.is_empty() {
            self.defect(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(crate) fn boolean(&mut self, path: &Path<'_>, value: &Value) -> Option<bool> {
        self.typed(path, value, "a boolean", Value::as_bool)
    }

    /// A number in `[min, max]`.
    pub(crate) fn number_in(
        &mut self,
        path: &Path<'_>,
        value: &Value,
        min: f64,
        max: f64,
    ) -> Option<f64> {
        let Value::Number(n) = value else {
            self.wrong_type(path, "a number", value);
            return None;
        };
        match n.as_f64() {
            Some(x) if (min..=max).contains(&x) => Some(x),
            _ => {
                self.defect(path, format!("must be between {min} and {max}, found {n}"));
                None
            }
        }
    }

    /// An integer in `[min, u32::MAX]`.
    pub(crate) fn u32_at_least(&mut self, path: &Path<'_>, value: &Value, min: u32) -> Option<u32> {
        let Value::Number(n) = value else {
            self.wrong_type(path, "an integer", value);
            return None;
        };
        if let Some(x) = n.as_u64() {
            if x < u64::from(min) {
                self.defect(path, format!("must be at least {min}, found {n}"));
                return None;
            }
            return match u32::try_from(x) {
                Ok(x) => Some(x),
                Err(_) => {
                    self.defect(path, format!("must be at most {}, found {n}", u32::MAX));
                    None
                }
            };
        }
        if n.is_i64() {
            self.defect(path, format!("must be at least {min}, found {n}"));
        } else {
            self.defect(path, format!("must be an integer, found {n}"));
        }
        None
    }

    /// A string that is one of `allowed`.
    pub(crate) fn one_of<'v>(
        &mut self,
        path: &Path<'_>,
        value: &'v Value,
        allowed: &[&str],
    ) -> Option<&'v str> {
        let s = self.string(path, value)?;
        if allowed.contains(&s) {
            return Some(s);
        }
        let expected = match allowed {
            [only] => format!("{only:?}"),
            [a, b] => format!("{a:?} or {b:?}"),
            _ => {
                let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                format!("one of {}", list.join(", "))
            }
        };
        self.defect(path, format!("must be {expected}, found {}", quoted(s)));
        None
    }

    /// A required member: `missing` when absent or null.
    pub(crate) fn required<'v>(
        &mut self,
        path: &Path<'_>,
        map: &'v Map<String, Value>,
        key: &str,
    ) -> Option<&'v Value> {
        let found = member(map, key);
        if found.is_none() {
            self.defect(&path.key(key), "missing");
        }
        found
    }

    /// Every key of `map` must be in `allowed` (Bedrock rejects extraneous members).
    pub(crate) fn known_keys(
        &mut self,
        path: &Path<'_>,
        map: &Map<String, Value>,
        allowed: &[&str],
    ) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.unknown_key(path, key);
            }
        }
    }

    pub(crate) fn unknown_key(&mut self, path: &Path<'_>, key: &str) {
        let shown = display_key(key);
        self.defect(&path.key(&shown), "unknown field");
    }

    /// [`Checker::union`] of a value that must first be an object.
    pub(crate) fn object_union<'v>(
        &mut self,
        path: &Path<'_>,
        value: &'v Value,
    ) -> Option<(&'v str, &'v Value)> {
        let map = self.object(path, value)?;
        self.union(path, map)
    }

    /// A union (Smithy `union`): exactly one non-null member. Returns its key and value;
    /// the caller decides whether the key is a known variant.
    pub(crate) fn union<'v>(
        &mut self,
        path: &Path<'_>,
        map: &'v Map<String, Value>,
    ) -> Option<(&'v str, &'v Value)> {
        let mut set = map.iter().filter(|(_, v)| !v.is_null());
        match (set.next(), set.next()) {
            (Some((key, value)), None) => Some((key.as_str(), value)),
            (None, _) => {
                self.defect(path, "must have exactly one key, found 0");
                None
            }
            (Some(_), Some(_)) => {
                // Sorted so the message is the same whatever the map's key order is.
                let mut keys: Vec<String> = map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, _)| display_key(k))
                    .collect();
                keys.sort_unstable();
                let count = keys.len();
                self.defect(
                    path,
                    format!(
                        "must have exactly one key, found {count}: {}",
                        keys.join(", ")
                    ),
                );
                None
            }
        }
    }
}

/// A key as shown in a path: user keys can be anything, so long ones are cut.
fn display_key(key: &str) -> String {
    const MAX_CHARS: usize = 64;
    match key.char_indices().nth(MAX_CHARS) {
        None => key.to_owned(),
        Some((cut, _)) => format!("{}…", key.get(..cut).unwrap_or_default()),
    }
}

/// `[a-zA-Z0-9_-]{1,64}` plus any bytes in `extra` (toolUseId also allows `.` and `:`).
pub(crate) fn matches_name_pattern(s: &str, extra: &[u8]) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

/// Why `s` is not standard padded base64 (what AWS JSON protocols use for blobs), or None
/// when it is. Checks alphabet, padding and length only: cheap, and catches the usual
/// mistakes (data URLs, URL-safe alphabet, stray whitespace, truncation).
pub(crate) fn base64_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_owned());
    }
    let bytes = s.as_bytes();
    let body_len = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    let body_len = bytes.len() - body_len.min(bytes.len());
    let padding = bytes.len() - body_len;
    for (pos, &b) in bytes.iter().enumerate() {
        let ok = if pos < body_len {
            b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
        } else {
            b == b'='
        };
        if !ok {
            let shown = s
                .get(pos..)
                .and_then(|rest| rest.chars().next())
                .unwrap_or('?');
            return Some(format!(
                "must be base64 (standard alphabet): invalid character {shown:?} at position {pos}"
            ));
        }
    }
    if padding > 2 || !bytes.len().is_multiple_of(4) {
        return Some(format!(
            "must be padded base64: length {} is not a multiple of 4 or has too much padding",
            bytes.len()
        ));
    }
    None
}
