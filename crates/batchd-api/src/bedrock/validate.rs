//! Request validation with the patterns and limits of the `bedrock` service model (2023-04-20).
//!
//! Every failed constraint becomes one clause in Bedrock's phrasing, naming the member by its
//! path (`inputDataConfig.s3InputDataConfig.s3Uri`, `tags.2.member.key`):
//! `1 validation error detected: Value 'x' at 'jobName' failed to satisfy constraint: ...`.
//! The model's patterns are matched whole (as the service's Java validators do); there is
//! no regex crate in the workspace, so each pattern is a small hand-written matcher.

use batchd_core::{Dialect, InvocationType, JobId, JobOrigin, JobRequest, JobStatus};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::timestamp;
use super::token::PageToken;

pub const JOB_NAME_PATTERN: &str = r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}";
pub const ROLE_ARN_PATTERN: &str = "arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+";
pub const TOKEN_PATTERN: &str = "[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}";
pub const S3_URI_PATTERN: &str =
    "s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?";
pub const ACCOUNT_ID_PATTERN: &str = "[0-9]{12}";
pub const KMS_KEY_ID_PATTERN: &str = "(arn:aws(-[^:]+)?:kms:[a-zA-Z0-9-]*:[0-9]{12}:((key/[a-zA-Z0-9-]{36})|(alias/[a-zA-Z0-9-_/]+)))|([a-zA-Z0-9-]{36})|(alias/[a-zA-Z0-9-_/]+)";
pub const VPC_ID_PATTERN: &str = "[-0-9a-zA-Z]+";
pub const TAG_PATTERN: &str = r"[a-zA-Z0-9\s._:/=+@-]*";
pub const PAGINATION_TOKEN_PATTERN: &str = r"\S*";

/// `[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}`: an alphanumeric, then alphanumerics and
/// `+ - .` (the `-*` prefix adds nothing since `-` is in the class; lengths are checked apart).
pub fn is_job_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}`: alphanumerics and dashes, starting and ending
/// with an alphanumeric (UUIDs qualify).
pub fn is_client_request_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// After `arn:aws`: an optional `-<partition suffix>` up to the next `:` (`(-[^:]+)?`).
fn strip_partition(s: &str) -> Option<&str> {
    let rest = s.strip_prefix("arn:aws")?;
    match rest.strip_prefix('-') {
        Some(suffix) => {
            let colon = suffix.find(':')?;
            (colon > 0).then(|| &suffix[colon..])
        }
        None => Some(rest),
    }
}

fn is_digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+` (`.` excludes line breaks).
pub fn is_role_arn(s: &str) -> bool {
    let Some(rest) = strip_partition(s).and_then(|r| r.strip_prefix(":iam::")) else {
        return false;
    };
    let rest = match rest.strip_prefix(":role/") {
        Some(r) => r,
        None => match rest.get(..12).zip(rest.get(12..)) {
            Some((account, r)) if is_digits(account, 12) => match r.strip_prefix(":role/") {
                Some(r) => r,
                None => return false,
            },
            _ => return false,
        },
    };
    !rest.is_empty()
        && !rest
            .chars()
            .any(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
}

/// The model's `S3Uri` pattern: a 3-63 character bucket of `[-.a-z0-9]` that starts and ends
/// with `[a-z0-9]`, then optional non-empty `/`-separated segments of `[-!_*'().a-zA-Z0-9]`,
/// then an optional trailing `/`.
pub fn is_s3_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("s3://") else {
        return false;
    };
    let (bucket, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let b = bucket.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bucket_ok = (3..=63).contains(&b.len())
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| edge(c) || c == b'-' || c == b'.');
    if !bucket_ok {
        return false;
    }
    let Some(path) = path.strip_prefix('/') else {
        return path.is_empty();
    };
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, seg)| {
        // Only the last segment may be empty: that is the optional trailing slash.
        (seg.is_empty() && i == last)
            || (!seg.is_empty()
                && seg.bytes().all(|c| {
                    c.is_ascii_alphanumeric()
                        || matches!(c, b'-' | b'!' | b'_' | b'*' | b'\'' | b'(' | b')' | b'.')
                }))
    })
}

pub fn is_account_id(s: &str) -> bool {
    is_digits(s, 12)
}

/// `KmsKeyId`: a key ARN, an alias ARN, a 36-character key id, or `alias/<name>`.
pub fn is_kms_key_id(s: &str) -> bool {
    let alias_name = |a: &str| {
        !a.is_empty()
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'))
    };
    let key_id =
        |k: &str| k.len() == 36 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if key_id(s) || s.strip_prefix("alias/").is_some_and(alias_name) {
        return true;
    }
    let Some(rest) = strip_partition(s).and_then(|r| r.strip_prefix(":kms:")) else {
        return false;
    };
    let Some((region, rest)) = rest.split_once(':') else {
        return false;
    };
    let Some((account, resource)) = rest.split_once(':') else {
        return false;
    };
    region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && is_digits(account, 12)
        && (resource.strip_prefix("key/").is_some_and(key_id)
            || resource.strip_prefix("alias/").is_some_and(alias_name))
}

