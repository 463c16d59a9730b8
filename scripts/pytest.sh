#!/usr/bin/env bash
# The Python suite alone: `batchd serve` driven by boto3 and the AWS CLI, against moto (a real
# S3-compatible server on 127.0.0.1) and in local-bucket mode. Arguments go to pytest:
#   scripts/pytest.sh -k restart -x
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium and chromedriver too: tests/python/test_console.py drives the web console.
export BATCHD_SETUP_BROWSER=1
source scripts/setup.sh
if [ ! -d ../shared/data ]; then
  echo "../shared/data is missing: the tests read the shared example records beside the repo" >&2
  exit 1
fi
source scripts/python-env.sh
cargo build --quiet -p batchd -p batchd-testkit
export PYTHONDONTWRITEBYTECODE=1
exec .venv/bin/python -m pytest tests/python -q "$@"
