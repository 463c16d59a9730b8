#!/usr/bin/env bash
# The test command: formatting, lints, every Rust test of the workspace, then the Python suite
# (boto3 and the AWS CLI against batchd serve). Fetches the embedded models first.
# Each step prints a header with the time since the start, so a first run (which compiles
# everything) never looks hung, and the log shows where the time went.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '== test.sh [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
step "prerequisites (scripts/setup.sh installs what is missing through apt)"
# Headless Chromium and chromedriver too: tests/python/test_console.py drives the web console.
export BATCHD_SETUP_BROWSER=1
# And a PostgreSQL server: the job store's conformance suite runs on Postgres too.
export BATCHD_SETUP_POSTGRES=1
source scripts/setup.sh
bash scripts/fresh-check.sh >&2
# llama.cpp's OpenMP threads otherwise spin between steps on a busy 2-core host.
export OMP_WAIT_POLICY=passive
# This script provides every model file and server the tests need, so a test that would skip
# for lack of one (batchd_testkit::skip_unless_ci) fails instead.
export CI="${CI:-true}"
if [ ! -d ../shared/data ]; then
  echo "../shared/data is missing: the tests read the shared example records beside the repo" >&2
  exit 1
fi
step "python test tools (.venv)"
source scripts/python-env.sh
step "embedded models (scripts/models.sh)"
bash scripts/models.sh
step "cargo fmt --check"
cargo fmt --all -- --check
first=""
[ -d target/debug ] || first=" (first run: compiles every crate and llama.cpp, ~10 min on 2 cores)"
step "cargo clippy$first"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# A real OpenAI-compatible server for crates/batchd/tests/it/real_server.rs: llama.cpp's
# llama-server with SmolLM2 on 127.0.0.1 (built once into the cache by the script: ~10 min on 2
# idle cores; then a few seconds to start). Stopped on exit.
step "llama-server for the real-server test (scripts/model-server.sh; built once, ~10 min)"
export BATCHD_MODEL_SERVER_RUN="$(mktemp -d)"
# A throwaway PostgreSQL on 127.0.0.1 (scripts/pg.sh) for the Postgres job store's tests.
export BATCHD_PG_RUN="$(mktemp -d /tmp/batchd-pg.XXXXXX)"
trap 'bash scripts/model-server.sh stop; rm -rf "$BATCHD_MODEL_SERVER_RUN"; bash scripts/pg.sh stop' EXIT
BATCHD_REAL_SERVER_URL=$(bash scripts/model-server.sh start)
export BATCHD_REAL_SERVER_URL
step "PostgreSQL for the job store's tests (scripts/pg.sh)"
BATCHD_TEST_PG_URL=$(bash scripts/pg.sh start)
export BATCHD_TEST_PG_URL
step "cargo test --workspace"
cargo test --workspace
step "python suite (scripts/pytest.sh)"
bash scripts/pytest.sh
step "done"
