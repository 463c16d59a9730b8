//! embedded-bench: single-stream decode rate of the embedded chat model against the output
//! tokens/s of a batch of records through the same continuous-batching engine, and peak RSS.
//!
//!   cargo run --release -p batchd-embedded --bin embedded-bench -- [--records 64]
//!       [--max-tokens 128] [--slots N] [--context N] [--threads N] [--batch N]
//!       [--weights q8_0|shipped] [--kv-unified] [--shared-prefix]
//!       [--flash-attn auto|on|off] [--batch-invariant]
//!
//! `--shared-prefix`: instead, the same records (one long system prompt, a short question
//! each, temperature 0) with prefix sharing off and then on: records/s of each, their ratio,
//! and whether the answers are byte-identical.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use batchd_backends::ModelBackend;
use batchd_embedded::{
    ChatModelConfig, ChatModelFiles, ChatWeights, EmbeddedChat, default_cache_dir,
};
use batchd_formats::neutral::{ChatMessage, ChatRequest, ContentPart, Role};
use tokio::task::JoinSet;

const TOPICS: [&str; 16] = [
    "the ocean",
    "volcanoes",
    "the history of Rome",
    "honey bees",
    "the moon",
    "trains",
    "coffee",
    "mountains",
    "the internet",
    "rain forests",
    "chess",
    "bicycles",
    "music",
    "the desert",
    "libraries",
    "winter",
];
const TASKS: [&str; 4] = [
    "Write a short essay about",
    "Explain to a child",
    "List some facts about",
    "Write a story about",
];

struct Args {
    records: usize,
    max_tokens: u32,
    config: ChatModelConfig,
    shared_prefix: bool,
}

fn parse_args() -> Result<Args, String> {
    let files = ChatModelFiles::locate(&default_cache_dir(|name| std::env::var_os(name)))
        .map_err(|e| e.to_string())?;
    let mut args = Args {
        records: 64,
        max_tokens: 128,
        config: ChatModelConfig::from_files(&files),
        shared_prefix: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--kv-unified" {
            args.config.kv_unified = true;
            continue;
        }
        if flag == "--batch-invariant" {
            args.config.batch_invariant = true;
            continue;
        }
        if flag == "--shared-prefix" {
            args.shared_prefix = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u32>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--records" => args.records = number(&value)? as usize,
            "--max-tokens" => args.max_tokens = number(&value)?,
            "--slots" => args.config.max_sequences = number(&value)? as usize,
            "--context" => args.config.context_per_sequence = number(&value)?,
            "--threads" => args.config.threads = number(&value)? as usize,
            "--batch" => args.config.batch_size = number(&value)?,
            "--flash-attn" => {
                args.config.flash_attention = match value.as_str() {
                    "auto" => None,
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => return Err("--flash-attn: auto, on or off".into()),
                }
            }
            "--weights" => {
                args.config.weights = match value.as_str() {
                    "q8_0" => ChatWeights::Q8_0,
                    "shipped" => ChatWeights::AsShipped,
                    _ => return Err("--weights: q8_0 or shipped".into()),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn request(i: usize, max_tokens: u32) -> ChatRequest {
    let topic = TOPICS[i % TOPICS.len()];
    let task = TASKS[(i / TOPICS.len()) % TASKS.len()];
    ChatRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentPart::Text(format!("{task} {topic}."))],
        }],
        max_tokens: Some(max_tokens),
        temperature: Some(0.7),
        ..ChatRequest::default()
    }
}

/// A labelling job's instructions, the same in every record (about 400 tokens).
const GUIDELINES: &str = "You are a careful annotator for a customer-support dataset. \
Read the customer's message and answer with exactly one label from this list, then one short \
sentence that explains the choice. Labels: BILLING (charges, refunds, invoices, payment \
methods, prices, discounts, taxes), SHIPPING (delivery times, tracking numbers, lost or \
damaged parcels, addresses, couriers, customs), ACCOUNT (passwords, sign-in problems, \
two-factor codes, profile details, closing an account, privacy requests), PRODUCT (how a \
product works, sizes, colours, materials, compatibility, defects that are not caused by \
shipping), RETURNS (return windows, return labels, exchanges, store credit), FEEDBACK \
(praise, complaints about staff, suggestions, reviews), OTHER (anything else, including \
messages that are empty, spam, or in a language you cannot read). Rules: choose the label of \
the customer's main request when a message mentions several topics; a refund for a returned \
item is RETURNS, a refund for a wrong charge is BILLING; a parcel that arrived broken is \
SHIPPING, a product that stopped working after a week is PRODUCT; questions about an order's \
status are SHIPPING unless they are about payment; requests to delete personal data are \
ACCOUNT. Never invent facts about the order. Never ask the customer a question. Do not repeat \
the message. Do not add greetings or signatures. Keep the explanation under twenty words and \
write it in plain English even when the message is in another language. If the message is \
abusive, still label its request and do not comment on the tone. If you are unsure between \
two labels, prefer the one that names what the customer wants done, not what went wrong. \
Examples: 'I was charged twice for order 1182' is BILLING; 'Where is my parcel, the tracking \
page has not changed for five days' is SHIPPING; 'The zip on the jacket broke the first time \
I used it' is PRODUCT; 'Can I swap these shoes for a bigger size' is RETURNS; 'Your agent \
Maria was wonderful' is FEEDBACK; 'I cannot log in since I changed my phone' is ACCOUNT.";

