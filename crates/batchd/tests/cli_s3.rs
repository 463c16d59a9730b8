//! `batchd run` with `[storage] s3_endpoint` against a real S3-compatible server (moto):
//! input prefix and output prefix in a bucket, credentials from `AWS_*` variables.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use batchd_storage::{Storage, StorageConfig, StorageUri};
use batchd_testkit::moto::MotoServer;
use batchd_testkit::{FakeConfig, FakeServer};
use bytes::Bytes;
use serde_json::Value;

const BATCHD: &str = env!("CARGO_BIN_EXE_batchd");

fn records(prefix: &str, n: usize) -> Bytes {
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"recordId\":\"{prefix}{i}\",\"modelInput\":{{\"messages\":[{{\"role\":\"user\",\"content\":[{{\"text\":\"q {i}\"}}]}}]}}}}\n"
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
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(StorageConfig {
        data_dir: dir.path().into(),
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

    let config = dir.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ns3_endpoint = \"{}\"\n\n[[models]]\nid = \"m\"\nbackend = \"openai\"\nbase_url = \"{}\"\n",
            moto.endpoint(),
            fake.base_url()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(BATCHD)
        .args([
            "run",
            "s3://jobs-bucket/batch/in/",
            "--model-id",
            "m",
            "--out",
            "s3://jobs-bucket/batch/out/",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert_eq!(manifest["totalRecordCount"], 8);
    assert_eq!(manifest["successRecordCount"], 8);
    assert!(
        !dir.path().join("data/buckets").exists(),
        "with an endpoint nothing goes to the local buckets"
    );
}