/// `[-0-9a-zA-Z]+` (subnet and security-group ids).
pub fn is_vpc_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `[a-zA-Z0-9\s._:/=+@-]*` (tag keys and values; `\s` is Java's ASCII whitespace).
pub fn is_tag_text(s: &str) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b' ' | b'\t'
                    | b'\n'
                    | 0x0b
                    | 0x0c
                    | b'\r'
                    | b'.'
                    | b'_'
                    | b':'
                    | b'/'
                    | b'='
                    | b'+'
                    | b'@'
                    | b'-'
            )
    })
}

/// `\S*`.
pub fn is_pagination_token(s: &str) -> bool {
    !s.chars().any(char::is_whitespace)
}

/// Failed constraints, rendered the way Bedrock renders them.
#[derive(Debug, Default)]
pub struct Violations {
    items: Vec<String>,
}

/// Values longer than this are cut in messages (a 2 KiB ARN helps nobody twice).
const SHOWN_MAX_CHARS: usize = 256;

fn shown(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > SHOWN_MAX_CHARS {
        let cut: String = text.chars().take(SHOWN_MAX_CHARS).collect();
        format!("{cut}...")
    } else {
        text
    }
}

impl Violations {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `Value '<value>' at '<path>' failed to satisfy constraint: <constraint>`; a `None`
    /// value renders as `Value null`.
    pub fn add(&mut self, path: &str, value: Option<&Value>, constraint: &str) {
        let value = match value {
            Some(v) => format!("'{}'", shown(v)),
            None => "null".to_owned(),
        };
        self.items.push(format!(
            "Value {value} at '{path}' failed to satisfy constraint: {constraint}"
        ));
    }

    fn add_str(&mut self, path: &str, value: &str, constraint: &str) {
        self.add(path, Some(&Value::String(value.to_owned())), constraint);
    }

    /// The ValidationException for what was collected, if anything was.
    pub fn into_result(self) -> Result<(), ApiError> {
        match self.items.len() {
            0 => Ok(()),
            1 => Err(ApiError::validation(format!(
                "1 validation error detected: {}",
                self.items[0]
            ))),
            n => Err(ApiError::validation(format!(
                "{n} validation errors detected: {}",
                self.items.join("; ")
            ))),
        }
    }

    fn required(&mut self, path: &str) {
        self.add(path, None, "Member must not be null");
    }

    /// Length limits of a member whose `value` has `len` characters or items.
    fn check_len(&mut self, path: &str, value: &Value, len: usize, (min, max): (usize, usize)) {
        if len < min {
            self.add(
                path,
                Some(value),
                &format!("Member must have length greater than or equal to {min}"),
            );
        }
        if len > max {
            self.add(
                path,
                Some(value),
                &format!("Member must have length less than or equal to {max}"),
            );
        }
    }

    /// Length (in characters) and pattern checks of one string member.
    fn check_str(&mut self, path: &str, s: &str, min: usize, max: usize, pattern: Pattern) {
        let value = Value::String(s.to_owned());
        self.check_len(path, &value, s.chars().count(), (min, max));
        if let Some((text, matches)) = pattern
            && !matches(s)
        {
            self.add(
                path,
                Some(&value),
                &format!("Member must satisfy regular expression pattern: {text}"),
            );
        }
    }

    fn check_enum(&mut self, path: &str, s: &str, allowed: &[&str]) -> bool {
        let ok = allowed.contains(&s);
        if !ok {
            self.add_str(
                path,
                s,
                &format!(
                    "Member must satisfy enum value set: [{}]",
                    allowed.join(", ")
                ),
            );
        }
        ok
    }
}

type Pattern = Option<(&'static str, fn(&str) -> bool)>;

/// A member of a JSON object; `null` counts as absent (as in the AWS JSON protocols).
fn member<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// A member of one JSON type (`as_type` picks it out): records `not null` when required and
/// absent, or `Member must be <type_name>` when it has another type. Returns the value too.
fn typed_member<'a, T>(
    v: &mut Violations,
    obj: &'a Map<String, Value>,
    (parent, key): (&str, &str),
    required: bool,
    (type_name, as_type): (&str, fn(&'a Value) -> Option<T>),
) -> Option<(&'a Value, T)> {
    let path = join(parent, key);
    match member(obj, key) {
        None => {
            if required {
                v.required(&path);
            }
            None
        }
        Some(value) => {
            let typed = as_type(value);
            if typed.is_none() {
                v.add(&path, Some(value), &format!("Member must be {type_name}"));
            }
            typed.map(|t| (value, t))
        }
    }
}

/// A string member: records `not null` when required and absent, or a type error.
fn string_member<'a>(
    v: &mut Violations,
    obj: &'a Map<String, Value>,
    parent: &str,
    key: &str,
    required: bool,
) -> Option<&'a str> {
    typed_member(v, obj, (parent, key), required, ("a string", Value::as_str)).map(|(_, s)| s)
}

