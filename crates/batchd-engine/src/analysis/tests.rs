//! Reading result folders of both dialects from local storage.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use batchd_storage::StorageConfig;
use serde_json::json;

use super::*;

struct Folder {
    dir: tempfile::TempDir,
    storage: Storage,
}

impl Folder {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(StorageConfig {
            data_dir: dir.path().to_path_buf(),
            ..StorageConfig::default()
        });
        Self { dir, storage }
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn uri(&self, rel: &str) -> StorageUri {
        StorageUri::Local(self.dir.path().join(rel))
    }

    async fn analyze(&self, rel: &str) -> Result<Analysis, AnalysisError> {
        analyze_output(
            &self.storage,
            &self.uri(rel),
            1 << 20,
            AnalysisContext::default(),
        )
        .await
    }
}

fn seed_result(id: &str, ok: bool, time: f64) -> serde_json::Value {
    json!({"id": id, "status": if ok { "SUCCESS" } else { "ERROR" },
        "output": ok.then_some("text"), "processing_time": time, "input_tokens": 2,
        "output_tokens": 3, "attempts": 1,
        "error": (!ok).then(|| json!({"code": "ThrottlingException", "message": "slow"})),
        "metadata": {"n": id}})
}

const CONVERSE_OK: &str = r#"{"recordId":"r1","modelInput":{"messages":[]},"modelOutput":{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":4,"outputTokens":6,"totalTokens":10},"metrics":{"latencyMs":120}}}"#;
const ERROR_LINE: &str = r#"{"recordId":"r2","modelInput":{"messages":[]},"error":{"errorCode":400,"errorMessage":"bad"}}"#;

#[tokio::test]
async fn a_bedrock_folder_is_read_without_its_manifest_or_parts() {
    let f = Folder::new();
    f.write(
        "out/job/a.jsonl.out",
        &format!("{CONVERSE_OK}\n\n{ERROR_LINE}\n"),
    );
    f.write("out/job/b/c.jsonl.out", &format!("{CONVERSE_OK}\n"));
    f.write("out/job/manifest.json.out", "{\"totalRecordCount\": 3}");
    f.write("out/job/a.jsonl.out.part-000001", "not read");
    let a = f.analyze("out/job").await.unwrap();
    assert_eq!(a.result_files, 2);
    assert_eq!(
        (a.total_processed, a.success_count, a.error_count),
        (3, 2, 1)
    );
    assert_eq!(a.errors_by_code[0].code, "400");
    assert_eq!(
        (a.processing_time.records, a.processing_time.excluded),
        (2, 1)
    );
    assert_eq!(a.processing_time.p50, Some(0.12));
    assert_eq!((a.input_tokens, a.output_tokens), (8, 12));
}

