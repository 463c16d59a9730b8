//! The analysis for people (an aligned table) and one CSV row per record for exports.

use std::fmt::Write as _;

use super::RecordResult;
use super::stats::{Analysis, DialectSeen};

/// The analysis as a table: a label column, then the figures; errors by code with their top
/// messages indented below.
pub fn render_table(a: &Analysis) -> String {
    let mut out = String::new();
    let mut row = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<16} {value}");
    };
    if let Some(job) = &a.job_id {
        row("job", job.clone());
    }
    if let Some(model) = &a.model_id {
        row("model", model.clone());
    }
    row("output", a.output_location.clone());
    let dialect = match a.dialect {
        Some(DialectSeen::Bedrock) => " (Bedrock output lines)",
        Some(DialectSeen::Seed) => " (job API results)",
        Some(DialectSeen::Mixed) => " (Bedrock lines and job API results)",
        None => "",
    };
    row("result files", format!("{}{dialect}", a.result_files));
    row("total processed", a.total_processed.to_string());
    let rate = a
        .success_rate
        .map_or(String::new(), |r| format!(" ({:.2}%)", r * 100.0));
    row("succeeded", format!("{}{rate}", a.success_count));
    row("errors", a.error_count.to_string());
    // Codes as labels (with their counts in the value column), their messages below.
    let count_width = a
        .errors_by_code
        .iter()
        .flat_map(|e| {
            e.top_messages
                .iter()
                .map(|m| m.count)
                .chain([e.other_messages])
        })
        .map(|n| n.to_string().len())
        .max()
        .unwrap_or(0);
    for e in &a.errors_by_code {
        let label = format!("  {}", e.code);
        let _ = writeln!(out, "{label:<16} {}", e.count);
        let messages = e.top_messages.iter().map(|m| (m.count, m.message.as_str()));
        let other = (e.other_messages > 0).then_some((e.other_messages, "(other messages)"));
        for (count, message) in messages.chain(other) {
            let _ = writeln!(out, "{:19}{count:>count_width$} × {message}", "");
        }
    }
    let t = &a.processing_time;
    let mut row = |label: &str, value: String| {
        let _ = writeln!(out, "{label:<16} {value}");
    };
    let secs = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4} s"));
    if t.records > 0 {
        row(
            "processing time",
            format!(
                "mean {}  p50 {}  p90 {}  p99 {}",
                secs(t.mean),
                secs(t.p50),
                secs(t.p90),
                secs(t.p99)
            ),
        );
    } else {
        row("processing time", "unknown".into());
    }
    if t.excluded > 0 {
        row(
            "",
            format!(
                "over {} records; {} without a processing time excluded",
                t.records, t.excluded
            ),
        );
    }
    let mut tokens = format!("{} in, {} out", a.input_tokens, a.output_tokens);
    if a.records_without_token_counts > 0 {
        let n = a.records_without_token_counts;
        let _ = write!(
            tokens,
            " ({n} {} without token counts)",
            if n == 1 { "record" } else { "records" }
        );
    }
    row("tokens", tokens);
    row("wall time", secs(a.wall_time_seconds));
    row(
        "records/s",
        a.records_per_second
            .map_or("-".to_owned(), |r| format!("{r:.2}")),
    );
    match &a.cost {
        Some(c) => row(
            "cost",
            format!(
                "{:.6} (input {:.6}, output {:.6})",
                c.total, c.input, c.output
            ),
        ),
        None => row("cost", "- (no prices configured for the model)".into()),
    }
    out
}

/// The columns of a CSV export, one row per record.
pub const CSV_COLUMNS: [&str; 13] = [
    "file",
    "position",
    "id",
    "status",
    "input",
    "output",
    "processing_time",
    "input_tokens",
    "output_tokens",
    "attempts",
    "error_code",
    "error_message",
    "metadata",
];

/// The export's fields of one record (in [`CSV_COLUMNS`] order): `position` is the line
/// number or array index in `file`, `input` the record's input when the result does not carry
/// it (a seed result joined with its input item).
pub fn export_fields(
    file: &str,
    position: u64,
    r: &RecordResult,
    input: Option<&str>,
) -> [String; 13] {
    let num = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    [
        file.to_owned(),
        position.to_string(),
        r.id.clone(),
        if r.is_success() { "SUCCESS" } else { "ERROR" }.to_owned(),
        r.input.as_deref().or(input).unwrap_or_default().to_owned(),
        r.output.clone().unwrap_or_default(),
        r.processing_time.map_or(String::new(), |t| t.to_string()),
        num(r.input_tokens),
        num(r.output_tokens),
        num(r.attempts),
        r.error.as_ref().map_or(String::new(), |e| e.code.clone()),
        r.error
            .as_ref()
            .map_or(String::new(), |e| e.message.clone()),
        r.metadata.clone().unwrap_or_default(),
    ]
}

/// Appends one CSV record (RFC 4180: a field with a comma, quote, CR or LF is quoted, quotes
/// doubled) and `\n`.
pub fn push_csv_row<S: AsRef<str>>(buf: &mut String, fields: &[S]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(',');
        }
        let field = field.as_ref();
        if field.contains([',', '"', '\n', '\r']) {
            buf.push('"');
            buf.push_str(&field.replace('"', "\"\""));
            buf.push('"');
        } else {
            buf.push_str(field);
        }
    }
    buf.push('\n');
}
