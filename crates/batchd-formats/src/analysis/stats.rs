//! The statistics of a job's results: a [`Tally`] takes one [`RecordResult`] at a time (8
//! bytes per timed record for the percentiles, a bounded number of distinct error messages)
//! and ends as the serialisable [`Analysis`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::{Dialect, RecordResult};

/// Distinct messages counted per error code; further distinct ones are counted as
/// `other_messages`, so a message that names each record cannot grow the tally without bound.
pub const MAX_MESSAGES_PER_CODE: usize = 256;

/// Messages listed per error code.
pub const TOP_MESSAGES: usize = 3;

/// A model's prices (config: `price_per_million_input_tokens`,
/// `price_per_million_output_tokens`), in whatever currency the config uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    pub per_million_input_tokens: f64,
    pub per_million_output_tokens: f64,
}

/// What the results do not say, given by whoever knows the job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnalysisContext {
    pub job_id: Option<String>,
    pub model_id: Option<String>,
    /// Where the results were read (`<output>/<jobId>/`).
    pub output_location: String,
    /// From the job's submission to its end.
    pub wall_time_seconds: Option<f64>,
    pub prices: Option<Prices>,
}

/// Results folded in so far.
#[derive(Debug, Default)]
pub struct Tally {
    total: u64,
    success: u64,
    errors: BTreeMap<String, CodeTally>,
    /// Processing times, of the records that have one.
    times: Times,
    input_tokens: u64,
    output_tokens: u64,
    without_tokens: u64,
    bedrock_files: u64,
    seed_files: u64,
}

/// Processing times: whole milliseconds at 4 bytes each while every time is one (Converse's
/// `latencyMs` and the side files' are), else seconds as `f64` from the first that is not.
/// Either way the percentiles see the very same `f64`s.
#[derive(Debug)]
enum Times {
    Millis(Vec<u32>),
    Seconds(Vec<f64>),
}

impl Default for Times {
    fn default() -> Self {
        Times::Millis(Vec::new())
    }
}

impl Times {
    fn push(&mut self, seconds: f64) {
        if let Times::Millis(all) = self {
            let ms = (seconds * 1000.0).round();
            // Kept as milliseconds only when they give back this very number.
            if (0.0..=f64::from(u32::MAX)).contains(&ms)
                && (f64::from(ms as u32) / 1000.0).to_bits() == seconds.to_bits()
            {
                all.push(ms as u32);
                return;
            }
            let converted = all.iter().map(|&ms| f64::from(ms) / 1000.0).collect();
            *self = Times::Seconds(converted);
        }
        if let Times::Seconds(all) = self {
            all.push(seconds);
        }
    }

    /// In seconds, sorted.
    fn into_sorted_seconds(self) -> Vec<f64> {
        match self {
            Times::Millis(mut all) => {
                all.sort_unstable();
                all.into_iter().map(|ms| f64::from(ms) / 1000.0).collect()
            }
            Times::Seconds(mut all) => {
                all.sort_by(f64::total_cmp);
                all
            }
        }
    }
}

#[derive(Debug, Default)]
struct CodeTally {
    count: u64,
    messages: HashMap<String, u64>,
    other_messages: u64,
}

impl Tally {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a result file of `dialect` (its results come through [`Tally::add`]).
    pub fn add_file(&mut self, dialect: Dialect) {
        match dialect {
            Dialect::Bedrock => self.bedrock_files += 1,
            Dialect::Seed => self.seed_files += 1,
        }
    }

    pub fn add(&mut self, result: &RecordResult) {
        match &result.error {
            None => self.success += 1,
            Some(error) => {
                let code = self.errors.entry(error.code.clone()).or_default();
                code.count += 1;
                if let Some(n) = code.messages.get_mut(&error.message) {
                    *n += 1;
                } else if code.messages.len() < MAX_MESSAGES_PER_CODE {
                    code.messages.insert(error.message.clone(), 1);
                } else {
                    code.other_messages += 1;
                }
            }
        }
        self.add_figures(
            result.processing_time,
            result.input_tokens,
            result.output_tokens,
        );
    }

    /// A success known by its figures alone: what [`Tally::add`] does with a result that has
    /// no error, for a caller that wrote the result and need not read it back.
    pub fn add_success(
        &mut self,
        processing_time: Option<f64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    ) {
        self.success += 1;
        self.add_figures(processing_time, input_tokens, output_tokens);
    }

    fn add_figures(
        &mut self,
        processing_time: Option<f64>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
    ) {
        self.total += 1;
        if let Some(t) = processing_time {
            self.times.push(t);
        }
        match (input_tokens, output_tokens) {
            (None, None) => self.without_tokens += 1,
            (input, output) => {
                self.input_tokens += input.unwrap_or(0);
                self.output_tokens += output.unwrap_or(0);
            }
        }
    }