fn object_member<'a>(
    v: &mut Violations,
    obj: &'a Map<String, Value>,
    parent: &str,
    key: &str,
    required: bool,
) -> Option<&'a Map<String, Value>> {
    typed_member(
        v,
        obj,
        (parent, key),
        required,
        ("a structure", Value::as_object),
    )
    .map(|(_, o)| o)
}

/// A list member with its length limits; the elements are the caller's.
fn list_member<'a>(
    v: &mut Violations,
    obj: &'a Map<String, Value>,
    parent: &str,
    key: &str,
    (required, min, max): (bool, usize, usize),
) -> Option<&'a [Value]> {
    let (value, items) =
        typed_member(v, obj, (parent, key), required, ("a list", Value::as_array))?;
    v.check_len(&join(parent, key), value, items.len(), (min, max));
    Some(items)
}

/// A list of strings, each checked; element paths are `<list>.<n>.member` (1-based).
fn string_list(
    v: &mut Violations,
    obj: &Map<String, Value>,
    parent: &str,
    key: &str,
    limits: (bool, usize, usize),
    (min, max, pattern): (usize, usize, Pattern),
) {
    let path = join(parent, key);
    for (i, item) in list_member(v, obj, parent, key, limits)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let item_path = format!("{path}.{}.member", i + 1);
        match item {
            Value::String(s) => v.check_str(&item_path, s, min, max, pattern),
            Value::Null => v.required(&item_path),
            other => v.add(&item_path, Some(other), "Member must be a string"),
        }
    }
}

fn check_s3_uri(v: &mut Violations, path: &str, s: &str) {
    v.check_str(path, s, 1, 1024, Some((S3_URI_PATTERN, is_s3_uri)));
}

fn check_bucket_owner(v: &mut Violations, obj: &Map<String, Value>, parent: &str) {
    if let Some(owner) = string_member(v, obj, parent, "s3BucketOwner", false) {
        let path = join(parent, "s3BucketOwner");
        v.check_str(
            &path,
            owner,
            0,
            usize::MAX,
            Some((ACCOUNT_ID_PATTERN, is_account_id)),
        );
    }
}

/// A request body as a JSON object; an empty body counts as `{}`.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::validation("The request body is not valid UTF-8."))?;
    let value: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(text)
            .map_err(|e| ApiError::validation(format!("The request body is not valid JSON: {e}")))?
    };
    let Value::Object(obj) = value else {
        return Err(ApiError::validation(
            "The request body must be a JSON object.",
        ));
    };
    Ok(obj)
}

/// `resourceARN` of the tagging operations.
fn resource_arn<'a>(v: &mut Violations, obj: &'a Map<String, Value>) -> Option<&'a str> {
    let arn = string_member(v, obj, "", "resourceARN", true)?;
    v.check_str("resourceARN", arn, 20, 1011, None);
    Some(arn)
}

/// A TagResource body: the resource ARN and its tags (each key at most once: the last wins).
pub fn parse_tag_resource(body: &[u8]) -> Result<(String, Vec<(String, String)>), ApiError> {
    let obj = body_object(body)?;
    let mut v = Violations::default();
    let arn = resource_arn(&mut v, &obj);
    if obj.get("tags").is_none_or(Value::is_null) {
        v.required("tags");
    }
    tags(&mut v, &obj);
    v.into_result()?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for tag in obj
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(key), Some(value)) = (
            tag.get("key").and_then(Value::as_str),
            tag.get("value").and_then(Value::as_str),
        ) else {
            continue;
        };
        pairs.retain(|(k, _)| k != key);
        pairs.push((key.to_owned(), value.to_owned()));
    }
    Ok((arn.unwrap_or_default().to_owned(), pairs))
}

