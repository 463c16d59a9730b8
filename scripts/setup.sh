#!/usr/bin/env bash
# Sourced by the other scripts: probes what a fresh machine needs (scripts/prereqs.sh) and
# installs what is missing through apt (as root, or through sudo): a C/C++ compiler (SQLite, llama.cpp), make,
# cmake and libclang (llama.cpp's build and bindings), python3-venv (the test tools), ccache.
# Rust itself (with rustfmt and clippy) is installed by hand (rustup). After an install every
# probe runs again, so a package that did not bring the real thing fails here, by name.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a stable Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
source "$(dirname "${BASH_SOURCE[0]}")/prereqs.sh"
# The test scripts also want headless Chromium and its driver (the web console's browser test).
[ "${BATCHD_SETUP_BROWSER:-}" = 1 ] && batchd_prereq_names+=("${batchd_browser_prereq_names[@]}")
# And a PostgreSQL server (the Postgres job store's tests, scripts/pg.sh).
[ "${BATCHD_SETUP_POSTGRES:-}" = 1 ] && batchd_prereq_names+=("${batchd_postgres_prereq_names[@]}")
batchd_missing=()
for batchd_name in "${batchd_prereq_names[@]}"; do
  batchd_prereq_probe "$batchd_name" || batchd_missing+=("$(batchd_prereq_package "$batchd_name")")
done
if [ ${#batchd_missing[@]} -gt 0 ]; then
  batchd_sudo=()
  [ "$(id -u)" = 0 ] || batchd_sudo=(sudo)
  if command -v apt-get >/dev/null 2>&1 && { [ ${#batchd_sudo[@]} = 0 ] || command -v sudo >/dev/null 2>&1; }; then
    echo "installing: ${batchd_missing[*]}" >&2
    batchd_apt_start=$SECONDS
    "${batchd_sudo[@]}" apt-get update -qq \
      && "${batchd_sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${batchd_missing[@]}" >/dev/null \
      || { echo "apt-get install ${batchd_missing[*]} failed" >&2; exit 1; }
    echo "installed in $((SECONDS - batchd_apt_start)) s: ${batchd_missing[*]}" >&2
    unset batchd_apt_start
    batchd_failed=0
    for batchd_name in "${batchd_prereq_names[@]}"; do
      if ! batchd_prereq_probe "$batchd_name" && [ "$batchd_name" != ccache ]; then
        echo "setup: $batchd_name still fails after installing $(batchd_prereq_package "$batchd_name"): $batchd_prereq_detail" >&2
        batchd_failed=1
      fi
    done
    [ "$batchd_failed" = 0 ] || { echo "setup: run scripts/fresh-check.sh for every probe's result" >&2; exit 1; }
    unset batchd_failed
  elif [ "${batchd_missing[*]}" = ccache ]; then
    echo "setup: ccache not found (optional: it makes llama.cpp's second build quick)" >&2
  else
    echo "missing build tools; install these Debian packages first (as root): apt-get install ${batchd_missing[*]}" >&2
    echo "(scripts/fresh-check.sh shows what each probe saw)" >&2
    exit 1
  fi
fi
unset batchd_missing batchd_name batchd_sudo
# cargo runs llama.cpp's CMake build once for `cargo clippy` (check) and again for the test and
# release builds (different build-script runs); ccache makes the second one hits only.
# CMake reads these launcher variables; BASEDIR makes paths inside the target dir relative.
if command -v ccache >/dev/null 2>&1; then
  export CMAKE_C_COMPILER_LAUNCHER="${CMAKE_C_COMPILER_LAUNCHER:-ccache}"
  export CMAKE_CXX_COMPILER_LAUNCHER="${CMAKE_CXX_COMPILER_LAUNCHER:-ccache}"
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
  export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-true}"
fi
