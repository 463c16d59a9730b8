//! The record pipeline: lines are read in order, each record runs in its own task (at most
//! `concurrency` at once), and results are written in input order through a bounded reorder
//! window, so memory stays flat whatever the input size.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::ModelBackend;
use batchd_core::{Checkpoint, Counters};
use batchd_storage::{InputFile, LineReader, OutputSink};
use batchd_store::JobStore;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use crate::record::{Finished, RecordContext, internal_error, process_record};
use crate::retry::WaitWhileDown;
use crate::{Engine, EngineError, JobSpec, Progress, StopReason, StopSignal};

/// A record task that is aborted when its handle is dropped: records abandoned after the
/// stop grace period must not keep calling the backend.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the job's files one after another as one stream of lines, starting after the
/// records a checkpoint says are done.
struct InputCursor<'a> {
    engine: &'a Engine,
    files: &'a [InputFile],
    next_file: usize,
    reader: Option<(usize, LineReader)>,
    /// Records (non-blank lines) still to skip in the first file read.
    skip_records: u64,
}

impl InputCursor<'_> {
    async fn next(&mut self) -> Result<Option<(usize, u64, Bytes)>, EngineError> {
        loop {
            if let Some((index, reader)) = &mut self.reader {
                match reader.next_line().await? {
                    Some((_, line)) if is_blank(&line) => continue,
                    Some(_) if self.skip_records > 0 => self.skip_records -= 1,
                    Some((line_no, line)) => return Ok(Some((*index, line_no, line))),
                    None => {
                        self.reader = None;
                        self.skip_records = 0;
                    }
                }
                continue;
            }
            let Some(file) = self.files.get(self.next_file) else {
                return Ok(None);
            };
            let reader = self
                .engine
                .storage
                .read_input(file, self.engine.config.max_line_bytes)
                .await?;
            self.reader = Some((self.next_file, reader));
            self.next_file += 1;
        }
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Output files, written in input order through resumable sinks; every input file gets one.
struct OutputFiles<'a> {
    engine: &'a Engine,
    files: &'a [InputFile],
    spec: &'a JobSpec,
    store: &'a JobStore,
    current: Option<(usize, OutputSink)>,
    /// Records written to the current file (including those before a resume).
    records_in_current: u64,
    /// Files before this index are finished.
    done_below: usize,
}

impl OutputFiles<'_> {
    async fn write(
        &mut self,
        file_index: usize,
        bytes: &[u8],
        counters: &Counters,
    ) -> Result<(), EngineError> {
        if self.current.as_ref().map(|(i, _)| *i) != Some(file_index) {
            self.finish_below(file_index, counters).await?;
            let uri = output_uri(self.spec, &self.files[file_index]);
            self.current = Some((file_index, self.engine.storage.open_sink(&uri, 0).await?));
            self.records_in_current = 0;
        }
        if let Some((_, sink)) = &mut self.current {
            sink.write(bytes).await?;
            self.records_in_current += 1;
        }
        Ok(())
    }

    /// Makes the current file durable and records the checkpoint, if one is due.
    async fn checkpoint_if_due(&mut self, counters: &Counters) -> Result<(), EngineError> {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, sink)| sink.commit_due())
        {
            self.checkpoint(counters).await?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self, counters: &Counters) -> Result<(), EngineError> {
        let ckpt = match &mut self.current {
            Some((index, sink)) => Checkpoint {
                file_index: *index as u64,
                records_in_file: self.records_in_current,
                position: sink.commit(&self.engine.storage).await?,
                counters: *counters,
            },
            None => Checkpoint {
                file_index: self.done_below as u64,
                counters: *counters,
                ..Checkpoint::default()
            },
        };
        self.store.checkpoint(&self.spec.job_id, &ckpt).await?;
        Ok(())
    }

    /// Finishes the open file and creates empty outputs for files below `end` never written;
    /// the checkpoint moves past them before leftover parts are removed.
    async fn finish_below(&mut self, end: usize, counters: &Counters) -> Result<(), EngineError> {
        let mut leftovers = Vec::new();
        if let Some((index, sink)) = self.current.take() {
            leftovers.push(sink.finish(&self.engine.storage).await?);
            self.done_below = index + 1;
        }
        while self.done_below < end {
            let uri = output_uri(self.spec, &self.files[self.done_below]);
            let sink = self.engine.storage.open_sink(&uri, 0).await?;
            leftovers.push(sink.finish(&self.engine.storage).await?);
            self.done_below += 1;
        }
        self.records_in_current = 0;
        if !leftovers.is_empty() {
            self.checkpoint(counters).await?;
            for finished in leftovers {
                finished.cleanup(&self.engine.storage).await?;
            }
        }
        Ok(())
    }
}

pub(crate) fn output_uri(spec: &JobSpec, file: &InputFile) -> batchd_storage::StorageUri {
    spec.output
        .join(&format!("{}/{}.out", spec.job_id, file.relative))
}

/// How `run_records` ended.
pub(crate) struct RunEnd {
    pub counters: Counters,
    /// Every record of every file is written and every output file finished.
    pub complete: bool,
    /// Backend calls failed because the backend stayed unreachable past `backend_down`.
    pub unreachable: u64,
    /// Records in flight when the stop grace period ran out (not written; a resume runs them).
    pub abandoned: usize,
}

