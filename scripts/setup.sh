#!/usr/bin/env bash
# Sourced by the other scripts: checks for what a fresh machine needs and installs what it can
# through apt (as root): a C/C++ compiler (SQLite, llama.cpp), cmake and libclang (llama.cpp's
# build and bindings), python3-venv (the test tools). Rust itself is installed by hand (rustup).
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a stable Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
batchd_missing=()
command -v cc >/dev/null 2>&1 || batchd_missing+=(gcc)
command -v c++ >/dev/null 2>&1 || batchd_missing+=(g++)
command -v make >/dev/null 2>&1 || batchd_missing+=(make)
command -v cmake >/dev/null 2>&1 || batchd_missing+=(cmake)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang*.so*" >/dev/null \
  || batchd_missing+=(libclang-dev)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || batchd_missing+=(python3-venv)
command -v ccache >/dev/null 2>&1 || batchd_missing+=(ccache)
if [ ${#batchd_missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing: ${batchd_missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${batchd_missing[@]}" >/dev/null
  else
    echo "missing build tools; install these packages first: ${batchd_missing[*]}" >&2
    exit 1
  fi
fi
unset batchd_missing
# cargo runs llama.cpp's CMake build once for `cargo clippy` (check) and again for the test and
# release builds (different build-script runs); ccache makes the second one hits only.
# CMake reads these launcher variables; BASEDIR makes paths inside the target dir relative.
if command -v ccache >/dev/null 2>&1; then
  export CMAKE_C_COMPILER_LAUNCHER="${CMAKE_C_COMPILER_LAUNCHER:-ccache}"
  export CMAKE_CXX_COMPILER_LAUNCHER="${CMAKE_CXX_COMPILER_LAUNCHER:-ccache}"
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
  export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
fi
