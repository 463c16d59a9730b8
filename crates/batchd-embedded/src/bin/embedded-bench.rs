//! embedded-bench: single-stream decode rate of the embedded chat model against the output
//! tokens/s of a batch of records through the same continuous-batching engine, and peak RSS.
//!
//!   cargo run --release -p batchd-embedded --bin embedded-bench -- [--records 64]
//!       [--max-tokens 128] [--slots N] [--context N] [--threads N] [--batch N]
//!       [--weights q8_0|shipped] [--kv-unified]

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
}

fn parse_args() -> Result<Args, String> {
    let files = ChatModelFiles::locate(&default_cache_dir(|name| std::env::var_os(name)))
        .map_err(|e| e.to_string())?;
    let mut args = Args {
        records: 64,
        max_tokens: 128,
        config: ChatModelConfig::from_files(&files),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--kv-unified" {
            args.config.kv_unified = true;
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

/// Peak resident set size of this process, from /proc (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn run(args: Args) -> Result<(), String> {
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
