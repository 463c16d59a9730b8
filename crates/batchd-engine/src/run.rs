//! The record pipeline: lines are read in order, each record runs in its own task (at most
//! `concurrency` at once), and results are written in input order through a bounded reorder
//! window, so memory stays flat whatever the input size.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::{BackendError, ErrorKind, ModelBackend};
use batchd_core::{Counters, generated_record_id};
use batchd_formats::converse::{ConverseOptions, parse_converse, render_converse_response};
use batchd_formats::record::{parse_record_line, write_error_line, write_success_line};
use batchd_storage::{InputFile, LineReader, OutputWriter};
use batchd_store::JobStore;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::retry::RetryPolicy;
use crate::{Engine, EngineError, JobSpec, Progress};

/// What every record task shares.
struct RecordContext {
    backend: Arc<dyn ModelBackend>,
    retry: RetryPolicy,
    converse: ConverseOptions,
    job_id: String,
}

/// A finished record: its output line and what it adds to the counters.
struct Finished {
    seq: u64,
    file_index: usize,
    line: Vec<u8>,
    success: bool,
    input_tokens: u64,
    output_tokens: u64,
}

/// Reads the job's files one after another as one stream of lines.
struct InputCursor<'a> {
    engine: &'a Engine,
    files: &'a [InputFile],
    next_file: usize,
    reader: Option<(usize, LineReader)>,
}

impl InputCursor<'_> {
    async fn next(&mut self) -> Result<Option<(usize, u64, Bytes)>, EngineError> {
        loop {
            if let Some((index, reader)) = &mut self.reader {
                if let Some((line_no, line)) = reader.next_line().await? {
                    return Ok(Some((*index, line_no, line)));
                }
                self.reader = None;
            }
            let Some(file) = self.files.get(self.next_file) else {
                return Ok(None);
            };
            let reader = self
                .engine
                .storage
                .read_lines(&file.uri, self.engine.config.max_line_bytes)
                .await?;
            self.reader = Some((self.next_file, reader));
            self.next_file += 1;
        }
    }
}

/// Output files, opened in input order; every input file gets one, even if empty.
struct OutputFiles<'a> {
    engine: &'a Engine,
    files: &'a [InputFile],
    spec: &'a JobSpec,
    current: Option<(usize, OutputWriter)>,
    /// Files before this index are finished.
    done_below: usize,
}

impl OutputFiles<'_> {
    async fn write(&mut self, file_index: usize, bytes: &[u8]) -> Result<(), EngineError> {
        if self.current.as_ref().map(|(i, _)| *i) != Some(file_index) {
            self.finish_below(file_index).await?;
            let uri = output_uri(self.spec, &self.files[file_index]);
            self.current = Some((file_index, self.engine.storage.create(&uri)?));
        }
        if let Some((_, writer)) = &mut self.current {
            writer.write(bytes).await?;
        }
        Ok(())
    }

    /// Finishes the open file and creates empty outputs for files below `end` never written.
    async fn finish_below(&mut self, end: usize) -> Result<(), EngineError> {
        if let Some((index, writer)) = self.current.take() {
            writer.finish().await?;
            self.done_below = index + 1;
        }
        while self.done_below < end {
            let uri = output_uri(self.spec, &self.files[self.done_below]);
            self.engine.storage.create(&uri)?.finish().await?;
            self.done_below += 1;
        }
        Ok(())
    }
}

fn output_uri(spec: &JobSpec, file: &InputFile) -> batchd_storage::StorageUri {
    spec.output
        .join(&format!("{}/{}.out", spec.job_id, file.relative))
}

/// Runs every record of `files`; returns the final counters. On cancel, stops taking new
/// records, lets those in flight finish, and writes what is done.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_records(
    engine: &Engine,
    spec: &JobSpec,
    files: &[InputFile],
    mut counters: Counters,
    backend: Arc<dyn ModelBackend>,
    store: &JobStore,
    progress: &watch::Sender<Progress>,
    cancel: &CancellationToken,
) -> Result<Counters, EngineError> {
    let ctx = Arc::new(RecordContext {
        backend,
        retry: engine.config.retry.clone(),
        converse: spec.converse.clone(),
        job_id: spec.job_id.to_string(),
    });
    let relative: Vec<Arc<str>> = files
        .iter()
        .map(|f| Arc::from(f.relative.as_str()))
        .collect();
    let concurrency = spec.concurrency.max(1);
    // Finished records wait here for the slowest earlier one; the window bounds that memory.
    let window = (concurrency as u64 * 8).clamp(256, 65_536);

    let mut input = InputCursor {
        engine,
        files,
        next_file: 0,
        reader: None,
    };
    let mut output = OutputFiles {
        engine,
        files,
        spec,
        current: None,
        done_below: 0,
    };
    let mut inflight = FuturesUnordered::new();
    let mut pending: VecDeque<Option<Finished>> = VecDeque::new();
    let (mut next_seq, mut write_seq) = (0u64, 0u64);
    let mut exhausted = false;
    let mut last_persist = Instant::now();
    let mut last_progress = Instant::now();

    loop {
        while !exhausted
            && !cancel.is_cancelled()
            && inflight.len() < concurrency
            && next_seq - write_seq < window
        {
            let Some((file_index, line_no, line)) = input.next().await? else {
                exhausted = true;
                break;
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are not records (validation decided they may stay)
            }
            let seq = next_seq;
            next_seq += 1;
            let task = tokio::spawn(process_record(
                ctx.clone(),
                relative[file_index].clone(),
                line_no,
                line.clone(),
            ));
            inflight.push(async move {
                let result = task.await;
                (seq, file_index, line, result)
            });
        }
        let Some((seq, file_index, line, result)) = inflight.next().await else {
            break;
        };
        let finished = match result {
            Ok(mut finished) => {
                finished.seq = seq;
                finished.file_index = file_index;
                finished
            }
            // A panicked task must still leave its record in the output.
            Err(join_error) => internal_error(seq, file_index, &line, &join_error.to_string()),
        };
        let slot = (finished.seq - write_seq) as usize;
        if pending.len() <= slot {
            pending.resize_with(slot + 1, || None);
        }
        pending[slot] = Some(finished);
        while let Some(Some(_)) = pending.front() {
            let Some(Some(done)) = pending.pop_front() else {
                break;
            };
            output.write(done.file_index, &done.line).await?;
            write_seq += 1;
            counters.processed += 1;
            if done.success {
                counters.success += 1;
            } else {
                counters.error += 1;
            }
            counters.input_tokens += done.input_tokens;
            counters.output_tokens += done.output_tokens;
        }
        if last_progress.elapsed() >= Duration::from_millis(50) {
            progress.send_modify(|p| p.counters = counters);
            last_progress = Instant::now();
        }
        if last_persist.elapsed() >= engine.config.progress_interval {
            store.update_counters(&spec.job_id, &counters).await?;
            last_persist = Instant::now();
        }
    }
    let end = if cancel.is_cancelled() {
        output.current.as_ref().map_or(0, |(i, _)| i + 1)
    } else {
        files.len()
    };
    output.finish_below(end).await?;
    progress.send_modify(|p| p.counters = counters);
    Ok(counters)
}

fn internal_error(seq: u64, file_index: usize, line: &[u8], message: &str) -> Finished {
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
async fn process_record(
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
