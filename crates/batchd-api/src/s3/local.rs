//! [`LocalBuckets`]: the S3 operations over `<data-dir>/buckets/<bucket>/<key>`, the files
//! batchd jobs read and write for `s3://` locations without an endpoint. Every write goes to
//! a temp file in the staging folder (beside the buckets, never inside them), is synced, and is
//! renamed into place: a reader sees the old object or the new one, and a crash leaves nothing
//! in the bucket. Multipart parts also live in the staging folder until Complete.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures::StreamExt;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Most keys ListObjects returns at once (S3's limit).
const MAX_KEYS: usize = 1000;

/// Why a bucket name or key cannot name a file under the buckets folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the bucket name {0:?} is not a valid S3 bucket name")]
    Bucket(String),
    #[error("the key {0:?} is empty, absolute, or has an empty, \".\" or \"..\" segment")]
    Key(String),
    #[error("the key is longer than 1024 bytes")]
    TooLong,
}

/// The path of `key` in `bucket` below `root`, or why it would not stay there. The same rule
/// as `s3://` locations of jobs: no empty, `.` or `..` segment, nothing absolute, no NUL (S3
/// clients send `%2F` decoded, so an encoded slash is a slash here and meets the same check).
pub fn object_path(root: &Path, bucket: &str, key: &str) -> Result<PathBuf, KeyError> {
    let mut path = bucket_path(root, bucket)?;
    check_key(key)?;
    for segment in key.split('/') {
        path.push(segment);
    }
    Ok(path)
}

/// Whether `key` names a file below its bucket's folder (see [`object_path`]).
pub fn check_key(key: &str) -> Result<(), KeyError> {
    if key.len() > 1024 {
        return Err(KeyError::TooLong);
    }
    if key.is_empty()
        || key.contains('\0')
        || key.contains('\\')
        || key
            .split('/')
            .any(|segment| matches!(segment, "" | "." | ".."))
    {
        return Err(KeyError::Key(key.to_owned()));
    }
    Ok(())
}

/// The folder of `bucket` below `root`.
pub fn bucket_path(root: &Path, bucket: &str) -> Result<PathBuf, KeyError> {
    if !s3s::path::check_bucket_name(bucket) {
        return Err(KeyError::Bucket(bucket.to_owned()));
    }
    Ok(root.join(bucket))
}

/// A temp file removed on drop unless it was renamed into place: a dropped request (client
/// gone, server stopping) leaves nothing behind.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a finished write reports.
struct Written {
    md5_hex: String,
}

/// The S3 service over a folder of buckets.
#[derive(Debug, Clone)]
pub struct LocalBuckets {
    root: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
}

fn io_error(e: io::Error) -> s3s::S3Error {
    tracing::warn!(error = %e, "S3 API: file system error");
    s3_error!(InternalError, "file system error")
}

