//! Instructions per record: `batchd run` under callgrind at two input sizes, against the fake
//! at zero latency. The difference divided by the difference in records leaves start-up
//! (config, TLS roots, the store) out. Instruction counts, unlike times, barely move on a busy
//! machine, so a change's effect shows in one run.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::{Env, Fake, Figure, batchd_run_under, thousands};

const SMALL: u64 = 2_000;
const LARGE: u64 = 10_000;

pub fn run(env: &Env, concurrency: usize) -> anyhow::Result<Vec<Figure>> {
    let valgrind_ok = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !valgrind_ok {
        bail!("--only instructions needs valgrind (Debian: apt-get install valgrind)");
    }
    let fake = Fake::start(env, 0)?;
    let mut totals = Vec::new();
    for n in [SMALL, LARGE] {
        let out = env.work.join(format!("callgrind.{n}.out"));
        let wrapper = [
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            "--quiet".to_owned(),
            format!("--callgrind-out-file={}", out.display()),
        ];
        batchd_run_under(env, &fake, n, concurrency, &wrapper)?;
        let total = total_instructions(&out)?;
        println!(
            "batchd run under callgrind: {} records, {total} instructions ({:.0} per record, start-up included)",
            thousands(n),
            total as f64 / n as f64
        );
        totals.push(total);
    }
    let per_record = (totals[1] as f64 - totals[0] as f64) / (LARGE - SMALL) as f64;
    Ok(vec![Figure {
        name: format!(
            "instructions per record ({} − {} records, callgrind)",
            thousands(LARGE),
            thousands(SMALL)
        ),
        value: format!("{per_record:.0}"),
        goal: "(information)".into(),
        met: None,
    }])
}

/// The `summary:` (or `totals:`) line of a callgrind output file: instructions executed.
fn total_instructions(path: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no summary line in {}", path.display()))
}
