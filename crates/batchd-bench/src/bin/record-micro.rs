//! Micro-benchmark of the record-line hot path in `batchd-formats::record`: parse N generated
//! lines (as the validation pass and the run each do) and write N success lines. Meant to run
//! under `valgrind --tool=callgrind` for instruction counts per record, or alone for ns/record:
//!
//! ```sh
//! valgrind --tool=callgrind target/release/record-micro 20000
//! ```

use std::hint::black_box;
use std::time::Instant;

use batchd_formats::record::{parse_record_line, write_success_line};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let lines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"recordId":"rec-{i:08}","modelInput":{{"messages":[{{"role":"user","content":[{{"text":"Summarise record {i} in one short sentence, please."}}]}}],"inferenceConfig":{{"maxTokens":32,"temperature":0.2}}}}}}"#
            )
        })
        .collect();
    // The Converse response batchd renders for the fake's echo answer.
    let output = serde_json::json!({
        "output": {"message": {"role": "assistant", "content": [{"text": "Summarise record 1 in one short sentence, please."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 12, "outputTokens": 9, "totalTokens": 21},
        "metrics": {"latencyMs": 1}
    });
    let started = Instant::now();
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(1024);
    for line in &lines {
        let record = match parse_record_line(black_box(line)) {
            Ok(record) => record,
            Err(defect) => panic!("{defect}"),
        };
        let id = record.record_id.as_deref().unwrap_or("");
        out.clear();
        write_success_line(&mut out, id, record.model_input, &output);
        bytes += black_box(&out).len();
    }
    let elapsed = started.elapsed();
    println!(
        "{n} records: {:.0} ns/record (parse + success line), {bytes} output bytes",
        elapsed.as_secs_f64() * 1e9 / n as f64
    );
}
