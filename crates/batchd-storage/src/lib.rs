//! Where records come from and where output goes: local paths and `s3://bucket/key` URIs on
//! `object_store`, a streaming JSONL line reader, and output writers.
//!
//! - [`StorageUri`]: a parsed local path or `s3://` URI.
//! - [`Storage`]: built once from [`StorageConfig`]; lists `*.jsonl` inputs, opens
//!   [`LineReader`]s and byte streams, creates [`OutputWriter`]s and resumable [`OutputSink`]s, puts small
//!   objects (the manifest).
//!
//! With no S3 endpoint configured, `s3://bucket/key` is the local file
//! `<data-dir>/buckets/bucket/key`, so a single machine needs nothing but its disk.

mod lines;
mod resume;
mod sink;
mod uri;

pub use lines::LineReader;
pub use sink::{FinishedSink, OutputSink};
pub use uri::StorageUri;

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio::io::AsyncWriteExt;

use crate::resume::{ReadRetry, ResumingRead};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{uri}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{uri}: no such file or prefix")]
    NotFound { uri: String },
    #[error("{uri}: no *.{extension} files found under this prefix")]
    NoInputFiles {
        uri: String,
        extension: &'static str,
    },
    #[error("{uri}: {source}")]
    Store {
        uri: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{uri}: {source}")]
    Io {
        uri: String,
        #[source]
        source: std::io::Error,
    },
    /// A read broke and could not be resumed within the retry budget.
    #[error("{uri}: reading failed at byte {offset} after {retries} retries: {reason}")]
    ReadFailed {
        uri: String,
        offset: u64,
        retries: u32,
        reason: String,
    },
    /// An input file is not what the job validated: removed, rewritten or resized.
    #[error(
        "{uri}: the input file changed since the job validated it ({reason}); a job reads only \
         what it validated: start a new job for the new input"
    )]
    InputChanged { uri: String, reason: String },
    /// The object was replaced or deleted while it was being read.
    #[error(
        "{uri}: the object changed while it was being read (at byte {offset}): {reason}; \
         inputs must not change while a job runs"
    )]
    Changed {
        uri: String,
        offset: u64,
        reason: String,
    },
    #[error("{uri}: line {line} is longer than {limit} bytes")]
    LineTooLong {
        uri: String,
        line: u64,
        limit: usize,
    },
}

/// Storage settings, read from config and the environment once at start-up.
#[derive(Debug, Clone, Default)]
pub struct StorageConfig {
    /// Root of local state; `s3://` URIs map below `<data_dir>/buckets/` when no endpoint is set.
    pub data_dir: PathBuf,
    /// An S3 or S3-compatible endpoint (`http://127.0.0.1:9000`, `https://s3.amazonaws.com`).
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub s3_session_token: Option<String>,
}

impl StorageConfig {
    /// The folder `s3://bucket/key` maps below (`<data_dir>/buckets`), when there is no
    /// endpoint: what `batchd serve`'s S3 API serves.
    pub fn local_buckets(&self) -> Option<PathBuf> {
        self.s3_endpoint
            .is_none()
            .then(|| self.data_dir.join("buckets"))
    }
}

/// One input file of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub uri: StorageUri,
    /// Path relative to the input prefix (the file name when the input is one file); the
    /// output file is `<out>/<jobId>/<relative>.out`.
    pub relative: String,
    pub size: u64,
    /// The object's ETag when listed (for local files: inode, mtime and size): a job reads
    /// only this version of the file.
    pub version: Option<String>,
}

