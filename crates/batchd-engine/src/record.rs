//! One record from input line to output line: parse, translate to the neutral request of
//! its format (Converse or a model family's InvokeModel body), call the backend with
//! retries, and render the answer in the shape the record's format expects.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::{BackendError, ErrorKind, ModelBackend, NativeCall};
use batchd_core::{InvocationType, RetryClass, generated_record_id};
use batchd_formats::batch_job::{ItemError, ItemResult, converse_text, parse_item};
use batchd_formats::converse::{
    ConverseResponse, parse_converse, render_converse_response, simple_record,
};
use batchd_formats::native::{
    EmbedItem, ModelFamily, NativeRequest, parse_native, render_chat, render_embed,
};
use batchd_formats::neutral::EmbedRequest;
use batchd_formats::neutral::{ChatRequest, ChatResponse};
use batchd_formats::openai::{self, Endpoint};
use batchd_formats::record::{
    InputText, parse_record_line, write_error_line, write_success_line, write_success_line_with,
};
use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::Instrument;

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
    /// The model id as the job names it: the label of its metrics.
    model_id: String,
    /// Groups embedding records into backend calls (embedding families only).
    embedder: Option<EmbedBatcher>,
    /// A batch-job API job: units are items, results are result objects.
    items: Option<ItemOptions>,
    /// An OpenAI batch: units are request lines, output is output/error lines.
    openai: Option<OpenAiLines>,
}

/// What an OpenAI batch's lines need.
struct OpenAiLines {
    /// `None` for an endpoint batchd does not run (every line then fails).
    endpoint: Option<Endpoint>,
    model: String,
}

/// What a batch-job API job's items need beyond a record's.
struct ItemOptions {
    prompt_template: Option<String>,
    /// The failures the job's retry policy retries; `None`: every retryable one.
    retry_on: Option<Vec<RetryClass>>,
}

