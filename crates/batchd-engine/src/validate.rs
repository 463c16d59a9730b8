//! The validation pass: every line of every input file is read and checked before any record
//! runs. Memory stays flat: one line at a time, plus 8 bytes per record for the duplicate
//! `recordId` check (a second, targeted pass confirms suspected duplicates).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use batchd_core::BatchJobOptions;
use batchd_core::{InvocationType, generated_record_id};
use batchd_formats::Defect;
use batchd_formats::batch_job::parse_item;
use batchd_formats::converse::{parse_converse, simple_record_line};
use batchd_formats::native::parse_native;
use batchd_formats::record::parse_record_line;
use batchd_storage::{InputFile, StorageError, StorageUri};
use bytes::Bytes;

use crate::units::UnitReader;
use crate::{BlankLines, Engine, EngineError, JobSpec, OpenAiRun, RecordOptions};
use batchd_formats::native::ModelFamily;
use batchd_formats::openai::{self, Endpoint};

/// One defect of one input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineDefect {
    /// The file as the user knows it (its URI).
    pub file: String,
    /// Index of the file in the job's sorted input list (for ordering).
    pub file_index: usize,
    /// 1-based line number (or 0-based item index, when `item`).
    pub line: u64,
    /// `line` is the index of an item in a JSON array file.
    pub item: bool,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for LineDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.item { "item " } else { "" };
        write!(
            f,
            "{}:{unit}{}: {}: {}",
            self.file, self.line, self.field, self.reason
        )
    }
}

/// What a job's input units are.
#[derive(Debug, Clone, Copy)]
pub enum Units<'a> {
    /// Bedrock records (`{"recordId", "modelInput"}` lines).
    Records,
    /// A batch-job API job's items (`*.json` arrays or `*.jsonl`).
    Items(&'a BatchJobOptions),
    /// An OpenAI batch's request lines.
    OpenAi(&'a OpenAiRun),
}

impl<'a> Units<'a> {
    pub fn of(spec: &'a JobSpec) -> Self {
        match (&spec.batch, &spec.openai) {
            (Some(batch), _) => Self::Items(batch),
            (None, Some(run)) => Self::OpenAi(run),
            (None, None) => Self::Records,
        }
    }
}

/// What the validation pass found.
#[derive(Debug, Clone)]
pub struct ValidationReport {
    pub files: Vec<InputFile>,
    /// Valid records (non-blank lines without defects).
    pub total_records: u64,
    /// Defects in file and line order, at most the number asked for.
    pub defects: Vec<LineDefect>,
    /// All defects found, including those not kept.
    pub defect_count: u64,
    /// Quotas the input exceeds, each naming the quota and the file (or the job).
    pub quota_violations: Vec<String>,
}

impl ValidationReport {
    pub fn is_valid(&self) -> bool {
        self.defect_count == 0 && self.quota_violations.is_empty()
    }

    /// The failed job's message: exceeded quotas, then a count and the first `max` defects,
    /// one per line.
    pub fn failure_message(&self, max: usize) -> String {
        let mut lines = Vec::new();
        if !self.quota_violations.is_empty() {
            lines.push("validation failed: quota exceeded".to_owned());
            lines.extend(self.quota_violations.iter().cloned());
        }
        if self.defect_count > 0 {
            let shown = self.defects.len().min(max);
            let mut head = format!(
                "validation failed: {} defect{} in the input",
                self.defect_count,
                if self.defect_count == 1 { "" } else { "s" }
            );
            if (shown as u64) < self.defect_count {
                head.push_str(&format!(" (first {shown} shown)"));
            }
            lines.push(head);
            lines.extend(self.defects[..shown].iter().map(ToString::to_string));
        }
        lines.join("\n")
    }
}

/// What a line is, once checked.
enum Checked<'a> {
    Blank,
    Record {
        record_id: std::borrow::Cow<'a, str>,
    },
}

struct Pass<'a> {
    job_id: &'a str,
    invocation_type: InvocationType,
    records: &'a RecordOptions,
    blank_lines: BlankLines,
    /// A batch-job API job's options: its units are items, not Bedrock records.
    batch: Option<&'a BatchJobOptions>,
    /// An OpenAI batch: its units are request lines.
    openai: Option<&'a OpenAiRun>,
}

