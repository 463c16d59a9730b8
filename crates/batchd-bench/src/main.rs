//! End-to-end benchmark of batchd against the fake OpenAI-compatible server (a separate
//! process), with an independent load generator as the yardstick:
//!
//! - overhead: `batchd run` records/s at zero latency ÷ the load generator's req/s against
//!   the same fake, same bodies, same concurrency (measured before and after, averaged);
//! - latency-bound efficiency: the same ratio with 50 ms fake latency at concurrency 256;
//! - CPU per record of the batchd process (wait4) at zero latency;
//! - peak RSS for a small and a large input (10k and 1M records with `--full`);
//! - control plane: p50/p99 of GetModelInvocationJob and ListModelInvocationJobs under 1,000
//!   concurrent calls to `batchd serve` while its jobs run;
//! - with `--only instructions`: instructions per record of `batchd run` under callgrind
//!   (the difference between two input sizes, so start-up does not count);
//! - with `--only llama-server`: records/s through a real llama-server with N slots at batchd's
//!   default concurrency ÷ a load generator keeping exactly N in flight.
//!
//! Each figure is printed next to its goal.

mod cluster;
mod control;
mod http;
mod instructions;
mod llama;
mod loadgen;
mod usage;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::loadgen::{Load, LoadResult, StatsPoller};

#[derive(Parser)]
#[command(about = "Benchmark batchd against the fake backend and an independent load generator")]
struct Args {
    /// Also run the 1M-record memory run and longer runs (several minutes).
    #[arg(long)]
    full: bool,
    /// Sections to run (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Section>,
    /// Records of the zero-latency overhead run (default 100,000; 200,000 with --full).
    #[arg(long)]
    records: Option<u64>,
    /// Records in flight at zero latency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// batchd runs of the overhead section, each between two load-generator runs (default 1;
    /// 3 with --full); the figures are the median round's ratio and CPU.
    #[arg(long)]
    rounds: Option<usize>,
    /// Latency of the fake in the latency-bound run, in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Records in flight in the latency-bound run.
    #[arg(long, default_value_t = 256)]
    latency_concurrency: usize,
    /// Records of the latency-bound run (default 30,000; 60,000 with --full).
    #[arg(long)]
    latency_records: Option<u64>,
    /// Records of the large memory run (default 1,000,000, with --full only).
    #[arg(long, default_value_t = 1_000_000)]
    memory_records: u64,
    /// Worker threads of the fake backend (1 leaves the other core to what is measured).
    #[arg(long, default_value_t = 1)]
    fake_threads: usize,
    /// Concurrent control-plane calls of each kind.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Directory holding `batchd` and `batchd-fake` (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// A PostgreSQL server's admin URL for the scale-out section (which runs only with it;
    /// `scripts/bench.sh --cluster` starts one).
    #[arg(long, env = "BATCHD_BENCH_PG_URL")]
    pg_url: Option<String>,
    /// Slot counts of the llama-server section (`--only llama-server`; not run otherwise;
    /// `--only llama-prefix` runs the prompt-cache section on 4 slots).
    #[arg(long, value_delimiter = ',', default_value = "4,8")]
    llama_slots: Vec<usize>,
    /// Records of each llama-server phase.
    #[arg(long, default_value_t = 160)]
    llama_records: u64,
    /// Which of `--only llama-prefix`'s three ways runs first on the new server (0 interleaved
    /// in input order, 1 interleaved grouped, 2 grouped input): the first runs warm its cache.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..3))]
    llama_prefix_first: u8,
    /// The script that starts and stops llama-server.
    #[arg(long, default_value = "scripts/model-server.sh")]
    model_server_script: PathBuf,
    /// Keep the work directory (inputs, outputs, data) and print where it is.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    Overhead,
    Latency,
    Memory,
    Control,
    Cluster,
    LlamaServer,
    LlamaPrefix,
    Instructions,
}

impl Section {
    /// Sections that run only when `--only` names them: they need a real model server or
    /// valgrind, and take minutes.
    fn only_when_named(self) -> bool {
        matches!(
            self,
            Section::LlamaServer | Section::LlamaPrefix | Section::Instructions
        )
    }
}

/// The binaries and the work directory.
struct Env {
    batchd: PathBuf,
    fake_bin: PathBuf,
    work: PathBuf,
    fake_threads: usize,
}