/// Object stores by location, built once and shared.
pub struct Storage {
    config: StorageConfig,
    local: Arc<LocalFileSystem>,
    s3: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    read_retry: ReadRetry,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Bytes of output buffered before an upload part is sent (S3's minimum part size).
const OUTPUT_PART_BYTES: usize = 5 * 1024 * 1024;

impl Storage {
    pub fn new(config: StorageConfig) -> Self {
        Self {
            config,
            local: Arc::new(LocalFileSystem::new()),
            s3: Mutex::new(HashMap::new()),
            read_retry: ReadRetry::default(),
        }
    }

    /// Storage whose `s3://<bucket>/` URIs go to `store` (tests: fault injection), with its
    /// own read retry policy.
    #[cfg(test)]
    pub(crate) fn with_s3_store(
        bucket: &str,
        store: Arc<dyn ObjectStore>,
        read_retry: ReadRetry,
    ) -> Self {
        let storage = Self {
            read_retry,
            ..Self::new(StorageConfig {
                s3_endpoint: Some("http://s3.invalid".into()),
                ..StorageConfig::default()
            })
        };
        storage
            .s3
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(bucket.to_owned(), store);
        storage
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// The store that holds `uri` and the object path inside it.
    fn resolve(
        &self,
        uri: &StorageUri,
    ) -> Result<(Arc<dyn ObjectStore>, ObjectPath), StorageError> {
        match uri {
            StorageUri::Local(path) => Ok((self.local.clone(), local_object_path(path, uri)?)),
            StorageUri::S3 { bucket, key } => match &self.config.s3_endpoint {
                None => {
                    let root = self.config.data_dir.join("buckets");
                    let path = root.join(bucket).join(key);
                    let object = local_object_path(&path, uri)?;
                    stays_below(&root, &path, uri)?;
                    Ok((self.local.clone(), object))
                }
                Some(endpoint) => {
                    let store = self.s3_store(bucket, endpoint, uri)?;
                    let path = ObjectPath::parse(key.trim_end_matches('/')).map_err(|e| {
                        StorageError::BadUri {
                            uri: uri.to_string(),
                            reason: e.to_string(),
                        }
                    })?;
                    Ok((store, path))
                }
            },
        }
    }

    fn s3_store(
        &self,
        bucket: &str,
        endpoint: &str,
        uri: &StorageUri,
    ) -> Result<Arc<dyn ObjectStore>, StorageError> {
        let mut stores = self
            .s3
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = stores.get(bucket) {
            return Ok(store.clone());
        }
        let c = &self.config;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(endpoint)
            .with_region(c.s3_region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_virtual_hosted_style_request(false)
            // 5xx, SlowDown and timeouts of idempotent requests (GET, HEAD, PUT of whole
            // objects and parts) are retried with backoff; a write that still fails returns
            // an error, so its records are never checkpointed as done.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 10,
                retry_timeout: std::time::Duration::from_secs(180),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(120)),
            )
            // After the client options, which would reset it.
            .with_allow_http(endpoint.starts_with("http://"));
        if let Some(v) = &c.s3_access_key_id {
            builder = builder.with_access_key_id(v);
        }
        if let Some(v) = &c.s3_secret_access_key {
            builder = builder.with_secret_access_key(v);
        }
        if let Some(v) = &c.s3_session_token {
            builder = builder.with_token(v);
        }
        let store: Arc<dyn ObjectStore> =
            Arc::new(builder.build().map_err(|source| StorageError::Store {
                uri: uri.to_string(),
                source,
            })?);
        stores.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    /// The input files of a job: `uri` itself when it is one object, else every `*.jsonl`
    /// below it as a prefix, sorted by path.
    pub async fn list_inputs(&self, uri: &StorageUri) -> Result<Vec<InputFile>, StorageError> {
        self.list_inputs_with(uri, "jsonl").await
    }

    /// [`Storage::list_inputs`] for files named `*.<extension>`.
    pub async fn list_inputs_with(
        &self,
        uri: &StorageUri,
        extension: &'static str,
    ) -> Result<Vec<InputFile>, StorageError> {
        let suffix = format!(".{extension}");
        let (store, path) = self.resolve(uri)?;
        let store_err = |source| StorageError::Store {
            uri: uri.to_string(),
            source,
        };
        if !uri.is_dir_like() {
            match store.head(&path).await {
                Ok(meta) => {
                    return Ok(vec![InputFile {
                        uri: uri.clone(),
                        relative: uri.file_name().unwrap_or("input.jsonl").to_owned(),
                        size: meta.size,
                        version: meta.e_tag,
                    }]);
                }
                Err(object_store::Error::NotFound { .. }) => {}
                // A local directory answers head() with an error other than NotFound.
                Err(_) if matches!(uri, StorageUri::Local(p) if p.is_dir()) => {}
                Err(e) if !matches!(uri, StorageUri::Local(_)) => return Err(store_err(e)),
                Err(_) => {}
            }
        }
        let mut metas: Vec<_> =
            store
                .list(Some(&path))
                .try_collect()
                .await
                .map_err(|e| match e {
                    object_store::Error::NotFound { .. } => StorageError::NotFound {
                        uri: uri.to_string(),
                    },
                    e => store_err(e),
                })?;
        if metas.is_empty() && !prefix_exists(uri) {
            return Err(StorageError::NotFound {
                uri: uri.to_string(),
            });
        }
        if metas.is_empty() && uri.file_name().is_some_and(|n| n.ends_with(&suffix)) {
            // A file that does not exist, not an empty folder.
            return Err(StorageError::NotFound {
                uri: uri.to_string(),
            });
        }
        metas.retain(|m| m.location.as_ref().ends_with(&suffix));
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        if metas.is_empty() {
            return Err(StorageError::NoInputFiles {
                uri: uri.to_string(),
                extension,
            });
        }
        Ok(files_below(uri, &path, metas))
    }

    /// Every object below the prefix `uri` (any name), sorted by path; an empty list when
    /// there is none. For reading a job's output folder.
    pub async fn list_files(&self, uri: &StorageUri) -> Result<Vec<InputFile>, StorageError> {
        let (store, path) = self.resolve(uri)?;
        let mut metas: Vec<_> = match store.list(Some(&path)).try_collect().await {
            Ok(metas) => metas,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(source) => {
                return Err(StorageError::Store {
                    uri: uri.to_string(),
                    source,
                });
            }
        };
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(files_below(uri, &path, metas))
    }

    /// Checks that an input file is still the one listed: there, same size, same version.
    pub async fn verify_input(&self, file: &InputFile) -> Result<(), StorageError> {
        let (store, path) = self.resolve(&file.uri)?;
        let changed = |reason: String| StorageError::InputChanged {
            uri: file.uri.to_string(),
            reason,
        };
        let meta = match store.head(&path).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(changed("it no longer exists".into()));
            }
            Err(source) => {
                return Err(StorageError::Store {
                    uri: file.uri.to_string(),
                    source,
                });
            }
        };
        if meta.size != file.size {
            return Err(changed(format!(
                "{} bytes, validated with {}",
                meta.size, file.size
            )));
        }
        if file.version.is_some() && meta.e_tag != file.version {
            return Err(changed(format!(
                "version {}, validated as {}",
                meta.e_tag.as_deref().unwrap_or("none"),
                file.version.as_deref().unwrap_or("none")
            )));
        }
        Ok(())
    }

    /// Opens a line reader on exactly the listed version of an input file (a conditional
    /// read on its ETag), failing with [`StorageError::InputChanged`] if it is not that file.
    pub async fn read_input(
        &self,
        file: &InputFile,
        max_line_bytes: usize,
    ) -> Result<LineReader, StorageError> {
        self.read_input_at(file, 0, 1, max_line_bytes).await
    }

    /// [`Storage::read_input`] from byte `offset`, which must start line `first_line`
    /// (1-based): the lines are numbered from there.
    pub async fn read_input_at(
        &self,
        file: &InputFile,
        offset: u64,
        first_line: u64,
        max_line_bytes: usize,
    ) -> Result<LineReader, StorageError> {
        let (store, path) = self.resolve(&file.uri)?;
        let uri = file.uri.to_string();
        let read = match ResumingRead::open(
            store,
            path,
            uri.clone(),
            self.read_retry,
            file.version.clone(),
            offset,
        )
        .await
        {
            Ok(read) => read,
            Err(StorageError::NotFound { uri }) => {
                return Err(StorageError::InputChanged {
                    uri,
                    reason: "it no longer exists".into(),
                });
            }
            Err(e) => return Err(e),
        };
        if read.size() != file.size {
            return Err(StorageError::InputChanged {
                uri,
                reason: format!("{} bytes, validated with {}", read.size(), file.size),
            });
        }
        Ok(LineReader::new(uri, read.into_stream(), max_line_bytes).numbered_from(first_line))
    }

    /// Opens a streaming line reader: memory stays bounded by the longest line. A read that
    /// breaks partway is resumed from the byte it reached, on the same object version.
    pub async fn read_lines(
        &self,
        uri: &StorageUri,
        max_line_bytes: usize,
    ) -> Result<LineReader, StorageError> {
        let (store, path) = self.resolve(uri)?;
        let read =
            ResumingRead::open(store, path, uri.to_string(), self.read_retry, None, 0).await?;
        Ok(LineReader::new(
            uri.to_string(),
            read.into_stream(),
            max_line_bytes,
        ))
    }

    /// Streams an object's bytes as stored (memory bounded by a chunk); a read that breaks
    /// partway is resumed as [`Storage::read_lines`]'s are. A missing object is
    /// [`StorageError::NotFound`].
    pub async fn read_bytes(
        &self,
        uri: &StorageUri,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, StorageError> {
        let (store, path) = self.resolve(uri)?;
        let read =
            ResumingRead::open(store, path, uri.to_string(), self.read_retry, None, 0).await?;
        Ok(read.into_stream())
    }

    /// Starts a streamed upload of `uri`; the object appears when [`OutputWriter::finish`]
    /// succeeds.
    pub fn create(&self, uri: &StorageUri) -> Result<OutputWriter, StorageError> {
        let (store, path) = self.resolve(uri)?;
        if let StorageUri::Local(_) = uri {
            create_parent_dirs(&path, uri)?;
        } else if self.config.s3_endpoint.is_none() {
            create_parent_dirs(&path, uri)?;
        }
        let writer =
            BufWriter::with_capacity(store, path, OUTPUT_PART_BYTES).with_max_concurrency(2);
        Ok(OutputWriter {
            uri: uri.to_string(),
            writer,
            bytes: 0,
        })
    }

    /// Writes a whole small object at once (the manifest).
    pub async fn put(&self, uri: &StorageUri, bytes: Bytes) -> Result<(), StorageError> {
        let (store, path) = self.resolve(uri)?;
        if self.config.s3_endpoint.is_none() || matches!(uri, StorageUri::Local(_)) {
            create_parent_dirs(&path, uri)?;
        }
        store
            .put(&path, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|source| StorageError::Store {
                uri: uri.to_string(),
                source,
            })
    }

    /// Removes an object; a missing one is not an error.
    pub async fn delete(&self, uri: &StorageUri) -> Result<(), StorageError> {
        let (store, path) = self.resolve(uri)?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StorageError::Store {
                uri: uri.to_string(),
                source,
            }),
        }
    }