impl Pass<'_> {
    /// Checks one line; pushes its defects. Returns the record id when the line has one.
    fn check<'l>(
        &self,
        file: &InputFile,
        line_no: u64,
        line: &'l [u8],
        defects: &mut Vec<Defect>,
    ) -> Option<Checked<'l>> {
        let Ok(text) = std::str::from_utf8(line) else {
            defects.push(Defect::new("line", "not valid UTF-8"));
            return None;
        };
        if text.trim().is_empty() {
            if self.blank_lines == BlankLines::Reject {
                defects.push(Defect::new("line", "blank line"));
            }
            return Some(Checked::Blank);
        }
        if let Some(batch) = self.batch {
            return self.check_item(batch, file, line_no, text, defects);
        }
        if let Some(openai) = self.openai {
            return check_openai_line(openai, text, defects);
        }
        // Most lines are simple Converse records: one pass over the line says so.
        if self.invocation_type == InvocationType::Converse
            && let Some(id) = simple_record_line(text)
        {
            let record_id = id.unwrap_or_else(|| {
                std::borrow::Cow::Owned(generated_record_id(self.job_id, &file.relative, line_no))
            });
            return Some(Checked::Record { record_id });
        }
        let record = match parse_record_line(text) {
            Ok(record) => record,
            Err(defect) => {
                defects.push(defect);
                return None;
            }
        };
        let body = record.model_input.get();
        match self.invocation_type {
            InvocationType::Converse => {
                if let Err(found) = parse_converse(body, &self.records.converse) {
                    defects.extend(found);
                }
            }
            // The family is checked before the pass starts.
            InvocationType::InvokeModel => {
                if let Some(family) = self.records.family
                    && let Err(found) = parse_native(family, body)
                {
                    defects.extend(found);
                }
            }
        }
        let record_id = match record.record_id {
            Some(id) => std::borrow::Cow::Owned(id),
            None => {
                std::borrow::Cow::Owned(generated_record_id(self.job_id, &file.relative, line_no))
            }
        };
        Some(Checked::Record { record_id })
    }
}

impl Pass<'_> {
    /// A batch-job item: a record, a Converse body or a document, run as Converse.
    fn check_item<'l>(
        &self,
        batch: &BatchJobOptions,
        file: &InputFile,
        unit: u64,
        text: &'l str,
        defects: &mut Vec<Defect>,
    ) -> Option<Checked<'l>> {
        let item = match parse_item(text, batch.prompt_template.as_deref()) {
            Ok(item) => item,
            Err(defect) => {
                defects.push(defect);
                return None;
            }
        };
        if let Err(found) = parse_converse(&item.body, &self.records.converse) {
            defects.extend(found.into_iter().map(|d| {
                // Only a record has a modelInput; other items are the body themselves.
                match (item.from_record, d.field.strip_prefix("modelInput.")) {
                    (false, Some(field)) => Defect::new(field, d.reason),
                    _ => d,
                }
            }));
        }
        let record_id = item
            .id
            .unwrap_or_else(|| generated_record_id(self.job_id, &file.relative, unit));
        Some(Checked::Record {
            record_id: std::borrow::Cow::Owned(record_id),
        })
    }
}

/// An OpenAI batch line: its shape, its body for the batch's endpoint, and the batch's one
/// model. Its id is its `custom_id`.
fn check_openai_line<'l>(
    run: &OpenAiRun,
    text: &'l str,
    defects: &mut Vec<Defect>,
) -> Option<Checked<'l>> {
    let Some(endpoint) = Endpoint::parse(&run.endpoint) else {
        defects.push(Defect::new(
            "url",
            format!("the endpoint {} is not supported", run.endpoint),
        ));
        return None;
    };
    let line = match openai::parse_line(text, endpoint) {
        Ok(line) => line,
        Err(found) => {
            defects.extend(found);
            return None;
        }
    };
    if let Err(found) = openai::parse_body(endpoint, line.body) {
        defects.extend(found);
    }
    match openai::body_model(line.body) {
        Some(model) if model != run.model => defects.push(Defect::new(
            "body.model",
            format!(
                "a batch runs one model: the first line names {:?}, this one {model:?}",
                run.model
            ),
        )),
        _ => {}
    }
    Some(Checked::Record {
        record_id: std::borrow::Cow::Owned(line.custom_id),
    })
}

