//! End-to-end benchmark: `batchd run` against the fake OpenAI-compatible server (a separate
//! process), at several input sizes. Prints records/s, peak RSS and CPU per record of the
//! batchd process, and how RSS grows with input size.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark batchd run against the fake backend")]
struct Args {
    /// Input sizes to run, in records.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    records: Vec<usize>,
    /// Records in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Fixed latency of the fake backend, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Worker threads of the fake backend.
    #[arg(long, default_value_t = 1)]
    fake_threads: usize,
    /// Directory holding the `batchd` and `batchd-fake` binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct Measured {
    records: usize,
    wall: Duration,
    peak_rss_kb: i64,
    cpu: Duration,
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
    let batchd = bin_dir.join("batchd");
    let fake_bin = bin_dir.join("batchd-fake");
    for bin in [&batchd, &fake_bin] {
        if !bin.exists() {
            bail!(
                "{} not found: build it first (scripts/bench.sh does)",
                bin.display()
            );
        }
    }
    let work = tempfile::tempdir()?;
    let (mut fake, base_url) = start_fake(&fake_bin, args.latency_ms, args.fake_threads)?;
    let config = work.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nid = \"bench-model\"\nbackend = \"openai\"\nbase_url = \"{base_url}\"\n"
        ),
    )?;
    println!(
        "batchd run vs fake backend ({} ms latency, {} fake thread(s)), concurrency {}, {} cores",
        args.latency_ms,
        args.fake_threads,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>10} {:>9} {:>11} {:>13} {:>14}",
        "records", "wall s", "records/s", "peak RSS MB", "CPU ms/record"
    );
    let mut results = Vec::new();
    for &n in &args.records {
        let input = work.path().join(format!("in-{n}.jsonl"));
        write_input(&input, n)?;
        let m = run_batchd(&batchd, &config, &input, work.path(), n, args.concurrency)?;
        println!(
            "{:>10} {:>9.2} {:>11.0} {:>13.1} {:>14.4}",
            m.records,
            m.wall.as_secs_f64(),
            m.records as f64 / m.wall.as_secs_f64(),
            m.peak_rss_kb as f64 / 1024.0,
            m.cpu.as_secs_f64() * 1000.0 / m.records as f64
        );
        std::fs::remove_file(&input)?;
        results.push(m);
    }
    if let (Some(first), Some(last)) = (results.first(), results.last())
        && results.len() > 1
    {
        println!(
            "peak RSS ratio {} → {} records: {:.2}",
            first.records,
            last.records,
            last.peak_rss_kb as f64 / first.peak_rss_kb as f64
        );
    }
    let _ = fake.kill();
    let _ = fake.wait();
    Ok(())
}

fn start_fake(bin: &Path, latency_ms: u64, threads: usize) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(bin)
        .args([
            "--port",
            "0",
            "--latency-ms",
            &latency_ms.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("fake has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .context("fake did not report its address")?;
    Ok((child, url.to_owned()))
}

fn write_input(path: &Path, n: usize) -> anyhow::Result<()> {
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

fn run_batchd(
    batchd: &Path,
    config: &Path,
    input: &Path,
    work: &Path,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let child = Command::new(batchd)
        .arg("run")
        .arg(input)
        .args([
            "--model-id",
            "bench-model",
            "--quiet",
            "--concurrency",
            &concurrency.to_string(),
        ])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(work.join("data"))
        .arg("--out")
        .arg(work.join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (status, usage) = wait_with_rusage(child)?;
    let wall = started.elapsed();
    if status != 0 {
        bail!("batchd run exited with status {status}");
    }
    Ok(Measured {
        records: n,
        wall,
        peak_rss_kb: usage.0,
        cpu: usage.1,
    })
}

/// Waits for the child and returns its exit status, peak RSS (KiB) and user+system CPU.
#[allow(unsafe_code)]
fn wait_with_rusage(child: Child) -> anyhow::Result<(i32, (i64, Duration))> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child, which we reap here
    // (std's Child is dropped without waiting, so nothing else reaps it).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    drop(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    let exit = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((
        exit,
        (usage.ru_maxrss, tv(usage.ru_utime) + tv(usage.ru_stime)),
    ))
}
