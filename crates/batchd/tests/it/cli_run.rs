//! `batchd run` and `batchd validate` against the fake OpenAI-compatible server: output layout,
//! line shapes, order and the manifest.

use std::path::Path;
use std::process::Output;

use batchd_testkit::harness::{
    Config, Model, TestEnv, assert_counts, converse_record, describe, first_entry, manifest,
    read_jsonl, shared_data, write_jsonl,
};
use batchd_testkit::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::{MODEL, test_env};

/// A config naming the fake server as `MODEL`.
fn env_for(fake: &FakeServer) -> TestEnv {
    test_env(
        &Config::new()
            .backoff_ms(1, 20)
            .model(Model::fake(MODEL, fake).max_concurrency(8)),
    )
}

async fn run(
    env: &TestEnv,
    inputs: &[&Path],
    extra: &[&str],
) -> (Output, Option<std::path::PathBuf>) {
    env.run(inputs, MODEL, "out", extra).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Checks one success line against its input record.
fn assert_success_line(out: &Value, input: &Value) {
    assert_eq!(
        out["modelInput"], input["modelInput"],
        "modelInput is echoed unchanged"
    );
    assert!(out.get("error").is_none(), "{out}");
    let m = &out["modelOutput"];
    assert_eq!(m["output"]["message"]["role"], "assistant");
    let text = m["output"]["message"]["content"][0]["text"]
        .as_str()
        .unwrap();
    assert!(text.starts_with("echo:"), "{text}");
    let stop = m["stopReason"].as_str().unwrap();
    assert!(
        ["end_turn", "max_tokens", "stop_sequence"].contains(&stop),
        "{stop}"
    );
    let usage = &m["usage"];
    let (i, o, t) = (
        usage["inputTokens"].as_u64().unwrap(),
        usage["outputTokens"].as_u64().unwrap(),
        usage["totalTokens"].as_u64().unwrap(),
    );
    assert!(i > 0 && o > 0);
    assert_eq!(t, i + o);
    assert!(m["metrics"]["latencyMs"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_every_broken_line_and_field_and_no_valid_line() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let env = env_for(&fake);
    let file = shared_data("converse-defects.jsonl");
    let out = env.batchd(&["validate", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let mut found: Vec<(u64, String)> = Vec::new();
    for line in stdout(&out).lines() {
        let rest = line
            .strip_prefix(&format!("{}:", file.display()))
            .unwrap_or_else(|| panic!("{line}"));
        let (num, rest) = rest.split_once(": ").unwrap();
        let (field, reason) = rest.split_once(": ").unwrap();
        assert!(!reason.is_empty(), "{line}");
        found.push((num.parse().unwrap(), field.to_string()));
    }
    let expected: Vec<(u64, &str)> = vec![
        (2, "line"),
        (3, "line"),
        (4, "recordId"),
        (5, "modelInput"),
        (6, "modelInput.messages[0].role"),
        (7, "modelInput.messages[0].content"),
        (8, "modelInput.messages[0].content[0]"),
        (9, "modelInput.inferenceConfig.temperature"),
        (10, "recordId"),
    ];
    let expected: Vec<(u64, String)> = expected
        .into_iter()
        .map(|(n, f)| (n, f.to_string()))
        .collect();
    assert_eq!(found, expected, "{}", describe(&out));
    assert!(
        stdout(&out).contains("duplicate \"ok1\""),
        "line 4 names the duplicate id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_defects_fails_before_any_record_runs() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let env = env_for(&fake);
    let (out, job_dir) = run(&env, &[&shared_data("converse-defects.jsonl")], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert!(text.contains("status:    Failed"), "{text}");
    assert!(
        text.contains("converse-defects.jsonl:6: modelInput.messages[0].role:"),
        "{text}"
    );
    assert_eq!(
        fake.stats().requests,
        0,
        "no record may run when validation fails"
    );
    assert!(
        job_dir.is_none(),
        "no output is written for a failed validation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_basic_and_rich_writes_ordered_output_and_manifest() {
    let fake = FakeServer::start(FakeConfig::latency(0, 20)).await.unwrap();
    let env = env_for(&fake);
    let basic = shared_data("converse-basic.jsonl");
    let rich = shared_data("converse-rich.jsonl");
    let (out, job_dir) = run(&env, &[&basic, &rich], &["--concurrency", "4"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job_dir = job_dir.unwrap();
    let job_id = job_dir.file_name().unwrap().to_str().unwrap().to_owned();
    assert_eq!(job_id.len(), 12);
    assert!(stdout(&out).contains(&format!("model-invocation-job/{job_id}")));

    let mut names: Vec<String> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "converse-basic.jsonl.out",
            "converse-rich.jsonl.out",
            "manifest.json.out"
        ]
    );

    let mut total_in = 0;
    let mut total_out = 0;
    for (input, output) in [
        (&basic, "converse-basic.jsonl.out"),
        (&rich, "converse-rich.jsonl.out"),
    ] {
        let inputs = read_jsonl(input);
        let outputs = read_jsonl(&job_dir.join(output));
        assert_eq!(inputs.len(), outputs.len());
        for (i, o) in inputs.iter().zip(&outputs) {
            assert_success_line(o, i);
            match i.get("recordId") {
                Some(id) => assert_eq!(&o["recordId"], id, "output order equals input order"),
                None => {
                    let id = o["recordId"].as_str().unwrap();
                    assert_eq!(id.len(), 11, "{id}");
                    assert!(
                        id.bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
                        "{id}"
                    );
                }
            }
            total_in += o["modelOutput"]["usage"]["inputTokens"].as_u64().unwrap();
            total_out += o["modelOutput"]["usage"]["outputTokens"].as_u64().unwrap();
        }
    }
    let m = manifest(&job_dir);
    assert_eq!(m.as_object().unwrap().len(), 6, "{m}");
    assert_counts(&m, 14, 0);
    assert_eq!(m["inputTokenCount"], total_in);
    assert_eq!(m["outputTokenCount"], total_out);
    assert!(
        fake.stats().max_in_flight <= 4,
        "concurrency bound: {:?}",
        fake.stats()
    );
}

/// A fake that answers 400 to the records `write_records` marks, the others after up to
/// `jitter_ms`.
async fn failing_on_marker(jitter_ms: u64) -> FakeServer {
    FakeServer::start(FakeConfig {
        latency_jitter_ms: jitter_ms,
        fail_when_prompt_contains: Some("FAIL-ME".into()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `n` records with ids `<prefix>-00000`, ...; with `marker_every = Some(k)`, records
/// 1, 1 + k, ... carry the fake's failure marker.
fn write_records(path: &Path, prefix: &str, n: usize, marker_every: Option<usize>) {
    write_jsonl(
        path,
        (0..n).map(|i| {
            let prompt = match marker_every {
                Some(k) if i % k == 1 => format!("please FAIL-ME {i}"),
                _ => format!("prompt number {i}"),
            };
            converse_record(&format!("{prefix}-{i:05}"), &prompt)
        }),
    );
}

/// `--threads` changes how many threads run the job, not what it writes; 0 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_flag_changes_the_threads_not_the_output() {
    let fake = failing_on_marker(3).await;
    let env = env_for(&fake);
    let input = env.path("in/records.jsonl");
    write_records(&input, "rec", 300, Some(7));
    // Each line without its timing, which differs from run to run.
    let lines = |job_dir: &Path| -> Vec<Value> {
        let mut lines = read_jsonl(&job_dir.join("records.jsonl.out"));
        for line in &mut lines {
            if let Some(metrics) = line.pointer_mut("/modelOutput/metrics") {
                *metrics = Value::Null;
            }
        }
        lines
    };
    let mut outputs = Vec::new();
    for extra in [&[][..], &["--threads", "3"][..]] {
        let (out, job_dir) = run(&env, &[&input], extra).await;
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {}", describe(&out));
        let job_dir = job_dir.unwrap();
        assert_counts(&manifest(&job_dir), 300, 43);
        outputs.push(lines(&job_dir));
    }
    assert_eq!(outputs[0].len(), 300);
    assert_eq!(outputs[0], outputs[1]);
    let (out, job_dir) = env.run(&[&input], MODEL, "out0", &["--threads", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(job_dir.is_none());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--threads"),
        "{}",
        describe(&out)
    );
}

/// A model that sets no concurrency runs as many records at once as its server has slots
/// when the server says (llama-server's `GET /props`), else `engine.concurrency` (16);
/// `max_concurrency` and `--concurrency` still win over the server's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_concurrency_is_the_servers_slot_count_when_it_says() {
    let fake = FakeServer::start(FakeConfig {
        latency_ms: 40,
        total_slots: Some(3),
        ..Default::default()
    })
    .await
    .unwrap();
    let check = |model: Model, extra: &'static [&'static str], expected: u64| {
        let fake = &fake;
        async move {
            fake.reset_stats();
            let env = test_env(&Config::new().model(model));
            let input = env.path("in/records.jsonl");
            write_records(&input, "rec", 40, None);
            let (out, _) = run(&env, &[&input], extra).await;
            assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
            assert_eq!(fake.stats().ok, 40, "{:?}", fake.stats());
            assert_eq!(
                fake.stats().max_in_flight,
                expected,
                "{extra:?}: {:?}",
                fake.stats()
            );
        }
    };
    check(Model::fake(MODEL, &fake), &[], 3).await;
    check(Model::fake(MODEL, &fake).max_concurrency(5), &[], 5).await;
    check(Model::fake(MODEL, &fake), &["--concurrency", "2"], 2).await;
    // A server without `/props` (vLLM, Ollama): today's default.
    fake.set_config(FakeConfig::latency(40, 0));
    check(Model::fake(MODEL, &fake), &[], 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_429_and_503_still_all_succeed_through_retries() {
    let fake = FakeServer::start(FakeConfig {
        rate_429: 0.15,
        rate_503: 0.15,
        ..Default::default()
    })
    .await
    .unwrap();
    let env = env_for(&fake);
    let input = env.path("in/records.jsonl");
    write_records(&input, "rec", 300, None);
    // 12 attempts: a record fails only if all 12 draw an error, p = 0.3^12 ≈ 5e-7.
    let (out, job_dir) = run(
        &env,
        &[&input],
        &["--max-attempts", "12", "--concurrency", "16"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job_dir = job_dir.unwrap();
    let lines = read_jsonl(&job_dir.join("records.jsonl.out"));
    assert_eq!(lines.len(), 300);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["recordId"], format!("rec-{i:05}"));
        assert!(
            line.get("modelOutput").is_some(),
            "record {i} failed: {line}"
        );
    }
    assert_counts(&manifest(&job_dir), 300, 0);
    let stats = fake.stats();
    assert!(
        stats.status_429 > 20 && stats.status_503 > 20,
        "the fake did fail requests: {stats:?}"
    );
    assert_eq!(
        stats.ok, 300,
        "exactly one successful call per record: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_becomes_an_error_line_and_the_job_still_completes() {
    let fake = failing_on_marker(0).await;
    let env = env_for(&fake);
    let input = env.path("in/records.jsonl");
    write_records(&input, "rec", 9, Some(3)); // records 1, 4, 7 carry the marker
    let (out, job_dir) = run(&env, &[&input], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(stdout(&out).contains("status:    Completed"));
    let job_dir = job_dir.unwrap();
    let lines = read_jsonl(&job_dir.join("records.jsonl.out"));
    let inputs = read_jsonl(&input);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["modelInput"], inputs[i]["modelInput"]);
        if i % 3 == 1 {
            assert!(line.get("modelOutput").is_none(), "{line}");
            assert_eq!(line["error"]["errorCode"], 400, "{line}");
            assert!(!line["error"]["errorMessage"].as_str().unwrap().is_empty());
        } else {
            assert_success_line(line, &inputs[i]);
        }
    }
    assert_counts(&manifest(&job_dir), 9, 3);
    assert_eq!(fake.stats().status_400, 3, "a 400 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_input_mirrors_sub_folders_in_the_output() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let env = env_for(&fake);
    write_records(&env.path("in/b/deep/second.jsonl"), "second", 3, None);
    write_records(&env.path("in/a/first.jsonl"), "first", 5, None);
    std::fs::write(env.path("in/a/readme.txt"), "not an input").unwrap();
    let (out, job_dir) = run(&env, &[&env.path("in")], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job_dir = job_dir.unwrap();
    assert_eq!(read_jsonl(&job_dir.join("a/first.jsonl.out")).len(), 5);
    assert_eq!(
        read_jsonl(&job_dir.join("b/deep/second.jsonl.out")).len(),
        3
    );
    assert!(!job_dir.join("a/readme.txt.out").exists());
    assert_eq!(manifest(&job_dir)["totalRecordCount"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uris_without_an_endpoint_use_the_data_dir() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let env = env_for(&fake);
    write_records(
        &env.bucket("my-bucket").join("jobs/in/records.jsonl"),
        "rec",
        4,
        None,
    );
    let args = [
        "run",
        "s3://my-bucket/jobs/in/",
        "--model-id",
        MODEL,
        "--out",
        "s3://my-bucket/jobs/out",
    ];
    let out = env.batchd(&args).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let job_dir = first_entry(&env.bucket("my-bucket").join("jobs/out")).unwrap();
    assert_eq!(read_jsonl(&job_dir.join("records.jsonl.out")).len(), 4);
    assert_eq!(manifest(&job_dir)["successRecordCount"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_id_is_an_error_before_anything_runs() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let env = env_for(&fake);
    let input = env.path("in/records.jsonl");
    write_records(&input, "rec", 2, None);
    let out = env
        .batchd(&[
            "run",
            input.to_str().unwrap(),
            "--model-id",
            "no.such-model",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown model id \"no.such-model\""), "{err}");
    assert!(
        err.contains(MODEL),
        "the error lists the configured models: {err}"
    );
    assert_eq!(fake.stats().requests, 0);
}

/// Output bytes with each `"latencyMs":N` as 0: the one part of a line that differs between
/// two runs of the same records.
fn without_latency(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\"latencyMs\":") {
        let (head, tail) = rest.split_at(at + "\"latencyMs\":".len());
        out.push_str(head);
        out.push('0');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// Records sharing a long system prompt start one after another (issue #19): at concurrency
/// 1 the fake sees them grouped (oldest group first, input order within a group) when
/// `group_prefixes` is on, in input order when it is off or unset, and the output file is the
/// same bytes in the same order either way.
#[tokio::test]
async fn records_sharing_a_prefix_start_together_and_keep_their_output_order() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let system = |k: usize| {
        format!(
            "Prompt {k}. {}",
            "Answer like a careful support agent. ".repeat(10)
        )
    };
    let records = (0..12).map(|i| {
        serde_json::json!({
            "recordId": format!("r{i:02}"),
            "modelInput": {
                "system": [{"text": system(i % 3)}],
                "messages": [{"role": "user", "content": [{"text": format!("question {i}")}]}],
            },
        })
    });
    let mut outputs = Vec::new();
    for group in [None, Some(false), Some(true)] {
        let mut model = Model::fake(MODEL, &fake);
        if let Some(group) = group {
            model = model.set("group_prefixes", group);
        }
        let env = test_env(&Config::new().model(model));
        let input = env.path("prefixes.jsonl");
        write_jsonl(&input, records.clone());
        fake.record_prompts();
        let (out, job_dir) = run(&env, &[&input], &["--concurrency", "1"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        // Each request as (system prompt, question): "Prompt K. ...\nquestion I".
        let seen: Vec<(usize, usize)> = fake
            .prompts()
            .iter()
            .map(|p| {
                let (system, question) = p.split_once('\n').unwrap();
                let k = system["Prompt ".len()..].split('.').next().unwrap();
                let i = question.trim_start_matches("question ");
                (k.parse().unwrap(), i.parse().unwrap())
            })
            .collect();
        let expected: Vec<(usize, usize)> = match group {
            None | Some(false) => (0..12).map(|i| (i % 3, i)).collect(),
            Some(true) => (0..3)
                .flat_map(|k| (0..4).map(move |j| (k, k + 3 * j)))
                .collect(),
        };
        assert_eq!(seen, expected, "group_prefixes = {group:?}");
        let text = std::fs::read_to_string(job_dir.unwrap().join("prefixes.jsonl.out")).unwrap();
        outputs.push(without_latency(&text));
    }
    assert!(
        outputs[0].contains("\"recordId\":\"r00\""),
        "{}",
        outputs[0]
    );
    assert_eq!(outputs[0], outputs[1], "grouping changed the output");
    assert_eq!(outputs[1], outputs[2], "grouping changed the output");
}
