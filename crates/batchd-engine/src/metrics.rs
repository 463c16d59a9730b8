//! What the engine records through the `metrics` facade (a no-op until a binary installs a
//! recorder: `batchd serve` installs the Prometheus exporter). The names live here, so the
//! binary describes them and sets their histogram buckets from one list.
//!
//! Labels: `job_id` and `model_id` (the model id as the job names it) on per-record series;
//! `model_id` and `reason`/`outcome` on backend series. A job's series stay until the
//! process exits (a few per job).

use std::time::Duration;

use batchd_backends::ErrorKind;

/// Records written to the output (success or error line), per job and model.
pub const RECORDS_PROCESSED: &str = "batchd_records_processed_total";
/// Records written as successes.
pub const RECORDS_SUCCEEDED: &str = "batchd_records_succeeded_total";
/// Records written as errors (including records a stop left unrun, for dialects that answer
/// every line).
pub const RECORDS_FAILED: &str = "batchd_records_failed_total";
/// Records of a job started and not yet finished.
pub const RECORDS_IN_FLIGHT: &str = "batchd_records_in_flight";
/// Input tokens of written records, per job and model.
pub const INPUT_TOKENS: &str = "batchd_input_tokens_total";
/// Output tokens of written records, per job and model.
pub const OUTPUT_TOKENS: &str = "batchd_output_tokens_total";
/// Retries of a backend call, by model and reason (`throttling`, `server_error`, `timeout`,
/// `connection`).
pub const RETRIES: &str = "batchd_retries_total";
/// Seconds of each backend call (one attempt), by model and outcome (`ok` or the error class).
pub const BACKEND_LATENCY: &str = "batchd_backend_request_duration_seconds";

/// Chunk commits refused because another instance had taken the chunk over (shared mode).
pub const CHUNKS_REFUSED: &str = "batchd_chunk_commits_refused_total";

/// Buckets of [`BACKEND_LATENCY`]: 5 ms to 5 minutes (an attempt's timeout).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Every metric above with its help text, for the exporter.
pub const DESCRIPTIONS: [(&str, &str); 9] = [
    (RECORDS_PROCESSED, "Records written to a job's output"),
    (RECORDS_SUCCEEDED, "Records written as successes"),
    (RECORDS_FAILED, "Records written as errors"),
    (RECORDS_IN_FLIGHT, "Records of a job being processed now"),
    (INPUT_TOKENS, "Input tokens of written records"),
    (OUTPUT_TOKENS, "Output tokens of written records"),
    (RETRIES, "Backend calls retried, by reason"),
    (BACKEND_LATENCY, "Duration of one backend call (attempt)"),
    (
        CHUNKS_REFUSED,
        "Chunk commits refused: another instance had taken the chunk over",
    ),
];

/// Counts a chunk commit refused under a stale fencing token.
pub fn chunk_refused() {
    metrics::counter!(CHUNKS_REFUSED).increment(1);
}

/// The name of an error class in labels and logs.
pub fn error_class(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::RateLimited => "throttling",
        ErrorKind::Server => "server_error",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Connect => "connection",
        ErrorKind::Client => "client_error",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Protocol => "protocol",
    }
}

/// One backend attempt ended after `elapsed`: `None` for an answer, else its error class.
pub(crate) fn attempt(model_id: &str, elapsed: Duration, error: Option<ErrorKind>) {
    let outcome = error.map_or("ok", error_class);
    metrics::histogram!(BACKEND_LATENCY, "model_id" => model_id.to_owned(), "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A backend call will be retried because of `kind`.
pub(crate) fn retry(model_id: &str, kind: ErrorKind) {
    metrics::counter!(RETRIES, "model_id" => model_id.to_owned(), "reason" => error_class(kind))
        .increment(1);
}

/// One job's per-record series, with their labels resolved once.
pub(crate) struct JobMetrics {
    processed: metrics::Counter,
    succeeded: metrics::Counter,
    failed: metrics::Counter,
    in_flight: metrics::Gauge,
    input_tokens: metrics::Counter,
    output_tokens: metrics::Counter,
}

impl JobMetrics {
    pub(crate) fn new(job_id: &str, model_id: &str) -> Self {
        let labels = [
            ("job_id", job_id.to_owned()),
            ("model_id", model_id.to_owned()),
        ];
        Self {
            processed: metrics::counter!(RECORDS_PROCESSED, &labels),
            succeeded: metrics::counter!(RECORDS_SUCCEEDED, &labels),
            failed: metrics::counter!(RECORDS_FAILED, &labels),
            in_flight: metrics::gauge!(RECORDS_IN_FLIGHT, &labels),
            input_tokens: metrics::counter!(INPUT_TOKENS, &labels),
            output_tokens: metrics::counter!(OUTPUT_TOKENS, &labels),
        }
    }

    /// A record was written.
    pub(crate) fn written(&self, success: bool, input_tokens: u64, output_tokens: u64) {
        self.processed.increment(1);
        if success {
            self.succeeded.increment(1);
        } else {
            self.failed.increment(1);
        }
        self.input_tokens.increment(input_tokens);
        self.output_tokens.increment(output_tokens);
    }

    pub(crate) fn in_flight(&self, records: usize) {
        self.in_flight.set(records as f64);
    }
}
