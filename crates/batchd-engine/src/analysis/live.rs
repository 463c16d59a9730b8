//! The analysis tallied while a run writes its results, so that a job run from its first
//! record to its last need not read its output back at the end.

use std::collections::BTreeSet;

use batchd_core::Checkpoint;
use batchd_formats::analysis::{Detail, Dialect, Tally, parse_bedrock_line_with};
use batchd_storage::InputFile;

use crate::JobSpec;
use crate::record::RecordOutcome;

/// The tally of what a run wrote, when that is the job's whole output.
pub(crate) struct LiveTally {
    /// `None` when the folder must be read instead: the run does not write all of it, or a
    /// line would not read back (the read then reports it).
    tally: Option<Tally>,
    /// Processing times come from the side file (InvokeModel), as `read_results` takes them.
    side_timings: bool,
}

impl LiveTally {
    /// Tallies a run that starts at the job's first record in one process (not a chunk, not
    /// a resume past a checkpoint) of a Bedrock job, whose every result is one `*.out` line.
    /// Batch jobs and OpenAI batches, whose outputs take other shapes, are read back.
    pub(crate) fn for_run(spec: &JobSpec, resume_from: &Checkpoint, chunk: bool) -> Self {
        let from_start = resume_from.file_index == 0
            && resume_from.records_in_file == 0
            && resume_from.position == 0
            && resume_from.timings_position == 0
            && resume_from.counters.processed == 0;
        let bedrock = spec.batch.is_none() && spec.openai.is_none();
        Self {
            tally: (from_start && bedrock && !chunk).then(Tally::new),
            side_timings: crate::run::keeps_timings(spec),
        }
    }

    /// Adds a record just written: its known figures, else its line read as the analysis
    /// reads it.
    pub(crate) fn add(&mut self, outcome: &RecordOutcome) {
        let Some(tally) = &mut self.tally else {
            return;
        };
        if let Some(known) = outcome.known {
            tally.add_success(
                Some(known.seconds),
                Some(known.input_tokens),
                Some(known.output_tokens),
            );
            return;
        }
        let read = std::str::from_utf8(&outcome.line)
            .ok()
            .and_then(|text| parse_bedrock_line_with(text, Detail::Stats).ok());
        let Some(mut result) = read else {
            self.tally = None;
            return;
        };
        // The side file's `{"latencyMs": N}` for this line (`{}` without a call).
        if self.side_timings && result.processing_time.is_none() {
            result.processing_time = outcome
                .elapsed
                .map(|elapsed| elapsed.as_millis() as f64 / 1000.0);
        }
        tally.add(&result);
    }

    /// The tally of the job's output folder once every input file has its output (one
    /// `*.out` file per distinct relative path), or `None` when it must be read.
    pub(crate) fn finish(self, complete: bool, files: &[InputFile]) -> Option<Tally> {
        let mut tally = self.tally.filter(|_| complete && !files.is_empty())?;
        let outputs: BTreeSet<&str> = files.iter().map(|f| f.relative.as_str()).collect();
        for _ in outputs {
            tally.add_file(Dialect::Bedrock);
        }
        Some(tally)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use std::time::Duration;

    use batchd_core::{InvocationType, JobId};
    use batchd_formats::analysis::AnalysisContext;
    use batchd_formats::converse::ConverseResponse;
    use batchd_formats::neutral::{ChatResponse, ContentPart, StopReason, Usage};
    use batchd_formats::record::{write_error_line, write_success_line, write_success_line_with};
    use batchd_storage::{Storage, StorageConfig, StorageUri};
    use serde_json::value::RawValue;

    use super::*;
    use crate::record::KnownSuccess;
    use crate::{OpenAiRun, RecordOptions};

    fn spec(invocation_type: InvocationType) -> JobSpec {
        JobSpec {
            job_id: JobId::parse("job000000001").unwrap(),
            model_id: "m".into(),
            inputs: vec![],
            output: StorageUri::Local("/nowhere".into()),
            invocation_type,
            records: RecordOptions::default(),
            concurrency: 1,
            batch: None,
            openai: None,
            note: None,
        }
    }

    #[test]
    fn only_a_run_that_writes_the_whole_output_tallies() {
        let converse = spec(InvocationType::Converse);
        let fresh = Checkpoint::default();
        let tallies = |from: &Checkpoint, chunk: bool| {
            LiveTally::for_run(&converse, from, chunk).tally.is_some()
        };
        assert!(tallies(&fresh, false));
        // Validation counted the records: still from the start.
        let mut counted = fresh;
        counted.counters.total = 10;
        assert!(tallies(&counted, false));
        let resumed = Checkpoint {
            records_in_file: 3,
            position: 300,
            ..counted
        };
        assert!(!tallies(&resumed, false));
        let next_file = Checkpoint {
            file_index: 1,
            ..counted
        };
        assert!(!tallies(&next_file, false));
        assert!(!tallies(&fresh, true));
        let openai = JobSpec {
            openai: Some(OpenAiRun {
                endpoint: "/v1/chat/completions".into(),
                model: "m".into(),
                output_expires_after: None,
                account_id: "000000000000".into(),
            }),
            ..spec(InvocationType::Converse)
        };
        assert!(LiveTally::for_run(&openai, &fresh, false).tally.is_none());
        let invoke = LiveTally::for_run(&spec(InvocationType::InvokeModel), &fresh, false);
        assert!(invoke.tally.is_some() && invoke.side_timings);
        // Not complete, or no files: the folder is read.
        let tally = || LiveTally::for_run(&converse, &fresh, false);
        let file = InputFile {
            uri: StorageUri::Local("/in/a.jsonl".into()),
            relative: "a.jsonl".into(),
            size: 0,
            version: None,
        };
        assert!(tally().finish(false, std::slice::from_ref(&file)).is_none());
        assert!(tally().finish(true, &[]).is_none());
        assert!(tally().finish(true, &[file]).is_some());
    }

    fn outcome(
        line: Vec<u8>,
        elapsed_ms: Option<u64>,
        known: Option<KnownSuccess>,
    ) -> RecordOutcome {
        RecordOutcome {
            line,
            success: known.is_some(),
            input_tokens: 0,
            output_tokens: 0,
            elapsed: elapsed_ms.map(Duration::from_millis),
            known,
        }
    }

    /// Lines as the engine writes them, tallied as written and read back from a folder:
    /// the two analyses are the same.
    async fn check_against_read_back(side_timings: bool, outcomes: Vec<RecordOutcome>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(StorageConfig {
            data_dir: dir.path().to_path_buf(),
            ..StorageConfig::default()
        });
        let mut live = LiveTally {
            tally: Some(Tally::new()),
            side_timings,
        };
        let (mut text, mut side) = (Vec::new(), String::new());
        for outcome in &outcomes {
            live.add(outcome);
            text.extend_from_slice(&outcome.line);
            text.push(b'\n');
            side.push_str(&match outcome.elapsed {
                Some(d) => format!("{{\"latencyMs\":{}}}\n", d.as_millis()),
                None => "{}\n".into(),
            });
        }
        let job = dir.path().join("out/job");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("a.jsonl.out"), &text).unwrap();
        std::fs::write(job.join("manifest.json.out"), "{}").unwrap();
        if side_timings {
            std::fs::create_dir_all(dir.path().join("out/job.timings")).unwrap();
            std::fs::write(dir.path().join("out/job.timings/a.jsonl.jsonl"), side).unwrap();
        }
        let file = InputFile {
            uri: StorageUri::Local(dir.path().join("in/a.jsonl")),
            relative: "a.jsonl".into(),
            size: 0,
            version: None,
        };
        let tallied = live.finish(true, &[file]).unwrap();
        let context = AnalysisContext::default;
        let read =
            crate::analysis::analyze_output(&storage, &StorageUri::Local(job), 1 << 20, context())
                .await
                .unwrap();
        let tallied = tallied.finish(context());
        assert!(read.total_processed > 0);
        assert_eq!(
            serde_json::to_value(&tallied).unwrap(),
            serde_json::to_value(&read).unwrap()
        );
    }

