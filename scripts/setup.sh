#!/usr/bin/env bash
# Sourced by the other scripts: checks for what a fresh machine needs and installs what it can.
# Today that is only a Rust toolchain (installed by hand: rustup) and a C compiler (for
# SQLite, built from source by libsqlite3-sys).
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a stable Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
  else
    echo "a C compiler (cc) is needed to build SQLite: install build-essential or gcc" >&2
    exit 1
  fi
fi
