//! Storage against a real S3-compatible server (moto): listing, streaming reads, and
//! multipart writes larger than one part.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use batchd_storage::{Storage, StorageConfig, StorageUri};
use batchd_testkit::moto::MotoServer;
use bytes::Bytes;

/// Storage over a started moto with `bucket` made, and a temp data dir; `None` when moto is
/// not there (`MotoServer::start` has said why).
fn moto_storage(bucket: &str) -> Option<(MotoServer, tempfile::TempDir, Storage)> {
    let moto = MotoServer::start()?;
    moto.create_bucket(bucket);
    let dir = tempfile::tempdir().unwrap();
    batchd_testkit::install_crypto_provider();
    let storage = Storage::new(StorageConfig {
        data_dir: dir.path().to_path_buf(),
        s3_endpoint: Some(moto.endpoint()),
        s3_region: Some("us-east-1".into()),
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        s3_session_token: None,
    });
    Some((moto, dir, storage))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_listing_streaming_and_multipart_writes() {
    let Some((_moto, _dir, s)) = moto_storage("batchd-test") else {
        return;
    };
    let uri = |k: &str| StorageUri::parse(&format!("s3://batchd-test/{k}")).unwrap();

    s.put(&uri("in/b/two.jsonl"), Bytes::from_static(b"x\n"))
        .await
        .unwrap();
    s.put(&uri("in/a.jsonl"), Bytes::from_static(b"y\nz\n"))
        .await
        .unwrap();
    s.put(&uri("in/notes.txt"), Bytes::from_static(b"skip"))
        .await
        .unwrap();
    s.put(
        &uri("input/other.jsonl"),
        Bytes::from_static(b"not under in/"),
    )
    .await
    .unwrap();
    let files = s.list_inputs(&uri("in/")).await.unwrap();
    let rel: Vec<_> = files.iter().map(|f| f.relative.as_str()).collect();
    assert_eq!(rel, ["a.jsonl", "b/two.jsonl"]);
    assert_eq!(files[0].uri, uri("in/a.jsonl"));
    // A prefix without a trailing slash lists the same folder, not `input/`.
    let files = s.list_inputs(&uri("in")).await.unwrap();
    assert_eq!(files.len(), 2);
    let one = s.list_inputs(&uri("in/a.jsonl")).await.unwrap();
    assert_eq!(
        (one.len(), one[0].relative.as_str(), one[0].size),
        (1, "a.jsonl", 4)
    );

    // 12 MiB of lines: more than two 5 MiB upload parts.
    let line = format!("{}\n", "x".repeat(1023));
    let mut w = s.create(&uri("out/big.jsonl.out")).unwrap();
    for _ in 0..12 * 1024 {
        w.write(line.as_bytes()).await.unwrap();
    }
    w.finish().await.unwrap();
    let mut reader = s.read_lines(&uri("out/big.jsonl.out"), 4096).await.unwrap();
    let mut n = 0;
    while let Some((no, l)) = reader.next_line().await.unwrap() {
        n += 1;
        assert_eq!(no, n);
        assert_eq!(l.len(), 1023);
    }
    assert_eq!(n, 12 * 1024);
    assert!(matches!(
        s.list_inputs(&uri("missing/")).await,
        Err(batchd_storage::StorageError::NoInputFiles { .. }
            | batchd_storage::StorageError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_sink_writes_parts_while_running_and_concatenates_on_finish() {
    let Some((_moto, _dir, s)) = moto_storage("sink-test") else {
        return;
    };
    let uri = StorageUri::parse("s3://sink-test/out/job/a.jsonl.out").unwrap();
    let part = |i: u32| {
        StorageUri::parse(&format!("s3://sink-test/out/job/a.jsonl.out.part-{i:06}")).unwrap()
    };

    let mut sink = s.open_sink(&uri, 0).await.unwrap();
    sink.write(b"one\n").await.unwrap();
    assert_eq!(sink.commit(&s).await.unwrap(), 1);
    assert_eq!(
        s.get(&part(0)).await.unwrap(),
        Bytes::from_static(b"one\n"),
        "visible while running"
    );
    sink.write(b"lost\n").await.unwrap();
    assert_eq!(sink.commit(&s).await.unwrap(), 2);
    drop(sink); // crash: the checkpoint said 1 part

    let mut sink = s.open_sink(&uri, 1).await.unwrap();
    sink.write(b"two\n").await.unwrap();
    sink.write(b"three\n").await.unwrap();
    sink.finish(&s).await.unwrap().cleanup(&s).await.unwrap();
    assert_eq!(
        s.get(&uri).await.unwrap(),
        Bytes::from_static(b"one\ntwo\nthree\n")
    );
    for i in 0..2 {
        assert!(
            s.get(&part(i)).await.is_err(),
            "part {i} removed after finish"
        );
    }
}
