//! Scale-out: records/s of one `batchd serve` against two sharing one Postgres job store (and
//! one data dir for the buckets). Each instance has a fake server of its own whose capacity
//! (its latency × the model's concurrency) is the bottleneck: the goal is two instances at
//! ≥ 1.8×. Then both call one server: the model's concurrency is shared, so about 1×.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::control::{Server, create_job, status};
use crate::{Env, Fake, Figure, write_input};

const RECORDS: u64 = 4_000;
const LATENCY_MS: u64 = 100;
const CONCURRENCY: usize = 16;
const CHUNK_RECORDS: u64 = 200;

pub fn run(env: &Env, pg_admin_url: &str) -> anyhow::Result<Vec<Figure>> {
    // One server per instance (a GPU box each), then one server both call.
    let fakes = [Fake::start(env, LATENCY_MS)?, Fake::start(env, LATENCY_MS)?];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let run = |name: &str, backends: &[&Fake]| -> anyhow::Result<f64> {
        let url = fresh_database(pg_admin_url, name)?;
        let data = env.work.join(format!("cluster-{name}"));
        write_input(&data.join("buckets/bench/input/in.jsonl"), RECORDS)?;
        let mut servers = Vec::new();
        for (i, fake) in backends.iter().enumerate() {
            let config = env.work.join(format!("cluster-{name}-{i}.toml"));
            std::fs::write(
                &config,
                fake.config(&format!(
                    "max_concurrency = {CONCURRENCY}\n\n[cluster]\nchunk_records = {CHUNK_RECORDS}\n\n\
                     [quotas]\nrecords_per_input_file = 10000000\nrecords_per_job = 10000000\n"
                )),
            )?;
            servers.push(Server::start_with(
                env,
                &data,
                &config,
                &["--database-url", &url],
            )?);
        }
        let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
        let elapsed = runtime.block_on(run_job(&addrs))?;
        drop(servers);
        let rate = RECORDS as f64 / elapsed.as_secs_f64();
        println!(
            "{name}: {RECORDS} records in {:.2} s, {rate:.0} records/s",
            elapsed.as_secs_f64()
        );
        Ok(rate)
    };
    let one = run("one instance", &[&fakes[0]])?;
    let two = run("two instances, a server each", &[&fakes[0], &fakes[1]])?;
    let shared = run("two instances, one server", &[&fakes[0], &fakes[0]])?;
    println!(
        "each server: {LATENCY_MS} ms a request, max_concurrency {CONCURRENCY} (at most {} records/s); chunks of {CHUNK_RECORDS}",
        CONCURRENCY as u64 * 1000 / LATENCY_MS
    );
    let (ratio, shared_ratio) = (two / one, shared / one);
    Ok(vec![
        Figure {
            name: "scale-out: 1 instance".into(),
            value: format!("{one:.0} records/s"),
            goal: "(reference)".into(),
            met: None,
        },
        Figure {
            name: "scale-out: 2 instances, a server each".into(),
            value: format!("{two:.0} records/s ({ratio:.2}×)"),
            goal: "≥ 1.8×".into(),
            met: Some(ratio >= 1.8),
        },
        Figure {
            name: "scale-out: 2 instances, one server".into(),
            value: format!("{shared:.0} records/s ({shared_ratio:.2}×)"),
            goal: "≤ 1.1× (the model's limit holds)".into(),
            met: Some(shared_ratio <= 1.1),
        },
    ])
}

/// A new database on the server `pg_admin_url` names (through `psql`), and its URL.
fn fresh_database(pg_admin_url: &str, run: &str) -> anyhow::Result<String> {
    let suffix: String = run.chars().filter(char::is_ascii_alphanumeric).collect();
    let name = format!("batchd_bench_{}_{suffix}", std::process::id());
    let status = Command::new("psql")
        .args([pg_admin_url, "-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .context("cannot run psql")?;
    if !status.success() {
        bail!("psql could not create database {name}");
    }
    let (base, _) = pg_admin_url
        .rsplit_once('/')
        .context("the Postgres URL has no database")?;
    Ok(format!("{base}/{name}"))
}

/// Creates the job on the first instance and waits on the last one until it completes;
/// the time from create to `Completed`.
async fn run_job(addrs: &[std::net::SocketAddr]) -> anyhow::Result<Duration> {
    let (first, last) = (addrs[0], addrs[addrs.len() - 1]);
    let started = Instant::now();
    let id = create_job(first, "bench-cluster", "output").await?;
    let path = format!("/model-invocation-job/{id}");
    loop {
        match status(last, &path).await?.as_str() {
            "Completed" => return Ok(started.elapsed()),
            s @ ("Failed" | "Stopped" | "PartiallyCompleted" | "Expired") => {
                bail!("the job ended {s}")
            }
            _ if started.elapsed() > Duration::from_secs(600) => {
                bail!("the job took over 10 minutes")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
