//! The inference thread of the chat model: continuous batching over one llama.cpp context.
//!
//! Requests arrive over a channel. Each active request owns one sequence id (a slot) of the
//! context. Every step builds one `llama_batch` holding the next token of every decoding
//! sequence plus prompt chunks of sequences still prefilling (within `batch_size` tokens), runs
//! one forward pass, and samples each sequence that produced logits. A sequence that finishes
//! (or whose caller went away) frees its KV cells and its slot at once, and the next waiting
//! request takes the slot in the following step.
//!
//! Prefix sharing: a new sequence whose prompt starts like one already in the cache (a shared
//! system prompt) copies those KV cells from it and prefills only the rest; while that other
//! sequence is still prefilling the shared part, the new one waits for it.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use batchd_backends::BackendError;
use batchd_formats::neutral::{ChatResponse, ContentPart, StopReason, Usage};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use super::output::Output;
use crate::error::server;

/// How one request samples its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sampling {
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: Option<i32>,
    pub seed: u32,
}

/// One chat request, tokenized, on its way to the inference thread.
pub(crate) struct Job {
    pub prompt: Vec<LlamaToken>,
    pub sampling: Sampling,
    pub max_tokens: u32,
    pub stop_sequences: Vec<String>,
    pub reply: oneshot::Sender<Result<ChatResponse, BackendError>>,
}

/// What the context is created with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineParams {
    pub slots: usize,
    pub context_per_sequence: u32,
    pub batch_size: u32,
    pub threads: i32,
    pub kv_unified: bool,
    pub flash_attention: Option<bool>,
    pub batch_invariant: bool,
    /// Shortest common prompt prefix worth copying (tokens); 0: never share.
    pub min_shared_prefix: u32,
}

/// Counters of the inference thread, for benchmarks and diagnostics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub steps: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub busy_nanos: AtomicU64,
    /// Time and tokens of steps without prompt tokens: the pure decode rate.
    pub decode_only_nanos: AtomicU64,
    pub decode_only_tokens: AtomicU64,
    pub sampling_nanos: AtomicU64,
    pub max_active: AtomicU64,
}

/// A snapshot of the inference thread's counters since the model was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Forward passes (one `llama_decode` each).
    pub steps: u64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: u64,
    /// Tokens sampled (the output tokens of all requests).
    pub generated_tokens: u64,
    /// Time spent in forward passes and sampling.
    pub busy: std::time::Duration,
    /// Time of the steps that only decoded (no prompt tokens in the batch).
    pub decode_only: std::time::Duration,
    /// Tokens sampled in those steps.
    pub decode_only_tokens: u64,
    /// Time spent sampling (part of `busy`).
    pub sampling: std::time::Duration,
    /// The most sequences active in one step.
    pub max_active: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> EngineStats {
        EngineStats {
            steps: self.steps.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            generated_tokens: self.generated_tokens.load(Ordering::Relaxed),
            busy: std::time::Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
            decode_only: std::time::Duration::from_nanos(
                self.decode_only_nanos.load(Ordering::Relaxed),
            ),
            decode_only_tokens: self.decode_only_tokens.load(Ordering::Relaxed),
            sampling: std::time::Duration::from_nanos(self.sampling_nanos.load(Ordering::Relaxed)),
            max_active: self.max_active.load(Ordering::Relaxed),
        }
    }
}

/// Creates the context. Runs on the inference thread (the context is not `Sync`).
pub(crate) fn new_context<'m>(
    model: &'m LlamaModel,
    params: EngineParams,
) -> Result<LlamaContext<'m>, String> {
    let slots = u32::try_from(params.slots).map_err(|e| e.to_string())?;
    let n_ctx = slots
        .checked_mul(params.context_per_sequence)
        .and_then(NonZeroU32::new)
        .ok_or("max_sequences × context_per_sequence must be between 1 and 2^32")?;
    let ctx_params = LlamaContextParams::default()
        .with_n_ctx(Some(n_ctx))
        .with_n_batch(params.batch_size)
        .with_n_ubatch(params.batch_size)
        .with_n_seq_max(slots)
        .with_n_threads(params.threads)
        .with_n_threads_batch(params.threads)
        .with_kv_unified(params.kv_unified)
        .with_flash_attention_policy(match params.flash_attention {
            None => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            Some(false) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            Some(true) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
        });
    let backend = crate::chat::backend()?;
    let create = || model.new_context(backend, ctx_params);
    let context = if params.batch_invariant {
        super::reference::with_reference_kernels(create)?
    } else {
        create()
    };
    context.map_err(|e| e.to_string())
}

