//! Reads a job's results from its output folder `<output>/<jobId>/` (Bedrock `*.out` lines,
//! seed-API `*.json` arrays and `*.jsonl`), one file at a time, into the analysis of
//! `batchd_formats::analysis`, and writes it beside the folder as `<output>/<jobId>.analysis.json`
//! (never inside: the seed's reader `json.loads` every object under the folder). Also yields
//! one export row per record, joining seed results with the job's input items.

use std::collections::VecDeque;

use batchd_formats::Defect;
use batchd_formats::analysis::render::export_fields;
use batchd_formats::analysis::{
    Analysis, AnalysisContext, Detail, Dialect, Layout, RecordResult, Tally, for_each_array_item,
    parse_bedrock_line_with, parse_seed_result, result_file_kind,
};
use batchd_storage::{InputFile, Storage, StorageError, StorageUri};

mod live;
pub(crate) use live::LiveTally;

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{file}:{line}: {defect}")]
    Line {
        file: String,
        line: u64,
        defect: Defect,
    },
    #[error("{file}: item {index}: {defect}")]
    Item {
        file: String,
        index: u64,
        defect: Defect,
    },
    #[error("{file}: {defect}")]
    File { file: String, defect: Defect },
    #[error(
        "{uri}: nothing found at this output location (expected a job's folder <output>/<jobId>/)"
    )]
    NothingThere { uri: String },
    /// Seed results do not line up with the job's input items.
    #[error("{0}")]
    Join(String),
    /// The caller's row sink failed (an export file).
    #[error("{0}")]
    Sink(String),
}

/// One result file under a job's folder.
#[derive(Debug, Clone)]
pub struct ResultFile {
    pub file: InputFile,
    pub dialect: Dialect,
    pub layout: Layout,
}

/// The side file of processing times the engine keeps for a Bedrock output file of an
/// InvokeModel job: `<output>/<jobId>.timings/<input relative>.jsonl` for
/// `<output>/<jobId>/<input relative>.out` (see `run::timings_uri`).
fn timings_of(file: &ResultFile) -> Option<StorageUri> {
    if file.dialect != Dialect::Bedrock {
        return None;
    }
    let relative = &file.file.relative;
    let uri = file.file.uri.to_string();
    let dir = uri.strip_suffix(relative.as_str())?.trim_end_matches('/');
    let input = relative.strip_suffix(".out")?;
    StorageUri::parse(&format!("{dir}.timings/{input}.jsonl")).ok()
}

/// Seconds from a side-file line `{"latencyMs": N}`; `None` for `{}` or anything else.
fn side_latency(line: &[u8]) -> Option<f64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some(value.get("latencyMs")?.as_f64()? / 1000.0)
}

/// `<output>/<jobId>.analysis.json`: beside the job's folder.
pub fn analysis_uri(output: &StorageUri, job_id: &str) -> StorageUri {
    output.join(&format!("{job_id}.analysis.json"))
}

/// The result files under `dir`, sorted by path; `NothingThere` when `dir` holds no object
/// at all (a wrong location), an empty list when it holds only a manifest.
pub async fn result_files(
    storage: &Storage,
    dir: &StorageUri,
) -> Result<Vec<ResultFile>, AnalysisError> {
    let listed = storage.list_files(dir).await?;
    if listed.is_empty() {
        return Err(AnalysisError::NothingThere {
            uri: dir.to_string(),
        });
    }
    Ok(listed
        .into_iter()
        .filter_map(|file| {
            let name = file.relative.rsplit('/').next().unwrap_or_default();
            let (dialect, layout) = result_file_kind(name)?;
            Some(ResultFile {
                file,
                dialect,
                layout,
            })
        })
        .collect())
}

