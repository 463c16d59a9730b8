//! The independent load generator: `concurrency` keep-alive connections on one thread send
//! the chat-completions bodies batchd would send, until `total` requests are answered or the
//! time limit passes. Also a poller of the fake's `/fake/stats`, to time batchd's run phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::http::{Conn, get_request, post_request};
use crate::usage::thread_cpu;

/// What one load-generator run achieved.
pub struct LoadResult {
    pub answered: u64,
    pub wall: Duration,
    /// CPU of the load generator's own thread.
    pub cpu: Duration,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.answered as f64 / self.wall.as_secs_f64()
    }
}

/// The OpenAI chat body batchd sends for record `i` of the generated input (same model name,
/// message shape, max_tokens and temperature).
pub fn chat_body(i: u64) -> Vec<u8> {
    format!(
        r#"{{"model":"bench-model","messages":[{{"role":"user","content":"Summarise record {i} in one short sentence, please."}}],"max_tokens":32,"temperature":0.2}}"#
    )
    .into_bytes()
}

/// One load: `concurrency` connections to `addr` send `total` requests at most, for `limit`
/// at most; request `i` has the body `body(i)` (e.g. [`chat_body`]).
#[derive(Clone, Copy)]
pub struct Load {
    pub addr: SocketAddr,
    pub total: u64,
    pub concurrency: usize,
    pub limit: Duration,
    pub body: fn(u64) -> Vec<u8>,
}

/// Runs the load on a current-thread runtime on the calling thread.
pub fn run(load: Load) -> anyhow::Result<LoadResult> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cpu_before = thread_cpu();
    let result = runtime.block_on(drive(load))?;
    Ok(LoadResult {
        cpu: thread_cpu().saturating_sub(cpu_before),
        ..result
    })
}

async fn drive(load: Load) -> anyhow::Result<LoadResult> {
    let Load {
        addr,
        total,
        concurrency,
        limit,
        body,
    } = load;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    // Connect first, so the timed part is requests only (batchd's pool is warm after its
    // first requests too).
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(Conn::connect(addr).await?);
    }
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (next, errors, answered) = (next.clone(), errors.clone(), answered.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(());
                }
                let request = post_request(addr, "/v1/chat/completions", &body(i));
                // A server may close a keep-alive connection after so many requests
                // (llama-server does): reconnect once, as any HTTP client would.
                let answer = match conn.call(&request).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        conn = Conn::connect(addr).await?;
                        conn.call(&request).await?
                    }
                };
                if answer.status == 200 {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let wall = started.elapsed();
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("load generator: {errors} answers were not 200");
    }
    Ok(LoadResult {
        answered: answered.load(Ordering::Relaxed),
        wall,
        cpu: Duration::ZERO,
    })
}

/// When the fake saw its first and its `expected`-th chat request since the poller started,
/// relative to the poller's start. Polls every 10 ms on a thread of its own.
pub struct StatsPoller {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<(Option<Duration>, Option<Duration>)>>,
    pub started: Instant,
}

impl StatsPoller {
    pub fn start(addr: SocketAddr, expected: u64) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let request = get_request(addr, "/fake/stats");
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut conn = Conn::connect(addr).await?;
                let base = requests(&mut conn, &request).await?;
                let (mut first, mut last) = (None, None);
                // Bounded: at most 30 minutes of polling.
                for _ in 0..180_000 {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    let seen = requests(&mut conn, &request).await? - base;
                    if seen > 0 && first.is_none() {
                        first = Some(started.elapsed());
                    }
                    if seen >= expected {
                        last = Some(started.elapsed());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok((first, last))
            })
        });
        Ok(Self {
            stop,
            thread,
            started,
        })
    }

    /// Stops polling; returns (first request seen, last request seen).
    pub fn finish(self) -> anyhow::Result<(Option<Duration>, Option<Duration>)> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => bail!("stats poller panicked"),
        }
    }
}

async fn requests(conn: &mut Conn, request: &[u8]) -> anyhow::Result<u64> {
    let answer = conn.call(request).await?;
    let stats: serde_json::Value = serde_json::from_slice(&answer.body)?;
    match stats["chat"].as_u64() {
        Some(n) => Ok(n),
        None => bail!("fake stats without `chat`: {stats}"),
    }
}