/// Runs the records of `files` from `resume_from`; returns the final counters. When `stop`
/// fires, no new record starts; those in flight finish and are written, for at most
/// `shutdown_grace`: then the rest are abandoned, unwritten. On a shutdown stop
/// the open output file stays open for a later resume; on any other stop it is finished.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_records(
    engine: &Engine,
    spec: &JobSpec,
    files: &[InputFile],
    resume_from: Checkpoint,
    backend: Arc<dyn ModelBackend>,
    store: &JobStore,
    progress: &watch::Sender<Progress>,
    stop: &StopSignal,
) -> Result<RunEnd, EngineError> {
    let reachability = Arc::new(WaitWhileDown::new(
        backend,
        engine.config.backend_down,
        engine.config.retry.attempt_timeout.mul_f64(0.8),
        engine.config.retry.clone(),
    ));
    let ctx = Arc::new(RecordContext::new(
        spec,
        reachability.clone(),
        engine.config.retry.clone(),
    ));
    let relative: Vec<Arc<str>> = files
        .iter()
        .map(|f| Arc::from(f.relative.as_str()))
        .collect();
    let concurrency = spec.concurrency.max(1);
    // Finished records wait here for the slowest earlier one; the window bounds that memory.
    let window = (concurrency as u64 * 8).clamp(256, 65_536);
    let mut counters = resume_from.counters;

    let first_file = usize::try_from(resume_from.file_index)
        .unwrap_or(usize::MAX)
        .min(files.len());
    let mut input = InputCursor {
        engine,
        files,
        next_file: first_file,
        reader: None,
        skip_records: resume_from.records_in_file,
    };
    let mut output = OutputFiles {
        engine,
        files,
        spec,
        store,
        current: None,
        records_in_current: 0,
        done_below: first_file,
    };
    if first_file < files.len() && (resume_from.records_in_file > 0 || resume_from.position > 0) {
        let uri = output_uri(spec, &files[first_file]);
        let sink = engine.storage.open_sink(&uri, resume_from.position).await?;
        output.current = Some((first_file, sink));
        output.records_in_current = resume_from.records_in_file;
    }
    let mut inflight = FuturesUnordered::new();
    let mut pending: VecDeque<Option<Finished>> = VecDeque::new();
    let (mut next_seq, mut write_seq) = (0u64, 0u64);
    let mut exhausted = false;
    let mut last_progress = Instant::now();
    let mut abandoned = 0;
    // Set when a stop is first seen: in-flight records have until then to finish.
    let mut grace_ends: Option<tokio::time::Instant> = None;

    loop {
        while !exhausted
            && !stop.is_stopped()
            && inflight.len() < concurrency
            && next_seq - write_seq < window
        {
            let Some((file_index, line_no, line)) = input.next().await? else {
                exhausted = true;
                break;
            };
            let seq = next_seq;
            next_seq += 1;
            let mut task = AbortOnDrop(tokio::spawn(process_record(
                ctx.clone(),
                relative[file_index].clone(),
                line_no,
                line.clone(),
            )));
            inflight.push(async move {
                let result = (&mut task.0).await;
                (seq, file_index, line, result)
            });
        }
        if stop.is_stopped() && grace_ends.is_none() {
            grace_ends = Some(tokio::time::Instant::now() + engine.config.shutdown_grace);
        }
        let next = tokio::select! {
            next = inflight.next() => next,
            // A stop wakes the loop so that it stops dispatching even while records run.
            _ = stop.cancelled(), if !stop.is_stopped() => continue,
            _ = sleep_until_opt(grace_ends) => {
                abandoned = inflight.len();
                tracing::warn!(job = %spec.job_id, abandoned, "stop grace period over; abandoning records in flight");
                break;
            }
        };
        let Some((seq, file_index, line, result)) = next else {
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
            // Written before it is counted: a checkpoint taken while switching files must
            // not count a record its file position does not cover.
            output.write(done.file_index, &done.line, &counters).await?;
            counters.processed += 1;
            if done.success {
                counters.success += 1;
            } else {
                counters.error += 1;
            }
            counters.input_tokens += done.input_tokens;
            counters.output_tokens += done.output_tokens;
            write_seq += 1;
        }
        output.checkpoint_if_due(&counters).await?;
        if last_progress.elapsed() >= Duration::from_millis(50) {
            progress.send_modify(|p| p.counters = counters);
            last_progress = Instant::now();
        }
    }
    // Abandoned records' tasks are aborted here; their results are not written.
    drop(inflight);
    drop(pending);
    let complete = exhausted && !stop.is_stopped();
    match stop.reason() {
        // The job stays running: keep the open file open for the resume.
        Some(StopReason::Shutdown) => output.checkpoint(&counters).await?,
        Some(_) => {
            let end = output
                .current
                .as_ref()
                .map_or(output.done_below, |(i, _)| i + 1);
            output.finish_below(end, &counters).await?;
            output.checkpoint(&counters).await?;
        }
        None => {
            output.finish_below(files.len(), &counters).await?;
            output.checkpoint(&counters).await?;
        }
    }
    progress.send_modify(|p| p.counters = counters);
    Ok(RunEnd {
        counters,
        complete,
        unreachable: reachability.gave_up(),
        abandoned,
    })
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