/// An UntagResource body: the resource ARN and the keys to remove.
pub fn parse_untag_resource(body: &[u8]) -> Result<(String, Vec<String>), ApiError> {
    let obj = body_object(body)?;
    let mut v = Violations::default();
    let arn = resource_arn(&mut v, &obj);
    let pattern = Some((TAG_PATTERN, is_tag_text as fn(&str) -> bool));
    string_list(
        &mut v,
        &obj,
        "",
        "tagKeys",
        (true, 0, 200),
        (1, 128, pattern),
    );
    v.into_result()?;
    let keys = obj
        .get("tagKeys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    Ok((arn.unwrap_or_default().to_owned(), keys))
}

/// A ListTagsForResource body: the resource ARN.
pub fn parse_list_tags(body: &[u8]) -> Result<String, ApiError> {
    let obj = body_object(body)?;
    let mut v = Violations::default();
    let arn = resource_arn(&mut v, &obj);
    v.into_result()?;
    Ok(arn.unwrap_or_default().to_owned())
}

/// Validates a CreateModelInvocationJob body and turns it into a [`CreateJobRequest`]
/// (`request_json` is the body as received). An empty body counts as `{}`.
pub fn parse_create(body: &[u8]) -> Result<JobRequest, ApiError> {
    let obj = body_object(body)?;
    // `body_object` checked it is UTF-8.
    let text = String::from_utf8_lossy(body).into_owned();
    let mut v = Violations::default();

    let job_name = string_member(&mut v, &obj, "", "jobName", true);
    if let Some(s) = job_name {
        v.check_str("jobName", s, 1, 63, Some((JOB_NAME_PATTERN, is_job_name)));
    }
    let role_arn = string_member(&mut v, &obj, "", "roleArn", true);
    if let Some(s) = role_arn {
        v.check_str("roleArn", s, 0, 2048, Some((ROLE_ARN_PATTERN, is_role_arn)));
    }
    let token = string_member(&mut v, &obj, "", "clientRequestToken", false);
    if let Some(s) = token {
        v.check_str(
            "clientRequestToken",
            s,
            1,
            256,
            Some((TOKEN_PATTERN, is_client_request_token)),
        );
    }
    // The model's modelId pattern lists Bedrock's catalogue id shapes; batchd's models are
    // whatever the config names them, so only the length is checked here and an unknown
    // model is the service's ResourceNotFoundException.
    let model_id = string_member(&mut v, &obj, "", "modelId", true);
    if let Some(s) = model_id {
        v.check_str("modelId", s, 1, 2048, None);
    }

    let input_uri = input_config(&mut v, &obj);
    let output_uri = output_config(&mut v, &obj);
    vpc_config(&mut v, &obj);
    tags(&mut v, &obj);

    let timeout_hours = match member(&obj, "timeoutDurationInHours") {
        None => None,
        Some(n) => match n.as_i64() {
            Some(h) if h < 24 => {
                v.add(
                    "timeoutDurationInHours",
                    Some(n),
                    "Member must have value greater than or equal to 24",
                );
                None
            }
            Some(h) if h > 168 => {
                v.add(
                    "timeoutDurationInHours",
                    Some(n),
                    "Member must have value less than or equal to 168",
                );
                None
            }
            Some(h) => u32::try_from(h).ok(),
            None => {
                v.add(
                    "timeoutDurationInHours",
                    Some(n),
                    "Member must be an integer",
                );
                None
            }
        },
    };

    let invocation_type = match string_member(&mut v, &obj, "", "modelInvocationType", false) {
        None => Some(InvocationType::InvokeModel),
        Some(s) => v
            .check_enum("modelInvocationType", s, &["InvokeModel", "Converse"])
            .then(|| {
                if s == "Converse" {
                    InvocationType::Converse
                } else {
                    InvocationType::InvokeModel
                }
            }),
    };

    v.into_result()?;
    // No violations means every required member was found.
    let (Some(job_name), Some(role_arn), Some(model_id), Some(input_uri), Some(output_uri)) =
        (job_name, role_arn, model_id, input_uri, output_uri)
    else {
        return Err(ApiError::validation(
            "1 validation error detected: a required member is missing",
        ));
    };
    Ok(JobRequest {
        name: job_name.to_owned(),
        // The caller's, set by the route from the authenticated caller.
        account_id: String::new(),
        model_id: model_id.to_owned(),
        origin: JobOrigin::Api,
        role_arn: Some(role_arn.to_owned()),
        client_request_token: token.map(str::to_owned),
        invocation_type: invocation_type.unwrap_or(InvocationType::InvokeModel),
        inputs: vec![input_uri.to_owned()],
        output: output_uri.to_owned(),
        timeout_hours,
        // Get echoes `inputDataConfig`, `outputDataConfig`, `vpcConfig` and `tags` from it.
        request_json: Some(text),
        dialect: Dialect::Bedrock,
    })
}

/// A member of an S3 data config besides s3Uri and s3BucketOwner: its key and its check.
type S3Extra = (&'static str, fn(&mut Violations, &str, &str));

/// `<config>.<s3_config>` (a union with one member today): its s3Uri (returned), the `extra`
/// member, then s3BucketOwner.
fn s3_data_config<'a>(
    v: &mut Violations,
    obj: &'a Map<String, Value>,
    (config, s3_config): (&str, &str),
    (extra_key, check_extra): S3Extra,
) -> Option<&'a str> {
    let config_map = object_member(v, obj, "", config, true)?;
    let parent = join(config, s3_config);
    let s3 = object_member(v, config_map, config, s3_config, true)?;
    let uri = string_member(v, s3, &parent, "s3Uri", true);
    if let Some(uri) = uri {
        check_s3_uri(v, &join(&parent, "s3Uri"), uri);
    }
    if let Some(extra) = string_member(v, s3, &parent, extra_key, false) {
        check_extra(v, &join(&parent, extra_key), extra);
    }
    check_bucket_owner(v, s3, &parent);
    uri
}

