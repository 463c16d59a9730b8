//! Output files that show their lines while a job runs and can be resumed after a crash.
//!
//! - Local files (and `s3://` mapped under the data dir): lines are appended to the final
//!   file; [`OutputSink::commit`] flushes and syncs it and returns its length. Resuming
//!   truncates the file back to the committed length.
//! - Object stores: lines are buffered and each commit writes the buffer as one part object
//!   `<file>.part-NNNNNN`; the position is the number of parts. [`OutputSink::finish`]
//!   concatenates the parts into the final object, then deletes them.
//!
//! Either way, what a commit returned is durable, and nothing after it is trusted on resume.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::{Storage, StorageError, StorageUri};

/// Object-store parts are written at most this often, unless the buffer grows past
/// `PART_BYTES` (each part is a request; local commits are cheap).
const PART_INTERVAL: Duration = Duration::from_secs(5);
const PART_BYTES: usize = 8 * 1024 * 1024;
const LOCAL_INTERVAL: Duration = Duration::from_millis(100);

pub struct OutputSink {
    uri: StorageUri,
    kind: SinkKind,
    last_commit: Instant,
}

enum SinkKind {
    Local {
        file: tokio::io::BufWriter<tokio::fs::File>,
        path: PathBuf,
        length: u64,
    },
    Parts {
        buffer: BytesMut,
        parts: u64,
    },
}

fn part_uri(uri: &StorageUri, index: u64) -> StorageUri {
    match uri {
        StorageUri::Local(p) => {
            let mut s = p.clone().into_os_string();
            s.push(format!(".part-{index:06}"));
            StorageUri::Local(s.into())
        }
        StorageUri::S3 { bucket, key } => StorageUri::S3 {
            bucket: bucket.clone(),
            key: format!("{key}.part-{index:06}"),
        },
    }
}

impl Storage {
    /// Opens `uri` for output, resuming at `position` (a value an earlier
    /// [`OutputSink::commit`] returned; 0 for a new file).
    pub async fn open_sink(
        &self,
        uri: &StorageUri,
        position: u64,
    ) -> Result<OutputSink, StorageError> {
        let io = |source| StorageError::Io {
            uri: uri.to_string(),
            source,
        };
        let kind = match self.local_path(uri)? {
            Some(path) => {
                if let Some(parent) = path.parent() {
                    tokio::fs::create_dir_all(parent).await.map_err(io)?;
                }
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&path)
                    .await
                    .map_err(io)?;
                let on_disk = file.metadata().await.map_err(io)?.len();
                if on_disk < position {
                    return Err(StorageError::Io {
                        uri: uri.to_string(),
                        source: std::io::Error::other(format!(
                            "output file has {on_disk} bytes, fewer than its checkpoint ({position})"
                        )),
                    });
                }
                // Lines after the checkpoint were not acknowledged: they will be written again.
                file.set_len(position).await.map_err(io)?;
                file.seek(std::io::SeekFrom::Start(position))
                    .await
                    .map_err(io)?;
                SinkKind::Local {
                    file: tokio::io::BufWriter::with_capacity(256 * 1024, file),
                    path,
                    length: position,
                }
            }
            None => SinkKind::Parts {
                buffer: BytesMut::new(),
                parts: position,
            },
        };
        Ok(OutputSink {
            uri: uri.clone(),
            kind,
            last_commit: Instant::now(),
        })
    }

    /// The local file behind `uri`, when it is on this machine's disk.
    pub(crate) fn local_path(&self, uri: &StorageUri) -> Result<Option<PathBuf>, StorageError> {
        match uri {
            StorageUri::Local(p) => Ok(Some(p.clone())),
            StorageUri::S3 { bucket, key } if self.config.s3_endpoint.is_none() => Ok(Some(
                self.config.data_dir.join("buckets").join(bucket).join(key),
            )),
            StorageUri::S3 { .. } => Ok(None),
        }
    }
}

impl OutputSink {
    pub fn uri(&self) -> &StorageUri {
        &self.uri
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        match &mut self.kind {
            SinkKind::Local { file, length, .. } => {
                *length += data.len() as u64;
                file.write_all(data)
                    .await
                    .map_err(|source| StorageError::Io {
                        uri: self.uri.to_string(),
                        source,
                    })
            }
            SinkKind::Parts { buffer, .. } => {
                buffer.extend_from_slice(data);
                Ok(())
            }
        }
    }

    /// Whether a commit is worth its cost now.
    pub fn commit_due(&self) -> bool {
        match &self.kind {
            SinkKind::Local { .. } => self.last_commit.elapsed() >= LOCAL_INTERVAL,
            SinkKind::Parts { buffer, .. } => {
                buffer.len() >= PART_BYTES
                    || (!buffer.is_empty() && self.last_commit.elapsed() >= PART_INTERVAL)
            }
        }
    }

    /// Makes everything written so far durable; returns the position to resume from.
    pub async fn commit(&mut self, storage: &Storage) -> Result<u64, StorageError> {
        self.last_commit = Instant::now();
        let io = |source| StorageError::Io {
            uri: self.uri.to_string(),
            source,
        };
        match &mut self.kind {
            SinkKind::Local { file, length, .. } => {
                file.flush().await.map_err(io)?;
                file.get_ref().sync_data().await.map_err(io)?;
                Ok(*length)
            }
            SinkKind::Parts { buffer, parts } => {
                if !buffer.is_empty() {
                    // The buffer is kept until the part is stored: a failed put loses nothing.
                    let part = Bytes::copy_from_slice(buffer);
                    storage.put(&part_uri(&self.uri, *parts), part).await?;
                    buffer.clear();
                    *parts += 1;
                }
                Ok(*parts)
            }
        }
    }

    /// Commits, then makes the final object whole (parts are concatenated). The parts stay
    /// until [`FinishedSink::cleanup`]: a caller records that the file is done first, so a
    /// crash in between can still redo the concatenation.
    pub async fn finish(mut self, storage: &Storage) -> Result<FinishedSink, StorageError> {
        let position = self.commit(storage).await?;
        let parts = match self.kind {
            SinkKind::Local { .. } => 0,
            SinkKind::Parts { .. } => {
                let mut writer = storage.create(&self.uri)?;
                for index in 0..position {
                    let part = storage.get(&part_uri(&self.uri, index)).await?;
                    writer.write(&part).await?;
                }
                writer.finish().await?;
                position
            }
        };
        Ok(FinishedSink {
            uri: self.uri,
            parts,
        })
    }

    /// The local path, for tests and diagnostics.
    pub fn local_file(&self) -> Option<&std::path::Path> {
        match &self.kind {
            SinkKind::Local { path, .. } => Some(path),
            SinkKind::Parts { .. } => None,
        }
    }
}

/// A finished output file whose part objects (if any) are still to be removed.
#[must_use = "call cleanup() once the file's completion is recorded"]
pub struct FinishedSink {
    uri: StorageUri,
    parts: u64,
}

impl FinishedSink {
    pub async fn cleanup(self, storage: &Storage) -> Result<(), StorageError> {
        for index in 0..self.parts {
            storage.delete(&part_uri(&self.uri, index)).await?;
        }
        Ok(())
    }
}
