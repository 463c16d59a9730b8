//! One record from input line to output line: parse, translate to the neutral request of
//! its format (Converse or a model family's InvokeModel body), call the backend with
//! retries, and render the answer in the shape the record's format expects.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use batchd_backends::{BackendError, ErrorKind, ModelBackend, NativeCall};
use batchd_core::{InvocationType, generated_record_id};
use batchd_formats::converse::{parse_converse, render_converse_response};
use batchd_formats::native::{
    EmbedItem, ModelFamily, NativeRequest, parse_native, render_chat, render_embed,
};
use batchd_formats::neutral::ChatRequest;
use batchd_formats::record::{parse_record_line, write_error_line, write_success_line};
use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::embed_batch::EmbedBatcher;
use crate::retry::RetryPolicy;
use crate::{JobSpec, RecordOptions};

/// What every record task of a job shares.
pub(crate) struct RecordContext {
    backend: Arc<dyn ModelBackend>,
    /// The backend's `info().runs_native`, asked once per job.
    runs_native: bool,
    retry: RetryPolicy,
    invocation_type: InvocationType,
    records: RecordOptions,
    job_id: String,
    /// Groups embedding records into backend calls (embedding families only).
    embedder: Option<EmbedBatcher>,
}

impl RecordContext {
    /// Must run inside the runtime: the embedding batcher is a task.
    pub(crate) fn new(spec: &JobSpec, backend: Arc<dyn ModelBackend>, retry: RetryPolicy) -> Self {
        let info = backend.info();
        let embeds = spec.invocation_type == InvocationType::InvokeModel
            && spec.records.family.is_some_and(ModelFamily::is_embedding)
            && !info.runs_native;
        let embedder = embeds.then(|| {
            EmbedBatcher::new(
                backend.clone(),
                info.embed_batch(spec.records.embed_batch_size),
            )
        });
        Self {
            backend,
            runs_native: info.runs_native,
            retry,
            invocation_type: spec.invocation_type,
            records: spec.records.clone(),
            job_id: spec.job_id.to_string(),
            embedder,
        }
    }
}

/// How a record ended: its output line and what it adds to the counters. Where it goes
/// (sequence, file) is the pipeline's business, not the record's.
pub(crate) struct RecordOutcome {
    pub line: Vec<u8>,
    pub success: bool,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

pub(crate) fn internal_error(line: &[u8], message: &str) -> RecordOutcome {
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
    RecordOutcome {
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

/// A record body, translated for the backend.
enum Prepared<'a> {
    /// Sent as it is (Bedrock on-demand).
    Native(NativeCall<'a>),
    Converse(Box<ChatRequest>),
    Chat(ModelFamily, Box<ChatRequest>),
    Embed(ModelFamily, EmbedItem),
}

/// A backend's answer, rendered: the modelOutput and its token counts.
struct Answer {
    body: Value,
    input_tokens: u64,
    output_tokens: u64,
}

/// Translates a record body; the error is the record's error message.
fn prepare<'a>(ctx: &RecordContext, body: &'a str) -> Result<Prepared<'a>, String> {
    let joined = |defects: Vec<batchd_formats::Defect>| {
        defects
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    match ctx.invocation_type {
        // Still validated: a Bedrock backend must not be sent what batchd rejects.
        InvocationType::Converse => {
            let request = parse_converse(body, &ctx.records.converse).map_err(joined)?;
            if ctx.runs_native {
                Ok(Prepared::Native(NativeCall::Converse(body)))
            } else {
                Ok(Prepared::Converse(Box::new(request)))
            }
        }
        InvocationType::InvokeModel => {
            let family = ctx
                .records
                .family
                .ok_or_else(|| "modelInput: the model has no InvokeModel body format".to_owned())?;
            let request = parse_native(family, body).map_err(joined)?;
            if ctx.runs_native {
                return Ok(Prepared::Native(NativeCall::InvokeModel(body)));
            }
            Ok(match request {
                NativeRequest::Chat(chat) => Prepared::Chat(family, chat),
                NativeRequest::Embed(item) => Prepared::Embed(family, item),
            })
        }
    }
}

/// One attempt at the backend.
async fn attempt(ctx: &RecordContext, prepared: &Prepared<'_>) -> Result<Answer, BackendError> {
    let started = Instant::now();
    let latency_ms = || started.elapsed().as_millis() as u64;
    match prepared {
        Prepared::Native(call) => {
            let answer = ctx.backend.invoke_native(*call).await?;
            let body = serde_json::from_slice(&answer.body).map_err(|e| {
                BackendError::new(
                    ErrorKind::Protocol,
                    format!("the model's answer is not JSON: {e}"),
                )
            })?;
            Ok(Answer {
                body,
                input_tokens: answer.input_tokens,
                output_tokens: answer.output_tokens,
            })
        }
        Prepared::Converse(request) => {
            let response = ctx.backend.chat(request).await?;
            Ok(Answer {
                body: render_converse_response(&response, latency_ms()),
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
            })
        }
        Prepared::Chat(family, request) => {
            let response = ctx.backend.chat(request).await?;
            Ok(Answer {
                body: render_chat(*family, &response, latency_ms()),
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
            })
        }
        Prepared::Embed(family, item) => {
            let Some(embedder) = &ctx.embedder else {
                return Err(BackendError::new(
                    ErrorKind::Unsupported,
                    "embedding records need an embedding model",
                ));
            };
            // Titan's `dimensions` is not sent: most OpenAI-compatible servers refuse it for
            // models without Matryoshka training; `render_embed` cuts the vector instead.
            let (vector, tokens) = embedder.embed(item.text.clone(), None).await?;
            Ok(Answer {
                body: render_embed(*family, item, &vector, tokens),
                input_tokens: tokens,
                output_tokens: 0,
            })
        }
    }
}

/// One record from line to output line: parse, translate, call the backend with retries.
pub(crate) async fn process_record(
    ctx: Arc<RecordContext>,
    file: Arc<str>,
    line_no: u64,
    line: Bytes,
) -> RecordOutcome {
    let mut out = Vec::with_capacity(line.len() + 512);
    let failed = |out: Vec<u8>| RecordOutcome {
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
        Some(id) => Cow::Borrowed(id.as_str()),
        None => Cow::Owned(generated_record_id(&ctx.job_id, &file, line_no)),
    };
    let prepared = match prepare(&ctx, record.model_input.get()) {
        Ok(prepared) => prepared,
        Err(message) => {
            write_error_line(&mut out, &record_id, record.model_input, 400, &message);
            return failed(out);
        }
    };

    let mut attempts = 0;
    loop {
        attempts += 1;
        let result =
            tokio::time::timeout(ctx.retry.attempt_timeout, attempt(&ctx, &prepared)).await;
        let error = match result {
            Ok(Ok(answer)) => {
                write_success_line(&mut out, &record_id, record.model_input, &answer.body);
                return RecordOutcome {
                    line: out,
                    success: true,
                    input_tokens: answer.input_tokens,
                    output_tokens: answer.output_tokens,
                };
            }
            Ok(Err(error)) => error,
            Err(_) => BackendError::new(
                ErrorKind::Timeout,
                format!("no answer within {:?}", ctx.retry.attempt_timeout),
            ),
        };
        if !error.is_retryable() || attempts >= ctx.retry.max_attempts {
            let message = if attempts > 1 {
                format!("{} (gave up after {attempts} attempts)", error.message)
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
                .backoff(attempts, error.retry_after, fastrand::f64()),
        )
        .await;
    }
}
