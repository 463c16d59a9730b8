//! Jobs shared by instances (`batchd serve` instances on one Postgres): a Bedrock job's or
//! an OpenAI batch's input planned as chunks of records located by byte offset, each chunk run
//! under its lease into an output part of its own named by its fencing token, and the parts
//! joined in input order into the job's output files once every chunk is done (for a batch,
//! then split into its output and error files as after a whole run).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use batchd_backends::ModelBackend;
use batchd_core::{Checkpoint, ChunkLease, ChunkPlan, ChunkState, Counters, JobStatus};
use batchd_storage::{StorageError, StorageUri};
use batchd_store::{JobStore, now_ms};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::run::{self, RunEnd, keeps_timings, output_uri, timings_uri};
use crate::{Engine, EngineError, JobOutcome, JobRun, JobSpec, Progress, StopReason, StopSignal};

/// One chunk's run: where its records are and where its output goes.
#[derive(Debug, Clone)]
pub struct ChunkRun {
    pub(crate) plan: ChunkPlan,
    pub(crate) part: StorageUri,
    pub(crate) timings_part: StorageUri,
    /// Live instances: the model's concurrency is divided among them.
    instances: Arc<AtomicUsize>,
    /// Records in flight in every chunk of the job this instance runs, and the signal that
    /// one of them ended.
    in_flight: Arc<AtomicUsize>,
    room: Arc<tokio::sync::Notify>,
    /// Cancelled once every record of the chunk has been started.
    pub(crate) input_read: CancellationToken,
}

/// A record's place in a chunk's in-flight budget, given back when dropped.
pub(crate) struct Slot(Arc<AtomicUsize>, Arc<tokio::sync::Notify>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        // A permit is kept if no run waits yet: a wake-up is never lost, at worst spare.
        self.1.notify_one();
    }
}

impl ChunkRun {
    fn new(spec: &JobSpec, claim: &ChunkClaim, terms: &ChunkTerms) -> Self {
        let lease = &claim.lease;
        Self {
            plan: lease.plan,
            part: part_uri(spec, lease.index, lease.fence, "out"),
            timings_part: part_uri(spec, lease.index, lease.fence, "timings"),
            instances: terms.instances.clone(),
            in_flight: terms.in_flight.clone(),
            room: terms.room.clone(),
            input_read: claim.input_read.clone(),
        }
    }

    pub(crate) fn take_slot(&self) -> Slot {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Slot(self.in_flight.clone(), self.room.clone())
    }

    /// Returns once a record of any of the job's chunks here has ended.
    pub(crate) async fn room_freed(&self) {
        self.room.notified().await;
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// This instance's share of `concurrency` (at least 1), as the instance count is now:
    /// together the instances keep a model's limit.
    pub(crate) fn share(&self, concurrency: usize) -> usize {
        (concurrency / self.instances.load(Ordering::Relaxed).max(1)).max(1)
    }
}

/// `<out>/<jobId>.parts/`: beside the job's folder, so nothing that reads the folder sees them.
fn parts_dir(spec: &JobSpec) -> StorageUri {
    spec.output.join(&format!("{}.parts/", spec.job_id))
}

/// A chunk's part under one fencing token: a holder that lost its lease never writes over
/// the part of the one that took it over.
fn part_uri(spec: &JobSpec, index: u64, fence: i64, kind: &str) -> StorageUri {
    spec.output
        .join(&format!("{}.parts/{index:08}-{fence}.{kind}", spec.job_id))
}

/// How a chunk's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkEnd {
    /// Committed under its token with these counters (fewer records than planned after a stop).
    Committed(Counters),
    /// Another instance took the chunk over: the commit was refused and the part removed.
    Refused,
    /// Given back unfinished (a shutdown): another instance may claim it at once.
    Released,
}

/// How long a lease lasts, and how often its holder renews it (and reports progress).
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    pub lease: Duration,
}

impl LeaseTimes {
    /// How long after asking for a lease (or its renewal) its holder may still write: a tenth
    /// of the lease is left for clocks that differ between instances.
    pub fn writes_for(&self) -> Duration {
        self.lease - self.lease / 10
    }
}

/// What a chunk's run shares with the rest of its instance: the lease times, the count of
/// live instances (kept current by the scheduler's heartbeat) that share the model, and the
/// records in flight in the job's chunks here (one chunk's last records and the next's first
/// share the instance's part of the model's concurrency).
#[derive(Debug, Clone)]
pub struct ChunkTerms {
    pub times: LeaseTimes,
    pub instances: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
    pub room: Arc<tokio::sync::Notify>,
}