impl RecordContext {
    /// Must run inside the runtime: the embedding batcher is a task.
    pub(crate) fn new(
        spec: &JobSpec,
        backend: Arc<dyn ModelBackend>,
        mut retry: RetryPolicy,
    ) -> Self {
        let info = backend.info();
        let items = spec.batch.as_ref().map(|batch| {
            if let Some(own) = &batch.retry {
                retry.max_attempts = own.max_attempts.max(1);
                retry.base_backoff = Duration::from_millis(own.initial_backoff_ms);
                retry.max_backoff = Duration::from_millis(own.max_backoff_ms);
            }
            ItemOptions {
                prompt_template: batch.prompt_template.clone(),
                retry_on: batch.retry.as_ref().map(|r| r.retry_on.clone()),
            }
        });
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
            model_id: spec.model_id.clone(),
            embedder,
            items,
            openai: spec.openai.as_ref().map(|o| OpenAiLines {
                endpoint: Endpoint::parse(&o.endpoint),
                model: o.model.clone(),
            }),
        }
    }

    /// Whether `error` is worth another attempt under this job's policy.
    fn retries(&self, error: &BackendError) -> bool {
        let class = match error.kind {
            ErrorKind::RateLimited => RetryClass::Throttling,
            ErrorKind::Server => RetryClass::ServerError,
            ErrorKind::Timeout => RetryClass::Timeout,
            ErrorKind::Connect => RetryClass::Connection,
            ErrorKind::Client | ErrorKind::Unsupported | ErrorKind::Protocol => return false,
        };
        match self.items.as_ref().and_then(|i| i.retry_on.as_ref()) {
            Some(classes) => classes.contains(&class),
            None => error.is_retryable(),
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
    /// From the first attempt's start to the last answer; `None` when no call was made.
    pub elapsed: Option<Duration>,
    /// A success's figures as the analysis reads them back from `line`, when they are known
    /// without reading it (a Converse answer); the run's tally then skips the parse.
    pub known: Option<KnownSuccess>,
}

/// What `batchd_formats::analysis` reads from a Converse success line: `metrics.latencyMs`
/// in seconds and `usage`'s token counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct KnownSuccess {
    pub seconds: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl RecordOutcome {
    /// A record that failed without an answer, written to `line`.
    fn failed(line: Vec<u8>) -> Self {
        Self {
            line,
            success: false,
            input_tokens: 0,
            output_tokens: 0,
            elapsed: None,
            known: None,
        }
    }

    /// A record the backend answered, written to `line`.
    fn answered(line: Vec<u8>, answer: &Answer, elapsed: Duration) -> Self {
        Self {
            line,
            success: true,
            input_tokens: answer.input_tokens,
            output_tokens: answer.output_tokens,
            elapsed: Some(elapsed),
            known: None,
        }
    }
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
    RecordOutcome::failed(out)
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
    /// An OpenAI batch line's chat completions body; answered as a chat completion object.
    OpenAiChat(Box<ChatRequest>, &'a OpenAiLines),
    /// An OpenAI batch line's embeddings body; answered as an embeddings list.
    OpenAiEmbed(EmbedRequest, &'a OpenAiLines),
}

/// A backend's answer, rendered: the modelOutput and its token counts.
struct Answer {
    body: Body,
    input_tokens: u64,
    output_tokens: u64,
}

/// A modelOutput: a Converse answer kept as the response and its latency (written straight to
/// the line, with no `Value` built: the common case), any other body as JSON.
enum Body {
    Converse(ChatResponse, u64),
    Json(Value),
}

impl Body {
    fn json(&self) -> Cow<'_, Value> {
        match self {
            Body::Json(value) => Cow::Borrowed(value),
            Body::Converse(response, latency_ms) => {
                Cow::Owned(render_converse_response(response, *latency_ms))
            }
        }
    }

    fn write_line(&self, out: &mut Vec<u8>, record_id: &str, model_input: InputText<'_>) {
        match self {
            Body::Json(value) => write_success_line(out, record_id, model_input, value),
            Body::Converse(response, latency_ms) => write_success_line_with(
                out,
                record_id,
                model_input,
                &ConverseResponse::new(response, *latency_ms),
            ),
        }
    }
}

/// A record's defects as one error message.
fn joined(defects: Vec<batchd_formats::Defect>) -> String {
    defects
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Translates a record body; the error is the record's error message.
fn prepare<'a>(ctx: &RecordContext, body: &'a str) -> Result<Prepared<'a>, String> {
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
                body: Body::Json(body),
                input_tokens: answer.input_tokens,
                output_tokens: answer.output_tokens,
            })
        }
        Prepared::Converse(request) => {
            let response = ctx.backend.chat(request).await?;
            Ok(Answer {
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
                body: Body::Converse(response, latency_ms()),
            })
        }
        Prepared::Chat(family, request) => {
            let response = ctx.backend.chat(request).await?;
            Ok(Answer {
                body: Body::Json(render_chat(*family, &response, latency_ms())),
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
            })
        }
        Prepared::OpenAiChat(request, lines) => {
            let response = ctx.backend.chat(request).await?;
            let id = format!("{:016x}", fastrand::u64(..));
            let created = unix_seconds();
            Ok(Answer {
                body: Body::Json(openai::render_text(
                    lines.endpoint.unwrap_or(Endpoint::ChatCompletions),
                    &response,
                    &lines.model,
                    &id,
                    created,
                )),
                input_tokens: response.usage.input_tokens,
                output_tokens: response.usage.output_tokens,
            })
        }
        Prepared::OpenAiEmbed(request, lines) => {
            let response = ctx.backend.embed(request).await?;
            Ok(Answer {
                body: Body::Json(openai::render_embeddings(
                    &response.embeddings,
                    &lines.model,
                    response.input_tokens,
                )),
                input_tokens: response.input_tokens,
                output_tokens: 0,
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
                body: Body::Json(render_embed(*family, item, &vector, tokens)),
                input_tokens: tokens,
                output_tokens: 0,
            })
        }
    }
}

