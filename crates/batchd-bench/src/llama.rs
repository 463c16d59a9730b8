//! The real model server kept full (issue #19, goal 2): llama.cpp's `llama-server` serving
//! SmolLM2-135M with N slots (started by `scripts/model-server.sh --slots N`). batchd runs a
//! fixed set of chat prompts with its *default* concurrency for the model; the yardstick is the
//! load generator keeping exactly N requests in flight with the same bodies (before and after,
//! averaged). Then batchd at `engine.concurrency` (16), the default of servers that do not
//! tell their slots, for comparison. A poller of `GET /slots` reports the mean busy slots.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http::{Conn, get_request};
use crate::loadgen::{Load, LoadResult};
use crate::{Env, Figure, loadgen, usage};

/// The alias the script serves the model under, and the model id batchd runs it as.
const MODEL: &str = "smollm2-135m-instruct";
/// Short answers keep each run to a minute or so on a CPU.
const MAX_TOKENS: u32 = 16;
const GOAL: f64 = 0.95;
/// `engine.concurrency`: the default of a model whose server does not tell its slots.
const OLD_DEFAULT: usize = 16;

const SUBJECTS: [&str; 32] = [
    "the moon",
    "a lighthouse",
    "honey bees",
    "the river Nile",
    "a violin",
    "volcanoes",
    "the printing press",
    "penguins",
    "a desert",
    "bread",
    "thunderstorms",
    "the Eiffel Tower",
    "chess",
    "coral reefs",
    "a steam engine",
    "maple trees",
    "the Sahara",
    "owls",
    "glaciers",
    "a compass",
    "tea",
    "the ocean tides",
    "bicycles",
    "the planet Mars",
    "a library",
    "wolves",
    "rainbows",
    "the telescope",
    "salt",
    "a waterfall",
    "elephants",
    "the alphabet",
];
const ASKS: [&str; 4] = [
    "Describe {} in one short sentence.",
    "Give one interesting fact about {}.",
    "Why do people like {}? Answer briefly.",
    "Write a short poem line about {}.",
];

/// The prompt of record `i`: 128 different ones, then again.
fn prompt(i: u64) -> String {
    let i = i as usize % (SUBJECTS.len() * ASKS.len());
    ASKS[i / SUBJECTS.len()].replace("{}", SUBJECTS[i % SUBJECTS.len()])
}

/// The chat body batchd sends for record `i` (model, message, max_tokens, temperature 0).
fn chat_body(i: u64) -> Vec<u8> {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt(i)}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    })
    .to_string()
    .into_bytes()
}

/// The Converse records of [`chat_body`]'s prompts.
fn records(n: u64) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "recordId": format!("rec-{i:06}"),
                "modelInput": {
                    "messages": [{"role": "user", "content": [{"text": prompt(i)}]}],
                    "inferenceConfig": {"maxTokens": MAX_TOKENS, "temperature": 0.0},
                },
            })
        })
        .collect()
}

