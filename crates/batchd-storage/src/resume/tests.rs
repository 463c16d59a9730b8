//! Resumed reads under injected faults: an in-memory store whose GET bodies break on a plan,
//! read through `Storage::read_lines` exactly as a job reads `s3://` inputs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::{
    CopyOptions, GetResultPayload, ListResult, MultipartUpload, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::*;
use crate::{Storage, StorageUri};

const URI: &str = "s3://bkt/in/a.jsonl";
const KEY: &str = "in/a.jsonl";
const TEXT: &[u8] = b"{\"recordId\":\"r1\"}\nsecond line\r\n\nfourth, a longer line of text\nlast";

/// What one GET does.
#[derive(Debug, Clone)]
enum Step {
    /// The body yields this many bytes (at most all), then a connection error.
    BreakAfter(usize),
    /// The request fails with a transient error.
    FailRequest,
    /// The object is overwritten, then the request is served.
    Rewrite(&'static [u8]),
    /// The object is deleted, then the request is served.
    Delete,
}

#[derive(Debug)]
struct Flaky {
    inner: InMemory,
    plan: Mutex<VecDeque<Step>>,
    /// The step of every GET after the plan runs out; `None` serves normally.
    then: Option<Step>,
    /// Size of the chunks bodies are cut into, so lines cross chunk boundaries.
    chunk: usize,
    /// Drop `if_match`/`if_unmodified_since`, like a store that does not honour them.
    ignore_preconditions: bool,
    gets: AtomicUsize,
    /// The range and `if_match` of every GET.
    requests: Mutex<Vec<(Option<GetRange>, Option<String>)>>,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flaky")
    }
}

fn transient(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "Flaky",
        source: what.to_owned().into(),
    }
}