/// One record from line to output line: parse, translate, call the backend with retries.
/// A batch-job API job's unit is an item, and its output a result object.
pub(crate) async fn process_record(
    ctx: Arc<RecordContext>,
    file: Arc<str>,
    line_no: u64,
    line: Bytes,
) -> RecordOutcome {
    if ctx.items.is_some() {
        return process_item(&ctx, &file, line_no, &line).await;
    }
    if let Some(openai) = &ctx.openai {
        return process_openai_line(&ctx, openai, &file, line_no, &line).await;
    }
    let mut out = Vec::with_capacity(line.len() + 512);
    let text = std::str::from_utf8(&line).map_err(|_| "line: not valid UTF-8".to_owned());
    // Most records are simple Converse lines: one pass over the line reads them.
    if ctx.invocation_type == InvocationType::Converse
        && let Ok(text) = &text
        && let Some(simple) = simple_record(text)
    {
        let record_id = simple
            .record_id
            .unwrap_or_else(|| Cow::Owned(generated_record_id(&ctx.job_id, &file, line_no)));
        let prepared = if ctx.runs_native {
            Prepared::Native(NativeCall::Converse(simple.model_input.get()))
        } else {
            Prepared::Converse(Box::new(simple.request))
        };
        return answer(&ctx, &prepared, &record_id, simple.model_input, out).await;
    }
    // Validation passed, so these only fail if the input changed since: still an error line.
    let record = match text.and_then(|text| parse_record_line(text).map_err(|d| d.to_string())) {
        Ok(record) => record,
        Err(defect) => {
            let id = generated_record_id(&ctx.job_id, &file, line_no);
            let message =
                format!("{file}:{line_no}: {defect} (the input changed after validation)");
            write_error_line(&mut out, &id, &null_raw(), 400, &message);
            return RecordOutcome::failed(out);
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
            return RecordOutcome::failed(out);
        }
    };
    answer(&ctx, &prepared, &record_id, record.model_input.into(), out).await
}

/// Calls the backend for a prepared record and writes its output line to `out`.
async fn answer(
    ctx: &RecordContext,
    prepared: &Prepared<'_>,
    record_id: &str,
    model_input: InputText<'_>,
    mut out: Vec<u8>,
) -> RecordOutcome {
    let called = call_with_retries(ctx, prepared, record_id).await;
    match called.result {
        Ok(answer) => {
            answer.body.write_line(&mut out, record_id, model_input);
            RecordOutcome {
                // The line's `metrics.latencyMs` and `usage`, as written.
                known: match answer.body {
                    Body::Converse(_, latency_ms) => Some(KnownSuccess {
                        seconds: latency_ms as f64 / 1000.0,
                        input_tokens: answer.input_tokens,
                        output_tokens: answer.output_tokens,
                    }),
                    Body::Json(_) => None,
                },
                ..RecordOutcome::answered(out, &answer, called.elapsed)
            }
        }
        Err(error) => {
            let message = gave_up_message(&error, called.attempts);
            write_error_line(
                &mut out,
                record_id,
                model_input,
                error.error_code(),
                &message,
            );
            RecordOutcome {
                elapsed: Some(called.elapsed),
                ..RecordOutcome::failed(out)
            }
        }
    }
}

/// How a record's calls ended: the answer or the last error, after how many attempts, and
/// how long they took from the first attempt's start.
struct Called {
    result: Result<Answer, BackendError>,
    attempts: u32,
    elapsed: std::time::Duration,
}

