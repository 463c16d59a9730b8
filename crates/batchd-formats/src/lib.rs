//! Record bodies and their translation: record lines (`{"recordId", "modelInput"}`), the
//! Converse request (validated field by field) and response, and the neutral chat/embedding
//! types every backend speaks.
//!
//! - [`record`]: one JSONL line → [`record::RecordLine`]; output and error lines.
//! - [`converse`]: Converse body → [`neutral::ChatRequest`] or a list of [`Defect`]s;
//!   [`neutral::ChatResponse`] → Converse response body.
//! - [`neutral`]: the format-independent request/response.
//! - [`manifest`]: the `manifest.json.out` counters.
//! - [`batch_job`]: the batch-job API's items (record, Converse body or document) and result
//!   objects.
//! - [`openai`]: the OpenAI Batch API's request lines, chat/embeddings bodies and output lines.
//! - [`analysis`]: a finished job's results (Bedrock lines or seed-API results) → statistics.
//!
//! Only this crate (and later the API crate) knows Bedrock's JSON shapes.

pub mod analysis;
pub mod batch_job;
pub mod converse;
pub mod manifest;
pub mod native;
pub mod neutral;
pub mod openai;
pub mod record;

use std::fmt;

/// One problem with one input line: the field (a path such as
/// `modelInput.messages[0].role`) and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defect {
    pub field: String,
    pub reason: String,
}

impl Defect {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}