fn key_error(e: KeyError) -> s3s::S3Error {
    match e {
        KeyError::Bucket(_) => s3_error!(InvalidBucketName, "{e}"),
        KeyError::TooLong => s3_error!(KeyTooLongError, "{e}"),
        KeyError::Key(_) => s3_error!(InvalidArgument, "{e}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn timestamp(meta: &std::fs::Metadata) -> Timestamp {
    Timestamp::from(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH))
}

/// An ETag from the file's size and modification time: changes whenever the object is
/// replaced (every write is a rename of a new file), without reading it.
fn stat_etag(meta: &std::fs::Metadata) -> ETag {
    let nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    ETag::Strong(format!("{nanos:x}-{:x}", meta.len()))
}

fn size_i64(n: u64) -> S3Result<i64> {
    i64::try_from(n).map_err(|_| s3_error!(InternalError, "size out of range"))
}

/// Percent-encodes a key for `encoding-type=url` listings (every byte but the unreserved
/// ones and `/`), which botocore decodes.
fn url_encode(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

impl LocalBuckets {
    /// Serves the buckets below `root`; temp files and multipart parts go below `staging`,
    /// which must be on the same file system (renames). Temp files a crash left are removed.
    pub fn new(root: PathBuf, staging: &Path) -> io::Result<Self> {
        let tmp = staging.join("tmp");
        let uploads = staging.join("uploads");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        std::fs::create_dir_all(&uploads)?;
        Ok(Self { root, tmp, uploads })
    }

    fn bucket(&self, bucket: &str) -> S3Result<PathBuf> {
        bucket_path(&self.root, bucket).map_err(key_error)
    }

    /// The bucket's folder, which must exist.
    async fn existing_bucket(&self, bucket: &str) -> S3Result<PathBuf> {
        let path = self.bucket(bucket)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_dir() => Ok(path),
            _ => Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            )),
        }
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        object_path(&self.root, bucket, key).map_err(key_error)
    }

    /// The folder of a bucket that must exist, and the path of `key` in it.
    async fn existing_object(&self, bucket: &str, key: &str) -> S3Result<(PathBuf, PathBuf)> {
        let bucket_dir = self.existing_bucket(bucket).await?;
        Ok((bucket_dir, self.object(bucket, key)?))
    }

    fn temp_file(&self) -> TempFile {
        TempFile {
            path: self.tmp.join(format!(
                "{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            )),
            armed: true,
        }
    }

    /// Streams `body` into a temp file, syncs it and renames it to `dest`. `sha256` is the
    /// signed `x-amz-content-sha256`: a body that does not match it is refused and nothing is
    /// renamed.
    async fn write_atomically(
        &self,
        dest: &Path,
        body: Option<StreamingBlob>,
        sha256: Option<&str>,
    ) -> S3Result<Written> {
        let mut temp = self.temp_file();
        let mut file = tokio::fs::File::create(&temp.path)
            .await
            .map_err(io_error)?;
        let mut md5 = Md5::new();
        let mut hasher = sha256.map(|_| Sha256::new());
        if let Some(mut body) = body {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
                md5.update(&chunk);
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                file.write_all(&chunk).await.map_err(io_error)?;
            }
        }
        if let (Some(h), Some(claimed)) = (hasher, sha256)
            && !hex(&h.finalize()).eq_ignore_ascii_case(claimed)
        {
            return Err(s3_error!(
                BadDigest,
                "The provided 'x-amz-content-sha256' header does not match what was computed."
            ));
        }
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_error)?;
        }
        tokio::fs::rename(&temp.path, dest)
            .await
            .map_err(io_error)?;
        temp.armed = false;
        Ok(Written {
            md5_hex: hex(&md5.finalize()),
        })
    }

    /// Removes the empty folders between `path`'s parent and its bucket, as S3 has no
    /// folders: a prefix goes away with its last object.
    async fn prune_empty_parents(&self, bucket_dir: &Path, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == bucket_dir || !d.starts_with(bucket_dir) {
                break;
            }
            if tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    fn upload_dir(&self, upload_id: &str) -> S3Result<PathBuf> {
        if upload_id.len() != 32 || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(s3_error!(
                NoSuchUpload,
                "The specified upload does not exist."
            ));
        }
        Ok(self.uploads.join(upload_id))
    }

    /// The upload's folder, checked to be for `bucket`/`key`.
    async fn existing_upload(&self, upload_id: &str, bucket: &str, key: &str) -> S3Result<PathBuf> {
        let dir = self.upload_dir(upload_id)?;
        let target = tokio::fs::read_to_string(dir.join("target"))
            .await
            .map_err(|_| s3_error!(NoSuchUpload, "The specified upload does not exist."))?;
        if target != format!("{bucket}\n{key}") {
            return Err(s3_error!(
                NoSuchUpload,
                "The specified upload does not exist."
            ));
        }
        Ok(dir)
    }

    /// Every key in the bucket that starts with `prefix`, sorted. Walks only the folder the
    /// prefix's last `/` names.
    async fn keys(
        &self,
        bucket_dir: &Path,
        prefix: &str,
    ) -> S3Result<Vec<(String, std::fs::Metadata)>> {
        let start = match prefix.rfind('/') {
            Some(i) => match check_key(&prefix[..i]) {
                Ok(_) => bucket_dir.join(&prefix[..i]),
                // A prefix no valid key has: nothing matches.
                Err(_) => return Ok(Vec::new()),
            },
            None => bucket_dir.to_owned(),
        };
        let bucket_dir = bucket_dir.to_owned();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let meta = entry.metadata()?;
                    let path = entry.path();
                    if meta.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Ok(rel) = path.strip_prefix(&bucket_dir) else {
                        continue;
                    };
                    let Some(key) = rel
                        .iter()
                        .map(|s| s.to_str())
                        .collect::<Option<Vec<_>>>()
                        .map(|s| s.join("/"))
                    else {
                        continue;
                    };
                    if key.starts_with(&prefix) {
                        found.push((key, meta));
                    }
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(found)
        })
        .await
        .map_err(|_| s3_error!(InternalError, "listing failed"))?
        .map_err(io_error)
    }
}