/// Calls the backend until an answer, an error the policy does not retry, or the last attempt.
/// Each attempt is a `tracing` span (record id, attempt, model) whose end is logged at debug
/// with its latency and error class, and a latency sample in the metrics.
async fn call_with_retries(
    ctx: &RecordContext,
    prepared: &Prepared<'_>,
    record_id: &str,
) -> Called {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let span = tracing::debug_span!(
            "attempt",
            record_id,
            attempt = attempts,
            model_id = %ctx.model_id
        );
        let attempt_started = Instant::now();
        let result = tokio::time::timeout(ctx.retry.attempt_timeout, attempt(ctx, prepared))
            .instrument(span.clone())
            .await;
        let latency = attempt_started.elapsed();
        let error = match result {
            Ok(Ok(answer)) => {
                crate::metrics::attempt(&ctx.model_id, latency, None);
                span.in_scope(|| {
                    tracing::debug!(latency_ms = latency.as_millis() as u64, "attempt answered");
                });
                return Called {
                    result: Ok(answer),
                    attempts,
                    elapsed: started.elapsed(),
                };
            }
            Ok(Err(error)) => error,
            Err(_) => BackendError::new(
                ErrorKind::Timeout,
                format!("no answer within {:?}", ctx.retry.attempt_timeout),
            ),
        };
        crate::metrics::attempt(&ctx.model_id, latency, Some(error.kind));
        let retried = ctx.retries(&error) && attempts < ctx.retry.max_attempts;
        span.in_scope(|| {
            tracing::debug!(
                latency_ms = latency.as_millis() as u64,
                error_class = crate::metrics::error_class(error.kind),
                status = error.status,
                retried,
                error = %error.message,
                "attempt failed"
            );
        });
        if !retried {
            return Called {
                result: Err(error),
                attempts,
                elapsed: started.elapsed(),
            };
        }
        crate::metrics::retry(&ctx.model_id, error.kind);
        tokio::time::sleep(
            ctx.retry
                .backoff(attempts, error.retry_after, fastrand::f64()),
        )
        .await;
    }
}

fn gave_up_message(error: &BackendError, attempts: u32) -> String {
    if attempts > 1 {
        format!("{} (gave up after {attempts} attempts)", error.message)
    } else {
        error.message.clone()
    }
}

/// Why an item of a batch job never ran; its result's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotRun {
    /// The job was stopped first.
    Stopped,
    /// The job's timeout passed first.
    TimedOut,
}

impl NotRun {
    fn code(self) -> &'static str {
        match self {
            Self::Stopped => "JobStopped",
            Self::TimedOut => "JobTimedOut",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Stopped => "not run: the job was stopped before this item finished",
            Self::TimedOut => "not run: the job timed out before this item finished",
        }
    }
}

/// The error code of a failed item's result: the Bedrock runtime's name for the failure.
fn item_error_code(error: &BackendError) -> &'static str {
    match (error.kind, error.status) {
        (ErrorKind::RateLimited, _) => "ThrottlingException",
        (ErrorKind::Timeout, _) => "ModelTimeoutException",
        (ErrorKind::Connect, _) | (ErrorKind::Server, Some(503)) => "ServiceUnavailableException",
        (ErrorKind::Server, _) => "InternalServerException",
        (ErrorKind::Client | ErrorKind::Unsupported, _) => "ValidationException",
        (ErrorKind::Protocol, _) => "ModelErrorException",
    }
}

/// Writes one item's result object (the pipeline adds the separators of the output format).
#[allow(clippy::too_many_arguments)]
fn item_result(
    out: &mut Vec<u8>,
    id: &str,
    output: Option<&str>,
    called: (std::time::Duration, u32),
    tokens: (u64, u64),
    error: Option<(&str, &str)>,
    metadata: Option<&RawValue>,
) {
    ItemResult {
        id,
        status: if error.is_none() {
            ItemResult::SUCCESS
        } else {
            ItemResult::ERROR
        },
        output,
        processing_time: called.0.as_secs_f64(),
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        attempts: called.1,
        error: error.map(|(code, message)| ItemError { code, message }),
        metadata,
    }
    .write(out);
}

