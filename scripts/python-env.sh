#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/pytest.sh: makes .venv with the Python tools the tests
# need (tests/python/requirements.txt) and exports their paths for the Rust tests.
# A .venv left by an earlier run is used only if its python still runs and the tools import:
# a stamp file alone could outlive a removed interpreter or a half-finished install.
venv=.venv
req=tests/python/requirements.txt
stamp="$venv/.requirements"
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv" || {
    echo "python-env: python3 -m venv failed; setup.sh should have installed python3-venv" >&2
    exit 1
  }
fi
if ! cmp -s "$req" "$stamp" \
   || ! "$venv/bin/python" -c 'import boto3, moto, pytest, awscli, pandas, openai, prometheus_client, selenium' >/dev/null 2>&1 \
   || ! [ -x "$venv/bin/moto_server" ] || ! [ -x "$venv/bin/aws" ]; then
  rm -f "$stamp"
  echo "python-env: installing the Python test tools into $venv (boto3, the AWS CLI, moto, pytest, pandas, openai)" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
export BATCHD_TEST_MOTO_SERVER="$PWD/$venv/bin/moto_server"