/// A request that holds a slot.
struct Active {
    seq: i32,
    job: Job,
    sampler: LlamaSampler,
    /// Prompt tokens already put into a batch.
    fed: usize,
    /// Position of the next token of this sequence.
    pos: i32,
    /// The last sampled token, to feed in the next step.
    next: Option<LlamaToken>,
    generated: u32,
    output: Output,
    /// Index in the current batch whose logits this sequence samples from.
    logits_at: Option<i32>,
    /// Prompt tokens copied from another sequence's cells instead of computed.
    shared: u32,
    /// Whether this sequence has looked for a prefix to share (done before its first feed).
    looked: bool,
}

impl Active {
    fn new(seq: i32, mut job: Job) -> Self {
        let sampler = sampler(job.sampling);
        let output = Output::new(std::mem::take(&mut job.stop_sequences));
        Self {
            seq,
            job,
            sampler,
            fed: 0,
            pos: 0,
            next: None,
            generated: 0,
            output,
            logits_at: None,
            shared: 0,
            looked: false,
        }
    }
}

/// Length of the common prefix of two token lists.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What a sequence that has not fed anything yet does about a shared prefix.
#[derive(Debug, PartialEq, Eq)]
enum Share {
    /// Copy the first `len` cells of sequence `from`.
    Copy { from: i32, len: usize },
    /// Another sequence is still prefilling the prefix: wait a step.
    Wait,
    /// Nothing to share: prefill it all.
    Alone,
}

/// The best donor for `me` among `others`: the longest common prefix (at least `min`
/// tokens, and never the whole prompt: its last token must be computed for its logits).
fn find_share(me: &[LlamaToken], others: &[(i32, &[LlamaToken], usize)], min: usize) -> Share {
    if min == 0 {
        return Share::Alone;
    }
    let want_max = me.len().saturating_sub(1);
    let mut best: Option<(usize, i32, usize)> = None;
    for &(seq, prompt, fed) in others {
        let len = common_prefix(me, prompt).min(want_max);
        if len >= min && best.is_none_or(|(l, _, _)| len > l) {
            best = Some((len, seq, fed));
        }
    }
    match best {
        None => Share::Alone,
        Some((len, from, fed)) if fed >= len => Share::Copy { from, len },
        Some(_) => Share::Wait,
    }
}

/// Gives `to` the cells of positions `[0, len)` of `from`. In one KV stream that marks the
/// cells as shared; across streams llama.cpp can only copy a whole stream (at the next
/// decode), so the copy's cells past `len` are dropped again at once.
fn copy_prefix(
    ctx: &mut LlamaContext<'_>,
    from: i32,
    to: i32,
    len: usize,
    unified: bool,
) -> Result<(), String> {
    let len = u32::try_from(len).map_err(|e| e.to_string())?;
    if unified {
        ctx.kv_cache_seq_cp(from, to, Some(0), Some(len))
            .map_err(|e| e.to_string())
    } else {
        ctx.kv_cache_seq_cp(from, to, None, None)
            .map_err(|e| e.to_string())?;
        ctx.kv_cache_seq_rm(to, Some(len), None)
            .map_err(|e| e.to_string())
    }
}

fn sampler(s: Sampling) -> LlamaSampler {
    if s.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::with_capacity(4);
    if let Some(k) = s.top_k {
        chain.push(LlamaSampler::top_k(k));
    }
    if s.top_p < 1.0 {
        chain.push(LlamaSampler::top_p(s.top_p, 1));
    }
    chain.push(LlamaSampler::temp(s.temperature));
    chain.push(LlamaSampler::dist(s.seed));
    LlamaSampler::chain_simple(chain)
}

