//! Crash tests of `batchd run`: SIGKILL the process at random points, then
//! `batchd run --resume JOB_ID`, many times over. Each input record must end in the output
//! exactly once, in input order, with an exact manifest.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BATCHD: &str = env!("CARGO_BIN_EXE_batchd");
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(fake: &FakeServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[engine]\nbackoff_base_ms = 5\nbackoff_max_ms = 50\n\n[[models]]\nid = \"{MODEL}\"\n\
             backend = \"openai\"\nbase_url = \"{}\"\nmodel = \"fake\"\nmax_concurrency = 16\n",
            fake.base_url()
        );
        std::fs::write(dir.path().join("batchd.toml"), config).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `name` with `n` records under `in/`; returns their recordIds.
    fn write_input(&self, name: &str, n: usize) -> Vec<String> {
        std::fs::create_dir_all(self.path("in")).unwrap();
        let mut text = String::new();
        let ids: Vec<String> = (0..n).map(|i| format!("{name}-{i:05}")).collect();
        for id in &ids {
            let record = json!({
                "recordId": id,
                "modelInput": {"messages": [{"role": "user", "content": [{"text": format!("record {id}")}]}]},
            });
            text.push_str(&record.to_string());
            text.push('\n');
        }
        std::fs::write(self.path("in").join(name), text).unwrap();
        ids
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BATCHD);
        cmd.args(args)
            .arg("--config")
            .arg(self.path("batchd.toml"))
            .arg("--data-dir")
            .arg(self.path("data"))
            .arg("--quiet")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Starts a run, reads its job id from the first stderr line, and kills it with SIGKILL after
/// `after`; returns the job id, or None when the run ended before the kill.
async fn run_and_kill(env: &Env, args: &[&str], after: Duration) -> (String, bool) {
    let mut child = env
        .command(args)
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
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 3,
        latency_jitter_ms: 25,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let env = Env::new(&fake);
    let ids = env.write_input("records.jsonl", 3000);
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
        let output = env.command(&resume).output().await.unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    }

    let job_dir = env.path("out").join(&job_id);
    let lines = read_jsonl(&job_dir.join("records.jsonl.out"));
    let got: Vec<&str> = lines
        .iter()
        .map(|l| l["recordId"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), ids.len(), "lost or repeated records");
    assert_eq!(got, ids, "order or identity differs");
    assert!(lines.iter().all(|l| l.get("modelOutput").is_some()));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(job_dir.join("manifest.json.out")).unwrap())
            .unwrap();
    assert_eq!(manifest["totalRecordCount"], 3000);
    assert_eq!(manifest["processedRecordCount"], 3000);
    assert_eq!(manifest["successRecordCount"], 3000);
    assert_eq!(manifest["errorRecordCount"], 0);
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
    let output = env.command(&resume).output().await.unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already ended"));
}

#[tokio::test]
async fn a_new_run_points_at_the_interrupted_one_and_a_running_job_cannot_be_resumed_twice() {
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 200,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let env = Env::new(&fake);
    env.write_input("slow.jsonl", 200);
    let input = env.path("in/slow.jsonl").display().to_string();
    let out = env.path("out").display().to_string();
    let args = ["run", &input, "--model-id", MODEL, "--out", &out];
    let (job_id, killed) = run_and_kill(&env, &args, Duration::from_millis(800)).await;
    assert!(killed);

    // Resume in the background; a second resume meanwhile is refused.
    let mut first = env
        .command(&["run", "--resume", &job_id])
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
    let second = env
        .command(&["run", "--resume", &job_id])
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
    std::fs::write(env.path("in/one.jsonl"), "{\"recordId\":\"x\",\"modelInput\":{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"hi\"}]}]}}\n").unwrap();
    let one = env.path("in/one.jsonl").display().to_string();
    let output = env
        .command(&["run", &one, "--model-id", MODEL, "--out", &out])
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
