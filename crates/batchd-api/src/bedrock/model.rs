//! The job object of GetModelInvocationJob and of ListModelInvocationJobs' summaries, built
//! from a stored [`Job`]. Absent optional members are omitted, never `null`.

use batchd_core::{Job, JobArn};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::ApiConfig;
use super::timestamp::format_ms;

/// The model's limit on `message`, in characters.
pub const MESSAGE_MAX_CHARS: usize = 2048;

/// The job as Bedrock's `GetModelInvocationJobResponse` / `ModelInvocationJobSummary` (the
/// two share their members; `jobName` is always present here). Written straight to the
/// answer, with no `Value` in between (a List writes many); the members are in the order a
/// JSON map sorts them, as they were when this was a `Value`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_request_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<String>,
    error_record_count: u64,
    input_data_config: InputDataConfig,
    job_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_expiration_time: Option<String>,
    job_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_modified_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    model_id: &'a str,
    model_invocation_type: &'static str,
    output_data_config: OutputDataConfig,
    processed_record_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_arn: Option<&'a str>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    submit_time: Option<String>,
    success_record_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_duration_in_hours: Option<u32>,
    total_record_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    vpc_config: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InputDataConfig {
    s3_input_data_config: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputDataConfig {
    s3_output_data_config: Value,
}

/// ListModelInvocationJobs' answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobList<'a> {
    pub invocation_job_summaries: Vec<JobView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// The job as Get and List show it (see [`JobView`]).
pub fn job_json<'a>(job: &'a Job, config: &ApiConfig) -> JobView<'a> {
    let r = &job.request;
    let echoed = Echoed::from_request(r.request_json.as_deref());
    // A job of this API has exactly one input (its create request's s3Uri).
    let input = r.inputs.first().map_or("", String::as_str);
    let c = &job.counters;
    JobView {
        client_request_token: r.client_request_token.as_deref(),
        end_time: job.end_time_ms.and_then(format_ms),
        error_record_count: c.error,
        input_data_config: InputDataConfig {
            s3_input_data_config: echoed.input.unwrap_or_else(|| json!({ "s3Uri": input })),
        },
        job_arn: job_arn(job, config),
        job_expiration_time: job.job_expiration_ms.and_then(format_ms),
        job_name: &r.name,
        last_modified_time: format_ms(job.last_modified_ms),
        message: job
            .message
            .as_deref()
            .map(|m| truncate_chars(m, MESSAGE_MAX_CHARS)),
        model_id: &r.model_id,
        model_invocation_type: r.invocation_type.as_str(),
        output_data_config: OutputDataConfig {
            s3_output_data_config: echoed
                .output
                .unwrap_or_else(|| json!({ "s3Uri": r.output })),
        },
        processed_record_count: c.processed,
        role_arn: r.role_arn.as_deref(),
        status: job.status.as_str(),
        submit_time: format_ms(job.submit_time_ms),
        success_record_count: c.success,
        timeout_duration_in_hours: r.timeout_hours,
        total_record_count: c.total,
        vpc_config: echoed.vpc,
    }
}

