#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [ ! -d ../shared/data ]; then
  echo "../shared/data is missing: the tests read the shared example records beside the repo" >&2
  exit 1
fi
source scripts/python-env.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