fn id_hash(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl Engine {
    /// The input files of all inputs, in order. Two files that would write the same output
    /// file (same path relative to their prefixes) are an error.
    pub async fn list_inputs(
        &self,
        inputs: &[StorageUri],
        extension: &'static str,
    ) -> Result<Vec<InputFile>, EngineError> {
        let mut files: Vec<InputFile> = Vec::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for input in inputs {
            for file in self.storage.list_inputs_with(input, extension).await? {
                if let Some(other) = seen.insert(file.relative.clone(), file.uri.to_string()) {
                    return Err(EngineError::Input(format!(
                        "{} and {} would both write the output file {}.out; run them as separate jobs",
                        other, file.uri, file.relative
                    )));
                }
                files.push(file);
            }
        }
        Ok(files)
    }

    /// Validates a job's input, keeping the first `max_defects_in_message` defects.
    pub async fn validate(&self, spec: &JobSpec) -> Result<ValidationReport, EngineError> {
        self.validate_input(
            &spec.inputs,
            spec.invocation_type,
            &spec.records,
            spec.job_id.as_str(),
            self.config.max_defects_in_message,
            Units::of(spec),
        )
        .await
    }

    /// Validates every line of every input file under `inputs`, keeping at most `keep`
    /// defects (all are counted). `job_id` seeds the ids generated for records without one.
    /// `units` says what the files hold (records, a batch job's items, OpenAI request lines).
    pub async fn validate_input(
        &self,
        inputs: &[StorageUri],
        invocation_type: InvocationType,
        records: &RecordOptions,
        job_id: &str,
        keep: usize,
        units: Units<'_>,
    ) -> Result<ValidationReport, EngineError> {
        let (batch, openai) = match units {
            Units::Records => (None, None),
            Units::Items(batch) => (Some(batch), None),
            Units::OpenAi(run) => (None, Some(run)),
        };
        if invocation_type == InvocationType::InvokeModel && records.family.is_none() {
            return Err(EngineError::Input(format!(
                "the model has no InvokeModel body format: its id names no known family and its \
                 config sets no `format` (one of {}); or write the records in the Converse format",
                ModelFamily::ALL.map(ModelFamily::name).join(", ")
            )));
        }
        let extension = batch.map_or("jsonl", |b| b.input_format.extension());
        let files = self.list_inputs(inputs, extension).await?;
        let pass = Pass {
            job_id,
            invocation_type,
            records,
            blank_lines: self.config.blank_lines,
            batch,
            openai,
        };
        let mut report = ValidationReport {
            files: files.clone(),
            total_records: 0,
            defects: Vec::new(),
            defect_count: 0,
            quota_violations: Vec::new(),
        };
        let quotas = self.config.quotas.as_ref();
        if let Some(q) = quotas {
            check_sizes(q, &files, &mut report.quota_violations);
            if !report.quota_violations.is_empty() {
                // Too big to read: fail before streaming gigabytes.
                return Ok(report);
            }
        }
        let mut id_hashes: Vec<u64> = Vec::new();
        let mut line_defects = Vec::new();

        for (file_index, file) in files.iter().enumerate() {
            let records_before = report.total_records;
            let mut reader = match self.read_units(batch, file).await? {
                Ok(reader) => reader,
                Err(defect) => {
                    record_defects(
                        &mut report,
                        keep,
                        file,
                        file_index,
                        (0, false),
                        vec![defect],
                    );
                    continue;
                }
            };
            let items = reader.is_items();
            loop {
                let (line_no, line) = match reader.next_unit().await {
                    Ok(Some(next)) => next,
                    Ok(None) => break,
                    Err(StorageError::LineTooLong { line, limit, .. }) => {
                        // The rest of this file cannot be read line by line; the job fails anyway.
                        let defect = Defect::new("line", format!("longer than {limit} bytes"));
                        let at = (line, false);
                        record_defects(&mut report, keep, file, file_index, at, vec![defect]);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                line_defects.clear();
                match pass.check(file, line_no, &line, &mut line_defects) {
                    Some(Checked::Blank) => {}
                    Some(Checked::Record { record_id }) => {
                        id_hashes.push(id_hash(&record_id));
                        if line_defects.is_empty() {
                            report.total_records += 1;
                        }
                    }
                    None => {}
                }
                if !line_defects.is_empty() {
                    let found = std::mem::take(&mut line_defects);
                    let at = (line_no, items);
                    record_defects(&mut report, keep, file, file_index, at, found);
                }
            }
            let in_file = report.total_records - records_before;
            if let Some(q) = quotas
                && in_file > q.max_records_per_file
            {
                report.quota_violations.push(format!(
                    "Records per input file per batch inference job ({}): {} has {in_file} records",
                    q.max_records_per_file, file.uri
                ));
            }
        }
        if let Some(q) = quotas {
            let n = report.total_records;
            if n > q.max_records_per_job {
                report.quota_violations.push(format!(
                    "Records per batch inference job ({}): the job has {n} records",
                    q.max_records_per_job
                ));
            }
            if n < q.min_records_per_job && report.defect_count == 0 {
                report.quota_violations.push(format!(
                    "Minimum number of records per batch inference job ({}): the job has {n} records",
                    q.min_records_per_job
                ));
            }
        }

        id_hashes.sort_unstable();
        let suspects: HashSet<u64> = id_hashes
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        drop(id_hashes);
        if !suspects.is_empty() {
            self.report_duplicates(&files, &pass, &suspects, &mut report, keep)
                .await?;
        }
        report.defects.sort_by_key(|d| (d.file_index, d.line));
        report.defects.truncate(keep);
        Ok(report)
    }

    /// The second pass: for the few ids whose hashes collided, find the real duplicates.
    async fn report_duplicates(
        &self,
        files: &[InputFile],
        pass: &Pass<'_>,
        suspects: &HashSet<u64>,
        report: &mut ValidationReport,
        keep: usize,
    ) -> Result<(), EngineError> {
        let mut first_seen: HashMap<String, (String, u64)> = HashMap::new();
        let mut scratch = Vec::new();
        for (file_index, file) in files.iter().enumerate() {
            // A file that cannot be read as units has its defect already.
            let Ok(mut reader) = self.read_units(pass.batch, file).await? else {
                continue;
            };
            let items = reader.is_items();
            while let Some((line_no, line)) = next_or_stop(&mut reader).await? {
                scratch.clear();
                let Some(Checked::Record { record_id }) =
                    pass.check(file, line_no, &line, &mut scratch)
                else {
                    continue;
                };
                if !suspects.contains(&id_hash(&record_id)) {
                    continue;
                }
                match first_seen.get(record_id.as_ref()) {
                    Some((first_file, first_line)) => {
                        let field = if pass.openai.is_some() {
                            "custom_id"
                        } else {
                            "recordId"
                        };
                        let defect = Defect::new(
                            field,
                            format!(
                                "duplicate {record_id:?}, first used at {first_file}:{first_line}"
                            ),
                        );
                        // Room for `keep` more: the merge below sorts and cuts back to `keep`.
                        let cap = keep.saturating_mul(2);
                        let at = (line_no, items);
                        record_defects(report, cap, file, file_index, at, vec![defect]);
                    }
                    None => {
                        first_seen.insert(record_id.into_owned(), (file.uri.to_string(), line_no));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_sizes(q: &crate::Quotas, files: &[InputFile], violations: &mut Vec<String>) {
    for file in files.iter().filter(|f| f.size > q.max_file_bytes) {
        violations.push(format!(
            "Batch inference input file size ({} bytes): {} has {} bytes",
            q.max_file_bytes, file.uri, file.size
        ));
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    if total > q.max_job_bytes {
        violations.push(format!(
            "Batch inference job size ({} bytes): the input files have {total} bytes",
            q.max_job_bytes
        ));
    }
}

/// The next line, or None at the end or at an over-long line (already reported).
async fn next_or_stop(reader: &mut UnitReader) -> Result<Option<(u64, Bytes)>, EngineError> {
    match reader.next_unit().await {
        Ok(next) => Ok(next),
        Err(StorageError::LineTooLong { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn record_defects(
    report: &mut ValidationReport,
    keep: usize,
    file: &InputFile,
    file_index: usize,
    (line, item): (u64, bool),
    defects: Vec<Defect>,
) {
    for defect in defects {
        report.defect_count += 1;
        if report.defects.len() < keep {
            report.defects.push(LineDefect {
                file: file.uri.to_string(),
                file_index,
                line,
                item,
                field: defect.field,
                reason: defect.reason,
            });
        }
    }
}
