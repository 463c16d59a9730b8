//! `batchd results`: the analysis of jobs whose outcome is known (the fake backend failing
//! exactly the records with a marker), checked number by number against the job's own
//! output; the analysis file beside the job's folder; CSV/Parquet exports; seed-API results
//! read from an output location, and their defects.

use std::path::Path;

use batchd_testkit::harness::{
    Config, Model, TestEnv, converse_record, describe, manifest, read_jsonl, write_jsonl,
};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::{Value, json};

use crate::{MODEL, test_env};

/// Records whose prompt holds it fail with 400 (not retried): an exact error count.
const MARKER: &str = "FAIL-THIS-ONE";

fn env_for(fake: &FakeServer) -> TestEnv {
    test_env(
        &Config::new().backoff_ms(1, 20).model(
            Model::fake(MODEL, fake)
                .max_concurrency(4)
                .set("price_per_million_input_tokens", 3.0)
                .set("price_per_million_output_tokens", 15.0),
        ),
    )
}

/// `n` records, every 4th (r000, r004, ...) carrying the marker.
fn write_records(path: &Path, n: usize) {
    write_jsonl(
        path,
        (0..n).map(|i| {
            let text = if i % 4 == 0 {
                format!("{MARKER} {i}")
            } else {
                format!("hello {i}")
            };
            converse_record(&format!("r{i:03}"), &text)
        }),
    );
}

