//! The record pipeline: lines are read in order, each record runs in its own task (at most
//! `concurrency` at once), and results are written in input order through a bounded reorder
//! window, so memory stays flat whatever the input size.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchd_backends::ModelBackend;
use batchd_core::ItemFormat;
use batchd_core::{Checkpoint, Counters, TimingSummary};
use batchd_formats::analysis::Tally;
use batchd_storage::{InputFile, OutputSink};
use batchd_store::JobStore;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use crate::analysis::LiveTally;
use crate::chunks::ChunkRun;
use crate::metrics::JobMetrics;
use crate::record::{self, NotRun, RecordContext, RecordOutcome, process_record};
use crate::retry::WaitWhileDown;
use crate::units::UnitReader;
use crate::{Engine, EngineError, JobRun, JobSpec, StopReason, StopSignal};

mod group;

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
    spec: &'a JobSpec,
    files: &'a [InputFile],
    next_file: usize,
    reader: Option<(usize, UnitReader)>,
    /// Records (non-blank lines) still to skip in the first file read.
    skip_records: u64,
    /// A chunk's run: where its first record starts, and how many records are left to read.
    chunk: Option<(&'a ChunkRun, u64)>,
}

impl InputCursor<'_> {
    async fn next(&mut self) -> Result<Option<(usize, u64, Bytes)>, EngineError> {
        loop {
            if let Some((index, reader)) = &mut self.reader {
                let lines = !reader.is_items();
                if let Some((_, 0)) = self.chunk {
                    return Ok(None);
                }
                match reader.next_unit().await? {
                    Some((_, line)) if lines && is_blank(&line) => continue,
                    Some(_) if self.skip_records > 0 => self.skip_records -= 1,
                    Some((line_no, line)) => {
                        if let Some((_, left)) = &mut self.chunk {
                            *left -= 1;
                        }
                        return Ok(Some((*index, line_no, line)));
                    }
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
            let reader = match self.chunk {
                Some((chunk, _)) => Ok(UnitReader::Lines(
                    self.engine
                        .storage
                        .read_input_at(
                            file,
                            chunk.plan.start_offset,
                            chunk.plan.first_line,
                            self.engine.config.max_line_bytes,
                        )
                        .await?,
                )),
                None => {
                    self.engine
                        .read_units(self.spec.batch.as_ref(), file)
                        .await?
                }
            }
            .map_err(|defect| {
                EngineError::Input(format!(
                    "{}: {defect} (the file changed after validation)",
                    file.uri
                ))
            })?;
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
    store: &'a dyn JobStore,
    current: Option<(usize, OutputSink)>,
    /// The current file's side file of processing times (InvokeModel jobs only).
    timings: Option<OutputSink>,
    /// Records written to the current file (including those before a resume).
    records_in_current: u64,
    /// Files before this index are finished.
    done_below: usize,
    /// A chunk's run writes its one part (and timings part), and records no checkpoint.
    chunk: Option<&'a ChunkRun>,
    /// The run's stop signal, asked before every write (`StopSignal::may_write`).
    stop: &'a StopSignal,
}

impl OutputFiles<'_> {
    async fn write(
        &mut self,
        file_index: usize,
        bytes: &[u8],
        elapsed: Option<Duration>,
        counters: &Counters,
    ) -> Result<(), EngineError> {
        if !self.stop.may_write() {
            return Ok(());
        }
        if self.current.as_ref().map(|(i, _)| *i) != Some(file_index) {
            self.finish_below(file_index, counters).await?;
            self.open(file_index, 0, 0).await?;
            self.records_in_current = 0;
        }
        if let Some(timings) = &mut self.timings {
            let line = match elapsed {
                Some(d) => format!("{{\"latencyMs\":{}}}\n", d.as_millis()),
                None => "{}\n".to_owned(),
            };
            timings.write(line.as_bytes()).await?;
        }
        if let Some((_, sink)) = &mut self.current {
            let framing = Framing::of(self.spec);
            let before = if self.records_in_current == 0 {
                framing.open
            } else {
                framing.separator
            };
            if !before.is_empty() {
                sink.write(before).await?;
            }
            sink.write(bytes).await?;
            sink.write(framing.after_each).await?;
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

    /// Opens file `index`'s output (and side file) at the positions of a checkpoint.
    async fn open(
        &mut self,
        index: usize,
        position: u64,
        timings_position: u64,
    ) -> Result<(), EngineError> {
        let storage = &self.engine.storage;
        let file = &self.files[index];
        let (output, timings) = match self.chunk {
            Some(chunk) => (chunk.part.clone(), chunk.timings_part.clone()),
            None => (output_uri(self.spec, file), timings_uri(self.spec, file)),
        };
        self.current = Some((index, storage.open_sink(&output, position).await?));
        self.timings = match keeps_timings(self.spec) {
            true => Some(storage.open_sink(&timings, timings_position).await?),
            false => None,
        };
        Ok(())
    }

    async fn checkpoint(&mut self, counters: &Counters) -> Result<(), EngineError> {
        if !self.stop.may_write() {
            return Ok(());
        }
        let storage = &self.engine.storage;
        let ckpt = match &mut self.current {
            Some((index, sink)) => Checkpoint {
                file_index: *index as u64,
                records_in_file: self.records_in_current,
                position: sink.commit(storage).await?,
                timings_position: match &mut self.timings {
                    Some(timings) => timings.commit(storage).await?,
                    None => 0,
                },
                counters: *counters,
            },
            None => Checkpoint {
                file_index: self.done_below as u64,
                counters: *counters,
                ..Checkpoint::default()
            },
        };
        // A chunk's progress goes to the store with its lease renewals instead.
        if self.chunk.is_none() {
            self.store.checkpoint(&self.spec.job_id, &ckpt).await?;
        }
        Ok(())
    }

    /// Finishes the open file and creates empty outputs for files below `end` never written;
    /// the checkpoint moves past them before leftover parts are removed.
    async fn finish_below(&mut self, end: usize, counters: &Counters) -> Result<(), EngineError> {
        if !self.stop.may_write() {
            return Ok(());
        }
        let mut leftovers = Vec::new();
        let framing = Framing::of(self.spec);
        if let Some((index, mut sink)) = self.current.take() {
            if self.records_in_current == 0 {
                sink.write(framing.open).await?;
            }
            sink.write(framing.close).await?;
            leftovers.push(sink.finish(&self.engine.storage).await?);
            if let Some(timings) = self.timings.take() {
                leftovers.push(timings.finish(&self.engine.storage).await?);
            }
            self.done_below = index + 1;
        }
        while self.done_below < end {
            let uri = match self.chunk {
                Some(chunk) => chunk.part.clone(),
                None => output_uri(self.spec, &self.files[self.done_below]),
            };
            let mut sink = self.engine.storage.open_sink(&uri, 0).await?;
            sink.write(framing.open).await?;
            sink.write(framing.close).await?;
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

/// Where an input file's output goes: Bedrock's `<out>/<jobId>/<relative>.out`; for a batch
/// job `<out>/<jobId>/<relative>` with the output format's extension.
pub(crate) fn output_uri(spec: &JobSpec, file: &InputFile) -> batchd_storage::StorageUri {
    let name = match &spec.batch {
        None => format!("{}.out", file.relative),
        Some(batch) => {
            let stem = file
                .relative
                .rsplit_once('.')
                .filter(|(_, ext)| !ext.contains('/'))
                .map_or(file.relative.as_str(), |(stem, _)| stem);
            format!("{stem}.{}", batch.output_format.extension())
        }
    };
    spec.output.join(&format!("{}/{name}", spec.job_id))
}

/// Whether the job keeps a side file of each record's processing time: InvokeModel bodies
/// and OpenAI responses carry none in their output lines (Converse's carry
/// `metrics.latencyMs`, batch jobs' results `processing_time`), and those lines must stay as
/// Bedrock and OpenAI write them.
pub(crate) fn keeps_timings(spec: &JobSpec) -> bool {
    spec.openai.is_some()
        || (spec.batch.is_none()
            && spec.invocation_type == batchd_core::InvocationType::InvokeModel)
}

/// `<out>/<jobId>.timings/<relative>.jsonl`: one line per output line of the file, in order,
/// `{"latencyMs": N}` (or `{}` for a record that made no call), beside the job's folder.
pub fn timings_uri(spec: &JobSpec, file: &InputFile) -> batchd_storage::StorageUri {
    spec.output
        .join(&format!("{}.timings/{}.jsonl", spec.job_id, file.relative))
}

/// The bytes around each output record: none for Bedrock's JSONL lines (each ends in `\n`);
/// a batch job's result objects become a JSON array or JSONL.
struct Framing {
    open: &'static [u8],
    separator: &'static [u8],
    after_each: &'static [u8],
    close: &'static [u8],
}

impl Framing {
    fn of(spec: &JobSpec) -> Self {
        match spec.batch.as_ref().map(|b| b.output_format) {
            None => Self {
                open: b"",
                separator: b"",
                after_each: b"",
                close: b"",
            },
            Some(ItemFormat::Json) => Self {
                open: b"[\n",
                separator: b",\n",
                after_each: b"",
                close: b"\n]\n",
            },
            Some(ItemFormat::Jsonl) => Self {
                open: b"",
                separator: b"",
                after_each: b"\n",
                close: b"",
            },
        }
    }
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
    /// The analysis of the job's output, tallied as it was written, when this run wrote all
    /// of it (else the folder is read).
    pub tally: Option<Tally>,
}

/// Whether the job's records are read ahead and started grouped by prefix key (`group`):
/// Converse and native chat records going to a backend that translates them (an
/// OpenAI-compatible server: the model's `group_prefixes`). Not embeddings (no prompt to
/// cache), not a backend that runs record bodies as they are (Bedrock), and not a job that
/// answers every line at a stop (a batch job, whose batches start in input order, or an OpenAI
/// batch): those start in input order.
fn groups_prefixes(spec: &JobSpec, runs_native: bool) -> bool {
    let chat = match spec.invocation_type {
        batchd_core::InvocationType::Converse => true,
        batchd_core::InvocationType::InvokeModel => {
            spec.records.family.is_some_and(|f| !f.is_embedding())
        }
    };
    spec.records.group_prefixes && chat && !runs_native && !spec.answers_every_line()
}

/// A record whose task ended, waiting in the reorder window for the ones before it.
struct Ready {
    file_index: usize,
    outcome: RecordOutcome,
}

/// Runs the records of `files` from `resume_from`; returns the final counters. When the stop
/// signal fires, no new record starts (but those older than one started, which prefix
/// grouping overtook); those in flight finish and are written, for at most
/// `shutdown_grace`: then the rest are abandoned, unwritten. On a shutdown stop the open
/// output file stays open for a later resume; on any other stop it is finished.
pub(crate) async fn run_records(
    job: &JobRun<'_>,
    files: &[InputFile],
    resume_from: Checkpoint,
    backend: Arc<dyn ModelBackend>,
) -> Result<RunEnd, EngineError> {
    let (engine, spec, stop) = (job.engine, job.spec, job.stop);
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
    let grouping = groups_prefixes(spec, reachability.info().runs_native);
    let mut pipeline = Pipeline::new(job, files, resume_from, grouping).await?;
    // Set when a stop is first seen: in-flight records have until then to finish.
    let mut grace_ends: Option<tokio::time::Instant> = None;
    // A batch job's stop (not a shutdown) still gives every item a result: those not run say
    // why, and those in flight past the grace period are cut off and say so too.
    let mut not_run: Option<NotRun> = None;
    loop {
        // Read ahead as far as the window allows (grouping), else one record when it can
        // start at once; then start what the concurrency allows.
        if stop.is_stopped() && stop.reason() != Some(StopReason::LeaseLost) {
            // Records grouped ahead are written only after the older ones they overtook: those
            // start too (and only those), so that everything that ran is written.
            while pipeline.may_dispatch()
                && pipeline
                    .lookahead
                    .oldest()
                    .is_some_and(|seq| seq < pipeline.started_below)
            {
                let Some((seq, record)) = pipeline.lookahead.take_oldest() else {
                    break;
                };
                start_record(&mut pipeline, &ctx, seq, record);
            }
        }
        while !stop.is_stopped() {
            if pipeline.may_read() {
                match pipeline.input.next().await? {
                    Some((file_index, line_no, line)) => pipeline.read(file_index, line_no, line),
                    None => pipeline.input_done = true,
                }
                continue;
            }
            if !pipeline.may_dispatch() {
                break;
            }
            let Some((seq, record)) = pipeline.lookahead.take() else {
                break;
            };
            start_record(&mut pipeline, &ctx, seq, record);
        }
        pipeline.exhausted = pipeline.input_done && pipeline.lookahead.is_empty();
        if let Some(chunk) = job.chunk.filter(|_| pipeline.exhausted) {
            chunk.input_read.cancel();
        }
        if stop.is_stopped() && not_run.is_none() && spec.answers_every_line() {
            not_run = match stop.reason() {
                Some(StopReason::Timeout) => Some(NotRun::TimedOut),
                Some(StopReason::User) => Some(NotRun::Stopped),
                _ => None,
            };
        }
        if let Some(why) = not_run {
            pipeline.fill_not_run(&ctx, why).await?;
        }
        if stop.is_stopped() && grace_ends.is_none() {
            grace_ends = Some(tokio::time::Instant::now() + engine.config.shutdown_grace);
        }
        // A chunk with nothing of its own in flight and input left waits for the instance's
        // other chunk to free a slot of the budget they share.
        let waits_for_room = job.chunk.is_some()
            && pipeline.inflight.is_empty()
            && !pipeline.exhausted
            && !stop.is_stopped();
        let next = tokio::select! {
            next = pipeline.inflight.next(), if !waits_for_room => next,
            _ = async { if let Some(chunk) = job.chunk { chunk.room_freed().await } }, if waits_for_room => continue,
            // A stop wakes the loop so that it stops dispatching even while records run.
            _ = stop.cancelled(), if !stop.is_stopped() => continue,
            _ = sleep_until_opt(grace_ends), if !pipeline.cut_off => {
                if not_run.is_some() {
                    // Their tasks end as cancelled and come back through `inflight`.
                    pipeline.cut_off = true;
                    for task in pipeline.tasks.values() {
                        task.abort();
                    }
                    continue;
                }
                pipeline.abandoned = pipeline.inflight.len();
                tracing::warn!(job = %spec.job_id, abandoned = pipeline.abandoned, "stop grace period over; abandoning records in flight");
                break;
            }
        };
        let Some((seq, file_index, unit, line, result)) = next else {
            break;
        };
        pipeline.tasks.remove(&seq);
        let outcome = match (result, not_run) {
            (Ok(outcome), _) => outcome,
            (Err(e), Some(why)) if e.is_cancelled() => {
                record::not_run(&ctx, &pipeline.relative[file_index], unit, &line, Ok(why))
            }
            // A panicked task must still leave its record in the output.
            (Err(join_error), _) => {
                let message = format!("internal error: {join_error}");
                record::not_run(
                    &ctx,
                    &pipeline.relative[file_index],
                    unit,
                    &line,
                    Err(&message),
                )
            }
        };
        pipeline.accept(
            seq,
            Ready {
                file_index,
                outcome,
            },
        );
        pipeline.write_ready().await?;
    }
    let counters = pipeline.finish().await?;
    pipeline.send_progress();
    let complete = pipeline.exhausted && !stop.is_stopped();
    Ok(RunEnd {
        counters,
        complete,
        unreachable: reachability.gave_up(),
        abandoned: pipeline.abandoned,
        tally: pipeline.tally.finish(complete, files),
    })
}

/// Starts record `seq` (file index, unit number, unit) as a task of the pipeline.
fn start_record(
    pipeline: &mut Pipeline<'_>,
    ctx: &Arc<RecordContext>,
    seq: u64,
    (file_index, line_no, line): (usize, u64, Bytes),
) {
    let relative = pipeline.relative[file_index].clone();
    // Boxed: the record's future is large, and tokio moves a task's future (and its output,
    // in the same slot) several times in its life; a box moves as a pointer.
    let task = Box::pin(process_record(ctx.clone(), relative, line_no, line.clone()));
    // The record's logs belong to the job's span.
    let task = tokio::spawn(task.instrument(tracing::Span::current()));
    pipeline.dispatch(seq, file_index, line_no, line, task);
}

/// A record task's result: (sequence, file index, unit number, unit, outcome).
type Inflight = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    u64,
                    usize,
                    u64,
                    Bytes,
                    Result<RecordOutcome, tokio::task::JoinError>,
                ),
            > + Send,
    >,
>;

/// The state of one run: input cursor, record tasks in flight, the reorder window and the
/// output files, with the counters as written.
struct Pipeline<'a> {
    job: &'a JobRun<'a>,
    input: InputCursor<'a>,
    output: OutputFiles<'a>,
    /// Each input file's path relative to its prefix, shared by its records' tasks.
    relative: Vec<Arc<str>>,
    inflight: FuturesUnordered<Inflight>,
    /// The tasks in `inflight` by sequence number, to cut them off at the end of a grace period.
    tasks: std::collections::HashMap<u64, tokio::task::AbortHandle>,
    /// The tasks in flight were aborted (a batch job's stop, past its grace period).
    cut_off: bool,
    /// A batch job's batches: which may run, and how far each has got.
    batches: Option<Batches>,
    /// Finished records by sequence number from `write_seq` on; `None` until that one ends.
    pending: VecDeque<Option<Ready>>,
    /// Records read and not started, with their sequence numbers: at most one unless
    /// `grouping`, and never more than the window.
    lookahead: group::Grouper<(usize, u64, Bytes)>,
    /// Records are read ahead and started grouped by prefix key (`groups_prefixes`).
    grouping: bool,
    /// The sequence number of the next record read: records are numbered in input order.
    next_seq: u64,
    /// One more than the newest record started.
    started_below: u64,
    write_seq: u64,
    /// Records in flight or waiting to be written, at most.
    window: u64,
    concurrency: usize,
    counters: Counters,
    /// Processing times of the records written by this run, for live percentiles.
    timings: Timings,
    /// Every record is read.
    input_done: bool,
    /// Every record is read and started.
    exhausted: bool,
    abandoned: usize,
    last_progress: Instant,
    metrics: JobMetrics,
    /// The analysis of what is written, while this run writes the whole output.
    tally: LiveTally,
}

impl<'a> Pipeline<'a> {
    /// Positions input and output at `resume_from` (reopening the output file at the
    /// recorded position when the checkpoint is inside one).
    async fn new(
        job: &'a JobRun<'a>,
        files: &'a [InputFile],
        resume_from: Checkpoint,
        grouping: bool,
    ) -> Result<Self, EngineError> {
        let (engine, spec) = (job.engine, job.spec);
        let concurrency = spec.concurrency.max(1);
        let first_file = usize::try_from(resume_from.file_index)
            .unwrap_or(usize::MAX)
            .min(files.len());
        let mut output = OutputFiles {
            engine,
            files,
            spec,
            store: job.store,
            current: None,
            timings: None,
            records_in_current: 0,
            done_below: first_file,
            chunk: job.chunk,
            stop: job.stop,
        };
        if first_file < files.len() && (resume_from.records_in_file > 0 || resume_from.position > 0)
        {
            let (position, timings) = (resume_from.position, resume_from.timings_position);
            output.open(first_file, position, timings).await?;
            output.records_in_current = resume_from.records_in_file;
        }
        Ok(Self {
            job,
            input: InputCursor {
                engine,
                spec,
                files,
                next_file: first_file,
                reader: None,
                skip_records: resume_from.records_in_file,
                chunk: job.chunk.map(|c| (c, c.plan.records)),
            },
            output,
            relative: files
                .iter()
                .map(|f| Arc::from(f.relative.as_str()))
                .collect(),
            inflight: FuturesUnordered::new(),
            tasks: std::collections::HashMap::new(),
            cut_off: false,
            batches: spec.batch.as_ref().map(|b| Batches {
                size: u64::from(b.batch_size.max(1)),
                at_once: u64::from(b.max_concurrent_batches.max(1)),
                first_open: 0,
                finished: VecDeque::new(),
            }),
            pending: VecDeque::new(),
            lookahead: group::Grouper::new(),
            grouping,
            next_seq: 0,
            started_below: 0,
            write_seq: 0,
            // Finished records wait for the slowest earlier one; the window bounds that memory.
            window: (concurrency as u64 * 8).clamp(256, 65_536),
            concurrency,
            counters: resume_from.counters,
            timings: Timings::new(),
            input_done: false,
            exhausted: false,
            abandoned: 0,
            last_progress: Instant::now(),
            metrics: JobMetrics::new(spec.job_id.as_str(), &spec.model_id),
            tally: LiveTally::for_run(spec, &resume_from, job.chunk.is_some()),
        })
    }

    /// Records in flight: this run's, or for a chunk, those of every chunk of the job that
    /// this instance runs (the next chunk starts while the last records of one finish).
    fn in_flight(&self) -> usize {
        match self.job.chunk {
            Some(chunk) => chunk.in_flight(),
            None => self.inflight.len(),
        }
    }

    /// Whether another record may start now.
    fn may_dispatch(&self) -> bool {
        let concurrency = match self.job.chunk {
            Some(chunk) => chunk.share(self.concurrency),
            None => self.concurrency,
        };
        self.in_flight() < concurrency
    }

    /// Whether to read the next record: grouping reads ahead as far as the window; otherwise
    /// a record is read only when it can start at once (a batch job's batches allowing),
    /// which keeps the dispatch order the input order.
    fn may_read(&self) -> bool {
        if self.input_done || self.next_seq - self.write_seq >= self.window {
            return false;
        }
        self.grouping
            || (self.lookahead.is_empty()
                && self.may_dispatch()
                && self
                    .batches
                    .as_ref()
                    .is_none_or(|b| b.may_start(self.next_seq)))
    }

    /// Numbers a record read (its place in the output) and holds it until it starts.
    fn read(&mut self, file_index: usize, unit: u64, line: Bytes) {
        let key = match self.grouping {
            true => group::prefix_key(&line),
            false => None,
        };
        self.lookahead
            .push(self.next_seq, key, (file_index, unit, line));
        self.next_seq += 1;
    }

    /// Takes a started record task; its result comes back from `inflight` with its sequence.
    fn dispatch(
        &mut self,
        seq: u64,
        file_index: usize,
        unit: u64,
        line: Bytes,
        task: tokio::task::JoinHandle<RecordOutcome>,
    ) {
        self.started_below = self.started_below.max(seq + 1);
        self.tasks.insert(seq, task.abort_handle());
        // Held until the record's result is taken (or abandoned): the slot it occupies in the
        // budget a chunk shares with the next chunk of its instance.
        let slot = self.job.chunk.map(|c| c.take_slot());
        self.metrics.in_flight(self.in_flight() + 1);
        let mut task = AbortOnDrop(task);
        self.inflight.push(Box::pin(async move {
            let result = (&mut task.0).await;
            drop(slot);
            (seq, file_index, unit, line, result)
        }));
    }

    /// After a batch job's stop: every unit not started gets its "not run" result, in order,
    /// as far as the reorder window allows.
    async fn fill_not_run(&mut self, ctx: &RecordContext, why: NotRun) -> Result<(), EngineError> {
        loop {
            // Records read ahead first: they come before any still unread.
            let (seq, (file_index, unit, line)) = match self.lookahead.take_oldest() {
                Some(held) => held,
                None if !self.input_done && self.next_seq - self.write_seq < self.window => {
                    let Some(read) = self.input.next().await? else {
                        self.input_done = true;
                        break;
                    };
                    self.next_seq += 1;
                    (self.next_seq - 1, read)
                }
                None => break,
            };
            let outcome = record::not_run(ctx, &self.relative[file_index], unit, &line, Ok(why));
            self.accept(
                seq,
                Ready {
                    file_index,
                    outcome,
                },
            );
            self.write_ready().await?;
        }
        self.exhausted = self.input_done && self.lookahead.is_empty();
        Ok(())
    }

    /// Puts a finished record in its slot of the reorder window.
    fn accept(&mut self, seq: u64, ready: Ready) {
        if let Some(batches) = &mut self.batches {
            batches.finished(seq);
        }
        let slot = (seq - self.write_seq) as usize;
        if self.pending.len() <= slot {
            self.pending.resize_with(slot + 1, || None);
        }
        self.pending[slot] = Some(ready);
    }

    /// Writes every record that is next in input order, then checkpoints and reports
    /// progress when due.
    async fn write_ready(&mut self) -> Result<(), EngineError> {
        while let Some(Some(_)) = self.pending.front() {
            let Some(Some(ready)) = self.pending.pop_front() else {
                break;
            };
            // Written before it is counted: a checkpoint taken while switching files must
            // not count a record its file position does not cover.
            let done = &ready.outcome;
            self.output
                .write(ready.file_index, &done.line, done.elapsed, &self.counters)
                .await?;
            let c = &mut self.counters;
            c.processed += 1;
            if done.success {
                c.success += 1;
            } else {
                c.error += 1;
            }
            c.input_tokens += done.input_tokens;
            c.output_tokens += done.output_tokens;
            self.metrics
                .written(done.success, done.input_tokens, done.output_tokens);
            if let Some(elapsed) = done.elapsed {
                self.timings.record(elapsed);
            }
            self.tally.add(done);
            self.write_seq += 1;
        }
        self.output.checkpoint_if_due(&self.counters).await?;
        self.metrics.in_flight(self.in_flight());
        if self.last_progress.elapsed() >= Duration::from_millis(50) {
            self.send_progress();
        }
        Ok(())
    }

    /// Publishes the counters and processing times as written so far.
    fn send_progress(&mut self) {
        let counters = self.counters;
        let timing = self.timings.summary();
        self.job.progress.send_modify(|p| {
            p.counters = counters;
            p.timing = timing;
        });
        self.last_progress = Instant::now();
    }

    /// Abandons what is still in flight (aborting the tasks; their results are not written)
    /// and leaves the output as the stop reason wants it; returns the final counters.
    async fn finish(&mut self) -> Result<Counters, EngineError> {
        self.inflight.clear();
        self.pending.clear();
        self.metrics.in_flight(self.in_flight());
        let counters = self.counters;
        let output = &mut self.output;
        match self.job.stop.reason() {
            // The job stays running: keep the open file open for the resume.
            Some(StopReason::Shutdown) => output.checkpoint(&counters).await?,
            // Taken over: whatever this run would still write is another instance's now. A
            // chunk's part is finished, to be refused and removed with its commit.
            Some(StopReason::LeaseLost) if output.chunk.is_none() => {}
            // Stopped before the end of the input: the files not reached get no output.
            Some(_) if !self.exhausted => {
                let end = output
                    .current
                    .as_ref()
                    .map_or(output.done_below, |(i, _)| i + 1);
                output.finish_below(end, &counters).await?;
                output.checkpoint(&counters).await?;
            }
            _ => {
                output.finish_below(output.files.len(), &counters).await?;
                output.checkpoint(&counters).await?;
            }
        }
        Ok(counters)
    }
}

/// Processing times in microseconds, 1 µs to one hour at 2 significant digits (1% error in
/// a percentile; a few KiB whatever the record count).
struct Timings(Option<hdrhistogram::Histogram<u64>>);

impl Timings {
    fn new() -> Self {
        Self(hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2).ok())
    }

    fn record(&mut self, elapsed: Duration) {
        if let Some(h) = &mut self.0 {
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            h.saturating_record(micros.max(1));
        }
    }

    fn summary(&self) -> Option<TimingSummary> {
        let h = self.0.as_ref().filter(|h| !h.is_empty())?;
        let seconds = |micros: u64| micros as f64 / 1e6;
        Some(TimingSummary {
            count: h.len(),
            mean: h.mean() / 1e6,
            p50: seconds(h.value_at_quantile(0.5)),
            p90: seconds(h.value_at_quantile(0.9)),
            p99: seconds(h.value_at_quantile(0.99)),
        })
    }
}

/// A batch job's batches: `size` consecutive units each, at most `at_once` of them started
/// and not finished. Sequence numbers count from the start of this run.
struct Batches {
    size: u64,
    at_once: u64,
    /// The oldest batch with an unfinished unit.
    first_open: u64,
    /// Units finished in each batch from `first_open` on.
    finished: VecDeque<u64>,
}

impl Batches {
    fn may_start(&self, seq: u64) -> bool {
        seq / self.size < self.first_open + self.at_once
    }

    fn finished(&mut self, seq: u64) {
        let Some(slot) = (seq / self.size).checked_sub(self.first_open) else {
            return;
        };
        let slot = slot as usize;
        if self.finished.len() <= slot {
            self.finished.resize(slot + 1, 0);
        }
        self.finished[slot] += 1;
        while self.finished.front() == Some(&self.size) {
            self.finished.pop_front();
            self.first_open += 1;
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_summarise_within_their_precision() {
        let mut t = Timings::new();
        assert_eq!(t.summary(), None);
        for _ in 0..98 {
            t.record(Duration::from_millis(10));
        }
        t.record(Duration::from_millis(500));
        t.record(Duration::from_secs(2));
        let s = t.summary().expect("a summary once something is recorded");
        assert_eq!(s.count, 100);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.01;
        assert!(close(s.p50, 0.010) && close(s.p90, 0.010), "{s:?}");
        assert!(close(s.p99, 0.5), "{s:?}");
        assert!(close(s.mean, (0.98 + 0.5 + 2.0) / 100.0), "{s:?}");
    }

    #[test]
    fn batches_open_as_earlier_ones_finish() {
        let mut b = Batches {
            size: 3,
            at_once: 2,
            first_open: 0,
            finished: VecDeque::new(),
        };
        assert!(b.may_start(5) && !b.may_start(6));
        // Batch 1 finishing first opens nothing: batch 0 is still running.
        for seq in [3, 4, 5, 0, 1] {
            b.finished(seq);
        }
        assert!(!b.may_start(6));
        b.finished(2);
        assert!(
            b.may_start(11) && !b.may_start(12),
            "batches 0 and 1 done: 2 and 3 may run"
        );
    }
}