/// The stored ARN; one made from the config for a job stored without one.
pub fn job_arn(job: &Job, config: &ApiConfig) -> String {
    if job.arn.is_empty() {
        JobArn::new(&config.region, &config.account_id, job.id.clone()).to_string()
    } else {
        job.arn.clone()
    }
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// The members Get echoes from the create request, rebuilt from known keys only (so
/// whatever else the client sent is not reflected back).
#[derive(Debug, Default)]
struct Echoed {
    input: Option<Value>,
    output: Option<Value>,
    vpc: Option<Value>,
}

impl Echoed {
    fn from_request(request_json: Option<&str>) -> Self {
        let Some(Value::Object(req)) = request_json.and_then(|s| serde_json::from_str(s).ok())
        else {
            return Self::default();
        };
        let s3 = |config: &str, member: &str, keys: &[&str]| {
            let src = req.get(config)?.get(member)?.as_object()?;
            src.get("s3Uri")?.as_str()?;
            let picked: Map<String, Value> = keys
                .iter()
                .filter_map(|&k| {
                    let v = src.get(k).filter(|v| v.is_string())?;
                    Some((k.to_owned(), v.clone()))
                })
                .collect();
            Some(Value::Object(picked))
        };
        let string_list = |v: Option<&Value>| -> Option<Value> {
            let items = v?.as_array()?;
            items
                .iter()
                .all(Value::is_string)
                .then(|| Value::Array(items.clone()))
        };
        let vpc = req.get("vpcConfig").and_then(|vpc| {
            Some(json!({
                "subnetIds": string_list(vpc.get("subnetIds"))?,
                "securityGroupIds": string_list(vpc.get("securityGroupIds"))?,
            }))
        });
        Self {
            input: s3(
                "inputDataConfig",
                "s3InputDataConfig",
                &["s3Uri", "s3InputFormat", "s3BucketOwner"],
            ),
            output: s3(
                "outputDataConfig",
                "s3OutputDataConfig",
                &["s3Uri", "s3EncryptionKeyId", "s3BucketOwner"],
            ),
            vpc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchd_core::{Counters, InvocationType, JobId, JobOrigin, JobRequest, JobStatus};

    fn record() -> Job {
        Job {
            id: JobId::parse("abc123def456").unwrap(),
            arn: "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456".into(),
            request: JobRequest {
                name: "j".into(),
                account_id: "000000000000".into(),
                model_id: "m".into(),
                origin: JobOrigin::Api,
                role_arn: None,
                client_request_token: None,
                invocation_type: InvocationType::Converse,
                inputs: vec!["s3://b/in/".into()],
                output: "s3://b/out/".into(),
                timeout_hours: None,
                request_json: None,
                dialect: batchd_core::Dialect::Bedrock,
            },
            status: JobStatus::Submitted,
            message: None,
            submit_time_ms: 1_736_935_200_123,
            last_modified_ms: 1_736_935_200_124,
            end_time_ms: None,
            job_expiration_ms: None,
            phases: Default::default(),
            counters: Counters::default(),
            checkpoint: Default::default(),
        }
    }

    fn config() -> ApiConfig {
        ApiConfig {
            region: "eu-west-1".into(),
            account_id: "000000000000".into(),
            models: Vec::new(),
        }
    }

    #[test]
    fn absent_members_are_omitted_and_configs_fall_back_to_the_uris() {
        let v = serde_json::to_value(job_json(&record(), &config())).unwrap();
        let o = v.as_object().unwrap();
        for absent in [
            "roleArn",
            "clientRequestToken",
            "message",
            "endTime",
            "jobExpirationTime",
            "vpcConfig",
            "timeoutDurationInHours",
        ] {
            assert!(!o.contains_key(absent), "{absent}");
        }
        assert!(o.values().all(|v| !v.is_null()));
        assert_eq!(v["submitTime"], "2025-01-15T10:00:00.123Z");
        assert_eq!(
            v["inputDataConfig"]["s3InputDataConfig"]["s3Uri"],
            "s3://b/in/"
        );
        assert_eq!(
            v["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
            "s3://b/out/"
        );
        assert_eq!(v["modelInvocationType"], "Converse");
        assert_eq!(v["totalRecordCount"], 0);
    }

    #[test]
    fn request_members_are_echoed_and_messages_cut() {
        let mut job = record();
        job.arn = String::new();
        job.message = Some("é".repeat(3000));
        job.request.request_json = Some(
            r#"{"inputDataConfig":{"s3InputDataConfig":{"s3Uri":"s3://b/in/","s3InputFormat":"JSONL","junk":1}},
                "outputDataConfig":{"s3OutputDataConfig":{"s3Uri":"s3://b/out/","s3BucketOwner":"123456789012"}},
                "vpcConfig":{"subnetIds":["s-1"],"securityGroupIds":["sg-1"]}}"#
                .into(),
        );
        let v = serde_json::to_value(job_json(&job, &config())).unwrap();
        assert_eq!(
            v["jobArn"],
            "arn:aws:bedrock:eu-west-1:000000000000:model-invocation-job/abc123def456"
        );
        assert_eq!(
            v["message"].as_str().unwrap().chars().count(),
            MESSAGE_MAX_CHARS
        );
        assert_eq!(
            v["inputDataConfig"],
            json!({"s3InputDataConfig": {"s3Uri": "s3://b/in/", "s3InputFormat": "JSONL"}})
        );
        assert_eq!(
            v["outputDataConfig"]["s3OutputDataConfig"]["s3BucketOwner"],
            "123456789012"
        );
        assert_eq!(
            v["vpcConfig"],
            json!({"subnetIds": ["s-1"], "securityGroupIds": ["sg-1"]})
        );
    }

    /// The bytes on the wire: every member, sorted as a JSON map sorts them (the order they
    /// had when the view was built as a `Value`), absent ones left out.
    #[test]
    fn a_full_job_is_written_with_its_members_sorted() {
        let mut job = record();
        job.request.client_request_token = Some("tok".into());
        job.request.role_arn = Some("arn:aws:iam::123456789012:role/r".into());
        job.request.timeout_hours = Some(24);
        job.request.request_json =
            Some(r#"{"vpcConfig":{"securityGroupIds":["sg-1"],"subnetIds":["s-1"]}}"#.into());
        job.message = Some("m".into());
        job.end_time_ms = Some(1_736_935_200_125);
        job.job_expiration_ms = Some(1_736_935_200_126);
        job.counters.total = 4;
        job.counters.processed = 3;
        job.counters.success = 2;
        job.counters.error = 1;
        let bytes = serde_json::to_string(&job_json(&job, &config())).unwrap();
        assert_eq!(
            bytes,
            concat!(
                r#"{"clientRequestToken":"tok","endTime":"2025-01-15T10:00:00.125Z","#,
                r#""errorRecordCount":1,"inputDataConfig":{"s3InputDataConfig":{"s3Uri":"s3://b/in/"}},"#,
                r#""jobArn":"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456","#,
                r#""jobExpirationTime":"2025-01-15T10:00:00.126Z","jobName":"j","#,
                r#""lastModifiedTime":"2025-01-15T10:00:00.124Z","message":"m","modelId":"m","#,
                r#""modelInvocationType":"Converse","#,
                r#""outputDataConfig":{"s3OutputDataConfig":{"s3Uri":"s3://b/out/"}},"#,
                r#""processedRecordCount":3,"roleArn":"arn:aws:iam::123456789012:role/r","#,
                r#""status":"Submitted","submitTime":"2025-01-15T10:00:00.123Z","#,
                r#""successRecordCount":2,"timeoutDurationInHours":24,"totalRecordCount":4,"#,
                r#""vpcConfig":{"securityGroupIds":["sg-1"],"subnetIds":["s-1"]}}"#,
            )
        );
        let value: Value = serde_json::from_str(&bytes).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), bytes);
    }
}