/// Calls `f(position, result)` for every result of `file`, in order: `position` is the line
/// number (lines) or the item index (arrays). Lines stream; an array file is read whole (one
/// file's text at a time).
pub async fn read_results(
    storage: &Storage,
    file: &ResultFile,
    max_line_bytes: usize,
    detail: Detail,
    mut f: impl FnMut(u64, RecordResult) -> Result<(), AnalysisError>,
) -> Result<(), AnalysisError> {
    let uri = &file.file.uri;
    let name = uri.to_string();
    let parse = |text: &str| match file.dialect {
        Dialect::Bedrock => parse_bedrock_line_with(text, detail),
        Dialect::Seed => parse_seed_result(text),
    };
    match file.layout {
        Layout::Lines => {
            let mut lines = storage.read_lines(uri, max_line_bytes).await?;
            let mut timings = match timings_of(file) {
                Some(side) => match storage.read_lines(&side, max_line_bytes).await {
                    Ok(reader) => Some(reader),
                    Err(StorageError::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                },
                None => None,
            };
            while let Some((line, bytes)) = lines.next_line().await? {
                let at = |defect| AnalysisError::Line {
                    file: name.clone(),
                    line,
                    defect,
                };
                let text = std::str::from_utf8(&bytes)
                    .map_err(|e| at(Defect::new("line", format!("not UTF-8: {e}"))))?;
                if text.trim_ascii().is_empty() {
                    continue;
                }
                let mut result = parse(text).map_err(at)?;
                // The side file has one line per output line, in the same order.
                let side = match &mut timings {
                    Some(reader) => reader.next_line().await?,
                    None => None,
                };
                if result.processing_time.is_none()
                    && let Some((_, side)) = side
                {
                    result.processing_time = side_latency(&side);
                }
                f(line, result)?;
            }
            Ok(())
        }
        Layout::Array => {
            let bytes = storage.get(uri).await?;
            let text = std::str::from_utf8(&bytes).map_err(|e| AnalysisError::File {
                file: name.clone(),
                defect: Defect::new("file", format!("not UTF-8: {e}")),
            })?;
            // The callback's own error waits here while the walk stops.
            let mut failed = None;
            let walked = for_each_array_item(text, |index, item| {
                let index = index as u64;
                let result = parse(item)?;
                f(index, result).map_err(|e| {
                    failed = Some(e);
                    Defect::new("item", "refused")
                })
            });
            if let Some(e) = failed {
                return Err(e);
            }
            walked.map_err(|e| match e.index {
                Some(index) => AnalysisError::Item {
                    file: name.clone(),
                    index: index as u64,
                    defect: e.defect,
                },
                None => AnalysisError::File {
                    file: name.clone(),
                    defect: e.defect,
                },
            })
        }
    }
}

/// The analysis of every result under `dir`. Memory: one array file's text (lines stream)
/// plus 8 bytes per timed record.
pub async fn analyze_output(
    storage: &Storage,
    dir: &StorageUri,
    max_line_bytes: usize,
    context: AnalysisContext,
) -> Result<Analysis, AnalysisError> {
    let mut tally = Tally::new();
    for file in result_files(storage, dir).await? {
        tally.add_file(file.dialect);
        // The tally needs no text: lines are read only as far as it looks.
        read_results(
            storage,
            &file,
            max_line_bytes,
            Detail::Stats,
            |_, result| {
                tally.add(&result);
                Ok(())
            },
        )
        .await?;
    }
    Ok(tally.finish(context))
}

/// Analyses the job's folder `<output>/<jobId>/` and writes the analysis as JSON to
/// `<output>/<jobId>.analysis.json`.
pub async fn write_job_analysis(
    storage: &Storage,
    output: &StorageUri,
    job_id: &str,
    max_line_bytes: usize,
    context: AnalysisContext,
) -> Result<Analysis, AnalysisError> {
    let dir = output.join(job_id);
    let analysis = analyze_output(storage, &dir, max_line_bytes, context).await?;
    write_analysis(storage, output, job_id, analysis).await
}

/// Writes `analysis` to `<output>/<jobId>.analysis.json`.
pub async fn write_analysis(
    storage: &Storage,
    output: &StorageUri,
    job_id: &str,
    analysis: Analysis,
) -> Result<Analysis, AnalysisError> {
    // Serialising plain numbers, strings and lists cannot fail.
    let json = serde_json::to_vec_pretty(&analysis).unwrap_or_default();
    storage
        .put(&analysis_uri(output, job_id), json.into())
        .await?;
    Ok(analysis)
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSummary {
    pub rows: u64,
    /// Seed results were joined with their input items.
    pub joined_inputs: bool,
}

/// Calls `sink` with one row per record (the columns of
/// `batchd_formats::analysis::render::CSV_COLUMNS`), in output order. Bedrock lines carry
/// their input; seed results are joined, in order, with the items of `inputs` (the job's
/// validated input files) when given, else their input column stays empty. Holds one result
/// file's rows while joining it.
pub async fn export_rows(
    storage: &Storage,
    dir: &StorageUri,
    inputs: Option<&[InputFile]>,
    max_line_bytes: usize,
    mut sink: impl FnMut(&[String]) -> Result<(), AnalysisError>,
) -> Result<ExportSummary, AnalysisError> {
    let mut items = inputs.map(|files| InputItems::new(storage, files));
    let (mut rows, mut joined_any) = (0, false);
    for file in result_files(storage, dir).await? {
        let name = file.file.relative.clone();
        let joined = file.dialect == Dialect::Seed && items.is_some();
        joined_any |= joined;
        // A joined file's results wait for its items: reading those is async, this callback not.
        let mut results = Vec::new();
        read_results(
            storage,
            &file,
            max_line_bytes,
            Detail::Full,
            |position, result| {
                if joined {
                    results.push((position, result));
                    return Ok(());
                }
                rows += 1;
                sink(&export_fields(&name, position, &result, None))
            },
        )
        .await?;
        if let Some(items) = items.as_mut().filter(|_| joined) {
            for (position, result) in results {
                let at = || format!("{}: item {position} (id {:?})", file.file.uri, result.id);
                let Some(item) = items.next().await? else {
                    return Err(AnalysisError::Join(format!(
                        "{}: the job's inputs have no more items",
                        at()
                    )));
                };
                if let Some(id) = item_id(&item.text)
                    && id != result.id
                {
                    return Err(AnalysisError::Join(format!(
                        "{}: joined in order with {} item {} whose id is {id:?}",
                        at(),
                        item.file,
                        item.position
                    )));
                }
                rows += 1;
                sink(&export_fields(&name, position, &result, Some(&item.text)))?;
            }
        }
    }
    // Inputs are joined only with seed results (Bedrock lines carry their own).
    if let Some(items) = items.as_mut().filter(|_| joined_any)
        && let Some(item) = items.next().await?
    {
        return Err(AnalysisError::Join(format!(
            "{} item {} and any after it have no result",
            item.file, item.position
        )));
    }
    Ok(ExportSummary {
        rows,
        joined_inputs: joined_any,
    })
}

/// An input item's `id` (a document) or `recordId` (a record), as the result echoes it.
fn item_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    match value.get("id").or_else(|| value.get("recordId"))? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

struct InputItem {
    file: String,
    /// Line number or array index.
    position: u64,
    text: String,
}

/// The items of a job's input files in order (a `.json` file is an array of items, anything
/// else JSON Lines), one file loaded at a time.
struct InputItems<'a> {
    storage: &'a Storage,
    files: std::slice::Iter<'a, InputFile>,
    loaded: VecDeque<InputItem>,
}

impl<'a> InputItems<'a> {
    fn new(storage: &'a Storage, files: &'a [InputFile]) -> Self {
        Self {
            storage,
            files: files.iter(),
            loaded: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> Result<Option<InputItem>, AnalysisError> {
        while self.loaded.is_empty() {
            let Some(file) = self.files.next() else {
                return Ok(None);
            };
            let name = file.uri.to_string();
            let bytes = self.storage.get(&file.uri).await?;
            let text = std::str::from_utf8(&bytes).map_err(|e| AnalysisError::File {
                file: name.clone(),
                defect: Defect::new("file", format!("not UTF-8: {e}")),
            })?;
            if file.relative.ends_with(".json") {
                let loaded = &mut self.loaded;
                for_each_array_item(text, |index, item| {
                    loaded.push_back(InputItem {
                        file: name.clone(),
                        position: index as u64,
                        text: item.to_owned(),
                    });
                    Ok(())
                })
                .map_err(|e| AnalysisError::File {
                    file: name.clone(),
                    defect: e.defect,
                })?;
            } else {
                let text = text.strip_prefix('\u{feff}').unwrap_or(text);
                for (i, line) in text.lines().enumerate() {
                    if !line.trim_ascii().is_empty() {
                        self.loaded.push_back(InputItem {
                            file: name.clone(),
                            position: i as u64 + 1,
                            text: line.to_owned(),
                        });
                    }
                }
            }
        }
        Ok(self.loaded.pop_front())
    }
}

#[cfg(test)]
mod tests;
