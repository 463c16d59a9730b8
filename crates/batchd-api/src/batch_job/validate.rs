//! The batch-job API's requests, checked member by member: every error names the member
//! (`inputConfiguration.batchSize: must be an integer from 1 to 10000, got 0`).

use batchd_core::{
    BatchJobOptions, Dialect, InvocationType, ItemFormat, JobOrigin, JobRequest, JobRetry,
    JobStatus, RetryClass,
};
use batchd_formats::batch_job::check_template;
use serde_json::{Map, Value};

use crate::bedrock::ApiError;

/// Limits of the create request's numbers.
pub const MAX_BATCH_SIZE: u64 = 10_000;
pub const MAX_CONCURRENT_BATCHES: u64 = 1_000;
/// One week.
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;
pub const MAX_ATTEMPTS: u64 = 20;

/// Collects every problem of one request, so the caller sees them all at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, member: &str, reason: impl std::fmt::Display) {
        self.0.push(format!("{member}: {reason}"));
    }

    fn into_result(self) -> Result<(), ApiError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(ApiError::validation(self.0.concat())),
            n => Err(ApiError::validation(format!(
                "{n} validation errors: {}",
                self.0.join("; ")
            ))),
        }
    }
}

/// A member read by `read` (`None`: of the wrong type, a problem saying it `must be
/// {expected}`); `None` too when absent or null, a problem only when `required`.
fn member<'a, T>(
    p: &mut Problems,
    parent: &'a Map<String, Value>,
    (key, path): (&str, &str),
    required: bool,
    expected: &str,
    read: impl FnOnce(&'a Value) -> Option<T>,
) -> Option<T> {
    match parent.get(key) {
        None | Some(Value::Null) => {
            if required {
                p.add(path, "is required");
            }
            None
        }
        Some(value) => {
            let found = read(value);
            if found.is_none() {
                p.add(path, format!("must be {expected}"));
            }
            found
        }
    }
}

/// An object member: `Some(map)`, `None` when absent (a wrong type is a problem).
fn object<'a>(
    p: &mut Problems,
    parent: &'a Map<String, Value>,
    key: &str,
    path: &str,
    required: bool,
) -> Option<&'a Map<String, Value>> {
    member(
        p,
        parent,
        (key, path),
        required,
        "an object",
        Value::as_object,
    )
}

fn string<'a>(
    p: &mut Problems,
    parent: &'a Map<String, Value>,
    key: &str,
    path: &str,
    required: bool,
) -> Option<&'a str> {
    let s = member(p, parent, (key, path), required, "a string", Value::as_str)?;
    if s.trim().is_empty() {
        p.add(path, "must not be empty");
        return None;
    }
    Some(s)
}

fn integer(
    p: &mut Problems,
    parent: &Map<String, Value>,
    key: &str,
    path: &str,
    (min, max): (u64, u64),
) -> Option<u64> {
    let value = parent.get(key)?;
    match value.as_u64() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        _ if value.is_null() => None,
        _ => {
            p.add(
                path,
                format!("must be an integer from {min} to {max}, got {value}"),
            );
            None
        }
    }
}

fn format(
    p: &mut Problems,
    parent: &Map<String, Value>,
    key: &str,
    path: &str,
    required: bool,
) -> Option<ItemFormat> {
    let s = string(p, parent, key, path, required)?;
    let found = ItemFormat::parse(&s.to_ascii_uppercase());
    if found.is_none() {
        p.add(path, format!("must be JSON or JSONL, got {s:?}"));
    }
    found
}

/// Members a part of the request may have; any other is a problem (a typo must not pass).
fn only(p: &mut Problems, m: &Map<String, Value>, path: &str, allowed: &[&str]) {
    for key in m.keys().filter(|k| !allowed.contains(&k.as_str())) {
        let at = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        p.add(
            &at,
            format!("unknown member (expected one of {})", allowed.join(", ")),
        );
    }
}

