//! The batch-job API's job object: upper-case statuses, `processedItems` / `totalItems` /
//! `progress` always present, counts, live metrics and where the results, error log and
//! analysis are.

use batchd_core::{Job, JobStatus};
use serde_json::{Map, Value, json};

use crate::bedrock::timestamp::format_ms;

/// Every name [`status_name`] gives. A job ends in exactly one of the last three: the
/// seed's monitor loops until it sees one of them.
pub const ALL_STATUS_NAMES: [&str; 9] = [
    "CREATED",
    "SUBMITTED",
    "VALIDATING",
    "QUEUED",
    "IN_PROGRESS",
    "STOPPING",
    "COMPLETED",
    "FAILED",
    "STOPPED",
];

/// This API's name for a stored status. A timeout (`PartiallyCompleted`) and a job that
/// never started in time (`Expired`) are failures here, with the reason in `statusReason`.
pub fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Created => "CREATED",
        JobStatus::Submitted => "SUBMITTED",
        JobStatus::Validating => "VALIDATING",
        JobStatus::Scheduled => "QUEUED",
        JobStatus::InProgress => "IN_PROGRESS",
        JobStatus::Stopping => "STOPPING",
        JobStatus::Completed => "COMPLETED",
        JobStatus::Failed | JobStatus::PartiallyCompleted | JobStatus::Expired => "FAILED",
        JobStatus::Stopped => "STOPPED",
    }
}

/// The stored statuses a `statusEquals` name stands for.
pub fn statuses_named(name: &str) -> Option<Vec<JobStatus>> {
    let all = JobStatus::ALL.into_iter().chain([JobStatus::Created]);
    let found: Vec<JobStatus> = all.filter(|s| status_name(*s) == name).collect();
    (!found.is_empty()).then_some(found)
}

/// When the job was started: its timeout counts from then, so the expiration minus the
/// timeout is the start time.
fn started_ms(job: &Job) -> Option<i64> {
    let options = job.request.dialect.batch_job()?;
    let timeout_ms = i64::try_from(options.timeout_seconds.saturating_mul(1000)).ok()?;
    job.job_expiration_ms
        .map(|at| at.saturating_sub(timeout_ms))
}

fn join(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// GetBatchInferenceJob's answer (and each summary of ListBatchInferenceJobs). `timing` is
/// the processing-time statistics (mean, percentiles in seconds) when known: live while the
/// job runs, from its analysis once it has ended.
pub fn job_json(job: &Job, arn: &str, now_ms: i64, timing: Option<&Value>) -> Value {
    let r = &job.request;
    let c = &job.counters;
    let mut m = Map::new();
    m.insert("jobId".into(), job.id.as_str().into());
    m.insert("jobArn".into(), arn.into());
    m.insert("name".into(), r.name.clone().into());
    m.insert("modelId".into(), r.model_id.clone().into());
    m.insert("status".into(), status_name(job.status).into());
    if let Some(message) = &job.message {
        m.insert("statusReason".into(), message.clone().into());
    }
    m.insert("processedItems".into(), c.processed.into());
    m.insert("totalItems".into(), c.total.into());
    let progress = match (c.total, job.status) {
        (0, JobStatus::Completed) => 100.0,
        (0, _) => 0.0,
        (total, _) => (c.processed as f64 * 1000.0 / total as f64).round() / 10.0,
    };
    m.insert("progress".into(), progress.into());
    m.insert("successCount".into(), c.success.into());
    m.insert("errorCount".into(), c.error.into());
    if let Some(token) = &r.client_request_token {
        m.insert("clientRequestToken".into(), token.clone().into());
    }
    if let Some(options) = r.dialect.batch_job() {
        let mut input = json!({
            "inputLocation": r.inputs.first().cloned().unwrap_or_default(),
            "inputFormat": options.input_format.as_str(),
            "batchSize": options.batch_size,
        });
        if let Some(template) = &options.prompt_template {
            input["promptTemplate"] = template.clone().into();
        }
        m.insert("inputConfiguration".into(), input);
        m.insert(
            "outputConfiguration".into(),
            json!({"outputLocation": r.output, "outputFormat": options.output_format.as_str()}),
        );
        let mut config = json!({
            "maxConcurrentBatches": options.max_concurrent_batches,
            "timeoutInSeconds": options.timeout_seconds,
        });
        if let Some(retry) = &options.retry {
            config["retryPolicy"] = json!({
                "maxAttempts": retry.max_attempts,
                "initialBackoffMillis": retry.initial_backoff_ms,
                "maxBackoffMillis": retry.max_backoff_ms,
                "retryOn": retry.retry_on.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            });
        }
        m.insert("jobConfiguration".into(), config);
    }
    let id = job.id.as_str();
    m.insert(
        "outputPrefix".into(),
        join(&r.output, &format!("{id}/")).into(),
    );
    m.insert(
        "errorLogLocation".into(),
        join(&r.output, &format!("{id}.errors.jsonl")).into(),
    );
    m.insert(
        "analysisLocation".into(),
        join(&r.output, &format!("{id}.analysis.json")).into(),
    );
    let mut time = |key: &str, ms: Option<i64>| {
        if let Some(text) = ms.and_then(format_ms) {
            m.insert(key.into(), text.into());
        }
    };
    let started = started_ms(job);
    time("createdAt", Some(job.submit_time_ms));
    time("startedAt", started);
    time("endedAt", job.end_time_ms);
    time("lastModifiedAt", Some(job.last_modified_ms));
    m.insert("metrics".into(), metrics(job, started, now_ms, timing));
    Value::Object(m)
}

/// Throughput, tokens, elapsed time and ETA from the counters, and the processing times.
fn metrics(job: &Job, started: Option<i64>, now_ms: i64, timing: Option<&Value>) -> Value {
    let c = &job.counters;
    let mut m = Map::new();
    m.insert("inputTokens".into(), c.input_tokens.into());
    m.insert("outputTokens".into(), c.output_tokens.into());
    if let Some(started) = started {
        let until = job.end_time_ms.unwrap_or(now_ms);
        let elapsed = (until.saturating_sub(started)).max(0) as f64 / 1000.0;
        m.insert("elapsedSeconds".into(), round3(elapsed).into());
        if elapsed > 0.0 && c.processed > 0 {
            let rate = c.processed as f64 / elapsed;
            m.insert("recordsPerSecond".into(), round3(rate).into());
            if !job.status.is_terminal() {
                let eta = c.remaining() as f64 / rate;
                m.insert("etaSeconds".into(), round3(eta).into());
            }
        }
    }
    if let Some(time) = timing {
        m.insert("processingTime".into(), time.clone());
    }
    Value::Object(m)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_three_names_end_a_job() {
        let terminal: std::collections::BTreeSet<&str> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(status_name)
            .collect();
        assert_eq!(
            terminal.into_iter().collect::<Vec<_>>(),
            ["COMPLETED", "FAILED", "STOPPED"]
        );
        for status in JobStatus::ALL.into_iter().chain([JobStatus::Created]) {
            assert!(ALL_STATUS_NAMES.contains(&status_name(status)));
        }
        assert_eq!(
            statuses_named("FAILED").unwrap(),
            [
                JobStatus::PartiallyCompleted,
                JobStatus::Failed,
                JobStatus::Expired
            ]
        );
        assert_eq!(statuses_named("DONE"), None);
    }
}