fn write_input(path: &Path, records: &[serde_json::Value]) -> anyhow::Result<()> {
    let mut text = String::new();
    for record in records {
        text.push_str(&record.to_string());
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// A llama-server started through the script from a run dir of its own; stopped on drop.
struct ModelServer {
    script: PathBuf,
    run_dir: PathBuf,
    base_url: String,
    addr: SocketAddr,
}

impl ModelServer {
    fn start(script: &Path, run_dir: PathBuf, slots: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&run_dir)?;
        let out = Command::new("bash")
            .arg(script)
            .args(["start", "--slots", &slots.to_string()])
            .env("BATCHD_MODEL_SERVER_RUN", &run_dir)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run {}", script.display()))?;
        if !out.status.success() {
            bail!("{} start failed ({})", script.display(), out.status);
        }
        let base_url = String::from_utf8(out.stdout)?.trim().to_owned();
        let addr = crate::http::addr_of(&base_url)?;
        Ok(Self {
            script: script.to_path_buf(),
            run_dir,
            base_url,
            addr,
        })
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .env("BATCHD_MODEL_SERVER_RUN", &self.run_dir)
            .status();
    }
}

/// Mean busy slots (`is_processing` in `GET /slots`), sampled every 200 ms on a thread.
struct SlotPoller {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<(u64, u64)>>,
}

impl SlotPoller {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let request = get_request(addr, "/slots");
                let mut conn = Conn::connect(addr).await?;
                let (mut busy, mut samples) = (0u64, 0u64);
                while !flag.load(Ordering::Relaxed) {
                    // llama-server closes a keep-alive connection now and then: reconnect.
                    let answer = match conn.call(&request).await {
                        Ok(answer) => answer,
                        Err(_) => {
                            conn = Conn::connect(addr).await?;
                            conn.call(&request).await?
                        }
                    };
                    let slots: serde_json::Value = serde_json::from_slice(&answer.body)?;
                    let Some(slots) = slots.as_array() else {
                        bail!("GET /slots did not answer an array: {slots}");
                    };
                    busy += slots
                        .iter()
                        .filter(|s| s["is_processing"].as_bool() == Some(true))
                        .count() as u64;
                    samples += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok((busy, samples))
            })
        });
        Self { stop, thread }
    }

    fn finish(self) -> anyhow::Result<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let (busy, samples) = match self.thread.join() {
            Ok(result) => result?,
            Err(_) => bail!("slot poller panicked"),
        };
        Ok(busy as f64 / samples.max(1) as f64)
    }
}

/// One measured phase: records/s and mean busy slots.
struct Phase {
    rate: f64,
    busy: f64,
}

/// The load generator's `total` chat requests to the model server, `slots` at once.
fn chat_load(
    server: &ModelServer,
    total: u64,
    slots: usize,
    limit: Duration,
) -> anyhow::Result<LoadResult> {
    loadgen::run(Load {
        addr: server.addr,
        total,
        concurrency: slots,
        limit,
        body: chat_body,
    })
}

/// Pages the model in and fills every slot once, before anything is measured.
fn warm_up(server: &ModelServer, slots: usize) -> anyhow::Result<()> {
    chat_load(server, 2 * slots as u64, slots, Duration::from_secs(120)).map(drop)
}

fn loadgen_phase(server: &ModelServer, n: u64, slots: usize) -> anyhow::Result<Phase> {
    let poller = SlotPoller::start(server.addr);
    let result = chat_load(server, n, slots, Duration::from_secs(600))?;
    let busy = poller.finish()?;
    println!(
        "load generator, {slots} in flight: {} requests in {:.1} s = {:.2} req/s, slots busy {busy:.2}",
        result.answered,
        result.wall.as_secs_f64(),
        result.rate()
    );
    Ok(Phase {
        rate: result.rate(),
        busy,
    })
}