/// `inputDataConfig`; returns the s3Uri.
fn input_config<'a>(v: &mut Violations, obj: &'a Map<String, Value>) -> Option<&'a str> {
    let format: S3Extra = ("s3InputFormat", |v, path, s| {
        v.check_enum(path, s, &["JSONL"]);
    });
    s3_data_config(v, obj, ("inputDataConfig", "s3InputDataConfig"), format)
}

/// `outputDataConfig`; returns the s3Uri.
fn output_config<'a>(v: &mut Violations, obj: &'a Map<String, Value>) -> Option<&'a str> {
    let kms_key: S3Extra = ("s3EncryptionKeyId", |v, path, s| {
        v.check_str(path, s, 1, 2048, Some((KMS_KEY_ID_PATTERN, is_kms_key_id)));
    });
    s3_data_config(v, obj, ("outputDataConfig", "s3OutputDataConfig"), kms_key)
}

fn vpc_config(v: &mut Violations, obj: &Map<String, Value>) {
    let Some(vpc) = object_member(v, obj, "", "vpcConfig", false) else {
        return;
    };
    let id = (0, 32, Some((VPC_ID_PATTERN, is_vpc_id as fn(&str) -> bool)));
    string_list(v, vpc, "vpcConfig", "subnetIds", (true, 1, 16), id);
    string_list(v, vpc, "vpcConfig", "securityGroupIds", (true, 1, 5), id);
}

fn tags(v: &mut Violations, obj: &Map<String, Value>) {
    let Some(items) = list_member(v, obj, "", "tags", (false, 0, 200)) else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("tags.{}.member", i + 1);
        let Value::Object(tag) = item else {
            v.add(&path, Some(item), "Member must be a structure");
            continue;
        };
        let pattern = Some((TAG_PATTERN, is_tag_text as fn(&str) -> bool));
        if let Some(key) = string_member(v, tag, &path, "key", true) {
            v.check_str(&join(&path, "key"), key, 1, 128, pattern);
        }
        if let Some(value) = string_member(v, tag, &path, "value", true) {
            v.check_str(&join(&path, "value"), value, 0, 256, pattern);
        }
    }
}

/// The page size when `maxResults` is absent. Bedrock's default is UNCONFIRMED; 1000 (the
/// model's maximum) makes one call return everything a small server holds, and paginators
/// that send `maxResults` are unaffected.
pub const DEFAULT_MAX_RESULTS: u32 = 1000;

/// A validated ListModelInvocationJobs query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub submit_time_after_ms: Option<i64>,
    pub submit_time_before_ms: Option<i64>,
    pub status: Option<JobStatus>,
    pub name_contains: Option<String>,
    pub max_results: u32,
    /// `sortOrder=Ascending`; the default is Descending (newest first).
    pub ascending: bool,
    /// Where the previous page ended (from `nextToken`).
    pub after: Option<(i64, JobId)>,
}

const STATUS_NAMES: [&str; 10] = [
    "Submitted",
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
    "PartiallyCompleted",
    "Expired",
    "Validating",
    "Scheduled",
];