    /// Reads a whole small object (the manifest, test fixtures).
    pub async fn get(&self, uri: &StorageUri) -> Result<Bytes, StorageError> {
        let (store, path) = self.resolve(uri)?;
        let err = |e| match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                uri: uri.to_string(),
            },
            source => StorageError::Store {
                uri: uri.to_string(),
                source,
            },
        };
        store
            .get(&path)
            .await
            .map_err(err)?
            .bytes()
            .await
            .map_err(err)
    }
}

/// Listed objects below `path` (the prefix `uri`) as files with paths relative to it.
fn files_below(
    uri: &StorageUri,
    path: &ObjectPath,
    metas: Vec<object_store::ObjectMeta>,
) -> Vec<InputFile> {
    let prefix_parts = path.parts().count();
    metas
        .into_iter()
        .map(|m| {
            let relative: Vec<String> = m
                .location
                .parts()
                .skip(prefix_parts)
                .map(|p| p.as_ref().to_owned())
                .collect();
            let relative = relative.join("/");
            InputFile {
                uri: uri.join(&relative),
                relative,
                size: m.size,
                version: m.e_tag,
            }
        })
        .collect()
}

/// Whether a local prefix exists even if it holds no objects (an empty folder is "no
/// input files", a missing one is "not found").
fn prefix_exists(uri: &StorageUri) -> bool {
    match uri {
        StorageUri::Local(p) => p.exists(),
        StorageUri::S3 { .. } => true,
    }
}