/// One line of the final table.
struct Figure {
    name: String,
    value: String,
    goal: String,
    met: Option<bool>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no bin dir")?
            .to_path_buf(),
    };
    let env_bins = (bin_dir.join("batchd"), bin_dir.join("batchd-fake"));
    for bin in [&env_bins.0, &env_bins.1] {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (scripts/bench.sh does)",
                bin.display()
            );
        }
    }
    let nofile = usage::raise_nofile();
    let tmp = tempfile::Builder::new().prefix("batchd-bench").tempdir()?;
    let env = Env {
        batchd: env_bins.0,
        fake_bin: env_bins.1,
        work: tmp.path().to_path_buf(),
        fake_threads: args.fake_threads,
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "batchd-bench ({}): {cores} cores, {:.1} GiB, load average {:.2}, CPUs busy before start {:.0}%, open files {nofile}",
        if args.full { "full" } else { "quick" },
        usage::mem_total_gib(),
        usage::loadavg(),
        usage::cpu_busy(Duration::from_secs(1)) * 100.0,
    );
    println!(
        "fake backend: separate process, {} worker thread(s); load generator: one thread, keep-alive HTTP/1.1",
        args.fake_threads
    );
    let run = |s: Section| args.only.contains(&s) || (args.only.is_empty() && !s.only_when_named());
    let mut figures = Vec::new();

    let overhead_records = args
        .records
        .unwrap_or(if args.full { 200_000 } else { 100_000 });
    let mut small_rss = None;
    let mut large_rss = None;
    if run(Section::Overhead) {
        println!(
            "\n== overhead: zero-latency fake, concurrency {} ==",
            args.concurrency
        );
        let rounds = args.rounds.unwrap_or(if args.full { 3 } else { 1 }).max(1);
        let r = overhead(&env, overhead_records, args.concurrency, rounds)?;
        figures.extend(r.0);
        large_rss = Some((overhead_records, r.1));
    }
    if run(Section::Latency) {
        let n = args
            .latency_records
            .unwrap_or(if args.full { 60_000 } else { 30_000 });
        println!(
            "\n== latency-bound: {} ms fake latency, concurrency {} ==",
            args.latency_ms, args.latency_concurrency
        );
        figures.extend(latency(&env, n, args.latency_ms, args.latency_concurrency)?);
    }
    if run(Section::Memory) {
        println!("\n== memory: peak RSS of batchd run by input size (zero latency) ==");
        let fake = Fake::start(&env, 0)?;
        let small = batchd_run(&env, &fake, 10_000, args.concurrency)?;
        print_run("batchd run", &small);
        small_rss = Some((10_000, small.peak_rss_kb));
        if args.full {
            let big = batchd_run(&env, &fake, args.memory_records, args.concurrency)?;
            print_run("batchd run", &big);
            large_rss = Some((args.memory_records, big.peak_rss_kb));
        }
    }
    if let (Some((n_small, small)), Some((n_large, large))) = (small_rss, large_rss) {
        let ratio = large as f64 / small as f64;
        let large_mb = large as f64 / 1024.0;
        figures.push(Figure {
            name: format!(
                "peak RSS {} → {} records",
                thousands(n_small),
                thousands(n_large)
            ),
            value: format!(
                "{:.1} → {large_mb:.1} MB (×{ratio:.2})",
                small as f64 / 1024.0
            ),
            goal: "×≤1.5, largest ≤ 64 MB (issue #19)".into(),
            met: Some(ratio <= 1.5 && large_mb <= 64.0),
        });
        if n_large < 1_000_000 {
            println!("(the 1M-record memory run needs --full)");
        }
    }
    if run(Section::Control) {
        println!(
            "\n== control plane: {} concurrent calls each, batchd serve with running jobs ==",
            args.calls
        );
        figures.extend(control::run(&env, args.calls)?);
    }
    match (&args.pg_url, run(Section::Cluster)) {
        (Some(url), true) => {
            println!("\n== scale-out: one instance, then two sharing one Postgres ==");
            figures.extend(cluster::run(&env, url)?);
        }
        (None, true) if args.only.contains(&Section::Cluster) => {
            bail!("--only cluster needs --pg-url (scripts/bench.sh --cluster starts PostgreSQL)")
        }
        _ => {}
    }

    if run(Section::LlamaServer) {
        println!(
            "\n== llama-server kept full: batchd's default concurrency against N in flight =="
        );
        figures.extend(llama::run(
            &env,
            &args.model_server_script,
            &args.llama_slots,
            args.llama_records,
        )?);
    }

    if run(Section::Instructions) {
        println!(
            "\n== instructions per record: batchd run under callgrind, zero latency, concurrency {} ==",
            args.concurrency
        );
        figures.extend(instructions::run(&env, args.concurrency)?);
    }

    if run(Section::LlamaPrefix) {
        println!("\n== llama-server's prompt cache: records sharing a prefix grouped or not ==");
        figures.extend(llama::prefix_run(
            &env,
            &args.model_server_script,
            4,
            args.llama_records,
            usize::from(args.llama_prefix_first),
        )?);
    }

    println!("\n== results (load average now {:.2}) ==", usage::loadavg());
    let width = figures.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let vwidth = figures.iter().map(|f| f.value.len()).max().unwrap_or(0);
    for f in &figures {
        let verdict = match f.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:<width$}  {:>vwidth$}  goal {:<22} {verdict}",
            f.name, f.value, f.goal
        );
    }
    if args.keep {
        let kept = tmp.keep();
        println!("work directory kept: {}", kept.display());
    }
    Ok(())
}