/// One page of a listing: objects and common prefixes in key order, after `marker`.
#[derive(Debug, Default, PartialEq)]
struct Page {
    objects: Vec<usize>,
    prefixes: Vec<String>,
    /// The last key or prefix of the page, when more follow.
    next_marker: Option<String>,
}

/// Pages sorted keys as S3 does: keys after `marker`, each key under a `delimiter` after the
/// prefix folded into its common prefix, `max` entries (keys and prefixes) at most.
fn page(
    keys: &[&str],
    prefix: &str,
    delimiter: Option<&str>,
    marker: Option<&str>,
    max: usize,
) -> Page {
    let mut page = Page::default();
    let mut count = 0;
    let mut last: Option<String> = None;
    for (i, key) in keys.iter().enumerate() {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        if marker.is_some_and(|m| *key <= m) {
            continue;
        }
        let common = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
            rest.find(d)
                .map(|pos| format!("{prefix}{}", &rest[..pos + d.len()]))
        });
        if let Some(common) = &common
            && (marker.is_some_and(|m| common.as_str() <= m)
                || page.prefixes.last() == Some(common))
        {
            continue;
        }
        if count == max {
            page.next_marker = last;
            return page;
        }
        count += 1;
        match common {
            Some(common) => {
                last = Some(common.clone());
                page.prefixes.push(common);
            }
            None => {
                last = Some((*key).to_owned());
                page.objects.push(i);
            }
        }
    }
    page
}

