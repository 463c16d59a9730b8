//! Adaptive concurrency end to end: `batchd run` against a fake that answers 429 (with
//! `Retry-After`) to every request beyond its capacity. The limiter must learn the capacity:
//! no record fails, and 429s become rarer as the job goes on.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::time::Duration;

use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::{Value, json};

const BATCHD: &str = env!("CARGO_BIN_EXE_batchd");
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_learns_a_rate_limited_backend_and_no_record_fails() {
    const N: u64 = 240;
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 10,
        latency_jitter_ms: 10,
        capacity: Some(4),
        retry_after_secs: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[engine]\nbackoff_base_ms = 5\nbackoff_max_ms = 50\nmax_attempts = 50\n\n\
         [[models]]\nid = \"{MODEL}\"\nbackend = \"openai\"\nbase_url = \"{}\"\n\
         model = \"fake\"\nmax_concurrency = 16\n",
        fake.base_url()
    );
    std::fs::write(dir.path().join("batchd.toml"), config).unwrap();
    let input = dir.path().join("in.jsonl");
    let mut text = String::new();
    for i in 0..N {
        let record = json!({
            "recordId": format!("r{i:04}"),
            "modelInput": {"messages": [{"role": "user", "content": [{"text": format!("n {i}")}]}]},
        });
        text.push_str(&record.to_string());
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();

    let out = dir.path().join("out");
    let child = tokio::process::Command::new(BATCHD)
        .arg("run")
        .arg(&input)
        .args(["--model-id", MODEL, "--quiet", "--out"])
        .arg(&out)
        .arg("--config")
        .arg(dir.path().join("batchd.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
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
    let report = format!(
        "{:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    let end = fake.stats();
    let half = half.unwrap();

    let job_dir = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let lines: Vec<Value> = std::fs::read_to_string(job_dir.join("in.jsonl.out"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