/// An item's result without a backend call: it never ran (stop, timeout), or could not be
/// read any more (`message` given, code ValidationException or InternalServerException).
pub(crate) fn item_not_run(
    ctx: &RecordContext,
    file: &str,
    unit: u64,
    line: &[u8],
    why: Result<NotRun, (&str, &str)>,
) -> RecordOutcome {
    let template = ctx
        .items
        .as_ref()
        .and_then(|i| i.prompt_template.as_deref());
    let text = std::str::from_utf8(line).unwrap_or_default();
    let item = parse_item(text, template).ok();
    let id = item
        .as_ref()
        .and_then(|i| i.id.clone())
        .unwrap_or_else(|| generated_record_id(&ctx.job_id, file, unit));
    let (code, message) = match why {
        Ok(not_run) => (not_run.code(), not_run.message()),
        Err(error) => error,
    };
    let mut out = Vec::new();
    item_result(
        &mut out,
        &id,
        None,
        (std::time::Duration::ZERO, 0),
        (0, 0),
        Some((code, message)),
        item.as_ref().and_then(|i| i.metadata),
    );
    RecordOutcome::failed(out)
}

/// One batch-job item from its input to its result object.
async fn process_item(ctx: &RecordContext, file: &str, unit: u64, line: &[u8]) -> RecordOutcome {
    let template = ctx
        .items
        .as_ref()
        .and_then(|i| i.prompt_template.as_deref());
    // Validation passed, so these only fail if the input changed since.
    let item = match std::str::from_utf8(line)
        .map_err(|_| "item: not valid UTF-8".to_owned())
        .and_then(|text| parse_item(text, template).map_err(|d| d.to_string()))
    {
        Ok(item) => item,
        Err(defect) => {
            let message =
                format!("{file}: item {unit}: {defect} (the input changed after validation)");
            return item_not_run(
                ctx,
                file,
                unit,
                line,
                Err(("ValidationException", &message)),
            );
        }
    };
    let id = item
        .id
        .clone()
        .unwrap_or_else(|| generated_record_id(&ctx.job_id, file, unit));
    let mut out = Vec::with_capacity(512);
    let prepared = match prepare(ctx, &item.body) {
        Ok(prepared) => prepared,
        Err(message) => {
            let error = Some(("ValidationException", message.as_str()));
            let none = (std::time::Duration::ZERO, 0);
            item_result(&mut out, &id, None, none, (0, 0), error, item.metadata);
            return RecordOutcome::failed(out);
        }
    };
    let called = call_with_retries(ctx, &prepared, &id).await;
    let timing = (called.elapsed, called.attempts);
    match called.result {
        Ok(answer) => {
            let text = converse_text(&answer.body.json());
            let tokens = (answer.input_tokens, answer.output_tokens);
            item_result(
                &mut out,
                &id,
                Some(text.as_deref().unwrap_or("")),
                timing,
                tokens,
                None,
                item.metadata,
            );
            RecordOutcome::answered(out, &answer, called.elapsed)
        }
        Err(error) => {
            let message = gave_up_message(&error, called.attempts);
            let failure = Some((item_error_code(&error), message.as_str()));
            item_result(&mut out, &id, None, timing, (0, 0), failure, item.metadata);
            RecordOutcome {
                elapsed: Some(called.elapsed),
                ..RecordOutcome::failed(out)
            }
        }
    }
}

fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A line's id in the output (`batch_req_<id>`): random, as OpenAI's are.
fn line_id() -> String {
    format!("{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..))
}

/// The `type` of an OpenAI error body for a failed call.
fn openai_error_type(error: &BackendError) -> &'static str {
    match error.kind {
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Client | ErrorKind::Unsupported => "invalid_request_error",
        ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::Protocol => {
            "server_error"
        }
    }
}

/// The custom_id of a line, however broken the rest of it is.
fn custom_id_of(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        custom_id: Option<String>,
    }
    serde_json::from_slice::<Id>(line).ok()?.custom_id
}