fn local_object_path(path: &FsPath, uri: &StorageUri) -> Result<ObjectPath, StorageError> {
    let absolute = std::path::absolute(path).map_err(|source| StorageError::Io {
        uri: uri.to_string(),
        source,
    })?;
    ObjectPath::from_absolute_path(normalize_lexically(&absolute)).map_err(|e| {
        StorageError::BadUri {
            uri: uri.to_string(),
            reason: e.to_string(),
        }
    })
}

/// Refuses a local-bucket path that a symbolic link inside the buckets folder leads out of
/// it: the deepest part of `path` that exists must resolve to a place below `root`.
fn stays_below(root: &FsPath, path: &FsPath, uri: &StorageUri) -> Result<(), StorageError> {
    let Ok(root) = root.canonicalize() else {
        // No buckets folder yet: nothing in it can be a link.
        return Ok(());
    };
    let existing = path.ancestors().find(|p| p.symlink_metadata().is_ok());
    let Some(existing) = existing else {
        return Ok(());
    };
    let resolved = existing.canonicalize().map_err(|e| StorageError::BadUri {
        uri: uri.to_string(),
        reason: format!("cannot resolve {}: {e}", existing.display()),
    })?;
    if resolved.starts_with(&root) {
        Ok(())
    } else {
        Err(StorageError::BadUri {
            uri: uri.to_string(),
            reason: format!(
                "{} leads out of the buckets folder {} through a symbolic link",
                existing.display(),
                root.display()
            ),
        })
    }
}

/// Resolves `.` and `..` without touching the disk: outputs do not exist yet, so the path
/// cannot be canonicalized, and object paths reject `..` segments.
fn normalize_lexically(path: &FsPath) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn create_parent_dirs(path: &ObjectPath, uri: &StorageUri) -> Result<(), StorageError> {
    let fs_path = PathBuf::from(format!("/{}", path.as_ref()));
    if let Some(parent) = fs_path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
            uri: uri.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// A streamed upload of one output file.
pub struct OutputWriter {
    uri: String,
    writer: BufWriter,
    bytes: u64,
}

impl OutputWriter {
    /// Appends bytes (whole lines).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.bytes += data.len() as u64;
        self.writer
            .write_all(data)
            .await
            .map_err(|source| StorageError::Io {
                uri: self.uri.clone(),
                source,
            })
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Completes the upload; only now is the object visible.
    pub async fn finish(mut self) -> Result<(), StorageError> {
        self.writer
            .shutdown()
            .await
            .map_err(|source| StorageError::Io {
                uri: self.uri.clone(),
                source,
            })
    }

    /// Abandons the upload, leaving no object behind.
    pub async fn abort(mut self) {
        let _ = self.writer.abort().await;
    }
}