/// CreateBatchInferenceJob's body → the job request.
pub fn parse_create(body: &[u8]) -> Result<JobRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::validation(format!("The request body is not valid JSON: {e}")))?;
    let Value::Object(root) = &value else {
        return Err(ApiError::validation(
            "The request body must be a JSON object",
        ));
    };
    let mut p = Problems::default();
    only(
        &mut p,
        root,
        "",
        &[
            "name",
            "modelId",
            "inputConfiguration",
            "outputConfiguration",
            "jobConfiguration",
            "clientRequestToken",
        ],
    );
    let name = string(&mut p, root, "name", "name", true);
    if let Some(name) = name
        && name.chars().count() > 128
    {
        p.add("name", "must have at most 128 characters");
    }
    let model_id = string(&mut p, root, "modelId", "modelId", true);
    let token = string(
        &mut p,
        root,
        "clientRequestToken",
        "clientRequestToken",
        false,
    );
    if let Some(token) = token
        && token.chars().count() > 256
    {
        p.add("clientRequestToken", "must have at most 256 characters");
    }

    let input = object(
        &mut p,
        root,
        "inputConfiguration",
        "inputConfiguration",
        true,
    );
    let empty = Map::new();
    let input = input.unwrap_or(&empty);
    only(
        &mut p,
        input,
        "inputConfiguration",
        &[
            "inputLocation",
            "inputFormat",
            "batchSize",
            "promptTemplate",
        ],
    );
    let input_location = string(
        &mut p,
        input,
        "inputLocation",
        "inputConfiguration.inputLocation",
        !input.is_empty() || root.contains_key("inputConfiguration"),
    );
    let input_format = format(
        &mut p,
        input,
        "inputFormat",
        "inputConfiguration.inputFormat",
        false,
    );
    let batch_size = integer(
        &mut p,
        input,
        "batchSize",
        "inputConfiguration.batchSize",
        (1, MAX_BATCH_SIZE),
    );
    let template = string(
        &mut p,
        input,
        "promptTemplate",
        "inputConfiguration.promptTemplate",
        false,
    );
    if let Some(t) = template
        && let Err(e) = check_template(t)
    {
        p.add("inputConfiguration.promptTemplate", e);
    }

    let output = object(
        &mut p,
        root,
        "outputConfiguration",
        "outputConfiguration",
        true,
    );
    let output = output.unwrap_or(&empty);
    only(
        &mut p,
        output,
        "outputConfiguration",
        &["outputLocation", "outputFormat"],
    );
    let output_location = string(
        &mut p,
        output,
        "outputLocation",
        "outputConfiguration.outputLocation",
        root.contains_key("outputConfiguration"),
    );
    let output_format = format(
        &mut p,
        output,
        "outputFormat",
        "outputConfiguration.outputFormat",
        false,
    );

    let job = object(&mut p, root, "jobConfiguration", "jobConfiguration", false);
    let job = job.unwrap_or(&empty);
    only(
        &mut p,
        job,
        "jobConfiguration",
        &["maxConcurrentBatches", "timeoutInSeconds", "retryPolicy"],
    );
    let batches = integer(
        &mut p,
        job,
        "maxConcurrentBatches",
        "jobConfiguration.maxConcurrentBatches",
        (1, MAX_CONCURRENT_BATCHES),
    );
    let timeout = integer(
        &mut p,
        job,
        "timeoutInSeconds",
        "jobConfiguration.timeoutInSeconds",
        (1, MAX_TIMEOUT_SECONDS),
    );
    let retry = object(
        &mut p,
        job,
        "retryPolicy",
        "jobConfiguration.retryPolicy",
        false,
    )
    .map(|r| parse_retry(&mut p, r));
    p.into_result()?;

    let (Some(name), Some(model_id), Some(input_location), Some(output_location)) =
        (name, model_id, input_location, output_location)
    else {
        return Err(ApiError::validation("a required member is missing"));
    };
    let options = BatchJobOptions {
        batch_size: batch_size.map_or(BatchJobOptions::DEFAULT_BATCH_SIZE, |n| n as u32),
        max_concurrent_batches: batches
            .map_or(BatchJobOptions::DEFAULT_MAX_CONCURRENT_BATCHES, |n| {
                n as u32
            }),
        timeout_seconds: timeout.unwrap_or(BatchJobOptions::DEFAULT_TIMEOUT_SECONDS),
        input_format: input_format.unwrap_or(ItemFormat::Json),
        output_format: output_format.unwrap_or(ItemFormat::Json),
        prompt_template: template.map(str::to_owned),
        retry: retry.flatten(),
    };
    Ok(JobRequest {
        name: name.to_owned(),
        // The caller's, set by the route from the authenticated caller.
        account_id: String::new(),
        model_id: model_id.to_owned(),
        origin: JobOrigin::Api,
        role_arn: None,
        client_request_token: token.map(str::to_owned),
        invocation_type: InvocationType::Converse,
        inputs: vec![input_location.to_owned()],
        output: output_location.to_owned(),
        timeout_hours: None,
        request_json: None,
        dialect: Dialect::BatchJob(Box::new(options)),
    })
}