const QUESTIONS: [&str; 8] = [
    "My card was billed for a subscription I cancelled last month.",
    "The box arrived crushed and the vase inside is in pieces.",
    "How do I reset my password? The email never comes.",
    "Does this charger work with the older model of the tablet?",
    "I want to send the blue dress back and get the red one instead.",
    "Thanks, the support team fixed everything in five minutes!",
    "Tracking says delivered but nothing is at my door.",
    "Please delete all the data you have about me.",
];

fn labelling_request(i: usize, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        system: vec![GUIDELINES.to_owned()],
        messages: vec![ChatMessage {
            role: Role::User,
            content: vec![ContentPart::Text(format!(
                "Message {i}: {}",
                QUESTIONS[i % QUESTIONS.len()]
            ))],
        }],
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..ChatRequest::default()
    }
}

/// How many answers are the same in both runs, record by record.
fn identical(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).filter(|(a, b)| a == b).count()
}

/// Runs the labelling records on a fresh engine: (records/s, answers in record order, prompt
/// tokens computed, prompt tokens shared).
async fn labelling_run(
    config: ChatModelConfig,
    records: usize,
    max_tokens: u32,
    reversed: bool,
) -> Result<(f64, Vec<String>, u64, u64), String> {
    let chat = Arc::new(EmbeddedChat::load(config).map_err(|e| e.to_string())?);
    chat.chat(&request(0, 4)).await.map_err(|e| e.to_string())?;
    let before = chat.stats();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let order: Vec<usize> = if reversed {
        (0..records).rev().collect()
    } else {
        (0..records).collect()
    };
    for i in order {
        let request = labelling_request(i, max_tokens);
        let chat = Arc::clone(&chat);
        tasks.spawn(async move { (i, chat.chat(&request).await) });
    }
    let mut answers = vec![String::new(); records];
    let mut shared = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, response) = done.map_err(|e| e.to_string())?;
        let response = response.map_err(|e| e.to_string())?;
        shared += response.usage.cache_read_input_tokens.unwrap_or(0);
        if let Some(ContentPart::Text(text)) = response.content.first() {
            answers[i] = text.clone();
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let computed = chat.stats().prompt_tokens - before.prompt_tokens;
    Ok((records as f64 / wall, answers, computed, shared))
}

/// Prefix sharing off, then on, on the same records.
async fn shared_prefix(args: Args) -> Result<(), String> {
    let mut off = args.config.clone();
    off.min_shared_prefix = 0;
    let mut on = args.config.clone();
    if on.min_shared_prefix == 0 {
        on.min_shared_prefix = ChatModelConfig::new("").min_shared_prefix;
    }
    println!(
        "shared prefix: {} records, one {}-character system prompt, max {} tokens, temperature \
         0, {} slots, kv_unified {}, flash attention {:?}, batch_invariant {}",
        args.records,
        GUIDELINES.len(),
        args.max_tokens,
        args.config.max_sequences,
        args.config.kv_unified,
        args.config.flash_attention,
        args.config.batch_invariant
    );
    let (rate_off, answers_off, computed_off, _) =
        labelling_run(off.clone(), args.records, args.max_tokens, false).await?;
    println!("sharing off: {rate_off:.2} records/s, {computed_off} prompt tokens computed");
    let (rate_on, answers_on, computed_on, shared) =
        labelling_run(on, args.records, args.max_tokens, false).await?;
    println!(
        "sharing on: {rate_on:.2} records/s, {computed_on} prompt tokens computed, {shared} \
         copied from the cache"
    );
    let same = identical(&answers_off, &answers_on);
    println!(
        "ratio: {:.2}× records/s with sharing; answers byte-identical: {same} of {}",
        rate_on / rate_off,
        args.records
    );
    // The noise floor: sharing off again, the records submitted in reverse order, so each
    // prompt is cut into other batches. Greedy answers differ with the batch's shape alone
    // (llama.cpp's CPU kernels sum in another order), sharing or not.
    let (_, answers_reversed, _, _) =
        labelling_run(off, args.records, args.max_tokens, true).await?;
    let floor = identical(&answers_off, &answers_reversed);
    println!(
        "noise floor: sharing off twice (the second in reverse order): {floor} of {} identical",
        args.records
    );
    let ratio = rate_on / rate_off;
    let met = ratio >= 2.0 && same == args.records;
    println!(
        "goal (≥ 2× records/s, every answer byte-identical): {}",
        if met {
            "met"
        } else if args.config.batch_invariant {
            "not met"
        } else {
            "not met (identical answers need --batch-invariant)"
        }
    );
    if let Some((i, (a, b))) = answers_off
        .iter()
        .zip(&answers_on)
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        println!("first difference, record {i}: off {a:?} / on {b:?}");
    }
    Ok(())
}

