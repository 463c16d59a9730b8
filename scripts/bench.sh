#!/usr/bin/env bash
# The end-to-end benchmark: batchd run against the fake backend at zero latency.
# Extra arguments go to batchd-bench (see target/release/batchd-bench --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --quiet -p batchd -p batchd-testkit -p batchd-bench
target/release/batchd-bench "$@"
