#!/usr/bin/env bash
# The main job: a Converse batch through `batchd run`, end to end.
# Until the embedded model lands, the records run on batchd's fake OpenAI-compatible backend
# (batchd-fake, an echo server started here), not on a language model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release --quiet -p batchd -p batchd-testkit
work=$(mktemp -d)
cleanup() { [ -n "${fake_pid:-}" ] && kill "$fake_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

target/release/batchd-fake --port 0 > "$work/fake.out" &
fake_pid=$!
for _ in $(seq 50); do grep -q listening "$work/fake.out" 2>/dev/null && break; sleep 0.1; done
base_url=$(sed -n 's/^listening on //p' "$work/fake.out")
[ -n "$base_url" ] || { echo "batchd-fake did not start" >&2; exit 1; }

cat > "$work/batchd.toml" <<TOML
[[models]]
id = "demo.echo-v1"
backend = "openai"
base_url = "$base_url"
TOML

inputs=(examples/converse-demo.jsonl)
[ -f ../shared/data/converse-basic.jsonl ] && inputs+=(../shared/data/converse-basic.jsonl)
target/release/batchd run "${inputs[@]}" --model-id demo.echo-v1 --config "$work/batchd.toml" \
  --data-dir ./batchd-data --out ./batchd-output "$@"

job_dir=$(ls -td ./batchd-output/*/ | head -n 1)
echo
echo "== ${job_dir}converse-demo.jsonl.out (first 2 lines)"
head -n 2 "${job_dir}converse-demo.jsonl.out"
echo "== ${job_dir}manifest.json.out"
cat "${job_dir}manifest.json.out"; echo