fn thousands(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Load generator, batchd run, load generator again: the ratio uses the mean of the two.
fn overhead(
    env: &Env,
    n: u64,
    concurrency: usize,
    rounds: usize,
) -> anyhow::Result<(Vec<Figure>, i64)> {
    let fake = Fake::start(env, 0)?;
    let limit = Duration::from_secs(300);
    // Load generator, batchd, load generator, batchd, ...: each batchd run is compared with
    // the load-generator runs on either side of it, so the host's slow minutes hit both.
    let mut before = load(&fake, n, concurrency, limit)?;
    let mut measured = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let run = batchd_run(env, &fake, n, concurrency)?;
        print_run(&format!("batchd run {round}/{rounds}"), &run);
        let after = load(&fake, n, concurrency, limit)?;
        let yardstick = (before.rate() + after.rate()) / 2.0;
        let ratio = run.rate() / yardstick;
        let phase = run.phase_rate().map(|r| r / yardstick);
        println!(
            "round {round}: ratio (whole command) {ratio:.3}; run phase only {}",
            phase.map_or("n/a".into(), |p| format!("{p:.3}"))
        );
        measured.push(Round {
            ratio,
            phase,
            yardstick,
            load_cpu: (before.cpu + after.cpu).as_secs_f64() / 2.0,
            load_fake_cpu: (before.fake_cpu + after.fake_cpu).as_secs_f64() / 2.0,
            run,
        });
        before = after;
    }
    let peak_rss_kb = measured
        .iter()
        .map(|m| m.run.peak_rss_kb)
        .max()
        .unwrap_or(0);
    measured.sort_by(|a, b| a.ratio.total_cmp(&b.ratio));
    let spread = match (measured.first(), measured.last()) {
        (Some(low), Some(high)) if rounds > 1 => {
            format!(
                " (median of {rounds}; range {:.2}–{:.2})",
                low.ratio, high.ratio
            )
        }
        _ => String::new(),
    };
    let Some(median) = measured.get(rounds / 2) else {
        anyhow::bail!("no overhead round ran");
    };
    let Round {
        ratio,
        phase,
        yardstick,
        load_cpu,
        load_fake_cpu,
        ref run,
    } = *median;
    let cpu_ms = run.cpu.as_secs_f64() * 1000.0 / n as f64;
    // With both cores busy, records/s goes as 1 ÷ the CPU a request costs on both sides: this
    // is the ratio a fully loaded host tends to, whatever else runs beside it.
    let cpu_ratio = (load_cpu + load_fake_cpu)
        / (run.cpu.as_secs_f64() + run.fake_cpu.as_secs_f64()).max(f64::MIN_POSITIVE);
    let figures = vec![
        Figure {
            name: "overhead: batchd run ÷ load generator".into(),
            value: format!("{:.0} / {:.0} = {ratio:.2}{spread}", run.rate(), yardstick),
            goal: "≥ 0.8".into(),
            met: Some(ratio >= 0.8),
        },
        Figure {
            name: "  same, run phase only (first→last request)".into(),
            value: phase.map_or("n/a".into(), |p| format!("{p:.2}")),
            goal: "(information)".into(),
            met: None,
        },
        Figure {
            name: "CPU per record (batchd process, user+sys)".into(),
            value: format!("{cpu_ms:.3} ms"),
            goal: "≤ 0.03 ms (issue #19)".into(),
            met: Some(cpu_ms <= 0.03),
        },
        Figure {
            name: "  fake CPU per request: under batchd / under load gen".into(),
            value: format!(
                "{:.1} / {:.1} µs",
                run.fake_cpu.as_secs_f64() * 1e6 / n as f64,
                load_fake_cpu * 1e6 / n as f64
            ),
            goal: "(information)".into(),
            met: None,
        },
        Figure {
            name: "  CPU per request, (load gen + fake) ÷ (batchd + fake)".into(),
            value: format!("{cpu_ratio:.2}"),
            goal: "(information)".into(),
            met: None,
        },
    ];
    Ok((figures, peak_rss_kb))
}

