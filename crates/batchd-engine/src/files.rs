//! The OpenAI API's files: content in storage (an upload goes to `<root>/<file id>`),
//! metadata in the job store. [`Files`] uploads (streamed, with a size limit), finds, lists,
//! deletes and reads them, and treats an expired file as gone, deleting it when it meets
//! it; [`register_file`] publishes an object written elsewhere (a batch's output) as a file.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use batchd_core::{FileFilter, FileRecord};
use batchd_storage::{Storage, StorageError, StorageUri};
use batchd_store::{SharedStore, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("no such file: {0}")]
    NotFound(String),
    #[error("the file is larger than {max} bytes")]
    TooLarge { max: u64 },
    /// The upload's body broke off (the client went away, a malformed multipart body).
    #[error("the upload broke off: {0}")]
    Body(#[source] std::io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no randomness for a file id: {0}")]
    Entropy(getrandom::Error),
}

/// Unix seconds now: files' timestamps.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `file-` and 24 unguessable `[a-z0-9]`, as OpenAI's file ids look.
pub fn new_file_id() -> Result<String, FilesError> {
    let tail = crate::ids::unguessable_alnum(24).map_err(FilesError::Entropy)?;
    Ok(format!("file-{tail}"))
}

/// Publishes an object already written (at `record.uri`, `record.bytes` long) as the file
/// `record.id` ([`new_file_id`] or an id of the caller's own, such as one derived from a
/// job). Idempotent, for a job that publishes again after a resume: a file with that id that
/// is already there is kept when it names the same object and size, and replaced otherwise.
pub async fn register_file(
    store: &dyn batchd_store::JobStore,
    record: FileRecord,
) -> Result<FileRecord, StoreError> {
    if let Some(existing) = store.get_file(&record.id).await? {
        if existing.uri == record.uri && existing.bytes == record.bytes {
            return Ok(existing);
        }
        store.delete_file(&record.id).await?;
    }
    store.create_file(&record).await?;
    Ok(record)
}

/// The files of one server: where their content goes, and the store that lists them.
#[derive(Clone)]
pub struct Files {
    storage: Arc<Storage>,
    store: SharedStore,
    root: StorageUri,
}

impl Files {
    /// Files whose uploads go below `root` (a local folder or an `s3://` prefix).
    pub fn new(storage: Arc<Storage>, store: SharedStore, root: StorageUri) -> Self {
        Self {
            storage,
            store,
            root,
        }
    }