/// The loop of the inference thread. Returns when every sender is gone and no work is left.
pub(crate) fn run(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    params: EngineParams,
    jobs: &Receiver<Job>,
    counters: &Counters,
) {
    let budget = usize::try_from(params.batch_size).unwrap_or(usize::MAX);
    let slots = i32::try_from(params.slots).unwrap_or(i32::MAX);
    let ctx_limit = i32::try_from(params.context_per_sequence).unwrap_or(i32::MAX);
    let vocab = model.vocab();
    let mut batch = LlamaBatch::new(budget, 1);
    let mut free: Vec<i32> = (0..slots).rev().collect();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;

    loop {
        // Intake: block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            if !open {
                return;
            }
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        while open {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }

        // Callers that went away (attempt timeout, stop) give their slot back now.
        waiting.retain(|job| !job.reply.is_closed());
        active.retain(|a| {
            if a.job.reply.is_closed() {
                release(ctx, a.seq, &mut free);
                false
            } else {
                true
            }
        });
        while let Some(seq) = free.pop() {
            match waiting.pop_front() {
                Some(job) => active.push(Active::new(seq, job)),
                None => {
                    free.push(seq);
                    break;
                }
            }
        }
        if active.is_empty() {
            continue;
        }
        counters
            .max_active
            .fetch_max(active.len() as u64, Ordering::Relaxed);

        // New sequences take a shared prefix from the cache, or wait for it to be there.
        let mut waits = vec![false; active.len()];
        for i in 0..active.len() {
            if active[i].looked {
                continue;
            }
            // Donors are sequences that have decided: two new ones must not wait for each other.
            let others: Vec<(i32, &[LlamaToken], usize)> = active
                .iter()
                .enumerate()
                .filter(|&(j, o)| j != i && o.looked)
                .map(|(_, o)| (o.seq, o.job.prompt.as_slice(), o.fed))
                .collect();
            let min = params.min_shared_prefix as usize;
            match find_share(&active[i].job.prompt, &others, min) {
                Share::Wait => waits[i] = true,
                Share::Alone => active[i].looked = true,
                Share::Copy { from, len } => {
                    let a = &mut active[i];
                    a.looked = true;
                    match copy_prefix(ctx, from, a.seq, len, params.kv_unified) {
                        Ok(()) => {
                            a.fed = len;
                            a.pos = i32::try_from(len).unwrap_or(i32::MAX);
                            a.shared = u32::try_from(len).unwrap_or(u32::MAX);
                        }
                        // Then it prefills everything itself, as without sharing.
                        Err(e) => {
                            tracing::warn!(error = %e, "embedded chat: cannot share a prefix")
                        }
                    }
                }
            }
        }

        // One batch: the next token of every decoding sequence first, then prompt chunks.
        batch.clear();
        let mut add_failed = None;
        for a in active.iter_mut() {
            a.logits_at = None;
            if let Some(token) = a.next.take() {
                if let Err(e) = batch.add(token, a.pos, &[a.seq], true) {
                    add_failed = Some(e.to_string());
                    break;
                }
                a.logits_at = Some(batch.n_tokens() - 1);
                a.pos += 1;
            }
        }
        let mut prompt_tokens = 0u64;
        for (a, _) in active.iter_mut().zip(&waits).filter(|(_, w)| !**w) {
            let room = budget.saturating_sub(usize::try_from(batch.n_tokens()).unwrap_or(0));
            if room == 0 || add_failed.is_some() {
                break;
            }
            let left = a.job.prompt.len() - a.fed;
            if left == 0 {
                continue;
            }
            let take = left.min(room);
            for (i, &token) in a.job.prompt[a.fed..a.fed + take].iter().enumerate() {
                let last = a.fed + i + 1 == a.job.prompt.len();
                if let Err(e) = batch.add(token, a.pos, &[a.seq], last) {
                    add_failed = Some(e.to_string());
                    break;
                }
                a.pos += 1;
                if last {
                    a.logits_at = Some(batch.n_tokens() - 1);
                }
            }
            a.fed += take;
            prompt_tokens += take as u64;
        }

        let started = Instant::now();
        let decoded = match add_failed {
            Some(e) => Err(e),
            None => ctx.decode(&mut batch).map_err(|e| e.to_string()),
        };
        if let Err(e) = decoded {
            // The KV state of these sequences is unknown now: fail them all, keep serving.
            tracing::error!(error = %e, "embedded chat: forward pass failed");
            for a in active.drain(..) {
                release(ctx, a.seq, &mut free);
                let _ = a.job.reply.send(Err(server(format!(
                    "embedded chat model: forward pass failed: {e}"
                ))));
            }
            continue;
        }

        // Sample every sequence that produced logits; collect those that are done.
        let sampling_started = Instant::now();
        let mut finished = Vec::new();
        let mut sampled = 0u64;
        for (i, a) in active.iter_mut().enumerate() {
            let Some(at) = a.logits_at else { continue };
            let token = a.sampler.sample(ctx, at);
            a.generated += 1;
            sampled += 1;
            if vocab.is_eog(token) {
                finished.push((i, StopReason::EndTurn, None));
                continue;
            }
            let piece = vocab.token_to_piece(token, false, None);
            if let Some(stop) = a.output.push(&piece) {
                finished.push((i, StopReason::StopSequence, Some(stop)));
            } else if a.generated >= a.job.max_tokens {
                finished.push((i, StopReason::MaxTokens, None));
            } else if a.pos >= ctx_limit {
                finished.push((i, StopReason::ModelContextWindowExceeded, None));
            } else {
                a.next = Some(token);
            }
        }
        let nanos = |since: Instant| u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let add = |counter: &AtomicU64, n: u64| counter.fetch_add(n, Ordering::Relaxed);
        add(&counters.sampling_nanos, nanos(sampling_started));
        let busy = nanos(started);
        add(&counters.steps, 1);
        add(&counters.prompt_tokens, prompt_tokens);
        add(&counters.generated_tokens, sampled);
        add(&counters.busy_nanos, busy);
        if prompt_tokens == 0 {
            add(&counters.decode_only_nanos, busy);
            add(&counters.decode_only_tokens, sampled);
        }

        // Remove from the back so the indices stay valid.
        for (i, stop_reason, stop_sequence) in finished.into_iter().rev() {
            let a = active.remove(i);
            release(ctx, a.seq, &mut free);
            let response = ChatResponse {
                content: vec![ContentPart::Text(a.output.into_text())],
                stop_reason,
                stop_sequence,
                usage: Usage {
                    input_tokens: a.job.prompt.len() as u64,
                    output_tokens: u64::from(a.generated),
                    cache_read_input_tokens: (a.shared > 0).then_some(u64::from(a.shared)),
                },
            };
            // The caller may have gone away meanwhile; nothing to do then.
            let _ = a.job.reply.send(Ok(response));
        }
    }
}

