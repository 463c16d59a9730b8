//! A job's input one unit at a time: a line of a JSONL file, or an item of a JSON-array file
//! (the batch-job API's `inputFormat: JSON`). Validation and execution read through the same
//! reader, so they number units alike.

use batchd_core::{BatchJobOptions, ItemFormat};
use batchd_formats::Defect;
use batchd_formats::batch_job::split_array;
use batchd_storage::{InputFile, LineReader, StorageError};
use bytes::Bytes;

use crate::{Engine, EngineError};

/// A JSON-array file is read whole (a JSON array has no line to stop at); past this size the
/// job should use JSONL.
pub const MAX_JSON_FILE_BYTES: usize = 256 * 1024 * 1024;

/// Units of one input file, in order.
pub(crate) enum UnitReader {
    /// JSONL: (1-based line number, line); blank lines included.
    Lines(LineReader),
    /// A JSON array: (0-based index, item).
    Items {
        items: std::vec::IntoIter<Bytes>,
        next: u64,
    },
}

impl UnitReader {
    pub(crate) async fn next_unit(&mut self) -> Result<Option<(u64, Bytes)>, StorageError> {
        match self {
            Self::Lines(reader) => reader.next_line().await,
            Self::Items { items, next } => Ok(items.next().map(|item| {
                *next += 1;
                (*next - 1, item)
            })),
        }
    }

    /// Units are items of an array (numbered from 0), not lines.
    pub(crate) fn is_items(&self) -> bool {
        matches!(self, Self::Items { .. })
    }
}

impl Engine {
    /// Opens one input file of a job (with `batch`, a batch-job API job's options) for reading
    /// unit by unit. A JSON-array file that is not one (or too big) is `Ok(Err(defect))`: the
    /// file's defect, for validation to report.
    pub(crate) async fn read_units(
        &self,
        batch: Option<&BatchJobOptions>,
        file: &InputFile,
    ) -> Result<Result<UnitReader, Defect>, EngineError> {
        let json = batch.is_some_and(|b| b.input_format == ItemFormat::Json);
        if !json {
            let reader = self
                .storage
                .read_input(file, self.config.max_line_bytes)
                .await?;
            return Ok(Ok(UnitReader::Lines(reader)));
        }
        if file.size > MAX_JSON_FILE_BYTES as u64 {
            return Ok(Err(Defect::new(
                "file",
                format!(
                    "{} bytes; a JSON input file is read whole and may have at most \
                     {MAX_JSON_FILE_BYTES} bytes: use inputFormat JSONL for larger inputs",
                    file.size
                ),
            )));
        }
        let mut reader = self.storage.read_input(file, MAX_JSON_FILE_BYTES).await?;
        let mut text = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
        while let Some((_, line)) = reader.next_line().await? {
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let Ok(text) = std::str::from_utf8(&text) else {
            return Ok(Err(Defect::new("file", "not valid UTF-8")));
        };
        let items = match split_array(text) {
            Ok(items) => items,
            Err(defect) => return Ok(Err(defect)),
        };
        let items: Vec<Bytes> = items
            .into_iter()
            .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
            .collect();
        Ok(Ok(UnitReader::Items {
            items: items.into_iter(),
            next: 0,
        }))
    }
}