/// Defaults of a retry policy's members the request leaves out.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 500;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;

fn parse_retry(p: &mut Problems, r: &Map<String, Value>) -> Option<JobRetry> {
    const PATH: &str = "jobConfiguration.retryPolicy";
    only(
        p,
        r,
        PATH,
        &[
            "maxAttempts",
            "initialBackoffMillis",
            "maxBackoffMillis",
            "retryOn",
        ],
    );
    let attempts = integer(
        p,
        r,
        "maxAttempts",
        &format!("{PATH}.maxAttempts"),
        (1, MAX_ATTEMPTS),
    );
    let initial = integer(
        p,
        r,
        "initialBackoffMillis",
        &format!("{PATH}.initialBackoffMillis"),
        (0, 600_000),
    );
    let max = integer(
        p,
        r,
        "maxBackoffMillis",
        &format!("{PATH}.maxBackoffMillis"),
        (0, 3_600_000),
    );
    let retry_on = match r.get("retryOn") {
        None | Some(Value::Null) => RetryClass::ALL.to_vec(),
        Some(Value::Array(items)) => {
            let mut classes = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().and_then(RetryClass::parse) {
                    Some(class) => classes.push(class),
                    None => p.add(
                        &format!("{PATH}.retryOn[{i}]"),
                        format!(
                            "must be one of {}, got {item}",
                            RetryClass::ALL.map(RetryClass::as_str).join(", ")
                        ),
                    ),
                }
            }
            classes
        }
        Some(_) => {
            p.add(&format!("{PATH}.retryOn"), "must be a list");
            Vec::new()
        }
    };
    Some(JobRetry {
        max_attempts: attempts.map_or(DEFAULT_MAX_ATTEMPTS, |n| n as u32),
        initial_backoff_ms: initial.unwrap_or(DEFAULT_INITIAL_BACKOFF_MS),
        max_backoff_ms: max.unwrap_or(DEFAULT_MAX_BACKOFF_MS),
        retry_on,
    })
}

/// ListBatchInferenceJobs' query.
pub struct ListQuery {
    pub max_results: u32,
    pub status: Option<Vec<JobStatus>>,
    pub next_token: Option<String>,
}

pub const DEFAULT_MAX_RESULTS: u32 = 100;

