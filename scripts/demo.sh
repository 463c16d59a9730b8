#!/usr/bin/env bash
# The main job: a real Converse batch on the embedded model (SmolLM2-135M-Instruct on
# llama.cpp, in-process; no model server), end to end through `batchd run`.
# Fetches the model files first if they are not in the cache (scripts/models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# llama.cpp's OpenMP threads otherwise spin between steps on a busy 2-core host.
export OMP_WAIT_POLICY=passive
bash scripts/models.sh
batchd="${CARGO_TARGET_DIR:-target}/release/batchd"
if [ ! -x "$batchd" ]; then
  echo "demo: first build of batchd (release): cargo compiles ~430 crates and llama.cpp (C++)," >&2
  echo "demo: about 17 minutes on 2 cores; later runs take seconds. cargo's progress follows." >&2
fi
cargo build --release -p batchd
"$batchd" run examples/converse-demo.jsonl --model-id batchd.smollm2-135m-instruct \
  --data-dir ./batchd-data --out ./batchd-output "$@"

job_dir=$(ls -td ./batchd-output/*/ | head -n 1)
echo
echo "== ${job_dir}converse-demo.jsonl.out: each record's answer"
python3 - "${job_dir}converse-demo.jsonl.out" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "modelOutput" in r:
        text = "".join(c.get("text", "") for c in r["modelOutput"]["output"]["message"]["content"])
        print(f'{r["recordId"]}: {text.strip()[:160]!r} ({r["modelOutput"]["stopReason"]})')
    else:
        print(f'{r["recordId"]}: error {r["error"]}')
PY
echo "== ${job_dir}manifest.json.out"
cat "${job_dir}manifest.json.out"; echo
