//! One record from input line to output line: parse, translate to the neutral request of
//! its format, call the backend with retries, render the answer.

use std::sync::Arc;
use std::time::Instant;

use batchd_backends::{BackendError, ErrorKind, ModelBackend};
use batchd_core::generated_record_id;
use batchd_formats::converse::{ConverseOptions, parse_converse, render_converse_response};
use batchd_formats::record::{parse_record_line, write_error_line, write_success_line};
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::retry::RetryPolicy;

/// What every record task shares.
pub(crate) struct RecordContext {
    pub backend: Arc<dyn ModelBackend>,
    pub retry: RetryPolicy,
    pub converse: ConverseOptions,
    pub job_id: String,
}

/// A finished record: its output line and what it adds to the counters.
pub(crate) struct Finished {
    pub seq: u64,
    pub file_index: usize,
    pub line: Vec<u8>,
    pub success: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

pub(crate) fn internal_error(seq: u64, file_index: usize, line: &[u8], message: &str) -> Finished {
    let text = String::from_utf8_lossy(line);
    let (record_id, input) = match parse_record_line(&text) {
        Ok(r) => (
            r.record_id.unwrap_or_default(),
            r.model_input.get().to_owned(),
        ),
        Err(_) => (String::new(), "null".to_owned()),
    };
    let input = RawValue::from_string(input).unwrap_or_else(|_| null_raw());
    let mut out = Vec::new();
    write_error_line(
        &mut out,
        &record_id,
        &input,
        500,
        &format!("internal error: {message}"),
    );
    Finished {
        seq,
        file_index,
        line: out,
        success: false,
        input_tokens: 0,
        output_tokens: 0,
    }
}

fn null_raw() -> Box<RawValue> {
    // "null" is valid JSON, so this cannot fail.
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!())
}

/// One record from line to output line: parse, translate, call the backend with retries.
pub(crate) async fn process_record(
    ctx: Arc<RecordContext>,
    file: Arc<str>,
    line_no: u64,
    line: Bytes,
) -> Finished {
    let mut out = Vec::with_capacity(line.len() + 512);
    let failed = |out: Vec<u8>| Finished {
        seq: 0,
        file_index: 0,
        line: out,
        success: false,
        input_tokens: 0,
        output_tokens: 0,
    };
    // Validation passed, so these only fail if the input changed since: still an error line.
    let record = match std::str::from_utf8(&line)
        .map_err(|_| "line: not valid UTF-8".to_owned())
        .and_then(|text| parse_record_line(text).map_err(|d| d.to_string()))
    {
        Ok(record) => record,
        Err(defect) => {
            let id = generated_record_id(&ctx.job_id, &file, line_no);
            let message =
                format!("{file}:{line_no}: {defect} (the input changed after validation)");
            write_error_line(&mut out, &id, &null_raw(), 400, &message);
            return failed(out);
        }
    };
    let record_id = match &record.record_id {
        Some(id) => std::borrow::Cow::Borrowed(id.as_str()),
        None => std::borrow::Cow::Owned(generated_record_id(&ctx.job_id, &file, line_no)),
    };
    let request = match parse_converse(record.model_input.get(), &ctx.converse) {
        Ok(request) => request,
        Err(defects) => {
            let message = defects
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            write_error_line(&mut out, &record_id, record.model_input, 400, &message);
            return failed(out);
        }
    };

    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        let result =
            tokio::time::timeout(ctx.retry.attempt_timeout, ctx.backend.chat(&request)).await;
        let error = match result {
            Ok(Ok(response)) => {
                let latency_ms = started.elapsed().as_millis() as u64;
                let body = render_converse_response(&response, latency_ms);
                write_success_line(&mut out, &record_id, record.model_input, &body);
                return Finished {
                    seq: 0,
                    file_index: 0,
                    line: out,
                    success: true,
                    input_tokens: response.usage.input_tokens,
                    output_tokens: response.usage.output_tokens,
                };
            }
            Ok(Err(error)) => error,
            Err(_) => BackendError::new(
                ErrorKind::Timeout,
                format!("no answer within {:?}", ctx.retry.attempt_timeout),
            ),
        };
        if !error.is_retryable() || attempt >= ctx.retry.max_attempts {
            let message = if attempt > 1 {
                format!("{} (gave up after {attempt} attempts)", error.message)
            } else {
                error.message.clone()
            };
            write_error_line(
                &mut out,
                &record_id,
                record.model_input,
                error.error_code(),
                &message,
            );
            return failed(out);
        }
        tokio::time::sleep(
            ctx.retry
                .backoff(attempt, error.retry_after, fastrand::f64()),
        )
        .await;
    }
}