/// Frees a sequence's KV cells and its slot.
fn release(ctx: &mut LlamaContext<'_>, seq: i32, free: &mut Vec<i32>) {
    if let Err(e) = ctx.kv_cache_seq_rm(seq, None, None) {
        tracing::error!(seq, error = %e, "embedded chat: cannot free a sequence");
    }
    free.push(seq);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(ids: &[i32]) -> Vec<LlamaToken> {
        ids.iter().map(|&i| LlamaToken::new(i)).collect()
    }

    #[test]
    fn the_longest_ready_prefix_is_copied_but_never_the_last_token() {
        let me = tokens(&[1, 2, 3, 4, 5, 6]);
        let short = tokens(&[1, 2, 3, 9]);
        let long = tokens(&[1, 2, 3, 4, 5, 7, 8]);
        let others = [(3, short.as_slice(), 4), (5, long.as_slice(), 7)];
        assert_eq!(find_share(&me, &others, 2), Share::Copy { from: 5, len: 5 });
        // The whole prompt in another's cells: all but the last token, whose logits it needs.
        let same = tokens(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(
            find_share(&me, &[(1, same.as_slice(), 6)], 2),
            Share::Copy { from: 1, len: 5 }
        );
    }

    #[test]
    fn a_prefix_still_prefilling_is_waited_for_and_a_short_one_ignored() {
        let me = tokens(&[1, 2, 3, 4, 5, 6]);
        let other = tokens(&[1, 2, 3, 4, 9]);
        assert_eq!(find_share(&me, &[(2, other.as_slice(), 1)], 3), Share::Wait);
        assert_eq!(
            find_share(&me, &[(2, other.as_slice(), 1)], 5),
            Share::Alone
        );
        assert_eq!(
            find_share(&me, &[(2, other.as_slice(), 4)], 0),
            Share::Alone
        );
        assert_eq!(find_share(&me, &[], 1), Share::Alone);
    }
}