/// Peak resident set size of this process, from /proc (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn run(args: Args) -> Result<(), String> {
    if args.shared_prefix {
        return shared_prefix(args).await;
    }
    let config = args.config.clone();
    let load_start = Instant::now();
    let chat = Arc::new(EmbeddedChat::load(config).map_err(|e| e.to_string())?);
    println!(
        "model loaded in {:.2}s: {:?} weights, {} slots × {} tokens, {} threads, batch {}, \
         kv_unified {}",
        load_start.elapsed().as_secs_f64(),
        args.config.weights,
        chat.slots(),
        args.config.context_per_sequence,
        args.config.threads,
        args.config.batch_size,
        args.config.kv_unified,
    );
    // Warm-up (first-use allocations).
    chat.chat(&request(0, 8)).await.map_err(|e| e.to_string())?;

    let first = single_stream(&chat, args.max_tokens).await?;

    // The batch: every record at once, as the engine submits them with concurrency = slots
    // (here all of them; the engine queues what exceeds the slots).
    let before = chat.stats();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..args.records {
        let request = request(i, args.max_tokens);
        let chat = Arc::clone(&chat);
        tasks.spawn(async move { chat.chat(&request).await });
    }
    let mut batch_tokens = 0;
    while let Some(response) = tasks.join_next().await {
        let response = response.map_err(|e| e.to_string())?;
        batch_tokens += response.map_err(|e| e.to_string())?.usage.output_tokens;
    }
    let batch_wall = started.elapsed().as_secs_f64();
    let after = chat.stats();
    let batched = batch_tokens as f64 / batch_wall;
    println!(
        "batched: {} records, {batch_tokens} output tokens in {batch_wall:.2}s: \
         {batched:.1} tokens/s ({} steps, {} prompt tokens, at most {} sequences at once, \
         {:.1}s sampling)",
        args.records,
        after.steps - before.steps,
        after.prompt_tokens - before.prompt_tokens,
        after.max_active,
        (after.sampling - before.sampling).as_secs_f64(),
    );
    // Single stream again: the host's load may have changed meanwhile; use the mean.
    let second = single_stream(&chat, args.max_tokens).await?;
    let single_decode = (first.decode + second.decode) / 2.0;
    let single_e2e = (first.end_to_end + second.end_to_end) / 2.0;
    println!(
        "ratio: {:.2}× the single-stream decode rate ({:.2}× single stream end to end)",
        batched / single_decode,
        batched / single_e2e
    );
    println!("sample answer: {:?}", first.sample);
    match peak_rss_mib() {
        Some(mib) => println!("peak RSS: {mib:.0} MiB"),
        None => println!("peak RSS: unknown"),
    }
    Ok(())
}

/// Output rates of one sequence at a time.
struct Single {
    end_to_end: f64,
    decode: f64,
    sample: String,
}

/// Four records one after another: tokens/s end to end and in decode-only steps.
async fn single_stream(chat: &EmbeddedChat, max_tokens: u32) -> Result<Single, String> {
    let before = chat.stats();
    let started = Instant::now();
    let mut tokens = 0;
    let mut sample = String::new();
    for i in 0..4 {
        let response = chat
            .chat(&request(i, max_tokens))
            .await
            .map_err(|e| e.to_string())?;
        tokens += response.usage.output_tokens;
        if let (0, Some(ContentPart::Text(text))) = (i, response.content.first()) {
            sample = text.chars().take(160).collect();
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let after = chat.stats();
    let decode_tokens = after.decode_only_tokens - before.decode_only_tokens;
    let decode_secs = (after.decode_only - before.decode_only).as_secs_f64();
    let single = Single {
        end_to_end: tokens as f64 / wall,
        decode: decode_tokens as f64 / decode_secs,
        sample,
    };
    println!(
        "single stream: {tokens} output tokens in {wall:.2}s: {:.1} tokens/s end to end, \
         {:.1} tokens/s decode",
        single.end_to_end, single.decode
    );
    Ok(single)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("embedded-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("embedded-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embedded-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