    /// Streams `body` to `<root>/<new id>` and records it. Past `max_bytes`, or when the body
    /// breaks off, the upload is abandoned and nothing is left behind.
    pub async fn upload(
        &self,
        account_id: &str,
        filename: &str,
        purpose: &str,
        expires_after_seconds: Option<i64>,
        mut body: BoxStream<'_, Result<Bytes, std::io::Error>>,
        max_bytes: u64,
    ) -> Result<FileRecord, FilesError> {
        let id = new_file_id()?;
        let uri = self.root.join(&id);
        let mut writer = self.storage.create(&uri)?;
        let mut bytes = 0u64;
        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    writer.abort().await;
                    return Err(FilesError::Body(e));
                }
            };
            bytes += chunk.len() as u64;
            if bytes > max_bytes {
                writer.abort().await;
                return Err(FilesError::TooLarge { max: max_bytes });
            }
            if let Err(e) = writer.write(&chunk).await {
                writer.abort().await;
                return Err(e.into());
            }
        }
        writer.finish().await?;
        let created_at = now_secs();
        let record = FileRecord {
            id,
            account_id: account_id.to_owned(),
            bytes,
            created_at,
            expires_at: expires_after_seconds.map(|s| created_at.saturating_add(s)),
            filename: filename.to_owned(),
            purpose: purpose.to_owned(),
            uri: uri.to_string(),
        };
        if let Err(e) = self.store.create_file(&record).await {
            self.remove_content(&record).await;
            return Err(e.into());
        }
        Ok(record)
    }

    /// A file of `account` that has not expired; an expired one is deleted now and not
    /// found, and another account's is not found, as an unknown id.
    pub async fn get(&self, account: &str, id: &str) -> Result<FileRecord, FilesError> {
        match self.store.get_file(id).await? {
            Some(file) if file.account_id != account => Err(FilesError::NotFound(id.to_owned())),
            Some(file) if file.is_expired(now_secs()) => {
                self.forget(&file).await?;
                Err(FilesError::NotFound(id.to_owned()))
            }
            Some(file) => Ok(file),
            None => Err(FilesError::NotFound(id.to_owned())),
        }
    }

    /// One page of unexpired files. Expired ones met on the way are deleted and the page
    /// read again, so a page is never short because of them.
    pub async fn list(&self, filter: &FileFilter) -> Result<Vec<FileRecord>, FilesError> {
        loop {
            let page = self.store.list_files(filter).await?;
            let now = now_secs();
            let expired: Vec<&FileRecord> = page.iter().filter(|f| f.is_expired(now)).collect();
            if expired.is_empty() {
                return Ok(page);
            }
            for file in expired {
                self.forget(file).await?;
            }
        }
    }

    /// Deletes a file of `account` and its content.
    pub async fn delete(&self, account: &str, id: &str) -> Result<(), FilesError> {
        let file = self.get(account, id).await?;
        self.forget(&file).await
    }

    /// A file's content (of `account`), streamed as stored.
    pub async fn content(
        &self,
        account: &str,
        id: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, StorageError>>, FilesError> {
        let file = self.get(account, id).await?;
        let uri = StorageUri::parse(&file.uri)?;
        Ok(self.storage.read_bytes(&uri).await?)
    }

    /// The record first: a crash between the two leaves unreferenced bytes, never a file
    /// without content.
    async fn forget(&self, file: &FileRecord) -> Result<(), FilesError> {
        self.store.delete_file(&file.id).await?;
        self.remove_content(file).await;
        Ok(())
    }

    async fn remove_content(&self, file: &FileRecord) {
        let removed = match StorageUri::parse(&file.uri) {
            Ok(uri) => self.storage.delete(&uri).await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::warn!(file = %file.id, error = %e, "cannot remove a file's content");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchd_storage::StorageConfig;
    use batchd_store::SqliteStore;
    use futures::TryStreamExt;

    const ME: &str = "000000000000";
    const OTHER: &str = "111122223333";

    struct Env {
        files: Files,
        store: SharedStore,
        root: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    /// Whether `result` is the error of a file this account cannot see.
    fn not_found<T>(result: Result<T, FilesError>) -> bool {
        matches!(result, Err(FilesError::NotFound(_)))
    }

    async fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::new(StorageConfig {
            data_dir: dir.path().into(),
            ..StorageConfig::default()
        }));
        let store: SharedStore = Arc::new(SqliteStore::in_memory().await.unwrap());
        let root = dir.path().join("files");
        let files = Files::new(storage, store.clone(), StorageUri::Local(root.clone()));
        Env {
            files,
            store,
            root,
            _dir: dir,
        }
    }

    impl Env {
        /// Uploads `chunks` as `name`, a batch file of `ME` that never expires, of at most
        /// 10 bytes.
        async fn upload_small(
            &self,
            name: &str,
            chunks: Vec<Result<&'static [u8], std::io::Error>>,
        ) -> Result<FileRecord, FilesError> {
            self.files
                .upload(ME, name, "batch", None, body(chunks), 10)
                .await
        }
    }

    fn body(
        chunks: Vec<Result<&'static [u8], std::io::Error>>,
    ) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
        futures::stream::iter(chunks.into_iter().map(|c| c.map(Bytes::from_static))).boxed()
    }

    /// The names of the objects below the files root.
    fn stored(env: &Env) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&env.root)
            .map(|dir| {
                dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn read(files: &Files, account: &str, id: &str) -> Vec<u8> {
        let chunks: Vec<Bytes> = files
            .content(account, id)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn an_upload_is_stored_under_its_id_and_reads_back() {
        let env = env().await;
        let file = env
            .files
            .upload(
                ME,
                "in.jsonl",
                "batch",
                Some(3600),
                body(vec![Ok(b"{\"a\":1}\n"), Ok(b"{}\n")]),
                100,
            )
            .await
            .unwrap();
        assert_eq!(file.bytes, 11);
        assert_eq!(file.expires_at, Some(file.created_at + 3600));
        assert_eq!(
            (file.filename.as_str(), file.purpose.as_str()),
            ("in.jsonl", "batch")
        );
        assert_eq!(file.uri, env.root.join(&file.id).display().to_string());
        assert_eq!(stored(&env), [file.id.as_str()]);
        assert_eq!(env.files.get(ME, &file.id).await.unwrap(), file);
        assert_eq!(read(&env.files, ME, &file.id).await, b"{\"a\":1}\n{}\n");
        env.files.delete(ME, &file.id).await.unwrap();
        assert!(stored(&env).is_empty());
        assert!(not_found(env.files.get(ME, &file.id).await));
        assert!(not_found(env.files.delete(ME, &file.id).await));
    }

    #[tokio::test]
    async fn an_upload_past_the_limit_or_broken_off_leaves_nothing() {
        let env = env().await;
        // Exactly the limit is fine; one byte more is not.
        let exact = env
            .upload_small("a.jsonl", vec![Ok(b"12345"), Ok(b"67890")])
            .await
            .unwrap();
        assert_eq!((exact.bytes, exact.expires_at), (10, None));
        let over = env
            .upload_small("b.jsonl", vec![Ok(b"12345"), Ok(b"678901")])
            .await;
        assert!(
            matches!(over, Err(FilesError::TooLarge { max: 10 })),
            "{over:?}"
        );
        let reset = Err(std::io::Error::other("connection reset"));
        let broken = env.upload_small("c.jsonl", vec![Ok(b"123"), reset]).await;
        assert!(matches!(broken, Err(FilesError::Body(_))), "{broken:?}");
        assert_eq!(stored(&env), [exact.id.as_str()]);
        let all = FileFilter {
            account_id: Some(ME.into()),
            purpose: None,
            after: None,
            limit: 10,
            ascending: true,
        };
        assert_eq!(env.files.list(&all).await.unwrap(), [exact]);
    }

    #[tokio::test]
    async fn expired_files_are_gone_and_deleted_when_met() {
        let env = env().await;
        let mut kept = Vec::new();
        for name in ["a.jsonl", "b.jsonl", "c.jsonl"] {
            let file = env
                .files
                .upload(ME, name, "batch", Some(3600), body(vec![Ok(b"x\n")]), 10)
                .await
                .unwrap();
            kept.push(file);
        }
        // Two of them were uploaded two hours ago and expired a second ago: the first page
        // meets them first.
        for file in &mut kept[..2] {
            file.created_at -= 7200;
            file.expires_at = Some(now_secs() - 1);
            env.store.delete_file(&file.id).await.unwrap();
            env.store.create_file(file).await.unwrap();
        }
        let page = FileFilter {
            account_id: Some(ME.into()),
            purpose: None,
            after: None,
            limit: 1,
            ascending: true,
        };
        // A page of one skips both expired files and deletes them on the way.
        assert_eq!(env.files.list(&page).await.unwrap(), [kept[2].clone()]);
        assert_eq!(stored(&env), [kept[2].id.clone()]);
        for file in &kept[..2] {
            assert_eq!(env.store.get_file(&file.id).await.unwrap(), None);
            assert!(not_found(env.files.get(ME, &file.id).await));
        }
        // get() meets an expired file too.
        let mut last = kept[2].clone();
        last.expires_at = Some(now_secs());
        env.store.delete_file(&last.id).await.unwrap();
        env.store.create_file(&last).await.unwrap();
        assert!(not_found(env.files.content(ME, &last.id).await));
        assert!(stored(&env).is_empty());
    }

    fn published(uri: &StorageUri, bytes: u64) -> FileRecord {
        FileRecord {
            id: "file-out".into(),
            account_id: ME.into(),
            bytes,
            created_at: now_secs(),
            expires_at: None,
            filename: "out.jsonl".into(),
            purpose: "batch_output".into(),
            uri: uri.to_string(),
        }
    }

    #[tokio::test]
    async fn register_file_publishes_once_and_replaces_a_different_object() {
        let env = env().await;
        let uri = StorageUri::Local(env.root.join("out.jsonl"));
        let first = register_file(env.store.as_ref(), published(&uri, 5))
            .await
            .unwrap();
        assert_eq!(env.files.get(ME, "file-out").await.unwrap(), first);
        // Published again after a resume: the same record.
        let again = register_file(env.store.as_ref(), published(&uri, 5))
            .await
            .unwrap();
        assert_eq!(again, first);
        let other = StorageUri::Local(env.root.join("out2.jsonl"));
        let replaced = register_file(env.store.as_ref(), published(&other, 7))
            .await
            .unwrap();
        assert_eq!(
            (replaced.bytes, replaced.uri.as_str()),
            (7, other.to_string().as_str())
        );
        assert_eq!(env.files.get(ME, "file-out").await.unwrap(), replaced);
    }

    #[tokio::test]
    async fn another_accounts_file_is_not_found_read_listed_or_deleted() {
        let env = env().await;
        let mine = env.upload_small("a.jsonl", vec![Ok(b"x\n")]).await.unwrap();
        let theirs = env
            .files
            .upload(OTHER, "b.jsonl", "batch", None, body(vec![Ok(b"y\n")]), 10)
            .await
            .unwrap();
        assert_eq!(theirs.account_id, OTHER);
        assert!(not_found(env.files.get(ME, &theirs.id).await));
        assert!(not_found(env.files.content(ME, &theirs.id).await));
        assert!(not_found(env.files.delete(ME, &theirs.id).await));
        let filter = |account: &str| FileFilter {
            account_id: Some(account.into()),
            purpose: None,
            after: None,
            limit: 10,
            ascending: true,
        };
        assert_eq!(env.files.list(&filter(ME)).await.unwrap(), [mine]);
        // Still there for its owner, content and all.
        assert_eq!(
            env.files.list(&filter(OTHER)).await.unwrap(),
            std::slice::from_ref(&theirs)
        );
        assert_eq!(read(&env.files, OTHER, &theirs.id).await, b"y\n");
    }

    #[test]
    fn file_ids_look_like_openais() {
        let id = new_file_id().unwrap();
        let tail = id.strip_prefix("file-").unwrap();
        assert_eq!(tail.len(), 24);
        assert!(
            tail.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(new_file_id().unwrap(), id);
    }
}
