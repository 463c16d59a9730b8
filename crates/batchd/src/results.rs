//! `batchd results JOB`: the result analysis of one job (by id, ARN or output location) as a
//! table or JSON, and an export with one row per record (CSV or Parquet).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow_array::builder::{Float64Builder, StringBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use batchd_core::{Job, JobArn, JobId};
use batchd_engine::analysis::{self, ExportSummary};
use batchd_formats::analysis::AnalysisContext;
use batchd_formats::analysis::render::{CSV_COLUMNS, push_csv_row, render_table};
use batchd_storage::{InputFile, Storage, StorageUri};
use batchd_store::JobStore;
use clap::ValueEnum;

use crate::config::Config;

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct ResultsArgs {
    /// A job id, a job ARN (any job in --data-dir's job store) or the job's output location
    /// `<output>/<jobId>/` (a local path, file:// or s3:// URI).
    job: String,
    #[arg(long, value_enum, default_value = "table")]
    format: OutputFormat,
    /// Write one row per record to this file: `.csv` or `.parquet`. Columns: file, position
    /// (line number or array index), id, status, input, output, processing_time,
    /// input_tokens, output_tokens, attempts, error_code, error_message, metadata. Bedrock
    /// lines carry their input; job API results are joined in order with the job's validated
    /// input items when JOB names a job in the store, and have an empty input column when
    /// JOB is an output location of a job the store does not know.
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The PostgreSQL job store `batchd serve --database-url` keeps the job in.
    #[arg(long, env = "BATCHD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

pub async fn results(args: ResultsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let data_dir = config.data_dir(args.data_dir.as_deref());
    let export = args.export.as_deref().map(ExportKind::of).transpose()?;
    let storage = Storage::new(config.storage_config(&data_dir));
    let store = config
        .open_store(args.database_url.as_deref(), &data_dir)
        .await?;
    let (dir, job) = locate(store.as_ref(), &args.job, &data_dir).await?;
    let inputs = match &job {
        Some(job) => Some(job_inputs(store.as_ref(), &job.id).await?),
        None => None,
    };
    store.close().await;
    let context = match &job {
        Some(job) => job_context(job, &dir, &config),
        None => AnalysisContext {
            output_location: dir.to_string(),
            ..AnalysisContext::default()
        },
    };
    let max_line = config.engine_config(None).max_line_bytes;
    let found = analysis::analyze_output(&storage, &dir, max_line, context).await?;
    match args.format {
        OutputFormat::Table => print!("{}", render_table(&found)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&found)?),
    }
    if let (Some(kind), Some(path)) = (export, args.export.as_deref()) {
        let inputs = inputs.as_deref().filter(|files| !files.is_empty());
        let summary = kind.write(&storage, &dir, inputs, max_line, path).await?;
        let joined = if summary.joined_inputs {
            ""
        } else if job.is_some() {
            " (the job kept no list of its input files: job API results have no input column)"
        } else {
            " (an output location: job API results are not joined with their inputs)"
        };
        eprintln!(
            "exported {} rows to {}{joined}",
            summary.rows,
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The job's output folder, and the job when the store knows it: JOB is a location when it
/// has a `/` and is no ARN, else a job id or ARN.
async fn locate(
    store: &dyn JobStore,
    job: &str,
    data_dir: &Path,
) -> anyhow::Result<(StorageUri, Option<Job>)> {
    if job.contains('/') && !job.starts_with("arn:") {
        let dir = StorageUri::parse(job)?;
        // The folder of a job the store knows gets that job's context (wall time, prices).
        let known = match dir.file_name().map(JobId::parse) {
            Some(Ok(id)) => store.get(&id).await?,
            _ => None,
        };
        return Ok((dir, known));
    }
    // An OpenAI batch id is its job id behind `batch_`.
    let id = JobArn::parse_identifier(job.strip_prefix("batch_").unwrap_or(job)).map_err(|e| {
        anyhow::anyhow!("{job}: not a job id, job ARN, batch id or output location ({e})")
    })?;
    let Some(found) = store.get(&id).await? else {
        bail!("{job}: no such job in {}", data_dir.display());
    };
    let dir = StorageUri::parse(&found.request.output)?.join(found.id.as_str());
    Ok((dir, Some(found)))
}

async fn job_inputs(store: &dyn JobStore, id: &JobId) -> anyhow::Result<Vec<InputFile>> {
    store
        .job_files(id)
        .await?
        .into_iter()
        .map(|f| {
            Ok(InputFile {
                uri: StorageUri::parse(&f.uri)?,
                relative: f.relative,
                size: f.size,
                version: f.version,
            })
        })
        .collect()
}

/// Wall time from submission to the end (or to now, for a job still running); the prices of
/// the model the job names, when configured.
fn job_context(job: &Job, dir: &StorageUri, config: &Config) -> AnalysisContext {
    let end = job.end_time_ms.unwrap_or_else(batchd_store::now_ms);
    AnalysisContext {
        job_id: Some(job.id.to_string()),
        model_id: Some(job.request.model_id.clone()),
        output_location: dir.to_string(),
        wall_time_seconds: Some((end - job.submit_time_ms).max(0) as f64 / 1000.0),
        prices: config
            .model(&job.request.model_id)
            .ok()
            .and_then(|m| m.prices()),
    }
}

#[derive(Clone, Copy)]
enum ExportKind {
    Csv,
    Parquet,
}

impl ExportKind {
    fn of(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Ok(Self::Csv),
            Some("parquet") => Ok(Self::Parquet),
            _ => bail!(
                "--export {}: the file name must end in .csv or .parquet",
                path.display()
            ),
        }
    }

    async fn write(
        self,
        storage: &Storage,
        dir: &StorageUri,
        inputs: Option<&[InputFile]>,
        max_line: usize,
        path: &Path,
    ) -> anyhow::Result<ExportSummary> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let sink_error = |e: &dyn std::fmt::Display| {
            analysis::AnalysisError::Sink(format!("writing {}: {e}", path.display()))
        };
        match self {
            Self::Csv => {
                let mut out = std::io::BufWriter::new(file);
                let mut line = String::new();
                push_csv_row(&mut line, &CSV_COLUMNS);
                out.write_all(line.as_bytes()).map_err(|e| sink_error(&e))?;
                let summary = analysis::export_rows(storage, dir, inputs, max_line, |row| {
                    line.clear();
                    push_csv_row(&mut line, row);
                    out.write_all(line.as_bytes()).map_err(|e| sink_error(&e))
                })
                .await?;
                out.flush()
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(summary)
            }
            Self::Parquet => {
                let mut writer = ParquetRows::new(file)?;
                let summary = analysis::export_rows(storage, dir, inputs, max_line, |row| {
                    writer.push(row).map_err(|e| sink_error(&e))
                })
                .await?;
                writer
                    .finish()
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(summary)
            }
        }
    }
}

/// Rows buffered in Arrow builders, written as one row group per [`ParquetRows::BATCH`]
/// rows: numbers typed (null when unknown), the rest strings, Snappy-compressed (pandas'
/// and pyarrow's default).
struct ParquetRows {
    schema: Arc<Schema>,
    writer: parquet::arrow::ArrowWriter<std::fs::File>,
    strings: Vec<StringBuilder>,
    position: UInt64Builder,
    time: Float64Builder,
    counts: [UInt64Builder; 3],
    buffered: usize,
}

/// The export's columns, by kind.
const POSITION: usize = 1;
const TIME: usize = 6;
const COUNTS: [usize; 3] = [7, 8, 9];

impl ParquetRows {
    const BATCH: usize = 8192;

    fn new(file: std::fs::File) -> anyhow::Result<Self> {
        let fields: Vec<Field> = CSV_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let kind = match i {
                    POSITION => DataType::UInt64,
                    TIME => DataType::Float64,
                    i if COUNTS.contains(&i) => DataType::UInt64,
                    _ => DataType::Utf8,
                };
                Field::new(*name, kind, i != POSITION)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let writer = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        Ok(Self {
            schema,
            writer,
            strings: (0..CSV_COLUMNS.len() - 5)
                .map(|_| StringBuilder::new())
                .collect(),
            position: UInt64Builder::new(),
            time: Float64Builder::new(),
            counts: [
                UInt64Builder::new(),
                UInt64Builder::new(),
                UInt64Builder::new(),
            ],
            buffered: 0,
        })
    }

    fn push(&mut self, row: &[String]) -> anyhow::Result<()> {
        let mut strings = self.strings.iter_mut();
        for (i, field) in row.iter().enumerate() {
            let number = |f: &str| (!f.is_empty()).then(|| f.parse::<u64>()).transpose();
            match i {
                POSITION => self.position.append_value(field.parse()?),
                TIME => self
                    .time
                    .append_option((!field.is_empty()).then(|| field.parse()).transpose()?),
                i if COUNTS.contains(&i) => {
                    let slot = COUNTS.iter().position(|c| *c == i).unwrap_or(0);
                    self.counts[slot].append_option(number(field)?);
                }
                // Empty text (no error, no metadata) is null, as in the CSV read by pandas.
                _ => match strings.next() {
                    Some(b) if field.is_empty() && i > 3 => b.append_null(),
                    Some(b) => b.append_value(field),
                    None => bail!("more columns than the schema has"),
                },
            }
        }
        self.buffered += 1;
        if self.buffered >= Self::BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.buffered == 0 {
            return Ok(());
        }
        let mut strings = self.strings.iter_mut();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(CSV_COLUMNS.len());
        for i in 0..CSV_COLUMNS.len() {
            let column: ArrayRef = match i {
                POSITION => Arc::new(self.position.finish()),
                TIME => Arc::new(self.time.finish()),
                i if COUNTS.contains(&i) => {
                    let slot = COUNTS.iter().position(|c| *c == i).unwrap_or(0);
                    Arc::new(self.counts[slot].finish())
                }
                _ => match strings.next() {
                    Some(b) => Arc::new(b.finish()),
                    None => bail!("more columns than the schema has"),
                },
            };
            columns.push(column);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)?;
        self.buffered = 0;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.flush()?;
        self.writer.close()?;
        Ok(())
    }
}