    fn input() -> Box<RawValue> {
        RawValue::from_string(r#"{"messages":[]}"#.into()).unwrap()
    }

    #[tokio::test]
    async fn a_converse_run_tallies_what_the_folder_reads_back() {
        let mut outcomes = Vec::new();
        for i in 0..40u64 {
            let mut line = Vec::new();
            if i % 7 == 3 {
                let code = if i % 2 == 0 { 429 } else { 400 };
                write_error_line(
                    &mut line,
                    &format!("r{i}"),
                    &input(),
                    code,
                    &format!("no {}", i % 3),
                );
                outcomes.push(outcome(line, (i % 2 == 0).then_some(i * 13), None));
                continue;
            }
            let response = ChatResponse {
                content: vec![ContentPart::Text(format!("answer {i}"))],
                stop_reason: StopReason::EndTurn,
                stop_sequence: None,
                usage: Usage {
                    input_tokens: i,
                    output_tokens: 2 * i + 1,
                    cache_read_input_tokens: (i % 5 == 0).then_some(1),
                },
            };
            let latency_ms = i * 37 % 1000;
            write_success_line_with(
                &mut line,
                &format!("r{i}"),
                &input(),
                &ConverseResponse::new(&response, latency_ms),
            );
            let known = KnownSuccess {
                seconds: latency_ms as f64 / 1000.0,
                input_tokens: i,
                output_tokens: 2 * i + 1,
            };
            outcomes.push(outcome(line, Some(latency_ms + 5), Some(known)));
        }
        check_against_read_back(false, outcomes).await;
    }

    #[tokio::test]
    async fn an_invoke_model_run_tallies_what_the_folder_and_its_timings_read_back() {
        let mut outcomes = Vec::new();
        for i in 0..30u64 {
            let mut line = Vec::new();
            if i % 4 == 1 {
                write_error_line(&mut line, &format!("r{i}"), &input(), 500, "down");
                outcomes.push(outcome(line, (i % 8 == 1).then_some(i), None));
                continue;
            }
            // Anthropic's, Llama's and Mistral's bodies: tokens in three shapes, or none.
            let body = match i % 3 {
                0 => serde_json::json!({"content": [{"type": "text", "text": "a"}],
                    "usage": {"input_tokens": i, "output_tokens": 3}}),
                1 => serde_json::json!({"generation": "a", "prompt_token_count": i,
                    "generation_token_count": 2}),
                _ => serde_json::json!({"outputs": [{"text": "a"}]}),
            };
            write_success_line(&mut line, &format!("r{i}"), &input(), &body);
            outcomes.push(outcome(line, Some(i * 11), None));
        }
        check_against_read_back(true, outcomes).await;
    }
}
