//! Resumable object reads: a GET body that breaks partway (connection reset, 5xx or timeout
//! mid-stream) is requested again from the first byte not yet delivered, pinned to the first
//! response's ETag and version, so a transient fault costs a retry instead of the job.
//!
//! `object_store` retries whole requests and, for HTTP stores, some body errors, but its
//! retry budget (count and `retry_timeout`) is counted from the first request: a large input
//! read slowly by the record pipeline outlives it, and the client's request timeout cuts
//! long-lived bodies on schedule. Here each resume is a fresh request, and the budget is
//! consecutive faults without progress.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, GetResult, GetResultPayload, ObjectMeta, ObjectStore};

use crate::StorageError;

/// A local file is read this much at a time, each read on a blocking thread. object_store's
/// own file stream reads 8 KiB per hand-off to a blocking thread: for a JSONL input the
/// hand-offs cost more than checking or running the lines they hold.
const FILE_CHUNK: u64 = 256 * 1024;

/// The body of a GET: a local file in `FILE_CHUNK` pieces, any other store's stream as is.
fn body(result: GetResult) -> BoxStream<'static, object_store::Result<Bytes>> {
    match result.payload {
        GetResultPayload::File(file, path) => file_chunks(file, path, result.range),
        GetResultPayload::Stream(stream) => stream,
    }
}

/// The bytes `range` of a local file, read in `FILE_CHUNK` pieces.
fn file_chunks(
    file: std::fs::File,
    path: std::path::PathBuf,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let start = Some(range.start);
    let left = range.end.saturating_sub(range.start);
    futures::stream::try_unfold((file, start, left), move |(file, start, left)| {
        let path = path.clone();
        async move {
            if left == 0 {
                return Ok(None);
            }
            let want = left.min(FILE_CHUNK);
            // Allocated here, not on the blocking thread: the chunk is freed where its lines
            // are used, and the allocator keeps a freed block with the thread that made it.
            let mut buf = Vec::with_capacity(want as usize);
            let read = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut file = file;
                if let Some(start) = start {
                    file.seek(SeekFrom::Start(start))?;
                }
                (&mut file).take(want).read_to_end(&mut buf)?;
                Ok::<_, std::io::Error>((buf, file))
            })
            .await;
            let local =
                |source: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!("{}: {source}", path.display()).into(),
                };
            let (buf, file) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => return Err(local(e.into())),
                Err(e) => return Err(local(e.into())),
            };
            if buf.is_empty() {
                // The file is shorter than it was: the reader sees the body end early.
                return Ok(None);
            }
            let left = left - buf.len() as u64;
            Ok(Some((Bytes::from(buf), (file, None, left))))
        }
    })
    .boxed()
}