/// The value of query parameter `name`: the last one when it is repeated, as AWS reads it.
pub(crate) fn last_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Validates the query parameters (percent-decoded pairs; for a repeated name the last one
/// counts; unknown names are ignored).
pub fn parse_list_query(pairs: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let get = |name: &str| last_param(pairs, name);
    let mut v = Violations::default();

    let mut time = |name: &str, round_up: bool| {
        let s = get(name)?;
        match timestamp::parse_lenient(s) {
            Some(t) => Some(if round_up {
                timestamp::millis_ceil(t)
            } else {
                timestamp::millis_floor(t)
            }),
            None => {
                v.add_str(
                    name,
                    s,
                    "Member must be an ISO-8601 timestamp (e.g. 2025-01-15T10:00:00Z) or epoch seconds",
                );
                None
            }
        }
    };
    // "After" and "before" are both strict; rounding outwards keeps jobs inside the range
    // when the query has sub-millisecond precision.
    let submit_time_after_ms = time("submitTimeAfter", false);
    let submit_time_before_ms = time("submitTimeBefore", true);

    let status = get("statusEquals").and_then(|s| {
        v.check_enum("statusEquals", s, &STATUS_NAMES)
            .then(|| s.parse::<JobStatus>().ok())
            .flatten()
    });

    // A substring filter: only the model's length limits apply (its jobName pattern would
    // refuse harmless fragments such as "-v2").
    let name_contains = get("nameContains").map(|s| {
        v.check_str("nameContains", s, 1, 63, None);
        s.to_owned()
    });

    let max_results = match get("maxResults") {
        None => DEFAULT_MAX_RESULTS,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n < 1 => {
                v.add_str(
                    "maxResults",
                    s,
                    "Member must have value greater than or equal to 1",
                );
                DEFAULT_MAX_RESULTS
            }
            Ok(n) if n > 1000 => {
                v.add_str(
                    "maxResults",
                    s,
                    "Member must have value less than or equal to 1000",
                );
                DEFAULT_MAX_RESULTS
            }
            Ok(n) => u32::try_from(n).unwrap_or(DEFAULT_MAX_RESULTS),
            Err(_) => {
                v.add_str("maxResults", s, "Member must be an integer");
                DEFAULT_MAX_RESULTS
            }
        },
    };

    if let Some(s) = get("sortBy") {
        v.check_enum("sortBy", s, &["CreationTime"]);
    }
    let sort_order =
        get("sortOrder").filter(|s| v.check_enum("sortOrder", s, &["Ascending", "Descending"]));

    let token = match get("nextToken") {
        None => None,
        Some(s) => {
            v.check_str(
                "nextToken",
                s,
                1,
                2048,
                Some((PAGINATION_TOKEN_PATTERN, is_pagination_token)),
            );
            match PageToken::decode(s) {
                Some(t) => Some(t),
                None => {
                    v.add_str(
                        "nextToken",
                        s,
                        "Member must be a nextToken returned by ListModelInvocationJobs",
                    );
                    None
                }
            }
        }
    };

    // The token remembers the order it was made for; an explicit different order would
    // continue from a cursor that means something else.
    let ascending = match (sort_order, &token) {
        (Some(order), Some(t)) if (order == "Ascending") != t.ascending => {
            v.add_str(
                "nextToken",
                order,
                "Member must come from a request with the same sortOrder",
            );
            t.ascending
        }
        (Some(order), _) => order == "Ascending",
        (None, Some(t)) => t.ascending,
        (None, None) => false,
    };

    v.into_result()?;
    Ok(ListQuery {
        submit_time_after_ms,
        submit_time_before_ms,
        status,
        name_contains,
        max_results,
        ascending,
        after: token.map(|t| (t.submit_time_ms, t.job_id)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `is` accepts every `ok` string and rejects every `bad` one.
    fn accepts_only(is: fn(&str) -> bool, ok: &[&str], bad: &[&str]) {
        for s in ok {
            assert!(is(s), "should accept {s:?}");
        }
        for s in bad {
            assert!(!is(s), "should reject {s:?}");
        }
    }

    #[test]
    fn job_names() {
        accepts_only(
            is_job_name,
            &["a", "job-1", "A.b+c-d", "x--y", "a-", &"a".repeat(63)],
            &["", "-a", ".a", "bad name!", "a_b", "a/b", "é"],
        );
    }

    #[test]
    fn client_request_tokens() {
        accepts_only(
            is_client_request_token,
            &[
                "a",
                "abc-123",
                "0c9b3b57-8d2a-4a5e-9c7b-2f1d3e4a5b6c",
                "a--b",
            ],
            &["", "-a", "a-", "a_b", "a b", "a.b"],
        );
    }

    #[test]
    fn role_arns() {
        accepts_only(
            is_role_arn,
            &[
                "arn:aws:iam::123456789012:role/batchd",
                "arn:aws:iam:::role/x",
                "arn:aws-us-gov:iam::123456789012:role/path/name",
                "arn:aws-cn:iam::123456789012:role/a:b",
            ],
            &[
                "",
                "arn:aws:iam::123456789012:role/",
                "arn:aws:iam::12345:role/x",
                "arn:aws:iam::123456789012:user/x",
                "arn:aws-:iam::123456789012:role/x",
                "arn:aws:s3::123456789012:role/x",
                "arn:aws:iam:us-east-1:123456789012:role/x",
                "arn:aws:iam::123456789012:role/a\nb",
                "role/x",
            ],
        );
    }

    #[test]
    fn s3_uris() {
        accepts_only(
            is_s3_uri,
            &[
                "s3://bucket",
                "s3://bucket/",
                "s3://my.bucket-1/in/records.jsonl",
                "s3://abc/a/b/c/",
                "s3://abc/A!_*'().-z",
            ],
            &[
                "",
                "bucket/x",
                "s3://",
                "s3://ab",
                "s3://Bucket/x",
                "s3://-bucket/x",
                "s3://bucket-/x",
                "s3://bucket//x",
                "s3://bucket/a//b",
                "s3://bucket/a b",
                "s3://bucket/date=2024",
                "file:///tmp/x",
                &format!("s3://{}", "a".repeat(64)),
            ],
        );
    }

    #[test]
    fn kms_vpc_tag_and_account_patterns() {
        let uuid = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let key_arn = format!("arn:aws:kms:us-east-1:123456789012:key/{uuid}");
        accepts_only(
            is_kms_key_id,
            &[
                uuid,
                "alias/my_key/x",
                &key_arn,
                "arn:aws:kms:us-east-1:123456789012:alias/a",
            ],
            &[
                "",
                "alias/",
                "short",
                "arn:aws:kms:us-east-1:123:key/x",
                "arn:aws:kms:us-east-1:123456789012:key/short",
            ],
        );
        assert!(is_vpc_id("subnet-0abc") && !is_vpc_id("") && !is_vpc_id("sg_1"));
        assert!(is_tag_text("") && is_tag_text("a b._:/=+@-") && !is_tag_text("a*b"));
        assert!(is_account_id("123456789012") && !is_account_id("12345678901a"));
    }

    fn body(extra: &str) -> String {
        format!(
            r#"{{"jobName":"j1","roleArn":"arn:aws:iam::123456789012:role/r","modelId":"m",
            "inputDataConfig":{{"s3InputDataConfig":{{"s3Uri":"s3://bucket/in/"}}}},
            "outputDataConfig":{{"s3OutputDataConfig":{{"s3Uri":"s3://bucket/out/"}}}}{extra}}}"#
        )
    }

    #[test]
    fn a_minimal_create_body_parses_with_defaults() {
        let req = parse_create(body("").as_bytes()).unwrap();
        assert_eq!(req.name, "j1");
        assert_eq!(req.origin, JobOrigin::Api);
        assert_eq!(
            req.role_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/r")
        );
        assert_eq!(req.invocation_type, InvocationType::InvokeModel);
        assert_eq!(req.inputs, ["s3://bucket/in/"]);
        assert_eq!(req.output, "s3://bucket/out/");
        assert_eq!(req.timeout_hours, None);
        assert_eq!(req.client_request_token, None);
        assert_eq!(req.request_json, Some(body("")));
    }

    #[test]
    fn missing_required_members_are_each_named() {
        let err = parse_create(b"").unwrap_err();
        assert!(
            err.message.starts_with("5 validation errors detected: "),
            "{}",
            err.message
        );
        for name in [
            "jobName",
            "roleArn",
            "modelId",
            "inputDataConfig",
            "outputDataConfig",
        ] {
            assert!(
                err.message.contains(&format!(
                    "Value null at '{name}' failed to satisfy constraint: Member must not be null"
                )),
                "{name}: {}",
                err.message
            );
        }
        let err = parse_create(br#"{"inputDataConfig":{}}"#).unwrap_err();
        assert!(
            err.message.contains("'inputDataConfig.s3InputDataConfig'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_values_name_their_member_in_bedrock_phrasing() {
        let err = parse_create(body("").replace("\"j1\"", "\"bad name!\"").as_bytes()).unwrap_err();
        assert_eq!(
            err.message,
            format!(
                "1 validation error detected: Value 'bad name!' at 'jobName' failed to satisfy \
                 constraint: Member must satisfy regular expression pattern: {JOB_NAME_PATTERN}"
            )
        );
        let err = parse_create(body(r#","timeoutDurationInHours":23"#).as_bytes()).unwrap_err();
        assert!(err.message.contains("Value '23' at 'timeoutDurationInHours' failed to satisfy constraint: Member must have value greater than or equal to 24"), "{}", err.message);
        let err = parse_create(body(r#","tags":[{"key":"","value":"v"}]"#).as_bytes()).unwrap_err();
        assert!(
            err.message.contains("at 'tags.1.member.key'"),
            "{}",
            err.message
        );
        let err = parse_create(body(r#","jobName":7"#).as_bytes()).unwrap_err();
        assert!(
            err.message
                .contains("at 'jobName' failed to satisfy constraint: Member must be a string"),
            "{}",
            err.message
        );
    }

    /// Every member walk in one body, so the order, paths, values and constraints of the
    /// whole message are pinned.
    #[test]
    fn each_member_walk_reports_in_order() {
        let create = br#"{"jobName":"j1","roleArn":"arn:aws:iam::123456789012:role/r","modelId":"m",
            "inputDataConfig":{"s3InputDataConfig":{"s3Uri":"http://x","s3InputFormat":"CSV","s3BucketOwner":"12"}},
            "outputDataConfig":{"s3OutputDataConfig":{"s3Uri":7,"s3EncryptionKeyId":"","s3BucketOwner":["x"]}},
            "vpcConfig":{"subnetIds":[],"securityGroupIds":"sg-1"},
            "tags":{"key":"k"}}"#;
        let err = parse_create(create).unwrap_err();
        let items = [
            format!(
                "Value 'http://x' at 'inputDataConfig.s3InputDataConfig.s3Uri' failed to satisfy \
                 constraint: Member must satisfy regular expression pattern: {S3_URI_PATTERN}"
            ),
            "Value 'CSV' at 'inputDataConfig.s3InputDataConfig.s3InputFormat' failed to satisfy \
             constraint: Member must satisfy enum value set: [JSONL]"
                .to_owned(),
            format!(
                "Value '12' at 'inputDataConfig.s3InputDataConfig.s3BucketOwner' failed to satisfy \
                 constraint: Member must satisfy regular expression pattern: {ACCOUNT_ID_PATTERN}"
            ),
            "Value '7' at 'outputDataConfig.s3OutputDataConfig.s3Uri' failed to satisfy \
             constraint: Member must be a string"
                .to_owned(),
            "Value '' at 'outputDataConfig.s3OutputDataConfig.s3EncryptionKeyId' failed to \
             satisfy constraint: Member must have length greater than or equal to 1"
                .to_owned(),
            format!(
                "Value '' at 'outputDataConfig.s3OutputDataConfig.s3EncryptionKeyId' failed to \
                 satisfy constraint: Member must satisfy regular expression pattern: \
                 {KMS_KEY_ID_PATTERN}"
            ),
            "Value '[\"x\"]' at 'outputDataConfig.s3OutputDataConfig.s3BucketOwner' failed to \
             satisfy constraint: Member must be a string"
                .to_owned(),
            "Value '[]' at 'vpcConfig.subnetIds' failed to satisfy constraint: Member must have \
             length greater than or equal to 1"
                .to_owned(),
            "Value 'sg-1' at 'vpcConfig.securityGroupIds' failed to satisfy constraint: Member \
             must be a list"
                .to_owned(),
            "Value '{\"key\":\"k\"}' at 'tags' failed to satisfy constraint: Member must be a \
             list"
                .to_owned(),
        ];
        assert_eq!(
            err.message,
            format!(
                "{} validation errors detected: {}",
                items.len(),
                items.join("; ")
            )
        );
    }

    #[test]
    fn malformed_json_is_a_validation_error() {
        let err = parse_create(b"{\"jobName\": ").unwrap_err();
        assert_eq!(err.kind.as_str(), "ValidationException");
        assert!(err.message.contains("not valid JSON"));
        assert!(parse_create(b"[1]").is_err());
    }

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_list_query(&owned)
    }

    #[test]
    fn list_query_defaults_and_limits() {
        let d = q(&[]).unwrap();
        assert_eq!(d.max_results, DEFAULT_MAX_RESULTS);
        assert!(!d.ascending);
        assert_eq!(d.status, None);
        assert_eq!(q(&[("maxResults", "1000")]).unwrap().max_results, 1000);
        for bad in ["0", "1001", "x", "-1"] {
            let e = q(&[("maxResults", bad)]).unwrap_err();
            assert!(e.message.contains("at 'maxResults'"), "{}", e.message);
        }
        let e = q(&[("statusEquals", "inprogress")]).unwrap_err();
        assert!(e.message.contains("at 'statusEquals'"), "{}", e.message);
        assert_eq!(
            q(&[("statusEquals", "InProgress")]).unwrap().status,
            Some(JobStatus::InProgress)
        );
        assert!(
            q(&[("sortBy", "Name")])
                .unwrap_err()
                .message
                .contains("'sortBy'")
        );
        assert!(
            q(&[("sortOrder", "Up")])
                .unwrap_err()
                .message
                .contains("'sortOrder'")
        );
        assert!(q(&[("sortOrder", "Ascending")]).unwrap().ascending);
        let e = q(&[("submitTimeAfter", "yesterday")]).unwrap_err();
        assert!(e.message.contains("'submitTimeAfter'"), "{}", e.message);
        assert_eq!(
            q(&[("submitTimeAfter", "1970-01-01T00:00:01.5Z")])
                .unwrap()
                .submit_time_after_ms,
            Some(1500)
        );
        assert_eq!(
            q(&[("submitTimeBefore", "1.0000001")])
                .unwrap()
                .submit_time_before_ms,
            Some(1001)
        );
    }

    #[test]
    fn next_token_carries_the_order_and_rejects_garbage() {
        let t = PageToken {
            ascending: true,
            submit_time_ms: 42,
            job_id: JobId::parse("abcdefabcdef").unwrap(),
        }
        .encode();
        let parsed = q(&[("nextToken", &t)]).unwrap();
        assert!(parsed.ascending);
        assert_eq!(
            parsed.after,
            Some((42, JobId::parse("abcdefabcdef").unwrap()))
        );
        assert!(q(&[("nextToken", &t), ("sortOrder", "Descending")]).is_err());
        for bad in ["garbage", "", "a b", "djE"] {
            let e = q(&[("nextToken", bad)]).unwrap_err();
            assert!(e.message.contains("at 'nextToken'"), "{}", e.message);
        }
    }
}
