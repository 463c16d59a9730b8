//! The example record files in the shared data folder (beside the repo) parse as their
//! README says: valid files cleanly, converse-defects.jsonl with the right field per line.

use batchd_formats::Defect;
use batchd_formats::converse::{ConverseOptions, parse_converse};
use batchd_formats::neutral::{ChatRequest, ContentPart, Role, ToolChoice};
use batchd_formats::record::parse_record_line;
use serde_json::json;

fn read(name: &str) -> String {
    let path = format!("{}/../../../shared/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Parses a line as the engine would: record line, then Converse body. Returns the record
/// id and request, or every defect.
fn parse_line(line: &str) -> Result<(Option<String>, ChatRequest), Vec<Defect>> {
    let record = parse_record_line(line).map_err(|d| vec![d])?;
    let req = parse_converse(record.model_input.get(), &ConverseOptions::default())?;
    Ok((record.record_id, req))
}

fn parse_file(name: &str) -> Vec<(Option<String>, ChatRequest)> {
    read(name)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            parse_line(line).unwrap_or_else(|d| panic!("{name} line {}: {d:?}", i + 1))
        })
        .collect()
}

#[test]
fn converse_basic_parses_cleanly() {
    let records = parse_file("converse-basic.jsonl");
    assert_eq!(records.len(), 10);
    for (i, (id, req)) in records.iter().enumerate() {
        assert_eq!(id.as_deref(), Some(format!("CALL{:07}", i + 1).as_str()));
        assert_eq!(req.messages.len(), 1);
        assert_eq!(req.messages[0].role, Role::User);
        assert!(matches!(
            req.messages[0].content.as_slice(),
            [ContentPart::Text(_)]
        ));
        assert_eq!(req.max_tokens, Some(64));
        assert_eq!(req.temperature, Some(0.7));
    }
    assert_eq!(
        records[0].1.messages[0].content[0],
        ContentPart::Text("AWS Lambda について説明してください".into())
    );
}

#[test]
fn converse_rich_translates() {
    let records = parse_file("converse-rich.jsonl");
    assert_eq!(records.len(), 4);

    let (id, r1) = &records[0];
    assert_eq!(id.as_deref(), Some("r1"));
    assert_eq!(r1.system, vec!["You answer in one word.".to_owned()]);
    assert_eq!(r1.max_tokens, Some(8));
    assert_eq!(r1.temperature, Some(0.0));

    let (_, r2) = &records[1];
    let turns: Vec<(Role, &ContentPart)> = r2
        .messages
        .iter()
        .map(|m| (m.role, &m.content[0]))
        .collect();
    assert_eq!(
        turns,
        vec![
            (Role::User, &ContentPart::Text("Say hello.".into())),
            (Role::Assistant, &ContentPart::Text("Hello!".into())),
            (Role::User, &ContentPart::Text("Now say goodbye.".into())),
        ]
    );
    assert_eq!(r2.top_p, Some(0.9));
    assert_eq!(r2.temperature, None);
    assert_eq!(r2.stop_sequences, vec!["\n\n".to_owned()]);
    assert_eq!(r2.max_tokens, Some(16));

    let (_, r3) = &records[2];
    assert_eq!(r3.tools.len(), 1);
    assert_eq!(r3.tools[0].name, "get_weather");
    assert_eq!(
        r3.tools[0].description.as_deref(),
        Some("Weather for a city")
    );
    assert_eq!(
        r3.tools[0].input_schema,
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    );
    assert_eq!(r3.tool_choice, Some(ToolChoice::Auto));

    let (id, r4) = &records[3];
    assert_eq!(*id, None);
    assert_eq!(r4.max_tokens, Some(16));
}

#[test]
fn converse_rich_tool_config_can_be_disabled() {
    let text = read("converse-rich.jsonl");
    let line = text.lines().nth(2).expect("line 3");
    let record = parse_record_line(line).expect("record line");
    let opts = ConverseOptions {
        allow_tool_config: false,
    };
    let defects = parse_converse(record.model_input.get(), &opts).expect_err("rejected");
    assert_eq!(
        defects,
        vec![Defect::new(
            "modelInput.toolConfig",
            "not accepted for this model (toolConfig is disabled in its config)"
        )]
    );
}

#[test]
fn converse_defects_each_line_names_its_field() {
    let text = read("converse-defects.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12);
    // None = valid here. Line 4 repeats a recordId: only the engine sees across lines.
    // Line 11 is blank: the engine skips blank lines before calling the parser.
    let expected: [(usize, Option<&str>); 11] = [
        (1, None),
        (2, Some("line")),
        (3, Some("line")),
        (4, None),
        (5, Some("modelInput")),
        (6, Some("modelInput.messages[0].role")),
        (7, Some("modelInput.messages[0].content")),
        (8, Some("modelInput.messages[0].content[0]")),
        (9, Some("modelInput.inferenceConfig.temperature")),
        (10, Some("recordId")),
        (12, None),
    ];
    for (number, field) in expected {
        let line = lines[number - 1];
        match (parse_line(line), field) {
            (Ok(_), None) => {}
            (Ok(_), Some(field)) => panic!("line {number}: expected a defect at {field}"),
            (Err(defects), None) => panic!("line {number}: unexpected defects {defects:?}"),
            (Err(defects), Some(field)) => {
                let fields: Vec<&str> = defects.iter().map(|d| d.field.as_str()).collect();
                assert_eq!(fields, vec![field], "line {number}: {defects:?}");
            }
        }
    }
    assert!(lines[10].trim().is_empty());
    assert_eq!(
        parse_record_line(lines[10]).err(),
        Some(Defect::new("line", "blank line"))
    );
}

#[test]
fn converse_defects_reasons_are_specific() {
    let text = read("converse-defects.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    let reason = |n: usize| -> String {
        match parse_line(lines[n - 1]) {
            Err(d) => d[0].reason.clone(),
            Ok(_) => panic!("line {n} parsed"),
        }
    };
    assert!(
        reason(2).starts_with("invalid JSON: EOF while parsing"),
        "{}",
        reason(2)
    );
    assert_eq!(reason(3), "expected a JSON object, found an array");
    assert_eq!(reason(5), "missing");
    assert_eq!(reason(6), r#"must be "user" or "assistant", found "robot""#);
    assert_eq!(reason(7), "must not be empty");
    assert_eq!(reason(8), "must have exactly one key, found 2: image, text");
    assert_eq!(reason(9), "must be between 0 and 1, found 7");
    assert_eq!(reason(10), "must be a string, found a number");
    let (id, _) = parse_line(lines[3]).expect("line 4");
    assert_eq!(id.as_deref(), Some("ok1"));
}