/// A claimed chunk to run, and the signal its run gives once all its records have started
/// (the time to claim the next one).
#[derive(Debug, Clone)]
pub struct ChunkClaim {
    pub lease: ChunkLease,
    pub input_read: CancellationToken,
}

impl LeaseTimes {
    /// A third of the lease, and at least once a second so counters and stops move quickly.
    pub fn renew_every(&self) -> Duration {
        (self.lease / 3).min(Duration::from_secs(1))
    }

    pub fn until(&self) -> i64 {
        now_ms() + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2)
    }
}

/// Splits files into chunks of `per_chunk` records, fed their bytes in order.
struct Planner {
    per_chunk: u64,
    file_index: u64,
    plans: Vec<ChunkPlan>,
    /// Bytes seen so far, and where the current line starts.
    offset: u64,
    line_start: u64,
    /// The current line's number (1-based) and whether it has a non-blank byte yet.
    line_no: u64,
    line_has_text: bool,
    /// The chunk being filled: its start and its records so far.
    open: Option<ChunkPlan>,
}

impl Planner {
    fn new(per_chunk: u64) -> Self {
        Self {
            per_chunk: per_chunk.max(1),
            file_index: 0,
            plans: Vec::new(),
            offset: 0,
            line_start: 0,
            line_no: 1,
            line_has_text: false,
            open: None,
        }
    }

    fn start_file(&mut self, file_index: u64) {
        self.file_index = file_index;
        self.offset = 0;
        self.line_start = 0;
        self.line_no = 1;
        self.line_has_text = false;
    }

    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (line, ended) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            self.line_has_text |= !line.iter().all(u8::is_ascii_whitespace);
            let used = line.len() + usize::from(ended);
            self.offset += used as u64;
            rest = &rest[used..];
            if ended {
                self.end_line();
            }
        }
    }

    /// A line ended (at its newline, or at the end of the file).
    fn end_line(&mut self) {
        if self.line_has_text {
            let chunk = self.open.get_or_insert(ChunkPlan {
                file_index: self.file_index,
                start_offset: self.line_start,
                first_line: self.line_no,
                records: 0,
            });
            chunk.records += 1;
            if chunk.records == self.per_chunk {
                self.plans.extend(self.open.take());
            }
        }
        self.line_start = self.offset;
        self.line_no += 1;
        self.line_has_text = false;
    }

    fn end_file(&mut self) {
        if self.offset > self.line_start {
            self.end_line();
        }
        self.plans.extend(self.open.take());
    }
}

impl Engine {
    /// Splits the job's validated files into chunks of `per_chunk` records (blank lines are
    /// not records), reading every byte once without parsing. The same files always give the
    /// same plan, so instances that plan at once agree.
    pub async fn plan_chunks(
        &self,
        spec: &JobSpec,
        store: &dyn JobStore,
        per_chunk: u64,
    ) -> Result<Vec<ChunkPlan>, EngineError> {
        let files = self.validated_files(spec, store).await?;
        let mut planner = Planner::new(per_chunk);
        for (index, file) in files.iter().enumerate() {
            planner.start_file(index as u64);
            let mut bytes = self.storage.read_bytes(&file.uri).await?;
            while let Some(chunk) = bytes.next().await {
                planner.feed(&chunk?);
            }
            planner.end_file();
        }
        Ok(planner.plans)
    }

