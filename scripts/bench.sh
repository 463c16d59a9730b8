#!/usr/bin/env bash
# The performance benchmark (issue #8): batchd against the fake backend (a separate process) and
# an independent load generator (built into batchd-bench: keep-alive HTTP/1.1, one thread).
#
#   scripts/bench.sh            quick (about 1 minute): overhead, latency-bound, CPU/record,
#                               memory 10k vs 100k, control-plane p50/p99
#   scripts/bench.sh --full     the same with longer runs and the 1M-record memory run
#   scripts/bench.sh --shared-prefix   the embedded model's prefix sharing, off against on, in
#                               the default mode and with batch_invariant (answers that match)
#   scripts/bench.sh --cluster  one batchd serve against two sharing one PostgreSQL (started
#                               and removed by scripts/pg.sh), about 1 minute
#   scripts/bench.sh --llama-server   a real llama-server (scripts/model-server.sh) with 4 and
#                               8 slots: batchd at its default concurrency ÷ a load generator
#                               keeping exactly N in flight, about 10 minutes on 2 cores
#   scripts/bench.sh --llama-prefix   the same server's prompt cache: records sharing a system
#                               prompt interleaved in input order, interleaved with batchd's
#                               grouping (group_prefixes), and grouped input; 5-10 minutes
#
#   scripts/bench.sh --only instructions   instructions per record of batchd run under
#                               callgrind (valgrind must be installed), about 1 minute
#
# Other arguments go to batchd-bench (target/release/batchd-bench --help), e.g.
#   scripts/bench.sh --only overhead,control --concurrency 128
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
shared_prefix=""
cluster=""
llama=""
for arg in "$@"; do
  case "$arg" in
    --quick) ;;                 # the default
    --shared-prefix) shared_prefix=1 ;;
    --cluster) cluster=1 ;;
    --llama-server) llama=llama-server ;;
    --llama-prefix) llama=llama-prefix ;;
    *) args+=("$arg") ;;
  esac
done
if [ -n "$cluster" ]; then export BATCHD_SETUP_POSTGRES=1; fi
source scripts/setup.sh
if [ -n "$shared_prefix" ]; then
  # The embedded chat model's prefix sharing: 64 records with one ~450-token system prompt,
  # sharing off and on in one run (records/s ratio, answers compared), in the default mode and
  # then with batch_invariant (the mode whose answers match), about 10-25 minutes.
  bash scripts/models.sh
  cargo build --release --quiet -p batchd-embedded --bin embedded-bench
  bench="${CARGO_TARGET_DIR:-target}/release/embedded-bench"
  "$bench" --shared-prefix --records 64 --max-tokens 24 "${args[@]+"${args[@]}"}"
  if [[ " ${args[*]-} " != *" --batch-invariant "* ]]; then
    echo
    "$bench" --shared-prefix --records 64 --max-tokens 24 --batch-invariant "${args[@]+"${args[@]}"}"
  fi
  exit
fi
cargo build --release --quiet -p batchd -p batchd-testkit -p batchd-bench
bin_dir="${CARGO_TARGET_DIR:-target}/release"
if [ -n "$cluster" ]; then
  export BATCHD_PG_RUN="$(mktemp -d)"
  trap 'bash scripts/pg.sh stop || true' EXIT
  pg_url="$(bash scripts/pg.sh start)"
  "$bin_dir/batchd-bench" --only cluster --pg-url "$pg_url" "${args[@]+"${args[@]}"}"
  exit
fi
if [ -n "$llama" ]; then
  bash scripts/model-server.sh install
  exec "$bin_dir/batchd-bench" --only "$llama" "${args[@]+"${args[@]}"}"
fi
"$bin_dir/batchd-bench" "${args[@]+"${args[@]}"}"