/// `batchd results ARGS`, which must succeed; its stdout.
async fn results(env: &TestEnv, args: &[&str]) -> String {
    let mut all = vec!["results"];
    all.extend_from_slice(args);
    let out = env.batchd(&all).await;
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

async fn results_json(env: &TestEnv, job: &str) -> Value {
    serde_json::from_str(&results(env, &["--format", "json", job]).await).unwrap()
}

/// numpy.percentile(x, p) (linear) over sorted x, written out independently of batchd's.
fn numpy_percentile(sorted: &[f64], p: f64) -> f64 {
    let index = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (index.floor() as usize, index.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (index - lo as f64)
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

/// Runs 20 records (5 marked) on the fake; returns the env, the job's folder and its id.
async fn finished_job(fake: &FakeServer) -> (TestEnv, std::path::PathBuf, String) {
    let env = env_for(fake);
    let input = env.path("in/records.jsonl");
    write_records(&input, 20);
    let (out, job_dir) = env.run(&[&input], MODEL, "out", &["--quiet"]).await;
    assert!(out.status.success(), "{}", describe(&out));
    let job_dir = job_dir.expect("a job folder");
    let job_id = job_dir.file_name().unwrap().to_str().unwrap().to_owned();
    (env, job_dir, job_id)
}

/// A fake with `config` that fails the records whose prompt holds [`MARKER`].
async fn marker_fake(config: FakeConfig) -> FakeServer {
    FakeServer::start(FakeConfig {
        fail_when_prompt_contains: Some(MARKER.into()),
        ..config
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_a_run_match_its_output_exactly() {
    let fake = marker_fake(FakeConfig::latency(5, 20)).await;
    let (env, job_dir, job_id) = finished_job(&fake).await;
    let a = results_json(&env, &job_id).await;
    assert_eq!(a["job_id"], job_id.as_str());
    assert_eq!(a["model_id"], MODEL);
    assert_eq!(a["dialect"], "bedrock");
    assert_eq!(
        [
            &a["total_processed"],
            &a["success_count"],
            &a["error_count"]
        ],
        [&json!(20), &json!(15), &json!(5)]
    );
    assert_eq!(a["success_rate"], 0.75);
    assert_eq!(
        a["errors_by_code"],
        json!([{"code": "400", "count": 5, "other_messages": 0,
            "top_messages": [{"message": "Invalid request (fake server).", "count": 5}]}])
    );
    // The percentiles of the output's own latencyMs values (successes only: error lines
    // carry no time).
    let lines = read_jsonl(&job_dir.join("records.jsonl.out"));
    let mut times: Vec<f64> = lines
        .iter()
        .filter_map(|l| l["modelOutput"]["metrics"]["latencyMs"].as_f64())
        .map(|ms| ms / 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    assert_eq!(times.len(), 15);
    let t = &a["processing_time"];
    assert_eq!((&t["records"], &t["excluded"]), (&json!(15), &json!(5)));
    for (key, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
        let want = numpy_percentile(&times, p);
        assert!(close(&t[key], want), "{key}: {} vs {want}", t[key]);
    }
    let mean = times.iter().sum::<f64>() / 15.0;
    assert!(close(&t["mean"], mean), "{t}");
    assert_eq!(a["average_processing_time"], t["mean"]);
    // Tokens are the manifest's; the cost is theirs at the configured prices.
    let m = manifest(&job_dir);
    assert_eq!(a["input_tokens"], m["inputTokenCount"]);
    assert_eq!(a["output_tokens"], m["outputTokenCount"]);
    let (input, output) = (
        m["inputTokenCount"].as_f64().unwrap(),
        m["outputTokenCount"].as_f64().unwrap(),
    );
    assert!(
        close(&a["cost"]["total"], (input * 3.0 + output * 15.0) / 1e6),
        "{a}"
    );
    let wall = a["wall_time_seconds"].as_f64().unwrap();
    assert!(wall > 0.0, "{a}");
    assert!(close(&a["records_per_second"], 20.0 / wall), "{a}");

    // The job wrote the same analysis beside its folder (its wall time ends a moment
    // earlier, before the job's final status).
    let beside = job_dir.with_extension("analysis.json");
    assert_eq!(beside.parent(), job_dir.parent());
    let written: Value = serde_json::from_slice(&std::fs::read(&beside).unwrap()).unwrap();
    for key in [
        "total_processed",
        "errors_by_code",
        "processing_time",
        "cost",
    ] {
        assert_eq!(written[key], a[key], "{key}");
    }
    assert!(!job_dir.join(beside.file_name().unwrap()).exists());

    // The ARN and the output location give the same figures; the table shows them.
    let arn = format!("arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/{job_id}");
    let by_arn = results_json(&env, &arn).await;
    assert_eq!(by_arn["processing_time"], a["processing_time"]);
    let location = format!("file://{}/", job_dir.display());
    let by_location = results_json(&env, &location).await;
    assert_eq!(by_location["errors_by_code"], a["errors_by_code"]);
    let table = results(&env, &[&job_id]).await;
    for row in [
        "total processed  20\n",
        "succeeded        15 (75.00%)\n",
        "errors           5\n",
        "  400            5\n",
        "5 × Invalid request (fake server).\n",
        "over 15 records; 5 without a processing time excluded\n",
    ] {
        assert!(table.contains(row), "{row:?} in\n{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_have_one_row_per_record_joining_input_and_output() {
    let fake = marker_fake(FakeConfig::default()).await;
    let (env, _job_dir, job_id) = finished_job(&fake).await;
    let csv = env.path("results.csv");
    results(&env, &[&job_id, "--export", csv.to_str().unwrap()]).await;
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 21, "{text}");
    assert_eq!(
        rows[0],
        "file,position,id,status,input,output,processing_time,input_tokens,output_tokens,attempts,error_code,error_message,metadata"
    );
    // r001: its input (quoted, quotes doubled), the model's text, a time and tokens.
    let r001 = rows[2];
    // (The input is the record's modelInput byte for byte; json! wrote its keys sorted.)
    let head = r#"records.jsonl.out,2,r001,SUCCESS,"{""messages"":[{""content"":[{""text"":""hello 1""}],""role"":""user""}]}",echo: hello 1,"#;
    assert!(r001.starts_with(head), "{r001}");
    assert!(
        rows[1].ends_with(",400,Invalid request (fake server).,"),
        "{}",
        rows[1]
    );
    let parquet = env.path("results.parquet");
    results(&env, &[&job_id, "--export", parquet.to_str().unwrap()]).await;
    let bytes = std::fs::read(&parquet).unwrap();
    // A Parquet file starts and ends with its magic.
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    assert!(bytes.len() > 200, "{} bytes", bytes.len());
    let out = env
        .batchd(&["results", &job_id, "--export", "results.xlsx"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must end in .csv or .parquet"),
        "{}",
        describe(&out)
    );
}

fn seed(id: &str, time: f64, error: Option<(&str, &str)>) -> Value {
    json!({"id": id, "status": if error.is_some() { "ERROR" } else { "SUCCESS" },
        "output": error.is_none().then_some("text"), "processing_time": time,
        "input_tokens": 5, "output_tokens": if error.is_some() { 0 } else { 7 }, "attempts": 1,
        "error": error.map(|(code, message)| json!({"code": code, "message": message})),
        "metadata": {"source": "test"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_results_at_an_output_location_are_analysed_and_defects_located() {
    let env = test_env(&Config::new());
    let dir = env.path("out/abcdefghijkl");
    std::fs::create_dir_all(&dir).unwrap();
    let array = json!([
        seed("d1", 0.5, None),
        seed("d2", 0.1, None),
        seed("d3", 2.0, Some(("ThrottlingException", "Rate exceeded"))),
        seed("d4", 0.3, None),
    ]);
    std::fs::write(dir.join("batch_0.json"), array.to_string()).unwrap();
    write_jsonl(
        &dir.join("batch_1.jsonl"),
        [
            seed("d5", 0.2, Some(("ThrottlingException", "Rate exceeded"))),
            seed("d6", 0.4, Some(("ValidationException", "bad input"))),
        ],
    );
    let a = results_json(&env, dir.to_str().unwrap()).await;
    assert_eq!(a["dialect"], "seed");
    assert_eq!(a["result_files"], 2);
    assert_eq!(
        (&a["total_processed"], &a["error_count"]),
        (&json!(6), &json!(3))
    );
    assert_eq!(a["success_rate"], 0.5);
    assert_eq!(a["errors_by_code"][0]["code"], "ThrottlingException");
    assert_eq!(a["errors_by_code"][0]["count"], 2);
    assert_eq!(a["errors_by_code"][1]["code"], "ValidationException");
    // Sorted 0.1 0.2 0.3 0.4 0.5 2.0 (errors have times too). numpy: p50 index 2.5 → 0.35;
    // p90 index 4.5 → 0.5 + 0.5*1.5 = 1.25; p99 index 4.95 → 0.5 + 0.95*1.5 = 1.925;
    // mean 3.5/6.
    let t = &a["processing_time"];
    assert!(close(&t["p50"], 0.35), "{t}");
    assert!(close(&t["p90"], 1.25), "{t}");
    assert!(close(&t["p99"], 1.925), "{t}");
    assert!(close(&t["mean"], 3.5 / 6.0), "{t}");
    assert_eq!(
        (&a["input_tokens"], &a["output_tokens"]),
        (&json!(30), &json!(21))
    );
    // No job: no wall time, no throughput, no cost.
    assert_eq!(
        [
            &a["wall_time_seconds"],
            &a["records_per_second"],
            &a["cost"]
        ],
        [&Value::Null, &Value::Null, &Value::Null]
    );

    // A result that is no result: the error names the file, the item and the field.
    let broken = json!([seed("e1", 0.1, None), {"id": "e2", "output": "x"}]);
    std::fs::write(dir.join("batch_0.json"), broken.to_string()).unwrap();
    let out = env.batchd(&["results", dir.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}: item 1: status: missing",
            dir.join("batch_0.json").display()
        )),
        "{stderr}"
    );
    std::fs::write(dir.join("batch_0.json"), "[]").unwrap();
    std::fs::write(
        dir.join("batch_1.jsonl"),
        "{\"id\": \"x\", \"status\": \"SUCCESS\"}\nnot json\n",
    )
    .unwrap();
    let out = env.batchd(&["results", dir.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:2: result: invalid JSON",
            dir.join("batch_1.jsonl").display()
        )),
        "{stderr}"
    );
    // A job id the store does not know.
    let out = env.batchd(&["results", "zzzzzzzzzzzz"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("zzzzzzzzzzzz: no such job"),
        "{}",
        describe(&out)
    );
}

#[tokio::test]
async fn invoke_model_jobs_keep_processing_times_beside_their_unchanged_output() {
    let fake = marker_fake(FakeConfig::latency(40, 0)).await;
    let env = env_for(&fake);
    let input = env.path("in/claude.jsonl");
    write_jsonl(
        &input,
        (0..6).map(|i| {
            let text = if i == 2 {
                format!("{MARKER} {i}")
            } else {
                format!("hi {i}")
            };
            json!({"recordId": format!("c{i}"), "modelInput": {
                "anthropic_version": "bedrock-2023-05-31", "max_tokens": 16,
                "messages": [{"role": "user", "content": text}]}})
        }),
    );
    let (out, job_dir) = env
        .run(
            &[&input],
            MODEL,
            "out",
            &["--invocation-type", "invoke-model", "--quiet"],
        )
        .await;
    assert!(out.status.success(), "{}", describe(&out));
    let job_dir = job_dir.unwrap();
    let job_id = job_dir.file_name().unwrap().to_str().unwrap().to_owned();
    // Bedrock's lines are as Bedrock writes them; the times sit beside the job's folder.
    for line in read_jsonl(&job_dir.join("claude.jsonl.out")) {
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            keys == ["error", "modelInput", "recordId"]
                || keys == ["modelInput", "modelOutput", "recordId"],
            "{keys:?}"
        );
    }
    let side = env.path(&format!("out/{job_id}.timings/claude.jsonl.jsonl"));
    let times = read_jsonl(&side);
    assert_eq!(times.len(), 6, "one line per output line");
    // Record 2 is the fast one: the least time, whatever the machine's load adds to all.
    let ms: Vec<u64> = times
        .iter()
        .map(|t| t["latencyMs"].as_u64().unwrap())
        .collect();
    assert!(
        ms.iter()
            .enumerate()
            .all(|(i, &m)| i == 2 || (m >= 40 && m > ms[2])),
        "{times:?}"
    );

    let a = results_json(&env, &job_id).await;
    let time = &a["processing_time"];
    // The failed record made a call too: it has a time (a short one: the fake fails at once).
    assert_eq!(
        (&time["records"], &time["excluded"]),
        (&json!(6), &json!(0)),
        "{a}"
    );
    assert!(time["min"].as_f64().unwrap() < 0.04, "{a}");
    assert!(time["p50"].as_f64().unwrap() >= 0.04, "{a}");
}
