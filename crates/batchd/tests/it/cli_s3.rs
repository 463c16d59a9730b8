//! `batchd run` with `[storage] s3_endpoint` against a real S3-compatible server (moto):
//! input prefix and output prefix in a bucket, credentials from `AWS_*` variables.

use batchd_storage::{Storage, StorageConfig, StorageUri};
use batchd_testkit::harness::{Config, Model, assert_counts, converse_record, describe};
use batchd_testkit::moto::MotoServer;
use batchd_testkit::{FakeConfig, FakeServer};
use bytes::Bytes;
use serde_json::Value;

use crate::test_env;

/// `n` Converse records with ids `<prefix>0`, `<prefix>1`, ...
fn records(prefix: &str, n: usize) -> Bytes {
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{}\n",
                converse_record(&format!("{prefix}{i}"), &format!("q {i}"))
            )
        })
        .collect();
    Bytes::from(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reads_and_writes_an_s3_compatible_store() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("jobs-bucket");
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let env = test_env(
        &Config::new()
            .storage("s3_endpoint", moto.endpoint())
            .model(Model::openai("m", &fake.base_url())),
    )
    .env("AWS_ACCESS_KEY_ID", "test")
    .env("AWS_SECRET_ACCESS_KEY", "test")
    .env("AWS_REGION", "us-east-1");
    let storage = Storage::new(StorageConfig {
        data_dir: env.root().into(),
        s3_endpoint: Some(moto.endpoint()),
        s3_region: Some("us-east-1".into()),
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        s3_session_token: None,
    });
    let uri = |k: &str| StorageUri::parse(&format!("s3://jobs-bucket/{k}")).unwrap();
    storage
        .put(&uri("batch/in/part-1.jsonl"), records("a", 5))
        .await
        .unwrap();
    storage
        .put(&uri("batch/in/more/part-2.jsonl"), records("b", 3))
        .await
        .unwrap();

    let out = env
        .batchd(&[
            "run",
            "s3://jobs-bucket/batch/in/",
            "--model-id",
            "m",
            "--out",
            "s3://jobs-bucket/batch/out/",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    let job_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("job:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let lines = |bytes: Bytes| -> Vec<Value> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let one = lines(
        storage
            .get(&uri(&format!("batch/out/{job_id}/part-1.jsonl.out")))
            .await
            .unwrap(),
    );
    let two = lines(
        storage
            .get(&uri(&format!("batch/out/{job_id}/more/part-2.jsonl.out")))
            .await
            .unwrap(),
    );
    assert_eq!(
        one.iter()
            .map(|l| l["recordId"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a0", "a1", "a2", "a3", "a4"]
    );
    assert_eq!(two.len(), 3);
    assert!(
        one.iter()
            .chain(&two)
            .all(|l| l["modelOutput"]["output"]["message"]["role"] == "assistant")
    );
    let manifest: Value = serde_json::from_slice(
        &storage
            .get(&uri(&format!("batch/out/{job_id}/manifest.json.out")))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_counts(&manifest, 8, 0);
    assert!(
        !env.path("data/buckets").exists(),
        "with an endpoint nothing goes to the local buckets"
    );
}
