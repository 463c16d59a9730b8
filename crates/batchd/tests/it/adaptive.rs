//! Adaptive concurrency end to end: `batchd run` against a fake that answers 429 (with
//! `Retry-After`) to every request beyond its capacity. The limiter must learn the capacity:
//! no record fails, and 429s become rarer as the job goes on.

use std::time::Duration;

use batchd_testkit::harness::{
    Config, Model, converse_record, describe, first_entry, read_jsonl, write_jsonl,
};
use batchd_testkit::{FakeConfig, FakeServer};

use crate::{MODEL, test_env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_learns_a_rate_limited_backend_and_no_record_fails() {
    const N: u64 = 240;
    let fake = FakeServer::start(FakeConfig {
        capacity: Some(4),
        retry_after_secs: Some(1),
        ..FakeConfig::latency(10, 10)
    })
    .await
    .unwrap();
    let env = test_env(
        &Config::new()
            .backoff_ms(5, 50)
            .engine("max_attempts", 50)
            .model(Model::fake(MODEL, &fake).max_concurrency(16)),
    );
    let input = env.path("in.jsonl");
    write_jsonl(
        &input,
        (0..N).map(|i| converse_record(&format!("r{i:04}"), &format!("n {i}"))),
    );

    let out = env.path("out");
    let child = env
        .command(&[
            "run",
            input.to_str().unwrap(),
            "--model-id",
            MODEL,
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The fake's counters when half the records have succeeded.
    let run = tokio::spawn(child.wait_with_output());
    let mut half = None;
    while !run.is_finished() {
        let stats = fake.stats();
        if half.is_none() && stats.ok >= N / 2 {
            half = Some(stats);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let report = describe(&output);
    assert!(output.status.success(), "{report}");
    let end = fake.stats();
    let half = half.unwrap();

    let job_dir = first_entry(&out).unwrap();
    let lines = read_jsonl(&job_dir.join("in.jsonl.out"));
    assert_eq!(lines.len() as u64, N);
    let errors = lines.iter().filter(|l| l.get("error").is_some()).count();
    assert_eq!(errors, 0, "zero error records\n{report}");
    assert_eq!(end.ok, N);

    let rate = |r429: u64, requests: u64| r429 as f64 / requests.max(1) as f64;
    let first = rate(half.status_429, half.requests);
    let second = rate(
        end.status_429 - half.status_429,
        end.requests - half.requests,
    );
    eprintln!(
        "429 rate: first half {first:.3} ({} of {}), second half {second:.3} ({} of {})",
        half.status_429,
        half.requests,
        end.status_429 - half.status_429,
        end.requests - half.requests
    );
    assert!(first > 0.0, "the fake was overloaded at first");
    assert!(
        second < first,
        "the 429 rate falls as the limit adapts: {first:.3} then {second:.3}"
    );
}
