#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes .venv with the Python tools the tests need
# (tests/python/requirements.txt) and exports their paths for the Rust tests.
venv=.venv
req=tests/python/requirements.txt
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || {
    # Debian splits venv out of python3.
    apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
  }
fi
# Reinstall only when the requirements changed.
stamp="$venv/.requirements"
if ! cmp -s "$req" "$stamp"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
export BATCHD_TEST_MOTO_SERVER="$PWD/$venv/bin/moto_server"