/// One batchd run of the overhead section, with the load-generator runs either side of it.
struct Round {
    /// batchd's records/s ÷ the load generator's (the mean of the two runs beside it).
    ratio: f64,
    phase: Option<f64>,
    yardstick: f64,
    /// The load generator's own CPU and the fake's under it, seconds per run (the mean).
    load_cpu: f64,
    load_fake_cpu: f64,
    run: RunResult,
}

fn latency(env: &Env, n: u64, latency_ms: u64, concurrency: usize) -> anyhow::Result<Vec<Figure>> {
    let fake = Fake::start(env, latency_ms)?;
    let limit = Duration::from_secs(600);
    let before = load(&fake, n, concurrency, limit)?;
    let run = batchd_run(env, &fake, n, concurrency)?;
    print_run("batchd run", &run);
    let after = load(&fake, n, concurrency, limit)?;
    let yardstick = (before.rate() + after.rate()) / 2.0;
    let ideal = concurrency as f64 * 1000.0 / latency_ms.max(1) as f64;
    let ratio = run.rate() / yardstick;
    let phase = run.phase_rate().map(|r| r / yardstick);
    println!(
        "ideal {ideal:.0}/s; ratio (whole command) {ratio:.3}; run phase only {}",
        phase.map_or("n/a".into(), |p| format!("{p:.3}"))
    );
    Ok(vec![
        Figure {
            name: format!("latency-bound ({latency_ms} ms, c={concurrency}): batchd ÷ load gen"),
            value: format!("{:.0} / {:.0} = {ratio:.3}", run.rate(), yardstick),
            goal: "≥ 0.97".into(),
            met: Some(ratio >= 0.97),
        },
        Figure {
            name: "  same, run phase only (first→last request)".into(),
            value: phase.map_or("n/a".into(), |p| format!("{p:.3}")),
            goal: "(information)".into(),
            met: None,
        },
    ])
}

/// The fake backend as a child process; killed on drop.
pub(crate) struct Fake {
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
}

impl Fake {
    pub fn start(env: &Env, latency_ms: u64) -> anyhow::Result<Self> {
        let mut child = Command::new(&env.fake_bin)
            .args([
                "--port",
                "0",
                "--latency-ms",
                &latency_ms.to_string(),
                "--threads",
                &env.fake_threads.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", env.fake_bin.display()))?;
        let url = http::announced_url(&mut child, "the fake")?;
        let addr = http::addr_of(&url)?;
        Ok(Self { child, url, addr })
    }

    pub fn cpu(&self) -> Duration {
        usage::process_cpu(self.child.id())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `batchd.toml` mapping `bench-model` to this fake.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[[models]]\nid = \"bench-model\"\nbackend = \"openai\"\nbase_url = \"{}\"\n{extra}",
            self.url
        )
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct LoadRun {
    result: LoadResult,
    fake_cpu: Duration,
}

impl std::ops::Deref for LoadRun {
    type Target = LoadResult;
    fn deref(&self) -> &LoadResult {
        &self.result
    }
}

fn load(fake: &Fake, n: u64, concurrency: usize, limit: Duration) -> anyhow::Result<LoadRun> {
    let cpu0 = fake.cpu();
    let result = loadgen::run(Load {
        addr: fake.addr,
        total: n,
        concurrency,
        limit,
        body: loadgen::chat_body,
    })?;
    let fake_cpu = fake.cpu().saturating_sub(cpu0);
    println!(
        "load generator: {} requests in {:.2} s = {:.0} req/s (its own CPU {:.1} µs/req, fake's {:.1} µs/req)",
        result.answered,
        result.wall.as_secs_f64(),
        result.rate(),
        result.cpu.as_secs_f64() * 1e6 / result.answered.max(1) as f64,
        fake_cpu.as_secs_f64() * 1e6 / result.answered.max(1) as f64,
    );
    Ok(LoadRun { result, fake_cpu })
}

/// One `batchd run` and what it cost.
pub(crate) struct RunResult {
    records: u64,
    wall: Duration,
    /// First and last backend request, from the start of the command.
    first: Option<Duration>,
    last: Option<Duration>,
    peak_rss_kb: i64,
    cpu: Duration,
    fake_cpu: Duration,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.records as f64 / self.wall.as_secs_f64()
    }

    fn phase_rate(&self) -> Option<f64> {
        let span = self.last?.checked_sub(self.first?)?;
        Some(self.records as f64 / span.as_secs_f64().max(1e-3))
    }
}

fn print_run(label: &str, r: &RunResult) {
    println!(
        "{label}: {} records in {:.2} s = {:.0} records/s (requests {}..{} s), peak RSS {:.1} MB, CPU {:.3} ms/record, fake CPU {:.1} µs/request",
        r.records,
        r.wall.as_secs_f64(),
        r.rate(),
        r.first
            .map_or("?".into(), |d| format!("{:.2}", d.as_secs_f64())),
        r.last
            .map_or("?".into(), |d| format!("{:.2}", d.as_secs_f64())),
        r.peak_rss_kb as f64 / 1024.0,
        r.cpu.as_secs_f64() * 1000.0 / r.records as f64,
        r.fake_cpu.as_secs_f64() * 1e6 / r.records as f64,
    );
}

/// The generated Converse input: short prompts, maxTokens 32.
pub fn write_input(path: &Path, n: u64) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        writeln!(
            w,
            r#"{{"recordId":"rec-{i:08}","modelInput":{{"messages":[{{"role":"user","content":[{{"text":"Summarise record {i} in one short sentence, please."}}]}}],"inferenceConfig":{{"maxTokens":32,"temperature":0.2}}}}}}"#
        )?;
    }
    w.flush()?;
    Ok(())
}

