//! The job object of GetModelInvocationJob and of ListModelInvocationJobs' summaries, built
//! from a stored [`Job`]. Absent optional members are omitted, never `null`.

use batchd_core::{Job, JobArn};
use serde_json::{Map, Value, json};

use super::ApiConfig;
use super::timestamp::format_ms;

/// The model's limit on `message`, in characters.
pub const MESSAGE_MAX_CHARS: usize = 2048;

/// The job as Bedrock's `GetModelInvocationJobResponse` / `ModelInvocationJobSummary` (the
/// two share their members; `jobName` is always present here).
pub fn job_json(job: &Job, config: &ApiConfig) -> Value {
    let r = &job.request;
    let mut m = Map::new();
    m.insert("jobArn".into(), job_arn(job, config).into());
    m.insert("jobName".into(), r.name.clone().into());
    m.insert("modelId".into(), r.model_id.clone().into());
    if let Some(token) = &r.client_request_token {
        m.insert("clientRequestToken".into(), token.clone().into());
    }
    if let Some(role) = &r.role_arn {
        m.insert("roleArn".into(), role.clone().into());
    }
    m.insert("status".into(), job.status.as_str().into());
    if let Some(message) = &job.message {
        m.insert(
            "message".into(),
            truncate_chars(message, MESSAGE_MAX_CHARS).into(),
        );
    }
    let mut time = |key: &str, ms: Option<i64>| {
        if let Some(text) = ms.and_then(format_ms) {
            m.insert(key.into(), text.into());
        }
    };
    time("submitTime", Some(job.submit_time_ms));
    time("lastModifiedTime", Some(job.last_modified_ms));
    time("endTime", job.end_time_ms);
    time("jobExpirationTime", job.job_expiration_ms);

    let echoed = Echoed::from_request(r.request_json.as_deref());
    // A job of this API has exactly one input (its create request's s3Uri).
    let input = r.inputs.first().map_or("", String::as_str);
    m.insert(
        "inputDataConfig".into(),
        json!({ "s3InputDataConfig": echoed.input.unwrap_or_else(|| json!({ "s3Uri": input })) }),
    );
    m.insert(
        "outputDataConfig".into(),
        json!({ "s3OutputDataConfig": echoed.output.unwrap_or_else(|| json!({ "s3Uri": r.output })) }),
    );
    if let Some(vpc) = echoed.vpc {
        m.insert("vpcConfig".into(), vpc);
    }
    if let Some(hours) = r.timeout_hours {
        m.insert("timeoutDurationInHours".into(), hours.into());
    }
    m.insert(
        "modelInvocationType".into(),
        r.invocation_type.as_str().into(),
    );
    let c = &job.counters;
    m.insert("totalRecordCount".into(), c.total.into());
    m.insert("processedRecordCount".into(), c.processed.into());
    m.insert("successRecordCount".into(), c.success.into());
    m.insert("errorRecordCount".into(), c.error.into());
    Value::Object(m)
}

/// The stored ARN; one made from the config for a job stored without one.
pub fn job_arn(job: &Job, config: &ApiConfig) -> String {
    if job.arn.is_empty() {
        JobArn::new(&config.region, &config.account_id, job.id.clone()).to_string()
    } else {
        job.arn.clone()
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_owned(),
        None => s.to_owned(),
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
        let v = job_json(&record(), &config());
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
        let v = job_json(&job, &config());
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
}
