//! Crash tests of `batchd run`: SIGKILL the process at random points, then
//! `batchd run --resume JOB_ID`, many times over. Each input record must end in the output
//! exactly once, in input order, with an exact manifest.

use std::process::Stdio;
use std::time::Duration;

use batchd_testkit::harness::{
    Config, Model, TestEnv, assert_counts, converse_record, describe, manifest, read_jsonl,
    record_ids, write_jsonl,
};
use batchd_testkit::{FakeConfig, FakeServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::{MODEL, test_env};

fn env_for(fake: &FakeServer) -> TestEnv {
    test_env(
        &Config::new()
            .backoff_ms(5, 50)
            .model(Model::fake(MODEL, fake).max_concurrency(16)),
    )
}

/// Writes `name` with `n` records under `in/`; returns their recordIds.
fn write_input(env: &TestEnv, name: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{name}-{i:05}")).collect();
    write_jsonl(
        &env.path("in").join(name),
        ids.iter()
            .map(|id| converse_record(id, &format!("record {id}"))),
    );
    ids
}

/// `batchd ARGS --quiet` in `env`.
fn command(env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = env.command(args);
    cmd.arg("--quiet");
    cmd
}

/// Starts a run, reads its job id from the first stderr line, and kills it with SIGKILL after
/// `after`; returns the job id, or None when the run ended before the kill.
async fn run_and_kill(env: &TestEnv, args: &[&str], after: Duration) -> (String, bool) {
    let mut child = command(env, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut job_id = None;
    // The first line naming the job: "job ID: ..." or "resuming job ID from ...".
    while job_id.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("no job line within 60 s")
            .unwrap()
            .expect("batchd run exited before naming its job");
        let words: Vec<&str> = line.split_whitespace().collect();
        job_id = match words.as_slice() {
            ["job", id, ..] => Some(id.trim_end_matches(':').to_owned()),
            ["resuming", "job", id, ..] => Some((*id).to_owned()),
            _ => None,
        };
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let killed = tokio::select! {
        status = child.wait() => {
            assert!(status.unwrap().success(), "run ended with a failure before the kill");
            false
        }
        _ = tokio::time::sleep(after) => {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            true
        }
    };
    (job_id.unwrap(), killed)
}

#[tokio::test]
async fn sigkill_batchd_run_at_random_points_then_resume_loses_and_repeats_nothing() {
    let fake = FakeServer::start(FakeConfig::latency(3, 25)).await.unwrap();
    let env = env_for(&fake);
    let ids = write_input(&env, "records.jsonl", 3000);
    let input = env.path("in/records.jsonl").display().to_string();
    let out = env.path("out").display().to_string();

    let first = ["run", &input, "--model-id", MODEL, "--out", &out];
    let (job_id, mut killed) = run_and_kill(&env, &first, Duration::from_millis(300)).await;
    let mut kills = u32::from(killed);
    let resume = ["run", "--resume", &job_id];
    while killed && kills < 12 {
        let after = Duration::from_millis(fastrand::u64(50..400));
        let (resumed_id, k) = run_and_kill(&env, &resume, after).await;
        assert_eq!(resumed_id, job_id);
        killed = k;
        kills += u32::from(k);
    }
    assert!(
        kills >= 10,
        "only {kills} kills landed before the job ended"
    );
    if killed {
        // Let the last resume finish.
        let output = command(&env, &resume).output().await.unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    }

    let job_dir = env.path("out").join(&job_id);
    let lines = read_jsonl(&job_dir.join("records.jsonl.out"));
    let got = record_ids(&lines);
    assert_eq!(got.len(), ids.len(), "lost or repeated records");
    assert_eq!(got, ids, "order or identity differs");
    assert!(lines.iter().all(|l| l.get("modelOutput").is_some()));
    let manifest = manifest(&job_dir);
    assert_counts(&manifest, 3000, 0);
    let input_tokens: u64 = lines
        .iter()
        .map(|l| l["modelOutput"]["usage"]["inputTokens"].as_u64().unwrap())
        .sum();
    assert_eq!(manifest["inputTokenCount"], input_tokens);

    // Work redone is bounded by what was in flight or not yet checkpointed (100 ms of
    // output) at each kill, not by the job's size.
    let redone = fake.stats().chat.saturating_sub(3000);
    assert!(
        redone <= u64::from(kills) * 150,
        "{redone} records ran twice over {kills} kills"
    );

    // The job has ended: resuming it again is refused.
    let output = command(&env, &resume).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already ended"));
}

#[tokio::test]
async fn a_new_run_points_at_the_interrupted_one_and_a_running_job_cannot_be_resumed_twice() {
    let fake = FakeServer::start(FakeConfig::latency(200, 0))
        .await
        .unwrap();
    let env = env_for(&fake);
    write_input(&env, "slow.jsonl", 200);
    let input = env.path("in/slow.jsonl").display().to_string();
    let out = env.path("out").display().to_string();
    let args = ["run", &input, "--model-id", MODEL, "--out", &out];
    let (job_id, killed) = run_and_kill(&env, &args, Duration::from_millis(800)).await;
    assert!(killed);

    // Resume in the background; a second resume meanwhile is refused.
    let mut first = command(&env, &["run", "--resume", &job_id])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    assert!(
        line.starts_with(&format!("resuming job {job_id}")),
        "{line}"
    );
    let second = command(&env, &["run", "--resume", &job_id])
        .output()
        .await
        .unwrap();
    assert_eq!(second.status.code(), Some(2), "{}", describe(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("being run by another process"),
        "{}",
        describe(&second)
    );
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    // A new run in the same data dir mentions the interrupted job and how to resume it.
    write_jsonl(&env.path("in/one.jsonl"), [converse_record("x", "hi")]);
    let one = env.path("in/one.jsonl").display().to_string();
    let output = command(&env, &["run", &one, "--model-id", MODEL, "--out", &out])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("batchd run --resume {job_id}")),
        "{err}"
    );
}
