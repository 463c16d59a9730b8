//! Storage against the local disk: listing folders and s3:// URIs mapped under the data dir.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use batchd_storage::{Storage, StorageConfig, StorageError, StorageUri};
use bytes::Bytes;

fn storage(data_dir: &std::path::Path) -> Storage {
    Storage::new(StorageConfig {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    })
}

#[tokio::test]
async fn lists_jsonl_below_a_folder_sorted_with_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("b/deep")).unwrap();
    std::fs::create_dir_all(input.join("a")).unwrap();
    std::fs::write(input.join("b/deep/two.jsonl"), "x\n").unwrap();
    std::fs::write(input.join("a/one.jsonl"), "xy\n").unwrap();
    std::fs::write(input.join("a/notes.txt"), "ignored").unwrap();
    let s = storage(dir.path());
    let uri = StorageUri::parse(input.to_str().unwrap()).unwrap();
    let files = s.list_inputs(&uri).await.unwrap();
    let rel: Vec<_> = files
        .iter()
        .map(|f| (f.relative.as_str(), f.size))
        .collect();
    assert_eq!(rel, vec![("a/one.jsonl", 3), ("b/deep/two.jsonl", 2)]);
    assert_eq!(
        files[1].uri,
        StorageUri::Local(input.join("b/deep/two.jsonl"))
    );
}

#[tokio::test]
async fn list_files_lists_every_object_below_a_prefix_and_nothing_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("job/sub")).unwrap();
    std::fs::write(out.join("job/b.jsonl.out"), "x\n").unwrap();
    std::fs::write(out.join("job/manifest.json.out"), "{}").unwrap();
    std::fs::write(out.join("job/sub/a.json"), "[]").unwrap();
    // Beside the folder, with the folder's name as its prefix: not below it.
    std::fs::write(out.join("job.analysis.json"), "{}").unwrap();
    let s = storage(dir.path());
    let uri = StorageUri::Local(out.join("job"));
    let files = s.list_files(&uri).await.unwrap();
    let rel: Vec<_> = files.iter().map(|f| f.relative.as_str()).collect();
    assert_eq!(rel, ["b.jsonl.out", "manifest.json.out", "sub/a.json"]);
    assert_eq!(files[2].uri, StorageUri::Local(out.join("job/sub/a.json")));
    // A prefix with nothing below it lists nothing (no error).
    let none = s
        .list_files(&StorageUri::Local(out.join("missing")))
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn single_file_and_missing_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.jsonl");
    std::fs::write(&file, "a\nb\n").unwrap();
    let s = storage(dir.path());
    let files = s
        .list_inputs(&StorageUri::Local(file.clone()))
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].relative, "one.jsonl");
    let missing = s
        .list_inputs(&StorageUri::Local(dir.path().join("nope")))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StorageError::NotFound { .. }),
        "{missing}"
    );
    std::fs::create_dir_all(dir.path().join("empty")).unwrap();
    let empty = s
        .list_inputs(&StorageUri::Local(dir.path().join("empty")))
        .await
        .unwrap_err();
    assert!(
        matches!(empty, StorageError::NoInputFiles { .. }),
        "{empty}"
    );
}

#[tokio::test]
async fn s3_uris_without_endpoint_live_under_data_dir_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let out = StorageUri::parse("s3://my-bucket/out/job1/a.jsonl.out").unwrap();
    let mut w = s.create(&out).unwrap();
    w.write(b"line1\n").await.unwrap();
    w.write(b"line2\n").await.unwrap();
    w.finish().await.unwrap();
    let on_disk = dir.path().join("buckets/my-bucket/out/job1/a.jsonl.out");
    assert_eq!(std::fs::read_to_string(on_disk).unwrap(), "line1\nline2\n");

    let manifest = StorageUri::parse("s3://my-bucket/out/job1/manifest.json.out").unwrap();
    s.put(&manifest, Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(s.get(&manifest).await.unwrap(), Bytes::from_static(b"{}"));

    let files = s
        .list_inputs(&StorageUri::parse("s3://my-bucket/out/").unwrap())
        .await;
    assert!(matches!(files, Err(StorageError::NoInputFiles { .. })));

    let mut lines = s.read_lines(&out, 1024).await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().unwrap().0, 1);
    assert_eq!(&lines.next_line().await.unwrap().unwrap().1[..], b"line2");
    assert!(lines.next_line().await.unwrap().is_none());
}