#[tokio::test]
async fn seed_arrays_and_lines_are_read_and_the_analysis_goes_beside_the_folder() {
    let f = Folder::new();
    let array = json!([seed_result("d1", true, 0.5), seed_result("d2", false, 1.5)]);
    f.write("out/job/batch_0.json", &array.to_string());
    f.write(
        "out/job/batch_1.jsonl",
        &format!("{}\n", seed_result("d3", true, 1.0)),
    );
    let context = AnalysisContext {
        job_id: Some("job".into()),
        wall_time_seconds: Some(1.5),
        ..AnalysisContext::default()
    };
    let a = write_job_analysis(&f.storage, &f.uri("out"), "job", 1 << 20, context)
        .await
        .unwrap();
    assert_eq!((a.total_processed, a.success_count), (3, 2));
    // Sorted 0.5 1.0 1.5: p90 index 1.8 → 1.0 + 0.8*0.5 = 1.4.
    assert!((a.processing_time.p90.unwrap() - 1.4).abs() < 1e-12);
    assert_eq!(a.records_per_second, Some(2.0));
    let written = std::fs::read_to_string(f.dir.path().join("out/job.analysis.json")).unwrap();
    let back: Analysis = serde_json::from_str(&written).unwrap();
    assert_eq!(back, a);
    // Nothing was added inside the job's folder.
    let mut inside: Vec<_> = std::fs::read_dir(f.dir.path().join("out/job"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    inside.sort();
    assert_eq!(inside, ["batch_0.json", "batch_1.jsonl"]);
}

#[tokio::test]
async fn bad_results_name_the_file_the_line_or_item_and_the_field() {
    let f = Folder::new();
    f.write(
        "out/lines/a.jsonl.out",
        &format!("{CONVERSE_OK}\n{{\"recordId\": \"x\", \"modelInput\": {{}}}}\n"),
    );
    let err = f.analyze("out/lines").await.unwrap_err().to_string();
    assert!(
        err.ends_with(
            "a.jsonl.out:2: modelOutput: missing (a result line has modelOutput or error)"
        ),
        "{err}"
    );
    f.write(
        "out/array/r.json",
        &json!([seed_result("a", true, 0.1), {"id": "b", "status": "DONE"}]).to_string(),
    );
    let err = f.analyze("out/array").await.unwrap_err().to_string();
    assert!(
        err.ends_with("r.json: item 1: status: must be \"SUCCESS\" or \"ERROR\", found \"DONE\""),
        "{err}"
    );
    f.write("out/notarray/r.json", "{\"id\": 1}");
    let err = f.analyze("out/notarray").await.unwrap_err().to_string();
    assert!(
        err.ends_with("r.json: file: expected a JSON array, found an object"),
        "{err}"
    );
    let err = f.analyze("out/missing").await.unwrap_err();
    assert!(matches!(err, AnalysisError::NothingThere { .. }), "{err}");
}

fn input_file(f: &Folder, rel: &str) -> InputFile {
    InputFile {
        uri: f.uri(rel),
        relative: rel.rsplit('/').next().unwrap().to_owned(),
        size: 0,
        version: None,
    }
}

async fn export(
    f: &Folder,
    inputs: Option<&[InputFile]>,
) -> Result<Vec<Vec<String>>, AnalysisError> {
    let mut rows = Vec::new();
    export_rows(&f.storage, &f.uri("out/job"), inputs, 1 << 20, |row| {
        rows.push(row.to_vec());
        Ok(())
    })
    .await
    .map(|summary| {
        assert_eq!(summary.rows, rows.len() as u64);
        let seed = rows.first().is_some_and(|r| !r[0].ends_with(".out"));
        assert_eq!(summary.joined_inputs, inputs.is_some() && seed);
    })?;
    Ok(rows)
}

#[tokio::test]
async fn seed_results_join_their_input_items_in_order() {
    let f = Folder::new();
    f.write(
        "in/docs.json",
        &json!([{"id": "d1", "content": "one"}, {"id": "d2", "content": "two"}]).to_string(),
    );
    f.write(
        "in/more.jsonl",
        "{\"id\": \"d3\", \"content\": \"three\"}\n\n",
    );
    f.write(
        "out/job/docs.json",
        &json!([seed_result("d1", true, 0.1), seed_result("d2", false, 0.2)]).to_string(),
    );
    f.write(
        "out/job/more.jsonl",
        &format!("{}\n", seed_result("d3", true, 0.3)),
    );
    let inputs = [
        input_file(&f, "in/docs.json"),
        input_file(&f, "in/more.jsonl"),
    ];
    let rows = export(&f, Some(&inputs)).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[1][..5],
        [
            "docs.json",
            "1",
            "d2",
            "ERROR",
            r#"{"content":"two","id":"d2"}"#
        ]
    );
    assert_eq!(rows[2][4], r#"{"id": "d3", "content": "three"}"#);
    assert_eq!(rows[1][10], "ThrottlingException");
    // Without the inputs the input column is empty.
    let rows = export(&f, None).await.unwrap();
    assert_eq!(rows[0][4], "");
    // Ids that do not line up, or a count that differs, are errors.
    f.write("in/more.jsonl", "{\"id\": \"other\"}\n");
    let err = export(&f, Some(&inputs)).await.unwrap_err().to_string();
    assert!(err.contains("whose id is \"other\""), "{err}");
    f.write("in/more.jsonl", "{\"id\": \"d3\"}\n{\"id\": \"d4\"}\n");
    let err = export(&f, Some(&inputs)).await.unwrap_err().to_string();
    assert!(
        err.ends_with("more.jsonl item 2 and any after it have no result"),
        "{err}"
    );
}

#[tokio::test]
async fn bedrock_rows_carry_their_own_input() {
    let f = Folder::new();
    f.write(
        "out/job/a.jsonl.out",
        &format!("{CONVERSE_OK}\n{ERROR_LINE}\n"),
    );
    // The job's inputs are not needed, nor counted against the lines.
    f.write("in/a.jsonl", "{\"recordId\": \"r1\"}\n");
    let inputs = [input_file(&f, "in/a.jsonl")];
    assert_eq!(export(&f, Some(&inputs)).await.unwrap().len(), 2);
    let rows = export(&f, None).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0][..7],
        [
            "a.jsonl.out",
            "1",
            "r1",
            "SUCCESS",
            r#"{"messages":[]}"#,
            "hi",
            "0.12"
        ]
    );
    assert_eq!((rows[1][10].as_str(), rows[1][11].as_str()), ("400", "bad"));
}