fn batchd_run(env: &Env, fake: &Fake, n: u64, concurrency: usize) -> anyhow::Result<RunResult> {
    batchd_run_under(env, fake, n, concurrency, &[])
}

/// [`batchd_run`] with `batchd` started by `wrapper` (e.g. valgrind and its options) when that
/// is not empty.
pub(crate) fn batchd_run_under(
    env: &Env,
    fake: &Fake,
    n: u64,
    concurrency: usize,
    wrapper: &[String],
) -> anyhow::Result<RunResult> {
    let input = env.work.join(format!("in-{n}.jsonl"));
    write_input(&input, n)?;
    let config = env.work.join("batchd-run.toml");
    std::fs::write(&config, fake.config(""))?;
    let out = env.work.join("out");
    let fake_cpu0 = fake.cpu();
    let poller = StatsPoller::start(fake.addr, n)?;
    let mut command = match wrapper.split_first() {
        Some((program, options)) => {
            let mut command = Command::new(program);
            command.args(options).arg(&env.batchd);
            command
        }
        None => Command::new(&env.batchd),
    };
    let child = command
        .arg("run")
        .arg(&input)
        .args([
            "--model-id",
            "bench-model",
            "--quiet",
            "--concurrency",
            &concurrency.to_string(),
        ])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(env.work.join("data"))
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = poller.started;
    let mut child = child;
    let reader = usage::read_stderr(&mut child);
    let usage = usage::wait_with_rusage(child)?;
    let wall = started.elapsed();
    let (first, last) = poller.finish()?;
    let fake_cpu = fake.cpu().saturating_sub(fake_cpu0);
    let stderr = reader.join().unwrap_or_default();
    if usage.exit != 0 {
        bail!("batchd run exited with status {}: {stderr}", usage.exit);
    }
    check_output(&out, n)?;
    std::fs::remove_file(&input)?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(RunResult {
        records: n,
        wall,
        first,
        last,
        peak_rss_kb: usage.peak_rss_kb,
        cpu: usage.cpu,
        fake_cpu,
    })
}

/// The run wrote one `.out` file of n lines and a manifest counting n successes.
fn check_output(out: &Path, n: u64) -> anyhow::Result<()> {
    // The job's folder, not the `<jobId>.analysis.json` beside it.
    let job_dir = std::fs::read_dir(out)?
        .map(|e| e.map(|e| e.path()))
        .find(|p| p.as_ref().map_or(true, |p| p.is_dir()))
        .context("no job directory in the output")??;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("manifest.json.out"))?)?;
    if manifest["successRecordCount"].as_u64() != Some(n) {
        bail!("the run did not succeed on every record: {manifest}");
    }
    Ok(())
}
