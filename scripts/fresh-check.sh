#!/usr/bin/env bash
# Verifies that every build prerequisite is the real thing, the way the build uses it: the C and
# C++ compilers build and run a program, cmake is new enough, bindgen's libclang loads and parses
# <stddef.h> (a libclang-cpp look-alike does not), python3 can make a venv, and the Rust
# toolchain has rustfmt and clippy. Prints one line per check; exits 1 naming the exact package
# (or rustup component) to install. Installs nothing: scripts/setup.sh does that.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/prereqs.sh
failed=()
report() { # ok|FAIL name detail
  printf '%-4s %-12s %s\n' "$1" "$2" "$3"
}
for name in "${batchd_prereq_names[@]}"; do
  if batchd_prereq_probe "$name"; then
    report ok "$name" "$batchd_prereq_detail"
  elif [ "$name" = ccache ]; then
    report warn "$name" "$batchd_prereq_detail (optional: speeds up llama.cpp's second build; apt-get install ccache)"
  else
    report FAIL "$name" "$batchd_prereq_detail; install: apt-get install $(batchd_prereq_package "$name")"
    failed+=("$(batchd_prereq_package "$name")")
  fi
done
for name in "${batchd_browser_prereq_names[@]}" "${batchd_postgres_prereq_names[@]}"; do
  if batchd_prereq_probe "$name"; then
    report ok "$name" "$batchd_prereq_detail"
  else
    report warn "$name" "$batchd_prereq_detail (the tests'; scripts/test.sh installs $(batchd_prereq_package "$name"))"
  fi
done
for tool in cargo rustc; do
  if v=$("$tool" --version 2>/dev/null); then report ok "$tool" "$v"; else
    report FAIL "$tool" "not found; install a stable Rust toolchain (https://rustup.rs)"; failed+=(rust); fi
done
for comp in fmt clippy; do
  if v=$(cargo "$comp" --version 2>/dev/null); then report ok "cargo $comp" "$v"; else
    report FAIL "cargo $comp" "not found; install: rustup component add $([ "$comp" = fmt ] && echo rustfmt || echo clippy)"
    failed+=("$comp")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fresh-check: missing or broken: ${failed[*]}" >&2
  exit 1
fi
echo "fresh-check: every build prerequisite is in place"