pub fn parse_list_query(pairs: &[(String, String)]) -> Result<ListQuery, ApiError> {
    let mut p = Problems::default();
    let mut q = ListQuery {
        max_results: DEFAULT_MAX_RESULTS,
        status: None,
        next_token: None,
    };
    for (key, value) in pairs {
        match key.as_str() {
            "maxResults" => match value.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => q.max_results = n,
                _ => p.add(
                    "maxResults",
                    format!("must be an integer from 1 to 1000, got {value:?}"),
                ),
            },
            "statusEquals" => match super::model::statuses_named(value) {
                Some(statuses) => q.status = Some(statuses),
                None => p.add(
                    "statusEquals",
                    format!(
                        "must be one of {}, got {value:?}",
                        super::model::ALL_STATUS_NAMES.join(", ")
                    ),
                ),
            },
            "nextToken" => q.next_token = Some(value.clone()),
            other => p.add(other, "unknown query parameter"),
        }
    }
    p.into_result()?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn create(body: Value) -> Result<JobRequest, String> {
        parse_create(body.to_string().as_bytes()).map_err(|e| e.message)
    }

    fn seed_body() -> Value {
        json!({
            "name": "document-analysis-batch",
            "modelId": "anthropic.claude-v2",
            "inputConfiguration": {"inputLocation": "s3://in/batch-input/", "inputFormat": "JSON", "batchSize": 50},
            "outputConfiguration": {"outputLocation": "s3://out/batch-output/", "outputFormat": "JSON"},
            "jobConfiguration": {"maxConcurrentBatches": 5, "timeoutInSeconds": 1800}
        })
    }

    #[test]
    fn the_seeds_request_is_accepted_as_written() {
        let request = create(seed_body()).unwrap();
        assert_eq!(request.name, "document-analysis-batch");
        assert_eq!(request.inputs, ["s3://in/batch-input/"]);
        let options = request.dialect.batch_job().unwrap();
        assert_eq!(
            (
                options.batch_size,
                options.max_concurrent_batches,
                options.timeout_seconds
            ),
            (50, 5, 1800)
        );
        assert_eq!(options.input_format, ItemFormat::Json);
        assert_eq!(options.retry, None);
    }

    #[test]
    fn retry_policy_and_template_are_read() {
        let mut body = seed_body();
        body["jobConfiguration"]["retryPolicy"] =
            json!({"maxAttempts": 2, "retryOn": ["THROTTLING"]});
        body["inputConfiguration"]["promptTemplate"] = json!("Summarise: {content}");
        let request = create(body).unwrap();
        let options = request.dialect.batch_job().unwrap();
        let retry = options.retry.as_ref().unwrap();
        assert_eq!(retry.max_attempts, 2);
        assert_eq!(retry.retry_on, [RetryClass::Throttling]);
        assert_eq!(retry.initial_backoff_ms, DEFAULT_INITIAL_BACKOFF_MS);
        assert_eq!(
            options.prompt_template.as_deref(),
            Some("Summarise: {content}")
        );
    }

    #[test]
    fn every_bad_member_is_named() {
        let cases = [
            (
                json!({"inputConfiguration": {"batchSize": 0}}),
                "inputConfiguration.batchSize: must be an integer from 1 to 10000, got 0",
            ),
            (
                json!({"inputConfiguration": {"inputFormat": "CSV"}}),
                "inputConfiguration.inputFormat: must be JSON or JSONL, got \"CSV\"",
            ),
            (
                json!({"jobConfiguration": {"timeoutInSeconds": -1}}),
                "jobConfiguration.timeoutInSeconds: must be an integer",
            ),
            (
                json!({"jobConfiguration": {"maxConcurrentBatch": 3}}),
                "jobConfiguration.maxConcurrentBatch: unknown member",
            ),
            (
                json!({"jobConfiguration": {"retryPolicy": {"retryOn": ["SOMETIMES"]}}}),
                "jobConfiguration.retryPolicy.retryOn[0]: must be one of THROTTLING",
            ),
            (
                json!({"inputConfiguration": {"promptTemplate": "{content"}}),
                "inputConfiguration.promptTemplate: '{' at character 0 is never closed",
            ),
            (json!({"modelId": 3}), "modelId: must be a string"),
        ];
        for (patch, expected) in cases {
            let mut body = seed_body();
            for (section, members) in patch.as_object().unwrap() {
                match members {
                    Value::Object(m) => {
                        let target = body[section].as_object_mut().unwrap();
                        for (k, v) in m {
                            target.insert(k.clone(), v.clone());
                        }
                    }
                    other => body[section] = other.clone(),
                }
            }
            let message = create(body).unwrap_err();
            assert!(message.starts_with(expected), "{message}");
        }
        let mut missing = seed_body();
        missing.as_object_mut().unwrap().remove("name");
        missing["outputConfiguration"]
            .as_object_mut()
            .unwrap()
            .remove("outputLocation");
        assert_eq!(
            create(missing).unwrap_err(),
            "2 validation errors: name: is required; outputConfiguration.outputLocation: is required"
        );
    }
}