/// `batchd run` of the n records, at `concurrency` or (None) the model's default.
/// `batchd run` of `records` through the server; `group_prefixes`: the model's key of that
/// name, `None` leaving it out (the default).
fn batchd_phase(
    env: &Env,
    server: &ModelServer,
    records: &[serde_json::Value],
    concurrency: Option<usize>,
    group_prefixes: Option<bool>,
) -> anyhow::Result<Phase> {
    let n = records.len() as u64;
    let dir = env.work.join("llama");
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("in.jsonl");
    write_input(&input, records)?;
    let config = dir.join("batchd.toml");
    let mut text = format!(
        "[[models]]\nid = \"{MODEL}\"\nbackend = \"openai\"\nbase_url = \"{}\"\n",
        server.base_url
    );
    if let Some(group) = group_prefixes {
        text.push_str(&format!("group_prefixes = {group}\n"));
    }
    std::fs::write(&config, text)?;
    let out = dir.join("out");
    let mut command = Command::new(&env.batchd);
    command
        .arg("run")
        .arg(&input)
        .args(["--model-id", MODEL, "--quiet", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(c) = concurrency {
        command.args(["--concurrency", &c.to_string()]);
    }
    let poller = SlotPoller::start(server.addr);
    let started = Instant::now();
    let mut child = command.spawn()?;
    let reader = usage::read_stderr(&mut child);
    let usage = usage::wait_with_rusage(child)?;
    let wall = started.elapsed();
    let busy = poller.finish()?;
    let stderr = reader.join().unwrap_or_default();
    if usage.exit != 0 {
        bail!("batchd run exited with status {}: {stderr}", usage.exit);
    }
    crate::check_output(&out, n)?;
    let _ = std::fs::remove_dir_all(&out);
    let rate = n as f64 / wall.as_secs_f64();
    println!(
        "batchd run, concurrency {}{}: {n} records in {:.1} s = {rate:.2} records/s, slots busy {busy:.2}, CPU {:.2} ms/record",
        concurrency.map_or("default".into(), |c| c.to_string()),
        group_prefixes.map_or(String::new(), |g| format!(", group_prefixes {g}")),
        wall.as_secs_f64(),
        usage.cpu.as_secs_f64() * 1000.0 / n as f64,
    );
    Ok(Phase { rate, busy })
}

pub fn run(env: &Env, script: &Path, slot_counts: &[usize], n: u64) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for &slots in slot_counts {
        // Enough records that the last, partly filled round is a small part of the run.
        let n = n.max(10 * slots as u64);
        println!("-- {slots} slots, {n} records of max_tokens {MAX_TOKENS}, temperature 0 --");
        let server =
            ModelServer::start(script, env.work.join(format!("llama-run-{slots}")), slots)?;
        warm_up(&server, slots)?;
        let input = records(n);
        let before = loadgen_phase(&server, n, slots)?;
        let default = batchd_phase(env, &server, &input, None, None)?;
        let after = loadgen_phase(&server, n, slots)?;
        let old_default = batchd_phase(env, &server, &input, Some(OLD_DEFAULT), None)?;
        drop(server);
        let yardstick = (before.rate + after.rate) / 2.0;
        let ratio = default.rate / yardstick;
        println!(
            "{slots} slots: batchd (default) {:.2} ÷ load generator {yardstick:.2} = {ratio:.3}; \
             batchd at --concurrency {OLD_DEFAULT}: {:.3}",
            default.rate,
            old_default.rate / yardstick
        );
        figures.push(Figure {
            name: format!("llama-server, {slots} slots: batchd (default) ÷ load gen"),
            value: format!(
                "{:.2} / {yardstick:.2} = {ratio:.3} (busy {:.1}/{:.1})",
                default.rate,
                default.busy,
                (before.busy + after.busy) / 2.0
            ),
            goal: format!("≥ {GOAL}"),
            met: Some(ratio >= GOAL),
        });
        figures.push(Figure {
            name: format!("  same, batchd --concurrency {OLD_DEFAULT} (engine default)"),
            value: format!(
                "{:.2} / {yardstick:.2} = {:.3} (busy {:.1})",
                old_default.rate,
                old_default.rate / yardstick,
                old_default.busy
            ),
            goal: "(information)".into(),
            met: None,
        });
    }
    Ok(figures)
}

/// System prompts of the prefix run: each starts differently (so two share no prefix) and
/// goes on with the same ~250 tokens of instructions.
const PREFIXES: usize = 8;
const INSTRUCTIONS: &str = "Read the customer's message below and answer it as a helpful \
    support agent of a large online shop. Be polite, be brief and never invent order numbers, \
    prices, delivery dates or policies that the message does not state. If the message asks \
    for a refund, explain that refunds are handled within fourteen days of the return being \
    received and that the customer will get an email once it is processed. If the message is \
    about a late delivery, apologise, say that most parcels arrive within two extra working \
    days and suggest checking the tracking link in the confirmation email. If the message is \
    about a damaged item, ask for a photo of the damage and the packaging. If the message is \
    unclear, ask one short question to clarify it. Do not use lists, headings or emoji. Do not \
    mention these instructions. Answer in the language of the message. Keep the answer under \
    three sentences. Sign with the first name of the agent only.";

/// Record `i` of the prefix run: system prompt `prefix`, a one-line question.
fn prefix_record(i: u64, prefix: usize) -> serde_json::Value {
    serde_json::json!({
        "recordId": format!("rec-{i:06}"),
        "modelInput": {
            "system": [{"text": format!(
                "Agent {} of team {}, shift {}. {INSTRUCTIONS}",
                SUBJECTS[prefix % SUBJECTS.len()], prefix + 1, 9 - prefix
            )}],
            "messages": [{"role": "user", "content": [{"text": format!("Customer {i}: {}", prompt(i))}]}],
            "inferenceConfig": {"maxTokens": MAX_TOKENS, "temperature": 0.0},
        },
    })
}

/// Shared prefixes through llama-server's prompt cache: the same records (8 system prompts of
/// ~250 tokens, `n / 8` records each) at batchd's default concurrency, three ways: interleaved
/// input (record i has prefix i mod 8) started in input order (`group_prefixes = false`),
/// the same input started grouped by prefix (`group_prefixes = true`, the engine's prefix
/// grouping), and grouped input (records of one prefix next to each other) in input order.
/// Grouped dispatch ÷ input order is what batchd's grouping gains; grouped input ÷
/// interleaved is what reordering could gain at most. Each way runs three times, once in
/// each position of a round.
pub fn prefix_run(
    env: &Env,
    script: &Path,
    slots: usize,
    n: u64,
    first: usize,
) -> anyhow::Result<Vec<Figure>> {
    let per = n.div_ceil(PREFIXES as u64);
    let interleaved: Vec<_> = (0..per * PREFIXES as u64)
        .map(|i| prefix_record(i, (i % PREFIXES as u64) as usize))
        .collect();
    let grouped: Vec<_> = (0..per * PREFIXES as u64)
        .map(|i| prefix_record(i, (i / per) as usize))
        .collect();
    println!(
        "-- {slots} slots, {} records, {PREFIXES} system prompts, max_tokens {MAX_TOKENS} --",
        interleaved.len()
    );
    let server = ModelServer::start(
        script,
        env.work.join(format!("llama-prefix-{slots}")),
        slots,
    )?;
    warm_up(&server, slots)?;
    // Three rounds, each starting with another of the three ways, so that each way runs once
    // first, second and third: the server's prompt cache warms up over the first runs, and
    // a fixed order would charge that to whichever way comes first.
    let ways = [
        (&interleaved, false),
        (&interleaved, true),
        (&grouped, false),
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..3 {
        for k in 0..3 {
            let way = (first + round + k) % 3;
            let (records, grouping) = ways[way];
            let rate = batchd_phase(env, &server, records, None, Some(grouping))?.rate;
            println!(
                "round {}, position {}: way {way} at {rate:.2} records/s",
                round + 1,
                k + 1
            );
            rates[way].push(rate);
        }
    }
    let [mixed, dispatched, together] = rates;
    drop(server);
    let each = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "interleaved in input order {:.2} ({}), grouped dispatch {:.2} ({}), grouped input {:.2} ({}) records/s",
        mean(&mixed),
        each(&mixed),
        mean(&dispatched),
        each(&dispatched),
        mean(&together),
        each(&together)
    );
    let (mixed, dispatched, together) = (mean(&mixed), mean(&dispatched), mean(&together));
    let gain = dispatched / mixed;
    let most = together / mixed;
    println!("grouped dispatch ÷ input order {gain:.2}×; grouped input ÷ interleaved {most:.2}×");
    Ok(vec![
        Figure {
            name: format!(
                "llama-server prompt cache, {slots} slots: grouped dispatch ÷ input order (interleaved input)"
            ),
            value: format!("{dispatched:.2} / {mixed:.2} = {gain:.2}×"),
            goal: "(measured, not a goal)".into(),
            met: None,
        },
        Figure {
            name: "  same, grouped input ÷ interleaved input (both in input order)".into(),
            value: format!("{together:.2} / {mixed:.2} = {most:.2}×"),
            goal: "(the most reordering could gain)".into(),
            met: None,
        },
    ])
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}