fn sha256_claim(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

#[async_trait::async_trait]
impl S3 for LocalBuckets {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let mut buckets = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.root).await.map_err(io_error)?;
        while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
            let meta = entry.metadata().await.map_err(io_error)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !meta.is_dir() || !s3s::path::check_bucket_name(name) {
                continue;
            }
            buckets.push(Bucket {
                creation_date: Some(timestamp(&meta)),
                name: Some(name.to_owned()),
                bucket_region: None,
            });
        }
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let path = self.bucket(&req.input.bucket)?;
        match tokio::fs::create_dir(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(s3_error!(
                    BucketAlreadyOwnedByYou,
                    "Your previous request to create the named bucket succeeded and you already own it."
                ));
            }
            Err(e) => return Err(io_error(e)),
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.existing_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.existing_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let path = self.existing_bucket(&req.input.bucket).await?;
        tokio::fs::remove_dir(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::DirectoryNotEmpty {
                s3_error!(
                    BucketNotEmpty,
                    "The bucket you tried to delete is not empty"
                )
            } else {
                io_error(e)
            }
        })?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let sha256 = sha256_claim(&req.headers);
        let input = req.input;
        let (_, path) = self.existing_object(&input.bucket, &input.key).await?;
        let written = self
            .write_atomically(&path, input.body, sha256.as_deref())
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(written.md5_hex)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (_, path) = self.existing_object(&input.bucket, &input.key).await?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| s3_error!(NoSuchKey, "The specified key does not exist."))?;
        let meta = file.metadata().await.map_err(io_error)?;
        if meta.is_dir() {
            return Err(s3_error!(NoSuchKey, "The specified key does not exist."));
        }
        let len = meta.len();
        let (range, content_range) = match input.range {
            None => (0..len, None),
            Some(r) => {
                let range = r.check(len).map_err(|_| {
                    s3_error!(InvalidRange, "The requested range is not satisfiable")
                })?;
                let content_range = format!(
                    "bytes {}-{}/{len}",
                    range.start,
                    range.end.saturating_sub(1)
                );
                (range, Some(content_range))
            }
        };
        file.seek(io::SeekFrom::Start(range.start))
            .await
            .map_err(io_error)?;
        let length = range.end - range.start;
        let body = tokio_util_stream(file.take(length));
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(size_i64(length)?),
            content_range,
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(&meta)),
            e_tag: Some(stat_etag(&meta)),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let (_, path) = self.existing_object(&input.bucket, &input.key).await?;
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => m,
            _ => return Err(s3_error!(NoSuchKey, "The specified key does not exist.")),
        };
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(size_i64(meta.len())?),
            accept_ranges: Some("bytes".into()),
            last_modified: Some(timestamp(&meta)),
            e_tag: Some(stat_etag(&meta)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let (bucket_dir, path) = self.existing_object(&input.bucket, &input.key).await?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => self.prune_empty_parents(&bucket_dir, &path).await,
            // S3 answers 204 for a key that is not there.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::IsADirectory
                ) => {}
            Err(e) => return Err(io_error(e)),
        }
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let bucket_dir = self.existing_bucket(&input.bucket).await?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            let result = match self.object(&input.bucket, &object.key) {
                Ok(path) => match tokio::fs::remove_file(&path).await {
                    Ok(()) => {
                        self.prune_empty_parents(&bucket_dir, &path).await;
                        Ok(())
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(("InternalError", e.to_string())),
                },
                Err(e) => Err(("InvalidArgument", e.to_string())),
            };
            match result {
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                }),
                Err((code, message)) => errors.push(Error {
                    code: Some(code.to_owned()),
                    key: Some(object.key),
                    message: Some(message),
                    ..Default::default()
                }),
            }
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then_some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket { bucket, key, .. } = &input.copy_source else {
            return Err(s3_error!(
                NotImplemented,
                "Only bucket copy sources are supported"
            ));
        };
        self.existing_bucket(bucket).await?;
        self.existing_bucket(&input.bucket).await?;
        let source = self.object(bucket, key)?;
        let dest = self.object(&input.bucket, &input.key)?;
        let file = tokio::fs::File::open(&source)
            .await
            .map_err(|_| s3_error!(NoSuchKey, "The specified key does not exist."))?;
        let body = StreamingBlob::wrap(tokio_util_stream(file));
        let written = self.write_atomically(&dest, Some(body), None).await?;
        let meta = tokio::fs::metadata(&dest).await.map_err(io_error)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(written.md5_hex)),
                last_modified: Some(timestamp(&meta)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let bucket_dir = self.existing_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input
            .max_keys
            .map_or(MAX_KEYS, |m| usize::try_from(m).unwrap_or(0).min(MAX_KEYS));
        let token = match &input.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => None,
        };
        let marker = match (token.as_deref(), input.start_after.as_deref()) {
            (Some(t), Some(s)) => Some(t.max(s).to_owned()),
            (t, s) => t.or(s).map(str::to_owned),
        };
        let found = self.keys(&bucket_dir, &prefix).await?;
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        let page = page(
            &keys,
            &prefix,
            input.delimiter.as_deref(),
            marker.as_deref(),
            max,
        );
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let show = |k: &str| if url { url_encode(k) } else { k.to_owned() };
        let contents: Vec<Object> = page
            .objects
            .iter()
            .map(|&i| {
                let (key, meta) = &found[i];
                Ok(Object {
                    key: Some(show(key)),
                    size: Some(size_i64(meta.len())?),
                    last_modified: Some(timestamp(meta)),
                    e_tag: Some(stat_etag(meta)),
                    storage_class: Some(ObjectStorageClass::from_static(
                        ObjectStorageClass::STANDARD,
                    )),
                    ..Default::default()
                })
            })
            .collect::<S3Result<_>>()?;
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(show(p)),
            })
            .collect();
        let key_count = i32::try_from(contents.len() + prefixes.len()).unwrap_or(i32::MAX);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix.map(|p| show(&p)),
            delimiter: input.delimiter,
            max_keys: Some(i32::try_from(max).unwrap_or(1000)),
            key_count: Some(key_count),
            is_truncated: Some(page.next_marker.is_some()),
            next_continuation_token: page.next_marker.as_deref().map(encode_token),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            encoding_type: input.encoding_type,
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let marker = req.input.marker.clone();
        let v2 = req.map_input(|i| ListObjectsV2Input {
            bucket: i.bucket,
            delimiter: i.delimiter,
            encoding_type: i.encoding_type,
            max_keys: i.max_keys,
            prefix: i.prefix,
            start_after: i.marker,
            ..Default::default()
        });
        let out = self.list_objects_v2(v2).await?;
        Ok(out.map_output(|v2| ListObjectsOutput {
            name: v2.name,
            prefix: v2.prefix,
            delimiter: v2.delimiter,
            max_keys: v2.max_keys,
            is_truncated: v2.is_truncated,
            next_marker: v2
                .next_continuation_token
                .and_then(|t| decode_token(&t).ok()),
            marker,
            encoding_type: v2.encoding_type,
            contents: v2.contents,
            common_prefixes: v2.common_prefixes,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.existing_object(&input.bucket, &input.key).await?;
        let upload_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let dir = self.upload_dir(&upload_id)?;
        tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
        tokio::fs::write(
            dir.join("target"),
            format!("{}\n{}", input.bucket, input.key),
        )
        .await
        .map_err(io_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let sha256 = sha256_claim(&req.headers);
        let input = req.input;
        if !(1..=10_000).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let dir = self
            .existing_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let part = dir.join(format!("{:05}", input.part_number));
        let written = self
            .write_atomically(&part, input.body, sha256.as_deref())
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(written.md5_hex)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let dir = self
            .existing_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        let (_, dest) = self.existing_object(&input.bucket, &input.key).await?;
        let parts = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
        let mut temp = self.temp_file();
        let mut out = tokio::fs::File::create(&temp.path)
            .await
            .map_err(io_error)?;
        let mut etags = Vec::new();
        let mut previous = 0;
        for part in &parts {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order."
                ));
            }
            previous = number;
            let mut file = tokio::fs::File::open(dir.join(format!("{number:05}")))
                .await
                .map_err(|_| s3_error!(InvalidPart, "Part {number} was not uploaded"))?;
            tokio::io::copy(&mut file, &mut out)
                .await
                .map_err(io_error)?;
            let etag = part
                .e_tag
                .as_ref()
                .map(|e| e.value().to_owned())
                .unwrap_or_default();
            etags.push(etag);
        }
        out.sync_all().await.map_err(io_error)?;
        drop(out);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_error)?;
        }
        tokio::fs::rename(&temp.path, &dest)
            .await
            .map_err(io_error)?;
        temp.armed = false;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        // S3's multipart ETag: the MD5 of the parts' MD5s, and the part count.
        let mut md5 = Md5::new();
        for etag in &etags {
            let mut raw = [0u8; 16];
            if hex_decode(etag, &mut raw) {
                md5.update(&raw);
            } else {
                md5.update(etag.as_bytes());
            }
        }
        let etag = format!("{}-{}", hex(&md5.finalize()), etags.len());
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        let dir = self
            .existing_upload(&input.upload_id, &input.bucket, &input.key)
            .await?;
        tokio::fs::remove_dir_all(&dir).await.map_err(io_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

fn hex_decode(text: &str, out: &mut [u8; 16]) -> bool {
    // ASCII first: the ETag is the client's, and slicing must not split a character.
    if text.len() != 32 || !text.is_ascii() {
        return false;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&text[2 * i..2 * i + 2], 16) {
            Ok(b) => *byte = b,
            Err(_) => return false,
        }
    }
    true
}

