//! Control-plane latency: `batchd serve` with jobs running against a fake with latency, then
//! `calls` concurrent GetModelInvocationJob calls and as many ListModelInvocationJobs calls,
//! each on a fresh connection, all released together; p50/p99 of connect-to-last-byte.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::http::{Conn, addr_of, announced_url, get_request, once, post_request};
use crate::usage::{process_cpu_fine, self_cpu};
use crate::{Env, Fake, Figure, write_input};

/// Records per job, latency of the fake and jobs created: the jobs outlast the measurement.
const RECORDS: u64 = 20_000;
const FAKE_LATENCY_MS: u64 = 20;
const JOBS: usize = 4;
/// Issue #19, goal 4.
const P99_GOAL: Duration = Duration::from_millis(50);

pub fn run(env: &Env, calls: usize) -> anyhow::Result<Vec<Figure>> {
    let fake = Fake::start(env, FAKE_LATENCY_MS)?;
    let data = env.work.join("serve-data");
    write_input(&data.join("buckets/bench/input/in.jsonl"), RECORDS)?;
    let config = env.work.join("batchd-serve.toml");
    std::fs::write(
        &config,
        fake.config(
            "max_concurrency = 64\n\n[limits]\nmax_running_jobs = 2\nmax_jobs_per_model = 100\n\n\
             [quotas]\nrecords_per_input_file = 10000000\nrecords_per_job = 10000000\n",
        ),
    )?;
    let mut serve = Server::start(env, &data, &config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pid = serve.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let fake_target = (fake.addr, fake.pid());
    let result = runtime.block_on(measure(serve.addr, pid, fake_target, calls));
    serve.stop();
    let (results, running) = result?;
    println!(
        "jobs in progress during the calls: {running}; fake latency {FAKE_LATENCY_MS} ms, {RECORDS} records per job"
    );
    Ok(results
        .iter()
        .map(|(name, l)| {
            // Issue #19's goal is for calls on open connections; a fresh connection's time
            // also holds the TCP handshake and the accept queue.
            let open = name.ends_with("(open connections)")
                && !name.starts_with("Unknown")
                && !name.starts_with("The fake");
            Figure {
                name: format!("{name} p50 / p99, {calls} concurrent"),
                value: format!("{:.1} / {:.1} ms", ms(l.p50), ms(l.p99)),
                goal: if open { "p99 < 50 ms" } else { "(no goal set)" }.into(),
                met: open.then(|| l.p99 < P99_GOAL),
            }
        })
        .collect())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Latencies {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

type Measured = (Vec<(String, Latencies)>, usize);

async fn measure(
    addr: SocketAddr,
    pid: u32,
    (fake_addr, fake_pid): (SocketAddr, u32),
    calls: usize,
) -> anyhow::Result<Measured> {
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(create_job(addr, &format!("bench-job-{i}"), &format!("output-{i}")).await?);
    }
    let first = ids.first().context("no job")?.clone();
    let get_path = format!("/model-invocation-job/{first}");
    // Bounded wait for the first job to run (validation of 20k records takes well under 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if status(addr, &get_path).await? == "InProgress" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the first job did not reach InProgress within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut results = Vec::new();
    for (name, (addr, pid), path, expect) in [
        ("GetModelInvocationJob", (addr, pid), get_path.as_str(), 200),
        (
            "ListModelInvocationJobs",
            (addr, pid),
            "/model-invocation-jobs",
            200,
        ),
        // What any call costs here: HTTP, the middleware, and the client beside the server.
        (
            "Unknown path, answered 404",
            (addr, pid),
            "/no-such-path",
            404,
        ),
        // The same on a lean server (hyper and axum, no middleware, one thread) that is also
        // answering the jobs' records: the floor of this machine and client.
        (
            "The fake backend, unknown path",
            (fake_addr, fake_pid),
            "/no-such-path",
            404,
        ),
    ] {
        for connected in [false, true] {
            // Open connections are made before the window: it holds the calls alone.
            let mut conns = Vec::new();
            if connected {
                for _ in 0..calls {
                    conns.push(Conn::connect(addr).await?);
                }
            }
            let (server, client) = (process_cpu_fine(pid), self_cpu());
            let started = Instant::now();
            let l = fire(addr, &get_request(addr, path), calls, conns, expect).await?;
            let took = started.elapsed();
            let (server, client) = (process_cpu_fine(pid) - server, self_cpu() - client);
            // The jobs' own CPU over as long a window with no calls, to take out of the server's.
            let quiet = process_cpu_fine(pid);
            tokio::time::sleep(took).await;
            let quiet = process_cpu_fine(pid) - quiet;
            let how = if connected {
                "open connections"
            } else {
                "fresh connections"
            };
            let per_call = |d: Duration| d.as_secs_f64() * 1e6 / calls as f64;
            println!(
                "{name} ({how}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; CPU per call: \
                 server {:.1} µs (less {:.1} µs of its jobs), this client {:.1} µs",
                ms(l.p50),
                ms(l.p99),
                ms(l.max),
                per_call(server),
                per_call(quiet),
                per_call(client)
            );
            results.push((format!("{name} ({how})"), l));
        }
    }
    let mut running = 0;
    for id in &ids {
        if status(addr, &format!("/model-invocation-job/{id}")).await? == "InProgress" {
            running += 1;
        }
    }
    if running == 0 {
        bail!("no job was still running after the calls: raise RECORDS");
    }
    Ok((results, running))
}

/// Creates a Converse job of `bench-model` over `s3://bench/input/` writing to
/// `s3://bench/<output>/`; its id.
pub(crate) async fn create_job(
    addr: SocketAddr,
    name: &str,
    output: &str,
) -> anyhow::Result<String> {
    let body = serde_json::json!({
        "jobName": name,
        "modelId": "bench-model",
        "roleArn": "arn:aws:iam::123456789012:role/bench",
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://bench/input/"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": format!("s3://bench/{output}/")}},
        "modelInvocationType": "Converse",
    });
    let answer = once(
        addr,
        &post_request(addr, "/model-invocation-job", body.to_string().as_bytes()),
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
    let arn = v["jobArn"]
        .as_str()
        .with_context(|| format!("create answered {}: {v}", answer.status))?;
    Ok(arn.rsplit('/').next().unwrap_or(arn).to_owned())
}

pub(crate) async fn status(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let answer = once(addr, &get_request(addr, path)).await?;
    let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
    Ok(v["status"].as_str().unwrap_or("?").to_owned())
}

/// `calls` tasks wait on a barrier, then each sends `request` and reads the answer: on one
/// of `conns`, opened before, or on a fresh connection (timed from connect) when `conns` is
/// empty.
async fn fire(
    addr: SocketAddr,
    request: &[u8],
    calls: usize,
    conns: Vec<Conn>,
    expect: u16,
) -> anyhow::Result<Latencies> {
    let barrier = Arc::new(tokio::sync::Barrier::new(calls));
    let request: Arc<[u8]> = request.into();
    let mut tasks = tokio::task::JoinSet::new();
    let mut conns = conns.into_iter();
    for _ in 0..calls {
        let (barrier, request) = (barrier.clone(), request.clone());
        let mut conn = conns.next();
        tasks.spawn(async move {
            let call = async {
                barrier.wait().await;
                let started = Instant::now();
                let answer = match conn.as_mut() {
                    Some(conn) => conn.call(&request).await?,
                    None => once(addr, &request).await?,
                };
                Ok::<_, anyhow::Error>((started.elapsed(), answer))
            };
            let (elapsed, answer) = tokio::time::timeout(Duration::from_secs(60), call)
                .await
                .context("call timed out")??;
            if answer.status != expect {
                bail!(
                    "answer {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
            Ok::<_, anyhow::Error>(elapsed)
        });
    }
    let mut times = Vec::with_capacity(calls);
    while let Some(joined) = tasks.join_next().await {
        times.push(joined??);
    }
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    Ok(Latencies {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    })
}

/// `batchd serve` on a free port; SIGTERM then SIGKILL on stop.
pub(crate) struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Server {
    fn start(env: &Env, data: &std::path::Path, config: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_with(env, data, config, &[])
    }

    /// `start` with more `serve` arguments.
    pub(crate) fn start_with(
        env: &Env,
        data: &std::path::Path,
        config: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(&env.batchd)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("--config")
            .arg(config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start batchd serve")?;
        let addr = addr_of(&announced_url(&mut child, "batchd serve")?)?;
        Ok(Self {
            child: Some(child),
            addr,
        })
    }

    #[allow(unsafe_code)]
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