    /// Runs the records of the chunk `claim` holds into its part, renewing the lease and
    /// reporting the chunk's counters as it goes, then commits it under its fencing token.
    /// `stop` is the job's: a user stop or timeout ends the chunk early (committed with the
    /// records done), a shutdown gives it back. A renewal refused because another instance
    /// took the chunk over stops it too, and its commit is then refused.
    pub async fn run_chunk(
        &self,
        spec: &JobSpec,
        backend: Arc<dyn ModelBackend>,
        store: &dyn JobStore,
        claim: &ChunkClaim,
        terms: &ChunkTerms,
        stop: &StopSignal,
    ) -> Result<ChunkEnd, EngineError> {
        let lease = &claim.lease;
        let leases = store.leases();
        // Only the chunk's own file is checked: a job may have many.
        let index = usize::try_from(lease.plan.file_index).unwrap_or(usize::MAX);
        let recorded = store.job_files(&spec.job_id).await?;
        let count = recorded.len();
        let file = match recorded.into_iter().nth(index) {
            Some(f) => self.verified_file(f).await,
            None => Err(EngineError::Input(format!(
                "chunk {} names input file {index}; the job has {count}",
                lease.index
            ))),
        };
        let file = match file {
            Ok(file) => file,
            Err(e) => {
                leases.release_chunk(lease).await?;
                return Err(e);
            }
        };
        let chunk = ChunkRun::new(spec, claim, terms);
        let chunk_stop = StopSignal::new();
        let (progress, watcher) =
            watch::channel(Progress::new(JobStatus::InProgress, Counters::default()));
        let job = JobRun {
            engine: self,
            spec,
            store,
            progress: &progress,
            stop: &chunk_stop,
            chunk: Some(&chunk),
        };
        let done = CancellationToken::new();
        let records = async {
            let end = run::run_records(
                &job,
                std::slice::from_ref(&file),
                Checkpoint::default(),
                backend,
            )
            .await;
            done.cancel();
            end
        };
        let renewals = keep_chunk(
            store,
            lease,
            terms.times,
            stop,
            &chunk_stop,
            &watcher,
            &done,
        );
        let (end, ()) = tokio::join!(records, renewals);
        let end: RunEnd = match end {
            Ok(end) => end,
            Err(e) => {
                leases.release_chunk(lease).await?;
                return Err(e);
            }
        };
        if chunk_stop.reason() == Some(StopReason::Shutdown) {
            leases.release_chunk(lease).await?;
            return Ok(ChunkEnd::Released);
        }
        if leases.commit_chunk(lease, &end.counters).await? {
            return Ok(ChunkEnd::Committed(end.counters));
        }
        tracing::warn!(
            job = %spec.job_id,
            chunk = lease.index,
            fence = lease.fence,
            "late commit refused: another instance took this chunk over; removing this run's part"
        );
        for uri in [&chunk.part, &chunk.timings_part] {
            match self.storage.delete(uri).await {
                Ok(()) | Err(StorageError::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(job = %spec.job_id, error = %e, "cannot remove a refused part")
                }
            }
        }
        Ok(ChunkEnd::Refused)
    }