#[async_trait]
impl ObjectStore for Flaky {
    async fn get_opts(
        &self,
        location: &ObjectPath,
        mut options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.requests
            .lock()
            .unwrap()
            .push((options.range.clone(), options.if_match.clone()));
        if self.ignore_preconditions {
            options.if_match = None;
            options.if_unmodified_since = None;
        }
        let step = self
            .plan
            .lock()
            .unwrap()
            .pop_front()
            .or_else(|| self.then.clone());
        let mut limit = None;
        match step {
            None => {}
            Some(Step::BreakAfter(n)) => limit = Some(n),
            Some(Step::FailRequest) => return Err(transient("request failed")),
            Some(Step::Rewrite(bytes)) => {
                self.inner
                    .put(location, PutPayload::from_static(bytes))
                    .await?;
            }
            Some(Step::Delete) => self.inner.delete(location).await?,
        }
        let result = self.inner.get_opts(location, options).await?;
        let (meta, range, attributes) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
        );
        let data = result.bytes().await?;
        let end = limit.map_or(data.len(), |n| n.min(data.len()));
        let mut items: Vec<object_store::Result<Bytes>> = data
            .slice(..end)
            .chunks(self.chunk)
            .map(Bytes::copy_from_slice)
            .map(Ok)
            .collect();
        if limit.is_some() {
            items.push(Err(transient("connection reset by peer")));
        }
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::iter(items).boxed()),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Fast backoff so the tests do not sleep for seconds.
fn quick(max_retries: u32) -> ReadRetry {
    ReadRetry {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

async fn flaky(plan: Vec<Step>, then: Option<Step>, chunk: usize) -> Arc<Flaky> {
    let inner = InMemory::new();
    inner
        .put(&ObjectPath::from(KEY), PutPayload::from_static(TEXT))
        .await
        .unwrap();
    Arc::new(Flaky {
        inner,
        plan: Mutex::new(plan.into()),
        then,
        chunk,
        ignore_preconditions: false,
        gets: AtomicUsize::new(0),
        requests: Mutex::new(Vec::new()),
    })
}

type Lines = Vec<(u64, Bytes)>;

/// Every line read, and the error that stopped the read early, if any.
async fn read_all(store: Arc<Flaky>, retry: ReadRetry) -> (Lines, Option<StorageError>) {
    let storage = Storage::with_s3_store("bkt", store, retry);
    let uri = StorageUri::parse(URI).unwrap();
    let mut reader = storage.read_lines(&uri, 1024).await.unwrap();
    let mut lines = Vec::new();
    loop {
        match reader.next_line().await {
            Ok(Some(line)) => lines.push(line),
            Ok(None) => return (lines, None),
            Err(e) => {
                // Nothing half-read may surface after a failure.
                assert!(reader.next_line().await.is_err());
                return (lines, Some(e));
            }
        }
    }
}

async fn fault_free() -> Lines {
    let (lines, err) = read_all(flaky(vec![], None, 1024).await, quick(3)).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(lines.len(), 5);
    lines
}

#[tokio::test]
async fn one_break_at_any_offset_reads_the_same_lines() {
    let want = fault_free().await;
    let first_newline = TEXT.iter().position(|&b| b == b'\n').unwrap();
    let crlf = TEXT.windows(2).position(|w| w == b"\r\n").unwrap();
    let offsets = [
        0,
        1,
        5,
        first_newline,
        first_newline + 1,
        crlf + 1,
        TEXT.len() - 1,
        TEXT.len(),
    ];
    for chunk in [1, 3, 1024] {
        for offset in offsets {
            let store = flaky(vec![Step::BreakAfter(offset)], None, chunk).await;
            let (got, err) = read_all(store.clone(), quick(3)).await;
            assert!(err.is_none(), "break at {offset}, chunk {chunk}: {err:?}");
            assert_eq!(got, want, "break at {offset}, chunk {chunk}");
            // A break after the last byte needs no second request.
            let gets = if offset < TEXT.len() { 2 } else { 1 };
            assert_eq!(store.gets.load(Ordering::SeqCst), gets, "break at {offset}");
            if offset < TEXT.len() {
                // The resume asks for exactly the rest, of the version first read.
                let requests = store.requests.lock().unwrap().clone();
                let e_tag = store
                    .inner
                    .head(&ObjectPath::from(KEY))
                    .await
                    .unwrap()
                    .e_tag;
                assert!(e_tag.is_some());
                assert_eq!(requests[0], (None, None));
                let rest = GetRange::Bounded(offset as u64..TEXT.len() as u64);
                assert_eq!(requests[1], (Some(rest), e_tag), "break at {offset}");
            }
        }
    }
}

#[tokio::test]
async fn several_breaks_and_failed_resumes_read_the_same_lines() {
    let want = fault_free().await;
    let plan = vec![
        Step::BreakAfter(4),
        Step::FailRequest,
        Step::BreakAfter(0),
        Step::FailRequest,
        Step::BreakAfter(20),
        Step::BreakAfter(1),
        Step::BreakAfter(9),
    ];
    let store = flaky(plan, None, 2).await;
    // Four faults in a row (the break, a failed request, an empty body, a failed request).
    let (got, err) = read_all(store.clone(), quick(4)).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, want);
    assert_eq!(store.gets.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn progress_resets_the_retry_budget() {
    // Every response breaks after 3 bytes, more often than the budget of 2, yet each one
    // moves the read forward, so it completes.
    let want = fault_free().await;
    let store = flaky(vec![], Some(Step::BreakAfter(3)), 1024).await;
    let (got, err) = read_all(store.clone(), quick(2)).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, want);
    assert_eq!(store.gets.load(Ordering::SeqCst), TEXT.len().div_ceil(3));
}

#[tokio::test]
async fn a_store_that_keeps_failing_gives_up_naming_the_object() {
    let want = fault_free().await;
    for then in [Step::FailRequest, Step::BreakAfter(0)] {
        let store = flaky(vec![Step::BreakAfter(20)], Some(then.clone()), 1024).await;
        let (got, err) = read_all(store.clone(), quick(3)).await;
        // The lines before the break were delivered, and nothing after it.
        assert_eq!(got, want[..1], "{then:?}");
        let err = err.unwrap();
        assert!(
            matches!(
                err,
                StorageError::ReadFailed {
                    offset: 20,
                    retries: 3,
                    ..
                }
            ),
            "{then:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("s3://bkt/in/a.jsonl: reading failed at byte 20 after 3 retries"),
            "{message}"
        );
        // The first request and three resumes, no more.
        assert_eq!(store.gets.load(Ordering::SeqCst), 4, "{then:?}");
    }
}

#[tokio::test]
async fn an_object_rewritten_mid_read_is_an_error_not_a_mix() {
    let want = fault_free().await;
    let rewritten: &'static [u8] = b"{\"recordId\":\"r1\"}\nSECOND LINE\r\n\nother\nlast";
    let store = flaky(
        vec![Step::BreakAfter(20), Step::Rewrite(rewritten)],
        None,
        1024,
    )
    .await;
    let (got, err) = read_all(store.clone(), quick(3)).await;
    assert_eq!(got, want[..1]);
    let err = err.unwrap();
    assert!(
        matches!(err, StorageError::Changed { offset: 20, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("s3://bkt/in/a.jsonl: the object changed while it was being read"),
        "{message}"
    );
    // A precondition failure is final: no retries.
    assert_eq!(store.gets.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_rewrite_is_caught_even_if_the_store_ignores_if_match() {
    let same_size: &'static [u8] =
        b"{\"recordId\":\"r1\"}\nSECOND LINE\r\n\nfourth, a longer line of TEXT\nlast";
    assert_eq!(same_size.len(), TEXT.len());
    let mut store = flaky(
        vec![Step::BreakAfter(20), Step::Rewrite(same_size)],
        None,
        1024,
    )
    .await;
    Arc::get_mut(&mut store).unwrap().ignore_preconditions = true;
    let (got, err) = read_all(store, quick(3)).await;
    assert_eq!(got.len(), 1);
    let err = err.unwrap();
    assert!(
        matches!(err, StorageError::Changed { offset: 20, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("ETag"), "{err}");
}

#[tokio::test]
async fn an_object_deleted_mid_read_is_an_error() {
    let store = flaky(vec![Step::BreakAfter(20), Step::Delete], None, 1024).await;
    let (got, err) = read_all(store.clone(), quick(3)).await;
    assert_eq!(got.len(), 1);
    assert!(
        matches!(err, Some(StorageError::Changed { offset: 20, .. })),
        "{err:?}"
    );
}

#[test]
fn backoff_doubles_from_100ms_up_to_5s() {
    let retry = ReadRetry::default();
    assert_eq!(retry.max_retries, 10);
    let ms = |n| retry.backoff(n).as_millis();
    assert_eq!(
        (1..=8).map(ms).collect::<Vec<_>>(),
        [100, 200, 400, 800, 1600, 3200, 5000, 5000]
    );
    assert_eq!(ms(40), 5000);
}

/// A local file is read in `FILE_CHUNK` pieces from the range's start to its end, and a file
/// cut short after it was opened ends the body early (for the reader to resume or fail).
#[tokio::test]
async fn a_local_file_is_read_in_large_pieces_from_its_range() {
    use futures::TryStreamExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("in.jsonl");
    let bytes: Vec<u8> = (0..(FILE_CHUNK * 2 + 20_000))
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&path, &bytes).expect("write");
    let open = || std::fs::File::open(&path).expect("open");

    let start = 12_345u64;
    let end = bytes.len() as u64 - 7;
    let chunks: Vec<Bytes> = file_chunks(open(), path.clone(), start..end)
        .try_collect()
        .await
        .expect("read");
    let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
    let whole = (end - start) as usize;
    let chunk = FILE_CHUNK as usize;
    assert_eq!(sizes, [chunk, chunk, whole - 2 * chunk]);
    assert_eq!(chunks.concat(), &bytes[start as usize..end as usize]);

    let file = open();
    std::fs::write(&path, &bytes[..1000]).expect("truncate");
    let chunks: Vec<Bytes> = file_chunks(file, path.clone(), 0..bytes.len() as u64)
        .try_collect()
        .await
        .expect("read");
    assert_eq!(chunks.concat(), &bytes[..1000]);
}