/// One line's output line without an answer: `Err` a failure before any call (status 400 or
/// 500 inside `response.body.error`), `Ok` a request never run (`batch_cancelled`,
/// `batch_expired`).
fn openai_not_run(
    file: &str,
    unit: u64,
    line: &[u8],
    why: Result<NotRun, (u16, &str)>,
) -> RecordOutcome {
    let custom_id = custom_id_of(line).unwrap_or_else(|| format!("{file}:{unit}"));
    let outcome = match why {
        Ok(NotRun::Stopped) => openai::LineOutcome::NotRun {
            code: "batch_cancelled",
            message: "The batch was cancelled before this request ran.",
        },
        Ok(NotRun::TimedOut) => openai::LineOutcome::NotRun {
            code: "batch_expired",
            message: "The batch expired before this request ran.",
        },
        Err((status_code, message)) => openai::LineOutcome::Failed {
            status_code,
            kind: if status_code < 500 {
                "invalid_request_error"
            } else {
                "server_error"
            },
            code: None,
            message,
        },
    };
    let mut out = Vec::new();
    openai::write_line(&mut out, &line_id(), &custom_id, &outcome);
    RecordOutcome::failed(out)
}

/// The output line of a unit that never got an answer, in the job's dialect: `Ok` it never
/// ran (stop, timeout), `Err` an internal failure with this message.
pub(crate) fn not_run(
    ctx: &RecordContext,
    file: &str,
    unit: u64,
    line: &[u8],
    why: Result<NotRun, &str>,
) -> RecordOutcome {
    if ctx.openai.is_some() {
        return openai_not_run(file, unit, line, why.map_err(|m| (500, m)));
    }
    if ctx.items.is_some() {
        return item_not_run(
            ctx,
            file,
            unit,
            line,
            why.map_err(|m| ("InternalServerException", m)),
        );
    }
    internal_error(line, why.err().unwrap_or("not run"))
}

/// One OpenAI batch line from input to output line.
async fn process_openai_line(
    ctx: &RecordContext,
    lines: &OpenAiLines,
    file: &str,
    unit: u64,
    line: &[u8],
) -> RecordOutcome {
    let Some(endpoint) = lines.endpoint else {
        return openai_not_run(
            file,
            unit,
            line,
            Err((400, "this endpoint is not supported by batchd")),
        );
    };
    let text = std::str::from_utf8(line).unwrap_or_default();
    // Validation passed, so these only fail if the input changed since.
    let parsed = match openai::parse_line(text, endpoint) {
        Ok(parsed) => parsed,
        Err(defects) => return openai_not_run(file, unit, line, Err((400, &joined(defects)))),
    };
    let prepared = match openai::parse_body(endpoint, parsed.body) {
        Ok(openai::BatchBody::Chat(request)) => Prepared::OpenAiChat(request, lines),
        Ok(openai::BatchBody::Embed(request)) => Prepared::OpenAiEmbed(request, lines),
        Err(defects) => return openai_not_run(file, unit, line, Err((400, &joined(defects)))),
    };
    let called = call_with_retries(ctx, &prepared, &parsed.custom_id).await;
    let mut out = Vec::with_capacity(1024);
    match called.result {
        Ok(answer) => {
            let body = answer.body.json();
            let outcome = openai::LineOutcome::Answered { body: &body };
            openai::write_line(&mut out, &line_id(), &parsed.custom_id, &outcome);
            RecordOutcome::answered(out, &answer, called.elapsed)
        }
        Err(error) => {
            let message = gave_up_message(&error, called.attempts);
            let outcome = openai::LineOutcome::Failed {
                status_code: error.error_code(),
                kind: openai_error_type(&error),
                code: None,
                message: &message,
            };
            openai::write_line(&mut out, &line_id(), &parsed.custom_id, &outcome);
            RecordOutcome {
                elapsed: Some(called.elapsed),
                ..RecordOutcome::failed(out)
            }
        }
    }
}