    /// Ends a chunked job once no chunk is held: every file's output joined from its chunks'
    /// committed parts in input order, the manifest and analysis, the final status (`reason`
    /// as the job's stop: a user stop, a timeout, or none), then the parts removed.
    pub async fn finish_chunked(
        &self,
        spec: &JobSpec,
        store: &dyn JobStore,
        reason: Option<StopReason>,
    ) -> Result<JobOutcome, EngineError> {
        let started = std::time::Instant::now();
        let chunks = store.leases().chunks(&spec.job_id).await?;
        let files = self.validated_files(spec, store).await?;
        for (index, file) in files.iter().enumerate() {
            let done: Vec<_> = chunks
                .iter()
                .filter(|c| c.plan.file_index == index as u64 && c.state == ChunkState::Done)
                .collect();
            let mut kinds = vec![("out", output_uri(spec, file))];
            if keeps_timings(spec) {
                kinds.push(("timings", timings_uri(spec, file)));
            }
            for (kind, target) in kinds {
                let mut out = self.storage.create(&target)?;
                for c in &done {
                    let part = part_uri(spec, c.index, c.fence, kind);
                    let mut bytes = match self.storage.read_bytes(&part).await {
                        Ok(bytes) => bytes,
                        // A chunk stopped before its first record wrote no part.
                        Err(StorageError::NotFound { .. }) if c.counters.processed == 0 => continue,
                        // Committed output that is gone cannot be made up: the job fails.
                        Err(StorageError::NotFound { uri }) => {
                            return Err(EngineError::Input(format!(
                                "chunk {} ({} records) was committed but its part {uri} is gone",
                                c.index, c.counters.processed
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    while let Some(chunk) = bytes.next().await {
                        out.write(&chunk?).await?;
                    }
                }
                out.finish().await?;
            }
        }
        let job = store
            .get(&spec.job_id)
            .await?
            .ok_or_else(|| batchd_store::StoreError::NotFound(spec.job_id.clone()))?;
        let complete = reason.is_none()
            && chunks
                .iter()
                .all(|c| c.state == ChunkState::Done && c.counters.processed == c.plan.records);
        if complete {
            store.mark_finalizing(&spec.job_id).await?;
        }
        if spec.openai.is_some()
            && !reason.is_some_and(StopReason::goes_on)
            && let Err(e) = self.publish_openai_files(spec, store, &files).await
        {
            // As after a whole run: without its files the batch cannot be read, so it fails.
            return Err(EngineError::Input(format!(
                "cannot publish the batch's output and error files: {e}"
            )));
        }
        let stop = StopSignal::new();
        if let Some(reason) = reason {
            stop.stop(reason);
        }
        let (progress, _) = watch::channel(Progress::new(job.status, job.counters));
        let run = JobRun {
            engine: self,
            spec,
            store,
            progress: &progress,
            stop: &stop,
            chunk: None,
        };
        let mut end = RunEnd {
            counters: job.counters,
            complete,
            unreachable: 0,
            abandoned: 0,
            tally: None,
        };
        let (status, message) = self.end_execution(&run, &mut end).await?;
        match self.storage.list_files(&parts_dir(spec)).await {
            Ok(parts) => {
                for part in parts {
                    if let Err(e) = self.storage.delete(&part.uri).await {
                        tracing::warn!(job = %spec.job_id, error = %e, "cannot remove a part");
                    }
                }
            }
            Err(e) => tracing::warn!(job = %spec.job_id, error = %e, "cannot list the parts"),
        }
        Ok(JobOutcome {
            status,
            counters: job.counters,
            message: Some(message),
            validation: None,
            elapsed: started.elapsed(),
            output_dir: spec.output.join(spec.job_id.as_str()),
        })
    }
}

/// Renews a running chunk's lease with its live counters until `done`; passes the job's stop
/// on to the chunk, and stops the chunk when the job is stopped elsewhere (`Stopping` in the
/// store) or when the lease is lost.
async fn keep_chunk(
    store: &dyn JobStore,
    lease: &ChunkLease,
    times: LeaseTimes,
    job_stop: &StopSignal,
    chunk_stop: &StopSignal,
    watcher: &watch::Receiver<Progress>,
    done: &CancellationToken,
) {
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = job_stop.cancelled(), if !chunk_stop.is_stopped() => {
                chunk_stop.stop(job_stop.reason().unwrap_or(StopReason::Shutdown));
                continue;
            }
            _ = tokio::time::sleep(times.renew_every()) => {}
        }
        let counters = watcher.borrow().counters;
        match store
            .leases()
            .renew_chunk(lease, &counters, times.until())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(job = %lease.job, chunk = lease.index, "chunk lease lost; stopping its run");
                chunk_stop.stop(StopReason::LeaseLost);
                return;
            }
            // The lease may still be renewed next time; if not, it is lost as above.
            Err(e) => tracing::warn!(job = %lease.job, error = %e, "cannot renew a chunk lease"),
        }
        match store.get(&lease.job).await {
            Ok(Some(job)) if job.status == JobStatus::Stopping => {
                chunk_stop.stop(StopReason::User);
            }
            Ok(Some(job)) if job.job_expiration_ms.is_some_and(|t| t <= now_ms()) => {
                chunk_stop.stop(StopReason::Timeout);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(bytes: &[&[u8]], per_chunk: u64) -> Vec<(u64, u64, u64)> {
        let mut planner = Planner::new(per_chunk);
        planner.start_file(0);
        for b in bytes {
            planner.feed(b);
        }
        planner.end_file();
        planner
            .plans
            .iter()
            .map(|p| (p.start_offset, p.first_line, p.records))
            .collect()
    }

    #[test]
    fn chunks_start_at_record_lines_and_skip_blank_ones() {
        let text = b"a\n\n  \nbb\r\nccc\ndd\n\ne";
        // Records: line 1 at 0, line 4 at 6, line 5 at 10, line 6 at 14, line 8 at 18.
        assert_eq!(plan(&[text], 2), [(0, 1, 2), (10, 5, 2), (18, 8, 1)]);
        assert_eq!(plan(&[text], 10), [(0, 1, 5)]);
        // However the bytes arrive.
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(plan(&pieces, 2), [(0, 1, 2), (10, 5, 2), (18, 8, 1)]);
    }

    #[test]
    fn a_file_of_blank_lines_has_no_chunk_and_files_number_their_chunks() {
        assert!(plan(&[b"\n \n\n"], 3).is_empty());
        assert!(plan(&[b""], 3).is_empty());
        let mut planner = Planner::new(2);
        for (i, text) in [&b"x\ny\nz\n"[..], b"\n", b"w"].iter().enumerate() {
            planner.start_file(i as u64);
            planner.feed(text);
            planner.end_file();
        }
        let files: Vec<_> = planner
            .plans
            .iter()
            .map(|p| (p.file_index, p.start_offset, p.records))
            .collect();
        assert_eq!(files, [(0, 0, 2), (0, 4, 1), (2, 0, 1)]);
    }
}