#[tokio::test]
async fn local_sink_shows_lines_as_committed_and_resumes_at_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let uri = StorageUri::Local(dir.path().join("out/job/a.jsonl.out"));
    let mut sink = s.open_sink(&uri, 0).await.unwrap();
    sink.write(b"one\n").await.unwrap();
    sink.write(b"two\n").await.unwrap();
    let position = sink.commit(&s).await.unwrap();
    assert_eq!(position, 8);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/job/a.jsonl.out")).unwrap(),
        "one\ntwo\n"
    );
    sink.write(b"three (never committed)\n").await.unwrap();
    sink.commit(&s).await.unwrap();
    drop(sink); // a crash after this point: the checkpoint still says 8

    let mut sink = s.open_sink(&uri, position).await.unwrap();
    sink.write(b"three\n").await.unwrap();
    sink.finish(&s).await.unwrap().cleanup(&s).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/job/a.jsonl.out")).unwrap(),
        "one\ntwo\nthree\n"
    );
    let too_far = s.open_sink(&uri, 1_000).await;
    assert!(
        too_far.is_err(),
        "a checkpoint beyond the file is an error, not silent loss"
    );
}

#[tokio::test]
async fn read_bytes_streams_an_object_as_written_and_misses_are_not_found() {
    use futures::TryStreamExt;
    let dir = tempfile::tempdir().unwrap();
    let s = storage(dir.path());
    let uri = StorageUri::parse("s3://bucket/files/file-1").unwrap();
    // 7 MiB of bytes that are not lines: more than one upload part, read in many chunks.
    let data: Vec<u8> = (0..7 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let mut w = s.create(&uri).unwrap();
    for chunk in data.chunks(100_000) {
        w.write(chunk).await.unwrap();
    }
    w.finish().await.unwrap();
    let chunks: Vec<Bytes> = s
        .read_bytes(&uri)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(chunks.len() > 1, "one chunk of {} bytes", data.len());
    assert_eq!(chunks.concat(), data);
    let missing = StorageUri::parse("s3://bucket/files/file-2").unwrap();
    assert!(matches!(
        s.read_bytes(&missing).await.err(),
        Some(StorageError::NotFound { .. })
    ));
}

/// A symbolic link inside the buckets folder cannot lead a bucket's key out of it: neither to
/// read nor to write nor to list; a link that stays inside is followed.
#[tokio::test]
async fn links_out_of_the_buckets_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jsonl"), "{}\n").unwrap();
    let s = storage(dir.path());
    let bucket = dir.path().join("buckets/bkt");
    std::fs::create_dir_all(bucket.join("real")).unwrap();
    std::fs::write(bucket.join("real/in.jsonl"), "{}\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), bucket.join("out")).unwrap();
    std::os::unix::fs::symlink(bucket.join("real"), bucket.join("inside")).unwrap();
    for uri in [
        "s3://bkt/out/secret.jsonl",
        "s3://bkt/out/",
        "s3://bkt/out/new/file.jsonl",
    ] {
        let uri = StorageUri::parse(uri).unwrap();
        let read = s.get(&uri).await.unwrap_err();
        assert!(
            matches!(&read, StorageError::BadUri { reason, .. } if reason.contains("symbolic link")),
            "{uri}: {read}"
        );
        assert!(s.create(&uri).is_err(), "{uri}");
        assert!(s.list_inputs(&uri).await.is_err(), "{uri}");
    }
    let inside = StorageUri::parse("s3://bkt/inside/in.jsonl").unwrap();
    assert_eq!(s.get(&inside).await.unwrap(), Bytes::from_static(b"{}\n"));
}