/// How often and how patiently a broken read is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadRetry {
    /// Consecutive faults without a byte of progress before the read fails.
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ReadRetry {
    fn default() -> Self {
        Self {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReadRetry {
    /// The pause before the `failures`-th consecutive resume (1-based): doubling, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// One object read as a sequence of chunks, resumed after transient faults.
pub(crate) struct ResumingRead {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    uri: String,
    retry: ReadRetry,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    /// The object as the first response described it; every resume must match it.
    meta: ObjectMeta,
    /// The next byte of the object to deliver.
    offset: u64,
    /// Consecutive faults since the last chunk that made progress.
    failures: u32,
}

impl ResumingRead {
    /// Starts reading the object from byte `start` to its end. Errors of this first request
    /// are not resumed: `object_store` has already retried it.
    pub(crate) async fn open(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        uri: String,
        retry: ReadRetry,
        if_match: Option<String>,
        start: u64,
    ) -> Result<Self, StorageError> {
        let options = GetOptions {
            if_match,
            range: (start > 0).then_some(GetRange::Offset(start)),
            ..GetOptions::default()
        };
        let result = match store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::NotFound { uri });
            }
            Err(object_store::Error::Precondition { source, .. }) => {
                return Err(StorageError::InputChanged {
                    uri,
                    reason: format!("not the version listed: {source}"),
                });
            }
            Err(source) => return Err(StorageError::Store { uri, source }),
        };
        let offset = result.range.start;
        let meta = result.meta.clone();
        Ok(Self {
            store,
            path,
            uri,
            retry,
            stream: body(result),
            meta,
            offset,
            failures: 0,
        })
    }

    /// The object's size as the first response described it.
    pub(crate) fn size(&self) -> u64 {
        self.meta.size
    }

    /// The reader as a stream of chunks; it ends after the first error.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Bytes, StorageError>> {
        futures::stream::try_unfold(self, |mut read| async move {
            Ok(read.next_chunk().await?.map(|chunk| (chunk, read)))
        })
        .boxed()
    }

    /// The next chunk of the object, or `None` after its last byte.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        loop {
            let fault = match self.stream.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => {
                    self.offset += chunk.len() as u64;
                    self.failures = 0;
                    return Ok(Some(chunk));
                }
                // A body cut short without an error is a fault too, not the end of the file.
                None if self.offset < self.meta.size => Fault::EndedEarly,
                None => return Ok(None),
                Some(Err(e)) if is_transient(&e) => Fault::Error(e),
                Some(Err(source)) => {
                    return Err(StorageError::Store {
                        uri: self.uri.clone(),
                        source,
                    });
                }
            };
            self.resume(fault).await?;
        }
    }

    /// Replaces the broken stream with one from `offset`, retrying with backoff until a
    /// request succeeds or the budget is spent.
    async fn resume(&mut self, mut fault: Fault) -> Result<(), StorageError> {
        loop {
            if self.offset >= self.meta.size {
                // Every byte arrived before the break; a range from the end would be invalid.
                self.stream = futures::stream::empty().boxed();
                return Ok(());
            }
            self.failures += 1;
            if self.failures > self.retry.max_retries {
                return Err(StorageError::ReadFailed {
                    uri: self.uri.clone(),
                    offset: self.offset,
                    retries: self.retry.max_retries,
                    reason: fault.to_string(),
                });
            }
            let delay = self.retry.backoff(self.failures);
            tracing::warn!(
                uri = %self.uri,
                offset = self.offset,
                attempt = self.failures,
                delay_ms = delay.as_millis() as u64,
                "input read broke ({fault}); resuming",
            );
            tokio::time::sleep(delay).await;
            match self.store.get_opts(&self.path, self.resume_options()).await {
                Ok(result) => {
                    self.check_same_object(&result)?;
                    self.stream = body(result);
                    return Ok(());
                }
                Err(
                    e @ (object_store::Error::Precondition { .. }
                    | object_store::Error::NotFound { .. }),
                ) => return Err(self.changed(e.to_string())),
                Err(e) if is_transient(&e) => fault = Fault::Error(e),
                Err(source) => {
                    return Err(StorageError::Store {
                        uri: self.uri.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// The rest of the object, only if it is still the version the first response read.
    fn resume_options(&self) -> GetOptions {
        GetOptions {
            range: Some(GetRange::Bounded(self.offset..self.meta.size)),
            if_match: self.meta.e_tag.clone(),
            // Without an ETag the modification time is the best precondition there is.
            if_unmodified_since: match self.meta.e_tag {
                None => Some(self.meta.last_modified),
                Some(_) => None,
            },
            version: self.meta.version.clone(),
            ..GetOptions::default()
        }
    }

    /// Guards against stores that ignore preconditions or ranges.
    fn check_same_object(&self, result: &GetResult) -> Result<(), StorageError> {
        let (was, now) = (&self.meta, &result.meta);
        if was.e_tag.is_some() && now.e_tag != was.e_tag {
            return Err(self.changed(format!(
                "ETag {} became {}",
                was.e_tag.as_deref().unwrap_or("-"),
                now.e_tag.as_deref().unwrap_or("none")
            )));
        }
        if was.version.is_some() && now.version != was.version {
            return Err(self.changed("its version changed".into()));
        }
        if now.size != was.size {
            return Err(self.changed(format!(
                "its size went from {} to {} bytes",
                was.size, now.size
            )));
        }
        if result.range.start != self.offset {
            return Err(StorageError::ReadFailed {
                uri: self.uri.clone(),
                offset: self.offset,
                retries: self.failures,
                reason: format!(
                    "the resumed request returned bytes {}..{}",
                    result.range.start, result.range.end
                ),
            });
        }
        Ok(())
    }

    fn changed(&self, reason: String) -> StorageError {
        StorageError::Changed {
            uri: self.uri.clone(),
            offset: self.offset,
            reason,
        }
    }
}

/// Why a stream needs resuming.
enum Fault {
    Error(object_store::Error),
    EndedEarly,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Error(e) => e.fmt(f),
            Fault::EndedEarly => f.write_str("the response body ended early"),
        }
    }
}

/// Body and transport failures are `Generic` in `object_store`; precondition, not-found,
/// permission and configuration errors will not heal by asking again.
fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

#[cfg(test)]
mod tests;
