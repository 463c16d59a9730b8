#!/usr/bin/env bash
# The performance benchmark (issue #8): batchd against the fake backend (a separate process) and
# an independent load generator (built into batchd-bench: keep-alive HTTP/1.1, one thread).
#
#   scripts/bench.sh            quick (about 1 minute): overhead, latency-bound, CPU/record,
#                               memory 10k vs 100k, control-plane p50/p99
#   scripts/bench.sh --full     the same with longer runs and the 1M-record memory run
#
# Other arguments go to batchd-bench (target/release/batchd-bench --help), e.g.
#   scripts/bench.sh --only overhead,control --concurrency 128
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
args=()
for arg in "$@"; do
  case "$arg" in
    --quick) ;;                 # the default
    *) args+=("$arg") ;;
  esac
done
cargo build --release --quiet -p batchd -p batchd-testkit -p batchd-bench
target/release/batchd-bench "${args[@]+"${args[@]}"}"
