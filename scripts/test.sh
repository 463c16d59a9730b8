#!/usr/bin/env bash
# The test command: formatting, lints, every Rust test of the workspace, then the Python suite
# (boto3 and the AWS CLI against batchd serve). Fetches the embedded models first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# llama.cpp's OpenMP threads otherwise spin between steps on a busy 2-core host.
export OMP_WAIT_POLICY=passive
if [ ! -d ../shared/data ]; then
  echo "../shared/data is missing: the tests read the shared example records beside the repo" >&2
  exit 1
fi
source scripts/python-env.sh
bash scripts/models.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# A real OpenAI-compatible server for crates/batchd/tests/real_server.rs: llama.cpp's
# llama-server with SmolLM2 on 127.0.0.1 (built once into the cache by the script: ~10 min on 2
# idle cores; then a few seconds to start). Stopped on exit.
export BATCHD_MODEL_SERVER_RUN="$(mktemp -d)"
trap 'bash scripts/model-server.sh stop; rm -rf "$BATCHD_MODEL_SERVER_RUN"' EXIT
BATCHD_REAL_SERVER_URL=$(bash scripts/model-server.sh start)
export BATCHD_REAL_SERVER_URL
cargo test --workspace
bash scripts/pytest.sh
