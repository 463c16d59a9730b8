//! Tests of result parsing (both dialects), the statistics and their rendering.

use serde_json::{Value, json};

use super::render::{CSV_COLUMNS, export_fields, push_csv_row, render_table};
use super::stats::{ErrorCode, MessageCount, percentile};
use super::*;
use crate::record::{write_error_line, write_success_line};

fn bedrock_success(id: &str, output: Value) -> String {
    let input = RawValue::from_string(r#"{"messages":[]}"#.into()).unwrap();
    let mut buf = Vec::new();
    write_success_line(&mut buf, id, &input, &output);
    String::from_utf8(buf).unwrap()
}

fn bedrock_error_line(id: &str, code: u16, message: &str) -> String {
    let input = RawValue::from_string(r#"{"messages":[]}"#.into()).unwrap();
    let mut buf = Vec::new();
    write_error_line(&mut buf, id, &input, code, message);
    String::from_utf8(buf).unwrap()
}

fn converse_body(text: &str, latency_ms: u64, input: u64, output: u64) -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": input, "outputTokens": output, "totalTokens": input + output},
        "metrics": {"latencyMs": latency_ms},
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn a_converse_success_line_gives_latency_tokens_and_text() {
    let line = bedrock_success("r1", converse_body("Hello", 250, 12, 30));
    let r = parse_bedrock_line(line.trim_end()).unwrap();
    assert_eq!(r.id, "r1");
    assert!(r.is_success());
    assert_eq!(r.processing_time, Some(0.25));
    assert_eq!((r.input_tokens, r.output_tokens), (Some(12), Some(30)));
    assert_eq!(r.output.as_deref(), Some("Hello"));
    assert_eq!(r.input.as_deref(), Some(r#"{"messages":[]}"#));
}

#[test]
fn an_error_line_gives_its_code_and_message_and_no_time() {
    let line = bedrock_error_line("r2", 429, "Too many requests");
    let r = parse_bedrock_line(&line).unwrap();
    assert_eq!(
        r.error,
        Some(RecordError {
            code: "429".into(),
            message: "Too many requests".into()
        })
    );
    assert_eq!(r.processing_time, None);
    assert_eq!((r.input_tokens, r.output_tokens), (None, None));
}

#[test]
fn native_bodies_give_tokens_and_text_in_their_familys_shape_but_no_time() {
    for (body, tokens, text) in [
        (
            json!({"content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 3, "output_tokens": 4}}),
            (Some(3), Some(4)),
            "hi",
        ),
        (
            json!({"generation": "g", "prompt_token_count": 5, "generation_token_count": 6}),
            (Some(5), Some(6)),
            "g",
        ),
        (
            json!({"inputTextTokenCount": 7, "results": [{"tokenCount": 8, "outputText": "t"}]}),
            (Some(7), Some(8)),
            "t",
        ),
        (
            json!({"output": {"message": {"content": [{"text": "n"}]}}, "usage": {"inputTokens": 1, "outputTokens": 2}}),
            (Some(1), Some(2)),
            "n",
        ),
        (
            json!({"outputs": [{"text": "m", "stop_reason": "stop"}]}),
            (None, None),
            "m",
        ),
        // An embedding: input tokens only, the body itself as the output.
        (
            json!({"embedding": [0.5], "inputTextTokenCount": 9}),
            (Some(9), Some(0)),
            r#"{"embedding":[0.5],"inputTextTokenCount":9}"#,
        ),
    ] {
        let line = bedrock_success("x", body.clone());
        let r = parse_bedrock_line(&line).unwrap();
        assert_eq!((r.input_tokens, r.output_tokens), tokens, "{body}");
        assert_eq!(r.output.as_deref(), Some(text), "{body}");
        assert_eq!(r.processing_time, None, "{body}");
        assert_eq!(stats_of(&line), Ok(without_text(r)), "{body}");
    }
}

/// What the statistics read of a line: the full result less its texts, whatever the body.
fn stats_of(line: &str) -> Result<RecordResult, Defect> {
    parse_bedrock_line_with(line, Detail::Stats)
}

fn without_text(r: RecordResult) -> RecordResult {
    RecordResult {
        input: None,
        output: None,
        ..r
    }
}

#[test]
fn the_statistics_read_what_a_full_read_gives_less_the_texts() {
    for line in [
        bedrock_success("a", converse_body("Hello", 250, 12, 30)),
        bedrock_error_line("b", 429, "Too many requests"),
        // Present but null, as a map has it; and a member given twice (the last one counts).
        bedrock_success("c", json!({"prompt_token_count": null, "generation_token_count": 3})),
        r#"{"recordId":"d","modelInput":{},"modelOutput":{"metrics":{"latencyMs":1},"metrics":{"latencyMs":5}}}"#.into(),
        r#"{"recordId":"e","modelInput":{},"modelOutput":{"usage":[1],"metrics":"x","results":7}}"#.into(),
    ] {
        let full = parse_bedrock_line(line.trim_end()).unwrap();
        assert_eq!(stats_of(line.trim_end()), Ok(without_text(full)), "{line}");
    }
}

#[test]
fn broken_bedrock_lines_name_the_field() {
    for (line, field, reason) in [
        ("[1]", "line", "expected a JSON object, found an array"),
        ("{\"recordId\": ", "line", "invalid JSON"),
        (
            r#"{"modelInput": {}, "modelOutput": {}}"#,
            "recordId",
            "missing",
        ),
        (
            r#"{"recordId": 5, "modelInput": {}, "modelOutput": {}}"#,
            "recordId",
            "must be a string, found a number",
        ),
        (
            r#"{"recordId": "a", "modelOutput": {}}"#,
            "modelInput",
            "missing",
        ),
        (
            r#"{"recordId": "a", "modelInput": {}}"#,
            "modelOutput",
            "missing (a result line has modelOutput or error)",
        ),
        (
            r#"{"recordId": "a", "modelInput": {}, "modelOutput": {}, "error": {}}"#,
            "error",
            "not both",
        ),
        (
            r#"{"recordId": "a", "modelInput": {}, "error": {"errorMessage": "m"}}"#,
            "error.errorCode",
            "missing",
        ),
        (
            r#"{"recordId": "a", "modelInput": {}, "error": {"errorCode": 400, "errorMessage": 1}}"#,
            "error.errorMessage",
            "must be a string, found a number",
        ),
        (
            r#"{"recordId": "a", "modelInput": {}, "modelOutput": "text"}"#,
            "modelOutput",
            "must be an object, found a string",
        ),
    ] {
        let defect = parse_bedrock_line(line).unwrap_err();
        assert_eq!(defect.field, field, "{line}");
        assert!(defect.reason.contains(reason), "{line}: {defect}");
        assert_eq!(stats_of(line), Err(defect), "{line}");
    }
}

fn seed(value: Value) -> Result<RecordResult, Defect> {
    parse_seed_result(&value.to_string())
}

#[test]
fn seed_results_parse_with_every_member() {
    let r = seed(
        json!({"id": "doc1", "status": "SUCCESS", "output": "model text",
        "processing_time": 0.0123, "input_tokens": 5, "output_tokens": 7, "attempts": 1,
        "error": null, "metadata": {"type": "faq"}}),
    )
    .unwrap();
    assert_eq!(
        r,
        RecordResult {
            id: "doc1".into(),
            error: None,
            processing_time: Some(0.0123),
            input_tokens: Some(5),
            output_tokens: Some(7),
            attempts: Some(1),
            input: None,
            output: Some("model text".into()),
            metadata: Some(r#"{"type":"faq"}"#.into()),
        }
    );
    let e = seed(
        json!({"id": 7, "status": "ERROR", "output": null, "processing_time": 1.5,
        "input_tokens": null, "output_tokens": null, "attempts": 3,
        "error": {"code": "ThrottlingException", "message": "slow down"}, "metadata": null}),
    )
    .unwrap();
    assert_eq!(e.id, "7");
    assert_eq!(
        e.error,
        Some(RecordError {
            code: "ThrottlingException".into(),
            message: "slow down".into()
        })
    );
    assert_eq!(e.metadata.as_deref(), Some("null"));
}

#[test]
fn non_result_objects_name_the_field() {
    for (value, field, reason) in [
        (
            json!([1]),
            "result",
            "expected a result object, found an array",
        ),
        (json!({"status": "SUCCESS"}), "id", "missing"),
        (json!({"id": "a"}), "status", "missing"),
        (
            json!({"id": "a", "status": "OK"}),
            "status",
            "must be \"SUCCESS\" or \"ERROR\", found \"OK\"",
        ),
        (json!({"id": "a", "status": "ERROR"}), "error", "missing"),
        (
            json!({"id": "a", "status": "ERROR", "error": {"message": "m"}}),
            "error.code",
            "missing",
        ),
        (
            json!({"id": "a", "status": "SUCCESS", "processing_time": "1s"}),
            "processing_time",
            "must be seconds",
        ),
        (
            json!({"id": "a", "status": "SUCCESS", "processing_time": -1}),
            "processing_time",
            "must be seconds",
        ),
        (
            json!({"id": "a", "status": "SUCCESS", "input_tokens": 1.5}),
            "input_tokens",
            "must be a whole number",
        ),
        (
            json!({"id": "a", "status": "SUCCESS", "output": 3}),
            "output",
            "must be a string or null",
        ),
        // An input record is not a result.
        (json!({"recordId": "r", "modelInput": {}}), "id", "missing"),
    ] {
        let defect = seed(value.clone()).unwrap_err();
        assert_eq!(defect.field, field, "{value}");
        assert!(defect.reason.contains(reason), "{value}: {defect}");
    }
}

#[test]
fn array_items_are_walked_in_order_and_defects_carry_the_index() {
    let mut seen = Vec::new();
    for_each_array_item(r#" [ {"a": 1}, 2 , "x" ] "#, |i, item| {
        seen.push((i, item.to_owned()));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        [
            (0, r#"{"a": 1}"#.into()),
            (1, "2".into()),
            (2, r#""x""#.into())
        ]
    );
    let refused = for_each_array_item("[1, 2, 3]", |i, _| {
        if i == 1 {
            Err(Defect::new("status", "missing"))
        } else {
            Ok(())
        }
    })
    .unwrap_err();
    assert_eq!(refused.index, Some(1));
    assert_eq!(refused.defect, Defect::new("status", "missing"));
    let broken = for_each_array_item("[1, {\"a\": ]", |_, _| Ok(())).unwrap_err();
    assert_eq!(broken.index, Some(1));
    assert!(
        broken.defect.reason.starts_with("invalid JSON"),
        "{broken:?}"
    );
    for (text, found) in [
        ("{\"id\": 1}", "an object"),
        ("", "nothing"),
        ("nope", "invalid JSON"),
    ] {
        let e = for_each_array_item(text, |_, _| Ok(())).unwrap_err();
        assert_eq!(e.index, None);
        assert!(
            e.defect
                .reason
                .contains(&format!("expected a JSON array, found {found}")),
            "{text}: {e:?}"
        );
    }
    let trailing = for_each_array_item("[1] [2]", |_, _| Ok(())).unwrap_err();
    assert_eq!(
        (trailing.index, trailing.defect.field.as_str()),
        (None, "file")
    );
}

#[test]
fn result_files_are_recognised_by_name() {
    assert_eq!(
        result_file_kind("a.jsonl.out"),
        Some((Dialect::Bedrock, Layout::Lines))
    );
    assert_eq!(result_file_kind("manifest.json.out"), None);
    assert_eq!(result_file_kind("a.jsonl.out.part-000001"), None);
    assert_eq!(
        result_file_kind("batch_0.json"),
        Some((Dialect::Seed, Layout::Array))
    );
    assert_eq!(
        result_file_kind("batch_0.jsonl"),
        Some((Dialect::Seed, Layout::Lines))
    );
    assert_eq!(result_file_kind("errors.log"), None);
}

#[test]
fn percentiles_are_numpys_linear_ones() {
    // np.percentile(x, p) with the default method: index p/100*(n-1), linear between the
    // two neighbours.
    let x = [1.0, 2.0, 3.0, 4.0];
    // p50: index 1.5 → 2 + 0.5*(3-2) = 2.5
    assert_eq!(percentile(&x, 50.0), Some(2.5));
    // p90: index 2.7 → 3 + 0.7*(4-3) = 3.7; numpy evaluates t >= 0.5 as b - (b-a)*(1-t):
    // 4 - 1*(1-0.7000000000000002) = 3.7000000000000002.
    assert_eq!(percentile(&x, 90.0), Some(4.0 - (1.0 - (0.9 * 3.0 - 2.0))));
    assert!(close(percentile(&x, 90.0).unwrap(), 3.7));
    // p99: index 2.97 → 3.97
    assert!(close(percentile(&x, 99.0).unwrap(), 3.97));
    // Eleven values 0, 0.1 .. 1.0 (ms → s): p90 is the value at index 9 exactly.
    let tenths: Vec<f64> = (0..=10).map(|i| f64::from(i * 100) / 1000.0).collect();
    assert_eq!(percentile(&tenths, 90.0), Some(0.9));
    assert_eq!(percentile(&tenths, 50.0), Some(0.5));
    // p99: index 9.9 → 0.9 + 0.9*(1.0-0.9) = 0.99
    assert!(close(percentile(&tenths, 99.0).unwrap(), 0.99));
    // One value is every percentile; none is no percentile.
    assert_eq!(percentile(&[0.25], 99.0), Some(0.25));
    assert_eq!(percentile(&[], 50.0), None);
    // A low fraction (t < 0.5) interpolates from below: [10, 20], p10 → 10 + 0.1*10 = 11.
    assert!(close(percentile(&[10.0, 20.0], 10.0).unwrap(), 11.0));
}

fn result(id: &str, time: Option<f64>, error: Option<(&str, &str)>) -> RecordResult {
    RecordResult {
        id: id.into(),
        error: error.map(|(code, message)| RecordError {
            code: code.into(),
            message: message.into(),
        }),
        processing_time: time,
        input_tokens: error.is_none().then_some(10),
        output_tokens: error.is_none().then_some(20),
        ..RecordResult::default()
    }
}

/// Seven results: four successes timed 0.1, 0.2, 0.3 and 1.0 s, three errors (two 429 with
/// two messages, one 400), one untimed.
fn sample() -> Analysis {
    let mut tally = Tally::new();
    tally.add_file(Dialect::Seed);
    for r in [
        result("a", Some(0.1), None),
        result("b", Some(0.3), None),
        result("c", Some(0.2), None),
        result("d", Some(1.0), None),
        result("e", Some(0.5), Some(("429", "slow down"))),
        result("f", None, Some(("429", "slow down"))),
        result("g", Some(0.4), Some(("400", "bad"))),
    ] {
        tally.add(&r);
    }
    tally.finish(AnalysisContext {
        job_id: Some("abcdefghijkl".into()),
        model_id: Some("m".into()),
        output_location: "/out/abcdefghijkl".into(),
        wall_time_seconds: Some(2.0),
        prices: Some(Prices {
            per_million_input_tokens: 3.0,
            per_million_output_tokens: 15.0,
        }),
    })
}

#[test]
fn the_tally_counts_errors_by_code_times_tokens_rate_and_cost() {
    let a = sample();
    assert_eq!(
        (a.total_processed, a.success_count, a.error_count),
        (7, 4, 3)
    );
    assert_eq!(a.success_rate, Some(4.0 / 7.0));
    assert_eq!(
        a.errors_by_code,
        [
            ErrorCode {
                code: "429".into(),
                count: 2,
                top_messages: vec![MessageCount {
                    message: "slow down".into(),
                    count: 2
                }],
                other_messages: 0,
            },
            ErrorCode {
                code: "400".into(),
                count: 1,
                top_messages: vec![MessageCount {
                    message: "bad".into(),
                    count: 1
                }],
                other_messages: 0,
            },
        ]
    );
    let t = &a.processing_time;
    assert_eq!((t.records, t.excluded), (6, 1));
    // Sorted: 0.1 0.2 0.3 0.4 0.5 1.0; mean 2.5/6; p50 index 2.5 → 0.35; p90 index 4.5 →
    // 0.5 + 0.5*0.5 = 0.75; p99 index 4.95 → 0.5 + 0.95*0.5 = 0.975.
    assert!(close(t.mean.unwrap(), 2.5 / 6.0));
    assert_eq!(a.average_processing_time, t.mean);
    assert!(close(t.p50.unwrap(), 0.35));
    assert!(close(t.p90.unwrap(), 0.75));
    assert!(close(t.p99.unwrap(), 0.975));
    assert_eq!((t.min, t.max), (Some(0.1), Some(1.0)));
    assert_eq!((a.input_tokens, a.output_tokens), (40, 80));
    assert_eq!(a.records_without_token_counts, 3);
    assert_eq!(a.records_per_second, Some(3.5));
    let cost = a.cost.as_ref().unwrap();
    // 40 × 3 / 1e6 + 80 × 15 / 1e6
    assert!(close(cost.input, 0.00012) && close(cost.output, 0.0012));
    assert!(close(cost.total, 0.00132));
    assert_eq!(a.dialect, Some(stats::DialectSeen::Seed));
}

#[test]
fn the_top_three_messages_are_kept_most_frequent_first() {
    let mut tally = Tally::new();
    for (n, message) in [(1, "d"), (4, "a"), (2, "c"), (3, "b")] {
        for _ in 0..n {
            tally.add(&result("x", None, Some(("500", message))));
        }
    }
    let a = tally.finish(AnalysisContext::default());
    let messages: Vec<(&str, u64)> = a.errors_by_code[0]
        .top_messages
        .iter()
        .map(|m| (m.message.as_str(), m.count))
        .collect();
    assert_eq!(messages, [("a", 4), ("b", 3), ("c", 2)]);
    assert_eq!(a.errors_by_code[0].count, 10);
}

#[test]
fn distinct_messages_beyond_the_bound_are_counted_as_other() {
    let mut tally = Tally::new();
    let extra = 5;
    for i in 0..stats::MAX_MESSAGES_PER_CODE + extra {
        tally.add(&result(
            "x",
            None,
            Some(("500", &format!("record {i} failed"))),
        ));
    }
    let a = tally.finish(AnalysisContext::default());
    assert_eq!(a.errors_by_code[0].other_messages, extra as u64);
    assert_eq!(
        a.errors_by_code[0].count,
        (stats::MAX_MESSAGES_PER_CODE + extra) as u64
    );
}

#[test]
fn no_results_no_rate_no_times_no_cost_without_prices() {
    let a = Tally::new().finish(AnalysisContext {
        output_location: "s3://b/out/j/".into(),
        ..AnalysisContext::default()
    });
    assert_eq!(a.total_processed, 0);
    assert_eq!(a.success_rate, None);
    assert_eq!(a.processing_time.p50, None);
    assert_eq!(a.records_per_second, None);
    assert_eq!(a.cost, None);
    assert_eq!(a.dialect, None);
    let table = render_table(&a);
    assert!(table.contains("processing time  unknown\n"), "{table}");
    assert!(table.contains("no prices configured"), "{table}");
}

#[test]
fn the_json_has_the_documented_members() {
    let json = serde_json::to_value(sample()).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "job_id",
        "model_id",
        "output_location",
        "dialect",
        "result_files",
        "total_processed",
        "success_count",
        "error_count",
        "success_rate",
        "errors_by_code",
        "average_processing_time",
        "processing_time",
        "input_tokens",
        "output_tokens",
        "records_without_token_counts",
        "wall_time_seconds",
        "records_per_second",
        "cost",
    ];
    let mut keys = keys;
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(json["dialect"], "seed");
    assert_eq!(json["errors_by_code"][0]["code"], "429");
    assert_eq!(json["errors_by_code"][0]["top_messages"][0]["count"], 2);
    assert_eq!(json["processing_time"]["excluded"], 1);
    assert_eq!(json["cost"]["price_per_million_output_tokens"], 15.0);
    // It reads back as it was written.
    let back: Analysis = serde_json::from_value(json).unwrap();
    assert_eq!(back, sample());
}

#[test]
fn the_table_is_aligned_and_has_every_figure() {
    let table = render_table(&sample());
    let expected = "\
job              abcdefghijkl
model            m
output           /out/abcdefghijkl
result files     1 (job API results)
total processed  7
succeeded        4 (57.14%)
errors           3
  429            2
                   2 × slow down
  400            1
                   1 × bad
processing time  mean 0.4167 s  p50 0.3500 s  p90 0.7500 s  p99 0.9750 s
                 over 6 records; 1 without a processing time excluded
tokens           40 in, 80 out (3 records without token counts)
wall time        2.0000 s
records/s        3.50
cost             0.001320 (input 0.000120, output 0.001200)
";
    assert_eq!(table, expected);
}

#[test]
fn csv_rows_quote_what_needs_it_and_join_the_input() {
    let mut buf = String::new();
    push_csv_row(&mut buf, &CSV_COLUMNS);
    let r = RecordResult {
        id: "doc1".into(),
        output: Some("line one\nsaid \"hi\", then".into()),
        processing_time: Some(0.5),
        input_tokens: Some(5),
        metadata: Some(r#"{"type":"faq"}"#.into()),
        ..RecordResult::default()
    };
    push_csv_row(
        &mut buf,
        &export_fields("out.json", 0, &r, Some(r#"{"id":"doc1","content":"c"}"#)),
    );
    assert_eq!(
        buf,
        "file,position,id,status,input,output,processing_time,input_tokens,output_tokens,attempts,error_code,error_message,metadata\n\
         out.json,0,doc1,SUCCESS,\"{\"\"id\"\":\"\"doc1\"\",\"\"content\"\":\"\"c\"\"}\",\"line one\nsaid \"\"hi\"\", then\",0.5,5,,,,,\"{\"\"type\"\":\"\"faq\"\"}\"\n"
    );
    // A Bedrock line carries its own input, which wins over any joined one.
    let line = bedrock_error_line("r1", 400, "bad");
    let r = parse_bedrock_line(&line).unwrap();
    let fields = export_fields("in.jsonl.out", 3, &r, Some("other"));
    assert_eq!(fields[4], r#"{"messages":[]}"#);
    assert_eq!((fields[3].as_str(), fields[10].as_str()), ("ERROR", "400"));
}

#[test]
fn openai_lines_are_results_too() {
    let ok = r#"{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,"request_id":"r","body":{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":2}}},"error":null}"#;
    let r = parse_bedrock_line(ok).unwrap();
    assert_eq!((r.id.as_str(), r.is_success()), ("a", true));
    assert_eq!((r.input_tokens, r.output_tokens), (Some(5), Some(2)));
    assert_eq!(r.output.as_deref(), Some("hi"));
    let failed = r#"{"id":"batch_req_2","custom_id":"b","response":{"status_code":429,"request_id":"r","body":{"error":{"message":"slow","type":"rate_limit_error"}}},"error":null}"#;
    let e = parse_bedrock_line(failed).unwrap().error.unwrap();
    assert_eq!((e.code.as_str(), e.message.as_str()), ("429", "slow"));
    let cancelled = r#"{"id":"batch_req_3","custom_id":"c","response":null,"error":{"code":"batch_cancelled","message":"m"}}"#;
    assert_eq!(
        parse_bedrock_line(cancelled).unwrap().error.unwrap().code,
        "batch_cancelled"
    );
    let neither = r#"{"custom_id":"d","response":null,"error":null}"#;
    assert_eq!(parse_bedrock_line(neither).unwrap_err().field, "response");
}

/// Times kept as whole milliseconds give the same statistics as the same times kept as
/// seconds; a time that is not whole milliseconds switches the rest to seconds.
#[test]
fn times_in_milliseconds_give_the_statistics_of_the_seconds() {
    // The straightforward computation over f64 seconds.
    let expected = |times: &[f64]| {
        let mut sorted = times.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
        let p = |q| percentile(&sorted, q).unwrap();
        (
            mean,
            p(50.0),
            p(90.0),
            p(99.0),
            sorted[0],
            sorted[sorted.len() - 1],
        )
    };
    let whole: Vec<f64> = (0..2_000u32)
        .map(|i| f64::from((i * 7_919) % 30_011) / 1000.0)
        .collect();
    let mut mixed = whole.clone();
    mixed.insert(700, 0.123_456_7);
    mixed.push(f64::from(u32::MAX) / 1000.0 + 1.0);
    for times in [whole, mixed] {
        let mut tally = Tally::new();
        for &t in &times {
            tally.add(&result("r", Some(t), None));
        }
        let a = tally.finish(AnalysisContext::default());
        let s = &a.processing_time;
        let got = (
            s.mean.unwrap(),
            s.p50.unwrap(),
            s.p90.unwrap(),
            s.p99.unwrap(),
            s.min.unwrap(),
            s.max.unwrap(),
        );
        let want = expected(&times);
        // Bit for bit: the output must not change with the representation.
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        assert_eq!(s.records, times.len() as u64);
    }
}