    pub fn finish(mut self, context: AnalysisContext) -> Analysis {
        let times = std::mem::take(&mut self.times).into_sorted_seconds();
        let times = &times;
        let timed = times.len() as u64;
        let processing_time = TimeStats {
            records: timed,
            excluded: self.total - timed,
            mean: mean(times),
            p50: percentile(times, 50.0),
            p90: percentile(times, 90.0),
            p99: percentile(times, 99.0),
            min: times.first().copied(),
            max: times.last().copied(),
        };
        let mut errors_by_code: Vec<ErrorCode> = self
            .errors
            .into_iter()
            .map(|(code, tally)| {
                let mut messages: Vec<MessageCount> = tally
                    .messages
                    .into_iter()
                    .map(|(message, count)| MessageCount { message, count })
                    .collect();
                messages.sort_by(|a, b| b.count.cmp(&a.count).then(a.message.cmp(&b.message)));
                messages.truncate(TOP_MESSAGES);
                ErrorCode {
                    code,
                    count: tally.count,
                    top_messages: messages,
                    other_messages: tally.other_messages,
                }
            })
            .collect();
        // Most frequent first; the BTreeMap made ties come in code order.
        errors_by_code.sort_by_key(|e| std::cmp::Reverse(e.count));
        let wall = context
            .wall_time_seconds
            .filter(|w| w.is_finite() && *w >= 0.0);
        let records_per_second = wall.filter(|w| *w > 0.0).map(|w| self.total as f64 / w);
        let cost = context.prices.map(|p| {
            let input = self.input_tokens as f64 * p.per_million_input_tokens / 1e6;
            let output = self.output_tokens as f64 * p.per_million_output_tokens / 1e6;
            Cost {
                input,
                output,
                total: input + output,
                price_per_million_input_tokens: p.per_million_input_tokens,
                price_per_million_output_tokens: p.per_million_output_tokens,
            }
        });
        let dialect = match (self.bedrock_files, self.seed_files) {
            (0, 0) => None,
            (_, 0) => Some(DialectSeen::Bedrock),
            (0, _) => Some(DialectSeen::Seed),
            _ => Some(DialectSeen::Mixed),
        };
        Analysis {
            job_id: context.job_id,
            model_id: context.model_id,
            output_location: context.output_location,
            dialect,
            result_files: self.bedrock_files + self.seed_files,
            total_processed: self.total,
            success_count: self.success,
            error_count: self.total - self.success,
            success_rate: (self.total > 0).then(|| self.success as f64 / self.total as f64),
            errors_by_code,
            average_processing_time: processing_time.mean,
            processing_time,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            records_without_token_counts: self.without_tokens,
            wall_time_seconds: wall,
            records_per_second,
            cost,
        }
    }
}

/// A job's result analysis; `batchd results --format json` and `<out>/<jobId>.analysis.json`
/// print it as it serialises (member names are part of the interface: README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub job_id: Option<String>,
    pub model_id: Option<String>,
    pub output_location: String,
    /// The dialect of the result files; `None` when there were none.
    pub dialect: Option<DialectSeen>,
    pub result_files: u64,
    pub total_processed: u64,
    pub success_count: u64,
    pub error_count: u64,
    /// `success_count / total_processed` (0..1); `None` with no results.
    pub success_rate: Option<f64>,
    /// Most frequent first.
    pub errors_by_code: Vec<ErrorCode>,
    /// `processing_time.mean`, under the seed's `analyze_results` name.
    pub average_processing_time: Option<f64>,
    pub processing_time: TimeStats,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Results whose output carries no token counts (Mistral's native body, error lines).
    pub records_without_token_counts: u64,
    pub wall_time_seconds: Option<f64>,
    /// `total_processed / wall_time_seconds`.
    pub records_per_second: Option<f64>,
    /// `None` unless the model's prices are configured.
    pub cost: Option<Cost>,
}

/// Which dialects the result files had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DialectSeen {
    Bedrock,
    Seed,
    Mixed,
}

/// One error code: how many results failed with it, and its most common messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCode {
    pub code: String,
    pub count: u64,
    pub top_messages: Vec<MessageCount>,
    /// Results whose message was not counted (past [`MAX_MESSAGES_PER_CODE`] distinct ones).
    pub other_messages: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCount {
    pub message: String,
    pub count: u64,
}

/// Processing time in seconds over the results that state one (numpy's default, linear
/// percentiles: what `df["processing_time"].quantile(0.9)` gives).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeStats {
    /// Results with a processing time.
    pub records: u64,
    /// Results without one (not counted in the figures).
    pub excluded: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// Tokens × the configured price per million.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub input: f64,
    pub output: f64,
    pub total: f64,
    pub price_per_million_input_tokens: f64,
    pub price_per_million_output_tokens: f64,
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The `p`th percentile of `sorted` as `numpy.percentile(x, p)` computes it (method
/// "linear"): index `p/100 * (n-1)` between its neighbours, interpolated with numpy's `_lerp`
/// (`b - (b-a)*(1-t)` for `t >= 0.5`), so the numbers match to the last bit.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let index = (p / 100.0) * last as f64;
    let below = (index.floor() as usize).min(last);
    let above = (below + 1).min(last);
    let t = index - below as f64;
    let (a, b) = (sorted[below], sorted[above]);
    let diff = b - a;
    Some(if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    })
}