/// A continuation token: the last key or prefix of the page, base64 so it is opaque and
/// XML-safe.
fn encode_token(marker: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(marker)
}

fn decode_token(token: &str) -> S3Result<String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

/// A reader as a stream of chunks (64 KiB reads).
fn tokio_util_stream<R>(
    reader: R,
) -> impl futures::Stream<Item = io::Result<bytes::Bytes>> + Send + Sync + 'static
where
    R: tokio::io::AsyncRead + Unpin + Send + Sync + 'static,
{
    futures::stream::try_unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), reader)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_would_leave_the_bucket_are_refused() {
        let root = Path::new("/data/buckets");
        assert_eq!(
            object_path(root, "bkt", "in/a.jsonl").unwrap(),
            Path::new("/data/buckets/bkt/in/a.jsonl")
        );
        for bad in [
            "../x",
            "a/../../x",
            "..",
            ".",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "a/",
            "",
            "a\0b",
            "a\\..\\b",
        ] {
            assert!(
                matches!(object_path(root, "bkt", bad), Err(KeyError::Key(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            object_path(root, "bkt", &"k".repeat(1025)),
            Err(KeyError::TooLong)
        );
        for bad in ["..", "a/b", "", "UPPER", "x"] {
            assert!(
                matches!(bucket_path(root, bad), Err(KeyError::Bucket(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pages_fold_common_prefixes_and_resume_after_the_marker() {
        let keys = ["a/1", "a/2", "b", "c/x/1", "c/y", "d"];
        let all = page(&keys, "", Some("/"), None, 1000);
        assert_eq!(all.objects, vec![2, 5]);
        assert_eq!(all.prefixes, vec!["a/", "c/"]);
        assert_eq!(all.next_marker, None);

        let first = page(&keys, "", Some("/"), None, 2);
        assert_eq!(first.prefixes, vec!["a/"]);
        assert_eq!(first.objects, vec![2]);
        assert_eq!(first.next_marker.as_deref(), Some("b"));
        let second = page(&keys, "", Some("/"), Some("b"), 2);
        assert_eq!(second.prefixes, vec!["c/"]);
        assert_eq!(second.objects, vec![5]);
        assert_eq!(second.next_marker, None);
        let after_prefix = page(&keys, "", Some("/"), Some("a/"), 1);
        assert_eq!(after_prefix.objects, vec![2]);

        let nested = page(&keys, "c/", Some("/"), None, 1000);
        assert_eq!(nested.prefixes, vec!["c/x/"]);
        assert_eq!(nested.objects, vec![4]);
        let flat = page(&keys, "", None, Some("a/2"), 3);
        assert_eq!(flat.objects, vec![2, 3, 4]);
        assert_eq!(flat.next_marker.as_deref(), Some("c/y"));
    }

    #[tokio::test]
    async fn a_failed_write_leaves_neither_object_nor_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let buckets =
            LocalBuckets::new(dir.path().join("buckets"), &dir.path().join("staging")).unwrap();
        std::fs::create_dir_all(dir.path().join("buckets/bkt")).unwrap();
        let dest = buckets.object("bkt", "in/a.jsonl").unwrap();

        // The body breaks off half way.
        let broken = futures::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"half of it")),
            Err(io::Error::other("connection reset")),
        ]);
        let err = buckets
            .write_atomically(&dest, Some(StreamingBlob::wrap(broken)), None)
            .await
            .err()
            .unwrap();
        assert_eq!(*err.code(), s3s::S3ErrorCode::IncompleteBody);
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(&buckets.tmp).unwrap().count(), 0);

        // A body that does not match its signed SHA-256.
        let body = futures::stream::iter(vec![Ok::<_, io::Error>(bytes::Bytes::from_static(b"x"))]);
        let err = buckets
            .write_atomically(
                &dest,
                Some(StreamingBlob::wrap(body)),
                Some(&"0".repeat(64)),
            )
            .await
            .err()
            .unwrap();
        assert_eq!(*err.code(), s3s::S3ErrorCode::BadDigest);
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(&buckets.tmp).unwrap().count(), 0);

        // A whole body replaces the object in one rename.
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, b"old").unwrap();
        let body =
            futures::stream::iter(vec![Ok::<_, io::Error>(bytes::Bytes::from_static(b"new"))]);
        let sha = hex(&Sha256::digest(b"new"));
        buckets
            .write_atomically(&dest, Some(StreamingBlob::wrap(body)), Some(&sha))
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&buckets.tmp).unwrap().count(), 0);
    }

    #[test]
    fn part_etags_decode_only_as_32_hex_digits() {
        let mut raw = [0u8; 16];
        assert!(hex_decode("00112233445566778899aabbccddeeff", &mut raw));
        assert_eq!(raw[1], 0x11);
        // 32 bytes, not 32 characters: refused, not sliced through the `ü`.
        let non_ascii = format!("0ü{}", "0".repeat(29));
        assert_eq!(non_ascii.len(), 32);
        assert!(!hex_decode(&non_ascii, &mut raw));
        assert!(!hex_decode("xyz", &mut raw));
    }

    #[test]
    fn temp_files_left_by_a_crash_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("staging/tmp")).unwrap();
        std::fs::write(dir.path().join("staging/tmp/abc"), b"partial").unwrap();
        let buckets =
            LocalBuckets::new(dir.path().join("buckets"), &dir.path().join("staging")).unwrap();
        assert_eq!(std::fs::read_dir(&buckets.tmp).unwrap().count(), 0);
    }
}
